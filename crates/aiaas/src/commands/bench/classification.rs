//! Image classifiers: images per second through the network at each batch size, on images
//! already prepared (decoding and resizing excluded, as onnxruntime's figures are measured).

use std::path::Path;
use std::time::Instant;

use aiaas_models::vision::EfficientNet;
use anyhow::Context;

use super::mean_spread;
use crate::cli::BenchArgs;

/// Forward passes per repetition at each batch size: enough images for a stable rate.
const IMAGES_PER_REPETITION: usize = 64;

pub fn run(args: &BenchArgs, checkpoint: &Path) -> anyhow::Result<()> {
    let network = EfficientNet::load(checkpoint)?;
    let preprocessing = network.preprocessing();
    let image = match &args.image {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            preprocessing.prepare(&bytes)?
        }
        // A mid-grey picture: the arithmetic does not depend on the values.
        None => vec![0.0; preprocessing.tensor_len()],
    };
    let threads = rayon::current_num_threads();
    println!("model: {} ({})", args.model, checkpoint.display());
    println!("threads: {threads}");
    println!("| batch | images/s |");
    println!("| ----- | -------- |");
    for batch in args.batch_sizes_or(&[1, 16]) {
        let batch = batch.max(1);
        let inputs: Vec<f32> = image
            .iter()
            .copied()
            .cycle()
            .take(batch * image.len())
            .collect();
        // One untimed pass warms the allocator and the thread pool.
        network.forward(&inputs, batch);
        let passes = IMAGES_PER_REPETITION.div_ceil(batch);
        let mut rates = Vec::new();
        for _ in 0..args.repetitions.max(1) {
            let started = Instant::now();
            for _ in 0..passes {
                network.forward(&inputs, batch);
            }
            rates.push((passes * batch) as f64 / started.elapsed().as_secs_f64());
        }
        println!("| {batch} | {} |", mean_spread(&rates));
    }
    Ok(())
}

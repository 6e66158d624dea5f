//! Embedding models: sentences per second over a file of sentences, at each batch size, with
//! tokenization included (as sentence-transformers' `encode` measures it).

use std::path::Path;
use std::time::Instant;

use aiaas_models::SentenceEncoder;
use anyhow::Context;

use super::mean_spread;
use crate::cli::BenchArgs;

pub fn run(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let file = args
        .sentences
        .as_ref()
        .context("an embedding benchmark needs --sentences FILE (one sentence per line)")?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let sentences: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    anyhow::ensure!(!sentences.is_empty(), "{} has no sentences", file.display());
    let encoder = SentenceEncoder::load(dir)?;
    // One untimed pass warms the allocator and the thread pool.
    encode_all(&encoder, &sentences[..sentences.len().min(64)], 32)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("model: {} ({})", args.model, dir.display());
    println!("sentences: {} from {}", sentences.len(), file.display());
    println!("threads: {threads}");
    println!("| batch | sentences/s |");
    println!("| ----- | ----------- |");
    for batch in args.batch_sizes_or(&[1, 32, 256]) {
        let mut rates = Vec::new();
        for _ in 0..args.repetitions.max(1) {
            let started = Instant::now();
            encode_all(&encoder, &sentences, batch.max(1))?;
            rates.push(sentences.len() as f64 / started.elapsed().as_secs_f64());
        }
        println!("| {batch} | {} |", mean_spread(&rates));
    }
    Ok(())
}

fn encode_all(encoder: &SentenceEncoder, sentences: &[&str], batch: usize) -> anyhow::Result<()> {
    for chunk in sentences.chunks(batch) {
        let ids = chunk
            .iter()
            .map(|s| encoder.tokenize(s))
            .collect::<Result<Vec<_>, _>>()?;
        let sequences: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        encoder.embed(&sequences)?;
    }
    Ok(())
}

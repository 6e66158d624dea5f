//! Generators: prompt processing (one pass over N tokens) and decode (one token at a time)
//! throughput, measured like llama-bench's pp/tg so the two can be read side by side.

use std::path::Path;
use std::time::Instant;

use aiaas_models::{Decoder, GgufFile, KvCache};

use super::mean_spread;
use crate::cli::BenchArgs;

pub fn run(args: &BenchArgs, path: &Path) -> anyhow::Result<()> {
    let gguf = GgufFile::open(path)?;
    let decoder = Decoder::load(&gguf)?;
    // Fixed pseudo-random tokens: llama-bench also measures on random tokens.
    let vocab = decoder.vocab_size() as u64;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let prompt: Vec<u32> = (0..args.prompt_tokens)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab) as u32
        })
        .collect();

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..args.repetitions.max(1) {
        let mut cache = KvCache::new(&decoder.config);
        let started = Instant::now();
        decoder.forward(&prompt, &mut cache)?;
        prefill.push(args.prompt_tokens as f64 / started.elapsed().as_secs_f64());

        let mut cache = KvCache::new(&decoder.config);
        decoder.forward(&prompt[..1], &mut cache)?;
        let started = Instant::now();
        for i in 0..args.gen_tokens {
            decoder.forward(&[prompt[i % prompt.len()]], &mut cache)?;
        }
        decode.push(args.gen_tokens as f64 / started.elapsed().as_secs_f64());
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("model: {} ({})", args.model, path.display());
    println!("threads: {threads}");
    println!("| test | tokens/s |");
    println!("| ---- | -------- |");
    println!("| pp{} | {} |", args.prompt_tokens, mean_spread(&prefill));
    println!("| tg{} | {} |", args.gen_tokens, mean_spread(&decode));
    Ok(())
}

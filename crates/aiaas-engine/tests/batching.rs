//! Batching does not change a sequence's output. The reference prompts (those of
//! `llama_cpp_reference.rs`) are each generated alone — whole prompt, then token by token — and
//! then all together in one full batch of 16 as the scheduler runs them: sequences join at
//! different steps, prompts are fed in small chunks next to other sequences' decoding steps.
//! Every logit of every step must be bit-for-bit the same, and so every greedy token: each
//! weight product, norm and activation computes a row the same way whatever the rows around it,
//! and attention runs per sequence. (With candle's K-quant kernels, chosen by row count, the
//! logits moved by up to 0.66 between alone and batched.)

use aiaas_engine::generate::{Sampler, SamplingParams};
use aiaas_models::{BatchEntry, Decoder, GgufFile, KvCache, Tokenizer};

mod common;
use common::{model_file, reference};

/// Sequences in the batch: the worker's default number of active sequences.
const BATCH: usize = 16;
/// Tokens generated per sequence.
const GENERATED: usize = 12;
/// Prompt tokens fed per step in the batched run (alone, the whole prompt goes in one step).
const CHUNK: usize = 5;

fn greedy() -> Sampler {
    Sampler::new(SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    })
}

/// The logits of each step of a greedy generation run alone.
fn alone(decoder: &Decoder, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new(&decoder.config);
    let mut sampler = greedy();
    let mut steps = vec![decoder.forward(prompt, &mut cache).unwrap()];
    while steps.len() < GENERATED {
        let (token, _) = sampler.sample(&mut steps.last().unwrap().clone());
        steps.push(decoder.forward(&[token], &mut cache).unwrap());
    }
    steps
}

struct Running {
    prompt: Vec<u32>,
    cache: KvCache,
    fed: usize,
    last: u32,
    steps: Vec<Vec<f32>>,
}

/// The same generations in one batch; sequence `i` joins at step `i`.
fn batched(decoder: &Decoder, prompts: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    let mut running: Vec<Running> = Vec::new();
    let mut step = 0;
    while running.len() < prompts.len() || running.iter().any(|r| r.steps.len() < GENERATED) {
        if let Some(prompt) = prompts.get(step) {
            running.push(Running {
                prompt: prompt.clone(),
                cache: KvCache::new(&decoder.config),
                fed: 0,
                last: 0,
                steps: Vec::new(),
            });
        }
        step += 1;
        let mut entries = Vec::new();
        let mut members = Vec::new();
        for (i, r) in running.iter_mut().enumerate() {
            if r.steps.len() == GENERATED {
                continue;
            }
            let (tokens, wants_logits) = if r.fed < r.prompt.len() {
                let end = (r.fed + CHUNK).min(r.prompt.len());
                let chunk = &r.prompt[r.fed..end];
                r.fed = end;
                (chunk, end == r.prompt.len())
            } else {
                (std::slice::from_ref(&r.last), true)
            };
            entries.push(BatchEntry {
                tokens,
                cache: &mut r.cache,
                wants_logits,
            });
            members.push(i);
        }
        let outputs = decoder.forward_batch(&mut entries).unwrap();
        drop(entries);
        for (i, logits) in members.into_iter().zip(outputs) {
            if let Some(logits) = logits {
                let r = &mut running[i];
                r.last = greedy().sample(&mut logits.clone()).0;
                r.steps.push(logits);
            }
        }
    }
    running.into_iter().map(|r| r.steps).collect()
}

fn check(name: &str) {
    let Some(path) = model_file(name) else { return };
    let gguf = GgufFile::open(&path).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let decoder = Decoder::load(&gguf).unwrap();
    let expected = reference(name);
    let texts: Vec<&str> = expected["generate"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| case["text"].as_str().unwrap())
        .collect();
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .cycle()
        .take(BATCH)
        .map(|text| tokenizer.encode(text, true, true))
        .collect();

    let together = batched(&decoder, &prompts);
    for (i, prompt) in prompts.iter().enumerate() {
        let by_itself = alone(&decoder, prompt);
        assert_eq!(together[i].len(), GENERATED);
        for (step, (a, b)) in by_itself.iter().zip(&together[i]).enumerate() {
            assert!(
                a == b,
                "{name}: {:?}, step {step}: the logits differ in a batch",
                texts[i % texts.len()]
            );
        }
    }
}

#[test]
fn smollm2_outputs_are_the_same_alone_and_in_a_full_batch() {
    check("smollm2-135m-instruct");
}

#[test]
fn qwen2_outputs_are_the_same_alone_and_in_a_full_batch() {
    check("qwen2.5-coder-0.5b-instruct");
}

#[test]
fn gemma3_outputs_are_the_same_alone_and_in_a_full_batch() {
    check("gemma-3-270m");
}

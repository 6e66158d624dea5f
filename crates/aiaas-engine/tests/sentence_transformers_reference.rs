//! Real weights against sentence-transformers: all-MiniLM-L6-v2's token counts and embeddings
//! must match the reference for 24 varied sentences (short, long, non-ASCII, exactly at the
//! 256-token limit), alone, packed together in one batch, and through the batching worker with
//! many concurrent callers.
//!
//! Expected values: `tests/reference/all-minilm-l6-v2.json`, made by
//! `tests/reference/sentence_transformers_expected.py` (sentence-transformers 6.2.0, torch
//! 2.15.0; the command is in that script's docstring).

/// The bound: cosine similarity to the reference for every sentence.
const MIN_COSINE: f32 = 0.9999;
const MODEL: &str = "all-minilm-l6-v2";

use std::sync::Arc;

use aiaas_engine::generate::WorkerLimits;
use aiaas_engine::{EmbedInput, Engine, ModelRepository, ResidencyPolicy};
use aiaas_models::SentenceEncoder;
use serde_json::Value;

mod common;
use common::{model_file, reference};

struct Case {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let expected = reference(MODEL);
    expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            tokens: c["tokens"].as_u64().unwrap() as usize,
            embedding: floats(&c["embedding"]),
        })
        .collect()
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Checks the bound and returns the similarity.
fn assert_matches(case: &Case, vector: &[f32], how: &str) -> f32 {
    let similarity = cosine(&case.embedding, vector);
    assert!(
        similarity >= MIN_COSINE,
        "{how}: cosine {similarity} < {MIN_COSINE} for {:?}",
        case.text
    );
    similarity
}

#[test]
fn minilm_matches_sentence_transformers_alone_and_packed() {
    let Some(dir) = model_file(MODEL) else { return };
    let encoder = SentenceEncoder::load(&dir).unwrap();
    let cases = cases();
    assert!(cases.len() >= 20);
    let sequences: Vec<Vec<u32>> = cases
        .iter()
        .map(|c| encoder.tokenize(&c.text).unwrap())
        .collect();
    let mut lowest = f32::INFINITY;
    for (case, ids) in cases.iter().zip(&sequences) {
        assert_eq!(ids.len(), case.tokens, "token count of {:?}", case.text);
        let alone = encoder.embed(&[ids]).unwrap();
        lowest = lowest.min(assert_matches(case, &alone[0], "alone"));
    }
    assert!(cases
        .iter()
        .any(|c| c.tokens == encoder.settings.max_tokens));
    let all: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
    let packed = encoder.embed(&all).unwrap();
    for (case, vector) in cases.iter().zip(&packed) {
        lowest = lowest.min(assert_matches(case, vector, "packed with 23 others"));
    }
    eprintln!("lowest cosine to sentence-transformers: {lowest}");
}

#[test]
fn concurrent_callers_get_their_own_vectors_in_order() {
    let Some(dir) = model_file(MODEL) else { return };
    let root = std::env::temp_dir().join(format!("aiaas-embed-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let repository = ModelRepository::open(&root).unwrap();
    repository.import(&dir, Some(MODEL), None).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cases = Arc::new(cases());
    runtime.block_on(async {
        let engine = Engine::new(
            repository,
            WorkerLimits::default(),
            ResidencyPolicy::default(),
        )
        .unwrap();
        let embedder = engine.embedder(MODEL).await.unwrap();
        // 24 callers at once, each with its own rotation and length of the case list, so the
        // worker packs pieces of different requests into shared batches.
        let callers: Vec<_> = (0..cases.len())
            .map(|caller| {
                let embedder = embedder.clone();
                let cases = cases.clone();
                tokio::spawn(async move {
                    let picks: Vec<usize> = (0..=caller % 7)
                        .map(|i| (caller + i * 5) % cases.len())
                        .collect();
                    let texts = picks.iter().map(|&i| cases[i].text.clone()).collect();
                    let sequences = embedder.tokenize(EmbedInput::Texts(texts)).await.unwrap();
                    let vectors = embedder.embed(sequences).await.unwrap();
                    assert_eq!(vectors.len(), picks.len());
                    for (&i, vector) in picks.iter().zip(&vectors) {
                        assert_matches(&cases[i], vector, &format!("caller {caller}"));
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
    });
    let _ = std::fs::remove_dir_all(&root);
}

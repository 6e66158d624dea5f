//! `aiaas bench MODEL`: throughput of one model in this process, without HTTP, printed as a
//! Markdown table that `bench/` scripts set beside the reference implementations' figures.

mod classification;
mod embedding;
mod generation;
mod transcription;

use std::path::PathBuf;

use aiaas_engine::{ModelRepository, Task};

use crate::cli::BenchArgs;
use crate::config::Settings;

/// Benchmarks a repository model by id, a GGUF file, a sentence-transformers folder, a
/// CTranslate2 Whisper folder or an EfficientNet-Lite checkpoint.
pub fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<()> {
    let given = PathBuf::from(&args.model);
    if given.join(aiaas_models::whisper::WEIGHTS_FILE).is_file() {
        return transcription::run(args, &given);
    }
    if given.extension().is_some_and(|e| e == "pth") {
        return classification::run(args, &given);
    }
    if given.is_dir() {
        return embedding::run(args, &given);
    }
    if given.is_file() {
        return generation::run(args, &given);
    }
    let repository = ModelRepository::open(settings.models_dir())?;
    let manifest = repository.get(&args.model)?;
    match manifest.task {
        Task::Embedding => embedding::run(args, &repository.model_dir(&manifest)),
        Task::Chat | Task::Completion => generation::run(args, &repository.weights_path(&manifest)),
        Task::Transcription => transcription::run(args, &repository.model_dir(&manifest)),
        Task::ImageClassification => classification::run(args, &repository.weights_path(&manifest)),
        Task::GraphemeToPhoneme => anyhow::bail!("`{}` has no benchmark", args.model),
    }
}

fn mean_spread(samples: &[f64]) -> String {
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / samples.len() as f64;
    format!("{mean:.2} ± {:.2}", var.sqrt())
}

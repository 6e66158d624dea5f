//! Speech recognition models: real-time factor (seconds of audio per second of work) over a
//! folder of clips, greedy decoding in English, audio decoding left out (as the reference
//! script leaves it out: both sides start from 16 kHz samples).

use std::path::Path;
use std::time::Instant;

use aiaas_models::audio;
use aiaas_models::whisper::mel::SAMPLE_RATE;
use aiaas_models::whisper::TranscribeOptions;
use aiaas_models::Whisper;
use anyhow::Context;

use super::mean_spread;
use crate::cli::BenchArgs;

pub fn run(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let folder = (args.audio.as_ref())
        .context("a speech benchmark needs --audio FOLDER (WAV, FLAC, MP3 or OGG clips)")?;
    let mut clips = Vec::new();
    for entry in
        std::fs::read_dir(folder).with_context(|| format!("reading {}", folder.display()))?
    {
        let path = entry?.path();
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if !matches!(extension.as_deref(), Some("wav" | "flac" | "mp3" | "ogg")) {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        let decoded = audio::decode(bytes, extension.as_deref(), SAMPLE_RATE as u32, 3600)
            .with_context(|| format!("decoding {}", path.display()))?;
        clips.push(decoded.samples);
    }
    anyhow::ensure!(!clips.is_empty(), "{} has no audio clips", folder.display());
    clips.sort_by_key(Vec::len);
    let seconds: f64 = clips
        .iter()
        .map(|c| c.len() as f64 / SAMPLE_RATE as f64)
        .sum();
    let model = Whisper::load(dir)?;
    let options = TranscribeOptions {
        language: Some("en".into()),
        ..Default::default()
    };
    // One untimed pass warms the allocator and the thread pool.
    model.transcribe(&clips[0], &options)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("model: {} ({})", args.model, dir.display());
    println!(
        "audio: {} clips, {seconds:.1} s, from {}",
        clips.len(),
        folder.display()
    );
    println!("threads: {threads}");
    let mut factors = Vec::new();
    for _ in 0..args.repetitions.max(1) {
        let started = Instant::now();
        for clip in &clips {
            model.transcribe(clip, &options)?;
        }
        factors.push(seconds / started.elapsed().as_secs_f64());
    }
    println!("| engine | real-time factor |");
    println!("| ------ | ---------------- |");
    println!("| aiaas | {} |", mean_spread(&factors));
    Ok(())
}

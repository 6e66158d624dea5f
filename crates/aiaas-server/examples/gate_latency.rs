//! What the gate adds to a request: key verification (an indexed lookup by hash in SQLite) and
//! the rate-limit check, timed in-process over many requests; and what metering adds: the
//! durable (fsynced) usage row a generation writes before its response completes. p50 and p99.
//!
//!     cargo run --release -p aiaas-server --example gate_latency [REQUESTS]

use std::sync::Arc;
use std::time::Instant;

use aiaas_server::gate::{KeySpec, Keys, Limiter};
use aiaas_server::store::{Store, UsageRecord};

fn report(what: &str, mut samples: Vec<u64>) {
    samples.sort_unstable();
    let at = |p: usize| samples[(p * samples.len()).div_ceil(100).max(1) - 1];
    println!(
        "{what} over {} requests: p50 {} µs, p99 {} µs",
        samples.len(),
        at(50),
        at(99)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let requests: usize = std::env::args().nth(1).map_or(Ok(20_000), |n| n.parse())?;
    let home = std::env::temp_dir().join(format!("aiaas-gate-latency-{}", std::process::id()));
    std::fs::create_dir_all(&home)?;
    let keys = Keys::new(Store::open(&home.join("aiaas.db")).await?);
    // A realistic table: many keys, the one in use has limits.
    for i in 0..1000 {
        let spec = KeySpec {
            name: format!("filler-{i}"),
            ..KeySpec::default()
        };
        keys.create(&spec, None).await?;
    }
    let spec = KeySpec {
        name: "measured".into(),
        rpm: Some(i64::MAX),
        tpm: Some(i64::MAX),
        ..KeySpec::default()
    };
    let (secret, _) = keys.create(&spec, None).await?;
    let limiter = Arc::new(Limiter::default());
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let key = keys.verify(&secret).await?.expect("the key is live");
        limiter.admit_request(&key)?;
        let _ = limiter.snapshot(&key);
        samples.push(started.elapsed().as_micros() as u64);
    }
    report("gate (verify + rate limit + headers)", samples);

    let mut samples = Vec::with_capacity(requests / 10);
    for _ in 0..requests / 10 {
        let started = Instant::now();
        keys.store()
            .insert_usage(&UsageRecord {
                key_id: "key_measured".into(),
                model: "m".into(),
                route: "/v1/chat/completions".into(),
                created_at: 0,
                prompt_tokens: 30,
                completion_tokens: 12,
                audio_seconds: 0.0,
                images: 0,
                status: 200,
                latency_ms: 5,
            })
            .await?;
        samples.push(started.elapsed().as_micros() as u64);
    }
    report("metering (one durable usage row)", samples);
    std::fs::remove_dir_all(home)?;
    Ok(())
}

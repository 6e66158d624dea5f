//! Helpers shared by the real-model reference tests.

use std::path::PathBuf;

use aiaas_engine::{catalog, fetch};
use serde_json::Value;

/// The expected values in `tests/reference/<model>.json`.
pub fn reference(model: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference")
        .join(format!("{model}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The model (file or folder), fetched into the cache if needed. A fetch failure fails the test, unless
/// `AIAAS_ALLOW_MODEL_SKIP=1` turns it into a printed skip (for working offline).
pub fn model_file(name: &str) -> Option<PathBuf> {
    let entry = catalog::find(name).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    match runtime.block_on(fetch::fetch(entry)) {
        Ok(path) => Some(path),
        Err(e) if std::env::var("AIAAS_ALLOW_MODEL_SKIP").is_ok_and(|v| v == "1") => {
            eprintln!(
                "\n!!! SKIPPED real-model test for {name}: the model could not be fetched: {e}\n"
            );
            None
        }
        Err(e) => panic!(
            "the model {name} could not be fetched ({e}); set AIAAS_ALLOW_MODEL_SKIP=1 to skip"
        ),
    }
}

//! The official `openai` Python package against the running server, unchanged.

use std::process::Command;

use crate::audio::{clip_path, CLIP_TEXT, WHISPER};
use crate::common::{TestServer, GEMMA, KEY, MINILM, SMOLLM};

#[tokio::test]
async fn the_openai_python_sdk_works_unchanged() {
    let server = TestServer::start(&[SMOLLM, GEMMA, MINILM, WHISPER]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk.py");
    let python = std::env::var("AIAAS_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = tokio::task::spawn_blocking({
        let base = format!("{}/v1", server.base);
        move || {
            Command::new(python)
                .arg(script)
                .env("OPENAI_BASE_URL", base)
                .env("OPENAI_API_KEY", KEY)
                .env("CHAT_MODEL", SMOLLM)
                .env("BASE_MODEL", GEMMA)
                .env("EMBEDDING_MODEL", MINILM)
                .env("SPEECH_MODEL", WHISPER)
                .env("SPEECH_CLIP", clip_path())
                .env("SPEECH_TEXT", CLIP_TEXT)
                .output()
                .expect("python3 must be installed (scripts/test installs the openai package)")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "openai SDK script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all openai SDK checks passed"), "{stdout}");
}

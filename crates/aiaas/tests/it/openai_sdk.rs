//! The official `openai` Python package against the running server, unchanged.

use crate::audio::{clip_path, CLIP_TEXT, WHISPER};
use crate::common::{run_python, TestServer, GEMMA, KEY, MINILM, SMOLLM};

#[tokio::test]
async fn the_openai_python_sdk_works_unchanged() {
    let server = TestServer::start(&[SMOLLM, GEMMA, MINILM, WHISPER]).await;
    let env = vec![
        ("OPENAI_BASE_URL", format!("{}/v1", server.base)),
        ("OPENAI_API_KEY", KEY.to_string()),
        ("CHAT_MODEL", SMOLLM.to_string()),
        ("BASE_MODEL", GEMMA.to_string()),
        ("EMBEDDING_MODEL", MINILM.to_string()),
        ("SPEECH_MODEL", WHISPER.to_string()),
        ("SPEECH_CLIP", clip_path().display().to_string()),
        ("SPEECH_TEXT", CLIP_TEXT.to_string()),
    ];
    let stdout = run_python("openai_sdk.py", env).await;
    assert!(stdout.contains("all openai SDK checks passed"), "{stdout}");
}

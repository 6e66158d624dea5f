//! Bad input: every case is a 4xx in OpenAI's error shape naming the problem, never a 500.

use serde_json::json;

use crate::common::{chat, error, TestServer, GEMMA, SMOLLM};

#[tokio::test]
async fn bad_requests_get_clear_4xx_errors() {
    let server = TestServer::start(&[SMOLLM, GEMMA]).await;

    let cases = [
        ("malformed JSON", b"{\"model\": ".to_vec(), 400, "JSON"),
        (
            "invalid UTF-8",
            b"{\"model\": \"\xff\xfe\"}".to_vec(),
            400,
            "UTF-8",
        ),
        (
            "wrong type",
            br#"{"model": 5, "messages": []}"#.to_vec(),
            400,
            "invalid type",
        ),
        ("not an object", b"[1, 2]".to_vec(), 400, "JSON"),
    ];
    for (what, body, status, needle) in cases {
        let (got, body) = server.post_raw("/v1/chat/completions", body).await;
        assert_eq!(got, status, "{what}: {body}");
        let message = error(&body)["message"].as_str().unwrap();
        assert!(message.contains(needle), "{what}: {message}");
    }

    let long_prompt = "hello ".repeat(9000);
    let json_cases = [
        (
            "empty messages",
            json!({"model": SMOLLM, "messages": []}),
            400,
            None,
            "at least one",
        ),
        (
            "unknown role",
            chat(
                "hi",
                json!({"messages": [{"role": "wizard", "content": "hi"}]}),
            ),
            400,
            None,
            "wizard",
        ),
        (
            "n > 1",
            chat("hi", json!({"n": 3})),
            400,
            None,
            "n must be 1",
        ),
        (
            "negative max_tokens",
            chat("hi", json!({"max_tokens": -1})),
            400,
            None,
            "at least 1",
        ),
        (
            "absurd max_tokens",
            chat("hi", json!({"max_tokens": 1_000_000_000_000u64})),
            400,
            Some("context_length_exceeded"),
            "maximum context length is 8192",
        ),
        (
            "prompt over the context",
            chat(&long_prompt, json!({})),
            400,
            Some("context_length_exceeded"),
            "maximum context length",
        ),
        (
            "unknown model",
            chat("hi", json!({"model": "gpt-17"})),
            404,
            Some("model_not_found"),
            "gpt-17",
        ),
        (
            "temperature out of range",
            chat("hi", json!({"temperature": 7})),
            400,
            None,
            "temperature",
        ),
        (
            "top_logprobs without logprobs",
            chat("hi", json!({"top_logprobs": 2})),
            400,
            None,
            "logprobs",
        ),
        (
            "too many stops",
            chat("hi", json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            None,
            "stop",
        ),
        (
            "image content",
            chat(
                "hi",
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            ),
            400,
            None,
            "image_url",
        ),
        (
            "chat on a base model",
            chat("hi", json!({"model": GEMMA})),
            400,
            None,
            "no chat template",
        ),
    ];
    for (what, request, status, code, needle) in json_cases {
        let (got, body) = server.post("/v1/chat/completions", &request).await;
        assert_eq!(got, status, "{what}: {body}");
        let error = error(&body);
        if let Some(code) = code {
            assert_eq!(error["code"], code, "{what}: {body}");
        }
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(needle), "{what}: {message}");
    }

    let completion_cases = [
        (
            "several prompts",
            json!({"model": GEMMA, "prompt": ["a", "b"]}),
            "one prompt",
        ),
        (
            "token outside the vocabulary",
            json!({"model": GEMMA, "prompt": [1, 999999999]}),
            "vocabulary",
        ),
        (
            "logprobs too high",
            json!({"model": GEMMA, "prompt": "a", "logprobs": 9}),
            "logprobs",
        ),
        ("missing prompt", json!({"model": GEMMA}), "prompt"),
    ];
    for (what, request, needle) in completion_cases {
        let (got, body) = server.post("/v1/completions", &request).await;
        assert_eq!(got, 400, "{what}: {body}");
        let message = error(&body)["message"].as_str().unwrap();
        assert!(message.contains(needle), "{what}: {message}");
    }

    let oversized = format!("{{\"model\": \"{}\"}}", " ".repeat(9 * 1024 * 1024)).into_bytes();
    let (got, body) = server.post_raw("/v1/chat/completions", oversized).await;
    assert_eq!(got, 413, "{body}");
    assert!(error(&body)["message"].as_str().unwrap().contains("limit"));

    // The server is still healthy after all of that.
    let (status, body) = server
        .post(
            "/v1/chat/completions",
            &chat("hi", json!({"max_tokens": 2})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

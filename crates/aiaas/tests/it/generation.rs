//! Chat and completions over HTTP: sampling options, streaming, concurrency, cancellation.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::common::{chat, TestServer, GEMMA, KEY, SMOLLM};

fn content(body: &Value) -> &str {
    body["choices"][0]["message"]["content"].as_str().unwrap()
}

fn streamed_text(chunks: &[Value], field: &str) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .filter_map(|choice| match field {
            "delta" => choice["delta"]["content"].as_str(),
            _ => choice["text"].as_str(),
        })
        .collect()
}

#[tokio::test]
async fn chat_completions_options_and_streaming() {
    let server = TestServer::start(&[SMOLLM, GEMMA]).await;

    // Greedy, non-streamed: usage and finish_reason as OpenAI reports them.
    // A prompt whose greedy path has no near-ties in llama.cpp's reference (each step led by
    // ≥ 0.39 logits), so the expected text is not at the mercy of rounding.
    let prompt = "Write a Python function that returns the square of a number.";
    let (status, greedy) = server
        .post("/v1/chat/completions", &chat(prompt, json!({})))
        .await;
    assert_eq!(status, 200, "{greedy}");
    assert_eq!(greedy["object"], "chat.completion");
    assert_eq!(greedy["choices"][0]["finish_reason"], "length");
    assert_eq!(greedy["choices"][0]["message"]["role"], "assistant");
    assert_eq!(greedy["usage"]["completion_tokens"], 12);
    let prompt_tokens = greedy["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 10);
    assert_eq!(greedy["usage"]["total_tokens"], prompt_tokens + 12);
    // SmolLM2's llama.cpp reference (tests/reference) for this prompt begins so.
    assert!(
        content(&greedy).starts_with("```python\ndef square"),
        "{greedy}"
    );

    // The same request streamed gives the same text, in chunks, ending in [DONE], with usage last.
    let chunks = server
        .stream(
            "/v1/chat/completions",
            &chat(
                prompt,
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(streamed_text(&chunks, "delta"), content(&greedy));
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], greedy["usage"]);

    // The same seed samples the same text; max_completion_tokens is honoured.
    let seeded = chat(
        "Tell me a story.",
        json!({"temperature": 1.0, "seed": 42, "max_completion_tokens": 16}),
    );
    let (_, first) = server.post("/v1/chat/completions", &seeded).await;
    let (_, second) = server.post("/v1/chat/completions", &seeded).await;
    assert_eq!(content(&first), content(&second));
    assert_eq!(first["usage"]["completion_tokens"], 16);

    // A stop sequence ends the generation before it and is not shown.
    let stop_word = "square";
    let (_, stopped) = server
        .post(
            "/v1/chat/completions",
            &chat(prompt, json!({"stop": [stop_word, "never-seen"]})),
        )
        .await;
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    let text = content(&stopped);
    assert_eq!(text, "```python\ndef ");

    // Logprobs: one entry per token, the chosen token first among its alternatives.
    let (_, with_logprobs) = server
        .post(
            "/v1/chat/completions",
            &chat(
                "Hi",
                json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 4}),
            ),
        )
        .await;
    let entries = with_logprobs["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(entries.len(), 4);
    for entry in entries {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(
            top[0]["token"], entry["token"],
            "greedy picks the most likely token"
        );
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
    }

    // Penalties change a greedy continuation that repeats itself.
    let repeat = chat("Say 'la' many times.", json!({"max_tokens": 16}));
    let (_, plain) = server.post("/v1/chat/completions", &repeat).await;
    let mut penalised = repeat.clone();
    penalised["frequency_penalty"] = json!(2.0);
    penalised["presence_penalty"] = json!(2.0);
    let (status, penalised) = server.post("/v1/chat/completions", &penalised).await;
    assert_eq!(status, 200);
    assert_ne!(content(&plain), content(&penalised));
}

#[tokio::test]
async fn completions_on_a_base_model_and_a_chat_model() {
    let server = TestServer::start(&[SMOLLM, GEMMA]).await;
    // Prompts whose first tokens are no near-ties in llama.cpp's reference.
    let request =
        json!({"model": GEMMA, "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0});
    let (status, body) = server.post("/v1/completions", &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    // llama.cpp's greedy continuation (tests/reference/gemma-3-270m.json).
    let text = body["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(text.starts_with(" jumps over the lazy dog."), "{text:?}");
    assert_eq!(body["usage"]["completion_tokens"], 8);

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let chunks = server.stream("/v1/completions", &streamed).await;
    assert_eq!(streamed_text(&chunks, "text"), text);

    let (status, body) = server
        .post("/v1/completions", &json!({"model": SMOLLM, "prompt": "Q: What is 7 times 8?\nA:", "max_tokens": 5, "temperature": 0, "logprobs": 2}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert!(
        body["choices"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with(" 7 * 8"),
        "{body}"
    );
}

#[tokio::test]
async fn sixteen_concurrent_requests_all_complete_correctly() {
    let server = TestServer::start(&[SMOLLM]).await;
    let prompt = "Write a Python function that returns the square of a number.";
    let (_, alone) = server
        .post(
            "/v1/chat/completions",
            &chat(prompt, json!({"max_tokens": 8})),
        )
        .await;
    let expected = content(&alone).to_string();
    let requests = (0..16).map(|i| {
        let server = &server;
        async move {
            let stream = i % 2 == 0;
            let body = chat(prompt, json!({"max_tokens": 8, "stream": stream}));
            if stream {
                streamed_text(&server.stream("/v1/chat/completions", &body).await, "delta")
            } else {
                let (status, body) = server.post("/v1/chat/completions", &body).await;
                assert_eq!(status, 200, "{body}");
                content(&body).to_string()
            }
        }
    });
    let outputs = futures::future::join_all(requests).await;
    for output in outputs {
        assert_eq!(
            output, expected,
            "a request run alongside 15 others must equal it run alone"
        );
    }
}

#[tokio::test]
async fn a_client_that_disconnects_stops_its_generation() {
    let server = TestServer::start(&[SMOLLM]).await;
    let before = server.metric("aiaas_generations_cancelled_total").await;
    let response = server
        .client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        // Greedy, on a prompt whose answer runs past 32 tokens in llama.cpp's reference, so the
        // generation cannot end by itself before the client hangs up.
        .json(&chat(
            "Write a Python function that returns the square of a number.",
            json!({"max_tokens": 4000, "stream": true}),
        ))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    // Read until some tokens have arrived, then hang up.
    let mut seen = 0;
    while seen < 3 {
        let chunk = body.next().await.unwrap().unwrap();
        seen += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    drop(body);
    server.wait_for_cancellation(before).await;
    let generated = server.metric("aiaas_generated_tokens_total").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        server.metric("aiaas_generated_tokens_total").await,
        generated,
        "tokens still being generated"
    );
}

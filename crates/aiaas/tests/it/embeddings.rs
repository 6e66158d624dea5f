//! `/v1/embeddings` over HTTP with the real all-MiniLM-L6-v2: every input shape and encoding,
//! the reference vectors, concurrent callers, bad input, and metering.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::{error, TestServer, MINILM, SMOLLM};

fn reference_cases() -> Vec<(String, usize, Vec<f32>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/reference/all-minilm-l6-v2.json"
    );
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["text"].as_str().unwrap().to_string(),
                c["tokens"].as_u64().unwrap() as usize,
                floats(&c["embedding"]),
            )
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
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

fn vectors(body: &Value) -> Vec<Vec<f32>> {
    let data = body["data"].as_array().unwrap();
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
    }
    data.iter().map(|item| floats(&item["embedding"])).collect()
}

async fn embed(server: &TestServer, input: Value, extra: Value) -> (u16, Value) {
    let mut body = json!({"model": MINILM, "input": input});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    server.post("/v1/embeddings", &body).await
}

#[tokio::test]
async fn embeddings_match_the_reference_in_every_input_shape() {
    let server = TestServer::start(&[MINILM]).await;
    let (status, listing) = server.get(&format!("/v1/models/{MINILM}")).await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing["task"], "embedding");
    assert_eq!(listing["dimensions"], 384);
    assert_eq!(listing["context_length"], 256);

    let cases = reference_cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.0.as_str()).collect();
    let (status, body) = embed(&server, json!(texts), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], MINILM);
    let total: usize = cases.iter().map(|c| c.1).sum();
    assert_eq!(body["usage"]["prompt_tokens"], total);
    assert_eq!(body["usage"]["total_tokens"], total);
    let got = vectors(&body);
    assert_eq!(got.len(), cases.len());
    for ((text, _, expected), vector) in cases.iter().zip(&got) {
        assert!(cosine(expected, vector) >= 0.9999, "{text:?}");
    }

    // One string; base64 carries the same floats, little-endian.
    let (status, one) = embed(&server, json!(texts[0]), json!({})).await;
    assert_eq!(status, 200, "{one}");
    let (status, packed) = embed(
        &server,
        json!(texts[0]),
        json!({"encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{packed}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(packed["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, vectors(&one)[0]);

    // Token ids (without [CLS]/[SEP]) are framed like text: "hello world" is 7592, 2088.
    let (_, text) = embed(&server, json!("hello world"), json!({})).await;
    let (status, ids) = embed(&server, json!([7592, 2088]), json!({})).await;
    assert_eq!(status, 200, "{ids}");
    assert_eq!(ids["usage"]["prompt_tokens"], 4);
    assert!(cosine(&vectors(&text)[0], &vectors(&ids)[0]) > 0.99999);
    let (status, lists) = embed(&server, json!([[7592, 2088], [7592]]), json!({})).await;
    assert_eq!(status, 200, "{lists}");
    assert_eq!(vectors(&lists).len(), 2);

    // `dimensions` equal to the model's own is accepted.
    let (status, _) = embed(&server, json!("x"), json!({"dimensions": 384})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_vectors_in_order() {
    let server = std::sync::Arc::new(TestServer::start(&[MINILM]).await);
    let cases = std::sync::Arc::new(reference_cases());
    let requests = (0..32).map(|caller| {
        let server = server.clone();
        let cases = cases.clone();
        tokio::spawn(async move {
            // Each caller sends a different slice, short and long mixed, in its own order.
            let picks: Vec<usize> = (0..1 + caller % 5)
                .map(|i| (caller * 3 + i * 7) % cases.len())
                .collect();
            let texts: Vec<&str> = picks.iter().map(|&i| cases[i].0.as_str()).collect();
            let (status, body) = embed(&server, json!(texts), json!({})).await;
            assert_eq!(status, 200, "{body}");
            let got = vectors(&body);
            assert_eq!(got.len(), picks.len());
            for (&i, vector) in picks.iter().zip(&got) {
                assert!(cosine(&cases[i].2, vector) >= 0.9999, "caller {caller}");
            }
        })
    });
    for request in requests.collect::<Vec<_>>() {
        request.await.unwrap();
    }
}

#[tokio::test]
async fn bad_embedding_requests_get_clear_400s() {
    let server = TestServer::start(&[MINILM, SMOLLM]).await;
    let too_long = "word ".repeat(300);
    let many: Vec<&str> = vec!["x"; 2049];
    let cases = [
        (json!(""), json!({}), "empty string"),
        (json!([]), json!({}), "empty"),
        (json!(["ok", ""]), json!({}), "input[1]"),
        (json!([[]]), json!({}), "empty token list"),
        (json!(many), json!({}), "2048"),
        (json!(too_long), json!({}), "256"),
        (json!(5), json!({}), "token ids"),
        (json!([1.5]), json!({}), "token ids"),
        (json!([99999999]), json!({}), "vocabulary"),
        (json!("x"), json!({"dimensions": 128}), "384"),
        (
            json!("x"),
            json!({"encoding_format": "int8"}),
            "encoding_format",
        ),
    ];
    for (input, extra, needle) in cases {
        let (status, body) = embed(&server, input.clone(), extra).await;
        assert_eq!(status, 400, "{input}: {body}");
        let message = error(&body)["message"].as_str().unwrap();
        assert!(message.contains(needle), "{input}: {message}");
    }
    let (status, body) = server
        .post(
            "/v1/embeddings",
            &json!({"model": SMOLLM, "input": "a chat model cannot embed"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server
        .post(
            "/v1/chat/completions",
            &json!({"model": MINILM, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(error(&body)["message"]
        .as_str()
        .unwrap()
        .contains("/v1/embeddings"));
}

#[tokio::test]
async fn embeddings_are_metered_per_key() {
    let server = TestServer::start(&[MINILM]).await;
    let mut sent = 0;
    for input in [json!("one two three"), json!(["four", "five six"])] {
        let (status, body) = embed(&server, input, json!({})).await;
        assert_eq!(status, 200, "{body}");
        sent += body["usage"]["prompt_tokens"].as_i64().unwrap();
    }
    let (status, usage) = server.get(&format!("/admin/usage?model={MINILM}")).await;
    assert_eq!(status, 200, "{usage}");
    let group = &usage["data"][0];
    assert_eq!(group["requests"], 2, "{usage}");
    assert_eq!(group["prompt_tokens"], sent, "{usage}");
    assert_eq!(group["completion_tokens"], 0, "{usage}");
}

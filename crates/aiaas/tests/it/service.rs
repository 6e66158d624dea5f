//! Keys, open routes and the model list.

use futures::StreamExt;
use serde_json::json;

use crate::common::{column, error, TestServer, GEMMA, KEY, SMOLLM};

#[tokio::test]
async fn keys_models_and_open_routes() {
    let server = TestServer::start(&[SMOLLM, GEMMA]).await;
    let client = &server.client;

    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // Every response carries a request id: a new one, or the caller's own, echoed.
    assert_eq!(health.headers()["x-request-id"].len(), 36);
    let echoed = client
        .get(server.url("/v1/models"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 401);
    assert_eq!(echoed.headers()["x-request-id"], "trace-me-42");

    // No key, a wrong key: 401 invalid_api_key, in OpenAI's shape.
    for auth in [None, Some("aiaas-not-a-real-key")] {
        let mut request = client.get(server.url("/v1/models"));
        if let Some(key) = auth {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error(&body)["code"], "invalid_api_key");
    }
    let (status, body) = server.post("/v1/chat/completions", &json!({})).await;
    assert_eq!(status, 400, "{body}");

    let (status, list) = server.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    let ids = column(&list, "id");
    assert_eq!(ids, [GEMMA, SMOLLM]);

    let (status, smollm) = server.get(&format!("/v1/models/{SMOLLM}")).await;
    assert_eq!(status, 200);
    assert_eq!(smollm["object"], "model");
    assert_eq!(smollm["task"], "chat");
    assert_eq!(smollm["context_length"], 8192);
    assert_eq!(smollm["quantization"], "Q4_1");

    let (status, body) = server.get("/v1/models/no-such-model").await;
    assert_eq!(status, 404);
    assert_eq!(error(&body)["code"], "model_not_found");

    let unknown = client
        .get(server.url("/v1/nothing-here"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn sigterm_lets_a_stream_in_flight_finish_then_exits_cleanly() {
    let mut server = TestServer::start(&[SMOLLM]).await;
    let body = crate::common::chat(
        "Tell me a story.",
        json!({"max_tokens": 24, "stream": true}),
    );
    let response = server.post_as(KEY, "/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data: "));
    server.terminate();
    let mut rest = String::new();
    while let Some(chunk) = stream.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(
        rest.trim_end().ends_with("data: [DONE]"),
        "the stream was cut: {rest}"
    );
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    assert!(server.exit_status().await.success());
}

//! Model lifecycle: admin load and unload with memory really freed, the state and memory in
//! `/v1/models`, 503 with Retry-After while a model loads, the keep-alive, least-recently-used
//! eviction under a memory budget, and preloading with readiness.

use std::time::{Duration, Instant};

use aiaas_engine::ModelRepository;
use serde_json::{json, Value};

use crate::common::{TestServer, MINILM, SMOLLM};

async fn admin(server: &TestServer, action: &str, id: &str) -> Value {
    let (status, body) = server
        .post(&format!("/admin/models/{id}/{action}"), &json!({}))
        .await;
    assert_eq!(status, 200, "{action} {id}: {body}");
    body
}

async fn model(server: &TestServer, id: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/models/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `/v1/models/{id}` until its state is `state` (at most a minute).
async fn wait_for_state(server: &TestServer, id: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = model(server, id).await;
        if current["state"] == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never became {state}: {current}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn complete(server: &TestServer) -> (u16, Value) {
    let request = json!({"model": SMOLLM, "prompt": "Once upon a time", "max_tokens": 4});
    server.post("/v1/completions", &request).await
}

async fn embed(server: &TestServer) -> (u16, Value) {
    server
        .post(
            "/v1/embeddings",
            &json!({"model": MINILM, "input": "hello"}),
        )
        .await
}

/// The size of each model's weights file in the server's repository.
fn weights_bytes(server: &TestServer, id: &str) -> u64 {
    let repository = ModelRepository::open(server.home.join("models")).unwrap();
    let manifest = repository.list().unwrap().into_iter().find(|m| m.id == id);
    let path = repository.weights_path(&manifest.unwrap());
    std::fs::metadata(path).unwrap().len()
}

#[tokio::test]
async fn loading_and_unloading_twenty_times_gives_the_memory_back() {
    let server = TestServer::start(&[SMOLLM]).await;
    let model_bytes = weights_bytes(&server, SMOLLM);
    let mut loaded_rss = Vec::new();
    let mut unloaded_rss = Vec::new();
    for _ in 0..20 {
        let loaded = admin(&server, "load", SMOLLM).await;
        assert_eq!(loaded["state"], "loaded", "{loaded}");
        assert_eq!(loaded["memory_bytes"], model_bytes, "{loaded}");
        // A generation, so the worker thread, its buffers and a KV cache really exist.
        assert_eq!(complete(&server).await.0, 200);
        loaded_rss.push(server.metric("process_resident_memory_bytes").await);
        let unloaded = admin(&server, "unload", SMOLLM).await;
        assert_eq!(unloaded["unloaded"], true, "{unloaded}");
        assert_eq!(unloaded["state"], "available", "{unloaded}");
        assert_eq!(unloaded["memory_bytes"], 0, "{unloaded}");
        unloaded_rss.push(server.metric("process_resident_memory_bytes").await);
    }
    println!("resident memory loaded: {loaded_rss:?}\nresident memory unloaded: {unloaded_rss:?}");
    // Loading must cost memory, or a flat line afterwards would prove nothing.
    assert!(
        loaded_rss[0] > unloaded_rss[0] + model_bytes / 2,
        "loading {model_bytes} bytes of weights did not show in resident memory"
    );
    let margin = model_bytes / 4;
    assert!(
        unloaded_rss[19] < unloaded_rss[0] + margin,
        "20 loads and unloads kept {} MiB more than one did",
        (unloaded_rss[19] - unloaded_rss[0]) >> 20
    );
    assert_eq!(server.metric("aiaas_model_loaded").await, 0);
    // Unloading what is not loaded is not an error, and says so.
    let again = admin(&server, "unload", SMOLLM).await;
    assert_eq!(again["unloaded"], false);
}

#[tokio::test]
async fn a_request_for_a_model_still_loading_gets_503_with_retry_after() {
    let server = TestServer::start_configured(&[SMOLLM], "load_wait_secs = 0\n").await;
    assert_eq!(model(&server, SMOLLM).await["state"], "available");
    let request = json!({"model": SMOLLM, "prompt": "Hi", "max_tokens": 2});
    let response = server
        .post_as(crate::common::KEY, "/v1/completions", &request)
        .await;
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_loading", "{body}");
    // The load the request started goes on without it; once done, requests are served.
    wait_for_state(&server, SMOLLM, "loaded").await;
    assert_eq!(complete(&server).await.0, 200);
}

#[tokio::test]
async fn an_idle_model_is_unloaded_after_the_keep_alive() {
    let server = TestServer::start_configured(&[SMOLLM], "keep_alive_secs = 1\n").await;
    assert_eq!(complete(&server).await.0, 200);
    wait_for_state(&server, SMOLLM, "available").await;
    assert_eq!(server.metric("aiaas_model_loaded").await, 0);
    // And it comes back on the next request.
    assert_eq!(complete(&server).await.0, 200);
}

#[tokio::test]
async fn under_a_memory_budget_the_least_recently_used_model_makes_room() {
    let sizes = {
        let probe = TestServer::start(&[SMOLLM, MINILM]).await;
        (weights_bytes(&probe, SMOLLM), weights_bytes(&probe, MINILM))
    };
    // Room for either model, not both.
    let budget = sizes.0.max(sizes.1) + sizes.0.min(sizes.1) / 2;
    let config = format!("max_model_memory = \"{budget}B\"\n");
    let server = TestServer::start_configured(&[SMOLLM, MINILM], &config).await;

    assert_eq!(embed(&server).await.0, 200);
    assert_eq!(model(&server, MINILM).await["state"], "loaded");
    assert_eq!(complete(&server).await.0, 200);
    assert_eq!(model(&server, SMOLLM).await["state"], "loaded");
    assert_eq!(model(&server, MINILM).await["state"], "available");
    assert_eq!(server.metric("aiaas_model_loaded").await, 1);
    assert_eq!(embed(&server).await.0, 200);
    assert_eq!(model(&server, SMOLLM).await["state"], "available");
    assert_eq!(
        server.metric("aiaas_model_memory_bytes").await,
        sizes.1,
        "only the embedding model's memory is held"
    );
}

#[tokio::test]
async fn a_model_larger_than_the_whole_budget_is_refused_with_a_clear_message() {
    let server = TestServer::start_configured(&[SMOLLM], "max_model_memory = \"1MB\"\n").await;
    let (status, body) = complete(&server).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "model_too_large", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-model-memory"),
        "{body}"
    );
}

#[tokio::test]
async fn preloaded_models_are_ready_before_any_request_and_stay_loaded() {
    let config = format!("preload = [\"{SMOLLM}\"]\nkeep_alive_secs = 1\n");
    let server = TestServer::start_configured(&[SMOLLM, MINILM], &config).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = server.client.get(server.url("/readyz")).send().await;
        if response.unwrap().status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let preloaded = model(&server, SMOLLM).await;
    assert_eq!(preloaded["state"], "loaded");
    assert_eq!(preloaded["preload"], true);
    assert_eq!(model(&server, MINILM).await["state"], "available");
    // Well past the keep-alive, the preloaded model is still there; an ordinary one is not.
    assert_eq!(embed(&server).await.0, 200);
    wait_for_state(&server, MINILM, "available").await;
    assert_eq!(model(&server, SMOLLM).await["state"], "loaded");
}

#[test]
fn serve_refuses_to_start_with_a_preload_model_it_does_not_have() {
    let home = std::env::temp_dir().join(format!("aiaas-preload-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_aiaas"))
        .args(["serve", "--port", "0", "--no-default-model"])
        .args(["--preload", "no-such-model"])
        .env("AIAAS_HOME", &home)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no-such-model"), "{stderr}");
    std::fs::remove_dir_all(home).unwrap();
}

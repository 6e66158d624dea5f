//! `/metrics` after real traffic, parsed by the reference Prometheus text parser
//! (`prometheus_client`, Python), and the request id on log lines.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::common::{chat, TestServer, MINILM, SMOLLM};

/// Every sample as `(name, labels, value)`, parsed by prometheus_client.
fn parse(text: &str) -> Vec<(String, Value, f64)> {
    let python = std::env::var("AIAAS_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/prometheus_parse.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus-client (scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
    parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s[0].as_str().unwrap().to_string(),
                s[1].clone(),
                s[2].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(samples: &[(String, Value, f64)], name: &str, labels: Value) -> f64 {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| l.get(k) == Some(v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    assert_eq!(matching.len(), 1, "{name} {labels}: {matching:?}");
    matching[0]
}

#[tokio::test]
async fn metrics_parse_and_count_real_traffic() {
    let server = TestServer::start(&[SMOLLM, MINILM]).await;
    let (status, body) = server
        .post(
            "/v1/chat/completions",
            &chat("Say hi.", json!({"max_tokens": 5})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let completion = body["usage"]["completion_tokens"].as_f64().unwrap();
    let prompt = body["usage"]["prompt_tokens"].as_f64().unwrap();
    let (status, body) = server
        .post(
            "/v1/embeddings",
            &json!({"model": MINILM, "input": ["one", "two"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let embedded = body["usage"]["prompt_tokens"].as_f64().unwrap();
    let (status, _) = server.get("/v1/models/no-such-model").await;
    assert_eq!(status, 404);

    let samples = parse(&server.metrics_text().await);
    let chat_route = json!({"route": "/v1/chat/completions", "model": SMOLLM, "status": "200"});
    assert_eq!(
        value(&samples, "aiaas_http_requests_total", chat_route.clone()),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "aiaas_http_request_duration_seconds_count",
            chat_route
        ),
        1.0
    );
    // Route patterns, not raw paths; unknown model names do not become label values.
    let missing = json!({"route": "/v1/models/{id}", "model": "-", "status": "404"});
    assert_eq!(value(&samples, "aiaas_http_requests_total", missing), 1.0);
    assert!(!samples
        .iter()
        .any(|(_, l, _)| l.to_string().contains("no-such-model")));

    let smollm = json!({"model": SMOLLM});
    assert_eq!(
        value(&samples, "aiaas_generated_tokens_total", smollm.clone()),
        completion
    );
    assert_eq!(
        value(&samples, "aiaas_prompt_tokens_total", smollm.clone()),
        prompt
    );
    assert_eq!(
        value(
            &samples,
            "aiaas_time_to_first_token_seconds_count",
            smollm.clone()
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "aiaas_inter_token_latency_seconds_count",
            smollm.clone()
        ),
        completion - 1.0
    );
    assert_eq!(value(&samples, "aiaas_queue_depth", smollm.clone()), 0.0);
    assert!(value(&samples, "aiaas_batch_size_count", smollm.clone()) >= completion);
    assert_eq!(value(&samples, "aiaas_model_loaded", smollm.clone()), 1.0);
    assert!(value(&samples, "aiaas_model_memory_bytes", smollm) > 50e6);

    let minilm = json!({"model": MINILM});
    assert_eq!(
        value(&samples, "aiaas_prompt_tokens_total", minilm.clone()),
        embedded
    );
    assert_eq!(value(&samples, "aiaas_batch_size_sum", minilm.clone()), 2.0);
    assert_eq!(value(&samples, "aiaas_queue_depth", minilm), 0.0);

    let rss = value(&samples, "process_resident_memory_bytes", json!({}));
    assert!(rss > 50e6, "{rss}");
}

/// The server's log after one keyed request carrying the request id `trace-me-42`.
fn log_of_a_traced_request(config: &str) -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = TestServer::start_logging_configured(&[], config).await;
        let response = server
            .client
            .get(server.url("/v1/models"))
            .bearer_auth(crate::common::KEY)
            .header("x-request-id", "trace-me-42")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-request-id"], "trace-me-42");
        server.stop_and_read_log().await
    })
}

#[test]
fn request_ids_reach_the_log_lines() {
    let log = log_of_a_traced_request("");
    let line = log
        .lines()
        .find(|l| l.contains("trace-me-42"))
        .unwrap_or_else(|| panic!("no log line carries the request id:\n{log}"));
    assert!(line.contains("status=200"), "{line}");
    assert!(!log.contains(crate::common::KEY), "the key reached the log");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_request_id() {
    let log = log_of_a_traced_request("log_json = true\n");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let traced = lines
        .iter()
        .find(|l| l["span"]["id"] == "trace-me-42" && l["fields"]["status"] == 200)
        .unwrap_or_else(|| panic!("no JSON line carries the request id and status:\n{log}"));
    assert_eq!(traced["level"], "INFO");
    assert!(!log.contains(crate::common::KEY), "the key reached the log");
}

/// The log of a server that received one chat request whose content holds a marker.
fn log_of_a_request_with_content(config: &str) -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = TestServer::start_logging_configured(&[], config).await;
        let body = json!({
            "model": "none",
            "messages": [{"role": "user", "content": "private-marker-5150"}]
        });
        let (status, _) = server.post("/v1/chat/completions", &body).await;
        assert_eq!(status, 404);
        server.stop_and_read_log().await
    })
}

#[test]
fn request_content_reaches_the_log_only_when_the_operator_opts_in() {
    let log = log_of_a_request_with_content("");
    assert!(
        !log.contains("private-marker-5150"),
        "content in the log by default:\n{log}"
    );
    let log = log_of_a_request_with_content("log_request_bodies = true\n");
    assert!(
        log.contains("private-marker-5150"),
        "the opt-in logged nothing:\n{log}"
    );
    assert!(!log.contains(crate::common::KEY), "the key reached the log");
}

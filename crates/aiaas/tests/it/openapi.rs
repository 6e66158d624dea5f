//! The OpenAPI document: served open at `/openapi.json`, OpenAPI 3.1, covering every route; and
//! schemathesis (property-based fuzzing from that document) against the running server.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::common::{TestServer, KEY, MINILM, SMOLLM};

/// Every public route, by its documented path.
const ROUTES: &[&str] = &[
    "/v1/models",
    "/v1/models/{id}",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/images/classifications",
    "/v1/files",
    "/v1/files/{file_id}",
    "/v1/files/{file_id}/content",
    "/admin/keys",
    "/admin/keys/{id}/revoke",
    "/admin/keys/{id}/rotate",
    "/admin/usage",
    "/admin/audit",
    "/admin/models/{id}/load",
    "/admin/models/{id}/unload",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{id}",
    "/v2/models/{id}/ready",
    "/v2/models/{id}/infer",
];

#[tokio::test]
async fn the_openapi_document_is_3_1_open_and_covers_every_route() {
    let server = TestServer::start(&[]).await;
    let response = server.client.get(server.url("/openapi.json")).send().await;
    let response = response.unwrap();
    assert_eq!(response.status(), 200, "served without a key");
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let mut paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    let mut expected = ROUTES.to_vec();
    expected.sort_unstable();
    assert_eq!(paths, expected);
    // Keyed routes name the key and the OpenAI-shaped errors; open ones need nothing.
    let chat = &document["paths"]["/v1/chat/completions"]["post"];
    assert_eq!(chat["security"][0]["api_key"], serde_json::json!([]));
    assert_eq!(
        chat["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    assert!(document["paths"]["/healthz"]["get"]["security"].is_null());
    assert!(document["paths"]["/admin/keys"]["post"]["responses"]["403"].is_object());
}

/// The schemathesis command beside the test Python (`scripts/test` installs it there).
fn schemathesis() -> PathBuf {
    match std::env::var("AIAAS_PYTHON") {
        Ok(python) => PathBuf::from(python).with_file_name("schemathesis"),
        Err(_) => PathBuf::from("schemathesis"),
    }
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_response_off_the_document() {
    // A small cap on generated tokens keeps each fuzzed generation short.
    let server =
        TestServer::start_configured(&[SMOLLM, MINILM], "max_completion_tokens = 8\n").await;
    let schema = server.url("/openapi.json");
    // Schemathesis keeps a cache in its working folder: the server's temporary home, not the
    // source tree.
    let workdir = server.home.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis())
            .current_dir(workdir)
            .arg("run")
            .arg(schema)
            .args(["--header", &format!("Authorization: Bearer {KEY}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance",
            ])
            .args(["--max-examples", "30", "--workers", "2", "--seed", "1"])
            .args(["--request-timeout", "120", "--generation-database", "none"])
            .arg("--no-color")
            .output()
            .expect("schemathesis must be installed (scripts/test installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis failed:\n{stdout}\n{stderr}"
    );
}

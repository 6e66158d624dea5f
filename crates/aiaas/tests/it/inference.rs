//! The Open Inference Protocol (`/v2`): every kind of model as named tensors, in JSON by hand
//! and through Triton's own `tritonclient[http]` package.

use serde_json::{json, Value};

use crate::common::{run_python, TestServer, KEY, MINILM, SMOLLM};
use crate::images::{photo_path, EFFICIENTNET};

const G2P: &str = "g2p-en";

fn bytes_input(name: &str, values: &[&str]) -> Value {
    json!({"name": name, "shape": [values.len()], "datatype": "BYTES", "data": values})
}

#[tokio::test]
async fn every_model_answers_named_tensors_in_json() {
    let server = TestServer::start(&[G2P, MINILM]).await;
    let (status, live) = server.get("/v2/health/live").await;
    assert_eq!((status, &live["live"]), (200, &json!(true)));

    let (status, metadata) = server.get(&format!("/v2/models/{G2P}")).await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(
        metadata["inputs"],
        json!([{"name": "word", "datatype": "BYTES", "shape": [-1]}])
    );

    let request = json!({"id": "r1", "inputs": [bytes_input("word", &["hello", "Phoneme"])]});
    let (status, body) = server
        .post(&format!("/v2/models/{G2P}/infer"), &request)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "r1");
    assert_eq!(body["model_name"], G2P);
    assert_eq!(body["outputs"][0]["name"], "phonemes");
    assert_eq!(body["outputs"][0]["shape"], json!([2]));
    assert_eq!(body["outputs"][0]["data"][0], "HH EH1 L OW0");

    // The same vectors as /v1/embeddings.
    let request = json!({"inputs": [bytes_input("text", &["A cat sits on the mat."])]});
    let (status, body) = server
        .post(&format!("/v2/models/{MINILM}/infer"), &request)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([1, 384]));
    let (_, v1) = server
        .post(
            "/v1/embeddings",
            &json!({"model": MINILM, "input": "A cat sits on the mat."}),
        )
        .await;
    let ours: Vec<f64> = serde_json::from_value(body["outputs"][0]["data"].clone()).unwrap();
    let theirs: Vec<f64> = serde_json::from_value(v1["data"][0]["embedding"].clone()).unwrap();
    assert!(ours.iter().zip(&theirs).all(|(a, b)| (a - b).abs() < 1e-6));
}

#[tokio::test]
async fn wrong_tensors_get_clear_400s() {
    let server = TestServer::start(&[G2P]).await;
    let infer = format!("/v2/models/{G2P}/infer");
    let cases = [
        (
            json!({"inputs": [bytes_input("words", &["hi"])]}),
            "no input `words`",
        ),
        (
            json!({"inputs": [{"name": "word", "shape": [1], "datatype": "FP32", "data": [1.0]}]}),
            "takes BYTES",
        ),
        (
            json!({"inputs": [{"name": "word", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}),
            "holds 3",
        ),
        (
            json!({"inputs": [{"name": "word", "shape": [1], "datatype": "STRING", "data": ["a"]}]}),
            "unknown datatype",
        ),
        (
            json!({"inputs": [{"name": "word", "shape": [1], "datatype": "BYTES", "data": [7]}]}),
            "not a string",
        ),
        (
            json!({"inputs": [{"name": "word", "shape": [-1], "datatype": "BYTES", "data": ["a"]}]}),
            "negative",
        ),
        (
            json!({"inputs": [bytes_input("word", &["two words"])]}),
            "one word",
        ),
        (json!({"inputs": []}), "`word` (BYTES) is required"),
        (
            json!({"inputs": [bytes_input("word", &["hi"])], "outputs": [{"name": "nope"}]}),
            "no output `nope`",
        ),
        (json!({"input": []}), "invalid inference request"),
    ];
    for (request, words) in cases {
        let (status, body) = server.post(&infer, &request).await;
        assert_eq!(status, 400, "{request}: {body}");
        // The protocol's error shape: `{"error": "message"}`.
        let message = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
        assert!(message.contains(words), "{words:?} not in {message:?}");
    }
    let (status, body) = server.get("/v2/models/no-such-model").await;
    assert_eq!(status, 404, "{body}");
    let status = (server.client.get(server.url(&format!("/v2/models/{G2P}"))))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "model routes need a key");
}

#[tokio::test]
async fn tritonclient_works_unchanged() {
    let server = TestServer::start(&[EFFICIENTNET, G2P, MINILM, SMOLLM]).await;
    let env = vec![
        (
            "TRITON_URL",
            server.base.trim_start_matches("http://").to_string(),
        ),
        ("API_KEY", KEY.to_string()),
        ("IMAGE_MODEL", EFFICIENTNET.to_string()),
        ("G2P_MODEL", G2P.to_string()),
        ("EMBEDDING_MODEL", MINILM.to_string()),
        ("CHAT_MODEL", SMOLLM.to_string()),
        ("PHOTO", photo_path().display().to_string()),
    ];
    let stdout = run_python("tritonclient_check.py", env).await;
    assert!(
        stdout.contains("all tritonclient checks passed"),
        "{stdout}"
    );
}

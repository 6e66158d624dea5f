//! The Files API end to end: bodies stored encrypted and read back whole, each key seeing only
//! its own files, damage on disk reported as an error (never as content), size limits.

use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::common::{aiaas, error, TestServer, KEY};
use crate::limits::create_key;

async fn upload(server: &TestServer, key: &str, form: Form) -> (u16, Value) {
    let response = server
        .client
        .post(server.url("/v1/files"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn file_form(purpose: &str, body: Vec<u8>) -> Form {
    Form::new()
        .text("purpose", purpose.to_string())
        .part("file", Part::bytes(body).file_name("numbers.jsonl"))
}

async fn get_as(server: &TestServer, key: &str, path: &str) -> reqwest::Response {
    let url = server.url(path);
    server
        .client
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// The stored (sealed) bodies in the server's home.
fn sealed_bodies(server: &TestServer) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(server.home.join("files"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "sealed"))
        .collect()
}

#[tokio::test]
async fn files_are_stored_encrypted_for_their_key_only_and_damage_is_an_error() {
    let server = TestServer::start(&[]).await;
    // Several 64 KiB chunks of a recognizable text.
    let body = b"confidential quarterly numbers: 4242\n".repeat(5_000);
    let (status, file) = upload(&server, KEY, file_form("batch", body.clone())).await;
    assert_eq!(status, 200, "{file}");
    let id = file["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("file-"), "{file}");
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], body.len());
    assert_eq!(file["filename"], "numbers.jsonl");
    assert_eq!(file["purpose"], "batch");

    // Read back whole; listed and described.
    let content = get_as(&server, KEY, &format!("/v1/files/{id}/content")).await;
    assert_eq!(content.status(), 200);
    assert_eq!(content.bytes().await.unwrap().as_ref(), body.as_slice());
    let (status, list) = server.get("/v1/files").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["id"], id.as_str());
    let (_, batch_only) = server.get("/v1/files?purpose=vision").await;
    assert_eq!(batch_only["data"], json!([]));
    let (status, described) = server.get(&format!("/v1/files/{id}")).await;
    assert_eq!((status, &described["bytes"]), (200, &file["bytes"]));

    // On disk: no plaintext anywhere in the home folder's files (bodies or database).
    let sealed = sealed_bodies(&server);
    assert_eq!(sealed.len(), 1);
    for entry in walk(&server.home) {
        let raw = std::fs::read(&entry).unwrap();
        assert!(
            !raw.windows(12).any(|w| w == b"confidential"),
            "plaintext found in {}",
            entry.display()
        );
    }

    // Another key sees nothing of it.
    let (other, _) = create_key(&server, json!({"name": "other"})).await;
    assert_eq!(
        get_as(&server, &other, &format!("/v1/files/{id}"))
            .await
            .status(),
        404
    );
    let content = get_as(&server, &other, &format!("/v1/files/{id}/content")).await;
    assert_eq!(content.status(), 404);
    let list: Value = get_as(&server, &other, "/v1/files")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]));

    // Bad uploads.
    let (status, body_of) = upload(&server, KEY, file_form("homework", b"x".to_vec())).await;
    assert_eq!(
        (status, &error(&body_of)["param"]),
        (400, &json!("purpose"))
    );
    let no_file = Form::new().text("purpose", "batch");
    let (status, body_of) = upload(&server, KEY, no_file).await;
    assert_eq!((status, &error(&body_of)["param"]), (400, &json!("file")));

    // One flipped byte on disk: an integrity error, not content.
    let mut raw = std::fs::read(&sealed[0]).unwrap();
    let middle = raw.len() / 2;
    raw[middle] ^= 0x20;
    std::fs::write(&sealed[0], &raw).unwrap();
    let damaged = get_as(&server, KEY, &format!("/v1/files/{id}/content")).await;
    assert_eq!(damaged.status(), 500);
    let damaged: Value = damaged.json().await.unwrap();
    assert_eq!(error(&damaged)["code"], "file_integrity_error", "{damaged}");

    // Deleted: gone from the API and from the disk.
    let response = server
        .client
        .delete(server.url(&format!("/v1/files/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let deleted: Value = response.json().await.unwrap();
    assert_eq!(deleted["deleted"], true);
    assert_eq!(server.get(&format!("/v1/files/{id}")).await.0, 404);
    assert!(sealed_bodies(&server).is_empty());
}

#[tokio::test]
async fn an_upload_over_the_size_limit_is_refused_and_leaves_nothing() {
    let server = TestServer::start_configured(&[], "max_file_bytes = 100000\n").await;
    let (status, body) = upload(&server, KEY, file_form("batch", vec![7; 300_000])).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = upload(&server, KEY, file_form("batch", vec![7; 1000])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sealed_bodies(&server).len(), 1);
    let incoming = std::fs::read_dir(server.home.join("files").join("incoming")).unwrap();
    assert_eq!(incoming.count(), 0);
}

#[tokio::test]
async fn rotating_the_master_key_rewraps_keys_without_rewriting_bodies() {
    let mut server = TestServer::start(&[]).await;
    let body = b"ledger line\n".repeat(20_000);
    let (status, file) = upload(&server, KEY, file_form("user_data", body.clone())).await;
    assert_eq!(status, 200, "{file}");
    let id = file["id"].as_str().unwrap().to_string();
    let key_file = server.home.join("master.key");
    let (old_key, sealed) = (std::fs::read(&key_file).unwrap(), sealed_bodies(&server));
    let old_body = std::fs::read(&sealed[0]).unwrap();

    server.kill();
    let printed = aiaas(&server.home, &["keys", "rotate-master"], &[]);
    assert!(printed.contains("re-wrapped 1 file key"), "{printed}");
    assert_ne!(std::fs::read(&key_file).unwrap(), old_key);
    assert_eq!(
        std::fs::read(&sealed[0]).unwrap(),
        old_body,
        "the body was rewritten"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    server.restart();
    let content = get_as(&server, KEY, &format!("/v1/files/{id}/content")).await;
    assert_eq!(content.status(), 200);
    assert_eq!(content.bytes().await.unwrap().as_ref(), body.as_slice());
}

#[tokio::test]
async fn a_master_key_from_the_environment_is_used_and_needed() {
    let first = "11".repeat(32);
    let mut server = TestServer::start_with_env(&[], &[("AIAAS_MASTER_KEY", &first)]).await;
    let body = b"kept under the environment's key".to_vec();
    let (status, file) = upload(&server, KEY, file_form("batch", body.clone())).await;
    assert_eq!(status, 200, "{file}");
    let id = file["id"].as_str().unwrap().to_string();
    assert!(
        !server.home.join("master.key").exists(),
        "a key file was written"
    );

    // Rotated to a second key given in the environment; the server restarted with it reads
    // the file, one with the first key alone cannot unwrap it.
    server.kill();
    let second = "22".repeat(32);
    let env = [
        ("AIAAS_MASTER_KEY", first.as_str()),
        ("AIAAS_NEW_MASTER_KEY", &second),
    ];
    let printed = aiaas(&server.home, &["keys", "rotate-master"], &env);
    assert!(
        printed.contains(&format!("AIAAS_MASTER_KEY={second}")),
        "{printed}"
    );
    server.env_set("AIAAS_MASTER_KEY", &second);
    server.restart();
    let content = get_as(&server, KEY, &format!("/v1/files/{id}/content")).await;
    assert_eq!(content.bytes().await.unwrap().as_ref(), body.as_slice());
    server.kill();
    server.env_set("AIAAS_MASTER_KEY", &first);
    server.restart();
    let refused = get_as(&server, KEY, &format!("/v1/files/{id}/content")).await;
    assert_eq!(refused.status(), 500);
}

/// A process's peak resident memory in bytes (`VmHWM` in /proc).
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_large_upload_streams_in_bounded_memory_and_one_cut_off_leaves_nothing() {
    let mut server = TestServer::start(&[]).await;
    // 128 MiB, generated while it is sent.
    let size = 128u64 << 20;
    let pieces =
        futures::stream::iter((0..128).map(|_| Ok::<_, std::io::Error>(vec![42u8; 1 << 20])));
    let part =
        Part::stream_with_length(reqwest::Body::wrap_stream(pieces), size).file_name("big.bin");
    let before = peak_memory(server.pid());
    let (status, file) = upload(
        &server,
        KEY,
        Form::new().text("purpose", "batch").part("file", part),
    )
    .await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["bytes"], size);
    let after = peak_memory(server.pid());
    println!(
        "server peak resident memory: {before} bytes before, {after} after a {size}-byte upload"
    );
    assert!(after < before + (32 << 20), "{before} → {after}");

    // An upload still arriving when the server is killed: after the restart, nothing of it.
    let slow = futures::stream::unfold(0, |sent| async move {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        (sent < 1000).then(|| (Ok::<_, std::io::Error>(vec![1u8; 64 << 10]), sent + 1))
    });
    let form = Form::new().text("purpose", "batch").part(
        "file",
        Part::stream(reqwest::Body::wrap_stream(slow)).file_name("cut.bin"),
    );
    let request = server
        .client
        .post(server.url("/v1/files"))
        .bearer_auth(KEY)
        .multipart(form);
    let upload_task = tokio::spawn(request.send());
    let incoming = server.home.join("files").join("incoming");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_dir(&incoming).unwrap().count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.kill();
    assert!(upload_task.await.unwrap().is_err());
    // A body no record names, as a crash between moving one into place and recording it
    // would leave: removed at start.
    let orphan = server
        .home
        .join("files")
        .join("file-0123456789abcdef01234567.sealed");
    std::fs::write(&orphan, b"AIAASF01").unwrap();
    server.restart();
    assert!(!orphan.exists(), "the orphaned body is still there");
    let (_, list) = server.get("/v1/files").await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["big.bin"]);
    assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), 0);
    assert_eq!(sealed_bodies(&server).len(), 1);
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

//! HTTPS end to end: the server on a development certificate, clients that trust its CA (the
//! `openai` SDK among them) and clients that must refuse it; the certificate replaced on disk
//! while the server runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aiaas_server::tls::{dev_certificates, DevCertificates};

use crate::common::{TestServer, KEY};

/// Certificates for the names a local client uses.
fn local(days: i64) -> DevCertificates {
    dev_certificates(&["localhost".into(), "127.0.0.1".into()], days).unwrap()
}

/// Writes a pair where the server reads it; the key first, so that a change to the chain
/// file means the pair is whole.
fn install(dir: &Path, certificates: &DevCertificates) {
    std::fs::write(dir.join("key.pem"), &certificates.key).unwrap();
    std::fs::write(dir.join("cert.pem"), &certificates.chain).unwrap();
}

/// A client that trusts only `ca`.
fn trusting(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// The full error chain of a failed request, for matching on the TLS reason.
async fn failure(client: &reqwest::Client, url: &str) -> String {
    match client.get(url).send().await {
        Ok(response) => panic!("{url} answered {} instead of failing", response.status()),
        Err(e) => {
            let mut chain = format!("{e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                chain.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            chain
        }
    }
}

/// Waits until a request from `client` fails with `reason` (the server picked up new files).
async fn until_failing_with(client: &reqwest::Client, url: &str, reason: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let chain = failure(client, url).await;
        if chain.to_lowercase().contains(reason) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never failed with {reason}: {chain}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn https_serves_clients_that_trust_its_ca_and_reloads_a_replaced_certificate() {
    let dir: PathBuf = std::env::temp_dir().join(format!("aiaas-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = local(30);
    install(&dir, &first);
    let config = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        dir.join("cert.pem").display().to_string(),
        dir.join("key.pem").display().to_string()
    );
    let server = TestServer::start_configured(&[], &config).await;
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let health = format!("{}/healthz", server.base.replace("127.0.0.1", "localhost"));

    // Trusting the CA: served, over HTTP/2 when offered.
    let response = trusting(&first.ca).get(&health).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // Not trusting it (the system's roots only): refused.
    let chain = failure(&reqwest::Client::new(), &health).await;
    assert!(chain.to_lowercase().contains("unknownissuer"), "{chain}");
    // Plain HTTP on the TLS port: no answer.
    let plain = health.replace("https://", "http://");
    failure(&reqwest::Client::new(), &plain).await;

    // The `openai` SDK with the CA file.
    std::fs::write(dir.join("ca.pem"), &first.ca).unwrap();
    let python = std::env::var("AIAAS_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import os, openai\n\
        client = openai.OpenAI(http_client=openai.DefaultHttpxClient(verify=os.environ['CA_FILE']))\n\
        print('models:', len(client.models.list().data))\n";
    let output = std::process::Command::new(python)
        .args(["-c", script])
        .env("OPENAI_BASE_URL", format!("{}/v1", server.base))
        .env("OPENAI_API_KEY", KEY)
        .env("CA_FILE", dir.join("ca.pem"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Replaced by an expired certificate: refused as expired, without a restart.
    let expired = local(-1);
    install(&dir, &expired);
    until_failing_with(&trusting(&expired.ca), &health, "expired").await;
    // By one for another name: refused as not valid for this name.
    let elsewhere = dev_certificates(&["example.com".into()], 30).unwrap();
    install(&dir, &elsewhere);
    until_failing_with(&trusting(&elsewhere.ca), &health, "not valid for name").await;
    // By a good one again: served.
    let renewed = local(30);
    install(&dir, &renewed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while trusting(&renewed.ca).get(&health).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

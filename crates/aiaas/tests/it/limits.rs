//! Keys with scopes and limits, over the admin API: issue #3's exactness under concurrency.

use serde_json::{json, Value};

use crate::common::{aiaas, column, error, TestServer, GEMMA, KEY, SMOLLM};

/// Creates a key over the admin API; returns `(secret, id)`.
pub async fn create_key(server: &TestServer, spec: Value) -> (String, String) {
    let (status, body) = server.post("/admin/keys", &spec).await;
    assert_eq!(status, 200, "{body}");
    (
        body["key"].as_str().unwrap().to_string(),
        body["record"]["id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn scopes_admin_rights_and_revocation() {
    let server = TestServer::start(&[SMOLLM, GEMMA]).await;
    let (key, id) = create_key(&server, json!({"name": "app", "models": [SMOLLM]})).await;

    // The key sees only its model; the other one is reported as missing, not as forbidden.
    let list: Value = server
        .client
        .get(server.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids = column(&list, "id");
    assert_eq!(ids, [SMOLLM]);
    let response = server
        .post_as(
            &key,
            "/v1/completions",
            &json!({"model": GEMMA, "prompt": "hi", "max_tokens": 1}),
        )
        .await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error(&body)["code"], "model_not_found");

    // Not an admin: 403 on the admin API.
    let response = server
        .post_as(&key, "/admin/keys", &json!({"name": "sneaky"}))
        .await;
    assert_eq!(response.status(), 403);

    // Revoked: 401 at once.
    let response = server.chat_as(&key, "hi", json!({"max_tokens": 1})).await;
    assert_eq!(response.status(), 200);
    let (status, _) = server
        .post(&format!("/admin/keys/{id}/revoke"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let response = server.chat_as(&key, "hi", json!({"max_tokens": 1})).await;
    assert_eq!(response.status(), 401);

    // Rotation: the old secret stops, the new one works; the audit log saw it all.
    let (old, id) = create_key(&server, json!({"name": "rotating"})).await;
    let (status, rotated) = server
        .post(&format!("/admin/keys/{id}/rotate"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let new = rotated["key"].as_str().unwrap();
    assert_eq!(server.models_status(&old).await, 401);
    assert_eq!(server.models_status(new).await, 200);
    let (_, audit) = server.get("/admin/audit").await;
    let actions = column(&audit, "action");
    assert_eq!(
        actions,
        ["key.rotate", "key.create", "key.revoke", "key.create"]
    );
}

#[tokio::test]
async fn two_hundred_concurrent_requests_on_rpm_50_admit_exactly_50() {
    let server = TestServer::start(&[SMOLLM]).await;
    let (key, _) = create_key(&server, json!({"name": "limited", "rpm": 50})).await;
    let requests = (0..200).map(|_| {
        let client = server.client.clone();
        let url = server.url("/v1/models");
        let key = key.clone();
        async move { client.get(url).bearer_auth(key).send().await.unwrap() }
    });
    let responses = futures::future::join_all(requests).await;
    let mut ok = 0;
    for response in responses {
        assert!(response
            .headers()
            .contains_key("x-ratelimit-limit-requests"));
        assert!(response
            .headers()
            .contains_key("x-ratelimit-reset-requests"));
        match response.status().as_u16() {
            200 => ok += 1,
            429 => {
                let retry_after: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=61).contains(&retry_after));
                let body: Value = response.json().await.unwrap();
                assert_eq!(error(&body)["code"], "rate_limit_exceeded");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 50);
}

#[tokio::test]
async fn token_limits_reserve_the_maximum_and_quotas_stop_use() {
    let server = TestServer::start(&[SMOLLM]).await;
    // A request reserves prompt + max_tokens: one that could exceed the per-minute budget is refused.
    let (key, _) = create_key(&server, json!({"name": "tpm", "tpm": 100})).await;
    let response = server.chat_as(&key, "hi", json!({"max_tokens": 200})).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["x-ratelimit-limit-tokens"], "100");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error(&body)["code"], "rate_limit_exceeded");
    // A small one fits, and settles to what it used, not what it reserved.
    let response = server.chat_as(&key, "hi", json!({"max_tokens": 2})).await;
    assert_eq!(response.status(), 200);
    let remaining: i64 = response.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        remaining,
        100 - body["usage"]["total_tokens"].as_i64().unwrap()
    );

    // A daily quota: once spent, 429 insufficient_quota.
    let (key, _) = create_key(&server, json!({"name": "quota", "daily_tokens": 60})).await;
    let response = server.chat_as(&key, "hi", json!({"max_tokens": 4})).await;
    assert_eq!(response.status(), 200);
    let response = server.chat_as(&key, "hi", json!({"max_tokens": 4})).await;
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error(&body)["code"], "insufficient_quota");
}

/// Runs the `aiaas` command line on the test server's home, or against it over HTTP.
fn cli(server: &TestServer, args: &[&str], remote: bool) -> String {
    let env: &[(&str, &str)] = if remote {
        &[("AIAAS_SERVER", &server.base), ("AIAAS_API_KEY", KEY)]
    } else {
        &[]
    };
    aiaas(&server.home, args, env)
}

#[tokio::test]
async fn the_cli_manages_keys_of_a_running_server_remotely_and_locally() {
    let server = TestServer::start(&[]).await;
    let created = cli(
        &server,
        &["keys", "create", "--name", "from-afar", "--rpm", "5"],
        true,
    );
    let secret = created.lines().last().unwrap().trim().to_string();
    let id = created.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(server.models_status(&secret).await, 200);
    // The local database shows the key the remote call made, but never its secret.
    let listed = cli(&server, &["keys", "list"], false);
    assert!(
        listed.contains("from-afar") && listed.contains(&id),
        "{listed}"
    );
    assert!(!listed.contains(&secret));
    // Revoked from the command line: the running server refuses it at once.
    cli(&server, &["keys", "revoke", &id], false);
    assert_eq!(server.models_status(&secret).await, 401);
    let audit = cli(&server, &["keys", "audit"], true);
    assert!(
        audit.contains("key.revoke") && audit.contains("actor=cli"),
        "{audit}"
    );
}

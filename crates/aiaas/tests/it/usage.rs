//! Metering: what clients were told they used equals what `aiaas usage` reports, to the token,
//! including abandoned streams; and a SIGKILL loses no committed usage.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::common::{aiaas, chat, TestServer, SMOLLM};
use crate::limits::create_key;

/// A prompt whose greedy answer runs past 32 tokens (llama.cpp's reference), so a stream of it is
/// still generating when the client walks away.
const PROMPT: &str = "Write a Python function that returns the square of a number.";

fn totals(usage: &Value) -> (i64, i64, i64) {
    let group = &usage["data"][0];
    (
        group["requests"].as_i64().unwrap_or(0),
        group["prompt_tokens"].as_i64().unwrap_or(0),
        group["completion_tokens"].as_i64().unwrap_or(0),
    )
}

#[tokio::test]
async fn reported_usage_equals_returned_usage_including_abandoned_streams() {
    let server = TestServer::start(&[SMOLLM]).await;
    let (key, id) = create_key(&server, json!({"name": "metered"})).await;
    let (mut prompt, mut completion) = (0, 0);
    for max_tokens in [1, 5, 9] {
        let response = server
            .chat_as(&key, PROMPT, json!({"max_tokens": max_tokens}))
            .await;
        let body: Value = response.json().await.unwrap();
        prompt += body["usage"]["prompt_tokens"].as_i64().unwrap();
        completion += body["usage"]["completion_tokens"].as_i64().unwrap();
    }
    let streamed = chat(
        PROMPT,
        json!({"max_tokens": 7, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let text = server
        .post_as(&key, "/v1/chat/completions", &streamed)
        .await
        .text()
        .await
        .unwrap();
    let last_data = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .rfind(|p| *p != "[DONE]")
        .unwrap();
    let last: Value = serde_json::from_str(last_data).unwrap();
    prompt += last["usage"]["prompt_tokens"].as_i64().unwrap();
    completion += last["usage"]["completion_tokens"].as_i64().unwrap();
    let prompt_of_one = last["usage"]["prompt_tokens"].as_i64().unwrap();

    // A stream the client walks away from: the client never hears its usage, but what was
    // generated is counted.
    let abandoned = chat(PROMPT, json!({"max_tokens": 4000, "stream": true}));
    let mut body = server
        .post_as(&key, "/v1/chat/completions", &abandoned)
        .await
        .bytes_stream();
    let mut seen = 0;
    while seen < 4 {
        seen += String::from_utf8_lossy(&body.next().await.unwrap().unwrap())
            .matches("data: ")
            .count();
    }
    drop(body);
    // Its row appears once the worker has stopped (cancelled, or done had it been quicker).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let usage = loop {
        let (status, usage) = server.get(&format!("/admin/usage?key={id}")).await;
        assert_eq!(status, 200, "{usage}");
        if totals(&usage).0 == 5 {
            break usage;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no usage row for the abandoned stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (requests, db_prompt, db_completion) = totals(&usage);
    assert_eq!(requests, 5);
    assert_eq!(db_prompt, prompt + prompt_of_one);
    // The abandoned stream generated at least the tokens the client saw (its first chunk
    // carries only the role), and is counted exactly as generated.
    assert!(
        db_completion - completion >= (seen as i64) - 1,
        "{db_completion} vs {completion}"
    );

    // The command line reports the same numbers from the same database.
    let printed = aiaas(&server.home, &["usage", "--key", &id, "--json"], &[]);
    let cli: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(cli, usage["data"]);
}

#[tokio::test]
async fn a_sigkill_under_load_loses_no_committed_usage() {
    let mut server = TestServer::start(&[SMOLLM]).await;
    let (key, id) = create_key(&server, json!({"name": "durable"})).await;
    let mut committed = (0, 0, 0);
    for _ in 0..4 {
        let response = server.chat_as(&key, "Hi", json!({"max_tokens": 3})).await;
        let body: Value = response.json().await.unwrap();
        committed.0 += 1;
        committed.1 += body["usage"]["prompt_tokens"].as_i64().unwrap();
        committed.2 += body["usage"]["completion_tokens"].as_i64().unwrap();
    }
    // Load in flight when the server dies.
    let in_flight: Vec<_> = (0..6)
        .map(|_| {
            let client = server.client.clone();
            let url = server.url("/v1/chat/completions");
            let key = key.clone();
            tokio::spawn(async move {
                let _ = client
                    .post(url)
                    .bearer_auth(key)
                    .json(&chat("Tell me a story.", json!({"max_tokens": 200})))
                    .send()
                    .await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill_and_restart();
    for task in in_flight {
        let _ = task.await;
    }

    // Everything answered before the kill is there; the database opens and keeps working.
    let (status, usage) = server.get(&format!("/admin/usage?key={id}")).await;
    assert_eq!(status, 200, "{usage}");
    let (requests, prompt, completion) = totals(&usage);
    assert!(
        requests >= committed.0 && prompt >= committed.1 && completion >= committed.2,
        "{usage}"
    );
    let response = server.chat_as(&key, "Hi", json!({"max_tokens": 2})).await;
    let body: Value = response.json().await.unwrap();
    let (_, after) = server.get(&format!("/admin/usage?key={id}")).await;
    let (requests_after, _, completion_after) = totals(&after);
    assert_eq!(requests_after, requests + 1);
    assert_eq!(
        completion_after,
        completion + body["usage"]["completion_tokens"].as_i64().unwrap()
    );
}

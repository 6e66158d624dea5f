//! A running server for a test: a temporary home with the requested catalog models imported,
//! `aiaas serve --port 0` started as a child process, its address read from stdout.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use aiaas_engine::{catalog, fetch, ModelRepository};
use serde_json::Value;

pub const KEY: &str = "aiaas-test-key-for-integration";
pub const SMOLLM: &str = "smollm2-135m-instruct";
pub const GEMMA: &str = "gemma-3-270m";
pub const MINILM: &str = "all-minilm-l6-v2";

pub struct TestServer {
    pub base: String,
    pub home: PathBuf,
    child: Child,
    /// Extra environment of the server process (kept for restarts).
    env: Vec<(String, String)>,
    pub client: reqwest::Client,
}

impl TestServer {
    pub async fn start(models: &[&str]) -> Self {
        Self::launch(models, false, "", &[]).await
    }

    /// Like `start`, with extra environment variables for the server.
    pub async fn start_with_env(models: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(models, false, "", env).await
    }

    /// Like `start_configured`, with the server's log (stderr) written to `server.log` in its
    /// home.
    pub async fn start_logging_configured(models: &[&str], config: &str) -> Self {
        Self::launch(models, true, config, &[]).await
    }

    /// Like `start`, with `config` as the home's `aiaas.toml`.
    pub async fn start_configured(models: &[&str], config: &str) -> Self {
        Self::launch(models, false, config, &[]).await
    }

    async fn launch(
        models: &[&str],
        capture_log: bool,
        config: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let home =
            std::env::temp_dir().join(format!("aiaas-it-{}-{}", std::process::id(), rand_suffix()));
        let repository = ModelRepository::open(home.join("models")).unwrap();
        for name in models {
            let entry = catalog::find(name).unwrap();
            let path = fetch::fetch(entry)
                .await
                .unwrap_or_else(|e| panic!("the model {name} could not be fetched: {e}"));
            repository.import(&path, Some(name), Some(name)).unwrap();
        }
        std::fs::write(home.join("aiaas.toml"), config).unwrap();
        let log = capture_log.then(|| home.join("server.log"));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, base) = spawn(&home, log.as_deref(), &env);
        Self {
            base,
            home,
            child,
            env,
            client: reqwest::Client::new(),
        }
    }

    /// Stops the server (SIGTERM, then waits) and returns what it logged (`start_logging_configured`).
    pub async fn stop_and_read_log(mut self) -> String {
        self.terminate();
        self.exit_status().await;
        std::fs::read_to_string(self.home.join("server.log")).unwrap()
    }

    /// Kills the server with SIGKILL (no chance to flush anything) and starts it again on the
    /// same home folder.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sets an environment variable of the server for its next `restart`.
    pub fn env_set(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_string(), value.to_string()));
    }

    /// Starts the server again on the same home folder (after `kill`).
    pub fn restart(&mut self) {
        let (child, base) = spawn(&self.home, None, &self.env);
        self.child = child;
        self.base = base;
    }

    /// Sends SIGTERM, as a service manager stopping the server would.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (at most a minute) for the server to exit; returns its status.
    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A chat completion with another key.
    pub async fn chat_as(&self, key: &str, content: &str, extra: Value) -> reqwest::Response {
        self.post_as(key, "/v1/chat/completions", &chat(content, extra))
            .await
    }

    /// Waits until the cancelled-generations counter passes `before`.
    pub async fn wait_for_cancellation(&self, before: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.metric("aiaas_generations_cancelled_total").await <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the generation was not cancelled"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The status of `GET /v1/models` with `key`: the cheapest check that a key works.
    pub async fn models_status(&self, key: &str) -> u16 {
        let response = self
            .client
            .get(self.url("/v1/models"))
            .bearer_auth(key)
            .send()
            .await;
        response.unwrap().status().as_u16()
    }

    /// A request with another key.
    pub async fn post_as(&self, key: &str, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, serde_json::to_vec(body).unwrap()).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        Self::answer(request).await
    }

    /// A keyed GET.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::answer(self.client.get(self.url(path))).await
    }

    async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(KEY).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Posts a streaming request and returns the parsed `data:` payloads up to `[DONE]`.
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let text = response.text().await.unwrap();
        let payloads: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(
            payloads.last(),
            Some(&"[DONE]"),
            "stream must end with [DONE]"
        );
        payloads[..payloads.len() - 1]
            .iter()
            .map(|p| serde_json::from_str(p).unwrap())
            .collect()
    }

    /// The sum of every series of the counter or gauge `name` (all label sets); 0 before any
    /// series exists (per-model series appear when their model loads).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics_text().await;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let series_name = series.split('{').next()?;
                (series_name == name).then(|| value.parse().ok())?
            })
            .collect();
        values.iter().sum::<f64>() as u64
    }

    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn spawn(
    home: &std::path::Path,
    log: Option<&std::path::Path>,
    env: &[(String, String)],
) -> (Child, String) {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::inherit(),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_aiaas"))
        .args(["serve", "--port", "0", "--no-default-model"])
        .env("AIAAS_HOME", home)
        .env("AIAAS_API_KEY", KEY)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the server exited before listening")
            .unwrap();
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_string();
        }
    };
    (child, base)
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// Runs a Python script of the tests (`scripts/test` installs its packages in `AIAAS_PYTHON`'s
/// environment) with extra environment variables; asserts it succeeds and returns its stdout.
pub async fn run_python(script: &str, env: Vec<(&'static str, String)>) -> String {
    let python = std::env::var("AIAAS_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(&script)
            .envs(env)
            .output()
            .expect("python3 must be installed (scripts/test makes its environment)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python script failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// The error object of an OpenAI-shaped error body.
pub fn error(body: &Value) -> &Value {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    error
}

/// Runs the `aiaas` command line on `home` with extra environment; asserts success and
/// returns stdout.
pub fn aiaas(home: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_aiaas"))
        .args(args)
        .env("AIAAS_HOME", home)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The `field` of every object in a list response's `data`, e.g. model ids.
pub fn column<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[field].as_str().unwrap())
        .collect()
}

pub fn chat(content: &str, extra: Value) -> Value {
    let mut body = serde_json::json!({
        "model": SMOLLM,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 12,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

//! Where the key and usage commands act: the home folder's database, or a (remote) server's
//! admin API. Both give the same records, so the commands print them the same way.

use aiaas_server::gate::{KeySpec, Keys};
use aiaas_server::store::{AuditEntry, KeyRecord, Store, UsageFilter, UsageGroup};
use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::Settings;

/// Audit entries made from the local command line carry this actor.
const CLI_ACTOR: &str = "cli";

pub enum Admin {
    Local(Keys),
    Remote {
        client: reqwest::Client,
        base: String,
        key: String,
    },
}

impl Admin {
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        if let Some(server) = &settings.server {
            let key = settings
                .api_key
                .clone()
                .context("--server needs an admin key of that server in AIAAS_API_KEY")?;
            return Ok(Self::Remote {
                client: reqwest::Client::new(),
                base: server.trim_end_matches('/').to_string(),
                key,
            });
        }
        std::fs::create_dir_all(&settings.home)?;
        let path = aiaas_server::database_path(&settings.home);
        let store = Store::open(&path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self::Local(Keys::new(store)))
    }

    pub async fn create(&self, spec: &KeySpec) -> anyhow::Result<(String, KeyRecord)> {
        match self {
            Self::Local(keys) => Ok(keys.create(spec, Some(CLI_ACTOR)).await?),
            Self::Remote { .. } => secret_and_record(
                send(
                    self.request(reqwest::Method::POST, "/admin/keys")
                        .json(spec),
                )
                .await?,
            ),
        }
    }

    pub async fn list(&self) -> anyhow::Result<Vec<KeyRecord>> {
        match self {
            Self::Local(keys) => Ok(keys.store().keys().await?),
            Self::Remote { .. } => self.list_of("/admin/keys").await,
        }
    }

    pub async fn revoke(&self, id: &str) -> anyhow::Result<KeyRecord> {
        match self {
            Self::Local(keys) => keys
                .revoke(id, Some(CLI_ACTOR))
                .await?
                .with_context(|| format!("no live key `{id}`")),
            Self::Remote { .. } => {
                let path = format!("/admin/keys/{id}/revoke");
                let body = send(self.request(reqwest::Method::POST, &path)).await?;
                Ok(serde_json::from_value(body["record"].clone())?)
            }
        }
    }

    pub async fn rotate(&self, id: &str) -> anyhow::Result<(String, KeyRecord)> {
        match self {
            Self::Local(keys) => keys
                .rotate(id, Some(CLI_ACTOR))
                .await?
                .with_context(|| format!("no live key `{id}`")),
            Self::Remote { .. } => {
                let path = format!("/admin/keys/{id}/rotate");
                secret_and_record(send(self.request(reqwest::Method::POST, &path)).await?)
            }
        }
    }

    pub async fn audit(&self) -> anyhow::Result<Vec<AuditEntry>> {
        match self {
            Self::Local(keys) => Ok(keys.store().audit_log(1000).await?),
            Self::Remote { .. } => self.list_of("/admin/audit").await,
        }
    }

    pub async fn usage(&self, filter: &UsageFilter) -> anyhow::Result<Vec<UsageGroup>> {
        match self {
            Self::Local(keys) => Ok(keys.store().usage(filter).await?),
            Self::Remote { .. } => {
                let request = self
                    .request(reqwest::Method::GET, "/admin/usage")
                    .query(filter);
                Ok(serde_json::from_value(
                    send(request).await?["data"].clone(),
                )?)
            }
        }
    }

    async fn list_of<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Vec<T>> {
        let body = send(self.request(reqwest::Method::GET, path)).await?;
        Ok(serde_json::from_value(body["data"].clone())?)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let Self::Remote { client, base, key } = self else {
            unreachable!("only remote admins make requests. This is a bug.")
        };
        client
            .request(method, format!("{base}{path}"))
            .bearer_auth(key)
    }
}

async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await.context("calling the server")?;
    let (status, url) = (response.status(), response.url().clone());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        bail!("{url}: {status}: {message}");
    }
    Ok(body)
}

fn secret_and_record(body: Value) -> anyhow::Result<(String, KeyRecord)> {
    let secret = body["key"]
        .as_str()
        .context("the server sent no key")?
        .to_string();
    Ok((secret, serde_json::from_value(body["record"].clone())?))
}

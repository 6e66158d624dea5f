//! API keys. A key is 256 random bits with a recognisable prefix; only its SHA-256 is stored
//! (there is nothing to brute-force in a 256-bit secret, so a slow hash buys nothing). Lookup is
//! by that hash, so response time depends on the hash of what was presented, never on how much
//! of a real key it shares. Revocation and expiry are read from the database on every request,
//! so they take effect at once, from this process or any other (the CLI).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock;
use crate::store::{KeyRecord, Store, StoreError};

/// Every key starts with this, so a leaked key is recognisable (e.g. by secret scanners).
pub const KEY_PREFIX: &str = "aiaas-";
const ADMIN_KEY_FILE: &str = "admin.key";

/// What a new key may do; every limit is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeySpec {
    pub name: String,
    /// Model ids the key may use; empty or `["*"]` means all.
    #[serde(default)]
    pub models: Vec<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub daily_tokens: Option<i64>,
    pub monthly_tokens: Option<i64>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub admin: bool,
}

pub struct CreatedKey {
    pub key: String,
    pub file: PathBuf,
}

/// How often a key's `last_used_at` is written at most, in seconds.
const LAST_USED_RESOLUTION: i64 = 60;

#[derive(Clone)]
pub struct Keys {
    store: Store,
    /// When this process last wrote each key's `last_used_at`, so a busy key costs one write a
    /// minute rather than one per request.
    touched: Arc<Mutex<HashMap<String, i64>>>,
}

impl Keys {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            touched: Arc::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates a key; returns the secret (shown once) and its record.
    pub async fn create(
        &self,
        spec: &KeySpec,
        actor: Option<&str>,
    ) -> Result<(String, KeyRecord), StoreError> {
        let secret = generate_secret();
        let models = if spec.models.is_empty() || spec.models.iter().any(|m| m == "*") {
            "*".to_string()
        } else {
            spec.models.join(",")
        };
        let record = KeyRecord {
            id: format!("key_{}", random_hex(6)),
            name: spec.name.clone(),
            prefix: visible_prefix(&secret),
            hash: hash(&secret),
            admin: spec.admin,
            models,
            rpm: spec.rpm,
            tpm: spec.tpm,
            daily_tokens: spec.daily_tokens,
            monthly_tokens: spec.monthly_tokens,
            expires_at: spec.expires_at,
            created_at: clock::now(),
            revoked_at: None,
            last_used_at: None,
        };
        self.store.insert_key(&record).await?;
        let detail = format!(
            "name={} admin={} models={}",
            record.name, record.admin, record.models
        );
        self.store
            .audit(
                actor,
                "key.create",
                Some(&record.id),
                &detail,
                record.created_at,
            )
            .await?;
        Ok((secret, record))
    }

    /// The live key matching `presented`, if any (unknown, revoked and expired keys are none).
    pub async fn verify(&self, presented: &str) -> Result<Option<KeyRecord>, StoreError> {
        let Some(key) = self.store.key_by_hash(&hash(presented)).await? else {
            return Ok(None);
        };
        let now = clock::now();
        if key.revoked_at.is_some() || key.expires_at.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        // Last-used is informational: refresh it at most once a minute to spare the disk.
        let stale = {
            let mut touched = self.touched.lock().expect("touch lock poisoned");
            let last = touched.get(&key.id).copied().or(key.last_used_at);
            let stale = last.is_none_or(|at| now - at >= LAST_USED_RESOLUTION);
            if stale {
                touched.insert(key.id.clone(), now);
            }
            stale
        };
        if stale {
            self.store.touch_key(&key.id, now).await?;
        }
        Ok(Some(key))
    }

    pub async fn revoke(
        &self,
        id: &str,
        actor: Option<&str>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let now = clock::now();
        if !self.store.revoke_key(id, now).await? {
            return Ok(None);
        }
        self.store
            .audit(actor, "key.revoke", Some(id), "", now)
            .await?;
        self.store.key_by_id(id).await
    }

    /// Replaces a key's secret: the old one stops working at once.
    pub async fn rotate(
        &self,
        id: &str,
        actor: Option<&str>,
    ) -> Result<Option<(String, KeyRecord)>, StoreError> {
        let secret = generate_secret();
        if !self
            .store
            .rotate_key(id, &visible_prefix(&secret), &hash(&secret))
            .await?
        {
            return Ok(None);
        }
        self.store
            .audit(actor, "key.rotate", Some(id), "", clock::now())
            .await?;
        Ok(self
            .store
            .key_by_id(id)
            .await?
            .map(|record| (secret, record)))
    }

    /// Makes sure an admin key exists. An operator-given key (`AIAAS_API_KEY`) is registered
    /// (hashed) if new; otherwise, on first start, a key is generated, written to a 0600 file in
    /// the home folder and returned so the caller can show it once.
    pub async fn ensure_admin_key(
        &self,
        home: &Path,
        given: Option<&str>,
    ) -> std::io::Result<Option<CreatedKey>> {
        let io = std::io::Error::other;
        if let Some(secret) = given {
            if self
                .store
                .key_by_hash(&hash(secret))
                .await
                .map_err(io)?
                .is_none()
            {
                let record = KeyRecord {
                    id: format!("key_{}", random_hex(6)),
                    name: "operator key (AIAAS_API_KEY)".into(),
                    prefix: visible_prefix(secret),
                    hash: hash(secret),
                    admin: true,
                    models: "*".into(),
                    rpm: None,
                    tpm: None,
                    daily_tokens: None,
                    monthly_tokens: None,
                    expires_at: None,
                    created_at: clock::now(),
                    revoked_at: None,
                    last_used_at: None,
                };
                self.store.insert_key(&record).await.map_err(io)?;
            }
            return Ok(None);
        }
        if self.store.has_admin_key().await.map_err(io)? {
            return Ok(None);
        }
        let spec = KeySpec {
            name: "admin".into(),
            admin: true,
            ..KeySpec::default()
        };
        let (secret, _) = self.create(&spec, None).await.map_err(io)?;
        let file = home.join(ADMIN_KEY_FILE);
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)?;
        writeln!(out, "{secret}")?;
        Ok(Some(CreatedKey { key: secret, file }))
    }
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn visible_prefix(secret: &str) -> String {
    secret.chars().take(KEY_PREFIX.len() + 4).collect()
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    hex::encode(buffer)
}

fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn keys(name: &str) -> (Keys, PathBuf) {
        let home = std::env::temp_dir().join(format!("aiaas-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        let store = Store::open(&home.join("aiaas.db")).await.unwrap();
        (Keys::new(store), home)
    }

    #[tokio::test]
    async fn first_start_creates_one_admin_key_stored_only_hashed() {
        let (keys, home) = keys("create").await;
        let created = keys
            .ensure_admin_key(&home, None)
            .await
            .unwrap()
            .expect("a key on first start");
        assert!(created.key.starts_with(KEY_PREFIX));
        let mode = std::fs::metadata(&created.file).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let db = std::fs::read(home.join("aiaas.db")).unwrap();
        let secret_part = &created.key[KEY_PREFIX.len()..];
        assert!(!db
            .windows(secret_part.len())
            .any(|w| w == secret_part.as_bytes()));
        assert!(keys.ensure_admin_key(&home, None).await.unwrap().is_none());
        assert!(keys.verify(&created.key).await.unwrap().unwrap().admin);
        assert!(keys.verify("aiaas-wrong").await.unwrap().is_none());
        std::fs::remove_dir_all(home).unwrap();
    }

    #[tokio::test]
    async fn revoked_rotated_and_expired_keys_stop_at_once() {
        let (keys, home) = keys("lifecycle").await;
        let spec = KeySpec {
            name: "app".into(),
            ..KeySpec::default()
        };
        let (secret, record) = keys.create(&spec, None).await.unwrap();
        assert!(keys.verify(&secret).await.unwrap().is_some());
        let (new_secret, _) = keys.rotate(&record.id, None).await.unwrap().unwrap();
        assert!(keys.verify(&secret).await.unwrap().is_none());
        assert!(keys.verify(&new_secret).await.unwrap().is_some());
        keys.revoke(&record.id, None).await.unwrap().unwrap();
        assert!(keys.verify(&new_secret).await.unwrap().is_none());
        let expired = KeySpec {
            expires_at: Some(clock::now() - 1),
            ..spec
        };
        let (old, _) = keys.create(&expired, None).await.unwrap();
        assert!(keys.verify(&old).await.unwrap().is_none());
        let actions: Vec<String> = keys
            .store()
            .audit_log(10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(
            actions,
            ["key.create", "key.revoke", "key.rotate", "key.create"]
        );
        std::fs::remove_dir_all(home).unwrap();
    }
}

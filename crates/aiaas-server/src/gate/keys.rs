//! API keys, stored only as SHA-256 hashes (keys are 256-bit random, so a fast hash is enough:
//! there is nothing to brute-force). Verification compares against every stored hash in
//! constant time, so timing reveals neither which key nor how much of it matched.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts with this, so a leaked key is recognisable (e.g. by secret scanners).
pub const KEY_PREFIX: &str = "aiaas-";
const STORE_FILE: &str = "keys.json";
const ADMIN_KEY_FILE: &str = "admin.key";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    id: String,
    name: String,
    /// The first characters of the key, to tell keys apart in listings.
    prefix: String,
    sha256: String,
    admin: bool,
    created: u64,
}

/// The identity of a verified key, attached to the request.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub admin: bool,
}

pub struct CreatedKey {
    pub key: String,
    pub file: PathBuf,
}

pub struct KeyStore {
    path: PathBuf,
    home: PathBuf,
    keys: RwLock<Vec<StoredKey>>,
}

impl KeyStore {
    pub fn open(home: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(home)?;
        let path = home.join(STORE_FILE);
        let keys = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(Self {
            path,
            home: home.to_path_buf(),
            keys: RwLock::new(keys),
        })
    }

    /// Makes sure an admin key exists. An operator-given key is registered (hashed) if new;
    /// otherwise, on first start, a key is generated, written to a 0600 file and returned so
    /// the caller can show it once.
    pub fn ensure_admin_key(&self, given: Option<&str>) -> std::io::Result<Option<CreatedKey>> {
        if let Some(key) = given {
            if self.verify(key).is_none() {
                self.insert("operator key (AIAAS_API_KEY)", key, true)?;
            }
            return Ok(None);
        }
        if self
            .keys
            .read()
            .expect("key lock poisoned")
            .iter()
            .any(|k| k.admin)
        {
            return Ok(None);
        }
        let key = generate_key();
        let file = self.home.join(ADMIN_KEY_FILE);
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)?;
        writeln!(out, "{key}")?;
        self.insert("admin", &key, true)?;
        Ok(Some(CreatedKey { key, file }))
    }

    fn insert(&self, name: &str, key: &str, admin: bool) -> std::io::Result<()> {
        let mut keys = self.keys.write().expect("key lock poisoned");
        keys.push(StoredKey {
            id: format!("key_{}", &hex::encode(Sha256::digest(key.as_bytes()))[..12]),
            name: name.to_string(),
            prefix: key.chars().take(KEY_PREFIX.len() + 4).collect(),
            sha256: hex::encode(Sha256::digest(key.as_bytes())),
            admin,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        let text = serde_json::to_string_pretty(&*keys).map_err(std::io::Error::other)?;
        // Write then rename, so a crash never leaves a torn key file.
        let staging = self.path.with_extension("json.tmp");
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&staging)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&staging, &self.path)
    }

    pub fn verify(&self, presented: &str) -> Option<KeyInfo> {
        let digest = hex::encode(Sha256::digest(presented.as_bytes()));
        let keys = self.keys.read().expect("key lock poisoned");
        let mut found = None;
        for key in keys.iter() {
            if bool::from(key.sha256.as_bytes().ct_eq(digest.as_bytes())) {
                found = Some(KeyInfo {
                    id: key.id.clone(),
                    name: key.name.clone(),
                    admin: key.admin,
                });
            }
        }
        found
    }
}

fn generate_key() -> String {
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

    fn temp_home(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("aiaas-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn first_start_creates_one_admin_key_stored_only_hashed() {
        let home = temp_home("create");
        let store = KeyStore::open(&home).unwrap();
        let created = store
            .ensure_admin_key(None)
            .unwrap()
            .expect("a key on first start");
        assert!(created.key.starts_with(KEY_PREFIX));
        let mode = std::fs::metadata(&created.file).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let stored = std::fs::read_to_string(home.join(STORE_FILE)).unwrap();
        assert!(!stored.contains(&created.key));
        // A restart reuses it and creates no second key.
        let store = KeyStore::open(&home).unwrap();
        assert!(store.ensure_admin_key(None).unwrap().is_none());
        assert!(store.verify(&created.key).unwrap().admin);
        assert!(store.verify("aiaas-wrong").is_none());
        std::fs::remove_dir_all(home).unwrap();
    }

    #[test]
    fn an_operator_key_is_registered_without_a_file() {
        let home = temp_home("given");
        let store = KeyStore::open(&home).unwrap();
        assert!(store
            .ensure_admin_key(Some("my-own-key"))
            .unwrap()
            .is_none());
        assert!(store.verify("my-own-key").is_some());
        assert!(!home.join(ADMIN_KEY_FILE).exists());
        std::fs::remove_dir_all(home).unwrap();
    }
}

//! Where the Files API keeps bodies: `files/` in the home folder, one encrypted file per id,
//! and `files/incoming/` for uploads in progress (emptied at start: an upload cut off by a
//! crash never became a file).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::store::Store;
use crate::vault::{self, Keyring, MasterKey, VaultError};

pub struct FileStorage {
    dir: PathBuf,
    pub keys: Keyring,
    /// The largest file accepted, in bytes.
    pub max_bytes: u64,
}

impl FileStorage {
    pub fn open(home: &Path, max_bytes: u64) -> Result<Self, VaultError> {
        let dir = home.join("files");
        let incoming = dir.join("incoming");
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming)?;
        }
        std::fs::create_dir_all(&incoming)?;
        Ok(Self {
            keys: Keyring::load_or_create(home)?,
            dir,
            max_bytes,
        })
    }

    pub fn body_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{BODY_SUFFIX}"))
    }

    pub fn temp_path(&self, id: &str) -> PathBuf {
        self.dir.join("incoming").join(format!("{id}.part"))
    }

    /// Removes bodies no record names (left by a crash between moving an upload into place and
    /// recording it, or between deleting a record and its body); run at start, before any
    /// upload. Says how many.
    pub async fn sweep_orphans(&self, store: &Store) -> Result<usize, StorageError> {
        let known: HashSet<String> = store.all_files().await?.into_iter().map(|f| f.id).collect();
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(VaultError::from)? {
            let path = entry.map_err(VaultError::from)?.path();
            let name = path.file_name().and_then(|name| name.to_str());
            let Some(id) = name.and_then(|name| name.strip_suffix(BODY_SUFFIX)) else {
                continue;
            };
            if !known.contains(id) {
                std::fs::remove_file(&path).map_err(VaultError::from)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The file name ending of a stored body.
const BODY_SUFFIX: &str = ".sealed";

/// What a master key rotation did.
pub struct Rotation {
    pub new_key_id: String,
    pub rewrapped: usize,
    /// With keys from the environment: the new key, for the operator to put there.
    pub new_key_for_environment: Option<String>,
}

/// Re-wraps every stored file's data key under a new master key, in one transaction; the
/// bodies are not touched. With the key file: the new key is written to `master.key.next`
/// first, then the rows change, then it replaces `master.key` (a rotation cut off at any point
/// leaves every file readable: the server accepts both files). With `AIAAS_MASTER_KEY`: the
/// new key is `AIAAS_NEW_MASTER_KEY`, and the operator then makes it the environment's.
/// Run it with the server stopped: an upload during the rotation would stay wrapped by the
/// old key.
pub async fn rotate_master_key(home: &Path, store: &Store) -> Result<Rotation, StorageError> {
    let keys = Keyring::load_or_create(home)?;
    let from_environment = std::env::var("AIAAS_MASTER_KEY").is_ok();
    let (new_key, new_hex) = if from_environment {
        let hex_key = std::env::var("AIAAS_NEW_MASTER_KEY").map_err(|_| {
            VaultError::MasterKey(
                "keys come from AIAAS_MASTER_KEY: give the new one in AIAAS_NEW_MASTER_KEY".into(),
            )
        })?;
        (MasterKey::from_hex(hex_key.trim())?, hex_key)
    } else {
        let (key, hex_key) = MasterKey::generate();
        vault::write_key_file(&home.join(vault::NEXT_KEY_FILE), &hex_key)?;
        (key, hex_key)
    };
    let files = store.all_files().await?;
    let mut rewrapped = Vec::with_capacity(files.len());
    for file in &files {
        let data_key = keys.unwrap(&file.wrapped_key, &file.id, &file.master_key_id)?;
        rewrapped.push((file.id.clone(), new_key.wrap(&data_key, &file.id)));
    }
    store.rewrap_files(&rewrapped, &new_key.id).await?;
    if !from_environment {
        std::fs::rename(home.join(vault::NEXT_KEY_FILE), home.join(vault::KEY_FILE))
            .map_err(VaultError::from)?;
        std::fs::File::open(home)
            .and_then(|dir| dir.sync_all())
            .map_err(VaultError::from)?;
    }
    Ok(Rotation {
        new_key_id: new_key.id,
        rewrapped: rewrapped.len(),
        new_key_for_environment: from_environment.then_some(new_hex),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

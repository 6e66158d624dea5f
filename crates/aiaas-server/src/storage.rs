//! Where the Files API keeps bodies: `files/` in the home folder, one encrypted file per id,
//! and `files/incoming/` for uploads in progress (emptied at start: an upload cut off by a
//! crash never became a file).

use std::path::{Path, PathBuf};

use crate::vault::{MasterKey, VaultError};

pub struct FileStorage {
    dir: PathBuf,
    pub master: MasterKey,
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
            master: MasterKey::load_or_create(home)?,
            dir,
            max_bytes,
        })
    }

    pub fn body_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.sealed"))
    }

    pub fn temp_path(&self, id: &str) -> PathBuf {
        self.dir.join("incoming").join(format!("{id}.part"))
    }
}

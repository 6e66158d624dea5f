//! Encryption at rest for stored files. Each file gets its own random 256-bit data key; its
//! body is sealed with AES-256-GCM in chunks of 64 KiB, so that it is written and read in
//! bounded memory; the data key is stored wrapped (AES-256-GCM) under the master key.
//!
//! A chunk's nonce is its index and whether it is the last, and every seal is bound to the
//! file's id as associated data: a changed, reordered, truncated or extended body, or a body or
//! wrapped key moved to another file, fails authentication instead of decrypting to something
//! else. The master keys come from `AIAAS_MASTER_KEY` or from `master.key` in the home folder
//! (`Keyring`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Plaintext bytes per sealed chunk.
pub const CHUNK: usize = 64 * 1024;
/// Bytes AES-GCM adds to each chunk.
const TAG: usize = 16;
/// The first bytes of every stored body: the format and its version.
const MAGIC: &[u8; 8] = b"AIAASF01";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the stored file failed its integrity check (it was changed or damaged on disk)")]
    Integrity,
    #[error("the master key: {0}")]
    MasterKey(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The key that wraps every file's data key.
pub struct MasterKey {
    cipher: Aes256Gcm,
    /// The first 16 hex digits of the key's SHA-256: names the key without revealing it.
    pub id: String,
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> (Self, String) {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        (Self::new(&key), hex::encode(key))
    }

    pub fn from_hex(text: &str) -> Result<Self, VaultError> {
        let bytes = hex::decode(text)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| VaultError::MasterKey("expected 64 hex digits (32 bytes)".into()))?;
        Ok(Self::new(&bytes))
    }

    fn new(key: &[u8]) -> Self {
        Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
            id: hex::encode(&Sha256::digest(key)[..8]),
        }
    }

    /// A new data key for `file_id`: the key, and the key wrapped for storage.
    pub fn new_data_key(&self, file_id: &str) -> ([u8; 32], Vec<u8>) {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        (key, self.wrap(&key, file_id))
    }

    /// `nonce ‖ sealed key`, bound to `file_id`.
    pub fn wrap(&self, data_key: &[u8; 32], file_id: &str) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: data_key,
            aad: file_id.as_bytes(),
        };
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .expect("sealing 32 bytes cannot fail");
        [nonce.as_slice(), &sealed].concat()
    }

    pub fn unwrap(&self, wrapped: &[u8], file_id: &str) -> Result<[u8; 32], VaultError> {
        if wrapped.len() != 12 + 32 + TAG {
            return Err(VaultError::Integrity);
        }
        let (nonce, sealed) = wrapped.split_at(12);
        let payload = Payload {
            msg: sealed,
            aad: file_id.as_bytes(),
        };
        let key = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| VaultError::Integrity)?;
        key.try_into().map_err(|_| VaultError::Integrity)
    }
}

/// The master keys a server can unwrap with: the current one (which wraps new files) and any
/// older ones still named by stored files.
///
/// From `AIAAS_MASTER_KEY` (comma-separated hex keys, the current first), else from the home
/// folder: `master.key` (created at first start, mode 0600) and, after a rotation cut off
/// before its end, `master.key.next`.
pub struct Keyring {
    pub current: MasterKey,
    older: Vec<MasterKey>,
}

/// The key file in the home folder, and the one a rotation writes before it switches.
pub const KEY_FILE: &str = "master.key";
pub const NEXT_KEY_FILE: &str = "master.key.next";

impl Keyring {
    pub fn load_or_create(home: &Path) -> Result<Self, VaultError> {
        if let Ok(keys) = std::env::var("AIAAS_MASTER_KEY") {
            let mut keys = keys
                .split(',')
                .map(|k| MasterKey::from_hex(k.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            let current = keys.remove(0);
            return Ok(Self {
                current,
                older: keys,
            });
        }
        let current = match read_key_file(&home.join(KEY_FILE))? {
            Some(key) => key,
            None => {
                let (key, hex_key) = MasterKey::generate();
                write_key_file(&home.join(KEY_FILE), &hex_key)?;
                key
            }
        };
        let older = read_key_file(&home.join(NEXT_KEY_FILE))?
            .into_iter()
            .collect();
        Ok(Self { current, older })
    }

    /// The data key of a stored file, unwrapped by the master key that wrapped it.
    pub fn unwrap(
        &self,
        wrapped: &[u8],
        file_id: &str,
        master_key_id: &str,
    ) -> Result<[u8; 32], VaultError> {
        std::iter::once(&self.current)
            .chain(&self.older)
            .find(|key| key.id == master_key_id)
            .ok_or_else(|| {
                VaultError::MasterKey(format!(
                    "{file_id} was wrapped by master key {master_key_id}, which this server does \
                     not have"
                ))
            })?
            .unwrap(wrapped, file_id)
    }
}

/// A key file's key, `None` if there is no such file.
fn read_key_file(path: &Path) -> Result<Option<MasterKey>, VaultError> {
    match std::fs::read_to_string(path) {
        Ok(text) => MasterKey::from_hex(text.trim()).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes a new key file, mode 0600 from the start, synced.
pub fn write_key_file(path: &Path, hex_key: &str) -> Result<(), VaultError> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(hex_key.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// The nonce of chunk `index`: the index, then whether it is the last chunk.
fn chunk_nonce(index: u64, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&index.to_be_bytes());
    nonce[8] = u8::from(last);
    nonce
}

/// Writes a file body sealed chunk by chunk as it arrives.
pub struct Sealer {
    cipher: Aes256Gcm,
    file_id: String,
    index: u64,
    pending: Vec<u8>,
    out: File,
    plaintext_bytes: u64,
}

impl Sealer {
    pub fn new(mut out: File, data_key: &[u8; 32], file_id: &str) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        Ok(Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(data_key)),
            file_id: file_id.to_string(),
            index: 0,
            pending: Vec::with_capacity(CHUNK),
            out,
            plaintext_bytes: 0,
        })
    }

    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.plaintext_bytes += data.len() as u64;
        while !data.is_empty() {
            // A full chunk is sealed only once more data follows: the last one is marked.
            if self.pending.len() == CHUNK {
                self.seal(false)?;
            }
            let take = (CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    /// Seals the last chunk (empty for an empty file), syncs, and says how many plaintext
    /// bytes were written.
    pub fn finish(mut self) -> io::Result<u64> {
        self.seal(true)?;
        self.out.sync_all()?;
        Ok(self.plaintext_bytes)
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        let payload = Payload {
            msg: &self.pending,
            aad: self.file_id.as_bytes(),
        };
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&chunk_nonce(self.index, last)), payload)
            .map_err(|_| io::Error::other("sealing a chunk failed"))?;
        self.out.write_all(&sealed)?;
        self.index += 1;
        self.pending.clear();
        Ok(())
    }
}

/// Reads a sealed body back chunk by chunk; every chunk is authenticated before it is
/// returned, and the body must end with the chunk sealed as last.
pub struct Opener {
    cipher: Aes256Gcm,
    file_id: String,
    index: u64,
    input: File,
    /// The next sealed chunk, read ahead to know whether the current one is the last.
    next: Vec<u8>,
    done: bool,
}

impl Opener {
    pub fn new(mut input: File, data_key: &[u8; 32], file_id: &str) -> Result<Self, VaultError> {
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|_| VaultError::Integrity)?;
        if &magic != MAGIC {
            return Err(VaultError::Integrity);
        }
        let mut opener = Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(data_key)),
            file_id: file_id.to_string(),
            index: 0,
            input,
            next: Vec::new(),
            done: false,
        };
        opener.next = opener.read_sealed()?;
        Ok(opener)
    }

    /// Up to one sealed chunk's bytes (fewer only at the end of the file).
    fn read_sealed(&mut self) -> Result<Vec<u8>, VaultError> {
        let mut buffer = Vec::with_capacity(CHUNK + TAG);
        (&mut self.input)
            .take((CHUNK + TAG) as u64)
            .read_to_end(&mut buffer)?;
        Ok(buffer)
    }

    /// The next chunk's plaintext, `None` after the last.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, VaultError> {
        if self.done {
            return Ok(None);
        }
        let sealed = std::mem::take(&mut self.next);
        if sealed.len() < TAG {
            return Err(VaultError::Integrity);
        }
        self.next = self.read_sealed()?;
        let last = self.next.is_empty();
        let payload = Payload {
            msg: &sealed,
            aad: self.file_id.as_bytes(),
        };
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(&chunk_nonce(self.index, last)), payload)
            .map_err(|_| VaultError::Integrity)?;
        self.index += 1;
        self.done = last;
        Ok(Some(plain))
    }

    /// Reads to the end, authenticating every chunk: `Ok` only for an intact body.
    pub fn verify(mut self) -> Result<u64, VaultError> {
        let mut bytes = 0;
        while let Some(chunk) = self.next_chunk()? {
            bytes += chunk.len() as u64;
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(dir: &Path, body: &[u8], key: &[u8; 32], id: &str) -> std::path::PathBuf {
        let path = dir.join(id);
        let mut sealer = Sealer::new(File::create(&path).unwrap(), key, id).unwrap();
        for piece in body.chunks(10_000) {
            sealer.write(piece).unwrap();
        }
        assert_eq!(sealer.finish().unwrap(), body.len() as u64);
        path
    }

    fn open(path: &Path, key: &[u8; 32], id: &str) -> Result<Vec<u8>, VaultError> {
        let mut opener = Opener::new(File::open(path)?, key, id)?;
        let mut out = Vec::new();
        while let Some(chunk) = opener.next_chunk()? {
            out.extend(chunk);
        }
        Ok(out)
    }

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("aiaas-vault-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn bodies_of_every_size_round_trip_and_any_change_is_caught() {
        let dir = temp_dir();
        let key = [7u8; 32];
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK] {
            let body: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let path = seal(&dir, &body, &key, "file-a");
            assert_eq!(open(&path, &key, "file-a").unwrap(), body, "{size}");
            // Another file's id, another key: refused.
            assert!(matches!(
                open(&path, &key, "file-b"),
                Err(VaultError::Integrity)
            ));
            assert!(matches!(
                open(&path, &[8u8; 32], "file-a"),
                Err(VaultError::Integrity)
            ));
            let sealed = std::fs::read(&path).unwrap();
            // A flipped bit anywhere, or a body cut at a chunk boundary: refused.
            for at in [0, 9, sealed.len() / 2, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[at] ^= 1;
                std::fs::write(&path, &bad).unwrap();
                assert!(
                    open(&path, &key, "file-a").is_err(),
                    "{size} flipped at {at}"
                );
            }
            if size > CHUNK {
                std::fs::write(&path, &sealed[..MAGIC.len() + CHUNK + TAG]).unwrap();
                assert!(open(&path, &key, "file-a").is_err(), "{size} truncated");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrapped_keys_unwrap_only_for_their_file_under_their_master_key() {
        let master = MasterKey::from_hex(&"ab".repeat(32)).unwrap();
        let (key, wrapped) = master.new_data_key("file-a");
        assert_eq!(master.unwrap(&wrapped, "file-a").unwrap(), key);
        assert!(master.unwrap(&wrapped, "file-b").is_err());
        let other = MasterKey::from_hex(&"cd".repeat(32)).unwrap();
        assert!(other.unwrap(&wrapped, "file-a").is_err());
        assert!(MasterKey::from_hex("abc").is_err());
    }
}

//! Effective settings: flags and environment (via clap) over `aiaas.toml` over defaults.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::cli::GlobalArgs;

pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 8080;
/// Request bodies above this are refused with 413.
const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Seconds requests in flight may run on after SIGTERM/SIGINT.
const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;

/// The optional `aiaas.toml` in the home folder.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub max_body_bytes: Option<usize>,
    pub log_json: Option<bool>,
    pub drain_timeout_secs: Option<u64>,
}

#[derive(Debug)]
pub struct Settings {
    pub home: PathBuf,
    pub file: FileConfig,
    pub log_json: bool,
    pub api_key: Option<String>,
    /// A remote server for the key and usage commands.
    pub server: Option<String>,
}

impl Settings {
    pub fn resolve(global: &GlobalArgs) -> anyhow::Result<Self> {
        let home = global
            .home
            .clone()
            .unwrap_or_else(|| PathBuf::from(".aiaas"));
        let file = read_file_config(&home.join("aiaas.toml"))?;
        Ok(Self {
            log_json: global.log_json || file.log_json.unwrap_or(false),
            api_key: std::env::var("AIAAS_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            server: global.server.clone(),
            home,
            file,
        })
    }

    pub fn models_dir(&self) -> PathBuf {
        self.home.join("models")
    }

    pub fn max_body_bytes(&self) -> usize {
        self.file.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES)
    }

    pub fn drain_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.file
                .drain_timeout_secs
                .unwrap_or(DEFAULT_DRAIN_TIMEOUT_SECS),
        )
    }
}

fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

//! Effective settings: flags and environment (via clap) over `aiaas.toml` over defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use std::time::Duration;

use aiaas_engine::generate::WorkerLimits;
use aiaas_engine::ResidencyPolicy;
use aiaas_server::TlsFiles;
use anyhow::Context;
use serde::Deserialize;

use crate::cli::{GlobalArgs, ServeArgs};

const DEFAULT_HOST: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 8080;
/// Request bodies above this are refused with 413.
const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Seconds requests in flight may run on after SIGTERM/SIGINT.
const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;
/// The largest file the Files API accepts by default: 512 MiB.
const DEFAULT_MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// The optional `aiaas.toml` in the home folder.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub max_body_bytes: Option<usize>,
    pub log_json: Option<bool>,
    pub drain_timeout_secs: Option<u64>,
    pub preload: Option<Vec<String>>,
    pub keep_alive_secs: Option<u64>,
    pub max_model_memory: Option<String>,
    pub load_wait_secs: Option<u64>,
    pub max_completion_tokens: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_file_bytes: Option<u64>,
    pub log_request_bodies: Option<bool>,
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

    /// Where `serve` listens: flag or environment, then `aiaas.toml`, then the default.
    pub fn listen_address(&self, args: &ServeArgs) -> anyhow::Result<SocketAddr> {
        let host = args
            .host
            .clone()
            .or_else(|| self.file.host.clone())
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        let port = args.port.or(self.file.port).unwrap_or(DEFAULT_PORT);
        let ip: IpAddr = host
            .parse()
            .with_context(|| format!("`{host}` is not an IP address"))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn show(&self, args: &ServeArgs) -> anyhow::Result<String> {
        let api_key = match &self.api_key {
            Some(key) => format!("{:?}", mask(key)),
            None => format!(
                "\"(unset: an admin key is generated on first start into {})\"",
                self.home.join("admin.key").display()
            ),
        };
        let residency = self.residency(args)?;
        let lines = [
            "# effective configuration: flags > AIAAS_* environment > aiaas.toml > defaults"
                .to_string(),
            format!("home = {:?}", self.home.display().to_string()),
            format!("listen = \"{}\"", self.listen_address(args)?),
            format!("fetch_default_model = {}", !args.no_default_model),
            format!("max_body_bytes = {}", self.max_body_bytes()),
            format!("drain_timeout_secs = {}", self.drain_timeout().as_secs()),
            format!("max_file_bytes = {}", self.max_file_bytes()),
            format!("log_request_bodies = {}", self.log_request_bodies()),
            format!("log_json = {}", self.log_json),
            format!("preload = {:?}", residency.preload),
            format!(
                "keep_alive_secs = {}",
                residency.keep_alive.map_or(0, |d| d.as_secs())
            ),
            match residency.max_model_memory {
                Some(bytes) => format!("max_model_memory = \"{bytes}B\""),
                None => "# max_model_memory: unlimited".to_string(),
            },
            format!("load_wait_secs = {}", residency.load_wait.as_secs()),
            match self.worker_limits(args).max_completion_tokens {
                Some(cap) => format!("max_completion_tokens = {cap}"),
                None => "# max_completion_tokens: up to the end of the context".to_string(),
            },
            match self.tls(args)? {
                Some(files) => format!(
                    "tls_cert = {:?}\ntls_key = {:?}",
                    files.cert.display().to_string(),
                    files.key.display().to_string()
                ),
                None => "# tls: off (plain HTTP)".to_string(),
            },
            format!("api_key = {api_key}"),
            format!(
                "model_cache = {:?}",
                aiaas_engine::fetch::cache_dir().display().to_string()
            ),
        ];
        Ok(lines.join("\n"))
    }

    /// How generation workers run, with the server's cap on tokens per request.
    pub fn worker_limits(&self, args: &ServeArgs) -> WorkerLimits {
        WorkerLimits {
            max_completion_tokens: args
                .max_completion_tokens
                .or(self.file.max_completion_tokens),
            ..WorkerLimits::default()
        }
    }

    /// Which models stay in memory and for how long; the engine's defaults where unset.
    pub fn residency(&self, args: &ServeArgs) -> anyhow::Result<ResidencyPolicy> {
        let defaults = ResidencyPolicy::default();
        let max_model_memory = args
            .max_model_memory
            .as_ref()
            .or(self.file.max_model_memory.as_ref())
            .map(|text| parse_size(text).with_context(|| "max_model_memory"))
            .transpose()?;
        let keep_alive = match args.keep_alive_secs.or(self.file.keep_alive_secs) {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => defaults.keep_alive,
        };
        Ok(ResidencyPolicy {
            keep_alive,
            max_model_memory,
            load_wait: args
                .load_wait_secs
                .or(self.file.load_wait_secs)
                .map_or(defaults.load_wait, Duration::from_secs),
            preload: args
                .preload
                .clone()
                .or_else(|| self.file.preload.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty())
                .collect(),
        })
    }

    /// The certificate and key `serve` uses for HTTPS, if any: flags or environment, then
    /// `aiaas.toml`; both or neither.
    pub fn tls(&self, args: &ServeArgs) -> anyhow::Result<Option<TlsFiles>> {
        let cert = args.tls_cert.clone().or_else(|| self.file.tls_cert.clone());
        let key = args.tls_key.clone().or_else(|| self.file.tls_key.clone());
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
            (None, None) => Ok(None),
            _ => anyhow::bail!("TLS needs both tls_cert and tls_key"),
        }
    }

    /// Whether request bodies are logged (the operator's opt-in in `aiaas.toml`).
    pub fn log_request_bodies(&self) -> bool {
        self.file.log_request_bodies.unwrap_or(false)
    }

    /// The largest file the Files API accepts.
    pub fn max_file_bytes(&self) -> u64 {
        self.file.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES)
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

/// A size in bytes: a number with an optional unit, decimal (`KB`, `MB`, `GB`, `TB`, or just
/// `K`, `M`, `G`, `T`) or binary (`KiB`, `MiB`, `GiB`, `TiB`); case does not matter.
fn parse_size(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a size like 4GiB or 1500MB"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => anyhow::bail!("`{other}` in `{text}` is not a size unit (KB, MiB, GB, ...)"),
    };
    Ok((number * multiplier as f64).round() as u64)
}

/// The recognisable start of a secret (at most a third of it, at most 10 characters), the
/// rest starred out.
fn mask(secret: &str) -> String {
    let length = secret.chars().count();
    let shown = (length / 3).min(10);
    let visible: String = secret.chars().take(shown).collect();
    format!("{visible}{}", "*".repeat((length - shown).min(20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_decimal_and_binary_units() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("1500MB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("0.5 gb").unwrap(), 500_000_000);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4 parsecs").is_err());
    }

    #[test]
    fn secrets_are_masked() {
        let masked = mask("aiaas-0123456789abcdefghijklmnop");
        assert!(masked.starts_with("aiaas-0123") && !masked.contains("4567"));
        assert_eq!(mask("short"), "s****");
    }
}

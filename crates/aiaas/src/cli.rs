//! Command-line flags. Every flag also reads an `AIAAS_*` environment variable; values left
//! unset fall back to `aiaas.toml` in the home folder, then to built-in defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "aiaas",
    version,
    about = "AI models as a service: OpenAI-compatible serving with keys"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Home folder: configuration, keys and the model repository (`models/`).
    #[arg(long, env = "AIAAS_HOME", global = true)]
    pub home: Option<PathBuf>,
    /// Manage keys and read usage on this server's admin API instead of the local database
    /// (with an admin key in `AIAAS_API_KEY`).
    #[arg(long, env = "AIAAS_SERVER", global = true)]
    pub server: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "AIAAS_LOG_JSON", global = true)]
    pub log_json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (fetches the default chat model first if the repository has none).
    Serve(ServeArgs),
    /// Manage the model repository.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Measure prompt processing and decode speed of a model (tokens per second).
    Bench(BenchArgs),
    /// Manage API keys (in the home folder's database; takes effect at once on a running server).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Report usage: requests, tokens, errors and latency, optionally filtered and grouped.
    Usage(UsageArgs),
    /// Show configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// TLS helpers.
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Write a development CA (`ca.pem`, for clients to trust) and a server certificate it
    /// signed (`cert.pem`, `key.pem`, for `serve --tls-cert/--tls-key`). Not for production.
    DevCert(DevCertArgs),
}

#[derive(Debug, Args)]
pub struct DevCertArgs {
    /// Folder to write into (created if missing).
    #[arg(long, default_value = "tls")]
    pub out: PathBuf,
    /// Names and addresses the certificate is for (repeat the flag for several).
    #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    pub hosts: Vec<String>,
    /// Days the certificates stay valid.
    #[arg(long, default_value_t = 30)]
    pub days: i64,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration `serve` would run with (same flags), secrets masked.
    Show(ServeArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (once: only its hash is kept).
    Create(KeyCreateArgs),
    /// List keys (never their secrets).
    List,
    /// Revoke a key: it stops working at once.
    Revoke { id: String },
    /// Give a key a new secret; the old one stops working at once.
    Rotate { id: String },
    /// Show the audit log of key changes.
    Audit,
    /// Re-wrap every stored file's data key under a new master key (file bodies are not
    /// rewritten). Run it with the server stopped. With keys from `AIAAS_MASTER_KEY`, give the
    /// new key in `AIAAS_NEW_MASTER_KEY`.
    RotateMaster,
}

#[derive(Debug, Args)]
pub struct KeyCreateArgs {
    #[arg(long)]
    pub name: String,
    /// Models the key may use: comma-separated ids, or `*` for all.
    #[arg(long, default_value = "*")]
    pub models: String,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<i64>,
    /// Tokens (prompt + completion) per minute; a request reserves its maximum up front.
    #[arg(long)]
    pub tpm: Option<i64>,
    /// Tokens per UTC day.
    #[arg(long)]
    pub daily_tokens: Option<i64>,
    /// Tokens per UTC calendar month.
    #[arg(long)]
    pub monthly_tokens: Option<i64>,
    /// Expiry: `YYYY-MM-DD` (midnight UTC) or unix seconds.
    #[arg(long)]
    pub expires: Option<String>,
    /// May use the admin API.
    #[arg(long)]
    pub admin: bool,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this key id.
    #[arg(long)]
    pub key: Option<String>,
    /// Only this model id.
    #[arg(long)]
    pub model: Option<String>,
    /// From this day (`YYYY-MM-DD`, UTC) or unix time on.
    #[arg(long)]
    pub since: Option<String>,
    /// Group by day, key or model.
    #[arg(long, value_parser = ["day", "key", "model"])]
    pub by: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "AIAAS_HOST")]
    pub host: Option<String>,
    /// Port to listen on (0 picks a free one; the chosen address is printed).
    #[arg(long, env = "AIAAS_PORT")]
    pub port: Option<u16>,
    /// Do not fetch the default chat model when the repository has no chat model.
    #[arg(long, env = "AIAAS_NO_DEFAULT_MODEL")]
    pub no_default_model: bool,
    /// Models to load at start and keep loaded (comma-separated ids); `/readyz` waits for them.
    #[arg(long, env = "AIAAS_PRELOAD", value_delimiter = ',')]
    pub preload: Option<Vec<String>>,
    /// Unload a model idle this many seconds (0: keep models until evicted or unloaded).
    #[arg(long, env = "AIAAS_KEEP_ALIVE_SECS")]
    pub keep_alive_secs: Option<u64>,
    /// Memory loaded models may take together, like `4GiB` or `1500MB`; the least recently
    /// used idle model is unloaded to make room.
    #[arg(long, env = "AIAAS_MAX_MODEL_MEMORY")]
    pub max_model_memory: Option<String>,
    /// Seconds a request waits for its model to load before it gets 503 with Retry-After.
    #[arg(long, env = "AIAAS_LOAD_WAIT_SECS")]
    pub load_wait_secs: Option<u64>,
    /// The most tokens one request may generate (default: up to the end of the context); a
    /// request asking for more gets 400.
    #[arg(long, env = "AIAAS_MAX_COMPLETION_TOKENS")]
    pub max_completion_tokens: Option<usize>,
    /// Serve HTTPS (only) with this PEM certificate chain; needs `--tls-key`. The files are
    /// watched: a renewed pair is used without a restart.
    #[arg(long, env = "AIAAS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "AIAAS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Fetch a model from the built-in catalog (pinned and checksummed) and import it.
    Fetch {
        /// Catalog name; `aiaas models catalog` lists them. `all` fetches every one.
        name: String,
        /// Only fill the download cache; do not import into the repository.
        #[arg(long)]
        cache_only: bool,
    },
    /// Import a GGUF file you already have.
    Import {
        path: PathBuf,
        /// Model id (default: derived from the file name).
        #[arg(long)]
        id: Option<String>,
    },
    /// List the models in the repository.
    List,
    /// Remove a model from the repository.
    Rm { id: String },
    /// List the models `fetch` knows.
    Catalog,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model id in the repository, a GGUF file, a sentence-transformers folder, a
    /// CTranslate2 Whisper folder or an EfficientNet-Lite checkpoint (`.pth`).
    pub model: String,
    /// Prompt tokens processed in one pass (like llama-bench's pp).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens decoded one at a time (like llama-bench's tg).
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Repetitions; the report gives the mean and spread.
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Embedding models: a file with one sentence per line.
    #[arg(long)]
    pub sentences: Option<std::path::PathBuf>,
    /// Embedding and image models: inputs per batch, each measured in turn (embeddings
    /// default to 1,32,256; images to 1,16).
    #[arg(long, value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Speech models: a folder of audio clips (WAV, FLAC, MP3, OGG).
    #[arg(long)]
    pub audio: Option<std::path::PathBuf>,
    /// Image models: a photo to classify (a grey picture otherwise).
    #[arg(long)]
    pub image: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// The batch sizes asked for, or the model kind's defaults.
    pub fn batch_sizes_or(&self, defaults: &[usize]) -> Vec<usize> {
        if self.batch_sizes.is_empty() {
            defaults.to_vec()
        } else {
            self.batch_sizes.clone()
        }
    }
}

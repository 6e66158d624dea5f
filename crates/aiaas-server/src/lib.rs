//! The server: HTTP surfaces (`api`), the gate every keyed request passes (`gate`), and the
//! wiring that binds them to an engine.

pub mod api;
pub mod clock;
pub mod gate;
mod state;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod vault;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use aiaas_engine::Engine;

pub use state::AppState;
pub use tls::TlsFiles;

/// What the server needs to start; resolved by the CLI from flags, environment and file.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub home: PathBuf,
    pub listen: SocketAddr,
    /// A key given by the operator (`AIAAS_API_KEY`) instead of a generated one.
    pub api_key: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long requests in flight may run on after a shutdown signal.
    pub drain_timeout: std::time::Duration,
    /// Serve HTTPS (only) with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// The largest file the Files API accepts, in bytes.
    pub max_file_bytes: u64,
    /// Log JSON request bodies (an operator's opt-in; off by default).
    pub log_request_bodies: bool,
}

/// Binds the listener and serves until SIGINT or SIGTERM. Prints the bound address on stdout
/// first (`listening on http://ADDR`), which is how tests find an ephemeral port.
pub async fn serve(settings: ServerSettings, engine: Arc<Engine>) -> std::io::Result<()> {
    std::fs::create_dir_all(&settings.home)?;
    let store = store::Store::open(&database_path(&settings.home))
        .await
        .map_err(std::io::Error::other)?;
    let keys = gate::Keys::new(store);
    if let Some(created) = keys
        .ensure_admin_key(&settings.home, settings.api_key.as_deref())
        .await?
    {
        println!(
            "created the admin API key (shown once; also saved with mode 0600 to {}):\n  {}",
            created.file.display(),
            created.key
        );
    }
    engine.spawn_keep_alive();
    let preloading = engine.clone();
    tokio::spawn(async move {
        // `/readyz` answers 503 until this is done.
        if let Err(e) = preloading.preload().await {
            tracing::error!("preloading failed; not ready: {e}");
        }
    });
    let files = storage::FileStorage::open(&settings.home, settings.max_file_bytes)
        .map_err(std::io::Error::other)?;
    let orphans = files
        .sweep_orphans(keys.store())
        .await
        .map_err(std::io::Error::other)?;
    if orphans > 0 {
        tracing::warn!(orphans, "removed stored file bodies that no record names");
    }
    let state = AppState::new(engine, keys, files);
    let app = api::router(state, settings.max_body_bytes, settings.log_request_bodies);
    let drain_timeout = settings.drain_timeout;
    match &settings.tls {
        None => serve_http(settings.listen, app, drain_timeout).await?,
        Some(files) => serve_https(settings.listen, files, app, drain_timeout).await?,
    }
    tracing::info!("stopped");
    Ok(())
}

/// Plain HTTP. On SIGINT/SIGTERM: stop accepting, let requests in flight finish (streams
/// included), but no longer than the drain timeout. Usage rows are committed as responses
/// complete, so there is nothing else to flush.
async fn serve_http(
    listen: SocketAddr,
    app: axum::Router,
    drain_timeout: std::time::Duration,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let (draining, mut drain_started) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = draining.send(true);
    });
    tokio::select! {
        finished = server => finished?,
        _ = async {
            let _ = drain_started.wait_for(|started| *started).await;
            tokio::time::sleep(drain_timeout).await;
        } => tracing::warn!(?drain_timeout, "drain timeout reached; closing the remaining connections"),
    }
    Ok(())
}

/// HTTPS only (a plain HTTP request on the port fails its handshake), with the certificate
/// reloaded when its files change; the same shutdown as `serve_http`.
async fn serve_https(
    listen: SocketAddr,
    files: &TlsFiles,
    app: axum::Router,
    drain_timeout: std::time::Duration,
) -> std::io::Result<()> {
    let config = files.serve_and_watch()?;
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    println!("listening on https://{}", listener.local_addr()?);
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stopping.graceful_shutdown(Some(drain_timeout));
    });
    axum_server::from_tcp_rustls(listener, config)?
        .handle(handle)
        .serve(app.into_make_service())
        .await
}

/// The embedded database in the home folder.
pub fn database_path(home: &std::path::Path) -> PathBuf {
    home.join("aiaas.db")
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

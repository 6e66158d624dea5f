//! `aiaas serve`: make sure a chat model exists, then run the server.

use std::sync::Arc;

use aiaas_engine::catalog::{self, DEFAULT_CHAT_MODEL};
use aiaas_engine::{fetch, Engine, ModelRepository, Task};
use aiaas_server::ServerSettings;

use crate::cli::ServeArgs;
use crate::config::Settings;

pub async fn run(args: ServeArgs, settings: Settings) -> anyhow::Result<()> {
    let repository = ModelRepository::open(settings.models_dir())?;
    let has_chat_model = repository.list()?.iter().any(|m| m.task == Task::Chat);
    if !has_chat_model && !args.no_default_model {
        let entry = catalog::find(DEFAULT_CHAT_MODEL).expect("the default model is in the catalog");
        eprintln!(
            "no chat model in {}: fetching the default, {}",
            repository.root().display(),
            entry.name
        );
        let path = fetch::fetch(entry).await?;
        repository.import(&path, Some(entry.name), Some(entry.name))?;
    }
    let listen = settings.listen_address(&args)?;
    let tls = settings.tls(&args)?;
    let residency = settings.residency(&args)?;
    let engine = Arc::new(Engine::new(
        repository,
        settings.worker_limits(&args),
        residency,
    )?);
    aiaas_server::serve(
        ServerSettings {
            home: settings.home.clone(),
            listen,
            api_key: settings.api_key.clone(),
            max_body_bytes: settings.max_body_bytes(),
            drain_timeout: settings.drain_timeout(),
            tls,
            max_file_bytes: settings.max_file_bytes(),
            log_request_bodies: settings.log_request_bodies(),
        },
        engine,
    )
    .await?;
    Ok(())
}

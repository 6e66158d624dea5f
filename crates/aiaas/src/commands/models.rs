//! `aiaas models ...`: fetch, import, list, remove.

use aiaas_engine::catalog::{self, CatalogEntry};
use aiaas_engine::{fetch, ModelManifest, ModelRepository};
use anyhow::Context;

use crate::cli::ModelsCommand;
use crate::config::Settings;

pub async fn run(command: ModelsCommand, settings: &Settings) -> anyhow::Result<()> {
    let repository = ModelRepository::open(settings.models_dir())?;
    match command {
        ModelsCommand::Fetch { name, cache_only } => {
            let entries: Vec<&CatalogEntry> = if name == "all" {
                catalog::CATALOG.iter().collect()
            } else {
                vec![catalog::find(&name).with_context(|| {
                    format!("`{name}` is not in the catalog; `aiaas models catalog` lists it")
                })?]
            };
            for entry in entries {
                let path = fetch::fetch(entry).await?;
                if cache_only {
                    println!("{} cached at {}", entry.name, path.display());
                } else if repository.get(entry.name).is_ok() {
                    println!("{} is already in the repository", entry.name);
                } else {
                    let manifest = repository.import(&path, Some(entry.name), Some(entry.name))?;
                    print_imported(&manifest);
                }
            }
        }
        ModelsCommand::Import { path, id } => {
            let manifest = repository.import(&path, id.as_deref(), None)?;
            print_imported(&manifest);
        }
        ModelsCommand::List => {
            println!(
                "{:<32} {:<10} {:<8} {:>8} {:>7} {:<8}",
                "ID", "TASK", "ARCH", "PARAMS", "CTX", "QUANT"
            );
            for m in repository.list()? {
                println!(
                    "{:<32} {:<10} {:<8} {:>7.0}M {:>7} {:<8}",
                    m.id,
                    format!("{:?}", m.task).to_lowercase(),
                    m.architecture,
                    m.parameters as f64 / 1e6,
                    m.context_length,
                    m.quantization
                );
            }
        }
        ModelsCommand::Rm { id } => {
            repository.remove(&id)?;
            println!("removed {id}");
        }
        ModelsCommand::Catalog => {
            for entry in catalog::CATALOG {
                let state = if fetch::cached(entry).is_some() {
                    "cached"
                } else {
                    ""
                };
                println!(
                    "{:<32} {:>5.0} MB  {:<7} {}",
                    entry.name,
                    entry.size as f64 / 1e6,
                    state,
                    entry.description
                );
            }
        }
    }
    Ok(())
}

fn print_imported(m: &ModelManifest) {
    println!(
        "imported {} ({}, {}, {:.0}M parameters, context {})",
        m.id,
        m.architecture,
        m.quantization,
        m.parameters as f64 / 1e6,
        m.context_length
    );
}

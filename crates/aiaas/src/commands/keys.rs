//! `aiaas keys ...` and `aiaas usage`: the service layer's records in the home folder's
//! database (the server reads the same database on every request, so changes apply at once).

use aiaas_server::clock;
use aiaas_server::gate::KeySpec;
use aiaas_server::store::{Store, UsageFilter, UsageGrouping};
use anyhow::{bail, Context};

use super::admin::Admin;
use crate::cli::{KeysCommand, UsageArgs};
use crate::config::Settings;

/// The master key lives with the files: this works on the home folder, never over the network.
async fn rotate_master(settings: &Settings) -> anyhow::Result<()> {
    let store = Store::open(&aiaas_server::database_path(&settings.home)).await?;
    let rotation = aiaas_server::storage::rotate_master_key(&settings.home, &store).await?;
    println!(
        "re-wrapped {} file key(s) under master key {}",
        rotation.rewrapped, rotation.new_key_id
    );
    if let Some(key) = rotation.new_key_for_environment {
        println!("set AIAAS_MASTER_KEY={key} before starting the server");
    }
    Ok(())
}

pub async fn run(command: KeysCommand, settings: &Settings) -> anyhow::Result<()> {
    let admin = Admin::connect(settings).await?;
    match command {
        KeysCommand::Create(args) => {
            let expires_at = match args.expires.as_deref() {
                None => None,
                Some(text) => Some(clock::parse_date(text).with_context(|| {
                    format!("--expires `{text}`: use YYYY-MM-DD or unix seconds")
                })?),
            };
            for (flag, value) in [
                ("--rpm", args.rpm),
                ("--tpm", args.tpm),
                ("--daily-tokens", args.daily_tokens),
                ("--monthly-tokens", args.monthly_tokens),
            ] {
                if value.is_some_and(|v| v < 1) {
                    bail!("{flag} must be at least 1");
                }
            }
            let spec = KeySpec {
                name: args.name,
                models: args
                    .models
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect(),
                rpm: args.rpm,
                tpm: args.tpm,
                daily_tokens: args.daily_tokens,
                monthly_tokens: args.monthly_tokens,
                expires_at,
                admin: args.admin,
            };
            let (secret, record) = admin.create(&spec).await?;
            println!(
                "created {} ({}); the key is shown only now:\n{secret}",
                record.id, record.name
            );
        }
        KeysCommand::List => {
            println!(
                "{:<18} {:<20} {:<11} {:<6} {:<24} {:>6} {:>8} {:>10} {:>12} {:<10} {:<10}",
                "ID",
                "NAME",
                "PREFIX",
                "ADMIN",
                "MODELS",
                "RPM",
                "TPM",
                "DAILY",
                "MONTHLY",
                "LAST USED",
                "STATE"
            );
            let now = clock::now();
            for k in admin.list().await? {
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else if k.expires_at.is_some_and(|at| at <= now) {
                    "expired"
                } else {
                    "active"
                };
                let limit = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
                println!(
                    "{:<18} {:<20} {:<11} {:<6} {:<24} {:>6} {:>8} {:>10} {:>12} {:<10} {:<10}",
                    k.id,
                    k.name,
                    k.prefix,
                    k.admin,
                    k.models,
                    limit(k.rpm),
                    limit(k.tpm),
                    limit(k.daily_tokens),
                    limit(k.monthly_tokens),
                    k.last_used_at
                        .map_or_else(|| "never".to_string(), clock::date_of),
                    state
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let record = admin.revoke(&id).await?;
            println!("revoked {} ({})", record.id, record.name);
        }
        KeysCommand::Rotate { id } => {
            let (secret, record) = admin.rotate(&id).await?;
            println!(
                "rotated {} ({}); the new key is shown only now:\n{secret}",
                record.id, record.name
            );
        }
        KeysCommand::RotateMaster => rotate_master(settings).await?,
        KeysCommand::Audit => {
            for e in admin.audit().await? {
                println!(
                    "{} {:<11} actor={} target={} {}",
                    clock::date_of(e.at),
                    e.action,
                    e.actor_key_id.unwrap_or_default(),
                    e.target_key_id.unwrap_or_default(),
                    e.detail
                );
            }
        }
    }
    Ok(())
}

pub async fn usage(args: UsageArgs, settings: &Settings) -> anyhow::Result<()> {
    let admin = Admin::connect(settings).await?;
    let since = match args.since.as_deref() {
        None => None,
        Some(text) => Some(
            clock::parse_date(text)
                .with_context(|| format!("--since `{text}`: use YYYY-MM-DD or unix seconds"))?,
        ),
    };
    let by = match args.by.as_deref() {
        Some("day") => Some(UsageGrouping::Day),
        Some("key") => Some(UsageGrouping::Key),
        Some("model") => Some(UsageGrouping::Model),
        _ => None,
    };
    let groups = admin
        .usage(&UsageFilter {
            key: args.key,
            model: args.model,
            since,
            by,
        })
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&groups)?);
        return Ok(());
    }
    println!(
        "{:<32} {:>9} {:>14} {:>17} {:>13} {:>7} {:>7} {:>9} {:>9}",
        "GROUP",
        "REQUESTS",
        "PROMPT TOKENS",
        "COMPLETION TOKENS",
        "AUDIO SECONDS",
        "IMAGES",
        "ERRORS",
        "P50 MS",
        "P99 MS"
    );
    for g in groups {
        println!(
            "{:<32} {:>9} {:>14} {:>17} {:>13.1} {:>7} {:>7} {:>9} {:>9}",
            g.group,
            g.requests,
            g.prompt_tokens,
            g.completion_tokens,
            g.audio_seconds,
            g.images,
            g.errors,
            g.latency_p50_ms,
            g.latency_p99_ms
        );
    }
    Ok(())
}

//! One module per command.

mod admin;
mod bench;
mod keys;
mod models;
mod serve;
mod tls;

use crate::cli::{Command, ConfigCommand, TlsCommand};
use crate::config::Settings;

pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve::run(args, settings).await,
        Command::Models(command) => models::run(command, &settings).await,
        Command::Bench(args) => {
            tokio::task::spawn_blocking(move || bench::run(&args, &settings)).await?
        }
        Command::Keys(command) => keys::run(command, &settings).await,
        Command::Usage(args) => keys::usage(args, &settings).await,
        Command::Config(ConfigCommand::Show(args)) => {
            println!("{}", settings.show(&args)?);
            Ok(())
        }
        Command::Tls(TlsCommand::DevCert(args)) => tls::dev_cert(&args),
    }
}

//! `aiaas`: AI models as a service. A thin command line over the server and the engine.

mod cli;
mod commands;
mod config;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    let settings = config::Settings::resolve(&cli.global)?;
    init_logging(&settings);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(commands::run(cli.command, settings))
}

fn init_logging(settings: &config::Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIAAS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if settings.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

//! `aiaas`: AI models as a service. A thin command line over the server and the engine.

mod cli;
mod commands;
mod config;

use clap::Parser;

/// Model forward passes allocate and free many activation buffers of a few megabytes each; the
/// system allocator hands those back to the kernel and takes fresh zeroed pages every time
/// (measured: 15-20% of embedding throughput). mimalloc keeps them for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

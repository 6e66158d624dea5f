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
    aiaas_engine::set_release_hook(return_freed_memory);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(commands::run(cli.command, settings))
}

/// Hands the pages mimalloc keeps for reuse back to the OS: after a model is unloaded, so that
/// resident memory really goes down. mimalloc keeps freed pages per thread, and a thread only
/// returns them when it calls into the allocator again: the compute pool's threads, idle once
/// the model is gone, would hold what the last forward passes freed (measured: 15-20 MB held
/// after some unloads, when the collection ran on this thread alone).
fn return_freed_memory() {
    rayon::broadcast(|_| collect_this_threads_pages());
    collect_this_threads_pages();
}

#[allow(unsafe_code)] // a foreign call; the one unsafe block in the project
fn collect_this_threads_pages() {
    // SAFETY: mi_collect has no preconditions; it only walks the allocator's own structures.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

fn init_logging(settings: &config::Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIAAS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only on a terminal, not in files and log collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if settings.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

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

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h` v2, the version the sys crate builds; the
/// crate has no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// How long freed pages stay with mimalloc before they go back to the OS. Its default, 10 ms,
/// is shorter than a prompt's pass through a model: the buffers of one layer were handed back
/// and faulted in again (zeroed) for the next, some ten thousand 2 MB pages in a 256-token
/// Qwen2.5 prefill, and ~10-20% of its time (measured with `perf stat` and `aiaas bench`).
/// Unloading a model still returns everything at once (`return_freed_memory` forces it).
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

fn main() -> anyhow::Result<()> {
    keep_freed_pages_a_while();
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

#[allow(unsafe_code)] // a foreign call
fn collect_this_threads_pages() {
    // SAFETY: mi_collect has no preconditions; it only walks the allocator's own structures.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[allow(unsafe_code)] // a foreign call
fn keep_freed_pages_a_while() {
    // SAFETY: mi_option_set only stores the value in the allocator's option table (an atomic).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
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

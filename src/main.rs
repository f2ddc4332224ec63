//! The `ctrpull` binary: parse the command line, run it, map the result to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Chunk buffers (1–4 MiB) are allocated and freed all through a pull. glibc's
/// malloc serves them with mmap at first but, once one is freed, raises its mmap
/// threshold to that size and from then on carves them out of its heaps, where freed
/// buffers stay part of the process (fragmented across per-thread arenas): peak
/// memory grows with the number of connections instead of staying near the reorder
/// budget. A fixed threshold keeps every buffer of this size mmapped, returned to
/// the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_big_buffers_mmapped() {
    const THRESHOLD: libc::c_int = 256 << 10;
    // SAFETY: mallopt only changes allocator parameters; called before any thread
    // starts, as glibc recommends.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_big_buffers_mmapped() {}

fn main() -> ExitCode {
    keep_big_buffers_mmapped();
    let cli = ctrpull::cli::Cli::parse();
    let default_level = match (cli.quiet(), cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("ctrpull={default_level},warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ctrpull: cannot start the async runtime: {e}");
            return ExitCode::from(ctrpull::cli::EXIT_FAILED);
        }
    };
    runtime.block_on(ctrpull::cli::run(cli))
}

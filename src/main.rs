use anyhow::Result;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Worker threads get 8 MiB of stack instead of tokio's 2 MiB: a safety margin for
/// recursive code (GraphQL parsing and validation, JSON). Deep documents are refused
/// before they are parsed (`limits::check_document_nesting`); this is the margin
/// behind that check, not the defence.
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;

/// Runs the command; a failure prints its message and causes on stderr, without a
/// backtrace (which `RUST_BACKTRACE` would otherwise add), and exits 1.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        // Colour only on a terminal: redirected logs stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Logs go to stderr: stdout carries what a command prints (`careboard token`'s
        // token, `careboard schema`'s SDL) for scripts to capture.
        .with_writer(std::io::stderr)
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_stack_size(WORKER_STACK_BYTES);
    if let Some(ticks) = event_interval()? {
        runtime.event_interval(ticks);
    }
    if let Some(workers) = worker_threads()? {
        runtime.worker_threads(workers);
    }
    runtime
        .build()?
        .block_on(careboard::cli::run(careboard::config::Cli::parse()))
}

/// `CAREBOARD_RUNTIME_EVENT_INTERVAL`: how many tasks a busy worker runs between polls
/// of the I/O and timer drivers (tokio's default when unset, 61). Lower polls sockets
/// (the Board listener's NOTIFYs, websocket writes) sooner under load at more driver
/// polls; kept selectable so the benchmark compares both in one run
/// (`careboard-bench subscribe --event-interval-rounds`).
fn event_interval() -> Result<Option<u32>> {
    match std::env::var("CAREBOARD_RUNTIME_EVENT_INTERVAL") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(ticks) if ticks > 0 => Ok(Some(ticks)),
            _ => anyhow::bail!(
                "CAREBOARD_RUNTIME_EVENT_INTERVAL must be a whole number above 0, got {v:?}"
            ),
        },
    }
}

/// `CAREBOARD_RUNTIME_WORKERS`: the runtime's worker threads (tokio's default when unset:
/// one per core). More workers than cores let the kernel run a waiting task (the Board
/// listener, the projector's batch) beside a long one (a writer pass over many sockets)
/// by preempting threads; kept selectable so the benchmark compares it in one run
/// (`careboard-bench subscribe --latency-variants`).
fn worker_threads() -> Result<Option<usize>> {
    match std::env::var("CAREBOARD_RUNTIME_WORKERS") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(workers) if workers > 0 => Ok(Some(workers)),
            _ => {
                anyhow::bail!("CAREBOARD_RUNTIME_WORKERS must be a whole number above 0, got {v:?}")
            }
        },
    }
}

use anyhow::Result;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Worker threads get 8 MiB of stack instead of tokio's 2 MiB: a safety margin for
/// recursive code (GraphQL parsing and validation, JSON). Deep documents are refused
/// before they are parsed (`limits::check_document_nesting`); this is the margin
/// behind that check, not the defence.
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;

fn main() -> Result<()> {
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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK_BYTES)
        .build()?
        .block_on(careboard::cli::run(careboard::config::Cli::parse()))
}

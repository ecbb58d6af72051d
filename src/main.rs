use anyhow::Result;
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<()> {
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
    careboard::cli::run(careboard::config::Cli::parse()).await
}

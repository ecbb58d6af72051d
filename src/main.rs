use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use careboard::app;
use careboard::config::{Cli, Command};

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Schema) => {
            print!("{}", careboard::graphql::sdl());
            Ok(())
        }
        Some(Command::Migrate) => {
            let db = app::open_database(&cli.database).await?;
            careboard::postgres::migrate(&db.pool).await?;
            tracing::info!("migrations applied");
            db.pool.close().await;
            Ok(())
        }
        Some(Command::Serve(serve)) => run(cli.database, serve).await,
        None => run(cli.database, cli.serve).await,
    }
}

async fn run(
    database: careboard::config::DatabaseArgs,
    serve: careboard::config::ServeArgs,
) -> Result<()> {
    let db = app::open_database(&database).await?;
    careboard::postgres::migrate(&db.pool).await?;
    let state = app::state(
        db.pool.clone(),
        serve.limits.clone(),
        Duration::from_millis(database.lock_timeout_ms),
    );
    let listener = tokio::net::TcpListener::bind(&serve.bind).await?;
    tracing::info!(
        "Careboard listening; GraphiQL at http://{}/graphql",
        listener.local_addr()?
    );
    let result = app::serve(listener, state, app::shutdown_signal()).await;
    db.pool.close().await;
    drop(db);
    result
}

//! The command line: `serve` (default), `migrate`, `schema`, `projections ...`.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::app;
use crate::config::{
    Cli, Command, DatabaseArgs, ProjectionsCommand, ProjectorMode, ServeArgs, Switch,
};
use crate::daemon::{Daemon, DaemonConfig};
use crate::projections::Projection;
use crate::projector;

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Schema) => {
            print!("{}", crate::graphql::sdl());
            Ok(())
        }
        Some(Command::Migrate) => {
            let db = app::open_database(&cli.database).await?;
            db.migrate().await?;
            tracing::info!("migrations applied");
            db.pool.close().await;
            Ok(())
        }
        Some(Command::Projections { action }) => projections(cli.database, action).await,
        Some(Command::Demo(args)) => demo(cli.database, args).await,
        Some(Command::Token(args)) => print_token(&cli.database, &args),
        Some(Command::Audit { action }) => audit(&cli.database, action).await,
        Some(Command::Serve(serve)) => serve_command(cli.database, serve).await,
        None => serve_command(cli.database, cli.serve).await,
    }
}

async fn demo(database: DatabaseArgs, args: crate::demo::DemoArgs) -> Result<()> {
    let listener = if args.live {
        // Its Boards are served with the development issuer's tokens: this machine only.
        crate::identity::edge::check_bind(&args.bind, false).await?;
        Some(bind(&args.bind).await?)
    } else {
        None
    };
    if args.reset {
        println!("{}", crate::demo::reset(&database, &args).await?);
    }
    let db = if args.live {
        app::open_database_to_serve(&database).await?
    } else {
        app::open_database(&database).await?
    };
    db.migrate().await?;
    let scenario = args.scenario();
    if !args.live {
        let imported = crate::demo::import_history(&db.pool, &scenario, args.seed).await?;
        println!(
            "Imported the demo day {} (seed {}): {} events on {} streams, up to position {}.",
            scenario.date, args.seed, imported.events, imported.streams, imported.position
        );
        println!("Boards (serve with `careboard`, then open):");
        print!(
            "{}",
            crate::demo::describe(&scenario, &format!("http://{}", args.bind))
        );
        println!("Browse the day with board(id, asOf: ...) and boardHistory(boardId, from, to).");
        return Ok(());
    }
    let mut state = app::state(
        db.pool.clone(),
        Default::default(),
        Duration::from_millis(database.lock_timeout_ms),
    );
    // Authentication on, as `careboard serve`: the pages open with the development
    // issuer's token, and `careboard token` mints more for the same data dir.
    let issuer = crate::identity::dev_issuer::DevIssuer::load_or_create(&database.data_dir)?;
    state.auth = Some(crate::identity::Verifier::new(issuer.verifier_config()));
    state.dev_issuer = Some(std::sync::Arc::new(issuer));
    let projector = app::spawn_daemon(&state, DaemonConfig::default());
    let listener = listener.expect("bound above for --live");
    let base = format!("http://{}", listener.local_addr()?);
    let metrics = state.metrics.clone();
    let store = state.store.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app::serve(listener, state, async move {
        let _ = stop_rx.await;
    }));
    // Heard from here on, before the day is announced (see `app::shutdown_signal_quiet`).
    let stop = app::shutdown_signal();
    println!(
        "Playing the demo day live at {}x (seed {}); all Boards: {base}/boards. Opening:",
        args.speed, args.seed
    );
    // Ctrl+C (or SIGTERM) stops the day early: the driver then closes what it opened.
    let summary =
        crate::demo::live::play(&store, &scenario, args.speed, args.hours, &base, stop).await?;
    let latency = metrics.matcher_latency();
    println!(
        "{}: {} requested, {} scheduled by the matcher, {} finished, {} Boards closed \
         ({} providers reused from earlier runs; {} min of quiet skipped).",
        if summary.interrupted {
            "Stopped early; everything it opened is closed"
        } else {
            "Day over"
        },
        summary.requested,
        summary.scheduled_by_matcher,
        summary.finished,
        summary.boards_closed,
        summary.providers_reused,
        summary.skipped.num_minutes()
    );
    println!(
        "Matcher, READY or request -> assignment committed: {} assignments, p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms",
        latency.count, latency.p50_ms, latency.p99_ms, latency.max_ms
    );
    let _ = stop_tx.send(());
    let _ = server.await;
    projector.stop().await?;
    Ok(())
}

/// Takes the listening address before anything else starts (PostgreSQL, migrations),
/// so a port already in use is reported at once, with the address and the way out.
pub async fn bind(address: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen on {address}: the address is already in use (is Careboard, \
                 or `careboard demo --live`, already running there?). Stop that process, or \
                 choose another address with --bind (CAREBOARD_BIND), e.g. --bind 127.0.0.1:8081"
            )
        } else {
            anyhow::anyhow!("cannot listen on {address}: {e}")
        }
    })
}

async fn serve_command(database: DatabaseArgs, serve: ServeArgs) -> Result<()> {
    let listener = if serve.projector == ProjectorMode::Only {
        None
    } else {
        Some(bind(&serve.bind).await?)
    };
    let metrics_listener = match (&serve.metrics_bind, &listener) {
        (Some(address), Some(_)) => Some(bind(address).await?),
        _ => None,
    };
    if listener.is_some() {
        // Before the database starts: a configuration that would serve the network
        // without authentication is refused at once.
        match serve.identity.auth {
            Switch::On => {
                crate::identity::edge::check_bind(&serve.bind, serve.identity.uses_provider())
                    .await?
            }
            Switch::Off => crate::identity::edge::check_bind_without_auth(&serve.bind).await?,
        }
    }
    if serve.limits.ws_inbound_queue.is_some() {
        tracing::warn!(
            "CAREBOARD_WS_INBOUND_QUEUE (--ws-inbound-queue) is deprecated and ignored: \
             inbound websocket messages are handled one at a time; remove the setting"
        );
    }
    crate::projections::read::set_board_reads(serve.limits.board_reads);
    crate::matcher::set_matcher_reads(serve.limits.matcher_reads);
    let db = app::open_database_to_serve(&database).await?;
    db.migrate().await?;
    let mut state = app::state_with(
        db.pool.clone(),
        serve.limits.clone(),
        Duration::from_millis(database.lock_timeout_ms),
        Duration::from_millis(serve.read_wait_ms),
    );
    match serve.identity.auth {
        Switch::On => {
            let verifier =
                crate::identity::Verifier::new(serve.identity.verifier_config(&database.data_dir)?);
            verifier.prefetch().await;
            state.auth = Some(verifier);
            if !serve.identity.uses_provider() {
                state.page_token_ttl = serve.identity.page_token_ttl;
                state.dev_issuer = Some(std::sync::Arc::new(
                    crate::identity::dev_issuer::DevIssuer::load_or_create(&database.data_dir)?,
                ));
                tracing::info!(
                    "no identity provider configured: tokens come from the development issuer \
                     (`careboard token`), and Careboard listens on loopback only"
                );
            }
        }
        Switch::Off => {
            tracing::warn!(
                "AUTHENTICATION IS OFF (--auth off): anyone who reaches {} reads and changes \
                 everything, patient data included, without a token. For development on this \
                 machine only.",
                serve.bind
            );
        }
    }
    state.metrics_elsewhere = metrics_listener.is_some();
    let projector = match serve.projector {
        ProjectorMode::Off => None,
        ProjectorMode::Auto | ProjectorMode::Only => Some(app::spawn_daemon(
            &state,
            DaemonConfig {
                matching: serve.matching == Switch::On,
                ..Default::default()
            },
        )),
    };
    match serve.projector {
        ProjectorMode::Off => tracing::info!(
            "projector off (--projector off): this process serves only; documents move, and \
             minPosition reads are answered, when a Careboard process with the projector runs \
             against the same database"
        ),
        _ if serve.matching == Switch::Off => tracing::info!(
            "automatic scheduling off (--matching off): coordinators schedule every appointment"
        ),
        _ => {}
    }
    // Every listener hears a stop from here on, before the process says it listens: a
    // signal that came before a listener's own handler was set would be lost to it.
    let (stop, metrics_stop) = (app::shutdown_signal(), app::shutdown_signal_quiet());
    let result = if let Some(listener) = listener {
        let address = listener.local_addr()?;
        if state.limits.graphiql {
            tracing::info!("Careboard listening; GraphiQL at http://{address}/graphql");
        } else {
            tracing::info!(
                "Careboard listening; GraphQL at http://{address}/graphql (GraphiQL off)"
            );
        }
        if let Some(metrics) = metrics_listener {
            tracing::info!("metrics at http://{}/metrics", metrics.local_addr()?);
            // Stops with the same signal as the API, which announces it.
            tokio::spawn(app::serve_metrics(metrics, state.clone(), metrics_stop));
        }
        app::serve(listener, state, stop).await
    } else {
        tracing::info!("projecting only (no HTTP)");
        stop.await;
        Ok(())
    };
    if let Some(p) = projector {
        p.stop().await?;
    }
    db.pool.close().await;
    drop(db);
    result
}

fn projection_named(name: &str) -> Result<Projection> {
    Projection::named(name).map_err(anyhow::Error::msg)
}

async fn projections(database: DatabaseArgs, action: ProjectionsCommand) -> Result<()> {
    if let ProjectionsCommand::List = action {
        for p in Projection::ALL {
            println!("{}\tversion {}", p.name(), p.version());
        }
        return Ok(());
    }
    let db = app::open_database(&database).await?;
    db.migrate().await?;
    match action {
        ProjectionsCommand::List => unreachable!("handled above"),
        ProjectionsCommand::Status => print_status(&db.pool).await?,
        ProjectionsCommand::ReplayDeadLetters { name } => {
            let report =
                projector::replay::replay_dead_letters(&db.pool, projection_named(&name)?).await?;
            println!("replayed {} dead letter(s)", report.replayed);
            for failure in &report.still_failing {
                println!("still failing: {failure}");
            }
        }
        ProjectionsCommand::Rebuild { name } => {
            let projection = projection_named(&name)?;
            let generation = projector::state::request_rebuild(&db.pool, projection).await?;
            println!("rebuilding {name} as generation {generation}");
            // Project here too: if a server already leads, this one stands by. Matching
            // is left to servers: a maintenance command schedules nobody.
            let handle = Daemon::new(
                db.pool.clone(),
                Default::default(),
                Default::default(),
                DaemonConfig {
                    matching: false,
                    ..Default::default()
                },
                Default::default(),
            )
            .spawn();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let statuses = projector::state::status(&db.pool).await?;
                let Some(s) = statuses
                    .iter()
                    .find(|s| s.name == name && s.generation == generation)
                else {
                    bail!("generation {generation} of {name} disappeared");
                };
                if s.state == crate::projector::state::GenerationStatus::Live.as_str() {
                    println!(
                        "generation {generation} of {name} is live ({} events)",
                        s.events_applied
                    );
                    break;
                }
                println!(
                    "  {:.1}% ({} events applied, {} to go)",
                    s.rebuild_progress.unwrap_or(0.0) * 100.0,
                    s.events_applied,
                    s.lag_events
                );
            }
            handle.stop().await?;
        }
    }
    db.pool.close().await;
    Ok(())
}

async fn print_status(pool: &sqlx::PgPool) -> Result<()> {
    println!(
        "{:<24} {:>4} {:<9} {:>3} {:>12} {:>10} {:>10} {:>8} {:>6}",
        "projection", "gen", "state", "ver", "position", "applied", "lag", "lag s", "dead"
    );
    for s in projector::state::status(pool).await? {
        println!(
            "{:<24} {:>4} {:<9} {:>3} {:>12} {:>10} {:>10} {:>8.3} {:>6}",
            s.name,
            s.generation,
            s.state,
            s.projection_version,
            s.checkpoint_position,
            s.events_applied,
            s.lag_events,
            s.lag_seconds,
            s.dead_letters
        );
    }
    Ok(())
}

/// `careboard token`: prints a development token (only the token, for `$(...)`).
pub fn print_token(
    database: &crate::config::DatabaseArgs,
    args: &crate::identity::dev_issuer::TokenArgs,
) -> anyhow::Result<()> {
    if std::env::var_os("CAREBOARD_OIDC_ISSUER").is_some() {
        eprintln!(
            "note: CAREBOARD_OIDC_ISSUER is set; a server configured with it does not accept \
             development tokens"
        );
    }
    let issuer = crate::identity::dev_issuer::DevIssuer::load_or_create(&database.data_dir)?;
    let mut args = args.clone();
    if args.role == crate::identity::Role::Patient && args.patient_id.is_none() {
        // Said, not kept silent: the patient's requests are recorded with this id, and a
        // coordinator requesting on their behalf gives it as `patientId`.
        let id = uuid::Uuid::new_v4().to_string();
        eprintln!(
            "note: no --patient-id given: this token is for a new patient, {id} (their \
             requests are recorded with it; give --patient-id {id} for another token of theirs)"
        );
        args.patient_id = Some(id);
    }
    println!("{}", issuer.issue(&args)?);
    Ok(())
}

/// `careboard audit verify`.
pub async fn audit(
    database: &crate::config::DatabaseArgs,
    action: crate::config::AuditCommand,
) -> anyhow::Result<()> {
    match action {
        crate::config::AuditCommand::Verify => {
            let db = app::open_database(database).await?;
            // As the schema's owner where there is one: the server's login may not
            // change the schema.
            db.migrate().await?;
            let report = crate::identity::access_log::verify(&db.pool).await;
            db.pool.close().await;
            let report = report?;
            match report.first_broken {
                None => {
                    println!(
                        "access log intact: {} record(s), head {}",
                        report.verified, report.head_hash
                    );
                    Ok(())
                }
                Some(broken) => anyhow::bail!(
                    "access log broken at record {}: {} ({} record(s) before it verify)",
                    broken.seq,
                    broken.reason,
                    report.verified
                ),
            }
        }
    }
}

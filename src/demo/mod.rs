//! `careboard demo`: a realistic telehealth day, deterministic from `--seed`.
//!
//! - History (default): the day is simulated with the real aggregates and matching plan
//!   and imported at once through [`crate::event_store::import`], with event times
//!   spread over the day. Browse it with `asOf` and `boardHistory`.
//! - Live (`--live`): the same day played against a running Careboard (served by the
//!   demo process itself) at `--speed` times real time: patients request, providers
//!   join, pause, chart and sign off through the commands, and the real matcher
//!   schedules. Watch it at `/boards/<id>`.

pub mod live;
pub mod scenario;
pub mod sim;

use std::str::FromStr;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Duration, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::DatabaseArgs;
pub use crate::config::DemoArgs;
use crate::domain::{AppointmentId, ShiftId};

use crate::event_store::import::{import, Imported};
use scenario::{generate, Scenario, ScenarioOptions};

/// What happens next in the demo day, queued at its time. The history simulation and the
/// live player walk the same day, so they queue the same acts.
#[derive(Debug, Clone, Copy)]
enum Act {
    OpenBoard(usize),
    Join(usize, usize),
    Request(usize, usize),
    Start(AppointmentId),
    NoShow(AppointmentId),
    Finish(AppointmentId),
    CompleteCharting(ShiftId),
    /// The break's planned end rides along: the provider pauses until then.
    BreakStarts(ShiftId, DateTime<Utc>),
    BreakEnds(ShiftId),
    LeaveDue(ShiftId),
    PatienceOut(AppointmentId),
    /// Live only, every few simulated minutes: retry intentions, wind down finished
    /// Boards.
    Tick,
}

/// The acts a day starts with, in queueing order: each Board opens, its providers join
/// and its patients arrive. Everything else is queued as these happen.
fn first_acts(scenario: &Scenario) -> Vec<(DateTime<Utc>, Act)> {
    let mut acts = Vec::new();
    for (b, plan) in scenario.boards.iter().enumerate() {
        acts.push((plan.opens_at, Act::OpenBoard(b)));
        let joins = plan.shifts.iter().enumerate();
        acts.extend(joins.map(|(s, shift)| (shift.joins_at, Act::Join(b, s))));
        let arrivals = plan.arrivals.iter().enumerate();
        acts.extend(arrivals.map(|(a, arrival)| (arrival.at, Act::Request(b, a))));
    }
    acts
}

impl DemoArgs {
    pub fn scenario(&self) -> Scenario {
        let today = Utc::now().date_naive();
        let date = match (self.live, self.date) {
            (true, _) => today,
            (false, Some(d)) => d,
            (false, None) => today - Duration::days(1),
        };
        generate(&ScenarioOptions {
            seed: self.seed,
            date,
            boards: self.boards,
            load: self.load,
        })
    }
}

/// Simulates the scenario's day and imports it as history.
pub async fn import_history(pool: &PgPool, scenario: &Scenario, seed: u64) -> Result<Imported> {
    let events = sim::simulate(scenario, seed)?;
    import(pool, &events).await.map_err(|e| match e {
        crate::error::AppError::Internal(e) => e,
        other => anyhow::anyhow!(
            "{} (seed {seed}, {}): import a day only once per database",
            other.describe(),
            scenario.date
        ),
    })
}

/// One line per Board: where to look.
pub fn describe(scenario: &Scenario, base_url: &str) -> String {
    let mut out = String::new();
    for b in &scenario.boards {
        out.push_str(&format!(
            "  {:<28} {} patients, {} providers  {base_url}/boards/{}\n",
            b.name,
            b.arrivals.len(),
            b.shifts.len(),
            b.id
        ));
    }
    out
}

/// `careboard demo --reset`: drops Careboard's database and creates it empty (the
/// caller migrates it again). Refuses without `--yes`, and with `DATABASE_URL` unless
/// `--reset-database-url`; refuses while another Careboard process serves the embedded
/// cluster. Returns what was reset, for the user.
pub async fn reset(database: &DatabaseArgs, args: &DemoArgs) -> Result<String> {
    let which = match &database.database_url {
        Some(_) => "the database DATABASE_URL names".to_string(),
        None => format!("the embedded database in {}", database.data_dir.display()),
    };
    if !args.yes {
        bail!(
            "--reset deletes every Board, provider, appointment and event in {which}; \
             add --yes to go ahead"
        );
    }
    if database.database_url.is_some() && !args.reset_database_url {
        bail!(
            "--reset with DATABASE_URL set would drop a database that may be shared; \
             add --reset-database-url if that is really meant, or unset DATABASE_URL to \
             reset the embedded database in --data-dir"
        );
    }
    let db = crate::app::open_database_to_serve(database).await?;
    let owner_url = match (&db.cluster, &database.database_url) {
        (Some(cluster), _) => cluster.url("careboard"),
        (None, Some(url)) => database
            .database_owner_url
            .clone()
            .unwrap_or_else(|| url.clone()),
        (None, None) => bail!("no database to reset"),
    };
    db.pool.close().await;
    let owner = PgConnectOptions::from_str(&owner_url).context("the database URL")?;
    let name = owner
        .get_database()
        .context("the database URL names no database")?
        .to_string();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(owner.database("postgres"))
        .await
        .context("connecting to the server's `postgres` database to reset")?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    // `with (force)` ends other sessions on it (a stopped server's leftovers).
    sqlx::query(&format!("drop database if exists {quoted} with (force)"))
        .execute(&admin)
        .await
        .with_context(|| format!("dropping database {name}"))?;
    sqlx::query(&format!("create database {quoted}"))
        .execute(&admin)
        .await
        .with_context(|| format!("creating database {name}"))?;
    admin.close().await;
    drop(db);
    Ok(format!(
        "Reset {which} ({name}): dropped and created empty."
    ))
}

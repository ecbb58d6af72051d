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

use anyhow::Result;
use chrono::{Duration, NaiveDate, Utc};
use sqlx::PgPool;

use crate::event_store::import::{import, Imported};
use scenario::{generate, Scenario, ScenarioOptions};

/// Options of `careboard demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Seed of the day: the same seed gives the same Boards, patients and events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The day, `YYYY-MM-DD`. History: yesterday by default. Live: always today.
    #[arg(long)]
    pub date: Option<NaiveDate>,
    /// Number of Boards (clinics).
    #[arg(long, default_value_t = 3)]
    pub boards: usize,
    /// Multiplies the patient arrival rates (1.0: about 120 patients per Board a day).
    #[arg(long, default_value_t = 1.0)]
    pub load: f64,
    /// Play the day live against this process's server instead of importing history.
    #[arg(long)]
    pub live: bool,
    /// Live: simulated minutes per real minute.
    #[arg(long, default_value_t = 10.0)]
    pub speed: f64,
    /// Live: stop after this many simulated hours (default: the whole day).
    #[arg(long)]
    pub hours: Option<f64>,
    /// Live: address to serve on.
    #[arg(long, env = "CAREBOARD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
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

//! The matcher: pairs waiting appointments with READY providers as soon as both exist.
//!
//! It is a process that reacts to events, run by the leader (see [`crate::daemon`]) as a
//! peer of the projector, with its own checkpoint in `process_checkpoints`. It reads the log the
//! way the projector does (`(tx, seq)` after its checkpoint, below the oldest running
//! transaction), so it never skips an event. For every Board where something happened
//! that can make a match possible — an appointment requested; a provider joined, back
//! from a pause, done charting, or freed by a cancellation — it reads the Board's shifts
//! and waiting appointments from the event store, asks [`matching::plan`] and writes each
//! pairing with [`commands::schedule_appointment`]: `AppointmentScheduled` + `ProviderAssigned`
//! together, both checked against the versions the plan was made on. If either stream
//! moved (a coordinator scheduled by hand, the provider paused), the write is refused
//! and the matcher re-reads and re-decides.
//!
//! At-least-once: the checkpoint moves after the Board's matches are written, so a crash
//! in between makes the next leader look at the same Boards again; the plan it then
//! makes from the current state is empty where the work was done. Idempotent by
//! construction.
//!
//! A Board that keeps failing does not hold up the others: after the configured
//! attempts at a batch, the Boards that still fail are parked in
//! `matcher_parked_boards` and the checkpoint moves on. A parked Board is retried
//! whenever a new trigger arrives on it and every `parked_retry_interval`; once a
//! retry works it leaves the table. Matching is decided from the Board's current state,
//! so a late retry misses nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::commands::{self, CommandOptions, ScheduleAppointment};
use crate::domain::matching;
use crate::domain::{AppointmentId, ProviderId, ShiftId};
use crate::error::AppError;
use crate::estimates::Estimator;
use crate::event_store::log::{read_after, Cursor};
use crate::event_store::unit_of_work::CommandMeta;
use crate::event_store::{EventStore, RecordedEvent};
use crate::faults::Faults;
use crate::identity::Actor;
use crate::leader::{advance_checkpoint, Checkpoint};
use crate::metrics::Metrics;
use crate::pacing::{backoff, IdlePoll};
use crate::projections::load_board_for_matching;

/// The matcher's row in `process_checkpoints`.
pub const NAME: &str = "matcher";

/// Events after which a Board may hold a new possible match.
pub const TRIGGERS: [&str; 4] = [
    "AppointmentRequested",
    "ProviderJoined",
    "ProviderReady",
    "ChartingFinished",
];

/// Re-reads and re-decisions of one Board before the batch is retried from scratch.
const MAX_ROUNDS: usize = 20;

pub struct Matcher {
    store: EventStore,
    estimator: Estimator,
    metrics: Arc<Metrics>,
    config: MatcherConfig,
    faults: Faults,
}

#[derive(Clone)]
pub struct MatcherConfig {
    /// Most events read per batch.
    pub batch_size: i64,
    /// Longest sleep between polls when idle.
    pub max_poll_interval: Duration,
    /// First retry delay of a failed batch; doubles per attempt.
    pub retry_backoff: Duration,
    /// Attempts at a batch before the Boards that still fail are parked.
    pub max_attempts: u32,
    /// How often parked Boards are retried.
    pub parked_retry_interval: Duration,
}

/// Why the matcher stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum MatcherEnd {
    Shutdown,
    /// The checkpoint could not be moved: the leader lock is gone.
    LostLock,
}

impl Matcher {
    pub fn new(
        store: EventStore,
        estimator: Estimator,
        metrics: Arc<Metrics>,
        config: MatcherConfig,
        faults: Faults,
    ) -> Self {
        Self {
            store,
            estimator,
            metrics,
            config,
            faults,
        }
    }

    fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// Runs while the caller leads (the leader lock is held by backend `leader_pid`).
    pub async fn run(
        &self,
        leader_pid: i32,
        wake: &Notify,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<MatcherEnd> {
        let mut cursor = load_checkpoint(self.pool()).await?;
        let mut parked = load_parked(self.pool()).await?;
        self.metrics.set_matcher_parked(parked.len());
        let mut last_parked_retry = Instant::now();
        let mut poll = IdlePoll::new(self.config.max_poll_interval);
        // Failed attempts at the batch after `cursor`.
        let mut attempts: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return Ok(MatcherEnd::Shutdown);
            }
            if !parked.is_empty()
                && last_parked_retry.elapsed() >= self.config.parked_retry_interval
            {
                self.retry_parked(&mut parked).await;
                last_parked_retry = Instant::now();
            }
            let park = attempts + 1 >= self.config.max_attempts.max(1);
            match self.step(cursor, leader_pid, park, &mut parked).await {
                Ok(Some(next)) => {
                    cursor = next;
                    poll.reset();
                    attempts = 0;
                    continue;
                }
                Ok(None) => {}
                Err(StepError::LostLock) => return Ok(MatcherEnd::LostLock),
                Err(StepError::Failed(e)) => {
                    attempts = attempts.saturating_add(1);
                    tracing::warn!(error = %e, attempts, "matcher batch failed; will retry");
                    tokio::time::sleep(backoff(self.config.retry_backoff, attempts)).await;
                    continue;
                }
            }
            poll.wait(wake, &mut shutdown).await;
        }
    }

    /// One batch: match on every Board it touches, then move the checkpoint. `None`
    /// when there was nothing new. A Board that fails fails the batch, unless `park`:
    /// then it is parked and the batch completes.
    async fn step(
        &self,
        cursor: Cursor,
        leader_pid: i32,
        park: bool,
        parked: &mut HashSet<Uuid>,
    ) -> Result<Option<Cursor>, StepError> {
        let rows = read_after(self.pool(), cursor, self.config.batch_size, None)
            .await
            .map_err(|e| StepError::Failed(e.into()))?;
        let Some((last, _)) = rows.last() else {
            return Ok(None);
        };
        let next = *last;
        // Boards in the order their first trigger appeared, each with that trigger.
        let mut boards: Vec<(Uuid, &RecordedEvent)> = Vec::new();
        for (_, e) in &rows {
            if !TRIGGERS.contains(&e.event_type.as_str()) {
                continue;
            }
            if let Some(board) = e.board_id {
                if !boards.iter().any(|(b, _)| *b == board) {
                    boards.push((board, e));
                }
            }
        }
        let mut failed = Vec::new();
        for (board, trigger) in boards {
            match self.match_board(board, Some(trigger)).await {
                Ok(()) => {
                    if parked.contains(&board) {
                        self.unpark(board, parked)
                            .await
                            .map_err(|e| StepError::Failed(e.into()))?;
                    }
                }
                Err(e) => failed.push((board, trigger.seq, e)),
            }
        }
        if !failed.is_empty() {
            if !park {
                let (board, _, e) = failed.swap_remove(0);
                return Err(StepError::Failed(e.context(format!("board {board}"))));
            }
            for (board, seq, e) in &failed {
                tracing::error!(%board, error = %e, "matcher parks a board it cannot match; other boards go on");
                park_board(self.pool(), *board, *seq, e, self.config.max_attempts)
                    .await
                    .map_err(|e| StepError::Failed(e.into()))?;
                parked.insert(*board);
            }
            self.metrics.set_matcher_parked(parked.len());
        }
        let checkpoint = Checkpoint::Process { name: NAME };
        if !advance_checkpoint(
            self.pool(),
            checkpoint,
            cursor,
            next,
            rows.len() as i64,
            leader_pid,
        )
        .await
        .map_err(|e| StepError::Failed(e.into()))?
        {
            return Err(StepError::LostLock);
        }
        Ok(Some(next))
    }

    /// Tries every parked Board again; those that work leave the table.
    async fn retry_parked(&self, parked: &mut HashSet<Uuid>) {
        for board in parked.clone() {
            let result = match self.match_board(board, None).await {
                Ok(()) => self.unpark(board, parked).await,
                Err(e) => {
                    tracing::warn!(%board, error = %e, "parked board still cannot be matched");
                    record_retry(self.pool(), board, &e).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(%board, error = %e, "cannot record a parked board's retry");
            }
        }
    }

    async fn unpark(&self, board: Uuid, parked: &mut HashSet<Uuid>) -> Result<(), sqlx::Error> {
        sqlx::query("delete from matcher_parked_boards where board_id = $1")
            .bind(board)
            .execute(self.pool())
            .await?;
        parked.remove(&board);
        self.metrics.set_matcher_parked(parked.len());
        tracing::info!(%board, "matcher matches a parked board again");
        Ok(())
    }

    /// Makes every match the Board allows now, re-reading after any refused write.
    async fn match_board(&self, board_id: Uuid, trigger: Option<&RecordedEvent>) -> Result<()> {
        if self.faults.matcher_fails(board_id) {
            return Err(anyhow!("injected matcher fault"));
        }
        for _ in 0..MAX_ROUNDS {
            let Some(contents) = load_board_for_matching(self.pool(), board_id)
                .await
                .map_err(app_error)?
            else {
                return Ok(());
            };
            let ready: Vec<ProviderId> = contents
                .shifts
                .iter()
                .filter(|s| s.status == crate::domain::ShiftStatus::Ready)
                .map(|s| s.provider_id)
                .collect();
            if ready.is_empty() {
                return Ok(());
            }
            let providers = self
                .estimator
                .providers(self.pool(), ready)
                .await
                .map_err(app_error)?;
            let pairings = matching::plan(&contents.appointments, &contents.shifts, &providers);
            if pairings.is_empty() {
                return Ok(());
            }
            let appointments: HashMap<AppointmentId, _> =
                contents.appointments.iter().map(|a| (a.id, a)).collect();
            let shifts: HashMap<ShiftId, _> = contents.shifts.iter().map(|s| (s.id, s)).collect();
            let mut refused = false;
            for p in pairings {
                let (a, s) = (appointments[&p.appointment_id], shifts[&p.shift_id]);
                let now = Utc::now();
                let estimated_time = self
                    .estimator
                    .scheduled_start(self.pool(), &a.specialty, now)
                    .await
                    .map_err(app_error)?;
                let mut meta = CommandMeta::new("match");
                meta.actor = Actor::system(NAME);
                if let Some(trigger) = trigger {
                    meta.causation_id = Some(trigger.id.to_string());
                    if let Some(c) = trigger
                        .metadata
                        .get("correlationId")
                        .and_then(|c| c.as_str())
                    {
                        meta.correlation_id = c.to_string();
                    }
                }
                // Both streams exactly at the versions the plan was made on: if either
                // moved since, CONFLICT and nothing is written.
                let command = ScheduleAppointment {
                    appointment_id: p.appointment_id,
                    shift_id: p.shift_id,
                    estimated_time: Some(estimated_time),
                    expected_shift_version: Some(s.version),
                    options: CommandOptions {
                        expected_version: Some(a.version),
                        command_id: None,
                    },
                };
                match commands::schedule_appointment(&self.store, &self.estimator, meta, command)
                    .await
                {
                    Ok(_) => {
                        let possible_since =
                            s.ready_since.unwrap_or(a.requested_at).max(a.requested_at);
                        let latency = (Utc::now() - possible_since).to_std().unwrap_or_default();
                        self.metrics.matched(latency);
                        tracing::debug!(appointment = %a.id, shift = %s.id, "matched");
                    }
                    // The appointment or the shift moved since the plan: decide again.
                    Err(AppError::Conflict(_)) | Err(AppError::Domain(_)) => {
                        self.metrics.matcher_conflict();
                        refused = true;
                        break;
                    }
                    Err(e) => return Err(app_error(e)),
                }
            }
            if !refused {
                return Ok(());
            }
        }
        Err(anyhow!(
            "board {board_id}: still contended after {MAX_ROUNDS} rounds"
        ))
    }
}

enum StepError {
    LostLock,
    Failed(anyhow::Error),
}

fn app_error(e: AppError) -> anyhow::Error {
    match e {
        AppError::Internal(e) => e,
        other => anyhow!("{}", other.describe()),
    }
}

async fn load_parked(pool: &PgPool) -> Result<HashSet<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = sqlx::query_scalar("select board_id from matcher_parked_boards")
        .fetch_all(pool)
        .await?;
    Ok(ids.into_iter().collect())
}

async fn park_board(
    pool: &PgPool,
    board: Uuid,
    event_seq: i64,
    error: &anyhow::Error,
    attempts: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into matcher_parked_boards (board_id, event_seq, error, attempts) \
         values ($1, $2, $3, $4) \
         on conflict (board_id) do update set event_seq = excluded.event_seq, \
           error = excluded.error, attempts = matcher_parked_boards.attempts + excluded.attempts",
    )
    .bind(board)
    .bind(event_seq)
    .bind(format!("{error:#}"))
    .bind(attempts as i32)
    .execute(pool)
    .await?;
    Ok(())
}

async fn record_retry(
    pool: &PgPool,
    board: Uuid,
    error: &anyhow::Error,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update matcher_parked_boards set attempts = attempts + 1, error = $2, \
           retried_at = clock_timestamp() where board_id = $1",
    )
    .bind(board)
    .bind(format!("{error:#}"))
    .execute(pool)
    .await?;
    Ok(())
}

async fn load_checkpoint(pool: &PgPool) -> Result<Cursor> {
    let (tx, seq): (String, i64) =
        sqlx::query_as("select tx::text, seq from process_checkpoints where name = $1")
            .bind(NAME)
            .fetch_one(pool)
            .await?;
    Ok(Cursor::from_text(&tx, seq)?)
}

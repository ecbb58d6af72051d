//! The matcher: pairs waiting appointments with READY providers as soon as both exist.
//!
//! It is a process that reacts to events, run by the projector's leader next to the
//! projections, with its own checkpoint in `process_checkpoints`. It reads the log the
//! way the projector does (`(tx, seq)` after its checkpoint, below the oldest running
//! transaction), so it never skips an event. For every Board where something happened
//! that can make a match possible — an appointment requested; a provider joined, back
//! from a pause, done charting, or freed by a cancellation — it reads the Board's shifts
//! and waiting appointments from the event store, asks [`matching::plan`] and writes each
//! pairing with [`commands::assign`]: `AppointmentScheduled` + `ProviderAssigned`
//! together, both checked against the versions the plan was made on. If either stream
//! moved (a coordinator scheduled by hand, the provider paused), the write is refused
//! and the matcher re-reads and re-decides.
//!
//! At-least-once: the checkpoint moves after the Board's matches are written, so a crash
//! in between makes the next leader look at the same Boards again; the plan it then
//! makes from the current state is empty where the work was done. Idempotent by
//! construction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::commands::{self, Assignment};
use crate::domain::matching;
use crate::error::AppError;
use crate::estimates::Estimator;
use crate::event_store::unit_of_work::CommandMeta;
use crate::event_store::{load_board_for_matching, EventStore, RecordedEvent};
use crate::metrics::Metrics;
use crate::projector::batch::read_after;
use crate::projector::state::{leader_fence, Cursor, LEADER_LOCK_KEY};

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
    batch_size: i64,
    max_poll_interval: Duration,
    retry_backoff: Duration,
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
        metrics: Arc<Metrics>,
        batch_size: i64,
        max_poll_interval: Duration,
        retry_backoff: Duration,
    ) -> Self {
        Self {
            store,
            estimator: Estimator::new(),
            metrics,
            batch_size,
            max_poll_interval,
            retry_backoff,
        }
    }

    fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// Runs while the caller leads (the leader lock is held by backend `leader_pid`).
    pub async fn run(
        &self,
        leader_pid: i32,
        wake: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<MatcherEnd> {
        let mut cursor = load_checkpoint(self.pool()).await?;
        let mut idle_polls: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return Ok(MatcherEnd::Shutdown);
            }
            match self.step(cursor, leader_pid).await {
                Ok(Some(next)) => {
                    cursor = next;
                    idle_polls = 0;
                    continue;
                }
                Ok(None) => {}
                Err(StepError::LostLock) => return Ok(MatcherEnd::LostLock),
                Err(StepError::Failed(e)) => {
                    tracing::warn!(error = %e, "matcher batch failed; will retry");
                    tokio::time::sleep(self.retry_backoff).await;
                    continue;
                }
            }
            idle_polls = idle_polls.saturating_add(1);
            let wait = Duration::from_millis(2u64.saturating_pow(idle_polls.min(10)))
                .min(self.max_poll_interval);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One batch: match on every Board it touches, then move the checkpoint. `None`
    /// when there was nothing new.
    async fn step(&self, cursor: Cursor, leader_pid: i32) -> Result<Option<Cursor>, StepError> {
        let rows = read_after(self.pool(), cursor, self.batch_size, None)
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
        for (board, trigger) in boards {
            self.match_board(board, trigger)
                .await
                .map_err(StepError::Failed)?;
        }
        if !advance_checkpoint(self.pool(), cursor, next, rows.len() as i64, leader_pid)
            .await
            .map_err(|e| StepError::Failed(e.into()))?
        {
            return Err(StepError::LostLock);
        }
        Ok(Some(next))
    }

    /// Makes every match the Board allows now, re-reading after any refused write.
    async fn match_board(&self, board_id: Uuid, trigger: &RecordedEvent) -> Result<()> {
        for _ in 0..MAX_ROUNDS {
            let Some(contents) = load_board_for_matching(self.pool(), board_id)
                .await
                .map_err(app_error)?
            else {
                return Ok(());
            };
            let ready: Vec<Uuid> = contents
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
            let appointments: HashMap<Uuid, _> =
                contents.appointments.iter().map(|a| (a.id, a)).collect();
            let shifts: HashMap<Uuid, _> = contents.shifts.iter().map(|s| (s.id, s)).collect();
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
                meta.actor = NAME.into();
                meta.causation_id = Some(trigger.id.to_string());
                if let Some(c) = trigger
                    .metadata
                    .get("correlationId")
                    .and_then(|c| c.as_str())
                {
                    meta.correlation_id = c.to_string();
                }
                let assignment = Assignment {
                    appointment_id: a.id,
                    appointment_version: a.version,
                    shift_id: s.id,
                    shift_version: s.version,
                    estimated_time,
                };
                match commands::assign(&self.store, meta, &assignment).await {
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

async fn load_checkpoint(pool: &PgPool) -> Result<Cursor> {
    let (tx, seq): (String, i64) =
        sqlx::query_as("select tx::text, seq from process_checkpoints where name = $1")
            .bind(NAME)
            .fetch_one(pool)
            .await?;
    Ok(Cursor {
        tx: tx.parse()?,
        seq,
    })
}

/// Compare-and-set on the old cursor, and only while `leader_pid` holds the leader lock
/// (the same fence as the projector's checkpoints).
async fn advance_checkpoint(
    pool: &PgPool,
    old: Cursor,
    new: Cursor,
    seen: i64,
    leader_pid: i32,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(&format!(
        "update process_checkpoints \
            set tx = $4::text::xid8, seq = $5, events_seen = events_seen + $6, \
                updated_at = clock_timestamp() \
          where name = $1 and tx = $2::text::xid8 and seq = $3 and {}",
        leader_fence(7, 8)
    ))
    .bind(NAME)
    .bind(old.tx.to_string())
    .bind(old.seq)
    .bind(new.tx.to_string())
    .bind(new.seq)
    .bind(seen)
    .bind(leader_pid)
    .bind(LEADER_LOCK_KEY)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

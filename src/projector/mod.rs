//! The projector: applies new events, in order and without skipping, to every
//! projection; each batch moves documents, checkpoint and NOTIFY in one transaction.
//!
//! It runs while its process leads (see [`crate::daemon`], which holds the
//! [`crate::leader`] lock and runs the projector and the matcher side by side).
//! Reading: [`crate::event_store::log::read_after`], `(tx, seq)` after the checkpoint
//! and below the oldest running transaction, once for every live projection at that
//! checkpoint (each applies it in its own transaction), the next batch read ahead
//! behind a full one. Checkpoint: compare-and-set on the old
//! value, fenced by the leader lock ([`crate::leader::advance_checkpoint`]). Waking:
//! the in-process append signal plus an adaptive poll; appends never NOTIFY.

pub mod batch;
pub mod replay;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};

use crate::event_store::log::{cursor_of, read_after, Cursor};
use crate::event_store::RecordedEvent;
use crate::faults::{CrashPoint, Faults};
use crate::leader::{advance_checkpoint, Checkpoint, Lease};
use crate::metrics::{Metrics, ProjectorStage};
use crate::pacing::{backoff, IdlePoll};
use crate::projections::board_view::BoardChanged;
use crate::projections::Projection;
use batch::{apply_batch, BatchError, BatchInput};
use state::{record_dead_letters, Generation, GenerationStatus};

/// How the projector reads and retries.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    /// Most events read and applied per transaction.
    pub batch_size: i64,
    /// Batch size of a side-by-side rebuild: larger, so it catches up with the live
    /// generation while appends continue.
    pub rebuild_batch_size: i64,
    /// Longest sleep between polls when idle (the poll interval adapts up to it).
    pub max_poll_interval: Duration,
    /// Attempts at an event the fold rejects before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    pub retry_backoff: Duration,
    /// Snapshot a document every this many events (0: never). Bounds `asOf` folds.
    pub snapshot_every: i64,
    /// Share one read among the live projections at one checkpoint and read ahead
    /// (see [`crate::daemon::DaemonConfig::shared_read`]).
    pub shared_read: bool,
}

/// Why the projector stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum ProjectorEnd {
    Shutdown,
    /// A checkpoint write was refused and the leader lock is gone.
    LostLock,
    /// A test's fault stopped it dead (see [`crate::faults`]).
    Crashed(CrashPoint),
}

pub struct Projector {
    pool: PgPool,
    settings: ProjectorSettings,
    metrics: Arc<Metrics>,
    faults: Faults,
}

impl Projector {
    pub fn new(
        pool: PgPool,
        settings: ProjectorSettings,
        metrics: Arc<Metrics>,
        faults: Faults,
    ) -> Self {
        Self {
            pool,
            settings,
            metrics,
            faults,
        }
    }

    /// Projects for as long as `lease` is held and `shutdown` is not set; `wake` is
    /// rung by local appends.
    pub async fn run(
        &self,
        lease: &Lease,
        wake: &Notify,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<ProjectorEnd> {
        state::ensure_generations(&self.pool).await?;
        let mut workers: Vec<Worker> = state::active_generations(&self.pool)
            .await?
            .into_iter()
            .map(Worker::new)
            .collect();
        let mut last_refresh = Instant::now();
        let mut poll = IdlePoll::new(self.settings.max_poll_interval);
        // The next batch, read while the current one was being written.
        let mut ahead: Option<ReadAhead> = None;
        loop {
            if *shutdown.borrow() {
                return Ok(ProjectorEnd::Shutdown);
            }
            // Pick up rebuild requests made by other processes.
            if last_refresh.elapsed() >= Duration::from_secs(1) {
                let fresh = state::active_generations(&self.pool).await?;
                reconcile(&mut workers, fresh);
                last_refresh = Instant::now();
            }
            let mut progressed = false;
            let results = self.step_all(&mut workers, lease.pid(), &mut ahead).await;
            for (worker, result) in workers.iter_mut().zip(results) {
                match result {
                    Ok(Step::Applied) => progressed = true,
                    Ok(Step::Idle) => {}
                    Ok(Step::Rejected) => {
                        // Someone else moved the checkpoint, or our lock is gone.
                        ahead = None;
                        if !lease.holds().await {
                            return Ok(ProjectorEnd::LostLock);
                        }
                        let fresh = state::active_generations(&self.pool).await?;
                        worker.reload(&fresh);
                    }
                    Ok(Step::Crashed(point)) => return Ok(ProjectorEnd::Crashed(point)),
                    Err(e) => {
                        tracing::warn!(projection = worker.gen.projection.name(), error = %e, "projector batch failed; will retry");
                        tokio::time::sleep(self.settings.retry_backoff).await;
                    }
                }
            }
            // A rebuild that has caught up with the live generation is swapped in, even
            // while appends continue.
            if self.switch_caught_up(&workers).await? {
                last_refresh = Instant::now() - Duration::from_secs(2);
                progressed = true;
            }
            if progressed {
                poll.reset();
                continue;
            }
            // Quick right after activity, slower while idle; a local append wakes it.
            poll.wait(wake, &mut shutdown).await;
        }
    }

    async fn switch_caught_up(&self, workers: &[Worker]) -> Result<bool> {
        let mut switched = false;
        for building in workers
            .iter()
            .filter(|w| w.gen.status == GenerationStatus::Building)
        {
            let live = workers.iter().find(|w| {
                w.gen.projection == building.gen.projection
                    && w.gen.status == GenerationStatus::Live
            });
            if live.is_some_and(|l| l.gen.cursor > building.gen.cursor) {
                continue;
            }
            let projection = building.gen.projection;
            if let Some(retired) =
                state::switch_generation(&self.pool, projection, building.gen.generation).await?
            {
                let mut conn = self.pool.acquire().await?;
                projection.delete_generation(&mut conn, retired).await?;
                tracing::info!(
                    projection = projection.name(),
                    generation = building.gen.generation,
                    "rebuilt projection is live"
                );
                switched = true;
            }
        }
        Ok(switched)
    }

    /// Steps every generation once. Live generations whose checkpoints are at the same
    /// place (the usual case) share one read of the log, and the next batch is read
    /// while this one is written; each generation still applies the batch, moves its
    /// checkpoint and commits in a transaction of its own, concurrently with the others.
    /// A generation at another place (a rebuild, or one held back by a poison event)
    /// reads on its own.
    async fn step_all(
        &self,
        workers: &mut [Worker],
        leader_pid: i32,
        ahead: &mut Option<ReadAhead>,
    ) -> Vec<Result<Step>> {
        // Each group of live workers at one cursor shares a read; everyone else reads alone.
        let mut groups: Vec<(Option<Cursor>, Vec<usize>)> = Vec::new();
        for (i, w) in workers.iter().enumerate() {
            let shares = self.settings.shared_read && w.gen.status == GenerationStatus::Live;
            let key = shares.then_some(w.gen.cursor);
            match groups.iter_mut().find(|(k, _)| key.is_some() && *k == key) {
                Some((_, members)) => members.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        let taken = ahead.take();
        let mut results: Vec<Option<Result<Step>>> = workers.iter().map(|_| None).collect();
        let mut slots: Vec<Option<&mut Worker>> = workers.iter_mut().map(Some).collect();
        let futures = groups.into_iter().map(|(key, members)| {
            let group: Vec<&mut Worker> = members
                .iter()
                .map(|&i| slots[i].take().expect("each worker is in one group"))
                .collect();
            // Only a full batch read ahead is used: it is exactly what a read now would
            // return. A shorter one stopped at the log's end as it was then, and a read
            // now may find more: using it would hold those events back a round.
            let prefetched = match (&taken, key) {
                (Some(a), Some(cursor)) if a.after == cursor && a.full => Some(a.rows.clone()),
                _ => None,
            };
            async move {
                let out = self
                    .step_group(group, key.is_some(), leader_pid, prefetched)
                    .await;
                (members, out)
            }
        });
        for (members, (out, next)) in futures::future::join_all(futures).await {
            if let Some(next) = next {
                *ahead = Some(next);
            }
            for (i, r) in members.into_iter().zip(out) {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every worker stepped"))
            .collect()
    }

    /// One read for `group` (all at one cursor), applied by each member concurrently;
    /// with `read_ahead`, the batch after it is read meanwhile.
    async fn step_group(
        &self,
        mut group: Vec<&mut Worker>,
        read_ahead: bool,
        leader_pid: i32,
        prefetched: Option<Arc<Vec<(Cursor, RecordedEvent)>>>,
    ) -> (Vec<Result<Step>>, Option<ReadAhead>) {
        let Some(first) = group.first() else {
            return (Vec::new(), None);
        };
        let cursor = first.gen.cursor;
        let batch_size = match first.gen.status {
            GenerationStatus::Live => self.settings.batch_size,
            GenerationStatus::Building | GenerationStatus::Retired => {
                self.settings.rebuild_batch_size
            }
        };
        let started = Instant::now();
        let rows = match prefetched {
            Some(rows) => rows,
            None => match self.read(cursor, batch_size).await {
                Ok(rows) => rows,
                Err(e) => {
                    return (
                        group.iter().map(|_| Err(anyhow::anyhow!("{e}"))).collect(),
                        None,
                    )
                }
            },
        };
        let Some((end, _)) = rows.last() else {
            // A caught-up rebuild is swapped in by `switch_caught_up`.
            return (group.iter().map(|_| Ok(Step::Idle)).collect(), None);
        };
        let end = *end;
        self.metrics.projector_batch_read();
        if self.faults.crash_at(CrashPoint::AfterRead) {
            return (
                group
                    .iter()
                    .map(|_| Ok(Step::Crashed(CrashPoint::AfterRead)))
                    .collect(),
                None,
            );
        }
        let applies = futures::future::join_all(
            group
                .iter_mut()
                .map(|w| self.apply(w, leader_pid, &rows, end, started)),
        );
        // Reading the next batch overlaps writing this one, when this one was full (a
        // backlog; at the log's end a fresh read after the writes finds more). The read
        // is a prefix of the log after `end` whenever it is used: every event it could
        // miss belongs to a transaction at or above its xmin, which sorts after
        // everything it returned.
        let read_ahead = read_ahead && rows.len() as i64 >= batch_size;
        let (results, next) = if read_ahead {
            let (results, next) = tokio::join!(applies, self.read(end, batch_size));
            (results, next.ok())
        } else {
            (applies.await, None)
        };
        let next = next.filter(|rows| !rows.is_empty()).map(|rows| ReadAhead {
            after: end,
            full: rows.len() as i64 >= batch_size,
            rows,
        });
        (results, next)
    }

    /// The `(tx, seq)` read after `after`, below the oldest running transaction. It runs
    /// as a statement of its own: the transactions that apply it need not contain it,
    /// because each moves its checkpoint with a compare-and-set from `after`.
    async fn read(
        &self,
        after: Cursor,
        limit: i64,
    ) -> Result<Arc<Vec<(Cursor, RecordedEvent)>>, sqlx::Error> {
        let started = Instant::now();
        let rows = read_after(&self.pool, after, limit, None).await?;
        self.metrics
            .projector_stage(ProjectorStage::Read, started.elapsed());
        Ok(Arc::new(rows))
    }

    /// Applies one batch read at the worker's checkpoint to its generation, in one
    /// transaction with the checkpoint's compare-and-set and the NOTIFY.
    async fn apply(
        &self,
        worker: &mut Worker,
        leader_pid: i32,
        rows: &[(Cursor, RecordedEvent)],
        new_cursor: Cursor,
        started: Instant,
    ) -> Result<Step> {
        let crash = |point: CrashPoint| self.faults.crash_at(point);
        let stage = |s: ProjectorStage, since: Instant| {
            self.metrics.projector_stage(s, since.elapsed());
            Instant::now()
        };
        let gen = worker.gen.clone();
        let at = Instant::now();
        let mut tx = self.pool.begin().await?;
        let at = stage(ProjectorStage::Begin, at);
        let events: Vec<&RecordedEvent> = rows.iter().map(|(_, e)| e).collect();
        let input = BatchInput {
            projection: gen.projection,
            generation: gen.generation,
            events: &events,
            dead: &worker.dead,
            attempts: &worker.attempts,
            snapshot_every: self.settings.snapshot_every,
            batch_end: new_cursor,
        };
        let outcome = match apply_batch(&mut tx, &input).await {
            Ok(o) => o,
            Err(BatchError::Poison { seq, error }) => {
                drop(tx);
                let attempts = worker.attempts.entry(seq).or_insert(0);
                *attempts += 1;
                tracing::warn!(projection = gen.projection.name(), seq, attempts = *attempts, %error, "projection cannot apply event");
                if *attempts >= self.settings.max_attempts {
                    worker.dead.insert(seq);
                } else {
                    tokio::time::sleep(backoff(self.settings.retry_backoff, *attempts)).await;
                }
                return Ok(Step::Applied);
            }
            Err(BatchError::Database(e)) => return Err(e.into()),
        };
        let at = stage(ProjectorStage::Apply, at);
        if crash(CrashPoint::AfterApply) {
            return Ok(Step::Crashed(CrashPoint::AfterApply));
        }
        record_dead_letters(
            &mut tx,
            gen.projection,
            gen.generation,
            &outcome.dead_letters,
        )
        .await?;
        if crash(CrashPoint::BeforeCheckpoint) {
            return Ok(Step::Crashed(CrashPoint::BeforeCheckpoint));
        }
        let moved = advance_checkpoint(
            &mut *tx,
            Checkpoint::Projection {
                name: gen.projection.name(),
                generation: gen.generation,
            },
            gen.cursor,
            new_cursor,
            outcome.applied,
            leader_pid,
        )
        .await?;
        if !moved {
            return Ok(Step::Rejected);
        }
        let at = stage(ProjectorStage::Checkpoint, at);
        if gen.status == GenerationStatus::Live && !outcome.changed_boards.is_empty() {
            let payloads: Vec<String> = outcome
                .changed_boards
                .iter()
                .map(BoardChanged::encode)
                .collect();
            sqlx::query("select pg_notify($1, p) from unnest($2::text[]) as p")
                .bind(BoardChanged::CHANNEL)
                .bind(&payloads)
                .execute(&mut *tx)
                .await?;
        }
        let at = stage(ProjectorStage::Notify, at);
        if crash(CrashPoint::BeforeCommit) {
            return Ok(Step::Crashed(CrashPoint::BeforeCommit));
        }
        tx.commit().await?;
        stage(ProjectorStage::Commit, at);
        self.metrics
            .projector_stage(ProjectorStage::Batch, started.elapsed());
        if crash(CrashPoint::AfterCommit) {
            return Ok(Step::Crashed(CrashPoint::AfterCommit));
        }
        for d in &outcome.dead_letters {
            worker.attempts.remove(&d.event_seq);
            worker.dead.remove(&d.event_seq);
        }
        if !outcome.dead_letters.is_empty() {
            self.metrics
                .dead_lettered(gen.projection.name(), outcome.dead_letters.len() as u64);
        }
        self.metrics
            .batch_applied(gen.projection.name(), events.len(), outcome.applied as u64);
        worker.gen.cursor = new_cursor;
        Ok(Step::Applied)
    }
}

/// A batch read ahead: the events after `after`, shared by the projections at it.
struct ReadAhead {
    after: Cursor,
    /// It returned a whole batch, so more events may follow.
    full: bool,
    rows: Arc<Vec<(Cursor, RecordedEvent)>>,
}

enum Step {
    Applied,
    Idle,
    Rejected,
    Crashed(CrashPoint),
}

/// A generation being projected, with its retry bookkeeping.
struct Worker {
    gen: Generation,
    attempts: HashMap<i64, u32>,
    dead: HashSet<i64>,
}

impl Worker {
    fn new(gen: Generation) -> Self {
        Self {
            gen,
            attempts: HashMap::new(),
            dead: HashSet::new(),
        }
    }

    fn reload(&mut self, fresh: &[Generation]) {
        if let Some(g) = fresh
            .iter()
            .find(|g| g.projection == self.gen.projection && g.generation == self.gen.generation)
        {
            self.gen = g.clone();
        }
    }
}

/// Adds workers for new generations, drops those no longer live or building, and
/// refreshes statuses (a building generation that went live).
fn reconcile(workers: &mut Vec<Worker>, fresh: Vec<Generation>) {
    workers.retain(|w| {
        fresh
            .iter()
            .any(|g| g.projection == w.gen.projection && g.generation == w.gen.generation)
    });
    for g in fresh {
        match workers
            .iter_mut()
            .find(|w| w.gen.projection == g.projection && w.gen.generation == g.generation)
        {
            Some(w) => w.gen.status = g.status,
            None => workers.push(Worker::new(g)),
        }
    }
}

/// Waits until the live generation of `projection` has applied the event at
/// `position`, polling up to `timeout`. `Ok(false)` when it did not in time.
pub async fn wait_for_position(
    pool: &PgPool,
    projection: Projection,
    position: i64,
    timeout: Duration,
) -> Result<bool, sqlx::Error> {
    // An unknown position (never written) cannot be waited for.
    let Some(target) = cursor_of(pool, position).await? else {
        return Ok(true);
    };
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if state::live_checkpoint(pool, projection)
            .await?
            .is_some_and(|c| c >= target)
        {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

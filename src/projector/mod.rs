//! The projector: applies new events, in order and without skipping, to every
//! projection; each batch moves documents, checkpoint and NOTIFY in one transaction.
//!
//! It runs while its process leads (see [`crate::daemon`], which holds the
//! [`crate::leader`] lock and runs the projector and the matcher side by side).
//! Scheduling: each projection generation on a loop of its own (`loops`), or, with
//! `DaemonConfig::loops` off, all of them in lockstep rounds (`lockstep`, kept for
//! the bench). Reading: `(tx, seq)` after the checkpoint and below the oldest running
//! transaction ([`crate::event_store::log::read_after`]; with loops, leaving out the
//! projector's own transactions, which write no events), shared by the live loops at
//! one cursor, the next batch read ahead behind a full one. Each batch is one
//! transaction: documents, checkpoint compare-and-set fenced by the leader epoch
//! ([`crate::leader::advance_checkpoint`]), NOTIFY (optionally in the same statement).
//! Waking: the in-process append signal plus an adaptive poll; appends never NOTIFY.

pub mod batch;
mod behind;
mod lockstep;
mod loops;
pub mod rebuild;
pub mod replay;
pub mod state;
pub mod statistics;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, Connection, PgConnection, PgPool, Postgres};
use tokio::sync::{watch, Notify};

use crate::daemon_config::DaemonConfig;
use crate::event_store::log::{cursor_of, read_after, read_after_excluding, Cursor};
use crate::event_store::RecordedEvent;
use crate::faults::{CrashPoint, Faults};
use crate::leader::{
    advance_checkpoint_alone, advance_checkpoint_notifying, Checkpoint, Fence, Lease, EPOCH_HOLD,
};
use crate::metrics::{Metrics, ProjectorStage};
use crate::pacing::{backoff, Wakes};
use crate::projections::board_view::BoardChanged;
use crate::projections::Projection;
use batch::{apply_batch, BatchError, BatchInput};
use state::{record_dead_letters, Generation, GenerationStatus};

/// SQL expression that makes every later statement of the transaction plan for its own
/// parameters and the tables' current sizes (see
/// [`crate::daemon::DaemonConfig::custom_plans`]).
pub const CUSTOM_PLANS: &str = "set_config('plan_cache_mode', 'force_custom_plan', true)";

/// The `tracing` target of the event each committed batch emits (at debug level).
pub const BATCH_TRACE_TARGET: &str = "careboard::projector::batch";

/// Why the projector stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum ProjectorEnd {
    Shutdown,
    /// A checkpoint write was refused and the leader lock is gone.
    LostLock,
    /// A test's fault stopped it dead (see [`crate::faults`]).
    Crashed(CrashPoint),
}

#[derive(Clone)]
pub struct Projector {
    pool: PgPool,
    /// How it reads, writes and retries: the daemon's settings (each documented
    /// there).
    settings: DaemonConfig,
    metrics: Arc<Metrics>,
    faults: Faults,
    /// The ids of this projector's own transactions still running. They write no
    /// events, so with loops they do not hold back the reads of the others (see
    /// [`crate::event_store::log::read_after_excluding`]).
    own_xids: Arc<std::sync::Mutex<HashSet<u64>>>,
}

/// Unregisters a transaction id from [`Projector::own_xids`] when its batch ends,
/// however it ends (at worst a little before its transaction does: that only makes
/// the reads more careful).
struct OwnXid {
    set: Arc<std::sync::Mutex<HashSet<u64>>>,
    xid: u64,
}

impl Projector {
    /// Registers `xid`, a transaction of this projector that writes no events, among
    /// its own until the returned guard is dropped.
    fn own_xid(&self, xid: u64) -> OwnXid {
        self.own_xids.lock().expect("own xids").insert(xid);
        OwnXid {
            set: self.own_xids.clone(),
            xid,
        }
    }
}

impl Drop for OwnXid {
    fn drop(&mut self) {
        self.set.lock().expect("own xids").remove(&self.xid);
    }
}

impl Projector {
    pub fn new(
        pool: PgPool,
        settings: DaemonConfig,
        metrics: Arc<Metrics>,
        faults: Faults,
    ) -> Self {
        Self {
            pool,
            settings,
            metrics,
            faults,
            own_xids: Arc::default(),
        }
    }

    /// Projects for as long as `lease` is held and `shutdown` is not set; `wake` is
    /// rung by local appends, or, with loops and direct wakes, each loop registers a
    /// wake of its own in `wakes`.
    pub async fn run(
        &self,
        lease: &Arc<Lease>,
        wake: &Notify,
        wakes: &Arc<Wakes>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<ProjectorEnd> {
        if self.settings.loops {
            loops::run(self, lease, wake, wakes, shutdown).await
        } else {
            self.run_lockstep(lease, wake, shutdown).await
        }
    }

    /// Swaps in every rebuild that has caught up with its live generation (`gens`: the
    /// active generations as their workers last saw them).
    async fn switch_caught_up(&self, gens: &[Generation]) -> Result<bool> {
        let mut switched = false;
        for building in gens
            .iter()
            .filter(|g| g.status == GenerationStatus::Building)
        {
            let live = gens.iter().find(|g| {
                g.projection == building.projection && g.status == GenerationStatus::Live
            });
            if live.is_some_and(|l| l.cursor > building.cursor) {
                continue;
            }
            let projection = building.projection;
            if let Some(retired) =
                state::switch_generation(&self.pool, projection, building.generation).await?
            {
                let mut conn = self.pool.acquire().await?;
                projection.delete_generation(&mut conn, retired).await?;
                tracing::info!(
                    projection = projection.name(),
                    generation = building.generation,
                    "rebuilt projection is live"
                );
                switched = true;
            }
        }
        Ok(switched)
    }

    /// The `(tx, seq)` read after `after`, below the oldest running transaction. It runs
    /// as a statement of its own: the transactions that apply it need not contain it,
    /// because each moves its checkpoint with a compare-and-set from `after`.
    async fn read(
        &self,
        after: Cursor,
        limit: i64,
    ) -> Result<Arc<Vec<(Cursor, RecordedEvent)>>, sqlx::Error> {
        self.read_on(None, after, limit).await
    }

    /// The ids of this projector's transactions still running: they write no events,
    /// so they do not hold its reads of the log back.
    fn own_xids(&self) -> Vec<u64> {
        self.own_xids
            .lock()
            .expect("own xids")
            .iter()
            .copied()
            .collect()
    }

    /// [`Self::read`] on `conn` when given (a loop's own connection), else on the pool.
    async fn read_on(
        &self,
        conn: Option<&mut PgConnection>,
        after: Cursor,
        limit: i64,
    ) -> Result<Arc<Vec<(Cursor, RecordedEvent)>>, sqlx::Error> {
        let started = Instant::now();
        let rows = if self.settings.loops {
            let own = self.own_xids();
            match conn {
                Some(conn) => read_after_excluding(conn, after, limit, &own).await?,
                None => read_after_excluding(&self.pool, after, limit, &own).await?,
            }
        } else {
            read_after(&self.pool, after, limit, None).await?
        };
        self.metrics
            .projector_stage(ProjectorStage::Read, started.elapsed());
        if let Some((_, oldest)) = rows.first() {
            let waited = (chrono::Utc::now() - oldest.recorded_at)
                .to_std()
                .unwrap_or_default();
            self.metrics
                .projector_stage(ProjectorStage::Visible, waited);
        }
        Ok(Arc::new(rows))
    }

    /// Applies one batch read at the worker's checkpoint to its generation, in one
    /// transaction with the checkpoint's compare-and-set and the NOTIFY.
    async fn apply(
        &self,
        worker: &mut Worker,
        mut fence: Fence,
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
        if self.settings.lone_checkpoints
            && rows
                .iter()
                .all(|(_, e)| gen.projection.document_of(e).is_none())
        {
            return self
                .move_checkpoint_alone(worker, fence, rows.len(), new_cursor, started)
                .await;
        }
        let at = Instant::now();
        // With the epoch fence the transaction's first statement holds the epoch lock
        // shared until it ends, so the checkpoint's fence needs no row lock (see
        // [`crate::leader::Fence::EpochHeld`]).
        let hold = matches!(fence, Fence::Epoch(_)) && self.settings.loops;
        if hold {
            fence = fence.held();
        }
        let first = FirstStatement {
            hold,
            async_commit: self.settings.async_commit,
            custom_plans: self.settings.custom_plans,
        };
        // Folded: BEGIN and the transaction's settings in one round trip, and no
        // transaction id asked for (see `DaemonConfig::fewer_round_trips`).
        let folded = self.settings.fewer_round_trips
            && self.settings.loops
            && gen.projection == Projection::BoardView
            && gen.status == GenerationStatus::Live;
        // On the loop's own connection when it keeps one (see `Worker::conn`).
        let mut tx = match (worker.conn.as_mut(), folded) {
            (Some(conn), true) => conn.begin_with(first.folded_begin()).await?,
            (None, true) => self.pool.begin_with(first.folded_begin()).await?,
            (Some(conn), false) => conn.begin().await?,
            (None, false) => self.pool.begin().await?,
        };
        // With loops, the others' reads skip this transaction while it runs (it writes
        // no events); its id is taken now, so it is known before its first write.
        let _own = if self.settings.loops && !folded {
            // One round trip takes the id and makes the transaction's settings: they
            // are local to it (the matcher appends through the same pool, and its
            // appends stay durable and planned as usual).
            let xid: String = sqlx::query_scalar(first.with_transaction_id())
                .fetch_one(&mut *tx)
                .await?;
            Some(self.own_xid(xid.parse()?))
        } else {
            None
        };
        let at = stage(ProjectorStage::Begin, at);
        let events: Vec<&RecordedEvent> = rows.iter().map(|(_, e)| e).collect();
        // Written behind (see `behind`), on a loop, whose worker waits until they have
        // their view before its next commit: a building generation's (see
        // `rebuild::pipeline_snapshots`), and a live one's with `live_snapshots_behind`.
        let defer_board_snapshots = self.settings.loops
            && gen.projection == Projection::BoardView
            && match gen.status {
                GenerationStatus::Building => rebuild::snapshots_pipelined(),
                _ => self.settings.live_snapshots_behind,
            };
        let input = BatchInput {
            projection: gen.projection,
            generation: gen.generation,
            events: &events,
            dead: &worker.dead,
            attempts: &worker.attempts,
            snapshot_every: self.settings.snapshot_every,
            batch_end: new_cursor,
            joined_writes: folded,
            defer_board_snapshots,
            // Asked for only where Board snapshots are written: the writer behind asks
            // for its own.
            snapshot_faults: (gen.projection == Projection::BoardView && !defer_board_snapshots)
                .then_some(&self.faults),
            header_counters: self.settings.header_counters,
            paired_board_reads: self.settings.paired_board_reads,
            flat_durations: self.settings.flat_durations,
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
        // The previous batches' snapshots, written behind them, have their view of
        // the documents before this batch changes them (the wait counts in the
        // apply's stage).
        self.snapshots_taken(&mut worker.snapshots_behind).await?;
        let at = stage(ProjectorStage::Apply, at);
        self.faults.stall_batch(gen.projection).await;
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
        // A rebuild is swapped in (made live in the database) before its loop learns
        // it: a batch it commits in between shows subscribers new versions, so it
        // NOTIFYs when its generation is live by the time it commits (the checkpoint's
        // compare-and-set holds the state row, so the swap cannot pass it). A loop
        // that knows it is live NOTIFYs without asking.
        let live = gen.status == GenerationStatus::Live;
        let building = gen.status == GenerationStatus::Building;
        let payloads: Vec<String> = if live || building {
            outcome
                .changed_boards
                .iter()
                .map(BoardChanged::encode)
                .collect()
        } else {
            Vec::new()
        };
        let checkpoint = Checkpoint::Projection {
            name: gen.projection.name(),
            generation: gen.generation,
        };
        // Fused: one statement moves the checkpoint and, when it moved a live
        // generation, sends the NOTIFYs (their time counts in the checkpoint's stage).
        let fused = self.settings.fused_statements;
        let moved = advance_checkpoint_notifying(
            &mut *tx,
            checkpoint,
            gen.cursor,
            new_cursor,
            outcome.applied,
            fence,
            BoardChanged::CHANNEL,
            if fused { &payloads } else { &[] },
        )
        .await?;
        if !moved {
            return Ok(Step::Rejected);
        }
        let at = stage(ProjectorStage::Checkpoint, at);
        if !fused && !payloads.is_empty() {
            let query = if live {
                sqlx::query("select pg_notify($1, p) from unnest($2::text[]) as p")
                    .bind(BoardChanged::CHANNEL)
                    .bind(&payloads)
            } else {
                sqlx::query(
                    "select pg_notify($1, p) from unnest($2::text[]) as p \
                      where exists (select from projection_state \
                                     where name = $3 and generation = $4 and status = $5)",
                )
                .bind(BoardChanged::CHANNEL)
                .bind(&payloads)
                .bind(gen.projection.name())
                .bind(gen.generation)
                .bind(GenerationStatus::Live.as_str())
            };
            query.execute(&mut *tx).await?;
        }
        let at = stage(ProjectorStage::Notify, at);
        if crash(CrashPoint::BeforeCommit) {
            return Ok(Step::Crashed(CrashPoint::BeforeCommit));
        }
        tx.commit().await?;
        stage(ProjectorStage::Commit, at);
        if input.defer_board_snapshots {
            self.snapshots_committed(
                worker,
                outcome.board_snapshots,
                &outcome.boards_changed,
                new_cursor,
            )
            .await;
        }
        self.metrics
            .projector_stage(ProjectorStage::Batch, started.elapsed());
        trace_batch(
            worker,
            new_cursor,
            events.len(),
            started,
            "in a transaction",
        );
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

impl Projector {
    /// A batch none of whose events belongs to a document of this projection: no
    /// document to read or write, no NOTIFY, no dead letter, so the checkpoint moves
    /// by itself, in one autocommit statement instead of a transaction of four round
    /// trips (BEGIN, transaction id, compare-and-set, COMMIT). Still a compare-and-set
    /// fenced by the leader epoch; the epoch row is read `for share` ([`Fence::Epoch`]),
    /// since no earlier statement held the epoch lock. Committed without waiting for
    /// the WAL flush when the projector's commits are asynchronous.
    async fn move_checkpoint_alone(
        &self,
        worker: &mut Worker,
        fence: Fence,
        events: usize,
        new_cursor: Cursor,
        started: Instant,
    ) -> Result<Step> {
        let crash = |point: CrashPoint| self.faults.crash_at(point);
        // The crash points the transaction passes, in its order: what a test crashes
        // at ends this batch the same way (nothing moved).
        for point in [
            CrashPoint::AfterApply,
            CrashPoint::BeforeCheckpoint,
            CrashPoint::BeforeCommit,
        ] {
            if crash(point) {
                return Ok(Step::Crashed(point));
            }
        }
        self.snapshots_taken(&mut worker.snapshots_behind).await?;
        let gen = &worker.gen;
        let at = Instant::now();
        let checkpoint = Checkpoint::Projection {
            name: gen.projection.name(),
            generation: gen.generation,
        };
        // The loop's own connection when it keeps one (see `Worker::conn`), else one
        // from the pool for this statement: one call either way.
        let mut pooled;
        let conn: &mut PgConnection = match worker.conn.as_mut() {
            Some(conn) => conn,
            None => {
                pooled = self.pool.acquire().await?;
                &mut pooled
            }
        };
        let moved = advance_checkpoint_alone(
            conn,
            checkpoint,
            gen.cursor,
            new_cursor,
            fence,
            self.settings.async_commit,
        )
        .await?;
        if !moved {
            return Ok(Step::Rejected);
        }
        self.metrics
            .projector_stage(ProjectorStage::Checkpoint, at.elapsed());
        self.metrics
            .projector_stage(ProjectorStage::Batch, started.elapsed());
        trace_batch(worker, new_cursor, events, started, "alone");
        if crash(CrashPoint::AfterCommit) {
            return Ok(Step::Crashed(CrashPoint::AfterCommit));
        }
        self.metrics.batch_applied(gen.projection.name(), events, 0);
        worker.gen.cursor = new_cursor;
        Ok(Step::Applied)
    }
}

/// What a batch transaction's first statement does besides its own work, all of it
/// local to the transaction: hold the epoch lock shared ([`EPOCH_HOLD`]), commit
/// without waiting for the WAL flush, plan each later statement for its own parameters.
#[derive(Debug, Clone, Copy)]
struct FirstStatement {
    hold: bool,
    async_commit: bool,
    custom_plans: bool,
}

impl FirstStatement {
    /// A transaction that only takes its id (and commits asynchronously if asked).
    fn plain(async_commit: bool) -> Self {
        Self {
            hold: false,
            async_commit,
            custom_plans: false,
        }
    }
}

impl FirstStatement {
    fn index(self) -> usize {
        usize::from(self.hold)
            | usize::from(self.async_commit) << 1
            | usize::from(self.custom_plans) << 2
    }

    /// `set_config(…, true)` calls for the transaction's settings, as a one-row
    /// subquery to select from (volatile, so it runs whatever the outer query reads).
    fn settings(self) -> String {
        let mut settings = Vec::new();
        if self.async_commit {
            settings.push("set_config('synchronous_commit', 'off', true)");
        }
        if self.custom_plans {
            // A generic plan made while a table was nearly empty (a fresh database)
            // stays a scan as the table grows until the next analyze; a custom plan
            // is made from the parameters and the table's current size every time.
            settings.push(CUSTOM_PLANS);
        }
        if settings.is_empty() {
            String::new()
        } else {
            format!(" from (select {}) as local", settings.join(", "))
        }
    }

    /// The statement that takes the transaction id (as text) and makes the settings.
    fn with_transaction_id(self) -> &'static str {
        static SQL: [OnceLock<String>; 8] = [const { OnceLock::new() }; 8];
        SQL[self.index()].get_or_init(|| {
            let hold = if self.hold {
                format!(", {EPOCH_HOLD}")
            } else {
                String::new()
            };
            format!("select pg_current_xact_id()::text{hold}{}", self.settings())
        })
    }

    /// BEGIN and the settings in one simple query (one round trip; nothing it
    /// returns is needed).
    fn folded_begin(self) -> &'static str {
        static SQL: [OnceLock<String>; 8] = [const { OnceLock::new() }; 8];
        SQL[self.index()].get_or_init(|| {
            let settings = self.settings();
            if !self.hold && settings.is_empty() {
                return "begin".to_string();
            }
            let hold = if self.hold { EPOCH_HOLD } else { "true" };
            format!("begin; select {hold}{settings}")
        })
    }
}

enum Step {
    Applied,
    Idle,
    Rejected,
    Crashed(CrashPoint),
}
/// One event per committed batch, for whoever takes the lag apart (the bench matches
/// each append to the batch that applied it): the cursors it moved between (the
/// worker's, not yet moved), how long ago its read started and the batch became ready,
/// and how the checkpoint moved (`in a transaction` with the documents, or `alone`).
fn trace_batch(
    worker: &Worker,
    new_cursor: Cursor,
    events: usize,
    started: Instant,
    checkpoint: &'static str,
) {
    tracing::debug!(
        target: BATCH_TRACE_TARGET,
        projection = worker.gen.projection.name(),
        after_tx = worker.gen.cursor.tx,
        after_seq = worker.gen.cursor.seq,
        end_tx = new_cursor.tx,
        end_seq = new_cursor.seq,
        events = events as u64,
        since_read_us = worker.read_started.elapsed().as_micros() as u64,
        since_ready_us = started.elapsed().as_micros() as u64,
        checkpoint,
        "batch committed"
    );
}

/// A generation being projected, with its retry bookkeeping.
struct Worker {
    gen: Generation,
    attempts: HashMap<i64, u32>,
    dead: HashSet<i64>,
    /// When the last batch that found events started, and whether it was full (loops
    /// pace a follower by these).
    last_batch: Instant,
    last_batch_full: bool,
    /// When the read of the current batch started (a shared read may have started
    /// before this worker was ready): the batch's span in the `careboard::projector::batch`
    /// trace events.
    read_started: Instant,
    /// A connection this worker keeps for its reads and transactions (`board_view`'s
    /// live loop, with direct wakes): no pool acquire on its path, and no task spawned
    /// to hand the connection back after each statement. Dropped after an error, taken
    /// again at the next batch.
    conn: Option<PoolConnection<Postgres>>,
    /// The Board snapshots of the last batches, still being written behind them (see
    /// [`behind`]): the worker's next commit waits until they have their view.
    snapshots_behind: behind::SnapshotsBehind,
}

impl Worker {
    fn new(gen: Generation) -> Self {
        Self {
            gen,
            attempts: HashMap::new(),
            dead: HashSet::new(),
            last_batch: Instant::now(),
            last_batch_full: false,
            read_started: Instant::now(),
            conn: None,
            snapshots_behind: Default::default(),
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

/// Waits until the live generation of `projection` has applied the event at
/// `position`, polling up to `timeout`. `Ok(false)` when it did not in time.
pub async fn wait_for_position(
    pool: &PgPool,
    projection: Projection,
    position: i64,
    timeout: Duration,
) -> Result<bool, sqlx::Error> {
    Ok(wait_for(pool, projection, position, timeout).await? == Reached::Yes)
}

/// What [`wait_for`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// The projection has applied the event at the position (or the position is a
    /// gap a rolled-back append left: nothing there to wait for).
    Yes,
    TimedOut,
    /// No event has that position yet: it is past the log's last, `last`.
    PastTheLog {
        last: i64,
    },
}

/// [`wait_for_position`], telling a position past the end of the log apart.
pub async fn wait_for(
    pool: &PgPool,
    projection: Projection,
    position: i64,
    timeout: Duration,
) -> Result<Reached, sqlx::Error> {
    // An unknown position (never written) cannot be waited for.
    let Some(target) = cursor_of(pool, position).await? else {
        let last: i64 = sqlx::query_scalar("select coalesce(max(seq), 0) from events")
            .fetch_one(pool)
            .await?;
        return Ok(if position > last {
            Reached::PastTheLog { last }
        } else {
            Reached::Yes
        });
    };
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if state::live_checkpoint(pool, projection)
            .await?
            .is_some_and(|c| c >= target)
        {
            return Ok(Reached::Yes);
        }
        if Instant::now() >= deadline {
            return Ok(Reached::TimedOut);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

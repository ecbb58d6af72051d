//! The projector daemon: one leader (by advisory lock) applies new events, in order and
//! without skipping, to every projection; each batch moves documents, checkpoint and
//! NOTIFY in one transaction.
//!
//! Reading: `(tx, seq) > checkpoint AND tx < pg_snapshot_xmin(pg_current_snapshot())`,
//! ordered by `(tx, seq)` — see [`batch::read_batch`]. Checkpoint: compare-and-set on
//! the old value, and only while the leader lock is held (the fence against a deposed
//! leader). Waking: the in-process append signal plus an adaptive poll; appends never
//! NOTIFY.

pub mod batch;
pub mod replay;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{watch, Notify};

use crate::event_store::EventStore;
use crate::matcher::{Matcher, MatcherConfig};
use crate::metrics::Metrics;
use batch::{apply_batch, read_batch, BatchError, BatchInput};
use state::{
    advance_checkpoint, record_dead_letters, Generation, GenerationStatus, LEADER_LOCK_KEY,
};

/// Points where tests make the projector "crash" (stop dead, like a killed process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The batch was read and folded in memory; nothing written.
    AfterApply,
    /// Documents written in the transaction; checkpoint not yet moved.
    BeforeCheckpoint,
    /// Checkpoint moved and NOTIFY queued; not committed.
    BeforeCommit,
    /// Committed; the worker had not yet recorded it in memory.
    AfterCommit,
}

pub type CrashHook = Arc<dyn Fn(CrashPoint) -> bool + Send + Sync>;

/// Test hook: return true to make the matcher fail on that Board.
pub type MatcherFault = Arc<dyn Fn(uuid::Uuid) -> bool + Send + Sync>;

#[derive(Clone)]
pub struct ProjectorConfig {
    /// Most events read and applied per transaction.
    pub batch_size: i64,
    /// Batch size of a side-by-side rebuild: larger, so it catches up with the live
    /// generation while appends continue.
    pub rebuild_batch_size: i64,
    /// Longest sleep between polls when idle (the poll interval adapts up to it).
    pub max_poll_interval: Duration,
    /// How often a standby tries for the leader lock, and the leader checks it holds it.
    pub leader_check_interval: Duration,
    /// Attempts at an event the fold rejects before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    pub retry_backoff: Duration,
    /// Snapshot a document every this many events (0: never). Bounds `asOf` folds.
    pub snapshot_every: i64,
    /// Test hook: return true at a point to stop the projector dead there.
    pub crash_hook: Option<CrashHook>,
    /// Whether the leader also runs the matcher (automatic scheduling).
    pub matching: bool,
    /// How often the matcher retries the Boards it parked.
    pub parked_retry_interval: Duration,
    /// Test hook: return true to make matching a Board fail.
    pub matcher_fault: Option<MatcherFault>,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            rebuild_batch_size: 20_000,
            snapshot_every: 500,
            max_poll_interval: Duration::from_millis(250),
            leader_check_interval: Duration::from_secs(1),
            max_attempts: 3,
            retry_backoff: Duration::from_millis(50),
            crash_hook: None,
            matching: true,
            parked_retry_interval: Duration::from_secs(5),
            matcher_fault: None,
        }
    }
}

/// Why a leader term ended.
#[derive(Debug)]
enum TermEnd {
    Shutdown,
    LostLock,
    Crashed(CrashPoint),
}

pub struct Projector {
    pool: PgPool,
    wake: Arc<Notify>,
    /// Rung after every applied batch: new events are new to the matcher too.
    matcher_wake: Arc<Notify>,
    config: ProjectorConfig,
    metrics: Arc<Metrics>,
    is_leader: Arc<AtomicBool>,
    leader_pid: Arc<std::sync::atomic::AtomicI32>,
}

/// A running projector task.
pub struct ProjectorHandle {
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
    is_leader: Arc<AtomicBool>,
    leader_pid: Arc<std::sync::atomic::AtomicI32>,
}

impl ProjectorHandle {
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::SeqCst)
    }

    /// The backend pid of the connection holding the leader lock (0 when standby).
    pub fn lock_pid(&self) -> i32 {
        self.leader_pid.load(Ordering::SeqCst)
    }

    /// Stops after the current batch.
    pub async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await?
    }

    /// Stops dead, like a killed process: connections are dropped mid-flight.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Waits for the task to end by itself (a crash hook).
    pub async fn join(self) -> Result<()> {
        self.task.await?
    }
}

impl Projector {
    pub fn new(
        pool: PgPool,
        wake: Arc<Notify>,
        config: ProjectorConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Connections of its own: request traffic that exhausts the shared pool must
        // not starve the projector (that would show up as lag).
        let own_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        Self {
            pool: own_pool,
            wake,
            matcher_wake: Arc::new(Notify::new()),
            config,
            metrics,
            is_leader: Arc::new(AtomicBool::new(false)),
            leader_pid: Arc::new(std::sync::atomic::AtomicI32::new(0)),
        }
    }

    pub fn spawn(self) -> ProjectorHandle {
        let (tx, rx) = watch::channel(false);
        let is_leader = self.is_leader.clone();
        let leader_pid = self.leader_pid.clone();
        let task = tokio::spawn(self.run(rx));
        ProjectorHandle {
            shutdown: tx,
            task,
            is_leader,
            leader_pid,
        }
    }

    /// Stands by until it holds the leader lock, projects while it does, and stands by
    /// again if it loses it. Returns on shutdown (or a test crash point).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            match self.try_lead(&mut shutdown).await {
                Ok(Some(TermEnd::Shutdown)) => return Ok(()),
                Ok(Some(TermEnd::Crashed(point))) => {
                    tracing::warn!(?point, "projector stopped at a crash point");
                    return Ok(());
                }
                Ok(Some(TermEnd::LostLock)) => {
                    tracing::warn!("projector lost the leader lock; standing by");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "projector leader term failed; retrying"),
            }
            self.is_leader.store(false, Ordering::SeqCst);
            self.leader_pid.store(0, Ordering::SeqCst);
            self.metrics.set_leader(false);
            tokio::select! {
                _ = tokio::time::sleep(self.config.leader_check_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One attempt to lead: `None` if another process holds the lock.
    async fn try_lead(&self, shutdown: &mut watch::Receiver<bool>) -> Result<Option<TermEnd>> {
        // A dedicated connection, outside the pool: the lock lives and dies with it.
        let mut lock_conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let got: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK_KEY)
            .fetch_one(&mut lock_conn)
            .await?;
        if !got {
            lock_conn.close().await.ok();
            return Ok(None);
        }
        let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut lock_conn)
            .await?;
        tracing::info!(pid, "projector leader elected");
        self.is_leader.store(true, Ordering::SeqCst);
        self.leader_pid.store(pid, Ordering::SeqCst);
        self.metrics.set_leader(true);
        state::ensure_generations(&self.pool).await?;
        let end = self.lead(&mut lock_conn, pid, shutdown).await?;
        if matches!(end, TermEnd::Shutdown) {
            let _ = sqlx::query("select pg_advisory_unlock($1)")
                .bind(LEADER_LOCK_KEY)
                .execute(&mut lock_conn)
                .await;
            lock_conn.close().await.ok();
        }
        Ok(Some(end))
    }

    async fn lead(
        &self,
        lock_conn: &mut PgConnection,
        pid: i32,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<TermEnd> {
        let mut workers: Vec<Worker> = state::active_generations(&self.pool)
            .await?
            .into_iter()
            .map(Worker::new)
            .collect();
        let mut last_lock_check = Instant::now();
        let mut last_refresh = Instant::now();
        let mut idle_polls: u32 = 0;
        let mut matcher: Option<AbortOnDrop> = None;
        loop {
            if *shutdown.borrow() {
                return Ok(TermEnd::Shutdown);
            }
            // The matcher runs for as long as this term lasts (restarted if it stopped).
            if self.config.matching && matcher.as_ref().is_none_or(|m| m.0.is_finished()) {
                matcher = Some(self.spawn_matcher(pid, shutdown.clone()));
            }
            if last_lock_check.elapsed() >= self.config.leader_check_interval {
                if sqlx::query("select 1")
                    .execute(&mut *lock_conn)
                    .await
                    .is_err()
                {
                    return Ok(TermEnd::LostLock);
                }
                last_lock_check = Instant::now();
            }
            // Pick up rebuild requests made by other processes.
            if last_refresh.elapsed() >= Duration::from_secs(1) {
                let fresh = state::active_generations(&self.pool).await?;
                reconcile(&mut workers, fresh);
                last_refresh = Instant::now();
            }
            let mut progressed = false;
            // Every generation steps concurrently: their database round trips overlap.
            let results =
                futures::future::join_all(workers.iter_mut().map(|w| self.step(w, pid))).await;
            for (worker, result) in workers.iter_mut().zip(results) {
                match result {
                    Ok(Step::Applied) => progressed = true,
                    Ok(Step::Idle) => {}
                    Ok(Step::Rejected) => {
                        // Someone else moved the checkpoint, or our lock is gone.
                        if sqlx::query("select 1")
                            .execute(&mut *lock_conn)
                            .await
                            .is_err()
                        {
                            return Ok(TermEnd::LostLock);
                        }
                        let fresh = state::active_generations(&self.pool).await?;
                        worker.reload(&fresh);
                    }
                    Ok(Step::Crashed(point)) => return Ok(TermEnd::Crashed(point)),
                    Err(e) => {
                        tracing::warn!(projection = worker.gen.projection.name(), error = %e, "projector batch failed; will retry");
                        tokio::time::sleep(self.config.retry_backoff).await;
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
                self.matcher_wake.notify_one();
                idle_polls = 0;
                continue;
            }
            // Adaptive poll: quick right after activity, slower while idle; a local
            // append wakes it at once.
            idle_polls = idle_polls.saturating_add(1);
            let wait = Duration::from_millis(2u64.saturating_pow(idle_polls.min(10)))
                .min(self.config.max_poll_interval);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    fn spawn_matcher(&self, pid: i32, shutdown: watch::Receiver<bool>) -> AbortOnDrop {
        let store =
            EventStore::with_signal(self.pool.clone(), self.wake.clone(), Duration::from_secs(2));
        let matcher = Matcher::new(
            store,
            self.metrics.clone(),
            MatcherConfig {
                batch_size: self.config.batch_size,
                max_poll_interval: self.config.max_poll_interval,
                retry_backoff: self.config.retry_backoff,
                max_attempts: self.config.max_attempts,
                parked_retry_interval: self.config.parked_retry_interval,
                fault: self.config.matcher_fault.clone(),
            },
        );
        // Its own wake-up: the append signal is the projector's, which passes it on.
        let wake = self.matcher_wake.clone();
        AbortOnDrop(tokio::spawn(async move {
            match matcher.run(pid, wake, shutdown).await {
                Ok(end) => tracing::info!(?end, "matcher stopped"),
                Err(e) => tracing::warn!(error = %e, "matcher failed"),
            }
        }))
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

    /// Reads and applies one batch for one generation.
    async fn step(&self, worker: &mut Worker, pid: i32) -> Result<Step> {
        let crash = |point: CrashPoint| {
            self.config
                .crash_hook
                .as_ref()
                .is_some_and(|hook| hook(point))
        };
        let gen = worker.gen.clone();
        let mut tx = self.pool.begin().await?;
        let batch_size = match gen.status {
            GenerationStatus::Live => self.config.batch_size,
            GenerationStatus::Building => self.config.rebuild_batch_size,
        };
        let rows = read_batch(&mut tx, gen.cursor, batch_size).await?;
        let Some((last, _)) = rows.last() else {
            // A caught-up rebuild is swapped in by `switch_caught_up`.
            return Ok(Step::Idle);
        };
        let new_cursor = *last;
        let events: Vec<_> = rows.into_iter().map(|(_, e)| e).collect();
        let input = BatchInput {
            projection: gen.projection,
            generation: gen.generation,
            events: &events,
            dead: &worker.dead,
            attempts: &worker.attempts,
            snapshot_every: self.config.snapshot_every,
            batch_end: new_cursor,
        };
        let outcome = match apply_batch(&mut tx, &input).await {
            Ok(o) => o,
            Err(BatchError::Poison { seq, error }) => {
                drop(tx);
                let attempts = worker.attempts.entry(seq).or_insert(0);
                *attempts += 1;
                tracing::warn!(projection = gen.projection.name(), seq, attempts = *attempts, %error, "projection cannot apply event");
                if *attempts >= self.config.max_attempts {
                    worker.dead.insert(seq);
                } else {
                    let backoff = self.config.retry_backoff * 2u32.pow(*attempts - 1);
                    tokio::time::sleep(backoff).await;
                }
                return Ok(Step::Applied);
            }
            Err(BatchError::Database(e)) => return Err(e.into()),
        };
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
            &mut tx,
            gen.projection,
            gen.generation,
            gen.cursor,
            new_cursor,
            outcome.applied,
            pid,
        )
        .await?;
        if !moved {
            return Ok(Step::Rejected);
        }
        if gen.status == GenerationStatus::Live && !outcome.changed_boards.is_empty() {
            let payloads: Vec<String> = outcome
                .changed_boards
                .iter()
                .map(|(id, version, position)| format!("{id}:{version}:{position}"))
                .collect();
            sqlx::query("select pg_notify('board_changed', p) from unnest($1::text[]) as p")
                .bind(&payloads)
                .execute(&mut *tx)
                .await?;
        }
        if crash(CrashPoint::BeforeCommit) {
            return Ok(Step::Crashed(CrashPoint::BeforeCommit));
        }
        tx.commit().await?;
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

/// Aborts the task when the leader term that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
    projection: crate::projections::Projection,
    position: i64,
    timeout: Duration,
) -> Result<bool, sqlx::Error> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match state::has_reached(pool, projection, position).await? {
            Some(true) => return Ok(true),
            // An unknown position (never written) cannot be waited for.
            None if !position_exists(pool, position).await? => return Ok(true),
            _ => {}
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

async fn position_exists(pool: &PgPool, position: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists(select 1 from events where seq = $1)")
        .bind(position)
        .fetch_one(pool)
        .await
}

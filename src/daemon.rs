//! The daemon: stands by until this process holds the [`crate::leader`] lock, then runs
//! one leader term — the [`Projector`] and the [`Matcher`] side by side, as peers, each
//! with its own checkpoint — until the lock is lost or the process shuts down, and
//! stands by again.
//!
//! The daemon owns what the peers share: the lease (both fence their checkpoints with
//! it), the wake-up (the in-process append signal, fanned out to both), and the
//! shutdown signal. Neither peer knows the other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::estimates::Estimator;
use crate::event_store::EventStore;
use crate::faults::{CrashPoint, Faults};
use crate::leader::Lease;
use crate::matcher::{Matcher, MatcherConfig, MatcherEnd};
use crate::metrics::Metrics;
use crate::pacing::Wakes;
use crate::projector::{Projector, ProjectorEnd};

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Most events read and applied per transaction.
    pub batch_size: i64,
    /// Batch size of a side-by-side rebuild: larger, so it catches up with the live
    /// generation while appends continue.
    pub rebuild_batch_size: i64,
    /// Longest sleep between polls when idle (the poll interval adapts up to it).
    pub max_poll_interval: Duration,
    /// How often a standby tries for the leader lock, and the leader checks it holds it.
    pub leader_check_interval: Duration,
    /// Attempts at an event (projector) or a batch (matcher) before it is set aside.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    pub retry_backoff: Duration,
    /// Snapshot a document every this many events (0: never). Bounds `asOf` folds.
    pub snapshot_every: i64,
    /// Live projections at one checkpoint share one read of the log, and the next batch
    /// is read while the current one is written. Off, each projection reads for itself
    /// and nothing is read ahead: the older way, kept so the bench can measure both.
    pub shared_read: bool,
    /// Each projection generation runs on a loop of its own behind the shared read
    /// (see [`crate::projector`]): a slow projection holds no other back. Off, they step
    /// together, a round ending when the slowest has committed: the earlier schedule,
    /// kept so the bench can measure both in one run.
    pub loops: bool,
    /// With loops, the projector's transactions commit without waiting for their WAL to
    /// reach disk (`synchronous_commit = off` for those transactions only; appends stay
    /// durable). A projection is derived from the log: if the database crashes, the last
    /// moments of documents are lost together with their checkpoint (one transaction),
    /// and the projector applies those events again to the same result. Saves a disk
    /// flush per batch, a few milliseconds of lag.
    pub async_commit: bool,
    /// With loops, the shortest time between two batches of a projection other than
    /// `board_view` (zero: none). They then take what `board_view` read meanwhile in
    /// fewer, larger transactions, and leave it the CPU. A full batch (a backlog) goes
    /// again at once. The price: a `minPosition` read of an appointment or a shift may
    /// wait up to this much longer.
    pub follower_pace: Duration,
    /// With loops, the append signal reaches each projection's loop straight from the
    /// daemon's one waiting task (no supervisor in between), `board_view`'s last so it
    /// runs next on that core; and `board_view`'s loop reads and writes on a connection
    /// of its own (no pool acquire, no task to hand a connection back after each
    /// statement). Off: the signal goes daemon → projector supervisor → every loop, and
    /// every statement takes a pooled connection: the earlier path, kept so the bench
    /// can measure both in one run. Off by default: on the shared machine the bench
    /// showed no clear gain either way (docs/BENCHMARKS.md, "Waking board_view
    /// directly").
    pub direct_wake: bool,
    /// Checkpoint writes are fenced by the leader epoch (a lookup and a row lock on a
    /// one-row table, see [`crate::leader`]). Off: by looking the leader lock up in
    /// `pg_locks`, which copies the whole lock table per batch and does not make a new
    /// leader wait for a batch the old one has open: the earlier fence, kept so the
    /// bench can measure both in one run. On by default for the race it closes; the
    /// bench showed its cost within the noise (docs/BENCHMARKS.md, "The leader epoch
    /// fence and the NOTIFY in the checkpoint statement").
    pub epoch_fence: bool,
    /// Each batch's NOTIFY is sent by the checkpoint's compare-and-set statement: one
    /// round trip fewer per `board_view` batch. Off: a statement of its own, the
    /// earlier path. Off by default: on the shared machine it lowered PostgreSQL's CPU
    /// per append and the lag's median a little, but not the lag's p99 (same section).
    pub fused_statements: bool,
    /// With loops, a batch that holds no event of its projection (most of a
    /// projection's batches when the appends are of other kinds, e.g. every batch of
    /// `provider_shift_view` while only appointments are requested) moves its
    /// checkpoint in one autocommit statement, still fenced by the leader epoch,
    /// instead of a transaction of four round trips. Off: every batch is a transaction,
    /// the earlier path, kept so the bench can measure both in one run. On by default:
    /// the lag's p99 was lower in 8 of 11 same-run pairs on the shared machine
    /// (docs/BENCHMARKS.md, "Projector lag attributed per statement").
    pub lone_checkpoints: bool,
    /// With loops, each batch transaction plans its statements for their own
    /// parameters and the tables' current sizes (`plan_cache_mode =
    /// force_custom_plan`, set by its first statement for that transaction only).
    /// Without it, PostgreSQL switches a prepared statement to a generic plan after
    /// five executions and keeps it until the table is next analyzed. Costs each
    /// statement a planning, and does not help where statistics are missing (a Board
    /// read still walks the Board): `fresh_statistics` is the fix kept; this stays off
    /// (docs/BENCHMARKS.md, "Fresh statistics, custom plans and fewer round trips").
    pub custom_plans: bool,
    /// With loops, `board_view`'s live batches take two round trips fewer: the
    /// transaction opens with one simple query (BEGIN, the epoch hold and the
    /// transaction's settings) instead of BEGIN and a statement that also takes the
    /// transaction id, and the Board headers and their appointment rows are written by
    /// one statement instead of two. The transaction's id is then not registered with
    /// the projector's own, so a read made while it runs (a follower's, or the
    /// read-ahead behind a full batch) stays below it: correct, only more careful;
    /// `board_view`'s own next read comes after its commit. Off: the earlier path. Off
    /// by default: no clear same-run gain (docs/BENCHMARKS.md, "Fresh statistics,
    /// custom plans and fewer round trips").
    pub fewer_round_trips: bool,
    /// With loops, the projector analyzes each projection table whenever its size has
    /// doubled since its last analyze, from 8 pages on (see
    /// [`crate::projector::statistics`]): on a fresh database the batches' locked
    /// reads otherwise run on plans made for nearly empty tables. Off: statistics come
    /// from autovacuum alone, the earlier path, kept so the bench can measure both in
    /// one run. On by default: the lag's p99 was lower in every same-run pair
    /// (docs/BENCHMARKS.md, "Fresh statistics, custom plans and fewer round trips").
    pub fresh_statistics: bool,
    /// A `board_view` batch that applies only appointment events to a stored Board
    /// writes the header's counters (version, position, newest recorded time) as
    /// columns and leaves its document as it is, instead of rewriting the whole header
    /// (migration 0016; readers take the counters from the columns). Off: every
    /// header written whole, the earlier path, kept so the bench can measure both in
    /// one run. On by default: ~0.4 KB less WAL per append, and the lag's p99 lower in
    /// 7 of 10 same-run pairs (docs/BENCHMARKS.md, "Board headers: counters as
    /// columns").
    pub header_counters: bool,
    /// A `board_view` batch's locked read of its Boards looks each touched appointment
    /// up under its own Board, one key lookup per (Board, appointment) pair (see
    /// [`crate::projections::store::load_boards_touched`]). Off: every Board is
    /// searched for every appointment the batch touched, b × n index searches for n
    /// appointments over b Boards: the earlier read, kept so the bench can measure both
    /// in one run. On by default: the read visited 44–54 pages a call where the earlier
    /// one visited 800 at the same rate (docs/BENCHMARKS.md, "Board reads by pair").
    pub paired_board_reads: bool,
    /// `appointment_durations` is folded from its flat columns and stores no jsonb
    /// document (migration 0017 lets `doc` be null): a batch reads and writes only
    /// the columns readers use (see [`crate::projections::store::load_durations`]).
    /// On by default: on an idle machine it had the lower lag p50 and p99 and less
    /// PostgreSQL CPU per append in both same-run pairs (docs/BENCHMARKS.md, "Latest
    /// results"). Off: each row also keeps its folded appointment as a document, the
    /// earlier path, kept so the bench can measure both in one run.
    pub flat_durations: bool,
    /// A live `board_view` loop commits each batch (documents, checkpoint, NOTIFY)
    /// without its Board snapshots, and writes them behind it on a connection of its
    /// own, in a transaction whose view of the documents is taken before the next
    /// batch commits (see `projector::behind`). On by default: written in the batch,
    /// the snapshots of the Boards that passed a snapshot boundary together held
    /// every Board's NOTIFY back by up to ~450 ms at half the maximum append rate
    /// (docs/BENCHMARKS.md, "Projector lag: Board snapshots written behind").
    /// Off: written in the batch's transaction, the earlier path, kept so the bench
    /// can measure both in one run.
    pub live_snapshots_behind: bool,
    /// Whether the leader also runs the matcher (automatic scheduling).
    pub matching: bool,
    /// How often the matcher retries the Boards it parked.
    pub parked_retry_interval: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            rebuild_batch_size: 20_000,
            snapshot_every: 500,
            shared_read: true,
            loops: true,
            async_commit: true,
            follower_pace: Duration::from_millis(10),
            direct_wake: false,
            epoch_fence: true,
            fused_statements: false,
            lone_checkpoints: true,
            custom_plans: false,
            fewer_round_trips: false,
            fresh_statistics: true,
            header_counters: true,
            paired_board_reads: true,
            flat_durations: true,
            live_snapshots_behind: true,
            max_poll_interval: Duration::from_millis(250),
            leader_check_interval: Duration::from_secs(1),
            max_attempts: 3,
            retry_backoff: Duration::from_millis(50),
            matching: true,
            parked_retry_interval: Duration::from_secs(5),
        }
    }
}

impl DaemonConfig {
    fn matcher(&self) -> MatcherConfig {
        MatcherConfig {
            batch_size: self.batch_size,
            max_poll_interval: self.max_poll_interval,
            retry_backoff: self.retry_backoff,
            max_attempts: self.max_attempts,
            parked_retry_interval: self.parked_retry_interval,
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

pub struct Daemon {
    pool: PgPool,
    /// Rung by local appends.
    appended: Arc<Notify>,
    estimator: Estimator,
    config: DaemonConfig,
    metrics: Arc<Metrics>,
    faults: Faults,
    is_leader: Arc<AtomicBool>,
    leader_pid: Arc<std::sync::atomic::AtomicI32>,
}

/// A running daemon task.
pub struct DaemonHandle {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
    is_leader: Arc<AtomicBool>,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    leader_pid: Arc<std::sync::atomic::AtomicI32>,
}

impl DaemonHandle {
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::SeqCst)
    }

    /// Stops after the current batch.
    pub async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await?
    }
}

/// What tests do to a daemon: kill it, wait for a crash, find its lock's connection.
#[cfg(feature = "fault-injection")]
impl DaemonHandle {
    /// The backend pid of the connection holding the leader lock (0 when standby).
    pub fn lock_pid(&self) -> i32 {
        self.leader_pid.load(Ordering::SeqCst)
    }

    /// Stops dead, like a killed process: connections are dropped mid-flight.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Waits for the task to end by itself (a crash point).
    pub async fn join(self) -> Result<()> {
        self.task.await?
    }
}

impl Daemon {
    pub fn new(
        pool: PgPool,
        appended: Arc<Notify>,
        estimator: Estimator,
        config: DaemonConfig,
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
            appended,
            estimator,
            config,
            metrics,
            faults: Faults::default(),
            is_leader: Arc::new(AtomicBool::new(false)),
            leader_pid: Arc::new(std::sync::atomic::AtomicI32::new(0)),
        }
    }

    /// Injects the faults a test asks for.
    #[cfg(feature = "fault-injection")]
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    pub fn spawn(self) -> DaemonHandle {
        let (tx, rx) = watch::channel(false);
        let is_leader = self.is_leader.clone();
        let leader_pid = self.leader_pid.clone();
        let task = tokio::spawn(self.run(rx));
        DaemonHandle {
            shutdown: tx,
            task,
            is_leader,
            leader_pid,
        }
    }

    /// Stands by until it holds the leader lock, leads while it does, and stands by
    /// again if it loses it. Returns on shutdown (or a test's crash point).
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
                    tracing::warn!("lost the leader lock; standing by");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "leader term failed; retrying"),
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
        let Some(lease) = Lease::try_acquire_fenced(&self.pool, !self.config.epoch_fence).await?
        else {
            return Ok(None);
        };
        tracing::info!(pid = lease.pid(), "leader elected");
        self.is_leader.store(true, Ordering::SeqCst);
        self.leader_pid.store(lease.pid(), Ordering::SeqCst);
        self.metrics.set_leader(true);
        let lease = Arc::new(lease);
        let end = self.term(&lease, shutdown).await;
        if matches!(end, Ok(TermEnd::Shutdown)) {
            if let Some(lease) = Arc::into_inner(lease) {
                lease.release().await;
            }
        }
        end.map(Some)
    }

    /// One leader term: the projector and the matcher run as peers until the lock is
    /// lost, the projector stops, or shutdown.
    async fn term(
        &self,
        lease: &Arc<Lease>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<TermEnd> {
        // Ending the term stops both peers (their tasks are aborted on drop as well).
        let (end_tx, end_rx) = watch::channel(false);
        let projector_wake = Arc::new(Notify::new());
        let matcher_wake = Arc::new(Notify::new());
        // Who the append signal wakes. With direct wakes the projector's loops register
        // themselves; otherwise its one wake is forwarded to the loops by the projector.
        let wakes = Arc::new(Wakes::default());
        if !(self.config.loops && self.config.direct_wake) {
            wakes.register(&projector_wake, false);
        }
        wakes.register(&matcher_wake, false);
        let _fan_out = AbortOnDrop(tokio::spawn({
            let (appended, wakes) = (self.appended.clone(), wakes.clone());
            async move {
                loop {
                    appended.notified().await;
                    wakes.ring();
                }
            }
        }));
        let mut projector =
            AbortOnDrop(self.spawn_projector(lease, projector_wake, wakes, end_rx.clone()));
        let mut matcher: Option<AbortOnDrop<Result<MatcherEnd>>> = None;
        let result = loop {
            // The matcher runs for as long as this term lasts (restarted if it stopped).
            if self.config.matching && matcher.as_ref().is_none_or(|m| m.0.is_finished()) {
                if let Some(mut ended) = matcher.take() {
                    match (&mut ended.0).await {
                        Ok(Ok(end)) => tracing::info!(?end, "matcher stopped"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "matcher failed"),
                        Err(e) => tracing::warn!(error = %e, "matcher task failed"),
                    }
                    tokio::time::sleep(self.config.retry_backoff).await;
                    if !lease.holds().await {
                        break Ok(TermEnd::LostLock);
                    }
                }
                matcher = Some(AbortOnDrop(self.spawn_matcher(
                    lease,
                    matcher_wake.clone(),
                    end_rx.clone(),
                )));
            }
            let check = tokio::time::sleep(self.config.leader_check_interval);
            tokio::select! {
                ended = &mut projector.0 => {
                    break match ended {
                        Ok(Ok(ProjectorEnd::Shutdown)) => Ok(TermEnd::Shutdown),
                        Ok(Ok(ProjectorEnd::LostLock)) => Ok(TermEnd::LostLock),
                        Ok(Ok(ProjectorEnd::Crashed(point))) => Ok(TermEnd::Crashed(point)),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(e.into()),
                    };
                }
                _ = check => {
                    if !lease.holds().await {
                        break Ok(TermEnd::LostLock);
                    }
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break Ok(TermEnd::Shutdown);
                    }
                }
            }
            if *shutdown.borrow() {
                break Ok(TermEnd::Shutdown);
            }
        };
        let _ = end_tx.send(true);
        if matches!(result, Ok(TermEnd::Shutdown)) {
            // Let the peers finish their current batch before the lock is given up.
            if !projector.0.is_finished() {
                let _ = (&mut projector.0).await;
            }
            if let Some(m) = matcher.as_mut() {
                let _ = (&mut m.0).await;
            }
        }
        result
    }

    fn spawn_projector(
        &self,
        lease: &Arc<Lease>,
        wake: Arc<Notify>,
        wakes: Arc<Wakes>,
        end: watch::Receiver<bool>,
    ) -> JoinHandle<Result<ProjectorEnd>> {
        let projector = Projector::new(
            self.pool.clone(),
            self.config.clone(),
            self.metrics.clone(),
            self.faults.clone(),
        );
        let lease = lease.clone();
        tokio::spawn(async move { projector.run(&lease, &wake, &wakes, end).await })
    }

    fn spawn_matcher(
        &self,
        lease: &Arc<Lease>,
        wake: Arc<Notify>,
        end: watch::Receiver<bool>,
    ) -> JoinHandle<Result<MatcherEnd>> {
        // Its writes ring the append signal, which wakes the projector.
        let store = EventStore::with_signal(
            self.pool.clone(),
            self.appended.clone(),
            Duration::from_secs(2),
        );
        let matcher = Matcher::new(
            store,
            self.estimator.clone(),
            self.metrics.clone(),
            self.config.matcher(),
            self.faults.clone(),
        );
        let fence = lease.fence();
        tokio::spawn(async move { matcher.run(fence, &wake, end).await })
    }
}

/// Aborts the task when the leader term that started it ends.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

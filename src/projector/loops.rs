//! Each projection generation on a loop of its own, behind one shared read of the log.
//!
//! A loop reads the batch after its checkpoint, applies it in its own transaction
//! (documents, checkpoint compare-and-set, NOTIFY, one COMMIT) and goes again at once,
//! whatever the other loops are doing: a slow projection never holds back another, and
//! `board_view` (the one whose commits NOTIFY subscribers) never waits for the rest.
//!
//! The loops still read the log about once between them: every read goes through
//! [`SharedLog`], which keeps the recent reads by the cursor they start after, lets a
//! loop at that cursor join a read under way or take one already made, and reads the
//! next batch ahead behind a full one. Any read at a cursor is a prefix of what follows
//! it in `(tx, seq)` order (every event it could have missed belongs to a transaction at
//! or above its xmin, which sorts after everything it returned), so taking an older
//! read never skips: it only leaves later events for the next batch. That costs lag, so
//! `board_view` takes an older read only when it was full (then it is exactly what a
//! read now would return) and otherwise reads afresh; the other projections take any.
//!
//! The supervisor ([`run`]) starts a loop per live or building generation, forwards the
//! append signal to each (with direct wakes the daemon rings each loop itself instead,
//! `board_view`'s last), refreshes generations (rebuild requests from other
//! processes), swaps caught-up rebuilds in, and ends the term: on shutdown each loop
//! finishes its batch; on a lost lock or a crash point the loops are dropped mid-flight,
//! like a killed process, and their open transactions roll back.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::PgConnection;
use tokio::sync::{mpsc, watch, Notify, OnceCell};
use tokio::task::JoinHandle;

use super::state::{self, Generation, GenerationStatus};
use super::statistics;
use super::{Projector, ProjectorEnd, Step, Worker};
use crate::event_store::log::Cursor;
use crate::event_store::RecordedEvent;
use crate::faults::CrashPoint;
use crate::leader::{Fence, Lease};
use crate::pacing::{IdlePoll, Wakes};
use crate::projections::Projection;

type Rows = Arc<Vec<(Cursor, RecordedEvent)>>;

/// A generation: which projection, which build of it.
type Key = (Projection, i32);

/// Most reads [`SharedLog`] keeps. A loop far behind the others (a poison event's
/// retries) finds its read gone and reads for itself: memory stays bounded.
const KEPT_READS: usize = 16;

/// Why a loop stopped, as it tells the supervisor.
enum LoopEnd {
    /// A checkpoint write was refused and the leader lock is gone.
    LostLock,
    Crashed(CrashPoint),
    /// Its generation is no longer live or building.
    Retired,
    /// A building generation found nothing more to read: time to try the swap.
    CaughtUp,
}

/// What a loop and the supervisor share about one generation.
struct LoopState {
    /// The supervisor updates the status (a rebuild that went live); the loop the
    /// cursor (what the swap compares).
    gen: Mutex<Generation>,
    /// The append signal: forwarded to this loop by the supervisor, or, with direct
    /// wakes, rung straight from the daemon (registered in [`Wakes`]).
    wake: Arc<Notify>,
}

struct Running {
    state: Arc<LoopState>,
    task: JoinHandle<()>,
}

/// A loop never outlives its supervisor: when the term ends (or its future is
/// dropped), the loops stop too.
impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs every active generation on a loop of its own until shutdown, a lost lock or a
/// crash point.
pub(super) async fn run(
    projector: &Projector,
    lease: &Arc<Lease>,
    wake: &Notify,
    wakes: &Arc<Wakes>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<ProjectorEnd> {
    let direct = projector.settings.direct_wake;
    // `board_view`'s live loop is rung last, so it runs first (see [`Wakes`]).
    let register = |state: &LoopState, gen: &Generation| {
        if direct {
            let first_served =
                gen.projection == Projection::BoardView && gen.status == GenerationStatus::Live;
            wakes.register(&state.wake, first_served);
        }
    };
    state::ensure_generations(&projector.pool).await?;
    let log = Arc::new(SharedLog::new(projector.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ends_tx, mut ends) = mpsc::unbounded_channel::<(Key, LoopEnd)>();
    let mut running: HashMap<Key, Running> = HashMap::new();
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    let freshener = statistics::Freshener::default();
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start_loop = |gen: Generation| {
        let key = (gen.projection, gen.generation);
        let state = Arc::new(LoopState {
            gen: Mutex::new(gen.clone()),
            wake: Arc::new(Notify::new()),
        });
        register(&state, &gen);
        let task = tokio::spawn(run_loop(
            projector.clone(),
            log.clone(),
            lease.clone(),
            state.clone(),
            stop_rx.clone(),
            ends_tx.clone(),
        ));
        (key, Running { state, task })
    };
    let end = loop {
        if *shutdown.borrow() {
            break ProjectorEnd::Shutdown;
        }
        let mut check_swap = false;
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break ProjectorEnd::Shutdown;
                }
            }
            Some((key, end)) = ends.recv() => match end {
                LoopEnd::LostLock => break ProjectorEnd::LostLock,
                LoopEnd::Crashed(point) => break ProjectorEnd::Crashed(point),
                LoopEnd::Retired => {
                    drop(running.remove(&key));
                    log.forget(key);
                }
                LoopEnd::CaughtUp => check_swap = true,
            },
            _ = wake.notified() => {
                for r in running.values() {
                    r.state.wake.notify_one();
                }
            }
            _ = refresh.tick() => {
                if projector.settings.fresh_statistics {
                    freshener.tick(&projector.pool);
                }
                // Rebuild requests made by other processes, and status changes.
                let fresh = state::active_generations(&projector.pool).await?;
                running.retain(|key, _| {
                    let keep = fresh.iter().any(|g| (g.projection, g.generation) == *key);
                    if !keep {
                        log.forget(*key);
                    }
                    keep
                });
                for g in fresh {
                    match running.get(&(g.projection, g.generation)) {
                        Some(r) => {
                            let went_live = {
                                let mut current = r.state.gen.lock().expect("loop state");
                                let went_live = current.status != g.status
                                    && g.status == GenerationStatus::Live;
                                current.status = g.status;
                                went_live
                            };
                            if went_live {
                                register(&r.state, &g);
                            }
                        }
                        None => {
                            let (key, r) = start_loop(g);
                            running.insert(key, r);
                        }
                    }
                }
                check_swap = true;
            }
        }
        if check_swap {
            let gens: Vec<Generation> = running
                .values()
                .map(|r| r.state.gen.lock().expect("loop state").clone())
                .collect();
            if projector.switch_caught_up(&gens).await? {
                // The new live generation shares reads and NOTIFYs from its next batch.
                refresh.reset_immediately();
            }
        }
    };
    if end == ProjectorEnd::Shutdown {
        // Each loop finishes the batch it is in before the lock is given up.
        let _ = stop_tx.send(true);
        for mut r in running.into_values() {
            let _ = (&mut r.task).await;
        }
    }
    Ok(end)
}

/// One generation's loop: step, and step again at once after progress; idle, wait for
/// the append signal or the adaptive poll.
async fn run_loop(
    projector: Projector,
    log: Arc<SharedLog>,
    lease: Arc<Lease>,
    state: Arc<LoopState>,
    mut stop: watch::Receiver<bool>,
    ends: mpsc::UnboundedSender<(Key, LoopEnd)>,
) {
    let gen = state.gen.lock().expect("loop state").clone();
    let key = (gen.projection, gen.generation);
    let mut worker = Worker::new(gen);
    let mut poll = IdlePoll::new(projector.settings.max_poll_interval);
    let mut ahead: Option<Ahead> = None;
    let tell = |end: LoopEnd| {
        let _ = ends.send((key, end));
    };
    while !*stop.borrow() {
        worker.gen.status = state.gen.lock().expect("loop state").status;
        match projector
            .step_loop(&mut worker, &log, lease.fence(), &mut ahead)
            .await
        {
            Ok(Step::Applied) => {
                state.gen.lock().expect("loop state").cursor = worker.gen.cursor;
                log.passed(key, worker.gen.cursor, worker.gen.status);
                poll.reset();
                // A live follower not behind by a full batch waits out its pace.
                let pace = projector.settings.follower_pace;
                if !pace.is_zero()
                    && key.0 != Projection::BoardView
                    && worker.gen.status == GenerationStatus::Live
                    && !worker.last_batch_full
                {
                    tokio::select! {
                        _ = tokio::time::sleep(pace.saturating_sub(worker.last_batch.elapsed())) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
            Ok(Step::Idle) => {
                if worker.gen.status == GenerationStatus::Building {
                    tell(LoopEnd::CaughtUp);
                }
                poll.wait(&state.wake, &mut stop).await;
            }
            Ok(Step::Rejected) => {
                // Someone else moved the checkpoint, or our lock is gone.
                ahead = None;
                if !lease.holds().await {
                    // Nothing was left behind: this batch waited for the last one's
                    // snapshots before its checkpoint was refused.
                    return tell(LoopEnd::LostLock);
                }
                match state::active_generations(&projector.pool).await {
                    Ok(fresh) => {
                        if !fresh.iter().any(|g| (g.projection, g.generation) == key) {
                            return tell(LoopEnd::Retired);
                        }
                        worker.reload(&fresh);
                        *state.gen.lock().expect("loop state") = worker.gen.clone();
                    }
                    Err(e) => {
                        tracing::warn!(projection = key.0.name(), error = %e, "reloading a generation failed; will retry");
                        pause(&projector, &mut stop).await;
                    }
                }
            }
            Ok(Step::Crashed(point)) => return tell(LoopEnd::Crashed(point)),
            Err(e) => {
                ahead = None;
                // The kept connection may be the broken part: take another next time.
                worker.conn = None;
                tracing::warn!(projection = key.0.name(), error = %e, "projector batch failed; will retry");
                pause(&projector, &mut stop).await;
            }
        }
    }
    // Stopped: the last batch's snapshots, if still being written, are finished first.
    if let Err(e) = projector.snapshots_written(&mut worker).await {
        tracing::warn!(projection = key.0.name(), error = %e, "writing Board snapshots failed at shutdown");
    }
}

async fn pause(projector: &Projector, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(projector.settings.retry_backoff) => {}
        _ = stop.changed() => {}
    }
}

/// A rebuild's next batch, read while it writes the current one.
struct Ahead {
    after: Cursor,
    rows: JoinHandle<Result<Rows, sqlx::Error>>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.rows.abort();
    }
}

impl Projector {
    /// One batch of one generation: read (shared, for a live one), apply, commit.
    async fn step_loop(
        &self,
        worker: &mut Worker,
        log: &Arc<SharedLog>,
        fence: Fence,
        ahead: &mut Option<Ahead>,
    ) -> Result<Step> {
        let started = Instant::now();
        let cursor = worker.gen.cursor;
        let live = worker.gen.status == GenerationStatus::Live;
        let limit = if live {
            self.settings.batch_size
        } else {
            self.settings.rebuild_batch_size
        };
        let rows = if live {
            *ahead = None;
            // The projection that NOTIFYs takes only what a read now would return.
            let strict = worker.gen.projection == Projection::BoardView;
            if strict && self.settings.direct_wake && worker.conn.is_none() {
                worker.conn = Some(self.pool.acquire().await?);
            }
            let (rows, read_started) = log
                .next(cursor, limit, started, strict, worker.conn.as_deref_mut())
                .await?;
            worker.read_started = read_started;
            if strict {
                rows
            } else {
                // Behind board_view, take the reads it made since in one transaction.
                log.extend(rows, limit)
            }
        } else {
            worker.read_started = started;
            let pending = ahead.take().filter(|a| a.after == cursor);
            let rows = match pending {
                Some(mut a) => (&mut a.rows).await??,
                None => self.read_rebuild(cursor, limit).await?,
            };
            if !rows.is_empty() {
                self.metrics.projector_batch_read();
            }
            rows
        };
        let Some((end, _)) = rows.last() else {
            // Caught up: a rebuild leaves nothing behind for its swap to pass.
            self.snapshots_idle(worker).await?;
            return Ok(Step::Idle);
        };
        let end = *end;
        worker.last_batch = started;
        worker.last_batch_full = rows.len() as i64 >= limit;
        if self.faults.crash_at(CrashPoint::AfterRead) {
            return Ok(Step::Crashed(CrashPoint::AfterRead));
        }
        // Behind a full batch (a backlog), the next is read while this one is written.
        if rows.len() as i64 >= limit {
            if live {
                log.read_ahead(end, limit);
            } else {
                let me = self.clone();
                *ahead = Some(Ahead {
                    after: end,
                    rows: tokio::spawn(async move { me.read_rebuild(end, limit).await }),
                });
            }
        }
        self.apply(worker, fence, &rows, end, started).await
    }
}

/// One read of the log after `after`, made once and shared by every loop that uses it.
struct Slot {
    after: Cursor,
    limit: i64,
    started: Instant,
    rows: OnceCell<Rows>,
}

#[derive(Default)]
struct Reads {
    /// Recent reads, oldest first, at most one per cursor.
    slots: VecDeque<Arc<Slot>>,
    /// Where each live loop is: a read behind all of them is dropped.
    cursors: HashMap<Key, Cursor>,
}

/// The live loops' reads of the log, shared.
pub(super) struct SharedLog {
    projector: Projector,
    reads: Mutex<Reads>,
}

impl SharedLog {
    fn new(projector: Projector) -> Self {
        Self {
            projector,
            reads: Mutex::default(),
        }
    }

    /// The batch after `after` for a loop that became ready at `ready`, and when its
    /// read started: a read made or
    /// under way at that cursor when it may be used, else a fresh one (which others may
    /// then share). A read that started at or after `ready`, or that returned a whole
    /// batch (exactly what a read now would return), is always used; one that started
    /// earlier and came back short is used only when it found events and the caller is
    /// not `strict`. An earlier read that found nothing is never used: the events
    /// since may be there now.
    async fn next(
        &self,
        after: Cursor,
        limit: i64,
        ready: Instant,
        strict: bool,
        mut conn: Option<&mut PgConnection>,
    ) -> Result<(Rows, Instant), sqlx::Error> {
        // The read last found unusable: the next one at this cursor must be another.
        let mut passed_over: Option<Arc<Slot>> = None;
        loop {
            let slot = {
                let mut reads = self.reads.lock().expect("shared reads");
                let kept = reads
                    .slots
                    .iter()
                    .find(|s| s.after == after && s.limit == limit)
                    .filter(|s| !passed_over.as_ref().is_some_and(|p| Arc::ptr_eq(p, s)))
                    .cloned();
                // Found and opened under one lock, so loops arriving together share it.
                kept.unwrap_or_else(|| open(&mut reads, after, limit))
            };
            // Waits for it when it is under way.
            let rows = self.fill(&slot, conn.as_deref_mut()).await?;
            let usable = slot.started >= ready
                || rows.len() as i64 >= limit
                || (!strict && !rows.is_empty());
            if usable {
                return Ok((rows, slot.started));
            }
            passed_over = Some(slot);
        }
    }

    /// `rows` followed by the reads already made after them, one after another, up to
    /// `limit` events: a loop behind another applies what that one read in fewer,
    /// larger transactions. Each read is a prefix of the log after its cursor, so the
    /// reads joined end to end are too.
    fn extend(&self, rows: Rows, limit: i64) -> Rows {
        let mut joined: Option<Vec<(Cursor, RecordedEvent)>> = None;
        let reads = self.reads.lock().expect("shared reads");
        loop {
            let current = joined.as_deref().unwrap_or(&rows);
            let Some((end, _)) = current.last() else {
                break;
            };
            let next = reads
                .slots
                .iter()
                .find(|s| s.after == *end)
                .and_then(|s| s.rows.get())
                .filter(|r| !r.is_empty() && (current.len() + r.len()) as i64 <= limit);
            let Some(next) = next else { break };
            joined
                .get_or_insert_with(|| rows.as_ref().clone())
                .extend(next.iter().cloned());
        }
        match joined {
            Some(j) => Arc::new(j),
            None => rows,
        }
    }

    /// Starts reading the batch after `after` in the background, unless a read there
    /// is kept already.
    fn read_ahead(self: &Arc<Self>, after: Cursor, limit: i64) {
        let slot = {
            let mut reads = self.reads.lock().expect("shared reads");
            if reads.slots.iter().any(|s| s.after == after) {
                return;
            }
            open(&mut reads, after, limit)
        };
        let me = self.clone();
        tokio::spawn(async move {
            // A failure here is met again, and reported, by the loop that needs it.
            let _ = me.fill(&slot, None).await;
        });
    }

    /// The slot's rows, reading them if no one has (others wait for that one read), on
    /// `conn` when given.
    async fn fill(
        &self,
        slot: &Slot,
        conn: Option<&mut PgConnection>,
    ) -> Result<Rows, sqlx::Error> {
        slot.rows
            .get_or_try_init(|| async move {
                let rows = self.projector.read_on(conn, slot.after, slot.limit).await?;
                if !rows.is_empty() {
                    self.projector.metrics.projector_batch_read();
                }
                Ok(rows)
            })
            .await
            .cloned()
    }

    /// A live loop moved to `cursor`: reads every live loop has passed are dropped.
    fn passed(&self, key: Key, cursor: Cursor, status: GenerationStatus) {
        let mut reads = self.reads.lock().expect("shared reads");
        if status == GenerationStatus::Live {
            reads.cursors.insert(key, cursor);
        } else {
            reads.cursors.remove(&key);
        }
        if let Some(lowest) = reads.cursors.values().min().copied() {
            reads.slots.retain(|s| s.after >= lowest);
        }
    }

    /// A loop ended: it holds no read back any more.
    fn forget(&self, key: Key) {
        self.reads
            .lock()
            .expect("shared reads")
            .cursors
            .remove(&key);
    }
}

/// A new read at `after`, replacing any kept there.
fn open(reads: &mut Reads, after: Cursor, limit: i64) -> Arc<Slot> {
    let slot = Arc::new(Slot {
        after,
        limit,
        started: Instant::now(),
        rows: OnceCell::new(),
    });
    reads.slots.retain(|s| s.after != after);
    reads.slots.push_back(slot.clone());
    while reads.slots.len() > KEPT_READS {
        reads.slots.pop_front();
    }
    slot
}

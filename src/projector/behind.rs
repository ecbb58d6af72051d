//! Board snapshots written behind the batches.
//!
//! A Board snapshot is put together in the database from the rows the projector wrote
//! (`snapshots::write_boards`): it aggregates every appointment of the Board, a few
//! milliseconds for a Board of hundreds. Inside a batch's transaction that time
//! delays the batch's commit and its NOTIFY, for every Board of the batch; when many
//! Boards passed a snapshot boundary together it held live Boards' frames back by
//! hundreds of milliseconds. So a loop's batch commits its documents, checkpoint and
//! NOTIFY without its Board snapshots, and they are written behind, by one writer at
//! a time, on a connection of its own:
//!
//! - The Boards due wait in [`SnapshotsBehind`] with the version and newest time of
//!   their document as the last committed batch left it: a later batch that changes
//!   one of them updates its entry, so an entry always describes the committed
//!   document (only this loop writes its generation's documents).
//! - A writer takes every Board due at once. Its transaction is `REPEATABLE READ` and
//!   takes its view of the database (its first statement) before the loop's next
//!   batch may commit: that batch waits for the view ([`Projector::snapshots_taken`]),
//!   a round trip, not for the write. So each snapshot is the document at its version
//!   whenever the write ends, with the read cursor of the last batch committed before
//!   the view (the Board has no event between its document and that cursor).
//! - While a live generation's writer runs, Boards that become due wait for the next
//!   one, started after a later commit: a snapshot may then be of a version a little
//!   past its boundary. A building generation's next writer starts when the last has
//!   ended, so a rebuild writes the snapshots a rebuild in the batches' transactions
//!   writes, byte for byte. A live generation's writer writes a Board per statement and pauses after each
//!   for as long as [`LIVE_SHARE`] asks, so a burst of snapshots (many Boards passing
//!   a boundary together) takes at most that share of a core from the appends and the
//!   batches; a building generation's (a rebuild) writes at full speed.
//! - The writer's transaction writes no events, so its id is one of the projector's
//!   own: it does not hold back the loops' reads of the log while it runs.
//! - A writer that failed before taking its view is made again before the next commit
//!   (the documents are still the ones it was given). One that fails later loses its
//!   snapshots: time travel then starts from an earlier snapshot (exact, a longer
//!   fold), as after a crash between a batch's commit and its snapshots.
//! - A loop that is caught up, or stopping, writes every Board still due and waits for
//!   it (a rebuild is swapped in with its snapshots written).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::Connection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{FirstStatement, GenerationStatus, Projector, Worker};
use crate::event_store::log::Cursor;
use crate::snapshots::{self, BoardDue};

/// The share of its time a live generation's snapshot writer may spend in its
/// statements: after each Board's statement it pauses for as long again.
pub const LIVE_SHARE: f64 = 0.5;

/// What one writer writes.
struct Job {
    /// A live generation's: a Board per statement, paced by [`LIVE_SHARE`].
    paced: bool,
    fold_version: i32,
    generation: i32,
    boards: Vec<BoardDue>,
    /// The read cursor of the last batch committed before the writer's view.
    batch_end: Cursor,
}

/// The writer under way.
struct Write {
    job: Arc<Job>,
    /// Answered once the writer's transaction has its view; `None` once that is known.
    view: Option<oneshot::Receiver<()>>,
    task: JoinHandle<Result<(), sqlx::Error>>,
}

/// A loop's Board snapshots not written yet.
#[derive(Default)]
pub(super) struct SnapshotsBehind {
    /// The Boards due and not taken by a writer, as the last committed batch left
    /// their documents.
    due: BTreeMap<Uuid, BoardDue>,
    write: Option<Write>,
}

impl Projector {
    /// After a batch committed at `batch_end`: `due`, the Boards whose snapshots it
    /// made due, join those waiting; `changed`, every Board it changed, updates the
    /// waiting ones (or takes one out that may no longer be snapshotted). A writer is
    /// started for all of them unless one is under way.
    pub(super) async fn snapshots_committed(
        &self,
        worker: &mut Worker,
        due: Vec<BoardDue>,
        changed: &[(Uuid, i64, Option<DateTime<Utc>>)],
        batch_end: Cursor,
    ) {
        let behind = &mut worker.snapshots_behind;
        for &(id, version, at) in changed {
            if let Some(entry) = behind.due.get_mut(&id) {
                match at {
                    Some(at) => {
                        entry.version = version;
                        entry.at = at;
                    }
                    None => {
                        behind.due.remove(&id);
                    }
                }
            }
        }
        for board in due {
            behind.due.insert(board.id, board);
        }
        if worker.gen.status != GenerationStatus::Live {
            // A rebuild's snapshots are each of the version that made it due, as
            // written in the batch: the last writer ends before the next starts.
            if let Some(write) = worker.snapshots_behind.write.take() {
                ended(write.task.await);
            }
        }
        self.next_writer(worker, batch_end).await;
    }

    /// Reaps the writer if it ended (its view was taken before the last commit, so
    /// this does not wait), and starts one for the Boards due if none is under way,
    /// with `batch_end` the cursor of the last batch committed.
    async fn next_writer(&self, worker: &mut Worker, batch_end: Cursor) {
        let behind = &mut worker.snapshots_behind;
        if behind.write.as_ref().is_some_and(|w| w.task.is_finished()) {
            let write = behind.write.take().expect("a write");
            ended(write.task.await);
        }
        if behind.write.is_none() && !behind.due.is_empty() {
            self.start_writer(worker, batch_end);
        }
    }

    fn start_writer(&self, worker: &mut Worker, batch_end: Cursor) {
        let behind = &mut worker.snapshots_behind;
        let job = Arc::new(Job {
            paced: worker.gen.status == GenerationStatus::Live,
            fold_version: worker.gen.projection.version(),
            generation: worker.gen.generation,
            boards: std::mem::take(&mut behind.due).into_values().collect(),
            batch_end,
        });
        behind.write = Some(self.spawn_write(job));
    }

    fn spawn_write(&self, job: Arc<Job>) -> Write {
        let (taken, view) = oneshot::channel();
        let me = self.clone();
        let task = tokio::spawn({
            let job = job.clone();
            async move { me.write_behind(&job, taken).await }
        });
        Write {
            job,
            view: Some(view),
            task,
        }
    }

    async fn write_behind(&self, job: &Job, taken: oneshot::Sender<()>) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn
            .begin_with("begin isolation level repeatable read")
            .await?;
        // The first statement takes the transaction's view and its id.
        let first = FirstStatement::plain(self.settings.async_commit).with_transaction_id();
        let xid: String = sqlx::query_scalar(first).fetch_one(&mut *tx).await?;
        let xid: u64 = xid
            .parse()
            .map_err(|e| sqlx::Error::Protocol(format!("transaction id {xid}: {e}")))?;
        let _own = self.own_xid(xid);
        let _ = taken.send(());
        self.faults.stall_snapshots().await;
        let per_statement = if job.paced { 1 } else { job.boards.len() };
        for boards in job.boards.chunks(per_statement.max(1)) {
            let started = Instant::now();
            let skipped = snapshots::write_boards_beside_other_writers(
                &mut tx,
                job.fold_version,
                job.generation,
                boards,
                job.batch_end,
            )
            .await?;
            if skipped > 0 {
                tracing::debug!(
                    skipped,
                    "Board snapshots another writer committed meanwhile were kept"
                );
            }
            if job.paced {
                tokio::time::sleep(pause_after(started.elapsed())).await;
            }
        }
        tx.commit().await
    }

    /// Waits until the writer under way (if any) has its view of the documents: the
    /// worker may then commit its next batch. A writer that failed before taking its
    /// view is made once more, here (the documents are still the ones it was given).
    pub(super) async fn snapshots_taken(
        &self,
        behind: &mut SnapshotsBehind,
    ) -> Result<(), sqlx::Error> {
        let Some(write) = behind.write.as_mut() else {
            return Ok(());
        };
        let Some(view) = write.view.take() else {
            return Ok(());
        };
        if view.await.is_ok() {
            return Ok(());
        }
        // The writer ended without a view: it failed (or was stopped) first.
        let again = self.spawn_write(write.job.clone());
        let failed = std::mem::replace(write, again);
        match failed.task.await {
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "writing Board snapshots behind failed; writing them again")
            }
            Ok(Ok(())) => {}
            Err(join) => {
                tracing::warn!(error = %join, "writing Board snapshots behind stopped; writing them again")
            }
        }
        let view = write.view.take().expect("a fresh write");
        if view.await.is_ok() {
            return Ok(());
        }
        let again = behind.write.take().expect("the write");
        Err(match again.task.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => sqlx::Error::Protocol("Board snapshots lost their view".into()),
            Err(join) => sqlx::Error::Protocol(format!("writing Board snapshots stopped: {join}")),
        })
    }

    /// The loop is caught up: a building generation's snapshots are all written before
    /// it goes on (its swap waits for them); a live one's writer is started for the
    /// Boards still due, if none is under way, without waiting for it.
    pub(super) async fn snapshots_idle(&self, worker: &mut Worker) -> Result<(), sqlx::Error> {
        if worker.gen.status != GenerationStatus::Live {
            return self.snapshots_written(worker).await;
        }
        self.snapshots_taken(&mut worker.snapshots_behind).await?;
        let cursor = worker.gen.cursor;
        self.next_writer(worker, cursor).await;
        Ok(())
    }

    /// Writes every Board snapshot still due and waits until it is written (a building
    /// generation caught up, or the loop stopping).
    pub(super) async fn snapshots_written(&self, worker: &mut Worker) -> Result<(), sqlx::Error> {
        loop {
            self.snapshots_taken(&mut worker.snapshots_behind).await?;
            if let Some(write) = worker.snapshots_behind.write.take() {
                ended(write.task.await);
            }
            if worker.snapshots_behind.due.is_empty() {
                return Ok(());
            }
            self.start_writer(worker, worker.gen.cursor);
        }
    }
}

/// How long a live writer pauses after a statement that took `took` (see
/// [`LIVE_SHARE`]).
fn pause_after(took: Duration) -> Duration {
    took.mul_f64(1.0 / LIVE_SHARE - 1.0)
}

/// A writer that had its view ended: a failure loses its snapshots (reported).
fn ended(result: Result<Result<(), sqlx::Error>, tokio::task::JoinError>) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "writing Board snapshots behind failed; time travel starts from earlier snapshots")
        }
        Err(join) => {
            tracing::warn!(error = %join, "writing Board snapshots behind stopped; time travel starts from earlier snapshots")
        }
    }
}

//! The projector's earlier schedule, kept so the bench can measure it beside the
//! loops of [`super::loops`]: every generation steps once per round (the live ones at
//! one checkpoint sharing a read, the next batch read ahead behind a full one), and a
//! round starts only when the slowest of the round has committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{watch, Notify};

use super::state::{self, Generation, GenerationStatus};
use super::{Projector, ProjectorEnd, Step, Worker};
use crate::event_store::log::Cursor;
use crate::event_store::RecordedEvent;
use crate::faults::CrashPoint;
use crate::leader::{Fence, Lease};
use crate::pacing::IdlePoll;

impl Projector {
    /// The earlier schedule: every generation steps once per round, and a round ends
    /// when the slowest has committed.
    pub(super) async fn run_lockstep(
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
            let results = self.step_all(&mut workers, lease.fence(), &mut ahead).await;
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
            if self
                .switch_caught_up(&workers.iter().map(|w| w.gen.clone()).collect::<Vec<_>>())
                .await?
            {
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

    /// Steps every generation once. Live generations whose checkpoints are at the same
    /// place (the usual case) share one read of the log, and the next batch is read
    /// while this one is written; each generation still applies the batch, moves its
    /// checkpoint and commits in a transaction of its own, concurrently with the others.
    /// A generation at another place (a rebuild, or one held back by a poison event)
    /// reads on its own.
    async fn step_all(
        &self,
        workers: &mut [Worker],
        fence: Fence,
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
                    .step_group(group, key.is_some(), fence, prefetched)
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
        fence: Fence,
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
                .map(|w| self.apply(w, fence, &rows, end, started)),
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
}

/// A batch read ahead: the events after `after`, shared by the projections at it.
struct ReadAhead {
    after: Cursor,
    /// It returned a whole batch, so more events may follow.
    full: bool,
    rows: Arc<Vec<(Cursor, RecordedEvent)>>,
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

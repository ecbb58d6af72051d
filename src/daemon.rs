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

pub use crate::daemon_config::DaemonConfig;

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

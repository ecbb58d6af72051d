//! Fault injection for tests: points where the projector stops dead as if killed, and
//! Boards the matcher fails on. The hooks exist only with the `fault-injection` cargo
//! feature, which the test build enables; in a production build [`Faults`] is empty and
//! every check is a constant `false`.

/// Points in a projector batch where a test can make it "crash" (stop dead, like a
/// killed process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The batch was read (once, for every projection at that checkpoint); nothing
    /// applied or written.
    AfterRead,
    /// The batch was read and folded in memory; nothing written.
    AfterApply,
    /// Documents written in the transaction; checkpoint not yet moved.
    BeforeCheckpoint,
    /// Checkpoint moved and NOTIFY queued; not committed.
    BeforeCommit,
    /// Committed; the worker had not yet recorded it in memory.
    AfterCommit,
}

#[cfg(feature = "fault-injection")]
pub type CrashHook = std::sync::Arc<dyn Fn(CrashPoint) -> bool + Send + Sync>;

#[cfg(feature = "fault-injection")]
pub type MatcherFault = std::sync::Arc<dyn Fn(uuid::Uuid) -> bool + Send + Sync>;

/// How long a projection's batch stalls before it commits (`None`: not at all). Asked
/// again after each stall, so a test can hold a batch for as long as it likes.
#[cfg(feature = "fault-injection")]
pub type SlowProjection = std::sync::Arc<
    dyn Fn(crate::projections::Projection) -> Option<std::time::Duration> + Send + Sync,
>;

/// How long the projector stalls before it writes a batch's Board snapshots (`None`:
/// not at all). Asked again after each stall, like [`SlowProjection`].
#[cfg(feature = "fault-injection")]
pub type SlowSnapshots = std::sync::Arc<dyn Fn() -> Option<std::time::Duration> + Send + Sync>;

/// The faults a test asked for (none by default).
#[derive(Clone, Default)]
pub struct Faults {
    /// Return true at a point to stop the projector dead there.
    #[cfg(feature = "fault-injection")]
    pub crash: Option<CrashHook>,
    /// Return true to make matching that Board fail.
    #[cfg(feature = "fault-injection")]
    pub matcher: Option<MatcherFault>,
    /// Makes a projection's batches slow (a stall inside its transaction).
    #[cfg(feature = "fault-injection")]
    pub slow: Option<SlowProjection>,
    /// Makes writing Board snapshots slow: a stall in their transaction, before the
    /// statement (asked for by a batch that writes them itself, or by the writer
    /// behind the batches right after it took its view).
    #[cfg(feature = "fault-injection")]
    pub slow_snapshots: Option<SlowSnapshots>,
}

impl Faults {
    /// Whether the projector stops dead at `point`.
    pub fn crash_at(&self, point: CrashPoint) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            self.crash.as_ref().is_some_and(|hook| hook(point))
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = point;
            false
        }
    }

    /// How long a batch of `projection` stalls before it commits.
    fn stall(&self, projection: crate::projections::Projection) -> Option<std::time::Duration> {
        #[cfg(feature = "fault-injection")]
        {
            self.slow.as_ref().and_then(|f| f(projection))
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = projection;
            None
        }
    }

    /// Stalls a batch of `projection` for as long as the test asks, in slices: the
    /// fault is asked again after each, so a test holds the batch until it lets go.
    pub async fn stall_batch(&self, projection: crate::projections::Projection) {
        stall_while(|| self.stall(projection)).await;
    }

    /// Stalls before Board snapshots are written, like [`Self::stall_batch`].
    pub async fn stall_snapshots(&self) {
        stall_while(|| self.snapshot_stall()).await;
    }

    /// How long the projector stalls before it writes a batch's Board snapshots.
    fn snapshot_stall(&self) -> Option<std::time::Duration> {
        #[cfg(feature = "fault-injection")]
        {
            self.slow_snapshots.as_ref().and_then(|f| f())
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            None
        }
    }

    /// Whether matching `board` fails.
    pub fn matcher_fails(&self, board: uuid::Uuid) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            self.matcher.as_ref().is_some_and(|f| f(board))
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = board;
            false
        }
    }
}

/// Sleeps for as long as `ask` says, asking again after each slice, until it says `None`.
async fn stall_while(ask: impl Fn() -> Option<std::time::Duration>) {
    while let Some(stall) = ask() {
        tokio::time::sleep(stall).await;
    }
}

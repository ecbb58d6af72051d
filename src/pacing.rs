//! How the log's readers (the projector and the matcher) wait: an adaptive poll while
//! idle, woken at once by a local append, and an exponential backoff after failures.

use std::time::Duration;

use tokio::sync::{watch, Notify};

/// Longest backoff after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The idle poll: 2 ms right after activity, doubling per empty poll up to `max`.
#[derive(Debug)]
pub struct IdlePoll {
    max: Duration,
    idle_polls: u32,
}

impl IdlePoll {
    pub fn new(max: Duration) -> Self {
        Self { max, idle_polls: 0 }
    }

    /// Work was found: the next wait is short again.
    pub fn reset(&mut self) {
        self.idle_polls = 0;
    }

    /// Nothing to do: sleeps for the next interval, or until `wake` is rung or
    /// `shutdown` changes.
    pub async fn wait(&mut self, wake: &Notify, shutdown: &mut watch::Receiver<bool>) {
        self.idle_polls = self.idle_polls.saturating_add(1);
        let wait =
            Duration::from_millis(2u64.saturating_pow(self.idle_polls.min(10))).min(self.max);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The delay before retry number `attempt` (1 for the first): `base`, doubling per
/// attempt, at most 30 s.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    (base * 2u32.pow(attempt.clamp(1, 8) - 1)).min(MAX_BACKOFF)
}

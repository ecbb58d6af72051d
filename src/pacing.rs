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

/// The readers the local append signal wakes, rung one after another by the daemon's
/// one task that waits for that signal.
///
/// Each reader registers the `Notify` it idles on, so a ring reaches a projection's
/// loop with no task in between; `last` readers are rung after the others, so the
/// runtime runs the last one woken next on that core (tokio's LIFO slot): the daemon
/// registers `board_view`'s live loop that way, the one whose commits subscribers wait
/// for. A reader that is gone (its `Notify` dropped) is forgotten at the next ring.
#[derive(Debug, Default)]
pub struct Wakes {
    readers: std::sync::Mutex<Vec<(bool, std::sync::Weak<Notify>)>>,
}

impl Wakes {
    /// Adds a reader, or moves one already there; `last`: rung after the others.
    pub fn register(&self, wake: &std::sync::Arc<Notify>, last: bool) {
        let mut readers = self.readers.lock().expect("wakes");
        let again = std::sync::Arc::downgrade(wake);
        readers.retain(|(_, w)| w.strong_count() > 0 && !w.ptr_eq(&again));
        readers.push((last, again));
        // Stable: the `last` ones move to the end, each group in registration order.
        readers.sort_by_key(|(last, _)| *last);
    }

    /// Rings every reader once (a reader not waiting keeps the permit for its next wait).
    pub fn ring(&self) {
        let readers: Vec<std::sync::Arc<Notify>> = {
            let mut readers = self.readers.lock().expect("wakes");
            readers.retain(|(_, w)| w.strong_count() > 0);
            readers.iter().filter_map(|(_, w)| w.upgrade()).collect()
        };
        for r in readers {
            r.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::Wakes;

    fn order(wakes: &Wakes) -> Vec<*const Notify> {
        let readers = wakes.readers.lock().unwrap();
        readers
            .iter()
            .filter_map(|(_, w)| w.upgrade())
            .map(|n| Arc::as_ptr(&n))
            .collect()
    }

    #[test]
    fn the_reader_registered_last_is_rung_after_the_others_and_moving_it_keeps_one_entry() {
        let wakes = Wakes::default();
        let (a, board, b) = (
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
        );
        wakes.register(&a, false);
        wakes.register(&board, true);
        wakes.register(&b, false);
        assert_eq!(
            order(&wakes),
            [Arc::as_ptr(&a), Arc::as_ptr(&b), Arc::as_ptr(&board)]
        );
        // Registered again (a rebuild of board_view went live): moved, not doubled.
        wakes.register(&a, true);
        assert_eq!(
            order(&wakes),
            [Arc::as_ptr(&b), Arc::as_ptr(&board), Arc::as_ptr(&a)]
        );
        drop(board);
        wakes.ring();
        assert_eq!(
            wakes.readers.lock().unwrap().len(),
            2,
            "a dropped reader is forgotten"
        );
    }

    #[tokio::test]
    async fn a_ring_reaches_a_reader_that_was_not_waiting_at_its_next_wait() {
        let wakes = Wakes::default();
        let reader = Arc::new(Notify::new());
        wakes.register(&reader, false);
        wakes.ring();
        tokio::time::timeout(Duration::from_secs(5), reader.notified())
            .await
            .expect("the ring was kept for the reader's next wait");
    }
}

//! What a request's commands have sent to the database, so that a request that runs out
//! of time never leaves its client guessing: an append under way when the time runs
//! out is seen through (dropped mid-statement, PostgreSQL might still commit it), and
//! the answer says which mutations were applied before the request was cancelled.
//!
//! The HTTP handler runs a request's execution inside [`Appends::scope`]; a command's
//! commit holds an [`InFlight`] from its first write to its commit. Commits outside a
//! scope (the matcher, the CLI, tests) are not watched.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

tokio::task_local! {
    static APPENDS: Arc<Appends>;
}

/// One request's appends: how many are under way, and the positions of those applied.
#[derive(Default)]
pub struct Appends {
    state: Mutex<State>,
    settled: Notify,
}

#[derive(Default)]
struct State {
    under_way: usize,
    applied: Vec<i64>,
}

impl Appends {
    /// Runs `work` with its commands' appends counted here.
    pub async fn scope<F: Future>(self: &Arc<Self>, work: F) -> F::Output {
        APPENDS.scope(self.clone(), work).await
    }

    /// The positions of the appends committed so far, in commit order.
    pub fn applied(&self) -> Vec<i64> {
        self.state.lock().expect("appends").applied.clone()
    }

    /// Returns once no append is under way.
    pub async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.lock().expect("appends").under_way == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Held by a commit from its first write until it knows its outcome.
pub(crate) struct InFlight(Option<Arc<Appends>>);

impl InFlight {
    /// An append starts (counted only inside a request's [`Appends::scope`]).
    pub(crate) fn start() -> Self {
        InFlight(
            APPENDS
                .try_with(|appends| {
                    appends.state.lock().expect("appends").under_way += 1;
                    appends.clone()
                })
                .ok(),
        )
    }

    /// The append committed at `position`.
    pub(crate) fn applied(self, position: i64) {
        if let Some(appends) = &self.0 {
            appends
                .state
                .lock()
                .expect("appends")
                .applied
                .push(position);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(appends) = self.0.take() {
            appends.state.lock().expect("appends").under_way -= 1;
            appends.settled.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_are_counted_inside_a_scope_only() {
        InFlight::start().applied(1);
        let appends = Arc::new(Appends::default());
        appends
            .scope(async {
                InFlight::start().applied(7);
                let failed = InFlight::start();
                drop(failed);
                InFlight::start().applied(9);
            })
            .await;
        assert_eq!(appends.applied(), vec![7, 9]);
        appends.settled().await;
    }

    #[tokio::test]
    async fn settled_waits_for_the_append_under_way() {
        let appends = Arc::new(Appends::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let work = tokio::spawn({
            let appends = appends.clone();
            async move {
                appends
                    .scope(async move {
                        let append = InFlight::start();
                        let _ = tx.send(());
                        let _ = release_rx.await;
                        append.applied(3);
                    })
                    .await
            }
        });
        rx.await.unwrap();
        let waiting = tokio::spawn({
            let appends = appends.clone();
            async move { appends.settled().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "an append is under way");
        release_tx.send(()).unwrap();
        waiting.await.unwrap();
        work.await.unwrap();
        assert_eq!(appends.applied(), vec![3]);
    }
}

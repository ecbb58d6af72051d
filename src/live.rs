//! Live Boards: the ONE `LISTEN board_changed` connection of this process, fanned out to
//! every subscriber through in-process channels keyed by Board.
//!
//! The projector sends `NOTIFY board_changed '<boardId>:<version>:<position>'` after it
//! commits. Each subscribed Board has a `watch` channel holding its newest document:
//! slow subscribers see the latest version (coalescing), never an unbounded queue.
//! PostgreSQL drops notifications sent while the listener is disconnected, so on every
//! (re)connect the listener LISTENs first, then re-reads every subscribed Board.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::domain::BoardContents;
use crate::projections::board_view::BoardChanged;
use crate::projections::read::{self, BoardCache, FollowedBoard, KeptBoard};

/// The newest known document of a Board (`None` until the projector has built it).
pub type BoardSlot = Option<Arc<BoardContents>>;

/// A followed Board: its channel, and the document last read, which the next change
/// updates with only the rows written since (refreshes of one Board take turns on it).
struct Followed {
    sender: watch::Sender<BoardSlot>,
    read: Arc<tokio::sync::Mutex<Option<FollowedBoard>>>,
    /// The Board in the shared cache, when there is one (then `read` stays empty).
    kept: Option<KeptBoard>,
}

impl Followed {
    fn new(cache: Option<&BoardCache>, board_id: Uuid) -> Self {
        Self {
            sender: watch::channel(None).0,
            read: Arc::default(),
            kept: cache.map(|c| c.keep(board_id)),
        }
    }
}

#[derive(Clone)]
pub struct LiveBoards {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// The process's kept Boards, when the fan-out shares them with queries: one copy
    /// of each Board and one read per change for both. Without it each followed Board
    /// keeps a copy of its own.
    cache: Option<BoardCache>,
    boards: Mutex<HashMap<Uuid, Followed>>,
    /// Counts listener (re)connections; tests and metrics watch it.
    connections: watch::Sender<u64>,
}

impl LiveBoards {
    /// Starts the listener task; it runs until the returned handle's owner drops every
    /// clone and the runtime shuts down.
    pub fn start(pool: PgPool) -> Self {
        Self::start_with(pool, None)
    }

    /// Like [`LiveBoards::start`], reading followed Boards through `cache` when given.
    pub fn start_with(pool: PgPool, cache: Option<BoardCache>) -> Self {
        let (connections, _) = watch::channel(0);
        let live = Self {
            inner: Arc::new(Inner {
                pool,
                cache,
                boards: Mutex::new(HashMap::new()),
                connections,
            }),
        };
        let weak = Arc::downgrade(&live.inner);
        tokio::spawn(async move {
            listen(weak).await;
        });
        live
    }

    /// How many times the listener has connected (1 after the first connection).
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.inner.connections.subscribe()
    }

    /// Follows a Board: a receiver of its newest document, primed from the database.
    pub async fn subscribe(&self, board_id: Uuid) -> anyhow::Result<watch::Receiver<BoardSlot>> {
        // Register first, then read: a change that lands in between is not lost.
        let (receiver, followed) = {
            let mut boards = self.inner.boards.lock().expect("live boards");
            let sender = &boards
                .entry(board_id)
                .or_insert_with(|| Followed::new(self.inner.cache.as_ref(), board_id))
                .sender;
            // A Board others already follow is kept current by the listener: the
            // thousandth subscriber costs no database read.
            let followed = sender.receiver_count() > 0 && sender.borrow().is_some();
            (sender.subscribe(), followed)
        };
        if !followed {
            refresh(&self.inner, board_id, None).await?;
        }
        Ok(receiver)
    }

    /// Boards with at least one subscriber.
    pub fn subscribed(&self) -> usize {
        let boards = self.inner.boards.lock().expect("live boards");
        boards
            .values()
            .filter(|f| f.sender.receiver_count() > 0)
            .count()
    }
}

/// Re-reads a Board's document and publishes it if it is newer than what subscribers
/// have. `hint` is the version a notification announced: nothing to do if already seen.
async fn refresh(inner: &Inner, board_id: Uuid, hint: Option<i64>) -> anyhow::Result<()> {
    let arrived = std::time::Instant::now();
    let (sender, read, kept) = {
        let mut boards = inner.boards.lock().expect("live boards");
        match boards.get(&board_id) {
            Some(f) if f.sender.receiver_count() == 0 => {
                boards.remove(&board_id);
                return Ok(());
            }
            Some(f) => (f.sender.clone(), f.read.clone(), f.kept.clone()),
            None => return Ok(()),
        }
    };
    let seen = |sender: &watch::Sender<BoardSlot>| match (hint, sender.borrow().as_ref()) {
        (Some(hint), Some(current)) => current.version >= hint,
        _ => false,
    };
    if seen(&sender) {
        return Ok(());
    }
    if let (Some(cache), Some(kept)) = (&inner.cache, &kept) {
        // The cache serialises reads of one Board and hands a read's result to those
        // that queued behind it.
        if let Some(contents) = cache
            .contents_of(kept, &inner.pool, board_id, arrived)
            .await?
        {
            publish(&sender, contents);
        }
        return Ok(());
    }
    let mut followed = read.lock().await;
    // Another refresh of this Board may have published it while this one waited.
    if seen(&sender) {
        return Ok(());
    }
    read::refresh_board(&inner.pool, board_id, &mut followed).await?;
    let Some(doc) = followed.as_ref().map(|f| &f.doc) else {
        return Ok(());
    };
    let published = sender.borrow().as_ref().map_or(-1, |c| c.version);
    if doc.version <= published {
        return Ok(());
    }
    let Some(contents) = doc.to_contents() else {
        return Ok(());
    };
    let contents = Arc::new(contents);
    drop(followed);
    publish(&sender, contents);
    Ok(())
}

/// Publishes `contents` if it is newer than what subscribers have.
fn publish(sender: &watch::Sender<BoardSlot>, contents: Arc<BoardContents>) {
    sender.send_if_modified(|slot| {
        let newer = slot.as_ref().is_none_or(|c| c.version < contents.version);
        if newer {
            *slot = Some(contents.clone());
        }
        newer
    });
}

/// Re-reads every subscribed Board (after a (re)connect).
async fn resync(inner: &Inner) {
    let ids: Vec<Uuid> = {
        let boards = inner.boards.lock().expect("live boards");
        boards.keys().copied().collect()
    };
    for id in ids {
        if let Err(e) = refresh(inner, id, None).await {
            tracing::warn!(board = %id, error = %e, "cannot re-read a subscribed board");
        }
    }
}

async fn listen(weak: std::sync::Weak<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        // A pool of one, of its own: the listening connection never competes with
        // request traffic, and is the only one this process listens on.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(inner.pool.connect_options().as_ref().clone());
        drop(inner);
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "board listener cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen(BoardChanged::CHANNEL).await {
            tracing::warn!(error = %e, "board listener cannot LISTEN; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        // LISTEN first, then read current state, then rely on notifications.
        let Some(inner) = weak.upgrade() else { return };
        inner.connections.send_modify(|n| *n += 1);
        resync(&inner).await;
        drop(inner);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Some(BoardChanged {
                        board_id: board,
                        version,
                        ..
                    }) = BoardChanged::decode(notification.payload())
                    {
                        if let Err(e) = refresh(&inner, board, Some(version)).await {
                            tracing::warn!(%board, error = %e, "cannot read a changed board");
                        }
                    }
                }
                Ok(None) => {
                    // The connection dropped and was re-established (LISTEN included):
                    // whatever was notified meanwhile is lost, so re-read everything.
                    let Some(inner) = weak.upgrade() else { return };
                    inner.connections.send_modify(|n| *n += 1);
                    tracing::info!("board listener reconnected; re-reading subscribed boards");
                    resync(&inner).await;
                }
                Err(e) => {
                    if weak.strong_count() == 0 {
                        // Nobody follows Boards any more: the process is shutting down.
                        return;
                    }
                    tracing::warn!(error = %e, "board listener lost its connection; reconnecting");
                    break;
                }
            }
        }
    }
}

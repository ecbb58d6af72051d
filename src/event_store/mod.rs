//! The append-only event store in PostgreSQL: reading streams and folding them.
//!
//! Every `SELECT … FROM events` of the server lives under this module. Appending lives
//! in [`append`]; the unit of work that commands use in [`unit_of_work`]; the in-order
//! read of the whole log (the `(tx, seq)` cursor below xmin) in [`log`]. The store knows
//! aggregates and events only: folding a Board's streams into a document is the
//! projections' business, on top of the reads here.

pub mod append;
mod data;
pub mod import;
pub mod in_flight;
pub mod log;
pub mod unit_of_work;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

pub use data::EventData;

use crate::domain::{Aggregate, EventContext, FoldError, StreamType};
use crate::error::{AppError, AppResult};

/// The locking read's SQL for one lock strength: a static string, so each connection
/// prepares it once and reuses it.
macro_rules! const_format_locked {
    ($lock:literal) => {
        concat!(
            "with s as materialized (select id, type, board_id, version from streams \
              where id = $1 ",
            $lock,
            ") select s.version as locked_version, e.seq, e.id, e.stream_id, \
               s.type as stream_type, s.board_id, e.version, e.type as event_type, e.data, \
               e.metadata, e.recorded_at \
              from s join events e on e.stream_id = s.id order by e.version"
        )
    };
}

/// One stored event with its envelope.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecordedEvent {
    /// Global position (the `seq` identity column).
    pub seq: i64,
    pub id: Uuid,
    pub stream_id: Uuid,
    pub stream_type: String,
    /// The Board the stream belongs to (a Board's own id for its stream).
    pub board_id: Option<Uuid>,
    pub version: i64,
    pub event_type: String,
    /// Kept as the log's JSON text; a `Value` tree on first use (`Deref`).
    pub data: EventData,
    /// Likewise: folds never read it.
    pub metadata: EventData,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    pub fn context(&self) -> EventContext {
        EventContext {
            stream_id: self.stream_id,
            version: self.version,
            at: self.recorded_at,
        }
    }
}

/// How much of a stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLimit {
    All,
    /// Events with a stream version at or below this one.
    Version(i64),
    /// Events recorded at or before this time.
    Time(DateTime<Utc>),
}

pub const EVENT_COLUMNS: &str =
    "e.seq, e.id, e.stream_id, s.type as stream_type, s.board_id, e.version, \
     e.type as event_type, e.data, e.metadata, e.recorded_at";

/// The event store: a pool plus the in-process signal the projector wakes on.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    /// Fired after every local commit that appended events, so an in-process projector
    /// wakes at once without NOTIFY in the write path.
    appended: Arc<tokio::sync::Notify>,
    /// How long a command waits for a stream's row lock (exclusive mode, and the append's
    /// own write) before answering CONFLICT.
    lock_timeout: Duration,
    /// How a command's statements are sent (see [`CommandPath`]).
    command_path: CommandPath,
    /// Open Boards as last read by a command, for [`CommandPath::Kept`].
    boards: Arc<KeptBoards>,
}

/// Open Boards as a command last read them, each at its version: what
/// [`CommandPath::Kept`] decides on instead of reading the Board again. Only the append's
/// guard makes that safe: it goes through only while the Board is still at the kept
/// version (and holds it `FOR SHARE` until commit), so a decision on a kept Board is a
/// decision on the Board as it is at commit, exactly as after a fresh read. A Board
/// that moved (closed, by this process or another) fails the guard; the command is
/// decided again on a locked read, which keeps the new state. Closed Boards are never
/// kept: a refusal is always decided on a fresh read. Bounded: past
/// [`KeptBoards::CAPACITY`] Boards the map starts again empty.
#[derive(Debug, Default)]
pub struct KeptBoards {
    boards: std::sync::Mutex<std::collections::HashMap<Uuid, crate::domain::Board>>,
}

impl KeptBoards {
    /// About 300 bytes a Board: a few megabytes at most.
    pub const CAPACITY: usize = 10_000;

    /// The kept state of `id`, if any.
    pub fn get(&self, id: Uuid) -> Option<crate::domain::Board> {
        self.lock().get(&id).cloned()
    }

    /// Keeps `board` as read, unless a newer version is kept already; forgets a Board
    /// that is no longer open.
    pub fn keep(&self, board: &crate::domain::Board) {
        let id = board.id.as_uuid();
        let mut boards = self.lock();
        if board.status != crate::domain::BoardStatus::Open {
            boards.remove(&id);
            return;
        }
        if boards
            .get(&id)
            .is_some_and(|kept| kept.version >= board.version)
        {
            return;
        }
        if boards.len() >= Self::CAPACITY && !boards.contains_key(&id) {
            boards.clear();
        }
        boards.insert(id, board.clone());
    }

    /// Forgets `id` (its guard failed: the kept version is stale).
    pub fn forget(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<Uuid, crate::domain::Board>> {
        // A panic while holding the map leaves a map of whole entries: keep using it.
        self.boards.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How a command's append is planned and sent. Both keep the same invariants (the
/// guard, the versions, all or nothing); they differ in what PostgreSQL plans per
/// command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CommandPath {
    /// The append is one general statement over arrays (any number of streams and
    /// guards). PostgreSQL plans it again for every command: its generic plan is
    /// estimated for ten rows per array, so the planner always prefers a custom plan
    /// (about 0.25 ms of planning per command, more than the statement's execution).
    General,
    /// The common shape (one new stream, at most one guard) is a statement of its own
    /// with scalar parameters, whose generic plan is reused; a command's transaction
    /// asks for generic plans (`plan_cache_mode`) in the round trip of its `BEGIN`.
    Planned,
    /// `Planned`, and an open Board a command reads under the append's guard is taken
    /// from memory at the version last read ([`KeptBoards`]): a request on an open
    /// Board is one round trip, its append. The guard checks the kept version.
    #[default]
    Kept,
}

impl EventStore {
    pub fn new(pool: PgPool, lock_timeout: Duration) -> Self {
        Self {
            pool,
            appended: Arc::new(tokio::sync::Notify::new()),
            lock_timeout,
            command_path: CommandPath::default(),
            boards: Arc::default(),
        }
    }

    /// The same store, sending commands through `path`.
    pub fn with_command_path(mut self, path: CommandPath) -> Self {
        self.command_path = path;
        self
    }

    pub fn command_path(&self) -> CommandPath {
        self.command_path
    }

    /// The open Boards this store's commands keep (see [`CommandPath::Kept`]).
    pub fn kept_boards(&self) -> &KeptBoards {
        &self.boards
    }

    /// A store that fires `appended` on commit: writers inside the projector share its
    /// wake-up signal.
    pub fn with_signal(
        pool: PgPool,
        appended: Arc<tokio::sync::Notify>,
        lock_timeout: Duration,
    ) -> Self {
        Self {
            pool,
            appended,
            lock_timeout,
            command_path: CommandPath::default(),
            boards: Arc::default(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn appended_signal(&self) -> Arc<tokio::sync::Notify> {
        self.appended.clone()
    }

    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout
    }

    /// Loads one stream's state, folded up to `limit`. `None` when the stream does not
    /// exist (or did not yet exist at that point), or is a stream of another type.
    pub async fn load<A: Aggregate>(
        &self,
        id: impl Into<Uuid>,
        limit: ReadLimit,
    ) -> AppResult<Option<A>> {
        load(&self.pool, id.into(), limit).await
    }
}

/// Reads one stream's events in version order.
pub async fn read_stream(
    conn: impl PgExecutor<'_>,
    stream_id: Uuid,
    limit: ReadLimit,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    read_stream_from(conn, stream_id, 0, limit).await
}

/// How [`read_stream_locked`] locks the stream's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLock {
    /// `FOR SHARE`: writers of the stream wait until this transaction ends.
    Share,
    /// `FOR UPDATE`: every other locker and writer of the stream waits.
    Update,
}

#[derive(sqlx::FromRow)]
struct LockedEventRow {
    locked_version: i64,
    #[sqlx(flatten)]
    event: RecordedEvent,
}

/// Locks a stream's row and reads its events, in version order, in one round trip
/// where the lock did not wait (the common case).
///
/// Inside one statement the events are read with the snapshot taken when it started,
/// but a row lock that waited for a writer returns the row as that writer committed it.
/// So the row's version is read with the lock: when the events fall short of it (a
/// write committed while the lock waited), they are read again, now that the lock is
/// held and nothing can change them. A command never decides on a stale stream.
pub async fn read_stream_locked(
    conn: &mut sqlx::PgConnection,
    stream_id: Uuid,
    lock: RowLock,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let sql = match lock {
        RowLock::Share => const_format_locked!("for share"),
        RowLock::Update => const_format_locked!("for update"),
    };
    let rows: Vec<LockedEventRow> = sqlx::query_as(sql)
        .bind(stream_id)
        .fetch_all(&mut *conn)
        .await?;
    let locked = rows.first().map(|r| r.locked_version);
    let events: Vec<RecordedEvent> = rows.into_iter().map(|r| r.event).collect();
    match locked {
        Some(version) if events.last().map(|e| e.version) != Some(version) => {
            read_stream(&mut *conn, stream_id, ReadLimit::All).await
        }
        _ => Ok(events),
    }
}

/// Reads the events of a stream with versions in `(after, upto]`, in version order.
pub async fn read_stream_between(
    conn: impl PgExecutor<'_>,
    stream_id: Uuid,
    after: i64,
    upto: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    read_stream_from(conn, stream_id, after, ReadLimit::Version(upto)).await
}

/// Reads the events of a stream after version `after`, up to `limit`, in version order.
pub async fn read_stream_from(
    conn: impl PgExecutor<'_>,
    stream_id: Uuid,
    after: i64,
    limit: ReadLimit,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let (version, time) = match limit {
        // A command's reads: a statement of its own. The general one below, with its
        // `$2 is null or ...` conditions, is estimated dearer as a generic plan than as
        // a custom one with the nulls folded away, so PostgreSQL planned it again for
        // a good part of its executions (planning cost four times the execution).
        ReadLimit::All => {
            return sqlx::query_as::<_, RecordedEvent>(&format!(
                "select {EVENT_COLUMNS} from events e join streams s on s.id = e.stream_id \
                 where e.stream_id = $1 and e.version > $2 \
                 order by e.version"
            ))
            .bind(stream_id)
            .bind(after)
            .fetch_all(conn)
            .await
        }
        ReadLimit::Version(v) => (Some(v), None),
        ReadLimit::Time(t) => (None, Some(t)),
    };
    sqlx::query_as::<_, RecordedEvent>(&format!(
        "select {EVENT_COLUMNS} from events e join streams s on s.id = e.stream_id \
         where e.stream_id = $1 and e.version > $4 \
           and ($2::bigint is null or e.version <= $2) \
           and ($3::timestamptz is null or e.recorded_at <= $3) \
         order by e.version"
    ))
    .bind(stream_id)
    .bind(version)
    .bind(time)
    .bind(after)
    .fetch_all(conn)
    .await
}

/// Every event of the given streams of one type, grouped by stream, in version order.
pub async fn read_streams_of_type(
    conn: impl PgExecutor<'_>,
    ids: &[Uuid],
    stream_type: StreamType,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {EVENT_COLUMNS} from events e join streams s on s.id = e.stream_id \
          where e.stream_id = any($1) and s.type = $2 \
          order by e.stream_id, e.version"
    ))
    .bind(ids)
    .bind(stream_type.as_str())
    .fetch_all(conn)
    .await
}

/// Reads the events of every stream that belongs to a Board (its own stream, its
/// shifts and appointments), grouped by stream and in version order within each.
pub async fn read_board_streams(
    conn: impl PgExecutor<'_>,
    board_id: Uuid,
    limit: ReadLimit,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let time = match limit {
        ReadLimit::Time(t) => Some(t),
        _ => None,
    };
    read_board_streams_where(conn, board_id, time, false).await
}

/// The Board's streams now, leaving out every appointment that is no longer waiting (a
/// waiting one has exactly one event, its request): what matching needs, at a fraction
/// of the read.
pub async fn read_board_streams_waiting(
    conn: impl PgExecutor<'_>,
    board_id: Uuid,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    read_board_streams_where(conn, board_id, None, true).await
}

async fn read_board_streams_where(
    conn: impl PgExecutor<'_>,
    board_id: Uuid,
    time: Option<DateTime<Utc>>,
    waiting_only: bool,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as::<_, RecordedEvent>(&format!(
        "select {EVENT_COLUMNS} from streams s join events e on e.stream_id = s.id \
         where s.board_id = $1 \
           and ($2::timestamptz is null or e.recorded_at <= $2) \
           and (not $3 or s.type <> 'appointment' or s.version = 1) \
         order by e.stream_id, e.version"
    ))
    .bind(board_id)
    .bind(time)
    .bind(waiting_only)
    .fetch_all(conn)
    .await
}

/// The events of a Board's streams after the read cursor `after`, recorded at or before
/// `at`, grouped by stream in version order (what follows a Board snapshot).
pub async fn read_board_streams_after(
    conn: impl PgExecutor<'_>,
    board_id: Uuid,
    after: log::Cursor,
    at: DateTime<Utc>,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {EVENT_COLUMNS} from events e join streams s on s.id = e.stream_id \
          where (e.tx, e.seq) > ($2::text::xid8, $3) and s.board_id = $1 \
            and e.recorded_at <= $4 \
          order by e.stream_id, e.version"
    ))
    .bind(board_id)
    .bind(after.tx_text())
    .bind(after.seq)
    .bind(at)
    .fetch_all(conn)
    .await
}

/// The events of a Board's streams recorded in `(from, to]`, in the order they were
/// recorded (the Board's timeline), at most `limit`.
pub async fn read_board_timeline(
    conn: impl PgExecutor<'_>,
    board_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {EVENT_COLUMNS} from streams s join events e on e.stream_id = s.id \
          where s.board_id = $1 and e.recorded_at > $2 and e.recorded_at <= $3 \
          order by e.recorded_at, e.seq limit $4"
    ))
    .bind(board_id)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Decodes a stored event and applies it to an aggregate state: the one step every
/// fold (stream loads, the projections, time travel) is made of.
pub fn decode_apply<A: Aggregate>(state: Option<A>, e: &RecordedEvent) -> Result<A, FoldError> {
    A::apply(state, &decode_recorded::<A>(e)?, &e.context())
}

/// [`decode_apply`] onto a state held in place (a document's slot for the stream):
/// no copy of the state per event. On error the slot is unchanged.
pub fn decode_apply_in_place<A: Aggregate>(
    slot: &mut Option<A>,
    e: &RecordedEvent,
) -> Result<(), FoldError> {
    let event = decode_recorded::<A>(e)?;
    match slot {
        Some(state) => A::apply_in_place(state, &event, &e.context()),
        None => {
            *slot = Some(A::apply(None, &event, &e.context())?);
            Ok(())
        }
    }
}

/// Decodes a stored event into its aggregate's event type.
pub fn decode_recorded<A: Aggregate>(e: &RecordedEvent) -> Result<A::Event, FoldError> {
    e.data
        .decode::<A::Event>(&e.event_type)
        .map_err(|reason| FoldError {
            event: e.event_type.clone(),
            version: e.version,
            reason,
        })
}

/// Decodes and folds a stream's events into its aggregate.
pub fn fold_recorded<A: Aggregate>(events: &[RecordedEvent]) -> AppResult<Option<A>> {
    let mut state: Option<A> = None;
    for e in events {
        if e.stream_type != A::STREAM_TYPE.as_str() {
            return Ok(None);
        }
        state =
            Some(decode_apply(state, e).map_err(|err| {
                AppError::Internal(anyhow::anyhow!("stream {}: {err}", e.stream_id))
            })?);
    }
    Ok(state)
}

/// Loads a stream's state through any executor (pool or transaction).
pub async fn load<A: Aggregate>(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    limit: ReadLimit,
) -> AppResult<Option<A>> {
    let events = read_stream(conn, id, limit).await?;
    fold_recorded::<A>(&events)
}

/// Which events the audit log query returns.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub stream_id: Option<Uuid>,
    pub board_id: Option<Uuid>,
    /// Only events after this global position.
    pub after: i64,
    pub types: Option<Vec<String>>,
    pub limit: i64,
}

/// The event log in global-position order, filtered. For audit and debugging: it is
/// not the projector's read (which must order by transaction, see the projector).
pub async fn read_log(
    conn: impl PgExecutor<'_>,
    filter: &LogFilter,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as::<_, RecordedEvent>(&format!(
        "select {EVENT_COLUMNS} from events e join streams s on s.id = e.stream_id \
         where ($1::uuid is null or e.stream_id = $1) \
           and ($2::uuid is null or s.board_id = $2) \
           and e.seq > $3 \
           and ($4::text[] is null or e.type = any($4)) \
         order by e.seq limit $5"
    ))
    .bind(filter.stream_id)
    .bind(filter.board_id)
    .bind(filter.after)
    .bind(&filter.types)
    .bind(filter.limit)
    .fetch_all(conn)
    .await
}

/// Providers in registration order after `after` (a registration position), with the
/// position of each registration as its cursor.
pub async fn list_providers(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> AppResult<Vec<(i64, crate::domain::Provider)>> {
    let events = sqlx::query_as::<_, RecordedEvent>(&format!(
        "with page as ( \
             select e.stream_id, e.seq from events e join streams s on s.id = e.stream_id \
              where s.type = 'provider' and e.version = 1 and e.seq > $1 \
              order by e.seq limit $2) \
         select {EVENT_COLUMNS} from page p \
           join events e on e.stream_id = p.stream_id \
           join streams s on s.id = e.stream_id \
          order by p.seq, e.version"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for chunk in events.chunk_by(|a, b| a.stream_id == b.stream_id) {
        if let Some(provider) = fold_recorded::<crate::domain::Provider>(chunk)? {
            out.push((chunk[0].seq, provider));
        }
    }
    Ok(out)
}

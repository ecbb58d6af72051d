//! Appending events: one conditional stream update plus the event inserts per stream,
//! any number of streams in the caller's transaction, all or nothing.
//!
//! No NOTIFY here and no global counter row: ordering comes from the identity column,
//! and the projector learns of new events by polling and the in-process signal.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::CommandPath;
use crate::domain::{DomainEvent, EventContext, StreamType};
use crate::error::{AppError, AppResult};

/// Events to append to one stream, and the version the caller based them on.
#[derive(Debug, Clone)]
pub struct StreamWrite {
    pub stream_id: Uuid,
    pub stream_type: StreamType,
    pub board_id: Option<Uuid>,
    /// The stream's version the decision was made on; 0 creates the stream.
    pub expected_version: i64,
    /// `(type, data)` pairs in order.
    pub events: Vec<(String, Value)>,
}

impl StreamWrite {
    pub fn new<E: DomainEvent>(
        stream_type: StreamType,
        stream_id: Uuid,
        board_id: Option<Uuid>,
        expected_version: i64,
        events: &[E],
    ) -> Self {
        Self {
            stream_id,
            stream_type,
            board_id,
            expected_version,
            events: events
                .iter()
                .map(|e| (e.event_type().to_string(), e.encode()))
                .collect(),
        }
    }
}

/// What an append wrote: per event its envelope facts, and the last global position.
#[derive(Debug, Clone)]
pub struct Appended {
    pub position: i64,
    /// Envelope facts of every appended event, in the order given.
    pub contexts: Vec<EventContext>,
    /// Each written stream's new version.
    pub versions: Vec<(Uuid, i64)>,
}

impl Appended {
    /// The envelope facts of one stream's appended events.
    pub fn contexts_of(&self, stream_id: Uuid) -> Vec<EventContext> {
        self.contexts
            .iter()
            .filter(|c| c.stream_id == stream_id)
            .copied()
            .collect()
    }
}

/// A stream the command read without locking it and decided on: the append goes
/// through only while the stream is still at `version`, and holds its row `FOR SHARE`
/// until the append commits (what a locked read would have held since the read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadGuard {
    pub stream_id: Uuid,
    pub version: i64,
}

/// Why a guarded append wrote nothing.
#[derive(Debug)]
pub enum AppendError {
    /// A guarded stream moved since it was read, or its row is locked by a writer right
    /// now: nothing was written; decide again on a locked read.
    GuardMoved,
    Failed(AppError),
}

impl From<AppError> for AppendError {
    fn from(e: AppError) -> Self {
        AppendError::Failed(e)
    }
}

/// Appends to every stream in `writes` inside the caller's transaction. A stream whose
/// version moved since `expected_version` makes the whole append fail with `Conflict`.
pub async fn append(
    conn: &mut PgConnection,
    writes: &[StreamWrite],
    metadata: &Value,
) -> AppResult<Appended> {
    match append_via(conn, writes, &[], metadata, CommandPath::General, None).await {
        Ok(appended) => Ok(appended),
        Err(AppendError::Failed(e)) => Err(e),
        Err(AppendError::GuardMoved) => Err(AppError::Internal(anyhow::anyhow!(
            "an append without guards reported a moved guard"
        ))),
    }
}

/// The one statement of an append: the guards locked `FOR SHARE` and compared (without
/// waiting: a guard locked by a writer counts as moved), new streams inserted, the
/// version-checked updates of existing ones, and every event, all conditioned on the
/// guards. Data-modifying CTEs all run, in one snapshot; the events' foreign key is
/// checked at the end of the statement, when the new stream rows exist.
///
/// `$14`, when not null, is the lock timeout for the rest of the statement's
/// transaction (`set_config(.., true)`): on its own (autocommit) the statement is its
/// transaction, so a wait on another writer's uncommitted row (a stream created with the
/// same id) ends after that bound, as in a command's explicit transaction, without a
/// round trip of its own. It is set in `held`, which every write reads first.
const APPEND_SQL: &str = "\
with guard as materialized ( \
    select s.id from streams s \
      join unnest($11::uuid[], $12::bigint[]) as g(id, version) \
        on s.id = g.id and s.version = g.version \
       for share of s nowait), \
 held as (select set_config('lock_timeout', coalesce($14, current_setting('lock_timeout')), true) \
                   is not null \
               and count(*) = cardinality($11::uuid[]) as ok from guard), \
 w as (select * from unnest($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], $5::bigint[]) \
          as w(id, type, board_id, expected, new_version)), \
 created as ( \
    insert into streams (id, type, board_id, version) \
    select w.id, w.type, w.board_id, w.new_version from w, held \
     where w.expected = 0 and held.ok \
    returning id), \
 moved as ( \
    update streams s set version = w.new_version, updated_at = clock_timestamp() \
      from w, held \
     where held.ok and w.expected > 0 and s.id = w.id and s.version = w.expected \
    returning s.id) \
insert into events (id, stream_id, version, type, data, metadata) \
select e.id, e.stream_id, e.version, e.type, e.data, $10 \
  from unnest($6::uuid[], $7::uuid[], $8::bigint[], $9::text[], $13::jsonb[]) \
       as e(id, stream_id, version, type, data), held \
 where held.ok \
   and (select count(*) from moved) = (select count(*) from w where w.expected > 0) \
returning seq, stream_id, version, recorded_at";

/// The common shape of [`APPEND_SQL`], one new stream and its events on at most one
/// guard, with the stream and the guard as scalar parameters: its generic plan costs
/// what a custom plan does, so PostgreSQL plans it once per connection and reuses the
/// plan (the general statement's arrays make it plan every execution again). Without
/// a guard, `$1` is null and the guard holds. `$12`: the lock timeout, as `$14` of
/// [`APPEND_SQL`].
const CREATE_ONE_SQL: &str = "\
with guard as materialized ( \
    select id from streams where id = $1 and version = $2 for share nowait), \
 held as (select set_config('lock_timeout', coalesce($12, current_setting('lock_timeout')), true) \
                   is not null \
               and ($1::uuid is null or exists (select from guard)) as ok), \
 created as ( \
    insert into streams (id, type, board_id, version) \
    select $3, $4, $5, $6 from held where held.ok \
    returning id) \
insert into events (id, stream_id, version, type, data, metadata) \
select e.id, c.id, e.version, e.type, e.data, $7 \
  from created c, unnest($8::uuid[], $9::bigint[], $10::text[], $11::jsonb[]) \
       as e(id, version, type, data) \
returning seq, stream_id, version, recorded_at";

/// Appends to every stream in `writes`, in ONE statement, provided every stream in
/// `guards` is still at its version. Inside a transaction, or on its own (autocommit):
/// when the guards or a version check fail, the statement writes nothing at all.
pub async fn append_guarded(
    conn: &mut PgConnection,
    writes: &[StreamWrite],
    guards: &[ReadGuard],
    metadata: &Value,
) -> Result<Appended, AppendError> {
    append_via(conn, writes, guards, metadata, CommandPath::General, None).await
}

/// [`append_guarded`] through `path`: with [`CommandPath::Planned`] (or `Kept`), a write of the
/// common shape (one new stream, at most one guard) takes [`CREATE_ONE_SQL`].
/// `lock_timeout`: how long the statement may wait for a row lock (an autocommit append
/// has no transaction that set it); `None` keeps the session's or transaction's setting.
pub async fn append_via(
    conn: &mut PgConnection,
    writes: &[StreamWrite],
    guards: &[ReadGuard],
    metadata: &Value,
    path: CommandPath,
    lock_timeout: Option<Duration>,
) -> Result<Appended, AppendError> {
    let lock_timeout = lock_timeout.map(|t| format!("{}ms", t.as_millis().max(1)));
    let writes: Vec<&StreamWrite> = writes.iter().filter(|w| !w.events.is_empty()).collect();
    let mut ids = Vec::new();
    let mut stream_ids = Vec::new();
    let mut versions = Vec::new();
    let mut types = Vec::new();
    let mut datas = Vec::new();
    let mut new_versions = Vec::new();
    for w in &writes {
        let new_version = w.expected_version + w.events.len() as i64;
        for (i, (event_type, data)) in w.events.iter().enumerate() {
            ids.push(Uuid::now_v7());
            stream_ids.push(w.stream_id);
            versions.push(w.expected_version + 1 + i as i64);
            types.push(event_type.as_str());
            datas.push(data);
        }
        new_versions.push((w.stream_id, new_version));
    }
    if ids.is_empty() {
        return Err(AppError::Internal(anyhow::anyhow!("append called without events")).into());
    }
    let w_ids: Vec<Uuid> = writes.iter().map(|w| w.stream_id).collect();
    let w_types: Vec<&str> = writes.iter().map(|w| w.stream_type.as_str()).collect();
    let w_boards: Vec<Option<Uuid>> = writes.iter().map(|w| w.board_id).collect();
    let w_expected: Vec<i64> = writes.iter().map(|w| w.expected_version).collect();
    let w_new: Vec<i64> = new_versions.iter().map(|(_, v)| *v).collect();
    let g_ids: Vec<Uuid> = guards.iter().map(|g| g.stream_id).collect();
    let g_versions: Vec<i64> = guards.iter().map(|g| g.version).collect();
    let create_one = path != CommandPath::General
        && writes.len() == 1
        && writes[0].expected_version == 0
        && guards.len() <= 1;
    let query = if create_one {
        let w = writes[0];
        sqlx::query_as(CREATE_ONE_SQL)
            .bind(guards.first().map(|g| g.stream_id))
            .bind(guards.first().map(|g| g.version))
            .bind(w.stream_id)
            .bind(w.stream_type.as_str())
            .bind(w.board_id)
            .bind(w_new[0])
            .bind(metadata)
            .bind(&ids)
            .bind(&versions)
            .bind(&types)
            .bind(&datas)
            .bind(&lock_timeout)
    } else {
        sqlx::query_as(APPEND_SQL)
            .bind(&w_ids)
            .bind(&w_types)
            .bind(&w_boards)
            .bind(&w_expected)
            .bind(&w_new)
            .bind(&ids)
            .bind(&stream_ids)
            .bind(&versions)
            .bind(&types)
            .bind(metadata)
            .bind(&g_ids)
            .bind(&g_versions)
            .bind(&datas)
            .bind(&lock_timeout)
    };
    let rows: Vec<(i64, Uuid, i64, DateTime<Utc>)> =
        query.fetch_all(&mut *conn).await.map_err(|e| match &e {
            // NOWAIT on a guard: a writer holds the row. (The lock timeout shares the
            // code; its message names it, and it is answered below.)
            sqlx::Error::Database(db)
                if db.code().as_deref() == Some("55P03")
                    && !guards.is_empty()
                    && !db.message().contains("lock timeout") =>
            {
                AppendError::GuardMoved
            }
            // The lock timeout, waiting on a stream's row (or its key: a stream of the
            // same id another writer created and has not committed yet).
            sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => {
                AppendError::Failed(AppError::Conflict(
                    "timed out waiting for another command on the same stream; retry".into(),
                ))
            }
            e if crate::postgres::collided(e) => AppendError::Failed(AppError::Conflict(
                "concurrent commands collided; retry".into(),
            )),
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                // The key in the message's detail names the stream (ids only): a stream
                // to be created that exists, or a version another writer took.
                let detail = db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| pg.detail())
                    .unwrap_or_default();
                let named = writes
                    .iter()
                    .find(|w| detail.contains(&w.stream_id.to_string()));
                AppendError::Failed(AppError::Conflict(match named {
                    Some(w) if w.expected_version == 0 => {
                        format!("{} {} already exists", w.stream_type.noun(), w.stream_id)
                    }
                    Some(w) => format!(
                        "{} {} was changed concurrently (expected version {}); reload and retry",
                        w.stream_type.noun(),
                        w.stream_id,
                        w.expected_version
                    ),
                    None => "a stream was changed concurrently; reload and retry".into(),
                }))
            }
            _ => AppendError::Failed(AppError::from(e)),
        })?;
    if rows.is_empty() {
        // Either a guard moved (nothing was written), or an update's version check
        // failed (the caller's transaction must roll back the rows the statement did
        // write): the streams as they are now tell which.
        let mut look: Vec<Uuid> = g_ids.clone();
        look.extend(
            writes
                .iter()
                .filter(|w| w.expected_version > 0)
                .map(|w| w.stream_id),
        );
        let now: Vec<(Uuid, i64)> =
            sqlx::query_as("select id, version from streams where id = any($1)")
                .bind(&look)
                .fetch_all(&mut *conn)
                .await
                .map_err(AppError::from)?;
        let version_of = |id: Uuid| now.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
        if guards
            .iter()
            .any(|g| version_of(g.stream_id) != Some(g.version))
        {
            return Err(AppendError::GuardMoved);
        }
        // Updates that went through are at their new version; the one that did not is
        // the stream that moved.
        let moved = writes
            .iter()
            .zip(&w_new)
            .find(|(w, new)| w.expected_version > 0 && version_of(w.stream_id) != Some(**new))
            .map(|(w, _)| *w)
            .unwrap_or(writes[0]);
        return Err(AppError::Conflict(format!(
            "{} {} was changed concurrently (expected version {}); reload and retry",
            moved.stream_type.noun(),
            moved.stream_id,
            moved.expected_version
        ))
        .into());
    }

    let position = rows.iter().map(|r| r.0).max().unwrap_or(0);
    let mut contexts: Vec<EventContext> = rows
        .iter()
        .map(|(_, stream_id, version, at)| EventContext {
            stream_id: *stream_id,
            version: *version,
            at: *at,
        })
        .collect();
    contexts.sort_by_key(|c| (c.stream_id, c.version));
    Ok(Appended {
        position,
        contexts,
        versions: new_versions,
    })
}

//! Appending events: one conditional stream update plus the event inserts per stream,
//! any number of streams in the caller's transaction, all or nothing.
//!
//! No NOTIFY here and no global counter row: ordering comes from the identity column,
//! and the projector learns of new events by polling and the in-process signal.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

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

/// The stream half of [`APPEND`]'s parameters.
#[derive(Default)]
struct StreamColumns {
    ids: Vec<Uuid>,
    types: Vec<&'static str>,
    boards: Vec<Option<Uuid>>,
    expected: Vec<i64>,
    new_versions: Vec<i64>,
}

fn conflict_from(e: sqlx::Error, what: impl FnOnce() -> String) -> AppError {
    if let sqlx::Error::Database(db) = &e {
        if db.code().as_deref() == Some("23505") {
            return AppError::Conflict(what());
        }
    }
    AppError::from(e)
}

/// One statement for the whole append: stream rows created (expected version 0) or
/// moved forward only from the expected version, and the events inserted only when
/// every stream passed. It returns the inserted events, or else a row with a null
/// position for each stream that did not pass.
const APPEND: &str = "\
with w as ( \
  select * from unnest($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], $5::bigint[]) \
    as w(stream_id, type, board_id, expected, new_version)), \
created as ( \
  insert into streams (id, type, board_id, version) \
  select stream_id, type, board_id, new_version from w where expected = 0 \
  on conflict (id) do nothing returning id), \
moved as ( \
  update streams s set version = w.new_version, updated_at = clock_timestamp() \
    from w where w.expected > 0 and s.id = w.stream_id and s.version = w.expected \
  returning s.id), \
passed as (select id from created union all select id from moved), \
inserted as ( \
  insert into events (id, stream_id, version, type, data, metadata) \
  select id, stream_id, version, type, data, $11 \
    from unnest($6::uuid[], $7::uuid[], $8::bigint[], $9::text[], $10::jsonb[]) \
         as t(id, stream_id, version, type, data) \
   where (select count(*) from passed) = cardinality($1::uuid[]) \
  returning seq, stream_id, version, recorded_at) \
select seq, stream_id, version, recorded_at from inserted \
union all \
select null, w.stream_id, null, null from w where w.stream_id not in (select id from passed)";

/// Appends to every stream in `writes` inside the caller's transaction, in one round
/// trip. A stream whose version moved since `expected_version` (or that exists when it
/// is to be created) makes the whole append fail with `Conflict`; the caller's
/// transaction then rolls back whatever the statement did write.
pub async fn append(
    conn: &mut PgConnection,
    writes: &[StreamWrite],
    metadata: &Value,
) -> AppResult<Appended> {
    let writes: Vec<&StreamWrite> = writes.iter().filter(|w| !w.events.is_empty()).collect();
    let mut streams = StreamColumns::default();
    let mut ids = Vec::new();
    let mut stream_ids = Vec::new();
    let mut versions = Vec::new();
    let mut types = Vec::new();
    let mut datas = Vec::new();
    let mut new_versions = Vec::new();
    for w in &writes {
        let new_version = w.expected_version + w.events.len() as i64;
        streams.ids.push(w.stream_id);
        streams.types.push(w.stream_type.as_str());
        streams.boards.push(w.board_id);
        streams.expected.push(w.expected_version);
        streams.new_versions.push(new_version);
        for (i, (event_type, data)) in w.events.iter().enumerate() {
            ids.push(Uuid::now_v7());
            stream_ids.push(w.stream_id);
            versions.push(w.expected_version + 1 + i as i64);
            types.push(event_type.clone());
            datas.push(data.clone());
        }
        new_versions.push((w.stream_id, new_version));
    }
    if ids.is_empty() {
        return Err(AppError::Internal(anyhow::anyhow!(
            "append called without events"
        )));
    }
    type AppendRow = (Option<i64>, Uuid, Option<i64>, Option<DateTime<Utc>>);
    let returned: Vec<AppendRow> = sqlx::query_as(APPEND)
        .bind(&streams.ids)
        .bind(&streams.types)
        .bind(&streams.boards)
        .bind(&streams.expected)
        .bind(&streams.new_versions)
        .bind(&ids)
        .bind(&stream_ids)
        .bind(&versions)
        .bind(&types)
        .bind(&datas)
        .bind(metadata)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| {
            conflict_from(e, || {
                "a stream was changed concurrently; reload and retry".into()
            })
        })?;
    let mut rows = Vec::with_capacity(returned.len());
    for (seq, stream_id, version, at) in returned {
        match (seq, version, at) {
            (Some(seq), Some(version), Some(at)) => rows.push((seq, stream_id, version, at)),
            _ => {
                let w = writes
                    .iter()
                    .find(|w| w.stream_id == stream_id)
                    .expect("a refused stream is one of the writes");
                return Err(AppError::Conflict(if w.expected_version == 0 {
                    format!("{} {} already exists", w.stream_type.noun(), w.stream_id)
                } else {
                    format!(
                        "{} {} was changed concurrently (expected version {}); reload and retry",
                        w.stream_type.noun(),
                        w.stream_id,
                        w.expected_version
                    )
                }));
            }
        }
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

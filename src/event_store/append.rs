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

fn conflict_from(e: sqlx::Error, what: impl FnOnce() -> String) -> AppError {
    if let sqlx::Error::Database(db) = &e {
        if db.code().as_deref() == Some("23505") {
            return AppError::Conflict(what());
        }
    }
    AppError::from(e)
}

/// Appends to every stream in `writes` inside the caller's transaction. A stream whose
/// version moved since `expected_version` makes the whole append fail with `Conflict`.
pub async fn append(
    conn: &mut PgConnection,
    writes: &[StreamWrite],
    metadata: &Value,
) -> AppResult<Appended> {
    let mut ids = Vec::new();
    let mut stream_ids = Vec::new();
    let mut versions = Vec::new();
    let mut types = Vec::new();
    let mut datas = Vec::new();
    let mut new_versions = Vec::new();
    for w in writes.iter().filter(|w| !w.events.is_empty()) {
        let new_version = w.expected_version + w.events.len() as i64;
        if w.expected_version == 0 {
            sqlx::query(
                "insert into streams (id, type, board_id, version) values ($1, $2, $3, $4)",
            )
            .bind(w.stream_id)
            .bind(w.stream_type.as_str())
            .bind(w.board_id)
            .bind(new_version)
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                conflict_from(e, || {
                    format!("{} {} already exists", w.stream_type.noun(), w.stream_id)
                })
            })?;
        } else {
            let updated = sqlx::query(
                "update streams set version = $3, updated_at = clock_timestamp() \
                 where id = $1 and version = $2",
            )
            .bind(w.stream_id)
            .bind(w.expected_version)
            .bind(new_version)
            .execute(&mut *conn)
            .await?;
            if updated.rows_affected() != 1 {
                return Err(AppError::Conflict(format!(
                    "{} {} was changed concurrently (expected version {}); reload and retry",
                    w.stream_type.noun(),
                    w.stream_id,
                    w.expected_version
                )));
            }
        }
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
    let rows: Vec<(i64, Uuid, i64, DateTime<Utc>)> = sqlx::query_as(
        "insert into events (id, stream_id, version, type, data, metadata) \
         select id, stream_id, version, type, data, $6 \
           from unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::jsonb[]) \
                as t(id, stream_id, version, type, data) \
         returning seq, stream_id, version, recorded_at",
    )
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

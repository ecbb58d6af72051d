//! Importing history: the one write path that sets `recorded_at` (and event ids).
//!
//! Commands always record the database clock. Importing is for history made
//! elsewhere — the demo's simulated day — where every event already has its time. The
//! whole import is one transaction: all of it or nothing, new streams only (a stream
//! that exists makes it fail), versions contiguous from 1, times never going backwards
//! in the order given. The projector then picks the events up like any other append,
//! and `asOf` sees them at their recorded times.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::StreamType;
use crate::error::{AppError, AppResult};

/// One event to import, with its envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportEvent {
    pub id: Uuid,
    pub stream_id: Uuid,
    pub stream_type: StreamType,
    pub board_id: Option<Uuid>,
    pub version: i64,
    pub event_type: String,
    pub data: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

/// What an import wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub streams: usize,
    pub events: usize,
    /// Global position of the last event written.
    pub position: i64,
}

/// Rows per insert statement.
const CHUNK: usize = 2000;

pub async fn import(pool: &PgPool, events: &[ImportEvent]) -> AppResult<Imported> {
    let streams = check(events)?;
    let mut tx = pool.begin().await?;
    let ids: Vec<Uuid> = streams.iter().map(|s| s.0).collect();
    let existing: Option<Uuid> =
        sqlx::query_scalar("select id from streams where id = any($1) limit 1")
            .bind(&ids)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(id) = existing {
        return Err(AppError::Conflict(format!(
            "stream {id} already exists: this history was imported before"
        )));
    }
    for chunk in streams.chunks(CHUNK) {
        sqlx::query(
            "insert into streams (id, type, board_id, version, created_at, updated_at) \
             select * from unnest($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], \
                                  $5::timestamptz[], $6::timestamptz[])",
        )
        .bind(chunk.iter().map(|s| s.0).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.1.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.2).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.3).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.4).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.5).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    let mut position = 0;
    for chunk in events.chunks(CHUNK) {
        // `with ordinality` keeps the given order in `seq`.
        let last: Option<i64> = sqlx::query_scalar(
            "with rows as ( \
                 insert into events (id, stream_id, version, type, data, metadata, recorded_at) \
                 select id, stream_id, version, type, data, metadata, recorded_at \
                   from unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::jsonb[], \
                               $6::jsonb[], $7::timestamptz[]) with ordinality \
                        as t(id, stream_id, version, type, data, metadata, recorded_at, n) \
                  order by n \
                 returning seq) \
             select max(seq) from rows",
        )
        .bind(chunk.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.stream_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.version).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|e| e.data.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.metadata.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.recorded_at).collect::<Vec<_>>())
        .fetch_one(&mut *tx)
        .await?;
        position = last.unwrap_or(position);
    }
    tx.commit().await?;
    Ok(Imported {
        streams: streams.len(),
        events: events.len(),
        position,
    })
}

type StreamRow = (
    Uuid,
    StreamType,
    Option<Uuid>,
    i64,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// Validates the batch; returns one row per stream: (id, type, board, version, first
/// and last event time).
fn check(events: &[ImportEvent]) -> AppResult<Vec<StreamRow>> {
    let mut streams: HashMap<Uuid, usize> = HashMap::new();
    let mut rows: Vec<StreamRow> = Vec::new();
    let mut last_time: Option<DateTime<Utc>> = None;
    for e in events {
        if last_time.is_some_and(|t| e.recorded_at < t) {
            return Err(AppError::validation(format!(
                "event {} goes back in time: import events in the order they happened",
                e.id
            )));
        }
        last_time = Some(e.recorded_at);
        match streams.get(&e.stream_id) {
            None => {
                if e.version != 1 {
                    return Err(AppError::validation(format!(
                        "stream {} starts at version {}, not 1",
                        e.stream_id, e.version
                    )));
                }
                streams.insert(e.stream_id, rows.len());
                rows.push((
                    e.stream_id,
                    e.stream_type,
                    e.board_id,
                    1,
                    e.recorded_at,
                    e.recorded_at,
                ));
            }
            Some(&i) => {
                let row = &mut rows[i];
                if row.1 != e.stream_type || e.version != row.3 + 1 {
                    return Err(AppError::validation(format!(
                        "stream {}: event {} is not the next version ({} after {})",
                        e.stream_id, e.id, e.version, row.3
                    )));
                }
                row.3 = e.version;
                row.5 = e.recorded_at;
            }
        }
    }
    Ok(rows)
}

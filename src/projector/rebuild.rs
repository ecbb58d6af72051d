//! A side-by-side rebuild's own read of the log.
//!
//! A rebuild reads the whole log in large batches (the next read ahead while the
//! current batch is written, see `loops`). The live loops' shared read returns every
//! column of an event joined to its stream's row, `metadata` included, which no fold
//! reads. A rebuild's read ([`read_for_fold`]) leaves `metadata` out (the event's
//! `metadata` is an empty object) and reads the events alone, then each stream's type
//! and Board once per batch (a stream's `type` and `board_id` are written once, when
//! it is created, in the transaction of its first event): the join's per-event lookup,
//! half of the read's time in PostgreSQL, becomes one lookup per stream. It has the
//! same bound and order as [`crate::event_store::log::read_after_excluding`], so it
//! returns exactly the events, in the order, the shared read would.
//!
//! Documents and snapshots are written to the building generation only, as before: a
//! crash mid-rebuild leaves the live generation's documents as they were, and the
//! rebuild resumes from its own checkpoint.
//!
//! Board snapshots behind ([`pipeline_snapshots`], on by default: measured faster on
//! an idle machine, where the second core is free, and no slower on a busy one): a
//! building generation's batch commits its documents and checkpoint without its Board
//! snapshots, which are written behind it while the next batch is folded and written
//! (see [`super::behind`]; a live generation's are too, by
//! [`crate::daemon::DaemonConfig::live_snapshots_behind`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::Projector;
use crate::event_store::log::{read_after_excluding_columns, read_excluding_sql, Cursor};
use crate::event_store::{EventData, RecordedEvent};
use crate::metrics::ProjectorStage;

/// How a rebuild reads the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildRead {
    /// As the live loops read: every column, joined to the streams.
    Shared,
    /// Without `metadata`, still joined.
    Lean,
    /// Without `metadata`, the events alone, each stream looked up once per batch
    /// (the default).
    Unjoined,
}

static READ: AtomicU8 = AtomicU8::new(RebuildRead::Unjoined as u8);

/// Selects how rebuilds read the log, for the whole process (the benchmark's
/// before/after rounds).
pub fn select_read(read: RebuildRead) {
    READ.store(read as u8, Ordering::Relaxed);
}

/// The read [`select_read`] chose.
pub fn selected_read() -> RebuildRead {
    match READ.load(Ordering::Relaxed) {
        0 => RebuildRead::Shared,
        1 => RebuildRead::Lean,
        _ => RebuildRead::Unjoined,
    }
}

/// The columns a fold reads: [`crate::event_store::EVENT_COLUMNS`] with `metadata` an
/// empty object.
const FOLD_COLUMNS: &str =
    "e.seq, e.id, e.stream_id, s.type as stream_type, s.board_id, e.version, \
     e.type as event_type, e.data, '{}'::jsonb as metadata, e.recorded_at";

/// [`crate::event_store::log::read_after_excluding`] with only the columns a fold
/// reads, still joined to the streams (the `lean` read).
pub async fn read_for_fold_joined(
    conn: impl PgExecutor<'_>,
    after: Cursor,
    limit: i64,
    own: &[u64],
) -> Result<Vec<(Cursor, RecordedEvent)>, sqlx::Error> {
    read_after_excluding_columns(conn, FOLD_COLUMNS, after, limit, own).await
}

#[derive(sqlx::FromRow)]
struct EventRow {
    tx: String,
    seq: i64,
    id: Uuid,
    stream_id: Uuid,
    version: i64,
    event_type: String,
    data: EventData,
    recorded_at: DateTime<Utc>,
}

/// The events after `after` in `(tx, seq)` order, below the oldest running transaction
/// that is not one of `own` (the projector's, which write no events): the rows
/// [`crate::event_store::log::read_after_excluding`] returns, with `metadata` an empty
/// object. The events are read alone; their streams' type and Board in one more
/// statement, once per stream in the batch.
pub async fn read_for_fold(
    pool: &PgPool,
    after: Cursor,
    limit: i64,
    own: &[u64],
) -> Result<Vec<(Cursor, RecordedEvent)>, sqlx::Error> {
    let own: Vec<String> = own.iter().map(u64::to_string).collect();
    let rows: Vec<EventRow> = sqlx::query_as(read_excluding_sql(
        "e.seq, e.id, e.stream_id, e.version, e.type as event_type, e.data, e.recorded_at",
        "events e",
    ))
    .bind(after.tx_text())
    .bind(after.seq)
    .bind(limit)
    .bind(&own)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<Uuid> = rows.iter().map(|r| r.stream_id).collect();
    ids.sort_unstable();
    ids.dedup();
    // Committed with (or before) the events above, and never changed since.
    let streams: HashMap<Uuid, (String, Option<Uuid>)> =
        sqlx::query_as::<_, (Uuid, String, Option<Uuid>)>(
            "select id, type, board_id from streams where id = any($1)",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(id, kind, board)| (id, (kind, board)))
        .collect();
    rows.into_iter()
        .map(|r| {
            let (stream_type, board_id) = streams.get(&r.stream_id).cloned().ok_or_else(|| {
                sqlx::Error::Protocol(format!(
                    "stream {} of event {} not found",
                    r.stream_id, r.seq
                ))
            })?;
            Ok((
                Cursor::from_text(&r.tx, r.seq)?,
                RecordedEvent {
                    seq: r.seq,
                    id: r.id,
                    stream_id: r.stream_id,
                    stream_type,
                    board_id,
                    version: r.version,
                    event_type: r.event_type,
                    data: r.data,
                    metadata: EventData::from_text("{}"),
                    recorded_at: r.recorded_at,
                },
            ))
        })
        .collect()
}

impl Projector {
    /// A building generation's batch after `after`, read as [`select_read`] chose
    /// (with loops; in lockstep rounds a rebuild shares the live read).
    pub(super) async fn read_rebuild(
        &self,
        after: Cursor,
        limit: i64,
    ) -> Result<Arc<Vec<(Cursor, RecordedEvent)>>, sqlx::Error> {
        let read = selected_read();
        if read == RebuildRead::Shared || !self.settings.loops {
            return self.read(after, limit).await;
        }
        let started = Instant::now();
        let own = self.own_xids();
        let rows = match read {
            RebuildRead::Lean => read_for_fold_joined(&self.pool, after, limit, &own).await?,
            _ => read_for_fold(&self.pool, after, limit, &own).await?,
        };
        self.metrics
            .projector_stage(ProjectorStage::Read, started.elapsed());
        Ok(Arc::new(rows))
    }
}

static SNAPSHOTS_BEHIND: AtomicBool = AtomicBool::new(true);

/// Selects, for the whole process, whether a building generation's Board snapshots are
/// written behind its batches (see the module's documentation; the default) or in each
/// batch's transaction.
pub fn pipeline_snapshots(on: bool) {
    SNAPSHOTS_BEHIND.store(on, Ordering::Relaxed);
}

/// Whether [`pipeline_snapshots`] is on.
pub fn snapshots_pipelined() -> bool {
    SNAPSHOTS_BEHIND.load(Ordering::Relaxed)
}

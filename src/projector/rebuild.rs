//! A side-by-side rebuild's own read of the log.
//!
//! A rebuild reads the whole log in large batches (the next read ahead while the
//! current batch is written, see `loops`). The live loops' shared read returns every
//! column of an event, `metadata` included, which no fold reads; a rebuild's read
//! leaves it out (the event's `metadata` is an empty object), with the same bound and
//! order as [`crate::event_store::log::read_after_excluding`], so it returns exactly
//! the events, in the order, the shared read would. Documents and snapshots are
//! written to the building generation only, as before: a crash mid-rebuild leaves the
//! live generation's documents as they were, and the rebuild resumes from its own
//! checkpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sqlx::PgExecutor;

use super::Projector;
use crate::event_store::log::Cursor;
use crate::event_store::RecordedEvent;
use crate::metrics::ProjectorStage;

/// Whether a rebuild reads without `metadata` (the default); off, it reads as the live
/// loops do. Process-wide, for the benchmark's before/after rounds.
static LEAN_READ: AtomicBool = AtomicBool::new(true);

/// Selects the rebuild's read: without the columns no fold reads (`true`, the
/// default), or every column, as the live loops read.
pub fn lean_read(on: bool) {
    LEAN_READ.store(on, Ordering::Relaxed);
}

/// Whether [`lean_read`] is on.
pub fn lean_read_on() -> bool {
    LEAN_READ.load(Ordering::Relaxed)
}

/// The columns a fold reads: [`crate::event_store::EVENT_COLUMNS`] with `metadata` an
/// empty object.
const FOLD_COLUMNS: &str = "e.seq, e.id, e.stream_id, s.type as stream_type, s.board_id, e.version, \
     e.type as event_type, e.data, '{}'::jsonb as metadata, e.recorded_at";

#[derive(sqlx::FromRow)]
struct FoldRow {
    tx: String,
    #[sqlx(flatten)]
    event: RecordedEvent,
}

/// [`crate::event_store::log::read_after_excluding`] with only the columns a fold
/// reads: the events after `after` in `(tx, seq)` order, below the oldest running
/// transaction that is not one of `own` (the projector's, which write no events).
pub async fn read_for_fold(
    conn: impl PgExecutor<'_>,
    after: Cursor,
    limit: i64,
    own: &[u64],
) -> Result<Vec<(Cursor, RecordedEvent)>, sqlx::Error> {
    let own: Vec<String> = own.iter().map(u64::to_string).collect();
    let rows: Vec<FoldRow> = sqlx::query_as(&format!(
        "with snap as (select pg_current_snapshot() as s), \
              bound as (select coalesce( \
                  (select min(x) from pg_snapshot_xip(snap.s) as x \
                    where x <> all($4::text[]::xid8[])), \
                  pg_snapshot_xmax(snap.s)) as below from snap) \
         select e.tx::text as tx, {FOLD_COLUMNS} \
           from events e join streams s on s.id = e.stream_id \
          where (e.tx, e.seq) > ($1::text::xid8, $2) \
            and e.tx < (select below from bound) \
          order by e.tx, e.seq \
          limit $3"
    ))
    .bind(after.tx_text())
    .bind(after.seq)
    .bind(limit)
    .bind(&own)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| Ok((Cursor::from_text(&r.tx, r.event.seq)?, r.event)))
        .collect()
}

impl Projector {
    /// A building generation's batch after `after`: [`read_for_fold`] when
    /// [`lean_read`] is on, else the live loops' read.
    pub(super) async fn read_rebuild(
        &self,
        after: Cursor,
        limit: i64,
    ) -> Result<Arc<Vec<(Cursor, RecordedEvent)>>, sqlx::Error> {
        if !lean_read_on() || !self.settings.loops {
            return self.read(after, limit).await;
        }
        let started = Instant::now();
        let own: Vec<u64> = self
            .own_xids
            .lock()
            .expect("own xids")
            .iter()
            .copied()
            .collect();
        let rows = read_for_fold(&self.pool, after, limit, &own).await?;
        self.metrics
            .projector_stage(ProjectorStage::Read, started.elapsed());
        Ok(Arc::new(rows))
    }
}

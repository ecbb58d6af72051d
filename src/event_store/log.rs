//! Reading the whole log in order without skipping: the `(tx, seq)` read below the
//! oldest running transaction that the projector, the matcher and the `boardEvents`
//! feed all use, and the few facts about the log's end that follow from it.
//!
//! Sequence values become visible out of order and rolled-back transactions leave
//! holes, so a reader that trusts `seq` alone skips events. Every transaction id below
//! the snapshot's xmin has finished, so no event can later appear behind a cursor
//! returned by [`read_after`].

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::{RecordedEvent, EVENT_COLUMNS};

/// A position in the log's read order: (writing transaction, sequence). A checkpoint is
/// always this pair, never `seq` alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub tx: u64,
    pub seq: i64,
}

impl Cursor {
    /// Parses the `tx::text` form PostgreSQL gives an `xid8`.
    pub fn from_text(tx: &str, seq: i64) -> Result<Self, sqlx::Error> {
        let tx = tx
            .parse::<u64>()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(Self { tx, seq })
    }

    /// The `tx` as text, to bind as `$n::text::xid8`.
    pub fn tx_text(&self) -> String {
        self.tx.to_string()
    }
}

#[derive(sqlx::FromRow)]
struct CursorRow {
    tx: String,
    #[sqlx(flatten)]
    event: RecordedEvent,
}

/// The next events after `after` in `(tx, seq)` order, stopping below the oldest
/// transaction still running, optionally for one Board's streams only (the
/// `boardEvents` feed). Inside a transaction it must be the first statement (before
/// the transaction has an id of its own).
pub async fn read_after(
    conn: impl PgExecutor<'_>,
    after: Cursor,
    limit: i64,
    board: Option<Uuid>,
) -> Result<Vec<(Cursor, RecordedEvent)>, sqlx::Error> {
    let rows: Vec<CursorRow> = sqlx::query_as(&format!(
        "select e.tx::text as tx, {EVENT_COLUMNS} \
           from events e join streams s on s.id = e.stream_id \
          where (e.tx, e.seq) > ($1::text::xid8, $2) \
            and e.tx < pg_snapshot_xmin(pg_current_snapshot()) \
            and ($4::uuid is null or s.board_id = $4) \
          order by e.tx, e.seq \
          limit $3"
    ))
    .bind(after.tx_text())
    .bind(after.seq)
    .bind(limit)
    .bind(board)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| Ok((Cursor::from_text(&r.tx, r.event.seq)?, r.event)))
        .collect()
}

/// [`read_after`] for a reader whose own transactions write no events (the projector):
/// its transactions still running, `own` (their ids), do not hold the read back.
///
/// The bound is the oldest transaction still running that is not one of `own` (or the
/// snapshot's xmax when there is none): every transaction below it has finished or is
/// one of `own`, which never writes an event, so no event can later appear behind a
/// cursor this read returns. An id missing from `own` (a transaction not yet
/// registered, or already unregistered) only lowers the bound: the read stays correct,
/// it just returns less.
pub async fn read_after_excluding(
    conn: impl PgExecutor<'_>,
    after: Cursor,
    limit: i64,
    own: &[u64],
) -> Result<Vec<(Cursor, RecordedEvent)>, sqlx::Error> {
    read_after_excluding_columns(conn, EVENT_COLUMNS, after, limit, own).await
}

/// [`read_after_excluding`] returning `columns` (the event's, joined to its stream as
/// `s`, in [`EVENT_COLUMNS`]' order and names): a rebuild leaves `metadata` out.
pub(crate) async fn read_after_excluding_columns(
    conn: impl PgExecutor<'_>,
    columns: &str,
    after: Cursor,
    limit: i64,
    own: &[u64],
) -> Result<Vec<(Cursor, RecordedEvent)>, sqlx::Error> {
    let own: Vec<String> = own.iter().map(u64::to_string).collect();
    let rows: Vec<CursorRow> = sqlx::query_as(read_excluding_sql(
        columns,
        "events e join streams s on s.id = e.stream_id",
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

/// The text of [`read_after_excluding`]'s read with `columns` (after `tx`) from `from`
/// (the events as `e`): `$1`/`$2` the cursor's tx and seq, `$3` the limit, `$4` the
/// reader's own transaction ids, as text. A rebuild reads fewer columns through it.
/// Built once per `(columns, from)` and kept for the process: the readers pass a few
/// constant column lists, and the projector reads many times a second.
pub(crate) fn read_excluding_sql(columns: &str, from: &str) -> &'static str {
    use std::sync::Mutex;
    // (columns, from, text): a handful of entries, scanned without allocating.
    static TEXTS: Mutex<Vec<(String, String, &'static str)>> = Mutex::new(Vec::new());
    let mut texts = TEXTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, _, text)) = texts.iter().find(|(c, f, _)| c == columns && f == from) {
        return text;
    }
    let text: &'static str = format!(
        "with snap as (select pg_current_snapshot() as s), \
              bound as (select coalesce( \
                  (select min(x) from pg_snapshot_xip(snap.s) as x \
                    where x <> all($4::text[]::xid8[])), \
                  pg_snapshot_xmax(snap.s)) as below from snap) \
         select e.tx::text as tx, {columns} \
           from {from} \
          where (e.tx, e.seq) > ($1::text::xid8, $2) \
            and e.tx < (select below from bound) \
          order by e.tx, e.seq \
          limit $3"
    )
    .leak();
    texts.push((columns.to_owned(), from.to_owned(), text));
    text
}

/// The read cursor of the event at `position` (`None`: no such event), to resume a
/// feed after it or to wait for a reader to pass it.
pub async fn cursor_of(
    conn: impl PgExecutor<'_>,
    position: i64,
) -> Result<Option<Cursor>, sqlx::Error> {
    let tx: Option<String> = sqlx::query_scalar("select tx::text from events where seq = $1")
        .bind(position)
        .fetch_optional(conn)
        .await?;
    Ok(tx
        .and_then(|t| t.parse().ok())
        .map(|tx| Cursor { tx, seq: position }))
}

/// The global position of the newest event (0 for an empty log).
pub async fn end_position(conn: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select coalesce(max(seq), 0) from events")
        .fetch_one(conn)
        .await
}

/// What a reader at `cursor` has still to read: the number of committed events after
/// it and when the oldest of them was recorded (`None` when caught up).
pub async fn backlog(
    pool: &PgPool,
    cursor: Cursor,
) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as(
        "select count(*), min(recorded_at) from events where (tx, seq) > ($1::text::xid8, $2)",
    )
    .bind(cursor.tx_text())
    .bind(cursor.seq)
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_text_is_built_once_per_column_set() {
        let first = read_excluding_sql("e.seq", "events e");
        assert!(
            first.contains("select e.tx::text as tx, e.seq") && first.contains("from events e")
        );
        assert!(std::ptr::eq(first, read_excluding_sql("e.seq", "events e")));
        let other = read_excluding_sql("e.seq, e.id", "events e");
        assert!(!std::ptr::eq(first, other) && other.contains("e.seq, e.id"));
    }
}

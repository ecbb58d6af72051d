//! Snapshots: folded documents saved every N events so that `asOf` folds start near
//! their target instead of at the beginning. Written by the projector inside its batch
//! transaction, read by time travel; this module is the one place that knows the
//! `snapshots` table.
//!
//! A snapshot stands for a prefix of each of its streams: `max_recorded_at` is the
//! newest event it holds, so it may start any fold up to a time at or after that.
//! Board snapshots also record the projector's read cursor at the end of the batch
//! that wrote them: a fold from one reads only the Board's events after that cursor.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::event_store::log::Cursor;

/// What a snapshot is of (`snapshots.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    Board,
    Appointment,
    Shift,
}

impl SnapshotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Board => "board",
            SnapshotKind::Appointment => "appointment",
            SnapshotKind::Shift => "shift",
        }
    }
}

/// A snapshot to write: `doc` is the document after its `version`-th event.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub kind: SnapshotKind,
    pub id: Uuid,
    pub version: i64,
    /// The newest `recorded_at` among the events the document holds.
    pub at: DateTime<Utc>,
    pub doc: Value,
}

/// Writes snapshots made by fold version `fold_version` in the caller's transaction,
/// with the read cursor after the batch. A rebuild of the same fold writes the same
/// snapshots, so duplicates are skipped.
pub async fn write(
    conn: &mut PgConnection,
    fold_version: i32,
    snapshots: &[Snapshot],
    batch_end: Cursor,
) -> Result<(), sqlx::Error> {
    for s in snapshots {
        sqlx::query(
            "insert into snapshots (kind, id, fold_version, version, max_recorded_at, tx, seq, doc) \
             values ($1, $2, $3, $4, $5, $6::text::xid8, $7, $8) on conflict do nothing",
        )
        .bind(s.kind.as_str())
        .bind(s.id)
        .bind(fold_version)
        .bind(s.version)
        .bind(s.at)
        .bind(batch_end.tx_text())
        .bind(batch_end.seq)
        .bind(&s.doc)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Board snapshots are read back whole into the process and sent again (the earlier
/// path, kept selectable so the bench can measure both in one run) instead of put
/// together in the database. Off by default.
static BOARDS_READ_BACK: AtomicBool = AtomicBool::new(false);

/// Selects the earlier way of writing Board snapshots (read back whole, sent again)
/// for the whole process.
pub fn read_back_boards(on: bool) {
    BOARDS_READ_BACK.store(on, Ordering::Relaxed);
}

/// Whether Board snapshots are read back whole and sent again (see
/// [`read_back_boards`]).
pub fn boards_read_back() -> bool {
    BOARDS_READ_BACK.load(Ordering::Relaxed)
}

/// How [`write_boards`] puts each Board snapshot together in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoardSnapshotStatement {
    /// The rows `jsonb_object_agg`-ed, then merged into the header with `||`
    /// ([`BOARDS_AGGREGATED_SQL`]; the earlier statement).
    Aggregated,
    /// The rows `jsonb_object_agg`-ed, then the document made by one
    /// `jsonb_build_object` ([`BOARDS_BUILT_SQL`]; the default).
    Built,
}

static BOARD_SNAPSHOT_STATEMENT: AtomicU8 = AtomicU8::new(BoardSnapshotStatement::Built as u8);

/// Selects, for the whole process, how Board snapshots are put together (the bench's
/// before/after rounds).
pub fn select_board_snapshot_statement(statement: BoardSnapshotStatement) {
    BOARD_SNAPSHOT_STATEMENT.store(statement as u8, Ordering::Relaxed);
}

fn board_snapshot_sql() -> &'static str {
    match BOARD_SNAPSHOT_STATEMENT.load(Ordering::Relaxed) {
        0 => BOARDS_AGGREGATED_SQL,
        _ => BOARDS_BUILT_SQL,
    }
}

/// A statement of [`write_boards`]: the rows `jsonb_object_agg`-ed, then merged into the
/// header by `||`. Each `jsonb_build_object` and `||` walks the whole document it is
/// given and makes a new one: the Board's appointments are walked about six times
/// after their aggregation.
const BOARDS_AGGREGATED_SQL: &str =
    "insert into snapshots (kind, id, fold_version, version, max_recorded_at, tx, seq, doc) \
     select 'board', s.id, $2, s.version, s.at, $6::text::xid8, $7, \
            v.doc || jsonb_build_object('version', s.version, 'position', v.position, \
                                        'maxRecordedAt', s.at_json) \
            || case when x.docs is null then '{}'::jsonb else jsonb_build_object('appointments', \
                 case when jsonb_typeof(v.doc->'appointments') = 'object' then v.doc->'appointments' \
                      else '{}'::jsonb end || x.docs) end \
            || case when x.applied is null then '{}'::jsonb else jsonb_build_object('applied', \
                 case when jsonb_typeof(v.doc->'applied') = 'object' then v.doc->'applied' \
                      else '{}'::jsonb end || x.applied) end \
       from unnest($3::uuid[], $4::bigint[], $5::timestamptz[], $8::jsonb[]) s(id, version, at, at_json) \
       join board_view v on v.generation = $1 and v.id = s.id \
       left join lateral ( \
         select jsonb_object_agg(x.id::text, x.doc) filter (where x.doc is not null) as docs, \
                jsonb_object_agg(x.id::text, x.applied) as applied \
           from board_view_appointments x \
          where x.generation = v.generation and x.board_id = v.id) x on true \
     on conflict do nothing";

/// A statement of [`write_boards`]: the rows `jsonb_object_agg`-ed as in
/// [`BOARDS_AGGREGATED_SQL`], then the whole document made by one `jsonb_build_object`
/// of the header's keys, the batch's counters, `appointments` and `applied` (merged with
/// the header's own, as there): the aggregated appointments are walked once more
/// instead of about six times. A key the header lacks is left out (`-`) as it would be
/// there: `appointments` and `applied` when neither the header nor a row has them. A
/// header with a key other than those it is written with (or without `board`, `shifts`
/// or `skipped`) is merged by [`BOARDS_AGGREGATED_SQL`]'s expression instead, so the
/// document is the same whatever the header holds.
const BOARDS_BUILT_SQL: &str =
    "insert into snapshots (kind, id, fold_version, version, max_recorded_at, tx, seq, doc) \
     select 'board', s.id, $2, s.version, s.at, $6::text::xid8, $7, \
            case when not m.known then \
                   v.doc || jsonb_build_object('version', s.version, 'position', v.position, \
                                               'maxRecordedAt', s.at_json) \
                   || case when x.docs is null then '{}'::jsonb \
                           else jsonb_build_object('appointments', m.appointments) end \
                   || case when x.applied is null then '{}'::jsonb \
                           else jsonb_build_object('applied', m.applied) end \
                 when m.appointments is not null and m.applied is not null then d.doc \
                 else d.doc - array_remove(array[case when m.appointments is null then 'appointments' end, \
                                                 case when m.applied is null then 'applied' end], null) \
            end \
       from unnest($3::uuid[], $4::bigint[], $5::timestamptz[], $8::jsonb[]) s(id, version, at, at_json) \
       join board_view v on v.generation = $1 and v.id = s.id \
       left join lateral ( \
         select jsonb_object_agg(x.id::text, x.doc) filter (where x.doc is not null) as docs, \
                jsonb_object_agg(x.id::text, x.applied) as applied \
           from board_view_appointments x \
          where x.generation = v.generation and x.board_id = v.id) x on true \
       cross join lateral ( \
         select jsonb_typeof(v.doc) = 'object' and v.doc ?& array['board', 'shifts', 'skipped'] \
                and not exists (select from jsonb_object_keys(v.doc) k \
                                 where k not in ('board', 'shifts', 'skipped', 'applied', 'appointments', \
                                                 'version', 'position', 'maxRecordedAt')) as known, \
                case when x.docs is null then v.doc->'appointments' \
                     else case when jsonb_typeof(v.doc->'appointments') = 'object' \
                               then v.doc->'appointments' else '{}'::jsonb end || x.docs end as appointments, \
                case when x.applied is null then v.doc->'applied' \
                     else case when jsonb_typeof(v.doc->'applied') = 'object' \
                               then v.doc->'applied' else '{}'::jsonb end || x.applied end as applied) m \
       cross join lateral ( \
         select jsonb_build_object('board', v.doc->'board', 'shifts', v.doc->'shifts', \
                                   'skipped', v.doc->'skipped', 'version', s.version, \
                                   'position', v.position, 'maxRecordedAt', s.at_json, \
                                   'appointments', m.appointments, 'applied', m.applied) as doc) d \
     on conflict do nothing";

/// A Board snapshot due: the Board's document after its `version`-th event, as the
/// caller's transaction has stored it in `board_view` generation `generation`.
#[derive(Debug, Clone)]
pub struct BoardDue {
    pub id: Uuid,
    pub version: i64,
    /// The newest `recorded_at` among the events the document holds.
    pub at: DateTime<Utc>,
}

/// Writes Board snapshots put together in the database from what the caller's
/// transaction has stored (the header row, and each appointment row under
/// `appointments` and its version under `applied`): the same document a whole-Board
/// read would give (`read::BoardParts::into_value`), without sending it to the process
/// and back. One statement for the batch; a Board without a row is skipped, and so is
/// a snapshot already there (a rebuild of the same fold).
pub async fn write_boards(
    conn: &mut PgConnection,
    fold_version: i32,
    generation: i32,
    boards: &[BoardDue],
    batch_end: Cursor,
) -> Result<(), sqlx::Error> {
    if boards.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = boards.iter().map(|b| b.id).collect();
    let versions: Vec<i64> = boards.iter().map(|b| b.version).collect();
    let ats: Vec<DateTime<Utc>> = boards.iter().map(|b| b.at).collect();
    // The header's counters come from this batch (its document may hold older ones:
    // a batch of appointment events writes them as columns only), the time as the
    // document serialises it.
    let ats_json: Vec<sqlx::types::Json<DateTime<Utc>>> =
        boards.iter().map(|b| sqlx::types::Json(b.at)).collect();
    // `appointments` is added only when a row holds an appointment, and `applied`
    // only when there are rows, as the merge in the process does; a key the header
    // holds as something other than an object is replaced, as there.
    sqlx::query(board_snapshot_sql())
        .bind(generation)
        .bind(fold_version)
        .bind(&ids)
        .bind(&versions)
        .bind(&ats)
        .bind(batch_end.tx_text())
        .bind(batch_end.seq)
        .bind(&ats_json)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// [`write_boards`] in a transaction that another may race to the same snapshots (Board
/// snapshots written behind the batches, by a building generation and the live one at
/// the same boundary of a Board). Under `REPEATABLE READ` a snapshot the other
/// committed after this transaction's view fails the insert to serialize: `on conflict
/// do nothing` cannot skip a row it does not see. That snapshot is there already (the
/// same fold of the same events), so the statement's savepoint is rolled back and the
/// Boards are written one by one, each in a savepoint of its own, skipping those the
/// other has: the transaction keeps the rest instead of losing them all. Returns the
/// Boards skipped.
pub async fn write_boards_beside_other_writers(
    conn: &mut PgConnection,
    fold_version: i32,
    generation: i32,
    boards: &[BoardDue],
    batch_end: Cursor,
) -> Result<usize, sqlx::Error> {
    if in_savepoint(conn, fold_version, generation, boards, batch_end).await? {
        return Ok(0);
    }
    if boards.len() == 1 {
        return Ok(1);
    }
    let mut skipped = 0;
    for board in boards.chunks(1) {
        if !in_savepoint(conn, fold_version, generation, board, batch_end).await? {
            skipped += 1;
        }
    }
    Ok(skipped)
}

/// [`write_boards`] in a savepoint: `false` (and rolled back) when the transaction
/// collided with another.
async fn in_savepoint(
    conn: &mut PgConnection,
    fold_version: i32,
    generation: i32,
    boards: &[BoardDue],
    batch_end: Cursor,
) -> Result<bool, sqlx::Error> {
    let mut savepoint = conn.begin().await?;
    match write_boards(&mut savepoint, fold_version, generation, boards, batch_end).await {
        Ok(()) => savepoint.commit().await.map(|()| true),
        Err(e) if crate::postgres::collided(&e) => savepoint.rollback().await.map(|()| false),
        Err(e) => Err(e),
    }
}

/// The newest snapshot of one stream's document that holds only events recorded at or
/// before `at` and versions up to `version` (either unbounded when `None`).
pub async fn newest_of_stream(
    pool: &PgPool,
    kind: SnapshotKind,
    fold_version: i32,
    id: Uuid,
    at: Option<DateTime<Utc>>,
    version: Option<i64>,
) -> Result<Option<Value>, sqlx::Error> {
    sqlx::query_scalar(
        "select doc from snapshots \
          where kind = $1 and id = $2 and fold_version = $3 \
            and ($4::timestamptz is null or max_recorded_at <= $4) \
            and ($5::bigint is null or version <= $5) \
          order by max_recorded_at desc, version desc limit 1",
    )
    .bind(kind.as_str())
    .bind(id)
    .bind(fold_version)
    .bind(at)
    .bind(version)
    .fetch_optional(pool)
    .await
}

/// The newest Board snapshot that holds only events recorded at or before `at`, with
/// the read cursor the projector had passed when it wrote it.
pub async fn newest_of_board(
    pool: &PgPool,
    board_id: Uuid,
    fold_version: i32,
    at: DateTime<Utc>,
) -> Result<Option<(Value, Cursor)>, sqlx::Error> {
    let row: Option<(Value, String, i64)> = sqlx::query_as(
        "select doc, tx::text, seq from snapshots \
          where kind = 'board' and id = $1 and fold_version = $2 \
            and max_recorded_at <= $3 and seq is not null \
          order by max_recorded_at desc, version desc limit 1",
    )
    .bind(board_id)
    .bind(fold_version)
    .bind(at)
    .fetch_optional(pool)
    .await?;
    row.map(|(doc, tx, seq)| Ok((doc, Cursor::from_text(&tx, seq)?)))
        .transpose()
}

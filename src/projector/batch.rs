//! Applying one batch of the log (read with [`crate::event_store::log::read_after`]) to
//! one projection generation, in the caller's transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sqlx::PgConnection;
use uuid::Uuid;

use super::state::DeadLetter;
use crate::domain::{Appointment, FoldError, Shift, StreamType};
use crate::event_store::log::Cursor;
use crate::event_store::{read_stream_between, RecordedEvent};
use crate::projections::board_view::BoardChanged;
use crate::projections::store::{load_boards_touched, load_durations, save_rows_with};
use crate::projections::{BoardDoc, Doc, Projection, Row, StreamDoc};
use crate::snapshots::{self, Snapshot, SnapshotKind};

/// Why a batch could not be applied.
#[derive(Debug)]
pub enum BatchError {
    /// An event the fold rejects: retried, then dead-lettered.
    Poison {
        seq: i64,
        error: FoldError,
    },
    Database(sqlx::Error),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        BatchError::Database(e)
    }
}

/// What a batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Events applied (gap-filled ones included, skipped ones not).
    pub applied: i64,
    pub dead_letters: Vec<DeadLetter>,
    /// Boards whose documents changed, for NOTIFY.
    pub changed_boards: Vec<BoardChanged>,
    /// Board snapshots due but not written, with `defer_board_snapshots`: the caller
    /// writes them from the batch's committed rows (see `projector::behind`).
    pub board_snapshots: Vec<snapshots::BoardDue>,
    /// With `defer_board_snapshots`, every Board document the batch changed: its
    /// version and, when it may be snapshotted, its newest `recorded_at` (a snapshot
    /// still due from an earlier batch is then of this version).
    pub boards_changed: Vec<(Uuid, i64, Option<chrono::DateTime<chrono::Utc>>)>,
}

/// One batch for one projection generation, and how to treat its events.
pub struct BatchInput<'a> {
    pub projection: Projection,
    pub generation: i32,
    /// The events in read order (one read shared by every projection at this place).
    pub events: &'a [&'a RecordedEvent],
    /// Events to dead-letter instead of failing the batch.
    pub dead: &'a HashSet<i64>,
    /// How often each failing event was tried.
    pub attempts: &'a HashMap<i64, u32>,
    /// Snapshot a document every this many events (0: never).
    pub snapshot_every: i64,
    /// The read cursor after this batch (recorded in Board snapshots).
    pub batch_end: Cursor,
    /// Board headers and appointment rows written by one statement (see
    /// [`crate::projections::store::save_rows_with`]).
    pub joined_writes: bool,
    /// Board snapshots put together in the database are left to the caller
    /// ([`BatchOutcome::board_snapshots`]) instead of written in this transaction.
    pub defer_board_snapshots: bool,
    /// A stored Board document whose batch holds only appointment events has only its
    /// header's counters written (see [`Row::Board`]); off: every header written whole.
    pub header_counters: bool,
    /// A Board document is read with only its own touched appointments, one key lookup
    /// per pair (see [`crate::projections::store::load_boards_touched`]); off: with
    /// every touched appointment of the batch searched for in every Board.
    pub paired_board_reads: bool,
    /// `appointment_durations` read and written as its flat columns only (see
    /// [`crate::projections::store::load_durations`]); off: with its document.
    pub flat_durations: bool,
    /// The faults to ask for a test's stall before Board snapshots are written here
    /// (see [`crate::faults`]).
    pub snapshot_faults: Option<&'a crate::faults::Faults>,
}

/// Applies the batch to the projection's documents and saves them, in the caller's
/// transaction.
pub async fn apply_batch(
    conn: &mut PgConnection,
    input: &BatchInput<'_>,
) -> Result<BatchOutcome, BatchError> {
    match input.projection {
        Projection::BoardView => {
            apply_and_save::<BoardDoc>(conn, input, |id, doc, appointments, counters_only| {
                Row::Board {
                    id,
                    doc,
                    appointments,
                    counters_only,
                }
            })
            .await
        }
        Projection::AppointmentView => {
            apply_and_save::<StreamDoc<Appointment>>(conn, input, |id, doc, _, _| {
                Row::Appointment { id, doc }
            })
            .await
        }
        Projection::AppointmentDurations if input.flat_durations => {
            apply_and_save::<StreamDoc<Appointment>>(conn, input, |id, doc, _, _| {
                Row::FlatDurations { id, doc }
            })
            .await
        }
        Projection::AppointmentDurations => {
            apply_and_save::<StreamDoc<Appointment>>(conn, input, |id, doc, _, _| Row::Durations {
                id,
                doc,
            })
            .await
        }
        Projection::ProviderShiftView => {
            apply_and_save::<StreamDoc<Shift>>(conn, input, |id, doc, _, _| Row::Shift { id, doc })
                .await
        }
    }
}

async fn apply_and_save<D: Doc>(
    conn: &mut PgConnection,
    input: &BatchInput<'_>,
    to_row: fn(Uuid, D, Vec<Uuid>, bool) -> Row,
) -> Result<BatchOutcome, BatchError> {
    let (mut outcome, docs, mut snapshots) = apply_docs::<D>(conn, input).await?;
    let rows: Vec<Row> = docs
        .into_iter()
        .map(|(id, (doc, appointments, counters_only))| {
            to_row(id, doc, appointments, counters_only)
        })
        .collect();
    outcome.changed_boards = rows
        .iter()
        .filter_map(|row| match row {
            Row::Board { id, doc, .. } if doc.board.is_some() => Some(BoardChanged {
                board_id: *id,
                version: doc.version,
                position: doc.position,
            }),
            _ => None,
        })
        .collect();
    save_rows_with(conn, input.generation, &rows, input.joined_writes).await?;
    // A Board document in memory holds only the appointments this batch touched: its
    // snapshot is made from this transaction's writes, in the database (or, on the
    // earlier path, read back whole and sent again).
    let partial: Vec<Uuid> = snapshots
        .iter()
        .filter(|s| s.doc.is_none())
        .map(|s| s.id)
        .collect();
    if !partial.is_empty() && !snapshots::boards_read_back() {
        // Put together in the database from what this transaction has just written.
        let boards: Vec<snapshots::BoardDue> = snapshots
            .iter()
            .filter(|s| s.doc.is_none())
            .map(|s| snapshots::BoardDue {
                id: s.id,
                version: s.version,
                at: s.at,
            })
            .collect();
        if input.defer_board_snapshots {
            outcome.board_snapshots = boards;
        } else {
            if let Some(faults) = input.snapshot_faults {
                faults.stall_snapshots().await;
            }
            snapshots::write_boards(
                conn,
                input.projection.version(),
                input.generation,
                &boards,
                input.batch_end,
            )
            .await?;
        }
    } else if !partial.is_empty() {
        let mut whole = input
            .projection
            .load_docs(conn, input.generation, &partial, None)
            .await?;
        for s in snapshots.iter_mut().filter(|s| s.doc.is_none()) {
            s.doc = whole.remove(&s.id);
        }
    }
    let snapshots: Vec<Snapshot> = snapshots
        .into_iter()
        .filter_map(|s| {
            Some(Snapshot {
                kind: s.kind,
                id: s.id,
                version: s.version,
                at: s.at,
                doc: s.doc?,
            })
        })
        .collect();
    snapshots::write(
        conn,
        input.projection.version(),
        &snapshots,
        input.batch_end,
    )
    .await?;
    Ok(outcome)
}

/// A snapshot due: `doc` is `None` until read back whole (a partially loaded Board).
struct SnapshotDue {
    kind: SnapshotKind,
    id: Uuid,
    version: i64,
    at: chrono::DateTime<chrono::Utc>,
    doc: Option<serde_json::Value>,
}

/// Changed documents, each with the appointment streams the batch touched in it and
/// whether the batch changed nothing of it but those streams and its counters (a stored
/// document, only events of those streams applied, none dead-lettered).
type ChangedDocs<D> = BTreeMap<Uuid, (D, Vec<Uuid>, bool)>;

/// Loads the touched documents (a Board with only the touched appointments), applies
/// each stream's events in version order (filling any gap from the store, skipping
/// what was already applied), and returns the changed documents and the snapshots due.
async fn apply_docs<D: Doc>(
    conn: &mut PgConnection,
    input: &BatchInput<'_>,
) -> Result<(BatchOutcome, ChangedDocs<D>, Vec<SnapshotDue>), BatchError> {
    let BatchInput {
        projection,
        generation,
        events,
        dead,
        attempts,
        snapshot_every,
        batch_end: _,
        joined_writes: _,
        defer_board_snapshots: _,
        header_counters,
        paired_board_reads,
        flat_durations,
        snapshot_faults: _,
    } = *input;
    // Document → its events, each stream's in version order. (tx, seq) order is not
    // version order across transactions, so sort; other streams' order is irrelevant.
    let mut by_doc: BTreeMap<Uuid, Vec<&RecordedEvent>> = BTreeMap::new();
    for &e in events {
        if let Some(doc) = projection.document_of(e) {
            by_doc.entry(doc).or_default().push(e);
        }
    }
    let mut outcome = BatchOutcome::default();
    if by_doc.is_empty() {
        return Ok((outcome, BTreeMap::new(), Vec::new()));
    }
    let ids: Vec<Uuid> = by_doc.keys().copied().collect();
    let appointment_streams = |evs: &[&RecordedEvent]| -> Vec<Uuid> {
        let set: BTreeSet<Uuid> = evs
            .iter()
            .filter(|e| StreamType::parse(&e.stream_type) == Some(StreamType::Appointment))
            .map(|e| e.stream_id)
            .collect();
        set.into_iter().collect()
    };
    // (document, appointment stream) for every appointment stream the batch touched.
    let touched: Vec<(Uuid, Uuid)> = by_doc
        .iter()
        .flat_map(|(doc, evs)| appointment_streams(evs).into_iter().map(|a| (*doc, a)))
        .collect();
    let mut stored = if paired_board_reads && projection == Projection::BoardView {
        load_boards_touched(conn, generation, &ids, &touched).await?
    } else if flat_durations && projection == Projection::AppointmentDurations {
        load_durations(conn, generation, &ids).await?
    } else {
        let touched: Vec<Uuid> = touched.iter().map(|(_, a)| *a).collect();
        projection
            .load_docs(conn, generation, &ids, Some(&touched))
            .await?
    };
    let mut docs: ChangedDocs<D> = BTreeMap::new();
    let mut snapshots = Vec::new();
    for (doc_id, mut doc_events) in by_doc {
        let appointments = appointment_streams(&doc_events);
        // Gap fills are earlier events of the same streams, so they keep this true.
        let only_appointments = header_counters
            && doc_events
                .iter()
                .all(|e| StreamType::parse(&e.stream_type) == Some(StreamType::Appointment));
        let dead_before = outcome.dead_letters.len();
        doc_events.sort_by_key(|e| (e.stream_id, e.version));
        let (mut doc, was_stored): (D, bool) = match stored.remove(&doc_id) {
            Some(value) => (
                serde_json::from_value(value)
                    .map_err(|e| BatchError::Database(sqlx::Error::Decode(Box::new(e))))?,
                true,
            ),
            None => (D::default(), false),
        };
        let old_count = doc.count();
        for e in doc_events {
            let applied = doc.applied_version(e.stream_id);
            if e.version <= applied {
                continue; // applied earlier through a gap fill
            }
            if e.version > applied + 1 {
                // Earlier versions of this stream committed before this one was
                // appended, but sort later in (tx, seq) order: apply them now.
                let missing =
                    read_stream_between(&mut *conn, e.stream_id, applied, e.version - 1).await?;
                for m in &missing {
                    apply_one(&mut doc, m, doc_id, dead, attempts, &mut outcome)?;
                }
            }
            apply_one(&mut doc, e, doc_id, dead, attempts, &mut outcome)?;
        }
        if snapshot_every > 0 && old_count / snapshot_every < doc.count() / snapshot_every {
            if let (Some(kind), Some(at)) = (projection.snapshot_kind(), doc.snapshot_ready()) {
                let value = match projection {
                    Projection::BoardView => None,
                    _ => Some(
                        serde_json::to_value(&doc)
                            .map_err(|e| BatchError::Database(sqlx::Error::Decode(Box::new(e))))?,
                    ),
                };
                snapshots.push(SnapshotDue {
                    kind,
                    id: doc_id,
                    version: doc.count(),
                    at,
                    doc: value,
                });
            }
        }
        if input.defer_board_snapshots && projection == Projection::BoardView {
            outcome
                .boards_changed
                .push((doc_id, doc.count(), doc.snapshot_ready()));
        }
        let counters_only =
            only_appointments && was_stored && outcome.dead_letters.len() == dead_before;
        docs.insert(doc_id, (doc, appointments, counters_only));
    }
    Ok((outcome, docs, snapshots))
}

fn apply_one<D: Doc>(
    doc: &mut D,
    e: &RecordedEvent,
    doc_id: Uuid,
    dead: &HashSet<i64>,
    attempts: &HashMap<i64, u32>,
    outcome: &mut BatchOutcome,
) -> Result<(), BatchError> {
    match doc.apply(e) {
        Ok(()) => {
            outcome.applied += 1;
            Ok(())
        }
        Err(error) if dead.contains(&e.seq) => {
            doc.skip(e);
            outcome.dead_letters.push(DeadLetter {
                event_seq: e.seq,
                event_id: e.id,
                stream_id: e.stream_id,
                stream_version: e.version,
                document_id: doc_id,
                error: error.to_string(),
                attempts: attempts.get(&e.seq).copied().unwrap_or(0) as i32,
            });
            Ok(())
        }
        Err(error) => Err(BatchError::Poison { seq: e.seq, error }),
    }
}

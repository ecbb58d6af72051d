//! `board_view`: one document per Board, folded from the Board's own stream and every
//! shift and appointment stream on it.
//!
//! Order-robust: each stream is folded in its own version order into its own slot, and
//! lists are keyed by id, so the document is the same whatever the interleaving of
//! different streams. The projector and time travel both fold with [`BoardDoc::apply`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use sqlx::PgExecutor;

use super::Doc;
use crate::domain::{Aggregate, Appointment, Board, BoardContents, FoldError, Shift, StreamType};
use crate::error::{AppError, AppResult};
use crate::event_store::{
    decode_apply, decode_apply_in_place, decode_recorded, read_board_streams,
    read_board_streams_waiting, ReadLimit, RecordedEvent,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BoardDoc {
    pub board: Option<Board>,
    pub shifts: BTreeMap<Uuid, Shift>,
    /// Stored as rows of their own beside the header (see [`BoardDoc::header`]).
    #[serde(default)]
    pub appointments: BTreeMap<Uuid, Appointment>,
    /// Per stream: the last version applied (or dead-lettered), so each event is
    /// applied exactly once and in version order.
    pub applied: BTreeMap<Uuid, i64>,
    /// Events applied across all the Board's streams.
    pub version: i64,
    /// Global position of the newest event applied.
    pub position: i64,
    /// Newest recorded_at among the events applied: what a snapshot of this document
    /// may stand in for.
    #[serde(default)]
    pub max_recorded_at: Option<DateTime<Utc>>,
    /// Events passed without their effect (dead letters). Such a document is never
    /// snapshotted: it is not what a replay of its events gives.
    #[serde(default)]
    pub skipped: i64,
}

/// Fold each event onto a copy of its stream's state (the earlier path, kept
/// selectable so the bench can measure both in one run) instead of in place. Off by
/// default.
static FOLD_BY_COPY: AtomicBool = AtomicBool::new(false);

/// Selects the earlier fold (a copy of the stream's state per event) for the whole
/// process.
pub fn fold_board_by_copy(on: bool) {
    FOLD_BY_COPY.store(on, Ordering::Relaxed);
}

fn fold_by_copy() -> bool {
    FOLD_BY_COPY.load(Ordering::Relaxed)
}

/// Applies `e` to its stream's entry of `states` in place (a first event makes it).
fn apply_in_slot<A: Aggregate>(
    states: &mut BTreeMap<Uuid, A>,
    e: &RecordedEvent,
) -> Result<(), FoldError> {
    match states.get_mut(&e.stream_id) {
        Some(state) => A::apply_in_place(state, &decode_recorded::<A>(e)?, &e.context()),
        None => {
            let state = A::apply(None, &decode_recorded::<A>(e)?, &e.context())?;
            states.insert(e.stream_id, state);
            Ok(())
        }
    }
}

impl Doc for BoardDoc {
    fn applied_version(&self, stream_id: Uuid) -> i64 {
        self.applied.get(&stream_id).copied().unwrap_or(0)
    }

    fn apply(&mut self, e: &RecordedEvent) -> Result<(), FoldError> {
        match StreamType::parse(&e.stream_type) {
            Some(StreamType::Board) if fold_by_copy() => {
                let next = decode_apply::<Board>(self.board.clone(), e)?;
                self.board = Some(next);
            }
            Some(StreamType::Shift) if fold_by_copy() => {
                let next = decode_apply::<Shift>(self.shifts.get(&e.stream_id).cloned(), e)?;
                self.shifts.insert(e.stream_id, next);
            }
            Some(StreamType::Appointment) if fold_by_copy() => {
                let next =
                    decode_apply::<Appointment>(self.appointments.get(&e.stream_id).cloned(), e)?;
                self.appointments.insert(e.stream_id, next);
            }
            Some(StreamType::Board) => decode_apply_in_place::<Board>(&mut self.board, e)?,
            Some(StreamType::Shift) => apply_in_slot(&mut self.shifts, e)?,
            Some(StreamType::Appointment) => apply_in_slot(&mut self.appointments, e)?,
            _ => {
                return Err(FoldError {
                    event: e.event_type.clone(),
                    version: e.version,
                    reason: format!("stream type {} does not belong on a Board", e.stream_type),
                })
            }
        }
        self.mark(e);
        self.version += 1;
        Ok(())
    }

    fn skip(&mut self, e: &RecordedEvent) {
        self.mark(e);
        self.skipped += 1;
    }

    fn count(&self) -> i64 {
        self.version
    }

    fn snapshot_ready(&self) -> Option<DateTime<Utc>> {
        (self.skipped == 0)
            .then_some(self.max_recorded_at)
            .flatten()
    }

    fn streams(&self, _: Uuid) -> Vec<(Uuid, i64)> {
        self.applied.iter().map(|(s, v)| (*s, *v)).collect()
    }
}

/// What `board_view` stores of a Board document in its own row: everything but the
/// appointments, which are rows of `board_view_appointments` with their applied
/// versions.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BoardHeader<'a> {
    board: &'a Option<Board>,
    shifts: &'a BTreeMap<Uuid, Shift>,
    applied: BTreeMap<Uuid, i64>,
    version: i64,
    position: i64,
    max_recorded_at: Option<DateTime<Utc>>,
    skipped: i64,
}

impl BoardDoc {
    /// The header to store; `appointment_streams` are the appointment streams the
    /// document has passed that are stored as rows (their versions are left out here).
    pub fn header(&self, appointment_streams: &[Uuid]) -> BoardHeader<'_> {
        BoardHeader {
            board: &self.board,
            shifts: &self.shifts,
            applied: self
                .applied
                .iter()
                .filter(|(s, _)| {
                    !self.appointments.contains_key(s) && !appointment_streams.contains(s)
                })
                .map(|(s, v)| (*s, *v))
                .collect(),
            version: self.version,
            position: self.position,
            max_recorded_at: self.max_recorded_at,
            skipped: self.skipped,
        }
    }

    fn mark(&mut self, e: &RecordedEvent) {
        self.applied.insert(e.stream_id, e.version);
        self.position = self.position.max(e.seq);
        self.max_recorded_at = self.max_recorded_at.max(Some(e.recorded_at));
    }

    /// The document as the API's Board contents; `None` before the Board was opened.
    pub fn to_contents(&self) -> Option<BoardContents> {
        let board = self.board.clone()?;
        Some(BoardContents::new(
            board,
            self.shifts.values().cloned().collect(),
            self.appointments.values().cloned().map(Arc::new).collect(),
            self.version,
            self.position,
        ))
    }

    /// The document as the API's Board contents, made from `previous` (the contents of
    /// this document at an earlier version of the same generation) and the appointments
    /// that changed since: the cost follows the change, not the Board's size.
    pub fn to_contents_from(
        &self,
        previous: &BoardContents,
        changed: &[Uuid],
    ) -> Option<BoardContents> {
        let board = self.board.clone()?;
        let mut appointments = Vec::with_capacity(changed.len());
        for id in changed {
            // Gone from the document (never, as the fold stands): build it whole.
            let Some(a) = self.appointments.get(id) else {
                return self.to_contents();
            };
            appointments.push(a);
        }
        previous
            .changed(
                board,
                self.shifts.values().cloned().collect(),
                appointments,
                self.appointments.len(),
                self.version,
                self.position,
            )
            .or_else(|| self.to_contents())
    }
}

/// Folds `read_board_streams` output into the Board's contents with the `board_view`
/// fold, the same code the projector runs. `None` if the Board's own stream has no
/// events (it does not exist, or did not yet at that time).
pub fn contents_from_events(
    board_id: impl Into<Uuid>,
    events: &[RecordedEvent],
) -> AppResult<Option<BoardContents>> {
    let board_id: Uuid = board_id.into();
    let mut doc = BoardDoc::default();
    for e in events {
        doc.apply(e).map_err(|err| {
            AppError::Internal(anyhow::anyhow!(
                "board {board_id}, stream {}: {err}",
                e.stream_id
            ))
        })?;
    }
    Ok(doc
        .to_contents()
        .filter(|c| c.board.id.as_uuid() == board_id))
}

/// Loads a Board with its shifts and appointments from the log, as of `limit` (`All`
/// or `Time`).
pub async fn load_board_contents(
    conn: impl PgExecutor<'_>,
    board_id: impl Into<Uuid>,
    limit: ReadLimit,
) -> AppResult<Option<BoardContents>> {
    let board_id = board_id.into();
    let events = read_board_streams(conn, board_id, limit).await?;
    contents_from_events(board_id, &events)
}

/// The Board with its shifts and only its waiting appointments, now.
pub async fn load_board_for_matching(
    conn: impl PgExecutor<'_>,
    board_id: impl Into<Uuid>,
) -> AppResult<Option<BoardContents>> {
    let board_id = board_id.into();
    let events = read_board_streams_waiting(conn, board_id).await?;
    contents_from_events(board_id, &events)
}

/// The `NOTIFY board_changed` payload the projector sends after a batch that changed a
/// Board commits, and the listener decodes: ids and counters only, so it stays far
/// under PostgreSQL's 8000-byte limit whatever the Board's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoardChanged {
    pub board_id: Uuid,
    /// The Board document's version after the batch.
    pub version: i64,
    /// The global position of the last event applied to it.
    pub position: i64,
}

impl BoardChanged {
    /// The channel the projector notifies and every process listens on.
    pub const CHANNEL: &'static str = "board_changed";

    /// `<boardId>:<version>:<position>`.
    pub fn encode(&self) -> String {
        format!("{}:{}:{}", self.board_id, self.version, self.position)
    }

    pub fn decode(payload: &str) -> Option<Self> {
        let mut parts = payload.split(':');
        let board_id = Uuid::parse_str(parts.next()?).ok()?;
        let version = parts.next()?.parse().ok()?;
        let position = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Self {
            board_id,
            version,
            position,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_board_changed_payload_decodes_to_what_was_encoded() {
        let changed = BoardChanged {
            board_id: Uuid::new_v4(),
            version: 42,
            position: 9001,
        };
        assert_eq!(BoardChanged::decode(&changed.encode()), Some(changed));
        assert_eq!(BoardChanged::decode("not-a-board:1:2"), None);
    }
}

//! Time travel: any Board, appointment or shift as it stood at an earlier time (or
//! stream version), folded by the projections' own code, starting from the newest
//! snapshot that holds only events recorded by then.
//!
//! Why a snapshot is enough: within a stream `recorded_at` grows with the version, so
//! a snapshot whose newest event was recorded at or before T holds, per stream, a prefix
//! of the events recorded by T. The fold adds each stream's remaining events up to T —
//! the same set of events a plain replay folds, so the same document.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::Aggregate;
use crate::domain::BoardContents;
use crate::error::{AppError, AppResult};
use crate::event_store::{
    read_board_streams, read_board_streams_after, read_board_timeline, read_stream_from, ReadLimit,
    RecordedEvent,
};
use crate::projections::{BoardDoc, Doc, Projection, StreamDoc};
use crate::snapshots;

/// Whether folds may start from snapshots (always, except to measure or check them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshots {
    Use,
    Ignore,
}

fn fold_failed(id: Uuid, e: impl std::fmt::Display) -> AppError {
    AppError::Internal(anyhow::anyhow!("time travel on {id}: {e}"))
}

/// The `board_view` document of a Board as it stood at `at`.
pub async fn board_doc_as_of(
    pool: &PgPool,
    board_id: Uuid,
    at: DateTime<Utc>,
    snapshots: Snapshots,
) -> AppResult<BoardDoc> {
    let snapshot = match snapshots {
        Snapshots::Use => {
            snapshots::newest_of_board(pool, board_id, Projection::BoardView.version(), at).await?
        }
        Snapshots::Ignore => None,
    };
    let events: Vec<RecordedEvent> = match &snapshot {
        // The snapshot holds every event of the Board up to the projector's cursor then
        // (and maybe a few after it, filled in early): read only what follows the cursor.
        Some((_, cursor)) => read_board_streams_after(pool, board_id, *cursor, at).await?,
        None => read_board_streams(pool, board_id, ReadLimit::Time(at)).await?,
    };
    let mut doc: BoardDoc = match snapshot {
        Some((doc, _)) => serde_json::from_value(doc).map_err(|e| fold_failed(board_id, e))?,
        None => BoardDoc::default(),
    };
    for e in &events {
        if e.version <= doc.applied_version(e.stream_id) {
            continue; // already in the snapshot
        }
        doc.apply(e).map_err(|err| fold_failed(board_id, err))?;
    }
    Ok(doc)
}

/// A Board with its providers and appointments as it stood at `at`; `None` before it
/// was opened.
pub async fn board_as_of(
    pool: &PgPool,
    board_id: Uuid,
    at: DateTime<Utc>,
    snapshots: Snapshots,
) -> AppResult<Option<BoardContents>> {
    Ok(board_doc_as_of(pool, board_id, at, snapshots)
        .await?
        .to_contents()
        .filter(|c| c.board.id.as_uuid() == board_id))
}

/// One stream's state up to a time or version (or all of it).
pub async fn stream_as_of<A>(
    pool: &PgPool,
    id: Uuid,
    limit: ReadLimit,
    snapshots: Snapshots,
) -> AppResult<Option<A>>
where
    A: Aggregate + Serialize + DeserializeOwned + Send + Sync,
{
    let projection = match A::STREAM_TYPE {
        crate::domain::StreamType::Appointment => Projection::AppointmentView,
        crate::domain::StreamType::Shift => Projection::ProviderShiftView,
        _ => {
            let events = crate::event_store::read_stream(pool, id, limit).await?;
            return crate::event_store::fold_recorded::<A>(&events);
        }
    };
    let kind = projection
        .snapshot_kind()
        .expect("stream views are snapshotted");
    let (at, version) = match limit {
        ReadLimit::All => (None, None),
        ReadLimit::Time(t) => (Some(t), None),
        ReadLimit::Version(v) => (None, Some(v)),
    };
    let mut doc: StreamDoc<A> = match snapshots {
        Snapshots::Use => {
            snapshots::newest_of_stream(pool, kind, projection.version(), id, at, version)
                .await?
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| fold_failed(id, e))?
                .unwrap_or_default()
        }
        Snapshots::Ignore => StreamDoc::default(),
    };
    let events = read_stream_from(pool, id, doc.applied, limit).await?;
    if events
        .iter()
        .any(|e| e.stream_type != A::STREAM_TYPE.as_str())
    {
        return Ok(None);
    }
    for e in &events {
        doc.apply(e).map_err(|err| fold_failed(id, err))?;
    }
    Ok(doc.state)
}

/// One Board version in a day's timeline, with the figures a front-end scrubs through.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub version: i64,
    pub event: RecordedEvent,
    pub waiting: i64,
    pub scheduled: i64,
    pub in_progress: i64,
    pub providers_ready: i64,
    pub providers_assigned: i64,
    pub providers_paused: i64,
    pub providers_charting: i64,
    /// How long the longest-waiting patient had waited at that moment (`None`: nobody
    /// was waiting): with `waiting`, the curve of a day's waits.
    pub longest_wait_seconds: Option<i64>,
    /// What a new request of the Board's specialty and region would have been told to
    /// wait at that moment (`None`: no provider on shift could take it).
    pub estimated_wait_seconds: Option<i64>,
}

/// The wait a new request of the Board's own specialty and region would have been
/// told at `at`, from the Board as `doc` holds it.
async fn headline_wait(
    pool: &PgPool,
    estimator: &crate::estimates::Estimator,
    doc: &BoardDoc,
    board: &crate::domain::Board,
    samples: &[(DateTime<Utc>, crate::domain::matching::DurationSample)],
    at: DateTime<Utc>,
) -> AppResult<Option<i64>> {
    let open: Vec<_> = doc
        .appointments
        .values()
        .filter(|a| a.status.is_open())
        .cloned()
        .collect();
    let shifts: Vec<_> = doc.shifts.values().cloned().collect();
    let providers = estimator
        .providers(pool, shifts.iter().map(|s| s.provider_id))
        .await?;
    let request = crate::estimates::hypothetical_request(board, board.specialty.clone(), None, at);
    let model = crate::estimates::model_at(samples, at);
    let estimates =
        crate::domain::matching::estimate(at, &open, &shifts, &providers, &model, Some(&request));
    Ok(estimates
        .get(&request.id)
        .and_then(|e| e.start)
        .map(|start| crate::estimates::wait_seconds(at, start)))
}

/// Every Board version caused by events recorded in `(from, to]`, oldest first, at most
/// `limit` of them.
pub async fn board_history(
    pool: &PgPool,
    // None: no estimates (the caller did not ask for them; they are the costly part).
    estimator: Option<&crate::estimates::Estimator>,
    board_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> AppResult<Vec<HistoryEntry>> {
    let mut doc = board_doc_as_of(pool, board_id, from, Snapshots::Use).await?;
    let events = read_board_timeline(pool, board_id, from, to, limit).await?;
    let mut out = Vec::with_capacity(events.len());
    let mut samples = None;
    for e in events {
        if e.version <= doc.applied_version(e.stream_id) {
            continue;
        }
        doc.apply(&e).map_err(|err| fold_failed(board_id, err))?;
        let estimated_wait_seconds = match (&doc.board, estimator) {
            (Some(board), Some(estimator)) => {
                if samples.is_none() {
                    samples = Some(
                        estimator
                            .timeline_samples(pool, &board.specialty, from, to)
                            .await?,
                    );
                }
                let samples = samples.as_deref().unwrap_or_default();
                headline_wait(pool, estimator, &doc, board, samples, e.recorded_at).await?
            }
            _ => None,
        };
        use crate::domain::{AppointmentStatus as A, ShiftStatus as S};
        let count_a = |s: A| doc.appointments.values().filter(|a| a.status == s).count() as i64;
        let count_s = |s: S| doc.shifts.values().filter(|x| x.status == s).count() as i64;
        let longest_wait_seconds = doc
            .appointments
            .values()
            .filter(|a| a.status == A::Requested)
            .map(|a| a.requested_at)
            .min()
            .map(|since| crate::estimates::wait_seconds(since, e.recorded_at));
        out.push(HistoryEntry {
            version: doc.version,
            waiting: count_a(A::Requested),
            scheduled: count_a(A::Scheduled),
            in_progress: count_a(A::Started),
            providers_ready: count_s(S::Ready),
            providers_assigned: count_s(S::Assigned),
            providers_paused: count_s(S::Paused),
            providers_charting: count_s(S::Charting),
            longest_wait_seconds,
            estimated_wait_seconds,
            event: e,
        });
    }
    Ok(out)
}

//! GraphQL output types: thin views over domain states and stored events.

use async_graphql::{Context, Enum, Json, Object, SimpleObject, ID};
use chrono::{DateTime, NaiveDate, Utc};
use std::sync::Arc;

use tokio::sync::OnceCell;
use uuid::Uuid;

use super::store;
use crate::domain::{self, ShiftStatus as DShift};
use crate::event_store::{load_board_contents, BoardContents, ReadLimit, RecordedEvent};

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::BoardStatus")]
pub enum BoardStatus {
    Open,
    Closed,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::ShiftStatus")]
pub enum ShiftStatus {
    Ready,
    Assigned,
    Paused,
    Charting,
    SignedOff,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::AppointmentStatus")]
pub enum AppointmentStatus {
    Requested,
    Scheduled,
    Started,
    Finished,
    Cancelled,
}

fn id(uuid: Uuid) -> ID {
    ID(uuid.to_string())
}

/// A Board: its own facts, and (loaded on first use) its providers and appointments.
pub struct Board {
    board: domain::Board,
    /// Shared, not copied: one document serves every subscriber of a Board.
    contents: OnceCell<Option<Arc<BoardContents>>>,
}

impl Board {
    pub fn from_contents(contents: BoardContents) -> Self {
        Self::from_shared(Arc::new(contents))
    }

    pub fn from_shared(contents: Arc<BoardContents>) -> Self {
        Self {
            board: contents.board.clone(),
            contents: OnceCell::new_with(Some(Some(contents))),
        }
    }

    pub fn from_state(board: domain::Board) -> Self {
        Self {
            board,
            contents: OnceCell::new(),
        }
    }

    async fn contents(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<&BoardContents>> {
        let contents = self
            .contents
            .get_or_try_init(|| async {
                load_board_contents(store(ctx).pool(), self.board.id, ReadLimit::All)
                    .await
                    .map(|c| c.map(Arc::new))
            })
            .await
            .map_err(async_graphql::Error::from)?;
        Ok(contents.as_deref())
    }
}

/// How many appointments and providers a Board has in each status.
#[derive(SimpleObject, Default)]
pub struct BoardCounts {
    /// Appointments requested and not yet scheduled.
    pub waiting: i32,
    pub scheduled: i32,
    pub in_progress: i32,
    pub finished: i32,
    pub cancelled: i32,
    pub providers_ready: i32,
    pub providers_assigned: i32,
    pub providers_paused: i32,
    pub providers_charting: i32,
    pub providers_signed_off: i32,
}

impl BoardCounts {
    fn of(contents: &BoardContents) -> Self {
        use domain::AppointmentStatus as A;
        let mut c = BoardCounts::default();
        for a in &contents.appointments {
            *match a.status {
                A::Requested => &mut c.waiting,
                A::Scheduled => &mut c.scheduled,
                A::Started => &mut c.in_progress,
                A::Finished => &mut c.finished,
                A::Cancelled => &mut c.cancelled,
            } += 1;
        }
        for s in &contents.shifts {
            *match s.status {
                DShift::Ready => &mut c.providers_ready,
                DShift::Assigned => &mut c.providers_assigned,
                DShift::Paused => &mut c.providers_paused,
                DShift::Charting => &mut c.providers_charting,
                DShift::SignedOff => &mut c.providers_signed_off,
            } += 1;
        }
        c
    }
}

#[Object]
impl Board {
    async fn id(&self) -> ID {
        id(self.board.id)
    }
    async fn name(&self) -> &str {
        &self.board.name
    }
    async fn specialty(&self) -> &str {
        &self.board.specialty
    }
    async fn region(&self) -> &str {
        &self.board.region
    }
    /// The workday, `YYYY-MM-DD`.
    async fn date(&self) -> NaiveDate {
        self.board.date
    }
    async fn status(&self) -> BoardStatus {
        self.board.status.into()
    }
    async fn opened_at(&self) -> DateTime<Utc> {
        self.board.opened_at
    }
    async fn closed_at(&self) -> Option<DateTime<Utc>> {
        self.board.closed_at
    }
    /// Number of events applied across the Board's own stream and every shift and
    /// appointment stream on it.
    async fn version(&self, ctx: &Context<'_>) -> async_graphql::Result<i64> {
        Ok(self
            .contents(ctx)
            .await?
            .map(|c| c.version)
            .unwrap_or(self.board.version))
    }
    /// Global position of the newest event reflected here.
    async fn position(&self, ctx: &Context<'_>) -> async_graphql::Result<i64> {
        Ok(self.contents(ctx).await?.map(|c| c.position).unwrap_or(0))
    }
    /// Providers on the Board, in the order they joined.
    async fn providers(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ProviderShift>> {
        Ok(self
            .contents(ctx)
            .await?
            .map(|c| c.shifts.iter().cloned().map(ProviderShift).collect())
            .unwrap_or_default())
    }
    /// Appointments on the Board, in the order they were requested.
    async fn appointments(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Appointment>> {
        Ok(self
            .contents(ctx)
            .await?
            .map(|c| c.appointments.iter().cloned().map(Appointment).collect())
            .unwrap_or_default())
    }
    async fn counts(&self, ctx: &Context<'_>) -> async_graphql::Result<BoardCounts> {
        Ok(self
            .contents(ctx)
            .await?
            .map(BoardCounts::of)
            .unwrap_or_default())
    }
}

pub struct Provider(pub domain::Provider);

#[Object]
impl Provider {
    async fn id(&self) -> ID {
        id(self.0.id)
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn specialties(&self) -> &[String] {
        &self.0.specialties
    }
    async fn licensed_regions(&self) -> &[String] {
        &self.0.licensed_regions
    }
    async fn version(&self) -> i64 {
        self.0.version
    }
}

pub struct ProviderShift(pub domain::Shift);

#[Object]
impl ProviderShift {
    async fn id(&self) -> ID {
        id(self.0.id)
    }
    async fn board_id(&self) -> ID {
        id(self.0.board_id)
    }
    async fn provider_id(&self) -> ID {
        id(self.0.provider_id)
    }
    /// The provider's reference data.
    async fn provider(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Provider>> {
        Ok(store(ctx)
            .load::<domain::Provider>(self.0.provider_id, ReadLimit::All)
            .await?
            .map(Provider))
    }
    async fn status(&self) -> ShiftStatus {
        self.0.status.into()
    }
    /// The appointment the provider is assigned to or charting for.
    async fn appointment_id(&self) -> Option<ID> {
        self.0.appointment_id.map(id)
    }
    async fn joined_at(&self) -> DateTime<Utc> {
        self.0.joined_at
    }
    /// Charting time over the shift so far, in seconds (finished charting sessions).
    async fn charting_seconds(&self) -> i64 {
        self.0.charting_seconds
    }
    async fn signed_off_at(&self) -> Option<DateTime<Utc>> {
        self.0.signed_off_at
    }
    async fn version(&self) -> i64 {
        self.0.version
    }
}

pub struct Appointment(pub domain::Appointment);

#[Object]
impl Appointment {
    async fn id(&self) -> ID {
        id(self.0.id)
    }
    async fn board_id(&self) -> ID {
        id(self.0.board_id)
    }
    async fn patient_name(&self) -> &str {
        &self.0.patient_name
    }
    async fn specialty(&self) -> &str {
        &self.0.specialty
    }
    async fn region(&self) -> &str {
        &self.0.region
    }
    async fn reason(&self) -> &str {
        &self.0.reason
    }
    async fn status(&self) -> AppointmentStatus {
        self.0.status.into()
    }
    async fn provider_id(&self) -> Option<ID> {
        self.0.provider_id.map(id)
    }
    async fn shift_id(&self) -> Option<ID> {
        self.0.shift_id.map(id)
    }
    /// When the appointment is expected to start.
    async fn estimated_time(&self) -> Option<DateTime<Utc>> {
        self.0.estimated_time
    }
    async fn requested_at(&self) -> DateTime<Utc> {
        self.0.requested_at
    }
    async fn scheduled_at(&self) -> Option<DateTime<Utc>> {
        self.0.scheduled_at
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    async fn cancelled_at(&self) -> Option<DateTime<Utc>> {
        self.0.cancelled_at
    }
    async fn cancellation_reason(&self) -> Option<&str> {
        self.0.cancellation_reason.as_deref()
    }
    async fn version(&self) -> i64 {
        self.0.version
    }
}

/// One stored event with its envelope: the audit log's entry.
pub struct Event(pub RecordedEvent);

#[Object]
impl Event {
    async fn id(&self) -> ID {
        id(self.0.id)
    }
    async fn stream_id(&self) -> ID {
        id(self.0.stream_id)
    }
    async fn stream_type(&self) -> &str {
        &self.0.stream_type
    }
    /// The event's version within its stream.
    async fn version(&self) -> i64 {
        self.0.version
    }
    /// Global position in the log.
    async fn position(&self) -> i64 {
        self.0.seq
    }
    #[graphql(name = "type")]
    async fn event_type(&self) -> &str {
        &self.0.event_type
    }
    async fn data(&self) -> Json<&serde_json::Value> {
        Json(&self.0.data)
    }
    /// correlationId, causationId, actor and the GraphQL operation that caused it.
    async fn metadata(&self) -> Json<&serde_json::Value> {
        Json(&self.0.metadata)
    }
    async fn recorded_at(&self) -> DateTime<Utc> {
        self.0.recorded_at
    }
}

#[derive(SimpleObject)]
pub struct BoardPayload {
    pub board: Board,
    /// The Board stream's version after the command.
    pub version: i64,
    /// Global position of the last event written.
    pub position: i64,
}

#[derive(SimpleObject)]
pub struct ProviderPayload {
    pub provider: Provider,
    pub version: i64,
    pub position: i64,
}

#[derive(SimpleObject)]
pub struct ShiftPayload {
    pub shift: ProviderShift,
    pub version: i64,
    pub position: i64,
}

#[derive(SimpleObject)]
pub struct AppointmentPayload {
    pub appointment: Appointment,
    pub version: i64,
    pub position: i64,
}

/// Result of the commands that change an appointment and its provider's shift together.
#[derive(SimpleObject)]
pub struct AppointmentShiftPayload {
    pub appointment: Appointment,
    /// The provider's shift after the command; null when no shift was involved
    /// (cancelling an appointment that was still waiting).
    pub shift: Option<ProviderShift>,
    /// The appointment stream's version after the command.
    pub version: i64,
    pub position: i64,
}

/// One Board version in a day's timeline.
pub struct BoardHistoryEntry(pub crate::time_travel::HistoryEntry);

#[Object]
impl BoardHistoryEntry {
    /// The Board's version after this event (events applied across its streams).
    async fn version(&self) -> i64 {
        self.0.version
    }
    async fn position(&self) -> i64 {
        self.0.event.seq
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.event.recorded_at
    }
    /// The event that made this version.
    async fn event(&self) -> Event {
        Event(self.0.event.clone())
    }
    async fn waiting(&self) -> i64 {
        self.0.waiting
    }
    async fn scheduled(&self) -> i64 {
        self.0.scheduled
    }
    async fn in_progress(&self) -> i64 {
        self.0.in_progress
    }
    async fn providers_ready(&self) -> i64 {
        self.0.providers_ready
    }
    async fn providers_charting(&self) -> i64 {
        self.0.providers_charting
    }
}

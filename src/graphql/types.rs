//! GraphQL output types: thin views over domain states and stored events.

use async_graphql::{Context, Enum, Json, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use std::sync::Arc;

use tokio::sync::OnceCell;
use uuid::Uuid;

use super::{access, estimator, store};
use crate::domain::matching::{DurationModel, Estimate};
use crate::domain::BoardContents;
use crate::domain::{self, ShiftStatus as DShift};
use crate::error::AppError;
use crate::event_store::{ReadLimit, RecordedEvent};
use crate::projections::load_board_contents;
use crate::time_travel::{board_as_of, Snapshots};

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

fn id(uuid: impl Into<Uuid>) -> ID {
    ID(uuid.into().to_string())
}

/// A Board: its own facts, and (loaded on first use) its providers and appointments.
pub struct Board {
    board: domain::Board,
    /// Shared, not copied: one document serves every subscriber of a Board.
    contents: OnceCell<Option<Arc<BoardContents>>>,
    /// The moment this Board is shown as of (`None`: now); estimates are made for it.
    as_of: Option<DateTime<Utc>>,
}

impl Board {
    pub fn from_contents(contents: BoardContents) -> Self {
        Self::from_shared(Arc::new(contents))
    }

    /// The Board as it stood at `as_of`.
    pub fn from_contents_as_of(contents: BoardContents, as_of: DateTime<Utc>) -> Self {
        Self {
            as_of: Some(as_of),
            ..Self::from_contents(contents)
        }
    }

    pub fn from_shared(contents: Arc<BoardContents>) -> Self {
        Self {
            board: contents.board.clone(),
            contents: OnceCell::new_with(Some(Some(contents))),
            as_of: None,
        }
    }

    pub fn from_state(board: domain::Board) -> Self {
        Self {
            board,
            contents: OnceCell::new(),
            as_of: None,
        }
    }

    async fn contents(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<&BoardContents>> {
        Ok(self.shared(ctx).await?.map(|c| &**c))
    }

    async fn shared(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<&Arc<BoardContents>>> {
        let contents = self
            .contents
            .get_or_try_init(|| async {
                load_board_contents(store(ctx).pool(), self.board.id, ReadLimit::All)
                    .await
                    .map(|c| c.map(Arc::new))
            })
            .await
            .map_err(async_graphql::Error::from)?;
        Ok(contents.as_ref())
    }
}

/// A Board's contents as of `as_of` (folded), or now: the projected document (kept
/// up to date in the process's [`BoardCache`](crate::projections::read::BoardCache)),
/// or a fold of the store for a Board opened a moment ago and not projected yet.
pub(crate) async fn board_contents_at(
    ctx: &Context<'_>,
    board_id: impl Into<Uuid>,
    as_of: Option<DateTime<Utc>>,
) -> Result<Option<Arc<BoardContents>>, AppError> {
    let board_id = board_id.into();
    let pool = store(ctx).pool();
    match as_of {
        Some(t) => Ok(board_as_of(pool, board_id, t, Snapshots::Use)
            .await?
            .map(Arc::new)),
        None => match super::boards(ctx)
            .contents(pool, board_id)
            .await
            .map_err(AppError::Internal)?
        {
            Some(contents) => Ok(Some(contents)),
            None => Ok(load_board_contents(pool, board_id, ReadLimit::All)
                .await?
                .map(Arc::new)),
        },
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
        let n = |s| contents.counts.get(s) as i32;
        let mut c = BoardCounts {
            waiting: n(A::Requested),
            scheduled: n(A::Scheduled),
            in_progress: n(A::Started),
            finished: n(A::Finished),
            cancelled: n(A::Cancelled),
            ..BoardCounts::default()
        };
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
    /// The workday.
    async fn date(&self) -> super::scalars::Date {
        super::scalars::Date(self.board.date)
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
    #[graphql(complexity = "5 + 20 * child_complexity")]
    async fn providers(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ProviderShift>> {
        Ok(self
            .contents(ctx)
            .await?
            .map(|c| c.shifts.iter().cloned().map(ProviderShift).collect())
            .unwrap_or_default())
    }
    /// Appointments on the Board, in the order they were requested. Waiting ones carry
    /// their wait estimate. `status` keeps those in any of the statuses given; `first`
    /// (at most 500) and `after` (the id of the last appointment of the previous page)
    /// page through them. Without `first`, every appointment: a Board of a busy day
    /// holds thousands, so screens should ask for a page.
    #[graphql(complexity = "5 + first.unwrap_or(50).clamp(0, 500) as usize * child_complexity")]
    async fn appointments(
        &self,
        ctx: &Context<'_>,
        status: Option<Vec<AppointmentStatus>>,
        first: Option<i32>,
        after: Option<ID>,
    ) -> async_graphql::Result<Vec<Appointment>> {
        let first = match first {
            None => None,
            Some(n @ 0..=super::query::MAX_PAGE) => Some(n as usize),
            Some(n) => {
                return Err(AppError::validation(format!(
                    "first must be between 0 and {}, got {n}",
                    super::query::MAX_PAGE
                ))
                .into())
            }
        };
        let after = after
            .map(|a| domain::parse_id("after", &a))
            .transpose()
            .map_err(AppError::from)?;
        let Some(shared) = self.shared(ctx).await? else {
            return Ok(Vec::new());
        };
        let contents = &**shared;
        let statuses: Option<Vec<domain::AppointmentStatus>> =
            status.map(|s| s.into_iter().map(Into::into).collect());
        let start = match after {
            None => 0,
            Some(id) => match contents
                .appointments
                .iter()
                .position(|a| a.id.as_uuid() == id)
            {
                Some(at) => at + 1,
                None => {
                    return Err(
                        AppError::validation("after is not an appointment of this Board").into(),
                    )
                }
            },
        };
        let page: Vec<&domain::Appointment> = contents.appointments[start..]
            .iter()
            .map(|a| &**a)
            .filter(|a| statuses.as_ref().is_none_or(|s| s.contains(&a.status)))
            .take(first.unwrap_or(usize::MAX))
            .collect();
        // Estimates only when asked for: they are the expensive part of a Board.
        let selection = ctx.look_ahead();
        let wanted =
            selection.field("estimatedStart").exists() || selection.field("waitEstimate").exists();
        let estimates = if wanted
            && page
                .iter()
                .any(|a| a.status == domain::AppointmentStatus::Requested)
        {
            Some(
                estimator(ctx)
                    .board(store(ctx).pool(), contents, self.as_of, None)
                    .await?,
            )
        } else {
            None
        };
        let finish = Arc::new(FinishModel::for_board(shared.clone(), self.as_of));
        let board = access::board_facts(contents);
        Ok(page
            .into_iter()
            .map(|a| {
                let estimate = estimates.as_ref().map(|e| e.get(&a.id).cloned());
                let facts = access::appointment_facts(a, Some(board.clone()));
                Appointment {
                    finish_model: Some(finish.clone()),
                    listed_on: Some((contents.board.id.into(), contents.version)),
                    ..Appointment::with_estimate(a.clone(), self.as_of, estimate)
                }
                .with_patient_fields(access::sees_patient_fields(ctx, &facts))
            })
            .collect())
    }
    async fn counts(&self, ctx: &Context<'_>) -> async_graphql::Result<BoardCounts> {
        Ok(self
            .contents(ctx)
            .await?
            .map(BoardCounts::of)
            .unwrap_or_default())
    }
    /// When the longest-waiting patient (still REQUESTED) asked; null when nobody is
    /// waiting. Their wait is the time since then.
    async fn waiting_since(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<DateTime<Utc>>> {
        Ok(self.contents(ctx).await?.and_then(|c| {
            c.appointments
                .iter()
                .filter(|a| a.status == domain::AppointmentStatus::Requested)
                .map(|a| a.requested_at)
                .min()
        }))
    }
    /// The Board's quoted wait: what a new request of its own specialty, in its region,
    /// would be told now (or at `asOf`), as `waitTimeEstimate` answers it. A waiting
    /// patient who has already waited longer than this is late. Null on a closed Board.
    async fn current_wait(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<WaitEstimate>> {
        let Some(contents) = self.contents(ctx).await? else {
            return Ok(None);
        };
        if contents.board.status != domain::BoardStatus::Open {
            return Ok(None);
        }
        let quote = estimator(ctx)
            .quote(store(ctx).pool(), contents, self.as_of)
            .await?;
        let now = self.as_of.unwrap_or_else(Utc::now);
        Ok(quote.map(|e| WaitEstimate::of(&e, now)))
    }
}

/// The duration model behind `expectedFinish`, loaded once for every appointment of
/// one Board listing, and only if one of them is asked for it.
pub(crate) struct FinishModel {
    /// Its open appointments' specialties are the model's, gathered only when asked.
    contents: Arc<BoardContents>,
    as_of: Option<DateTime<Utc>>,
    model: OnceCell<DurationModel>,
}

impl FinishModel {
    fn for_board(contents: Arc<BoardContents>, as_of: Option<DateTime<Utc>>) -> Self {
        Self {
            contents,
            as_of,
            model: OnceCell::new(),
        }
    }

    async fn get(&self, ctx: &Context<'_>) -> async_graphql::Result<&DurationModel> {
        Ok(self
            .model
            .get_or_try_init(|| async {
                let mut specialties: Vec<String> = self
                    .contents
                    .appointments
                    .iter()
                    .filter(|a| a.status.is_open())
                    .map(|a| a.specialty.clone())
                    .collect();
                specialties.sort();
                specialties.dedup();
                estimator(ctx)
                    .model(store(ctx).pool(), &specialties, self.as_of)
                    .await
            })
            .await?)
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
    #[graphql(complexity = "5 + child_complexity")]
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
    /// Since when the provider is READY; null unless READY.
    async fn ready_since(&self) -> Option<DateTime<Utc>> {
        self.0.ready_since
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

/// An appointment; a waiting one also answers when it is expected to start.
pub struct Appointment {
    pub state: domain::Appointment,
    /// The moment shown (`None`: now), for the estimate.
    as_of: Option<DateTime<Utc>>,
    /// Filled by the Board that listed it, or computed on first use.
    estimate: OnceCell<Option<Estimate>>,
    /// Shared by the appointments of one Board listing; `None`: loaded on first use.
    finish_model: Option<Arc<FinishModel>>,
    /// Whether the caller sees its patient fields: decided by whoever listed it with the
    /// facts at hand, or on first use from its Board (see `access`).
    patient_fields: OnceCell<bool>,
    /// The Board (and version) that listed it, for the access record.
    listed_on: Option<(Uuid, i64)>,
}

impl From<domain::Appointment> for Appointment {
    fn from(state: domain::Appointment) -> Self {
        Self {
            state,
            as_of: None,
            estimate: OnceCell::new(),
            finish_model: None,
            patient_fields: OnceCell::new(),
            listed_on: None,
        }
    }
}

impl Appointment {
    pub fn as_of(state: domain::Appointment, as_of: Option<DateTime<Utc>>) -> Self {
        Self {
            as_of,
            ..Self::from(state)
        }
    }

    pub fn without_estimate(state: domain::Appointment) -> Self {
        Self::with_estimate(state, None, Some(None))
    }

    fn with_estimate(
        state: domain::Appointment,
        as_of: Option<DateTime<Utc>>,
        estimate: Option<Option<Estimate>>,
    ) -> Self {
        let estimate = match estimate {
            Some(e) => OnceCell::new_with(Some(e)),
            None => OnceCell::new(),
        };
        Self {
            state,
            as_of,
            estimate,
            finish_model: None,
            patient_fields: OnceCell::new(),
            listed_on: None,
        }
    }

    /// With the caller's right to its patient fields already decided.
    pub(crate) fn with_patient_fields(self, visible: bool) -> Self {
        Self {
            patient_fields: OnceCell::new_with(Some(visible)),
            ..self
        }
    }

    /// A patient field's value for this caller: `None` (masked) unless the matrix lets
    /// them see it; a value shown is noted for the access record.
    async fn patient_field<'a>(
        &self,
        ctx: &Context<'_>,
        value: Option<&'a str>,
    ) -> async_graphql::Result<Option<&'a str>> {
        let Some(value) = value else { return Ok(None) };
        let visible = *self
            .patient_fields
            .get_or_try_init(|| async {
                let board = board_contents_at(ctx, self.state.board_id, None)
                    .await?
                    .map(|c| access::board_facts(&c));
                let facts = access::appointment_facts(&self.state, board);
                Ok::<_, AppError>(access::sees_patient_fields(ctx, &facts))
            })
            .await?;
        if !visible {
            return Ok(None);
        }
        access::note_disclosure(
            ctx,
            self.state.id.as_uuid(),
            access::patient_of(&self.state),
            self.listed_on,
        );
        Ok(Some(value))
    }

    /// The estimate of a waiting appointment: from its Board as of the same moment; if
    /// the Board does not show it yet (the projector is a moment behind a request just
    /// made), as a request joining the end of that Board's queue.
    async fn estimate(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<&Estimate>> {
        if self.state.status != domain::AppointmentStatus::Requested {
            return Ok(None);
        }
        let estimate = self
            .estimate
            .get_or_try_init(|| async {
                let pool = store(ctx).pool();
                let contents = board_contents_at(ctx, self.state.board_id, self.as_of).await?;
                let Some(contents) = contents else {
                    return Ok::<_, AppError>(None);
                };
                // Listed in request order: found by its request time and id.
                let listed = contents
                    .appointments
                    .binary_search_by_key(&(self.state.requested_at, self.state.id), |a| {
                        (a.requested_at, a.id)
                    })
                    .is_ok();
                let extra = (!listed).then_some(&self.state);
                let estimates = estimator(ctx)
                    .board(pool, &contents, self.as_of, extra)
                    .await?;
                Ok(estimates.get(&self.state.id).cloned())
            })
            .await?;
        Ok(estimate.as_ref())
    }
}

#[Object]
impl Appointment {
    async fn id(&self) -> ID {
        id(self.state.id)
    }
    async fn board_id(&self) -> ID {
        id(self.state.board_id)
    }
    /// Null unless the caller may see this patient's fields (DESIGN §9).
    async fn patient_name(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<&str>> {
        self.patient_field(ctx, Some(&self.state.patient_name))
            .await
    }
    async fn specialty(&self) -> &str {
        &self.state.specialty
    }
    async fn region(&self) -> &str {
        &self.state.region
    }
    /// Null unless the caller may see this patient's fields.
    async fn reason(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<&str>> {
        self.patient_field(ctx, Some(&self.state.reason)).await
    }
    async fn status(&self) -> AppointmentStatus {
        self.state.status.into()
    }
    async fn provider_id(&self) -> Option<ID> {
        self.state.provider_id.map(id)
    }
    async fn shift_id(&self) -> Option<ID> {
        self.state.shift_id.map(id)
    }
    /// When the appointment is expected to start, as set when it was scheduled.
    async fn estimated_time(&self) -> Option<DateTime<Utc>> {
        self.state.estimated_time
    }
    /// While waiting: when it is expected to start, from the queue ahead, the providers
    /// who could take it and past durations (see `waitEstimate`). Null once scheduled
    /// (see `estimatedTime`), or when no provider on shift could take it.
    #[graphql(complexity = "10")]
    async fn estimated_start(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<DateTime<Utc>>> {
        Ok(self.estimate(ctx).await?.and_then(|e| e.start))
    }
    /// While waiting: the whole estimate behind `estimatedStart`.
    #[graphql(complexity = "10 + child_complexity")]
    async fn wait_estimate(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<WaitEstimate>> {
        let now = self.as_of.unwrap_or_else(Utc::now);
        Ok(self.estimate(ctx).await?.map(|e| WaitEstimate::of(e, now)))
    }
    /// Scheduled or started: when it is expected to finish — its scheduled time plus
    /// the usual time an appointment of its specialty scheduled at that hour takes (the
    /// wait-time model's held time). Past it, a started appointment is overdue.
    async fn expected_finish(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<DateTime<Utc>>> {
        if !matches!(
            self.state.status,
            domain::AppointmentStatus::Scheduled | domain::AppointmentStatus::Started
        ) {
            return Ok(None);
        }
        let own;
        let model = match &self.finish_model {
            Some(shared) => shared.get(ctx).await?,
            None => {
                own = estimator(ctx)
                    .model(
                        store(ctx).pool(),
                        std::slice::from_ref(&self.state.specialty),
                        self.as_of,
                    )
                    .await?;
                &own
            }
        };
        Ok(crate::estimates::expected_finish(model, &self.state))
    }
    async fn requested_at(&self) -> DateTime<Utc> {
        self.state.requested_at
    }
    async fn scheduled_at(&self) -> Option<DateTime<Utc>> {
        self.state.scheduled_at
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.state.started_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.state.finished_at
    }
    async fn cancelled_at(&self) -> Option<DateTime<Utc>> {
        self.state.cancelled_at
    }
    /// Free text about the patient: null unless the caller may see their fields.
    async fn cancellation_reason(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<&str>> {
        self.patient_field(ctx, self.state.cancellation_reason.as_deref())
            .await
    }
    async fn version(&self) -> i64 {
        self.state.version
    }
}

/// Where an estimate's expected durations come from.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum EstimateBasis {
    /// Past appointments of the specialty in the sliding window.
    History,
    /// No history yet: the default duration.
    Default,
}

/// An estimate of when an appointment (waiting, or about to be requested) will start.
#[derive(SimpleObject, Clone)]
pub struct WaitEstimate {
    /// The moment the estimate was made for.
    pub at: DateTime<Utc>,
    /// Null when no provider on shift could take it (none has the specialty and licence,
    /// or all of them are paused or signed off).
    pub estimated_start: Option<DateTime<Utc>>,
    /// Seconds from `at` to `estimatedStart`.
    pub wait_seconds: Option<i64>,
    /// Waiting appointments ahead that compete for the same providers.
    pub queue_ahead: i32,
    /// Providers on shift (READY, ASSIGNED or CHARTING) who could take it.
    pub providers_available: i32,
    /// Of those, how many are READY now.
    pub providers_ready: i32,
    /// Expected time a provider spends from assignment to the end of the appointment.
    pub expected_duration_seconds: i64,
    pub basis: EstimateBasis,
}

impl WaitEstimate {
    pub fn of(e: &Estimate, at: DateTime<Utc>) -> Self {
        Self {
            at,
            estimated_start: e.start,
            wait_seconds: e.start.map(|s| crate::estimates::wait_seconds(at, s)),
            queue_ahead: e.queue_ahead as i32,
            providers_available: e.providers as i32,
            providers_ready: e.providers_ready as i32,
            expected_duration_seconds: e.held.num_seconds(),
            basis: if e.from_history {
                EstimateBasis::History
            } else {
                EstimateBasis::Default
            },
        }
    }
}

/// One stored event with its envelope: the audit log's entry.
pub struct Event {
    pub event: RecordedEvent,
    /// Whether the caller sees the patient fields inside `data` (else they are null).
    pub patient_fields: bool,
}

/// The keys of an appointment event's data that hold patient data.
pub const PATIENT_KEYS: [&str; 3] = ["patientName", "reason", "patientId"];

impl Event {
    pub fn new(event: RecordedEvent, patient_fields: bool) -> Self {
        Self {
            event,
            patient_fields,
        }
    }

    fn carries_patient_data(&self) -> bool {
        self.event.stream_type == domain::StreamType::Appointment.as_str()
            && PATIENT_KEYS
                .iter()
                .any(|k| self.event.data.get(k).is_some_and(|v| !v.is_null()))
    }
}

#[Object]
impl Event {
    async fn id(&self) -> ID {
        id(self.event.id)
    }
    async fn stream_id(&self) -> ID {
        id(self.event.stream_id)
    }
    async fn stream_type(&self) -> &str {
        &self.event.stream_type
    }
    /// The event's version within its stream.
    async fn version(&self) -> i64 {
        self.event.version
    }
    /// Global position in the log.
    async fn position(&self) -> i64 {
        self.event.seq
    }
    #[graphql(name = "type")]
    async fn event_type(&self) -> &str {
        &self.event.event_type
    }
    /// The event's payload. Patient fields inside it (`patientName`, `reason`,
    /// `patientId`) are null unless the caller may see that patient's fields.
    async fn data(&self, ctx: &Context<'_>) -> Json<serde_json::Value> {
        let mut data = self.event.data.value().clone();
        if self.carries_patient_data() {
            if self.patient_fields {
                let patient = data
                    .get("patientId")
                    .and_then(|p| p.as_str())
                    .map(str::to_string);
                access::note_disclosure(ctx, self.event.stream_id, patient, None);
            } else if let Some(fields) = data.as_object_mut() {
                for key in PATIENT_KEYS {
                    if let Some(v) = fields.get_mut(key) {
                        *v = serde_json::Value::Null;
                    }
                }
            }
        }
        Json(data)
    }
    /// correlationId, causationId, actor and the GraphQL operation that caused it. A
    /// patient who acted is patient data: their subject, name and patient id
    /// (`actorPatientId`) are null unless the caller may see this patient's fields.
    async fn metadata(&self, ctx: &Context<'_>) -> Json<serde_json::Value> {
        let mut metadata = self.event.metadata.value().clone();
        let by_patient = metadata.get("actorRole").and_then(|r| r.as_str()) == Some("patient");
        if by_patient && self.patient_fields {
            // Who the patient is, shown: a disclosure like their fields in `data`,
            // recorded against the patient who acted (older events name them only in
            // the data, where there is a patient id).
            let patient = metadata
                .get("actorPatientId")
                .or_else(|| self.event.data.get("patientId"))
                .and_then(|p| p.as_str())
                .map(str::to_string);
            access::note_disclosure(ctx, self.event.stream_id, patient, None);
        }
        if by_patient && !self.patient_fields {
            if let Some(fields) = metadata.as_object_mut() {
                for key in ["actor", "actorName", "actorPatientId"] {
                    if let Some(v) = fields.get_mut(key) {
                        *v = serde_json::Value::Null;
                    }
                }
            }
        }
        Json(metadata)
    }
    async fn recorded_at(&self) -> DateTime<Utc> {
        self.event.recorded_at
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

/// One Board version in a day's timeline, and whether the caller sees the patient
/// fields of its event.
pub struct BoardHistoryEntry(pub crate::time_travel::HistoryEntry, pub bool);

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
    /// The event that made this version; its patient fields are shown only to those
    /// who see every patient's on this Board (coordinators in scope).
    async fn event(&self) -> Event {
        Event::new(self.0.event.clone(), self.1)
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
    async fn providers_assigned(&self) -> i64 {
        self.0.providers_assigned
    }
    async fn providers_paused(&self) -> i64 {
        self.0.providers_paused
    }
    async fn providers_charting(&self) -> i64 {
        self.0.providers_charting
    }
    /// How long the longest-waiting patient had waited at this version's time, in
    /// seconds; null when nobody was waiting.
    async fn longest_wait_seconds(&self) -> Option<i64> {
        self.0.longest_wait_seconds
    }
    /// What a new request of the Board's specialty (in its region) would have been told
    /// to wait then, in seconds; null when no provider on shift could take it.
    #[graphql(complexity = "crate::graphql::query::HISTORY_ESTIMATE_WEIGHT")]
    async fn estimated_wait_seconds(&self) -> Option<i64> {
        self.0.estimated_wait_seconds
    }
}

/// One record of the access log: who saw which patient data, when, from where.
#[derive(SimpleObject)]
pub struct AccessLogEntry {
    /// Position in the hash chain.
    pub seq: i64,
    pub recorded_at: DateTime<Utc>,
    /// The verified principal's subject and role.
    pub subject: String,
    pub role: String,
    /// Their name (kept for staff; never for patients).
    pub name: Option<String>,
    /// The GraphQL field(s) that disclosed.
    pub operation: String,
    /// The client's operation name, if it gave one.
    pub operation_name: Option<String>,
    pub correlation_id: String,
    /// The client's address; in `myAccessLog`, only on the patient's own records.
    pub client_addr: Option<String>,
    /// What was disclosed, in ids: `{kind: "board", boardId, version, patientIds}` (time
    /// travel expands it to what was shown), `{kind: "appointments", appointments}`, or
    /// `{kind: "several", items}`.
    pub disclosed: Json<serde_json::Value>,
}

impl From<crate::identity::access_log::LoggedAccess> for AccessLogEntry {
    fn from(r: crate::identity::access_log::LoggedAccess) -> Self {
        Self {
            seq: r.seq,
            recorded_at: r.recorded_at,
            subject: r.subject,
            role: r.role,
            name: r.name,
            operation: r.operation,
            operation_name: r.operation_name,
            correlation_id: r.correlation_id,
            client_addr: r.client_addr,
            disclosed: Json(r.disclosed),
        }
    }
}

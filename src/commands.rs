//! Load → decide → append: the one path every mutation takes.
//!
//! Each command opens a unit of work (which answers repeats of a `commandId` from
//! memory), loads what the decision needs (locking in exclusive mode), calls the pure
//! domain, stages the events and commits. The new state is folded in memory from the
//! events just appended, so a mutation costs no read-back.

use async_graphql::{InputObject, ID};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::appointment::{self, AppointmentCommand};
use crate::domain::board::{self, BoardCommand};
use crate::domain::provider::{self, ProviderCommand};
use crate::domain::shift::{self, ShiftCommand};
use crate::domain::{
    parse_id, scheduling, Aggregate, Appointment, AppointmentStatus, Board, Provider, Shift,
};
use crate::error::{AppError, AppResult};
use crate::estimates::Estimator;
use crate::event_store::unit_of_work::{Begun, CommandMeta, Guard, Outcome, UnitOfWork};
use crate::event_store::{EventStore, ReadLimit};
use crate::projections::board_view::contents_from_events;

/// The options every command input carries.
#[derive(Debug, Clone, Default, InputObject)]
pub struct CommandOptions {
    /// Optimistic check: the target stream's version the client last saw. A mismatch
    /// answers CONFLICT. Omitted: commands on the stream are serialised instead.
    pub expected_version: Option<i64>,
    /// Idempotency key: a repeat returns the first result and appends nothing.
    pub command_id: Option<ID>,
}

#[derive(Debug, Clone, Serialize, InputObject)]
#[serde(rename_all = "camelCase")]
pub struct OpenBoardInput {
    pub name: String,
    pub specialty: String,
    pub region: String,
    /// Calendar date, `YYYY-MM-DD`.
    pub date: String,
    #[graphql(flatten)]
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, Serialize, InputObject)]
#[serde(rename_all = "camelCase")]
pub struct CloseBoardInput {
    pub board_id: ID,
    #[graphql(flatten)]
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, Serialize, InputObject)]
#[serde(rename_all = "camelCase")]
pub struct RegisterProviderInput {
    pub name: String,
    pub specialties: Vec<String>,
    pub licensed_regions: Vec<String>,
    #[graphql(flatten)]
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, Serialize, InputObject)]
#[serde(rename_all = "camelCase")]
pub struct JoinBoardInput {
    pub board_id: ID,
    pub provider_id: ID,
    #[graphql(flatten)]
    #[serde(skip)]
    pub options: CommandOptions,
}

/// Input of the commands that act on one provider shift alone.
#[derive(Debug, Clone, Serialize, InputObject)]
#[serde(rename_all = "camelCase")]
pub struct ShiftInput {
    pub shift_id: ID,
    #[graphql(flatten)]
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, Serialize, InputObject)]
#[serde(rename_all = "camelCase")]
pub struct RequestAppointmentInput {
    pub board_id: ID,
    pub patient_name: String,
    pub specialty: String,
    pub region: String,
    pub reason: String,
    #[graphql(flatten)]
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, Serialize, InputObject)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleAppointmentInput {
    pub appointment_id: ID,
    pub shift_id: ID,
    /// When the appointment is expected to start; if omitted, now plus the usual time
    /// from scheduling to start for the specialty (see the wait-time model).
    pub estimated_time: Option<DateTime<Utc>>,
    #[graphql(flatten)]
    #[serde(skip)]
    pub options: CommandOptions,
}

/// Input of the commands that act on an appointment by id alone.
#[derive(Debug, Clone, Serialize, InputObject)]
#[serde(rename_all = "camelCase")]
pub struct AppointmentInput {
    pub appointment_id: ID,
    #[graphql(flatten)]
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, Serialize, InputObject)]
#[serde(rename_all = "camelCase")]
pub struct CancelAppointmentInput {
    pub appointment_id: ID,
    pub reason: String,
    #[graphql(flatten)]
    #[serde(skip)]
    pub options: CommandOptions,
}

/// A command's result: the target's new state, and for two-stream commands the shift.
#[derive(Debug, Clone)]
pub struct Written<T> {
    pub entity: T,
    pub shift: Option<Shift>,
    /// The target stream's version after the command.
    pub version: i64,
    /// Global position of the last event the command wrote.
    pub position: i64,
}

/// The shift-only commands, one entry point.
#[derive(Debug, Clone, Copy)]
pub enum ShiftAction {
    MarkReady,
    Pause,
    CompleteCharting,
    SignOff,
}

impl ShiftAction {
    pub fn operation(self) -> &'static str {
        match self {
            ShiftAction::MarkReady => "markProviderReady",
            ShiftAction::Pause => "pauseProvider",
            ShiftAction::CompleteCharting => "completeCharting",
            ShiftAction::SignOff => "signOffProvider",
        }
    }
}

/// The appointment-only commands that need nothing but the id.
#[derive(Debug, Clone, Copy)]
pub enum AppointmentAction {
    Start,
    Finish,
}

/// Fills `meta` with the per-input options.
fn with_options(mut meta: CommandMeta, options: &CommandOptions) -> AppResult<CommandMeta> {
    if let Some(v) = options.expected_version {
        if v < 0 {
            return Err(AppError::validation("expectedVersion must not be negative"));
        }
    }
    if let Some(id) = &options.command_id {
        crate::domain::storable_text("commandId", id)?;
    }
    meta.expected_version = options.expected_version;
    meta.command_id = options.command_id.as_ref().map(|id| id.to_string());
    Ok(meta)
}

fn fingerprint(input: &impl Serialize) -> AppResult<Value> {
    serde_json::to_value(input).map_err(|e| AppError::Internal(e.into()))
}

/// Opens the unit of work, or returns the remembered result of a repeated command.
macro_rules! begin {
    ($store:expr, $meta:expr, $input:expr) => {
        match $store
            .begin(
                with_options($meta, &$input.options)?,
                &fingerprint(&$input)?,
            )
            .await?
        {
            Begun::Fresh(uow) => *uow,
            Begun::Replayed(outcome) => return replayed($store, &outcome).await,
        }
    };
}

/// Rebuilds a repeated command's answer from the streams and versions it wrote.
async fn replayed<A: Aggregate>(store: &EventStore, outcome: &Outcome) -> AppResult<Written<A>> {
    let missing = || AppError::Internal(anyhow::anyhow!("stored outcome names a missing stream"));
    let (target, version) = *outcome.streams.first().ok_or_else(missing)?;
    let entity = store
        .load::<A>(target, ReadLimit::Version(version))
        .await?
        .ok_or_else(missing)?;
    let shift = match outcome.streams.get(1) {
        Some((id, v)) => store.load::<Shift>(*id, ReadLimit::Version(*v)).await?,
        None => None,
    };
    Ok(Written {
        entity,
        shift,
        version,
        position: outcome.position,
    })
}

/// Commits one stream's events and folds its new state.
async fn commit_one<A: Aggregate>(
    uow: UnitOfWork,
    id: Uuid,
    board_id: Option<Uuid>,
    base: Option<A>,
    events: Vec<A::Event>,
) -> AppResult<Written<A>> {
    let mut uow = uow;
    uow.stage::<A>(id, board_id, base.as_ref(), &events);
    let committed = uow.commit().await?;
    let entity = committed.fold(id, base, &events)?;
    Ok(Written {
        version: entity.version(),
        position: committed.position(),
        entity,
        shift: None,
    })
}

pub async fn open_board(
    store: &EventStore,
    meta: CommandMeta,
    input: OpenBoardInput,
) -> AppResult<Written<Board>> {
    let uow = begin!(store, meta, input);
    let id = Uuid::new_v4();
    let events = board::decide(
        None,
        BoardCommand::Open {
            name: input.name,
            specialty: input.specialty,
            region: input.region,
            date: input.date,
        },
    )?;
    commit_one(uow, id, Some(id), None, events).await
}

pub async fn close_board(
    store: &EventStore,
    meta: CommandMeta,
    input: CloseBoardInput,
) -> AppResult<Written<Board>> {
    let board_id = parse_id("boardId", &input.board_id)?;
    let mut uow = begin!(store, meta, input);
    // Always locked, in optimistic mode too: requests and joins hold the Board FOR SHARE,
    // so nothing new can arrive between counting the open work and closing.
    let board = uow.target_locked::<Board>(board_id).await?;
    let open_work = match &board {
        Some(_) => {
            let events = uow.board_streams(board_id).await?;
            contents_from_events(board_id, &events)?
                .map(|c| c.open_work())
                .unwrap_or_default()
        }
        None => Default::default(),
    };
    let events = board::decide(board.as_ref(), BoardCommand::Close { open_work })?;
    commit_one(uow, board_id, Some(board_id), board, events).await
}

pub async fn register_provider(
    store: &EventStore,
    meta: CommandMeta,
    input: RegisterProviderInput,
) -> AppResult<Written<Provider>> {
    let uow = begin!(store, meta, input);
    let events = provider::decide(
        None,
        ProviderCommand::Register {
            name: input.name,
            specialties: input.specialties,
            licensed_regions: input.licensed_regions,
        },
    )?;
    commit_one(uow, Uuid::new_v4(), None, None, events).await
}

/// A provider has at most one shift per Board: its id is derived from both, so the
/// stream's primary key enforces "not already on that board" even under races.
pub fn shift_id_for(board_id: Uuid, provider_id: Uuid) -> Uuid {
    Uuid::new_v5(&board_id, provider_id.as_bytes())
}

pub async fn join_board(
    store: &EventStore,
    meta: CommandMeta,
    input: JoinBoardInput,
) -> AppResult<Written<Shift>> {
    let board_id = parse_id("boardId", &input.board_id)?;
    let provider_id = parse_id("providerId", &input.provider_id)?;
    let mut uow = begin!(store, meta, input);
    let board = uow.read::<Board>(board_id, Guard::Share).await?;
    let provider = uow.read::<Provider>(provider_id, Guard::None).await?;
    let shift_id = shift_id_for(board_id, provider_id);
    let existing = uow.target::<Shift>(shift_id).await?;
    let events = shift::decide(
        existing.as_ref(),
        ShiftCommand::Join {
            board: board.map(Box::new),
            provider: provider.map(Box::new),
        },
    )?;
    commit_one(uow, shift_id, Some(board_id), existing, events).await
}

pub async fn shift_action(
    store: &EventStore,
    meta: CommandMeta,
    action: ShiftAction,
    input: ShiftInput,
) -> AppResult<Written<Shift>> {
    let shift_id = parse_id("shiftId", &input.shift_id)?;
    let mut uow = begin!(store, meta, input);
    let shift = uow.target::<Shift>(shift_id).await?;
    let command = match action {
        ShiftAction::MarkReady => ShiftCommand::MarkReady,
        ShiftAction::Pause => ShiftCommand::Pause,
        ShiftAction::CompleteCharting => ShiftCommand::CompleteCharting { now: Utc::now() },
        ShiftAction::SignOff => ShiftCommand::SignOff,
    };
    let events = shift::decide(shift.as_ref(), command)?;
    let board_id = shift.as_ref().map(|s| s.board_id);
    commit_one(uow, shift_id, board_id, shift, events).await
}

pub async fn request_appointment(
    store: &EventStore,
    meta: CommandMeta,
    input: RequestAppointmentInput,
) -> AppResult<Written<Appointment>> {
    let board_id = parse_id("boardId", &input.board_id)?;
    let mut uow = begin!(store, meta, input);
    let board = uow.read::<Board>(board_id, Guard::Share).await?;
    let events = appointment::decide(
        None,
        AppointmentCommand::Request {
            board,
            patient_id: None,
            patient_name: input.patient_name,
            specialty: input.specialty,
            region: input.region,
            reason: input.reason,
        },
    )?;
    commit_one(uow, Uuid::new_v4(), Some(board_id), None, events).await
}

pub async fn appointment_action(
    store: &EventStore,
    meta: CommandMeta,
    action: AppointmentAction,
    input: AppointmentInput,
) -> AppResult<Written<Appointment>> {
    let appointment_id = parse_id("appointmentId", &input.appointment_id)?;
    let mut uow = begin!(store, meta, input);
    let appointment = uow.target::<Appointment>(appointment_id).await?;
    match action {
        AppointmentAction::Start => {
            let events = appointment::decide(appointment.as_ref(), AppointmentCommand::Start)?;
            let board_id = appointment.as_ref().map(|a| a.board_id);
            commit_one(uow, appointment_id, board_id, appointment, events).await
        }
        AppointmentAction::Finish => {
            let shift = match appointment.as_ref().and_then(|a| a.shift_id) {
                Some(shift_id) => uow.also::<Shift>(shift_id).await?,
                None => None,
            };
            let events = scheduling::finish(appointment.as_ref(), shift.as_ref())?;
            commit_two(uow, appointment, shift, events).await
        }
    }
}

/// `estimator` answers when the input has no `estimatedTime`: the application's one
/// estimator, so its caches serve every command.
pub async fn schedule_appointment(
    store: &EventStore,
    estimator: &Estimator,
    meta: CommandMeta,
    input: ScheduleAppointmentInput,
) -> AppResult<Written<Appointment>> {
    let appointment_id = parse_id("appointmentId", &input.appointment_id)?;
    let shift_id = parse_id("shiftId", &input.shift_id)?;
    let uow = begin!(store, meta, input);
    schedule_in(
        store,
        estimator,
        uow,
        appointment_id,
        shift_id,
        None,
        input.estimated_time,
    )
    .await
}

/// Schedules inside a begun command: loads the appointment (the target), the shift
/// (checked against `shift_version` when given) and its provider, decides, commits.
/// Without `estimated_time`, the appointment is expected once the usual lead time from
/// scheduling to start has passed (the provider is READY).
async fn schedule_in(
    store: &EventStore,
    estimator: &Estimator,
    mut uow: UnitOfWork,
    appointment_id: Uuid,
    shift_id: Uuid,
    shift_version: Option<i64>,
    estimated_time: Option<DateTime<Utc>>,
) -> AppResult<Written<Appointment>> {
    let appointment = uow.target::<Appointment>(appointment_id).await?;
    let shift = uow.also::<Shift>(shift_id).await?;
    if let (Some(s), Some(expected)) = (&shift, shift_version) {
        if s.version != expected {
            return Err(AppError::Conflict(format!(
                "expected version {expected} but provider shift {} is at version {}",
                s.id, s.version
            )));
        }
    }
    let provider = match &shift {
        Some(s) => uow.read::<Provider>(s.provider_id, Guard::None).await?,
        None => None,
    };
    let estimated_time = match (estimated_time, &appointment) {
        (Some(t), _) => t,
        (None, Some(a)) => {
            estimator
                .scheduled_start(store.pool(), &a.specialty, Utc::now())
                .await?
        }
        (None, None) => Utc::now(),
    };
    let events = scheduling::schedule(
        appointment.as_ref(),
        shift.as_ref(),
        provider.as_ref(),
        estimated_time,
    )?;
    commit_two(uow, appointment, shift, events).await
}

/// The matcher's write: schedules an appointment with the provider on a shift, both
/// exactly at the versions the plan was made on. If either stream moved since, the
/// answer is CONFLICT and nothing is written; the matcher then re-reads and re-decides.
pub struct Assignment {
    pub appointment_id: Uuid,
    pub appointment_version: i64,
    pub shift_id: Uuid,
    pub shift_version: i64,
    pub estimated_time: DateTime<Utc>,
}

pub async fn assign(
    store: &EventStore,
    estimator: &Estimator,
    mut meta: CommandMeta,
    assignment: &Assignment,
) -> AppResult<Written<Appointment>> {
    meta.expected_version = Some(assignment.appointment_version);
    meta.command_id = None;
    let input = serde_json::json!({
        "appointmentId": assignment.appointment_id,
        "shiftId": assignment.shift_id,
    });
    let uow = match store.begin(meta, &input).await? {
        Begun::Fresh(uow) => *uow,
        Begun::Replayed(outcome) => return replayed(store, &outcome).await,
    };
    schedule_in(
        store,
        estimator,
        uow,
        assignment.appointment_id,
        assignment.shift_id,
        Some(assignment.shift_version),
        Some(assignment.estimated_time),
    )
    .await
}

pub async fn cancel_appointment(
    store: &EventStore,
    meta: CommandMeta,
    input: CancelAppointmentInput,
) -> AppResult<Written<Appointment>> {
    let appointment_id = parse_id("appointmentId", &input.appointment_id)?;
    let mut uow = begin!(store, meta, input);
    let appointment = uow.target::<Appointment>(appointment_id).await?;
    let shift = match &appointment {
        Some(a) if a.status == AppointmentStatus::Scheduled => match a.shift_id {
            Some(shift_id) => uow.also::<Shift>(shift_id).await?,
            None => None,
        },
        _ => None,
    };
    let events = scheduling::cancel(appointment.as_ref(), shift.as_ref(), input.reason)?;
    commit_two(uow, appointment, shift, events).await
}

/// Commits a two-stream decision (appointment + shift) atomically.
async fn commit_two(
    mut uow: UnitOfWork,
    appointment: Option<Appointment>,
    shift: Option<Shift>,
    (appointment_events, shift_events): scheduling::TwoStreamEvents,
) -> AppResult<Written<Appointment>> {
    let Some(base) = appointment else {
        return Err(AppError::not_found("appointment not found"));
    };
    let appointment_id = base.id;
    let board_id = Some(base.board_id);
    uow.stage::<Appointment>(appointment_id, board_id, Some(&base), &appointment_events);
    if let Some(s) = &shift {
        uow.stage::<Shift>(s.id, Some(s.board_id), Some(s), &shift_events);
    }
    let committed = uow.commit().await?;
    let entity = committed.fold(appointment_id, Some(base), &appointment_events)?;
    let shift = match shift {
        Some(s) if !shift_events.is_empty() => {
            Some(committed.fold(s.id, Some(s), &shift_events)?)
        }
        other => other,
    };
    Ok(Written {
        version: entity.version(),
        position: committed.position(),
        entity,
        shift,
    })
}

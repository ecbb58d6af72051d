//! Load → decide → append: the one path every mutation takes.
//!
//! Each command is a typed value (ids are newtypes, options parsed): GraphQL inputs are
//! converted into them in `graphql::inputs`, the matcher and the demo build them
//! directly. A command opens a unit of work (which answers repeats of a `commandId`
//! from memory), loads what the decision needs (locking in exclusive mode), passes the
//! [`authorize`] slot with the actor in `CommandMeta`, calls the pure domain, stages the
//! events and commits. The new state is folded in memory from the events just
//! appended, so a mutation costs no read-back.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::appointment::{self, AppointmentCommand};
use crate::domain::board::{self, BoardCommand};
use crate::domain::provider::{self, ProviderCommand};
use crate::domain::shift::{self, ShiftCommand};
use crate::domain::{
    scheduling, Aggregate, Appointment, AppointmentId, AppointmentStatus, Board, BoardId, Provider,
    ProviderId, Shift, ShiftId,
};
use crate::error::{AppError, AppResult};
use crate::estimates::Estimator;
use crate::event_store::unit_of_work::{Begun, CommandMeta, Guard, Outcome, UnitOfWork};
use crate::event_store::{EventStore, ReadLimit};
use crate::identity::matrix::{BoardFacts, Facts, Operation};
use crate::identity::{Actor, Principal, Scope};
use crate::projections::board_view::contents_from_events;

/// The options every command carries. Not part of the command's fingerprint: a retry
/// may add or drop them without becoming "a different command".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOptions {
    /// Optimistic check: the target stream's version the client last saw. A mismatch
    /// answers CONFLICT. `None`: commands on the stream are serialised instead.
    pub expected_version: Option<i64>,
    /// Idempotency key: a repeat returns the first result and appends nothing.
    pub command_id: Option<String>,
}

// The command values. Each serialises (options aside) to its fingerprint: what a
// repeated `commandId` is compared with. Field names are the API's, so a fingerprint
// stored from the GraphQL input before these types existed still compares equal when
// the client spelled ids and dates canonically (lower-case UUIDs, `YYYY-MM-DD`).

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenBoard {
    pub name: String,
    pub specialty: String,
    pub region: String,
    pub date: NaiveDate,
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseBoard {
    pub board_id: BoardId,
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterProvider {
    pub name: String,
    pub specialties: Vec<String>,
    pub licensed_regions: Vec<String>,
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinBoard {
    pub board_id: BoardId,
    pub provider_id: ProviderId,
    #[serde(skip)]
    pub options: CommandOptions,
}

/// One of the commands that act on a provider shift alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActOnShift {
    /// Which command: recorded as the operation, so not repeated in the fingerprint.
    #[serde(skip)]
    pub action: ShiftAction,
    pub shift_id: ShiftId,
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestAppointment {
    pub board_id: BoardId,
    /// Whose appointment it is: a coordinator acting on behalf of a patient names
    /// them; a patient's own request takes it from their token (see `authorize`).
    pub patient_id: Option<String>,
    pub patient_name: String,
    pub specialty: String,
    pub region: String,
    pub reason: String,
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleAppointment {
    pub appointment_id: AppointmentId,
    pub shift_id: ShiftId,
    /// When the appointment is expected to start; `None`: now plus the usual time from
    /// scheduling to start for the specialty (the wait-time model).
    pub estimated_time: Option<DateTime<Utc>>,
    /// The matcher's optimistic check on the shift (the appointment's is
    /// `options.expected_version`): the plan was made on this version. Clients have no
    /// such option.
    #[serde(skip)]
    pub expected_shift_version: Option<i64>,
    #[serde(skip)]
    pub options: CommandOptions,
}

/// One of the appointment commands that need nothing but the id.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActOnAppointment {
    /// Which command: recorded as the operation, so not repeated in the fingerprint.
    #[serde(skip)]
    pub action: AppointmentAction,
    pub appointment_id: AppointmentId,
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelAppointment {
    pub appointment_id: AppointmentId,
    pub reason: String,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppointmentAction {
    Start,
    Finish,
}

impl AppointmentAction {
    pub fn operation(self) -> &'static str {
        match self {
            AppointmentAction::Start => "startAppointment",
            AppointmentAction::Finish => "finishAppointment",
        }
    }
}

/// What a command acts on, as loaded inside its transaction: what authorization of
/// the command will be judged by.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A Board to be opened.
    NewBoard {
        specialty: &'a str,
        region: &'a str,
    },
    Board(Option<&'a Board>),
    /// A provider to be registered.
    NewProvider,
    /// A provider joining a Board.
    Join {
        board: Option<&'a Board>,
        provider_id: ProviderId,
    },
    Shift(Option<&'a Shift>),
    /// An appointment to be requested on a Board, for this patient.
    Request {
        board: Option<&'a Board>,
        patient_id: Option<&'a str>,
    },
    Appointment(Option<&'a Appointment>),
    Scheduling {
        appointment: Option<&'a Appointment>,
        shift: Option<&'a Shift>,
    },
}

/// THE PLACE FOR AUTHORIZATION OF MUTATIONS. Every command calls this after loading
/// what it acts on and before deciding, with the actor it runs for (`meta.actor`): the
/// permission matrix (`identity::authorize`) judges the command's operation with the
/// facts loaded here (the Board's region and specialty, the shift's provider, the
/// appointment's patient and assigned provider). A refusal rolls the transaction back:
/// nothing is appended. Careboard's own actors (the matcher, the demo) and callers with
/// authentication off (which the GraphQL edge admits only then) are not judged.
async fn authorize(uow: &mut UnitOfWork, target: Target<'_>) -> AppResult<()> {
    let Some(principal) = uow.meta().actor.principal().cloned() else {
        return Ok(());
    };
    let operation = Operation::named(uow.meta().operation).ok_or_else(|| {
        AppError::Forbidden(format!(
            "{} has no row in the permission matrix",
            uow.meta().operation
        ))
    })?;
    // Refused by role before anything more is read.
    if crate::identity::matrix::rule(operation, principal.scope.role())
        == crate::identity::matrix::Rule::Denied
    {
        return Err(authorize_matrix(&principal, operation, &Facts::default()).unwrap_err());
    }
    let board_facts = |b: &Board| BoardFacts {
        region: b.region.clone(),
        specialty: b.specialty.clone(),
        providers: Vec::new(),
    };
    let facts = match target {
        Target::NewBoard { specialty, region } => Facts {
            board: Some(BoardFacts {
                region: region.to_string(),
                specialty: specialty.to_string(),
                providers: Vec::new(),
            }),
            ..Facts::default()
        },
        Target::Board(board) => Facts {
            board: board.map(board_facts),
            ..Facts::default()
        },
        Target::NewProvider => Facts::default(),
        Target::Join { board, provider_id } => Facts {
            board: board.map(board_facts),
            provider_id: Some(provider_id.as_uuid()),
            ..Facts::default()
        },
        Target::Shift(shift) => {
            let board = match shift {
                Some(s) => uow.read::<Board>(s.board_id, Guard::None).await?,
                None => None,
            };
            Facts {
                board: board.as_ref().map(board_facts),
                provider_id: shift.map(|s| s.provider_id),
                ..Facts::default()
            }
        }
        Target::Request { board, patient_id } => Facts {
            board: board.map(board_facts),
            patient_id: patient_id.map(str::to_string),
            ..Facts::default()
        },
        Target::Appointment(appointment)
        | Target::Scheduling {
            appointment,
            shift: _,
        } => {
            let board = match appointment {
                Some(a) => uow.read::<Board>(a.board_id, Guard::None).await?,
                None => None,
            };
            Facts {
                board: board.as_ref().map(board_facts),
                patient_id: appointment.and_then(|a| a.patient_id.clone()),
                assigned_provider_id: appointment.and_then(|a| a.provider_id),
                ..Facts::default()
            }
        }
    };
    authorize_matrix(&principal, operation, &facts)
}

fn authorize_matrix(principal: &Principal, operation: Operation, facts: &Facts) -> AppResult<()> {
    crate::identity::authorize(principal, operation, facts).map_err(AppError::from)
}

/// Whose appointment a request is for: a patient's own id from their token (naming
/// another patient is refused), otherwise the id a coordinator gave on their behalf.
fn requested_for(
    actor: &crate::identity::Actor,
    given: Option<String>,
) -> AppResult<Option<String>> {
    match actor.principal().map(|p| &p.scope) {
        Some(Scope::Patient { patient_id }) => match given {
            Some(other) if other.trim() != patient_id => Err(AppError::Forbidden(
                "the patient role may use requestAppointment only for themselves: leave \
                 patientId out"
                    .into(),
            )),
            _ => Ok(Some(patient_id.clone())),
        },
        _ => Ok(given),
    }
}

/// Fills `meta` with the per-command options.
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
    meta.command_id = options.command_id.clone();
    Ok(meta)
}

/// What a repeated `commandId` is compared with: the command value itself (options
/// aside), so the same command always has the same fingerprint, however it was sent.
pub fn fingerprint(command: &impl Serialize) -> AppResult<Value> {
    serde_json::to_value(command).map_err(|e| AppError::Internal(e.into()))
}

/// What a repeated `commandId` from `actor` is compared with: the command, and, when a
/// verified principal sends it, who. A `commandId` is its sender's idempotency key: from
/// anyone else (who may have read it in the event log) it is "a different command",
/// whatever they send with it, so the first sender's result is never replayed to
/// another caller (replays skip authorization), and a right guess of the command's
/// patient fields looks the same as a wrong one.
fn fingerprint_for(actor: &Actor, command: &impl Serialize) -> AppResult<Value> {
    let mut value = fingerprint(command)?;
    if let (Some(principal), Value::Object(fields)) = (actor.principal(), &mut value) {
        // Not a command field name (those are camelCase words), so never confused.
        fields.insert("@sender".into(), Value::String(principal.subject.clone()));
    }
    Ok(value)
}

/// Opens the unit of work, or returns the remembered result of a repeated command.
macro_rules! begin {
    ($store:expr, $meta:expr, $command:expr) => {{
        let meta: CommandMeta = $meta;
        // Only a `commandId` is compared with a fingerprint.
        let sent = match $command.options.command_id {
            Some(_) => fingerprint_for(&meta.actor, &$command)?,
            None => Value::Null,
        };
        match $store
            .begin(with_options(meta, &$command.options)?, &sent)
            .await?
        {
            Begun::Fresh(uow) => *uow,
            Begun::Replayed(outcome) => return replayed($store, &outcome).await,
        }
    }};
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
    command: OpenBoard,
) -> AppResult<Written<Board>> {
    let mut uow = begin!(store, meta, command);
    authorize(
        &mut uow,
        Target::NewBoard {
            specialty: &command.specialty,
            region: &command.region,
        },
    )
    .await?;
    let id = BoardId::new_random().as_uuid();
    let events = board::decide(
        None,
        BoardCommand::Open {
            name: command.name,
            specialty: command.specialty,
            region: command.region,
            date: command.date,
        },
    )?;
    commit_one(uow, id, Some(id), None, events).await
}

pub async fn close_board(
    store: &EventStore,
    meta: CommandMeta,
    command: CloseBoard,
) -> AppResult<Written<Board>> {
    let board_id = command.board_id.as_uuid();
    let mut uow = begin!(store, meta, command);
    // Always locked, in optimistic mode too: requests and joins hold the Board FOR SHARE,
    // so nothing new can arrive between counting the open work and closing.
    let board = uow.target_locked::<Board>(board_id).await?;
    authorize(&mut uow, Target::Board(board.as_ref())).await?;
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
    command: RegisterProvider,
) -> AppResult<Written<Provider>> {
    let mut uow = begin!(store, meta, command);
    authorize(&mut uow, Target::NewProvider).await?;
    let events = provider::decide(
        None,
        ProviderCommand::Register {
            name: command.name,
            specialties: command.specialties,
            licensed_regions: command.licensed_regions,
        },
    )?;
    commit_one(uow, ProviderId::new_random().as_uuid(), None, None, events).await
}

pub async fn join_board(
    store: &EventStore,
    meta: CommandMeta,
    command: JoinBoard,
) -> AppResult<Written<Shift>> {
    let (board_id, provider_id) = (command.board_id, command.provider_id);
    let mut uow = begin!(store, meta, command);
    let board = uow.read::<Board>(board_id.as_uuid(), Guard::Share).await?;
    let provider = uow
        .read::<Provider>(provider_id.as_uuid(), Guard::None)
        .await?;
    authorize(
        &mut uow,
        Target::Join {
            board: board.as_ref(),
            provider_id,
        },
    )
    .await?;
    let shift_id = ShiftId::of(board_id, provider_id).as_uuid();
    let existing = uow.target::<Shift>(shift_id).await?;
    let events = shift::decide(
        existing.as_ref(),
        ShiftCommand::Join {
            board: board.map(Box::new),
            provider: provider.map(Box::new),
        },
    )?;
    commit_one(uow, shift_id, Some(board_id.as_uuid()), existing, events).await
}

pub async fn shift_action(
    store: &EventStore,
    meta: CommandMeta,
    command: ActOnShift,
) -> AppResult<Written<Shift>> {
    let shift_id = command.shift_id.as_uuid();
    let mut uow = begin!(store, meta, command);
    let shift = uow.target::<Shift>(shift_id).await?;
    authorize(&mut uow, Target::Shift(shift.as_ref())).await?;
    let decision = match command.action {
        ShiftAction::MarkReady => ShiftCommand::MarkReady,
        ShiftAction::Pause => ShiftCommand::Pause,
        ShiftAction::CompleteCharting => ShiftCommand::CompleteCharting { now: Utc::now() },
        ShiftAction::SignOff => ShiftCommand::SignOff,
    };
    let events = shift::decide(shift.as_ref(), decision)?;
    let board_id = shift.as_ref().map(|s| s.board_id);
    commit_one(uow, shift_id, board_id, shift, events).await
}

pub async fn request_appointment(
    store: &EventStore,
    meta: CommandMeta,
    command: RequestAppointment,
) -> AppResult<Written<Appointment>> {
    let board_id = command.board_id.as_uuid();
    let mut uow = begin!(store, meta, command);
    let board = uow.read::<Board>(board_id, Guard::Share).await?;
    let patient_id = requested_for(&uow.meta().actor, command.patient_id)?;
    authorize(
        &mut uow,
        Target::Request {
            board: board.as_ref(),
            patient_id: patient_id.as_deref(),
        },
    )
    .await?;
    let events = appointment::decide(
        None,
        AppointmentCommand::Request {
            board,
            patient_id,
            patient_name: command.patient_name,
            specialty: command.specialty,
            region: command.region,
            reason: command.reason,
        },
    )?;
    commit_one(
        uow,
        AppointmentId::new_random().as_uuid(),
        Some(board_id),
        None,
        events,
    )
    .await
}

pub async fn appointment_action(
    store: &EventStore,
    meta: CommandMeta,
    command: ActOnAppointment,
) -> AppResult<Written<Appointment>> {
    let appointment_id = command.appointment_id.as_uuid();
    let mut uow = begin!(store, meta, command);
    let appointment = uow.target::<Appointment>(appointment_id).await?;
    authorize(&mut uow, Target::Appointment(appointment.as_ref())).await?;
    match command.action {
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

/// Schedules an appointment with the provider on a shift; both streams change together.
/// Clients and the matcher send the same command: the matcher with both streams'
/// versions (`options.expected_version`, `expected_shift_version`) fixed to what its
/// plan was made on, so a stream that moved since answers CONFLICT and nothing is
/// written. `estimator` answers when the command has no `estimated_time`: the
/// application's one estimator, so its caches serve every command.
pub async fn schedule_appointment(
    store: &EventStore,
    estimator: &Estimator,
    meta: CommandMeta,
    command: ScheduleAppointment,
) -> AppResult<Written<Appointment>> {
    let appointment_id = command.appointment_id.as_uuid();
    let shift_id = command.shift_id.as_uuid();
    let mut uow = begin!(store, meta, command);
    let appointment = uow.target::<Appointment>(appointment_id).await?;
    let shift = uow.also::<Shift>(shift_id).await?;
    if let (Some(s), Some(expected)) = (&shift, command.expected_shift_version) {
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
    authorize(
        &mut uow,
        Target::Scheduling {
            appointment: appointment.as_ref(),
            shift: shift.as_ref(),
        },
    )
    .await?;
    // Without a time, the appointment is expected once the usual lead time from
    // scheduling to start has passed (the provider is READY).
    let estimated_time = match (command.estimated_time, &appointment) {
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

pub async fn cancel_appointment(
    store: &EventStore,
    meta: CommandMeta,
    command: CancelAppointment,
) -> AppResult<Written<Appointment>> {
    let appointment_id = command.appointment_id.as_uuid();
    let mut uow = begin!(store, meta, command);
    let appointment = uow.target::<Appointment>(appointment_id).await?;
    let shift = match &appointment {
        Some(a) if a.status == AppointmentStatus::Scheduled => match a.shift_id {
            Some(shift_id) => uow.also::<Shift>(shift_id).await?,
            None => None,
        },
        _ => None,
    };
    authorize(&mut uow, Target::Appointment(appointment.as_ref())).await?;
    let events = scheduling::cancel(appointment.as_ref(), shift.as_ref(), command.reason)?;
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

//! Appointment commands: request, schedule (two streams), start, finish, cancel.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::authorize::Target;
use super::path::{authorized, begin, commit_one, commit_two, guarded};
use super::{CommandOptions, Written};
use crate::domain::appointment::{self, AppointmentCommand};
use crate::domain::{
    scheduling, Appointment, AppointmentId, AppointmentStatus, BoardId, Provider, Shift, ShiftId,
};
use crate::error::{AppError, AppResult};
use crate::estimates::Estimator;
use crate::event_store::unit_of_work::{CommandMeta, Guard};
use crate::event_store::EventStore;
use crate::identity::Scope;

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

pub async fn request_appointment(
    store: &EventStore,
    meta: CommandMeta,
    command: RequestAppointment,
) -> AppResult<Written<Appointment>> {
    guarded(meta, |meta| {
        request_appointment_once(store, meta, command.clone())
    })
    .await
}

async fn request_appointment_once(
    store: &EventStore,
    meta: CommandMeta,
    command: RequestAppointment,
) -> AppResult<Written<Appointment>> {
    let board_id = command.board_id;
    let mut uow = begin!(store, meta, command);
    let board = uow.read_board(board_id).await?;
    let patient_id = requested_for(&uow.meta().actor, command.patient_id)?;
    authorized!(
        store,
        uow,
        Target::Request {
            board: board.as_ref(),
            patient_id: patient_id.as_deref(),
        }
    );
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
        AppointmentId::new_random(),
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
    let appointment_id = command.appointment_id;
    let mut uow = begin!(store, meta, command);
    let appointment = uow.target::<Appointment>(appointment_id).await?;
    authorized!(store, uow, Target::Appointment(appointment.as_ref()));
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
    let appointment_id = command.appointment_id;
    let shift_id = command.shift_id;
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
    authorized!(
        store,
        uow,
        Target::Scheduling {
            appointment: appointment.as_ref(),
            shift: shift.as_ref(),
        }
    );
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
    let appointment_id = command.appointment_id;
    let mut uow = begin!(store, meta, command);
    let appointment = uow.target::<Appointment>(appointment_id).await?;
    let shift = match &appointment {
        Some(a) if a.status == AppointmentStatus::Scheduled => match a.shift_id {
            Some(shift_id) => uow.also::<Shift>(shift_id).await?,
            None => None,
        },
        _ => None,
    };
    authorized!(store, uow, Target::Appointment(appointment.as_ref()));
    let events = scheduling::cancel(appointment.as_ref(), shift.as_ref(), command.reason)?;
    commit_two(uow, appointment, shift, events).await
}

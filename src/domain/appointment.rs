//! Appointment: one patient's online visit, from request to finish or cancellation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{AppointmentId, BoardId, ProviderId, ShiftId};
use super::{
    fold_error, region, required_text, specialty, Aggregate, Board, BoardStatus, DomainError,
    DomainEvent, EventContext, FoldError, StreamType,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppointmentStatus {
    Requested,
    Scheduled,
    Started,
    Finished,
    Cancelled,
}

impl AppointmentStatus {
    /// Waiting, scheduled or started: work that keeps a Board open.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            AppointmentStatus::Requested
                | AppointmentStatus::Scheduled
                | AppointmentStatus::Started
        )
    }
}

impl std::fmt::Display for AppointmentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppointmentStatus::Requested => "REQUESTED",
            AppointmentStatus::Scheduled => "SCHEDULED",
            AppointmentStatus::Started => "STARTED",
            AppointmentStatus::Finished => "FINISHED",
            AppointmentStatus::Cancelled => "CANCELLED",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Appointment {
    pub id: AppointmentId,
    pub board_id: BoardId,
    /// The patient it is for, as their token names them (DESIGN §9: a patient sees
    /// their own). `None` for appointments requested before Careboard recorded it: only
    /// coordinators and admins see those.
    #[serde(default)]
    pub patient_id: Option<String>,
    pub patient_name: String,
    pub specialty: String,
    pub region: String,
    pub reason: String,
    pub status: AppointmentStatus,
    pub provider_id: Option<ProviderId>,
    pub shift_id: Option<ShiftId>,
    pub estimated_time: Option<DateTime<Utc>>,
    pub requested_at: DateTime<Utc>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancellation_reason: Option<String>,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AppointmentEvent {
    #[serde(rename_all = "camelCase")]
    AppointmentRequested {
        board_id: BoardId,
        /// Absent in events written before patients were identified.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patient_id: Option<String>,
        patient_name: String,
        specialty: String,
        region: String,
        reason: String,
    },
    #[serde(rename_all = "camelCase")]
    AppointmentScheduled {
        provider_id: ProviderId,
        shift_id: ShiftId,
        estimated_time: DateTime<Utc>,
    },
    AppointmentStarted {},
    AppointmentFinished {},
    AppointmentCancelled {
        reason: String,
    },
}

impl DomainEvent for AppointmentEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AppointmentEvent::AppointmentRequested { .. } => "AppointmentRequested",
            AppointmentEvent::AppointmentScheduled { .. } => "AppointmentScheduled",
            AppointmentEvent::AppointmentStarted {} => "AppointmentStarted",
            AppointmentEvent::AppointmentFinished {} => "AppointmentFinished",
            AppointmentEvent::AppointmentCancelled { .. } => "AppointmentCancelled",
        }
    }
}

// Built once per command and consumed at once: boxing the Board would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AppointmentCommand {
    /// `board` is looked up first; `None` means it does not exist.
    Request {
        board: Option<Board>,
        /// Whose appointment it is: the requesting patient, or the one a coordinator
        /// acts for (`None`: nobody identified).
        patient_id: Option<String>,
        patient_name: String,
        specialty: String,
        region: String,
        reason: String,
    },
    Schedule {
        provider_id: ProviderId,
        shift_id: ShiftId,
        estimated_time: DateTime<Utc>,
    },
    Start,
    Finish,
    Cancel {
        reason: String,
    },
}

fn require(
    appointment: &Appointment,
    action: &str,
    allowed: &[AppointmentStatus],
) -> Result<(), DomainError> {
    if allowed.contains(&appointment.status) {
        return Ok(());
    }
    let expected = allowed
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" or ");
    Err(DomainError::InvalidTransition(format!(
        "cannot {action}: appointment is {}, not {expected}",
        appointment.status
    )))
}

pub fn decide(
    state: Option<&Appointment>,
    command: AppointmentCommand,
) -> Result<Vec<AppointmentEvent>, DomainError> {
    use AppointmentCommand as C;
    let (appointment, command) = match (state, command) {
        (
            None,
            C::Request {
                board,
                patient_id,
                patient_name,
                specialty: s,
                region: r,
                reason,
            },
        ) => {
            // Validate the input before looking at the Board: a malformed request is
            // a validation error whatever state the Board is in.
            let patient_name = required_text("patientName", &patient_name, 200)?;
            let specialty = specialty("specialty", &s)?;
            let region = region("region", &r)?;
            let reason = required_text("reason", &reason, 2000)?;
            let patient_id = patient_id
                .map(|p| required_text("patientId", &p, 200))
                .transpose()?;
            let board = board.ok_or_else(|| DomainError::NotFound("board not found".into()))?;
            if board.status != BoardStatus::Open {
                return Err(DomainError::InvalidTransition(
                    "cannot request appointment: board is CLOSED, not OPEN".into(),
                ));
            }
            // Only providers on this Board can take the patient, and every one of them
            // fits the Board's specialty and region: a patient who fits neither would
            // wait forever. Names stay out of the message (it reaches logs and clients).
            if specialty != board.specialty {
                return Err(DomainError::Validation(format!(
                    "cannot request appointment: specialty '{specialty}' does not match the \
                     Board's specialty '{}'; request it on a {specialty} Board",
                    board.specialty
                )));
            }
            if region != board.region {
                return Err(DomainError::Validation(format!(
                    "cannot request appointment: region '{region}' does not match the \
                     Board's region '{}'; request it on a Board for {region}",
                    board.region
                )));
            }
            return Ok(vec![AppointmentEvent::AppointmentRequested {
                board_id: board.id,
                patient_id,
                patient_name,
                specialty,
                region,
                reason,
            }]);
        }
        (Some(a), C::Request { .. }) => {
            return Err(DomainError::InvalidTransition(format!(
                "appointment {} has already been requested",
                a.id
            )))
        }
        (None, _) => return Err(DomainError::NotFound("appointment not found".into())),
        (Some(a), command) => (a, command),
    };
    match command {
        C::Request { .. } => unreachable!("handled above"),
        C::Schedule {
            provider_id,
            shift_id,
            estimated_time,
        } => {
            require(
                appointment,
                "schedule appointment",
                &[AppointmentStatus::Requested],
            )?;
            Ok(vec![AppointmentEvent::AppointmentScheduled {
                provider_id,
                shift_id,
                estimated_time,
            }])
        }
        C::Start => {
            require(
                appointment,
                "start appointment",
                &[AppointmentStatus::Scheduled],
            )?;
            Ok(vec![AppointmentEvent::AppointmentStarted {}])
        }
        C::Finish => {
            require(
                appointment,
                "finish appointment",
                &[AppointmentStatus::Started],
            )?;
            Ok(vec![AppointmentEvent::AppointmentFinished {}])
        }
        C::Cancel { reason } => {
            let reason = required_text("reason", &reason, 2000)?;
            require(
                appointment,
                "cancel appointment",
                &[AppointmentStatus::Requested, AppointmentStatus::Scheduled],
            )?;
            Ok(vec![AppointmentEvent::AppointmentCancelled { reason }])
        }
    }
}

impl Aggregate for Appointment {
    const STREAM_TYPE: StreamType = StreamType::Appointment;
    type Event = AppointmentEvent;
    type Command = AppointmentCommand;

    fn decide(
        state: Option<&Self>,
        command: AppointmentCommand,
    ) -> Result<Vec<AppointmentEvent>, DomainError> {
        decide(state, command)
    }

    fn apply(
        state: Option<Self>,
        event: &AppointmentEvent,
        ctx: &EventContext,
    ) -> Result<Self, FoldError> {
        use AppointmentEvent as E;
        let mut a = match (state, event) {
            (
                None,
                E::AppointmentRequested {
                    board_id,
                    patient_id,
                    patient_name,
                    specialty,
                    region,
                    reason,
                },
            ) => {
                return Ok(Appointment {
                    id: ctx.stream_id.into(),
                    board_id: *board_id,
                    patient_id: patient_id.clone(),
                    patient_name: patient_name.clone(),
                    specialty: specialty.clone(),
                    region: region.clone(),
                    reason: reason.clone(),
                    status: AppointmentStatus::Requested,
                    provider_id: None,
                    shift_id: None,
                    estimated_time: None,
                    requested_at: ctx.at,
                    scheduled_at: None,
                    started_at: None,
                    finished_at: None,
                    cancelled_at: None,
                    cancellation_reason: None,
                    version: ctx.version,
                })
            }
            (None, e) => return Err(fold_error(e, ctx, "appointment has not been requested")),
            (Some(_), e @ E::AppointmentRequested { .. }) => {
                return Err(fold_error(e, ctx, "appointment already requested"))
            }
            (Some(a), _) => a,
        };
        advance(&mut a, event, ctx);
        Ok(a)
    }

    fn apply_in_place(
        a: &mut Self,
        event: &AppointmentEvent,
        ctx: &EventContext,
    ) -> Result<(), FoldError> {
        if let e @ AppointmentEvent::AppointmentRequested { .. } = event {
            return Err(fold_error(e, ctx, "appointment already requested"));
        }
        advance(a, event, ctx);
        Ok(())
    }

    fn version(&self) -> i64 {
        self.version
    }
}

/// An event after `AppointmentRequested`, applied to the appointment it follows.
fn advance(a: &mut Appointment, event: &AppointmentEvent, ctx: &EventContext) {
    use AppointmentEvent as E;
    match event {
        E::AppointmentRequested { .. } => unreachable!("handled above"),
        E::AppointmentScheduled {
            provider_id,
            shift_id,
            estimated_time,
        } => {
            a.status = AppointmentStatus::Scheduled;
            a.provider_id = Some(*provider_id);
            a.shift_id = Some(*shift_id);
            a.estimated_time = Some(*estimated_time);
            a.scheduled_at = Some(ctx.at);
        }
        E::AppointmentStarted {} => {
            a.status = AppointmentStatus::Started;
            a.started_at = Some(ctx.at);
        }
        E::AppointmentFinished {} => {
            a.status = AppointmentStatus::Finished;
            a.finished_at = Some(ctx.at);
        }
        E::AppointmentCancelled { reason } => {
            a.status = AppointmentStatus::Cancelled;
            a.cancelled_at = Some(ctx.at);
            a.cancellation_reason = Some(reason.clone());
        }
    }
    a.version = ctx.version;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;
    use chrono::NaiveDate;
    use uuid::Uuid;

    fn board(status: BoardStatus) -> Board {
        Board {
            id: Uuid::from_u128(1).into(),
            name: "Peds".into(),
            specialty: "pediatrics".into(),
            region: "TX".into(),
            date: NaiveDate::from_ymd_opt(2022, 7, 18).unwrap(),
            status,
            opened_at: at(0),
            closed_at: None,
            version: 1,
        }
    }

    fn request(board: Option<Board>) -> AppointmentCommand {
        AppointmentCommand::Request {
            board,
            patient_id: Some(" patient-7 ".into()),
            patient_name: " Sam Lee ".into(),
            specialty: "Pediatrics".into(),
            region: "tx".into(),
            reason: "fever".into(),
        }
    }

    fn requested() -> AppointmentEvent {
        AppointmentEvent::AppointmentRequested {
            board_id: Uuid::from_u128(1).into(),
            patient_id: Some("patient-7".into()),
            patient_name: "Sam Lee".into(),
            specialty: "pediatrics".into(),
            region: "TX".into(),
            reason: "fever".into(),
        }
    }

    fn scheduled() -> AppointmentEvent {
        AppointmentEvent::AppointmentScheduled {
            provider_id: Uuid::from_u128(2).into(),
            shift_id: Uuid::from_u128(3).into(),
            estimated_time: at(30),
        }
    }

    fn schedule_cmd() -> AppointmentCommand {
        AppointmentCommand::Schedule {
            provider_id: Uuid::from_u128(2).into(),
            shift_id: Uuid::from_u128(3).into(),
            estimated_time: at(30),
        }
    }

    #[test]
    fn requesting_on_an_open_board_records_a_waiting_appointment() {
        let events = when::<Appointment>(&[], request(Some(board(BoardStatus::Open)))).unwrap();
        assert_eq!(events, vec![requested()]);
        let a = given::<Appointment>(&events).unwrap();
        assert_eq!(a.status, AppointmentStatus::Requested);
        assert_eq!(a.requested_at, at(0));
    }

    #[test]
    fn requesting_on_a_closed_board_is_rejected() {
        assert_eq!(
            rejected_with(when::<Appointment>(
                &[],
                request(Some(board(BoardStatus::Closed)))
            )),
            transition_error("cannot request appointment: board is CLOSED, not OPEN")
        );
    }

    #[test]
    fn requesting_on_an_unknown_board_is_not_found() {
        assert_eq!(
            rejected_with(when::<Appointment>(&[], request(None))),
            DomainError::NotFound("board not found".into())
        );
    }

    #[test]
    fn requesting_a_specialty_the_board_does_not_serve_is_a_validation_error() {
        let cmd = AppointmentCommand::Request {
            board: Some(board(BoardStatus::Open)),
            patient_id: None,
            patient_name: "Ana Ruiz".into(),
            specialty: "Dermatology".into(),
            region: "TX".into(),
            reason: "rash".into(),
        };
        assert_eq!(
            rejected_with(when::<Appointment>(&[], cmd)),
            DomainError::Validation(
                "cannot request appointment: specialty 'dermatology' does not match the \
                 Board's specialty 'pediatrics'; request it on a dermatology Board"
                    .into()
            )
        );
    }

    #[test]
    fn requesting_from_a_region_the_board_does_not_serve_is_a_validation_error() {
        let cmd = AppointmentCommand::Request {
            board: Some(board(BoardStatus::Open)),
            patient_id: None,
            patient_name: "Ana Ruiz".into(),
            specialty: "pediatrics".into(),
            region: "nm".into(),
            reason: "rash".into(),
        };
        assert_eq!(
            rejected_with(when::<Appointment>(&[], cmd)),
            DomainError::Validation(
                "cannot request appointment: region 'NM' does not match the Board's region \
                 'TX'; request it on a Board for NM"
                    .into()
            )
        );
    }

    #[test]
    fn requesting_without_a_patient_name_is_a_validation_error() {
        let cmd = AppointmentCommand::Request {
            board: Some(board(BoardStatus::Open)),
            patient_id: None,
            patient_name: "".into(),
            specialty: "x".into(),
            region: "TX".into(),
            reason: "r".into(),
        };
        assert_eq!(
            rejected_with(when::<Appointment>(&[], cmd)),
            DomainError::Validation("patientName must not be empty".into())
        );
    }

    #[test]
    fn scheduling_a_requested_appointment_records_provider_and_estimate() {
        assert_eq!(
            when::<Appointment>(&[requested()], schedule_cmd()).unwrap(),
            vec![scheduled()]
        );
        let a = given::<Appointment>(&[requested(), scheduled()]).unwrap();
        assert_eq!(a.status, AppointmentStatus::Scheduled);
        assert_eq!(a.provider_id, Some(Uuid::from_u128(2).into()));
        assert_eq!(a.estimated_time, Some(at(30)));
    }

    #[test]
    fn scheduling_twice_is_rejected() {
        assert_eq!(
            rejected_with(when::<Appointment>(
                &[requested(), scheduled()],
                schedule_cmd()
            )),
            transition_error(
                "cannot schedule appointment: appointment is SCHEDULED, not REQUESTED"
            )
        );
    }

    #[test]
    fn starting_requires_a_scheduled_appointment() {
        assert_eq!(
            when::<Appointment>(&[requested(), scheduled()], AppointmentCommand::Start).unwrap(),
            vec![AppointmentEvent::AppointmentStarted {}]
        );
        assert_eq!(
            rejected_with(when::<Appointment>(
                &[requested()],
                AppointmentCommand::Start
            )),
            transition_error("cannot start appointment: appointment is REQUESTED, not SCHEDULED")
        );
    }

    #[test]
    fn finishing_requires_a_started_appointment() {
        let started = [
            requested(),
            scheduled(),
            AppointmentEvent::AppointmentStarted {},
        ];
        assert_eq!(
            when::<Appointment>(&started, AppointmentCommand::Finish).unwrap(),
            vec![AppointmentEvent::AppointmentFinished {}]
        );
        assert_eq!(
            rejected_with(when::<Appointment>(
                &[requested(), scheduled()],
                AppointmentCommand::Finish
            )),
            transition_error("cannot finish appointment: appointment is SCHEDULED, not STARTED")
        );
        let mut finished = started.to_vec();
        finished.push(AppointmentEvent::AppointmentFinished {});
        let a = given::<Appointment>(&finished).unwrap();
        assert_eq!(
            (a.status, a.started_at, a.finished_at),
            (AppointmentStatus::Finished, Some(at(2)), Some(at(3)))
        );
    }

    #[test]
    fn cancelling_a_waiting_or_scheduled_appointment_records_the_reason() {
        let cancel = || AppointmentCommand::Cancel {
            reason: "patient left".into(),
        };
        let expected = vec![AppointmentEvent::AppointmentCancelled {
            reason: "patient left".into(),
        }];
        assert_eq!(
            when::<Appointment>(&[requested()], cancel()).unwrap(),
            expected
        );
        assert_eq!(
            when::<Appointment>(&[requested(), scheduled()], cancel()).unwrap(),
            expected
        );
        let mut history = vec![requested()];
        history.extend(expected);
        let a = given::<Appointment>(&history).unwrap();
        assert_eq!(a.status, AppointmentStatus::Cancelled);
        assert_eq!(a.cancellation_reason.as_deref(), Some("patient left"));
    }

    #[test]
    fn cancelling_a_started_appointment_is_rejected() {
        let started = [
            requested(),
            scheduled(),
            AppointmentEvent::AppointmentStarted {},
        ];
        assert_eq!(
            rejected_with(when::<Appointment>(
                &started,
                AppointmentCommand::Cancel { reason: "x".into() }
            )),
            transition_error(
                "cannot cancel appointment: appointment is STARTED, not REQUESTED or SCHEDULED"
            )
        );
    }

    #[test]
    fn cancelling_without_a_reason_is_a_validation_error() {
        assert_eq!(
            rejected_with(when::<Appointment>(
                &[requested()],
                AppointmentCommand::Cancel { reason: " ".into() }
            )),
            DomainError::Validation("reason must not be empty".into())
        );
    }

    #[test]
    fn commands_on_an_unknown_appointment_are_not_found() {
        assert_eq!(
            rejected_with(when::<Appointment>(&[], AppointmentCommand::Start)),
            DomainError::NotFound("appointment not found".into())
        );
    }

    #[test]
    fn folding_in_place_matches_folding_onto_a_copy_and_a_refusal_changes_nothing() {
        let requested = requested();
        assert_in_place_matches_copy::<Appointment>(&[
            AppointmentEvent::AppointmentStarted {},
            requested.clone(),
            AppointmentEvent::AppointmentScheduled {
                provider_id: Uuid::from_u128(2).into(),
                shift_id: Uuid::from_u128(3).into(),
                estimated_time: at(5),
            },
            requested,
            AppointmentEvent::AppointmentStarted {},
            AppointmentEvent::AppointmentFinished {},
            AppointmentEvent::AppointmentCancelled {
                reason: "late".into(),
            },
        ]);
    }
}

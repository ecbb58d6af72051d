//! The mutations' GraphQL input types, and their one conversion into command values
//! (`TryFrom<Input> for Command`): ids are parsed here, and a malformed one is a
//! VALIDATION error naming the field. The command layer knows nothing of GraphQL.

use async_graphql::{InputObject, ID};
use chrono::{DateTime, Utc};

use super::scalars::Date;
use crate::commands::{
    ActOnAppointment, ActOnShift, AppointmentAction, CancelAppointment, CloseBoard, CommandOptions,
    JoinBoard, OpenBoard, RegisterProvider, RequestAppointment, ScheduleAppointment, ShiftAction,
};
use crate::domain::{AppointmentId, BoardId, ProviderId, ShiftId};
use crate::error::AppError;

/// The options every command input carries.
#[derive(Debug, Clone, Default, InputObject)]
#[graphql(name = "CommandOptions")]
pub struct CommandOptionsInput {
    /// Optimistic check: the target stream's version the client last saw. A mismatch
    /// answers CONFLICT. Omitted: commands on the stream are serialised instead.
    pub expected_version: Option<i64>,
    /// Idempotency key: a repeat returns the first result and appends nothing.
    pub command_id: Option<ID>,
}

impl From<CommandOptionsInput> for CommandOptions {
    fn from(o: CommandOptionsInput) -> Self {
        CommandOptions {
            expected_version: o.expected_version,
            command_id: o.command_id.map(|id| id.0),
        }
    }
}

#[derive(Debug, Clone, InputObject)]
pub struct OpenBoardInput {
    pub name: String,
    pub specialty: String,
    pub region: String,
    /// The workday, e.g. `"2026-11-27"`.
    pub date: Date,
    #[graphql(flatten)]
    pub options: CommandOptionsInput,
}

#[derive(Debug, Clone, InputObject)]
pub struct CloseBoardInput {
    pub board_id: ID,
    #[graphql(flatten)]
    pub options: CommandOptionsInput,
}

#[derive(Debug, Clone, InputObject)]
pub struct RegisterProviderInput {
    pub name: String,
    pub specialties: Vec<String>,
    pub licensed_regions: Vec<String>,
    #[graphql(flatten)]
    pub options: CommandOptionsInput,
}

#[derive(Debug, Clone, InputObject)]
pub struct JoinBoardInput {
    pub board_id: ID,
    pub provider_id: ID,
    #[graphql(flatten)]
    pub options: CommandOptionsInput,
}

/// Input of the commands that act on one provider shift alone.
#[derive(Debug, Clone, InputObject)]
pub struct ShiftInput {
    pub shift_id: ID,
    #[graphql(flatten)]
    pub options: CommandOptionsInput,
}

#[derive(Debug, Clone, InputObject)]
pub struct RequestAppointmentInput {
    pub board_id: ID,
    /// The patient the appointment is for, when a coordinator requests it on their
    /// behalf. A patient's own request takes their id from their token (a different id
    /// here is refused).
    pub patient_id: Option<String>,
    pub patient_name: String,
    pub specialty: String,
    pub region: String,
    pub reason: String,
    #[graphql(flatten)]
    pub options: CommandOptionsInput,
}

#[derive(Debug, Clone, InputObject)]
pub struct ScheduleAppointmentInput {
    pub appointment_id: ID,
    pub shift_id: ID,
    /// When the appointment is expected to start; if omitted, now plus the usual time
    /// from scheduling to start for the specialty (see the wait-time model).
    pub estimated_time: Option<DateTime<Utc>>,
    #[graphql(flatten)]
    pub options: CommandOptionsInput,
}

/// Input of the commands that act on an appointment by id alone.
#[derive(Debug, Clone, InputObject)]
pub struct AppointmentInput {
    pub appointment_id: ID,
    #[graphql(flatten)]
    pub options: CommandOptionsInput,
}

#[derive(Debug, Clone, InputObject)]
pub struct CancelAppointmentInput {
    pub appointment_id: ID,
    pub reason: String,
    #[graphql(flatten)]
    pub options: CommandOptionsInput,
}

impl TryFrom<OpenBoardInput> for OpenBoard {
    type Error = AppError;
    fn try_from(i: OpenBoardInput) -> Result<Self, AppError> {
        Ok(OpenBoard {
            name: i.name,
            specialty: i.specialty,
            region: i.region,
            date: i.date.0,
            options: i.options.into(),
        })
    }
}

impl TryFrom<CloseBoardInput> for CloseBoard {
    type Error = AppError;
    fn try_from(i: CloseBoardInput) -> Result<Self, AppError> {
        Ok(CloseBoard {
            board_id: BoardId::parse("boardId", &i.board_id)?,
            options: i.options.into(),
        })
    }
}

impl TryFrom<RegisterProviderInput> for RegisterProvider {
    type Error = AppError;
    fn try_from(i: RegisterProviderInput) -> Result<Self, AppError> {
        Ok(RegisterProvider {
            name: i.name,
            specialties: i.specialties,
            licensed_regions: i.licensed_regions,
            options: i.options.into(),
        })
    }
}

impl TryFrom<JoinBoardInput> for JoinBoard {
    type Error = AppError;
    fn try_from(i: JoinBoardInput) -> Result<Self, AppError> {
        Ok(JoinBoard {
            board_id: BoardId::parse("boardId", &i.board_id)?,
            provider_id: ProviderId::parse("providerId", &i.provider_id)?,
            options: i.options.into(),
        })
    }
}

impl TryFrom<(ShiftAction, ShiftInput)> for ActOnShift {
    type Error = AppError;
    fn try_from((action, i): (ShiftAction, ShiftInput)) -> Result<Self, AppError> {
        Ok(ActOnShift {
            action,
            shift_id: ShiftId::parse("shiftId", &i.shift_id)?,
            options: i.options.into(),
        })
    }
}

impl TryFrom<RequestAppointmentInput> for RequestAppointment {
    type Error = AppError;
    fn try_from(i: RequestAppointmentInput) -> Result<Self, AppError> {
        Ok(RequestAppointment {
            board_id: BoardId::parse("boardId", &i.board_id)?,
            patient_id: i.patient_id,
            patient_name: i.patient_name,
            specialty: i.specialty,
            region: i.region,
            reason: i.reason,
            options: i.options.into(),
        })
    }
}

impl TryFrom<ScheduleAppointmentInput> for ScheduleAppointment {
    type Error = AppError;
    fn try_from(i: ScheduleAppointmentInput) -> Result<Self, AppError> {
        Ok(ScheduleAppointment {
            appointment_id: AppointmentId::parse("appointmentId", &i.appointment_id)?,
            shift_id: ShiftId::parse("shiftId", &i.shift_id)?,
            estimated_time: i.estimated_time,
            expected_shift_version: None,
            options: i.options.into(),
        })
    }
}

impl TryFrom<(AppointmentAction, AppointmentInput)> for ActOnAppointment {
    type Error = AppError;
    fn try_from((action, i): (AppointmentAction, AppointmentInput)) -> Result<Self, AppError> {
        Ok(ActOnAppointment {
            action,
            appointment_id: AppointmentId::parse("appointmentId", &i.appointment_id)?,
            options: i.options.into(),
        })
    }
}

impl TryFrom<CancelAppointmentInput> for CancelAppointment {
    type Error = AppError;
    fn try_from(i: CancelAppointmentInput) -> Result<Self, AppError> {
        Ok(CancelAppointment {
            appointment_id: AppointmentId::parse("appointmentId", &i.appointment_id)?,
            reason: i.reason,
            options: i.options.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::fingerprint;

    fn code_and_message(e: AppError) -> (&'static str, String) {
        (e.code().as_str(), e.public_message())
    }

    #[test]
    fn a_malformed_id_is_a_validation_error_naming_the_field() {
        let good = uuid::Uuid::from_u128(7).to_string();
        let join = JoinBoardInput {
            board_id: ID(good.clone()),
            provider_id: ID("p-1".into()),
            options: Default::default(),
        };
        let (code, message) = code_and_message(JoinBoard::try_from(join).unwrap_err());
        assert_eq!(code, "VALIDATION");
        assert_eq!(message, "providerId 'p-1' is not a valid id");

        let schedule = ScheduleAppointmentInput {
            appointment_id: ID(good.clone()),
            shift_id: ID("".into()),
            estimated_time: None,
            options: Default::default(),
        };
        let (code, message) =
            code_and_message(ScheduleAppointment::try_from(schedule).unwrap_err());
        assert_eq!(code, "VALIDATION");
        assert!(message.starts_with("shiftId "), "{message}");

        let start = AppointmentInput {
            appointment_id: ID("42".into()),
            options: Default::default(),
        };
        let err = ActOnAppointment::try_from((AppointmentAction::Start, start)).unwrap_err();
        assert_eq!(
            code_and_message(err),
            ("VALIDATION", "appointmentId '42' is not a valid id".into())
        );
        let close = CloseBoardInput {
            board_id: ID("x".into()),
            options: Default::default(),
        };
        assert!(code_and_message(CloseBoard::try_from(close).unwrap_err())
            .1
            .starts_with("boardId"));
    }

    #[test]
    fn ids_and_options_arrive_typed() {
        let id = uuid::Uuid::from_u128(9);
        let command = ActOnShift::try_from((
            ShiftAction::Pause,
            ShiftInput {
                // Clients may send upper case or padding: the id is the same.
                shift_id: ID(format!(" {} ", id.to_string().to_uppercase())),
                options: CommandOptionsInput {
                    expected_version: Some(3),
                    command_id: Some(ID("c-1".into())),
                },
            },
        ))
        .unwrap();
        assert_eq!(command.shift_id, ShiftId::from(id));
        assert_eq!(command.action, ShiftAction::Pause);
        assert_eq!(
            command.options,
            CommandOptions {
                expected_version: Some(3),
                command_id: Some("c-1".into())
            }
        );
    }

    fn schedule_input(appointment: &str, options: CommandOptionsInput) -> ScheduleAppointmentInput {
        ScheduleAppointmentInput {
            appointment_id: ID(appointment.into()),
            shift_id: ID(uuid::Uuid::from_u128(2).to_string()),
            estimated_time: None,
            options,
        }
    }

    #[test]
    fn the_fingerprint_is_the_command_not_the_way_it_was_spelled() {
        let id = uuid::Uuid::from_u128(1);
        let plain =
            ScheduleAppointment::try_from(schedule_input(&id.to_string(), Default::default()))
                .unwrap();
        // The same command spelled differently, with options, has the same fingerprint.
        let spelled = ScheduleAppointment::try_from(schedule_input(
            &id.to_string().to_uppercase(),
            CommandOptionsInput {
                expected_version: Some(1),
                command_id: Some(ID("retry-1".into())),
            },
        ))
        .unwrap();
        assert_eq!(fingerprint(&plain).unwrap(), fingerprint(&spelled).unwrap());
        // The field names are the API's, as fingerprints stored earlier have them.
        assert_eq!(
            fingerprint(&plain).unwrap(),
            serde_json::json!({
                "appointmentId": id.to_string(),
                "shiftId": uuid::Uuid::from_u128(2).to_string(),
                "estimatedTime": null,
            })
        );
        // Another appointment is another command.
        let other = ScheduleAppointment::try_from(schedule_input(
            &uuid::Uuid::from_u128(3).to_string(),
            Default::default(),
        ))
        .unwrap();
        assert_ne!(fingerprint(&plain).unwrap(), fingerprint(&other).unwrap());
    }
}

//! Decisions that change an appointment and a provider shift together.
//!
//! Each returns the events for both streams; `commands` appends them in one
//! transaction, so either both streams change or neither does.

use chrono::{DateTime, Utc};

use super::appointment::{self, AppointmentCommand};
use super::shift::{self, ShiftCommand};
use super::{
    Appointment, AppointmentEvent, AppointmentStatus, DomainError, Provider, Shift, ShiftEvent,
};

/// Events for the appointment stream and for the shift stream.
pub type TwoStreamEvents = (Vec<AppointmentEvent>, Vec<ShiftEvent>);

fn found<'a, T>(value: Option<&'a T>, what: &str) -> Result<&'a T, DomainError> {
    value.ok_or_else(|| DomainError::NotFound(format!("{what} not found")))
}

/// Pairs a waiting appointment with a READY provider on the same Board who has the
/// specialty and is licensed in the appointment's region.
pub fn schedule(
    appointment: Option<&Appointment>,
    shift: Option<&Shift>,
    provider: Option<&Provider>,
    estimated_time: DateTime<Utc>,
) -> Result<TwoStreamEvents, DomainError> {
    let appointment = found(appointment, "appointment")?;
    let shift = found(shift, "provider shift")?;
    let provider = found(provider, "provider")?;
    if shift.board_id != appointment.board_id {
        return Err(DomainError::Validation(format!(
            "cannot schedule appointment: provider shift {} is on board {}, the appointment on \
             board {}",
            shift.id, shift.board_id, appointment.board_id
        )));
    }
    if !provider.has_specialty(&appointment.specialty) {
        return Err(DomainError::Validation(format!(
            "cannot schedule appointment: provider {} does not practise {}",
            provider.name, appointment.specialty
        )));
    }
    if !provider.is_licensed_in(&appointment.region) {
        return Err(DomainError::Validation(format!(
            "cannot schedule appointment: provider {} is not licensed in {}",
            provider.name, appointment.region
        )));
    }
    let appointment_events = appointment::decide(
        Some(appointment),
        AppointmentCommand::Schedule {
            provider_id: shift.provider_id,
            shift_id: shift.id,
            estimated_time,
        },
    )?;
    let shift_events = shift::decide(
        Some(shift),
        ShiftCommand::Assign {
            appointment_id: appointment.id,
        },
    )?;
    Ok((appointment_events, shift_events))
}

/// Finishing an appointment starts the provider's charting.
pub fn finish(
    appointment: Option<&Appointment>,
    shift: Option<&Shift>,
) -> Result<TwoStreamEvents, DomainError> {
    let appointment = found(appointment, "appointment")?;
    let appointment_events = appointment::decide(Some(appointment), AppointmentCommand::Finish)?;
    let shift_events = shift::decide(
        Some(found(shift, "provider shift")?),
        ShiftCommand::StartCharting {
            appointment_id: appointment.id,
        },
    )?;
    Ok((appointment_events, shift_events))
}

/// Cancelling a scheduled appointment returns its provider to READY; cancelling a
/// waiting one touches no shift.
pub fn cancel(
    appointment: Option<&Appointment>,
    shift: Option<&Shift>,
    reason: String,
) -> Result<TwoStreamEvents, DomainError> {
    let appointment = found(appointment, "appointment")?;
    let appointment_events =
        appointment::decide(Some(appointment), AppointmentCommand::Cancel { reason })?;
    let shift_events = if appointment.status == AppointmentStatus::Scheduled {
        shift::decide(
            Some(found(shift, "provider shift")?),
            ShiftCommand::Release {
                appointment_id: appointment.id,
            },
        )?
    } else {
        Vec::new()
    };
    Ok((appointment_events, shift_events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;
    use crate::domain::{AppointmentId, BoardId, ProviderId, ShiftId, ShiftStatus};
    use uuid::Uuid;

    const BOARD: BoardId = BoardId::from_uuid(Uuid::from_u128(1));
    const PROVIDER: ProviderId = ProviderId::from_uuid(Uuid::from_u128(2));
    const SHIFT: ShiftId = ShiftId::from_uuid(Uuid::from_u128(3));
    const APPOINTMENT: AppointmentId = AppointmentId::from_uuid(Uuid::from_u128(4));

    fn provider(specialties: &[&str], regions: &[&str]) -> Provider {
        Provider {
            id: PROVIDER,
            name: "Dr. Ada Park".into(),
            specialties: specialties.iter().map(|s| s.to_string()).collect(),
            licensed_regions: regions.iter().map(|s| s.to_string()).collect(),
            version: 1,
        }
    }

    fn shift_with(events: &[ShiftEvent]) -> Shift {
        let mut s = given::<Shift>(events).unwrap();
        s.id = SHIFT;
        s
    }

    fn ready_shift(board: BoardId) -> Shift {
        shift_with(&[ShiftEvent::ProviderJoined {
            board_id: board,
            provider_id: PROVIDER,
        }])
    }

    fn appointment_with(events: &[AppointmentEvent]) -> Appointment {
        let mut a = given::<Appointment>(events).unwrap();
        a.id = APPOINTMENT;
        a
    }

    fn requested() -> AppointmentEvent {
        AppointmentEvent::AppointmentRequested {
            board_id: BOARD,
            patient_id: None,
            patient_name: "Sam".into(),
            specialty: "pediatrics".into(),
            region: "TX".into(),
            reason: "fever".into(),
        }
    }

    fn scheduled() -> AppointmentEvent {
        AppointmentEvent::AppointmentScheduled {
            provider_id: PROVIDER,
            shift_id: SHIFT,
            estimated_time: at(10),
        }
    }

    fn joined() -> ShiftEvent {
        ShiftEvent::ProviderJoined {
            board_id: BOARD,
            provider_id: PROVIDER,
        }
    }

    fn assigned() -> ShiftEvent {
        ShiftEvent::ProviderAssigned {
            appointment_id: APPOINTMENT,
        }
    }

    #[test]
    fn scheduling_writes_both_streams() {
        let (a, s) = schedule(
            Some(&appointment_with(&[requested()])),
            Some(&ready_shift(BOARD)),
            Some(&provider(&["pediatrics"], &["TX"])),
            at(10),
        )
        .unwrap();
        assert_eq!(a, vec![scheduled()]);
        assert_eq!(s, vec![assigned()]);
    }

    #[test]
    fn scheduling_a_provider_without_the_specialty_is_rejected() {
        let err = rejected_with(schedule(
            Some(&appointment_with(&[requested()])),
            Some(&ready_shift(BOARD)),
            Some(&provider(&["dermatology"], &["TX"])),
            at(10),
        ));
        assert_eq!(
            err,
            DomainError::Validation(
                "cannot schedule appointment: provider Dr. Ada Park does not practise pediatrics"
                    .into()
            )
        );
    }

    #[test]
    fn scheduling_a_provider_not_licensed_in_the_region_is_rejected() {
        let err = rejected_with(schedule(
            Some(&appointment_with(&[requested()])),
            Some(&ready_shift(BOARD)),
            Some(&provider(&["pediatrics"], &["CA"])),
            at(10),
        ));
        assert_eq!(
            err,
            DomainError::Validation(
                "cannot schedule appointment: provider Dr. Ada Park is not licensed in TX".into()
            )
        );
    }

    #[test]
    fn scheduling_across_boards_is_rejected() {
        let err = rejected_with(schedule(
            Some(&appointment_with(&[requested()])),
            Some(&ready_shift(Uuid::from_u128(77).into())),
            Some(&provider(&["pediatrics"], &["TX"])),
            at(10),
        ));
        assert!(err.to_string().contains("is on board"), "{err}");
    }

    #[test]
    fn scheduling_a_provider_who_is_not_ready_is_rejected() {
        let paused = shift_with(&[joined(), ShiftEvent::ProviderPaused {}]);
        let err = rejected_with(schedule(
            Some(&appointment_with(&[requested()])),
            Some(&paused),
            Some(&provider(&["pediatrics"], &["TX"])),
            at(10),
        ));
        assert_eq!(
            err,
            DomainError::InvalidTransition(
                "cannot assign provider: shift is PAUSED, not READY".into()
            )
        );
    }

    #[test]
    fn scheduling_an_unknown_appointment_or_shift_is_not_found() {
        let p = provider(&["pediatrics"], &["TX"]);
        assert_eq!(
            rejected_with(schedule(None, Some(&ready_shift(BOARD)), Some(&p), at(1))),
            DomainError::NotFound("appointment not found".into())
        );
        assert_eq!(
            rejected_with(schedule(
                Some(&appointment_with(&[requested()])),
                None,
                Some(&p),
                at(1)
            )),
            DomainError::NotFound("provider shift not found".into())
        );
    }

    #[test]
    fn finishing_starts_charting_on_the_shift() {
        let appointment = appointment_with(&[
            requested(),
            scheduled(),
            AppointmentEvent::AppointmentStarted {},
        ]);
        let shift = shift_with(&[joined(), assigned()]);
        let (a, s) = finish(Some(&appointment), Some(&shift)).unwrap();
        assert_eq!(a, vec![AppointmentEvent::AppointmentFinished {}]);
        assert_eq!(
            s,
            vec![ShiftEvent::ChartingStarted {
                appointment_id: APPOINTMENT
            }]
        );
    }

    #[test]
    fn finishing_a_scheduled_appointment_is_rejected() {
        let appointment = appointment_with(&[requested(), scheduled()]);
        let shift = shift_with(&[joined(), assigned()]);
        assert!(matches!(
            rejected_with(finish(Some(&appointment), Some(&shift))),
            DomainError::InvalidTransition(_)
        ));
    }

    #[test]
    fn cancelling_a_scheduled_appointment_frees_the_provider() {
        let appointment = appointment_with(&[requested(), scheduled()]);
        let shift = shift_with(&[joined(), assigned()]);
        let (a, s) = cancel(Some(&appointment), Some(&shift), "no show".into()).unwrap();
        assert_eq!(
            a,
            vec![AppointmentEvent::AppointmentCancelled {
                reason: "no show".into()
            }]
        );
        assert_eq!(s, vec![ShiftEvent::ProviderReady {}]);
        let mut history = vec![joined(), assigned()];
        history.extend(s);
        assert_eq!(shift_with(&history).status, ShiftStatus::Ready);
    }

    #[test]
    fn cancelling_a_waiting_appointment_touches_no_shift() {
        let appointment = appointment_with(&[requested()]);
        let (a, s) = cancel(Some(&appointment), None, "no show".into()).unwrap();
        assert_eq!(a.len(), 1);
        assert!(s.is_empty());
    }
}

//! ProviderShift: one provider's activity on one Board during one day.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{AppointmentId, BoardId, ProviderId, ShiftId};
use super::{
    fold_error, Aggregate, Board, BoardStatus, DomainError, DomainEvent, EventContext, FoldError,
    Provider, StreamType,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShiftStatus {
    Ready,
    Assigned,
    Paused,
    Charting,
    SignedOff,
}

impl std::fmt::Display for ShiftStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShiftStatus::Ready => "READY",
            ShiftStatus::Assigned => "ASSIGNED",
            ShiftStatus::Paused => "PAUSED",
            ShiftStatus::Charting => "CHARTING",
            ShiftStatus::SignedOff => "SIGNED_OFF",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shift {
    pub id: ShiftId,
    pub board_id: BoardId,
    pub provider_id: ProviderId,
    pub status: ShiftStatus,
    /// The appointment the provider is assigned to or charting for.
    pub appointment_id: Option<AppointmentId>,
    pub joined_at: DateTime<Utc>,
    /// When the current charting began; the charting time is measured from it.
    pub charting_since: Option<DateTime<Utc>>,
    /// Charting time accumulated over the shift, in seconds.
    pub charting_seconds: i64,
    pub signed_off_at: Option<DateTime<Utc>>,
    /// When the provider last became READY (joined, back from a pause or a cancelled
    /// appointment, charting done); `None` unless READY. Matching prefers the provider
    /// READY the longest.
    #[serde(default)]
    pub ready_since: Option<DateTime<Utc>>,
    /// Chartings completed over the shift: with `charting_seconds`, the provider's mean
    /// charting time.
    #[serde(default)]
    pub chartings: i64,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ShiftEvent {
    #[serde(rename_all = "camelCase")]
    ProviderJoined {
        board_id: BoardId,
        provider_id: ProviderId,
    },
    ProviderReady {},
    #[serde(rename_all = "camelCase")]
    ProviderAssigned {
        appointment_id: AppointmentId,
    },
    ProviderPaused {},
    #[serde(rename_all = "camelCase")]
    ChartingStarted {
        appointment_id: AppointmentId,
    },
    #[serde(rename_all = "camelCase")]
    ChartingFinished {
        charting_seconds: i64,
    },
    ProviderSignedOff {},
}

impl DomainEvent for ShiftEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ShiftEvent::ProviderJoined { .. } => "ProviderJoined",
            ShiftEvent::ProviderReady {} => "ProviderReady",
            ShiftEvent::ProviderAssigned { .. } => "ProviderAssigned",
            ShiftEvent::ProviderPaused {} => "ProviderPaused",
            ShiftEvent::ChartingStarted { .. } => "ChartingStarted",
            ShiftEvent::ChartingFinished { .. } => "ChartingFinished",
            ShiftEvent::ProviderSignedOff {} => "ProviderSignedOff",
        }
    }
}

#[derive(Debug, Clone)]
pub enum ShiftCommand {
    /// The Board and provider are looked up first; `None` means they do not exist.
    Join {
        board: Option<Box<Board>>,
        provider: Option<Box<Provider>>,
    },
    MarkReady,
    Pause,
    Assign {
        appointment_id: AppointmentId,
    },
    StartCharting {
        appointment_id: AppointmentId,
    },
    CompleteCharting {
        now: DateTime<Utc>,
    },
    SignOff,
    /// The appointment the provider held was cancelled: back to READY.
    Release {
        appointment_id: AppointmentId,
    },
}

fn require(shift: &Shift, action: &str, allowed: &[ShiftStatus]) -> Result<(), DomainError> {
    if allowed.contains(&shift.status) {
        return Ok(());
    }
    let expected = allowed
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" or ");
    Err(DomainError::InvalidTransition(format!(
        "cannot {action}: shift is {}, not {expected}",
        shift.status
    )))
}

fn holding(shift: &Shift, action: &str, appointment_id: AppointmentId) -> Result<(), DomainError> {
    if shift.appointment_id == Some(appointment_id) {
        Ok(())
    } else {
        Err(DomainError::InvalidTransition(format!(
            "cannot {action}: shift is not assigned to appointment {appointment_id}"
        )))
    }
}

pub fn decide(
    state: Option<&Shift>,
    command: ShiftCommand,
) -> Result<Vec<ShiftEvent>, DomainError> {
    use ShiftCommand as C;
    let shift = match (state, command) {
        (None, C::Join { board, provider }) => {
            let board = board.ok_or_else(|| DomainError::NotFound("board not found".into()))?;
            let provider =
                provider.ok_or_else(|| DomainError::NotFound("provider not found".into()))?;
            if board.status != BoardStatus::Open {
                return Err(DomainError::InvalidTransition(
                    "cannot join board: board is CLOSED, not OPEN".into(),
                ));
            }
            return Ok(vec![ShiftEvent::ProviderJoined {
                board_id: board.id,
                provider_id: provider.id,
            }]);
        }
        (Some(shift), C::Join { .. }) => {
            return Err(DomainError::InvalidTransition(format!(
                "cannot join board: provider {} is already on board {}",
                shift.provider_id, shift.board_id
            )))
        }
        (None, _) => return Err(DomainError::NotFound("provider shift not found".into())),
        (Some(shift), command) => (shift, command),
    };
    match shift {
        (s, C::MarkReady) => {
            require(s, "mark provider ready", &[ShiftStatus::Paused])?;
            Ok(vec![ShiftEvent::ProviderReady {}])
        }
        (s, C::Pause) => {
            require(s, "pause provider", &[ShiftStatus::Ready])?;
            Ok(vec![ShiftEvent::ProviderPaused {}])
        }
        (s, C::Assign { appointment_id }) => {
            require(s, "assign provider", &[ShiftStatus::Ready])?;
            Ok(vec![ShiftEvent::ProviderAssigned { appointment_id }])
        }
        (s, C::StartCharting { appointment_id }) => {
            require(s, "start charting", &[ShiftStatus::Assigned])?;
            holding(s, "start charting", appointment_id)?;
            Ok(vec![ShiftEvent::ChartingStarted { appointment_id }])
        }
        (s, C::CompleteCharting { now }) => {
            require(s, "complete charting", &[ShiftStatus::Charting])?;
            let since = s.charting_since.unwrap_or(now);
            let charting_seconds = (now - since).num_seconds().max(0);
            Ok(vec![ShiftEvent::ChartingFinished { charting_seconds }])
        }
        (s, C::SignOff) => {
            require(
                s,
                "sign off provider",
                &[ShiftStatus::Ready, ShiftStatus::Paused],
            )?;
            Ok(vec![ShiftEvent::ProviderSignedOff {}])
        }
        (s, C::Release { appointment_id }) => {
            require(s, "release provider", &[ShiftStatus::Assigned])?;
            holding(s, "release provider", appointment_id)?;
            Ok(vec![ShiftEvent::ProviderReady {}])
        }
        (_, C::Join { .. }) => unreachable!("handled above"),
    }
}

impl Aggregate for Shift {
    const STREAM_TYPE: StreamType = StreamType::Shift;
    type Event = ShiftEvent;
    type Command = ShiftCommand;

    fn decide(state: Option<&Self>, command: ShiftCommand) -> Result<Vec<ShiftEvent>, DomainError> {
        decide(state, command)
    }

    fn apply(
        state: Option<Self>,
        event: &ShiftEvent,
        ctx: &EventContext,
    ) -> Result<Self, FoldError> {
        let mut shift = match (state, event) {
            (
                None,
                ShiftEvent::ProviderJoined {
                    board_id,
                    provider_id,
                },
            ) => {
                return Ok(Shift {
                    id: ctx.stream_id.into(),
                    board_id: *board_id,
                    provider_id: *provider_id,
                    status: ShiftStatus::Ready,
                    appointment_id: None,
                    joined_at: ctx.at,
                    charting_since: None,
                    charting_seconds: 0,
                    signed_off_at: None,
                    ready_since: Some(ctx.at),
                    chartings: 0,
                    version: ctx.version,
                })
            }
            (None, e) => return Err(fold_error(e, ctx, "provider has not joined")),
            (Some(_), e @ ShiftEvent::ProviderJoined { .. }) => {
                return Err(fold_error(e, ctx, "provider already joined"))
            }
            (Some(shift), _) => shift,
        };
        advance(&mut shift, event, ctx);
        Ok(shift)
    }

    fn apply_in_place(
        shift: &mut Self,
        event: &ShiftEvent,
        ctx: &EventContext,
    ) -> Result<(), FoldError> {
        if let e @ ShiftEvent::ProviderJoined { .. } = event {
            return Err(fold_error(e, ctx, "provider already joined"));
        }
        advance(shift, event, ctx);
        Ok(())
    }

    fn version(&self) -> i64 {
        self.version
    }
}

/// An event after `ProviderJoined`, applied to the shift it follows.
fn advance(shift: &mut Shift, event: &ShiftEvent, ctx: &EventContext) {
    match event {
        ShiftEvent::ProviderJoined { .. } => unreachable!("handled above"),
        ShiftEvent::ProviderReady {} => {
            shift.status = ShiftStatus::Ready;
            shift.appointment_id = None;
        }
        ShiftEvent::ProviderAssigned { appointment_id } => {
            shift.status = ShiftStatus::Assigned;
            shift.appointment_id = Some(*appointment_id);
        }
        ShiftEvent::ProviderPaused {} => shift.status = ShiftStatus::Paused,
        ShiftEvent::ChartingStarted { appointment_id } => {
            shift.status = ShiftStatus::Charting;
            shift.appointment_id = Some(*appointment_id);
            shift.charting_since = Some(ctx.at);
        }
        ShiftEvent::ChartingFinished { charting_seconds } => {
            shift.status = ShiftStatus::Ready;
            shift.appointment_id = None;
            shift.charting_since = None;
            shift.charting_seconds += charting_seconds;
            shift.chartings += 1;
        }
        ShiftEvent::ProviderSignedOff {} => {
            shift.status = ShiftStatus::SignedOff;
            shift.signed_off_at = Some(ctx.at);
        }
    }
    shift.ready_since = match shift.status {
        ShiftStatus::Ready => Some(ctx.at),
        _ => None,
    };
    shift.version = ctx.version;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;
    use chrono::NaiveDate;
    use uuid::Uuid;

    fn ids() -> (BoardId, ProviderId, AppointmentId) {
        (
            Uuid::from_u128(1).into(),
            Uuid::from_u128(2).into(),
            Uuid::from_u128(3).into(),
        )
    }

    fn board(status: BoardStatus) -> Board {
        Board {
            id: ids().0,
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

    fn provider() -> Provider {
        Provider {
            id: ids().1,
            name: "Dr. Ada Park".into(),
            specialties: vec!["pediatrics".into()],
            licensed_regions: vec!["TX".into()],
            version: 1,
        }
    }

    fn joined() -> ShiftEvent {
        ShiftEvent::ProviderJoined {
            board_id: ids().0,
            provider_id: ids().1,
        }
    }

    fn assigned() -> ShiftEvent {
        ShiftEvent::ProviderAssigned {
            appointment_id: ids().2,
        }
    }

    fn charting() -> ShiftEvent {
        ShiftEvent::ChartingStarted {
            appointment_id: ids().2,
        }
    }

    #[test]
    fn joining_an_open_board_makes_the_provider_ready() {
        let events = when::<Shift>(
            &[],
            ShiftCommand::Join {
                board: Some(Box::new(board(BoardStatus::Open))),
                provider: Some(Box::new(provider())),
            },
        )
        .unwrap();
        assert_eq!(events, vec![joined()]);
        assert_eq!(given::<Shift>(&events).unwrap().status, ShiftStatus::Ready);
    }

    #[test]
    fn joining_a_closed_board_is_rejected() {
        let err = rejected_with(when::<Shift>(
            &[],
            ShiftCommand::Join {
                board: Some(Box::new(board(BoardStatus::Closed))),
                provider: Some(Box::new(provider())),
            },
        ));
        assert_eq!(
            err,
            transition_error("cannot join board: board is CLOSED, not OPEN")
        );
    }

    #[test]
    fn joining_an_unknown_board_or_with_an_unregistered_provider_is_not_found() {
        let no_board = ShiftCommand::Join {
            board: None,
            provider: Some(Box::new(provider())),
        };
        let no_provider = ShiftCommand::Join {
            board: Some(Box::new(board(BoardStatus::Open))),
            provider: None,
        };
        assert_eq!(
            rejected_with(when::<Shift>(&[], no_board)),
            DomainError::NotFound("board not found".into())
        );
        assert_eq!(
            rejected_with(when::<Shift>(&[], no_provider)),
            DomainError::NotFound("provider not found".into())
        );
    }

    #[test]
    fn joining_twice_is_rejected() {
        let err = rejected_with(when::<Shift>(
            &[joined()],
            ShiftCommand::Join {
                board: Some(Box::new(board(BoardStatus::Open))),
                provider: Some(Box::new(provider())),
            },
        ));
        assert!(err.to_string().contains("is already on board"), "{err}");
    }

    #[test]
    fn pausing_a_ready_provider_pauses_and_ready_brings_them_back() {
        assert_eq!(
            when::<Shift>(&[joined()], ShiftCommand::Pause).unwrap(),
            vec![ShiftEvent::ProviderPaused {}]
        );
        let paused = [joined(), ShiftEvent::ProviderPaused {}];
        assert_eq!(given::<Shift>(&paused).unwrap().status, ShiftStatus::Paused);
        assert_eq!(
            when::<Shift>(&paused, ShiftCommand::MarkReady).unwrap(),
            vec![ShiftEvent::ProviderReady {}]
        );
    }

    #[test]
    fn pausing_an_assigned_provider_is_rejected() {
        assert_eq!(
            rejected_with(when::<Shift>(&[joined(), assigned()], ShiftCommand::Pause)),
            transition_error("cannot pause provider: shift is ASSIGNED, not READY")
        );
    }

    #[test]
    fn marking_a_ready_provider_ready_is_rejected() {
        assert_eq!(
            rejected_with(when::<Shift>(&[joined()], ShiftCommand::MarkReady)),
            transition_error("cannot mark provider ready: shift is READY, not PAUSED")
        );
    }

    #[test]
    fn assigning_a_ready_provider_records_the_appointment() {
        let events = when::<Shift>(
            &[joined()],
            ShiftCommand::Assign {
                appointment_id: ids().2,
            },
        )
        .unwrap();
        assert_eq!(events, vec![assigned()]);
        let shift = given::<Shift>(&[joined(), assigned()]).unwrap();
        assert_eq!(
            (shift.status, shift.appointment_id),
            (ShiftStatus::Assigned, Some(ids().2))
        );
    }

    #[test]
    fn assigning_a_paused_or_busy_provider_is_rejected() {
        let paused = [joined(), ShiftEvent::ProviderPaused {}];
        assert_eq!(
            rejected_with(when::<Shift>(
                &paused,
                ShiftCommand::Assign {
                    appointment_id: ids().2
                }
            )),
            transition_error("cannot assign provider: shift is PAUSED, not READY")
        );
        assert_eq!(
            rejected_with(when::<Shift>(
                &[joined(), assigned()],
                ShiftCommand::Assign {
                    appointment_id: ids().2
                }
            )),
            transition_error("cannot assign provider: shift is ASSIGNED, not READY")
        );
    }

    #[test]
    fn starting_charting_requires_the_assigned_appointment() {
        let events = when::<Shift>(
            &[joined(), assigned()],
            ShiftCommand::StartCharting {
                appointment_id: ids().2,
            },
        )
        .unwrap();
        assert_eq!(events, vec![charting()]);
        let other = AppointmentId::from(Uuid::from_u128(99));
        assert!(matches!(
            rejected_with(when::<Shift>(
                &[joined(), assigned()],
                ShiftCommand::StartCharting {
                    appointment_id: other
                }
            )),
            DomainError::InvalidTransition(_)
        ));
        assert_eq!(
            rejected_with(when::<Shift>(
                &[joined()],
                ShiftCommand::StartCharting {
                    appointment_id: ids().2
                }
            )),
            transition_error("cannot start charting: shift is READY, not ASSIGNED")
        );
    }

    #[test]
    fn completing_charting_tracks_the_time_spent() {
        // joined at minute 0, assigned at 1, charting started at minute 2.
        let history = [joined(), assigned(), charting()];
        let events =
            when::<Shift>(&history, ShiftCommand::CompleteCharting { now: at(9) }).unwrap();
        assert_eq!(
            events,
            vec![ShiftEvent::ChartingFinished {
                charting_seconds: 420
            }]
        );
        let mut all = history.to_vec();
        all.extend(events);
        let shift = given::<Shift>(&all).unwrap();
        assert_eq!(shift.status, ShiftStatus::Ready);
        assert_eq!(shift.charting_seconds, 420);
        assert_eq!(shift.appointment_id, None);
    }

    #[test]
    fn completing_charting_on_a_ready_shift_is_rejected() {
        assert_eq!(
            rejected_with(when::<Shift>(
                &[joined()],
                ShiftCommand::CompleteCharting { now: at(5) }
            )),
            transition_error("cannot complete charting: shift is READY, not CHARTING")
        );
    }

    #[test]
    fn signing_off_from_ready_or_paused_is_final() {
        assert_eq!(
            when::<Shift>(&[joined()], ShiftCommand::SignOff).unwrap(),
            vec![ShiftEvent::ProviderSignedOff {}]
        );
        let paused = [joined(), ShiftEvent::ProviderPaused {}];
        assert_eq!(
            when::<Shift>(&paused, ShiftCommand::SignOff).unwrap(),
            vec![ShiftEvent::ProviderSignedOff {}]
        );
        let signed_off = [joined(), ShiftEvent::ProviderSignedOff {}];
        assert_eq!(
            given::<Shift>(&signed_off).unwrap().status,
            ShiftStatus::SignedOff
        );
        assert_eq!(
            rejected_with(when::<Shift>(&signed_off, ShiftCommand::MarkReady)),
            transition_error("cannot mark provider ready: shift is SIGNED_OFF, not PAUSED")
        );
        assert_eq!(
            rejected_with(when::<Shift>(&signed_off, ShiftCommand::SignOff)),
            transition_error("cannot sign off provider: shift is SIGNED_OFF, not READY or PAUSED")
        );
    }

    #[test]
    fn signing_off_while_charting_is_rejected() {
        assert_eq!(
            rejected_with(when::<Shift>(
                &[joined(), assigned(), charting()],
                ShiftCommand::SignOff
            )),
            transition_error("cannot sign off provider: shift is CHARTING, not READY or PAUSED")
        );
    }

    #[test]
    fn releasing_an_assigned_provider_makes_them_ready() {
        let events = when::<Shift>(
            &[joined(), assigned()],
            ShiftCommand::Release {
                appointment_id: ids().2,
            },
        )
        .unwrap();
        assert_eq!(events, vec![ShiftEvent::ProviderReady {}]);
        let mut all = vec![joined(), assigned()];
        all.extend(events);
        let shift = given::<Shift>(&all).unwrap();
        assert_eq!(
            (shift.status, shift.appointment_id),
            (ShiftStatus::Ready, None)
        );
    }

    #[test]
    fn commands_on_an_unknown_shift_are_not_found() {
        assert_eq!(
            rejected_with(when::<Shift>(&[], ShiftCommand::Pause)),
            DomainError::NotFound("provider shift not found".into())
        );
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        for event in [
            joined(),
            ShiftEvent::ProviderReady {},
            assigned(),
            charting(),
            ShiftEvent::ChartingFinished {
                charting_seconds: 5,
            },
        ] {
            let data = event.encode();
            assert_eq!(
                ShiftEvent::decode(event.event_type(), &data).unwrap(),
                event
            );
        }
    }

    #[test]
    fn folding_in_place_matches_folding_onto_a_copy_and_a_refusal_changes_nothing() {
        let (board, provider, appointment) = ids();
        let joined = ShiftEvent::ProviderJoined {
            board_id: board,
            provider_id: provider,
        };
        assert_in_place_matches_copy::<Shift>(&[
            ShiftEvent::ProviderReady {},
            joined.clone(),
            ShiftEvent::ProviderAssigned {
                appointment_id: appointment,
            },
            joined,
            ShiftEvent::ChartingStarted {
                appointment_id: appointment,
            },
            ShiftEvent::ChartingFinished {
                charting_seconds: 90,
            },
            ShiftEvent::ProviderPaused {},
            ShiftEvent::ProviderReady {},
            ShiftEvent::ProviderSignedOff {},
        ]);
    }
}

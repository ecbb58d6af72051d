//! Pure aggregates: `decide(&state, command) -> events` and `apply(state, &event) -> state`.
//!
//! Nothing in here performs I/O. Whatever a decision needs from another stream (the
//! Board's status, a provider's licences, the clock) is looked up by `commands` first
//! and handed in through the command.

pub mod appointment;
pub mod board;
pub mod ids;
pub mod matching;
pub mod provider;
pub mod scheduling;
pub mod shift;
pub mod tagged;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

pub use appointment::{Appointment, AppointmentEvent, AppointmentStatus};
pub use board::{AppointmentCounts, Board, BoardContents, BoardEvent, BoardStatus};
pub use ids::{AppointmentId, BoardId, ProviderId, ShiftId};
pub use provider::{Provider, ProviderEvent};
pub use shift::{Shift, ShiftEvent, ShiftStatus};

/// A command refused by the domain: what the user asked for is not possible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The input itself is malformed (empty name, unparsable date, ...).
    #[error("{0}")]
    Validation(String),
    /// Something the command refers to does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The input is fine but the entity's current state does not allow it.
    #[error("{0}")]
    InvalidTransition(String),
}

/// An event that cannot be applied to the state it meets: a corrupt or out-of-order
/// stream. Never the user's fault; the projector dead-letters such events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply {event} at version {version}: {reason}")]
pub struct FoldError {
    pub event: String,
    pub version: i64,
    pub reason: String,
}

/// Envelope facts an `apply` may use: the event's place in its stream and when it was
/// recorded (times of day live in the envelope, not in event data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventContext {
    pub stream_id: Uuid,
    pub version: i64,
    pub at: DateTime<Utc>,
}

/// The kinds of stream in the store; the `streams.type` column holds `as_str()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    Board,
    Provider,
    Shift,
    Appointment,
}

impl StreamType {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Board => "board",
            StreamType::Provider => "provider",
            StreamType::Shift => "shift",
            StreamType::Appointment => "appointment",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "board" => Some(StreamType::Board),
            "provider" => Some(StreamType::Provider),
            "shift" => Some(StreamType::Shift),
            "appointment" => Some(StreamType::Appointment),
            _ => None,
        }
    }

    /// The noun used in user-facing messages.
    pub fn noun(self) -> &'static str {
        match self {
            StreamType::Board => "board",
            StreamType::Provider => "provider",
            StreamType::Shift => "provider shift",
            StreamType::Appointment => "appointment",
        }
    }
}

/// An event type of one aggregate. Events are serde enums tagged as
/// `{"type": "...", "data": {...}}`; the store keeps the two halves in two columns.
pub trait DomainEvent: Serialize + DeserializeOwned + Clone + std::fmt::Debug {
    fn event_type(&self) -> &'static str;

    fn encode(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut map)) => {
                map.remove("data").unwrap_or(serde_json::json!({}))
            }
            // Every event is a struct variant; serialisation of plain data cannot fail.
            _ => unreachable!("events serialise to tagged objects"),
        }
    }

    fn decode(event_type: &str, data: &serde_json::Value) -> Result<Self, String> {
        let decoded = if tagged::through_copy() {
            serde_json::from_value(serde_json::json!({ "type": event_type, "data": data }))
        } else {
            <Self as serde::Deserialize>::deserialize(tagged::Tagged { event_type, data })
        };
        decoded.map_err(|e| format!("cannot decode {event_type}: {e}"))
    }

    /// Decodes straight from the JSON text of `data`, with no `Value` tree; `None`
    /// if it does not decode (a refusal is worded by [`DomainEvent::decode`] from the
    /// tree, so it reads the same either way).
    fn decode_text(event_type: &str, text: &str) -> Option<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        let event = <Self as serde::Deserialize>::deserialize(tagged::Tagged {
            event_type,
            data: &mut de,
        })
        .ok()?;
        de.end().ok()?;
        Some(event)
    }
}

/// A stream's state, rebuilt by folding its events in version order.
pub trait Aggregate: Clone + std::fmt::Debug + Sized {
    const STREAM_TYPE: StreamType;
    type Event: DomainEvent;
    /// What can be asked of this aggregate, with everything the decision needs from
    /// outside already looked up.
    type Command;

    /// Decides which events a command produces from the current state, or why it is
    /// refused. Pure: no I/O.
    fn decide(
        state: Option<&Self>,
        command: Self::Command,
    ) -> Result<Vec<Self::Event>, DomainError>;

    /// Applies one event. The first event of a stream meets `None`.
    fn apply(
        state: Option<Self>,
        event: &Self::Event,
        ctx: &EventContext,
    ) -> Result<Self, FoldError>;

    /// Applies one event to an existing state in place: a fold's hot path, without
    /// a copy of the state per event. On error the state is unchanged. By default
    /// through [`Aggregate::apply`] on a copy.
    fn apply_in_place(
        state: &mut Self,
        event: &Self::Event,
        ctx: &EventContext,
    ) -> Result<(), FoldError> {
        *state = Self::apply(Some(state.clone()), event, ctx)?;
        Ok(())
    }

    /// The stream version this state reflects.
    fn version(&self) -> i64;
}

/// Folds events (already in stream order) onto an optional starting state.
pub fn fold<A: Aggregate>(
    mut state: Option<A>,
    events: impl IntoIterator<Item = (A::Event, EventContext)>,
) -> Result<Option<A>, FoldError> {
    for (event, ctx) in events {
        state = Some(A::apply(state, &event, &ctx)?);
    }
    Ok(state)
}

pub(crate) fn fold_error(event: &impl DomainEvent, ctx: &EventContext, reason: &str) -> FoldError {
    FoldError {
        event: event.event_type().to_string(),
        version: ctx.version,
        reason: reason.to_string(),
    }
}

/// Refuses text PostgreSQL cannot store: the NUL character (in `text` and `jsonb`).
pub fn storable_text(field: &str, value: &str) -> Result<(), DomainError> {
    if value.contains('\0') {
        return Err(DomainError::Validation(format!(
            "{field} must not contain the NUL character"
        )));
    }
    Ok(())
}

/// Trims a required free-text field and bounds its length.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<String, DomainError> {
    storable_text(field, value)?;
    let value = value.trim();
    if value.is_empty() {
        return Err(DomainError::Validation(format!(
            "{field} must not be empty"
        )));
    }
    if value.chars().count() > max {
        return Err(DomainError::Validation(format!(
            "{field} must be at most {max} characters"
        )));
    }
    Ok(value.to_string())
}

/// Specialties are compared case-insensitively: stored lower-case, trimmed.
pub fn specialty(field: &str, value: &str) -> Result<String, DomainError> {
    Ok(required_text(field, value, 64)?.to_lowercase())
}

/// Regions (US states, provinces, countries) are stored upper-case, trimmed.
pub fn region(field: &str, value: &str) -> Result<String, DomainError> {
    let value = required_text(field, value, 64)?;
    Ok(value.to_uppercase())
}

/// The workdays a Board may be opened for: a sane window around now, so that typos
/// such as year 0, negative years or 9999 are refused.
pub const EARLIEST_BOARD_YEAR: i32 = 1900;
pub const LATEST_BOARD_YEAR: i32 = 2200;

/// Parses a calendar date written `YYYY-MM-DD`, between the years 1900 and 2200.
pub fn parse_date(field: &str, value: &str) -> Result<NaiveDate, DomainError> {
    let date = NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d").map_err(|_| {
        DomainError::Validation(format!(
            "{field} '{value}' is not a valid date (expected YYYY-MM-DD)"
        ))
    })?;
    board_date(field, date)
}

/// Checks that a Board's workday lies between the years 1900 and 2200.
pub fn board_date(field: &str, date: NaiveDate) -> Result<NaiveDate, DomainError> {
    use chrono::Datelike;
    if !(EARLIEST_BOARD_YEAR..=LATEST_BOARD_YEAR).contains(&date.year()) {
        return Err(DomainError::Validation(format!(
            "{field} '{date}' is out of range (years {EARLIEST_BOARD_YEAR} to {LATEST_BOARD_YEAR})"
        )));
    }
    Ok(date)
}

/// Parses a client-supplied id.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, DomainError> {
    Uuid::parse_str(value.trim())
        .map_err(|_| DomainError::Validation(format!("{field} '{value}' is not a valid id")))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Given/when/then helpers for aggregate tests.
    use super::*;

    pub fn at(minute: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2022-07-18T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::minutes(minute)
    }

    /// Folds `given` events as if recorded one minute apart.
    pub fn given<A: Aggregate>(events: &[A::Event]) -> Option<A> {
        fold(
            None,
            events.iter().cloned().enumerate().map(|(i, e)| {
                let ctx = EventContext {
                    stream_id: Uuid::nil(),
                    version: i as i64 + 1,
                    at: at(i as i64),
                };
                (e, ctx)
            }),
        )
        .expect("given events fold")
    }

    /// Folds `events` (the first onto `None`) both in place and onto a copy per event:
    /// each step gives the same state or the same refusal, and a refused event leaves
    /// the state held in place as it was.
    pub fn assert_in_place_matches_copy<A: Aggregate>(events: &[A::Event]) {
        let mut copied: Option<A> = None;
        let mut in_place: Option<A> = None;
        for (i, e) in events.iter().enumerate() {
            let ctx = EventContext {
                stream_id: Uuid::nil(),
                version: i as i64 + 1,
                at: at(i as i64),
            };
            let by_copy = A::apply(copied.clone(), e, &ctx);
            let before = format!("{in_place:?}");
            let by_place = match in_place.as_mut() {
                Some(state) => A::apply_in_place(state, e, &ctx).map(|()| state.clone()),
                None => A::apply(None, e, &ctx).inspect(|state| in_place = Some(state.clone())),
            };
            assert_eq!(
                format!("{by_copy:?}"),
                format!("{by_place:?}"),
                "event {i}: {e:?}"
            );
            match by_copy {
                Ok(next) => copied = Some(next),
                Err(_) => assert_eq!(before, format!("{in_place:?}"), "event {i} refused"),
            }
        }
        assert_eq!(format!("{copied:?}"), format!("{in_place:?}"));
    }

    /// Given these events, when this command is decided: the events it produces, or
    /// why it is refused. The one given/when/then of every aggregate's tests.
    pub fn when<A: Aggregate>(
        given_events: &[A::Event],
        command: A::Command,
    ) -> Result<Vec<A::Event>, DomainError> {
        A::decide(given::<A>(given_events).as_ref(), command)
    }

    pub fn transition_error(msg: &str) -> DomainError {
        DomainError::InvalidTransition(msg.into())
    }

    pub fn rejected_with<T: std::fmt::Debug>(result: Result<T, DomainError>) -> DomainError {
        result.expect_err("command should be rejected")
    }
}

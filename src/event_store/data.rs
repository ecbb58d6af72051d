//! An event's `data` (or `metadata`) as the log stores it: the jsonb column's JSON
//! text, kept as read and decoded only when asked.
//!
//! A fold decodes the text straight into the aggregate's typed event
//! ([`crate::domain::DomainEvent::decode_text`]); readers that want the JSON tree (the
//! audit feed, imports, GraphQL) get a `serde_json::Value` parsed on first use through
//! `Deref`, once per event.

use std::ops::Deref;
use std::sync::OnceLock;

use serde::{Serialize, Serializer};
use serde_json::Value;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::{Decode, Postgres, Type, ValueRef};

use crate::domain::DomainEvent;

/// PostgreSQL's type id of `jsonb`.
const JSONB: Oid = Oid(3802);

/// The JSON text of an event's `data`, with its `Value` tree made on first use.
#[derive(Clone, Default)]
pub struct EventData {
    text: Box<str>,
    value: OnceLock<Value>,
}

impl EventData {
    /// From JSON text (as the log would return it), with no tree made yet.
    pub fn from_text(text: impl Into<Box<str>>) -> Self {
        Self {
            text: text.into(),
            value: OnceLock::new(),
        }
    }

    /// The JSON text as PostgreSQL returned it (jsonb's canonical text form).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The tree, if something already asked for it.
    pub fn parsed(&self) -> Option<&Value> {
        self.value.get()
    }

    /// The tree, parsed now if nothing asked for it yet.
    pub fn value(&self) -> &Value {
        self.value.get_or_init(|| {
            // The text comes from a jsonb column: PostgreSQL has already checked it.
            serde_json::from_str(&self.text).unwrap_or(Value::Null)
        })
    }

    /// Decodes the event this is the `data` of: from the tree if one was made
    /// already, else straight from the text. A refusal is worded by decoding the tree,
    /// so it reads the same either way.
    pub fn decode<E: DomainEvent>(&self, event_type: &str) -> Result<E, String> {
        if let Some(value) = self.parsed() {
            return E::decode(event_type, value);
        }
        match E::decode_text(event_type, &self.text) {
            Some(event) => Ok(event),
            None => E::decode(event_type, self.value()),
        }
    }

    /// The tree, owned.
    pub fn into_value(self) -> Value {
        match self.value.into_inner() {
            Some(v) => v,
            None => serde_json::from_str(&self.text).unwrap_or(Value::Null),
        }
    }
}

impl From<Value> for EventData {
    fn from(value: Value) -> Self {
        let text = value.to_string().into_boxed_str();
        Self {
            text,
            value: OnceLock::from(value),
        }
    }
}

impl Deref for EventData {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value()
    }
}

impl std::fmt::Debug for EventData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.value(), f)
    }
}

impl PartialEq for EventData {
    fn eq(&self, other: &Self) -> bool {
        self.value() == other.value()
    }
}

impl Serialize for EventData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

impl Type<Postgres> for EventData {
    fn type_info() -> PgTypeInfo {
        <Value as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <Value as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for EventData {
    fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let binary = value.format() == PgValueFormat::Binary;
        let jsonb = value.type_info().oid() == Some(JSONB);
        let mut bytes = value.as_bytes()?;
        if binary && jsonb {
            // jsonb's binary form: a version byte (1), then the JSON text.
            match bytes.split_first() {
                Some((1, rest)) => bytes = rest,
                _ => return Err("unsupported jsonb format version".into()),
            }
        }
        let text: Box<str> = std::str::from_utf8(bytes)?.into();
        let value = OnceLock::new();
        if crate::domain::tagged::through_value() {
            // The earlier path: the tree made as the row is read, and events decoded
            // from it.
            let _ = value.set(serde_json::from_str(&text)?);
        }
        Ok(Self { text, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AppointmentEvent, BoardEvent, ShiftEvent};

    /// `EventData::decode` from the text alone, and from a tree made beforehand.
    fn stored_both<E: DomainEvent>(event_type: &str, text: &str) -> (String, String) {
        let show = |r: Result<E, String>| match r {
            Ok(e) => format!("{e:?}"),
            Err(e) => format!("error: {e}"),
        };
        let from_text = EventData::from_text(text);
        let direct = show(from_text.decode::<E>(event_type));
        assert!(from_text.parsed().is_none() || direct.starts_with("error: "));
        let tree = EventData::from_text(text);
        tree.value();
        (direct, show(tree.decode::<E>(event_type)))
    }

    #[test]
    fn stored_events_decode_from_their_text_as_from_their_tree() {
        let board = uuid::Uuid::new_v4();
        let appointment = uuid::Uuid::new_v4();
        let at = chrono::Utc::now();
        let appointments = [
            AppointmentEvent::AppointmentRequested {
                board_id: board.into(),
                patient_id: Some("patient-1".into()),
                patient_name: "Zoë \"Z\" O'Brien \\ ✓\n".into(),
                specialty: "pediatrics".into(),
                region: "TX".into(),
                reason: "fever\t".into(),
            },
            AppointmentEvent::AppointmentRequested {
                board_id: board.into(),
                patient_id: None,
                patient_name: "plain".into(),
                specialty: "pediatrics".into(),
                region: "TX".into(),
                reason: "".into(),
            },
            AppointmentEvent::AppointmentScheduled {
                provider_id: uuid::Uuid::new_v4().into(),
                shift_id: uuid::Uuid::new_v4().into(),
                estimated_time: at,
            },
            AppointmentEvent::AppointmentStarted {},
            AppointmentEvent::AppointmentFinished {},
            AppointmentEvent::AppointmentCancelled {
                reason: "no \"show\"".into(),
            },
        ];
        for e in &appointments {
            // As jsonb gives it back: keys reordered, spaces after separators.
            let text = e.encode().to_string().replace(",\"", ", \"");
            let (direct, tree) = stored_both::<AppointmentEvent>(e.event_type(), &text);
            assert_eq!(direct, tree);
            assert_eq!(direct, format!("{e:?}"));
        }
        let shifts = [
            ShiftEvent::ProviderJoined {
                board_id: board.into(),
                provider_id: uuid::Uuid::new_v4().into(),
            },
            ShiftEvent::ProviderReady {},
            ShiftEvent::ProviderAssigned {
                appointment_id: appointment.into(),
            },
            ShiftEvent::ProviderPaused {},
            ShiftEvent::ChartingStarted {
                appointment_id: appointment.into(),
            },
            ShiftEvent::ChartingFinished {
                charting_seconds: 95,
            },
            ShiftEvent::ProviderSignedOff {},
        ];
        for e in &shifts {
            let (direct, tree) = stored_both::<ShiftEvent>(e.event_type(), &e.encode().to_string());
            assert_eq!(direct, tree);
            assert_eq!(direct, format!("{e:?}"));
        }
        let opened = BoardEvent::BoardOpened {
            name: "Peds \u{1F600}".into(),
            specialty: "pediatrics".into(),
            region: "TX".into(),
            date: chrono::NaiveDate::from_ymd_opt(2022, 7, 18).unwrap(),
        };
        let (direct, tree) = stored_both::<BoardEvent>("BoardOpened", &opened.encode().to_string());
        assert_eq!(direct, tree);
        assert_eq!(direct, format!("{opened:?}"));
    }

    #[test]
    fn bad_stored_events_are_refused_from_their_text_in_the_same_words_as_from_their_tree() {
        let cases = [
            ("NoSuchEvent", "{}"),
            ("AppointmentRequested", r#"{"boardId": "not-a-uuid"}"#),
            ("AppointmentRequested", "{}"),
            (
                "AppointmentRequested",
                r#"{"boardId": 7, "patientName": "x"}"#,
            ),
            ("AppointmentStarted", "null"),
            ("AppointmentStarted", "[1, 2]"),
            ("AppointmentCancelled", r#"{"reason": 12}"#),
            ("AppointmentScheduled", r#"{"providerId": null}"#),
            ("ChartingFinished", r#"{"chartingSeconds": 1.5}"#),
        ];
        for (event_type, text) in cases {
            let (direct, tree) = stored_both::<AppointmentEvent>(event_type, text);
            assert!(
                direct.starts_with("error: cannot decode"),
                "{event_type} {text}: {direct}"
            );
            assert_eq!(direct, tree, "{event_type} {text}");
            let (direct, tree) = stored_both::<ShiftEvent>(event_type, text);
            assert!(
                direct.starts_with("error: cannot decode"),
                "{event_type} {text}: {direct}"
            );
            assert_eq!(direct, tree, "{event_type} {text}");
        }
    }
}

//! Decoding a stored event from its two columns (`event_type`, `data`) straight into
//! the aggregate's event enum.
//!
//! Events are adjacently tagged (`{"type": ..., "data": {...}}`). Rather than build
//! that object (a copy of the whole `data` tree) and decode it, [`Tagged`] presents
//! the two columns to serde as that map: the enum's own `Deserialize` reads the tag,
//! then decodes the variant's fields in one pass, from the borrowed `data` tree or
//! straight from the column's JSON text (no tree at all).

use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

/// Decode through a copied `{"type", "data"}` object instead (an earlier path, kept
/// selectable so the bench can measure both in one run). Off by default.
static THROUGH_COPY: AtomicBool = AtomicBool::new(false);

/// Selects the earlier decoding path (a copied tagged object) for the whole process.
pub fn decode_through_copy(on: bool) {
    THROUGH_COPY.store(on, Ordering::Relaxed);
}

pub(crate) fn through_copy() -> bool {
    THROUGH_COPY.load(Ordering::Relaxed)
}

/// Make each event's `data` into a `serde_json::Value` tree as its row is read, and
/// decode events from that tree (the earlier path, kept selectable so the bench can
/// measure both in one run) instead of from the column's text. Off by default.
static THROUGH_VALUE: AtomicBool = AtomicBool::new(false);

/// Selects the earlier reading of events' `data` (a `Value` tree per row) for the
/// whole process.
pub fn decode_through_value(on: bool) {
    THROUGH_VALUE.store(on, Ordering::Relaxed);
}

pub(crate) fn through_value() -> bool {
    THROUGH_VALUE.load(Ordering::Relaxed)
}

/// The `{"type": event_type, "data": data}` map an adjacently tagged enum expects,
/// without building it. `data` is any JSON deserializer: a borrowed `&Value`, or a
/// `serde_json::Deserializer` over the column's text.
pub(crate) struct Tagged<'a, D> {
    pub event_type: &'a str,
    pub data: D,
}

impl<'de, 'a, D> de::Deserializer<'de> for Tagged<'a, D>
where
    D: de::Deserializer<'de, Error = serde_json::Error>,
{
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(TaggedAccess {
            event_type: self.event_type,
            data: Some(self.data),
            next: 0,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct TaggedAccess<'a, D> {
    event_type: &'a str,
    data: Option<D>,
    /// 0: the tag is next; 1: the data; 2: done.
    next: u8,
}

impl<'de, 'a, D> MapAccess<'de> for TaggedAccess<'a, D>
where
    D: de::Deserializer<'de, Error = serde_json::Error>,
{
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let key = match self.next {
            0 => "type",
            1 => "data",
            _ => return Ok(None),
        };
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.next += 1;
        match (self.next, self.data.take()) {
            (1, data) => {
                self.data = data;
                seed.deserialize(self.event_type.into_deserializer())
            }
            (2, Some(data)) => seed.deserialize(data),
            _ => Err(de::Error::custom("no value after the event's data")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(2usize.saturating_sub(self.next as usize))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::domain::{AppointmentEvent, BoardEvent, DomainEvent};

    fn both<E: DomainEvent + PartialEq>(event_type: &str, data: &Value) -> (String, String) {
        let copied = serde_json::from_value::<E>(json!({ "type": event_type, "data": data }))
            .map(|e| format!("{e:?}"))
            .map_err(|e| e.to_string());
        let direct = E::deserialize(Tagged { event_type, data })
            .map(|e| format!("{e:?}"))
            .map_err(|e| e.to_string());
        (
            copied.unwrap_or_else(|e| format!("error: {e}")),
            direct.unwrap_or_else(|e| format!("error: {e}")),
        )
    }

    #[test]
    fn events_decode_the_same_as_through_a_copied_tagged_object() {
        let requested = AppointmentEvent::AppointmentRequested {
            board_id: uuid::Uuid::new_v4().into(),
            patient_id: Some("patient-1".into()),
            patient_name: "Ana \"Nana\" Souza".into(),
            specialty: "pediatrics".into(),
            region: "TX".into(),
            reason: "fever".into(),
        };
        let data = requested.encode();
        let decoded = AppointmentEvent::decode(requested.event_type(), &data).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{requested:?}"));
        let (copied, direct) = both::<AppointmentEvent>("AppointmentRequested", &data);
        assert_eq!(copied, direct);

        let started = AppointmentEvent::decode("AppointmentStarted", &json!({})).unwrap();
        assert_eq!(started.event_type(), "AppointmentStarted");
        let closed = BoardEvent::decode("BoardClosed", &json!({})).unwrap();
        assert_eq!(closed.event_type(), "BoardClosed");
    }

    #[test]
    fn bad_events_are_refused_as_before() {
        let cases = [
            ("NoSuchEvent", json!({})),
            ("AppointmentRequested", json!({ "boardId": "not-a-uuid" })),
            ("AppointmentRequested", json!({})),
            ("AppointmentStarted", json!(null)),
            ("AppointmentStarted", json!([1, 2])),
        ];
        for (event_type, data) in &cases {
            let (copied, direct) = both::<AppointmentEvent>(event_type, data);
            assert!(
                direct.starts_with("error: "),
                "{event_type} {data}: {direct}"
            );
            assert!(
                copied.starts_with("error: "),
                "{event_type} {data}: {copied}"
            );
            assert!(
                AppointmentEvent::decode(event_type, data)
                    .unwrap_err()
                    .starts_with(&format!("cannot decode {event_type}: ")),
                "{event_type}"
            );
        }
    }
}

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

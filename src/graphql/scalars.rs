//! The custom scalars, documented for front-end code generators: what each one looks
//! like on the wire, with an example, and a `specifiedBy` URL where a standard exists.
//! No Rust type names: the schema is read by people writing TypeScript, Swift, Kotlin.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, SchemaBuilder, Value};
use chrono::NaiveDate;

/// A calendar date (`Date` in the schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date(pub NaiveDate);

/// A calendar date without a time of day or time zone, written `YYYY-MM-DD` (the
/// full-date of RFC 3339), e.g. `"2026-11-27"`. Board dates lie between the years 1900
/// and 2200.
#[Scalar(
    name = "Date",
    specified_by_url = "https://datatracker.ietf.org/doc/html/rfc3339#section-5.6"
)]
impl ScalarType for Date {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            // The domain's own rule, so a bad date reads the same wherever it is sent.
            Value::String(s) => crate::domain::parse_date("date", s)
                .map(Date)
                .map_err(|e| InputValueError::custom(e.to_string())),
            _ => Err(InputValueError::custom(
                "a date is a string written YYYY-MM-DD, e.g. \"2026-11-27\"",
            )),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.format("%Y-%m-%d").to_string())
    }
}

impl From<NaiveDate> for Date {
    fn from(d: NaiveDate) -> Self {
        Date(d)
    }
}

/// `DateTime`'s description (the scalar itself is async-graphql's, RFC 3339 on the wire,
/// with its `specifiedBy`).
const DATE_TIME: &str = "An instant in time, written as an RFC 3339 timestamp \
with a time zone offset, e.g. `\"2026-11-27T14:30:00Z\"`. Careboard answers in UTC \
(`Z` or `+00:00`); inputs may carry any offset.";

/// `JSON`'s description (JSON has no GraphQL scalar specification to point at).
const JSON: &str = "Any JSON value (RFC 8259): an object, array, string, number, boolean \
or null, returned as is, e.g. `{\"reason\": \"follow-up\"}`. Used for event data \
and metadata, whose shape depends on the event type.";

/// Gives the scalars Careboard does not define itself their descriptions. Every schema
/// (served, introspection-only, and the SDL in `schema.graphql`) is built through this.
pub fn describe<Q, M, S>(builder: SchemaBuilder<Q, M, S>) -> SchemaBuilder<Q, M, S> {
    builder
        .override_output_type_description::<chrono::DateTime<chrono::Utc>>(DATE_TIME)
        .override_output_type_description::<async_graphql::Json<serde_json::Value>>(JSON)
}

//! Typed ids: a Board's id cannot be handed where a shift's is expected.
//!
//! Each is a UUID inside, written and read as the UUID's text (`Display`/`FromStr`, and
//! transparently in serde), so the wire and the store see the same strings as before.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::DomainError;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// Parses a client-supplied id; the error names `field` (and echoes the
            /// value, which is an id the client sent, never patient data).
            pub fn parse(field: &str, value: &str) -> Result<Self, DomainError> {
                super::parse_id(field, value).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s.trim()).map(Self)
            }
        }
    };
}

id_type!(
    /// A Board: one specialty, one region, one workday.
    BoardId
);
id_type!(
    /// A provider's shift on one Board (derived from both ids, see [`ShiftId::of`]).
    ShiftId
);
id_type!(
    /// A patient's appointment request and what became of it.
    AppointmentId
);
id_type!(
    /// A registered provider.
    ProviderId
);

impl ShiftId {
    /// A provider has at most one shift per Board: its id is derived from both, so the
    /// stream's primary key enforces "not already on that board" even under races.
    pub fn of(board: BoardId, provider: ProviderId) -> ShiftId {
        ShiftId(Uuid::new_v5(&board.0, provider.0.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_and_write_as_the_uuid_text() {
        let uuid = Uuid::from_u128(42);
        let id = BoardId::from(uuid);
        assert_eq!(id.to_string(), uuid.to_string());
        assert_eq!(id.to_string().parse::<BoardId>().unwrap(), id);
        assert_eq!(
            serde_json::to_value(id).unwrap(),
            serde_json::json!(uuid.to_string())
        );
        let back: BoardId = serde_json::from_value(serde_json::json!(uuid.to_string())).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn a_malformed_id_is_a_validation_error_naming_the_field() {
        assert_eq!(
            ShiftId::parse("shiftId", "nope"),
            Err(DomainError::Validation(
                "shiftId 'nope' is not a valid id".into()
            ))
        );
        assert!(" 00000000-0000-0000-0000-00000000002a "
            .parse::<AppointmentId>()
            .is_ok());
    }

    #[test]
    fn a_shift_id_is_fixed_by_its_board_and_provider() {
        let (b, p) = (
            BoardId::from(Uuid::from_u128(1)),
            ProviderId::from(Uuid::from_u128(2)),
        );
        assert_eq!(ShiftId::of(b, p), ShiftId::of(b, p));
        assert_ne!(
            ShiftId::of(b, p),
            ShiftId::of(b, ProviderId::from(Uuid::from_u128(3)))
        );
        // The derivation every existing shift stream was created with.
        assert_eq!(
            ShiftId::of(b, p).as_uuid(),
            Uuid::new_v5(&Uuid::from_u128(1), Uuid::from_u128(2).as_bytes())
        );
    }

    /// Events and states as earlier builds stored them (ids as plain UUID text, in
    /// the `data` column and in documents and snapshots): they still decode, and
    /// encode back to the same JSON, now that the fields are typed ids.
    #[test]
    fn stored_events_and_states_keep_their_json_shape() {
        use crate::domain::{Appointment, AppointmentEvent, DomainEvent, Shift, ShiftEvent};
        use serde_json::json;

        let (board, provider, shift, appointment) = (
            "00000000-0000-0000-0000-000000000001",
            "00000000-0000-0000-0000-000000000002",
            "00000000-0000-0000-0000-000000000003",
            "00000000-0000-0000-0000-000000000004",
        );
        let stored = [
            (
                "ProviderJoined",
                json!({"boardId": board, "providerId": provider}),
            ),
            ("ProviderAssigned", json!({"appointmentId": appointment})),
            ("ChartingStarted", json!({"appointmentId": appointment})),
        ];
        for (event_type, data) in &stored {
            let event = ShiftEvent::decode(event_type, data).unwrap();
            assert_eq!(&event.encode(), data, "{event_type}");
        }
        let joined = ShiftEvent::decode(stored[0].0, &stored[0].1).unwrap();
        assert_eq!(
            joined,
            ShiftEvent::ProviderJoined {
                board_id: board.parse().unwrap(),
                provider_id: provider.parse().unwrap(),
            }
        );

        let stored = [
            (
                "AppointmentRequested",
                json!({"boardId": board, "patientName": "Sam", "specialty": "pediatrics",
                       "region": "TX", "reason": "fever"}),
            ),
            (
                "AppointmentScheduled",
                json!({"providerId": provider, "shiftId": shift,
                       "estimatedTime": "2022-07-18T09:30:00Z"}),
            ),
        ];
        for (event_type, data) in &stored {
            let event = AppointmentEvent::decode(event_type, data).unwrap();
            assert_eq!(&event.encode(), data, "{event_type}");
        }

        // States as documents and snapshots hold them.
        let shift_doc = json!({
            "id": shift, "boardId": board, "providerId": provider, "status": "ASSIGNED",
            "appointmentId": appointment, "joinedAt": "2022-07-18T09:00:00Z",
            "chartingSince": null, "chartingSeconds": 0, "signedOffAt": null,
            "readySince": null, "chartings": 0, "version": 3
        });
        let decoded: Shift = serde_json::from_value(shift_doc.clone()).unwrap();
        assert_eq!(decoded.appointment_id, Some(appointment.parse().unwrap()));
        assert_eq!(serde_json::to_value(&decoded).unwrap(), shift_doc);

        let appointment_doc = json!({
            "id": appointment, "boardId": board, "patientId": null, "patientName": "Sam",
            "specialty": "pediatrics", "region": "TX", "reason": "fever",
            "status": "SCHEDULED", "providerId": provider, "shiftId": shift,
            "estimatedTime": "2022-07-18T09:30:00Z", "requestedAt": "2022-07-18T09:00:00Z",
            "scheduledAt": "2022-07-18T09:01:00Z", "startedAt": null, "finishedAt": null,
            "cancelledAt": null, "cancellationReason": null, "version": 2
        });
        let decoded: Appointment = serde_json::from_value(appointment_doc.clone()).unwrap();
        assert_eq!(decoded.shift_id, Some(shift.parse().unwrap()));
        assert_eq!(serde_json::to_value(&decoded).unwrap(), appointment_doc);
    }
}

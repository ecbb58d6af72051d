//! Store-level fixtures: commands run straight against an [`EventStore`], without HTTP,
//! for the tests of the event store and the projector.

use careboard::commands::{self, CommandOptions, OpenBoard, RequestAppointment};
use careboard::event_store::unit_of_work::CommandMeta;
use careboard::event_store::EventStore;
use uuid::Uuid;

/// The usual test Board as a command: pediatrics in TX on 2022-07-18, named `name`.
pub fn open_board_command(name: &str) -> OpenBoard {
    OpenBoard {
        name: name.into(),
        specialty: "pediatrics".into(),
        region: "TX".into(),
        date: "2022-07-18".parse().unwrap(),
        options: CommandOptions::default(),
    }
}

/// The usual test request as a command: `patient` on `board`, pediatrics in TX.
pub fn request_command(board: Uuid, patient: &str) -> RequestAppointment {
    RequestAppointment {
        patient_id: None,
        board_id: board.into(),
        patient_name: patient.into(),
        specialty: "pediatrics".into(),
        region: "TX".into(),
        reason: "fever".into(),
        options: CommandOptions::default(),
    }
}

/// Opens the usual test Board named `name`; its id.
pub async fn open_board(store: &EventStore, name: &str) -> Uuid {
    commands::open_board(
        store,
        CommandMeta::new("openBoard"),
        open_board_command(name),
    )
    .await
    .unwrap_or_else(|e| panic!("{}", e.describe()))
    .entity
    .id
    .as_uuid()
}

/// Requests the usual appointment for `patient` on `board`; its id and the event's
/// position.
pub async fn request_appointment(store: &EventStore, board: Uuid, patient: &str) -> (Uuid, i64) {
    let w = commands::request_appointment(
        store,
        CommandMeta::new("requestAppointment"),
        request_command(board, patient),
    )
    .await
    .unwrap_or_else(|e| panic!("{}", e.describe()));
    (w.entity.id.as_uuid(), w.position)
}

//! The GraphQL documents and inputs several test modules send, written once. A module
//! that checks a mutation's whole answer (`graphql`) keeps its own wider selection.

use serde_json::{json, Value};

/// Opens a Board; answers its id and the position of the event written.
pub const OPEN_BOARD: &str =
    r#"mutation($input: OpenBoardInput!) { openBoard(input: $input) { board { id } position } }"#;

/// Requests an appointment; answers its id and the position of the event written.
pub const REQUEST_APPOINTMENT: &str = r#"mutation($input: RequestAppointmentInput!) { requestAppointment(input: $input) { appointment { id } position } }"#;

/// The usual test Board: pediatrics in TX on 2022-07-18, named `name`.
pub fn open_board_input(name: &str) -> Value {
    open_board_input_for(name, "pediatrics", "TX", "2022-07-18")
}

/// A Board named `name` for `specialty` in `region` on `date`.
pub fn open_board_input_for(name: &str, specialty: &str, region: &str, date: &str) -> Value {
    json!({"input": {"name": name, "specialty": specialty, "region": region, "date": date}})
}

/// The usual test request: `patient` on `board`, pediatrics in TX.
pub fn request_input(board: &str, patient: &str) -> Value {
    request_input_for(board, patient, "pediatrics", "TX")
}

/// A request for `specialty` in `region`.
pub fn request_input_for(board: &str, patient: &str, specialty: &str, region: &str) -> Value {
    request_input_with(board, patient, specialty, region, "fever")
}

/// A request for `specialty` in `region` giving `reason`.
pub fn request_input_with(
    board: &str,
    patient: &str,
    specialty: &str,
    region: &str,
    reason: &str,
) -> Value {
    json!({"input": {"boardId": board, "patientName": patient, "specialty": specialty, "region": region, "reason": reason}})
}

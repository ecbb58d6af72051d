//! Load → decide → append: the one path every mutation takes.
//!
//! Each command is a typed value (ids are newtypes, options parsed): GraphQL inputs are
//! converted into them in `graphql::inputs`, the matcher and the demo build them
//! directly. A command opens a unit of work, loads what the decision needs (locking in
//! exclusive mode), passes the `authorize` slot with the actor in `CommandMeta` (the
//! `authorized!` macro; a repeated `commandId` is answered from memory only after it),
//! calls the pure domain, stages the events and commits. The new state is folded in
//! memory from the events just appended, so a mutation costs no read-back.
//!
//! One module per aggregate (`board`, `provider`, `shift`, `appointment`: its
//! command values and their functions); the path they share (options, fingerprint,
//! replay, commit) in `path`, the authorization slot in `authorize`.

mod appointment;
mod authorize;
mod board;
mod path;
mod provider;
mod shift;

pub use appointment::{
    appointment_action, cancel_appointment, request_appointment, schedule_appointment,
    ActOnAppointment, AppointmentAction, CancelAppointment, RequestAppointment,
    ScheduleAppointment,
};
pub use authorize::Target;
pub use board::{close_board, open_board, CloseBoard, OpenBoard};
pub use path::{fingerprint, guard_retries};
pub use provider::{register_provider, RegisterProvider};
pub use shift::{join_board, shift_action, ActOnShift, JoinBoard, ShiftAction};

use crate::domain::Shift;

/// The options every command carries. Not part of the command's fingerprint: a retry
/// may add or drop them without becoming "a different command".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOptions {
    /// Optimistic check: the target stream's version the client last saw. A mismatch
    /// answers CONFLICT. `None`: commands on the stream are serialised instead.
    pub expected_version: Option<i64>,
    /// Idempotency key: a repeat returns the first result and appends nothing.
    pub command_id: Option<String>,
}

// The command values. Each serialises (options aside) to its fingerprint: what a
// repeated `commandId` is compared with. Field names are the API's, so a fingerprint
// stored from the GraphQL input before these types existed still compares equal when
// the client spelled ids and dates canonically (lower-case UUIDs, `YYYY-MM-DD`).
// The values live with their aggregate's functions.

/// A command's result: the target's new state, and for two-stream commands the shift.
#[derive(Debug, Clone)]
pub struct Written<T> {
    pub entity: T,
    pub shift: Option<Shift>,
    /// The target stream's version after the command.
    pub version: i64,
    /// Global position of the last event the command wrote.
    pub position: i64,
}

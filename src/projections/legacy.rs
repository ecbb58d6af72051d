//! Shims for Board documents written by earlier builds. Each one says what it carries
//! over and when it can go; nothing else in the projections knows older shapes.
//!
//! Removal condition for all of them: every deployment has swapped in `board_view`
//! fold version 4 or later (one header plus one row per appointment) and no build
//! older than migration 0006 still runs against the database — then no header holds
//! appointments of its own and every appointment row carries its Board version.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::BoardDoc;
use crate::domain::Appointment;

/// SQL condition on a `board_view_appointments x` row: written by a build before
/// migration 0006 during a rolling upgrade (no Board version), so a follower must
/// always re-read it.
pub const UNVERSIONED_ROW: &str = "x.board_version = 0";

/// The appointment streams whose rows a batch writes: those the document holds and
/// those the batch passed. A header of the earlier single-document shape holds every
/// appointment, so its first batch moves them all into rows.
pub fn appointment_rows<'a>(
    doc: &'a BoardDoc,
    passed: &'a [Uuid],
) -> impl Iterator<Item = &'a Uuid> + 'a {
    doc.appointments
        .keys()
        .chain(passed.iter().filter(|a| !doc.appointments.contains_key(a)))
}

/// Merges what a follower kept (`appointments`, `applied`) under a freshly read
/// header, which in the earlier shape may still carry appointments of its own: those
/// of the header win.
pub fn carry_over(
    doc: &mut BoardDoc,
    mut appointments: BTreeMap<Uuid, Appointment>,
    mut applied: BTreeMap<Uuid, i64>,
) {
    // Insert the header's few entries into what was kept, not the other way round:
    // `BTreeMap::append` of two non-empty maps rebuilds the whole tree, which would
    // make every refresh cost the Board's size.
    appointments.extend(std::mem::take(&mut doc.appointments));
    applied.extend(std::mem::take(&mut doc.applied));
    (doc.appointments, doc.applied) = (appointments, applied);
}

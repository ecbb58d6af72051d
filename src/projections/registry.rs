//! The registered projections: their names, fold versions, which events each one
//! folds into which document, and which table holds its documents.

use uuid::Uuid;

use crate::domain::StreamType;
use crate::event_store::RecordedEvent;
use crate::snapshots::SnapshotKind;

/// The registered projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    BoardView,
    AppointmentView,
    ProviderShiftView,
    AppointmentDurations,
}

impl Projection {
    pub const ALL: [Projection; 4] = [
        Projection::BoardView,
        Projection::AppointmentView,
        Projection::ProviderShiftView,
        Projection::AppointmentDurations,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Projection::BoardView => "board_view",
            Projection::AppointmentView => "appointment_view",
            Projection::ProviderShiftView => "provider_shift_view",
            Projection::AppointmentDurations => "appointment_durations",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Like `parse`, with the message a user should see for an unknown name.
    pub fn named(name: &str) -> Result<Self, String> {
        Self::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
            format!("unknown projection '{name}'; known: {}", known.join(", "))
        })
    }

    /// The version of the fold and document shape. Bump it when either changes: the
    /// projector then rebuilds the projection side by side and swaps it in.
    pub fn version(self) -> i32 {
        match self {
            Projection::BoardView => 4,
            Projection::AppointmentView => 2,
            Projection::ProviderShiftView => 3,
            Projection::AppointmentDurations => 2,
        }
    }

    /// The kind of snapshot this projection writes (`snapshots.kind`), if any.
    pub fn snapshot_kind(self) -> Option<SnapshotKind> {
        match self {
            Projection::BoardView => Some(SnapshotKind::Board),
            Projection::AppointmentView => Some(SnapshotKind::Appointment),
            Projection::ProviderShiftView => Some(SnapshotKind::Shift),
            Projection::AppointmentDurations => None,
        }
    }

    /// The document an event belongs to, or `None` if this projection ignores it.
    pub fn document_of(self, e: &RecordedEvent) -> Option<Uuid> {
        let stream_type = StreamType::parse(&e.stream_type)?;
        match (self, stream_type) {
            (Projection::BoardView, StreamType::Board) => Some(e.stream_id),
            (Projection::BoardView, StreamType::Shift | StreamType::Appointment) => e.board_id,
            (
                Projection::AppointmentView | Projection::AppointmentDurations,
                StreamType::Appointment,
            ) => Some(e.stream_id),
            (Projection::ProviderShiftView, StreamType::Shift) => Some(e.stream_id),
            _ => None,
        }
    }

    /// The table holding this projection's documents.
    pub(crate) fn table(self) -> &'static str {
        match self {
            Projection::BoardView => "board_view",
            Projection::AppointmentView => "appointment_view",
            Projection::ProviderShiftView => "provider_shift_view",
            Projection::AppointmentDurations => "appointment_durations",
        }
    }

    pub(crate) fn id_column(self) -> &'static str {
        match self {
            Projection::AppointmentDurations => "appointment_id",
            _ => "id",
        }
    }

    /// Joins `projection_state` on the live generation of this projection, for a
    /// document table aliased `alias`: how every query reads only live documents.
    pub fn live_join(self, alias: &str) -> String {
        format!(
            "join projection_state p on p.name = '{name}' and p.status = '{live}' \
             and p.generation = {alias}.generation",
            name = self.name(),
            live = GenerationStatus::Live.as_str()
        )
    }
}

/// Where a projection's generation is in its life: `projection_state.status`, written
/// and compared only through this type (bound as a parameter, or interpolated from
/// `as_str` where a query is built as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationStatus {
    /// The one generation queries read.
    Live,
    /// A side-by-side rebuild, swapped in when it has caught up.
    Building,
    /// Replaced by a rebuild; its documents are deleted.
    Retired,
}

impl GenerationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GenerationStatus::Live => "live",
            GenerationStatus::Building => "building",
            GenerationStatus::Retired => "retired",
        }
    }

    /// The generations the projector works on: the live one and a rebuild.
    pub fn active() -> [&'static str; 2] {
        [Self::Live.as_str(), Self::Building.as_str()]
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Live, Self::Building, Self::Retired]
            .into_iter()
            .find(|g| g.as_str() == s)
    }
}

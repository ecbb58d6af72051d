//! Board: one group of appointments and providers during one workday.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::ids::BoardId;
use super::AppointmentStatus;
use super::{
    board_date, fold_error, region, required_text, specialty, Aggregate, DomainError, DomainEvent,
    EventContext, FoldError, StreamType,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BoardStatus {
    Open,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Board {
    pub id: BoardId,
    pub name: String,
    pub specialty: String,
    pub region: String,
    pub date: NaiveDate,
    pub status: BoardStatus,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum BoardEvent {
    #[serde(rename_all = "camelCase")]
    BoardOpened {
        name: String,
        specialty: String,
        region: String,
        date: NaiveDate,
    },
    BoardClosed {},
}

impl DomainEvent for BoardEvent {
    fn event_type(&self) -> &'static str {
        match self {
            BoardEvent::BoardOpened { .. } => "BoardOpened",
            BoardEvent::BoardClosed {} => "BoardClosed",
        }
    }
}

/// What is still going on at a Board, looked up before `Close` is decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenWork {
    /// Appointments waiting, scheduled or started.
    pub open_appointments: usize,
    /// Provider shifts that are not signed off.
    pub active_providers: usize,
}

/// A Board folded together with every shift and appointment on it.
#[derive(Debug, Clone)]
pub struct BoardContents {
    pub board: Board,
    /// Sorted by join time, then id: independent of the order streams were read in.
    pub shifts: Vec<super::Shift>,
    /// Sorted by request time, then id. Shared: the contents of the next version
    /// take over every appointment that did not change (see [`BoardContents::changed`]).
    pub appointments: Vec<Arc<super::Appointment>>,
    /// How many of `appointments` are in each status, kept with them.
    pub counts: AppointmentCounts,
    /// Number of events applied across all of the Board's streams.
    pub version: i64,
    /// Global position of the newest of those events.
    pub position: i64,
}

/// Appointments of a Board in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppointmentCounts {
    by_status: [usize; 5],
}

impl AppointmentCounts {
    fn slot(status: AppointmentStatus) -> usize {
        match status {
            AppointmentStatus::Requested => 0,
            AppointmentStatus::Scheduled => 1,
            AppointmentStatus::Started => 2,
            AppointmentStatus::Finished => 3,
            AppointmentStatus::Cancelled => 4,
        }
    }

    pub fn of<'a>(appointments: impl IntoIterator<Item = &'a super::Appointment>) -> Self {
        let mut counts = Self::default();
        for a in appointments {
            counts.by_status[Self::slot(a.status)] += 1;
        }
        counts
    }

    pub fn get(&self, status: AppointmentStatus) -> usize {
        self.by_status[Self::slot(status)]
    }

    /// Waiting, scheduled or started.
    pub fn open(&self) -> usize {
        self.by_status[..3].iter().sum()
    }
}

fn request_order(a: &super::Appointment) -> (DateTime<Utc>, super::AppointmentId) {
    (a.requested_at, a.id)
}

impl BoardContents {
    /// Contents from a Board's parts in any order: shifts and appointments are sorted
    /// here, and the appointments counted.
    pub fn new(
        board: Board,
        mut shifts: Vec<super::Shift>,
        mut appointments: Vec<Arc<super::Appointment>>,
        version: i64,
        position: i64,
    ) -> Self {
        shifts.sort_by_key(|s| (s.joined_at, s.id));
        appointments.sort_by_key(|a| request_order(a));
        let counts = AppointmentCounts::of(appointments.iter().map(|a| &**a));
        Self {
            board,
            shifts,
            appointments,
            counts,
            version,
            position,
        }
    }

    /// The contents of a later version of the same Board, made from these: the
    /// appointments in `changed` replace theirs (or join, in request order) and every
    /// other appointment is shared with `self`, so the cost follows what changed, not
    /// the Board's size (but for one pointer copy per appointment). `total` is how
    /// many appointments the new version has; `None` when the result would not have
    /// that many (an appointment moved in request order, or went): the caller then
    /// builds the contents whole.
    pub fn changed<'a>(
        &self,
        board: Board,
        shifts: Vec<super::Shift>,
        changed: impl IntoIterator<Item = &'a super::Appointment>,
        total: usize,
        version: i64,
        position: i64,
    ) -> Option<Self> {
        let mut appointments = self.appointments.clone();
        let mut counts = self.counts;
        for a in changed {
            let key = request_order(a);
            counts.by_status[AppointmentCounts::slot(a.status)] += 1;
            let a = Arc::new(a.clone());
            match appointments.binary_search_by_key(&key, |x| request_order(x)) {
                Ok(at) => {
                    counts.by_status[AppointmentCounts::slot(appointments[at].status)] -= 1;
                    appointments[at] = a;
                }
                Err(at) => appointments.insert(at, a),
            }
        }
        // An appointment whose request time differed from the one kept (never, as
        // the fold stands) would now be listed twice.
        if appointments.len() != total {
            return None;
        }
        let mut shifts = shifts;
        shifts.sort_by_key(|s| (s.joined_at, s.id));
        Some(Self {
            board,
            shifts,
            appointments,
            counts,
            version,
            position,
        })
    }

    pub fn open_work(&self) -> OpenWork {
        OpenWork {
            open_appointments: self.counts.open(),
            active_providers: self
                .shifts
                .iter()
                .filter(|s| s.status != super::ShiftStatus::SignedOff)
                .count(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum BoardCommand {
    Open {
        name: String,
        specialty: String,
        region: String,
        date: NaiveDate,
    },
    Close {
        open_work: OpenWork,
    },
}

pub fn decide(
    state: Option<&Board>,
    command: BoardCommand,
) -> Result<Vec<BoardEvent>, DomainError> {
    match (state, command) {
        (
            None,
            BoardCommand::Open {
                name,
                specialty: s,
                region: r,
                date,
            },
        ) => Ok(vec![BoardEvent::BoardOpened {
            name: required_text("name", &name, 200)?,
            specialty: specialty("specialty", &s)?,
            region: region("region", &r)?,
            date: board_date("date", date)?,
        }]),
        (Some(board), BoardCommand::Open { .. }) => Err(DomainError::InvalidTransition(format!(
            "board {} is already open",
            board.id
        ))),
        (None, BoardCommand::Close { .. }) => {
            Err(DomainError::NotFound("board not found".to_string()))
        }
        (Some(board), BoardCommand::Close { open_work }) => {
            if board.status == BoardStatus::Closed {
                return Err(DomainError::InvalidTransition(
                    "cannot close board: board is already CLOSED".to_string(),
                ));
            }
            if open_work.open_appointments > 0 || open_work.active_providers > 0 {
                return Err(DomainError::InvalidTransition(format!(
                    "cannot close board: {} appointment(s) still waiting, scheduled or started \
                     and {} provider(s) not signed off",
                    open_work.open_appointments, open_work.active_providers
                )));
            }
            Ok(vec![BoardEvent::BoardClosed {}])
        }
    }
}

impl Aggregate for Board {
    const STREAM_TYPE: StreamType = StreamType::Board;
    type Event = BoardEvent;
    type Command = BoardCommand;

    fn decide(state: Option<&Self>, command: BoardCommand) -> Result<Vec<BoardEvent>, DomainError> {
        decide(state, command)
    }

    fn apply(
        state: Option<Self>,
        event: &BoardEvent,
        ctx: &EventContext,
    ) -> Result<Self, FoldError> {
        match (state, event) {
            (
                None,
                BoardEvent::BoardOpened {
                    name,
                    specialty,
                    region,
                    date,
                },
            ) => Ok(Board {
                id: ctx.stream_id.into(),
                name: name.clone(),
                specialty: specialty.clone(),
                region: region.clone(),
                date: *date,
                status: BoardStatus::Open,
                opened_at: ctx.at,
                closed_at: None,
                version: ctx.version,
            }),
            (Some(mut board), BoardEvent::BoardClosed {}) => {
                board.status = BoardStatus::Closed;
                board.closed_at = Some(ctx.at);
                board.version = ctx.version;
                Ok(board)
            }
            (None, e) => Err(fold_error(e, ctx, "board stream has not been opened")),
            (Some(_), e) => Err(fold_error(e, ctx, "board is already opened")),
        }
    }

    fn version(&self) -> i64 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;

    mod contents {
        use std::collections::BTreeMap;

        use rand::{Rng, SeedableRng};
        use uuid::Uuid;

        use super::super::*;
        use crate::domain::{Appointment, AppointmentId, AppointmentStatus};

        fn board() -> Board {
            Board {
                id: Uuid::from_u128(1).into(),
                name: "Pediatrics TX".into(),
                specialty: "pediatrics".into(),
                region: "TX".into(),
                date: NaiveDate::from_ymd_opt(2022, 7, 18).unwrap(),
                status: BoardStatus::Open,
                opened_at: DateTime::UNIX_EPOCH,
                closed_at: None,
                version: 1,
            }
        }

        fn requested(n: u128, second: i64) -> Appointment {
            Appointment {
                id: AppointmentId::from(Uuid::from_u128(n)),
                board_id: Uuid::from_u128(1).into(),
                patient_id: None,
                patient_name: format!("Patient {n}"),
                specialty: "pediatrics".into(),
                region: "TX".into(),
                reason: "fever".into(),
                status: AppointmentStatus::Requested,
                provider_id: None,
                shift_id: None,
                estimated_time: None,
                requested_at: DateTime::UNIX_EPOCH + chrono::Duration::seconds(second),
                scheduled_at: None,
                started_at: None,
                finished_at: None,
                cancelled_at: None,
                cancellation_reason: None,
                version: 1,
            }
        }

        fn whole(truth: &BTreeMap<u128, Appointment>, version: i64) -> BoardContents {
            BoardContents::new(
                board(),
                Vec::new(),
                truth.values().cloned().map(Arc::new).collect(),
                version,
                version,
            )
        }

        #[test]
        fn contents_made_from_what_changed_equal_contents_made_whole() {
            const STATUSES: [AppointmentStatus; 5] = [
                AppointmentStatus::Requested,
                AppointmentStatus::Scheduled,
                AppointmentStatus::Started,
                AppointmentStatus::Finished,
                AppointmentStatus::Cancelled,
            ];
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
            let mut truth: BTreeMap<u128, Appointment> = BTreeMap::new();
            let mut kept = whole(&truth, 0);
            let mut next = 1u128;
            for version in 1..400 {
                let mut changed = Vec::new();
                for _ in 0..rng.random_range(1..6) {
                    if truth.is_empty() || rng.random_bool(0.5) {
                        // Requests arrive out of order, and several in one second.
                        let a = requested(next, rng.random_range(0..200));
                        next += 1;
                        changed.push(a.id.as_uuid().as_u128());
                        truth.insert(a.id.as_uuid().as_u128(), a);
                    } else {
                        let n = *truth.keys().nth(rng.random_range(0..truth.len())).unwrap();
                        let a = truth.get_mut(&n).unwrap();
                        a.status = STATUSES[rng.random_range(0..STATUSES.len())];
                        a.version += 1;
                        changed.push(n);
                    }
                }
                changed.sort();
                changed.dedup();
                let made = kept
                    .changed(
                        board(),
                        Vec::new(),
                        changed.iter().map(|n| &truth[n]),
                        truth.len(),
                        version,
                        version,
                    )
                    .expect("made in place");
                assert_eq!(format!("{made:?}"), format!("{:?}", whole(&truth, version)));
                assert_eq!(
                    made.counts,
                    AppointmentCounts::of(truth.values()),
                    "counts kept"
                );
                // What did not change is shared, not copied.
                for a in &made.appointments {
                    if !changed.contains(&a.id.as_uuid().as_u128()) {
                        let old = kept.appointments.iter().find(|k| k.id == a.id).unwrap();
                        assert!(Arc::ptr_eq(old, a));
                    }
                }
                kept = made;
            }
            assert!(kept.appointments.len() > 300);
        }

        #[test]
        fn an_appointment_that_moved_in_request_order_is_left_to_a_whole_build() {
            let mut truth = BTreeMap::new();
            for n in 1..5 {
                truth.insert(n, requested(n, n as i64));
            }
            let kept = whole(&truth, 1);
            let moved = requested(2, 10);
            assert!(kept
                .changed(board(), Vec::new(), [&moved], truth.len(), 2, 2)
                .is_none());
        }
    }

    fn opened() -> BoardEvent {
        BoardEvent::BoardOpened {
            name: "Pediatrics TX".into(),
            specialty: "pediatrics".into(),
            region: "TX".into(),
            date: NaiveDate::from_ymd_opt(2022, 7, 18).unwrap(),
        }
    }

    fn open_cmd(date: &str) -> BoardCommand {
        BoardCommand::Open {
            name: " Pediatrics TX ".into(),
            specialty: "Pediatrics".into(),
            region: "tx".into(),
            date: date.parse().unwrap(),
        }
    }

    #[test]
    fn opening_a_new_board_normalises_its_facts() {
        let events = decide(None, open_cmd("2022-07-18")).unwrap();
        assert_eq!(events, vec![opened()]);
        let board = given::<Board>(&events).unwrap();
        assert_eq!(board.status, BoardStatus::Open);
        assert_eq!(board.version, 1);
    }

    #[test]
    fn opening_on_a_date_outside_the_sane_window_is_a_validation_error() {
        let err = rejected_with(decide(None, open_cmd("1899-12-31")));
        assert_eq!(
            err,
            DomainError::Validation(
                "date '1899-12-31' is out of range (years 1900 to 2200)".into()
            )
        );
        assert!(decide(None, open_cmd("2200-12-31")).is_ok());
    }

    #[test]
    fn opening_with_an_empty_name_is_a_validation_error() {
        let cmd = BoardCommand::Open {
            name: "   ".into(),
            specialty: "x".into(),
            region: "TX".into(),
            date: NaiveDate::from_ymd_opt(2022, 7, 18).unwrap(),
        };
        assert_eq!(
            rejected_with(decide(None, cmd)),
            DomainError::Validation("name must not be empty".into())
        );
    }

    #[test]
    fn opening_an_existing_board_is_rejected() {
        let board = given::<Board>(&[opened()]);
        assert!(matches!(
            rejected_with(decide(board.as_ref(), open_cmd("2022-07-18"))),
            DomainError::InvalidTransition(_)
        ));
    }

    #[test]
    fn closing_an_idle_open_board_closes_it() {
        let board = given::<Board>(&[opened()]);
        let events = decide(
            board.as_ref(),
            BoardCommand::Close {
                open_work: OpenWork::default(),
            },
        )
        .unwrap();
        assert_eq!(events, vec![BoardEvent::BoardClosed {}]);
        let closed = given::<Board>(&[opened(), BoardEvent::BoardClosed {}]).unwrap();
        assert_eq!(closed.status, BoardStatus::Closed);
        assert_eq!(closed.closed_at, Some(at(1)));
    }

    #[test]
    fn closing_with_open_appointments_is_rejected() {
        let board = given::<Board>(&[opened()]);
        let err = rejected_with(decide(
            board.as_ref(),
            BoardCommand::Close {
                open_work: OpenWork {
                    open_appointments: 2,
                    active_providers: 0,
                },
            },
        ));
        assert_eq!(
            err,
            DomainError::InvalidTransition(
                "cannot close board: 2 appointment(s) still waiting, scheduled or started and 0 \
                 provider(s) not signed off"
                    .into()
            )
        );
    }

    #[test]
    fn closing_with_providers_not_signed_off_is_rejected() {
        let board = given::<Board>(&[opened()]);
        let cmd = BoardCommand::Close {
            open_work: OpenWork {
                open_appointments: 0,
                active_providers: 1,
            },
        };
        assert!(matches!(
            rejected_with(decide(board.as_ref(), cmd)),
            DomainError::InvalidTransition(_)
        ));
    }

    #[test]
    fn closing_a_closed_board_is_rejected() {
        let board = given::<Board>(&[opened(), BoardEvent::BoardClosed {}]);
        let cmd = BoardCommand::Close {
            open_work: OpenWork::default(),
        };
        assert_eq!(
            rejected_with(decide(board.as_ref(), cmd)),
            DomainError::InvalidTransition("cannot close board: board is already CLOSED".into())
        );
    }

    #[test]
    fn closing_an_unknown_board_is_not_found() {
        let cmd = BoardCommand::Close {
            open_work: OpenWork::default(),
        };
        assert!(matches!(
            rejected_with(decide(None, cmd)),
            DomainError::NotFound(_)
        ));
    }
}

//! Time travel: `asOf` on the multi-stream Board and on single streams, with and without
//! snapshots, against what the projector produced at each point.

use crate::helpers;
use std::sync::Arc;
use std::time::Duration;

use careboard::commands::{
    self, ActOnAppointment, ActOnShift, AppointmentAction, CancelAppointment, CommandOptions,
    JoinBoard, OpenBoard, RegisterProvider, RequestAppointment, ScheduleAppointment, ShiftAction,
};
use careboard::daemon::{Daemon, DaemonConfig};
use careboard::domain::{Appointment, AppointmentStatus, Shift, ShiftStatus};
use careboard::event_store::unit_of_work::CommandMeta;
use careboard::event_store::{fold_recorded, read_stream, EventStore, ReadLimit};
use careboard::metrics::Metrics;
use careboard::projections::{read, BoardDoc, Projection};
use careboard::time_travel::{board_as_of, board_doc_as_of, stream_as_of, Snapshots};
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

fn meta(op: &'static str) -> CommandMeta {
    CommandMeta::new(op)
}

fn opts() -> CommandOptions {
    CommandOptions::default()
}

/// A Board under random, valid commands: what the model believes, to pick the next one.
struct Day {
    store: EventStore,
    board: Uuid,
    appointments: Vec<(Uuid, AppointmentStatus)>,
    shifts: Vec<(Uuid, ShiftStatus)>,
    last_position: i64,
}

impl Day {
    async fn open(store: EventStore) -> Self {
        let board = commands::open_board(
            &store,
            meta("openBoard"),
            OpenBoard {
                name: "Time travel".into(),
                specialty: "pediatrics".into(),
                region: "TX".into(),
                date: "2022-07-18".parse().unwrap(),
                options: opts(),
            },
        )
        .await
        .unwrap();
        Self {
            store,
            board: board.entity.id.as_uuid(),
            appointments: Vec::new(),
            shifts: Vec::new(),
            last_position: board.position,
        }
    }

    fn pick<T: Copy>(
        rng: &mut StdRng,
        items: &[(Uuid, T)],
        wanted: impl Fn(T) -> bool,
    ) -> Option<usize> {
        let candidates: Vec<usize> = (0..items.len()).filter(|i| wanted(items[*i].1)).collect();
        (!candidates.is_empty()).then(|| candidates[rng.random_range(0..candidates.len())])
    }

    fn set_appointment(&mut self, a: &Appointment) {
        if let Some(x) = self.appointments.iter_mut().find(|x| x.0 == a.id.as_uuid()) {
            x.1 = a.status;
        }
    }

    fn set_shift(&mut self, s: &Shift) {
        if let Some(x) = self.shifts.iter_mut().find(|x| x.0 == s.id.as_uuid()) {
            x.1 = s.status;
        }
    }

    /// Notes what an appointment command wrote (the appointment, and its shift if it
    /// moved one); returns its position.
    fn written(&mut self, w: &careboard::commands::Written<Appointment>) -> i64 {
        self.set_appointment(&w.entity);
        if let Some(s) = &w.shift {
            self.set_shift(s);
        }
        w.position
    }

    /// Runs one random valid command; returns its position.
    async fn step(&mut self, rng: &mut StdRng) -> i64 {
        use AppointmentStatus as A;
        use ShiftStatus as S;
        loop {
            let position = match rng.random_range(0..9) {
                0 if self.shifts.len() < 4 => {
                    let p = commands::register_provider(
                        &self.store,
                        meta("registerProvider"),
                        RegisterProvider {
                            name: format!("Provider {}", self.shifts.len()),
                            specialties: vec!["pediatrics".into()],
                            licensed_regions: vec!["TX".into()],
                            options: opts(),
                        },
                    )
                    .await
                    .unwrap();
                    let s = commands::join_board(
                        &self.store,
                        meta("joinBoard"),
                        JoinBoard {
                            board_id: self.board.into(),
                            provider_id: p.entity.id,
                            options: opts(),
                        },
                    )
                    .await
                    .unwrap();
                    self.shifts.push((s.entity.id.as_uuid(), s.entity.status));
                    s.position
                }
                1 => {
                    let a = commands::request_appointment(
                        &self.store,
                        meta("requestAppointment"),
                        RequestAppointment {
                            patient_id: None,
                            board_id: self.board.into(),
                            patient_name: format!("Patient {}", self.appointments.len()),
                            specialty: "pediatrics".into(),
                            region: "TX".into(),
                            reason: "fever".into(),
                            options: opts(),
                        },
                    )
                    .await
                    .unwrap();
                    self.appointments
                        .push((a.entity.id.as_uuid(), a.entity.status));
                    a.position
                }
                2 => {
                    let (Some(a), Some(s)) = (
                        Self::pick(rng, &self.appointments, |x| x == A::Requested),
                        Self::pick(rng, &self.shifts, |x| x == S::Ready),
                    ) else {
                        continue;
                    };
                    let w = commands::schedule_appointment(
                        &self.store,
                        &Default::default(),
                        meta("scheduleAppointment"),
                        ScheduleAppointment {
                            appointment_id: self.appointments[a].0.into(),
                            shift_id: self.shifts[s].0.into(),
                            estimated_time: None,
                            expected_shift_version: None,
                            options: opts(),
                        },
                    )
                    .await
                    .unwrap();
                    self.set_appointment(&w.entity);
                    self.set_shift(w.shift.as_ref().unwrap());
                    w.position
                }
                3 | 4 => {
                    let (wanted, action) = if rng.random_bool(0.5) {
                        (A::Scheduled, AppointmentAction::Start)
                    } else {
                        (A::Started, AppointmentAction::Finish)
                    };
                    let Some(a) = Self::pick(rng, &self.appointments, |x| x == wanted) else {
                        continue;
                    };
                    let w = commands::appointment_action(
                        &self.store,
                        meta("appointmentAction"),
                        ActOnAppointment {
                            action,
                            appointment_id: self.appointments[a].0.into(),
                            options: opts(),
                        },
                    )
                    .await
                    .unwrap();
                    self.written(&w)
                }
                5 => {
                    let Some(a) = Self::pick(rng, &self.appointments, |x| {
                        x == A::Requested || x == A::Scheduled
                    }) else {
                        continue;
                    };
                    let w = commands::cancel_appointment(
                        &self.store,
                        meta("cancelAppointment"),
                        CancelAppointment {
                            appointment_id: self.appointments[a].0.into(),
                            reason: "changed plans".into(),
                            options: opts(),
                        },
                    )
                    .await
                    .unwrap();
                    self.written(&w)
                }
                6..=8 => {
                    let (wanted, action) = match rng.random_range(0..3) {
                        0 => (S::Charting, ShiftAction::CompleteCharting),
                        1 => (S::Ready, ShiftAction::Pause),
                        _ => (S::Paused, ShiftAction::MarkReady),
                    };
                    let Some(s) = Self::pick(rng, &self.shifts, |x| x == wanted) else {
                        continue;
                    };
                    let w = commands::shift_action(
                        &self.store,
                        meta("shiftAction"),
                        ActOnShift {
                            action,
                            shift_id: self.shifts[s].0.into(),
                            options: opts(),
                        },
                    )
                    .await
                    .unwrap();
                    self.set_shift(&w.entity);
                    w.position
                }
                _ => continue,
            };
            self.last_position = position;
            return position;
        }
    }
}

fn start_projector(
    pool: &PgPool,
    store: &EventStore,
    snapshot_every: i64,
) -> careboard::daemon::DaemonHandle {
    Daemon::new(
        pool.clone(),
        store.appended_signal(),
        Default::default(),
        DaemonConfig {
            snapshot_every,
            ..helpers::fast_projector()
        },
        Arc::new(Metrics::new()),
    )
    .spawn()
}

async fn projected(pool: &PgPool, board: Uuid, position: i64) -> BoardDoc {
    assert!(
        careboard::projector::wait_for_position(
            pool,
            Projection::BoardView,
            position,
            Duration::from_secs(20)
        )
        .await
        .unwrap(),
        "the projector reaches {position}"
    );
    read::board(pool, board)
        .await
        .unwrap()
        .expect("board document")
}

async fn recorded_at(pool: &PgPool, position: i64) -> DateTime<Utc> {
    sqlx::query_scalar("select recorded_at from events where seq = $1")
        .bind(position)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_as_of_equals_what_the_projector_had_at_every_point_with_and_without_snapshots() {
    for seed in [1u64, 2, 3] {
        let pool = helpers::fresh_database().await;
        let store = helpers::store(&pool);
        // Snapshots every 3 events: every history crosses many snapshot boundaries.
        let projector = start_projector(&pool, &store, 3);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut day = Day::open(store.clone()).await;
        // After each command: the time of its last event, and the projector's document.
        let mut points: Vec<(DateTime<Utc>, BoardDoc)> = Vec::new();
        let first = projected(&pool, day.board, day.last_position).await;
        points.push((recorded_at(&pool, day.last_position).await, first));
        for _ in 0..40 {
            let position = day.step(&mut rng).await;
            let doc = projected(&pool, day.board, position).await;
            points.push((recorded_at(&pool, position).await, doc));
        }
        let snapshots: i64 =
            sqlx::query_scalar("select count(*) from snapshots where kind = 'board'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(
            snapshots >= 10,
            "history crossed snapshot boundaries ({snapshots})"
        );

        for (i, (at, expected)) in points.iter().enumerate() {
            // At the point itself, and at random moments before the next one.
            let mut moments = vec![*at];
            if let Some((next, _)) = points.get(i + 1) {
                let gap = (*next - *at).num_microseconds().unwrap_or(0).max(1);
                moments.push(*at + chrono::Duration::microseconds(rng.random_range(0..gap)));
            }
            for t in moments {
                let with = board_doc_as_of(&pool, day.board, t, Snapshots::Use)
                    .await
                    .unwrap();
                let without = board_doc_as_of(&pool, day.board, t, Snapshots::Ignore)
                    .await
                    .unwrap();
                assert_eq!(&without, expected, "seed {seed}, point {i}: plain replay");
                assert_eq!(&with, expected, "seed {seed}, point {i}: from snapshots");
            }
        }
        // Before the Board existed: nothing.
        let before = points[0].0 - chrono::Duration::seconds(1);
        assert!(board_as_of(&pool, day.board, before, Snapshots::Use)
            .await
            .unwrap()
            .is_none());
        projector.stop().await.unwrap();
    }
}

#[tokio::test]
async fn single_stream_as_of_and_version_match_a_replay_of_the_first_k_events() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let projector = start_projector(&pool, &store, 2);
    let mut rng = StdRng::seed_from_u64(7);
    let mut day = Day::open(store.clone()).await;
    for _ in 0..60 {
        day.step(&mut rng).await;
    }
    projected(&pool, day.board, day.last_position).await;
    for (id, _) in day.shifts.iter().take(3) {
        let events = read_stream(&pool, *id, ReadLimit::All).await.unwrap();
        assert!(events.len() >= 2);
        for k in 1..=events.len() {
            let expected = fold_recorded::<Shift>(&events[..k]).unwrap();
            for snapshots in [Snapshots::Use, Snapshots::Ignore] {
                let by_version =
                    stream_as_of::<Shift>(&pool, *id, ReadLimit::Version(k as i64), snapshots)
                        .await
                        .unwrap();
                assert_eq!(
                    by_version, expected,
                    "shift {id} version {k} ({snapshots:?})"
                );
                let by_time = stream_as_of::<Shift>(
                    &pool,
                    *id,
                    ReadLimit::Time(events[k - 1].recorded_at),
                    snapshots,
                )
                .await
                .unwrap();
                assert_eq!(
                    by_time, expected,
                    "shift {id} as of event {k} ({snapshots:?})"
                );
            }
        }
        let before = events[0].recorded_at - chrono::Duration::seconds(1);
        assert!(
            stream_as_of::<Shift>(&pool, *id, ReadLimit::Time(before), Snapshots::Use)
                .await
                .unwrap()
                .is_none()
        );
        let future = Utc::now() + chrono::Duration::days(1);
        let now = stream_as_of::<Shift>(&pool, *id, ReadLimit::Time(future), Snapshots::Use)
            .await
            .unwrap();
        assert_eq!(now, fold_recorded::<Shift>(&events).unwrap());
    }
    for (id, _) in day.appointments.iter().take(3) {
        let events = read_stream(&pool, *id, ReadLimit::All).await.unwrap();
        for k in 1..=events.len() {
            let expected = fold_recorded::<Appointment>(&events[..k]).unwrap();
            let got = stream_as_of::<Appointment>(
                &pool,
                *id,
                ReadLimit::Version(k as i64),
                Snapshots::Use,
            )
            .await
            .unwrap();
            assert_eq!(got, expected, "appointment {id} version {k}");
        }
    }
    projector.stop().await.unwrap();
}

#[tokio::test]
async fn a_changed_fold_version_ignores_stale_snapshots() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let mut day = Day::open(store.clone()).await;
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..5 {
        day.step(&mut rng).await;
    }
    let now = Utc::now();
    let truth = board_doc_as_of(&pool, day.board, now, Snapshots::Ignore)
        .await
        .unwrap();
    let mut forged = truth.clone();
    forged.board.as_mut().unwrap().name = "FORGED".into();
    let at = truth.max_recorded_at.unwrap();
    let insert = |fold_version: i32| {
        let pool = pool.clone();
        let forged = serde_json::to_value(&forged).unwrap();
        let board = day.board;
        async move {
            sqlx::query(
                "insert into snapshots (kind, id, fold_version, version, max_recorded_at, tx, seq, doc) \
                 values ('board', $1, $2, $3, $4, '0', 0, $5)",
            )
            .bind(board)
            .bind(fold_version)
            .bind(truth.version)
            .bind(at)
            .bind(forged)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // A snapshot of another fold version is never read...
    insert(Projection::BoardView.version() - 1).await;
    let got = board_doc_as_of(&pool, day.board, now, Snapshots::Use)
        .await
        .unwrap();
    assert_eq!(got.board.as_ref().unwrap().name, "Time travel");
    // ...while one of the current fold version is (so the check above means something).
    insert(Projection::BoardView.version()).await;
    let got = board_doc_as_of(&pool, day.board, now, Snapshots::Use)
        .await
        .unwrap();
    assert_eq!(got.board.as_ref().unwrap().name, "FORGED");
}

#[tokio::test]
async fn board_history_and_as_of_are_served_over_graphql() {
    let app = helpers::TestApp::spawn().await;
    let store = helpers::store(&app.pool);
    let mut day = Day::open(store).await;
    let opened_at = recorded_at(&app.pool, day.last_position).await;
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..12 {
        day.step(&mut rng).await;
    }
    let events: i64 = sqlx::query_scalar(
        "select count(*) from events e join streams s on s.id = e.stream_id where s.board_id = $1",
    )
    .bind(day.board)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let data = app
        .data(
            r#"query($id: ID!, $from: DateTime!, $to: DateTime!, $at: DateTime!) {
                boardHistory(boardId: $id, from: $from, to: $to) {
                    version position at waiting providersReady event { type streamId } }
                then: board(id: $id, asOf: $at) { version counts { waiting } }
            }"#,
            json!({"id": day.board, "from": (opened_at - chrono::Duration::seconds(1)).to_rfc3339(),
                   "to": Utc::now().to_rfc3339(), "at": opened_at.to_rfc3339()}),
        )
        .await;
    let history = data["boardHistory"].as_array().unwrap();
    assert_eq!(history.len() as i64, events, "one entry per event");
    assert_eq!(history[0]["event"]["type"], "BoardOpened");
    let versions: Vec<i64> = history
        .iter()
        .map(|h| h["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=events).collect::<Vec<_>>());
    assert_eq!(data["then"]["version"], 1);
    assert_eq!(data["then"]["counts"]["waiting"], 0);
}

/// Seconds between two RFC 3339 times of a response.
fn seconds_between(from: &serde_json::Value, to: &serde_json::Value) -> i64 {
    let parse = |v: &serde_json::Value| DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    (parse(to) - parse(from)).num_seconds()
}

#[tokio::test]
async fn every_board_history_version_summarises_exactly_what_board_as_of_returns_then() {
    let app = helpers::TestApp::spawn().await;
    // A morning that ended an hour ago: one provider busy, one paused, a patient waiting.
    let now = Utc::now() - chrono::Duration::hours(1);
    let scenario = helpers::day::stuck_morning(now);
    helpers::day::seed(&app, &scenario, now, chrono::Duration::zero()).await;
    let board = scenario.boards[0].id;
    let history = app
        .data(
            "query($id: ID!) { boardHistory(boardId: $id, from: \"2000-01-01T00:00:00Z\", to: \"2100-01-01T00:00:00Z\") {
               version at waiting scheduled inProgress providersReady providersAssigned providersPaused providersCharting longestWaitSeconds } }",
            json!({"id": board}),
        )
        .await["boardHistory"]
        .as_array()
        .unwrap()
        .clone();
    assert!(history.len() >= 8, "{history:#?}");
    let mut waited = Vec::new();
    for (i, entry) in history.iter().enumerate() {
        // Events recorded in the same instant (a match writes two) are one moment to
        // asOf: it shows the last of them.
        if history
            .get(i + 1)
            .is_some_and(|next| next["at"] == entry["at"])
        {
            continue;
        }
        let then = app
            .data(
                "query($id: ID!, $at: DateTime!) { board(id: $id, asOf: $at) { version waitingSince
                   counts { waiting scheduled inProgress providersReady providersAssigned providersPaused providersCharting } } }",
                json!({"id": board, "at": entry["at"]}),
            )
            .await["board"]
            .clone();
        assert_eq!(then["version"], entry["version"], "{entry}");
        for (field, count) in [
            ("waiting", "waiting"),
            ("scheduled", "scheduled"),
            ("inProgress", "inProgress"),
            ("providersReady", "providersReady"),
            ("providersAssigned", "providersAssigned"),
            ("providersPaused", "providersPaused"),
            ("providersCharting", "providersCharting"),
        ] {
            assert_eq!(entry[field], then["counts"][count], "{field} at {entry}");
        }
        let longest = match then["waitingSince"].is_null() {
            true => serde_json::Value::Null,
            false => json!(seconds_between(&then["waitingSince"], &entry["at"])),
        };
        assert_eq!(entry["longestWaitSeconds"], longest, "{entry}");
        waited.push(entry["longestWaitSeconds"].clone());
    }
    // Ben asked 10 minutes in, while Ada was with the only provider free: from then on
    // somebody waits (0 s at the moment he asked).
    assert_eq!(history.last().unwrap()["waiting"], 1);
    assert!(waited.contains(&json!(0)));
}

#[tokio::test]
async fn a_board_answers_its_quoted_wait_its_longest_wait_and_when_appointments_should_finish() {
    let app = helpers::TestApp::spawn().await;
    let now = Utc::now();
    let scenario = helpers::day::stuck_morning(now);
    helpers::day::seed(&app, &scenario, now, chrono::Duration::zero()).await;
    let board = scenario.boards[0].id;
    let at = (now - chrono::Duration::minutes(5)).to_rfc3339();
    let fields = "status waitingSince currentWait { waitSeconds estimatedStart queueAhead }
        appointments { patientName status requestedAt scheduledAt expectedFinish }";
    // Patient names are for the coordinator (admins see them masked).
    let coordinator = app.token(helpers::idp::Who::coordinator());
    for as_of in [None, Some(at.clone())] {
        let data = app
            .data_as(
                &coordinator,
                &format!(
                    "query($id: ID!, $at: DateTime) {{ board(id: $id, asOf: $at) {{ {fields} }}
                       waitTimeEstimate(boardId: $id, specialty: \"pediatrics\", asOf: $at) {{ waitSeconds queueAhead }} }}"
                ),
                json!({"id": board, "at": as_of}),
            )
            .await;
        let b = &data["board"];
        let quote = &b["currentWait"];
        // The quote is what a new request of the Board's specialty would be told.
        assert_eq!(quote["queueAhead"], data["waitTimeEstimate"]["queueAhead"]);
        let (a, e) = (
            quote["waitSeconds"].as_i64().unwrap(),
            data["waitTimeEstimate"]["waitSeconds"].as_i64().unwrap(),
        );
        assert!((a - e).abs() <= 2, "quote {a} s, waitTimeEstimate {e} s");
        assert_eq!(quote["queueAhead"], 1, "Ben is ahead of a new request");
        let appointment = |name: &str| {
            b["appointments"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["patientName"] == name)
                .unwrap()
                .clone()
        };
        let (ada, ben) = (appointment("Ada Park"), appointment("Ben Okafor"));
        assert_eq!(b["waitingSince"], ben["requestedAt"]);
        assert!(ben["expectedFinish"].is_null(), "waiting: no finish yet");
        // No history yet: the usual time is the default 20 minutes from scheduling.
        assert_eq!(ada["status"], "STARTED");
        assert_eq!(
            seconds_between(&ada["scheduledAt"], &ada["expectedFinish"]),
            20 * 60
        );
    }
    // A closed Board quotes nothing.
    let old = app
        .data(
            "mutation { openBoard(input: {name: \"Done\", specialty: \"cardiology\", region: \"NY\", date: \"2020-01-06\"}) { board { id } } }",
            json!({}),
        )
        .await["openBoard"]["board"]["id"]
        .clone();
    let closed = app
        .data(
            "mutation($id: ID!) { closeBoard(input: {boardId: $id}) { position } }",
            json!({"id": old}),
        )
        .await;
    let data = app
        .data(
            "query($id: ID!, $p: Int) { board(id: $id, minPosition: $p) { status waitingSince currentWait { waitSeconds } } }",
            json!({"id": old, "p": closed["closeBoard"]["position"]}),
        )
        .await;
    assert_eq!(data["board"]["status"], "CLOSED");
    assert!(data["board"]["currentWait"].is_null());
    assert!(data["board"]["waitingSince"].is_null());
}

#[tokio::test]
async fn board_dates_lists_the_dates_with_boards_newest_first() {
    let app = helpers::TestApp::spawn().await;
    for (name, date) in [
        ("A", "2024-03-01"),
        ("B", "2024-03-05"),
        ("C", "2024-03-01"),
        ("D", "2023-12-31"),
    ] {
        app.data(
                "mutation($n: String!, $d: Date!) { openBoard(input: {name: $n, specialty: \"cardiology\", region: \"NY\", date: $d}) { position } }",
                json!({"n": name, "d": date}),
            )
            .await;
    }
    // The projector lists them a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dates = app.data("{ boardDates }", json!({})).await["boardDates"].clone();
        if dates == json!(["2024-03-05", "2024-03-01", "2023-12-31"]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{dates}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.data("{ boardDates(first: 1) }", json!({})).await["boardDates"],
        json!(["2024-03-05"])
    );
    let bad = app.gql("{ boardDates(first: -1) }", json!({})).await;
    assert_eq!(helpers::error_code(&bad), "VALIDATION");
}

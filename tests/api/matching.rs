//! The matcher against the real server: concurrency invariants, the matching rules,
//! coordinators scheduling by hand, and wait-time estimates.

use crate::helpers;
use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::documents::request_input;
use crate::helpers::{error_code, TestApp};
use careboard::domain::BoardContents;
use careboard::domain::{matching, AppointmentStatus, Provider, ProviderId, ShiftId, ShiftStatus};
use careboard::event_store::ReadLimit;
use careboard::projections::load_board_contents;
use careboard::projections::Projection;
use careboard::projector::wait_for_position;
use serde_json::{json, Value};
use uuid::Uuid;

const REGISTER: &str = r#"mutation($input: RegisterProviderInput!) { registerProvider(input: $input) { provider { id } } }"#;
const JOIN: &str =
    r#"mutation($input: JoinBoardInput!) { joinBoard(input: $input) { shift { id } } }"#;
const SCHEDULE: &str = r#"mutation($input: ScheduleAppointmentInput!) { scheduleAppointment(input: $input) { appointment { id providerId } } }"#;
const START: &str =
    r#"mutation($input: AppointmentInput!) { startAppointment(input: $input) { version } }"#;
const FINISH: &str =
    r#"mutation($input: AppointmentInput!) { finishAppointment(input: $input) { version } }"#;
const CHARTED: &str =
    r#"mutation($input: ShiftInput!) { completeCharting(input: $input) { version } }"#;
const CANCEL: &str =
    r#"mutation($input: CancelAppointmentInput!) { cancelAppointment(input: $input) { version } }"#;
const APPOINTMENT: &str = r#"query($id: ID!) { appointment(id: $id) { status providerId shiftId estimatedTime scheduledAt } }"#;

fn s(v: &Value) -> String {
    v.as_str().expect("string").to_string()
}

async fn register(app: &TestApp, name: &str, specialties: &[&str], regions: &[&str]) -> String {
    let r = app
        .data(
            REGISTER,
            json!({"input": {"name": name, "specialties": specialties, "licensedRegions": regions}}),
        )
        .await;
    s(&r["registerProvider"]["provider"]["id"])
}

async fn join(app: &TestApp, board: &str, provider: &str) -> String {
    let r = app
        .data(
            JOIN,
            json!({"input": {"boardId": board, "providerId": provider}}),
        )
        .await;
    s(&r["joinBoard"]["shift"]["id"])
}

async fn act(app: &TestApp, mutation: &str, input: Value) {
    app.data(mutation, json!({ "input": input })).await;
}

/// Waits until the matcher has looked at every committed event (its own writes
/// included): it writes before it moves its checkpoint, so "nothing after the
/// checkpoint" means it has nothing left to do.
async fn matcher_settled(app: &TestApp) {
    for _ in 0..600 {
        let idle: bool = sqlx::query_scalar(
            "select not exists (select 1 from events e, process_checkpoints c \
              where c.name = 'matcher' and (e.tx, e.seq) > (c.tx, c.seq))",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if idle {
            // And the projections have caught up with it (queries read them).
            let position: i64 = sqlx::query_scalar("select coalesce(max(seq), 0) from events")
                .fetch_one(&app.pool)
                .await
                .unwrap();
            for p in [
                Projection::AppointmentView,
                Projection::BoardView,
                Projection::ProviderShiftView,
            ] {
                assert!(
                    wait_for_position(&app.pool, p, position, Duration::from_secs(30))
                        .await
                        .unwrap(),
                    "{} caught up",
                    p.name()
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the matcher did not settle within 30 s");
}

/// The Board as the event store has it now.
async fn contents(app: &TestApp, board: &str) -> BoardContents {
    load_board_contents(&app.pool, board.parse::<Uuid>().unwrap(), ReadLimit::All)
        .await
        .unwrap()
        .expect("board exists")
}

async fn providers(app: &TestApp) -> HashMap<ProviderId, Provider> {
    let ids: Vec<Uuid> = sqlx::query_scalar("select id from streams where type = 'provider'")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let mut out = HashMap::new();
    for id in ids {
        let p = careboard::event_store::load::<Provider>(&app.pool, id, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        out.insert(p.id, p);
    }
    out
}

/// The three invariants, checked on the event store's own history:
/// no provider ever holds two appointments, no appointment ever gets two providers,
/// and no waiting appointment has a fitting READY provider. Returns how many
/// appointments are scheduled or further along.
async fn check_invariants(app: &TestApp, board: &str) -> usize {
    // A shift's history never assigns while it holds an appointment.
    let shift_events: Vec<(Uuid, String)> = sqlx::query_as(
        "select e.stream_id, e.type from events e join streams s on s.id = e.stream_id \
          where s.type = 'shift' order by e.stream_id, e.version",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut holding: HashMap<Uuid, bool> = HashMap::new();
    for (shift, event_type) in shift_events {
        let h = holding.entry(shift).or_default();
        match event_type.as_str() {
            "ProviderAssigned" => {
                assert!(
                    !*h,
                    "shift {shift} was assigned while holding an appointment"
                );
                *h = true;
            }
            "ProviderReady" | "ChartingFinished" => *h = false,
            _ => {}
        }
    }
    // An appointment is scheduled at most once (nothing here cancels a scheduled one).
    let twice: Vec<(Uuid, i64)> = sqlx::query_as(
        "select stream_id, count(*) from events where type = 'AppointmentScheduled' \
          group by stream_id having count(*) > 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(twice.is_empty(), "appointments scheduled twice: {twice:?}");

    let c = contents(app, board).await;
    let providers = providers(app).await;
    let shifts: HashMap<ShiftId, _> = c.shifts.iter().map(|s| (s.id, s)).collect();
    let mut held = 0;
    for a in &c.appointments {
        match a.status {
            AppointmentStatus::Scheduled | AppointmentStatus::Started => {
                held += 1;
                let shift = shifts[&a.shift_id.unwrap()];
                assert_eq!(shift.appointment_id, Some(a.id), "both sides agree");
                assert_eq!(shift.status, ShiftStatus::Assigned);
                let p = &providers[&shift.provider_id];
                assert!(
                    matching::fits(shift, p, a),
                    "{a:?} went to a provider who does not fit"
                );
            }
            AppointmentStatus::Requested => {
                for s in c.shifts.iter().filter(|s| s.status == ShiftStatus::Ready) {
                    assert!(
                        !matching::fits(s, &providers[&s.provider_id], a),
                        "appointment {} waits while {} is READY and fits",
                        a.id,
                        s.id
                    );
                }
            }
            _ => held += 1,
        }
    }
    for s in c
        .shifts
        .iter()
        .filter(|s| s.status == ShiftStatus::Assigned)
    {
        let a = c
            .appointments
            .iter()
            .find(|a| Some(a.id) == s.appointment_id)
            .expect("an assigned shift holds a real appointment");
        assert_eq!(a.shift_id, Some(s.id));
    }
    held
}

#[tokio::test]
async fn fifty_requests_and_ten_providers_at_once_keep_the_invariants() {
    let app = TestApp::spawn_matching().await;
    let board = app.open_board("Telehealth TX").await;
    let specialties: [&[&str]; 3] = [
        &["pediatrics"],
        &["dermatology"],
        &["pediatrics", "dermatology"],
    ];
    let regions: [&[&str]; 4] = [&["TX"], &["CA"], &["TX", "CA"], &["NY"]];
    let mut provider_ids = Vec::new();
    for i in 0..10 {
        provider_ids.push(
            register(
                &app,
                &format!("Dr. {i}"),
                specialties[i % 3],
                regions[i % 4],
            )
            .await,
        );
    }
    // 50 requests (all for the Board's pediatrics in TX, which only some providers
    // fit) and 10 joins, all at once.
    let requests = (0..50).map(|i| {
        let (app, board) = (&app, &board);
        async move {
            app.request_appointment(request_input(board, &format!("Patient {i}")))
                .await;
        }
    });
    let joins = provider_ids.iter().map(|p| {
        let (app, board) = (&app, &board);
        async move {
            join(app, board, p).await;
        }
    });
    futures::future::join(
        futures::future::join_all(requests),
        futures::future::join_all(joins),
    )
    .await;
    matcher_settled(&app).await;
    let first = check_invariants(&app, &board).await;
    let fitting = (0..10)
        .filter(|i| specialties[i % 3].contains(&"pediatrics") && regions[i % 4].contains(&"TX"))
        .count();
    assert_eq!(
        first, fitting,
        "every fitting provider got a patient at once"
    );

    // Work the queue down: every held appointment runs and is charted, concurrently;
    // each provider READY again is matched again.
    let mut done = first;
    for _round in 0..20 {
        let c = contents(&app, &board).await;
        let work: Vec<(String, String)> = c
            .appointments
            .iter()
            .filter(|a| a.status == AppointmentStatus::Scheduled)
            .map(|a| (a.id.to_string(), a.shift_id.unwrap().to_string()))
            .collect();
        if work.is_empty() {
            break;
        }
        futures::future::join_all(work.iter().map(|(a, shift)| {
            let app = &app;
            async move {
                act(app, START, json!({"appointmentId": a})).await;
                act(app, FINISH, json!({"appointmentId": a})).await;
                act(app, CHARTED, json!({"shiftId": shift})).await;
            }
        }))
        .await;
        matcher_settled(&app).await;
        done = check_invariants(&app, &board).await;
    }
    // Everyone a provider could see was seen.
    let c = contents(&app, &board).await;
    let ps = providers(&app).await;
    for a in c
        .appointments
        .iter()
        .filter(|a| a.status == AppointmentStatus::Requested)
    {
        assert!(
            c.shifts
                .iter()
                .all(|s| !matching::fits(s, &ps[&s.provider_id], a)),
            "{a:?} could have been seen"
        );
    }
    assert!(done > first, "providers were matched again after charting");
}

#[tokio::test]
async fn matching_rules_specialty_licence_longest_waiting_and_cancellation() {
    let app = TestApp::spawn_matching().await;
    let board = app.open_board("Telehealth TX").await;
    let derm_tx = register(&app, "Dr. Derm", &["dermatology"], &["TX"]).await;
    let peds_ca = register(&app, "Dr. Peds CA", &["pediatrics"], &["CA"]).await;
    join(&app, &board, &derm_tx).await;
    join(&app, &board, &peds_ca).await;

    // Nobody has pediatrics with a Texas licence: the request waits, and says so.
    let a1 = app
        .request_appointment(request_input(&board, "Ann"))
        .await
        .0;
    matcher_settled(&app).await;
    let r = app
        .data(
            r#"query($id: ID!) { appointment(id: $id) { status waitEstimate { estimatedStart providersAvailable } } }"#,
            json!({"id": a1}),
        )
        .await;
    assert_eq!(r["appointment"]["status"], "REQUESTED");
    assert_eq!(r["appointment"]["waitEstimate"]["providersAvailable"], 0);
    assert!(r["appointment"]["waitEstimate"]["estimatedStart"].is_null());

    // A fitting provider joins: matched at once.
    let peds_tx = register(&app, "Dr. Peds TX", &["pediatrics"], &["TX"]).await;
    let peds_tx_shift = join(&app, &board, &peds_tx).await;
    matcher_settled(&app).await;
    let r = app.data(APPOINTMENT, json!({"id": a1})).await;
    assert_eq!(r["appointment"]["status"], "SCHEDULED");
    assert_eq!(r["appointment"]["providerId"], peds_tx.as_str());
    assert!(r["appointment"]["estimatedTime"].is_string());

    // The matcher's write says who and why.
    let meta: Value = sqlx::query_scalar(
        "select metadata from events where stream_id = $1 and type = 'AppointmentScheduled'",
    )
    .bind(a1.parse::<Uuid>().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(meta["actor"], "matcher");
    assert_eq!(meta["actorRole"], "system");
    let cause: Uuid = meta["causationId"].as_str().unwrap().parse().unwrap();
    let cause_type: String = sqlx::query_scalar("select type from events where id = $1")
        .bind(cause)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(careboard::matcher::TRIGGERS.contains(&cause_type.as_str()));

    // Two more Texas pediatrics patients wait (Dr. Peds CA is READY but not licensed).
    let a2 = app
        .request_appointment(request_input(&board, "Ben"))
        .await
        .0;
    let a3 = app
        .request_appointment(request_input(&board, "Cal"))
        .await
        .0;
    matcher_settled(&app).await;
    let status = |r: &Value| r["appointment"]["status"].as_str().unwrap().to_string();
    assert_eq!(
        status(&app.data(APPOINTMENT, json!({"id": a2})).await),
        "REQUESTED"
    );

    // Dr. Peds TX finishes and charts: the longest waiting (Ben), not Cal, is next.
    act(&app, START, json!({"appointmentId": a1})).await;
    act(&app, FINISH, json!({"appointmentId": a1})).await;
    act(&app, CHARTED, json!({"shiftId": peds_tx_shift})).await;
    matcher_settled(&app).await;
    let r2 = app.data(APPOINTMENT, json!({"id": a2})).await;
    assert_eq!(r2["appointment"]["status"], "SCHEDULED");
    assert_eq!(r2["appointment"]["providerId"], peds_tx.as_str());
    assert_eq!(
        status(&app.data(APPOINTMENT, json!({"id": a3})).await),
        "REQUESTED"
    );

    // Ben cancels: Dr. Peds TX is READY again and takes Cal.
    act(
        &app,
        CANCEL,
        json!({"appointmentId": a2, "reason": "feeling better"}),
    )
    .await;
    matcher_settled(&app).await;
    let r3 = app.data(APPOINTMENT, json!({"id": a3})).await;
    assert_eq!(r3["appointment"]["status"], "SCHEDULED");
    assert_eq!(r3["appointment"]["providerId"], peds_tx.as_str());
    check_invariants(&app, &board).await;
}

#[tokio::test]
async fn coordinators_scheduling_by_hand_race_the_matcher_safely() {
    let app = TestApp::spawn_matching().await;
    let board = app.open_board("Telehealth TX").await;
    let mut shifts = Vec::new();
    for i in 0..6 {
        let p = register(&app, &format!("Dr. {i}"), &["pediatrics"], &["TX"]).await;
        shifts.push(join(&app, &board, &p).await);
    }
    matcher_settled(&app).await;
    // Each request is raced by a coordinator scheduling it by hand on some provider.
    let outcomes = futures::future::join_all((0..12).map(|i| {
        let (app, board, shifts) = (&app, &board, &shifts);
        async move {
            let a = app
                .request_appointment(request_input(board, &format!("Patient {i}")))
                .await
                .0;
            let shift = &shifts[i % shifts.len()];
            let r = app
                .gql(
                    SCHEDULE,
                    json!({"input": {"appointmentId": a, "shiftId": shift}}),
                )
                .await;
            (a, shift.clone(), r)
        }
    }))
    .await;
    matcher_settled(&app).await;
    check_invariants(&app, &board).await;
    let mut by_hand = 0;
    for (a, shift, r) in outcomes {
        let now = app.data(APPOINTMENT, json!({"id": a})).await;
        if r.get("errors").is_none() {
            // What the coordinator did stands: the matcher never re-assigns it.
            by_hand += 1;
            assert_eq!(now["appointment"]["shiftId"], shift.as_str());
        } else {
            // Lost the race (the matcher or another coordinator was first): a clean
            // refusal, nothing half-written.
            let code = error_code(&r);
            assert!(
                ["INVALID_TRANSITION", "CONFLICT"].contains(&code.as_str()),
                "{r}"
            );
        }
    }
    let scheduled: i64 =
        sqlx::query_scalar("select count(*) from events where type = 'AppointmentScheduled'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        scheduled, 6,
        "six providers, six appointments scheduled ({by_hand} by hand)"
    );
}

#[tokio::test]
async fn wait_time_estimate_validates_and_answers_for_a_new_request() {
    let app = TestApp::spawn_matching().await;
    let board = app.open_board("Telehealth TX").await;
    let q = r#"query($b: ID!, $s: String!) { waitTimeEstimate(boardId: $b, specialty: $s) {
        estimatedStart waitSeconds queueAhead providersAvailable providersReady
        expectedDurationSeconds basis } }"#;
    // Nobody on shift yet: no estimate, but an answer.
    let r = app.data(q, json!({"b": board, "s": " Pediatrics "})).await;
    assert!(r["waitTimeEstimate"]["estimatedStart"].is_null());
    assert_eq!(r["waitTimeEstimate"]["basis"], "DEFAULT");
    let p = register(&app, "Dr. A", &["pediatrics"], &["TX"]).await;
    join(&app, &board, &p).await;
    // One READY provider, no history: starts after the default lead time.
    let pos: i64 = sqlx::query_scalar("select max(seq) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    app.data(
        r#"query($b: ID!, $p: Int) { board(id: $b, minPosition: $p) { version } }"#,
        json!({"b": board, "p": pos}),
    )
    .await;
    let r = app.data(q, json!({"b": board, "s": "pediatrics"})).await;
    let e = &r["waitTimeEstimate"];
    assert_eq!(
        (
            e["providersAvailable"].as_i64(),
            e["providersReady"].as_i64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(e["queueAhead"], 0);
    assert_eq!(e["waitSeconds"], 120);
    assert_eq!(e["expectedDurationSeconds"], 20 * 60);
    // Bad input: clear codes.
    let r = app.gql(q, json!({"b": "nope", "s": "pediatrics"})).await;
    assert_eq!(error_code(&r), "VALIDATION");
    let r = app
        .gql(
            q,
            json!({"b": Uuid::new_v4().to_string(), "s": "pediatrics"}),
        )
        .await;
    assert_eq!(error_code(&r), "NOT_FOUND");
    let r = app.gql(q, json!({"b": board, "s": "  "})).await;
    assert_eq!(error_code(&r), "VALIDATION");
}

/// The status of an appointment once it is no longer `status`, or after `within`.
async fn status_leaving(app: &TestApp, id: &str, status: &str, within: Duration) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let r = app.data(APPOINTMENT, json!({"id": id})).await;
        // Not projected yet: still as requested.
        let now = r["appointment"]["status"]
            .as_str()
            .unwrap_or("REQUESTED")
            .to_string();
        if now != status || std::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn parked_boards(app: &TestApp) -> Vec<(Uuid, String)> {
    sqlx::query_as("select board_id, error from matcher_parked_boards")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_board_the_matcher_cannot_match_is_parked_while_other_boards_go_on_and_matched_once_it_works(
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let broken: Arc<Mutex<Option<Uuid>>> = Arc::default();
    let failing = Arc::new(AtomicBool::new(true));
    let config = careboard::daemon::DaemonConfig {
        parked_retry_interval: Duration::from_millis(200),
        ..helpers::matching_projector()
    };
    let faults = careboard::faults::Faults {
        matcher: Some({
            let broken = broken.clone();
            let failing = failing.clone();
            Arc::new(move |board| {
                failing.load(Ordering::SeqCst) && *broken.lock().unwrap() == Some(board)
            })
        }),
        ..Default::default()
    };
    let app = TestApp::spawn_with_faults(config, faults).await;
    let a = app.open_board("Telehealth TX").await;
    let b = app.open_board("Telehealth TX").await;
    *broken.lock().unwrap() = Some(a.parse().unwrap());

    // Board A's triggers come first in the log: before parking, its failure held up
    // every later Board.
    let pa = register(&app, "Dr. A", &["pediatrics"], &["TX"]).await;
    join(&app, &a, &pa).await;
    let on_a = app.request_appointment(request_input(&a, "Ann")).await.0;
    let pb = register(&app, "Dr. B", &["pediatrics"], &["TX"]).await;
    join(&app, &b, &pb).await;
    let on_b = app.request_appointment(request_input(&b, "Ben")).await.0;

    assert_eq!(
        status_leaving(&app, &on_b, "REQUESTED", Duration::from_secs(15)).await,
        "SCHEDULED",
        "a failing board must not hold up the others"
    );
    // Parked once its retries are spent.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut parked = parked_boards(&app).await;
    while parked.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        parked = parked_boards(&app).await;
    }
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].0.to_string(), a);
    assert!(parked[0].1.contains("injected matcher fault"), "{parked:?}");
    assert_eq!(
        status_leaving(&app, &on_a, "REQUESTED", Duration::from_millis(300)).await,
        "REQUESTED"
    );
    let metrics = helpers::body_text(app.http.get(app.url("/metrics"))).await;
    assert!(
        metrics.contains("careboard_matcher_parked_boards 1"),
        "{metrics}"
    );

    // Fixed: the periodic retry matches the parked Board and unparks it.
    failing.store(false, Ordering::SeqCst);
    assert_eq!(
        status_leaving(&app, &on_a, "REQUESTED", Duration::from_secs(15)).await,
        "SCHEDULED"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !parked_boards(&app).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "still parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    matcher_settled(&app).await;
    check_invariants(&app, &a).await;
    check_invariants(&app, &b).await;
}

/// Drives an assigned appointment through to the end of its charting: the provider is
/// READY again.
async fn see_through(app: &TestApp, appointment: &str, shift: &str) {
    act(app, START, json!({"appointmentId": appointment})).await;
    act(app, FINISH, json!({"appointmentId": appointment})).await;
    act(app, CHARTED, json!({"shiftId": shift})).await;
}

/// The appointment a shift holds now, from the event store.
async fn held_by(app: &TestApp, board: &str, shift: &str) -> Option<String> {
    contents(app, board)
        .await
        .shifts
        .iter()
        .find(|s| s.id.to_string() == shift)
        .and_then(|s| s.appointment_id)
        .map(|a| a.to_string())
}

/// The matcher keeps the Boards it has read and brings them forward from the events it
/// reads: requests and a provider back from charting written through another node
/// still get matched, longest waiting first; and after a failover the new leader,
/// reading the Board afresh, matches what waits.
#[tokio::test]
async fn boards_kept_by_the_matcher_miss_nothing_written_elsewhere_or_across_a_failover() {
    let mut first = TestApp::spawn_matching().await;
    let board = first.open_board("Telehealth TX").await;
    let one = register(&first, "Dr. One", &["pediatrics"], &["TX"]).await;
    let two = register(&first, "Dr. Two", &["pediatrics"], &["TX"]).await;
    let shift_one = join(&first, &board, &one).await;
    let shift_two = join(&first, &board, &two).await;
    for i in 0..2 {
        first
            .request_appointment(request_input(&board, &format!("Early {i}")))
            .await;
    }
    matcher_settled(&first).await;
    assert_eq!(
        check_invariants(&first, &board).await,
        2,
        "both matched at once"
    );

    // A second node, standing by; everything from here is written through it.
    let second = TestApp::spawn_sharing_matching(&first).await;
    let mut waiting = Vec::new();
    for i in 0..3 {
        let (id, _) = second
            .request_appointment(request_input(&board, &format!("Late {i}")))
            .await;
        waiting.push(id);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    matcher_settled(&first).await;
    assert_eq!(check_invariants(&first, &board).await, 2, "nobody is free");
    let held = held_by(&second, &board, &shift_one).await.expect("held");
    see_through(&second, &held, &shift_one).await;
    matcher_settled(&first).await;
    check_invariants(&first, &board).await;
    assert_eq!(
        held_by(&second, &board, &shift_one).await.as_ref(),
        Some(&waiting[0]),
        "the kept Board saw the requests and the provider back: the longest waiting goes"
    );

    // Failover: the first node stops leading; the second reads the Board afresh.
    first.stop_projector().await;
    let held = held_by(&second, &board, &shift_two).await.expect("held");
    see_through(&second, &held, &shift_two).await;
    matcher_settled(&second).await;
    check_invariants(&second, &board).await;
    assert_eq!(
        held_by(&second, &board, &shift_two).await.as_ref(),
        Some(&waiting[1]),
        "the new leader matched the next longest waiting"
    );
    // And the new leader keeps the Board in turn: a provider back again takes the last.
    let held = held_by(&second, &board, &shift_one).await.expect("held");
    see_through(&second, &held, &shift_one).await;
    matcher_settled(&second).await;
    check_invariants(&second, &board).await;
    assert_eq!(
        held_by(&second, &board, &shift_one).await.as_ref(),
        Some(&waiting[2])
    );
}

/// The matcher's forward reads so far: (waiting appointments, Board and shift streams),
/// from `/metrics`.
async fn forward_reads(app: &TestApp) -> (u64, u64) {
    (
        app.metric("careboard_matcher_appointments_read_forward_total")
            .await as u64,
        app.metric("careboard_matcher_streams_read_forward_total")
            .await as u64,
    )
}

/// While every provider of a Board is busy, no plan can pair anything: a new request
/// costs the matcher the Board's shifts, not every appointment that waits (on a busy
/// Board, thousands). Once a provider is READY again it reads the waiting appointments
/// forward before it plans: one cancelled meanwhile is not offered, and the longest
/// still waiting goes.
#[tokio::test]
async fn while_every_provider_is_busy_a_request_reads_no_waiting_appointment_forward() {
    let app = TestApp::spawn_matching().await;
    let board = app.open_board("Telehealth TX").await;
    let provider = register(&app, "Dr. Busy", &["pediatrics"], &["TX"]).await;
    let shift = join(&app, &board, &provider).await;
    let (first, _) = app
        .request_appointment(request_input(&board, "First"))
        .await;
    matcher_settled(&app).await;
    assert_eq!(held_by(&app, &board, &shift).await.as_ref(), Some(&first));

    let mut waiting = Vec::new();
    for i in 0..12 {
        let (id, _) = app
            .request_appointment(request_input(&board, &format!("Waiting {i}")))
            .await;
        waiting.push(id);
        if i == 1 {
            // The Board is kept from here on (read whole at the first trigger).
            matcher_settled(&app).await;
        }
    }
    matcher_settled(&app).await;
    let before = forward_reads(&app).await;
    for i in 0..10 {
        let (id, _) = app
            .request_appointment(request_input(&board, &format!("Later {i}")))
            .await;
        waiting.push(id);
        matcher_settled(&app).await;
    }
    let busy = forward_reads(&app).await;
    assert!(
        busy.1 > before.1,
        "each request read the Board's shift forward: {before:?} -> {busy:?}"
    );
    assert_eq!(
        busy.0, before.0,
        "no waiting appointment was read forward while nobody was READY"
    );
    assert_eq!(
        check_invariants(&app, &board).await,
        1,
        "nobody else was free"
    );

    // The longest waiting cancels; the provider finishes and is READY again.
    act(
        &app,
        CANCEL,
        json!({"appointmentId": waiting[0], "reason": "went elsewhere"}),
    )
    .await;
    see_through(&app, &first, &shift).await;
    matcher_settled(&app).await;
    let ready = forward_reads(&app).await;
    assert!(
        ready.0 >= busy.0 + 20,
        "with a provider READY the waiting appointments were read forward: {busy:?} -> {ready:?}"
    );
    assert_eq!(
        held_by(&app, &board, &shift).await.as_ref(),
        Some(&waiting[1]),
        "the longest still waiting goes, not the one that cancelled"
    );
    check_invariants(&app, &board).await;
}

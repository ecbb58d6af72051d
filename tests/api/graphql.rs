//! The API as a client sees it: the real server on port 0, HTTP, a fresh database.

use crate::helpers::documents::{request_input, OPEN_BOARD};
use crate::helpers::{error_code, error_message, TestApp};
use serde_json::{json, Value};

/// Opening a Board with its whole answer selected, for the tests that check all of it
/// (the narrow one most tests use is [`OPEN_BOARD`]).
const OPEN_BOARD_WHOLE: &str = r#"mutation($input: OpenBoardInput!) {
  openBoard(input: $input) { board { id name specialty region date status } version position }
}"#;
const REGISTER_PROVIDER: &str = r#"mutation($input: RegisterProviderInput!) {
  registerProvider(input: $input) { provider { id name specialties licensedRegions } version position }
}"#;
const JOIN_BOARD: &str = r#"mutation($input: JoinBoardInput!) {
  joinBoard(input: $input) { shift { id boardId providerId status appointmentId version } version position }
}"#;
const REQUEST_APPOINTMENT: &str = r#"mutation($input: RequestAppointmentInput!) {
  requestAppointment(input: $input) { appointment { id status patientName specialty region } version position }
}"#;
const SCHEDULE_APPOINTMENT: &str = r#"mutation($input: ScheduleAppointmentInput!) {
  scheduleAppointment(input: $input) {
    appointment { id status providerId shiftId estimatedTime scheduledAt }
    shift { id status appointmentId version }
    version position
  }
}"#;
const START_APPOINTMENT: &str = r#"mutation($input: AppointmentInput!) {
  startAppointment(input: $input) { appointment { status startedAt } version position }
}"#;
const FINISH_APPOINTMENT: &str = r#"mutation($input: AppointmentInput!) {
  finishAppointment(input: $input) { appointment { status finishedAt } shift { status appointmentId } version position }
}"#;
const CANCEL_APPOINTMENT: &str = r#"mutation($input: CancelAppointmentInput!) {
  cancelAppointment(input: $input) { appointment { status cancellationReason } shift { status appointmentId } version position }
}"#;
const COMPLETE_CHARTING: &str = r#"mutation($input: ShiftInput!) {
  completeCharting(input: $input) { shift { status chartingSeconds appointmentId } version position }
}"#;
const PAUSE_PROVIDER: &str = r#"mutation($input: ShiftInput!) {
  pauseProvider(input: $input) { shift { status } version position }
}"#;
const SIGN_OFF: &str = r#"mutation($input: ShiftInput!) {
  signOffProvider(input: $input) { shift { status } version position }
}"#;
const CLOSE_BOARD: &str = r#"mutation($input: CloseBoardInput!) {
  closeBoard(input: $input) { board { status closedAt } version position }
}"#;

fn s(v: &Value) -> String {
    v.as_str().expect("string").to_string()
}

/// A Board with one registered provider on it; returns (board, provider, shift) ids.
async fn board_with_provider(app: &TestApp) -> (String, String, String) {
    let board_id = app.open_board("Pediatrics TX").await;
    let provider = app
        .data(
            REGISTER_PROVIDER,
            json!({"input": {"name": "Dr. Ada Park", "specialties": ["pediatrics"], "licensedRegions": ["TX", "OK"]}}),
        )
        .await;
    let provider_id = s(&provider["registerProvider"]["provider"]["id"]);
    let shift = app
        .data(
            JOIN_BOARD,
            json!({"input": {"boardId": board_id, "providerId": provider_id}}),
        )
        .await;
    let shift_id = s(&shift["joinBoard"]["shift"]["id"]);
    (board_id, provider_id, shift_id)
}

#[tokio::test]
async fn the_readme_walkthrough_works_over_http() {
    let app = TestApp::spawn().await;
    let mut last_position = 0;
    let mut check_position = |payload: &Value| {
        let p = payload["position"].as_i64().expect("position");
        assert!(
            p > last_position,
            "positions must grow: {p} after {last_position}"
        );
        last_position = p;
    };

    let opened = app
        .data(
            OPEN_BOARD_WHOLE,
            json!({"input": {"name": "Pediatrics TX", "specialty": "Pediatrics", "region": "tx", "date": "2022-07-18"}}),
        )
        .await;
    let board = &opened["openBoard"];
    assert_eq!(board["board"]["status"], "OPEN");
    assert_eq!(board["board"]["specialty"], "pediatrics");
    assert_eq!(board["board"]["region"], "TX");
    assert_eq!(board["board"]["date"], "2022-07-18");
    assert_eq!(board["version"], 1);
    check_position(board);
    let board_id = s(&board["board"]["id"]);

    let registered = app
        .data(
            REGISTER_PROVIDER,
            json!({"input": {"name": "Dr. Ada Park", "specialties": ["pediatrics"], "licensedRegions": ["TX"]}}),
        )
        .await;
    check_position(&registered["registerProvider"]);
    let provider_id = s(&registered["registerProvider"]["provider"]["id"]);

    let joined = app
        .data(
            JOIN_BOARD,
            json!({"input": {"boardId": board_id, "providerId": provider_id}}),
        )
        .await;
    assert_eq!(joined["joinBoard"]["shift"]["status"], "READY");
    check_position(&joined["joinBoard"]);
    let shift_id = s(&joined["joinBoard"]["shift"]["id"]);

    let requested = app
        .data(
            REQUEST_APPOINTMENT,
            json!({"input": {"boardId": board_id, "patientName": "Sam Lee", "specialty": "pediatrics", "region": "TX", "reason": "fever"}}),
        )
        .await;
    assert_eq!(
        requested["requestAppointment"]["appointment"]["status"],
        "REQUESTED"
    );
    check_position(&requested["requestAppointment"]);
    let appointment_id = s(&requested["requestAppointment"]["appointment"]["id"]);

    let scheduled = app
        .data(
            SCHEDULE_APPOINTMENT,
            json!({"input": {"appointmentId": appointment_id, "shiftId": shift_id, "estimatedTime": "2022-07-18T15:30:00Z"}}),
        )
        .await;
    let scheduled = &scheduled["scheduleAppointment"];
    assert_eq!(scheduled["appointment"]["status"], "SCHEDULED");
    assert_eq!(scheduled["appointment"]["providerId"], provider_id.as_str());
    assert_eq!(
        scheduled["appointment"]["estimatedTime"],
        "2022-07-18T15:30:00+00:00"
    );
    assert_eq!(scheduled["shift"]["status"], "ASSIGNED");
    assert_eq!(scheduled["shift"]["appointmentId"], appointment_id.as_str());
    assert_eq!(scheduled["version"], 2);
    check_position(scheduled);

    let started = app
        .data(
            START_APPOINTMENT,
            json!({"input": {"appointmentId": appointment_id}}),
        )
        .await;
    assert_eq!(
        started["startAppointment"]["appointment"]["status"],
        "STARTED"
    );
    check_position(&started["startAppointment"]);

    let finished = app
        .data(
            FINISH_APPOINTMENT,
            json!({"input": {"appointmentId": appointment_id}}),
        )
        .await;
    let finished = &finished["finishAppointment"];
    assert_eq!(finished["appointment"]["status"], "FINISHED");
    assert_eq!(finished["shift"]["status"], "CHARTING");
    check_position(finished);

    let charted = app
        .data(COMPLETE_CHARTING, json!({"input": {"shiftId": shift_id}}))
        .await;
    let charted = &charted["completeCharting"];
    assert_eq!(charted["shift"]["status"], "READY");
    assert!(charted["shift"]["appointmentId"].is_null());
    assert_eq!(charted["version"], 4);
    check_position(charted);

    // The Board shows everything that happened on it.
    let view = app
        .data(
            r#"query($id: ID!, $p: Int) { board(id: $id, minPosition: $p) {
                status version position
                providers { id status provider { name } }
                appointments { id status patientName providerId }
                counts { waiting scheduled inProgress finished providersReady }
            } }"#,
            json!({"id": board_id, "p": last_position}),
        )
        .await;
    let b = &view["board"];
    assert_eq!(b["providers"][0]["status"], "READY");
    assert_eq!(b["providers"][0]["provider"]["name"], "Dr. Ada Park");
    assert_eq!(b["appointments"][0]["status"], "FINISHED");
    assert_eq!(b["counts"]["finished"], 1);
    assert_eq!(b["counts"]["providersReady"], 1);
    // 1 board event + 4 shift events + 4 appointment events.
    assert_eq!(b["version"], 9);
    assert_eq!(b["position"], last_position);

    // Single-stream reads fold the stream, now or as of an earlier version.
    let reads = app
        .data(
            r#"query($a: ID!, $s: ID!, $p: Int) {
                now: appointment(id: $a, minPosition: $p) { status version }
                before: appointment(id: $a, version: 2) { status version }
                shift: providerShift(id: $s, minPosition: $p) { status chartingSeconds }
            }"#,
            json!({"a": appointment_id, "s": shift_id, "p": last_position}),
        )
        .await;
    assert_eq!(reads["now"]["status"], "FINISHED");
    assert_eq!(reads["before"]["status"], "SCHEDULED");
    assert_eq!(reads["shift"]["status"], "READY");

    // The audit log carries who and why.
    let log = app
        .data(
            r#"query($id: ID!) { events(streamId: $id) { edges { cursor node { type version position metadata data } } pageInfo { hasNextPage endCursor } } }"#,
            json!({"id": appointment_id}),
        )
        .await;
    let edges = log["events"]["edges"].as_array().unwrap();
    let types: Vec<&str> = edges
        .iter()
        .map(|e| e["node"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "AppointmentRequested",
            "AppointmentScheduled",
            "AppointmentStarted",
            "AppointmentFinished"
        ]
    );
    let meta = &edges[1]["node"]["metadata"];
    assert_eq!(meta["actor"], "admin-1", "the token's subject");
    assert_eq!(meta["actorRole"], "admin");
    assert_eq!(meta["actorName"], "Test Admin");
    assert_eq!(meta["operation"], "scheduleAppointment");
    assert!(meta["correlationId"].is_string());
    assert_eq!(log["events"]["pageInfo"]["hasNextPage"], false);
}

#[tokio::test]
async fn the_audit_log_pages_by_position_and_filters_by_board_and_type() {
    let app = TestApp::spawn().await;
    let (board_id, _, _) = board_with_provider(&app).await;
    for i in 0..3 {
        app.request_appointment(request_input(&board_id, &format!("Patient {i}")))
            .await;
    }
    let query = r#"query($b: ID!, $after: String) { events(boardId: $b, first: 2, after: $after, types: ["AppointmentRequested"]) {
        edges { cursor node { type } } pageInfo { hasNextPage endCursor } } }"#;
    let first = app.data(query, json!({"b": board_id})).await;
    assert_eq!(first["events"]["edges"].as_array().unwrap().len(), 2);
    assert_eq!(first["events"]["pageInfo"]["hasNextPage"], true);
    let after = first["events"]["pageInfo"]["endCursor"].clone();
    let second = app
        .data(query, json!({"b": board_id, "after": after}))
        .await;
    assert_eq!(second["events"]["edges"].as_array().unwrap().len(), 1);
    assert_eq!(second["events"]["pageInfo"]["hasNextPage"], false);
}

#[tokio::test]
async fn providers_are_listed_in_registration_order_with_cursors() {
    let app = TestApp::spawn().await;
    for name in ["A", "B", "C"] {
        app.data(
            REGISTER_PROVIDER,
            json!({"input": {"name": name, "specialties": ["x"], "licensedRegions": ["TX"]}}),
        )
        .await;
    }
    let q = r#"query($after: String) { providers(first: 2, after: $after) { edges { cursor node { name } } pageInfo { hasNextPage endCursor } } }"#;
    let page1 = app.data(q, json!({})).await;
    let names: Vec<&str> = page1["providers"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["A", "B"]);
    assert_eq!(page1["providers"]["pageInfo"]["hasNextPage"], true);
    let page2 = app
        .data(
            q,
            json!({"after": page1["providers"]["pageInfo"]["endCursor"]}),
        )
        .await;
    assert_eq!(page2["providers"]["edges"][0]["node"]["name"], "C");
    assert_eq!(page2["providers"]["pageInfo"]["hasNextPage"], false);
}

#[tokio::test]
async fn cancelling_a_scheduled_appointment_frees_its_provider_atomically() {
    let app = TestApp::spawn().await;
    let (board_id, _, shift_id) = board_with_provider(&app).await;
    let appointment_id = app
        .request_appointment(request_input(&board_id, "Sam"))
        .await
        .0;
    app.data(
        SCHEDULE_APPOINTMENT,
        json!({"input": {"appointmentId": appointment_id, "shiftId": shift_id}}),
    )
    .await;
    // The reason is about the patient: the coordinator sees it (an admin would not).
    let coordinator = app.token(crate::helpers::idp::Who::coordinator());
    let cancelled = app
        .data_as(
            &coordinator,
            CANCEL_APPOINTMENT,
            json!({"input": {"appointmentId": appointment_id, "reason": "patient left"}}),
        )
        .await;
    let c = &cancelled["cancelAppointment"];
    assert_eq!(c["appointment"]["status"], "CANCELLED");
    assert_eq!(c["appointment"]["cancellationReason"], "patient left");
    assert_eq!(c["shift"]["status"], "READY");
    assert!(c["shift"]["appointmentId"].is_null());

    // A waiting appointment is cancelled without touching any shift.
    let waiting = app
        .request_appointment(request_input(&board_id, "Kim"))
        .await
        .0;
    let cancelled = app
        .data(
            CANCEL_APPOINTMENT,
            json!({"input": {"appointmentId": waiting, "reason": "duplicate"}}),
        )
        .await;
    assert!(cancelled["cancelAppointment"]["shift"].is_null());
}

#[tokio::test]
async fn closing_a_board_waits_for_open_work_to_end() {
    let app = TestApp::spawn().await;
    let (board_id, _, shift_id) = board_with_provider(&app).await;
    let appointment_id = app
        .request_appointment(request_input(&board_id, "Sam"))
        .await
        .0;

    let refused = app
        .gql(CLOSE_BOARD, json!({"input": {"boardId": board_id}}))
        .await;
    assert_eq!(error_code(&refused), "INVALID_TRANSITION");
    assert!(
        error_message(&refused).contains("1 appointment(s) still waiting"),
        "{refused}"
    );

    app.data(
        CANCEL_APPOINTMENT,
        json!({"input": {"appointmentId": appointment_id, "reason": "no show"}}),
    )
    .await;
    let refused = app
        .gql(CLOSE_BOARD, json!({"input": {"boardId": board_id}}))
        .await;
    assert!(
        error_message(&refused).contains("1 provider(s) not signed off"),
        "{refused}"
    );

    app.data(PAUSE_PROVIDER, json!({"input": {"shiftId": shift_id}}))
        .await;
    app.data(SIGN_OFF, json!({"input": {"shiftId": shift_id}}))
        .await;
    let closed = app
        .data(CLOSE_BOARD, json!({"input": {"boardId": board_id}}))
        .await;
    assert_eq!(closed["closeBoard"]["board"]["status"], "CLOSED");
    assert_eq!(closed["closeBoard"]["version"], 2);

    // A closed board takes no new work.
    let late = app
        .gql(
            REQUEST_APPOINTMENT,
            json!({"input": {"boardId": board_id, "patientName": "Late", "specialty": "pediatrics", "region": "TX", "reason": "x"}}),
        )
        .await;
    assert_eq!(error_code(&late), "INVALID_TRANSITION");
    assert_eq!(
        error_message(&late),
        "cannot request appointment: board is CLOSED, not OPEN"
    );
}

#[tokio::test]
async fn bad_input_gets_a_coded_error_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (board_id, provider_id, shift_id) = board_with_provider(&app).await;
    let appointment_id = app
        .request_appointment(request_input(&board_id, "Sam"))
        .await
        .0;
    let before = app.event_count().await;

    // Malformed id.
    let r = app
        .gql(
            START_APPOINTMENT,
            json!({"input": {"appointmentId": "not-a-uuid"}}),
        )
        .await;
    assert_eq!(error_code(&r), "VALIDATION");
    assert_eq!(
        error_message(&r),
        "appointmentId 'not-a-uuid' is not a valid id"
    );

    // Unknown id.
    let unknown = uuid::Uuid::new_v4().to_string();
    let r = app
        .gql(
            START_APPOINTMENT,
            json!({"input": {"appointmentId": unknown}}),
        )
        .await;
    assert_eq!(error_code(&r), "NOT_FOUND");
    let r = app
        .gql(
            JOIN_BOARD,
            json!({"input": {"boardId": unknown, "providerId": provider_id}}),
        )
        .await;
    assert_eq!(error_code(&r), "NOT_FOUND");

    // Stale expected version.
    let r = app
        .gql(
            START_APPOINTMENT,
            json!({"input": {"appointmentId": appointment_id, "expectedVersion": 7}}),
        )
        .await;
    assert_eq!(error_code(&r), "CONFLICT");
    assert!(error_message(&r).contains("expected version 7"), "{r}");

    // Invalid transitions.
    let r = app
        .gql(
            START_APPOINTMENT,
            json!({"input": {"appointmentId": appointment_id}}),
        )
        .await;
    assert_eq!(error_code(&r), "INVALID_TRANSITION");
    assert_eq!(
        error_message(&r),
        "cannot start appointment: appointment is REQUESTED, not SCHEDULED"
    );
    let r = app
        .gql(COMPLETE_CHARTING, json!({"input": {"shiftId": shift_id}}))
        .await;
    assert_eq!(error_code(&r), "INVALID_TRANSITION");
    assert_eq!(
        error_message(&r),
        "cannot complete charting: shift is READY, not CHARTING"
    );
    let r = app
        .gql(
            JOIN_BOARD,
            json!({"input": {"boardId": board_id, "providerId": provider_id}}),
        )
        .await;
    assert_eq!(error_code(&r), "INVALID_TRANSITION");

    // Validation: dates, empty names, licences.
    let r = app
        .gql(
            OPEN_BOARD,
            json!({"input": {"name": "X", "specialty": "x", "region": "TX", "date": "2022-13-45"}}),
        )
        .await;
    assert_eq!(error_code(&r), "VALIDATION");
    // The `Date` scalar refuses it while reading the input, with the domain's reason
    // (GraphQL frames it: `Failed to parse "Date": … (occurred while parsing …)`).
    assert!(
        error_message(&r).contains("date '2022-13-45' is not a valid date (expected YYYY-MM-DD)"),
        "{r}"
    );
    let r = app
        .gql(
            REGISTER_PROVIDER,
            json!({"input": {"name": " ", "specialties": ["x"], "licensedRegions": ["TX"]}}),
        )
        .await;
    assert_eq!(error_code(&r), "VALIDATION");
    // A patient from a region the Board does not serve is refused at the door (the
    // licence check on scheduling is covered by the domain's tests).
    let before_region = app.event_count().await;
    let r = app
        .gql(
            REQUEST_APPOINTMENT,
            json!({"input": {"boardId": board_id, "patientName": "Remote", "specialty": "pediatrics", "region": "NY", "reason": "rash"}}),
        )
        .await;
    assert_eq!(error_code(&r), "VALIDATION");
    assert_eq!(
        app.event_count().await,
        before_region,
        "a refused command writes nothing"
    );

    // Wrong GraphQL: unknown field, wrong type, unparsable document.
    let r = app.gql("{ board(id: \"x\") { nope } }", json!({})).await;
    assert_eq!(error_code(&r), "VALIDATION");
    let r = app.gql(SCHEDULE_APPOINTMENT, json!({"input": {"appointmentId": appointment_id, "shiftId": shift_id, "estimatedTime": "tomorrow"}})).await;
    assert_eq!(error_code(&r), "VALIDATION");
    let r = app.gql("mutation {", json!({})).await;
    assert_eq!(error_code(&r), "VALIDATION");

    assert_eq!(
        app.event_count().await,
        before,
        "no refused request appended anything"
    );
    // Nothing internal leaks.
    let r = app
        .gql(
            START_APPOINTMENT,
            json!({"input": {"appointmentId": appointment_id}}),
        )
        .await;
    assert!(!r.to_string().to_lowercase().contains("sqlx"));
}

#[tokio::test]
async fn over_limit_requests_are_refused_with_a_code() {
    let app = TestApp::spawn().await;
    // Too deep.
    let deep = r#"{ board(id: "00000000-0000-0000-0000-000000000000") { providers { provider { name } } } }"#;
    let limits = careboard::config::GraphqlLimits {
        max_depth: 2,
        ..Default::default()
    };
    let strict = TestApp::spawn_with(limits).await;
    let r = strict.gql(deep, json!({})).await;
    assert_eq!(error_code(&r), "VALIDATION");
    assert!(
        error_message(&r).to_lowercase().contains("nested too deep"),
        "{r}"
    );
    // The message names the limit it passed.
    assert!(error_message(&r).contains("at most 2 levels"), "{r}");

    // Too complex: a request for many aliased fields.
    let wide: String = (0..1000)
        .map(|i| {
            format!("a{i}: provider(id: \"00000000-0000-0000-0000-000000000000\") {{ id name }} ")
        })
        .collect();
    let r = app.gql(&format!("{{ {wide} }}"), json!({})).await;
    assert_eq!(error_code(&r), "VALIDATION");
    assert!(error_message(&r).to_lowercase().contains("complex"), "{r}");
    assert!(
        error_message(&r).contains("over this server's limit of 10000"),
        "{r}"
    );

    // A document that does not parse: one line saying where, and what was expected
    // (the parser's own text drew the line with a caret over six lines).
    let r = app.gql("{ board(id: ) { id } }", json!({})).await;
    assert_eq!(error_code(&r), "VALIDATION");
    let message = error_message(&r);
    assert!(
        message.starts_with("the document does not parse at line 1, column ")
            && message.contains(": expected")
            && !message.contains('\n'),
        "{r}"
    );

    // Too many directives on one field.
    let directives = "@include(if: true) ".repeat(20);
    let r = app
        .gql(&format!("{{ __typename {directives} }}"), json!({}))
        .await;
    assert_eq!(error_code(&r), "VALIDATION");

    // Too large a body.
    let huge = "x".repeat(300 * 1024);
    let response = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({"query": format!("{{ __typename }} # {huge}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "VALIDATION");

    // Not JSON at all.
    let response = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "VALIDATION");
}

#[tokio::test]
async fn a_repeated_command_id_returns_the_first_result_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let input = json!({"input": {"name": "Derm CA", "specialty": "dermatology", "region": "CA", "date": "2022-07-19", "commandId": "open-derm-ca"}});
    let first = app.data(OPEN_BOARD_WHOLE, input.clone()).await;
    let count = app.event_count().await;
    let second = app.data(OPEN_BOARD_WHOLE, input).await;
    assert_eq!(first, second);
    assert_eq!(app.event_count().await, count);

    // The same id with another input is refused.
    let other = json!({"input": {"name": "Derm NV", "specialty": "dermatology", "region": "NV", "date": "2022-07-19", "commandId": "open-derm-ca"}});
    let r = app.gql(OPEN_BOARD_WHOLE, other).await;
    assert_eq!(error_code(&r), "VALIDATION");
    assert!(error_message(&r).contains("already used"), "{r}");
    assert_eq!(app.event_count().await, count);
}

#[tokio::test]
async fn expected_version_guards_concurrent_edits() {
    let app = TestApp::spawn().await;
    let (_, _, shift_id) = board_with_provider(&app).await;
    let paused = app
        .data(
            PAUSE_PROVIDER,
            json!({"input": {"shiftId": shift_id, "expectedVersion": 1}}),
        )
        .await;
    assert_eq!(paused["pauseProvider"]["version"], 2);
    // A second client still holding version 1 is told so.
    let stale = app
        .gql(
            SIGN_OFF,
            json!({"input": {"shiftId": shift_id, "expectedVersion": 1}}),
        )
        .await;
    assert_eq!(error_code(&stale), "CONFLICT");
    let ok = app
        .data(
            SIGN_OFF,
            json!({"input": {"shiftId": shift_id, "expectedVersion": 2}}),
        )
        .await;
    assert_eq!(ok["signOffProvider"]["shift"]["status"], "SIGNED_OFF");
}

#[tokio::test]
async fn graphiql_health_and_readiness_are_served() {
    let app = TestApp::spawn().await;
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = no_redirect.get(app.url("/")).send().await.unwrap();
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()["location"], "/graphql");
    let page = app.http.get(app.url("/graphql")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .to_lowercase()
        .contains("graphiql"));
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn boards_are_listed_from_the_projection_with_filters_and_cursors() {
    let app = TestApp::spawn().await;
    let mut last = 0;
    for (name, specialty, region, date) in [
        ("Peds TX", "pediatrics", "TX", "2022-07-18"),
        ("Peds OK", "pediatrics", "OK", "2022-07-18"),
        ("Derm TX", "dermatology", "TX", "2022-07-18"),
        ("Peds TX tomorrow", "pediatrics", "TX", "2022-07-19"),
    ] {
        let d = app
            .data(OPEN_BOARD, json!({"input": {"name": name, "specialty": specialty, "region": region, "date": date}}))
            .await;
        last = d["openBoard"]["position"].as_i64().unwrap();
    }
    // Read-your-writes on the last board, then the list is complete.
    app.data("query($p: Int) { projections { name } b: board(id: \"00000000-0000-0000-0000-000000000000\", minPosition: $p) { id } }", json!({"p": last}))
        .await;
    let q = r#"query($date: Date, $specialty: String, $after: String) {
        boards(date: $date, specialty: $specialty, status: OPEN, first: 2, after: $after) {
            edges { cursor node { name date status } } pageInfo { hasNextPage endCursor } } }"#;
    let page = app
        .data(q, json!({"date": "2022-07-18", "specialty": "Pediatrics"}))
        .await;
    let names: Vec<&str> = page["boards"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(
        names.contains(&"Peds TX") && names.contains(&"Peds OK"),
        "{names:?}"
    );
    assert_eq!(page["boards"]["pageInfo"]["hasNextPage"], false);

    let all = app.data(q, json!({})).await;
    assert_eq!(all["boards"]["pageInfo"]["hasNextPage"], true);
    let rest = app
        .data(q, json!({"after": all["boards"]["pageInfo"]["endCursor"]}))
        .await;
    let total = all["boards"]["edges"].as_array().unwrap().len()
        + rest["boards"]["edges"].as_array().unwrap().len();
    assert_eq!(total, 4);
    assert_eq!(
        rest["boards"]["edges"].as_array().unwrap().last().unwrap()["node"]["date"],
        "2022-07-19"
    );

    let bad = app.gql(q, json!({"after": "garbage"})).await;
    assert_eq!(error_code(&bad), "VALIDATION");
}

#[tokio::test]
async fn projection_status_and_metrics_are_exposed() {
    let app = TestApp::spawn().await;
    let (board_id, _, _) = board_with_provider(&app).await;
    app.request_appointment(request_input(&board_id, "Sam"))
        .await;
    let last: i64 = sqlx::query_scalar("select max(seq) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    app.data(
        "query($b: ID!, $p: Int) { board(id: $b, minPosition: $p) { id } }",
        json!({"b": board_id, "p": last}),
    )
    .await;
    let status = app
        .data("{ projections { name generation state projectionVersion checkpointPosition eventsApplied lagEvents lagSeconds deadLetters rebuildProgress } }", json!({}))
        .await;
    let names: Vec<&str> = status["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for expected in [
        "appointment_durations",
        "appointment_view",
        "board_view",
        "provider_shift_view",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for name in [
        "careboard_projector_leader",
        "careboard_projection_lag_events",
        "careboard_projection_events_applied",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    let unknown = app
        .gql(
            "mutation { rebuildProjection(name: \"nope\") { generation } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&unknown), "VALIDATION");
}

#[tokio::test]
async fn a_read_the_projector_has_not_reached_answers_stale() {
    let app = TestApp::spawn_without_projector(std::time::Duration::from_millis(300)).await;
    let opened = app
        .data(
            OPEN_BOARD,
            json!({"input": {"name": "X", "specialty": "x", "region": "TX", "date": "2022-07-18"}}),
        )
        .await;
    let id = s(&opened["openBoard"]["board"]["id"]);
    let position = opened["openBoard"]["position"].as_i64().unwrap();
    let r = app
        .gql(
            "query($id: ID!, $p: Int) { board(id: $id, minPosition: $p) { id } }",
            json!({"id": id, "p": position}),
        )
        .await;
    assert_eq!(error_code(&r), "STALE");
    assert!(
        error_message(&r).contains("has not reached position"),
        "{r}"
    );
}

/// Found from outside: async-graphql resolves an object's fields concurrently and put
/// each in the answer as it finished, so root fields that wait for the database came
/// back in a different order from one request to the next.
#[tokio::test]
async fn answers_keep_the_order_the_document_selects_however_the_fields_finish() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Ordered TX").await;
    // The projector has the Board.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app
        .data(
            "query($id: ID!) { board(id: $id) { id } }",
            json!({"id": board}),
        )
        .await["board"]
        .is_null()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the Board is projected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let query = r#"query($id: ID!) {
      b: boardDates
      a: board(id: $id) { name ... on Board { status id } }
      c: providers(first: 1) { edges { cursor } }
      d: boardDates
      e: board(id: $id) { id name }
    }"#;
    let client = reqwest::Client::new();
    for _ in 0..30 {
        let body = client
            .post(app.url("/graphql"))
            .bearer_auth(&app.admin_token)
            .json(&json!({"query": query, "variables": {"id": board}}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let at = |key: &str| body.find(key).unwrap_or_else(|| panic!("{key} in {body}"));
        let keys = [
            "\"b\":",
            "\"a\":{\"name\":",
            "\"status\":",
            "\"c\":",
            "\"d\":",
            "\"e\":{\"id\":",
        ];
        assert!(
            keys.windows(2).all(|w| at(w[0]) < at(w[1])),
            "fields in the document's order: {body}"
        );
    }
}

/// Found from outside: a time PostgreSQL cannot hold (`-4713-01-01`) in `asOf` or
/// `from` answered INTERNAL and logged a stack trace per request; it is bad input.
#[tokio::test]
async fn times_the_database_cannot_hold_are_refused_as_bad_input() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Times TX").await;
    let far = "-4713-01-01T00:00:00Z";
    for (query, variables) in [
        (
            "query($b: ID!, $t: DateTime) { waitTimeEstimate(boardId: $b, specialty: \"pediatrics\", asOf: $t) { estimatedStart } }",
            json!({"b": board, "t": far}),
        ),
        (
            "query($b: ID!, $t: DateTime) { board(id: $b, asOf: $t) { id } }",
            json!({"b": board, "t": far}),
        ),
        (
            "query($b: ID!, $t: DateTime!) { boardHistory(boardId: $b, from: $t, to: \"2030-01-01T00:00:00Z\") { version } }",
            json!({"b": board, "t": far}),
        ),
        (
            "query($t: DateTime) { accessLog(from: $t) { edges { cursor } } }",
            json!({"t": far}),
        ),
    ] {
        let r = app.gql(query, variables).await;
        assert_eq!(error_code(&r), "VALIDATION", "{query}: {r}");
        assert!(
            error_message(&r).contains("4713 BC"),
            "{query}: {r}"
        );
    }
}

/// Found from outside: a `minPosition` past the end of the log answered the current
/// document at once, as if the projector had applied it; no wait can reach it, so it
/// is refused as bad input.
#[tokio::test]
async fn a_min_position_past_the_end_of_the_log_is_refused() {
    let app = TestApp::spawn().await;
    let (board, position) = app.open_board_at("Positions TX").await;
    let query = "query($id: ID!, $p: Int) { board(id: $id, minPosition: $p) { id } }";
    let r = app
        .gql(query, json!({"id": board, "p": position + 1_000_000}))
        .await;
    assert_eq!(error_code(&r), "VALIDATION", "{r}");
    assert!(error_message(&r).contains("past the end of the log"), "{r}");
    // The position a mutation returned is waited for, as ever.
    let r = app.gql(query, json!({"id": board, "p": position})).await;
    assert_eq!(r["data"]["board"]["id"], board.as_str(), "{r}");
}

/// Found from outside: `Authorization: Basic …` was answered "the bearer token is not a
/// well-formed JWT", about a token the client never sent.
#[tokio::test]
async fn an_authorization_header_of_another_scheme_is_named_as_such() {
    let app = TestApp::spawn().await;
    let response = reqwest::Client::new()
        .post(app.url("/graphql"))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .json(&json!({"query": "{ boardDates }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="careboard""#
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");
    assert!(
        error_message(&body).contains("does not carry a bearer token"),
        "{body}"
    );
}

/// Found from outside: the router's own refusals (404 for an unknown path, 405 for a
/// method a path does not serve) had empty bodies, without the `extensions.code` every
/// other error carries; and every page's request for a favicon was a 404.
#[tokio::test]
async fn the_routers_refusals_carry_a_code_and_the_favicon_is_no_error() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    let missing = client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(error_code(&body), "NOT_FOUND", "{body}");
    let put = client
        .put(app.url("/graphql"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 405);
    let allow = put.headers()["allow"].to_str().unwrap().to_string();
    assert!(allow.contains("POST"), "{allow}");
    let body: Value = put.json().await.unwrap();
    assert_eq!(error_code(&body), "VALIDATION", "{body}");
    assert!(
        error_message(&body).contains("PUT is not served at this path"),
        "{body}"
    );
    let icon = client.get(app.url("/favicon.ico")).send().await.unwrap();
    assert_eq!(icon.status(), 204);
}

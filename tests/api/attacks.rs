//! The server attacked from outside: the real server with authentication on, callers
//! of every role trying what they may not. Each test here failed before the fix it
//! guards.

use serde_json::{json, Value};

use crate::helpers::documents::open_board_input_for;
use crate::helpers::{self, idp::Who, TestApp};

/// In no answer to anyone but the patient and those who may see their record.
const MARKER: &str = "Atk9Marker";

const REQUEST: &str = "mutation($i: RequestAppointmentInput!) { requestAppointment(input: $i) { appointment { id patientName reason status } } }";

/// The Board every test here attacks: dermatology in `north`.
fn attack_board() -> Value {
    open_board_input_for("Attack", "derm", "north", "2026-11-27")
}

fn request_input(board: &str, command_id: &str) -> Value {
    json!({"i": {
        "boardId": board,
        "patientName": format!("Ada {MARKER}"),
        "specialty": "derm",
        "region": "north",
        "reason": format!("rash {MARKER}"),
        "commandId": command_id,
    }})
}

/// A `commandId` is an idempotency key of the caller who used it: another caller who
/// learns it (it is in the event log's metadata) and repeats the command gets neither
/// the first caller's result (the appointment's id) nor an answer that tells a right
/// guess of her name and reason from a wrong one; and her own retries still get hers.
#[tokio::test]
async fn another_caller_cannot_replay_a_command_id_to_confirm_or_fetch_its_result() {
    let app = TestApp::spawn().await;
    let board = app.open_board_with(attack_board()).await.0;
    let ada = app.token(Who::patient("patient-ada").name("Ada"));
    let first = app
        .data_as(&ada, REQUEST, request_input(&board, "cmd-ada-1"))
        .await;
    let appointment = first["requestAppointment"]["appointment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Ada herself retries: the same answer, nothing appended.
    let events = app.event_count().await;
    let again = app
        .data_as(&ada, REQUEST, request_input(&board, "cmd-ada-1"))
        .await;
    assert_eq!(
        again["requestAppointment"]["appointment"]["id"],
        appointment
    );
    assert_eq!(app.event_count().await, events);

    // Another patient, and a coordinator, send the very same command with her key; a
    // second caller of the same role sends it with a wrong guess of her reason.
    let callers = [
        (
            Who::patient("patient-mallory").name("Mallory"),
            Who::patient("patient-oscar").name("Oscar"),
        ),
        (
            Who::coordinator()
                .subject("coord-south-1")
                .regions(["south"]),
            Who::coordinator()
                .subject("coord-south-2")
                .regions(["south"]),
        ),
    ];
    for (right_caller, wrong_caller) in callers {
        let right_guess = app
            .gql_as(
                &app.token(right_caller),
                REQUEST,
                request_input(&board, "cmd-ada-1"),
            )
            .await;
        let text = right_guess.to_string();
        assert!(
            !text.contains(&appointment),
            "another caller replaying her commandId got her appointment: {text}"
        );
        let mut wrong = request_input(&board, "cmd-ada-1");
        wrong["i"]["reason"] = json!("a wrong guess");
        let wrong_guess = app.gql_as(&app.token(wrong_caller), REQUEST, wrong).await;
        // A right guess and a wrong one look alike: no oracle for her name and reason.
        assert_eq!(
            right_guess["errors"][0]["extensions"]["code"],
            wrong_guess["errors"][0]["extensions"]["code"],
            "{right_guess} vs {wrong_guess}"
        );
        assert!(
            !wrong_guess.to_string().contains(&appointment),
            "{wrong_guess}"
        );
    }
    // Her key is still hers: her retry answers her appointment and appends nothing.
    retry_answers(&app, &ada, &board, "cmd-ada-1", &appointment).await;
}

/// `token`'s retry of `command_id` answers `appointment` again and appends nothing.
async fn retry_answers(
    app: &TestApp,
    token: &str,
    board: &str,
    command_id: &str,
    appointment: &str,
) {
    let events = app.event_count().await;
    let again = app
        .data_as(token, REQUEST, request_input(board, command_id))
        .await;
    assert_eq!(
        again["requestAppointment"]["appointment"]["id"],
        appointment
    );
    assert_eq!(app.event_count().await, events, "the retry wrote nothing");
}

/// A repeated `commandId` is judged as its caller is now, like any command: a token
/// whose scope was narrowed since (the same subject, moved to another region) gets
/// FORBIDDEN, not the remembered answer with the patient's record; with the scope it had,
/// the retry still answers what was done. Found from outside: the replay was answered
/// before the command was judged.
#[tokio::test]
async fn a_repeated_command_id_is_judged_as_the_caller_is_now() {
    let app = TestApp::spawn().await;
    let board = app.open_board_with(attack_board()).await.0;
    let north = app.token(Who::coordinator().subject("coord-moved").regions(["north"]));
    let first = app
        .data_as(&north, REQUEST, request_input(&board, "cmd-moved-1"))
        .await;
    let appointment = first["requestAppointment"]["appointment"]["id"].clone();
    assert!(appointment.is_string(), "{first}");
    let events = app.event_count().await;

    let moved = app.token(Who::coordinator().subject("coord-moved").regions(["south"]));
    let answer = app
        .gql_as(&moved, REQUEST, request_input(&board, "cmd-moved-1"))
        .await;
    assert_eq!(helpers::error_code(&answer), "FORBIDDEN", "{answer}");
    let text = answer.to_string();
    assert!(!text.contains(MARKER), "{text}");
    assert!(!text.contains(appointment.as_str().unwrap()), "{text}");
    assert_eq!(app.event_count().await, events);

    let appointment = appointment.as_str().unwrap();
    retry_answers(&app, &north, &board, "cmd-moved-1", appointment).await;
}

/// Two callers who use the same `commandId` (one learned it from the other, or both
/// picked it) each get their own command's result, and their retries their own again:
/// neither claims the id from the other, and neither sees the other's result.
#[tokio::test]
async fn two_callers_with_the_same_command_id_each_get_their_own_result() {
    let app = TestApp::spawn().await;
    let board = app.open_board_with(attack_board()).await.0;
    let ada = app.token(Who::patient("patient-ada").name("Ada"));
    let bea = app.token(Who::patient("patient-bea").name("Bea"));
    let ada_input = request_input(&board, "cmd-shared");
    let mut bea_input = request_input(&board, "cmd-shared");
    bea_input["i"]["patientName"] = json!("Bea Lind");
    bea_input["i"]["reason"] = json!("cough");

    // Bea uses the id first: Ada's command with it is still Ada's own.
    let bea_first = app.gql_as(&bea, REQUEST, bea_input.clone()).await;
    let ada_first = app.gql_as(&ada, REQUEST, ada_input.clone()).await;
    for (who, answer) in [("Bea", &bea_first), ("Ada", &ada_first)] {
        assert!(answer.get("errors").is_none(), "{who}: {answer}");
    }
    let id = |answer: &Value| {
        answer["data"]["requestAppointment"]["appointment"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (ada_id, bea_id) = (id(&ada_first), id(&bea_first));
    assert_ne!(ada_id, bea_id, "each got an appointment of her own");
    assert_eq!(
        ada_first["data"]["requestAppointment"]["appointment"]["reason"],
        format!("rash {MARKER}")
    );
    assert_eq!(
        bea_first["data"]["requestAppointment"]["appointment"]["reason"],
        "cough"
    );

    // Each retry answers the sender's own result, appends nothing, and names nothing
    // of the other's.
    let events = app.event_count().await;
    let bea_again = app.gql_as(&bea, REQUEST, bea_input).await;
    let ada_again = app.gql_as(&ada, REQUEST, ada_input).await;
    assert_eq!(id(&bea_again), bea_id);
    assert_eq!(id(&ada_again), ada_id);
    assert!(!bea_again.to_string().contains(&ada_id), "{bea_again}");
    assert!(!bea_again.to_string().contains(MARKER), "{bea_again}");
    assert!(!ada_again.to_string().contains(&bea_id), "{ada_again}");
    assert_eq!(app.event_count().await, events, "retries append nothing");
}

/// A subscription the schema refuses (unknown field, bad syntax) answers with errors
/// that carry `extensions.code` VALIDATION on both websocket protocols, as over HTTP.
#[tokio::test]
async fn refused_subscription_documents_carry_an_error_code_on_the_websocket() {
    let app = TestApp::spawn().await;
    let token = app.token(Who::admin());
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = helpers::WsClient::open_as(&app, protocol, Some(&token)).await;
        for (id, query) in [
            ("unknown", "subscription { noSuchField }"),
            ("syntax", "subscription { boardChanged(boardId: "),
            (
                "variables",
                "subscription($b: ID!) { boardChanged(boardId: $b) { id } }",
            ),
        ] {
            ws.subscribe(id, query, json!({})).await;
            let answer = ws
                .next(std::time::Duration::from_secs(5))
                .await
                .expect("an answer");
            let errors = if answer["type"] == "error" && answer["payload"].is_object() {
                json!([answer["payload"]])
            } else if answer["type"] == "error" {
                answer["payload"].clone()
            } else {
                answer["payload"]["errors"].clone()
            };
            let errors = errors.as_array().cloned().unwrap_or_default();
            assert!(!errors.is_empty(), "{protocol} {id}: {answer}");
            for error in errors {
                assert_eq!(
                    error["extensions"]["code"], "VALIDATION",
                    "{protocol} {id}: {answer}"
                );
            }
            // The socket stays usable; drain the subscription's `complete`, if any.
            let _ = ws.next(std::time::Duration::from_millis(300)).await;
        }
        ws.close().await;
    }
}

/// "Who has seen my record" shows a patient the records that disclosed their data, and
/// of each only their own part: a coordinator's look at a Board with two patients on it
/// must not tell one patient the other's id (nor that they are on that Board).
#[tokio::test]
async fn my_access_log_names_no_other_patient() {
    let app = TestApp::spawn().await;
    let board = app.open_board_with(attack_board()).await.0;
    let ada = app.token(Who::patient("patient-ada").name("Ada"));
    let bob = app.token(Who::patient("patient-bob-Atk9").name("Bob"));
    let mut ada_request = request_input(&board, "cmd-ada-log");
    ada_request["i"]["commandId"] = Value::Null;
    app.data_as(&ada, REQUEST, ada_request.clone()).await;
    app.data_as(&bob, REQUEST, ada_request).await;
    // A coordinator sees the Board (both patients), and each appointment on its own.
    let coordinator = app.token(Who::coordinator());
    let mut shown = 0;
    for _ in 0..50 {
        // Until the projector has the Board (and both requests), its scope is unknown.
        let seen = app
            .gql_as(
                &coordinator,
                "query($b: ID!) { board(id: $b) { appointments { id patientName } } }",
                json!({"b": board}),
            )
            .await;
        shown = seen["data"]["board"]["appointments"]
            .as_array()
            .map_or(0, Vec::len);
        if shown == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(shown, 2, "the Board shows both appointments");
    let log = app
        .data_as(
            &ada,
            "{ myAccessLog(first: 100) { edges { node { role operation disclosed clientAddr } } } }",
            json!({}),
        )
        .await;
    let edges = log["myAccessLog"]["edges"].as_array().unwrap();
    // Nor where staff read it from (found from outside: the staff member's address
    // and port were shown to the patient).
    for edge in edges.iter().filter(|e| e["node"]["role"] != "patient") {
        assert!(edge["node"]["clientAddr"].is_null(), "{edge}");
    }
    let staff_addr: Option<String> =
        sqlx::query_scalar("select client_addr from access_log where role = 'coordinator' limit 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(
        staff_addr.is_some(),
        "the record itself keeps it for admins"
    );
    assert!(
        edges
            .iter()
            .any(|e| e["node"]["role"] == "coordinator" && e["node"]["operation"] == "board"),
        "the coordinator's look is in Ada's log: {log}"
    );
    let text = log.to_string();
    assert!(
        !text.contains("patient-bob-Atk9"),
        "Ada's access log names another patient: {text}"
    );
    assert!(text.contains("patient-ada"), "{text}");
    // An admin's accessLog still has the whole record.
    let all = app
        .data_as(
            &app.token(Who::admin()),
            "{ accessLog(first: 100) { edges { node { disclosed } } } }",
            json!({}),
        )
        .await;
    assert!(all.to_string().contains("patient-bob-Atk9"), "{all}");
}

/// `expectedVersion` is checked only for a caller who may act on the stream: another
/// patient (or a coordinator of another region) who names a stream with a version gets
/// FORBIDDEN whether the guess is right or wrong, never a CONFLICT that tells the
/// stream's version (how far an appointment has gone: requested, scheduled, started…)
/// or that it exists. The owner's own stale version is still a CONFLICT.
#[tokio::test]
async fn expected_version_tells_nobody_the_version_of_what_they_may_not_touch() {
    let app = TestApp::spawn().await;
    let board = app.open_board_with(attack_board()).await.0;
    let ada = app.token(Who::patient("patient-ada").name("Ada"));
    let mut input = request_input(&board, "cmd-ada-version");
    input["i"]["commandId"] = Value::Null;
    let requested = app.data_as(&ada, REQUEST, input).await;
    let appointment = requested["requestAppointment"]["appointment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cancel =
        "mutation($i: CancelAppointmentInput!) { cancelAppointment(input: $i) { version } }";
    let close = "mutation($i: CloseBoardInput!) { closeBoard(input: $i) { version } }";
    let mallory = app.token(Who::patient("patient-mallory").name("Mallory"));
    let south = app.token(Who::coordinator().subject("coord-south").regions(["south"]));
    let events = app.event_count().await;
    let attempts = [
        (
            &mallory,
            cancel,
            json!({"i": {"appointmentId": appointment, "reason": "x", "expectedVersion": 1}}),
        ),
        (
            &mallory,
            cancel,
            json!({"i": {"appointmentId": appointment, "reason": "x", "expectedVersion": 7}}),
        ),
        (
            &south,
            cancel,
            json!({"i": {"appointmentId": appointment, "reason": "x", "expectedVersion": 7}}),
        ),
        (
            &south,
            close,
            json!({"i": {"boardId": board, "expectedVersion": 7}}),
        ),
    ];
    for (token, mutation, variables) in attempts {
        let answer = app.gql_as(token, mutation, variables.clone()).await;
        assert_eq!(
            helpers::error_code(&answer),
            "FORBIDDEN",
            "{variables}: {answer}"
        );
        assert!(
            !answer.to_string().contains("version 1"),
            "the refusal tells the stream's version: {answer}"
        );
    }
    assert_eq!(app.event_count().await, events, "nothing appended");
    // Ada's own stale version: a CONFLICT, as before.
    let own = app
        .gql_as(
            &ada,
            cancel,
            json!({"i": {"appointmentId": appointment, "reason": "x", "expectedVersion": 7}}),
        )
        .await;
    assert_eq!(helpers::error_code(&own), "CONFLICT", "{own}");
    assert_eq!(app.event_count().await, events, "nothing appended");
}

/// `count` aliased `requestAppointment` fields on `board`, in one document.
fn aliased_requests(board: &str, count: usize) -> String {
    let fields: Vec<String> = (0..count)
        .map(|i| {
            format!(
                "a{i}: requestAppointment(input: {{boardId: \"{board}\", patientName: \"Flood {i}\", \
                 specialty: \"derm\", region: \"north\", reason: \"flood\"}}) {{ appointment {{ id }} }}"
            )
        })
        .collect();
    format!("mutation {{ {} }}", fields.join(" "))
}

/// Each mutation field of a request spends one of its caller's rate, not the request
/// alone: 300 aliased `requestAppointment` fields in one request made 300 appointments
/// for the price of one request. A request over the caller's budget is refused whole,
/// before anything runs, with `RATE_LIMITED` and `Retry-After`.
#[tokio::test]
async fn each_mutation_field_of_a_request_spends_the_callers_rate() {
    let app = TestApp::spawn_rate_limited(1, 5).await;
    let board = app.open_board_with(attack_board()).await.0;
    let flood = app.token(Who::coordinator().subject("coord-flood"));
    let events = app.event_count().await;
    let post = |query: String| {
        app.http
            .post(app.url("/graphql"))
            .bearer_auth(&flood)
            .json(&json!({ "query": query }))
            .send()
    };
    // Six fields against a burst of five: refused whole.
    let over = post(aliased_requests(&board, 6)).await.unwrap();
    assert_eq!(over.status(), 429);
    assert!(over.headers().contains_key("retry-after"));
    let body: Value = over.json().await.unwrap();
    assert_eq!(helpers::error_code(&body), "RATE_LIMITED", "{body}");
    assert!(body["data"].is_null(), "{body}");
    assert_eq!(app.event_count().await, events, "nothing appended");
    // Three fit the burst (one for the request, two more for its other fields)...
    let three: Value = post(aliased_requests(&board, 3))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(three.get("errors").is_none(), "{three}");
    let appended = app.event_count().await;
    assert!(appended >= events + 3, "three appointments requested");
    // ...and leave two, too few for three more.
    let again = post(aliased_requests(&board, 3)).await.unwrap();
    assert_eq!(again.status(), 429);
    let body: Value = again.json().await.unwrap();
    assert_eq!(helpers::error_code(&body), "RATE_LIMITED", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("3 mutations")),
        "{body}"
    );
    assert_eq!(app.event_count().await, appended, "nothing appended");
}

/// A request holds at most `--max-mutation-fields` mutations (20 by default): 21 get a
/// `VALIDATION` error and nothing runs.
#[tokio::test]
async fn a_request_holds_at_most_the_mutation_fields_allowed() {
    let app = TestApp::spawn().await;
    let board = app.open_board_with(attack_board()).await.0;
    let events = app.event_count().await;
    let over = app.gql(&aliased_requests(&board, 21), json!({})).await;
    assert_eq!(helpers::error_code(&over), "VALIDATION", "{over}");
    assert!(
        helpers::error_message(&over).contains("at most 20"),
        "{over}"
    );
    assert_eq!(app.event_count().await, events, "nothing appended");
    // Through a fragment too.
    let fragment = aliased_requests(&board, 21).replacen(
        "mutation {",
        "mutation { ...more } fragment more on Mutation {",
        1,
    );
    let over = app.gql(&fragment, json!({})).await;
    assert_eq!(helpers::error_code(&over), "VALIDATION", "{over}");
    assert_eq!(app.event_count().await, events, "nothing appended");
    let twenty = app.gql(&aliased_requests(&board, 20), json!({})).await;
    assert!(twenty.get("errors").is_none(), "{twenty}");
}

/// Operations sent over a websocket spend the caller's rate as requests over HTTP do:
/// one socket could otherwise run mutations without any limit.
#[tokio::test]
async fn operations_over_the_websocket_spend_the_callers_rate() {
    let app = TestApp::spawn_rate_limited(1, 4).await;
    let board = app.open_board_with(attack_board()).await.0;
    let flood = app.token(Who::coordinator().subject("coord-ws-flood"));
    let events = app.event_count().await;
    let mut ws = helpers::WsClient::open_as(&app, "graphql-transport-ws", Some(&flood)).await;
    for i in 0..12 {
        ws.subscribe(&format!("m{i}"), &aliased_requests(&board, 1), json!({}))
            .await;
    }
    let (mut ran, mut limited) = (0, 0);
    let mut finished = std::collections::HashSet::new();
    while finished.len() < 12 {
        let message = ws
            .next(std::time::Duration::from_secs(10))
            .await
            .expect("an answer to every operation");
        let id = message["id"].as_str().unwrap_or_default().to_string();
        match message["type"].as_str() {
            Some("next") if message["payload"]["errors"].is_null() => ran += 1,
            Some("next" | "error") => {
                let errors = if message["type"] == "error" {
                    message["payload"].clone()
                } else {
                    message["payload"]["errors"].clone()
                };
                assert_eq!(errors[0]["extensions"]["code"], "RATE_LIMITED", "{message}");
                limited += 1;
                finished.insert(id);
            }
            Some("complete") => {
                finished.insert(id);
            }
            _ => panic!("unexpected message: {message}"),
        }
    }
    // The upgrade spent none of it; the burst of four (and at most one more earned
    // in the meantime) ran, the rest were refused.
    assert!((4..=6).contains(&ran), "{ran} ran, {limited} refused");
    assert_eq!(ran + limited, 12);
    assert_eq!(app.event_count().await, events + ran as i64);
}

/// A persisted query's hash finds only what the same caller registered: no one learns
/// from a hash whether someone else ran a text (which may hold a patient's name).
#[tokio::test]
async fn a_persisted_query_hash_finds_only_the_callers_own_documents() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Persisted per caller").await;
    let ada = app.token(Who::admin().subject("admin-ada"));
    let bob = app.token(Who::admin().subject("admin-bob"));
    // A literal a guesser might try: the text itself is the secret.
    let query = "query($id: ID!) { board(id: $id) { name } } # Zelda Quill";
    let hash = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(query.as_bytes()))
    };
    let persisted = json!({"persistedQuery": {"version": 1, "sha256Hash": hash}});
    let send = |token: &str, body: Value| {
        app.http
            .post(app.url("/graphql"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let registered: Value = send(
        &ada,
        json!({"query": query, "variables": {"id": board}, "extensions": persisted}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(registered["errors"].is_null(), "{registered}");

    let hash_only = json!({"variables": {"id": board}, "extensions": persisted});
    let other: Value = send(&bob, hash_only.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        helpers::error_code(&other),
        "PERSISTED_QUERY_NOT_FOUND",
        "{other}"
    );
    assert!(other["data"].is_null(), "{other}");

    let own: Value = send(&ada, hash_only).await.unwrap().json().await.unwrap();
    assert!(own["errors"].is_null(), "{own}");
    assert!(own["data"].get("board").is_some(), "ran: {own}");
}

/// Malformed input an attacker (or a confused client) sends: a batch of operations in
/// one body, an empty batch, `asOf` values that are not times or out of range, and a
/// 10 MB variable. Each gets a clear error with `extensions.code`, nothing runs, and the
/// server answers the next request. (A batch used to get serde's "invalid type: map,
/// expected a string at line 1 column 1".)
#[tokio::test]
async fn batches_malformed_times_and_huge_variables_get_clear_errors() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Malformed").await;
    let post = |body: String| {
        let app = &app;
        async move {
            let r = app
                .http
                .post(app.url("/graphql"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let events = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from events")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let before = events().await;
    let mutation = json!({"query": "mutation($i: OpenBoardInput!) { openBoard(input: $i) { position } }",
        "variables": {"i": attack_board()}});
    for body in [
        format!("[{mutation}, {mutation}]"),
        format!("  \n[{mutation}]"),
        "[]".to_string(),
    ] {
        let (status, answer) = post(body).await;
        assert_eq!(status, 400, "{answer:#}");
        assert_eq!(helpers::error_code(&answer), "VALIDATION", "{answer:#}");
        assert!(
            helpers::error_message(&answer).starts_with("batched requests"),
            "{answer:#}"
        );
    }
    assert_eq!(events().await, before, "no operation of a batch ran");

    let as_of = "query($id: ID!, $t: DateTime!) { board(id: $id, asOf: $t) { id } }";
    for t in [
        json!("not-a-date"),
        json!("99999-01-01T00:00:00Z"),
        json!("-262144-01-01T00:00:00Z"),
        json!("2026-13-45T99:99:99Z"),
        json!(""),
        json!(12345),
    ] {
        let (status, answer) =
            post(json!({"query": as_of, "variables": {"id": board, "t": t}}).to_string()).await;
        assert_eq!(status, 200, "{t}: {answer:#}");
        assert_eq!(
            helpers::error_code(&answer),
            "VALIDATION",
            "{t}: {answer:#}"
        );
        assert!(answer.get("data").is_none(), "{t}: {answer:#}");
    }
    // Times in range but before the Board or far ahead answer as the Board stood then.
    let (_, answer) = post(
        json!({"query": as_of, "variables": {"id": board, "t": "0001-01-01T00:00:00Z"}})
            .to_string(),
    )
    .await;
    assert_eq!(answer["data"]["board"], Value::Null, "{answer:#}");
    let (_, answer) = post(
        json!({"query": as_of, "variables": {"id": board, "t": "9999-12-31T23:59:59Z"}})
            .to_string(),
    )
    .await;
    assert_eq!(answer["data"]["board"]["id"], board.as_str(), "{answer:#}");

    let big = "x".repeat(10 * 1024 * 1024);
    let (status, answer) = post(
        json!({"query": "mutation($i: OpenBoardInput!) { openBoard(input: $i) { position } }",
            "variables": {"i": attack_board(), "pad": big}})
        .to_string(),
    )
    .await;
    assert_eq!(status, 413, "{answer:#}");
    assert_eq!(helpers::error_code(&answer), "VALIDATION", "{answer:#}");
    assert_eq!(events().await, before, "nothing ran");
    let (status, answer) = post(json!({"query": "{ __typename }"}).to_string()).await;
    assert_eq!(
        (status, &answer["data"]["__typename"]),
        (200, &json!("Query"))
    );
}

/// A `null` for a variable declared non-null is refused, as the spec's variable
/// coercion has it: `board(asOf: $t)` with `$t: DateTime!` given null used to answer
/// the Board as it is now, as if no time had been asked for. A null for a nullable
/// variable still means "none".
#[tokio::test]
async fn a_null_for_a_non_null_variable_is_refused() {
    let app = TestApp::spawn().await;
    let (board, position) = app.open_board_at("Nulls").await;
    let declared = "query($id: ID!, $t: DateTime!, $p: Int) { board(id: $id, asOf: $t, minPosition: $p) { id } }";
    let answer = app
        .gql(declared, json!({"id": board, "t": null, "p": null}))
        .await;
    assert_eq!(helpers::error_code(&answer), "VALIDATION", "{answer:#}");
    assert_eq!(
        helpers::error_message(&answer),
        "variable $t is declared DateTime! and may not be null"
    );
    assert!(answer.get("data").is_none(), "{answer:#}");
    let nullable = "query($id: ID!, $t: DateTime, $p: Int) { board(id: $id, asOf: $t, minPosition: $p) { id } }";
    let answer = app
        .gql(nullable, json!({"id": board, "t": null, "p": position}))
        .await;
    assert_eq!(answer["data"]["board"]["id"], board.as_str(), "{answer:#}");
}

/// A document written to fail validation once per repeated part (here 30,000 copies
/// of one variable: a 7.5 MB answer of "There can only be one variable named $v")
/// gets at most `MAX_ERRORS` errors back, over HTTP and on a websocket, the last
/// saying how many more there were. Found from outside: a patient's 100 connections
/// that never read such answers held ~800 MB of the server's memory.
#[tokio::test]
async fn an_answer_carries_a_bounded_number_of_errors_however_many_the_document_earns() {
    let app = TestApp::spawn().await;
    let variables = vec!["$v:Int"; 30_000].join(",");
    let query = format!("query({variables}) {{ __typename }}");
    let most = careboard::graphql::MAX_ERRORS;
    let check = |errors: &Value| {
        let errors = errors.as_array().expect("errors");
        assert_eq!(errors.len(), most, "{:?}", &errors[..3.min(errors.len())]);
        assert!(errors
            .iter()
            .all(|e| e["extensions"]["code"] == "VALIDATION"));
        let last = errors[most - 1]["message"].as_str().unwrap();
        let more: usize = last
            .strip_prefix("and ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("says how many more: {last}"));
        assert!(more > 29_000, "{last}");
    };
    let answer = app.gql(&query, json!({})).await;
    check(&answer["errors"]);
    let mut socket = helpers::WsClient::open(&app, "graphql-transport-ws").await;
    socket
        .send(json!({"id": "1", "type": "subscribe", "payload": {"query": query}}))
        .await;
    let message = socket
        .next(std::time::Duration::from_secs(10))
        .await
        .expect("an answer");
    assert_eq!(message["type"], "error", "{message}");
    check(&message["payload"]);
}

/// A signed token whose subject or name holds the NUL character (which PostgreSQL
/// cannot store) is refused at the door as UNAUTHENTICATED, and a request with two
/// `Authorization` headers is refused whichever comes first. Found from outside: the
/// NUL answered INTERNAL on every mutation (with a backtrace in the log), and of two
/// headers the first silently spoke for the caller.
#[tokio::test]
async fn tokens_with_nul_claims_and_requests_with_two_authorization_headers_are_refused() {
    let app = TestApp::spawn().await;
    let idp = helpers::idp::idp();
    let post = |tokens: Vec<String>| {
        let mut request = reqwest::Client::new()
            .post(app.url("/graphql"))
            .json(&json!({"query": "mutation { registerProvider(input: {name: \"Dr. Nul\", specialties: [\"derm\"], licensedRegions: [\"north\"]}) { position } }"}));
        for token in tokens {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    for claims in [
        Who::admin().subject("a\u{0}b").claims(),
        Who::admin().name("x\u{0}y").claims(),
    ] {
        let (status, body) = post(vec![idp.sign(&claims)]).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(helpers::error_code(&body), "UNAUTHENTICATED", "{body}");
        assert!(helpers::error_message(&body).contains("NUL"), "{body}");
    }
    let admin = idp.token(&Who::admin());
    let coordinator = idp.token(&Who::coordinator().regions(["south"]));
    for tokens in [
        vec![admin.clone(), coordinator.clone()],
        vec![coordinator, admin],
    ] {
        let (status, body) = post(tokens).await;
        assert_eq!(status, 401, "{body}");
        assert!(
            helpers::error_message(&body).contains("more than one Authorization header"),
            "{body}"
        );
    }
    let written: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(written, 0, "nothing was written");
}

//! Live Boards over websocket: real clients, the real server, real LISTEN/NOTIFY.

use std::time::Duration;

use crate::helpers::documents::request_input;
use crate::helpers::{error_code, TestApp, WsClient};
use serde_json::{json, Value};

const BOARD_CHANGED: &str = r#"subscription($id: ID!, $since: Int) {
    boardChanged(boardId: $id, sinceVersion: $since) { id version position counts { waiting } appointments { patientName } } }"#;
const BOARD_EVENTS: &str = r#"subscription($id: ID!, $after: Int) {
    boardEvents(boardId: $id, after: $after) { type position streamId } }"#;

/// Reads `boardChanged` frames until `target` arrives; asserts strictly increasing.
async fn versions_until(ws: &mut WsClient, target: i64) -> Vec<i64> {
    let mut seen = Vec::new();
    while seen.last() != Some(&target) {
        let (_, data) = ws
            .next_data(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("no frame after versions {seen:?}; waiting for {target}"));
        let v = data["boardChanged"]["version"].as_i64().unwrap();
        if let Some(last) = seen.last() {
            assert!(
                v > *last,
                "versions must strictly increase: {v} after {seen:?}"
            );
        }
        seen.push(v);
    }
    seen
}

#[tokio::test]
async fn board_changed_sends_the_current_board_then_strictly_increasing_versions() {
    let app = TestApp::spawn().await;
    let (board, position) = app.open_board_at("Live").await;
    let current = app.projected_version(&board, position).await;

    let mut ws = WsClient::open(&app, "graphql-transport-ws").await;
    ws.subscribe("1", BOARD_CHANGED, json!({"id": board})).await;
    let (id, first) = ws
        .next_data(Duration::from_secs(10))
        .await
        .expect("the current board first");
    assert_eq!(id, "1");
    assert_eq!(first["boardChanged"]["version"], current);

    let last = app
        .request_all(&board, (0..15).map(|i| format!("Patient {i}")))
        .await;
    let final_version = app.projected_version(&board, last).await;
    let versions = versions_until(&mut ws, final_version).await;
    assert_eq!(*versions.last().unwrap(), final_version);

    // The last frame equals the document.
    let doc = app
        .data(
            "query($id: ID!) { board(id: $id) { version counts { waiting } } }",
            json!({"id": board}),
        )
        .await;
    assert_eq!(doc["board"]["counts"]["waiting"], 15);
    // Nothing more arrives: no duplicates of the final version.
    assert!(ws.next(Duration::from_millis(300)).await.is_none());

    // Resuming with sinceVersion skips what the client already has.
    let mut again = WsClient::open(&app, "graphql-transport-ws").await;
    again
        .subscribe(
            "2",
            BOARD_CHANGED,
            json!({"id": board, "since": final_version}),
        )
        .await;
    assert!(again.next(Duration::from_millis(300)).await.is_none());
    let p = app
        .request_appointment(request_input(&board, "After resume"))
        .await
        .1;
    let v = app.projected_version(&board, p).await;
    let (_, data) = again.next_data(Duration::from_secs(10)).await.unwrap();
    assert_eq!(data["boardChanged"]["version"], v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_still_ends_on_the_final_version_when_the_listener_connection_is_killed() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Live").await;
    let mut ws = WsClient::open(&app, "graphql-transport-ws").await;
    ws.subscribe("1", BOARD_CHANGED, json!({"id": board})).await;
    ws.next_data(Duration::from_secs(10))
        .await
        .expect("current board");
    let connections = app.live().connections();
    let before = *connections.borrow();

    let mut last = 0;
    for i in 0..20 {
        last = app
            .request_appointment(request_input(&board, &format!("P{i}")))
            .await
            .1;
        if i == 8 {
            let killed = app.kill_listeners().await;
            assert_eq!(
                killed, 1,
                "exactly one listening connection in this process"
            );
        }
    }
    let final_version = app.projected_version(&board, last).await;
    let versions = versions_until(&mut ws, final_version).await;
    assert_eq!(*versions.last().unwrap(), final_version);
    assert!(*connections.borrow() > before, "the listener reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_on_one_node_sees_mutations_made_through_another() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_sharing(&a).await;
    let board = a.open_board("Live").await;
    let mut ws = WsClient::open(&b, "graphql-transport-ws").await;
    ws.subscribe("1", BOARD_CHANGED, json!({"id": board})).await;
    ws.next_data(Duration::from_secs(10))
        .await
        .expect("current board");
    let last = a
        .request_all(&board, (0..5).map(|i| format!("Via A {i}")))
        .await;
    let final_version = a.projected_version(&board, last).await;
    versions_until(&mut ws, final_version).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_subscribers_on_one_board_all_receive_the_final_version() {
    // The whole crowd comes from one address with one token: no per-address rate
    // limit, no limit on one caller's subscriptions here.
    let app = TestApp::spawn_with(careboard::config::GraphqlLimits {
        rate_limit_per_second: 0,
        max_subscriptions_per_caller: 0,
        ..Default::default()
    })
    .await;
    let board = app.open_board("Live").await;
    let mut clients = Vec::new();
    for _ in 0..1000 {
        let mut ws = WsClient::open(&app, "graphql-transport-ws").await;
        ws.subscribe("1", BOARD_CHANGED, json!({"id": board})).await;
        clients.push(ws);
    }
    let last = app
        .request_all(&board, (0..5).map(|i| format!("Crowd {i}")))
        .await;
    let final_version = app.projected_version(&board, last).await;
    let mut tasks = Vec::new();
    for mut ws in clients {
        tasks.push(tokio::spawn(async move {
            let mut latest = 0;
            while latest != final_version {
                let (_, data) = ws
                    .next_data(Duration::from_secs(30))
                    .await
                    .expect("a frame");
                let v = data["boardChanged"]["version"].as_i64().unwrap();
                assert!(v > latest, "strictly increasing");
                latest = v;
            }
            ws
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // Counted while every client is still subscribed: closing a socket releases its
    // receiver asynchronously on the server.
    assert_eq!(
        app.live().subscribed(),
        1,
        "one channel for the Board, whatever the crowd"
    );
    for ws in clients {
        ws.close().await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while app.live().subscribed() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed sockets release the Board's channel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn board_events_resumed_after_a_disconnect_yield_exactly_the_missing_events() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Live").await;
    app.request_all(&board, (0..3).map(|i| format!("Early {i}")))
        .await;
    let mut ws = WsClient::open(&app, "graphql-transport-ws").await;
    ws.subscribe("e", BOARD_EVENTS, json!({"id": board})).await;
    let mut received: Vec<i64> = Vec::new();
    while received.len() < 4 {
        let (_, data) = ws
            .next_data(Duration::from_secs(10))
            .await
            .expect("catch-up events");
        received.push(data["boardEvents"]["position"].as_i64().unwrap());
    }
    // Live: one more arrives as it happens.
    app.request_appointment(request_input(&board, "Live")).await;
    let (_, data) = ws
        .next_data(Duration::from_secs(10))
        .await
        .expect("a live event");
    received.push(data["boardEvents"]["position"].as_i64().unwrap());
    ws.close().await;

    // Missed while disconnected.
    app.request_all(&board, (0..4).map(|i| format!("Missed {i}")))
        .await;
    let mut ws = WsClient::open(&app, "graphql-transport-ws").await;
    ws.subscribe(
        "e",
        BOARD_EVENTS,
        json!({"id": board, "after": received.last()}),
    )
    .await;
    let mut resumed = Vec::new();
    while resumed.len() < 4 {
        let (_, data) = ws
            .next_data(Duration::from_secs(10))
            .await
            .expect("missed events");
        resumed.push(data["boardEvents"]["position"].as_i64().unwrap());
    }
    assert!(
        ws.next(Duration::from_millis(300)).await.is_none(),
        "nothing twice, nothing extra"
    );
    received.extend(resumed);
    let all: Vec<i64> = sqlx::query_scalar(
        "select e.seq from events e join streams s on s.id = e.stream_id where s.board_id = $1::uuid order by e.tx, e.seq",
    )
    .bind(&board)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(received, all);
}

#[tokio::test]
async fn the_legacy_protocol_works_and_protocol_rules_are_enforced() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Live").await;

    // subscriptions-transport-ws ("graphql-ws").
    let mut legacy = WsClient::open(&app, "graphql-ws").await;
    legacy
        .subscribe("1", BOARD_CHANGED, json!({"id": board}))
        .await;
    let (_, data) = legacy
        .next_data(Duration::from_secs(10))
        .await
        .expect("legacy data");
    assert!(data["boardChanged"]["version"].as_i64().unwrap() >= 1);

    // An unknown Board is NOT_FOUND.
    let mut ws = WsClient::open(&app, "graphql-transport-ws").await;
    ws.subscribe("x", BOARD_CHANGED, json!({"id": uuid::Uuid::new_v4()}))
        .await;
    let message = ws.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        message["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{message}"
    );
    let complete = ws.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(complete["type"], "complete", "{complete}");

    // A second connection_init breaks the protocol: closed with 4429.
    ws.send(json!({"type": "connection_init"})).await;
    let closed = ws.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(closed["close"], 4429, "{closed}");

    // No connection_init in time: closed with 4408.
    let limits = careboard::config::GraphqlLimits {
        ws_init_timeout_ms: 200,
        max_subscriptions_per_socket: 2,
        ..Default::default()
    };
    let strict = TestApp::spawn_with(limits).await;
    let strict_board = strict.open_board("Live").await;
    let mut silent = WsClient::connect(&strict, "graphql-transport-ws").await;
    let closed = silent.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(closed["close"], 4408, "{closed}");

    // A socket holds a bounded number of subscriptions.
    let mut busy = WsClient::open(&strict, "graphql-transport-ws").await;
    for id in ["a", "b", "c"] {
        busy.subscribe(id, BOARD_CHANGED, json!({"id": strict_board}))
            .await;
    }
    // The first two stream; the third is past the budget and closes the socket
    // (4429), before any query runs for it.
    let mut streaming = std::collections::BTreeSet::new();
    let closed = loop {
        let m = busy.next(Duration::from_secs(5)).await.expect("a message");
        if m.get("close").is_some() {
            break m;
        }
        if m["type"] == "next" {
            streaming.insert(m["id"].as_str().unwrap_or_default().to_string());
        }
    };
    assert_eq!(closed["close"], 4429, "{closed}");
    assert!(!streaming.contains("c"), "{streaming:?}");

    // Plain HTTP still refuses subscriptions' bad input with codes.
    let r: Value = app
        .gql(
            "subscription { boardChanged(boardId: \"nope\") { version } }",
            json!({}),
        )
        .await;
    assert!(r["errors"].is_array());
    let _ = error_code(&r);
}

/// The whole live frame of a Board, and the same selection read from the document.
const BOARD_FULL: &str = "id version position counts { waiting scheduled cancelled } appointments { id status patientName }";

/// The live generation of `board_view`.
async fn board_view_generation(app: &TestApp) -> i64 {
    let d = app
        .data("{ projections { name generation state } }", json!({}))
        .await;
    d["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "board_view" && p["state"] == "live")
        .map(|p| p["generation"].as_i64().unwrap())
        .expect("a live board_view")
}

/// The live fan-out keeps each followed Board and re-reads only the appointment rows
/// written since its version: after changes to old and new appointments alike, and
/// after a rebuild swaps in a new generation, every frame equals the document.
#[tokio::test]
async fn frames_built_from_changed_rows_equal_the_document_also_across_a_rebuild() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Live").await;
    let mut ws = WsClient::open(&app, "graphql-transport-ws").await;
    ws.subscribe(
        "1",
        &format!("subscription($id: ID!) {{ boardChanged(boardId: $id) {{ {BOARD_FULL} }} }}"),
        json!({"id": board}),
    )
    .await;
    ws.next_data(Duration::from_secs(10))
        .await
        .expect("the current board first");

    // The frame that carries the Board as of `position` equals the document then.
    async fn frame_matches_document(app: &TestApp, ws: &mut WsClient, board: &str, position: i64) {
        let doc = app
            .data(
                &format!("query($id: ID!, $p: Int) {{ board(id: $id, minPosition: $p) {{ {BOARD_FULL} }} }}"),
                json!({"id": board, "p": position}),
            )
            .await;
        let target = doc["board"]["version"].as_i64().unwrap();
        loop {
            let (_, data) = ws
                .next_data(Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("no frame for version {target}"));
            let v = data["boardChanged"]["version"].as_i64().unwrap();
            assert!(v <= target, "frame {v} is past the document's {target}");
            if v == target {
                assert_eq!(data["boardChanged"], doc["board"]);
                return;
            }
        }
    }

    let mut ids = Vec::new();
    for i in 0..6 {
        let (id, p) = app
            .request_appointment(request_input(&board, &format!("Patient {i}")))
            .await;
        ids.push(id);
        frame_matches_document(&app, &mut ws, &board, p).await;
    }
    // Changes to appointments the follower already holds replace them; the rest stay.
    for id in [&ids[1], &ids[4]] {
        let d = app
            .data(
                "mutation($input: CancelAppointmentInput!) { cancelAppointment(input: $input) { position } }",
                json!({"input": {"appointmentId": id, "reason": "feeling better"}}),
            )
            .await;
        let p = d["cancelAppointment"]["position"].as_i64().unwrap();
        frame_matches_document(&app, &mut ws, &board, p).await;
    }

    // A rebuild swaps in a new generation, whose row versions start over: the
    // follower reads the Board whole again.
    let before = board_view_generation(&app).await;
    let d = app
        .data(
            "mutation { rebuildProjection(name: \"board_view\") { generation } }",
            json!({}),
        )
        .await;
    let rebuilt = d["rebuildProjection"]["generation"].as_i64().unwrap();
    assert!(rebuilt > before);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while board_view_generation(&app).await != rebuilt {
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuild did not switch in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = app
        .data(
            "mutation($input: CancelAppointmentInput!) { cancelAppointment(input: $input) { position } }",
            json!({"input": {"appointmentId": ids[2], "reason": "rescheduled"}}),
        )
        .await;
    let p = d["cancelAppointment"]["position"].as_i64().unwrap();
    frame_matches_document(&app, &mut ws, &board, p).await;
    let p = app
        .request_appointment(request_input(&board, "After the rebuild"))
        .await
        .1;
    frame_matches_document(&app, &mut ws, &board, p).await;
}

/// A row written by an older build carries no Board version (0): a follower that
/// already holds the Board must still pick it up.
#[tokio::test]
async fn a_follower_picks_up_appointment_rows_an_older_build_wrote() {
    use careboard::projections::read::{self, FollowedBoard};
    let app = TestApp::spawn().await;
    let board = app.open_board("Live").await;
    let last = app
        .request_all(&board, (0..3).map(|i| format!("Patient {i}")))
        .await;
    app.projected_version(&board, last).await;
    let id: uuid::Uuid = board.parse().unwrap();
    let mut followed: Option<FollowedBoard> = None;
    read::refresh_board(&app.pool, id, &mut followed)
        .await
        .unwrap();
    let held = followed.as_ref().unwrap().doc.clone();
    assert_eq!(held.appointments.len(), 3);

    // An older build rewrites one appointment row without a Board version.
    let (row, doc): (uuid::Uuid, Value) = sqlx::query_as(
        "select id, doc from board_view_appointments where board_id = $1 order by id limit 1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let mut renamed = doc.clone();
    renamed["patientName"] = json!("Renamed by an older build");
    sqlx::query(
        "update board_view_appointments set doc = $3, board_version = 0 \
          where board_id = $1 and id = $2",
    )
    .bind(id)
    .bind(row)
    .bind(&renamed)
    .execute(&app.pool)
    .await
    .unwrap();

    read::refresh_board(&app.pool, id, &mut followed)
        .await
        .unwrap();
    let now = &followed.as_ref().unwrap().doc;
    assert_eq!(
        now.appointments[&row].patient_name,
        "Renamed by an older build"
    );
    assert_eq!(now.appointments.len(), 3);
    assert_eq!(now, &read::board(&app.pool, id).await.unwrap().unwrap());
}

/// Reads `ws` until its first `next` for each of `ids`.
async fn streaming(ws: &mut WsClient, ids: &[&str]) {
    let mut waiting: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    while !waiting.is_empty() {
        let m = ws.next(Duration::from_secs(10)).await.expect("a message");
        assert_eq!(m["type"], "next", "{m}");
        waiting.remove(m["id"].as_str().unwrap_or_default());
    }
}

/// Found from outside: the per-socket budget let one token open socket after socket,
/// and each subscription that differs from the others (a variable, an alias) is a group
/// of its own holding its Board's newest frame (4.5 MB apiece on a Board of 1,000
/// appointments, 1.3 GB from two sockets in five seconds). A caller's subscriptions
/// over all its sockets are bounded; past it, an `error` for that operation alone.
#[tokio::test]
async fn a_caller_holds_a_bounded_number_of_subscriptions_over_all_its_sockets() {
    let limits = careboard::config::GraphqlLimits {
        max_subscriptions_per_caller: 3,
        ..Default::default()
    };
    let app = TestApp::spawn_with(limits).await;
    let board = app.open_board("Slots").await;
    let mut first = WsClient::open(&app, "graphql-transport-ws").await;
    let mut second = WsClient::open(&app, "graphql-transport-ws").await;
    // Distinct groups: each asks from a version of its own.
    let subscribe = |since: i64| json!({"id": board, "since": since});
    first.subscribe("a", BOARD_CHANGED, subscribe(-1)).await;
    first.subscribe("b", BOARD_CHANGED, subscribe(-2)).await;
    streaming(&mut first, &["a", "b"]).await;
    second.subscribe("c", BOARD_CHANGED, subscribe(-3)).await;
    streaming(&mut second, &["c"]).await;

    // A fourth, on either socket: refused alone, the sockets stay open.
    second.subscribe("d", BOARD_CHANGED, subscribe(-4)).await;
    let refused = second
        .next(Duration::from_secs(5))
        .await
        .expect("a refusal");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "d", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "RATE_LIMITED",
        "{refused}"
    );
    assert!(
        refused["payload"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("3 subscriptions"),
        "{refused}"
    );

    // Another caller has places of its own.
    let other = app.token(crate::helpers::Who::coordinator());
    let mut third = WsClient::open_as(&app, "graphql-transport-ws", Some(&other)).await;
    third.subscribe("e", BOARD_CHANGED, subscribe(-5)).await;
    streaming(&mut third, &["e"]).await;

    // Completing one gives its place back, whichever socket held it.
    first.send(json!({"type": "complete", "id": "a"})).await;
    let complete = first.next(Duration::from_secs(5)).await.expect("complete");
    assert_eq!(complete["type"], "complete", "{complete}");
    second.subscribe("d", BOARD_CHANGED, subscribe(-4)).await;
    streaming(&mut second, &["d"]).await;
    // And a socket that closes gives back all of its.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        second.subscribe("f", BOARD_CHANGED, subscribe(-6)).await;
        let m = second
            .next(Duration::from_secs(5))
            .await
            .expect("a message");
        if m["type"] == "next" && m["id"] == "f" {
            break;
        }
        assert_eq!(m["type"], "error", "{m}");
        assert!(
            std::time::Instant::now() < deadline,
            "the closed socket's places came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Found from outside: a message that is not JSON closed a graphql-ws socket with
/// 1002 and the parser's words; graphql-ws names 4400 for a message that is not one of
/// its own. The legacy protocol names no code: the WebSocket's 1002 stays.
#[tokio::test]
async fn a_message_that_is_not_the_protocols_closes_with_its_protocols_code() {
    let app = TestApp::spawn().await;
    for (protocol, code) in [("graphql-transport-ws", 4400), ("graphql-ws", 1002)] {
        for message in [
            "{not json",
            r#"{"type": "subscribe", "id": 7, "payload": {}}"#,
        ] {
            let mut ws = WsClient::open(&app, protocol).await;
            ws.send_text(message).await;
            let closed = ws.next(Duration::from_secs(5)).await.expect("a close");
            assert_eq!(closed["close"], code, "{protocol}, {message}: {closed}");
            assert!(
                closed["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("Invalid message received"),
                "{protocol}, {message}: {closed}"
            );
        }
    }
}

/// Found from outside: variables that do not fit a shared `boardChanged` (its group
/// runs the execution) were answered with a `next` holding `data: null` and the
/// error, then `complete`; nothing of the operation ran, so it is an `error` message
/// and nothing after it, as for a document that does not validate.
#[tokio::test]
async fn variables_that_do_not_fit_a_shared_subscription_get_an_error_message() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Bad variables").await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = WsClient::open(&app, protocol).await;
        ws.subscribe(
            "bad",
            "subscription($b: ID!) { boardChanged(boardId: $b) { version } }",
            json!({"b": [1]}),
        )
        .await;
        let m = ws.next(Duration::from_secs(5)).await.expect("an answer");
        assert_eq!(m["type"], "error", "{protocol}: {m}");
        assert_eq!(m["id"], "bad", "{protocol}: {m}");
        let error = if protocol == "graphql-ws" {
            m["payload"].clone()
        } else {
            m["payload"][0].clone()
        };
        assert_eq!(error["extensions"]["code"], "VALIDATION", "{protocol}: {m}");
        // Nothing follows it, and the socket goes on: the id is free again.
        ws.subscribe(
            "bad",
            "subscription($b: ID!) { boardChanged(boardId: $b) { version } }",
            json!({"b": board}),
        )
        .await;
        let next = ws.next(Duration::from_secs(5)).await.expect("a frame");
        assert_eq!(
            next["type"],
            if protocol == "graphql-ws" {
                "data"
            } else {
                "next"
            },
            "{protocol}: {next}"
        );
        assert_eq!(next["id"], "bad", "{protocol}: {next}");
    }
}

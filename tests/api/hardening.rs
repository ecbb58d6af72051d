//! No request can take Careboard down: each shape that once crashed or starved the
//! service, sent from outside against the real server.

use crate::helpers;

use std::time::{Duration, Instant};

use crate::helpers::documents::{request_input, OPEN_BOARD, REQUEST_APPOINTMENT};
use crate::helpers::proxy::Proxy;
use crate::helpers::{error_code, error_message, TestApp, WsClient};
use serde_json::{json, Value};

/// `[[[ … "x" … ]]]`, `levels` deep.
fn nested_list(levels: usize) -> String {
    format!("{}\"x\"{}", "[".repeat(levels), "]".repeat(levels))
}

/// `{a: {a: … 1 … }}`, `levels` deep.
fn nested_object(levels: usize) -> String {
    format!("{}1{}", "{a: ".repeat(levels), "}".repeat(levels))
}

/// The shapes that overflowed a worker's stack: nested list and object literals in an
/// argument, deep selection sets, and deep JSON variables.
fn crash_shapes() -> Vec<(String, Value)> {
    let deep = 5_000;
    vec![
        (
            format!(
                "{{ events(types: {}) {{ edges {{ cursor }} }} }}",
                nested_list(deep)
            ),
            json!({}),
        ),
        (
            format!(
                "{{ events(types: {}) {{ edges {{ cursor }} }} }}",
                nested_object(deep)
            ),
            json!({}),
        ),
        (
            format!(
                "{{ {}__typename{} }}",
                "a: __typename ... on Query { ".repeat(deep),
                "}".repeat(deep)
            ),
            json!({}),
        ),
        (
            format!("{}{}", "{".repeat(deep), "}".repeat(deep)),
            json!({}),
        ),
        (
            "query($t: [String!]) { events(types: $t) { edges { cursor } } }".to_string(),
            json!({ "t": serde_json::from_str::<Value>(&nested_list(100)).unwrap() }),
        ),
    ]
}

#[tokio::test]
async fn deeply_nested_documents_are_refused_over_http_and_the_server_lives() {
    let app = TestApp::spawn().await;
    for (query, variables) in crash_shapes() {
        let response = app.gql(&query, variables).await;
        assert_eq!(error_code(&response), "VALIDATION", "{response}");
    }
    // Raw JSON nested past serde's own limit is refused too, not crashed on.
    let raw = format!(
        "{{\"query\": \"query($t: [String!]) {{ __typename }}\", \"variables\": {{\"t\": {}}}}}",
        nested_list(10_000)
    );
    let response = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    // Still serving.
    let board = app.open_board("Pediatrics TX").await;
    assert!(!board.is_empty());
}

#[tokio::test]
async fn deeply_nested_subscriptions_are_refused_over_websocket_and_the_server_lives() {
    let app = TestApp::spawn().await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = WsClient::open(&app, protocol).await;
        for (i, (query, variables)) in crash_shapes().into_iter().enumerate() {
            let id = format!("deep-{i}");
            ws.subscribe(&id, &query, variables).await;
            let message = ws
                .next(Duration::from_secs(10))
                .await
                .expect("an answer to a deep subscribe");
            assert_eq!(message["type"], "error", "{message}");
            assert_eq!(message["id"], id.as_str(), "{message}");
            let errors = if message["payload"].is_array() {
                message["payload"].clone()
            } else {
                json!([message["payload"]])
            };
            assert_eq!(errors[0]["extensions"]["code"], "VALIDATION", "{message}");
        }
        ws.close().await;
    }
    let board = app.open_board("Pediatrics TX").await;
    assert!(!board.is_empty());
}

#[tokio::test]
async fn a_subscribe_before_connection_init_closes_with_4401() {
    let app = TestApp::spawn().await;
    let mut ws = WsClient::connect(&app, "graphql-transport-ws").await;
    ws.subscribe(
        "1",
        "subscription { boardChanged(boardId: \"x\") { version } }",
        json!({}),
    )
    .await;
    let message = ws.next(Duration::from_secs(5)).await.expect("close");
    assert_eq!(message["close"], 4401, "{message}");
}

#[tokio::test]
async fn a_duplicate_subscription_id_closes_with_4409() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Pediatrics TX").await;
    let mut ws = WsClient::open(&app, "graphql-transport-ws").await;
    let query = "subscription($b: ID!) { boardChanged(boardId: $b) { version } }";
    ws.subscribe("same", query, json!({"b": board})).await;
    ws.next_data(Duration::from_secs(10))
        .await
        .expect("first Board");
    ws.subscribe("same", query, json!({"b": board})).await;
    let message = ws.next(Duration::from_secs(5)).await.expect("close");
    assert_eq!(message["close"], 4409, "{message}");
}

#[tokio::test]
async fn a_subscribe_flood_is_cut_off_before_it_reaches_the_database() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Pediatrics TX").await;
    let mut ws = WsClient::open(&app, "graphql-transport-ws").await;
    // Far past the per-socket budget (100): each subscribe used to cost a database
    // round trip before the budget was looked at, and frames queued without bound.
    let flood = tokio::spawn({
        let query = "subscription($b: ID!) { boardChanged(boardId: $b) { version } }";
        let board = board.clone();
        async move {
            for i in 0..2_000 {
                if !ws
                    .try_subscribe(&format!("s{i}"), query, json!({"b": board}))
                    .await
                {
                    break;
                }
            }
            let mut closed = None;
            while let Some(m) = ws.next(Duration::from_secs(10)).await {
                if m.get("close").is_some() {
                    closed = Some(m["close"].clone());
                    break;
                }
            }
            closed
        }
    });
    // A mutation meanwhile goes through.
    let response = app
        .gql(REQUEST_APPOINTMENT, request_input(&board, "Ann"))
        .await;
    assert!(response.get("errors").is_none(), "{response}");
    let closed = flood.await.unwrap();
    assert_eq!(closed, Some(json!(4429)), "the flood is closed with 4429");
    // The closed socket's subscriptions are released.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.live().subscribed() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.live().subscribed(), 0);
}

#[tokio::test]
async fn the_per_socket_budget_is_checked_before_any_query() {
    let app = TestApp::spawn_with(careboard::config::GraphqlLimits {
        max_subscriptions_per_socket: 3,
        ..Default::default()
    })
    .await;
    let board = app.open_board("Pediatrics TX").await;
    let mut ws = WsClient::open(&app, "graphql-transport-ws").await;
    let query = "subscription($b: ID!) { boardChanged(boardId: $b) { version } }";
    for i in 0..3 {
        ws.subscribe(&format!("s{i}"), query, json!({"b": board}))
            .await;
        ws.next_data(Duration::from_secs(10)).await.expect("Board");
    }
    ws.subscribe("s3", query, json!({"b": board})).await;
    let message = ws.next(Duration::from_secs(5)).await.expect("close");
    assert_eq!(message["close"], 4429, "{message}");
}

/// A client that only listens (as the Board page does) and answers the server's pings
/// at the transport level is never timed out, however long it listens.
#[tokio::test]
async fn a_listening_subscriber_is_not_dropped() {
    let app = TestApp::spawn_with(careboard::config::GraphqlLimits {
        ws_ping_interval_ms: 1_000,
        ..Default::default()
    })
    .await;
    let board = app.open_board("Pediatrics TX").await;
    let mut ws = WsClient::open(&app, "graphql-transport-ws").await;
    ws.subscribe(
        "b",
        "subscription($b: ID!) { boardChanged(boardId: $b) { version } }",
        json!({"b": board}),
    )
    .await;
    ws.next_data(Duration::from_secs(10)).await.expect("Board");
    // Listen for 90 s without sending a message of our own; tungstenite answers the
    // server's pings with pongs while we read.
    let until = Instant::now() + Duration::from_secs(90);
    let mut updates = 0;
    while Instant::now() < until {
        if updates < 5 {
            app.data(REQUEST_APPOINTMENT, request_input(&board, "Ann"))
                .await;
        }
        match ws.next(Duration::from_secs(5)).await {
            Some(m) if m.get("close").is_some() => panic!("dropped after listening: {m}"),
            Some(_) => updates += 1,
            None => {}
        }
    }
    assert!(updates >= 5, "updates flowed: {updates}");
    // The socket is still usable.
    app.data(REQUEST_APPOINTMENT, request_input(&board, "Bea"))
        .await;
    let m = ws.next(Duration::from_secs(10)).await.expect("an update");
    assert_eq!(m["type"], "next", "{m}");
}

#[tokio::test]
async fn a_silent_socket_that_answers_no_pings_is_closed() {
    use futures::StreamExt;
    let app = TestApp::spawn_with(careboard::config::GraphqlLimits {
        ws_ping_interval_ms: 300,
        ..Default::default()
    })
    .await;
    let (socket, _) = crate::helpers::ws_upgrade(&app.url("/graphql/ws"), None)
        .await
        .unwrap();
    let (mut sink, mut source) = socket.split();
    use futures::SinkExt;
    sink.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type": "connection_init", "payload": {"token": app.admin_token}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let ack = source.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("connection_ack"));
    // Read nothing for a while: pings go unanswered (tungstenite answers only when read).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut closed = false;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(5), source.next()).await {
        match frame {
            Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "an unresponsive socket is closed");
}

#[tokio::test]
async fn nul_characters_are_refused_as_validation() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Pediatrics TX").await;
    let before = app.event_count().await;
    let response = app
        .gql(REQUEST_APPOINTMENT, request_input(&board, "Ann\u{0}Lee"))
        .await;
    assert_eq!(error_code(&response), "VALIDATION", "{response}");
    assert!(
        error_message(&response).contains("patientName"),
        "{response}"
    );
    let response = app
        .gql(
            OPEN_BOARD,
            json!({"input": {"name": "x\u{0}", "specialty": "pediatrics", "region": "TX", "date": "2022-07-18"}}),
        )
        .await;
    assert_eq!(error_code(&response), "VALIDATION", "{response}");
    let response = app
        .gql(
            "query($t: [String!]) { events(types: $t) { edges { cursor } } }",
            json!({"t": ["AppointmentRequested\u{0}"]}),
        )
        .await;
    assert_eq!(error_code(&response), "VALIDATION", "{response}");
    assert_eq!(app.event_count().await, before);
}

#[tokio::test]
async fn board_dates_outside_a_sane_range_are_refused() {
    let app = TestApp::spawn().await;
    for date in ["0000-01-01", "-0001-07-18", "9999-12-31", "1899-12-31"] {
        let response = app
            .gql(
                OPEN_BOARD,
                json!({"input": {"name": "Odd", "specialty": "pediatrics", "region": "TX", "date": date}}),
            )
            .await;
        assert_eq!(error_code(&response), "VALIDATION", "{date}: {response}");
    }
    assert_eq!(app.event_count().await, 0);
}

async fn board_with_appointments(app: &TestApp, n: usize) -> String {
    let board = app.open_board("Pediatrics TX").await;
    for i in 0..n {
        app.data(
            REQUEST_APPOINTMENT,
            request_input(&board, &format!("Patient {i}")),
        )
        .await;
    }
    board
}

/// One request is refused by what it would cost, not by how many fields it names; the
/// legitimate mutation sent meanwhile succeeds.
#[tokio::test]
async fn requests_are_costed_by_their_work_and_cannot_starve_others() {
    let app = TestApp::spawn().await;
    let board = board_with_appointments(&app, 20).await;
    let history = |aliases: usize, first: usize| {
        let fields: String = (0..aliases)
            .map(|i| {
                format!(
                    "h{i}: boardHistory(boardId: \"{board}\", from: \"2000-01-01T00:00:00Z\", to: \"2100-01-01T00:00:00Z\", first: {first}) {{ version }} "
                )
            })
            .collect();
        format!("{{ {fields} }}")
    };
    let aliases: String = (0..999)
        .map(|i| format!("b{i}: board(id: \"{board}\") {{ version }} "))
        .collect();
    let heavy = [history(10, 10_000), format!("{{ {aliases} }}")];
    for query in heavy {
        let (refused, legit) = tokio::join!(
            app.gql(&query, json!({})),
            app.gql(REQUEST_APPOINTMENT, request_input(&board, "Legit"))
        );
        assert!(legit.get("errors").is_none(), "{legit}");
        assert_eq!(error_code(&refused), "VALIDATION", "{refused:.300}");
        assert!(
            error_message(&refused).contains("complex"),
            "{}",
            error_message(&refused)
        );
    }
    // A modest history without estimates is fine.
    let ok = app.gql(&history(1, 100), json!({})).await;
    assert!(ok.get("errors").is_none(), "{ok}");
}

/// Estimates are what make a history expensive: selecting them costs, leaving them out
/// does not.
#[tokio::test]
async fn board_history_estimates_are_costed_and_optional() {
    let app = TestApp::spawn().await;
    let board = board_with_appointments(&app, 3).await;
    let q = |first: usize, fields: &str| {
        format!("{{ boardHistory(boardId: \"{board}\", from: \"2000-01-01T00:00:00Z\", to: \"2100-01-01T00:00:00Z\", first: {first}) {{ {fields} }} }}")
    };
    let plain = app.data(&q(4000, "version waiting"), json!({})).await;
    assert_eq!(plain["boardHistory"].as_array().unwrap().len(), 4);
    let costly = app
        .gql(&q(4000, "version estimatedWaitSeconds"), json!({}))
        .await;
    assert_eq!(error_code(&costly), "VALIDATION", "{costly}");
    let with = app
        .data(&q(100, "version estimatedWaitSeconds"), json!({}))
        .await;
    assert_eq!(with["boardHistory"].as_array().unwrap().len(), 4);
    // The default page (no `first`) fits the default limit (found by a newcomer: it
    // was always "too complex", so the figure needed a `first` to be selected at all).
    let default_page = app
        .data(
            &q(0, "version estimatedWaitSeconds").replace(", first: 0", ""),
            json!({}),
        )
        .await;
    assert_eq!(default_page["boardHistory"].as_array().unwrap().len(), 4);
}

/// A server without a projector whose requests run at most `ms` (its reads wait 10 s
/// for the projector, longer than that).
async fn timing_out_after(ms: u64) -> TestApp {
    TestApp::spawn_without_projector_with(
        careboard::config::GraphqlLimits {
            request_timeout_ms: ms,
            ..Default::default()
        },
        Duration::from_secs(10),
    )
    .await
}

#[tokio::test]
async fn a_request_that_runs_too_long_is_cancelled_with_timeout() {
    let app = timing_out_after(300).await;
    let board = app.open_board("Pediatrics TX").await;
    let position = app.event_count().await;
    // A read that waits for a position nothing projects would take the read wait
    // (10 s); the request timeout cuts it short.
    let started = Instant::now();
    let response = app
        .gql(
            "query($id: ID!, $p: Int!) { board(id: $id, minPosition: $p) { version } }",
            json!({"id": board, "p": position}),
        )
        .await;
    assert_eq!(error_code(&response), "TIMEOUT", "{response}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A request whose time runs out after one of its mutations committed says so, and a
/// mutation whose append is under way at that moment is seen through: the answer
/// always agrees with the log. (Found from outside: a mutation answered "TIMEOUT ...
/// was cancelled" had been applied, so a client retrying without a `commandId` made a
/// duplicate.)
#[tokio::test]
async fn a_request_that_runs_out_of_time_says_which_of_its_mutations_were_applied() {
    let app = timing_out_after(100).await;
    let board = app.open_board("Pediatrics TX").await;
    // The second mutation waits for the Board's stream row, held here for 400 ms.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("select from streams where id = $1::uuid for update")
        .bind(&board)
        .execute(&mut *holder)
        .await
        .unwrap();
    let request = tokio::spawn({
        let (url, token) = (app.url("/graphql"), app.admin_token.clone());
        let query = format!(
            "mutation {{ a: registerProvider(input: {{name: \"Dr. Late\", specialties: [\"pediatrics\"], licensedRegions: [\"TX\"]}}) {{ position }} \
                        b: closeBoard(input: {{boardId: \"{board}\"}}) {{ position }} }}"
        );
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "query": query }))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    holder.rollback().await.unwrap();
    let response = request.await.unwrap();
    // Whatever PostgreSQL still ran for the request has run by then.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let applied: Vec<i64> = sqlx::query_scalar(
        "select e.seq from events e \
          where (e.type = 'ProviderRegistered' and e.data->>'name' = 'Dr. Late') \
             or (e.type = 'BoardClosed' and e.stream_id = $1::uuid) \
          order by e.seq",
    )
    .bind(&board)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(!applied.is_empty(), "the first mutation committed at once");
    if response["errors"].is_null() {
        assert_eq!(applied.len(), 2, "{response}");
        return;
    }
    assert_eq!(error_code(&response), "TIMEOUT", "{response}");
    let message = error_message(&response);
    let positions: Vec<String> = applied.iter().map(i64::to_string).collect();
    let said = match positions.as_slice() {
        [one] => format!("after its mutation at position {one} was applied"),
        many => format!(
            "after {} of its mutations were applied (positions {})",
            many.len(),
            many.join(", ")
        ),
    };
    assert!(message.contains(&said), "{said:?} in {response}");
}

#[tokio::test]
async fn clients_over_the_rate_limit_get_429_with_retry_after() {
    let app = TestApp::spawn_rate_limited(5, 10).await;
    let mut limited = None;
    for _ in 0..40 {
        let response = app
            .http
            .post(app.url("/graphql"))
            .json(&json!({"query": "{ __typename }"}))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("the limit is reached");
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "RATE_LIMITED", "{body}");
    // Health probes are never rate limited.
    for _ in 0..20 {
        let r = app.http.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn html_pages_carry_security_headers() {
    let app = TestApp::spawn().await;
    for path in [
        "/boards",
        "/boards/00000000-0000-0000-0000-000000000001",
        "/graphql",
    ] {
        let response = app
            .http
            .get(app.url(path))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        let h = response.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    }
    let response = app.http.get(app.url("/boards")).send().await.unwrap();
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
}

#[tokio::test]
async fn the_application_role_cannot_update_or_delete_events() {
    let app = TestApp::spawn().await;
    app.open_board("Pediatrics TX").await;
    // The server's own pool is the application role.
    let pool = app.server_pool();
    let user: String = sqlx::query_scalar("select current_user")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_ne!(
        user, "careboard",
        "the server must not connect as the superuser"
    );
    let superuser: bool =
        sqlx::query_scalar("select rolsuper from pg_roles where rolname = current_user")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(!superuser);
    for statement in [
        "update events set type = 'Forged'",
        "delete from events",
        "truncate events",
    ] {
        let err = sqlx::query(statement)
            .execute(pool)
            .await
            .expect_err(statement);
        let code = err
            .as_database_error()
            .and_then(|e| e.code().map(|c| c.to_string()));
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {err}");
    }
    // Not even the owner may rewrite history.
    let err = sqlx::query("update events set type = 'Forged'")
        .execute(&app.pool)
        .await
        .expect_err("owner update");
    assert!(err.to_string().contains("append-only"), "{err}");
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test]
async fn while_the_database_is_down_probes_and_requests_fail_fast_and_then_recover() {
    use careboard::app::{self, RunningServer};
    let owner = helpers::fresh_database().await;
    drop(helpers::server_pool(&owner).await);
    let target = (
        owner.connect_options().get_host().to_string(),
        owner.connect_options().get_port(),
    );
    // The database "goes down" for the server without stopping the shared test cluster.
    let proxy = Proxy::start(target).await;
    let options = (*owner.connect_options())
        .clone()
        .username(careboard::postgres::SERVER_LOGIN)
        .password(helpers::SERVER_LOGIN_PASSWORD)
        .port(proxy.port);
    // The pool's own acquire timeout stays long (30 s): failing fast must not depend on it.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .unwrap();
    let state = app::state_with(
        pool,
        Default::default(),
        Duration::from_secs(5),
        Duration::from_secs(5),
    );
    let server = RunningServer::start("127.0.0.1:0", state).await.unwrap();
    let http = reqwest::Client::new();
    let query = || async {
        let started = Instant::now();
        let response: Value = helpers::body_json(
            http.post(server.url("/graphql"))
                .json(&json!({"query": "{ boards { edges { cursor } } }"})),
        )
        .await;
        (response, started.elapsed())
    };
    let ready = || async {
        let started = Instant::now();
        let status = http
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        (status, started.elapsed())
    };
    assert_eq!(ready().await.0, 200);
    let (ok, _) = query().await;
    assert!(ok.get("errors").is_none(), "{ok}");

    proxy.cut();
    let cut_at = Instant::now();
    loop {
        let (status, took) = ready().await;
        assert!(took < Duration::from_millis(500), "/readyz waited {took:?}");
        if status == 503 {
            break;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(3),
            "/readyz still 200"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (down, took) = query().await;
    assert_eq!(error_code(&down), "UNAVAILABLE", "{down}");
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    let health = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    proxy.restore();
    let restored_at = Instant::now();
    loop {
        let (response, _) = query().await;
        if response.get("errors").is_none() && ready().await.0 == 200 {
            break;
        }
        assert!(
            restored_at.elapsed() < Duration::from_secs(15),
            "no recovery: {response}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await.unwrap();
}

/// A Careboard process on the embedded default, with its address read from its log,
/// and a token from its development issuer (the data dir's key).
struct Process {
    child: tokio::process::Child,
    base: String,
    token: String,
}

impl Process {
    async fn start(dir: &std::path::Path) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_careboard"))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("CAREBOARD_DATA_DIR", dir)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start careboard");
        // The log (on stderr) says where it listens.
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let base = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("GraphiQL at ").nth(1) {
                    return rest.trim().trim_end_matches("/graphql").to_string();
                }
            }
            panic!("careboard exited before listening");
        })
        .await
        .expect("careboard listens");
        // Keep draining the log so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let issuer = careboard::identity::dev_issuer::DevIssuer::load_or_create(dir).unwrap();
        let token = issuer
            .issue(&crate::helpers::Who::coordinator().token_args())
            .unwrap();
        Self { child, base, token }
    }

    async fn gql(&self, query: &str, variables: Value) -> Value {
        reqwest::Client::new()
            .post(format!("{}/graphql", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn the_embedded_cluster_comes_back_after_careboard_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let first = Process::start(dir.path()).await;
    let opened = first
        .gql(
            OPEN_BOARD,
            json!({"input": {"name": "Before the crash", "specialty": "pediatrics", "region": "TX", "date": "2022-07-18"}}),
        )
        .await;
    let board = opened["data"]["openBoard"]["board"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{opened}"))
        .to_string();
    // kill -9: no chance to stop the cluster itself.
    let mut first = first;
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();

    // Restarted at once, as a supervisor would.
    let second = Process::start(dir.path()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = second
            .gql(
                "query($id: ID!) { board(id: $id) { name } }",
                json!({"id": board}),
            )
            .await;
        if read["data"]["board"]["name"] == "Before the crash" {
            break;
        }
        assert!(Instant::now() < deadline, "the Board is not back: {read}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = reqwest::get(format!("{}/readyz", second.base))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // A clean stop stops the cluster too.
    let mut second = second;
    let pid = second.child.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(60), second.child.wait())
        .await
        .expect("stops")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!dir.path().join("pgdata/postmaster.pid").exists());
}

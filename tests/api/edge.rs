//! Authentication at every way in: POST, GET, persisted queries, introspection and
//! websockets (both protocols) need a valid bearer token; the audit actor is the
//! token's; sockets close when their token expires and resume on a new one.

use std::time::Duration;

use crate::helpers::documents::{request_input, OPEN_BOARD, REQUEST_APPOINTMENT};
use crate::helpers::{body_json, body_text, error_code, idp, TestApp, Who, WsClient};
use serde_json::{json, Value};

const BOARD_CHANGED: &str = r#"subscription($id: ID!, $since: Int) {
    boardChanged(boardId: $id, sinceVersion: $since) { version counts { waiting } } }"#;
const BOARD_EVENTS: &str = r#"subscription($id: ID!, $after: Int) {
    boardEvents(boardId: $id, after: $after) { type position } }"#;

/// Every token the harness mints for a role is accepted, and names that role.
#[tokio::test]
async fn the_harness_mints_tokens_the_server_accepts_for_every_role() {
    let app = TestApp::spawn().await;
    let provider = uuid::Uuid::new_v4();
    for who in [
        Who::admin(),
        Who::coordinator()
            .regions(["TX"])
            .specialties(["pediatrics"]),
        Who::provider(provider),
        Who::patient("patient-7").name("Pat Test"),
        Who::coordinator()
            .subject("someone-else")
            .ttl(Duration::from_secs(60)),
    ] {
        let token = app.token(who.clone());
        let r = app.gql_as(&token, "{ __typename }", json!({})).await;
        assert_eq!(r["data"]["__typename"], "Query", "{who:?}: {r}");
        let data = app.data_as(&token, "{ __typename }", json!({})).await;
        assert_eq!(data["__typename"], "Query");
    }
    // A token from anyone else, however shaped, is not.
    let mut claims = Who::admin().claims();
    claims["aud"] = json!("another-service");
    let r = app
        .gql_as(&idp().sign(&claims), "{ __typename }", json!({}))
        .await;
    assert_eq!(error_code(&r), "UNAUTHENTICATED", "{r}");
    assert!(idp().jwks_url().starts_with("http://127.0.0.1:"));
}

/// Sends `connection_init` with `payload` on a fresh socket and returns what comes back
/// first and (for the legacy protocol) second.
async fn init_with(app: &TestApp, protocol: &str, payload: Value) -> Vec<Value> {
    let mut ws = WsClient::connect_as(app, protocol, None).await;
    ws.send(json!({"type": "connection_init", "payload": payload}))
        .await;
    let mut seen = Vec::new();
    while let Some(m) = ws.next(Duration::from_secs(5)).await {
        let closed = m.get("close").is_some();
        seen.push(m);
        if closed || seen.len() == 2 {
            break;
        }
    }
    seen
}

#[tokio::test]
async fn a_socket_without_a_valid_token_is_closed_with_4403_and_a_reason() {
    let app = TestApp::spawn().await;
    let token = app.token(Who::coordinator());
    let mut expired = Who::coordinator().claims();
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 120);
    let expired = idp().sign(&expired);
    let cases = [
        (json!({}), "no token"),
        (json!(null), "no token"),
        (
            json!({"Authorization": "Bearer not-a-token"}),
            "not a well-formed JWT",
        ),
        (
            json!({"authorization": format!("Basic {token}")}),
            "not a well-formed JWT",
        ),
        (json!({"token": 42}), "not a well-formed JWT"),
        (json!({"token": expired}), "expired"),
    ];
    for (payload, reason) in cases {
        let seen = init_with(&app, "graphql-transport-ws", payload.clone()).await;
        assert_eq!(seen.len(), 1, "{payload}: {seen:?}");
        assert_eq!(seen[0]["close"], 4403, "{payload}: {seen:?}");
        let said = seen[0]["reason"].as_str().unwrap();
        assert!(said.contains(reason), "{payload}: {said}");
        for part in expired.split('.').chain(token.split('.')) {
            assert!(!said.contains(part), "the reason echoes the token: {said}");
        }
    }
    // The legacy protocol hears a connection_error first, then the same close.
    let seen = init_with(&app, "graphql-ws", json!({"token": "garbage"})).await;
    assert_eq!(seen[0]["type"], "connection_error", "{seen:?}");
    assert!(seen[0]["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("not a well-formed JWT"));
    assert_eq!(seen[1]["close"], 4403, "{seen:?}");

    // Every accepted shape of the payload, on both protocols.
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        for payload in [
            json!({"Authorization": format!("Bearer {token}")}),
            json!({"authorization": format!("bearer {token}")}),
            json!({"token": token}),
        ] {
            let seen = init_with(&app, protocol, payload.clone()).await;
            assert_eq!(
                seen[0]["type"], "connection_ack",
                "{protocol} {payload}: {seen:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_token_in_the_upgrade_request_serves_when_connection_init_has_none() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Edge").await;
    let ws = app.url("/graphql/ws");
    // A bad token in the header: refused before the upgrade, 401.
    match crate::helpers::ws_upgrade(&ws, Some("nonsense")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
            assert!(response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let (socket, _) = crate::helpers::ws_upgrade(&ws, Some(&app.token(Who::coordinator())))
        .await
        .expect("upgraded");
    let mut ws = WsClient::from_socket(socket, false);
    ws.send(json!({"type": "connection_init"})).await;
    let ack = ws.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws.subscribe("1", BOARD_CHANGED, json!({"id": board})).await;
    let (_, data) = ws.next_data(Duration::from_secs(10)).await.unwrap();
    assert_eq!(data["boardChanged"]["counts"]["waiting"], 0);
}

/// Reads frames until the socket closes; returns the `boardChanged` versions and
/// `boardEvents` positions seen, and the close frame.
async fn read_until_closed(ws: &mut WsClient, seen: &mut (Vec<i64>, Vec<i64>)) -> Value {
    loop {
        let m = ws
            .next(Duration::from_secs(15))
            .await
            .expect("a frame or the close before the token's expiry has long passed");
        if m.get("close").is_some() || m["type"] == "connection_error" {
            return m;
        }
        record(&m, seen);
    }
}

fn record(m: &Value, seen: &mut (Vec<i64>, Vec<i64>)) {
    assert!(m["type"] == "next" || m["type"] == "data", "{m}");
    assert!(m["payload"]["errors"].is_null(), "{m}");
    let data = &m["payload"]["data"];
    if let Some(v) = data["boardChanged"]["version"].as_i64() {
        seen.0.push(v);
    }
    if let Some(p) = data["boardEvents"]["position"].as_i64() {
        seen.1.push(p);
    }
}

#[tokio::test]
async fn at_its_tokens_expiry_a_socket_is_closed_and_resumes_on_a_new_one_losing_nothing() {
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let app = TestApp::spawn().await;
        let board = app.open_board("Edge").await;
        let mut positions = vec![
            app.request_appointment(request_input(&board, "Before"))
                .await
                .1,
        ];
        // A token that lives three seconds (plus the server's one-second leeway).
        let short = app.token(Who::coordinator().ttl(Duration::from_secs(3)));
        let mut ws = WsClient::open_as(&app, protocol, Some(&short)).await;
        ws.subscribe("b", BOARD_CHANGED, json!({"id": board})).await;
        ws.subscribe("e", BOARD_EVENTS, json!({"id": board})).await;
        let mut seen = (Vec::new(), Vec::new());
        for i in 0..3 {
            positions.push(
                app.request_appointment(request_input(&board, &format!("During {i}")))
                    .await
                    .1,
            );
        }
        let closed = read_until_closed(&mut ws, &mut seen).await;
        if protocol == "graphql-ws" {
            assert_eq!(closed["type"], "connection_error", "{closed}");
            assert!(closed["payload"]["message"]
                .as_str()
                .unwrap()
                .contains("token expired"));
            let closed = ws.next(Duration::from_secs(5)).await.unwrap();
            assert_eq!(closed["close"], 4403, "{closed}");
        } else {
            assert_eq!(closed["close"], 4403, "{closed}");
            assert!(
                closed["reason"].as_str().unwrap().contains("token expired"),
                "{closed}"
            );
        }
        // Changes made while no socket is open.
        for i in 0..2 {
            positions.push(
                app.request_appointment(request_input(&board, &format!("Between {i}")))
                    .await
                    .1,
            );
        }
        // The client resumes on a new socket with a fresh token, from what it has.
        let last_version = *seen.0.last().expect("a Board before the close");
        let last_position = *seen.1.last().expect("events before the close");
        let mut again = WsClient::open_as(&app, protocol, Some(&app.admin_token)).await;
        again
            .subscribe(
                "b",
                BOARD_CHANGED,
                json!({"id": board, "since": last_version}),
            )
            .await;
        again
            .subscribe(
                "e",
                BOARD_EVENTS,
                json!({"id": board, "after": last_position}),
            )
            .await;
        let final_position = *positions.last().unwrap();
        // The Board once projected past the last request: it counts every one (1 + 3 + 2).
        let doc = app
            .data(
                "query($id: ID!, $p: Int) { board(id: $id, minPosition: $p) { version counts { waiting } } }",
                json!({"id": board, "p": final_position}),
            )
            .await;
        assert_eq!(doc["board"]["counts"]["waiting"], 6);
        let final_version = doc["board"]["version"].as_i64().unwrap();
        while seen.1.last() != Some(&final_position) || seen.0.last() != Some(&final_version) {
            let m = again
                .next(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("resumed feed stalled at {seen:?}"));
            record(&m, &mut seen);
        }
        // Every event exactly once across both sockets, in order; every Board version
        // newer than the last.
        let mut sorted = seen.1.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, seen.1, "no event twice, none out of order");
        for p in &positions {
            assert!(seen.1.contains(p), "the request at {p} was lost: {seen:?}");
        }
        assert!(seen.0.windows(2).all(|w| w[0] < w[1]), "{:?}", seen.0);
    }
}

/// Asserts a 401 in GraphQL's error shape with a Bearer challenge.
async fn assert_unauthenticated(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 401, "{what}");
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer realm=\"careboard\""),
        "{what}: {challenge}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{what}: {body}");
    assert!(body["data"].is_null(), "{what}: nothing ran: {body}");
}

#[tokio::test]
async fn every_way_into_graphql_needs_a_token() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Edge").await;
    let anonymous = reqwest::Client::new();
    let query = "query($id: ID!) { board(id: $id) { name appointments { patientName } } }";
    let vars = json!({"id": board});
    let introspection = "{ __schema { queryType { name } } }";
    let hash = |q: &str| {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(q.as_bytes()))
    };
    // A persisted query the admin registered: its hash alone does not get past.
    let persisted = json!({"persistedQuery": {"version": 1, "sha256Hash": hash(query)}});
    let r = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({"query": query, "variables": vars, "extensions": persisted}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let with_hash = |token: Option<String>| {
        let mut r = anonymous
            .post(app.url("/graphql"))
            .json(&json!({"variables": vars, "extensions": persisted}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let admin = app.admin_token.clone();
    let ok: Value = with_hash(Some(admin.clone()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ok["errors"].is_null() && ok["data"].get("board").is_some(),
        "{ok}"
    );

    for token in [None, Some("garbage".to_string())] {
        let bearer = |r: reqwest::RequestBuilder| match &token {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        assert_unauthenticated(
            bearer(anonymous.post(app.url("/graphql")))
                .json(&json!({"query": query, "variables": vars}))
                .send()
                .await
                .unwrap(),
            "POST",
        )
        .await;
        assert_unauthenticated(
            bearer(anonymous.get(app.url("/graphql")))
                .query(&[("query", query), ("variables", &vars.to_string())])
                .send()
                .await
                .unwrap(),
            "GET",
        )
        .await;
        assert_unauthenticated(with_hash(token.clone()).await.unwrap(), "persisted query").await;
        assert_unauthenticated(
            bearer(anonymous.post(app.url("/graphql")))
                .json(&json!({"query": introspection}))
                .send()
                .await
                .unwrap(),
            "introspection over POST",
        )
        .await;
        assert_unauthenticated(
            bearer(anonymous.get(app.url("/graphql")))
                .query(&[("query", introspection)])
                .send()
                .await
                .unwrap(),
            "introspection over GET",
        )
        .await;
    }
    // With the token, GET and introspection answer.
    let r: Value = body_json(
        anonymous
            .get(app.url("/graphql"))
            .bearer_auth(&admin)
            .query(&[("query", introspection)]),
    )
    .await;
    assert_eq!(r["data"]["__schema"]["queryType"]["name"], "Query", "{r}");
    // Health stays open.
    for path in ["/healthz", "/readyz"] {
        let r = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn the_event_actor_is_the_tokens_subject_whatever_the_headers_or_connection_init_say() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Edge").await;
    let token = app.token(
        Who::coordinator()
            .subject("coordinator-42")
            .name("Ana Ruiz"),
    );
    // Over HTTP, with every header that once named (or could name) the actor.
    let r: Value = body_json(reqwest::Client::new()
        .post(app.url("/graphql"))
        .bearer_auth(&token)
        .header("x-actor", "mallory")
        .header("x-user", "mallory")
        .header("x-forwarded-user", "mallory")
        .json(&json!({"query": REQUEST_APPOINTMENT, "variables": {"input": {"boardId": board, "patientName": "Over HTTP", "specialty": "pediatrics", "region": "TX", "reason": "cough"}}}))).await;
    assert!(r["errors"].is_null(), "{r}");
    // Over the websocket (a mutation is a valid operation there), with an actor in
    // connection_init's payload beside the token.
    let mut ws = WsClient::connect_as(&app, "graphql-transport-ws", None).await;
    ws.send(json!({"type": "connection_init", "payload": {
        "Authorization": format!("Bearer {token}"), "actor": "mallory", "x-actor": "mallory"}}))
        .await;
    assert_eq!(
        ws.next(Duration::from_secs(5)).await.unwrap()["type"],
        "connection_ack"
    );
    ws.subscribe(
        "m",
        REQUEST_APPOINTMENT,
        json!({"input": {"boardId": board, "patientName": "Over WS", "specialty": "pediatrics", "region": "TX", "reason": "cough"}}),
    )
    .await;
    let (_, data) = ws.next_data(Duration::from_secs(10)).await.unwrap();
    assert!(data["requestAppointment"]["position"].is_i64(), "{data}");

    let actors: Vec<(String, String, String)> = sqlx::query_as(
        "select metadata->>'actor', metadata->>'actorRole', metadata->>'actorName' \
         from events where type = 'AppointmentRequested' order by seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let verified = (
        "coordinator-42".to_string(),
        "coordinator".to_string(),
        "Ana Ruiz".to_string(),
    );
    assert_eq!(actors, [verified.clone(), verified]);
    let all: String = sqlx::query_scalar("select string_agg(metadata::text, ' ') from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!all.contains("mallory"), "{all}");
}

#[tokio::test]
async fn metrics_need_an_admin_token_on_the_api_address() {
    let app = TestApp::spawn().await;
    let anonymous = reqwest::Client::new();
    assert_unauthenticated(
        anonymous.get(app.url("/metrics")).send().await.unwrap(),
        "/metrics without a token",
    )
    .await;
    // Every role but admin is refused, as the matrix says.
    for who in [
        Who::coordinator(),
        Who::provider(uuid::Uuid::new_v4()),
        Who::patient("p-metrics"),
    ] {
        let r = anonymous
            .get(app.url("/metrics"))
            .bearer_auth(app.token(who))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let body: Value = r.json().await.unwrap();
        assert_eq!(error_code(&body), "FORBIDDEN", "{body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("may not use /metrics"),
            "{body}"
        );
    }
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("# EOF"));
}

#[tokio::test]
async fn metrics_on_their_own_address_are_open_there_and_gone_from_the_api() {
    let pool = crate::helpers::fresh_database().await;
    let server_pool = crate::helpers::server_pool(&pool).await;
    let mut state = careboard::app::state(
        server_pool,
        careboard::config::GraphqlLimits::default(),
        Duration::from_secs(5),
    );
    state.auth = Some(careboard::identity::Verifier::new(idp().verifier_config()));
    state.metrics_elsewhere = true;
    let metrics = careboard::app::RunningServer::start_metrics("127.0.0.1:0", state.clone())
        .await
        .unwrap();
    let api = careboard::app::RunningServer::start("127.0.0.1:0", state)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let r = http.get(metrics.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("# EOF"));
    let admin = idp().token(&Who::admin());
    let r = http
        .get(api.url("/metrics"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "not on the API's address, even for an admin"
    );
    // Nothing but metrics and health on the metrics address.
    let r = http
        .post(metrics.url("/graphql"))
        .bearer_auth(&admin)
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    metrics.stop().await.unwrap();
    api.stop().await.unwrap();
}

#[tokio::test]
async fn two_principals_from_one_address_are_rate_limited_separately() {
    let app = TestApp::spawn_rate_limited(1, 3).await;
    let http = reqwest::Client::new();
    let status = |token: Option<String>| {
        let mut r = http
            .post(app.url("/graphql"))
            .json(&json!({"query": "{ __typename }"}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    let ana = app.token(Who::coordinator().subject("ana"));
    let ben = app.token(Who::coordinator().subject("ben"));
    let mut ana_statuses = Vec::new();
    for _ in 0..6 {
        ana_statuses.push(status(Some(ana.clone())).await);
    }
    assert!(ana_statuses.contains(&429), "{ana_statuses:?}");
    // Ana's second token (same subject) shares her budget.
    let ana_again = app.token(Who::coordinator().subject("ana").name("Ana again"));
    assert_eq!(status(Some(ana_again)).await, 429);
    // Ben, from the same address, still has his.
    assert_eq!(status(Some(ben.clone())).await, 200);
    assert_eq!(status(Some(ben)).await, 200);
    // Requests without a valid token count against the address, apart from both.
    assert_eq!(status(None).await, 401);
    let mut anonymous = Vec::new();
    for _ in 0..6 {
        anonymous.push(status(Some("garbage".into())).await);
    }
    assert!(anonymous.contains(&429), "{anonymous:?}");
    assert_eq!(status(Some(app.token(Who::admin()))).await, 200);
}

/// `careboard serve` with `args`, on a fresh database and data dir; its exit output
/// when it stops by itself within the timeout.
fn serve_refused(args: &[&str], url: &str, dir: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_careboard"))
        .arg("serve")
        .args(args)
        .args(["--projector", "off"])
        .arg("--data-dir")
        .arg(dir)
        .env("DATABASE_URL", url)
        .env_remove("CAREBOARD_OIDC_ISSUER")
        .env_remove("CAREBOARD_AUTH")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run careboard serve");
    assert!(!out.status.success(), "it must refuse: {args:?}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test]
async fn no_configuration_serves_the_network_without_authentication() {
    let (_pool, url) = crate::helpers::fresh_database_with_url().await;
    let dir = tempfile::tempdir().unwrap();
    // The default: authentication on, the development issuer, loopback only.
    let stderr = serve_refused(&["--bind", "0.0.0.0:0"], &url, dir.path());
    assert!(stderr.contains("CAREBOARD_OIDC_ISSUER"), "{stderr}");
    assert!(stderr.contains("127.0.0.1"), "{stderr}");
    // Switching authentication off does not get around it.
    let stderr = serve_refused(&["--auth", "off", "--bind", "0.0.0.0:0"], &url, dir.path());
    assert!(stderr.contains("--auth off"), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    let stderr = serve_refused(&["--auth", "off", "--bind", "[::]:0"], &url, dir.path());
    assert!(stderr.contains("--auth off"), "{stderr}");
}

/// A `careboard serve` child on a free loopback port, killed when dropped.
struct Served {
    child: std::process::Child,
    base: String,
    stderr: std::path::PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(args: &[&str], url: &str, dir: &std::path::Path) -> Served {
    serve_logging(args, url, dir, "info").await
}

async fn serve_logging(args: &[&str], url: &str, dir: &std::path::Path, level: &str) -> Served {
    let port = crate::helpers::free_port();
    let stderr = dir.join("serve.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_careboard"))
        .arg("serve")
        .args(args)
        .args(["--bind", &format!("127.0.0.1:{port}"), "--projector", "off"])
        .arg("--data-dir")
        .arg(dir)
        .env("DATABASE_URL", url)
        .env_remove("CAREBOARD_OIDC_ISSUER")
        .env_remove("CAREBOARD_AUTH")
        .env("RUST_LOG", level)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("start careboard serve");
    let served = Served {
        child,
        base: format!("http://127.0.0.1:{port}"),
        stderr,
    };
    crate::helpers::wait_until_answering(
        &format!("{}/readyz", served.base),
        Duration::from_secs(30),
        || {
            format!(
                "careboard serve did not come up: {}",
                std::fs::read_to_string(&served.stderr).unwrap_or_default()
            )
        },
    )
    .await;
    served
}

#[tokio::test]
async fn auth_off_serves_loopback_only_and_says_so_loudly() {
    let (_pool, url) = crate::helpers::fresh_database_with_url().await;
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&["--auth", "off"], &url, dir.path()).await;
    let r: Value = body_json(
        reqwest::Client::new()
            .post(format!("{}/graphql", served.base))
            .json(&json!({"query": "{ __typename }"})),
    )
    .await;
    assert_eq!(r["data"]["__typename"], "Query", "{r}");
    let log = std::fs::read_to_string(&served.stderr).unwrap();
    assert!(log.contains("AUTHENTICATION IS OFF"), "{log}");
    assert!(log.contains("WARN"), "{log}");
}

#[tokio::test]
async fn the_deprecated_inbound_queue_setting_still_starts_the_server_and_warns() {
    let (_pool, url) = crate::helpers::fresh_database_with_url().await;
    let dir = tempfile::tempdir().unwrap();
    let served = serve(
        &["--auth", "off", "--ws-inbound-queue", "32"],
        &url,
        dir.path(),
    )
    .await;
    let log = std::fs::read_to_string(&served.stderr).unwrap();
    assert!(
        log.contains("CAREBOARD_WS_INBOUND_QUEUE (--ws-inbound-queue) is deprecated and ignored"),
        "{log}"
    );
}

#[tokio::test]
async fn a_get_requests_variables_never_reach_the_log_even_at_debug_level() {
    let (_pool, url) = crate::helpers::fresh_database_with_url().await;
    let dir = tempfile::tempdir().unwrap();
    let served = serve_logging(&["--auth", "off"], &url, dir.path(), "debug").await;
    let marker = "PatientMarker7Q2";
    let response = reqwest::Client::new()
        .get(format!("{}/graphql", served.base))
        .query(&[
            ("query", "query($n: String) { __typename }"),
            ("variables", &format!(r#"{{"n": "{marker}"}}"#)),
        ])
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let log = std::fs::read_to_string(&served.stderr).unwrap();
    assert!(log.contains("/graphql"), "the request is logged: {log}");
    assert!(!log.contains(marker), "a variable reached the log: {log}");
}

#[tokio::test]
async fn by_default_the_server_needs_tokens_from_careboard_token() {
    let (_pool, url) = crate::helpers::fresh_database_with_url().await;
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&[], &url, dir.path()).await;
    let http = reqwest::Client::new();
    let post = |token: Option<String>| {
        let mut r = http
            .post(format!("{}/graphql", served.base))
            .json(&json!({"query": "{ __typename }"}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_unauthenticated(post(None).await.unwrap(), "no token").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_careboard"))
        .args(["token", "--role", "coordinator", "--name", "Ana Ruiz"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r: Value = post(Some(token)).await.unwrap().json().await.unwrap();
    assert_eq!(r["data"]["__typename"], "Query", "{r}");
    // A token from a provider this server was not configured with is refused.
    assert_unauthenticated(
        post(Some(idp().token(&Who::admin()))).await.unwrap(),
        "another issuer's token",
    )
    .await;
}

/// The `careboard-token` meta of a page, if it has one.
fn page_token(html: &str) -> Option<String> {
    let start = html.find(r#"<meta name="careboard-token" content=""#)?;
    let rest = &html[start + r#"<meta name="careboard-token" content=""#.len()..];
    Some(rest[..rest.find('"')?].to_string())
}

#[tokio::test]
async fn pages_served_by_the_development_issuer_to_this_machine_carry_a_short_lived_coordinator_token(
) {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_development(dir.path(), false).await;
    let anonymous = reqwest::Client::new();
    for path in [
        "/graphql",
        "/boards",
        "/boards/00000000-0000-0000-0000-000000000000",
    ] {
        let r = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
        let html = r.text().await.unwrap();
        let token = page_token(&html).unwrap_or_else(|| panic!("{path} has no token"));
        // A coordinator's, for half an hour, that the server accepts.
        let claims: Value = {
            use base64::Engine;
            let payload = token.split('.').nth(1).unwrap();
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload)
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(claims["role"], "coordinator");
        let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        assert!(ttl <= 3600, "short-lived: {ttl} s");
        let r = app.gql_as(&token, "{ __typename }", json!({})).await;
        assert_eq!(r["data"]["__typename"], "Query", "{r}");
        // Asked for under another name (a site whose name points at this machine),
        // the page carries none.
        for host in ["evil.example", "evil.example:80", "127.0.0.1.nip.io"] {
            let html = body_text(anonymous.get(app.url(path)).header("host", host)).await;
            assert_eq!(page_token(&html), None, "{path} as {host}");
        }
        let html = body_text(anonymous.get(app.url(path).replace("127.0.0.1", "localhost"))).await;
        assert!(page_token(&html).is_some(), "{path} as localhost");
    }
    // With an identity provider, no page carries a token: GraphiQL asks for one.
    let app = TestApp::spawn().await;
    for path in ["/graphql", "/boards"] {
        let html = body_text(anonymous.get(app.url(path))).await;
        assert_eq!(page_token(&html), None, "{path}");
    }
}

#[tokio::test]
async fn graphiql_served_by_the_development_issuer_runs_a_query_with_its_prefilled_token() {
    let Some(browser) = crate::helpers::browser::Browser::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_development(dir.path(), false).await;
    let opened = app
        .data(OPEN_BOARD, json!({"input": {"name": "Walkthrough", "specialty": "pediatrics", "region": "TX", "date": "2022-07-18"}}))
        .await;
    let board = opened["openBoard"]["board"]["id"].as_str().unwrap();
    let position = opened["openBoard"]["position"].as_i64().unwrap();
    // A fresh browser: nothing in its storage, no token but the page's.
    let mut page = browser.open_with(&app.url("/graphql"), None).await;
    page.wait_for(
        "GraphiQL to render",
        "!!document.querySelector('.graphiql-container .graphiql-query-editor .CodeMirror')",
    )
    .await;
    let headers = page
        .eval("[...document.querySelectorAll('.graphiql-editor-tool .CodeMirror')].map(e => e.CodeMirror.getValue()).join(' ')")
        .await;
    assert!(
        headers
            .as_str()
            .unwrap()
            .contains("\"Authorization\": \"Bearer ey"),
        "the headers editor opens with the token: {headers}"
    );
    let query = format!("{{ board(id: \"{board}\", minPosition: {position}) {{ name status }} }}");
    page.run_in_graphiql_showing(&query, "the query's answer", r#""name": "Walkthrough""#)
        .await;
}

#[tokio::test]
async fn with_an_identity_provider_graphiql_asks_for_a_token_in_its_headers() {
    let Some(browser) = crate::helpers::browser::Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    let mut page = browser.open_with(&app.url("/graphql"), None).await;
    page.wait_for(
        "GraphiQL's headers editor, open, asking for a token",
        "[...document.querySelectorAll('.graphiql-editor-tool .CodeMirror')].some(e => e.CodeMirror.getValue().includes('paste a token from your identity provider'))",
    )
    .await;
    page.run_in_graphiql_showing("{ __typename }", "the refusal", "UNAUTHENTICATED")
        .await;
}

#[tokio::test]
async fn with_an_identity_provider_the_board_pages_sign_in_with_a_pasted_token() {
    let Some(browser) = crate::helpers::browser::Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    let board = app.open_board("Edge").await;
    app.request_appointment(request_input(&board, "Zoe Quinn"))
        .await;
    let mut page = browser
        .open_with(&app.url(&format!("/boards/{board}")), None)
        .await;
    page.wait_for(
        "the sign-in field",
        "!!document.getElementById('careboard-signin-token')",
    )
    .await;
    let shown = page.eval("document.body.innerText").await;
    assert!(
        !shown.as_str().unwrap().contains("Zoe Quinn"),
        "nothing before signing in: {shown}"
    );
    // A bad token is refused, and the field says why.
    page.eval("document.getElementById('careboard-signin-token').value = 'not-a-token'; document.querySelector('#careboard-signin button').click(); true")
        .await;
    page.wait_for(
        "the refusal under the field",
        "(document.querySelector('.signin-problem') || {textContent: ''}).textContent.includes('well-formed')",
    )
    .await;
    let token = app.token(Who::coordinator().regions(["TX"]));
    page.eval(&format!(
        "document.getElementById('careboard-signin-token').value = {}; document.querySelector('#careboard-signin button').click(); true",
        serde_json::to_string(&format!("Bearer {token}")).unwrap()
    ))
    .await;
    page.wait_for(
        "the Board, live, after signing in",
        "document.getElementById('conn').textContent === 'live' && document.getElementById('waiting').innerText.includes('Zoe Quinn') && !document.getElementById('careboard-signin')",
    )
    .await;
    // The token stays in this tab only.
    assert_eq!(
        page.eval("localStorage.getItem('careboard.token')").await,
        Value::Null
    );
}

#[tokio::test]
async fn the_development_issuers_board_page_goes_live_with_the_token_it_was_served() {
    let Some(browser) = crate::helpers::browser::Browser::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_development(dir.path(), false).await;
    let board = app.open_board("Edge").await;
    let mut page = browser
        .open_with(&app.url(&format!("/boards/{board}")), None)
        .await;
    page.wait_for(
        "the page to go live",
        "document.getElementById('conn').textContent === 'live' && document.getElementById('title').textContent === 'Edge'",
    )
    .await;
    app.request_appointment(request_input(&board, "Zoe Quinn"))
        .await;
    page.wait_for(
        "the new appointment over the websocket",
        "document.getElementById('waiting').innerText.includes('Zoe Quinn')",
    )
    .await;
    assert_eq!(
        page.eval("!!document.getElementById('careboard-signin')")
            .await,
        false
    );
}

#[tokio::test]
async fn the_live_demo_serves_with_tokens_on_loopback_only() {
    let (_pool, url) = crate::helpers::fresh_database_with_url().await;
    let dir = tempfile::tempdir().unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_careboard"))
        .args(["demo", "--live", "--bind", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("CAREBOARD_OIDC_ISSUER"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let port = crate::helpers::free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_careboard"))
        .args([
            "demo", "--live", "--speed", "60", "--hours", "2", "--boards", "1",
        ])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let served = Served {
        child,
        base: format!("http://127.0.0.1:{port}"),
        stderr: dir.path().join("none"),
    };
    crate::helpers::wait_until_answering(
        &format!("{}/readyz", served.base),
        Duration::from_secs(30),
        || "the demo did not come up".into(),
    )
    .await;
    let http = reqwest::Client::new();
    let query = json!({"query": "{ __typename }"});
    assert_unauthenticated(
        http.post(format!("{}/graphql", served.base))
            .json(&query)
            .send()
            .await
            .unwrap(),
        "the demo without a token",
    )
    .await;
    // Its pages open signed in, and `careboard token` on its data dir mints more.
    let page = body_text(http.get(format!("{}/boards", served.base))).await;
    assert!(page_token(&page).is_some());
    let token = std::process::Command::new(env!("CARGO_BIN_EXE_careboard"))
        .args(["token", "--role", "coordinator", "--name", "Ana Ruiz"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    for token in [token, page_token(&page).unwrap()] {
        let r: Value = body_json(
            http.post(format!("{}/graphql", served.base))
                .bearer_auth(token)
                .json(&json!({"query": "{ __typename }"})),
        )
        .await;
        assert_eq!(r["data"]["__typename"], "Query", "{r}");
    }
}

#[tokio::test]
async fn while_the_providers_keys_cannot_be_fetched_requests_and_sockets_are_told_to_retry() {
    let pool = crate::helpers::fresh_database().await;
    let server_pool = crate::helpers::server_pool(&pool).await;
    let mut state = careboard::app::state(
        server_pool,
        careboard::config::GraphqlLimits::default(),
        Duration::from_secs(5),
    );
    // A provider whose JWKS endpoint is unreachable (nothing listens on port 9).
    let mut config = idp().verifier_config();
    config.keys = careboard::identity::jwks::KeySource::JwksUrl("http://127.0.0.1:9/certs".into());
    state.auth = Some(careboard::identity::Verifier::new(config));
    let server = careboard::app::RunningServer::start("127.0.0.1:0", state)
        .await
        .unwrap();
    let token = idp().token(&Who::coordinator());
    let r = reqwest::Client::new()
        .post(server.url("/graphql"))
        .bearer_auth(&token)
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "the server's fault, not the token's");
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");

    let (socket, _) = crate::helpers::ws_upgrade(&server.url("/graphql/ws"), None)
        .await
        .unwrap();
    let mut ws = WsClient::from_socket(socket, false);
    ws.send(json!({"type": "connection_init", "payload": {"token": token}}))
        .await;
    let closed = ws.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(closed["close"], 1013, "try again later: {closed}");
    assert!(
        closed["reason"]
            .as_str()
            .unwrap()
            .contains("cannot verify tokens now"),
        "{closed}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_board_page_renews_the_development_token_when_it_expires_and_stays_live() {
    let Some(browser) = crate::helpers::browser::Browser::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Pages carry a token that lives two seconds (plus the one-second leeway).
    let app = TestApp::spawn_development_pages(dir.path(), Duration::from_secs(2)).await;
    let board = app.open_board("Edge").await;
    let mut page = browser
        .open_with(&app.url(&format!("/boards/{board}")), None)
        .await;
    page.wait_for(
        "the page to go live",
        "document.getElementById('conn').textContent === 'live' && document.getElementById('title').textContent === 'Edge'",
    )
    .await;
    page.eval("window.__sameDocument = 7").await;
    // Long past the first token's expiry: the server closed the socket (4403), the page
    // fetched a fresh token and reconnected, resuming its subscription.
    tokio::time::sleep(Duration::from_secs(6)).await;
    app.request_appointment(request_input(&board, "Zoe Quinn"))
        .await;
    page.wait_for(
        "the new appointment, over a socket with a renewed token",
        "document.getElementById('conn').textContent === 'live' && document.getElementById('waiting').innerText.includes('Zoe Quinn')",
    )
    .await;
    // Queries renew too: one from the page's client after the token expired again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let answered = page
        .eval("Careboard.query('{ __typename }').then(d => d.__typename, e => 'failed: ' + e.message)")
        .await;
    assert_eq!(answered, "Query");
    assert_eq!(page.eval("window.__sameDocument").await, 7, "no reload");
    assert_eq!(
        page.eval("!!document.getElementById('careboard-signin')")
            .await,
        false,
        "never asked to sign in"
    );
}

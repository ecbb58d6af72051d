//! The running server tried from outside, as an attacker would: documents, messages and
//! sockets shaped to make it work without bound. Each test here failed before the fix
//! it guards.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use serde_json::{json, Value};

use crate::helpers::{body_json, error_code, error_message, TestApp, Who, WsClient};

/// A few hundred bytes whose fragments spread the one before them four times over:
/// spelled out, `levels` fragments make 4^`levels` selections, but every fragment is
/// used and none forms a cycle, and the nesting stays under the recursion limit.
fn exploding_fragments(open: &str, close: &str, (on, leaf): (&str, &str), levels: usize) -> String {
    let mut document = format!("{open} ...F{levels} {close}\nfragment F0 on {on} {{ {leaf} }}\n");
    for i in 1..=levels {
        let j = i - 1;
        document.push_str(&format!(
            "fragment F{i} on {on} {{ ...F{j} ...F{j} ...F{j} ...F{j} }}\n"
        ));
    }
    document
}

/// How long a refusal may take here: it is immediate once the document is measured;
/// before, the server walked every spelled-out selection (for ever, at 4^28) on a
/// worker thread no timeout can stop.
const REFUSED_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_document_whose_fragments_expand_exponentially_is_refused_at_once() {
    let app = TestApp::spawn().await;
    let (board, position) = app.open_board_at("Pediatrics TX").await;
    let documents = [
        // Data fields: the recursion-depth check, then validation, spell it out.
        exploding_fragments(
            &format!("query {{ board(id: \"{board}\") {{"),
            "} }",
            ("Board", "id name"),
            28,
        ),
        // Introspection only: the check that routes it to the introspection schema
        // spells it out first.
        exploding_fragments("query {", "}", ("Query", "__typename"), 28),
    ];
    for document in &documents {
        let answer = tokio::time::timeout(REFUSED_WITHIN, app.gql(document, json!({})))
            .await
            .expect("the document is refused at once, not spelled out");
        assert_eq!(error_code(&answer), "VALIDATION", "{answer}");
        let message = answer["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("fragments spelled out"), "{answer}");
    }
    // Over the websocket, on both protocols, as a subscription.
    let subscription = exploding_fragments(
        &format!("subscription {{ boardChanged(boardId: \"{board}\") {{"),
        "} }",
        ("Board", "id version"),
        28,
    );
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = WsClient::open(&app, protocol).await;
        ws.subscribe("boom", &subscription, json!({})).await;
        let message = ws
            .next(REFUSED_WITHIN)
            .await
            .expect("the subscription is refused at once");
        let errors = match &message["payload"] {
            Value::Array(_) => message["payload"].clone(),
            payload if payload["errors"].is_array() => payload["errors"].clone(),
            payload => json!([payload]),
        };
        assert_eq!(errors[0]["extensions"]["code"], "VALIDATION", "{message}");
        ws.close().await;
    }
    // Still serving, with no worker lost to the walk.
    let answer = tokio::time::timeout(
        REFUSED_WITHIN,
        app.data(
            "query($b: ID!, $p: Int) { board(id: $b, minPosition: $p) { name } }",
            json!({"b": board, "p": position}),
        ),
    )
    .await
    .expect("the server still answers");
    assert_eq!(answer["board"]["name"], "Pediatrics TX");
}

#[tokio::test]
async fn ordinary_fragments_and_the_graphiql_introspection_query_still_run() {
    let app = TestApp::spawn().await;
    let (board, position) = app.open_board_at("Pediatrics TX").await;
    // Fragments used a few times over, as front-ends write them.
    let document = format!(
        "query {{ a: board(id: \"{board}\", minPosition: {position}) {{ ...B }} b: board(id: \"{board}\", minPosition: {position}) {{ ...B }} }}
         fragment B on Board {{ ...Head ...Head counts {{ waiting }} }}
         fragment Head on Board {{ id name status version }}"
    );
    let answer = app.data(&document, json!({})).await;
    assert_eq!(answer["a"]["name"], "Pediatrics TX");
    assert_eq!(answer["b"]["status"], "OPEN");
    let introspection = app.data(INTROSPECTION, json!({})).await;
    assert!(introspection["__schema"]["types"].as_array().unwrap().len() > 20);
}

/// GraphiQL's introspection query (its fragments nest `TypeRef` eight levels deep).
const INTROSPECTION: &str = "query IntrospectionQuery { __schema { queryType { name } mutationType { name } subscriptionType { name } types { ...FullType } directives { name description locations args { ...InputValue } } } }
fragment FullType on __Type { kind name description fields(includeDeprecated: true) { name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason } inputFields { ...InputValue } interfaces { ...TypeRef } enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason } possibleTypes { ...TypeRef } }
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }";

/// Each subscriber's frames carry its subscription id, and its envelope prefix is kept
/// for the life of the subscription: 1,000 subscriptions with ids of 200 KB (100 on each
/// of ten sockets) took the server from 425 to 710 MB on one Board change. Ids are now
/// short (as every client makes them: UUIDs, counters), or the socket is closed.
#[tokio::test]
async fn a_subscription_id_longer_than_the_limit_closes_the_socket() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Pediatrics TX").await;
    let query = "subscription($b: ID!) { boardChanged(boardId: $b) { version } }";
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = WsClient::open(&app, protocol).await;
        let longest = "i".repeat(128);
        ws.subscribe(&longest, query, json!({"b": board})).await;
        let first = ws.next(REFUSED_WITHIN).await.expect("the first Board");
        assert_eq!(first["id"], longest.as_str(), "{first}");
        ws.subscribe(&"x".repeat(129), query, json!({"b": board}))
            .await;
        let message = ws.next(REFUSED_WITHIN).await.expect("a close");
        assert_closed(&message, 4400, "128");
    }
}

/// A message over the size limit used to reset the connection with no close frame, so
/// a `graphql-ws` client took it for a dropped line and sent it again on reconnect.
#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_with_close_1009() {
    let app = TestApp::spawn().await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = WsClient::open(&app, protocol).await;
        let query = format!("query {{ __typename }} # {}", "x".repeat(300 * 1024));
        ws.send(json!({"type": "subscribe", "id": "1", "payload": {"query": query}}))
            .await;
        let message = ws.next(REFUSED_WITHIN).await.expect("a close frame");
        assert_closed(&message, 1009, "limit");
    }
    // The server still answers.
    let mut ws = WsClient::open(&app, "graphql-transport-ws").await;
    let board = app.open_board("Pediatrics TX").await;
    ws.subscribe(
        "after",
        "subscription($b: ID!) { boardChanged(boardId: $b) { version } }",
        json!({"b": board}),
    )
    .await;
    assert!(ws.next(REFUSED_WITHIN).await.is_some());
}

/// GraphiQL (and other clients that speak only the websocket) send their introspection
/// query over the socket; it was refused as "nested too deep" there, while the same
/// query over HTTP runs under introspection's own limits. It runs under those limits on
/// both protocols now, and a deep data query over the socket is still refused.
#[tokio::test]
async fn the_graphiql_introspection_query_runs_over_the_websocket_with_the_http_limits() {
    let app = TestApp::spawn().await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = WsClient::open(&app, protocol).await;
        ws.subscribe("i", INTROSPECTION, json!({})).await;
        let answer = next_answer(&mut ws).await.expect("an answer");
        let payload = &answer["payload"];
        assert!(
            payload["errors"].is_null() && answer["type"] != "error",
            "{protocol}: {answer:#}"
        );
        assert!(
            payload["data"]["__schema"]["types"]
                .as_array()
                .is_some_and(|t| t.len() > 20),
            "{protocol}: {answer:#}"
        );
        // Introspection beside a data field is held to the ordinary depth limit.
        let too_deep = format!(
            "query {{ boardDates __schema {{ types {{ fields {{ type {}{{ kind }}{} }} }} }} }}",
            "{ kind ofType ".repeat(10),
            "}".repeat(10)
        );
        // Introspection whose fragments explode is refused before anything spells
        // them out (the routing test included).
        let boom = exploding_fragments("query {", "}", ("Query", "__typename"), 28);
        ws.subscribe("boom", &boom, json!({})).await;
        let refused = next_answer(&mut ws).await.expect("refused at once");
        assert!(
            refused.to_string().contains("fragments spelled out"),
            "{protocol}: {refused:#}"
        );
        ws.subscribe("d", &too_deep, json!({})).await;
        let refused = next_answer(&mut ws).await.expect("an answer");
        let errors = socket_errors(&refused);
        assert!(
            errors.as_array().is_some_and(|e| !e.is_empty()),
            "{protocol}: {refused:#}"
        );
    }
}

/// With introspection switched off, async-graphql answered `{"data":{"__schema":null}}`
/// with no error, over HTTP and the socket alike: a client could not tell a refusal from
/// an empty schema. Now `__schema` and `__type` are refused with a VALIDATION error and
/// no data, over POST, GET and both websocket protocols; `__typename` still answers.
#[tokio::test]
async fn switched_off_introspection_is_refused_with_an_error_everywhere_but_typename_answers() {
    let app = TestApp::spawn_with(careboard::config::GraphqlLimits {
        introspection: false,
        ..Default::default()
    })
    .await;
    let by_type = "{ __type(name: \"Board\") { name } }";
    let refused = |answer: &Value, how: &str| {
        assert_eq!(error_code(answer), "VALIDATION", "{how}: {answer:#}");
        assert!(
            error_message(answer).contains("introspection is switched off"),
            "{how}: {answer:#}"
        );
        assert!(answer.get("data").is_none(), "{how}: {answer:#}");
    };
    for document in [INTROSPECTION, by_type] {
        refused(&app.gql(document, json!({})).await, "POST");
        let over_get = body_json(
            app.http
                .get(app.url("/graphql"))
                .header("accept", "application/json")
                .query(&[("query", document)]),
        )
        .await;
        refused(&over_get, "GET");
    }
    let typename = app.data("{ __typename }", json!({})).await;
    assert_eq!(typename["__typename"], "Query");
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = WsClient::open(&app, protocol).await;
        for document in [INTROSPECTION, by_type] {
            ws.subscribe("i", document, json!({})).await;
            // A request error, as over HTTP: an `error` message, no `data` at all,
            // and it ends the operation (no `complete` behind it).
            let answer = ws.next(REFUSED_WITHIN).await.expect("an answer");
            assert_eq!(answer["type"], "error", "{protocol}: {answer:#}");
            refused(&json!({ "errors": socket_errors(&answer) }), protocol);
        }
        ws.subscribe("t", "{ __typename }", json!({})).await;
        let answer = ws.next(REFUSED_WITHIN).await.expect("an answer");
        assert_eq!(
            answer["payload"]["data"]["__typename"], "Query",
            "{protocol}: {answer:#}"
        );
    }
}

/// Asserts that `message` (from [`WsClient::next`]) is a close frame with `code` and a
/// reason that contains `reason_part`.
#[track_caller]
fn assert_closed(message: &Value, code: u16, reason_part: &str) {
    assert_eq!(message["close"], code, "{message}");
    assert!(
        message["reason"]
            .as_str()
            .is_some_and(|r| r.contains(reason_part)),
        "the reason should contain {reason_part:?}: {message}"
    );
}

/// The errors of a socket's answer as a list: an `error` message's payload (a list in
/// graphql-transport-ws, one error in the legacy protocol), else the result's `errors`.
fn socket_errors(answer: &Value) -> Value {
    let errors = if answer["type"] == "error" {
        answer["payload"].clone()
    } else {
        answer["payload"]["errors"].clone()
    };
    if errors.is_array() {
        errors
    } else {
        json!([errors])
    }
}

/// The next message of a socket that is not a `complete`.
async fn next_answer(ws: &mut WsClient) -> Option<Value> {
    loop {
        let message = ws.next(REFUSED_WITHIN).await?;
        if message["type"] != "complete" {
            return Some(message);
        }
    }
}

/// An event's metadata names the patient who acted (their subject and name, from their
/// token): patient data, shown to those who may see that patient's fields. Shown
/// without the event's `data`, it left no access record: the disclosure was noted only
/// where `data` is resolved.
#[tokio::test]
async fn a_patients_name_shown_in_event_metadata_leaves_an_access_record() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Pediatrics TX").await;
    let patient = app.token(Who::patient("p-meta").name("Quinn Metadata"));
    let appointment = requested_by(&app, &patient, &board, "Quinn Metadata").await;
    let coordinator = app.token(Who::coordinator().subject("coordinator-meta"));
    let read = app
        .data_as(
            &coordinator,
            "query($s: ID!) { events(streamId: $s) { edges { node { type metadata } } } }",
            json!({"s": appointment}),
        )
        .await;
    assert!(
        read.to_string().contains("Quinn Metadata"),
        "the coordinator sees who acted: {read}"
    );
    eventually_a_record(
        &app,
        &app.admin_token,
        "query($s: String) { accessLog(subject: $s) { edges { node { operation disclosed } } } }",
        json!({"s": "coordinator-meta"}),
        |r| r["operation"] == "events" && r["disclosed"].to_string().contains(&appointment),
    )
    .await;
}

/// Found from outside: a coordinator shown who cancelled (the patient, in the event's
/// metadata) left a record that named no patient, since a cancellation's data carries
/// none, so the patient's own access log never showed that read. The metadata now names
/// the acting patient by id (masked like their name), and the record is theirs.
#[tokio::test]
async fn a_patient_who_acted_is_named_in_the_record_of_who_saw_it_even_without_a_patient_id_in_the_data(
) {
    let app = TestApp::spawn().await;
    let board = app.open_board("Pediatrics TX").await;
    let patient = app.token(Who::patient("p-cancels").name("Rowan Cancels"));
    let appointment = requested_by(&app, &patient, &board, "Rowan Cancels").await;
    app.data_as(
        &patient,
        "mutation($i: CancelAppointmentInput!) { cancelAppointment(input: $i) { version } }",
        json!({"i": {"appointmentId": appointment, "reason": "feeling better"}}),
    )
    .await;
    // An admin reads the log but may not see patient fields: no trace of who acted.
    let hidden = app
        .data(
            "query($s: ID!) { events(streamId: $s) { edges { node { type metadata } } } }",
            json!({"s": appointment}),
        )
        .await;
    let text = hidden.to_string();
    assert!(
        text.contains("AppointmentCancelled")
            && !text.contains("p-cancels")
            && !text.contains("Rowan Cancels"),
        "the acting patient is masked: {hidden}"
    );
    let coordinator = app.token(Who::coordinator().subject("coordinator-cancel"));
    let read = app
        .data_as(
            &coordinator,
            "query($s: ID!) { events(streamId: $s) { edges { node { type metadata } } } }",
            json!({"s": appointment}),
        )
        .await;
    let cancelled = read["events"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"]["type"] == "AppointmentCancelled")
        .unwrap_or_else(|| panic!("the cancellation is listed: {read}"))
        .clone();
    assert_eq!(cancelled["node"]["metadata"]["actorPatientId"], "p-cancels");
    assert_eq!(cancelled["node"]["metadata"]["actorName"], "Rowan Cancels");
    // The patient's own log shows the coordinator's read of who cancelled.
    eventually_a_record(
        &app,
        &patient,
        "{ myAccessLog(first: 100) { edges { node { subject operation disclosed } } } }",
        json!({}),
        |r| r["operation"] == "events" && r["subject"] == "coordinator-cancel",
    )
    .await;
}

/// A patient's appointment request on `board`, made as that patient; its id.
async fn requested_by(app: &TestApp, patient: &str, board: &str, name: &str) -> String {
    let requested = app
        .data_as(
            patient,
            "mutation($i: RequestAppointmentInput!) { requestAppointment(input: $i) { appointment { id } } }",
            json!({"i": {"boardId": board, "patientName": name, "specialty": "pediatrics", "region": "TX", "reason": "cough"}}),
        )
        .await;
    requested["requestAppointment"]["appointment"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Reads an access log (`query`, as `token`, whose one field is a connection) until a
/// record matches `found`: records are written after the response that made them.
async fn eventually_a_record(
    app: &TestApp,
    token: &str,
    query: &str,
    variables: Value,
    found: impl Fn(&Value) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = app.data_as(token, query, variables.clone()).await;
        let connection = log.as_object().and_then(|o| o.values().next()).unwrap();
        if connection["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|edge| found(&edge["node"]))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such access record: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tried and held: a valid token anywhere but the `Authorization` header (the query
/// string of a GET or of the websocket's URL, where proxies and logs keep it) is not
/// taken, and a token far over any identity provider's size is refused as malformed
/// without being echoed.
#[tokio::test]
async fn tokens_in_query_strings_are_not_taken_and_oversized_ones_are_refused() {
    let app = TestApp::spawn().await;
    let token = app.token(Who::coordinator());
    let anonymous = reqwest::Client::new();
    for name in ["access_token", "token", "authorization"] {
        let response = anonymous
            .get(app.url("/graphql"))
            .header("accept", "application/json")
            .query(&[("query", "{ boardDates }"), (name, token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "?{name}=");
        let url = format!("{}?{name}={token}", app.url("/graphql/ws"));
        match crate::helpers::ws_upgrade(&url, None).await {
            Ok((socket, _)) => {
                let mut ws = WsClient::from_socket(socket, false);
                ws.send(json!({"type": "connection_init"})).await;
                let answer = ws.next(REFUSED_WITHIN).await.expect("an answer");
                assert_closed(&answer, 4403, "");
            }
            Err(e) => panic!("?{name}= on the socket: {e}"),
        }
    }
    let signature = token.rsplit('.').next().unwrap();
    let huge = format!("{token}{}", "A".repeat(20_000));
    let response = anonymous
        .post(app.url("/graphql"))
        .bearer_auth(&huge)
        .json(&json!({"query": "{ boardDates }"}))
        .send()
        .await
        .unwrap();
    assert!(
        [401, 431].contains(&response.status().as_u16()),
        "{}",
        response.status()
    );
    let body = response.text().await.unwrap();
    assert!(!body.contains(signature), "the token is echoed: {body}");
    let mut ws = WsClient::connect_as(&app, "graphql-transport-ws", Some(&huge)).await;
    ws.send(json!({"type": "connection_init", "payload": ws.init_payload()}))
        .await;
    let answer = ws.next(REFUSED_WITHIN).await.expect("an answer");
    assert_closed(&answer, 4403, "not a well-formed JWT");
}

/// Automatic persisted queries are remembered within a budget of bytes, not only of
/// documents: before, any caller could park 2048 documents of the largest body each
/// (about 512 MB of the server's memory, measured 75 MB for 300 of them) in a few
/// seconds. Sent more than the budget in big documents, the server has forgotten the
/// oldest (a small one, remembered first) and answers its hash PERSISTED_QUERY_NOT_FOUND;
/// the newest is still remembered.
#[tokio::test]
async fn persisted_queries_hold_a_bounded_number_of_bytes() {
    let app = TestApp::spawn().await;
    let hash = |q: &str| {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(q.as_bytes()))
    };
    let persisted = |q: &str| json!({"persistedQuery": {"version": 1, "sha256Hash": hash(q)}});
    let small = "{ __typename }";
    let answer = app.gql_with_extensions(small, &persisted(small)).await;
    assert_eq!(answer["data"]["__typename"], "Query", "{answer}");
    // 48 documents of 200 KB (9.6 MB), each remembered as it is sent.
    let mut newest = String::new();
    for i in 0..48 {
        newest = format!("{{ __typename }} # {i:04} {}", "x".repeat(200_000));
        let answer = app.gql_with_extensions(&newest, &persisted(&newest)).await;
        assert_eq!(answer["data"]["__typename"], "Query", "{answer}");
    }
    let by_hash = app.gql_with_extensions("", &persisted(&newest)).await;
    assert_eq!(by_hash["data"]["__typename"], "Query", "{by_hash}");
    let forgotten = app.gql_with_extensions("", &persisted(small)).await;
    assert_eq!(
        error_code(&forgotten),
        "PERSISTED_QUERY_NOT_FOUND",
        "the oldest document is still held: {forgotten}"
    );
}

/// Reads from `socket` until the server closes it, sending `drip` (if any) between
/// reads; what the server answered, or None when it held the socket past `limit`.
async fn until_closed(
    socket: &mut tokio::net::TcpStream,
    drip: Option<&[u8]>,
    limit: Duration,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + limit;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(100), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&answer).into()),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {
                if let Some(drip) = drip {
                    // A write to a socket the server closed fails: that is the end too.
                    if socket.write_all(drip).await.is_err() {
                        return Some(String::from_utf8_lossy(&answer).into());
                    }
                }
            }
        }
    }
    None
}

/// Connections that send nothing, half a request's headers, or a body a byte at a time
/// are closed once their time is up (the headers' bound, or the request's for the
/// body), with no token needed to open them: before, the server held each for ever, so
/// a client could take every file descriptor the process has and lock everyone out.
/// The server answers others meanwhile and afterwards.
#[tokio::test]
async fn idle_and_half_sent_connections_are_closed_in_time() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn_with(careboard::config::GraphqlLimits {
        header_read_timeout_ms: 300,
        request_timeout_ms: 1_000,
        ..Default::default()
    })
    .await;
    let addr = app.url("").trim_start_matches("http://").to_string();
    let connect = || tokio::net::TcpStream::connect(addr.clone());
    // The bound here is generous: the server closes these within about a second.
    let limit = Duration::from_secs(20);

    let mut silent = connect().await.unwrap();
    assert!(
        until_closed(&mut silent, None, limit).await.is_some(),
        "a connection that sent nothing is still open"
    );

    let mut half = connect().await.unwrap();
    half.write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        until_closed(&mut half, None, limit).await.is_some(),
        "a connection that sent half its headers is still open"
    );

    let mut dripping = connect().await.unwrap();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
         authorization: Bearer {}\r\ncontent-length: 100000\r\n\r\n{{\"query\": \"",
        app.admin_token
    );
    dripping.write_all(head.as_bytes()).await.unwrap();
    let answer = until_closed(&mut dripping, Some(b" "), limit).await;
    let answer = answer.expect("a connection sending its body a byte at a time is still open");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("TIMEOUT"), "{answer}");

    // The server answers as ever, and a keep-alive connection serves many requests.
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let answer = body_json(
            client
                .post(app.url("/graphql"))
                .bearer_auth(&app.admin_token)
                .json(&json!({"query": "{ __typename }"})),
        )
        .await;
        assert_eq!(answer["data"]["__typename"], "Query", "{answer}");
    }
}

/// The descriptors this process has open.
fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A client that opens connections and holds them (sending nothing, within the header
/// timeout) gets at most `--max-connections` of them served: each one more is answered
/// 503 at once and closed, so the process keeps its descriptors, and the connection
/// already open (a keep-alive client, a websocket) goes on being served. Before, every
/// connection was taken and held until its header timeout, as many as the client could
/// open.
#[tokio::test]
async fn connections_over_the_cap_are_refused_and_the_open_ones_go_on() {
    let app = TestApp::spawn_with(careboard::config::GraphqlLimits {
        max_connections: 40,
        // Longer than the test: the server closes none of them for being idle.
        header_read_timeout_ms: 120_000,
        ..Default::default()
    })
    .await;
    let addr = app.url("").trim_start_matches("http://").to_string();
    // Served before the flood: a keep-alive HTTP client and a websocket subscriber.
    let client = reqwest::Client::new();
    let typename = || async {
        body_json(
            client
                .post(app.url("/graphql"))
                .bearer_auth(&app.admin_token)
                .json(&json!({"query": "{ __typename }"})),
        )
        .await
    };
    assert_eq!(typename().await["data"]["__typename"], "Query");
    let mut ws = WsClient::open(&app, "graphql-transport-ws").await;

    // 400 connections held open by a client that sends nothing (this process holds the
    // client's ends too).
    let before = open_files();
    let mut held = Vec::new();
    for _ in 0..400 {
        held.push(tokio::net::TcpStream::connect(addr.clone()).await.unwrap());
    }
    // The refused ones are answered and closed at once; the served ones stay open.
    let (mut answered_503, mut open) = (0, 0);
    let answers = futures::future::join_all(
        held.iter_mut()
            .map(|socket| until_closed(socket, None, Duration::from_millis(500))),
    )
    .await;
    for answer in answers {
        match answer {
            Some(answer) => {
                assert!(
                    answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
                    "{answer}"
                );
                // A refused client is told why, in a body its headers frame.
                assert!(
                    answer.is_empty()
                        || (answer.contains("content-length: 42\r\n")
                            && answer
                                .ends_with("\r\n\r\nthe server is at its limit of connections\n")),
                    "{answer}"
                );
                answered_503 += usize::from(!answer.is_empty());
            }
            None => open += 1,
        }
    }
    // The server holds at most the cap (less the two served above) of them, with its
    // own descriptors: 400 client ends, and generously few more.
    assert!(open <= 40, "{open} of 400 held open");
    assert!(answered_503 > 0, "no connection was answered 503");
    let grown = open_files().saturating_sub(before);
    assert!(grown <= 400 + 40 + 20, "{grown} descriptors more");

    // The connections already open are served on.
    assert_eq!(typename().await["data"]["__typename"], "Query");
    ws.subscribe("q", "{ __typename }", json!({})).await;
    let (id, data) = ws
        .next_data(Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!((id.as_str(), &data["__typename"]), ("q", &json!("Query")));
    // Once they are gone, new connections are served again.
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        let fresh = reqwest::Client::new();
        let answer = fresh
            .post(app.url("/graphql"))
            .bearer_auth(&app.admin_token)
            .json(&json!({"query": "{ __typename }"}))
            .send()
            .await;
        if answer.is_ok_and(|a| a.status() == 200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "a new connection is served once the held ones are gone"
    );
}

/// One client frame as it goes on the wire: `opcode` with `payload`, masked (with a key
/// of zeros: the payload goes as it is).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// A websocket on a plain TCP stream, upgraded (graphql-transport-ws) and past its
/// `connection_init`, written and read byte by byte by the test.
async fn raw_socket(app: &TestApp) -> tokio::net::TcpStream {
    let addr = app.url("").trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let upgrade = format!(
        "GET /graphql/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
    );
    socket.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let init = json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {}", app.admin_token)}});
    socket
        .write_all(&client_frame(0x1, init.to_string().as_bytes()))
        .await
        .unwrap();
    socket
}

/// Found from outside: a frame that breaks the WebSocket protocol (reserved bits set,
/// text that is not UTF-8, an unmasked frame) ended the connection without a close
/// frame, so the client never learned why. Each now gets its close code first.
#[tokio::test]
async fn a_frame_that_breaks_the_websocket_protocol_gets_a_close_frame_with_its_code() {
    let app = TestApp::spawn().await;
    let mut reserved = client_frame(0x1, b"{}");
    reserved[0] |= 0x40;
    let mut unmasked = vec![0x81, 2];
    unmasked.extend_from_slice(b"{}");
    for (name, frame, code) in [
        ("reserved bits", reserved, 1002u16),
        ("not UTF-8", client_frame(0x1, &[0xff, 0xfe]), 1007),
        ("unmasked", unmasked, 1002),
    ] {
        let mut socket = raw_socket(&app).await;
        socket.write_all(&frame).await.unwrap();
        // Frames until the close: the ack may come first.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut head = [0u8; 2];
                socket.read_exact(&mut head).await.unwrap();
                let mut payload = vec![0u8; (head[1] & 0x7f) as usize];
                socket.read_exact(&mut payload).await.unwrap();
                if head[0] & 0x0f == 0x8 {
                    break u16::from_be_bytes([payload[0], payload[1]]);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: no close frame"));
        assert_eq!(closed, code, "{name}");
    }
}

/// A client that sends websocket pings and never reads the pongs is pushed back by TCP
/// once its pong waits to be written: the server stops reading it. Before, the server
/// read on and queued one pong per ping for ever (measured: +134 MB of the server's
/// memory for a million pings from one socket, all of it kept until the socket closed).
/// Here the client tries to push 64 MB of pings; the server must stop taking them long
/// before (the sockets' kernel buffers hold a few MB).
#[tokio::test]
async fn a_client_that_pings_without_reading_is_pushed_back() {
    let app = TestApp::spawn().await;
    let mut socket = raw_socket(&app).await;
    // 8,000 pings of 125 bytes a chunk (1 MB), 64 chunks; never a read again.
    let chunk: Vec<u8> = std::iter::repeat_n(client_frame(0x9, &[b'p'; 125]), 8_000)
        .flatten()
        .collect();
    let mut written = 0usize;
    for _ in 0..64 {
        // A chunk the server does not take within the bound: it has stopped reading.
        // (The bound is generous; before, it took every chunk at once.)
        match tokio::time::timeout(Duration::from_secs(5), socket.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    assert!(
        written < 32 * chunk.len(),
        "the server read {written} bytes of pings from a client that reads no pongs"
    );
    // Others are served meanwhile.
    let answer = app.gql("{ __typename }", json!({})).await;
    assert_eq!(answer["data"]["__typename"], "Query", "{answer}");
}

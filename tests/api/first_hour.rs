//! A new user's first hour: GraphiQL with no network, the API from a browser app on
//! another origin, GraphQL over HTTP as the spec has it, and what a coordinator is
//! refused. Everything runs against the real server on port 0.

use std::time::Duration;

use crate::helpers::browser::Browser;
use crate::helpers::documents::OPEN_BOARD;
use crate::helpers::{error_code, error_message, TestApp, Who};
use careboard::config::GraphqlLimits;
use serde_json::{json, Value};

/// graphql-js's `getIntrospectionQuery()` (with descriptions, deprecations and
/// directives), the query GraphiQL, graphql-codegen, Postman and Apollo send.
const INTROSPECTION_QUERY: &str = r#"
query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types { ...FullType }
    directives { name description locations args(includeDeprecated: true) { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description args(includeDeprecated: true) { ...InputValue }
    type { ...TypeRef } isDeprecated deprecationReason
  }
  inputFields(includeDeprecated: true) { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue {
  name description type { ...TypeRef } defaultValue isDeprecated deprecationReason
}
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name } } } } } } } } }
}
"#;

/// `depth` levels of `ofType` under a type reference.
fn nested_of_type(depth: usize) -> String {
    let mut selection = "name".to_string();
    for _ in 0..depth {
        selection = format!("ofType {{ {selection} }}");
    }
    selection
}

#[tokio::test]
async fn introspection_passes_the_limits_that_still_refuse_deep_queries() {
    let app = TestApp::spawn().await;
    assert!(
        GraphqlLimits::default().max_depth < 15,
        "the default stays strict"
    );

    let r = app.gql(INTROSPECTION_QUERY, json!({})).await;
    assert!(r.get("errors").is_none(), "introspection refused: {r:#}");
    let types = r["data"]["__schema"]["types"].as_array().unwrap();
    assert!(types.iter().any(|t| t["name"] == "Board"));
    assert_eq!(
        r["data"]["__schema"]["subscriptionType"]["name"],
        "Subscription"
    );

    // A data query as deep is refused: the user-query limits still hold ...
    let deep_mixed = format!(
        "{{ providers(first: 1) {{ edges {{ node {{ id }} }} }} __schema {{ types {{ fields {{ type {{ {} }} }} }} }} }}",
        nested_of_type(12)
    );
    let r = app.gql(&deep_mixed, json!({})).await;
    assert_eq!(error_code(&r), "VALIDATION");
    assert!(error_message(&r).contains("nested too deep"), "{r}");
    // ... and an abusive introspection query meets limits of its own.
    let abusive = format!(
        "{{ __schema {{ types {{ fields {{ type {{ {} }} }} }} }} }}",
        nested_of_type(40)
    );
    let r = app.gql(&abusive, json!({})).await;
    assert_eq!(error_code(&r), "VALIDATION");
    let message = error_message(&r);
    assert!(
        message.contains("nested too deep") || message.contains("recursion depth"),
        "{r}"
    );
    let too_deep = format!(
        "{{ __schema {{ types {{ fields {{ type {{ {} }} }} }} }} }}",
        nested_of_type(22)
    );
    let r = app.gql(&too_deep, json!({})).await;
    assert!(error_message(&r).contains("nested too deep"), "{r}");
}

#[tokio::test]
async fn graphiql_loads_with_no_network_explores_the_schema_and_runs_subscriptions() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    let board = app.open_board("Pediatrics TX").await;
    let mut page = browser.open(&app.url("/graphql")).await;
    page.wait_for(
        "GraphiQL to render",
        "!!document.querySelector('.graphiql-container .graphiql-query-editor .CodeMirror')",
    )
    .await;

    // The docs explorer shows the schema: introspection worked.
    page.eval("document.querySelector('.graphiql-sidebar button[aria-label=\"Show Documentation Explorer\"]').click(); true")
        .await;
    page.wait_for(
        "the docs explorer to list the root types",
        "(document.querySelector('.graphiql-doc-explorer') || {innerText: ''}).innerText.includes('Mutation')",
    )
    .await;
    // An abusive deep query from the page is still refused.
    let deep = format!(
        "{{ providers(first: 1) {{ edges {{ node {{ id }} }} }} __schema {{ types {{ fields {{ type {{ {} }} }} }} }} }}",
        nested_of_type(12)
    );
    let refused = page
        .eval(&format!(
            "fetch('/graphql', {{method: 'POST', headers: {{'content-type': 'application/json', authorization: 'Bearer ' + sessionStorage.getItem('careboard.token')}}, body: JSON.stringify({{query: {}}})}}).then(r => r.json())",
            serde_json::to_string(&deep).unwrap()
        ))
        .await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "VALIDATION",
        "{refused}"
    );

    // A subscription typed into GraphiQL runs over /graphql/ws and shows live changes.
    let subscription = format!(
        "subscription {{ boardChanged(boardId: \"{board}\") {{ name counts {{ waiting }} }} }}"
    );
    page.run_in_graphiql(&subscription).await;
    let result = crate::helpers::browser::GRAPHIQL_RESULT;
    page.wait_for_showing(
        "the subscription's first Board",
        &format!("{result}.includes('\"waiting\": 0')"),
        &format!("[{result}, document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.getValue()]"),
    )
    .await;
    app.data(
        "mutation($input: RequestAppointmentInput!) { requestAppointment(input: $input) { position } }",
        json!({"input": {"boardId": board, "patientName": "Sam Lee", "specialty": "pediatrics", "region": "TX", "reason": "fever"}}),
    )
    .await;
    page.wait_for(
        "the live change in GraphiQL",
        &format!("{result}.includes('\"waiting\": 1')"),
    )
    .await;

    let elsewhere: Vec<&String> = page
        .requests
        .iter()
        .filter(|url| !url.starts_with(&app.url("/")) && !url.starts_with("data:"))
        .collect();
    assert!(elsewhere.is_empty(), "GraphiQL asked for {elsewhere:?}");
}

#[tokio::test]
async fn a_request_for_another_specialty_or_region_is_refused_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Pediatrics TX").await;
    let before = app.event_count().await;
    let request = "mutation($input: RequestAppointmentInput!) { requestAppointment(input: $input) { appointment { id } } }";
    let r = app
        .gql(
            request,
            json!({"input": {"boardId": board, "patientName": "Ana Ruiz", "specialty": "dermatology", "region": "NM", "reason": "rash"}}),
        )
        .await;
    assert_eq!(error_code(&r), "VALIDATION");
    assert_eq!(
        error_message(&r),
        "cannot request appointment: specialty 'dermatology' does not match the Board's specialty 'pediatrics'; request it on a dermatology Board"
    );
    assert!(
        !r.to_string().contains("Ana Ruiz"),
        "no patient field in errors"
    );
    let r = app
        .gql(
            request,
            json!({"input": {"boardId": board, "patientName": "Ana Ruiz", "specialty": "Pediatrics", "region": "nm", "reason": "rash"}}),
        )
        .await;
    assert_eq!(error_code(&r), "VALIDATION");
    assert!(error_message(&r).contains("region 'NM'"), "{r}");
    assert_eq!(app.event_count().await, before, "nothing written");
}

/// A blank page on its own origin, standing for a front-end app elsewhere.
async fn other_origin() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::response::Html("<!doctype html><title>app</title>") }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

#[tokio::test]
async fn a_browser_app_on_an_allowed_origin_calls_the_api_and_others_are_blocked() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (front, _front_task) = other_origin().await;
    // The same page under two names: two origins, one allowed.
    let allowed = format!("http://127.0.0.1:{}", front.port());
    let foreign = format!("http://localhost:{}", front.port());
    let app = TestApp::spawn_with(GraphqlLimits {
        cors_origins: vec![allowed.clone()],
        ..GraphqlLimits::default()
    })
    .await;
    let api = app.url("/graphql");
    let ws = app.url("/graphql/ws").replace("http://", "ws://");
    let mutation = "mutation { openBoard(input: {name: \"Cross\", specialty: \"pediatrics\", region: \"TX\", date: \"2022-07-18\"}) { board { id } } }";
    // The app holds its user's token; a page on another origin holding one too is
    // still blocked.
    let bearer = format!("Bearer {}", app.token(Who::coordinator()));
    let call = |content_type: &str, mode: &str| {
        format!(
            "fetch({api:?}, {{method: 'POST', mode: '{mode}', headers: {{'content-type': '{content_type}', 'authorization': {bearer:?}}}, body: JSON.stringify({{query: {mutation:?}}})}})
               .then(r => r.type === 'opaque' ? 'opaque' : r.json()).catch(e => 'blocked: ' + e)"
        )
    };
    let socket = format!(
        "new Promise(done => {{ const s = new WebSocket({ws:?}, 'graphql-transport-ws');
           s.onopen = () => s.send(JSON.stringify({{type: 'connection_init', payload: {{Authorization: {bearer:?}}}}}));
           s.onmessage = m => {{ done(JSON.parse(m.data).type); s.close(); }};
           s.onerror = () => done('refused'); setTimeout(() => done('timeout'), 5000); }})"
    );

    let mut page = browser.open(&format!("{allowed}/")).await;
    page.wait_for("the app page", "document.title === 'app'")
        .await;
    let r = page.eval(&call("application/json", "cors")).await;
    assert!(r["data"]["openBoard"]["board"]["id"].is_string(), "{r}");
    assert_eq!(page.eval(&socket).await, "connection_ack");
    let after_allowed = app.event_count().await;
    assert_eq!(after_allowed, 1);

    let mut page = browser.open(&format!("{foreign}/")).await;
    page.wait_for("the foreign page", "document.title === 'app'")
        .await;
    let r = page.eval(&call("application/json", "cors")).await;
    assert!(r.as_str().is_some_and(|s| s.starts_with("blocked")), "{r}");
    // The classic CSRF shape: no preflight, no readable answer, and the server must
    // still not run it.
    let r = page.eval(&call("text/plain", "no-cors")).await;
    assert_eq!(r, "opaque");
    assert_eq!(page.eval(&socket).await, "refused");
    // Same shapes from the allowed origin: text/plain is refused there too.
    let mut page = browser.open(&format!("{allowed}/")).await;
    page.wait_for("the app page", "document.title === 'app'")
        .await;
    assert_eq!(page.eval(&call("text/plain", "no-cors")).await, "opaque");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.event_count().await,
        after_allowed,
        "no cross-site write ran"
    );
}

#[tokio::test]
async fn preflight_is_answered_for_allowed_origins_only() {
    let app = TestApp::spawn_with(GraphqlLimits {
        cors_origins: vec!["https://app.clinic.example".into()],
        ..GraphqlLimits::default()
    })
    .await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
    };
    let ok = preflight("https://app.clinic.example").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.clinic.example"
    );
    let methods = ok.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(methods.contains("POST"), "{methods}");
    let no = preflight("https://evil.example").await.unwrap();
    assert!(no.headers().get("access-control-allow-origin").is_none());
    // A request that skips the preflight from a foreign origin is refused outright.
    let r = app
        .http
        .post(app.url("/graphql"))
        .header("origin", "https://evil.example")
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn post_bodies_other_than_json_are_refused_with_415() {
    let app = TestApp::spawn().await;
    let body = json!({"query": OPEN_BOARD.replace("$input", "{name: \"X\", specialty: \"x\", region: \"TX\", date: \"2022-07-18\"}")}).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = app.http.post(app.url("/graphql")).body(body.clone());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 415, "{content_type:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["extensions"]["code"], "VALIDATION");
    }
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "application/graphql-response+json",
    ] {
        let r = app
            .http
            .post(app.url("/graphql"))
            .header("content-type", content_type)
            .body(json!({"query": "{ __typename }"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{content_type}");
    }
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn graphql_over_http_media_types_status_codes_and_get() {
    let app = TestApp::spawn().await;
    let post = |accept: Option<&'static str>, body: Value| {
        let mut r = app.http.post(app.url("/graphql")).json(&body);
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        r.send()
    };
    const GRJ: &str = "application/graphql-response+json";
    // Both media types, chosen by Accept.
    let r = post(Some(GRJ), json!({"query": "{ __typename }"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with(GRJ));
    let r = post(None, json!({"query": "{ __typename }"}))
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let r = post(Some("text/html"), json!({"query": "{ __typename }"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    // Request errors: 400 in the new media type (no data entry), 200 in the old one.
    for bad in [
        json!({"query": "{"}),
        json!({"query": "{ nope }"}),
        json!({"query": "query($id: ID!) { board(id: $id) { id } }", "variables": {"id": {"x": 1}}}),
    ] {
        let r = post(Some(GRJ), bad.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert!(v.get("data").is_none() && v["errors"].is_array(), "{v}");
        let r = post(Some("application/json"), bad.clone()).await.unwrap();
        assert_eq!(r.status(), 200, "{bad}");
    }
    // A field error is not a request error.
    let r = post(
        Some(GRJ),
        json!({"query": "mutation { closeBoard(input: {boardId: \"x\"}) { version } }"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    // GET serves queries, never mutations.
    let r = app
        .http
        .get(app.url("/graphql"))
        .query(&[
            (
                "query",
                "query Q($n: Int) { providers(first: $n) { edges { cursor } } }",
            ),
            ("variables", "{\"n\": 1}"),
            ("operationName", "Q"),
        ])
        .header("accept", GRJ)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["data"]["providers"]["edges"].is_array(), "{v}");
    let r = app
        .http
        .get(app.url("/graphql"))
        .query(&[(
            "query",
            OPEN_BOARD.replace("($input: OpenBoardInput!)", "").replace(
                "$input",
                "{name: \"X\", specialty: \"x\", region: \"TX\", date: \"2022-07-18\"}",
            ),
        )])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(app.event_count().await, 0, "a GET wrote nothing");
}

#[tokio::test]
async fn automatic_persisted_queries_run_by_hash() {
    use sha2::Digest;
    let app = TestApp::spawn().await;
    let query = "{ providers(first: 2) { edges { cursor } } }";
    let hash = format!("{:x}", sha2::Sha256::digest(query.as_bytes()));
    let extensions = json!({"persistedQuery": {"version": 1, "sha256Hash": hash}});
    let by_hash = || {
        app.http
            .get(app.url("/graphql"))
            .query(&[("extensions", extensions.to_string())])
            .send()
    };
    let v: Value = by_hash().await.unwrap().json().await.unwrap();
    assert_eq!(
        v["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_FOUND",
        "{v}"
    );
    assert_eq!(v["errors"][0]["message"], "PersistedQueryNotFound");
    // A document that does not hash to the given value is not stored.
    let r = app.gql_with_extensions("{ __typename }", &extensions).await;
    assert_eq!(error_code(&r), "VALIDATION");
    let r = app.gql_with_extensions(query, &extensions).await;
    assert!(r["data"]["providers"]["edges"].is_array(), "{r}");
    let r = by_hash().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["data"]["providers"]["edges"].is_array(), "{v}");
}

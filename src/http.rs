//! The axum router: /graphql (GraphQL over HTTP: POST, GET queries, GraphiQL, websocket
//! upgrades), health and readiness, and the origin policy (CORS) in front of it all.

use async_graphql::ServerError;
use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_graphql::http::WebSocketProtocols;

use crate::config::GraphqlLimits;
use crate::error::{AppError, ErrorCode};
use crate::event_store::in_flight::Appends;
use crate::graphql::RequestContext;
use crate::health::DbState;
use crate::identity::edge::Credentials;
use crate::identity::matrix::Operation;
pub use crate::state::AppState;

/// The live board page and the index of boards: plain HTML, CSS and JS, shipped inside
/// the binary (no CDN, no build step). Scripts and styles are files of their own, never
/// inline, so the pages run under a `script-src 'self'` content security policy.
const BOARD_PAGE: &str = include_str!("../static/board.html");
const BOARDS_PAGE: &str = include_str!("../static/boards.html");
const STATIC_FILES: [(&str, &str, &str); 4] = [
    (
        "client.js",
        "text/javascript; charset=utf-8",
        include_str!("../static/client.js"),
    ),
    (
        "board.js",
        "text/javascript; charset=utf-8",
        include_str!("../static/board.js"),
    ),
    (
        "boards.js",
        "text/javascript; charset=utf-8",
        include_str!("../static/boards.js"),
    ),
    (
        "careboard.css",
        "text/css; charset=utf-8",
        include_str!("../static/careboard.css"),
    ),
];

/// GET /static/{file}: the pages' scripts and styles. They change with the binary, so
/// browsers revalidate them (`no-cache`) rather than run an old script against a new API.
async fn static_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match STATIC_FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (axum::http::header::CONTENT_TYPE, *content_type),
                (axum::http::header::CACHE_CONTROL, "no-cache"),
                (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// GraphiQL and everything it loads, shipped inside the binary so it works with no
/// network beyond this server (see static/graphiql/README.md for versions and licences).
const GRAPHIQL_PAGE: &str = include_str!("../static/graphiql/index.html");
const GRAPHIQL_ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "init.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../static/graphiql/init.js"),
    ),
    (
        "graphiql.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../static/graphiql/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../static/graphiql/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../static/graphiql/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../static/graphiql/react-dom.production.min.js"),
    ),
    (
        "graphql-ws.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../static/graphiql/graphql-ws.min.js"),
    ),
];
/// GraphiQL needs nothing from elsewhere; the policy says so to the browser too.
const GRAPHIQL_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

/// The two response media types of GraphQL over HTTP.
const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";
const JSON: &str = "application/json";

/// The pages with their Content-Security-Policy (see `limits::page_policy`), and the
/// development issuer's token when served to this machine (see `with_session_token`).
fn page(
    html: &'static str,
    policy: &'static LazyLock<String>,
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> Response {
    (
        [
            (axum::http::header::CONTENT_SECURITY_POLICY, policy.as_str()),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        Html(with_session_token(html, state, headers, peer)),
    )
        .into_response()
}

type Peer = Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>;

async fn boards_page(State(state): State<AppState>, headers: HeaderMap, peer: Peer) -> Response {
    page(
        BOARDS_PAGE,
        &BOARDS_POLICY,
        &state,
        &headers,
        peer.map(|p| p.0 .0),
    )
}

async fn board_page(State(state): State<AppState>, headers: HeaderMap, peer: Peer) -> Response {
    page(
        BOARD_PAGE,
        &BOARD_POLICY,
        &state,
        &headers,
        peer.map(|p| p.0 .0),
    )
}
static BOARD_POLICY: LazyLock<String> = LazyLock::new(|| crate::limits::page_policy(BOARD_PAGE));
static BOARDS_POLICY: LazyLock<String> = LazyLock::new(|| crate::limits::page_policy(BOARDS_PAGE));

pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.limits);
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/graphql") }))
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphql/ws", get(graphql_ws))
        // The token is verified first (once), so the rate limit can key by subject.
        .route_layer(axum::middleware::from_fn_with_state(
            state.rate_limiter.clone(),
            crate::limits::rate_limit,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            crate::identity::edge::credentials,
        ))
        .route("/boards", get(boards_page))
        .route("/boards/{id}", get(board_page))
        .route("/graphiql/{file}", get(graphiql_asset))
        .route("/static/{file}", get(static_file))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Browsers ask for it on every page: nothing to show, and no error to log.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .layer(axum::middleware::from_fn(coded_refusals))
        .layer(axum::middleware::from_fn(crate::limits::security_headers))
        .layer(cors)
        // Spans name the path, never the query string: a GET request's variables can
        // carry patient fields, and no log line may.
        .layer(TraceLayer::new_for_http().make_span_with(
            |request: &axum::http::Request<axum::body::Body>| {
                tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
            },
        ))
        .with_state(state)
}

/// Cross-origin calls only from the configured origins; a preflight from any other
/// origin is answered without permission, so the browser never sends the request.
fn cors_layer(limits: &GraphqlLimits) -> CorsLayer {
    let origins: Vec<HeaderValue> = limits
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::AUTHORIZATION,
            header::HeaderName::from_static("x-correlation-id"),
        ])
        .max_age(Duration::from_secs(3600))
}

/// Whether a browser request's `Origin` may use the API: none (not a browser, or a
/// same-origin GET), this server itself, or a configured origin. Cross-site requests
/// from anywhere else are refused before they run, whatever their shape.
fn origin_allowed(limits: &GraphqlLimits, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().to_ascii_lowercase();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.trim().to_ascii_lowercase());
    let same_origin = host.is_some_and(|host| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            == Some(host.as_str())
    });
    same_origin || limits.cors_origins.contains(&origin)
}

fn forbidden_origin() -> Response {
    request_error(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        "this origin may not call Careboard: add it with --cors-origin (CAREBOARD_CORS_ORIGINS)"
            .into(),
    )
}

/// GET /graphql: a websocket upgrade speaks GraphQL; a request with GraphQL parameters
/// is a query over GET; a browser without parameters gets GraphiQL.
async fn graphql_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    credentials: Option<axum::Extension<Credentials>>,
    connection: Peer,
    upgrade: Result<crate::websocket::Upgrade, crate::websocket::UpgradeRejection>,
) -> Response {
    if let Ok(upgrade) = upgrade {
        return graphql_ws(State(state), headers, credentials, connection, upgrade).await;
    }
    match query.filter(|q| !q.is_empty()) {
        Some(query) => {
            let credentials = match credentials {
                Some(axum::Extension(c)) => c,
                None => Credentials::read(state.auth.as_ref(), &headers).await,
            };
            graphql_over_get(
                &state,
                &headers,
                credentials,
                &query,
                peer_addr(&connection),
            )
            .await
        }
        None => graphiql(&state, &headers, connection.map(|c| c.0 .0)),
    }
}

fn graphiql(state: &AppState, headers: &HeaderMap, peer: Option<std::net::SocketAddr>) -> Response {
    if !state.limits.graphiql {
        return (StatusCode::NOT_FOUND, "GraphiQL is switched off").into_response();
    }
    (
        [
            (header::CONTENT_SECURITY_POLICY, GRAPHIQL_CSP),
            // It may carry a token: never stored, by the browser or on the way.
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(with_session_token(GRAPHIQL_PAGE, state, headers, peer)),
    )
        .into_response()
}

/// `page` with a coordinator token from the development issuer in a `<meta
/// name="careboard-token">` (read by `client.js` and GraphiQL's `init.js`), when the
/// development issuer is the one trusted and the page is asked for on this machine:
/// from a loopback address, by a loopback name (so a page of another site whose name
/// was pointed at 127.0.0.1 gets none). Otherwise the page as it is: it asks for a
/// token.
fn with_session_token(
    page: &'static str,
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> String {
    let Some(issuer) = &state.dev_issuer else {
        return page.to_string();
    };
    let from_loopback = peer.is_some_and(|p| p.ip().is_loopback());
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !from_loopback || !loopback_host(host) {
        return page.to_string();
    }
    let request = crate::identity::dev_issuer::TokenArgs {
        role: crate::identity::Role::Coordinator,
        name: "Coordinator (this machine)".into(),
        subject: Some("dev:local-coordinator".into()),
        provider_id: None,
        patient_id: None,
        regions: vec![],
        specialties: vec![],
        ttl: state.page_token_ttl,
    };
    match issuer.issue(&request) {
        // A JWT is base64url and dots: nothing to escape in an attribute.
        Ok(token) => page.replacen(
            "<head>",
            &format!("<head>\n  <meta name=\"careboard-token\" content=\"{token}\">"),
            1,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot sign a token for the page");
            page.to_string()
        }
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((name, _)) => name,
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn graphiql_asset(
    State(state): State<AppState>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Response {
    let asset = GRAPHIQL_ASSETS.iter().find(|(name, _, _)| *name == file);
    match asset {
        Some((_, content_type, bytes)) if state.limits.graphiql => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *bytes,
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Whether `error` is `RATE_LIMITED`, with its seconds to wait (none when waiting
/// does not help: the request is more than the caller may send at once).
fn rate_limited(error: &ServerError) -> Option<Option<u64>> {
    let extensions = error.extensions.as_ref()?;
    if *extensions.get("code")? != async_graphql::Value::from(ErrorCode::RateLimited.as_str()) {
        return None;
    }
    Some(match extensions.get("retryAfter") {
        Some(async_graphql::Value::Number(n)) => n.as_u64(),
        _ => None,
    })
}

/// A request-level error in GraphQL's response shape (no `data`: nothing ran).
/// Middleware: the router's own refusals (an unknown path, a method a path does not
/// serve) come with an empty body; they get the error body every other refusal has,
/// with its `extensions.code`, and keep their headers (`Allow`).
async fn coded_refusals(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    let bare = response.headers().get(header::CONTENT_TYPE).is_none();
    let (code, message) = match status {
        StatusCode::NOT_FOUND if bare => (
            ErrorCode::NotFound,
            "no such path on this server: see / or /graphql".to_string(),
        ),
        StatusCode::METHOD_NOT_ALLOWED if bare => {
            let allowed = response
                .headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(|v| format!(" (allowed: {v})"))
                .unwrap_or_default();
            (
                ErrorCode::Validation,
                format!("{method} is not served at this path{allowed}"),
            )
        }
        _ => return response,
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut coded = request_error(status, code, message);
    for (name, value) in parts.headers.iter() {
        coded.headers_mut().insert(name.clone(), value.clone());
    }
    coded
}

/// The TIMEOUT message of a request cancelled after `applied` (the positions of the
/// mutations it committed before its time ran out, none under way any more).
fn timed_out(timeout: Duration, applied: &[i64]) -> String {
    let ms = timeout.as_millis();
    match applied {
        [] => format!("the request ran longer than {ms} ms and was cancelled; it changed nothing"),
        [position] => format!(
            "the request ran longer than {ms} ms and was cancelled after its mutation at position {position} was applied; nothing after it was"
        ),
        _ => format!(
            "the request ran longer than {ms} ms and was cancelled after {} of its mutations were applied (positions {}); nothing after them was",
            applied.len(),
            applied.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn request_error(status: StatusCode, code: ErrorCode, message: String) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, Json(body)).into_response()
}

/// The client's address, for access records (when the server was given it).
fn peer_addr(peer: &Peer) -> Option<String> {
    peer.as_ref().map(|c| c.0 .0.to_string())
}

/// Like [`peer_addr`], from a request's extensions.
fn client_addr(extensions: &axum::http::Extensions) -> Option<String> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_string)
}

/// The response media type the client accepts, preferring the one it lists first:
/// `application/graphql-response+json` or `application/json` (also for `*/*` or no
/// `Accept` at all, as the GraphQL-over-HTTP spec asks). `None`: neither (406).
fn response_media(headers: &HeaderMap) -> Option<&'static str> {
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if accept.is_empty() {
        return Some(JSON);
    }
    accept.iter().find_map(|range| {
        let mut parts = range.split(';').map(str::trim);
        let essence = parts.next().unwrap_or_default().to_ascii_lowercase();
        let refused = parts.any(|p| p.replace(' ', "") == "q=0");
        match essence.as_str() {
            _ if refused => None,
            GRAPHQL_RESPONSE_JSON => Some(GRAPHQL_RESPONSE_JSON),
            JSON | "application/*" | "*/*" => Some(JSON),
            _ => None,
        }
    })
}

fn not_acceptable() -> Response {
    (
        StatusCode::NOT_ACCEPTABLE,
        Json(json!({ "errors": [{
            "message": "Careboard answers application/graphql-response+json or application/json: send one of them in Accept",
            "extensions": { "code": ErrorCode::Validation } }] })),
    )
        .into_response()
}

/// POST bodies must be JSON: anything else (a form, `text/plain`) is what a cross-site
/// page can send without asking, so it is refused before it is read (415).
fn json_body(headers: &HeaderMap) -> Option<Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut parts = content_type.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default();
    let charset_ok = parts
        .filter_map(|p| p.strip_prefix("charset="))
        .all(|c| matches!(c.trim_matches('"'), "utf-8" | "utf8"));
    if (essence == JSON || essence == GRAPHQL_RESPONSE_JSON) && charset_ok {
        return None;
    }
    let sent = if content_type.is_empty() {
        "no content-type".to_string()
    } else {
        format!(
            "content-type '{}'",
            content_type.chars().take(100).collect::<String>()
        )
    };
    Some(request_error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::Validation,
        format!("POST /graphql takes a JSON body (content-type: application/json; charset=utf-8), not {sent}"),
    ))
}

async fn graphql_post(State(state): State<AppState>, request: Request<Body>) -> Response {
    let addr = client_addr(request.extensions());
    let (parts, body) = request.into_parts();
    let credentials = Credentials::of(state.auth.as_ref(), &parts).await;
    let headers = parts.headers;
    if !origin_allowed(&state.limits, &headers) {
        return forbidden_origin();
    }
    let Some(media) = response_media(&headers) else {
        return not_acceptable();
    };
    if let Some(refused) = json_body(&headers) {
        return refused;
    }
    let principal = match credentials.principal() {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let limit = state.limits.max_body_bytes;
    // A body sent a byte at a time would hold the connection (and its task) for ever.
    let within = Duration::from_millis(state.limits.request_timeout_ms);
    let bytes = match tokio::time::timeout(within, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return request_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::Validation,
                format!("request body exceeds the limit of {limit} bytes"),
            )
        }
        Err(_) => {
            let e = AppError::Timeout(format!(
                "the request body did not arrive within {} ms",
                within.as_millis()
            ));
            return request_error(StatusCode::REQUEST_TIMEOUT, e.code(), e.public_message());
        }
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        // A batch: its operations would each need the limits, the rate and the access
        // record of a request; one request is one operation here.
        return request_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::Validation,
            "batched requests (a JSON array of operations) are not accepted: send one \
             operation per request, as {\"query\": \"…\"}"
                .into(),
        );
    }
    let gql_request: async_graphql::Request = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return request_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::Validation,
                format!("request body is not a GraphQL request in JSON: {e}"),
            )
        }
    };
    execute(&state, &headers, gql_request, media, false, principal, addr).await
}

/// GET /graphql?query=…&variables=…&operationName=…&extensions=…: queries only (a GET
/// must be safe to repeat and to cache).
async fn graphql_over_get(
    state: &AppState,
    headers: &HeaderMap,
    credentials: Credentials,
    query: &str,
    addr: Option<String>,
) -> Response {
    if !origin_allowed(&state.limits, headers) {
        return forbidden_origin();
    }
    let Some(media) = response_media(headers) else {
        return not_acceptable();
    };
    let principal = match credentials.principal() {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let params: Vec<(String, String)> = match serde_urlencoded_pairs(query) {
        Ok(p) => p,
        Err(e) => return request_error(StatusCode::BAD_REQUEST, ErrorCode::Validation, e),
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let json_param = |name: &str| -> Result<Option<serde_json::Value>, String> {
        match param(name).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Null) => Ok(None),
                Ok(v @ serde_json::Value::Object(_)) => Ok(Some(v)),
                _ => Err(format!("the {name} parameter must be a JSON object")),
            },
        }
    };
    let mut body = serde_json::Map::new();
    body.insert("query".into(), json!(param("query").unwrap_or_default()));
    if let Some(name) = param("operationName").filter(|n| !n.is_empty()) {
        body.insert("operationName".into(), json!(name));
    }
    for name in ["variables", "extensions"] {
        match json_param(name) {
            Ok(Some(v)) => {
                body.insert(name.into(), v);
            }
            Ok(None) => {}
            Err(message) => {
                return request_error(StatusCode::BAD_REQUEST, ErrorCode::Validation, message)
            }
        }
    }
    let request: async_graphql::Request =
        match serde_json::from_value(serde_json::Value::Object(body)) {
            Ok(r) => r,
            Err(e) => {
                return request_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::Validation,
                    format!("not a GraphQL request: {e}"),
                )
            }
        };
    execute(state, headers, request, media, true, principal, addr).await
}

fn serde_urlencoded_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| "the query string is not a valid URI".to_string())?,
    )
    .map(|q| q.0)
    .map_err(|e| format!("the query string is not valid: {e}"))
}

/// Runs one GraphQL request and answers it in the negotiated media type, with the
/// status codes of the GraphQL-over-HTTP spec.
async fn execute(
    state: &AppState,
    headers: &HeaderMap,
    mut gql_request: async_graphql::Request,
    media: &'static str,
    over_get: bool,
    principal: Option<crate::identity::Principal>,
    addr: Option<String>,
) -> Response {
    let persisted = gql_request.extensions.0.contains_key("persistedQuery");
    if gql_request.query.is_empty() && !persisted {
        // Not a well-formed GraphQL-over-HTTP request, whatever the media type.
        return request_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::Validation,
            "the request has no query: send {\"query\": \"…\"} (or a persisted query's hash in extensions.persistedQuery)".into(),
        );
    }
    if let Err(error) = state.persisted.resolve(
        principal.as_ref().map(|p| p.subject.as_str()),
        &mut gql_request,
    ) {
        return error.into_response(media == GRAPHQL_RESPONSE_JSON);
    }
    // Before anything parses the document: deep nesting would overflow the parser's stack.
    if let Err(problem) = crate::limits::check_request(&gql_request, state.limits.max_nesting) {
        return request_error(StatusCode::BAD_REQUEST, ErrorCode::Validation, problem);
    }
    if !state.health.reachable() {
        let e = AppError::unavailable();
        return request_error(
            StatusCode::SERVICE_UNAVAILABLE,
            e.code(),
            e.public_message(),
        );
    }
    let document = if over_get || gql_request.query.contains("__") {
        async_graphql::parser::parse_query(&gql_request.query).ok()
    } else {
        None
    };
    // Before anything walks it with its fragments spelled out (the introspection-only
    // test below, then the schema's own checks).
    if let Some(problem) = document.as_ref().and_then(|d| {
        let max = crate::limits::max_expanded_fields(
            state
                .limits
                .max_complexity
                .max(crate::graphql::INTROSPECTION_MAX_COMPLEXITY),
        );
        crate::limits::check_fragment_expansion(d, max).err()
    }) {
        return request_error(StatusCode::BAD_REQUEST, ErrorCode::Validation, problem);
    }
    let operation_name = gql_request.operation_name.clone();
    if over_get {
        let kind = document
            .as_ref()
            .and_then(|d| crate::graphql::operation(d, operation_name.as_deref()))
            .map(|op| op.ty);
        if matches!(
            kind,
            Some(
                async_graphql::parser::types::OperationType::Mutation
                    | async_graphql::parser::types::OperationType::Subscription
            )
        ) {
            let mut refused = request_error(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Validation,
                "only queries run over GET: send mutations with POST (subscriptions over the websocket at /graphql/ws)".into(),
            );
            refused
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return refused;
        }
    }
    let introspection_only = document
        .as_ref()
        .is_some_and(|d| crate::graphql::is_introspection_only(d, operation_name.as_deref()));
    let context = RequestContext {
        // The verified principal is the actor; no header can say otherwise (with
        // authentication off, nobody in particular).
        actor: match &principal {
            Some(p) => p.subject.clone(),
            None => "anonymous".into(),
        },
        correlation_id: header_text(headers, "x-correlation-id")
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        operation_name,
    };
    let mut gql_request = gql_request.data(context);
    // Who the permission matrix judges: the verified principal, or nobody at all when
    // authentication is off (the authenticator answers `None` only then).
    gql_request = gql_request.data(match &principal {
        Some(p) => crate::graphql::access::Caller::Verified(p.clone()),
        None => crate::graphql::access::Caller::Unchecked,
    });
    // The request itself was counted by the rate limit's middleware; what it holds
    // beyond that (more mutation fields) is spent from the same caller's budget.
    if let Some(charge) =
        crate::limits::RateCharge::of(&state.rate_limiter, principal.as_ref(), addr.as_deref())
    {
        gql_request = gql_request.data(charge);
    }
    if let Some(addr) = addr {
        gql_request = gql_request.data(crate::graphql::access::ClientAddr(addr));
    }
    if let Some(principal) = principal {
        gql_request = gql_request.data(principal);
    }
    // Dropping the execution (time out, or the client went away and axum dropped this
    // handler) drops every resolver's future and with it its SQL; the server login's
    // statement_timeout bounds what PostgreSQL still runs.
    let timeout = Duration::from_millis(state.limits.request_timeout_ms);
    let execution = async {
        if introspection_only {
            state
                .introspection_schema
                .execute(gql_request.only_introspection())
                .await
        } else {
            state.schema.execute(gql_request).await
        }
    };
    // A mutation's append under way when the time runs out is seen through (dropped
    // mid-statement, PostgreSQL might still commit it), so the answer is definite.
    let appends = Arc::new(Appends::default());
    let execution = appends.scope(execution);
    tokio::pin!(execution);
    let mut response = match tokio::time::timeout(timeout, &mut execution).await {
        Ok(response) => response,
        Err(_) => {
            let finished = tokio::select! {
                response = &mut execution => Some(response),
                () = appends.settled() => None,
            };
            match finished {
                Some(response) => response,
                None => {
                    let e = AppError::Timeout(timed_out(timeout, &appends.applied()));
                    return request_error(StatusCode::OK, e.code(), e.public_message());
                }
            }
        }
    };
    crate::graphql::settle_errors(&mut response);
    // A request error (nothing executed: parse, validation, variables) has no path and
    // no data; a field error has a path.
    let request_failed = crate::graphql::request_failed(&response);
    // Refused by the caller's rate before anything ran: 429, as the middleware answers.
    let retry_after = request_failed
        .then(|| response.errors.iter().find_map(rate_limited))
        .flatten();
    let mut answer = if request_failed {
        let status = if retry_after.is_some() {
            StatusCode::TOO_MANY_REQUESTS
        } else if media == GRAPHQL_RESPONSE_JSON {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        // Serialized as they are (a JSON value would sort the fields).
        #[derive(serde::Serialize)]
        struct RequestErrors<'a> {
            errors: &'a [ServerError],
        }
        (
            status,
            Json(RequestErrors {
                errors: &response.errors,
            }),
        )
            .into_response()
    } else {
        (StatusCode::OK, Json(response)).into_response()
    };
    let answer_headers = answer.headers_mut();
    answer_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if media == GRAPHQL_RESPONSE_JSON {
            "application/graphql-response+json; charset=utf-8"
        } else {
            "application/json; charset=utf-8"
        }),
    );
    answer_headers.append(header::VARY, HeaderValue::from_static("accept"));
    if let Some(Some(wait)) = retry_after {
        answer_headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
    }
    if over_get {
        // Cacheable by the browser that asked (it is that user's data), never by a
        // shared cache.
        answer_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
    answer
}

/// Answers at once from the prober's last look (never waits behind the pool).
async fn readyz(State(state): State<AppState>) -> Response {
    let (status, text) = match state.health.state() {
        DbState::Ready => (StatusCode::OK, "ready"),
        DbState::MigrationsPending => (StatusCode::SERVICE_UNAVAILABLE, "migrations pending"),
        DbState::Unreachable => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable"),
    };
    (status, Json(json!({ "status": text }))).into_response()
}

/// `/metrics` on the API's address: as the matrix says (admins, when authentication is on),
/// or not here at all when it has an address of its own (`--metrics-bind`).
async fn metrics(State(state): State<AppState>, request: Request<Body>) -> Response {
    if state.metrics_elsewhere {
        return (
            StatusCode::NOT_FOUND,
            "metrics are served on the metrics address (--metrics-bind)",
        )
            .into_response();
    }
    let (parts, _) = request.into_parts();
    if let Err(refused) = Credentials::of(state.auth.as_ref(), &parts)
        .await
        .may(Operation::Metrics)
    {
        return refused.into_response();
    }
    render_metrics(&state).await
}

/// The router of the metrics address (`--metrics-bind`): `/metrics` for the scraper,
/// without a token (the address is meant for a private network), and `/healthz`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(state): State<AppState>| async move { render_metrics(&state).await }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

async fn render_metrics(state: &AppState) -> Response {
    // Projection lag and dead letters are read from the database at each scrape.
    match crate::projector::state::status(&state.pool).await {
        Ok(statuses) => {
            for s in statuses
                .iter()
                .filter(|s| s.state == crate::projector::state::GenerationStatus::Live.as_str())
            {
                state.metrics.set_projection_lag(
                    &s.name,
                    s.lag_events,
                    s.lag_seconds,
                    s.dead_letters,
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read projection status for metrics"),
    }
    let body = state.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// GraphQL over websocket: `graphql-transport-ws` and the legacy
/// `subscriptions-transport-ws`, chosen by the `Sec-WebSocket-Protocol` header.
async fn graphql_ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    credentials: Option<axum::Extension<Credentials>>,
    connection: Peer,
    upgrade: crate::websocket::Upgrade,
) -> Response {
    // Browsers let any page open a websocket anywhere; only the Origin tells them apart.
    if !origin_allowed(&state.limits, &headers) {
        return forbidden_origin();
    }
    // A token in the upgrade request's Authorization header is checked now (a bad one
    // is refused before the upgrade); without one, the token comes in connection_init
    // (browsers cannot set headers on a websocket).
    let credentials = match credentials {
        Some(axum::Extension(c)) => c,
        None => Credentials::read(state.auth.as_ref(), &headers).await,
    };
    let from_upgrade = match credentials {
        Credentials::Off | Credentials::Refused(crate::identity::AuthError::Missing) => None,
        Credentials::Verified {
            principal,
            expires_at,
        } => Some((principal, expires_at)),
        Credentials::Refused(error) => return crate::identity::edge::refusal(&error),
    };
    let addr = peer_addr(&connection);
    let offered = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok());
    let protocol = offered.unwrap_or(WebSocketProtocols::GraphQLWS);
    // Small buffers: an idle subscriber should cost kilobytes, not the 128 KiB the
    // websocket library reserves by default. Nothing is buffered on the way out: each
    // message goes straight to the socket's queue, in order with its groups' frames.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(state.limits.max_body_bytes))
        .max_frame_size(Some(state.limits.max_body_bytes));
    upgrade.serve(
        offered,
        config,
        state.limits.ws_socket_io,
        move |socket, out| {
            Box::pin(crate::websocket::serve_socket(
                socket,
                out,
                state,
                protocol,
                from_upgrade,
                addr,
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn only_loopback_names_count_as_this_machine() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "10.0.0.5:8080",
            "[::2]:8080",
            "[::1",
            "0.0.0.0:8080",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }
}

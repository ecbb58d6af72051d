//! The axum router: /graphql (POST queries, GET GraphiQL), health and readiness.

use async_graphql::http::GraphiQLSource;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::trace::TraceLayer;

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use async_graphql::http::{WebSocketProtocols, ALL_WEBSOCKET_PROTOCOLS};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;

use crate::error::AppError;
use crate::graphql::RequestContext;
use crate::health::DbState;

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

/// The pages with their Content-Security-Policy (see `limits::page_policy`).
fn page(html: &'static str, policy: &'static LazyLock<String>) -> Response {
    (
        [(axum::http::header::CONTENT_SECURITY_POLICY, policy.as_str())],
        Html(html),
    )
        .into_response()
}
static BOARD_POLICY: LazyLock<String> = LazyLock::new(|| crate::limits::page_policy(BOARD_PAGE));
static BOARDS_POLICY: LazyLock<String> = LazyLock::new(|| crate::limits::page_policy(BOARDS_PAGE));

pub use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/graphql") }))
        .route("/graphql", get(graphiql_or_ws).post(graphql))
        .route("/graphql/ws", get(graphql_ws))
        .route_layer(axum::middleware::from_fn_with_state(
            state.rate_limiter.clone(),
            crate::limits::rate_limit,
        ))
        .route(
            "/boards",
            get(|| async { page(BOARDS_PAGE, &BOARDS_POLICY) }),
        )
        .route(
            "/boards/{id}",
            get(|| async { page(BOARD_PAGE, &BOARD_POLICY) }),
        )
        .route("/static/{file}", get(static_file))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(crate::limits::security_headers))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// GET /graphql: a websocket upgrade speaks GraphQL; a browser gets GraphiQL.
async fn graphiql_or_ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match upgrade {
        Ok(upgrade) => graphql_ws(State(state), headers, upgrade).await,
        Err(_) => graphiql(State(state)).await,
    }
}

async fn graphiql(State(state): State<AppState>) -> Response {
    if !state.limits.graphiql {
        return (StatusCode::NOT_FOUND, "GraphiQL is switched off").into_response();
    }
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .finish(),
    )
    .into_response()
}

/// A request-level error in GraphQL's response shape.
fn request_error(status: StatusCode, message: String) -> Response {
    coded_error(status, "VALIDATION", message)
}

fn coded_error(status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, Json(body)).into_response()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_string)
}

async fn graphql(State(state): State<AppState>, request: Request<Body>) -> Response {
    let headers = request.headers().clone();
    let principal = match crate::identity::edge::authenticate(state.auth.as_ref(), &headers).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    let limit = state.limits.max_body_bytes;
    let bytes = match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(b) => b,
        Err(_) => {
            return request_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds the limit of {limit} bytes"),
            )
        }
    };
    let gql_request: async_graphql::Request = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return request_error(
                StatusCode::BAD_REQUEST,
                format!("request body is not a GraphQL request in JSON: {e}"),
            )
        }
    };
    if let Err(problem) = crate::limits::check_request(&gql_request, state.limits.max_nesting) {
        return request_error(StatusCode::BAD_REQUEST, problem);
    }
    if !state.health.reachable() {
        let e = AppError::unavailable();
        return coded_error(
            StatusCode::SERVICE_UNAVAILABLE,
            e.code(),
            e.public_message(),
        );
    }
    let context = RequestContext {
        // A verified principal is the actor; no header can say otherwise.
        actor: match &principal {
            Some(p) => p.subject.clone(),
            None => header(&headers, "x-actor").unwrap_or_else(|| "anonymous".into()),
        },
        correlation_id: header(&headers, "x-correlation-id")
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        operation_name: gql_request.operation_name.clone(),
    };
    let mut gql_request = gql_request.data(context);
    if let Some(principal) = principal {
        gql_request = gql_request.data(principal);
    }
    // Dropping the execution (time out, or the client went away and axum dropped this
    // handler) drops every resolver's future and with it its SQL; the server login's
    // statement_timeout bounds what PostgreSQL still runs.
    let timeout = Duration::from_millis(state.limits.request_timeout_ms);
    let execution = state.schema.execute(gql_request);
    let Ok(mut response) = tokio::time::timeout(timeout, execution).await else {
        let e = AppError::Timeout(format!(
            "the request ran longer than {} ms and was cancelled",
            timeout.as_millis()
        ));
        return coded_error(StatusCode::OK, e.code(), e.public_message());
    };
    // Errors raised before any resolver ran (parse, validation, limits, input coercion)
    // carry no code: they are all bad input.
    for error in &mut response.errors {
        let has_code = error
            .extensions
            .as_ref()
            .is_some_and(|ext| ext.get("code").is_some());
        if !has_code {
            error
                .extensions
                .get_or_insert_with(Default::default)
                .set("code", "VALIDATION");
        }
    }
    Json(response).into_response()
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

async fn metrics(State(state): State<AppState>) -> Response {
    // Projection lag and dead letters are read from the database at each scrape.
    match crate::projector::state::status(&state.pool).await {
        Ok(statuses) => {
            for s in statuses.iter().filter(|s| s.state == "live") {
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
            axum::http::header::CONTENT_TYPE,
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
    upgrade: WebSocketUpgrade,
) -> Response {
    // Until sockets carry their principal, authentication refuses the upgrade itself.
    if let Err(refusal) = crate::identity::edge::authenticate(state.auth.as_ref(), &headers).await {
        return refusal;
    }
    let protocol = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
        .unwrap_or(WebSocketProtocols::GraphQLWS);
    // Small buffers: an idle subscriber should cost kilobytes, not the 128 KiB the
    // websocket library reserves by default.
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_message_size(state.limits.max_body_bytes)
        .max_frame_size(state.limits.max_body_bytes)
        .on_upgrade(move |socket| crate::websocket::serve_socket(socket, state, protocol))
}

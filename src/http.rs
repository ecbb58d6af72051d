//! The axum router: /graphql (POST queries, GET GraphiQL), health and readiness.

use std::sync::Arc;

use async_graphql::http::GraphiQLSource;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tower_http::trace::TraceLayer;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_graphql::http::{WebSocketProtocols, WsMessage, ALL_WEBSOCKET_PROTOCOLS};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};

use crate::config::GraphqlLimits;
use crate::event_store::EventStore;
use crate::graphql::subscription::SubscriptionBudget;
use crate::graphql::{CareboardSchema, RequestContext};
use crate::live::LiveBoards;
use crate::metrics::Metrics;

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

#[derive(Clone)]
pub struct AppState {
    pub schema: CareboardSchema,
    pub pool: PgPool,
    pub limits: Arc<GraphqlLimits>,
    pub store: EventStore,
    pub metrics: Arc<Metrics>,
    pub live: LiveBoards,
    /// The one wait-time estimator (its caches) shared by queries and the matcher.
    pub estimator: crate::estimates::Estimator,
    /// Bearer token verification; `None` serves anonymous requests (`--auth off`).
    pub auth: Option<crate::identity::Verifier>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/graphql") }))
        .route("/graphql", get(graphiql_or_ws).post(graphql))
        .route("/graphql/ws", get(graphql_ws))
        .route("/boards", get(|| async { Html(BOARDS_PAGE) }))
        .route("/boards/{id}", get(|| async { Html(BOARD_PAGE) }))
        .route("/static/{file}", get(static_file))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
    let body =
        json!({ "errors": [{ "message": message, "extensions": { "code": "VALIDATION" } }] });
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
    let mut response = state.schema.execute(gql_request).await;
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

async fn readyz(State(state): State<AppState>) -> Response {
    match crate::postgres::migrations_applied(&state.pool).await {
        Ok(true) => (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response(),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "migrations pending" })),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "database unreachable" })),
            )
                .into_response()
        }
    }
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
        .on_upgrade(move |socket| serve_socket(socket, state, protocol))
}

async fn serve_socket(socket: WebSocket, state: AppState, protocol: WebSocketProtocols) {
    use futures::{SinkExt, StreamExt};
    let (mut sink, mut source) = socket.split();
    let (to_graphql, from_client) = futures::channel::mpsc::unbounded::<Vec<u8>>();
    let initialized = Arc::new(AtomicBool::new(false));
    let init_flag = initialized.clone();
    let max_subscriptions = state.limits.max_subscriptions_per_socket;
    let on_init = move |payload: serde_json::Value| async move {
        init_flag.store(true, Ordering::SeqCst);
        let mut data = async_graphql::Data::default();
        data.insert(SubscriptionBudget::new(max_subscriptions));
        data.insert(RequestContext {
            actor: payload
                .get("actor")
                .and_then(|a| a.as_str())
                .unwrap_or("anonymous")
                .chars()
                .take(200)
                .collect(),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            operation_name: None,
        });
        Ok(data)
    };
    let mut graphql =
        async_graphql::http::WebSocket::new(state.schema.clone(), from_client, protocol)
            .on_connection_init(on_init)
            .keepalive_timeout(Some(Duration::from_secs(60)));
    let init_deadline = tokio::time::sleep(Duration::from_millis(state.limits.ws_init_timeout_ms));
    tokio::pin!(init_deadline);
    let mut keepalive = tokio::time::interval(Duration::from_secs(15));
    keepalive.tick().await;
    loop {
        tokio::select! {
            frame = source.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let _ = to_graphql.unbounded_send(text.as_bytes().to_vec());
                }
                Some(Ok(Message::Binary(bytes))) => {
                    let _ = to_graphql.unbounded_send(bytes.to_vec());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
            out = graphql.next() => match out {
                Some(WsMessage::Text(text)) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(WsMessage::Close(code, reason)) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame { code, reason: reason.into() })))
                        .await;
                    break;
                }
                None => break,
            },
            _ = &mut init_deadline, if !initialized.load(Ordering::SeqCst) => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: 4408,
                        reason: "Connection initialisation timeout".into(),
                    })))
                    .await;
                break;
            }
            _ = keepalive.tick() => {
                // Transport-level keep-alive, understood by every client and proxy.
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
}

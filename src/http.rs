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

use crate::config::GraphqlLimits;
use crate::event_store::EventStore;
use crate::graphql::{CareboardSchema, RequestContext};
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub schema: CareboardSchema,
    pub pool: PgPool,
    pub limits: Arc<GraphqlLimits>,
    pub store: EventStore,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/graphql") }))
        .route("/graphql", get(graphiql).post(graphql))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn graphiql(State(state): State<AppState>) -> Response {
    if !state.limits.graphiql {
        return (StatusCode::NOT_FOUND, "GraphiQL is switched off").into_response();
    }
    Html(GraphiQLSource::build().endpoint("/graphql").finish()).into_response()
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
        actor: header(&headers, "x-actor").unwrap_or_else(|| "anonymous".into()),
        correlation_id: header(&headers, "x-correlation-id")
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        operation_name: gql_request.operation_name.clone(),
    };
    let mut response = state.schema.execute(gql_request.data(context)).await;
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
    let body = state.metrics.render(&state.pool).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

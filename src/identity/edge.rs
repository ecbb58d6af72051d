//! Authentication at the HTTP edge: `Authorization: Bearer` → [`Principal`], or a 401
//! that says what is wrong (RFC 6750) in GraphQL's error shape.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{AuthError, Principal, Verifier};

/// The principal of a request when authentication is on (`Ok(None)` when it is off),
/// or the response refusing it.
pub async fn authenticate(
    verifier: Option<&Verifier>,
    headers: &HeaderMap,
) -> Result<Option<Principal>, Response> {
    let Some(verifier) = verifier else {
        return Ok(None);
    };
    let value = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => match v.to_str() {
            Ok(v) => Some(v),
            Err(_) => return Err(refusal(&AuthError::Malformed)),
        },
    };
    verifier
        .verify_header(value)
        .await
        .map(Some)
        .map_err(|e| refusal(&e))
}

/// 401 with `WWW-Authenticate: Bearer` (503 when the provider's keys are unreachable),
/// and `extensions.code` `UNAUTHENTICATED`.
pub fn refusal(error: &AuthError) -> Response {
    let message = error.to_string();
    let status = if error.is_server_side() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::UNAUTHORIZED
    };
    let challenge = match error {
        // No credentials: a bare challenge (RFC 6750 §3.1).
        AuthError::Missing => r#"Bearer realm="careboard""#.to_string(),
        _ => format!(
            r#"Bearer realm="careboard", error="invalid_token", error_description="{}""#,
            message.replace(['"', '\\'], "'")
        ),
    };
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": crate::error::ErrorCode::Unauthenticated } }] });
    let mut response = (status, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// With the development issuer, only loopback addresses: its tokens are minted by
/// anyone who can run `careboard token` on this machine.
pub async fn check_bind(bind: &str, uses_provider: bool) -> anyhow::Result<()> {
    if uses_provider {
        return Ok(());
    }
    let addrs: Vec<_> = tokio::net::lookup_host(bind).await?.collect();
    if addrs.iter().any(|a| !a.ip().is_loopback()) {
        anyhow::bail!(
            "{bind} is reachable from other machines, and no identity provider is configured \
             (tokens come from the development issuer). Configure one with \
             CAREBOARD_OIDC_ISSUER and CAREBOARD_OIDC_AUDIENCE (see the README's \"Roles\"), \
             or bind to 127.0.0.1"
        );
    }
    Ok(())
}

//! Authentication at the HTTP edge: `Authorization: Bearer` → [`Principal`], or a 401
//! that says what is wrong (RFC 6750) in GraphQL's error shape.
//!
//! The header is verified once per request, by the [`credentials`] middleware, before
//! the rate limit (which keys a verified caller by subject) and the handlers (which
//! answer a refusal after their own origin and media-type checks).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::matrix::{self, Facts, Forbidden, Operation};
use super::{AuthError, Principal, Verifier};

/// What a request's `Authorization` header proved.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Authentication is off (`--auth off`, loopback only): nobody in particular.
    Off,
    /// A verified token: who, and when it expires (Unix seconds).
    Verified {
        principal: Principal,
        expires_at: i64,
    },
    /// No token, or one that does not verify.
    Refused(AuthError),
}

impl Credentials {
    /// Verifies the `Authorization` header of `headers` (if authentication is on).
    pub async fn read(verifier: Option<&Verifier>, headers: &HeaderMap) -> Credentials {
        let Some(verifier) = verifier else {
            return Credentials::Off;
        };
        if headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .nth(1)
            .is_some()
        {
            return Credentials::Refused(AuthError::SeveralHeaders);
        }
        let value = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => match v.to_str() {
                Ok(v) => Some(v),
                Err(_) => return Credentials::Refused(AuthError::Malformed),
            },
        };
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Credentials::Refused(AuthError::Missing);
        };
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Credentials::Refused(AuthError::NotBearer),
        };
        match verifier.verify_expiring(token).await {
            Ok((principal, expires_at)) => Credentials::Verified {
                principal,
                expires_at,
            },
            Err(error) => Credentials::Refused(error),
        }
    }

    /// The credentials the middleware stored on `request`, or read now.
    pub async fn of(verifier: Option<&Verifier>, request: &axum::http::request::Parts) -> Self {
        match request.extensions.get::<Credentials>() {
            Some(c) => c.clone(),
            None => Credentials::read(verifier, &request.headers).await,
        }
    }

    /// The verified subject, if any (the rate limit's key).
    pub fn subject(&self) -> Option<&str> {
        match self {
            Credentials::Verified { principal, .. } => Some(&principal.subject),
            _ => None,
        }
    }

    /// The principal of a request that may proceed (`Ok(None)` with authentication
    /// off), or why it may not (a 401).
    pub fn principal(&self) -> Result<Option<Principal>, Refused> {
        match self {
            Credentials::Off => Ok(None),
            Credentials::Verified { principal, .. } => Ok(Some(principal.clone())),
            Credentials::Refused(error) => Err(Refused::Unauthenticated(error.clone())),
        }
    }

    /// Like [`Credentials::principal`], for an operation served outside GraphQL
    /// (`/metrics`), judged by the matrix: 401 without a valid token, 403 when the
    /// principal's role may not.
    pub fn may(&self, operation: Operation) -> Result<(), Refused> {
        match self.principal()? {
            None => Ok(()),
            Some(p) => {
                matrix::authorize(&p, operation, &Facts::default()).map_err(Refused::Forbidden)
            }
        }
    }
}

/// Why the edge refuses a request; answered as a response.
#[derive(Debug, Clone)]
pub enum Refused {
    /// 401 with `WWW-Authenticate: Bearer` (503 when the provider's keys are unreachable).
    Unauthenticated(AuthError),
    /// 403: authenticated, but the matrix does not allow this role.
    Forbidden(Forbidden),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Unauthenticated(error) => refusal(&error),
            Refused::Forbidden(forbidden) => {
                let body = json!({ "errors": [{
                    "message": forbidden.to_string(),
                    "extensions": { "code": crate::error::ErrorCode::Forbidden } }] });
                (StatusCode::FORBIDDEN, Json(body)).into_response()
            }
        }
    }
}

/// Middleware: verifies the request's bearer token once and stores the
/// [`Credentials`] in its extensions for the rate limit and the handler.
pub async fn credentials(
    State(verifier): State<Option<Verifier>>,
    mut request: Request,
    next: Next,
) -> Response {
    let credentials = Credentials::read(verifier.as_ref(), request.headers()).await;
    request.extensions_mut().insert(credentials);
    next.run(request).await
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
        // Another scheme is answered as no credentials at all (RFC 6750, 3.1).
        AuthError::Missing | AuthError::NotBearer => r#"Bearer realm="careboard""#.to_string(),
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

/// Whether every address `bind` names is a loopback address.
async fn loopback_only(bind: &str) -> anyhow::Result<bool> {
    let addrs: Vec<_> = tokio::net::lookup_host(bind).await?.collect();
    Ok(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()))
}

/// With the development issuer, only loopback addresses: its tokens are minted by
/// anyone who can run `careboard token` on this machine.
pub async fn check_bind(bind: &str, uses_provider: bool) -> anyhow::Result<()> {
    if uses_provider || loopback_only(bind).await? {
        return Ok(());
    }
    anyhow::bail!(
        "{bind} is reachable from other machines, and no identity provider is configured \
         (tokens come from the development issuer). Configure one with \
         CAREBOARD_OIDC_ISSUER and CAREBOARD_OIDC_AUDIENCE (see the README's \"Roles\"), \
         or bind to 127.0.0.1"
    )
}

/// `--auth off` serves anyone without a token: only on loopback addresses.
pub async fn check_bind_without_auth(bind: &str) -> anyhow::Result<()> {
    if loopback_only(bind).await? {
        return Ok(());
    }
    anyhow::bail!(
        "--auth off (CAREBOARD_AUTH=off) answers anyone without a token, so it is refused on \
         {bind}, which other machines can reach. It is for development on this machine: \
         bind to 127.0.0.1, or leave authentication on (the default) and configure an \
         identity provider with CAREBOARD_OIDC_ISSUER and CAREBOARD_OIDC_AUDIENCE (see the \
         README's \"Roles\")"
    )
}

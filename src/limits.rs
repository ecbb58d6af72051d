//! Guards that keep any one request from taking the service down: nesting checked
//! before the recursive parser sees a document, a cap on the pool connections one
//! request may hold, per-client rate limits, and security headers on HTML pages.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextResolve, ResolveInfo,
};
use async_graphql::{ServerResult, Value};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde_json::json;
use tokio::sync::Semaphore;

/// Refuses a document whose brackets (`{`, `[`, `(`) nest deeper than `max`, without
/// parsing it: async-graphql's parser recurses once per level, and a few kilobytes of
/// `[[[[…` overflow a thread's stack. Strings, block strings and comments are skipped.
pub fn check_document_nesting(query: &str, max: usize) -> Result<(), String> {
    let bytes = query.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    // `\"""` is an escaped triple quote inside a block string.
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max {
                    return Err(too_deep("the document", max));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Refuses variables whose lists and objects nest deeper than `max` (coercing and
/// dropping them recurses too).
pub fn check_variables_nesting(
    variables: &async_graphql::Variables,
    max: usize,
) -> Result<(), String> {
    let mut stack: Vec<(&Value, usize)> = variables.values().map(|v| (v, 1)).collect();
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::List(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth > max {
            return Err(too_deep("the variables", max));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(())
}

/// Both checks, for a request about to be executed.
pub fn check_request(request: &async_graphql::Request, max: usize) -> Result<(), String> {
    check_document_nesting(&request.query, max)?;
    check_variables_nesting(&request.variables, max)
}

fn too_deep(what: &str, max: usize) -> String {
    format!("{what} nests deeper than {max} levels")
}

/// Caps the root fields of one request that run at once (async-graphql resolves the
/// root fields of a query concurrently, so 999 aliases would otherwise take 999 pool
/// connections). Each root field holds a permit while it and its children resolve.
pub struct ConnectionCap(pub usize);

impl ExtensionFactory for ConnectionCap {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ConnectionCapExtension(Semaphore::new(self.0.max(1))))
    }
}

struct ConnectionCapExtension(Semaphore);

#[async_trait::async_trait]
impl Extension for ConnectionCapExtension {
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        if info.path_node.parent.is_some() {
            return next.run(ctx, info).await;
        }
        let _permit = self.0.acquire().await;
        next.run(ctx, info).await
    }
}

/// Whose requests a rate limit counts together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// A verified token's subject: one person, whichever address they come from, and
    /// apart from others behind the same address (a clinic's NAT, a proxy).
    Subject(String),
    /// Requests without a verified token, by address.
    Address(IpAddr),
}

/// Requests per client (verified subject, else address), as a token bucket:
/// `per_second` sustained, `burst` at once.
#[derive(Clone)]
pub struct RateLimiter {
    limiter: Option<Arc<DefaultKeyedRateLimiter<Client>>>,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            let limiter = Arc::new(DefaultKeyedRateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ));
            // Forget clients whose buckets are full again, so memory follows the
            // clients of the last minute, not every address ever seen.
            let weak = Arc::downgrade(&limiter);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
                    loop {
                        tick.tick().await;
                        let Some(limiter) = weak.upgrade() else { break };
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                });
            }
            limiter
        });
        Self { limiter }
    }

    /// `Err(seconds to wait)` when `client` is over its rate.
    pub fn check(&self, client: Client) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// Middleware: 429 with `Retry-After` and a `RATE_LIMITED` GraphQL error when the
/// client (its verified subject, else its address) is over its rate. Runs after the
/// bearer token is verified ([`crate::identity::edge::credentials`]).
pub async fn rate_limit(
    State(limiter): State<RateLimiter>,
    request: Request,
    next: Next,
) -> Response {
    let subject = request
        .extensions()
        .get::<crate::identity::edge::Credentials>()
        .and_then(|c| c.subject())
        .map(|s| Client::Subject(s.to_string()));
    let client = subject.or_else(|| {
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| Client::Address(addr.ip()))
    });
    if let Some(client) = client {
        let by_subject = matches!(client, Client::Subject(_));
        if let Err(wait) = limiter.check(client) {
            let wait = wait.max(1);
            let body = json!({ "errors": [{
                "message": if by_subject {
                    format!("too many requests from this caller; retry in {wait} s")
                } else {
                    format!("too many requests from this address; retry in {wait} s")
                },
                "extensions": { "code": crate::error::ErrorCode::RateLimited }
            }] });
            let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return response;
        }
    }
    next.run(request).await
}

/// Middleware: `nosniff` on every response; on HTML pages no framing and, unless the
/// page set its own, a policy that allows nothing but framing rules.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("frame-ancestors 'none'"),
            );
        }
    }
    response
}

/// The Content-Security-Policy of a page of ours: scripts and styles from our own
/// origin (and an inline script only by its hash), same-origin requests; never framed.
pub fn page_policy(page: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut hashes = String::new();
    let mut rest = page;
    while let Some(start) = rest.find("<script>") {
        let after = &rest[start + "<script>".len()..];
        let Some(end) = after.find("</script>") else {
            break;
        };
        let digest = sha2::Sha256::digest(&after.as_bytes()[..end]);
        hashes.push_str(&format!(
            " 'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &after[end..];
    }
    format!(
        "default-src 'self'; script-src 'self'{hashes}; style-src 'self'; \
         img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        assert!(check_document_nesting("{ a { b { c } } }", 3).is_ok());
        assert!(check_document_nesting("{ a { b { c { d } } } }", 3).is_err());
        let quoted = format!("{{ a(s: \"{}\") }}", "[".repeat(100));
        assert!(check_document_nesting(&quoted, 3).is_ok());
        let block = format!("{{ a(s: \"\"\"{}\\\"\"\"\"\"\") }}", "{".repeat(100));
        assert!(check_document_nesting(&block, 3).is_ok());
        let comment = format!("# {}\n{{ a }}", "(".repeat(100));
        assert!(check_document_nesting(&comment, 3).is_ok());
        let list = format!("{{ a(x: {}1{}) }}", "[".repeat(10), "]".repeat(10));
        assert!(check_document_nesting(&list, 8).is_err());
    }

    #[test]
    fn variables_nesting_is_counted() {
        let vars = |v: serde_json::Value| async_graphql::Variables::from_json(json!({ "v": v }));
        assert!(check_variables_nesting(&vars(json!([[1]])), 2).is_ok());
        assert!(check_variables_nesting(&vars(json!([[[1]]])), 2).is_err());
        assert!(check_variables_nesting(&vars(json!({"a": {"b": {"c": 1}}})), 2).is_err());
    }

    #[test]
    fn a_page_policy_allows_exactly_its_own_scripts() {
        let policy = page_policy("<p><script>alert(1)</script><script>x()</script>");
        assert_eq!(policy.matches("'sha256-").count(), 2);
        assert!(!policy.contains("script-src 'self' 'unsafe-inline'"));
    }
}

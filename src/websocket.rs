//! One GraphQL websocket: the protocol engine is async-graphql's; this loop stands in
//! front of it and keeps a socket from hurting the server.
//!
//! - Inbound messages wait in a bounded queue; when it is full the socket is not read
//!   (TCP pushes back on the client) instead of buffering without end.
//! - `subscribe` is checked here, before any query runs: before `connection_init` →
//!   close 4401; an id already in use → 4409; past the per-socket budget → 4429; a
//!   document nested too deep → an `error` for that id (the parser never sees it).
//! - Who is asking: the bearer token comes in `connection_init`'s payload
//!   (`{"Authorization": "Bearer …"}`, `{"authorization": …}` or `{"token": …}`) or the
//!   upgrade request's `Authorization` header, and is verified before the server
//!   acknowledges. No valid token: graphql-transport-ws closes with 4403 (the spec's
//!   code for a refused `connection_init`; the reference `graphql-ws` client retries
//!   it, asking its `connectionParams` again, where 4401 would end it for good); the
//!   legacy protocol gets a `connection_error`, then the same close. When the token
//!   expires the server closes the socket (4403, "token expired") and the client
//!   resumes on a new one with a fresh token (`sinceVersion` / `after`). The
//!   principal is in every subscription's request data.
//! - Liveness is the server's job: it pings every interval, and any frame from the
//!   client (a pong included) counts. A socket silent for three intervals is closed
//!   (3008); a client that only listens is never timed out.

use std::collections::HashSet;
use std::time::Duration;

use async_graphql::http::{WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::graphql::subscription::SubscriptionBudget;
use crate::graphql::RequestContext;
use crate::identity::{AuthError, Principal};
use crate::state::AppState;

/// The close code for a socket without a valid token, or whose token expired.
pub const CLOSE_UNAUTHENTICATED: u16 = 4403;
/// The close code when tokens cannot be verified now (the identity provider's keys are
/// unreachable): "try again later", which clients retry.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// What to do with one inbound text message.
enum Inbound {
    Forward,
    /// The first `connection_init`, with its payload: authenticate, then forward.
    Init(Value),
    /// Answer with this message and forward nothing.
    Reply(String),
    Close(u16, &'static str),
}

/// The socket-level view of the conversation.
struct Gate {
    legacy: bool,
    init_received: bool,
    active: HashSet<String>,
    max_subscriptions: usize,
    max_nesting: usize,
}

impl Gate {
    fn inbound(&mut self, bytes: &[u8]) -> Inbound {
        // serde_json refuses JSON nested past 128 levels; async-graphql then closes
        // the socket (1002) for a malformed message.
        let Ok(message) = serde_json::from_slice::<Value>(bytes) else {
            return Inbound::Forward;
        };
        let id = message["id"].as_str().map(str::to_string);
        match message["type"].as_str() {
            // A second one is forwarded: the protocol engine closes for it (4429).
            Some("connection_init") if !self.init_received => {
                Inbound::Init(message.get("payload").cloned().unwrap_or(Value::Null))
            }
            Some("subscribe" | "start") => {
                if !self.init_received {
                    return Inbound::Close(4401, "Unauthorized");
                }
                let Some(id) = id else {
                    return Inbound::Forward;
                };
                if self.active.contains(&id) {
                    return Inbound::Close(4409, "Subscriber for this id already exists");
                }
                if self.active.len() >= self.max_subscriptions {
                    return Inbound::Close(4429, "Too many subscriptions on this connection");
                }
                if let Err(problem) = self.check_nesting(&message["payload"]) {
                    return Inbound::Reply(self.error(&id, &problem));
                }
                self.active.insert(id);
                Inbound::Forward
            }
            Some("complete" | "stop") => {
                if let Some(id) = id {
                    self.active.remove(&id);
                }
                Inbound::Forward
            }
            _ => Inbound::Forward,
        }
    }

    /// Notes subscriptions that ended on the server's side.
    fn outbound(&mut self, text: &str) {
        if !text.contains("\"complete\"") && !text.contains("\"error\"") {
            return;
        }
        if let Ok(message) = serde_json::from_str::<Value>(text) {
            if matches!(message["type"].as_str(), Some("complete" | "error")) {
                if let Some(id) = message["id"].as_str() {
                    self.active.remove(id);
                }
            }
        }
    }

    fn check_nesting(&self, payload: &Value) -> Result<(), String> {
        if let Some(query) = payload["query"].as_str() {
            crate::limits::check_document_nesting(query, self.max_nesting)?;
        }
        let variables = async_graphql::Variables::from_json(payload["variables"].clone());
        crate::limits::check_variables_nesting(&variables, self.max_nesting)
    }

    fn error(&self, id: &str, message: &str) -> String {
        let error = json!({ "message": message, "extensions": { "code": crate::error::ErrorCode::Validation } });
        let payload = if self.legacy { error } else { json!([error]) };
        json!({ "id": id, "type": "error", "payload": payload }).to_string()
    }
}

/// The token a `connection_init` payload carries, if any: `Authorization` or
/// `authorization` (`Bearer …`), or `token` (the token itself).
fn payload_token(payload: &Value) -> Option<Result<String, AuthError>> {
    let value = ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|key| payload.get(*key).map(|v| (*key, v)))?;
    let Some(text) = value.1.as_str() else {
        return Some(Err(AuthError::Malformed));
    };
    let text = text.trim();
    let token = if value.0 == "token" {
        text.strip_prefix("Bearer ").unwrap_or(text)
    } else {
        match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token,
            _ => return Some(Err(AuthError::Malformed)),
        }
    };
    Some(Ok(token.trim().to_string()))
}

/// Errors of an outbound `next`/`data`/`error` message without `extensions.code` get
/// VALIDATION, as over HTTP: resolvers' errors all carry a code, so one without is the
/// schema refusing the document or its variables (parse, validation, coercion).
fn with_error_codes(text: String) -> String {
    if !text.contains("\"errors\"") && !text.contains("\"type\":\"error\"") {
        return text;
    }
    let Ok(mut message) = serde_json::from_str::<Value>(&text) else {
        return text;
    };
    let kind = message["type"].as_str().map(str::to_string);
    let payload = &mut message["payload"];
    let errors: Vec<&mut Value> = match kind.as_deref() {
        Some("error") => match payload {
            Value::Array(errors) => errors.iter_mut().collect(),
            Value::Object(_) => vec![payload],
            _ => Vec::new(),
        },
        Some("next" | "data") => match &mut payload["errors"] {
            Value::Array(errors) => errors.iter_mut().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let mut changed = false;
    for error in errors {
        let Value::Object(fields) = error else {
            continue;
        };
        let extensions = fields
            .entry("extensions")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(extensions) = extensions {
            if !extensions.contains_key("code") {
                extensions.insert("code".into(), json!(crate::error::ErrorCode::Validation));
                changed = true;
            }
        }
    }
    if changed {
        message.to_string()
    } else {
        text
    }
}

/// A verified principal and the Unix time its token expires.
pub type Authenticated = (Principal, i64);

/// Who opens this socket: the payload's token, else the upgrade request's.
async fn authenticate_init(
    state: &AppState,
    payload: &Value,
    from_upgrade: Option<&Authenticated>,
) -> Result<Option<Authenticated>, AuthError> {
    let Some(verifier) = state.auth.as_ref() else {
        return Ok(None);
    };
    match payload_token(payload) {
        Some(token) => verifier.verify_expiring(&token?).await.map(Some),
        None => from_upgrade.cloned().map(Some).ok_or(AuthError::Missing),
    }
}

/// The close reason for a refused token: what is wrong, never the token (at most the
/// 123 bytes a close frame holds).
fn refusal_reason(error: &AuthError) -> String {
    let text = match error {
        AuthError::Missing => {
            "no token: send {\"Authorization\": \"Bearer <token>\"} in connection_init's payload"
                .to_string()
        }
        AuthError::KeysUnavailable => {
            "cannot verify tokens now: the identity provider's keys are unreachable".to_string()
        }
        other => other.to_string(),
    };
    truncate(text, 123)
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// When a token that expires at `exp` (Unix seconds) stops being accepted: its expiry
/// plus the clock-skew leeway the verifier allows.
fn expiry_instant(exp: i64, leeway: Duration) -> Instant {
    let now = chrono::Utc::now().timestamp();
    let left = (exp - now).max(0) as u64;
    Instant::now() + Duration::from_secs(left) + leeway
}

pub async fn serve_socket(
    socket: WebSocket,
    state: AppState,
    protocol: WebSocketProtocols,
    from_upgrade: Option<Authenticated>,
    addr: Option<String>,
) {
    let limits = state.limits.clone();
    let (mut sink, mut source) = socket.split();
    let (to_graphql, from_client) =
        tokio::sync::mpsc::channel::<Vec<u8>>(limits.ws_inbound_queue.max(1));
    let max_subscriptions = limits.max_subscriptions_per_socket;
    // Set by the loop once the token is verified, taken by the protocol engine's init.
    let verified: std::sync::Arc<std::sync::Mutex<Option<Principal>>> = Default::default();
    let for_init = verified.clone();
    let auth_on = state.auth.is_some();
    let on_init = move |_payload: Value| async move {
        let principal = for_init.lock().map(|mut p| p.take()).unwrap_or_default();
        let mut data = async_graphql::Data::default();
        data.insert(SubscriptionBudget::new(max_subscriptions));
        // Who the permission matrix judges. With authentication on and no verified
        // principal (which the loop never lets happen), no caller at all: refused.
        match (&principal, auth_on) {
            (Some(p), _) => data.insert(crate::graphql::access::Caller::Verified(p.clone())),
            (None, false) => data.insert(crate::graphql::access::Caller::Unchecked),
            (None, true) => {}
        }
        if let Some(addr) = addr {
            data.insert(crate::graphql::access::ClientAddr(addr));
        }
        data.insert(RequestContext {
            // The verified subject; with authentication off, nobody in particular.
            actor: principal
                .as_ref()
                .map(|p| p.subject.clone())
                .unwrap_or_else(|| "anonymous".into()),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            operation_name: None,
        });
        if let Some(principal) = principal {
            data.insert(principal);
        }
        Ok(data)
    };
    let mut graphql = async_graphql::http::WebSocket::new(
        state.schema.clone(),
        tokio_stream::wrappers::ReceiverStream::new(from_client),
        protocol,
    )
    .on_connection_init(on_init)
    .keepalive_timeout(None);
    let legacy = protocol == WebSocketProtocols::SubscriptionsTransportWS;
    let mut gate = Gate {
        legacy,
        init_received: false,
        active: HashSet::new(),
        max_subscriptions,
        max_nesting: limits.max_nesting,
    };
    let leeway = state
        .auth
        .as_ref()
        .map(|v| v.config().leeway)
        .unwrap_or_default();
    // Until the socket is authenticated, nothing expires; then its token's expiry.
    let expiry = tokio::time::sleep(Duration::from_secs(0));
    tokio::pin!(expiry);
    let mut expires = false;
    let init_deadline = tokio::time::sleep(Duration::from_millis(limits.ws_init_timeout_ms));
    tokio::pin!(init_deadline);
    let ping_interval = Duration::from_millis(limits.ws_ping_interval_ms.max(10));
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    let mut last_heard = Instant::now();
    let close = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    let sender = to_graphql;
    let mut we_closed = false;
    loop {
        tokio::select! {
            // Read only while the queue has room: the client waits, the server doesn't
            // buffer.
            frame = source.next(), if sender.capacity() > 0 => {
                last_heard = Instant::now();
                let bytes = match frame {
                    Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                };
                match gate.inbound(&bytes) {
                    Inbound::Forward => {
                        if sender.try_send(bytes).is_err() {
                            break;
                        }
                    }
                    Inbound::Init(payload) => {
                        match authenticate_init(&state, &payload, from_upgrade.as_ref()).await {
                            Ok(authenticated) => {
                                if let Some((principal, exp)) = authenticated {
                                    expiry.as_mut().reset(expiry_instant(exp, leeway));
                                    expires = true;
                                    if let Ok(mut slot) = verified.lock() {
                                        *slot = Some(principal);
                                    }
                                }
                                gate.init_received = true;
                                if sender.try_send(bytes).is_err() {
                                    break;
                                }
                            }
                            Err(error) => {
                                let code = if error.is_server_side() {
                                    CLOSE_TRY_AGAIN_LATER
                                } else {
                                    CLOSE_UNAUTHENTICATED
                                };
                                let reason = refusal_reason(&error);
                                if legacy {
                                    let message = json!({"type": "connection_error", "payload": {"message": reason}});
                                    let _ = sink.send(Message::Text(message.to_string().into())).await;
                                }
                                let _ = sink.send(close(code, &reason)).await;
                                we_closed = true;
                                break;
                            }
                        }
                    }
                    Inbound::Reply(text) => {
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    Inbound::Close(code, reason) => {
                        let _ = sink.send(close(code, reason)).await;
                        we_closed = true;
                        break;
                    }
                }
            },
            out = graphql.next() => match out {
                Some(WsMessage::Text(text)) => {
                    gate.outbound(&text);
                    let text = with_error_codes(text);
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(WsMessage::Close(code, reason)) => {
                    let _ = sink.send(close(code, &reason)).await;
                    we_closed = true;
                    break;
                }
                None => break,
            },
            _ = &mut expiry, if expires => {
                let reason = "token expired: reconnect with a fresh token and resume (sinceVersion / after)";
                if legacy {
                    let message = json!({"type": "connection_error", "payload": {"message": reason}});
                    let _ = sink.send(Message::Text(message.to_string().into())).await;
                }
                let _ = sink.send(close(CLOSE_UNAUTHENTICATED, reason)).await;
                we_closed = true;
                break;
            }
            _ = &mut init_deadline, if !gate.init_received => {
                let _ = sink.send(close(4408, "Connection initialisation timeout")).await;
                we_closed = true;
                break;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= ping_interval * 3 {
                    let _ = sink.send(close(3008, "timeout: no answer to pings")).await;
                    we_closed = true;
                    break;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
    if we_closed {
        // Let the client read our close frame: wait (briefly) for its own, discarding
        // what it still sends. Dropping a socket with unread input resets the
        // connection, and the client would never learn why it was closed.
        let drain = async {
            while let Some(Ok(frame)) = source.next().await {
                if matches!(frame, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
}

//! One GraphQL websocket: the `graphql-transport-ws` protocol and the legacy
//! `subscriptions-transport-ws` one (`graphql-ws`), spoken here over the schema's own
//! parser, validation, limits and executor, so that `boardChanged` subscribers who would
//! see the same thing share one execution and one encoded frame ([`crate::frames`]).
//!
//! - Inbound messages are handled one at a time, and the socket is read only when the
//!   last one is handled: a client that floods waits (TCP pushes back), the server
//!   buffers nothing.
//! - `subscribe` is checked here, before any query runs: before `connection_init` →
//!   close 4401; an id already in use → 4409; past the per-socket budget → 4429; a
//!   document nested too deep → an `error` for that id (the parser never sees it); past
//!   the caller's budget over all its sockets → an `error` for that id. A message that
//!   is not one of the protocol's → close 4400 (legacy: 1002); a second
//!   `connection_init` → close 4429 (legacy: a `connection_error`).
//! - Who is asking: the bearer token comes in `connection_init`'s payload
//!   (`{"Authorization": "Bearer …"}`, `{"authorization": …}` or `{"token": …}`) or the
//!   upgrade request's `Authorization` header, and is verified before the server
//!   acknowledges. No valid token: graphql-transport-ws closes with 4403 (the spec's
//!   code for a refused `connection_init`; the reference `graphql-ws` client retries
//!   it, asking its `connectionParams` again, where 4401 would end it for good); the
//!   legacy protocol gets a `connection_error`, then the same close. When the token
//!   expires the server closes the socket (4403, "token expired") and the client
//!   resumes on a new one with a fresh token (`sinceVersion` / `after`). The
//!   principal is in every subscription's data.
//! - Frames: a shared frame reaches the socket as websocket bytes its group encoded once
//!   for this subscription id and wrote itself ([`crate::ws_out`]); only a frame the
//!   socket could not take at once, or whose disclosures need this socket's access
//!   record first, is written by the socket's task. A shared frame's payload is never
//!   re-encoded; whatever frames are ready go out in one flush. A socket that does not
//!   read holds at most the newest frame of each subscription.
//! - The upgrade is this module's own ([`Upgrade`], HTTP/1.1), so the connection can be
//!   shared between the socket's task and its groups' writer passes.
//! - Liveness is the server's job: it pings every interval, and any frame from the
//!   client (a pong included) counts. A socket silent for three intervals is closed
//!   (3008); a client that only listens is never timed out.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use async_graphql::http::{ClientMessage, WebSocketProtocols};
use async_graphql::{Data, Response};
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::IntoResponse;
use futures::stream::BoxStream;
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_stream::StreamMap;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::frames::{envelope, Delivery, Frame, FrameDelivery, Membership};
use crate::graphql::access::{Caller, ClientAddr, Recipient};
use crate::graphql::subscription::SubscriptionBudget;
use crate::graphql::RequestContext;
use crate::identity::{AuthError, Principal};
use crate::limits::SubscriptionSlot;
use crate::state::AppState;
use crate::ws_out::{SocketIo, SocketOut};

/// A websocket upgrade request (HTTP/1.1, RFC 6455 §4.2.1), taken apart here rather
/// than by axum's `WebSocketUpgrade`, whose socket cannot be shared: the connection is
/// written to by the socket's task and by its frame groups ([`crate::ws_out`]).
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// Why a request is no websocket upgrade (the statuses axum's extractor answers with).
#[derive(Debug)]
pub enum UpgradeRejection {
    MethodNotGet,
    BadHeaders(&'static str),
    NotUpgradable,
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> axum::response::Response {
        match self {
            UpgradeRejection::MethodNotGet => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            )
                .into_response(),
            UpgradeRejection::BadHeaders(why) => (StatusCode::BAD_REQUEST, why).into_response(),
            UpgradeRejection::NotUpgradable => (
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            )
                .into_response(),
        }
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.version > Version::HTTP_11 {
            return Err(UpgradeRejection::BadHeaders(
                "websockets are served over HTTP/1.1",
            ));
        }
        if parts.method != Method::GET {
            return Err(UpgradeRejection::MethodNotGet);
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(UpgradeRejection::BadHeaders(
                "Connection header did not include 'upgrade'",
            ));
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(UpgradeRejection::BadHeaders(
                "`Upgrade` header did not include 'websocket'",
            ));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(UpgradeRejection::BadHeaders(
                "`Sec-WebSocket-Key` header missing",
            ));
        };
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(UpgradeRejection::BadHeaders(
                "`Sec-WebSocket-Version` header did not include '13'",
            ));
        }
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(UpgradeRejection::NotUpgradable)?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers 101 (naming `protocol` when the client offered one) and serves the
    /// upgraded connection with `config`, its bytes through `io_path`.
    pub fn serve(
        self,
        protocol: Option<WebSocketProtocols>,
        config: WebSocketConfig,
        io_path: crate::config::SocketIoPath,
        serve: impl FnOnce(
                WebSocketStream<SocketIo>,
                Arc<SocketOut>,
            ) -> futures::future::BoxFuture<'static, ()>
            + Send
            + 'static,
    ) -> axum::response::Response {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let (io, out) = SocketIo::from_upgraded(upgraded, io_path);
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            serve(socket, out).await;
        });
        let accept =
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let mut response = axum::response::Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept);
        if let Some(protocol) = protocol {
            response = response.header(
                header::SEC_WEBSOCKET_PROTOCOL,
                protocol.sec_websocket_protocol(),
            );
        }
        response
            .body(axum::body::Body::empty())
            .expect("a 101 response from valid parts")
    }
}

/// The close code for a socket without a valid token, or whose token expired.
pub const CLOSE_UNAUTHENTICATED: u16 = 4403;
/// The close code when tokens cannot be verified now (the identity provider's keys are
/// unreachable): "try again later", which clients retry.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// The longest subscription id accepted (bytes). Clients use UUIDs or counters; each
/// socket keeps its id in the envelope of every frame it is sent, so an unbounded id
/// would let one client make the server hold (and write) megabytes per subscription.
pub const MAX_SUBSCRIPTION_ID: usize = 128;

/// What to do with one inbound text message.
enum Inbound {
    /// Hand it to the protocol (parsed as one of its messages).
    Forward(Value),
    /// The first `connection_init`, with its payload: authenticate, then acknowledge.
    Init(Value),
    /// Answer with this message and do nothing else.
    Reply(String),
    Close(u16, String),
}

/// The socket-level view of the conversation.
struct Gate {
    legacy: bool,
    init_received: bool,
    /// The subscriptions under way, each with its place among its caller's.
    active: HashMap<String, Option<SubscriptionSlot>>,
    max_subscriptions: usize,
    max_nesting: usize,
}

impl Gate {
    /// The close code of a message that is not one of the protocol's: graphql-ws says
    /// 4400; the legacy protocol names none, so the WebSocket's own (1002).
    fn malformed(&self) -> u16 {
        if self.legacy {
            1002
        } else {
            4400
        }
    }

    fn inbound(&mut self, bytes: &[u8]) -> Inbound {
        // serde_json refuses JSON nested past 128 levels: a malformed message.
        let message = match serde_json::from_slice::<Value>(bytes) {
            Ok(m) => m,
            Err(e) => {
                return Inbound::Close(
                    self.malformed(),
                    format!("Invalid message received: {}", truncate(e.to_string(), 90)),
                )
            }
        };
        let id = message["id"].as_str().map(str::to_string);
        match message["type"].as_str() {
            Some("connection_init") if !self.init_received => {
                Inbound::Init(message.get("payload").cloned().unwrap_or(Value::Null))
            }
            Some("subscribe" | "start") => {
                if !self.init_received {
                    return Inbound::Close(4401, "Unauthorized".into());
                }
                let Some(id) = id else {
                    return Inbound::Forward(message);
                };
                if id.len() > MAX_SUBSCRIPTION_ID {
                    return Inbound::Close(
                        4400,
                        format!("Subscription id longer than {MAX_SUBSCRIPTION_ID} bytes"),
                    );
                }
                if self.active.contains_key(&id) {
                    return Inbound::Close(4409, "Subscriber for this id already exists".into());
                }
                if self.active.len() >= self.max_subscriptions {
                    return Inbound::Close(
                        4429,
                        "Too many subscriptions on this connection".into(),
                    );
                }
                if let Err(problem) = self.check_nesting(&message["payload"]) {
                    return Inbound::Reply(self.error(&id, &problem));
                }
                Inbound::Forward(message)
            }
            _ => Inbound::Forward(message),
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
        json!({ "type": "error", "id": id, "payload": payload }).to_string()
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

/// One subscription's answers as this socket sends them; `None` once, when it ends.
type Outgoing = BoxStream<'static, Option<Out>>;

enum Out {
    /// An answer of this subscription's own execution.
    Response(Box<Response>),
    /// A frame shared with the rest of its group.
    Frame(Arc<Frame>),
}

/// What the socket holds once its `connection_init` is accepted.
struct Session {
    /// The data of subscriptions that run on their own.
    data: Arc<Data>,
    /// Who the permission matrix judges (`None` only if authentication is on and no
    /// principal was verified, which the loop never lets happen: then nothing is shared
    /// and every field is refused).
    caller: Option<Caller>,
    /// Records what shared frames disclosed, under this socket's principal.
    recipient: Arc<Recipient>,
    /// Whose subscriptions these are, for [`crate::limits::SubscriptionSlots`]: the token's subject,
    /// else the client's address (without its port).
    caller_key: Arc<str>,
    /// The caller's rate: each operation started on the socket spends one unit, as a
    /// request over HTTP does.
    rate: Option<crate::limits::RateCharge>,
}

impl Session {
    fn open(
        state: &AppState,
        principal: Option<Principal>,
        addr: Option<String>,
        max_subscriptions: usize,
    ) -> Self {
        let caller = match (&principal, state.auth.is_some()) {
            (Some(p), _) => Some(Caller::Verified(p.clone())),
            (None, false) => Some(Caller::Unchecked),
            (None, true) => None,
        };
        let caller_key: Arc<str> = match (&principal, &addr) {
            (Some(p), _) => format!("subject {}", p.subject).into(),
            (None, Some(addr)) => match addr.parse::<std::net::SocketAddr>() {
                Ok(socket) => format!("address {}", socket.ip()).into(),
                Err(_) => format!("address {addr}").into(),
            },
            (None, None) => "anonymous".into(),
        };
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let mut data = Data::default();
        data.insert(SubscriptionBudget::new(max_subscriptions));
        if let Some(caller) = &caller {
            data.insert(caller.clone());
        }
        let rate =
            crate::limits::RateCharge::of(&state.rate_limiter, principal.as_ref(), addr.as_deref());
        if let Some(rate) = &rate {
            data.insert(rate.clone());
        }
        if let Some(addr) = &addr {
            data.insert(ClientAddr(addr.clone()));
        }
        data.insert(RequestContext {
            // The verified subject; with authentication off, nobody in particular.
            actor: principal
                .as_ref()
                .map(|p| p.subject.clone())
                .unwrap_or_else(|| "anonymous".into()),
            correlation_id: correlation_id.clone(),
            operation_name: None,
        });
        if let Some(principal) = principal {
            data.insert(principal);
        }
        let recipient = Recipient::new(
            state.schema.data::<crate::identity::AccessLog>().cloned(),
            caller.as_ref(),
            correlation_id,
            addr,
        );
        Session {
            data: Arc::new(data),
            caller,
            recipient: Arc::new(recipient),
            caller_key,
            rate,
        }
    }

    /// Starts subscription `id`: in a shared group when it can be (written to by the
    /// group itself, or, with [`FrameDelivery::Socket`], through this socket's task),
    /// else on its own.
    fn start(
        &self,
        state: &AppState,
        request: async_graphql::Request,
        (id, legacy): (&Arc<str>, bool),
        out: &Arc<SocketOut>,
    ) -> Started {
        let end = || futures::stream::once(async { None });
        if let Some(caller) = &self.caller {
            match crate::frames::shareable(&request, caller) {
                Ok(Some(share)) if state.limits.ws_frame_delivery == FrameDelivery::Group => {
                    return Started::Group(state.frames.join_socket(
                        &state.schema,
                        share,
                        caller,
                        (id.clone(), legacy),
                        out.clone(),
                    ));
                }
                Ok(Some(share)) => {
                    return Started::Stream(
                        state
                            .frames
                            .join(&state.schema, share, caller, self.recipient.clone())
                            .map(|delivery| {
                                Some(match delivery {
                                    Delivery::Frame(frame) => Out::Frame(frame),
                                    Delivery::Own(response) => Out::Response(response),
                                })
                            })
                            .chain(end())
                            .boxed(),
                    );
                }
                Ok(None) => {}
                Err(error) => {
                    let refused = Response::from_errors(vec![error]);
                    return Started::Stream(
                        futures::stream::once(async { Some(Out::Response(Box::new(refused))) })
                            .chain(end())
                            .boxed(),
                    );
                }
            }
        }
        // Introspection alone runs under introspection's own limits, as over HTTP
        // (GraphiQL sends its introspection query over the socket).
        // The test walks fragments spelled out: a document they would blow up is left
        // to the schema, which refuses it before walking them.
        let introspection_only = request.query.contains("__")
            && async_graphql::parser::parse_query(&request.query).is_ok_and(|d| {
                let max = crate::limits::max_expanded_fields(
                    state
                        .limits
                        .max_complexity
                        .max(crate::graphql::INTROSPECTION_MAX_COMPLEXITY),
                );
                crate::limits::check_fragment_expansion(&d, max).is_ok()
                    && crate::graphql::is_introspection_only(&d, request.operation_name.as_deref())
            });
        let (schema, request) = if introspection_only {
            (&state.introspection_schema, request.only_introspection())
        } else {
            (&state.schema, request)
        };
        let metrics = state.frames.metrics().clone();
        Started::Stream(
            schema
                .execute_stream_with_session_data(request, self.data.clone())
                .map(move |response| {
                    metrics.executions.inc();
                    Some(Out::Response(Box::new(response)))
                })
                .chain(end())
                .boxed(),
        )
    }
}

/// How a subscription of this socket runs.
enum Started {
    /// Its answers come through this socket's task.
    Stream(Outgoing),
    /// Its group writes to the socket; this task only writes what the group parks.
    Group(Membership),
}

/// The text this socket sends for one outgoing item of subscription `id`.
fn encode(legacy: bool, id: &str, out: Option<Out>) -> Option<String> {
    match out {
        Some(Out::Frame(frame)) if frame.refused => {
            frame.payload().and_then(|p| refusal(legacy, id, p))
        }
        Some(Out::Frame(frame)) => frame.payload().map(|p| envelope(legacy, id, p)),
        Some(Out::Response(mut response)) => {
            crate::graphql::settle_errors(&mut response);
            if crate::graphql::request_failed(&response) {
                return Some(error_message(legacy, id, &response.errors));
            }
            match serde_json::to_string(&response) {
                Ok(payload) => Some(envelope(legacy, id, &payload)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a subscription frame");
                    None
                }
            }
        }
        None => Some(json!({"type": "complete", "id": id}).to_string()),
    }
}

/// The `error` message for operation `id` from a shared group's encoded refusal (see
/// [`Frame::refused`]).
fn refusal(legacy: bool, id: &str, payload: &str) -> Option<String> {
    let response: Value = serde_json::from_str(payload).ok()?;
    let errors = response.get("errors")?;
    let payload = if legacy {
        errors[0].clone()
    } else {
        errors.clone()
    };
    Some(json!({"type": "error", "id": id, "payload": payload}).to_string())
}

/// An `error` message for operation `id` (nothing of it ran: a document or its
/// variables refused, or the caller's rate spent); the operation ends with it, no
/// `complete` follows. The legacy protocol's payload is one error.
fn error_message(legacy: bool, id: &str, errors: &[async_graphql::ServerError]) -> String {
    let errors = serde_json::to_value(errors).unwrap_or_default();
    let payload = if legacy { errors[0].clone() } else { errors };
    json!({"type": "error", "id": id, "payload": payload}).to_string()
}

pub async fn serve_socket(
    socket: WebSocketStream<SocketIo>,
    out: Arc<SocketOut>,
    state: AppState,
    protocol: WebSocketProtocols,
    from_upgrade: Option<Authenticated>,
    addr: Option<String>,
) {
    let limits = state.limits.clone();
    let (mut sink, mut source) = socket.split();
    let max_subscriptions = limits.max_subscriptions_per_socket;
    let legacy = protocol == WebSocketProtocols::SubscriptionsTransportWS;
    let mut gate = Gate {
        legacy,
        init_received: false,
        active: HashMap::new(),
        max_subscriptions,
        max_nesting: limits.max_nesting,
    };
    let mut session: Option<Session> = None;
    let mut subscriptions: StreamMap<Arc<str>, Outgoing> = StreamMap::new();
    // Shared subscriptions whose groups write to this socket themselves.
    let mut memberships: HashMap<Arc<str>, Membership> = HashMap::new();
    let frames_sent = state.frames.metrics().frames_sent.clone();
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
    // A client that stops reading would hold this task in a write for good, out of
    // reach of the pings' timeout and of its token's expiry: a write that makes no
    // progress for as long as three unanswered pings gives the connection up.
    out.set_stall_limit(ping_interval * 3);
    let close = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: reason.into(),
        }))
    };
    let text = |value: Value| Message::Text(value.to_string().into());
    let mut we_closed = false;
    loop {
        tokio::select! {
            frame = source.next() => {
                last_heard = Instant::now();
                let bytes = match frame {
                    Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
                    // The library has queued the pong: it is written before the socket
                    // is read on, so a client that pings without reading waits (TCP
                    // pushes back) instead of the server holding a pong per ping.
                    Some(Ok(Message::Ping(_))) => {
                        if sink.flush().await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                    // Over the message (or frame) size limit: say so (1009), so that
                    // the client does not send it again as if the line had dropped.
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                        let reason = format!("Message too big: the limit is {} bytes", limits.max_body_bytes);
                        let _ = sink.send(close(1009, &reason)).await;
                        we_closed = true;
                        break;
                    }
                    // A frame that breaks RFC 6455 (unmasked, reserved bits, a bad
                    // opcode, a control frame too long or fragmented): say so before
                    // closing (1002; text that is not UTF-8: 1007).
                    Some(Err(tokio_tungstenite::tungstenite::Error::Protocol(e))) => {
                        let reason = truncate(format!("Protocol error: {e}"), 123);
                        let _ = sink.send(close(1002, &reason)).await;
                        we_closed = true;
                        break;
                    }
                    Some(Err(tokio_tungstenite::tungstenite::Error::Utf8(_))) => {
                        let _ = sink.send(close(1007, "Text that is not UTF-8")).await;
                        we_closed = true;
                        break;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                };
                match gate.inbound(&bytes) {
                    Inbound::Forward(message) => {
                        let message = match serde_json::from_value::<ClientMessage>(message) {
                            Ok(m) => m,
                            Err(e) => {
                                let reason = format!("Invalid message received: {}", truncate(e.to_string(), 90));
                                let _ = sink.send(close(gate.malformed(), &reason)).await;
                                we_closed = true;
                                break;
                            }
                        };
                        match message {
                            ClientMessage::ConnectionInit { .. } => {
                                // A second one breaks the protocol.
                                let reason = "Too many initialisation requests.";
                                if legacy {
                                    let _ = sink.send(text(json!({"type": "connection_error", "payload": {"message": reason}}))).await;
                                    break;
                                }
                                let _ = sink.send(close(4429, reason)).await;
                                we_closed = true;
                                break;
                            }
                            ClientMessage::Start { id, payload } => {
                                let Some(session) = &session else {
                                    let _ = sink.send(close(4401, "Unauthorized")).await;
                                    we_closed = true;
                                    break;
                                };
                                if let Some(Err(refused)) = session.rate.as_ref().map(|r| r.spend(1, "an operation over this socket")) {
                                    let refusal = error_message(legacy, &id, &[refused]);
                                    if sink.send(Message::Text(refusal.into())).await.is_err() {
                                        break;
                                    }
                                    continue;
                                }
                                let Some(slot) = state.subscription_slots.take(&session.caller_key) else {
                                    let refused = crate::error::ErrorCode::RateLimited.error(
                                        format!(
                                            "this caller holds {} subscriptions over its connections, the most it may: complete one first",
                                            limits.max_subscriptions_per_caller
                                        ),
                                    );
                                    let refusal = error_message(legacy, &id, &[refused]);
                                    if sink.send(Message::Text(refusal.into())).await.is_err() {
                                        break;
                                    }
                                    continue;
                                };
                                gate.active.insert(id.clone(), Some(slot));
                                let id: Arc<str> = Arc::from(id);
                                match session.start(&state, payload, (&id, legacy), &out) {
                                    Started::Stream(stream) => {
                                        subscriptions.insert(id, stream);
                                    }
                                    Started::Group(membership) => {
                                        memberships.insert(id, membership);
                                    }
                                }
                            }
                            ClientMessage::Stop { id } => {
                                gate.active.remove(&id);
                                let stopped = subscriptions.remove(id.as_str()).is_some()
                                    | memberships.remove(id.as_str()).is_some();
                                if stopped
                                    && sink.send(text(json!({"type": "complete", "id": id}))).await.is_err()
                                {
                                    break;
                                }
                            }
                            ClientMessage::ConnectionTerminate => break,
                            ClientMessage::Ping { .. } => {
                                if sink.send(text(json!({"type": "pong"}))).await.is_err() {
                                    break;
                                }
                            }
                            ClientMessage::Pong { .. } => {}
                        }
                    }
                    Inbound::Init(payload) => {
                        match authenticate_init(&state, &payload, from_upgrade.as_ref()).await {
                            Ok(authenticated) => {
                                let principal = authenticated.map(|(principal, exp)| {
                                    expiry.as_mut().reset(expiry_instant(exp, leeway));
                                    out.set_expiry(expiry_instant(exp, leeway));
                                    expires = true;
                                    principal
                                });
                                session = Some(Session::open(&state, principal, addr.clone(), max_subscriptions));
                                gate.init_received = true;
                                if sink.send(text(json!({"type": "connection_ack"}))).await.is_err() {
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
                                    let _ = sink.send(text(json!({"type": "connection_error", "payload": {"message": reason}}))).await;
                                }
                                let _ = sink.send(close(code, &reason)).await;
                                we_closed = true;
                                break;
                            }
                        }
                    }
                    Inbound::Reply(reply) => {
                        if sink.send(Message::Text(reply.into())).await.is_err() {
                            break;
                        }
                    }
                    Inbound::Close(code, reason) => {
                        let _ = sink.send(close(code, &reason)).await;
                        we_closed = true;
                        break;
                    }
                }
            },
            Some(first) = subscriptions.next(), if !subscriptions.is_empty() => {
                if expires && expiry.is_elapsed() {
                    // Nothing decided after the token expired goes out: the expiry
                    // branch (ready) closes the socket.
                    continue;
                }
                // This frame and whatever else is ready now, in one flush.
                let mut next = Some(first);
                let mut written = 0;
                let mut failed = false;
                while let Some((id, out)) = next.take() {
                    let refused = match &out {
                        Some(Out::Response(r)) => crate::graphql::request_failed(r),
                        Some(Out::Frame(frame)) => frame.refused,
                        None => false,
                    };
                    if out.is_none() || refused {
                        gate.active.remove(&*id);
                    }
                    if refused {
                        // Its `error` ends it: the `complete` behind it is not sent.
                        subscriptions.remove(&*id);
                    } else if out.is_some() {
                        frames_sent.inc();
                    }
                    if let Some(message) = encode(legacy, &id, out) {
                        if sink.feed(Message::Text(message.into())).await.is_err() {
                            failed = true;
                            break;
                        }
                        written += 1;
                    }
                    if written < 256 {
                        next = subscriptions.next().now_or_never().flatten();
                    }
                }
                if failed || sink.flush().await.is_err() {
                    break;
                }
            },
            _ = out.wake.notified() => {
                if expires && expiry.is_elapsed() {
                    continue;
                }
                // What the groups left to this task: frames the socket could not take at
                // once (or that need this socket's access record first), and bytes
                // waiting in the queue.
                let mut ended: Vec<Arc<str>> = Vec::new();
                // Ended by an `error`, which no `complete` follows.
                let mut refused: Vec<Arc<str>> = Vec::new();
                let mut failed = false;
                for (id, membership) in &memberships {
                    while let Some(frame) = membership.take() {
                        if frame.refused {
                            if let Some(message) = frame.payload().and_then(|p| refusal(legacy, id, p)) {
                                failed |= sink.feed(Message::Text(message.into())).await.is_err();
                            }
                            refused.push(id.clone());
                            break;
                        }
                        if let (Some(disclosed), Some(session)) = (&frame.disclosed, &session) {
                            if let Err(error) = session.recipient.record(disclosed).await {
                                // Fail closed: this subscriber gets the error, not the frame.
                                let refused = Out::Response(Box::new(Response::from_errors(vec![error])));
                                if let Some(message) = encode(legacy, id, Some(refused)) {
                                    failed |= sink.feed(Message::Text(message.into())).await.is_err();
                                }
                                ended.push(id.clone());
                                break;
                            }
                        }
                        if frame.payload().is_some() {
                            membership.push(&frame);
                            frames_sent.inc();
                        }
                        if frame.last {
                            ended.push(id.clone());
                            break;
                        }
                    }
                }
                for id in refused {
                    memberships.remove(&id);
                    gate.active.remove(&*id);
                }
                for id in ended {
                    memberships.remove(&id);
                    gate.active.remove(&*id);
                    if let Some(message) = encode(legacy, &id, None) {
                        failed |= sink.feed(Message::Text(message.into())).await.is_err();
                    }
                }
                if failed || sink.flush().await.is_err() {
                    break;
                }
            },
            _ = &mut expiry, if expires => {
                let reason = "token expired: reconnect with a fresh token and resume (sinceVersion / after)";
                if legacy {
                    let _ = sink.send(text(json!({"type": "connection_error", "payload": {"message": reason}}))).await;
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
    // Subscriptions end with the socket (their groups stop when nobody is left).
    drop(subscriptions);
    drop(memberships);
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

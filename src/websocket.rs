//! One GraphQL websocket: the protocol engine is async-graphql's; this loop stands in
//! front of it and keeps a socket from hurting the server.
//!
//! - Inbound messages wait in a bounded queue; when it is full the socket is not read
//!   (TCP pushes back on the client) instead of buffering without end.
//! - `subscribe` is checked here, before any query runs: before `connection_init` →
//!   close 4401; an id already in use → 4409; past the per-socket budget → 4429; a
//!   document nested too deep → an `error` for that id (the parser never sees it).
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
use crate::state::AppState;

/// What to do with one inbound text message.
enum Inbound {
    Forward,
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
            Some("connection_init") => {
                self.init_received = true;
                Inbound::Forward
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

pub async fn serve_socket(socket: WebSocket, state: AppState, protocol: WebSocketProtocols) {
    let limits = state.limits.clone();
    let (mut sink, mut source) = socket.split();
    let (to_graphql, from_client) =
        tokio::sync::mpsc::channel::<Vec<u8>>(limits.ws_inbound_queue.max(1));
    let max_subscriptions = limits.max_subscriptions_per_socket;
    let on_init = move |payload: Value| async move {
        let mut data = async_graphql::Data::default();
        data.insert(SubscriptionBudget::new(max_subscriptions));
        data.insert(RequestContext {
            actor: payload
                .get("actor")
                .and_then(|a| a.as_str())
                .unwrap_or("anonymous")
                .chars()
                .filter(|c| *c != '\0')
                .take(200)
                .collect(),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            operation_name: None,
        });
        Ok(data)
    };
    let mut graphql = async_graphql::http::WebSocket::new(
        state.schema.clone(),
        tokio_stream::wrappers::ReceiverStream::new(from_client),
        protocol,
    )
    .on_connection_init(on_init)
    .keepalive_timeout(None);
    let mut gate = Gate {
        legacy: protocol == WebSocketProtocols::SubscriptionsTransportWS,
        init_received: false,
        active: HashSet::new(),
        max_subscriptions,
        max_nesting: limits.max_nesting,
    };
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

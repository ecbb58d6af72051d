//! The live fan-out at scale, against a separate `careboard serve` process: commit-to-
//! frame latency with subscribers spread over many Boards, and frames delivered per
//! second at saturation (writers in a closed loop, every subscriber reading).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::subscribe::{open_board, subscribe, Server};

/// What one latency run measured.
pub struct Measured {
    pub latency: Histogram<u64>,
    /// Frames the subscribers received.
    pub frames: u64,
    /// Failed mutations, error frames, sockets closed under the subscribers.
    pub errors: u64,
}

const REQUEST: &str =
    "mutation($input: RequestAppointmentInput!) { requestAppointment(input: $input) { position } }";

fn http_client(server: &Server) -> Result<reqwest::Client> {
    let mut request = reqwest::Client::builder();
    if let Some(token) = &server.token {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        request = request.default_headers(headers);
    }
    Ok(request.build()?)
}

fn request_body(board: &str, i: u64) -> Value {
    json!({"query": REQUEST,
        "variables": {"input": {"boardId": board, "patientName": format!("Live {i}"),
        "specialty": "pediatrics", "region": "TX", "reason": "fever"}}})
}

/// The `position` of a `boardChanged` frame, read without parsing the whole frame (the
/// harness shares the machine with the server: its own cost per frame stays small).
fn position_of(text: &str) -> Option<i64> {
    let at = text.find("\"position\":")? + "\"position\":".len();
    let digits: &str = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Opens `subscribers` sockets (one subscription each), spread round-robin over
/// `boards`, each past its first frame.
async fn subscribers_on(
    server: &Server,
    boards: &[String],
    subscribers: usize,
) -> Result<Vec<crate::subscribe::Socket>> {
    let mut sockets = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let mut socket = server.socket().await?;
        subscribe(&mut socket, 1, &boards[i % boards.len()]).await?;
        sockets.push(socket);
    }
    // The first frame of each is the current Board.
    for socket in &mut sockets {
        socket.next().await;
    }
    Ok(sockets)
}

/// `subscribers` subscriptions (one socket each) over `boards` Boards while the Boards
/// change `rate` times a second in all (round-robin, open loop) for `seconds`: for
/// every frame, the time from the sending of the newest mutation it includes to its
/// arrival (an upper bound of commit-to-frame, since the commit happens after the send).
pub async fn latency(
    server: &Server,
    subscribers: usize,
    boards: usize,
    rate: f64,
    seconds: u64,
) -> Result<Measured> {
    let mut ids = Vec::with_capacity(boards);
    for _ in 0..boards.max(1) {
        ids.push(open_board(server).await?);
    }
    // position -> when the mutation that wrote it was sent.
    let sent: Arc<Mutex<BTreeMap<i64, Instant>>> = Arc::default();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let frames = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let sockets = subscribers_on(server, &ids, subscribers).await?;
    let mut readers = Vec::new();
    for mut socket in sockets {
        let (sent, hist, frames, errors) =
            (sent.clone(), hist.clone(), frames.clone(), errors.clone());
        readers.push(tokio::spawn(async move {
            while let Some(frame) = socket.next().await {
                let text = match frame {
                    Ok(Message::Text(text)) => text,
                    Ok(Message::Close(_)) | Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(_) => continue,
                };
                let arrived = Instant::now();
                frames.fetch_add(1, Ordering::Relaxed);
                if text.contains("\"errors\"") {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Some(position) = position_of(&text) else {
                    continue;
                };
                let at = sent.lock().unwrap().get(&position).copied();
                if let Some(at) = at {
                    let _ = hist
                        .lock()
                        .unwrap()
                        .record(arrived.duration_since(at).as_micros() as u64);
                }
            }
        }));
    }
    let http = http_client(server)?;
    let url = format!("http://{}/graphql", server.base);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    let mut i = 0u64;
    while Instant::now() < deadline {
        ticker.tick().await;
        let (http, url, sent, errors) = (http.clone(), url.clone(), sent.clone(), errors.clone());
        let board = ids[i as usize % ids.len()].clone();
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let position = match http.post(&url).json(&request_body(&board, i)).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["data"]["requestAppointment"]["position"].as_i64()),
                Err(_) => None,
            };
            match position {
                Some(p) => {
                    sent.lock().unwrap().insert(p, at);
                }
                None => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        i += 1;
    }
    for t in tasks {
        t.await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for r in &readers {
        r.abort();
    }
    let latency = hist.lock().unwrap().clone();
    Ok(Measured {
        latency,
        frames: frames.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    })
}

/// Frames delivered per second with `subscribers` sockets on one Board while `writers`
/// clients change it in a closed loop for `seconds` (as fast as the server takes
/// mutations and the projector applies them). Subscribers count frames, nothing more.
pub async fn saturation(
    server: &Server,
    subscribers: usize,
    writers: usize,
    seconds: u64,
) -> Result<(f64, u64, u64)> {
    let board = open_board(server).await?;
    let frames = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let sockets = subscribers_on(server, std::slice::from_ref(&board), subscribers).await?;
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for mut socket in sockets {
        let (frames, errors, counting) = (frames.clone(), errors.clone(), counting.clone());
        readers.push(tokio::spawn(async move {
            while let Some(frame) = socket.next().await {
                match frame {
                    Ok(Message::Text(_)) => {
                        if counting.load(Ordering::Relaxed) {
                            frames.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Message::Close(_)) | Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(_) => {}
                }
            }
        }));
    }
    let http = http_client(server)?;
    let url = format!("http://{}/graphql", server.base);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (http, url, board, stop, changes, errors) = (
            http.clone(),
            url.clone(),
            board.clone(),
            stop.clone(),
            changes.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = w as u64 * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match http.post(&url).json(&request_body(&board, i)).send().await {
                    Ok(r) if r.status().is_success() => {
                        changes.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Warm up, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let changes_before = changes.load(Ordering::Relaxed);
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let took = started.elapsed().as_secs_f64();
    let counted = frames.load(Ordering::Relaxed);
    let changed = changes.load(Ordering::Relaxed) - changes_before;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    for r in &readers {
        r.abort();
    }
    Ok((
        counted as f64 / took,
        changed,
        errors.load(Ordering::Relaxed),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_position_is_read_from_a_frame() {
        let frame = r#"{"type":"next","id":"1","payload":{"data":{"boardChanged":{"version":12,"position":3456,"counts":{"waiting":3}}}}}"#;
        assert_eq!(super::position_of(frame), Some(3456));
        assert_eq!(super::position_of(r#"{"type":"complete","id":"1"}"#), None);
    }
}

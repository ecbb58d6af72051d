//! The fan-out's ceiling on this machine: a bare tokio writer, with no GraphQL, no
//! database and no Careboard, pushing frames of the same shape and size as the server's
//! `boardChanged` frames to the same number of websocket connections, read by the same
//! lean readers, as fast as they take them.
//!
//! It runs as a process of its own (this binary, started with [`FLAG`]), so its CPU is
//! counted apart from the harness's, as the server's is. Its writer is the least a
//! fan-out can do per frame and socket: the frame's bytes encoded once per pass, one
//! non-blocking `write` per socket; a socket that cannot take the whole frame keeps the
//! rest and gets no new frame until it has drained it (the newest version wins, as in the
//! server's slots). Connections are written by tasks of `shard` sockets each, running
//! free on the runtime's workers (the server's tasks wait for each other per frame; this
//! does not, so it is an upper bound). The rows built on it say how close the fan-out is
//! to what these two cores can do with one write per frame per socket.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::fanout::Saturation;
use crate::lean::LeanSocket;
use crate::subscribe::{process_cpu_seconds, process_cpu_split, subscription_message};

/// The first argument that makes this binary the bare writer:
/// `careboard-bench --bare-writer <address> <subscribers> <shard>`.
pub const FLAG: &str = "--bare-writer";

/// The bare writer, as a child process: accepts `subscribers` websocket connections
/// (graphql-transport-ws handshake, `connection_ack`, one `subscribe`), then writes
/// frames to them at full speed until it is killed.
pub async fn child(args: &[String]) -> Result<()> {
    let [address, subscribers, shard] = args else {
        bail!("{FLAG} <address> <subscribers> <shard>");
    };
    let subscribers: usize = subscribers.parse()?;
    let shard: usize = shard.parse::<usize>()?.max(1);
    let listener = TcpListener::bind(address).await?;
    let (ready, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let ready = ready.clone();
            tokio::spawn(async move {
                if let Ok(stream) = handshake(stream).await {
                    let _ = ready.send(stream);
                }
            });
        }
    });
    let mut conns = Vec::with_capacity(subscribers);
    while conns.len() < subscribers {
        let stream = accepted.recv().await.context("the listener stopped")?;
        conns.push(Conn {
            stream,
            pending: Vec::new(),
        });
    }
    let mut tasks = Vec::new();
    while !conns.is_empty() {
        let rest = conns.split_off(conns.len().min(shard));
        let mine = std::mem::replace(&mut conns, rest);
        tasks.push(tokio::spawn(write_forever(mine)));
    }
    for task in tasks {
        task.await?;
    }
    Ok(())
}

struct Conn {
    stream: TcpStream,
    /// The rest of a frame the socket did not take at once.
    pending: Vec<u8>,
}

/// A frame of the server's shape and size: `next` for subscription `"1"`, a
/// `boardChanged` payload with a version, a position and the counts.
fn frame(version: u64) -> Vec<u8> {
    let text = format!(
        "{{\"type\":\"next\",\"id\":\"1\",\"payload\":{{\"data\":{{\"boardChanged\":{{\"version\":{version},\"position\":{},\"counts\":{{\"waiting\":{}}}}}}}}}}}",
        version * 3 + 1_000_000,
        version % 997
    );
    careboard::ws_out::text_frame(&text).to_vec()
}

/// Writes a new version to every connection that can take it, pass after pass.
async fn write_forever(mut conns: Vec<Conn>) {
    let mut version = 1u64;
    loop {
        version += 1;
        let bytes = frame(version);
        let mut wrote = 0usize;
        for conn in &mut conns {
            if !conn.pending.is_empty() {
                match conn.stream.try_write(&conn.pending) {
                    Ok(n) => {
                        conn.pending.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => continue,
                }
                if !conn.pending.is_empty() {
                    continue;
                }
            }
            match conn.stream.try_write(&bytes) {
                Ok(n) => {
                    wrote += 1;
                    if n < bytes.len() {
                        conn.pending.extend_from_slice(&bytes[n..]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {}
            }
        }
        if wrote == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// The server side of the upgrade and of graphql-transport-ws up to the first
/// `subscribe`, answered with a frame of version 1.
async fn handshake(mut stream: TcpStream) -> Result<TcpStream> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("closed during the upgrade");
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .context("no key")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    stream
        .write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    buf.drain(..end);
    loop {
        let text = next_text(&mut stream, &mut buf).await?;
        if text.windows(15).any(|w| w == b"connection_init") {
            stream
                .write_all(&careboard::ws_out::text_frame(
                    "{\"type\":\"connection_ack\"}",
                ))
                .await?;
        } else if text.windows(9).any(|w| w == b"subscribe") {
            stream.write_all(&frame(1)).await?;
            return Ok(stream);
        }
    }
}

/// The next text frame from a client (unmasked here).
async fn next_text(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>> {
    loop {
        let mut cursor = Cursor::new(&buf[..]);
        if let Some((header, length)) = FrameHeader::parse(&mut cursor)? {
            let start = cursor.position() as usize;
            let end = start + usize::try_from(length)?;
            if end <= buf.len() {
                let mut payload = buf[start..end].to_vec();
                if let Some(mask) = header.mask {
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= mask[i % 4];
                    }
                }
                buf.drain(..end);
                if header.opcode == OpCode::Data(Data::Text) {
                    return Ok(payload);
                }
                continue;
            }
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("closed before subscribing");
        }
    }
}

/// The bare writer's process.
struct Writer {
    child: std::process::Child,
    base: String,
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Frames per second the bare writer delivers to `subscribers` lean readers for
/// `seconds`, with its CPU and the harness's per frame (the same figures as
/// [`crate::fanout::saturation`]; no writer pass counters, no versions notified).
pub async fn saturation(
    subscribers: usize,
    shard: usize,
    readers: crate::fanout::Readers,
    seconds: u64,
) -> Result<Saturation> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(std::env::current_exe()?)
        .args([FLAG, &base, &subscribers.to_string(), &shard.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let writer = Writer { child, base };
    let started = Instant::now();
    while TcpStream::connect(&writer.base).await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the bare writer did not come up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The probe above was a connection too: it never subscribes, so the writer waits
    // for `subscribers` others.
    let mut sockets = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let mut socket = LeanSocket::open_at(&writer.base, None).await?;
        socket.send(&subscription_message(1, "ceiling")).await?;
        sockets.push(socket);
    }
    for socket in &mut sockets {
        let mut first = false;
        while !first {
            socket.read_frames(&mut |_| first = true).await?;
        }
    }
    let frames = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reading = {
        let (frames, counting) = (frames.clone(), counting.clone());
        crate::fanout::read_sockets(sockets, readers, errors.clone(), move |_| {
            if counting.load(Ordering::Relaxed) {
                frames.fetch_add(1, Ordering::Relaxed);
            }
        })?
    };
    let stat = format!("/proc/{}/stat", writer.child.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let split_before = process_cpu_split(&stat)?;
    let harness_before = process_cpu_seconds("/proc/self/stat")?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let split = process_cpu_split(&stat)?;
    let cpu = split.0 + split.1 - split_before.0 - split_before.1;
    let system = split.1 - split_before.1;
    let harness = process_cpu_seconds("/proc/self/stat")? - harness_before;
    let took = started.elapsed().as_secs_f64();
    let counted = frames.load(Ordering::Relaxed);
    drop(reading);
    drop(writer);
    let per = |cpu: f64| {
        if counted > 0 {
            cpu * 1e6 / counted as f64
        } else {
            0.0
        }
    };
    Ok(Saturation {
        rate: counted as f64 / took,
        changes: 0,
        errors: errors.load(Ordering::Relaxed),
        cpu_per_frame_us: per(cpu),
        harness_cpu_per_frame_us: per(harness),
        write_pass_ns_per_socket: None,
        parked_share: None,
        parked_waiting_share: None,
        behind_share: None,
        system_share: if cpu > 0.0 { system / cpu } else { 0.0 },
        versions_per_second: counted as f64 / took / subscribers.max(1) as f64,
        notified_per_second: 0.0,
    })
}

//! One websocket's way out: the bytes waiting to be written to it, shared by the socket's
//! own task and by the writer passes of the frame groups it belongs to.
//!
//! A group that publishes a frame writes it to each of its sockets itself, one
//! non-blocking `write` of bytes encoded once ([`SocketOut::try_write_now`]), without
//! waking the socket's task. Whatever cannot go out at once (the kernel's buffer is full,
//! or bytes are already waiting) is left to the socket's task, which the writer wakes
//! ([`SocketOut::wake`]) and which writes with its own waker. So a frame is never split
//! by another: bytes reach the socket in one order, through one queue, under one lock.
//!
//! The socket's task speaks the websocket protocol with `tungstenite` over [`SocketIo`],
//! whose writes go into the same queue: control frames, replies and the frames of
//! subscriptions that run on their own keep their order with the shared ones.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;

type Writer = Pin<Box<dyn AsyncWrite + Send>>;
type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// The write half a socket's bytes go out through.
enum WriteHalf {
    /// The accepted TCP stream's own write half: a write is one `send` on the socket.
    Tcp(OwnedWriteHalf),
    /// Any other stream (the upgraded connection's layers, or a test's pipe), behind
    /// `tokio::io::split`'s lock.
    Layered(Writer),
}

/// A poll's outcome as a non-blocking attempt's: would block is `Pending`.
fn attempt<T>(result: io::Result<T>) -> Poll<io::Result<T>> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

impl WriteHalf {
    /// One non-blocking write with no waker to register (a writer pass's).
    fn try_write(&mut self, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            WriteHalf::Tcp(half) => attempt(half.try_write(buf)),
            WriteHalf::Layered(io) => {
                // A no-op waker: if the write would block, the socket's task (woken by
                // the caller) polls again with its own, which replaces this one.
                let mut cx = Context::from_waker(Waker::noop());
                io.as_mut().poll_write(&mut cx, buf)
            }
        }
    }

    /// One non-blocking vectored write with no waker to register.
    fn try_write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self {
            WriteHalf::Tcp(half) => attempt(half.try_write_vectored(bufs)),
            WriteHalf::Layered(io) => {
                let mut cx = Context::from_waker(Waker::noop());
                io.as_mut().poll_write_vectored(&mut cx, bufs)
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            WriteHalf::Tcp(half) => Pin::new(half).poll_write(cx, buf),
            WriteHalf::Layered(io) => io.as_mut().poll_write(cx, buf),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            WriteHalf::Tcp(half) => Pin::new(half).poll_flush(cx),
            WriteHalf::Layered(io) => io.as_mut().poll_flush(cx),
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            WriteHalf::Tcp(half) => Pin::new(half).poll_shutdown(cx),
            WriteHalf::Layered(io) => io.as_mut().poll_shutdown(cx),
        }
    }
}

/// The read half of a websocket taken back from its upgraded connection: first the
/// bytes the HTTP connection had read past the upgrade request (a client may send its
/// first frame with the request), then the socket's.
struct TcpRead {
    ahead: Bytes,
    half: OwnedReadHalf,
}

impl AsyncRead for TcpRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ahead.is_empty() {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead[..n]);
            self.ahead.advance(n);
            if self.ahead.is_empty() {
                // Read: its allocation goes too.
                self.ahead = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.half).poll_read(cx, buf)
    }
}

/// Queued bytes past which [`SocketIo`] stops taking more until the socket drains: the
/// socket's own writes wait (TCP pushes back), shared frames are coalesced in their
/// slots instead.
const HIGH_WATER: usize = 16 * 1024;

/// The write side of one websocket.
pub struct SocketOut {
    state: Mutex<OutState>,
    /// Wakes the socket's task: bytes wait in the queue, or a frame waits in one of its
    /// subscriptions' slots.
    pub wake: Notify,
}

struct OutState {
    io: WriteHalf,
    /// Bytes accepted but not yet written, whole frames in order (a partly written
    /// frame's rest comes first).
    queue: BytesMut,
    /// The connection failed: nothing more is written.
    failed: bool,
    /// How long the socket's task may wait on a write that makes no progress before
    /// the connection is given up (a client that stops reading); `None`: no bound.
    stall_limit: Option<std::time::Duration>,
    /// When the socket's credentials expire: from then on writer passes write nothing
    /// (their frames wait for the socket's task, which closes the socket instead).
    expires_at: Option<tokio::time::Instant>,
}

/// What came of a writer pass's attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// All of it is in the kernel's buffer.
    Done,
    /// Part of it is; the rest waits in the queue for the socket's task (woken).
    Partly,
    /// None of it: the kernel's buffer is full (or the socket's credentials expired).
    /// The caller keeps the frame (the newest one wins) and wakes the socket's task.
    Busy,
    /// None of it: bytes were waiting already (the socket's task has not written them
    /// yet). As `Busy` for the caller.
    Waiting,
    /// The connection failed; the socket's task ends when it notices.
    Failed,
}

impl SocketOut {
    /// Whether the socket's bytes go straight to its TCP stream (no layers between).
    pub fn is_on_tcp(&self) -> bool {
        matches!(self.state.lock().expect("socket out").io, WriteHalf::Tcp(_))
    }

    /// Whether nothing waits to be written.
    pub fn is_idle(&self) -> bool {
        self.state.lock().expect("socket out").queue.is_empty()
    }

    /// Bounds how long the socket's task waits on a write that makes no progress: past
    /// `limit`, the write fails and the connection is given up.
    pub fn set_stall_limit(&self, limit: std::time::Duration) {
        self.state.lock().expect("socket out").stall_limit = Some(limit);
    }

    /// From `at` on, writer passes leave every frame to the socket's task.
    pub fn set_expiry(&self, at: tokio::time::Instant) {
        self.state.lock().expect("socket out").expires_at = Some(at);
    }

    /// Writes `bytes` now if nothing is waiting before them, without blocking and without
    /// a task of its own to wake (a writer pass calls this for each socket of a group).
    pub fn try_write_now(&self, bytes: &[u8]) -> Written {
        let mut state = self.state.lock().expect("socket out");
        if state.failed {
            return Written::Failed;
        }
        if !state.queue.is_empty() {
            return Written::Waiting;
        }
        if state.expired() {
            return Written::Busy;
        }
        let mut written = 0;
        while written < bytes.len() {
            match state.io.try_write(&bytes[written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    state.failed = true;
                    return Written::Failed;
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Pending => break,
            }
        }
        if written == bytes.len() {
            Written::Done
        } else if written == 0 {
            Written::Busy
        } else {
            state.queue.extend_from_slice(&bytes[written..]);
            Written::Partly
        }
    }

    /// Writes the concatenation of `parts` (one frame's bytes in pieces: header, prefix,
    /// shared payload) now if nothing is waiting before them, in one vectored write,
    /// without blocking; as [`SocketOut::try_write_now`] otherwise (what the socket does
    /// not take at once is queued whole, in order).
    pub fn try_write_parts(&self, parts: &[&[u8]]) -> Written {
        let mut state = self.state.lock().expect("socket out");
        if state.failed {
            return Written::Failed;
        }
        if !state.queue.is_empty() {
            return Written::Waiting;
        }
        if state.expired() {
            return Written::Busy;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut written = 0;
        while written < total {
            let mut slices = [io::IoSlice::new(&[]); 4];
            let mut count = 0;
            let mut skip = written;
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                if count == slices.len() {
                    break;
                }
                slices[count] = io::IoSlice::new(&part[skip..]);
                skip = 0;
                count += 1;
            }
            match state.io.try_write_vectored(&slices[..count]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    state.failed = true;
                    return Written::Failed;
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Pending => break,
            }
        }
        if written == total {
            return Written::Done;
        }
        if written == 0 {
            return Written::Busy;
        }
        let mut skip = written;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            state.queue.extend_from_slice(&part[skip..]);
            skip = 0;
        }
        Written::Partly
    }

    /// Queues one frame given in pieces behind whatever waits (the socket's task, which
    /// then flushes).
    pub fn push_parts(&self, parts: &[&[u8]]) {
        let mut state = self.state.lock().expect("socket out");
        state.queue.reserve(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            state.queue.extend_from_slice(part);
        }
    }

    /// Queues whole frames' bytes behind whatever waits (the socket's task, which then
    /// flushes).
    pub fn push(&self, bytes: &[u8]) {
        self.state
            .lock()
            .expect("socket out")
            .queue
            .extend_from_slice(bytes);
    }
}

impl OutState {
    fn expired(&self) -> bool {
        self.expires_at
            .is_some_and(|at| tokio::time::Instant::now() >= at)
    }

    /// Writes what waits, as far as the socket takes it now.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        while !self.queue.is_empty() {
            match self.io.poll_write(cx, &self.queue) {
                Poll::Ready(Ok(0)) => {
                    self.failed = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.queue.advance(n),
                Poll::Ready(Err(e)) => {
                    self.failed = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The stream the socket's task speaks the websocket protocol over: reads from the
/// connection, writes into the shared queue (whole buffers or nothing, so a frame of its
/// own is never split by a shared one).
pub struct SocketIo {
    read: Reader,
    out: Arc<SocketOut>,
    /// Armed while a write of the socket's task waits on a socket that takes nothing.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SocketIo {
    /// Splits an upgraded connection into its reading half and its shared way out.
    pub fn new<T>(io: T) -> (Self, Arc<SocketOut>)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        Self::with_halves(Box::pin(read), WriteHalf::Layered(Box::pin(write)))
    }

    /// A websocket on the accepted TCP stream itself: `ahead` is what the HTTP
    /// connection had read past the upgrade request (read first). The stream is split
    /// into its owned halves, which share it without a lock.
    pub fn on_tcp(stream: TcpStream, ahead: Bytes) -> (Self, Arc<SocketOut>) {
        // `ahead` is a view into the HTTP connection's read buffer (8 KB or more),
        // which it keeps whole for as long as it lives, empty or not: its few bytes,
        // if any, are copied so the buffer goes with the HTTP connection.
        let ahead = Bytes::copy_from_slice(&ahead);
        let (read, write) = stream.into_split();
        Self::with_halves(
            Box::pin(TcpRead { ahead, half: read }),
            WriteHalf::Tcp(write),
        )
    }

    /// An upgraded connection's websocket, on the path `path` names: the TCP stream
    /// itself when `path` is `raw` and the connection is a plain TCP one, else the
    /// upgraded connection's layers.
    pub fn from_upgraded(
        upgraded: hyper::upgrade::Upgraded,
        path: crate::config::SocketIoPath,
    ) -> (Self, Arc<SocketOut>) {
        type Accepted = hyper_util::rt::TokioIo<TcpStream>;
        let upgraded = match path {
            crate::config::SocketIoPath::Raw | crate::config::SocketIoPath::RawNodelay => {
                match upgraded.downcast::<Accepted>() {
                    Ok(parts) => {
                        let stream = parts.io.into_inner();
                        if path == crate::config::SocketIoPath::RawNodelay {
                            // Best effort: a socket that refuses keeps Nagle's algorithm.
                            let _ = stream.set_nodelay(true);
                        }
                        return Self::on_tcp(stream, parts.read_buf);
                    }
                    Err(upgraded) => upgraded,
                }
            }
            crate::config::SocketIoPath::Upgraded => upgraded,
        };
        Self::new(hyper_util::rt::TokioIo::new(upgraded))
    }

    fn with_halves(read: Reader, write: WriteHalf) -> (Self, Arc<SocketOut>) {
        let out = Arc::new(SocketOut {
            state: Mutex::new(OutState {
                io: write,
                queue: BytesMut::new(),
                failed: false,
                stall_limit: None,
                expires_at: None,
            }),
            wake: Notify::new(),
        });
        (
            SocketIo {
                read,
                out: out.clone(),
                stall: None,
            },
            out,
        )
    }
}

impl AsyncRead for SocketIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.read.as_mut().poll_read(cx, buf)
    }
}

impl SocketIo {
    /// `poll`'s result, unless it has been pending past the stall limit with nothing
    /// written meanwhile: then the connection is given up (`TimedOut`).
    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        queued_before: usize,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stall = None;
            return poll;
        }
        let mut state = self.out.state.lock().expect("socket out");
        let Some(limit) = state.stall_limit else {
            return poll;
        };
        if state.queue.len() < queued_before {
            // Progress: the bound starts again.
            self.stall = None;
        }
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if stall.as_mut().poll(cx).is_ready() {
            state.failed = true;
            self.stall = None;
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        poll
    }

    /// Writes what waits, then `then` on the connection itself (flush or shutdown),
    /// within the stall bound.
    fn drain_then(
        &mut self,
        cx: &mut Context<'_>,
        then: impl FnOnce(&mut WriteHalf, &mut Context<'_>) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        let queued = self.queued();
        let poll = {
            let mut state = self.out.state.lock().expect("socket out");
            match state.poll_drain(cx) {
                Poll::Ready(Ok(())) => then(&mut state.io, cx),
                other => other,
            }
        };
        self.bounded(cx, queued, poll)
    }

    fn queued(&self) -> usize {
        self.out.state.lock().expect("socket out").queue.len()
    }
}

impl AsyncWrite for SocketIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let queued = self.queued();
        let poll = Self::write_queued(&self.out, cx, buf);
        self.bounded(cx, queued, poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().drain_then(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().drain_then(cx, |io, cx| io.poll_shutdown(cx))
    }
}

impl SocketIo {
    /// Queues `buf` (whole, or nothing while the queue is past its high water) and
    /// writes what the socket takes now.
    fn write_queued(out: &SocketOut, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut state = out.state.lock().expect("socket out");
        if state.queue.len() >= HIGH_WATER {
            if let Poll::Ready(Err(e)) = state.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            if state.queue.len() >= HIGH_WATER {
                return Poll::Pending;
            }
        }
        if state.failed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        state.queue.extend_from_slice(buf);
        // As much as goes now; the rest on flush (a waker may be registered: a spurious
        // wake at worst).
        if let Poll::Ready(Err(e)) = state.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }
}

/// The header of a server-to-client websocket text frame (unmasked, final) whose
/// payload is `len` bytes long (RFC 6455 §5.2): the buffer and how much of it is used.
pub fn text_header(len: usize) -> ([u8; 10], usize) {
    let mut header = [0u8; 10];
    header[0] = 0x81;
    if len < 126 {
        header[1] = len as u8;
        (header, 2)
    } else if let Ok(short) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (header, 10)
    }
}

/// A complete server-to-client websocket text frame (unmasked, final) carrying `text`.
pub fn text_frame(text: &str) -> Bytes {
    let frame = WsFrame::message(
        Bytes::copy_from_slice(text.as_bytes()),
        OpCode::Data(Data::Text),
        true,
    );
    let mut out = Vec::with_capacity(frame.len());
    frame
        .format(&mut out)
        .expect("formatting into a Vec cannot fail");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn a_text_frame_has_the_websocket_header_and_the_text() {
        let short = text_frame("hi");
        assert_eq!(&short[..], b"\x81\x02hi");
        let long = "x".repeat(300);
        let framed = text_frame(&long);
        assert_eq!(&framed[..4], &[0x81, 126, 1, 44]);
        assert_eq!(&framed[4..], long.as_bytes());
    }

    #[test]
    fn text_headers_match_tungstenites_for_every_length_class() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let text = "y".repeat(len);
            let framed = text_frame(&text);
            let (header, used) = text_header(len);
            assert_eq!(&header[..used], &framed[..framed.len() - len], "{len}");
        }
    }

    /// Upgrades one real TCP connection with hyper (the accept loop's IO type), the
    /// client sending `ahead` in the same write as its request, and hands the upgraded
    /// connection to [`SocketIo::from_upgraded`] on `path`. Returns what the socket's
    /// reads gave first, whether its bytes go to the TCP stream itself, and what the
    /// client read after the 101's headers once a writer pass wrote `reply`.
    async fn upgraded_socket(
        path: crate::config::SocketIoPath,
        ahead: &'static [u8],
        reply: &'static [u8],
    ) -> (Vec<u8>, bool, Vec<u8>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (done, result) = tokio::sync::oneshot::channel();
        let done = Arc::new(Mutex::new(Some(done)));
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    let on_upgrade = request
                        .extensions_mut()
                        .remove::<hyper::upgrade::OnUpgrade>()
                        .expect("an upgrade");
                    let done = done.clone();
                    tokio::spawn(async move {
                        let upgraded = on_upgrade.await.expect("upgraded");
                        let (mut io, out) = SocketIo::from_upgraded(upgraded, path);
                        let mut first = vec![0u8; ahead.len()];
                        io.read_exact(&mut first)
                            .await
                            .expect("the bytes read ahead");
                        assert_eq!(out.try_write_now(reply), Written::Done);
                        let on_tcp = out.is_on_tcp();
                        let sender = done.lock().unwrap().take().unwrap();
                        let _ = sender.send((first, on_tcp));
                        // Keeps the connection open until the client has read.
                        let mut rest = Vec::new();
                        let _ = io.read_to_end(&mut rest).await;
                    });
                    async {
                        axum::http::Response::builder()
                            .status(101)
                            .header("connection", "upgrade")
                            .header("upgrade", "websocket")
                            .body(axum::body::Body::empty())
                    }
                },
            );
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades()
                .await
                .unwrap();
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut request =
            b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
                .to_vec();
        request.extend_from_slice(ahead);
        client.write_all(&request).await.unwrap();
        let (first, on_tcp) = tokio::time::timeout(std::time::Duration::from_secs(30), result)
            .await
            .expect("the server read the bytes sent with the request")
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.ends_with(reply) {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed before the reply");
            seen.extend_from_slice(&buf[..n]);
        }
        let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (first, on_tcp, seen[end..].to_vec())
    }

    /// On the `raw` path an upgraded connection's websocket reads and
    /// writes the accepted TCP stream itself, first reading what the HTTP connection
    /// had read past the request; on `upgraded` it goes through the layers, with the
    /// same bytes either way.
    #[tokio::test]
    async fn an_upgraded_socket_writes_on_its_tcp_stream_and_reads_what_was_read_ahead() {
        use crate::config::SocketIoPath;
        let ahead: &[u8] = b"\x81\x85\x01\x02\x03\x04first frame, sent with the request";
        for (path, on_tcp) in [(SocketIoPath::Raw, true), (SocketIoPath::Upgraded, false)] {
            let (first, raw, written) = upgraded_socket(path, ahead, b"reply-bytes").await;
            assert_eq!(raw, on_tcp, "{path:?}");
            assert_eq!(first, ahead, "{path:?}");
            assert_eq!(written, b"reply-bytes", "{path:?}");
        }
    }

    /// A websocket on the TCP stream keeps nothing of the HTTP connection's read
    /// buffer: what was read ahead (a view into that buffer) is copied, so an idle
    /// socket does not hold the whole buffer for its lifetime (it held 8 KB or more:
    /// 17.1 KB per idle subscription against 13.0 on the upgraded path; this failed).
    #[tokio::test]
    async fn a_socket_on_its_tcp_stream_keeps_no_view_of_the_http_read_buffer() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let buffer = Bytes::from(vec![7u8; 8192]);
        for (from, to) in [(100, 110), (8192, 8192)] {
            let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let (mut io, _out) = SocketIo::on_tcp(stream, buffer.slice(from..to));
            assert!(buffer.is_unique(), "ahead {from}..{to} keeps the buffer");
            if to > from {
                let mut read = vec![0u8; to - from];
                io.read_exact(&mut read).await.unwrap();
                assert_eq!(read, vec![7u8; to - from]);
            }
        }
    }

    #[tokio::test]
    async fn parts_go_out_as_one_frame_and_a_full_socket_queues_the_rest_in_order() {
        use tokio::io::AsyncWriteExt;
        let (ours, mut theirs) = tokio::io::duplex(8);
        let (mut io, out) = SocketIo::new(ours);
        assert_eq!(out.try_write_parts(&[b"ab", b"", b"cd"]), Written::Done);
        assert_eq!(
            out.try_write_parts(&[b"e", b"fgh", b"ijk"]),
            Written::Partly
        );
        assert_eq!(out.try_write_parts(&[b"xyz"]), Written::Waiting);
        io.write_all(b"lmn").await.unwrap();
        let reader = tokio::spawn(async move {
            let mut all = vec![0u8; 14];
            theirs.read_exact(&mut all).await.unwrap();
            all
        });
        io.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), b"abcdefghijklmn");
        assert!(out.is_idle());
    }

    #[tokio::test]
    async fn a_full_socket_keeps_the_rest_in_order_and_writes_it_on_flush() {
        use tokio::io::AsyncWriteExt;
        let (ours, mut theirs) = tokio::io::duplex(8);
        let (mut io, out) = SocketIo::new(ours);
        assert_eq!(out.try_write_now(b"abcdef"), Written::Done);
        assert_eq!(out.try_write_now(b"ghijk"), Written::Partly);
        assert_eq!(
            out.try_write_now(b"xyz"),
            Written::Waiting,
            "bytes wait already"
        );
        assert!(!out.is_idle());
        io.write_all(b"lmn").await.unwrap();
        let reader = tokio::spawn(async move {
            let mut all = vec![0u8; 14];
            theirs.read_exact(&mut all).await.unwrap();
            all
        });
        io.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), b"abcdefghijklmn");
        assert!(out.is_idle());
    }

    /// A client that stops reading held the socket's task in its write for good: its
    /// pings' timeout and its token's expiry could never run. Now a write that makes no
    /// progress for the stall limit fails, and one that progresses is not cut.
    #[tokio::test]
    async fn a_write_to_a_socket_that_stops_reading_fails_after_the_stall_limit() {
        use std::time::Duration;
        use tokio::io::AsyncWriteExt;
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let (mut io, out) = SocketIo::new(ours);
        out.set_stall_limit(Duration::from_millis(300));
        // A slow reader that keeps reading is never cut: 64 KB at 4 KB per 100 ms.
        let slow = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut total = 0;
            while total < 64 * 1024 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = theirs.read(&mut buf).await.unwrap();
                total += n;
            }
            theirs
        });
        let written = tokio::time::timeout(Duration::from_secs(20), async {
            io.write_all(&vec![b'a'; 64 * 1024]).await?;
            io.flush().await
        })
        .await
        .expect("a progressing write finishes");
        written.expect("a reader that keeps reading is not cut");
        let _theirs = slow.await.unwrap();
        // Now the reader stops: the write fails, and nothing more is written.
        let stuck = tokio::time::timeout(Duration::from_secs(10), async {
            io.write_all(&vec![b'b'; 64 * 1024]).await?;
            io.flush().await
        })
        .await
        .expect("the write gives up instead of waiting for good");
        assert_eq!(
            stuck.expect_err("the write fails").kind(),
            io::ErrorKind::TimedOut
        );
        assert_eq!(out.try_write_now(b"x"), Written::Failed);
    }

    /// From the socket's expiry on, writer passes write nothing: their frames wait for
    /// the socket's task, which closes the socket instead.
    #[tokio::test]
    async fn writer_passes_write_nothing_once_the_socket_expired() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let (_io, out) = SocketIo::new(ours);
        out.set_expiry(tokio::time::Instant::now() + std::time::Duration::from_secs(60));
        assert_eq!(out.try_write_now(b"before"), Written::Done);
        out.set_expiry(tokio::time::Instant::now());
        assert_eq!(out.try_write_now(b"after"), Written::Busy);
        assert_eq!(out.try_write_parts(&[b"af", b"ter"]), Written::Busy);
    }
}

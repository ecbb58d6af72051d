//! A lean websocket subscriber for the fan-out rows: 1,000 client sockets share the two
//! cores with the server, and a general client library's cost per frame (a task poll, a
//! message allocated and UTF-8 checked per frame) can exceed the server's, so the row
//! would measure the client. This one reads the real socket into one buffer and walks
//! every frame in it byte-exact (tungstenite's header parser, so lengths and opcodes are
//! the protocol's), answers pings, and hands each text frame to the caller in place.
//! Frames it sends (connection_init, subscribe, pongs) are masked, as RFC 6455 asks.

use std::io::Cursor;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::subscribe::Server;

pub struct LeanSocket {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start.
    at: usize,
    mask: u32,
}

impl LeanSocket {
    /// Opens `/graphql/ws` (graphql-transport-ws) and waits for `connection_ack`.
    pub async fn open(server: &Server) -> Result<Self> {
        Self::open_at(&server.base, server.token.as_deref()).await
    }

    /// As [`LeanSocket::open`], on the server at `base` (`host:port`), with `token`.
    pub async fn open_at(base: &str, token: Option<&str>) -> Result<Self> {
        let mut stream = TcpStream::connect(base).await?;
        stream.set_nodelay(true)?;
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let request = format!(
            "GET /graphql/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n",
            base
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(4096);
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("the server closed during the upgrade");
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
            .to_ascii_lowercase();
        if !head.starts_with("http/1.1 101") || !head.contains(&accept) {
            bail!("no websocket upgrade: {head}");
        }
        let mut socket = LeanSocket {
            stream,
            buf,
            at: end,
            mask: 0x9e37_79b9,
        };
        let payload = match token {
            Some(token) => json!({"Authorization": format!("Bearer {token}")}),
            None => json!({}),
        };
        socket
            .send(&json!({"type": "connection_init", "payload": payload}).to_string())
            .await?;
        let mut acked = false;
        while !acked {
            socket
                .read_frames(&mut |text| {
                    acked |= text.windows(14).any(|w| w == b"connection_ack");
                })
                .await?;
        }
        Ok(socket)
    }

    pub async fn send(&mut self, text: &str) -> Result<()> {
        self.send_frame(Frame::message(
            text.as_bytes().to_vec(),
            OpCode::Data(Data::Text),
            true,
        ))
        .await
    }

    /// Sends `frame` masked, as a client must.
    async fn send_frame(&mut self, frame: Frame) -> Result<()> {
        let out = masked(frame, &mut self.mask)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// This socket, read from now on without the runtime: see [`SweptSocket`].
    pub fn into_swept(self) -> Result<SweptSocket> {
        let stream = self.stream.into_std()?;
        stream.set_nonblocking(true)?;
        let end = self.buf.len();
        let mut buf = self.buf;
        buf.resize(end.max(16 * 1024), 0);
        Ok(SweptSocket {
            stream,
            buf,
            at: self.at,
            end,
            mask: self.mask,
        })
    }

    /// Reads once from the socket and hands every complete text frame to `on_text`
    /// (pings answered, other frames skipped). `Err` when the socket closes or breaks.
    pub async fn read_frames(&mut self, on_text: &mut impl FnMut(&[u8])) -> Result<()> {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > 64 * 1024 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        if self.buf.capacity() - self.buf.len() < 2048 {
            self.buf.reserve(16 * 1024);
        }
        if self.at == self.buf.len() || !self.complete_frame_waits()? {
            let read = self.stream.read_buf(&mut self.buf).await?;
            if read == 0 {
                bail!("the server closed the socket");
            }
        }
        let pings = walk_frames(&self.buf, &mut self.at, on_text)?;
        for ping in pings {
            self.send_frame(Frame::pong(ping)).await?;
        }
        Ok(())
    }

    fn complete_frame_waits(&self) -> Result<bool> {
        let mut cursor = Cursor::new(&self.buf[self.at..]);
        Ok(match FrameHeader::parse(&mut cursor)? {
            Some((_, length)) => {
                self.at + cursor.position() as usize + length as usize <= self.buf.len()
            }
            None => false,
        })
    }
}

/// `frame` masked with the next of `mask`'s values, encoded.
fn masked(mut frame: Frame, mask: &mut u32) -> Result<Vec<u8>> {
    // A cheap generator is enough here: the mask only has to vary.
    *mask ^= *mask << 13;
    *mask ^= *mask >> 17;
    *mask ^= *mask << 5;
    frame.header_mut().mask = Some(mask.to_le_bytes());
    let mut out = Vec::with_capacity(frame.len() + 4);
    frame.format(&mut out)?;
    Ok(out)
}

/// Walks every complete frame of `buf` from `at` (left at the first incomplete one),
/// handing each text frame to `on_text`; the pings' payloads are returned, to answer.
fn walk_frames(
    buf: &[u8],
    at: &mut usize,
    on_text: &mut impl FnMut(&[u8]),
) -> Result<Vec<Vec<u8>>> {
    let mut pings = Vec::new();
    loop {
        let mut cursor = Cursor::new(&buf[*at..]);
        let Some((header, length)) = FrameHeader::parse(&mut cursor)? else {
            break;
        };
        let start = *at + cursor.position() as usize;
        let end = start + usize::try_from(length).context("frame length")?;
        if end > buf.len() {
            break;
        }
        if header.mask.is_some() {
            bail!("a masked frame from the server");
        }
        match header.opcode {
            OpCode::Data(Data::Text) => on_text(&buf[start..end]),
            OpCode::Control(Control::Ping) => pings.push(buf[start..end].to_vec()),
            OpCode::Control(Control::Close) => bail!("the server closed the socket"),
            _ => {}
        }
        *at = end;
    }
    Ok(pings)
}

/// A subscriber's socket read without the runtime, by a thread that sweeps many such
/// sockets in turn ([`crate::fanout::Readers::Swept`]): each sweep drains whatever the
/// kernel holds for it, frames walked as [`LeanSocket`] walks them. No reactor watches
/// it, so a frame's arrival wakes nobody: the receiving side's cost per frame is the
/// copy and the walk, as for a client on another machine, and not a wake-up of its own.
pub struct SweptSocket {
    stream: std::net::TcpStream,
    /// Read into in place (its length is its capacity); the bytes are `at..end`.
    buf: Vec<u8>,
    at: usize,
    end: usize,
    mask: u32,
}

impl SweptSocket {
    /// Reads everything the kernel holds for this socket now, handing every complete
    /// text frame to `on_text` (pings answered). `Err` when the socket closes or breaks.
    pub fn drain(&mut self, on_text: &mut impl FnMut(&[u8])) -> Result<()> {
        use std::io::{Read, Write};
        loop {
            if self.at == self.end {
                (self.at, self.end) = (0, 0);
            } else if self.end == self.buf.len() {
                // A frame is cut at the end: move it to the front, and make room for
                // it when it is as long as the buffer.
                self.buf.copy_within(self.at..self.end, 0);
                (self.at, self.end) = (0, self.end - self.at);
                if self.end == self.buf.len() {
                    self.buf.resize(self.buf.len() * 2, 0);
                }
            }
            let space = self.buf.len() - self.end;
            let n = match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => bail!("the server closed the socket"),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            self.end += n;
            for ping in walk_frames(&self.buf[..self.end], &mut self.at, on_text)? {
                self.stream
                    .write_all(&masked(Frame::pong(ping), &mut self.mask)?)?;
            }
            if n < space {
                return Ok(());
            }
        }
    }
}

/// The number after `"field":` in a frame, read in place.
pub fn number_after(text: &[u8], field: &[u8]) -> Option<i64> {
    let at = text.windows(field.len()).position(|w| w == field)? + field.len();
    let digits = &text[at..];
    let end = digits
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_are_read_in_place() {
        let frame = br#"{"type":"next","id":"1","payload":{"data":{"boardChanged":{"version":12,"position":3456}}}}"#;
        assert_eq!(super::number_after(frame, b"\"version\":"), Some(12));
        assert_eq!(super::number_after(frame, b"\"position\":"), Some(3456));
        assert_eq!(super::number_after(b"{}", b"\"position\":"), None);
    }
}

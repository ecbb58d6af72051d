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
    async fn send_frame(&mut self, mut frame: Frame) -> Result<()> {
        // A cheap generator is enough here: the mask only has to vary.
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        frame.header_mut().mask = Some(self.mask.to_le_bytes());
        let mut out = Vec::with_capacity(frame.len() + 4);
        frame.format(&mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
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
        let mut pings = Vec::new();
        loop {
            let mut cursor = Cursor::new(&self.buf[self.at..]);
            let Some((header, length)) = FrameHeader::parse(&mut cursor)? else {
                break;
            };
            let start = self.at + cursor.position() as usize;
            let end = start + usize::try_from(length).context("frame length")?;
            if end > self.buf.len() {
                break;
            }
            if header.mask.is_some() {
                bail!("a masked frame from the server");
            }
            match header.opcode {
                OpCode::Data(Data::Text) => on_text(&self.buf[start..end]),
                OpCode::Control(Control::Ping) => pings.push(self.buf[start..end].to_vec()),
                OpCode::Control(Control::Close) => bail!("the server closed the socket"),
                _ => {}
            }
            self.at = end;
        }
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

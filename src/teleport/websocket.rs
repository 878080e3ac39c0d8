//! The client side of Teleport's ALPN connection upgrade: an HTTP/1.1 WebSocket upgrade on
//! `/webapi/connectionupgrade`, after which the byte stream travels in WebSocket binary frames.

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// The path the proxy serves the upgrade on.
pub const UPGRADE_PATH: &str = "/webapi/connectionupgrade";
/// The sub-protocol: the ALPN upgrade with server pings.
pub const PROTOCOL: &str = "alpn-ping";
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEADER: usize = 16 * 1024;
const MAX_FRAME: u64 = 16 * 1024 * 1024;

/// Performs the upgrade on `io` (already TLS to the proxy) and returns a plain byte stream that
/// carries the tunnelled bytes. Errors are human-readable reasons.
pub async fn upgrade<S>(mut io: S, host: &str) -> Result<DuplexStream, String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let request = format!(
        "GET {UPGRADE_PATH} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: {PROTOCOL}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the upgrade request: {e}"))?;
    let (head, leftover) = read_head(&mut io).await?;
    check_response(&head, &key)?;
    Ok(bridge(io, leftover, true))
}

async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).into_owned();
            return Ok((head, buf[pos + 4..].to_vec()));
        }
        if buf.len() > MAX_HEADER {
            return Err("the upgrade response headers are too long".into());
        }
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the upgrade response: {e}"))?;
        if n == 0 {
            return Err("the proxy closed the connection during the upgrade".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn check_response(head: &str, key: &str) -> Result<(), String> {
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    match code {
        "101" => {}
        "404" => {
            return Err(
                "the proxy does not support the connection upgrade (404: Teleport is too old)"
                    .into(),
            );
        }
        _ => return Err(format!("the proxy refused the upgrade: {status:?}")),
    }
    let header = |name: &str| header(head, name);
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err("the upgrade response is not a WebSocket upgrade".into());
    }
    if header("sec-websocket-protocol").as_deref() != Some(PROTOCOL) {
        return Err(format!(
            "the proxy did not accept the {PROTOCOL} sub-protocol"
        ));
    }
    if header("sec-websocket-accept").as_deref() != Some(accept_key(key).as_str()) {
        return Err("the upgrade response has a wrong Sec-WebSocket-Accept".into());
    }
    Ok(())
}

/// The value of header `name` (any case) in an HTTP head (start line, then header lines).
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455).
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// WebSocket opcodes we handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

/// Encodes one frame; `mask` is required from clients and forbidden from servers.
pub fn encode_frame(op: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | op as u8);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads one frame: (opcode, payload). `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 2];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let op = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_FRAME {
        return Err(std::io::Error::other("WebSocket frame too large"));
    }
    let mask = if masked {
        let mut m = [0u8; 4];
        r.read_exact(&mut m).await?;
        Some(m)
    } else {
        None
    };
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if let Some(m) = mask {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= m[i % 4]);
    }
    Ok(Some((op, payload)))
}

/// Runs the framing in tasks and hands back the plain end of a pipe. `client` masks outgoing
/// frames (RFC 6455 requires it from clients, forbids it from servers).
pub fn bridge<S>(io: S, leftover: Vec<u8>, client: bool) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (inner_r, inner_w) = tokio::io::split(io);
    let (plain_r, plain_w) = tokio::io::split(theirs);
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(write_frames(out_rx, inner_w));
    tokio::spawn(frame_plain_data(plain_r, out_tx.clone(), client));
    let reader = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(leftover), inner_r);
    tokio::spawn(unframe(reader, plain_w, out_tx, client));
    ours
}

/// Frames to the peer: data from our side, pongs, and a close at the end.
async fn write_frames(mut frames: mpsc::Receiver<Vec<u8>>, mut to: impl AsyncWrite + Unpin) {
    while let Some(frame) = frames.recv().await {
        if to.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// Our side's bytes as binary frames; a close frame when our side is done.
async fn frame_plain_data(
    mut plain: impl AsyncRead + Unpin,
    frames: mpsc::Sender<Vec<u8>>,
    client: bool,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let frame = match plain.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let close = encode_frame(Opcode::Close, &[0x03, 0xe8], mask(client));
                let _ = frames.send(close).await;
                return;
            }
            Ok(n) => encode_frame(Opcode::Binary, &buf[..n], mask(client)),
        };
        if frames.send(frame).await.is_err() {
            return;
        }
    }
}

/// The peer's data frames as plain bytes to our side; pings answered; anything else ends it.
async fn unframe(
    mut from: impl AsyncRead + Unpin,
    mut plain: impl AsyncWrite + Unpin,
    frames: mpsc::Sender<Vec<u8>>,
    client: bool,
) {
    let data = [Opcode::Binary, Opcode::Continuation, Opcode::Text].map(|o| o as u8);
    loop {
        match read_frame(&mut from).await {
            Ok(Some((op, payload))) if data.contains(&op) => {
                if plain.write_all(&payload).await.is_err() {
                    return;
                }
            }
            Ok(Some((op, payload))) if op == Opcode::Ping as u8 => {
                let pong = encode_frame(Opcode::Pong, &payload, mask(client));
                if frames.send(pong).await.is_err() {
                    return;
                }
            }
            Ok(Some((op, _))) if op == Opcode::Pong as u8 => {}
            _ => {
                let _ = plain.shutdown().await;
                return;
            }
        }
    }
}

fn mask(client: bool) -> Option<[u8; 4]> {
    client.then(rand::random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn frames_round_trip() {
        for len in [0usize, 5, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let bytes = encode_frame(Opcode::Binary, &payload, Some([1, 2, 3, 4]));
            let mut r = bytes.as_slice();
            let (op, got) = read_frame(&mut r).await.unwrap().unwrap();
            assert_eq!(op, Opcode::Binary as u8);
            assert_eq!(got, payload);
        }
    }
}

//! The start of a session, spoken by us before lettre takes over: the greeting, EHLO (HELO
//! when the server refuses EHLO), STARTTLS, and EHLO again inside TLS.
//!
//! Two things lettre's own start does not do are why this exists:
//! - **HELO.** A server that answers EHLO with a 5xx gets HELO, as Go's `net/smtp` (under the
//!   original plugin) does; the session then has no extensions: no STARTTLS, AUTH or PIPELINING.
//! - **Nothing read before TLS is read after it.** A reply to STARTTLS followed by more bytes
//!   in the same read is refused: those bytes were sent before the handshake, in clear, and a
//!   man in the middle could have put forged replies there (STARTTLS command injection,
//!   CVE-2011-0411). lettre 0.11 keeps such bytes in its buffer and reads them as replies
//!   inside TLS.

use std::sync::Arc;

use lettre::transport::smtp::commands::{Ehlo, Quit, Starttls};
use lettre::transport::smtp::extension::ClientId;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::dial::Failure;
use super::stream::{Io, Reader};

/// The longest reply line we take, and the longest reply (lettre's limits).
const MAX_LINE: usize = 1000;
const MAX_REPLY: usize = 100_000;

/// STARTTLS as the policy wants it.
pub(super) struct StartTls<'a> {
    pub config: &'a Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
    /// A server that does not offer it fails the connection (`mandatory`).
    pub required: bool,
}

/// A session opened up to the point where lettre takes over.
pub(super) struct Opened {
    pub stream: Reader,
    pub greeting: Reply,
    /// The last EHLO reply, or HELO's when EHLO was refused.
    pub hello: Reply,
    /// Whether STARTTLS ran.
    pub encrypted: bool,
}

/// One reply as received.
pub(super) struct Reply {
    pub code: u16,
    /// Its bytes, CRLF line ends included.
    pub raw: String,
}

impl Reply {
    fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The text of each line, after the code and separator.
    pub(super) fn lines(&self) -> impl Iterator<Item = &str> {
        self.raw
            .lines()
            .map(|l| l.get(4..).unwrap_or_default().trim_end_matches('\r'))
    }

    /// Whether an EHLO reply names `keyword` (an extension) on one of its lines.
    pub(super) fn offers(&self, keyword: &str) -> bool {
        self.lines().skip(1).any(|line| {
            line.split_ascii_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }

    /// The AUTH mechanisms an EHLO reply offers (`AUTH PLAIN LOGIN`, or the older `AUTH=...`),
    /// upper-cased.
    pub(super) fn auth_mechanisms(&self) -> Vec<String> {
        let mut out = Vec::new();
        for line in self.lines().skip(1) {
            let mut words = line.split(|c: char| c.is_ascii_whitespace() || c == '=');
            if words.next().is_some_and(|k| k.eq_ignore_ascii_case("AUTH")) {
                out.extend(words.filter(|w| !w.is_empty()).map(str::to_ascii_uppercase));
            }
        }
        out
    }

    /// The refusal this reply is, when negative.
    fn accepted(self) -> Result<Self, Failure> {
        if self.is_positive() {
            return Ok(self);
        }
        let text = self.lines().collect::<Vec<_>>().join(" ");
        Err(Failure::Refused {
            code: self.code,
            text,
        })
    }
}

/// Greeting, EHLO or HELO, and STARTTLS as `starttls` asks, on `stream`.
pub(super) async fn open(
    stream: Box<dyn Io>,
    hello: &ClientId,
    starttls: Option<StartTls<'_>>,
) -> Result<Opened, Failure> {
    let mut stream = BufReader::new(stream);
    let greeting = read_reply(&mut stream).await?.accepted()?;
    let mut reply = hello_exchange(&mut stream, hello).await?;
    let mut encrypted = false;
    match starttls {
        Some(tls) if reply.offers("STARTTLS") => {
            stream = upgrade(stream, tls).await?;
            reply = hello_exchange(&mut stream, hello).await?;
            encrypted = true;
        }
        Some(StartTls { required: true, .. }) => {
            quit(&mut stream).await;
            return Err(Failure::NoStartTls);
        }
        _ => {}
    }
    Ok(Opened {
        stream,
        greeting,
        hello: reply,
        encrypted,
    })
}

/// EHLO; HELO when the server refuses EHLO with a permanent error (RFC 5321 §4.1.4: 500,
/// 501, 502, 550... mean it does not take EHLO).
async fn hello_exchange(stream: &mut Reader, hello: &ClientId) -> Result<Reply, Failure> {
    let reply = command(stream, &Ehlo::new(hello.clone()).to_string()).await?;
    if (500..600).contains(&reply.code) {
        return command(stream, &format!("HELO {hello}\r\n"))
            .await?
            .accepted();
    }
    reply.accepted()
}

/// STARTTLS and the TLS handshake; refused when the server sent more than its reply before
/// the handshake.
async fn upgrade(mut stream: Reader, tls: StartTls<'_>) -> Result<Reader, Failure> {
    command(&mut stream, &Starttls.to_string())
        .await?
        .accepted()?;
    let early = stream.buffer().len();
    if early > 0 {
        return Err(Failure::Injected(early));
    }
    let plain = stream.into_inner();
    let encrypted = tokio_rustls::TlsConnector::from(Arc::clone(tls.config))
        .connect(tls.name, plain)
        .await?;
    Ok(BufReader::new(Box::new(encrypted)))
}

/// Writes `line` and reads the reply.
async fn command(stream: &mut Reader, line: &str) -> Result<Reply, Failure> {
    let inner = stream.get_mut();
    inner.write_all(line.as_bytes()).await?;
    inner.flush().await?;
    read_reply(stream).await
}

/// Says QUIT without waiting for the answer, before dropping the connection.
async fn quit(stream: &mut Reader) {
    let _ = stream
        .get_mut()
        .write_all(Quit.to_string().as_bytes())
        .await;
}

/// Reads one reply (RFC 5321 §4.2: `ddd-text` lines, then a `ddd text` line).
async fn read_reply(stream: &mut Reader) -> Result<Reply, Failure> {
    let mut raw = Vec::new();
    loop {
        let start = raw.len();
        let limit = (MAX_LINE + 1) as u64;
        if (&mut *stream)
            .take(limit)
            .read_until(b'\n', &mut raw)
            .await?
            == 0
        {
            let eof = std::io::ErrorKind::UnexpectedEof;
            return Err(std::io::Error::new(eof, "the server closed the connection").into());
        }
        let line = &raw[start..];
        if !line.ends_with(b"\n") || raw.len() > MAX_REPLY {
            return Err(Failure::Malformed("reply line or reply too long".into()));
        }
        let code = reply_code(line)?;
        if start > 0 && raw.get(..3) != line.get(..3) {
            return Err(Failure::Malformed(
                "reply lines with different codes".into(),
            ));
        }
        if line.get(3) != Some(&b'-') {
            let raw = String::from_utf8(raw)
                .map_err(|_| Failure::Malformed("reply not in UTF-8".into()))?;
            return Ok(Reply { code, raw });
        }
    }
}

/// The code a reply line starts with: three digits, then `-`, space or the line end.
fn reply_code(line: &[u8]) -> Result<u16, Failure> {
    let digits = line.get(..3).filter(|d| d.iter().all(u8::is_ascii_digit));
    let separator = line.get(3).is_some_and(|b| b" -\r\n".contains(b));
    match digits {
        Some(d) if separator && (b'2'..=b'5').contains(&d[0]) => {
            Ok(d.iter().fold(0, |n, b| n * 10 + u16::from(b - b'0')))
        }
        _ => {
            let shown = String::from_utf8_lossy(&line[..line.len().min(40)]);
            Err(Failure::Malformed(format!("not an SMTP reply: {shown:?}")))
        }
    }
}

//! One SMTP session of the receiver: the command loop, TLS upgrade, AUTH and DATA.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{AuthMechanism, ReceivedMail, Shared, Stage};

/// The name the receiver gives itself.
const HOST: &str = "receiver.test";
/// Longest command line we read (RFC 5321 allows 512; data lines 1000).
const MAX_LINE: u64 = 64 * 1024;
/// Largest message we keep.
const MAX_MESSAGE: usize = 50 * 1024 * 1024;
/// A session idle this long is closed.
const IDLE: Duration = Duration::from_secs(300);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Stream = BufReader<Box<dyn Io>>;

/// Why the session ends.
enum End {
    Quit,
    Io,
}

impl From<io::Error> for End {
    fn from(_: io::Error) -> Self {
        Self::Io
    }
}

struct Session {
    shared: Arc<Shared>,
    stream: Stream,
    tls: bool,
    greeted: bool,
    auth_user: Option<String>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    /// Replies held back while pipelined commands are still being read.
    unsent: Vec<u8>,
}

/// Serves one connection until QUIT, EOF, an I/O error or idleness.
pub(super) async fn run(tcp: TcpStream, shared: Arc<Shared>) {
    let refuse = {
        let mut state = shared.state();
        state.stats.connections += 1;
        let refuse = state.refuse_connections > 0;
        state.refuse_connections = state.refuse_connections.saturating_sub(1);
        refuse
    };
    let (stream, tls): (Box<dyn Io>, bool) = match &shared.settings.implicit_tls {
        Some(config) => {
            let accept = TlsAcceptor::from(Arc::clone(config)).accept(tcp);
            match tokio::time::timeout(Duration::from_secs(10), accept).await {
                Ok(Ok(tls)) => (Box::new(tls), true),
                _ => return,
            }
        }
        None => (Box::new(tcp), false),
    };
    if tls {
        shared.state().stats.tls_sessions += 1;
    }
    let mut session = Session {
        shared,
        stream: BufReader::new(stream),
        tls,
        greeted: false,
        auth_user: None,
        mail_from: None,
        rcpt_to: Vec::new(),
        unsent: Vec::new(),
    };
    if refuse {
        let _ = session
            .reply("421 4.3.2 Service not available, closing channel")
            .await;
        return;
    }
    if session
        .reply(&format!("220 {HOST} ESMTP test receiver"))
        .await
        .is_err()
    {
        return;
    }
    let _ = session.serve().await;
    let _ = session.stream.get_mut().shutdown().await;
}

impl Session {
    async fn serve(&mut self) -> Result<End, End> {
        loop {
            let Some(line) = self.read_line().await? else {
                return Ok(End::Io);
            };
            if !self.stream.buffer().is_empty() {
                self.shared.state().stats.pipelined += 1;
            }
            let (verb, arg) = match line.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_owned()),
                None => (line.to_ascii_uppercase(), String::new()),
            };
            match verb.as_str() {
                "EHLO" => self.ehlo().await?,
                "HELO" => {
                    self.shared.state().stats.helos += 1;
                    self.greeted = true;
                    self.reset();
                    self.reply(&format!("250 {HOST}")).await?;
                }
                "STARTTLS" => self.starttls().await?,
                "AUTH" => self.auth(&arg).await?,
                "MAIL" => self.mail(&arg).await?,
                "RCPT" => self.rcpt(&arg).await?,
                "DATA" => self.data().await?,
                "RSET" => {
                    self.reset();
                    self.reply("250 2.0.0 Ok").await?;
                }
                "NOOP" => {
                    self.shared.state().stats.noops += 1;
                    self.reply("250 2.0.0 Ok").await?;
                }
                "VRFY" => self.reply("252 2.1.5 Cannot verify").await?,
                "QUIT" => {
                    self.shared.state().stats.quits += 1;
                    self.reply("221 2.0.0 Bye").await?;
                    return Ok(End::Quit);
                }
                _ => self.reply("500 5.5.2 Command not recognized").await?,
            }
        }
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }

    fn offers_starttls(&self) -> bool {
        !self.tls && self.shared.settings.starttls.is_some()
    }

    fn offered_auth(&self) -> Option<&[AuthMechanism]> {
        let auth = self.shared.settings.auth.as_ref()?;
        (self.tls || !auth.require_tls).then_some(auth.mechanisms.as_slice())
    }

    async fn ehlo(&mut self) -> Result<(), End> {
        if let Some(refusal) = self.shared.settings.refuse_ehlo.clone() {
            return self.reply(&refusal).await;
        }
        self.greeted = true;
        self.reset();
        let mut lines = vec![HOST.to_owned(), "8BITMIME".into(), "SMTPUTF8".into()];
        if !self.shared.settings.no_pipelining {
            lines.push("PIPELINING".into());
        }
        if self.offers_starttls() {
            lines.push("STARTTLS".into());
        }
        if let Some(mechanisms) = self.offered_auth().filter(|m| !m.is_empty()) {
            let names: Vec<&str> = mechanisms.iter().map(|m| m.name()).collect();
            lines.push(format!("AUTH {}", names.join(" ")));
        }
        lines.push("SIZE 52428800".into());
        let last = lines.len() - 1;
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
            .collect();
        self.write_raw(text.as_bytes()).await
    }

    async fn starttls(&mut self) -> Result<(), End> {
        let Some(config) = self.shared.settings.starttls.clone().filter(|_| !self.tls) else {
            return self.reply("502 5.5.1 STARTTLS not available").await;
        };
        let trailer = self.shared.settings.starttls_trailer.clone();
        let ready = format!(
            "220 2.0.0 Ready to start TLS\r\n{}",
            trailer.unwrap_or_default()
        );
        self.write_raw(ready.as_bytes()).await?;
        self.flush_replies().await?;
        // Anything the client pipelined before the handshake is dropped (RFC 3207 §4.2).
        let placeholder: Box<dyn Io> = Box::new(tokio::io::duplex(1).0);
        let plain = std::mem::replace(&mut self.stream, BufReader::new(placeholder)).into_inner();
        let accept = TlsAcceptor::from(config).accept(plain);
        let tls = tokio::time::timeout(Duration::from_secs(10), accept)
            .await
            .map_err(|_| End::Io)??;
        self.stream = BufReader::new(Box::new(tls));
        self.tls = true;
        self.greeted = false;
        self.auth_user = None;
        self.reset();
        self.shared.state().stats.tls_sessions += 1;
        Ok(())
    }

    async fn auth(&mut self, arg: &str) -> Result<(), End> {
        let (mechanism, initial) = match arg.split_once(' ') {
            Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_owned())),
            None => (arg.to_ascii_uppercase(), None),
        };
        self.shared.state().stats.auth_attempts += 1;
        let offered = self.offered_auth().map(<[_]>::to_vec).unwrap_or_default();
        if !self.greeted || self.auth_user.is_some() || offered.is_empty() {
            return self.reply("503 5.5.1 AUTH not allowed now").await;
        }
        let chosen = offered.into_iter().find(|m| m.name() == mechanism);
        let credentials = match chosen {
            Some(AuthMechanism::Plain) => self.plain(initial).await?,
            Some(AuthMechanism::Login) => self.login(initial).await?,
            Some(AuthMechanism::CramMd5) => self.cram_md5().await?,
            None => {
                return self
                    .reply("504 5.5.4 Unrecognized authentication type")
                    .await;
            }
        };
        let Some((user, password)) = credentials else {
            return self.reply("501 5.5.2 Cannot decode response").await;
        };
        let ok = self
            .shared
            .settings
            .auth
            .as_ref()
            .is_some_and(|a| a.username == user && a.password == password);
        {
            let mut state = self.shared.state();
            if ok {
                state.stats.auth_successes += 1;
            } else {
                state.stats.auth_failures += 1;
            }
        }
        if ok {
            self.auth_user = Some(user);
            self.reply("235 2.7.0 Authentication successful").await
        } else {
            self.reply("535 5.7.8 Authentication credentials invalid")
                .await
        }
    }

    async fn plain(&mut self, initial: Option<String>) -> Result<Option<(String, String)>, End> {
        let response = match initial {
            Some(i) => i,
            None => {
                self.reply("334 ").await?;
                self.read_line().await?.ok_or(End::Io)?
            }
        };
        let decoded = decode(&response);
        Ok(decoded.and_then(|text| {
            let mut parts = text.split('\0');
            let (_authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
            Some((user.to_owned(), password.to_owned()))
        }))
    }

    async fn login(&mut self, initial: Option<String>) -> Result<Option<(String, String)>, End> {
        let user = match initial {
            Some(i) => i,
            None => {
                self.reply(&format!("334 {}", BASE64.encode("Username:")))
                    .await?;
                self.read_line().await?.ok_or(End::Io)?
            }
        };
        self.reply(&format!("334 {}", BASE64.encode("Password:")))
            .await?;
        let password = self.read_line().await?.ok_or(End::Io)?;
        Ok(decode(&user).zip(decode(&password)))
    }

    /// CRAM-MD5: the answer is checked here against the configured password; a right one is
    /// handed on as (user, password) so the check after it passes, a wrong one with no password.
    async fn cram_md5(&mut self) -> Result<Option<(String, String)>, End> {
        use hmac::Mac as _;
        let challenge = format!("<{}.{}@{HOST}>", rand::random::<u32>(), std::process::id());
        self.reply(&format!("334 {}", BASE64.encode(&challenge)))
            .await?;
        let line = self.read_line().await?.ok_or(End::Io)?;
        let Some(text) = decode(&line) else {
            return Ok(None);
        };
        let Some((user, digest)) = text.rsplit_once(' ') else {
            return Ok(None);
        };
        let Some(auth) = self.shared.settings.auth.as_ref() else {
            return Ok(None);
        };
        let mut mac = hmac::Hmac::<md5::Md5>::new_from_slice(auth.password.as_bytes())
            .expect("HMAC takes any key");
        mac.update(challenge.as_bytes());
        let want: String = (mac.finalize().into_bytes().iter())
            .map(|b| format!("{b:02x}"))
            .collect();
        let password = match digest == want {
            true => auth.password.clone(),
            false => String::new(),
        };
        Ok(Some((user.to_owned(), password)))
    }

    async fn mail(&mut self, arg: &str) -> Result<(), End> {
        let Some(from) = path_arg(arg, "FROM:") else {
            return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await;
        };
        if !self.greeted {
            return self.reply("503 5.5.1 Send EHLO first").await;
        }
        if self.shared.settings.auth.is_some() && self.auth_user.is_none() {
            return self.reply("530 5.7.0 Authentication required").await;
        }
        if self.mail_from.is_some() {
            return self.reply("503 5.5.1 Nested MAIL command").await;
        }
        if let Some(fault) = self.shared.take_fault(Stage::MailFrom) {
            return self.reply(&fault).await;
        }
        self.mail_from = Some(from);
        self.shared.state().stats.transactions += 1;
        self.reply("250 2.1.0 Ok").await
    }

    async fn rcpt(&mut self, arg: &str) -> Result<(), End> {
        let Some(to) = path_arg(arg, "TO:") else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address>").await;
        };
        if self.mail_from.is_none() {
            return self.reply("503 5.5.1 Need MAIL before RCPT").await;
        }
        if let Some(fault) = self.shared.take_fault(Stage::RcptTo) {
            return self.reply(&fault).await;
        }
        self.rcpt_to.push(to);
        self.shared.state().stats.recipients += 1;
        self.reply("250 2.1.5 Ok").await
    }

    async fn data(&mut self) -> Result<(), End> {
        if self.rcpt_to.is_empty() {
            return self.reply("503 5.5.1 Need RCPT before DATA").await;
        }
        if let Some(fault) = self.shared.take_fault(Stage::DataCommand) {
            self.reset();
            return self.reply(&fault).await;
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let mut data = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = self.read_raw_line(&mut line).await?;
            if read == 0 {
                return Err(End::Io);
            }
            let content = line
                .strip_suffix(b"\r\n")
                .or_else(|| line.strip_suffix(b"\n"))
                .unwrap_or(&line);
            if content == b"." {
                if !self.stream.buffer().is_empty() {
                    self.shared.state().stats.chained += 1;
                }
                break;
            }
            let unstuffed = content.strip_prefix(b".").unwrap_or(content);
            if data.len() + unstuffed.len() <= MAX_MESSAGE {
                data.extend_from_slice(unstuffed);
                data.extend_from_slice(b"\r\n");
            }
        }
        let mail_from = self.mail_from.take().unwrap_or_default();
        let rcpt_to = std::mem::take(&mut self.rcpt_to);
        if let Some(fault) = self.shared.take_fault(Stage::Data) {
            return self.reply(&fault).await;
        }
        self.shared.store(ReceivedMail {
            mail_from,
            rcpt_to,
            data,
            tls: self.tls,
            auth_user: self.auth_user.clone(),
            received_at: std::time::Instant::now(),
        });
        self.reply("250 2.0.0 Ok: queued").await
    }

    async fn reply(&mut self, line: &str) -> Result<(), End> {
        self.write_raw(format!("{line}\r\n").as_bytes()).await
    }

    /// Sends every reply held back.
    async fn flush_replies(&mut self) -> Result<(), End> {
        let unsent = std::mem::take(&mut self.unsent);
        if !unsent.is_empty() {
            let stream = self.stream.get_mut();
            stream.write_all(&unsent).await?;
            stream.flush().await?;
        }
        Ok(())
    }

    /// Sends `bytes`, held back while more pipelined commands are already waiting: their
    /// replies then go out together, as Postfix sends them.
    async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), End> {
        self.unsent.extend_from_slice(bytes);
        if !self.stream.buffer().is_empty() {
            return Ok(());
        }
        self.flush_replies().await
    }

    /// One command line without its line end; `None` at EOF.
    async fn read_line(&mut self) -> Result<Option<String>, End> {
        let mut buf = Vec::new();
        if self.read_raw_line(&mut buf).await? == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&buf);
        Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
    }

    async fn read_raw_line(&mut self, buf: &mut Vec<u8>) -> Result<usize, End> {
        let mut limited = (&mut self.stream).take(MAX_LINE);
        let n = tokio::time::timeout(IDLE, limited.read_until(b'\n', buf))
            .await
            .map_err(|_| End::Io)??;
        if n as u64 >= MAX_LINE && !buf.ends_with(b"\n") {
            return Err(End::Io);
        }
        Ok(n)
    }
}

/// `<addr>` after `FROM:` / `TO:` (parameters after it ignored).
fn path_arg(arg: &str, keyword: &str) -> Option<String> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_owned())
}

fn decode(b64: &str) -> Option<String> {
    let bytes = BASE64.decode(b64.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_args() {
        assert_eq!(path_arg("FROM:<a@b>", "FROM:").as_deref(), Some("a@b"));
        assert_eq!(
            path_arg("from: <a@b> BODY=8BITMIME", "FROM:").as_deref(),
            Some("a@b")
        );
        assert_eq!(path_arg("FROM:<>", "FROM:").as_deref(), Some(""));
        assert_eq!(path_arg("TO:<a@b>", "FROM:"), None);
        assert_eq!(path_arg("FROM:a@b", "FROM:"), None);
    }
}

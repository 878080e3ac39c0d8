//! [`SmtpReceiver`]: an in-process ESMTP server on `127.0.0.1:0` that stores what it receives.
//!
//! It speaks EHLO/HELO, STARTTLS and implicit TLS (with a given rustls config), AUTH PLAIN and
//! LOGIN, MAIL/RCPT/DATA (dot-unstuffed), RSET, NOOP and QUIT. Faults can be injected: a reply
//! for the next N (or the Nth next) MAIL, RCPT, DATA or end-of-DATA commands, `421` greetings for
//! the next N connections, or the whole server going down and coming back on the same port. It
//! can play an old server that refuses EHLO, or a hostile one that sends more after its reply
//! to STARTTLS. It is cheap per message, so
//! throughput benchmarks can use it.

mod session;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// An AUTH mechanism the receiver can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    Plain,
    Login,
    /// RFC 2195's challenge and HMAC-MD5 answer.
    CramMd5,
}

impl AuthMechanism {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::CramMd5 => "CRAM-MD5",
        }
    }
}

/// Where an injected fault answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The reply to `MAIL FROM`.
    MailFrom,
    /// The reply to `RCPT TO`.
    RcptTo,
    /// The reply to the `DATA` command itself (instead of `354`).
    DataCommand,
    /// The reply after the message data (the message is not stored).
    Data,
}

/// One message as received: envelope and raw data (CRLF line ends, dot-unstuffed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
    /// Whether the session was encrypted when the message arrived.
    pub tls: bool,
    /// The user that authenticated, if any.
    pub auth_user: Option<String>,
    /// When the receiver accepted it (just before answering `250` to the data).
    pub received_at: std::time::Instant,
}

impl ReceivedMail {
    /// The raw data as text (lossy).
    pub fn data_text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The top-level header lines, up to the first empty line (folded lines kept apart).
    pub fn header_lines(&self) -> Vec<String> {
        self.data_text()
            .split("\r\n")
            .take_while(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Counters of what the receiver saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    pub tls_sessions: usize,
    pub auth_successes: usize,
    pub auth_failures: usize,
    /// `AUTH` commands received, whatever came of them.
    pub auth_attempts: usize,
    /// `HELO` commands received.
    pub helos: usize,
    /// `MAIL FROM` commands accepted.
    pub transactions: usize,
    /// `RCPT TO` commands accepted.
    pub recipients: usize,
    pub messages: usize,
    /// Commands that arrived with more input already behind them (a pipelined group).
    pub pipelined: usize,
    /// `NOOP` commands.
    pub noops: usize,
    /// `QUIT` commands: sessions the client ended politely.
    pub quits: usize,
    /// Messages whose final dot arrived with more input already behind it (the next mail's
    /// commands pipelined in the same write).
    pub chained: usize,
}

/// `wait_for` gave up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {wanted} message(s); have {have}")]
pub struct WaitTimeout {
    pub wanted: usize,
    pub have: usize,
    pub waited: Duration,
}

/// Builds an [`SmtpReceiver`].
#[derive(Clone, Default)]
pub struct SmtpReceiverBuilder {
    starttls: Option<Arc<rustls::ServerConfig>>,
    implicit_tls: Option<Arc<rustls::ServerConfig>>,
    auth: Option<Auth>,
    /// Leave PIPELINING out of the EHLO reply (it is offered by default, as by most servers).
    no_pipelining: bool,
    /// The reply to every EHLO, instead of the extensions (an old server).
    refuse_ehlo: Option<String>,
    /// Bytes sent in the same write as the `220` to STARTTLS, before the handshake.
    starttls_trailer: Option<String>,
}

#[derive(Clone)]
struct Auth {
    username: String,
    password: String,
    mechanisms: Vec<AuthMechanism>,
    require_tls: bool,
}

impl SmtpReceiverBuilder {
    /// Whether EHLO offers PIPELINING (RFC 2920); it does unless told otherwise.
    pub fn pipelining(mut self, offered: bool) -> Self {
        self.no_pipelining = !offered;
        self
    }

    /// Answers every EHLO with `reply` (e.g. `"500 5.5.2 Command not recognized"`); HELO works.
    pub fn refuse_ehlo(mut self, reply: &str) -> Self {
        self.refuse_ehlo = Some(reply.to_owned());
        self
    }

    /// Sends `trailer` (e.g. `"250 injected\r\n"`) right behind the `220` to STARTTLS, in the
    /// same write and before the handshake: a STARTTLS command injection (CVE-2011-0411).
    pub fn starttls_trailer(mut self, trailer: &str) -> Self {
        self.starttls_trailer = Some(trailer.to_owned());
        self
    }

    /// Offers STARTTLS with this server config.
    pub fn starttls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.starttls = Some(config);
        self
    }

    /// Speaks TLS from the first byte (SMTPS, port 465 style).
    pub fn implicit_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.implicit_tls = Some(config);
        self
    }

    /// Offers AUTH PLAIN and LOGIN and requires it before `MAIL FROM`.
    pub fn auth(mut self, username: &str, password: &str) -> Self {
        self.auth = Some(Auth {
            username: username.to_owned(),
            password: password.to_owned(),
            mechanisms: vec![AuthMechanism::Plain, AuthMechanism::Login],
            require_tls: false,
        });
        self
    }

    /// Offers only these mechanisms (call after [`Self::auth`]).
    pub fn auth_mechanisms(mut self, mechanisms: &[AuthMechanism]) -> Self {
        if let Some(auth) = &mut self.auth {
            auth.mechanisms = mechanisms.to_vec();
        }
        self
    }

    /// Advertises AUTH only once the session is encrypted (call after [`Self::auth`]).
    pub fn auth_requires_tls(mut self, yes: bool) -> Self {
        if let Some(auth) = &mut self.auth {
            auth.require_tls = yes;
        }
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(self) -> io::Result<SmtpReceiver> {
        let listener = bind("127.0.0.1:0".parse().map_err(io::Error::other)?)?;
        let addr = listener.local_addr()?;
        let (count, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            settings: self,
            state: Mutex::new(State::default()),
            count,
        });
        let receiver = SmtpReceiver {
            shared,
            addr,
            running: Mutex::new(None),
        };
        receiver.serve(listener);
        Ok(receiver)
    }
}

/// An in-process SMTP server; it stops when dropped.
pub struct SmtpReceiver {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// The current listener and its sessions; `None` while down.
    running: Mutex<Option<Running>>,
}

struct Running {
    token: CancellationToken,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    settings: SmtpReceiverBuilder,
    state: Mutex<State>,
    /// The number of stored messages.
    count: watch::Sender<usize>,
}

#[derive(Default)]
struct State {
    messages: Vec<ReceivedMail>,
    faults: VecDeque<Fault>,
    refuse_connections: usize,
    stats: Stats,
}

struct Fault {
    stage: Stage,
    reply: String,
    /// Commands of the stage to let through first.
    skip: usize,
    remaining: usize,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking session must not take the receiver down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The injected reply for `stage`, if one is pending; counts it down.
    fn take_fault(&self, stage: Stage) -> Option<String> {
        let mut state = self.state();
        let index = state.faults.iter().position(|f| f.stage == stage)?;
        let fault = &mut state.faults[index];
        if fault.skip > 0 {
            fault.skip -= 1;
            return None;
        }
        fault.remaining -= 1;
        let reply = fault.reply.clone();
        if fault.remaining == 0 {
            state.faults.remove(index);
        }
        Some(reply)
    }

    fn store(&self, mail: ReceivedMail) {
        let len = {
            let mut state = self.state();
            state.messages.push(mail);
            state.stats.messages += 1;
            state.messages.len()
        };
        self.count.send_replace(len);
    }
}

impl SmtpReceiver {
    /// A builder for a receiver with TLS or AUTH.
    pub fn builder() -> SmtpReceiverBuilder {
        SmtpReceiverBuilder::default()
    }

    /// A plain receiver: no TLS, no AUTH.
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The messages stored so far.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.state().messages.clone()
    }

    /// Removes and returns the stored messages.
    pub fn take_messages(&self) -> Vec<ReceivedMail> {
        let taken = std::mem::take(&mut self.shared.state().messages);
        self.shared.count.send_replace(0);
        taken
    }

    /// What the receiver has seen so far.
    pub fn stats(&self) -> Stats {
        self.shared.state().stats
    }

    /// Waits until at least `n` messages are stored, and returns them all.
    pub async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedMail>, WaitTimeout> {
        let mut rx = self.shared.count.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await;
        match reached {
            Ok(Ok(_)) => Ok(self.messages()),
            _ => Err(WaitTimeout {
                wanted: n,
                have: self.shared.state().messages.len(),
                waited: timeout,
            }),
        }
    }

    /// Answers `reply` (e.g. `"451 4.3.0 Try again later"`) at `stage` for the next `times`
    /// commands of that stage.
    pub fn inject(&self, stage: Stage, reply: &str, times: usize) {
        if times > 0 {
            self.shared.state().faults.push_back(Fault {
                stage,
                reply: reply.to_owned(),
                skip: 0,
                remaining: times,
            });
        }
    }

    /// Answers `reply` at `stage` once, to the `nth` (from 1) next command of that stage.
    pub fn inject_nth(&self, stage: Stage, reply: &str, nth: usize) {
        self.shared.state().faults.push_back(Fault {
            stage,
            reply: reply.to_owned(),
            skip: nth.saturating_sub(1),
            remaining: 1,
        });
    }

    /// Greets the next `times` connections with `421` and closes them.
    pub fn refuse_next_connections(&self, times: usize) {
        self.shared.state().refuse_connections += times;
    }

    /// Stops listening and drops every open session: connections are refused until
    /// [`Self::come_back`]. Returns once the port is closed.
    pub async fn go_down(&self) {
        let running = self.lock_running().take();
        if let Some(running) = running {
            running.token.cancel();
            let _ = running.accept.await;
        }
    }

    /// Listens again on the same port.
    pub fn come_back(&self) -> io::Result<()> {
        if self.lock_running().is_some() {
            return Ok(());
        }
        let listener = bind(self.addr)?;
        self.serve(listener);
        Ok(())
    }

    fn lock_running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&self.shared),
            token.clone(),
        ));
        *self.lock_running() = Some(Running { token, accept });
    }
}

impl Drop for SmtpReceiver {
    fn drop(&mut self) {
        if let Some(running) = self.lock_running().take() {
            running.token.cancel();
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, token: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of descriptors, most likely: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let token = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = session::run(stream, shared) => {}
            }
        });
    }
}

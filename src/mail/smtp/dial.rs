//! Opening one ready-to-send SMTP connection: TCP, implicit TLS or STARTTLS per policy, EHLO
//! (HELO when refused), AUTH only where the password cannot be read on the way — with a
//! deadline on every network operation (see [`super::stream`]).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::super::SmtpStep;
use super::opening::{self, Opened, StartTls};
use super::sasl;
use super::stream::{AnswerClock, Deadline, Handover, Io, timed_out};
use crate::secret::Secret;

/// The AUTH mechanisms we use, in order of preference.
const MECHANISMS: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

/// How the connection gets encrypted.
pub(super) enum Security {
    /// TLS from the first byte (SMTPS).
    Implicit(Arc<rustls::ClientConfig>),
    /// STARTTLS, failing when the server does not offer it.
    Required(Arc<rustls::ClientConfig>),
    /// STARTTLS when offered.
    Opportunistic(Arc<rustls::ClientConfig>),
    /// Never.
    None,
}

/// When AUTH may run on a connection that is not encrypted.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PlaintextAuth {
    /// `smtp.allow_plaintext_auth`: the operator accepts the password crossing the network.
    pub allowed: bool,
    /// Treat a loopback server as remote (tests, whose servers all listen on loopback).
    pub loopback_is_remote: bool,
}

impl PlaintextAuth {
    /// Whether AUTH may run: over TLS, to a server on this machine (the password never leaves
    /// it; Go's `smtp.PlainAuth` makes the same exception for localhost), or when allowed.
    pub(super) fn permits(self, encrypted: bool, peer: IpAddr) -> bool {
        encrypted || self.allowed || (peer.to_canonical().is_loopback() && !self.loopback_is_remote)
    }
}

/// Everything needed to open a connection.
pub(super) struct Dialer {
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
    pub hello: ClientId,
    pub security: Security,
    pub credentials: Option<Login>,
    pub plaintext_auth: PlaintextAuth,
}

/// The AUTH user name and password.
pub(super) struct Login {
    pub user: String,
    pub password: Secret,
}

/// Why a connection could not be opened or used.
pub(super) enum Failure {
    /// lettre's error, and the command it answered.
    Smtp(SmtpError, SmtpStep),
    Io(io::Error),
    NoStartTls,
    /// A negative reply while opening the session (greeting, EHLO/HELO, STARTTLS).
    Refused {
        code: u16,
        text: String,
    },
    /// Something other than an SMTP reply while opening the session.
    Malformed(String),
    /// This many bytes came after the reply to STARTTLS, before the TLS handshake.
    Injected(usize),
    /// AUTH would have sent the password in clear; why the connection is not encrypted.
    PlaintextAuth(&'static str),
    /// A reply of the wrong kind for its command (a 3xx to MAIL, anything but 354 to DATA, no 2xx
    /// to the final dot): the replies are out of step with the commands, so the connection is
    /// dropped and nothing it said about this mail is believed.
    Unexpected {
        step: SmtpStep,
        code: u16,
        text: String,
    },
    /// The server lacks an extension this mail needs (SMTPUTF8, 8BITMIME).
    Unsupported {
        to: String,
        reason: &'static str,
    },
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl Failure {
    /// Whether the connection failed (rather than the server answering no): nothing more
    /// can be read from it.
    pub(super) fn is_network(&self) -> bool {
        match self {
            Self::Smtp(e, _) => e.status().is_none(),
            Self::Io(_) | Self::Malformed(_) | Self::Unexpected { .. } => true,
            _ => false,
        }
    }
}

impl Dialer {
    /// A fresh connection, greeted, encrypted and authenticated as configured.
    pub(super) async fn dial(&self) -> Result<Connection, Failure> {
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let tcp = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| timed_out("connect"))??;
        tcp.set_nodelay(true)?;
        let peer = tcp.peer_addr()?;
        let clock = AnswerClock::default();
        let plain = Deadline::with_clock(tcp, self.timeout, &clock);
        let opened = self.open(plain).await?;
        let encrypted = opened.encrypted || matches!(self.security, Security::Implicit(_));
        let pipelining = opened.hello.offers("PIPELINING");
        let mechanisms = opened.hello.auth_mechanisms();
        let Opened {
            stream,
            greeting,
            hello,
            ..
        } = opened;
        let handover = Handover::new(stream, peer, greeting.raw.into(), hello.raw.into());
        let mut smtp = AsyncSmtpConnection::connect_with_transport(Box::new(handover), &self.hello)
            .await
            .map_err(|e| Failure::Smtp(e, SmtpStep::Session))?;
        if let Some(credentials) = &self.credentials {
            self.authenticate(&mut smtp, credentials, &mechanisms, encrypted, peer.ip())
                .await?;
        }
        Ok(Connection {
            smtp,
            pipelining,
            clock,
        })
    }

    /// TLS first when implicit, then the session's start as the policy wants it.
    async fn open(&self, plain: Deadline<TcpStream>) -> Result<Opened, Failure> {
        let name = || {
            ServerName::try_from(self.host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        };
        let starttls = |config, required| -> Result<_, Failure> {
            Ok(Some(StartTls {
                config,
                name: name()?,
                required,
            }))
        };
        let (stream, starttls): (Box<dyn Io>, _) = match &self.security {
            Security::Implicit(config) => {
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name()?, plain)
                    .await?;
                (Box::new(tls), None)
            }
            Security::Required(config) => (Box::new(plain), starttls(config, true)?),
            Security::Opportunistic(config) => (Box::new(plain), starttls(config, false)?),
            Security::None => (Box::new(plain), None),
        };
        opening::open(stream, &self.hello, starttls).await
    }

    /// AUTH, unless it would send the password in clear (then QUIT and a refusal): PLAIN or
    /// LOGIN through lettre, or CRAM-MD5 when the server offers that alone of the three.
    async fn authenticate(
        &self,
        smtp: &mut AsyncSmtpConnection,
        login: &Login,
        offered: &[String],
        encrypted: bool,
        peer: IpAddr,
    ) -> Result<(), Failure> {
        if !self.plaintext_auth.permits(encrypted, peer) {
            smtp.abort().await;
            return Err(Failure::PlaintextAuth(match self.security {
                Security::None => "smtp.starttls_policy is \"disabled\"",
                _ => "the server did not offer STARTTLS",
            }));
        }
        // lettre's own exchange (PLAIN, else LOGIN) when it can use what the server offers (it
        // reads only `AUTH PLAIN`/`AUTH LOGIN`); else ours, which also speaks CRAM-MD5 and reads
        // `AUTH=PLAIN` and lower case (CRAM-MD5 first, then PLAIN, then LOGIN, as the original).
        let info = smtp.server_info();
        let lettre_can = MECHANISMS.iter().any(|m| info.supports_auth_mechanism(*m));
        let ours = sasl::Mechanism::choose(offered).filter(|_| !lettre_can);
        let result = if let Some(mechanism) = ours {
            sasl::authenticate(smtp, mechanism, &login.user, login.password.expose()).await
        } else {
            let credentials = Credentials::new(login.user.clone(), login.password.expose().into());
            (smtp.auth(&MECHANISMS, &credentials).await)
                .map(drop)
                .map_err(|e| Failure::Smtp(e, SmtpStep::Session))
        };
        if result.is_err() {
            smtp.abort().await;
        }
        result
    }
}

/// An open, ready connection and what its server offers beyond lettre's view.
pub(super) struct Connection {
    pub smtp: AsyncSmtpConnection,
    /// The server takes MAIL, RCPT and DATA in one go (RFC 2920).
    pub pipelining: bool,
    /// Restarts the answer deadline between pipelined replies.
    pub clock: AnswerClock,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_in_clear_only_to_this_machine_or_when_allowed() {
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let loopback6: IpAddr = "::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let default = PlaintextAuth::default();
        assert!(default.permits(true, remote));
        assert!(!default.permits(false, remote));
        for local in [loopback, loopback6, mapped] {
            assert!(default.permits(false, local), "{local}");
        }
        let allowed = PlaintextAuth {
            allowed: true,
            ..default
        };
        assert!(allowed.permits(false, remote));
        let strict = PlaintextAuth {
            loopback_is_remote: true,
            ..default
        };
        assert!(!strict.permits(false, loopback));
        assert!(strict.permits(true, loopback));
    }
}

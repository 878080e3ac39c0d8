//! The SMTP AUTH exchanges lettre cannot start: CRAM-MD5 (RFC 2195), which it does not speak, and
//! PLAIN and LOGIN when a server announces them in a form lettre does not read (`AUTH=PLAIN`, lower
//! case). The original plugin's Go library prefers CRAM-MD5, so a server offering only that works
//! with the original and must work with ours; with CRAM-MD5 the password never crosses the wire
//! (the server sends a challenge, we answer with the user name and the challenge's HMAC-MD5 under
//! the password).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use lettre::transport::smtp::client::AsyncSmtpConnection;

use super::dial::Failure;
use crate::mail::SmtpStep;

/// One command line as written (lettre's `command` takes anything that displays).
struct Line<'a>(&'a str);

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

/// The answer to `challenge` (as decoded) for `user` with `password`: `user hexdigest`, in
/// base64.
fn answer(user: &str, password: &str, challenge: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<md5::Md5>::new_from_slice(password.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(challenge);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    BASE64.encode(format!("{user} {hex}"))
}

/// Which exchange to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mechanism {
    Plain,
    Login,
    CramMd5,
}

impl Mechanism {
    /// The one to use among `offered` (as the EHLO reply names them, upper-cased): CRAM-MD5,
    /// then PLAIN, then LOGIN, as the original's library chooses.
    pub(super) fn choose(offered: &[String]) -> Option<Self> {
        let has = |m: &str| offered.iter().any(|o| o == m);
        [
            ("CRAM-MD5", Self::CramMd5),
            ("PLAIN", Self::Plain),
            ("LOGIN", Self::Login),
        ]
        .into_iter()
        .find_map(|(name, m)| has(name).then_some(m))
    }
}

/// Runs `mechanism` on `smtp` for `user` with `password`.
pub(super) async fn authenticate(
    smtp: &mut AsyncSmtpConnection,
    mechanism: Mechanism,
    user: &str,
    password: &str,
) -> Result<(), Failure> {
    match mechanism {
        Mechanism::CramMd5 => cram_md5(smtp, user, password).await,
        Mechanism::Plain => {
            let initial = BASE64.encode(format!("\0{user}\0{password}"));
            let reply = command(smtp, &format!("AUTH PLAIN {initial}")).await?;
            expect(&reply, 235)
        }
        Mechanism::Login => {
            let reply = command(smtp, "AUTH LOGIN").await?;
            expect(&reply, 334)?;
            let reply = command(smtp, &BASE64.encode(user)).await?;
            expect(&reply, 334)?;
            let reply = command(smtp, &BASE64.encode(password)).await?;
            expect(&reply, 235)
        }
    }
}

/// Sends one line and reads the reply; a negative reply is lettre's error.
async fn command(
    smtp: &mut AsyncSmtpConnection,
    line: &str,
) -> Result<lettre::transport::smtp::response::Response, Failure> {
    (smtp.command(Line(line)).await).map_err(|e| Failure::Smtp(e, SmtpStep::Session))
}

/// `reply` must have `code`: anything else means the exchange is out of step.
fn expect(reply: &lettre::transport::smtp::response::Response, code: u16) -> Result<(), Failure> {
    if reply.has_code(code) {
        return Ok(());
    }
    Err(Failure::Unexpected {
        step: SmtpStep::Session,
        code: u16::from(reply.code()),
        text: reply.message().collect::<Vec<_>>().join(" "),
    })
}

/// Runs `AUTH CRAM-MD5` on `smtp`.
async fn cram_md5(
    smtp: &mut AsyncSmtpConnection,
    user: &str,
    password: &str,
) -> Result<(), Failure> {
    let step = SmtpStep::Session;
    let reply = (smtp.command(Line("AUTH CRAM-MD5")).await).map_err(|e| Failure::Smtp(e, step))?;
    if !reply.has_code(334) {
        return Err(Failure::Unexpected {
            step,
            code: u16::from(reply.code()),
            text: reply.message().collect::<Vec<_>>().join(" "),
        });
    }
    let encoded = reply.first_line().unwrap_or_default().trim();
    let Ok(challenge) = BASE64.decode(encoded) else {
        // Cancel the exchange (RFC 4954) before the connection is dropped.
        let _ = smtp.command(Line("*")).await;
        return Err(Failure::Malformed(
            "the CRAM-MD5 challenge is not base64".into(),
        ));
    };
    let response = answer(user, password, &challenge);
    let done = smtp.command(Line(&response)).await;
    let reply = done.map_err(|e| Failure::Smtp(e, step))?;
    if !reply.has_code(235) {
        return Err(Failure::Unexpected {
            step,
            code: u16::from(reply.code()),
            text: reply.message().collect::<Vec<_>>().join(" "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2195's own example: user `tim`, password `tanstaaftanstaaf`.
    #[test]
    fn the_original_libraries_order() {
        let offered = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let choose = |m: &[&str]| Mechanism::choose(&offered(m));
        assert_eq!(
            choose(&["LOGIN", "CRAM-MD5", "PLAIN"]),
            Some(Mechanism::CramMd5)
        );
        assert_eq!(choose(&["LOGIN", "PLAIN"]), Some(Mechanism::Plain));
        assert_eq!(choose(&["LOGIN"]), Some(Mechanism::Login));
        assert_eq!(choose(&["XOAUTH2"]), None);
    }

    #[test]
    fn the_rfc_example() {
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
        let got = answer("tim", "tanstaaftanstaaf", challenge);
        assert_eq!(got, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw");
    }
}

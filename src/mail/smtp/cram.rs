//! SMTP AUTH CRAM-MD5 (RFC 2195), which lettre does not speak: used when the server offers it and
//! neither PLAIN nor LOGIN (the original plugin's Go library prefers it, so a server offering only
//! CRAM-MD5 works with the original and must work with ours). The password never crosses the
//! wire: the server sends a challenge, we answer with the user name and the challenge's
//! HMAC-MD5 under the password.

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

/// Runs `AUTH CRAM-MD5` on `smtp`.
pub(super) async fn authenticate(
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
    fn the_rfc_example() {
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
        let got = answer("tim", "tanstaaftanstaaf", challenge);
        assert_eq!(got, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw");
    }
}

//! [`MailError`]: why a send or health check failed, naming the server, and whether to retry.

use std::time::Duration;

/// A failed send or health check. Messages name the server (`host:port` or URL), never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The mailer cannot be built from its configuration.
    #[error("cannot set up the {backend} mailer: {reason}")]
    Setup {
        backend: &'static str,
        reason: String,
    },
    /// The message itself is unusable (e.g. the recipient is not an address).
    #[error("cannot send to {to:?}: {reason}")]
    BadMessage { to: String, reason: String },
    /// No connection, or it broke (refused, reset, closed): worth retrying.
    #[error("{server}: connection failed: {reason}")]
    Connect { server: String, reason: String },
    /// The server did not answer in time: worth retrying.
    #[error("{server}: timed out: {reason}")]
    Timeout { server: String, reason: String },
    /// The TLS handshake or certificate check failed.
    #[error("{server}: TLS failed: {reason}")]
    Tls { server: String, reason: String },
    /// `starttls_policy = "mandatory"` and the server does not offer STARTTLS.
    #[error(
        "{server}: the server does not offer STARTTLS, which smtp.starttls_policy \"mandatory\" requires"
    )]
    StartTlsUnavailable { server: String },
    /// AUTH was not attempted: the connection is not encrypted, the server is not on this
    /// machine and `smtp.allow_plaintext_auth` is not set, so the password would have crossed
    /// the network in clear.
    #[error(
        "{server}: the SMTP password was not sent: {reason}, so the connection is not encrypted and AUTH would send the password in clear; use smtp.starttls_policy = \"mandatory\" or smtp.implicit_tls = true, or set smtp.allow_plaintext_auth = true if the network to the server is trusted"
    )]
    PlaintextAuth { server: String, reason: String },
    /// The server refused our credentials, or offers no mechanism we speak.
    #[error("{server}: authentication failed: {reason}")]
    Auth { server: String, reason: String },
    /// The SMTP server answered with a negative reply: 4xx is transient, 5xx permanent.
    /// `step` says which command it refused, and so whether the refusal is about this one
    /// message (a recipient, the message's content) or about the mailer as a whole.
    #[error("{server}: the server answered {code} to {step}: {reason}")]
    Rejected {
        server: String,
        code: u16,
        reason: String,
        step: SmtpStep,
    },
    /// The SMTP conversation went wrong in some other way.
    #[error("{server}: SMTP error: {reason}")]
    Protocol {
        server: String,
        reason: String,
        transient: bool,
    },
    /// The HTTP API answered with an error status: 429 and 5xx are transient.
    #[error("{url}: HTTP {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
        /// From a `Retry-After` header (seconds), when present.
        retry_after: Option<Duration>,
    },
}

/// The SMTP command a negative reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpStep {
    /// Greeting, EHLO, STARTTLS, AUTH, `MAIL FROM` or anything else about the session or the
    /// sender: a refusal here is the mailer's, not the recipient's.
    Session,
    /// `RCPT TO`: this recipient is refused.
    Recipient,
    /// `DATA` or the message's final dot: this message is refused.
    Message,
}

impl std::fmt::Display for SmtpStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Session => "the session",
            Self::Recipient => "RCPT TO",
            Self::Message => "the message",
        })
    }
}

impl MailError {
    /// Whether the same send may succeed later: timeouts, broken connections, SMTP 4xx,
    /// HTTP 429 and 5xx. Everything else needs a person (credentials, addresses, TLS, policy).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } => true,
            Self::Rejected { code, .. } => (400..500).contains(code),
            Self::Protocol { transient, .. } => *transient,
            Self::Http { status, .. } => *status == 429 || *status >= 500,
            Self::Setup { .. }
            | Self::BadMessage { .. }
            | Self::Tls { .. }
            | Self::StartTlsUnavailable { .. }
            | Self::PlaintextAuth { .. }
            | Self::Auth { .. } => false,
        }
    }

    /// Whether a failure belongs to this one message or recipient (an address refused at
    /// `RCPT TO` or not an address at all, a message refused at its end, an HTTP 400/413/422)
    /// rather than to the mailer as a whole (credentials, TLS, STARTTLS, a refused sender, the
    /// server unreachable). Only a message's own permanent failure may be recorded as that
    /// recipient's for good; a mailer-wide one is the operator's to fix, and the mail waits.
    pub fn is_message_specific(&self) -> bool {
        match self {
            Self::BadMessage { .. } => true,
            Self::Rejected {
                step, code, reason, ..
            } => refusal_blames_message(*step, *code, reason),
            // Mailgun answers 400 for a bad recipient ("'to' parameter is not a valid address")
            // and for anything else wrong with the call (sender, domain, parameters): only the
            // first is the recipient's; in doubt it is the mailer's (retried, never written off).
            Self::Http {
                status: 400,
                message,
                ..
            } => {
                let m = message.to_ascii_lowercase();
                let names_recipient = ["'to'", "\"to\"", "to parameter", "recipient"]
                    .iter()
                    .any(|w| m.contains(w));
                let names_ours = ["from", "sender", "domain"].iter().any(|w| m.contains(w));
                names_recipient && !names_ours
            }
            Self::Http { status, .. } => matches!(status, 413 | 422),
            Self::Setup { .. }
            | Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::Tls { .. }
            | Self::StartTlsUnavailable { .. }
            | Self::PlaintextAuth { .. }
            | Self::Auth { .. }
            | Self::Protocol { .. } => false,
        }
    }

    /// How long the server asked us to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// `text` without the addresses it quotes (`<relay-team@example.com>`, or a bare `a@b`): an
/// address is a name, and its words say nothing of who is refused.
fn without_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '<' => quoted = true,
            '>' if quoted => quoted = false,
            _ if !quoted => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace()
        .filter(|w| !w.contains('@'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a permanent SMTP refusal speaks of this recipient or message rather than of us.
/// Servers say which in words more reliably than in codes, so, on the reply's text without the
/// addresses it quotes:
/// 1. words about our side — sender, account, relaying, sender checks, blocklists, the client
///    host — make it the mailer's (retried with an ERROR, never written off);
/// 2. at `RCPT TO`, words about the recipient or their mailbox make it the recipient's;
/// 3. then weaker words ("sender", "relay", "#5.7") make it the mailer's;
/// 4. then the enhanced status code (RFC 3463) when it leads the text: at `RCPT TO`, X.1.x
///    (but X.1.7/X.1.8, the sender's address) and X.2.x are the recipient's; at the end of the
///    message only X.6.x (content) and X.3.4 (too big) are the message's own;
/// 5. then the basic code: 550–553 at `RCPT TO` speak of the mailbox, 552 at the end of the
///    message of its size.
///
/// A refusal at the end of the message comes after the server accepted the recipient: unless it
/// says the message itself is at fault, it is the mailer's. Written off wrongly, a recipient's
/// mail is lost for good; retried wrongly, it costs retries and ERRORs until someone looks.
fn refusal_blames_message(step: SmtpStep, code: u16, text: &str) -> bool {
    if step == SmtpStep::Session {
        return false;
    }
    let words = without_addresses(text).to_ascii_lowercase();
    let says = |markers: &[&str]| markers.iter().any(|m| words.contains(m));
    if says(MAILERS_WORDS) {
        return false;
    }
    if step == SmtpStep::Recipient && says(RECIPIENTS_WORDS) {
        return true;
    }
    if step == SmtpStep::Message && says(MESSAGES_WORDS) {
        return true;
    }
    if says(MAILERS_WEAK_WORDS) {
        return false;
    }
    let enhanced = enhanced_code(text);
    match (step, enhanced) {
        (_, Some((1, 7 | 8))) => false,
        (SmtpStep::Recipient, Some((subject, _))) => matches!(subject, 1 | 2),
        (SmtpStep::Recipient, None) => (550..=553).contains(&code),
        (_, Some((subject, detail))) => subject == 6 || (subject, detail) == (3, 4),
        (_, None) => code == 552,
    }
}

/// Words of a refusal that speak of our side, whatever else it says: our sender, account,
/// relaying, sender checks, the sending host's reputation.
const MAILERS_WORDS: &[&str] = &[
    "sender address rejected",
    "from address",
    "relay access denied",
    "relaying denied",
    "relay not permitted",
    "unable to relay",
    "rcpthosts",
    "sendas",
    "send as",
    "not verified",
    "verification failed",
    "verify failed",
    "authenticat",
    "spf",
    "dkim",
    "dmarc",
    "quotaexceeded",
    "outboundspam",
    "sending paused",
    "client host",
    "blocked",
    "blocklist",
    "blacklist",
    "spamhaus",
    "ptr record",
    "reverse dns",
    "rdns",
];

/// Weaker words of our side, read only when nothing speaks of the recipient.
const MAILERS_WEAK_WORDS: &[&str] = &["sender", "relay", "#5.7"];

/// Words of a refusal at `RCPT TO` that speak of the recipient or their mailbox.
const RECIPIENTS_WORDS: &[&str] = &[
    "recipient address rejected",
    "user unknown",
    "unknown user",
    "no such user",
    "mailbox unavailable",
    "mailbox not found",
    "mailbox is full",
    "mailbox full",
    "does not exist",
    "doesn't exist",
    "invalid recipient",
    "recipient not found",
    "over quota",
];

/// Words of a refusal at the end of the message that speak of the message itself.
const MESSAGES_WORDS: &[&str] = &[
    "message size",
    "too big",
    "too large",
    "exceeds",
    "content",
    "attachment",
];

/// The subject and detail of the enhanced status code (`class.subject.detail`, RFC 3463) a
/// reply's text starts with, if it does.
fn enhanced_code(text: &str) -> Option<(u16, u16)> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.splitn(3, '.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    let number = |s: &str, max: usize| {
        (!s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u16>().ok())
            .flatten()
    };
    let class = number(class, 1)?;
    let detail = number(detail, 3)?;
    (matches!(class, 2 | 4 | 5)).then_some((number(subject, 3)?, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> MailError {
        MailError::Http {
            url: "https://api.example/v3/d/messages".into(),
            status,
            message: "x".into(),
            retry_after: None,
        }
    }

    fn smtp(code: u16) -> MailError {
        MailError::Rejected {
            server: "mail:587".into(),
            code,
            reason: "x".into(),
            step: SmtpStep::Recipient,
        }
    }

    #[test]
    fn classification() {
        assert!(http(429).is_transient());
        assert!(http(500).is_transient());
        assert!(http(503).is_transient());
        assert!(!http(400).is_transient());
        assert!(!http(401).is_transient());
        assert!(!http(404).is_transient());
        assert!(smtp(421).is_transient());
        assert!(smtp(451).is_transient());
        assert!(!smtp(550).is_transient());
        assert!(!smtp(554).is_transient());
        let server = "mail:587".to_owned();
        assert!(
            MailError::Connect {
                server: server.clone(),
                reason: "refused".into()
            }
            .is_transient()
        );
        assert!(
            !MailError::Auth {
                server,
                reason: "535".into()
            }
            .is_transient()
        );
    }

    #[test]
    fn only_a_messages_own_refusal_is_message_specific() {
        assert!(smtp(550).is_message_specific());
        let session = MailError::Rejected {
            server: "mail:587".into(),
            code: 553,
            reason: "sender refused".into(),
            step: SmtpStep::Session,
        };
        assert!(!session.is_message_specific());
        let bad_recipient = |message: &str| MailError::Http {
            url: "https://api.example/v3/d/messages".into(),
            status: 400,
            message: message.into(),
            retry_after: None,
        };
        assert!(
            bad_recipient("'to' parameter is not a valid address. please check documentation")
                .is_message_specific()
        );
        for ours in [
            "need at least one of 'text' or 'html' parameters specified",
            "Sandbox subdomains are for test purposes only. Please add your own domain or add the address to authorized recipients in Account Settings.",
            "x",
        ] {
            assert!(!bad_recipient(ours).is_message_specific(), "{ours}");
        }
        let bad_sender = MailError::Http {
            url: "https://api.example/v3/d/messages".into(),
            status: 400,
            message: "'from' parameter is not a valid address. please check documentation".into(),
            retry_after: None,
        };
        assert!(!bad_sender.is_message_specific());
        for status in [401, 403, 404, 500] {
            assert!(!http(status).is_message_specific(), "{status}");
        }
        let server = "mail:587".to_owned();
        for e in [
            MailError::Auth {
                server: server.clone(),
                reason: "535".into(),
            },
            MailError::Tls {
                server: server.clone(),
                reason: "bad certificate".into(),
            },
            MailError::PlaintextAuth {
                server: server.clone(),
                reason: "the server did not offer STARTTLS".into(),
            },
            MailError::StartTlsUnavailable { server },
        ] {
            assert!(!e.is_message_specific(), "{e}");
            assert!(!e.is_transient(), "{e}");
        }
    }

    #[test]
    fn messages_name_the_server() {
        let e = smtp(451);
        assert_eq!(
            e.to_string(),
            "mail:587: the server answered 451 to RCPT TO: x"
        );
        assert_eq!(
            MailError::StartTlsUnavailable {
                server: "mail:25".into()
            }
            .to_string(),
            "mail:25: the server does not offer STARTTLS, which smtp.starttls_policy \"mandatory\" requires"
        );
    }

    #[test]
    fn enhanced_status_codes_are_read_only_where_they_stand() {
        for (text, subject) in [
            ("5.1.1 No such user", Some(1)),
            ("5.7.1 Relay access denied", Some(7)),
            ("  4.2.2 Mailbox full", Some(2)),
            ("5.7.26 Unauthenticated", Some(7)),
            ("5.1 short", None),
            ("5.1.1000 too long a detail", None),
            ("3.1.1 not a class", None),
            ("5.x.1 not a number", None),
            ("mailbox 5.1.1 later in the text", None),
            ("", None),
        ] {
            assert_eq!(enhanced_code(text).map(|(s, _)| s), subject, "{text:?}");
        }
    }

    #[test]
    fn a_quoted_address_is_not_read_as_words() {
        let at_rcpt = |text: &str| refusal_blames_message(SmtpStep::Recipient, 550, text);
        assert!(at_rcpt(
            "5.1.1 <relay-team@example.com>: Recipient address rejected: User unknown"
        ));
        assert!(at_rcpt("5.1.1 sender@example.com: user unknown"));
        assert!(!at_rcpt("5.7.1 <bob@example.com>: Relay access denied"));
        assert!(!at_rcpt(
            "5.1.8 <noreply@example.com>: Sender address rejected: Domain not found"
        ));
    }

    fn refused(step: SmtpStep, code: u16, reason: &str) -> MailError {
        MailError::Rejected {
            server: "mail:587".into(),
            code,
            reason: reason.into(),
            step,
        }
    }

    /// Second reader (review-last), `refusal_blames_message`: MAILERS_WORDS are matched
    /// anywhere in the reply, which quotes the recipient's address. Postfix's standard refusal
    /// of an unknown recipient on a relay/MX gateway says "relay recipient table"; a recipient
    /// whose local part or domain contains "relay", "sender", "spf", "dkim" is the same. Each is
    /// taken for the mailer's failure: retried with an ERROR until `retry_timeout`, and again
    /// at every reload, restart and reconnect, never written off.
    #[test]
    fn review_last_a_recipient_refusal_quoting_a_marker_word_is_the_recipients() {
        let wrong = [
            "5.1.1 <bob@corp.example>: Recipient address rejected: User unknown in relay recipient table",
            "5.1.1 <relay-team@corp.example>: Recipient address rejected: User unknown in local recipient table",
            "5.1.1 <sender@corp.example>: Recipient address rejected: User unknown in virtual mailbox table",
            "5.1.1 <spf-admins@corp.example>: Recipient address rejected: User unknown in local recipient table",
            "5.1.1 <bob@smtp-relay.corp.example>: Recipient address rejected: User unknown",
            "5.1.1 <dkim.keys@corp.example>... User unknown",
        ]
        .into_iter()
        .filter(|text| !refused(SmtpStep::Recipient, 550, text).is_message_specific())
        .collect::<Vec<_>>();
        assert!(
            wrong.is_empty(),
            "refusals of the recipient alone retried as the mailer's: {wrong:#?}"
        );
    }

    /// Second reader (review-last), `refusal_blames_message`: the doc says a reply speaking of
    /// our account is the mailer's, but no account word is in MAILERS_WORDS, and at the end of
    /// the message a reply without an enhanced code, or with X.2.x, is the message's own. Each
    /// of these refuses every mail the account sends; each recipient's mail is written off for
    /// good (te_failed) while the account is blocked.
    #[test]
    fn review_last_an_account_wide_refusal_at_the_message_is_the_mailers() {
        let wrong = [
            // Office 365, the sending mailbox over its daily recipient limit.
            (
                554,
                "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message Cannot submit message.",
            ),
            // Office 365, the sending account suspended for outbound spam.
            (
                554,
                "5.2.0 STOREDRV.Submission.Exception:OutboundSpamException; Failed to process message due to a permanent exception with message WASCL UserAction verdict is not None. Actual verdict is Suspend, ShowTierUpgrade.",
            ),
            // Amazon SES, the account's sending paused.
            (554, "Message rejected: Sending paused for this account."),
            // Yahoo/AOL submission, the From not the authenticated account's.
            (550, "Request failed; Mailbox unavailable"),
        ]
        .into_iter()
        .filter(|(code, text)| refused(SmtpStep::Message, *code, text).is_message_specific())
        .collect::<Vec<_>>();
        assert!(
            wrong.is_empty(),
            "account-wide refusals written off as this recipient's: {wrong:#?}"
        );
    }

    /// Second reader (review-last), `refusal_blames_message`: RECIPIENTS_WORDS now outrank an
    /// X.7.x (security/policy) code, which was the mailer's before 2a5bc5a. A blocklist or
    /// reverse-DNS refusal worded with RFC 5321's generic 550 text ("mailbox unavailable") or
    /// "does not exist" refuses every recipient, and each is written off for good.
    #[test]
    fn review_last_a_policy_refusal_with_a_recipient_word_is_the_mailers() {
        let wrong = [
            "5.7.1 Requested action not taken: mailbox unavailable; client host [203.0.113.5] blocked using zen.spamhaus.org",
            "5.7.1 Client host rejected: the PTR record for 203.0.113.5 does not exist",
            "5.7.25 The reverse DNS entry for the sending IP does not exist",
        ]
        .into_iter()
        .filter(|text| refused(SmtpStep::Recipient, 550, text).is_message_specific())
        .collect::<Vec<_>>();
        assert!(
            wrong.is_empty(),
            "policy refusals of our host written off as the recipient's: {wrong:#?}"
        );
    }
}

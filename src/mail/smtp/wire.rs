//! One mail as SMTP carries it: the envelope, the header section, the MIME body encoded once
//! per request, its DATA form (dot-stuffed), and the pipelined MAIL/RCPT/DATA group.

use std::collections::VecDeque;
use std::sync::Arc;

use lettre::Address;
use lettre::address::Envelope;
use lettre::message::header::{self, HeaderName, HeaderValue, Headers};
use lettre::message::{Mailbox, Mailboxes};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};

use super::super::{AUTO_RESPONSE_SUPPRESS, AUTO_SUBMITTED, MailError, OutgoingMail};
use super::mime;

/// One mail as SMTP carries it.
pub(super) struct Wire {
    pub envelope: Envelope,
    /// The message's header section, each line ending in CRLF.
    pub head: String,
    /// The MIME body, with its own headers: shared by a request's recipients.
    pub body: Arc<EncodedBody>,
    /// All ASCII (addresses, headers, body), so it can go in the pipelined exchange; otherwise
    /// lettre's exchange negotiates 8BITMIME or SMTPUTF8.
    pub pipelinable: bool,
}

impl Wire {
    /// `mail` from `from`: the envelope, the header section and the (shared) body.
    pub(super) fn build(
        from: &Mailbox,
        bodies: &BodyCache,
        mail: &OutgoingMail,
    ) -> Result<Self, MailError> {
        let bad = |reason: String| MailError::BadMessage {
            to: mail.to.clone(),
            reason,
        };
        let to: Address = mail
            .to
            .parse()
            .map_err(|e| bad(format!("not an address: {e}")))?;
        let envelope = Envelope::new(Some(from.email.clone()), vec![to.clone()])
            .map_err(|e| bad(e.to_string()))?;
        let head = headers(from, to, mail).to_string();
        Ok(Self::new(
            envelope,
            head,
            bodies.get(&mail.text, &mail.html),
        ))
    }

    fn new(envelope: Envelope, head: String, body: Arc<EncodedBody>) -> Self {
        let ascii_addresses = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .all(|a: &Address| AsRef::<str>::as_ref(a).is_ascii());
        let pipelinable = ascii_addresses && head.is_ascii() && body.stuffed.is_some();
        Self {
            envelope,
            head,
            body,
            pipelinable,
        }
    }

    /// Appends the message in its DATA form (RFC 5321 §4.5.2): dot-stuffed, final dot included.
    /// Only for a pipelinable mail (the body's stuffed form exists).
    pub(super) fn push_data(&self, out: &mut String) {
        stuff_into(out, &self.head);
        out.push_str(self.body.stuffed.as_deref().unwrap_or_default());
        out.push_str(DATA_END);
    }

    /// The message as lettre takes it.
    pub(super) fn formatted(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + self.body.formatted.len());
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(&self.body.formatted);
        out
    }
}

/// lettre's typed headers, in the order its message builder writes them; each value is
/// encoded (RFC 2047) and folded by lettre, and the subject has lost any CR or LF.
fn headers(from: &Mailbox, to: Address, mail: &OutgoingMail) -> Headers {
    let mut headers = Headers::with_capacity(12);
    headers.set(header::From::from(Mailboxes::from(from.clone())));
    headers.set(header::To::from(Mailboxes::from(Mailbox::new(None, to))));
    headers.set(header::Subject::from(super::super::text::header_safe(
        &mail.subject,
    )));
    headers.set(header::MessageId::from(mail.message_id.header_form()));
    headers.insert_raw(raw_header("Auto-Submitted", AUTO_SUBMITTED));
    headers.insert_raw(raw_header(
        "X-Auto-Response-Suppress",
        AUTO_RESPONSE_SUPPRESS,
    ));
    if let Some(first) = &mail.in_reply_to {
        headers.set(header::InReplyTo::from(first.header_form()));
        headers.set(header::References::from(first.header_form()));
    }
    headers.set(header::MIME_VERSION_1_0);
    headers.set(header::Date::now());
    headers
}

fn raw_header(name: &'static str, value: &str) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_owned())
}

/// A MIME body encoded once.
pub(super) struct EncodedBody {
    formatted: Vec<u8>,
    /// Dot-stuffed, without the final dot; `None` when not all ASCII.
    stuffed: Option<String>,
}

impl EncodedBody {
    /// The length of the body as lettre takes it.
    pub(super) fn len(&self) -> usize {
        self.formatted.len()
    }
}

/// The last few encoded bodies: a request's recipients get the same text and HTML, which
/// need encoding (quoted-printable) only once.
#[derive(Default)]
pub(super) struct BodyCache {
    recent: std::sync::Mutex<VecDeque<(String, String, Arc<EncodedBody>)>>,
}

impl BodyCache {
    const SIZE: usize = 16;

    fn get(&self, text: &str, html: &str) -> Arc<EncodedBody> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, body)) = recent.iter().find(|(t, h, _)| t == text && h == html) {
            return Arc::clone(body);
        }
        let formatted = mime::alternative(text, html).formatted();
        let stuffed = std::str::from_utf8(&formatted)
            .ok()
            .filter(|t| t.is_ascii())
            .map(|t| {
                let mut out = String::with_capacity(t.len() + t.len() / 64);
                stuff_into(&mut out, t);
                out
            });
        let body = Arc::new(EncodedBody { formatted, stuffed });
        if recent.len() == Self::SIZE {
            recent.pop_back();
        }
        recent.push_front((text.to_owned(), html.to_owned(), Arc::clone(&body)));
        body
    }
}

/// MAIL, RCPT for each recipient and DATA: one pipelined group (RFC 2920).
pub(super) fn group(envelope: &Envelope) -> String {
    use std::fmt::Write as _;
    let mut group = Mail::new(envelope.from().cloned(), Vec::new()).to_string();
    for to in envelope.to() {
        let _ = write!(group, "{}", Rcpt::new(to.clone(), Vec::new()));
    }
    let _ = write!(group, "{Data}");
    group
}

/// What ends a message in DATA, as lettre writes it (after the message's own last CRLF).
const DATA_END: &str = "\r\n.\r\n";

/// The DATA form of `message` (RFC 5321 §4.5.2), as lettre writes it: a dot at the start of a
/// line doubled, then CRLF, dot, CRLF.
#[cfg(test)]
pub(super) fn dot_stuffed(message: &str) -> String {
    let mut out = String::new();
    stuff_into(&mut out, message);
    out.push_str(DATA_END);
    out
}

/// Appends `text`, which starts at the start of a line, with a dot at the start of each line
/// doubled (a line starts after CRLF, as lettre counts them).
fn stuff_into(out: &mut String, text: &str) {
    let mut line_start = true;
    for line in text.split_inclusive('\n') {
        if line_start && line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        line_start = line.ends_with("\r\n");
    }
}

/// Text sent to the server as it is (a pipelined group of commands, each ending in CRLF).
pub(super) struct Verbatim<'a>(pub &'a str);

impl std::fmt::Display for Verbatim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

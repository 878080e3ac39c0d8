//! Message-IDs: how we make them, how we store them, how they go into a header.
//!
//! The stored form has no angle brackets (`1A2B.3C4D@host`), as the original's SMTP path stores
//! it; the header form has exactly one pair. Stored ids are also read back from plugin data,
//! where the original's Mailgun path left them *with* brackets, so parsing strips any pairs.
//! An id must fit the plugin-data thread encoding (`email/timestamp/id`, joined by `,`) and a
//! header line, so `/`, `,`, whitespace, control characters and stray brackets are refused.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// The id-right used when the host name cannot be read or has no usable characters.
const FALLBACK_HOST: &str = "localhost";

/// A Message-ID in its stored form: `left@right`, without angle brackets.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

/// Why a string is not a usable Message-ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageIdError {
    #[error("message id is empty")]
    Empty,
    #[error("message id contains {0:?}, which a header or the plugin data cannot carry")]
    Forbidden(char),
}

impl MessageId {
    /// A new id for this host: `BASE36(unix-nanos).BASE36(random u64)@<hostname>`, upper case.
    pub fn generate() -> Self {
        Self::generate_for(&local_host())
    }

    /// A new id with `host` as the part after `@` (cleaned to letters, digits, `.` and `-`).
    pub fn generate_for(host: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let random: u64 = rand::random();
        Self(format!(
            "{}.{}@{}",
            base36(nanos),
            base36(u128::from(random)),
            clean_host(host)
        ))
    }

    /// The same id wherever and whenever it is made for `key` (request, recipient, stage), in the
    /// same `BASE36.BASE36@host` shape: a retry, a restart or another replica that sends the same
    /// mail again reuses its Message-ID, so mail clients see one message.
    pub fn derived(key: &str, host: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let bytes = digest.as_ref();
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&bytes[..8]);
        b.copy_from_slice(&bytes[8..16]);
        Self(format!(
            "{}.{}@{}",
            base36(u128::from(u64::from_be_bytes(a))),
            base36(u128::from(u64::from_be_bytes(b))),
            clean_host(host)
        ))
    }

    /// Reads a stored or header-form id, accepting `id@host`, `<id@host>` and `<<id@host>>`.
    pub fn parse(s: &str) -> Result<Self, MessageIdError> {
        let mut inner = s.trim();
        while let Some(stripped) = inner
            .strip_prefix('<')
            .and_then(|rest| rest.strip_suffix('>'))
        {
            inner = stripped;
        }
        if inner.is_empty() {
            return Err(MessageIdError::Empty);
        }
        if let Some(bad) = inner.chars().find(|&c| !allowed(c)) {
            return Err(MessageIdError::Forbidden(bad));
        }
        Ok(Self(inner.to_owned()))
    }

    /// The stored form, without brackets.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The header form, `<id@host>`.
    pub fn header_form(&self) -> String {
        format!("<{}>", self.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

impl FromStr for MessageId {
    type Err = MessageIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Printable ASCII except what breaks a header (space, brackets, quotes) or the thread encoding.
fn allowed(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '<' | '>' | ',' | '/' | '"' | '\\' | '(' | ')')
}

fn local_host() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

fn clean_host(host: &str) -> String {
    let cleaned: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        .collect();
    let cleaned = cleaned.trim_matches('.');
    if cleaned.is_empty() {
        FALLBACK_HOST.to_owned()
    } else {
        cleaned.to_owned()
    }
}

/// Upper-case base 36, as Go's `strconv.FormatUint(n, 36)` followed by `ToUpper`.
fn base36(mut n: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = Vec::with_capacity(25);
    // 128-bit division is a slow library call: only the digits above 64 bits need it.
    while u64::try_from(n).is_err() {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    let mut n = n as u64;
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = MessageId::derived("req-1/a@x/new", "example.com");
        assert_eq!(a, MessageId::derived("req-1/a@x/new", "example.com"));
        assert_ne!(a, MessageId::derived("req-1/b@x/new", "example.com"));
        assert!(a.as_str().ends_with("@example.com"));
        assert_eq!(MessageId::parse(a.as_str()), Ok(a));
    }

    use super::*;

    #[test]
    fn base36_matches_go() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "Z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(u128::from(u64::MAX)), "3W5E11264SGSF");
        assert_eq!(base36(u128::from(u64::MAX) + 1), "3W5E11264SGSG");
        assert_eq!(base36(u128::MAX), "F5LXX1ZZ5PNORYNQGLHZMSP33");
    }

    #[test]
    fn generated_ids_have_the_original_shape() {
        let id = MessageId::generate_for("mail-1.example.com");
        let (left, right) = id.as_str().split_once('@').unwrap();
        assert_eq!(right, "mail-1.example.com");
        let (nanos, random) = left.split_once('.').unwrap();
        for part in [nanos, random] {
            assert!(!part.is_empty());
            assert!(
                part.chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()),
                "{part}"
            );
        }
        assert_eq!(id.header_form(), format!("<{id}>"));
        assert_eq!(MessageId::parse(&id.header_form()).unwrap(), id);
    }

    #[test]
    fn generated_ids_are_unique() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| MessageId::generate()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn host_part_is_cleaned() {
        let id = MessageId::generate_for("we/ird,host name");
        assert!(id.as_str().ends_with("@weirdhostname"), "{id}");
        let id = MessageId::generate_for("");
        assert!(id.as_str().ends_with("@localhost"), "{id}");
        MessageId::parse(id.as_str()).unwrap();
    }

    #[test]
    fn parse_accepts_both_stored_forms_and_never_doubles_brackets() {
        for s in ["abc@host", "<abc@host>", "<<abc@host>>", " <abc@host> "] {
            let id = MessageId::parse(s).unwrap();
            assert_eq!(id.as_str(), "abc@host");
            assert_eq!(id.header_form(), "<abc@host>");
        }
    }

    #[test]
    fn parse_refuses_what_breaks_headers_or_plugin_data() {
        assert_eq!(MessageId::parse(""), Err(MessageIdError::Empty));
        assert_eq!(MessageId::parse("<>"), Err(MessageIdError::Empty));
        for (s, c) in [
            ("a\r\nBcc: x@y", '\r'),
            ("a\nb@h", '\n'),
            ("a b@h", ' '),
            ("a,b@h", ','),
            ("a/b@h", '/'),
            ("<a>b@h>", '>'),
            ("a@hé", 'é'),
        ] {
            assert_eq!(
                MessageId::parse(s),
                Err(MessageIdError::Forbidden(c)),
                "{s:?}"
            );
        }
    }
}

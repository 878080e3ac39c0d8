//! Email address checks: what counts as a deliverable bare address, as the original plugin judges it.
//!
//! The original accepts an address only when Go's RFC 5322 parser reads it *and* the parsed bare
//! address equals the input exactly. That rules out display names (`Bob <bob@x>`), comments,
//! surrounding spaces and quoted local parts, and admits a single-label domain (`user@host`).

/// Whether `s` is a bare `local@domain` address, exactly as written.
pub fn is_bare_address(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    is_dot_atom(local) && is_dot_atom(domain)
}

/// Whether `s` is usable as a recipient in the plugin data's thread list, where `/` and `,`
/// separate fields and entries.
pub fn fits_thread_encoding(s: &str) -> bool {
    !s.contains(['/', ','])
}

/// Whether `a` is one address that can be mailed and recorded in the plugin data.
pub fn usable(a: &str) -> bool {
    is_bare_address(a) && fits_thread_encoding(a)
}

/// The first usable address among a user's `email` traits (trait name → values).
pub fn email_trait(traits: &std::collections::BTreeMap<String, Vec<String>>) -> Option<String> {
    (traits.get("email").into_iter().flatten())
        .find(|a| usable(a))
        .cloned()
}

/// Whether `s` is a sender: a bare address, or `Display Name <address>`.
pub fn is_mailbox(s: &str) -> bool {
    if is_bare_address(s) {
        return true;
    }
    let Some(rest) = s.strip_suffix('>') else {
        return false;
    };
    let Some((name, addr)) = rest.rsplit_once('<') else {
        return false;
    };
    is_bare_address(addr) && !name.chars().any(|c| c.is_control() || c == '<' || c == '>')
}

fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// RFC 5322 `atext`, widened to non-ASCII characters as RFC 6532 (and Go) allow.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_addresses() {
        for ok in [
            "admin@example.com",
            "first.last+tag@sub.example.org",
            "user@localhost",
            "o'brien@example.ie",
            "jörg@bücher.de",
        ] {
            assert!(is_bare_address(ok), "{ok} should be accepted");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "",
            "admin",
            "@example.com",
            "admin@",
            "Bob <bob@example.com>",
            " admin@example.com",
            "admin@example.com ",
            "a..b@example.com",
            ".a@example.com",
            "a@example.com.",
            "\"quoted\"@example.com",
            "a@b@c",
            "admin@example.com\r\nBcc: evil@example.com",
            "a(comment)@example.com",
        ] {
            assert!(!is_bare_address(bad), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn mailbox_allows_display_name() {
        assert!(is_mailbox("noreply@example.com"));
        assert!(is_mailbox("Teleport Access <noreply@example.com>"));
        assert!(!is_mailbox("Teleport <noreply@example.com"));
        assert!(!is_mailbox("Evil\r\nBcc: x@y <noreply@example.com>"));
    }

    #[test]
    fn thread_encoding_separators() {
        assert!(fits_thread_encoding("a@example.com"));
        assert!(!fits_thread_encoding("a/b@example.com"));
    }
}

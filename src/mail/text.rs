//! Making user-supplied text safe for a mail: bounded length, no header injection, HTML-escaped.
//!
//! Request reasons, user names, roles and reviewer names come from whoever can create an Access
//! Request, so none of them may grow a mail without bound, add a header line, or add markup.

/// The longest user-supplied field we put into a body, in bytes; longer ones are cut.
pub const MAX_FIELD_BYTES: usize = 4096;

/// The longest user-supplied piece we put into a header (the subject's parts), in bytes.
pub const MAX_HEADER_FIELD_BYTES: usize = 256;

/// What replaces the cut-off tail of a long field.
pub const TRUNCATION_NOTE: &str = " … [truncated]";

/// `s` cut at a char boundary to at most `max` bytes, with [`TRUNCATION_NOTE`] appended when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATION_NOTE}", &s[..end])
}

/// Text for a header (or a one-line label): every control character (CR and LF included) and
/// Unicode's line and paragraph separators (which many clients show as line breaks) become a
/// space.
pub fn header_safe(s: &str) -> String {
    let breaks = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.chars().any(breaks) {
        return s.to_owned();
    }
    s.chars().map(|c| if breaks(c) { ' ' } else { c }).collect()
}

/// Text for a body line: line breaks kept as `\n`, other control characters shown as U+FFFD.
pub fn body_safe(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return s.to_owned();
    }
    let unified = s.replace("\r\n", "\n").replace('\r', "\n");
    unified
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// A user-supplied field for a body: cleaned, then bounded.
pub fn body_field(s: &str) -> String {
    truncate(&body_safe(s), MAX_FIELD_BYTES)
}

/// A user-supplied field for a header: cleaned, then bounded.
pub fn header_field(s: &str) -> String {
    truncate(&header_safe(s), MAX_HEADER_FIELD_BYTES)
}

/// `s` with `&`, `<`, `>`, `"` and `'` replaced by entities, safe in HTML text and attributes.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    let mut rest = s;
    while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            _ => "&#39;",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_at_a_char_boundary() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdef", 3), format!("abc{TRUNCATION_NOTE}"));
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(truncate("aé", 2), format!("a{TRUNCATION_NOTE}"));
        let long = "x".repeat(MAX_FIELD_BYTES * 3);
        assert_eq!(
            body_field(&long).len(),
            MAX_FIELD_BYTES + TRUNCATION_NOTE.len()
        );
    }

    #[test]
    fn header_safe_removes_line_breaks_and_controls() {
        assert_eq!(
            header_safe("ok\r\nBcc: evil@example.com\t\u{7}"),
            "ok  Bcc: evil@example.com  "
        );
        assert_eq!(header_safe("Zürich ✅"), "Zürich ✅");
    }

    #[test]
    fn body_safe_keeps_line_breaks_only() {
        assert_eq!(body_safe("a\r\nb\rc\nd\te"), "a\nb\nc\nd\te");
        assert_eq!(
            body_safe("bell\u{7}esc\u{1b}[31m"),
            "bell\u{FFFD}esc\u{FFFD}[31m"
        );
    }

    #[test]
    fn html_escape_covers_markup_and_quotes() {
        assert_eq!(
            html_escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}

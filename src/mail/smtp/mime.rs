//! The MIME body of our mails — text and HTML alternatives — each part encoded for 7-bit
//! transport in one pass.
//!
//! lettre's own path normalises line endings by inserting a CR into the string at every line
//! (a copy of the rest each time), then chooses an encoding in another pass and encodes byte by
//! byte: under a burst that was a sixth of the daemon's work. The choice made here is lettre's:
//! 7bit when the text is ASCII with short lines, else quoted-printable unless more than a third
//! of it needs escaping, else base64.

use base64::Engine as _;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, MultiPart, SinglePart};

/// Longest line of a 7bit or base64 part, and of a quoted-printable one with its soft break.
const LINE: usize = 76;

/// What a byte is to the encoders (a table: the matches it replaces cost several times more).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Printable ASCII but `=`, space and tab: written as it is in every encoding.
    Plain,
    /// `=`: 7-bit, but escaped in quoted-printable.
    Equals,
    Lf,
    Cr,
    /// Anything else: control characters and bytes above 127.
    Other,
}

const CLASSES: [Class; 256] = {
    let mut t = [Class::Other; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = match b as u8 {
            b'=' => Class::Equals,
            b'\t' | b' '..=b'~' => Class::Plain,
            b'\n' => Class::Lf,
            b'\r' => Class::Cr,
            _ => Class::Other,
        };
        b += 1;
    }
    t
};

fn class(b: u8) -> Class {
    CLASSES[usize::from(b)]
}

/// `multipart/alternative` with `text` and `html`, as lettre's `alternative_plain_html` makes it.
pub(super) fn alternative(text: &str, html: &str) -> MultiPart {
    MultiPart::alternative()
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(encode(text.as_bytes())),
        )
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(encode(html.as_bytes())),
        )
}

/// `text` (LF or CRLF line ends) encoded with CRLF line ends.
fn encode(text: &[u8]) -> Body {
    let shape = Shape::of(text);
    let (bytes, encoding) = if shape.escaped == 0 && shape.longest <= LINE && !shape.lone_cr {
        (crlf(text), ContentTransferEncoding::SevenBit)
    } else if shape.escaped <= text.len() / 3 {
        (
            quoted_printable(text),
            ContentTransferEncoding::QuotedPrintable,
        )
    } else {
        (base64_lines(&crlf(text)), ContentTransferEncoding::Base64)
    };
    Body::dangerous_pre_encoded(bytes, encoding)
}

/// What decides the encoding, found in one pass.
struct Shape {
    /// Bytes quoted-printable must escape (line ends aside).
    escaped: usize,
    /// The longest line, without its line end.
    longest: usize,
    /// A CR that does not start a CRLF (7bit text may not carry one).
    lone_cr: bool,
}

impl Shape {
    fn of(text: &[u8]) -> Self {
        let mut shape = Shape {
            escaped: 0,
            longest: 0,
            lone_cr: false,
        };
        let mut line_start = 0;
        for (i, &b) in text.iter().enumerate() {
            match class(b) {
                Class::Plain | Class::Equals => {}
                Class::Lf => {
                    let end = if i > line_start && text[i - 1] == b'\r' {
                        i - 1
                    } else {
                        i
                    };
                    shape.longest = shape.longest.max(end - line_start);
                    line_start = i + 1;
                }
                Class::Cr => shape.lone_cr |= text.get(i + 1) != Some(&b'\n'),
                Class::Other => shape.escaped += 1,
            }
        }
        shape.longest = shape.longest.max(text.len() - line_start);
        shape
    }
}

/// `text` with every LF preceded by a CR.
fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32 + 2);
    for_lines(text, |line, last| {
        out.extend_from_slice(line);
        if !last {
            out.extend_from_slice(b"\r\n");
        }
    });
    out
}

/// Calls `f` with each line of `text` without its LF or CRLF, and whether it is the last.
fn for_lines(text: &[u8], mut f: impl FnMut(&[u8], bool)) {
    let mut rest = text;
    loop {
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                f(rest[..n].strip_suffix(b"\r").unwrap_or(&rest[..n]), false);
                rest = &rest[n + 1..];
            }
            None => return f(rest, true),
        }
    }
}

/// Quoted-printable (RFC 2045 §6.7): line ends become CRLF, other bytes outside printable
/// ASCII, `=` and whitespace ending a line become `=XX`, and lines longer than 76 characters
/// are split with soft breaks.
fn quoted_printable(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 4 + 8);
    for_lines(text, |line, last| {
        quoted_printable_line(line, &mut out);
        if !last {
            out.extend_from_slice(b"\r\n");
        }
    });
    out
}

fn quoted_printable_line(line: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Before a soft break's `=`.
    const WIDTH: usize = LINE - 1;
    let mut column = 0;
    let mut i = 0;
    while i < line.len() {
        if column == WIDTH {
            out.extend_from_slice(b"=\r\n");
            column = 0;
        }
        let limit = line.len().min(i + WIDTH - column);
        let mut end = i;
        while end < limit && class(line[end]) == Class::Plain {
            end += 1;
        }
        // Whitespace that ends a line would be taken for padding and dropped: escape it.
        if end == line.len() && end > i && matches!(line[end - 1], b' ' | b'\t') {
            end -= 1;
        }
        if end > i {
            out.extend_from_slice(&line[i..end]);
            column += end - i;
            i = end;
            continue;
        }
        if column + 3 > WIDTH {
            out.extend_from_slice(b"=\r\n");
            column = 0;
        }
        let b = line[i];
        out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        column += 3;
        i += 1;
    }
}

/// Base64 in lines of 76 characters, each ending in CRLF.
fn base64_lines(bytes: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / LINE * 2 + 2);
    for chunk in encoded.as_bytes().chunks(LINE) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders as _;
    use proptest::prelude::*;

    /// Decodes the message our mailer would send with `text` and `html` as an independent MIME
    /// parser does, checking the wire form on the way.
    fn round_trip(text: &str, html: &str) -> (String, String, Vec<String>) {
        let body = alternative(text, html).formatted();
        for line in body.split(|&b| b == b'\n') {
            assert!(line.is_ascii(), "not 7-bit: {line:?}");
            assert!(line.len() <= LINE + 1, "line too long: {line:?}");
            assert!(
                !line.strip_suffix(b"\r").unwrap_or(line).contains(&b'\r'),
                "bare CR in {line:?}"
            );
        }
        let mut message = b"From: a@example.com\r\nMIME-Version: 1.0\r\n".to_vec();
        message.extend_from_slice(&body);
        let parsed = mail_parser::MessageParser::default()
            .parse(&message)
            .expect("parses");
        let encodings = parsed
            .parts
            .iter()
            .skip(1)
            .map(|p| p.content_transfer_encoding().unwrap_or_default().to_owned())
            .collect();
        (
            parsed.body_text(0).expect("text part").into_owned(),
            parsed.body_html(0).expect("html part").into_owned(),
            encodings,
        )
    }

    fn crlf_str(s: &str) -> String {
        String::from_utf8(crlf(s.as_bytes())).unwrap()
    }

    #[test]
    fn encodings_are_chosen_as_lettre_chooses_them() {
        let (_, _, e) = round_trip("short ascii\nlines\n", "<p>also</p>\n");
        assert_eq!(e, ["7bit", "7bit"]);
        let long = "x".repeat(200);
        let (_, _, e) = round_trip(&long, "Status: ⏳ PENDING\n");
        assert_eq!(e, ["quoted-printable", "quoted-printable"]);
        let (_, _, e) = round_trip("日本語のテキスト", "ok");
        assert_eq!(e, ["base64", "7bit"]);
    }

    #[test]
    fn edge_cases_decode_to_the_text() {
        for text in [
            "",
            "\n",
            "a = b\n",
            "trailing space \nand tab\t\nend ",
            "Status: ⏳ PENDING\r\nReason: \"x\"\n",
            "lone\rCR",
            "\t\t\r",
            &format!("{}=\n", "y".repeat(74)),
            &format!("{} {}\n", "y".repeat(74), "z".repeat(80)),
            &"é".repeat(100),
            &format!("{}⏳{}", "a".repeat(73), "b".repeat(10)),
        ] {
            let (t, h, _) = round_trip(text, text);
            let want = crlf_str(text);
            assert_eq!(t, want, "text {text:?}");
            assert_eq!(h, want, "html {text:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn any_text_decodes_to_itself(text in "[ -~\t\n\r=éü⏳✅日]{0,300}") {
            let (t, _, _) = round_trip(&text, "<p>x</p>");
            prop_assert_eq!(t, crlf_str(&text));
        }
    }
}

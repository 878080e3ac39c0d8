//! The string functions: `strings.*`, `email.local`, `regexp.replace`, as Go computes them.

use std::collections::BTreeSet;

use super::MAX_VALUE_BYTES;
use super::eval::Value;

/// Applies `f` to a string, or to every member of a set (upstream `StringTransform`).
pub(super) fn transform(
    name: &str,
    input: Value,
    f: impl Fn(&str) -> Result<String, String>,
) -> Result<Value, String> {
    match input {
        Value::Str(s) => f(&s).map(Value::Str),
        Value::Set(s) => {
            // The whole set one step builds is bounded, not only each member.
            let mut total = 0usize;
            let mut out = BTreeSet::new();
            for v in &s {
                let v = f(v)?;
                total = total.saturating_add(v.len());
                if total > MAX_VALUE_BYTES {
                    return Err(too_big());
                }
                out.insert(v);
            }
            Ok(Value::Set(out))
        }
        v => Err(format!(
            "{name} expects a string or a set, got {}",
            v.type_name()
        )),
    }
}

/// Go's `strings.ToUpper`/`ToLower` map rune by rune (no `ß` → `SS`).
pub(super) fn simple_case(s: &str, upper: bool) -> String {
    s.chars()
        .map(|c| {
            let mut m: Vec<char> = if upper {
                c.to_uppercase().collect()
            } else {
                c.to_lowercase().collect()
            };
            if m.len() == 1 {
                m.remove(0)
            } else {
                simple_special(c, upper)
            }
        })
        .collect()
}

/// The one-rune (simple) mapping of the few runes whose full mapping has several: `İ` lowers
/// to `i`; the Greek letters with ypogegrammeni upper to their titlecase forms; the rest (`ß`,
/// ligatures, …) have no simple mapping and stay.
fn simple_special(c: char, upper: bool) -> char {
    let shifted = |c: char, by: u32| char::from_u32(c as u32 + by).unwrap_or(c);
    match (upper, c) {
        (false, '\u{130}') => 'i',
        (true, '\u{1F80}'..='\u{1F87}' | '\u{1F90}'..='\u{1F97}' | '\u{1FA0}'..='\u{1FA7}') => {
            shifted(c, 8)
        }
        (true, '\u{1FB3}' | '\u{1FC3}' | '\u{1FF3}') => shifted(c, 9),
        _ => c,
    }
}

fn too_big() -> String {
    format!("result larger than {MAX_VALUE_BYTES} bytes")
}

pub(super) fn replace_all(s: &str, from: &str, to: &str) -> Result<String, String> {
    let count = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    let size = s.len().saturating_add(count.saturating_mul(to.len()));
    if size > MAX_VALUE_BYTES {
        return Err(too_big());
    }
    Ok(s.replace(from, to))
}

/// Go's `strings.Split`: an empty separator splits into characters (none for "").
pub(super) fn split(s: &str, sep: &str) -> Vec<String> {
    if sep.is_empty() {
        return s.chars().map(String::from).collect();
    }
    s.split(sep).map(String::from).collect()
}

/// The local part of an address, as upstream's `email.local` (which uses Go's
/// `mail.ParseAddress`; this accepts `local@domain` and `Name <local@domain>`).
pub(super) fn email_local(email: &str) -> Result<String, String> {
    if email.is_empty() {
        return Err("found empty email.local argument".into());
    }
    let trimmed = email.trim();
    let addr = match (trimmed.rfind('<'), trimmed.ends_with('>')) {
        (Some(open), true) => &trimmed[open + 1..trimmed.len() - 1],
        _ => trimmed,
    };
    let bad = || format!("failed to parse email.local argument {email:?}: not an address");
    let (local, domain) = addr.split_once('@').ok_or_else(bad)?;
    let invalid =
        |p: &str| p.is_empty() || p.contains(|c: char| c.is_whitespace() || "<>@,;\"".contains(c));
    if invalid(local) || invalid(domain) {
        return Err(bad());
    }
    Ok(local.to_string())
}

/// Upstream `regexp.replace`: inputs that do not match are dropped, as are empty results.
pub(super) fn regexp_replace(
    inputs: &BTreeSet<String>,
    pattern: &str,
    replacement: &str,
) -> Result<BTreeSet<String>, String> {
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regexp {pattern:?}: {e}"))?;
    let mut out = BTreeSet::new();
    for input in inputs.iter().filter(|i| re.is_match(i)) {
        let mut dst = String::new();
        let mut last = 0;
        for caps in re.captures_iter(input) {
            let Some(m) = caps.get(0) else { continue };
            dst.push_str(&input[last..m.start()]);
            caps.expand(replacement, &mut dst);
            last = m.end();
            if dst.len() > MAX_VALUE_BYTES {
                return Err(too_big());
            }
        }
        dst.push_str(&input[last..]);
        if !dst.is_empty() {
            out.insert(dst);
        }
    }
    Ok(out)
}

//! RFC 3339 times as Go's `time.Parse(time.RFC3339, s)` reads them (conditions' `time.RFC3339(...)`,
//! plugin data written by Go plugins), without a date library.

use std::time::{Duration, SystemTime};

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, validating every field as Go does.
pub fn parse(s: &str) -> Result<SystemTime, String> {
    let b = s.as_bytes();
    if b.len() < 20
        || !(b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':')
    {
        return Err("expected YYYY-MM-DDTHH:MM:SS followed by Z or an offset".into());
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let (hour, min, sec) = (digits(b, 11, 2)?, digits(b, 14, 2)?, digits(b, 17, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err("day out of range".into());
    }
    if hour > 23 || min > 59 || sec > 59 {
        return Err("time of day out of range".into());
    }
    let (nanos, rest) = fraction(&b[19..]);
    let offset = zone(rest)?;
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset;
    let whole = Duration::from_secs(secs.unsigned_abs());
    let base = if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(whole)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(whole)
    };
    base.and_then(|t| t.checked_add(Duration::from_nanos(nanos)))
        .ok_or_else(|| "time out of range".to_string())
}

fn digits(b: &[u8], at: usize, n: usize) -> Result<i64, String> {
    let field = b.get(at..at + n).ok_or("truncated")?;
    if !field.iter().all(u8::is_ascii_digit) {
        return Err("expected digits".into());
    }
    Ok(field
        .iter()
        .fold(0, |acc, d| acc * 10 + i64::from(d - b'0')))
}

/// An optional `.123` (or `,123`) after the seconds: nanoseconds (truncated to 9 digits).
fn fraction(b: &[u8]) -> (u64, &[u8]) {
    if b.len() < 2 || !(b[0] == b'.' || b[0] == b',') || !b[1].is_ascii_digit() {
        return (0, b);
    }
    let n = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut nanos = 0u64;
    for i in 0..9 {
        let d = if i < n { u64::from(b[1 + i] - b'0') } else { 0 };
        nanos = nanos * 10 + d;
    }
    (nanos, &b[1 + n..])
}

/// `Z` or `±HH:MM` → seconds east of UTC.
fn zone(b: &[u8]) -> Result<i64, String> {
    if b == b"Z" {
        return Ok(0);
    }
    let sign = match b.first() {
        Some(b'+') if b.len() == 6 => 1,
        Some(b'-') if b.len() == 6 => -1,
        _ => return Err("expected Z or an offset like +02:00 at the end".into()),
    };
    if b[3] != b':' {
        return Err("expected an offset like +02:00".into());
    }
    let (h, m) = (digits(b, 1, 2)?, digits(b, 4, 2)?);
    if h > 23 || m > 59 {
        return Err("time zone offset out of range".into());
    }
    Ok(sign * (h * 3600 + m * 60))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days-from-civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(s: &str) -> i64 {
        match parse(s).map(|t| t.duration_since(SystemTime::UNIX_EPOCH)) {
            Ok(Ok(d)) => d.as_secs() as i64,
            Ok(Err(e)) => -(e.duration().as_secs() as i64),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn known_instants() {
        assert_eq!(unix("1970-01-01T00:00:00Z"), 0);
        assert_eq!(unix("2025-06-01T12:00:00Z"), 1_748_779_200);
        assert_eq!(unix("2025-06-01T14:00:00+02:00"), 1_748_779_200);
        assert_eq!(unix("2000-02-29T00:00:00Z"), 951_782_400);
        assert_eq!(unix("1969-12-31T23:59:59Z"), -1);
        let frac = parse("1970-01-01T00:00:01.5Z").unwrap();
        assert_eq!(
            frac.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            1500
        );
    }

    #[test]
    fn refuses_what_go_refuses() {
        for bad in [
            "",
            "2025-06-01",
            "2025-06-01 12:00:00Z",
            "2025-06-01T12:00:00",
            "2025-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-06-01T24:00:00Z",
            "2025-06-01T12:00:60Z",
            "2025-06-01T12:00:00+2:00",
            "2025-06-01T12:00:00z",
            "2025-06-01T12:00:00Zjunk",
            "２０２５-06-01T12:00:00Z",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}

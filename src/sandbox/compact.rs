//! Fixed-size forms of the text the sandbox keeps per payment, so that a sandbox answering for
//! a million payments holds a few hundred bytes for each: UUIDs as 16 bytes, hex digests as
//! their bytes, decimal amounts as an integer and a scale, RFC 3339 times as microseconds,
//! names from a small set (providers, operations, currencies) as an index into one table.
//!
//! Every form is taken only when it gives back exactly the text it came from (checked when it is
//! made); a value that would not (an id that is no lower-case UUID, an amount of 20 digits, …)
//! is kept as text by the caller. So what the sandbox answers never depends on these forms.

use std::sync::{Mutex, OnceLock};

/// A lower-case hyphenated UUID (`8-4-4-4-12` hex digits) as its 16 bytes; `None` for any
/// other text, including an upper-case UUID (it would not come back the same).
pub fn uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        out[n] = (lower_hex(b[i])? << 4) | lower_hex(b[i + 1])?;
        n += 1;
        i += 2;
    }
    Some(out)
}

/// The text of [`uuid`]'s bytes.
pub fn uuid_text(b: &[u8; 16]) -> String {
    let hex = crate::keys::hex_lower(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// 32 lower-case hex digits as their 16 bytes (a recipient digest).
pub fn hex16(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (lower_hex(b[2 * i])? << 4) | lower_hex(b[2 * i + 1])?;
    }
    Some(out)
}

fn lower_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// A decimal amount as its digits and scale (`"10.50"`: 1050, 2), when it comes back as the same
/// text.
pub fn decimal(s: &str) -> Option<(i64, u8)> {
    let d: rust_decimal::Decimal = s.parse().ok()?;
    let minor = i64::try_from(d.mantissa()).ok()?;
    let scale = u8::try_from(d.scale()).ok()?;
    (decimal_text(minor, scale) == s).then_some((minor, scale))
}

/// The text of [`decimal`]'s form.
pub fn decimal_text(minor: i64, scale: u8) -> String {
    rust_decimal::Decimal::try_from_i128_with_scale(i128::from(minor), u32::from(scale))
        .map(|d| d.to_string())
        .unwrap_or_default()
}

/// An RFC 3339 time as written by `Clock::date` (UTC, microseconds) as microseconds since the
/// Unix epoch, when it comes back as the same text.
pub fn time(s: &str) -> Option<i64> {
    let us = chrono::DateTime::parse_from_rfc3339(s)
        .ok()?
        .timestamp_micros();
    (time_text(us) == s).then_some(us)
}

/// The text of [`time`]'s form.
pub fn time_text(us: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, false))
        .unwrap_or_default()
}

/// A name from a small set (a provider, an operation, a currency) as its index in one table
/// shared by the process. The table holds each distinct name once, for the life of the process,
/// and at most `u16::MAX` of them: a name beyond that has no index (its holder keeps the text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name(u16);

fn names() -> &'static Mutex<Vec<&'static str>> {
    static T: OnceLock<Mutex<Vec<&'static str>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(Vec::new()))
}

impl Name {
    pub fn new(s: &str) -> Option<Name> {
        let mut t = names().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = t.iter().position(|n| *n == s) {
            return Some(Name(i as u16));
        }
        // A name no caller has seen: the few a sandbox uses are leaked once, never freed.
        let i = u16::try_from(t.len()).ok().filter(|i| *i < u16::MAX)?;
        t.push(Box::leak(s.into()));
        Some(Name(i))
    }

    pub fn as_str(self) -> &'static str {
        names()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(usize::from(self.0))
            .copied()
            .unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_case_uuid_comes_back_the_same_and_other_text_is_no_uuid() {
        let key = crate::keys::task_key("k", "n");
        assert_eq!(uuid_text(&uuid(&key).unwrap()), key);
        for other in [
            key.to_uppercase(),
            key.replace('-', ""),
            format!("{key}0"),
            "inv-1".to_string(),
            "232db864-3930-43ce-8d27-59e1c67b520x".to_string(),
        ] {
            assert_eq!(uuid(&other), None, "{other}");
        }
    }

    #[test]
    fn an_amount_or_a_time_is_kept_as_numbers_only_when_they_give_back_its_text() {
        for a in ["10.50", "0", "1", "-3.25", "1000000000.00", "0.001"] {
            let (m, s) = decimal(a).unwrap();
            assert_eq!(decimal_text(m, s), a);
        }
        for a in ["1e3", "+1", "01", "99999999999999999999999", "x"] {
            assert_eq!(decimal(a), None, "{a}");
        }
        let t = "2026-12-02T07:14:36.123456+00:00";
        assert_eq!(time_text(time(t).unwrap()), t);
        assert_eq!(time("2026-12-02T07:14:36Z"), None);
        assert_eq!(time("2026-12-02T07:14:36.123456+01:00"), None);
    }

    #[test]
    fn a_name_is_one_index_for_the_life_of_the_process() {
        let a = Name::new("pay.toAccount").unwrap();
        assert_eq!(Name::new("pay.toAccount"), Some(a));
        assert_eq!(a.as_str(), "pay.toAccount");
        assert_ne!(Name::new("pay.toCard"), Some(a));
    }

    #[test]
    fn sixteen_hex_bytes_come_back_as_the_same_digest() {
        let d = "00ff10a0b1c2d3e4f5061728394a5b6c";
        assert_eq!(crate::keys::hex_lower(&hex16(d).unwrap()), d);
        assert_eq!(hex16(&d.to_uppercase()), None);
        assert_eq!(hex16("d"), None);
    }
}

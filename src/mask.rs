//! Masking of sensitive values and shortening of huge ones, for every human or machine output.
//!
//! A sensitive value keeps at most its last four characters, and only when it is long enough
//! that four characters do not identify it (card numbers, IBANs); shorter values are masked
//! whole. The mask has a fixed width so that it does not reveal the value's length.

/// Masks a sensitive value: `************3033`.
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() >= 12 {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("********{tail}")
    } else {
        "********".to_string()
    }
}

/// Shortens a value for display: at most 60 characters, control characters escaped.
pub fn shorten(value: &str) -> String {
    const MAX: usize = 60;
    let mut out = String::new();
    for (count, c) in value.chars().enumerate() {
        if count == MAX {
            out.push_str(&format!("… ({} bytes in all)", value.len()));
            return out;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// What an output may show of a value: masked when sensitive, shortened always.
pub fn display(value: &str, sensitive: bool) -> String {
    if sensitive {
        mask(value)
    } else {
        shorten(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_keep_only_their_last_four_digits() {
        assert_eq!(mask("4539025531693033"), "********3033");
        assert_eq!(mask("GB82WEST12345698765432"), "********5432");
    }

    #[test]
    fn short_secrets_are_masked_whole() {
        assert_eq!(mask("1980-01-01"), "********");
        assert_eq!(mask(""), "********");
    }

    #[test]
    fn huge_values_are_shortened_and_control_characters_escaped() {
        let big = "x".repeat(10 << 20);
        let shown = shorten(&big);
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.ends_with("(10485760 bytes in all)"));
        assert_eq!(shorten("a\nb\u{7}"), "a\\nb\\u{7}");
    }
}

//! Masking of sensitive and personal values and shortening of huge ones, for every human or
//! machine output.
//!
//! What a value may show depends on what it is (`Privacy`, from the field's schema marks
//! `sensitive` and `holds`). An account-like value (IBAN, card, account number) keeps its last
//! four characters, as banks print them, whenever it has at least eight, so that a clerk can
//! compare it with the source; a secret that is not an account (date of birth, tax id, token) is
//! masked whole. In previews a name keeps its initials (`J. D.`), an e-mail its domain
//! (`***@acme.example`), a phone number its last digits. Masks have a fixed width so that they
//! do not reveal the value's length.

/// What an output may show of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privacy {
    /// Shown (shortened if huge).
    Plain,
    /// A secret that is not an account: masked whole everywhere.
    Secret,
    /// An account or card number: its last four characters everywhere.
    Account,
    /// A phone number: its last digits everywhere.
    Phone,
    /// A person's name: shown in errors (the clerk must find it), initials in previews.
    Name,
    /// An e-mail address: shown in errors, its domain in previews.
    Email,
}

/// The fixed-width part of every mask.
const STARS: &str = "********";

/// Masks a secret whole: `********`, whatever it holds.
pub fn mask(_secret: &str) -> String {
    STARS.to_string()
}

/// Masks an account or card number, keeping its last four characters when it has at least
/// eight (`********3033`, `********E+19`); shorter ones are masked whole, since four characters
/// would be half of them.
pub fn mask_account(value: &str) -> String {
    let n = value.chars().count();
    if n >= 8 {
        let tail: String = value.chars().skip(n - 4).collect();
        format!("{STARS}{}", shorten(&tail))
    } else {
        STARS.to_string()
    }
}

/// Masks a phone number, keeping its last four digits when it has at least eight, its last two
/// when it has at least four (`********2671`).
pub fn mask_phone(value: &str) -> String {
    let digits: Vec<char> = value.chars().filter(char::is_ascii_digit).collect();
    let keep = match digits.len() {
        n if n >= 8 => 4,
        n if n >= 4 => 2,
        _ => 0,
    };
    let tail: String = digits[digits.len() - keep..].iter().collect();
    format!("{STARS}{tail}")
}

/// A name as its initials: `Jane Alice Smith` → `J. A. S.`.
pub fn initials(value: &str) -> String {
    let parts: Vec<String> = value
        .split(|c: char| c.is_whitespace() || c == '-')
        .filter_map(|w| w.chars().find(|c| c.is_alphanumeric()))
        .flat_map(char::to_uppercase)
        .map(|c| format!("{}.", shorten(&c.to_string())))
        .collect();
    if parts.is_empty() {
        STARS.to_string()
    } else {
        parts.join(" ")
    }
}

/// An e-mail address as its domain: `***@acme.example` (masked whole without an `@`).
pub fn email_domain(value: &str) -> String {
    match value.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => format!("***@{}", shorten(domain)),
        _ => STARS.to_string(),
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

/// What an output may show of a value of an unknown kind: masked whole when sensitive,
/// shortened always.
pub fn display(value: &str, sensitive: bool) -> String {
    if sensitive {
        mask(value)
    } else {
        shorten(value)
    }
}

/// What an error or a report may show of a value: secrets, accounts and phone numbers masked;
/// names and e-mails shown (shortened), so that the clerk can find the row to fix.
pub fn for_error(value: &str, privacy: Privacy) -> String {
    match privacy {
        Privacy::Plain | Privacy::Name | Privacy::Email => shorten(value),
        Privacy::Secret => mask(value),
        Privacy::Account => mask_account(value),
        Privacy::Phone => mask_phone(value),
    }
}

/// What a preview (plan, confirm prompt) may show of a value: personal data masked too.
pub fn for_preview(value: &str, privacy: Privacy) -> String {
    match privacy {
        Privacy::Name => initials(value),
        Privacy::Email => email_domain(value),
        other => for_error(value, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_and_ibans_keep_only_their_last_four_characters() {
        assert_eq!(mask_account("4539025531693033"), "********3033");
        assert_eq!(mask_account("GB82WEST12345698765432"), "********5432");
    }

    #[test]
    fn an_eleven_character_account_in_scientific_notation_keeps_its_tail_so_a_clerk_notices() {
        assert_eq!(mask_account("5.43232E+19"), "********E+19");
        assert_eq!(mask_account("12345678"), "********5678");
        assert_eq!(mask_account("1234567"), "********");
    }

    #[test]
    fn secrets_that_are_not_accounts_are_masked_whole_whatever_their_length() {
        assert_eq!(mask("1980-01-01"), "********");
        assert_eq!(mask("123-45-6789"), "********");
        assert_eq!(mask("7b48c86e-b583-4947-8bb6-7cd6b2a3f0ab"), "********");
        assert_eq!(mask(""), "********");
        assert_eq!(for_error("1980-01-01", Privacy::Secret), "********");
    }

    #[test]
    fn masks_have_a_fixed_width_whatever_the_length_of_the_value() {
        assert_eq!(
            mask_account("12345678").len(),
            mask_account(&"1".repeat(34)).len()
        );
        assert_eq!(
            mask_phone("+14155552671").len(),
            mask_phone("+441234567890123").len()
        );
    }

    #[test]
    fn previews_show_initials_of_names_domains_of_emails_and_last_digits_of_phones() {
        assert_eq!(for_preview("Jane Alice Smith", Privacy::Name), "J. A. S.");
        assert_eq!(for_preview("jean-luc", Privacy::Name), "J. L.");
        assert_eq!(for_preview("   ", Privacy::Name), "********");
        assert_eq!(
            for_preview("jane.smith@acme.example", Privacy::Email),
            "***@acme.example"
        );
        assert_eq!(for_preview("no-at-sign", Privacy::Email), "********");
        assert_eq!(for_preview("+14155552671", Privacy::Phone), "********2671");
        assert_eq!(for_preview("12345", Privacy::Phone), "********45");
        assert_eq!(for_preview("12", Privacy::Phone), "********");
        assert_eq!(for_preview("B2P", Privacy::Plain), "B2P");
    }

    #[test]
    fn errors_show_names_and_emails_but_mask_accounts_and_secrets() {
        assert_eq!(for_error("Jane Smith", Privacy::Name), "Jane Smith");
        assert_eq!(
            for_error("j@acme.example", Privacy::Email),
            "j@acme.example"
        );
        assert_eq!(
            for_error("DE89370400440532013000", Privacy::Account),
            "********3000"
        );
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

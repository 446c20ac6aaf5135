//! Checks of account numbers, for fields whose schema says what they hold (`holds: iban`,
//! `account`, `card`, `aba`): an IBAN's structure, its country's length and layout and its
//! mod-97 check digits (the IBAN registry, through the `iban_validate` crate); a card number's 12-19
//! digits and Luhn check digit (ISO/IEC 7812); a US routing number's ABA checksum. A wrong
//! digit or two swapped ones are caught before anything is sent.

use super::field::Violation;
use iban::{BaseIban, Iban, ParseBaseIbanError, ParseIbanError};

fn violation(rule: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Violation {
    Violation {
        rule,
        message: message.into(),
        hint: hint.into(),
    }
}

const IBAN_EXAMPLE: &str = "e.g. DE89370400440532013000";

/// The check digits that make `country` + digits + `bban` a valid IBAN (ISO 13616 mod 97), or
/// `None` when the BBAN is not letters and digits.
fn check_digits(country: &str, bban: &str) -> Option<u32> {
    let mut rem: u32 = 0;
    for c in bban.chars().chain(country.chars()).chain("00".chars()) {
        let n = c.to_digit(36)?;
        rem = if n < 10 {
            (rem * 10 + n) % 97
        } else {
            (rem * 100 + n) % 97
        };
    }
    Some(98 - rem)
}

/// `country` + correct check digits + `bban`, parsed as an IBAN of the registry.
fn with_correct_check_digits(country: &str, bban: &str) -> Result<Iban, ParseIbanError> {
    let digits = check_digits(country, bban).ok_or(ParseIbanError::InvalidBaseIban {
        source: ParseBaseIbanError::InvalidFormat,
    })?;
    format!("{country}{digits:02}{bban}").parse::<Iban>()
}

/// Whether `code` (two capital letters) is a country of the IBAN registry, as a 26×26 table
/// built once from `iban_validate`.
fn is_iban_country(code: &[u8]) -> bool {
    static TABLE: std::sync::OnceLock<super::field::LetterPairs> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| {
            super::field::LetterPairs::of(|code| {
                // A country's pattern is looked up before its BBAN is matched: any BBAN tells
                // an unknown country from a known one.
                !matches!(
                    with_correct_check_digits(code, "0000000000000"),
                    Err(ParseIbanError::UnknownCountry(_))
                )
            })
        })
        .contains(code)
}

/// Whether a value of an account field that may or may not be an IBAN is one: two letters
/// naming an IBAN country, two digits and at least 11 more letters or digits (the shortest
/// IBAN, Norway's, has 15 characters), spaces and case aside. A domestic account number is
/// digits, or letters that name no IBAN country followed by digits.
pub fn looks_like_iban(v: &str) -> bool {
    // No allocation: this runs for every row of an account column.
    let mut compact = v
        .bytes()
        .filter(|b| *b != b' ')
        .map(|b| b.to_ascii_uppercase());
    let mut head = [0u8; 4];
    for h in &mut head {
        match compact.next() {
            Some(b) => *h = b,
            None => return false,
        }
    }
    let mut rest = 0;
    for b in compact {
        if !b.is_ascii_alphanumeric() {
            return false;
        }
        rest += 1;
    }
    rest >= 11
        && head[2].is_ascii_digit()
        && head[3].is_ascii_digit()
        && is_iban_country(&head[..2])
}

/// An IBAN in its electronic form: capitals and digits, no spaces, a country of the registry,
/// that country's length and layout, and mod-97 check digits.
pub fn check_iban(v: &str) -> Result<(), Violation> {
    if known_good(v.as_bytes()) {
        return Ok(());
    }
    if v.contains(char::is_whitespace) {
        return Err(violation(
            "iban.format",
            "has spaces",
            format!("write the IBAN as one block without spaces, {IBAN_EXAMPLE}"),
        ));
    }
    if v.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(violation(
            "iban.format",
            "has lower-case letters",
            "write the IBAN's letters in capitals",
        ));
    }
    let b = v.as_bytes();
    let shaped = (5..=34).contains(&b.len())
        && b[..2].iter().all(u8::is_ascii_uppercase)
        && b[2..4].iter().all(u8::is_ascii_digit)
        && b[4..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if !shaped {
        return Err(violation(
            "iban.format",
            "is not an IBAN",
            format!(
                "an IBAN is two letters for the country, two check digits and up to 30 letters and digits, {IBAN_EXAMPLE}; a domestic account number is not one (check the account's type)"
            ),
        ));
    }
    // A good IBAN of a layout not seen yet, without allocating; the rest says what is wrong.
    if v.parse::<Iban>().is_ok() {
        remember_layout(b);
        return Ok(());
    }
    let (country, bban) = (&v[..2], &v[4..]);
    if !is_iban_country(&b[..2]) {
        return Err(violation(
            "iban.country",
            format!("starts with {country}, which is not a country that has IBANs"),
            "check the first two letters; an account outside the IBAN countries is not an IBAN",
        ));
    }
    // The country's length and layout first: a missing character also breaks the check digits,
    // and "one character missing" is the more useful thing to say.
    if let Err(ParseIbanError::InvalidBban(_)) = with_correct_check_digits(country, bban) {
        return Err(violation(
            "iban.length",
            format!(
                "has {} characters, which is not the length or layout of a {country} IBAN",
                v.len()
            ),
            format!(
                "every {country} IBAN has the same length and layout: look for a missing, extra or mistyped character"
            ),
        ));
    }
    match v.parse::<BaseIban>() {
        Err(ParseBaseIbanError::InvalidChecksum) => Err(violation(
            "iban.checksum",
            "has wrong check digits (ISO 13616 mod 97)",
            "a character is wrong or two are swapped: copy the IBAN again from the recipient's bank details",
        )),
        Ok(_) | Err(ParseBaseIbanError::InvalidFormat) => Err(violation(
            "iban.format",
            "is not an IBAN",
            format!("write the IBAN as one block, {IBAN_EXAMPLE}"),
        )),
    }
}

/// The layout of an IBAN as the registry's country patterns see it: its country, its length
/// and which of its BBAN's characters are letters. Every character being a capital or a digit,
/// the patterns (digits, capitals, either, per position) accept either every IBAN of a layout
/// or none; `None` when the value is not capitals and digits of an IBAN's length.
fn layout(b: &[u8]) -> Option<(u16, u8, u32)> {
    if !(5..=34).contains(&b.len()) {
        return None;
    }
    let mut letters = 0u32;
    for (i, c) in b.iter().enumerate() {
        let letter = c.is_ascii_uppercase();
        if !letter && !c.is_ascii_digit() {
            return None;
        }
        if i >= 4 && letter {
            letters |= 1 << (i - 4);
        }
    }
    Some((u16::from_be_bytes([b[0], b[1]]), b.len() as u8, letters))
}

thread_local! {
    /// Layouts of IBANs the registry accepted on this thread. A payroll's IBANs share a few
    /// layouts (one per country and bank style), so after the first of each the registry's
    /// pattern need not be matched again: only the mod-97 check digits, in one pass. This keeps
    /// a million rows of IBANs well under a second (the crate's parse costs several hundred
    /// cycles per value, most of a row's checking).
    static LAYOUTS: std::cell::RefCell<std::collections::HashSet<(u16, u8, u32), foldhash::fast::FixedState>> =
        std::cell::RefCell::new(std::collections::HashSet::with_hasher(foldhash::fast::FixedState::default()));
}

/// Whether `b` is an IBAN of a layout the registry accepted before, with good check digits.
fn known_good(b: &[u8]) -> bool {
    let Some(l) = layout(b) else {
        return false;
    };
    // Check digits run from 02 to 98 (ISO 13616): 00, 01 and 99 never come out of mod 97.
    // Anything else goes the slow way, through the crate.
    b[2].is_ascii_digit()
        && b[3].is_ascii_digit()
        && (2..=98).contains(&((b[2] - b'0') * 10 + (b[3] - b'0')))
        && mod97(b) == 1
        && LAYOUTS.with(|k| k.borrow().contains(&l))
}

fn remember_layout(b: &[u8]) {
    if let Some(l) = layout(b) {
        LAYOUTS.with(|k| {
            let mut k = k.borrow_mut();
            // Bounded: a file of random layouts is checked by the crate every time.
            if k.len() < 4096 {
                k.insert(l);
            }
        });
    }
}

/// ISO 13616's remainder of capitals-and-digits `b` with its first four characters moved to
/// the end, letters counting as 10-35 (1 for good check digits).
fn mod97(b: &[u8]) -> u32 {
    // Reduced only when another two digits could overflow: a few divisions per IBAN, not one
    // per character.
    let rem = b[4..].iter().chain(&b[..4]).fold(0u64, |acc, &c| {
        let acc = if acc >= 1 << 56 { acc % 97 } else { acc };
        if c.is_ascii_digit() {
            acc * 10 + u64::from(c - b'0')
        } else {
            acc * 100 + u64::from(c - b'A') + 10
        }
    });
    (rem % 97) as u32
}

/// A card number (PAN): 12-19 digits (ISO/IEC 7812) and the Luhn check digit.
pub fn check_card(v: &str) -> Result<(), Violation> {
    let b = v.as_bytes();
    if !(12..=19).contains(&b.len()) || !b.iter().all(u8::is_ascii_digit) {
        return Err(violation(
            "card.format",
            "is not a card number of 12 to 19 digits",
            "write the card number as digits only, without spaces or dashes",
        ));
    }
    let sum: u32 = b
        .iter()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = u32::from(c - b'0');
            match (i % 2, d * 2) {
                (0, _) => d,
                (_, dd) if dd > 9 => dd - 9,
                (_, dd) => dd,
            }
        })
        .sum();
    if !sum.is_multiple_of(10) {
        return Err(violation(
            "card.checksum",
            "fails the card number's check digit (Luhn)",
            "a digit is wrong or two are swapped: copy the number again from the card or the recipient's details",
        ));
    }
    Ok(())
}

/// A US ABA routing number: 9 digits whose weighted sum (3, 7, 1, repeated) is a multiple of 10.
pub fn check_aba(v: &str) -> Result<(), Violation> {
    let b = v.as_bytes();
    if b.len() != 9 || !b.iter().all(u8::is_ascii_digit) {
        return Err(violation(
            "aba.format",
            "is not a routing number of 9 digits",
            "write the ABA routing number as its 9 digits, e.g. 026009593",
        ));
    }
    let sum: u32 = b
        .iter()
        .zip([3, 7, 1].iter().cycle())
        .map(|(c, w)| u32::from(c - b'0') * w)
        .sum();
    if !sum.is_multiple_of(10) {
        return Err(violation(
            "aba.checksum",
            "fails the ABA routing number's checksum",
            "a digit is wrong or two are swapped: copy the routing number again from the recipient's bank details",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(r: Result<(), Violation>) -> Option<&'static str> {
        r.err().map(|v| v.rule)
    }

    #[test]
    fn an_iban_with_a_wrong_check_digit_is_refused() {
        assert_eq!(rule(check_iban("DE89370400440532013000")), None);
        assert_eq!(rule(check_iban("GB82WEST12345698765432")), None);
        assert_eq!(
            rule(check_iban("DE88370400440532013000")),
            Some("iban.checksum")
        );
        // Two digits swapped.
        assert_eq!(
            rule(check_iban("DE89370400440532031000")),
            Some("iban.checksum")
        );
    }

    #[test]
    fn once_a_layout_is_known_the_fast_check_agrees_with_the_registry() {
        // The first of a layout goes through the crate; the next ones through the memo.
        for _ in 0..2 {
            assert_eq!(rule(check_iban("DE89370400440532013000")), None);
            assert_eq!(rule(check_iban("GB82WEST12345698765432")), None);
        }
        assert!(known_good(b"DE89370400440532013000"));
        assert_eq!(
            rule(check_iban("DE88370400440532013000")),
            Some("iban.checksum")
        );
        // Same length, a letter where Germany has digits: a layout never accepted.
        assert!(rule(check_iban("DE89370400440532A13000")).is_some());
        // Letters and digits of Britain's layout elsewhere: a layout of its own.
        assert!(!known_good(b"GB82123412345698765432"));
        assert!(check_iban("GB82123412345698765432").is_err());
        assert_eq!(mod97(b"DE89370400440532013000"), 1);
        assert_eq!(mod97(b"GB82WEST12345698765432"), 1);
    }

    #[test]
    fn the_fast_check_digits_agree_with_the_registry_crate_on_thousands_of_values() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        for n in 0..5000 {
            let len = 15 + n % 20;
            let mut v = Vec::with_capacity(len);
            for i in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 33) as usize;
                v.push(match i {
                    0 | 1 => b'A' + (r % 26) as u8,
                    2 | 3 => b'0' + (r % 10) as u8,
                    // Mostly digits, some letters.
                    _ if r.is_multiple_of(7) => alphabet[10 + r % 26],
                    _ => b'0' + (r % 10) as u8,
                });
            }
            let text = std::str::from_utf8(&v).unwrap();
            let crate_says = !matches!(
                text.parse::<BaseIban>(),
                Err(ParseBaseIbanError::InvalidChecksum)
            );
            // What the fast path takes, the crate takes (the rest goes through the crate).
            let fast = mod97(&v) == 1 && ("02"..="98").contains(&&text[2..4]);
            assert!(!fast || crate_says, "{text}");
            if ("02"..="98").contains(&&text[2..4]) {
                assert_eq!(mod97(&v) == 1, crate_says, "{text}");
            }
        }
    }

    #[test]
    fn an_iban_of_the_wrong_length_for_its_country_is_refused_as_such() {
        assert_eq!(
            rule(check_iban("DE8937040044053201300")),
            Some("iban.length")
        );
        assert_eq!(
            rule(check_iban("GB82WEST123456987654321")),
            Some("iban.length")
        );
    }

    #[test]
    fn ibans_are_written_in_capitals_without_spaces_from_a_country_that_has_them() {
        assert_eq!(
            rule(check_iban("DE89 3704 0044 0532 0130 00")),
            Some("iban.format")
        );
        assert_eq!(
            rule(check_iban("de89370400440532013000")),
            Some("iban.format")
        );
        assert_eq!(rule(check_iban("5.43232E+19")), Some("iban.format"));
        assert_eq!(
            rule(check_iban("US12345678901234567")),
            Some("iban.country")
        );
    }

    #[test]
    fn an_account_number_is_checked_as_an_iban_only_when_it_looks_like_one() {
        assert!(looks_like_iban("DE89370400440532013000"));
        assert!(looks_like_iban("de89 3704 0044 0532 0130 00"));
        assert!(looks_like_iban("NO9386011117947"));
        assert!(!looks_like_iban("1234567890"));
        assert!(!looks_like_iban("user@example.com"));
        assert!(!looks_like_iban("US12345678901234567"));
        assert!(!looks_like_iban("DE89"));
    }

    #[test]
    fn card_numbers_need_12_to_19_digits_and_a_good_luhn_digit() {
        assert_eq!(rule(check_card("4539025531693033")), None);
        assert_eq!(rule(check_card("4716949985538078")), None);
        assert_eq!(rule(check_card("4539025531693034")), Some("card.checksum"));
        assert_eq!(rule(check_card("4539000000003033")), Some("card.checksum"));
        assert_eq!(rule(check_card("45390255316")), Some("card.format"));
        assert_eq!(rule(check_card("4539 0255 3169 3033")), Some("card.format"));
        assert_eq!(rule(check_card(&"4".repeat(20))), Some("card.format"));
    }

    #[test]
    fn routing_numbers_need_9_digits_and_the_aba_checksum() {
        assert_eq!(rule(check_aba("026009593")), None);
        assert_eq!(rule(check_aba("021000021")), None);
        assert_eq!(rule(check_aba("026009594")), Some("aba.checksum"));
        assert_eq!(rule(check_aba("02600959")), Some("aba.format"));
        assert_eq!(rule(check_aba("02600959A")), Some("aba.format"));
    }
}

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
    static TABLE: std::sync::OnceLock<Vec<bool>> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        (0..26 * 26)
            .map(|i| {
                let code = [b'A' + (i / 26) as u8, b'A' + (i % 26) as u8];
                let code = std::str::from_utf8(&code).expect("ascii");
                // A country's pattern is looked up before its BBAN is matched: any BBAN tells
                // an unknown country from a known one.
                !matches!(
                    with_correct_check_digits(code, "0000000000000"),
                    Err(ParseIbanError::UnknownCountry(_))
                )
            })
            .collect()
    });
    code.len() == 2
        && code.iter().all(u8::is_ascii_uppercase)
        && t[usize::from(code[0] - b'A') * 26 + usize::from(code[1] - b'A')]
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
    // The common case, a good IBAN, without allocating; the rest says what is wrong.
    if v.parse::<Iban>().is_ok() {
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
    if sum % 10 != 0 {
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
    if sum % 10 != 0 {
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

//! Money: ISO 4217 currencies with their minor-unit exponents, and a strict decimal amount
//! parser that turns payroll text into integer minor units.
//!
//! The parser is hand-written rather than `rust_decimal::Decimal::from_str` because payroll
//! files must be rejected for things a general decimal parser accepts (`1e3`, `1_000`, `+5`,
//! `.5`) and each rejection needs its own hint; the result is exact integer minor units, so
//! no floating point is ever involved. `rust_decimal` is used for display and for the schema's
//! min/max bounds.

use rust_decimal::Decimal;

/// An ISO 4217 currency that can carry money (it has a minor unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// Looks up an alphabetic (`USD`) code.
    pub fn from_alpha(code: &str) -> Option<Currency> {
        let b = code.as_bytes();
        if b.len() != 3 || !b.iter().all(u8::is_ascii_uppercase) {
            return None;
        }
        let t = tables();
        let i = (usize::from(b[0] - b'A') * 26 + usize::from(b[1] - b'A')) * 26
            + usize::from(b[2] - b'A');
        t.known
            .get(usize::from(t.alpha[i]).checked_sub(1)?)
            .copied()
            .map(Currency)
    }

    /// Looks up a numeric (`840`) code, as Paysend's pay.toCard sends it.
    pub fn from_numeric(code: &str) -> Option<Currency> {
        let b = code.as_bytes();
        if b.len() != 3 || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = usize::from(b[0] - b'0') * 100
            + usize::from(b[1] - b'0') * 10
            + usize::from(b[2] - b'0');
        let t = tables();
        t.known
            .get(usize::from(t.numeric[n]).checked_sub(1)?)
            .copied()
            .map(Currency)
    }

    /// Either form.
    pub fn from_any(code: &str) -> Option<Currency> {
        Currency::from_alpha(code).or_else(|| Currency::from_numeric(code))
    }

    pub fn code(&self) -> String {
        self.0.code().to_string()
    }

    /// Minor-unit exponent (USD 2, JPY 0, KWD 3); `None` for codes such as XAU that are not money
    /// one can pay out.
    pub fn exponent(&self) -> Option<u32> {
        self.0.exponent().map(u32::from)
    }
}

/// Lookup tables over every possible 3-letter and 3-digit code, built once from `iso_currency`:
/// validating a million rows looks a currency up millions of times.
struct Tables {
    known: Vec<iso_currency::Currency>,
    /// Index into `known` plus one, 0 for "no such currency"; indexed by the code in base 26.
    alpha: Vec<u8>,
    numeric: Vec<u8>,
}

fn tables() -> &'static Tables {
    static TABLES: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = Tables {
            known: Vec::new(),
            alpha: vec![0; 26 * 26 * 26],
            numeric: vec![0; 1000],
        };
        let mut code = [b'A'; 3];
        for i in 0..26 * 26 * 26 {
            code[0] = b'A' + (i / 676) as u8;
            code[1] = b'A' + (i / 26 % 26) as u8;
            code[2] = b'A' + (i % 26) as u8;
            if let Some(c) =
                iso_currency::Currency::from_code(std::str::from_utf8(&code).expect("ascii"))
            {
                t.known.push(c);
                t.alpha[i] = u8::try_from(t.known.len()).expect("fewer than 255 currencies");
                t.numeric[usize::from(c.numeric())] = t.alpha[i];
            }
        }
        t
    })
}

/// An exact amount in minor units of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    pub minor: i128,
    pub exponent: u32,
}

impl Amount {
    pub fn to_decimal(self) -> Decimal {
        // parse_amount bounds amounts to 18 integer digits, far inside Decimal's range.
        Decimal::try_from_i128_with_scale(self.minor, self.exponent).unwrap_or(Decimal::MAX)
    }
}

/// Why a piece of text is not an amount. Each variant maps to a validation rule and a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountError {
    Empty,
    Negative,
    PlusSign,
    ThousandsSeparator,
    DecimalComma,
    Exponent,
    TrailingText,
    LeadingDot,
    TooManyDecimals { allowed: u32 },
    TooLarge,
    NotANumber,
}

impl AmountError {
    pub fn rule(self) -> &'static str {
        match self {
            AmountError::Empty => "amount.empty",
            AmountError::Negative => "amount.negative",
            AmountError::PlusSign => "amount.sign",
            AmountError::ThousandsSeparator => "amount.thousands-separator",
            AmountError::DecimalComma => "amount.decimal-comma",
            AmountError::Exponent => "amount.exponent",
            AmountError::TrailingText => "amount.trailing-text",
            AmountError::LeadingDot => "amount.format",
            AmountError::TooManyDecimals { .. } => "amount.decimals",
            AmountError::TooLarge => "amount.too-large",
            AmountError::NotANumber => "amount.format",
        }
    }

    pub fn message(self) -> String {
        match self {
            AmountError::Empty => "is empty".into(),
            AmountError::Negative => "is negative".into(),
            AmountError::PlusSign => "has a sign".into(),
            AmountError::ThousandsSeparator => "has a thousands separator".into(),
            AmountError::DecimalComma => "uses a decimal comma".into(),
            AmountError::Exponent => "is in scientific notation".into(),
            AmountError::TrailingText => "has text after the number".into(),
            AmountError::LeadingDot => "starts with a decimal point".into(),
            AmountError::TooManyDecimals { allowed: 0 } => {
                "has decimals but the currency has no minor unit".into()
            }
            AmountError::TooManyDecimals { allowed } => {
                format!("has more than {allowed} decimal places")
            }
            AmountError::TooLarge => "is too large".into(),
            AmountError::NotANumber => "is not a number".into(),
        }
    }

    pub fn hint(self) -> &'static str {
        match self {
            AmountError::Empty => "every payout needs an amount",
            AmountError::Negative => "payouts are positive; leave reversals out of the batch",
            AmountError::PlusSign => "write the bare number, e.g. 1000.50",
            AmountError::ThousandsSeparator | AmountError::DecimalComma => {
                "write plain digits with a dot for decimals, e.g. 1000.50 (format the column as text or number without separators)"
            }
            AmountError::Exponent => {
                "write the full number, e.g. 1000 instead of 1e3 (the spreadsheet formatted it as scientific)"
            }
            AmountError::TrailingText => {
                "put only the number in this column; the currency goes in its own field"
            }
            AmountError::LeadingDot => "write a leading zero, e.g. 0.50",
            AmountError::TooManyDecimals { .. } => {
                "round to the currency's minor unit (ISO 4217: USD 2 decimals, JPY 0, KWD 3)"
            }
            AmountError::TooLarge => "check the column: the value has too many digits",
            AmountError::NotANumber => "write digits with an optional dot, e.g. 1000.50",
        }
    }
}

/// Parses `123`, `123.4`, `123.45` into minor units with `exponent` decimals.
/// Accepts fewer decimals than the exponent allows; never more (no rounding of money).
pub fn parse_amount(text: &str, exponent: u32) -> Result<Amount, AmountError> {
    let b = text.as_bytes();
    if b.is_empty() || b.iter().all(|c| c.is_ascii_whitespace()) {
        return Err(AmountError::Empty);
    }
    let mut int: i128 = 0;
    let mut i = 0;
    let mut digits = 0usize;
    while i < b.len() && b[i].is_ascii_digit() {
        // More than 18 integer digits is beyond any payout; the bound keeps every amount, in
        // minor units, well inside rust_decimal's 96-bit range.
        if digits == 18 {
            return Err(AmountError::TooLarge);
        }
        int = int * 10 + i128::from(b[i] - b'0');
        digits += 1;
        i += 1;
    }
    let mut frac: i128 = 0;
    let mut frac_digits = 0u32;
    if i < b.len() && b[i] == b'.' && digits > 0 {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if frac_digits < 30 {
                frac = frac * 10 + i128::from(b[i] - b'0');
            }
            frac_digits += 1;
            i += 1;
        }
        if i == start {
            return Err(AmountError::NotANumber);
        }
    }
    if i != b.len() || digits == 0 {
        return Err(classify_bad_amount(b, digits));
    }
    if frac_digits > exponent {
        // Trailing zeros beyond the minor unit ("10.500" for USD) still carry no extra value,
        // but a payroll export that writes them is one rounding step from writing "10.505":
        // refuse both so the clerk fixes the export once.
        return Err(AmountError::TooManyDecimals { allowed: exponent });
    }
    let scale = 10i128.pow(exponent - frac_digits);
    let minor = int
        .checked_mul(10i128.pow(exponent))
        .and_then(|v| v.checked_add(frac * scale))
        .ok_or(AmountError::TooLarge)?;
    Ok(Amount { minor, exponent })
}

fn classify_bad_amount(b: &[u8], leading_digits: usize) -> AmountError {
    let first = b[0];
    if first == b'-' || first == b'(' {
        return AmountError::Negative;
    }
    if first == b'+' {
        return AmountError::PlusSign;
    }
    if first == b'.' {
        return AmountError::LeadingDot;
    }
    if leading_digits == 0 {
        return AmountError::NotANumber;
    }
    let rest = &b[leading_digits..];
    if rest.iter().any(|&c| c == b'e' || c == b'E')
        && rest
            .iter()
            .all(|&c| c.is_ascii_digit() || b"eE.+-".contains(&c))
    {
        return AmountError::Exponent;
    }
    if rest[0] == b',' {
        // "1,000.50" or "1,000" (thousands) versus "10,5" (decimal comma).
        let after: Vec<&[u8]> = rest[1..].split(|&c| c == b',' || c == b'.').collect();
        if after
            .first()
            .is_some_and(|g| g.len() == 3 && g.iter().all(u8::is_ascii_digit))
        {
            return AmountError::ThousandsSeparator;
        }
        return AmountError::DecimalComma;
    }
    if rest[0] == b' ' || rest[0] == b'\'' || rest[0] == b'_' {
        if rest[1..].first().is_some_and(u8::is_ascii_digit) {
            return AmountError::ThousandsSeparator;
        }
        return AmountError::TrailingText;
    }
    if rest[0] == b'.' {
        // digits '.' digits then garbage ("0.001 USD", "12.5x").
        let tail = &rest[1..];
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        let tail = &tail[n..];
        if tail.first() == Some(&b',') || tail.first() == Some(&b'.') {
            return AmountError::ThousandsSeparator;
        }
        if tail.first().is_some_and(|&c| c == b'e' || c == b'E') {
            return AmountError::Exponent;
        }
        return AmountError::TrailingText;
    }
    AmountError::TrailingText
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(text: &str) -> Result<i128, AmountError> {
        parse_amount(text, 2).map(|a| a.minor)
    }

    #[test]
    fn plain_amounts_become_minor_units() {
        assert_eq!(usd("1000.50"), Ok(100050));
        assert_eq!(usd("7"), Ok(700));
        assert_eq!(usd("0.5"), Ok(50));
        assert_eq!(usd("0"), Ok(0));
        assert_eq!(parse_amount("1500", 0).map(|a| a.minor), Ok(1500));
        assert_eq!(parse_amount("1.234", 3).map(|a| a.minor), Ok(1234));
    }

    #[test]
    fn spreadsheet_artefacts_are_refused_with_their_own_rule() {
        let cases = [
            ("1,000.50", AmountError::ThousandsSeparator),
            ("1,000", AmountError::ThousandsSeparator),
            ("1 000", AmountError::ThousandsSeparator),
            ("10,5", AmountError::DecimalComma),
            ("1e3", AmountError::Exponent),
            ("1.5E+3", AmountError::Exponent),
            ("-5", AmountError::Negative),
            ("+5", AmountError::PlusSign),
            ("0.001 USD", AmountError::TrailingText),
            ("12 USD", AmountError::TrailingText),
            (".5", AmountError::LeadingDot),
            ("", AmountError::Empty),
            ("  ", AmountError::Empty),
            ("abc", AmountError::NotANumber),
            ("=SUM(A1:A3)", AmountError::NotANumber),
            ("5.", AmountError::NotANumber),
        ];
        for (text, want) in cases {
            assert_eq!(usd(text), Err(want), "{text:?}");
        }
    }

    #[test]
    fn decimals_beyond_the_currency_minor_unit_are_refused() {
        assert_eq!(
            usd("0.001"),
            Err(AmountError::TooManyDecimals { allowed: 2 })
        );
        assert_eq!(
            parse_amount("100.5", 0),
            Err(AmountError::TooManyDecimals { allowed: 0 })
        );
        assert_eq!(
            parse_amount("1.2345", 3),
            Err(AmountError::TooManyDecimals { allowed: 3 })
        );
    }

    #[test]
    fn absurdly_long_numbers_do_not_overflow() {
        assert_eq!(usd(&"9".repeat(40)), Err(AmountError::TooLarge));
        assert_eq!(usd(&"9".repeat(19)), Err(AmountError::TooLarge));
        assert_eq!(usd(&"9".repeat(18)).map(|m| m > 0), Ok(true));
        let big = parse_amount(&"9".repeat(18), 3).unwrap();
        assert!(big.to_decimal() > Decimal::ZERO);
        assert_eq!(
            usd(&format!("1.{}", "0".repeat(5000))),
            Err(AmountError::TooManyDecimals { allowed: 2 })
        );
    }

    #[test]
    fn currencies_have_their_iso_4217_exponents() {
        let exp = |c: &str| Currency::from_any(c).and_then(|c| c.exponent());
        assert_eq!(exp("USD"), Some(2));
        assert_eq!(exp("JPY"), Some(0));
        assert_eq!(exp("KWD"), Some(3));
        assert_eq!(exp("840"), Some(2));
        assert_eq!(
            Currency::from_numeric("840").map(|c| c.code()),
            Some("USD".into())
        );
        assert!(Currency::from_any("usd").is_none());
        assert!(Currency::from_any("XYZ").is_none());
        assert_eq!(exp("999"), None, "XXX has no minor unit");
    }
}

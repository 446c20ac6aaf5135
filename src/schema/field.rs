//! `Field`: one payload field of a provider operation with its compiled rule, and the checks
//! that every value bound for that field must pass. Checks work on text — a CSV cell, a YAML
//! scalar, or a JSON scalar rendered as text — so one rule serves every input. What a field
//! holds (`Holds`: an IBAN, a card number, an identifier, a name, ...) adds the account-number
//! checks of `account.rs`, refuses a spreadsheet's scientific notation in identifiers and says
//! how outputs mask its values (`Field::privacy`).

use crate::mask::Privacy;
use crate::money::{self, Amount, Currency};
use regex::Regex;
use rust_decimal::Decimal;

/// How a value is written into the request JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    String,
    Number,
    Boolean,
    /// An amount sent as an integer number of minor units (Payonic: DKK 10.95 → 1095).
    #[serde(rename = "minor_units")]
    MinorUnits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CurrencyFormat {
    /// ISO 4217 alphabetic, `USD`.
    Alpha,
    /// ISO 4217 numeric, `840`.
    Numeric,
    /// Either.
    Any,
}

/// Where an amount field finds the currency that fixes its decimals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CurrencyRef {
    Path(String),
    Fixed(Currency),
}

#[derive(Debug, Clone)]
pub enum FieldKind {
    String {
        pattern: Option<Regex>,
        min_length: Option<usize>,
        max_length: Option<usize>,
    },
    Integer {
        min: Option<i64>,
        max: Option<i64>,
    },
    Amount {
        currency: CurrencyRef,
        min: Option<Decimal>,
        max: Option<Decimal>,
        /// The most digits the amount may have in minor units (DKK 10.95 is 1095: 4 digits).
        max_digits: Option<u32>,
    },
    Currency {
        format: CurrencyFormat,
    },
    Country,
    Date,
    DateTime,
    Email {
        max_length: Option<usize>,
    },
    Enum {
        values: Vec<String>,
        case_insensitive: bool,
    },
    Uuid,
    Boolean,
}

/// What a field holds, beyond its type (schema key `holds`): account numbers are checked as
/// such (IBAN, card, ABA routing number), identifiers refuse a spreadsheet's scientific
/// notation, and accounts and personal data are masked by what they are (`Field::privacy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Holds {
    /// An IBAN: structure, the country's length and layout, mod-97 check digits.
    Iban,
    /// An account number that may be an IBAN: checked as one when it looks like one (two
    /// capital letters naming an IBAN country, two digits, at least 11 more characters).
    Account,
    /// A card number: 12-19 digits and the Luhn check digit.
    Card,
    /// A US ABA routing number: 9 digits and the ABA checksum.
    Aba,
    /// Another identifier or reference (ids, document numbers, tokens).
    Id,
    /// A phone number.
    Phone,
    /// A person's name.
    Name,
    /// An e-mail address.
    Email,
}

impl Holds {
    /// Whether a spreadsheet may have turned the value into scientific notation: every
    /// identifier column (a name or an e-mail is never one).
    pub fn is_identifier(self) -> bool {
        !matches!(self, Holds::Name | Holds::Email)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Holds::Iban => "iban",
            Holds::Account => "account",
            Holds::Card => "card",
            Holds::Aba => "aba",
            Holds::Id => "id",
            Holds::Phone => "phone",
            Holds::Name => "name",
            Holds::Email => "email",
        }
    }
}

/// `holds_if`: the field holds `holds` when the sibling field `field` of the same request is
/// `equals` (ASCII case-insensitive), e.g. Paysend's accountIdentifier is an IBAN when its
/// identifierType is IBAN. Applied where the sibling is a constant of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldsIf {
    pub field: String,
    pub equals: String,
    pub holds: Holds,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub path: String,
    pub kind: FieldKind,
    pub required: bool,
    pub sensitive: bool,
    /// What the field holds (`holds`), when it is an account, an identifier or personal data.
    pub holds: Option<Holds>,
    /// What it holds depending on a sibling's value (`holds_if`).
    pub holds_if: Vec<HoldsIf>,
    pub wire: Wire,
    pub description: String,
    pub example: Option<String>,
    /// A URL path variable of the operation's request, not a body field.
    pub in_path: bool,
    /// Used by payrun only (e.g. to convert an amount to minor units), never sent.
    pub local: bool,
    /// Identifies who receives the money (an account, card or payment id): two items with
    /// the same recipient, amount and currency are a repeated payment (see schemas/README.md).
    pub recipient: bool,
}

/// A broken rule: the rule id, a message that reads after "value …", and a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub message: String,
    pub hint: String,
}

fn violation(rule: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Violation {
    Violation {
        rule,
        message: message.into(),
        hint: hint.into(),
    }
}

impl FieldKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldKind::String { .. } => "string",
            FieldKind::Integer { .. } => "integer",
            FieldKind::Amount { .. } => "amount",
            FieldKind::Currency { .. } => "currency",
            FieldKind::Country => "country",
            FieldKind::Date => "date",
            FieldKind::DateTime => "datetime",
            FieldKind::Email { .. } => "email",
            FieldKind::Enum { .. } => "enum",
            FieldKind::Uuid => "uuid",
            FieldKind::Boolean => "boolean",
        }
    }
}

impl Field {
    /// A short description of the accepted format, for templates and hints.
    pub fn format(&self) -> String {
        let base = self.kind_format();
        match self.holds {
            Some(Holds::Iban) => {
                format!("{base}, an IBAN (country length and check digits checked)")
            }
            Some(Holds::Account) => {
                format!("{base}, an account number (checked as an IBAN when it looks like one)")
            }
            Some(Holds::Card) => format!("{base}, a card number (Luhn check digit checked)"),
            Some(Holds::Aba) => format!("{base}, a US ABA routing number (checksum checked)"),
            Some(Holds::Id | Holds::Phone) => format!("{base}, no scientific notation"),
            Some(Holds::Name | Holds::Email) | None => base,
        }
    }

    /// What an output may show of this field's values: accounts their last four characters,
    /// phone numbers their last digits, other secrets nothing; names and e-mails are shown in
    /// errors and masked in previews (`mask::for_preview`).
    pub fn privacy(&self) -> Privacy {
        match (self.holds, self.sensitive) {
            (Some(Holds::Phone), _) => Privacy::Phone,
            (Some(Holds::Iban | Holds::Account | Holds::Card), _) => Privacy::Account,
            (_, true) => Privacy::Secret,
            (Some(Holds::Name), false) => Privacy::Name,
            (Some(Holds::Email), false) => Privacy::Email,
            _ => Privacy::Plain,
        }
    }

    /// What the field holds when the request's other fields hold `sibling` (`holds_if`):
    /// Paysend's accountIdentifier is an IBAN when identifierType is `IBAN`.
    pub fn holds_given(&self, sibling: impl Fn(&str) -> Option<String>) -> Option<Holds> {
        self.holds_if
            .iter()
            .find(|c| sibling(&c.field).is_some_and(|v| v.trim().eq_ignore_ascii_case(&c.equals)))
            .map(|c| c.holds)
            .or(self.holds)
    }

    /// The field as it is when the request's other fields hold `sibling` (`holds_if`), for
    /// values checked once (a manifest's constants); rows use `check_holding`, which does not
    /// copy the field.
    pub fn given(&self, sibling: impl Fn(&str) -> Option<String>) -> std::borrow::Cow<'_, Field> {
        match self.holds_given(sibling) {
            h if h != self.holds => {
                let mut f = self.clone();
                f.holds = h;
                std::borrow::Cow::Owned(f)
            }
            _ => std::borrow::Cow::Borrowed(self),
        }
    }

    fn kind_format(&self) -> String {
        match &self.kind {
            FieldKind::String {
                pattern,
                min_length,
                max_length,
            } => {
                let mut parts = vec!["text".to_string()];
                match (min_length, max_length) {
                    (Some(a), Some(b)) if a == b => parts.push(format!("exactly {a} characters")),
                    (Some(a), Some(b)) => parts.push(format!("{a}-{b} characters")),
                    (None, Some(b)) => parts.push(format!("at most {b} characters")),
                    (Some(a), None) => parts.push(format!("at least {a} characters")),
                    (None, None) => {}
                }
                if let Some(p) = pattern {
                    parts.push(format!("matching {}", pattern_src(p)));
                }
                parts.join(", ")
            }
            FieldKind::Integer { min, max } => match (min, max) {
                (Some(a), Some(b)) => format!("whole number {a}-{b}"),
                (Some(a), None) => format!("whole number >= {a}"),
                (None, Some(b)) => format!("whole number <= {b}"),
                (None, None) => "whole number".into(),
            },
            FieldKind::Amount {
                currency,
                min,
                max,
                max_digits,
            } => {
                let cur = match currency {
                    CurrencyRef::Path(p) => format!("decimals per the currency in `{p}`"),
                    CurrencyRef::Fixed(c) => format!(
                        "up to {} decimals ({})",
                        c.exponent().unwrap_or(0),
                        c.code()
                    ),
                };
                let mut s = format!("amount like 1250.00, no separators, {cur}");
                if let Some(m) = min {
                    s.push_str(&format!(", min {m}"));
                }
                if let Some(m) = max {
                    s.push_str(&format!(", max {m}"));
                }
                if let Some(d) = max_digits {
                    s.push_str(&format!(", at most {d} digits in minor units"));
                }
                s
            }
            FieldKind::Currency {
                format: CurrencyFormat::Alpha,
            } => "ISO 4217 code like USD".into(),
            FieldKind::Currency {
                format: CurrencyFormat::Numeric,
            } => "ISO 4217 numeric code like 840".into(),
            FieldKind::Currency {
                format: CurrencyFormat::Any,
            } => "ISO 4217 code, USD or 840".into(),
            FieldKind::Country => "ISO 3166-1 alpha-2 country like US".into(),
            FieldKind::Date => "date YYYY-MM-DD".into(),
            FieldKind::DateTime => "RFC 3339 date-time like 2024-10-01T00:00:00+01:00".into(),
            FieldKind::Email { .. } => "email address".into(),
            FieldKind::Enum { values, .. } => format!("one of {}", values.join(", ")),
            FieldKind::Uuid => "UUID like 3fa85f64-5717-4562-b3fc-2c963f66afa6".into(),
            FieldKind::Boolean => "true or false".into(),
        }
    }

    /// Checks a present, non-empty value of any kind but `Amount` (see `check_amount`): first
    /// scientific notation in an identifier, then the type's rules, then what the field holds.
    pub fn check(&self, v: &str) -> Result<(), Violation> {
        self.check_holding(v, self.holds)
    }

    /// `check` as if the field held `holds` (what `holds_given` says for this row).
    pub fn check_holding(&self, v: &str, holds: Option<Holds>) -> Result<(), Violation> {
        if let Some(h) = holds
            && h.is_identifier()
            && is_scientific(v)
        {
            return Err(scientific_notation(h));
        }
        self.check_kind(v)?;
        match holds {
            Some(Holds::Iban) => super::account::check_iban(v),
            Some(Holds::Account) if super::account::looks_like_iban(v) => {
                super::account::check_iban(v)
            }
            Some(Holds::Card) => super::account::check_card(v),
            Some(Holds::Aba) => super::account::check_aba(v),
            _ => Ok(()),
        }
    }

    fn check_kind(&self, v: &str) -> Result<(), Violation> {
        match &self.kind {
            FieldKind::String {
                pattern,
                min_length,
                max_length,
            } => {
                // Characters never outnumber bytes, so most values need no counting.
                let needs_count = max_length.is_some_and(|m| v.len() > m)
                    || min_length.is_some_and(|m| v.len() < m.saturating_mul(4));
                if needs_count {
                    let n = if v.is_ascii() {
                        v.len()
                    } else {
                        v.chars().count()
                    };
                    if let Some(max) = max_length
                        && n > *max
                    {
                        return Err(violation(
                            "string.too-long",
                            format!("is {n} characters long, more than {max}"),
                            format!("shorten it to at most {max} characters"),
                        ));
                    }
                    if let Some(min) = min_length
                        && n < *min
                    {
                        return Err(violation(
                            "string.too-short",
                            format!("is {n} characters long, fewer than {min}"),
                            format!("it needs at least {min} characters"),
                        ));
                    }
                }
                if let Some(p) = pattern
                    && !p.is_match(v)
                {
                    return Err(violation(
                        "string.pattern",
                        format!("does not match the pattern {}", pattern_src(p)),
                        match &self.example {
                            Some(e) if !self.sensitive => format!("expected something like {e:?}"),
                            _ => format!("expected {}", self.format()),
                        },
                    ));
                }
                Ok(())
            }
            FieldKind::Integer { min, max } => {
                let digits = v.strip_prefix('-').unwrap_or(v);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(violation(
                        "integer.format",
                        "is not a whole number",
                        "write digits only, e.g. 1979",
                    ));
                }
                let Ok(n) = v.parse::<i64>() else {
                    return Err(violation(
                        "integer.range",
                        "is too large",
                        "check the column",
                    ));
                };
                if let Some(m) = min
                    && n < *m
                {
                    return Err(violation(
                        "integer.range",
                        format!("is below the minimum {m}"),
                        self.format(),
                    ));
                }
                if let Some(m) = max
                    && n > *m
                {
                    return Err(violation(
                        "integer.range",
                        format!("is above the maximum {m}"),
                        self.format(),
                    ));
                }
                Ok(())
            }
            FieldKind::Amount { .. } => Ok(()),
            FieldKind::Currency { format } => check_currency(v, *format).map(|_| ()),
            FieldKind::Country => check_country(v),
            FieldKind::Date => check_date(v),
            FieldKind::DateTime => {
                if chrono::DateTime::parse_from_rfc3339(v).is_ok() {
                    Ok(())
                } else {
                    Err(violation(
                        "datetime.format",
                        "is not an RFC 3339 date-time",
                        "write e.g. 2024-10-01T00:00:00+01:00 (date, T, time, offset)",
                    ))
                }
            }
            FieldKind::Email { max_length } => {
                if let Some(max) = max_length
                    && v.chars().count() > *max
                {
                    return Err(violation(
                        "email.too-long",
                        format!("is longer than {max} characters"),
                        "shorten it",
                    ));
                }
                check_email(v)
            }
            FieldKind::Enum {
                values,
                case_insensitive,
            } => {
                let ok = if *case_insensitive {
                    values.iter().any(|x| x.eq_ignore_ascii_case(v))
                } else {
                    values.iter().any(|x| x == v)
                };
                if ok {
                    return Ok(());
                }
                let near = values.iter().find(|x| x.eq_ignore_ascii_case(v));
                let hint = match near {
                    Some(n) => format!("did you mean {n:?}? values are case-sensitive"),
                    None => format!("use one of: {}", values.join(", ")),
                };
                Err(violation(
                    "enum.value",
                    "is not one of the allowed values",
                    hint,
                ))
            }
            FieldKind::Uuid => {
                if is_uuid(v) {
                    Ok(())
                } else {
                    Err(violation(
                        "uuid.format",
                        "is not a UUID",
                        "write 8-4-4-4-12 hex digits, e.g. 3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    ))
                }
            }
            FieldKind::Boolean => {
                if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
                    Ok(())
                } else {
                    Err(violation(
                        "boolean.format",
                        "is not true or false",
                        "write true or false",
                    ))
                }
            }
        }
    }

    /// Checks an amount given its currency (already resolved by the caller; `None` when the
    /// currency is itself invalid, in which case only the shape of the number is checked).
    pub fn check_amount(&self, v: &str, currency: Option<Currency>) -> Result<Amount, Violation> {
        let FieldKind::Amount {
            min,
            max,
            max_digits,
            ..
        } = &self.kind
        else {
            unreachable!("check_amount on a non-amount field");
        };
        let exponent = currency.and_then(|c| c.exponent()).unwrap_or(4);
        let amount = money::parse_amount(v, exponent).map_err(|e| Violation {
            rule: e.rule(),
            message: match (e, currency) {
                (money::AmountError::TooManyDecimals { .. }, Some(c)) => {
                    format!("{} for {}", e.message(), c.code())
                }
                _ => e.message(),
            },
            hint: e.hint().to_string(),
        })?;
        // Compared as integers: no allocation per row (a million rows are validated in well
        // under a second). Only with a known currency: an unknown one was reported already.
        if let (Some(digits), Some(c)) = (max_digits, currency)
            && amount.minor >= 10i128.pow(*digits)
        {
            return Err(too_many_digits(amount, *digits, c));
        }
        let d = amount.to_decimal();
        if let Some(m) = min
            && d < *m
        {
            let rule = if d.is_zero() {
                "amount.zero"
            } else {
                "amount.min"
            };
            return Err(violation(
                rule,
                format!("is below the minimum {m}"),
                format!("the provider accepts {}", self.format()),
            ));
        }
        if let Some(m) = max
            && d > *m
        {
            return Err(violation(
                "amount.max",
                format!("is above the maximum {m}"),
                "split the payment or check the limit agreed with the provider",
            ));
        }
        Ok(amount)
    }
}

/// An amount with more minor-unit digits than the provider takes (Payonic: 12, so at most DKK
/// 9999999999.99, JPY 999999999999, KWD 999999999.999).
fn too_many_digits(amount: Amount, digits: u32, currency: Currency) -> Violation {
    let largest = Amount {
        minor: 10i128.pow(digits) - 1,
        exponent: amount.exponent,
    };
    violation(
        "amount.max-digits",
        format!(
            "has {} digits in minor units, more than {digits}",
            amount.minor.to_string().len()
        ),
        format!(
            "the provider takes at most {digits} digits in minor units: at most {} {}; split the payment or check the column",
            largest.to_decimal(),
            currency.code()
        ),
    )
}

/// `5.43232E+19`, `4.53903E+15`, `5,43232E+19`: what a spreadsheet makes of a long number in a
/// General-formatted column, with the digits past the sixth lost. Excel always writes the
/// exponent's sign, so a reference such as `2024E12` is not taken for one.
pub fn is_scientific(v: &str) -> bool {
    let b = v.trim().as_bytes();
    // Most values have no exponent sign at all: one fast scan settles them.
    if memchr::memchr2(b'+', b'-', b).is_none() {
        return false;
    }
    let Some(e) = b.iter().position(|&c| c == b'e' || c == b'E') else {
        return false;
    };
    let (mantissa, exponent) = (&b[..e], &b[e + 1..]);
    let int_len = mantissa
        .iter()
        .position(|&c| c == b'.' || c == b',')
        .unwrap_or(mantissa.len());
    let (int, frac) = mantissa.split_at(int_len);
    let frac = frac.get(1..).unwrap_or(&[]);
    !int.is_empty()
        && int.iter().all(u8::is_ascii_digit)
        && (int_len == mantissa.len() || !frac.is_empty())
        && frac.iter().all(u8::is_ascii_digit)
        && exponent.len() >= 2
        && (exponent[0] == b'+' || exponent[0] == b'-')
        && exponent[1..].iter().all(u8::is_ascii_digit)
}

fn scientific_notation(h: Holds) -> Violation {
    let what = match h {
        Holds::Iban | Holds::Account => "account number",
        Holds::Card => "card number",
        Holds::Aba => "routing number",
        Holds::Phone => "phone number",
        Holds::Id | Holds::Name | Holds::Email => "identifier",
    };
    violation(
        "identifier.scientific-notation",
        format!("is in scientific notation, so the {what}'s digits are lost"),
        "the spreadsheet (e.g. Excel) formatted the column as scientific and kept only the first digits: format the column as text and copy the values again from the source, then export",
    )
}

/// A pattern as the schema wrote it (the compiled regex is anchored around it).
fn pattern_src(p: &Regex) -> &str {
    let s = p.as_str();
    s.strip_prefix("^(?:")
        .and_then(|x| x.strip_suffix(")$"))
        .unwrap_or(s)
}

pub fn check_currency(v: &str, format: CurrencyFormat) -> Result<Currency, Violation> {
    let found = match format {
        CurrencyFormat::Alpha => Currency::from_alpha(v),
        CurrencyFormat::Numeric => Currency::from_numeric(v),
        CurrencyFormat::Any => Currency::from_any(v),
    };
    match found {
        Some(c) if c.exponent().is_some() => Ok(c),
        Some(c) => Err(violation(
            "currency.not-money",
            format!(
                "is {}, which has no minor unit and cannot be paid out",
                c.code()
            ),
            "use the currency the recipient is paid in",
        )),
        None => {
            let upper = v.to_ascii_uppercase();
            let hint = if upper != v && Currency::from_alpha(&upper).is_some() {
                format!("write it in capitals: {upper}")
            } else {
                match format {
                    CurrencyFormat::Numeric => {
                        "use the ISO 4217 numeric code, e.g. 840 for USD".into()
                    }
                    CurrencyFormat::Alpha if Currency::from_numeric(v).is_some() => format!(
                        "this field takes the alphabetic code: {}",
                        Currency::from_numeric(v)
                            .map(|c| c.code())
                            .unwrap_or_default()
                    ),
                    _ => "use an ISO 4217 code such as USD, EUR, GBP".into(),
                }
            };
            Err(violation(
                "currency.unknown",
                "is not an ISO 4217 currency code",
                hint,
            ))
        }
    }
}

/// A set of two-capital-letter codes as a 26×26 table, `keep` asked once per code: a lookup is
/// an index, whatever the source of the codes costs per call.
pub(super) struct LetterPairs(Vec<bool>);

impl LetterPairs {
    pub(super) fn of(keep: impl Fn(&str) -> bool) -> LetterPairs {
        LetterPairs(
            (0..26 * 26)
                .map(|i| {
                    let code = [b'A' + (i / 26) as u8, b'A' + (i % 26) as u8];
                    keep(std::str::from_utf8(&code).expect("ascii"))
                })
                .collect(),
        )
    }

    pub(super) fn contains(&self, code: &[u8]) -> bool {
        code.len() == 2
            && code.iter().all(u8::is_ascii_uppercase)
            && self.0[usize::from(code[0] - b'A') * 26 + usize::from(code[1] - b'A')]
    }
}

/// ISO 3166-1 alpha-2 codes, from `celes` (whose lookup lowercases and hashes its input, too
/// slow for a million rows).
fn is_country(v: &str) -> bool {
    static TABLE: std::sync::OnceLock<LetterPairs> = std::sync::OnceLock::new();
    // "UK" is exceptionally reserved in ISO 3166-1 for the United Kingdom and Paysend's own
    // fx.rateGet.p2a example uses it; accept it rather than reject the provider's example.
    TABLE
        .get_or_init(|| LetterPairs::of(|c| c == "UK" || celes::Country::from_alpha2(c).is_ok()))
        .contains(v.as_bytes())
}

fn check_country(v: &str) -> Result<(), Violation> {
    if is_country(v) {
        return Ok(());
    }
    let upper = v.to_ascii_uppercase();
    let hint = if upper.len() == 2 && celes::Country::from_alpha2(&upper).is_ok() {
        format!("write it in capitals: {upper}")
    } else if let Ok(c) = celes::Country::from_alpha3(&upper) {
        format!("use the two-letter code: {}", c.alpha2)
    } else {
        "use the ISO 3166-1 alpha-2 code, e.g. US, GB, DE".into()
    };
    Err(violation(
        "country.unknown",
        "is not an ISO 3166-1 alpha-2 country code",
        hint,
    ))
}

fn check_date(v: &str) -> Result<(), Violation> {
    let b = v.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if shaped {
        return match chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
            Ok(_) => Ok(()),
            Err(_) => Err(violation(
                "date.invalid",
                "is not a calendar date",
                "check the day and month",
            )),
        };
    }
    Err(violation(
        "date.format",
        "is not a date in YYYY-MM-DD form",
        "write dates as YYYY-MM-DD, e.g. 1980-01-31 (not 31/01/1980 or 01/31/1980)",
    ))
}

fn check_email(v: &str) -> Result<(), Violation> {
    let bad = || {
        violation(
            "email.format",
            "is not an email address",
            "write it as name@example.com, one address, no spaces",
        )
    };
    let (local, domain) = v.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return Err(bad());
    }
    if v.chars().any(|c| {
        c.is_whitespace() || c.is_control() || c == ',' || c == ';' || c == '<' || c == '>'
    }) {
        return Err(bad());
    }
    if !domain.contains('.')
        || domain
            .split('.')
            .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
        || !domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
    {
        return Err(bad());
    }
    Ok(())
}

pub fn is_uuid(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(kind: FieldKind) -> Field {
        Field {
            path: "f".into(),
            kind,
            required: false,
            sensitive: false,
            holds: None,
            holds_if: Vec::new(),
            wire: Wire::String,
            description: String::new(),
            example: None,
            in_path: false,
            local: false,
            recipient: false,
        }
    }

    fn rule(kind: FieldKind, v: &str) -> Option<&'static str> {
        field(kind).check(v).err().map(|e| e.rule)
    }

    fn holding(holds: Holds, sensitive: bool) -> Field {
        let mut f = field(FieldKind::String {
            pattern: None,
            min_length: None,
            max_length: Some(40),
        });
        f.holds = Some(holds);
        f.sensitive = sensitive;
        f
    }

    #[test]
    fn excel_scientific_notation_is_recognised_with_a_signed_exponent_only() {
        for v in [
            "5.43232E+19",
            "4.53903E+15",
            "5,43232E+19",
            "1E+05",
            "1.2e-3",
            " 5.4E+19",
        ] {
            assert!(is_scientific(v), "{v}");
        }
        for v in [
            "2024E12",
            "E+19",
            "5.E+19",
            "5.4E+",
            "DE89370400440532013000",
            "1e3x",
            "12-E+4",
        ] {
            assert!(!is_scientific(v), "{v}");
        }
    }

    #[test]
    fn an_identifier_in_scientific_notation_gets_the_excel_hint_before_any_other_rule() {
        let mut card = holding(Holds::Card, true);
        card.kind = FieldKind::String {
            pattern: Some(Regex::new("^(?:[0-9]{12,19})$").unwrap()),
            min_length: None,
            max_length: None,
        };
        let v = card.check("4.53903E+15").unwrap_err();
        assert_eq!(v.rule, "identifier.scientific-notation");
        assert!(v.hint.contains("Excel"), "{}", v.hint);
        for h in [
            Holds::Iban,
            Holds::Account,
            Holds::Aba,
            Holds::Id,
            Holds::Phone,
        ] {
            assert_eq!(
                holding(h, false).check("5.43232E+19").unwrap_err().rule,
                "identifier.scientific-notation",
                "{h:?}"
            );
        }
        // A name or an e-mail is no identifier, and a field that holds nothing is not judged.
        assert_eq!(holding(Holds::Name, false).check("5.43232E+19"), Ok(()));
        assert_eq!(
            field(FieldKind::String {
                pattern: None,
                min_length: None,
                max_length: None
            })
            .check("5.43232E+19"),
            Ok(())
        );
    }

    #[test]
    fn an_account_field_is_checked_as_an_iban_only_when_its_value_looks_like_one() {
        let f = holding(Holds::Account, true);
        assert_eq!(f.check("1234567890"), Ok(()));
        assert_eq!(f.check("user@example.com"), Ok(()));
        assert_eq!(f.check("DE89370400440532013000"), Ok(()));
        assert_eq!(
            f.check("DE88370400440532013000").unwrap_err().rule,
            "iban.checksum"
        );
        let iban = holding(Holds::Iban, true);
        assert_eq!(iban.check("1234567890").unwrap_err().rule, "iban.format");
    }

    #[test]
    fn a_sibling_set_to_iban_makes_an_account_field_an_iban() {
        let mut f = holding(Holds::Account, true);
        f.holds_if = vec![HoldsIf {
            field: "identifierType".into(),
            equals: "IBAN".into(),
            holds: Holds::Iban,
        }];
        let iban = |v: &'static str| move |p: &str| (p == "identifierType").then(|| v.to_string());
        assert_eq!(f.given(iban("IBAN")).holds, Some(Holds::Iban));
        assert_eq!(f.given(iban("iban")).holds, Some(Holds::Iban));
        assert_eq!(f.given(iban("BAN")).holds, Some(Holds::Account));
        assert_eq!(f.given(|_| None).holds, Some(Holds::Account));
        assert_eq!(
            f.given(iban("IBAN")).check("12345678").unwrap_err().rule,
            "iban.format"
        );
    }

    #[test]
    fn accounts_keep_their_tail_other_secrets_are_masked_whole_and_personal_data_is_marked() {
        assert_eq!(holding(Holds::Iban, false).privacy(), Privacy::Account);
        assert_eq!(holding(Holds::Card, true).privacy(), Privacy::Account);
        assert_eq!(holding(Holds::Account, true).privacy(), Privacy::Account);
        assert_eq!(holding(Holds::Id, true).privacy(), Privacy::Secret);
        assert_eq!(holding(Holds::Id, false).privacy(), Privacy::Plain);
        assert_eq!(holding(Holds::Aba, false).privacy(), Privacy::Plain);
        assert_eq!(holding(Holds::Phone, true).privacy(), Privacy::Phone);
        assert_eq!(holding(Holds::Name, false).privacy(), Privacy::Name);
        assert_eq!(holding(Holds::Email, false).privacy(), Privacy::Email);
        let mut dob = field(FieldKind::Date);
        dob.sensitive = true;
        assert_eq!(dob.privacy(), Privacy::Secret);
    }

    #[test]
    fn the_format_says_what_the_field_holds() {
        assert!(holding(Holds::Iban, true).format().contains("IBAN"));
        assert!(holding(Holds::Card, true).format().contains("Luhn"));
        assert!(holding(Holds::Aba, true).format().contains("ABA"));
    }

    #[test]
    fn strings_are_checked_for_length_and_pattern() {
        let k = || FieldKind::String {
            pattern: Some(Regex::new("^[0-9]{12,19}$").unwrap()),
            min_length: None,
            max_length: Some(19),
        };
        assert_eq!(rule(k(), "4539025531693033"), None);
        assert_eq!(rule(k(), "4539 0255 3169 3033"), Some("string.pattern"));
        assert_eq!(rule(k(), &"1".repeat(20)), Some("string.too-long"));
        let k = FieldKind::String {
            pattern: None,
            min_length: Some(2),
            max_length: None,
        };
        assert_eq!(rule(k, "a"), Some("string.too-short"));
    }

    #[test]
    fn integers_have_no_separators_and_respect_bounds() {
        let k = || FieldKind::Integer {
            min: Some(1900),
            max: Some(2100),
        };
        assert_eq!(rule(k(), "1979"), None);
        assert_eq!(rule(k(), "1,979"), Some("integer.format"));
        assert_eq!(rule(k(), "1800"), Some("integer.range"));
        assert_eq!(rule(k(), "99999999999999999999"), Some("integer.range"));
    }

    #[test]
    fn currencies_are_iso_4217_in_the_declared_form() {
        assert_eq!(
            rule(
                FieldKind::Currency {
                    format: CurrencyFormat::Alpha
                },
                "USD"
            ),
            None
        );
        assert_eq!(
            rule(
                FieldKind::Currency {
                    format: CurrencyFormat::Alpha
                },
                "840"
            ),
            Some("currency.unknown")
        );
        assert_eq!(
            rule(
                FieldKind::Currency {
                    format: CurrencyFormat::Numeric
                },
                "840"
            ),
            None
        );
        assert_eq!(
            rule(
                FieldKind::Currency {
                    format: CurrencyFormat::Any
                },
                "840"
            ),
            None
        );
        assert_eq!(
            rule(
                FieldKind::Currency {
                    format: CurrencyFormat::Any
                },
                "usd"
            ),
            Some("currency.unknown")
        );
        assert_eq!(
            rule(
                FieldKind::Currency {
                    format: CurrencyFormat::Any
                },
                "XAU"
            ),
            Some("currency.not-money")
        );
        assert_eq!(
            rule(
                FieldKind::Currency {
                    format: CurrencyFormat::Any
                },
                "ABC"
            ),
            Some("currency.unknown")
        );
    }

    #[test]
    fn countries_are_alpha_2() {
        assert_eq!(rule(FieldKind::Country, "US"), None);
        assert_eq!(rule(FieldKind::Country, "EC"), None);
        assert_eq!(rule(FieldKind::Country, "UK"), None);
        assert_eq!(rule(FieldKind::Country, "USA"), Some("country.unknown"));
        assert_eq!(rule(FieldKind::Country, "us"), Some("country.unknown"));
        assert_eq!(rule(FieldKind::Country, "ZZ"), Some("country.unknown"));
    }

    #[test]
    fn dates_must_be_iso_and_real() {
        assert_eq!(rule(FieldKind::Date, "1980-01-31"), None);
        assert_eq!(rule(FieldKind::Date, "31/01/1980"), Some("date.format"));
        assert_eq!(rule(FieldKind::Date, "1980-1-31"), Some("date.format"));
        assert_eq!(rule(FieldKind::Date, "1980-02-30"), Some("date.invalid"));
        assert_eq!(rule(FieldKind::DateTime, "2024-10-01T00:00:00+01:00"), None);
        assert_eq!(
            rule(FieldKind::DateTime, "2024-10-01"),
            Some("datetime.format")
        );
    }

    #[test]
    fn emails_enums_uuids_and_booleans() {
        let email = || FieldKind::Email { max_length: None };
        assert_eq!(rule(email(), "john.doe@example.com"), None);
        assert_eq!(rule(email(), "john.doe@example"), Some("email.format"));
        assert_eq!(rule(email(), "a b@example.com"), Some("email.format"));
        assert_eq!(rule(email(), "a@b.com;c@d.com"), Some("email.format"));
        let e = || FieldKind::Enum {
            values: vec!["BAN".into(), "IBAN".into()],
            case_insensitive: false,
        };
        assert_eq!(rule(e(), "IBAN"), None);
        assert_eq!(rule(e(), "iban"), Some("enum.value"));
        assert_eq!(
            field(e()).check("iban").unwrap_err().hint,
            "did you mean \"IBAN\"? values are case-sensitive"
        );
        assert_eq!(
            rule(FieldKind::Uuid, "3fa85f64-5717-4562-b3fc-2c963f66afa6"),
            None
        );
        assert_eq!(rule(FieldKind::Uuid, "3fa85f64"), Some("uuid.format"));
        assert_eq!(rule(FieldKind::Boolean, "true"), None);
        assert_eq!(rule(FieldKind::Boolean, "yes"), Some("boolean.format"));
    }

    #[test]
    fn amounts_follow_the_currency_and_the_bounds() {
        let f = field(FieldKind::Amount {
            currency: CurrencyRef::Path("c".into()),
            min: Some(Decimal::new(1, 2)),
            max: Some(Decimal::new(10000, 0)),
            max_digits: None,
        });
        let usd = Currency::from_alpha("USD");
        let jpy = Currency::from_alpha("JPY");
        assert_eq!(f.check_amount("12.50", usd).map(|a| a.minor), Ok(1250));
        assert_eq!(
            f.check_amount("12.5", jpy).unwrap_err().rule,
            "amount.decimals"
        );
        assert_eq!(f.check_amount("0", usd).unwrap_err().rule, "amount.zero");
        assert_eq!(
            f.check_amount("10000.01", usd).unwrap_err().rule,
            "amount.max"
        );
        assert_eq!(
            f.check_amount("1,000.50", usd).unwrap_err().rule,
            "amount.thousands-separator"
        );
    }

    #[test]
    fn amounts_with_more_minor_unit_digits_than_the_provider_takes_are_refused() {
        let f = field(FieldKind::Amount {
            currency: CurrencyRef::Path("c".into()),
            min: None,
            max: None,
            max_digits: Some(12),
        });
        for (amount, code, ok) in [
            ("9999999999.99", "DKK", true),
            ("10000000000.00", "DKK", false),
            ("10000000000", "DKK", false),
            ("999999999999", "JPY", true),
            ("1000000000000", "JPY", false),
            ("999999999.999", "KWD", true),
            ("1000000000", "KWD", false),
        ] {
            let got = f.check_amount(amount, Currency::from_alpha(code));
            assert_eq!(got.is_ok(), ok, "{amount} {code}: {got:?}");
            if let Err(v) = got {
                assert_eq!(v.rule, "amount.max-digits", "{amount} {code}");
                assert_eq!(v.message, "has 13 digits in minor units, more than 12");
            }
        }
        let hint = |code| {
            f.check_amount("10000000000000", Currency::from_alpha(code))
                .unwrap_err()
                .hint
        };
        assert!(
            hint("DKK").contains("at most 9999999999.99 DKK"),
            "{}",
            hint("DKK")
        );
        assert!(
            hint("JPY").contains("at most 999999999999 JPY"),
            "{}",
            hint("JPY")
        );
        assert!(
            hint("KWD").contains("at most 999999999.999 KWD"),
            "{}",
            hint("KWD")
        );
    }
}

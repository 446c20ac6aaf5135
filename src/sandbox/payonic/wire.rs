//! Payonic requests as received, checked against the document's tables and patterns and turned
//! into typed requests ("low" JSON → "high" values). The first broken rule is answered with
//! HTTP 400 and `{"error": "...", "field": "..."}` — a choice: the document defines no error
//! answers.
//!
//! Choices where the document is silent or wrong:
//! - amount (L62): a JSON integer in minor units, `^[0-9]{1,12}$`. The printed `^[Z0-9]{1,12}$`
//!   and the currency's `^[Z0-9]{3}$` (L63) are typos: a "Z" in an amount makes no sense and
//!   the currency is "ISO 4217 alpha 3". A string, a fraction or a negative number is a 400.
//! - currency: an ISO 4217 alphabetic code of a currency with minor units.
//! - ids (merchantid, paymentid, merchantpaymentid, operationid, processor): `^[a-zA-Z0-9]{1,32}$`
//!   as L98/L371 give for ids. The Payment API's operationid pattern `^(0|1)?$` (L281) is a
//!   copy of gfx's and contradicts its own example (L275): ids are checked as ids.
//! - note, tags, firstname, surename: free text of at most 255 characters, no control
//!   characters (no pattern in the document).
//! - paymenttype (L43, L7): incremental, scheduled or unscheduled; "unscheduled" when absent.
//! - notificationurl: an absolute http(s) URL, required by the async functions; optional for
//!   the synchronous payout.
//! - unknown fields are ignored, as most providers do.
//! - the examples' trailing commas (L54-56, L113 …) are not JSON; the sandbox wants JSON.

use crate::sandbox::config::PayonicCustomer;
use serde_json::Value;
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub error: String,
}

fn invalid(field: &str, error: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_string(),
        error: error.into(),
    }
}

/// The fields of one JSON object, read by rule.
pub struct Fields<'a>(pub &'a Value);

impl Fields<'_> {
    fn get(&self, path: &str) -> Option<&Value> {
        let mut cur = self.0;
        for seg in path.split('.') {
            cur = cur.get(seg)?;
        }
        (!cur.is_null()).then_some(cur)
    }

    fn string(&self, path: &str) -> Result<Option<String>, Invalid> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(path, format!("{path} must be a string"))),
        }
    }

    fn required<T>(path: &str, v: Option<T>) -> Result<T, Invalid> {
        v.ok_or_else(|| invalid(path, format!("{path} is required")))
    }

    /// `^[a-zA-Z0-9]{1,32}$`.
    pub fn id(&self, path: &str) -> Result<Option<String>, Invalid> {
        let s = self.string(path)?;
        if let Some(s) = &s
            && !is_id(s)
        {
            return Err(invalid(
                path,
                format!("{path} must be 1 to 32 letters or digits (^[a-zA-Z0-9]{{1,32}}$)"),
            ));
        }
        Ok(s)
    }

    pub fn required_id(&self, path: &str) -> Result<String, Invalid> {
        Self::required(path, self.id(path)?)
    }

    /// `^[a-zA-Z0-9- ]{0,32}$` (reference, textonstatement: L64, L67, L250).
    pub fn label(&self, path: &str) -> Result<String, Invalid> {
        let s = self.string(path)?.unwrap_or_default();
        if s.len() > 32
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b' ')
        {
            return Err(invalid(
                path,
                format!(
                    "{path} must be at most 32 letters, digits, hyphens or spaces (^[a-zA-Z0-9- ]{{0,32}}$)"
                ),
            ));
        }
        Ok(s)
    }

    /// Free text (see the module's choices).
    pub fn text(&self, path: &str) -> Result<String, Invalid> {
        let s = self.string(path)?.unwrap_or_default();
        if s.chars().count() > 255 || s.chars().any(char::is_control) {
            return Err(invalid(
                path,
                format!("{path} must be at most 255 characters without control characters"),
            ));
        }
        Ok(s)
    }

    /// Minor units, `^[0-9]{1,12}$`, as a JSON number.
    pub fn amount(&self, path: &str) -> Result<Option<u64>, Invalid> {
        let Some(v) = self.get(path) else {
            return Ok(None);
        };
        match v.as_u64() {
            Some(a)
                if a <= 999_999_999_999 && v.to_string().bytes().all(|b| b.is_ascii_digit()) =>
            {
                Ok(Some(a))
            }
            _ => Err(invalid(
                path,
                format!(
                    "{path} must be a whole number of minor units, 1 to 12 digits (^[0-9]{{1,12}}$)"
                ),
            )),
        }
    }

    pub fn required_amount(&self, path: &str) -> Result<u64, Invalid> {
        Self::required(path, self.amount(path)?)
    }

    /// ISO 4217 alpha-3 (L63).
    pub fn currency(&self, path: &str) -> Result<String, Invalid> {
        let s = Self::required(path, self.string(path)?)?;
        match crate::money::Currency::from_alpha(&s) {
            Some(c) if c.exponent().is_some() => Ok(c.code()),
            _ => Err(invalid(
                path,
                format!("{path} `{s}` is not an ISO 4217 alpha-3 currency code"),
            )),
        }
    }

    /// The e-mail pattern of L245.
    pub fn email(&self, path: &str) -> Result<String, Invalid> {
        static RE: OnceLock<regex::Regex> = OnceLock::new();
        let re = RE.get_or_init(|| {
            regex::Regex::new(r"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$")
                .expect("the L245 pattern compiles")
        });
        let s = self.string(path)?.unwrap_or_default();
        if !s.is_empty() && !re.is_match(&s) {
            return Err(invalid(
                path,
                format!(
                    "{path} is not an e-mail address (^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{{2,}}$)"
                ),
            ));
        }
        Ok(s)
    }

    pub fn ipaddress(&self, path: &str) -> Result<String, Invalid> {
        let s = self.string(path)?.unwrap_or_default();
        if !s.is_empty() && s.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(path, format!("{path} is not an IP address")));
        }
        Ok(s)
    }

    pub fn url(&self, path: &str) -> Result<Option<String>, Invalid> {
        let Some(s) = self.string(path)? else {
            return Ok(None);
        };
        match reqwest::Url::parse(&s) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
                Ok(Some(s))
            }
            _ => Err(invalid(
                path,
                format!("{path} must be an absolute http or https URL"),
            )),
        }
    }

    pub fn required_url(&self, path: &str) -> Result<String, Invalid> {
        Self::required(path, self.url(path)?)
    }

    /// `^(0|1)?$` (L280): a number or a string.
    pub fn flag(&self, path: &str) -> Result<bool, Invalid> {
        match self.get(path) {
            None => Ok(false),
            Some(v) => match v
                .as_str()
                .map(str::to_string)
                .unwrap_or(v.to_string())
                .as_str()
            {
                "" | "0" => Ok(false),
                "1" => Ok(true),
                _ => Err(invalid(path, format!("{path} must be 0 or 1 (^(0|1)?$)"))),
            },
        }
    }
}

pub fn is_id(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The body must be a JSON object (an empty body is an empty object where allowed).
pub fn object(body: &[u8], empty_ok: bool) -> Result<Value, Invalid> {
    if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(invalid("", "the request body must be a JSON object")),
    }
}

/// MIT authorization (L36-74).
#[derive(Debug, Clone)]
pub struct Mit {
    pub merchantid: String,
    /// The parent payment whose stored card is charged.
    pub paymentid: String,
    pub merchantpaymentid: String,
    pub amount: u64,
    pub currency: String,
    pub reference: String,
    pub paymenttype: String,
    pub processor: Option<String>,
    pub textonstatement: String,
    pub note: String,
    pub tags: String,
    pub customer: Option<PayonicCustomer>,
    pub notificationurl: String,
}

impl Mit {
    pub fn parse(v: &Value) -> Result<Mit, Invalid> {
        let f = Fields(v);
        let paymenttype = f
            .string("paymenttype")?
            .unwrap_or_else(|| "unscheduled".into());
        if !["incremental", "scheduled", "unscheduled"].contains(&paymenttype.as_str()) {
            return Err(invalid(
                "paymenttype",
                "paymenttype must be incremental, scheduled or unscheduled",
            ));
        }
        let customer = match f.get("customer") {
            None => None,
            Some(Value::Object(_)) => Some(PayonicCustomer {
                email: f.email("customer.email")?,
                firstname: f.text("customer.firstname")?,
                surename: f.text("customer.surename")?,
                ipaddress: f.ipaddress("customer.ipaddress")?,
            }),
            Some(_) => return Err(invalid("customer", "customer must be an object")),
        };
        Ok(Mit {
            merchantid: f.required_id("merchantid")?,
            paymentid: f.required_id("paymentid")?,
            merchantpaymentid: f.required_id("merchantpaymentid")?,
            amount: f.required_amount("amount")?,
            currency: f.currency("currency")?,
            reference: f.label("reference")?,
            paymenttype,
            processor: f.id("processor")?,
            textonstatement: f.label("textonstatement")?,
            note: f.text("note")?,
            tags: f.text("tags")?,
            customer,
            notificationurl: f.required_url("notificationurl")?,
        })
    }
}

/// Capture, refund (amount required) and void (amount optional): L109-120, L149-160, L189-200.
#[derive(Debug, Clone)]
pub struct Modify {
    pub amount: Option<u64>,
    pub note: String,
    pub tags: String,
    pub notificationurl: String,
}

impl Modify {
    pub fn parse(v: &Value, amount_required: bool) -> Result<Modify, Invalid> {
        let f = Fields(v);
        let amount = if amount_required {
            Some(f.required_amount("amount")?)
        } else {
            f.amount("amount")?
        };
        Ok(Modify {
            amount,
            note: f.text("note")?,
            tags: f.text("tags")?,
            notificationurl: f.required_url("notificationurl")?,
        })
    }
}

/// Payout (L230-252).
#[derive(Debug, Clone)]
pub struct Payout {
    pub amount: u64,
    pub currency: String,
    pub email: String,
    pub firstname: String,
    pub surename: String,
    pub note: String,
    pub tags: String,
    pub textonstatement: String,
    pub notificationurl: Option<String>,
    pub processor: Option<String>,
}

impl Payout {
    pub fn parse(v: &Value) -> Result<Payout, Invalid> {
        let f = Fields(v);
        Ok(Payout {
            amount: f.required_amount("amount")?,
            currency: f.currency("currency")?,
            email: f.email("email")?,
            firstname: f.text("firstname")?,
            surename: f.text("surename")?,
            note: f.text("note")?,
            tags: f.text("tags")?,
            textonstatement: f.label("textonstatement")?,
            notificationurl: f.url("notificationurl")?,
            processor: f.id("processor")?,
        })
    }
}

/// Payment (L272-281): from the JSON body of the GET, or its query parameters.
#[derive(Debug, Clone)]
pub struct PaymentQuery {
    pub notificationurl: String,
    pub gfx: bool,
    pub operationid: Option<String>,
}

impl PaymentQuery {
    pub fn parse(v: &Value) -> Result<PaymentQuery, Invalid> {
        let f = Fields(v);
        Ok(PaymentQuery {
            notificationurl: f.required_url("notificationurl")?,
            gfx: f.flag("gfx")?,
            operationid: f.id("operationid")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn capture(v: Value) -> Result<Modify, Invalid> {
        Modify::parse(&v, true)
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let url = "http://127.0.0.1:1/n";
        for (what, body, field) in [
            ("missing amount", json!({"notificationurl": url}), "amount"),
            (
                "fraction",
                json!({"amount": 10.5, "notificationurl": url}),
                "amount",
            ),
            (
                "string amount",
                json!({"amount": "1095", "notificationurl": url}),
                "amount",
            ),
            (
                "negative",
                json!({"amount": -1, "notificationurl": url}),
                "amount",
            ),
            (
                "13 digits",
                json!({"amount": 1_000_000_000_000u64, "notificationurl": url}),
                "amount",
            ),
            ("no url", json!({"amount": 1}), "notificationurl"),
            (
                "ftp url",
                json!({"amount": 1, "notificationurl": "ftp://x/y"}),
                "notificationurl",
            ),
            (
                "note with newline",
                json!({"amount": 1, "note": "a\nb", "notificationurl": url}),
                "note",
            ),
        ] {
            assert_eq!(capture(body).unwrap_err().field, field, "{what}");
        }
        assert_eq!(
            capture(json!({"amount": 1095, "notificationurl": url}))
                .unwrap()
                .amount,
            Some(1095)
        );
    }

    #[test]
    fn mit_checks_the_documented_patterns() {
        let ok = json!({"merchantid": "m1", "paymentid": "p1", "merchantpaymentid": "mp1",
            "amount": 1095, "currency": "DKK", "reference": "order-12345",
            "customer": {"email": "don.johnson.miami-vice@payonic.com", "ipaddress": "127.0.0.1"},
            "notificationurl": "https://example.com/n"});
        assert!(Mit::parse(&ok).is_ok());
        for (field, value) in [
            ("currency", json!("dkk")),
            ("currency", json!("XAU")),
            ("reference", json!("order_12345")),
            ("merchantpaymentid", json!("has-hyphen")),
            ("merchantpaymentid", json!("x".repeat(33))),
            ("paymenttype", json!("weekly")),
        ] {
            let mut b = ok.clone();
            b[field] = value;
            assert_eq!(Mit::parse(&b).unwrap_err().field, field);
        }
        let mut b = ok.clone();
        b["customer"]["email"] = json!("not-an-email");
        assert_eq!(Mit::parse(&b).unwrap_err().field, "customer.email");
    }
}

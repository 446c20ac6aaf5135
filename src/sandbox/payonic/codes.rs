//! Payonic's response codes as the sandbox uses them. The document shows only "00" with status
//! "approved" (L87-89); every other code here is a choice, taken from the ISO 8583 response
//! codes card processors (e.g. finaro, L44) answer with, and kept in this one table.

use serde_json::{Value, json};

/// Approved (L87).
pub const APPROVED: &str = "00";
/// Choice: mock trigger, amount ending in 005 minor units.
pub const DO_NOT_HONOUR: &str = "05";
/// Choice: the operation is not allowed in the payment's state (capture of a voided or
/// unauthorized payment, void after a capture, refund of nothing captured).
pub const INVALID_TRANSACTION: &str = "12";
/// Choice: the amount breaks a rule (capture beyond the authorized amount, refund beyond what
/// is captured and not yet refunded, a zero capture, refund or payout).
pub const INVALID_AMOUNT: &str = "13";
/// Choice: mock trigger, amount ending in 051 minor units.
pub const INSUFFICIENT_FUNDS: &str = "51";

/// The mock triggers: an amount whose last three minor-unit digits are the key is declined
/// with the code, whatever the rules say (authorize, capture, refund, payout). 1051 → "51".
pub const TRIGGERS: &[(u64, &str)] = &[(51, INSUFFICIENT_FUNDS), (5, DO_NOT_HONOUR)];

/// The declined code the mock triggers give `amount`, if any.
pub fn trigger(amount: u64) -> Option<&'static str> {
    TRIGGERS
        .iter()
        .find(|(end, _)| amount % 1000 == *end)
        .map(|(_, code)| *code)
}

/// A code read back from the sandbox's state file, as the `&'static str` the emulation keeps.
pub fn known(s: &str) -> Option<&'static str> {
    [
        APPROVED,
        DO_NOT_HONOUR,
        INVALID_TRANSACTION,
        INVALID_AMOUNT,
        INSUFFICIENT_FUNDS,
    ]
    .into_iter()
    .find(|c| *c == s)
}

/// The notification's `status` for a code (L89): "approved", or the choice "declined".
pub fn status(code: &str) -> &'static str {
    if code == APPROVED {
        "approved"
    } else {
        "declined"
    }
}

/// The `status` of an operation not decided yet (`payonic.pending_listings`,
/// `pending_notifications`). Choice: the document shows only "approved" (L89); "pending" is
/// what an independent Payonic implementation sends.
pub const PENDING: &str = "pending";

/// `body` (a notification or an `operations[]` entry) as it reads before its outcome:
/// `status` "pending", no `responsecode` and no `authorizationcode`; every other field, in its
/// place, as it is.
pub fn pending(body: &Value) -> Value {
    let Value::Object(m) = body else {
        return body.clone();
    };
    Value::Object(
        m.iter()
            .filter(|(k, _)| *k != "responsecode" && *k != "authorizationcode")
            .map(|(k, v)| {
                let v = if k == "status" {
                    json!(PENDING)
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect(),
    )
}

/// How `responsecode` is written. The document prints it as a string (`"00"`, L87); an
/// independent implementation writes a number (`payonic.numeric_responsecode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CodeForm {
    /// `"00"`, `"51"`.
    #[default]
    Text,
    /// `0`, `51`.
    Number,
}

impl CodeForm {
    pub fn numeric(numeric: bool) -> CodeForm {
        if numeric {
            CodeForm::Number
        } else {
            CodeForm::Text
        }
    }

    /// `code` as the JSON value of `responsecode`.
    pub fn value(self, code: &str) -> Value {
        match (self, code.parse::<u64>()) {
            (CodeForm::Number, Ok(n)) => json!(n),
            _ => json!(code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_numeric_responsecode_drops_the_leading_zeros() {
        for (code, text, number) in [
            (APPROVED, json!("00"), json!(0)),
            (DO_NOT_HONOUR, json!("05"), json!(5)),
            (INSUFFICIENT_FUNDS, json!("51"), json!(51)),
        ] {
            assert_eq!(CodeForm::Text.value(code), text);
            assert_eq!(CodeForm::Number.value(code), number);
        }
    }

    #[test]
    fn a_pending_body_has_no_codes_and_keeps_its_other_fields_in_place() {
        let v = json!({"responseid": "r", "responsecode": "00", "authorizationcode": "123456",
            "status": "approved", "processor": "finaro"});
        let p = pending(&v);
        assert_eq!(
            p,
            json!({"responseid": "r", "status": "pending", "processor": "finaro"})
        );
        let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["responseid", "status", "processor"]);
    }

    #[test]
    fn triggers_look_at_the_last_three_minor_unit_digits() {
        for (amount, code) in [
            (51, Some("51")),
            (1051, Some("51")),
            (5, Some("05")),
            (99005, Some("05")),
            (1095, None),
            (510, None),
            (0, None),
        ] {
            assert_eq!(trigger(amount), code, "{amount}");
        }
    }
}

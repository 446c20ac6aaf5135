//! Payonic's response codes as the sandbox uses them. The document shows only "00" with status
//! "approved" (L87-89); every other code here is a choice, taken from the ISO 8583 response
//! codes card processors (e.g. finaro, L44) answer with, and kept in this one table.

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

#[cfg(test)]
mod tests {
    use super::*;

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

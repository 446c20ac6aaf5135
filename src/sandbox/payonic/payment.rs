//! A Payonic payment and its `operations[]` history (L318-354), and the rules that decide an
//! operation before any money moves: capture only an authorized payment and up to its amount,
//! refund only what is captured and not yet refunded, void only before any capture. Everything
//! a payment "has" (authorized, captured, refunded, voided) is derived from its approved
//! operations, so the history cannot disagree with the totals. Pure: no I/O, no clock.
//!
//! A payment also holds what the Payment API shows of its card (L305-310, L361-363), which the
//! issuer may update (life cycle management, L461-469). Choices: a seeded payment starts with
//! the sandbox card (visa, debit, DPAN, last4 4242, expiry 12/2030); an MIT's payment carries
//! its parent's card as it is then; an update gives a new last4 and an expiry three years
//! later, and leaves the scheme, issuer, funding and PAN type as they were (a reissued card,
//! not a new account).

use super::codes;
use crate::sandbox::config::PayonicCustomer;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Authorize,
    Capture,
    Refund,
    Void,
    Payout,
}

impl OpType {
    /// `operations[].operationtype` (L322, L334, L345); "void" and "payout" follow the
    /// function names (choice: the document shows no such operation).
    pub fn as_str(self) -> &'static str {
        match self {
            OpType::Authorize => "authorize",
            OpType::Capture => "capture",
            OpType::Refund => "refund",
            OpType::Void => "void",
            OpType::Payout => "payout",
        }
    }

    /// Whether an approved operation of this type moves money (a ledger row).
    pub fn moves_money(self) -> bool {
        matches!(self, OpType::Capture | OpType::Refund | OpType::Payout)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Operation {
    pub operationid: String,
    /// The answer to the request that made it (a replayed MIT answers it again).
    pub responseid: String,
    pub optype: OpType,
    /// Only for authorizations (L323).
    pub paymenttype: Option<String>,
    pub amount: u64,
    pub currency: String,
    /// Provider time at which it was processed (and its notification is due).
    pub at: Duration,
    /// `created` (L326), UTC "YYYY-MM-DD HH:MM:SS" (L395).
    pub created: String,
    pub note: String,
    pub tags: String,
    pub responsecode: &'static str,
    pub authorizationcode: String,
    /// The request's TraceApi header (L28-31), so support can quote it.
    pub traceapi: Option<String>,
}

/// An operation as the sandbox's state file holds it (its code as text).
#[derive(serde::Deserialize)]
struct OperationRecord {
    operationid: String,
    responseid: String,
    optype: OpType,
    paymenttype: Option<String>,
    amount: u64,
    currency: String,
    at: Duration,
    created: String,
    note: String,
    tags: String,
    responsecode: String,
    authorizationcode: String,
    traceapi: Option<String>,
}

// By hand: a derived impl would borrow the `&'static str` from the input.
impl<'de> serde::Deserialize<'de> for Operation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = OperationRecord::deserialize(d)?;
        Operation::try_from(r).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<OperationRecord> for Operation {
    type Error = String;
    fn try_from(r: OperationRecord) -> Result<Operation, String> {
        Ok(Operation {
            responsecode: codes::known(&r.responsecode)
                .ok_or(format!("unknown response code `{}`", r.responsecode))?,
            operationid: r.operationid,
            responseid: r.responseid,
            optype: r.optype,
            paymenttype: r.paymenttype,
            amount: r.amount,
            currency: r.currency,
            at: r.at,
            created: r.created,
            note: r.note,
            tags: r.tags,
            authorizationcode: r.authorizationcode,
            traceapi: r.traceapi,
        })
    }
}

impl Operation {
    pub fn approved(&self) -> bool {
        self.responsecode == codes::APPROVED
    }

    /// When the Payment API lists it: `delay` after it was processed. Seeded operations (time
    /// zero: processed before the sandbox started) are listed from the start.
    pub fn listed_from(&self, delay: Duration) -> Duration {
        if self.at.is_zero() {
            self.at
        } else {
            self.at + delay
        }
    }

    /// One entry of `operations[]` (L320-331). Amounts are strings there, as in the document.
    /// `tags` and `traceapi` are additions (choice): a client recognises its own operation by
    /// its note and tags, support by the trace id.
    pub fn to_json(&self, form: codes::CodeForm) -> Value {
        let mut o = json!({
            "operationid": self.operationid,
            "operationtype": self.optype.as_str(),
        });
        if let Some(t) = &self.paymenttype {
            o["paymenttype"] = json!(t);
        }
        o["amount"] = json!(self.amount.to_string());
        o["currency"] = json!(self.currency);
        o["created"] = json!(self.created);
        o["note"] = json!(self.note);
        o["tags"] = json!(self.tags);
        o["responsecode"] = form.value(self.responsecode);
        o["authorizationcode"] = json!(self.authorizationcode);
        o["status"] = json!(codes::status(self.responsecode));
        if let Some(t) = &self.traceapi {
            o["traceapi"] = json!(t);
        }
        o
    }
}

/// How the Payment API lists operations (`payonic.listing_delay`, `pending_listings`,
/// `numeric_responsecode`); the default lists each one as soon as it is processed, with
/// its code as text, as the document's example does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listing {
    /// How long after its processing an operation is listed.
    pub delay: Duration,
    /// Whether an operation not listed yet shows as pending (else it is left out).
    pub pending: bool,
    pub form: codes::CodeForm,
}

/// What the sandbox holds of a payment's card: never a PAN, only what the document shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Card {
    /// `last4` (L308), `gfx.last4` (L363).
    pub last4: String,
    /// `Expiry date` "MM/YYYY" (L307), `gfx.expmonth` / `gfx.expyear` (L361-362).
    pub expmonth: u32,
    pub expyear: u32,
    /// How many times the issuer updated it.
    pub updates: u64,
}

impl Default for Card {
    fn default() -> Self {
        Card {
            last4: "4242".into(),
            expmonth: 12,
            expyear: 2030,
            updates: 0,
        }
    }
}

impl Card {
    /// The card after the issuer's next update; `draw` (any number, e.g. from a digest) picks
    /// the new last4, which always differs from the old one.
    pub fn updated(&self, draw: u64) -> Card {
        let old: u64 = self.last4.parse().unwrap_or(0);
        let mut last4 = draw % 10_000;
        if last4 == old {
            last4 = (last4 + 1) % 10_000;
        }
        Card {
            last4: format!("{last4:04}"),
            expmonth: self.expmonth,
            expyear: self.expyear + 3,
            updates: self.updates + 1,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Payment {
    pub paymentid: String,
    pub merchantpaymentid: String,
    /// For an MIT, the payment whose stored card it used (L371).
    pub parentpaymentid: Option<String>,
    pub merchantid: String,
    /// The authorized amount asked for, minor units.
    pub amount: u64,
    pub currency: String,
    pub reference: String,
    pub paymenttype: String,
    pub processor: String,
    pub textonstatement: String,
    pub note: String,
    pub tags: String,
    pub customer: PayonicCustomer,
    pub card: Card,
    pub operations: Vec<Operation>,
}

/// What a payment's approved operations add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub authorized: u64,
    pub captured: u64,
    pub refunded: u64,
    pub voided: bool,
}

impl Payment {
    /// Totals over all approved operations, decided or still to be processed.
    pub fn totals(&self) -> Totals {
        Totals::of(self.operations.iter())
    }
}

impl Totals {
    /// What the approved ones of `operations` add up to.
    pub fn of<'a>(operations: impl Iterator<Item = &'a Operation>) -> Totals {
        let mut t = Totals::default();
        for op in operations.filter(|o| o.approved()) {
            match op.optype {
                OpType::Authorize => t.authorized += op.amount,
                OpType::Capture => t.captured += op.amount,
                OpType::Refund => t.refunded += op.amount,
                OpType::Void => t.voided = true,
                OpType::Payout => {}
            }
        }
        t
    }
}

impl Payment {
    /// The response code for an operation of `ty` over `amount`, given everything already
    /// decided on this payment. The payment's own rules come first (Payonic checks them before
    /// it asks the processor, L21-23), then the processor's mock triggers.
    pub fn decide(&self, ty: OpType, amount: u64) -> &'static str {
        let t = self.totals();
        let rule = match ty {
            OpType::Authorize => None,
            OpType::Capture if t.voided || t.authorized == 0 => Some(codes::INVALID_TRANSACTION),
            OpType::Capture if amount == 0 || t.captured + amount > t.authorized => {
                Some(codes::INVALID_AMOUNT)
            }
            OpType::Capture => None,
            OpType::Refund if t.captured == 0 => Some(codes::INVALID_TRANSACTION),
            OpType::Refund if amount == 0 || t.refunded + amount > t.captured => {
                Some(codes::INVALID_AMOUNT)
            }
            OpType::Refund => None,
            OpType::Void if t.voided || t.captured > 0 || t.authorized == 0 => {
                Some(codes::INVALID_TRANSACTION)
            }
            // Choice: a void cancels the whole authorization; its amount is not a rule.
            OpType::Void => return codes::APPROVED,
            OpType::Payout if amount == 0 => Some(codes::INVALID_AMOUNT),
            OpType::Payout => None,
        };
        rule.or_else(|| codes::trigger(amount))
            .unwrap_or(codes::APPROVED)
    }

    /// The amount a void cancels: what is authorized and not captured.
    pub fn voidable(&self) -> u64 {
        let t = self.totals();
        t.authorized.saturating_sub(t.captured)
    }

    pub fn first_authorization(&self) -> Option<&Operation> {
        self.operations
            .iter()
            .find(|o| o.optype == OpType::Authorize)
    }

    /// The Payment API's notification (L290-365) as of provider time `at`: an operation is
    /// listed once `listing.delay` has passed after it was processed; before, it is left out,
    /// or listed as pending with `listing.pending`. `balance` (L297) is the choice
    /// "authorized, not captured nor voided" over the listed operations — the example's 0
    /// after a full capture (L296-297, L318-342) fits it.
    pub fn to_json(
        &self,
        responseid: &str,
        at: Duration,
        operationid: Option<&str>,
        gfx: bool,
        listing: Listing,
    ) -> Value {
        let listed = |o: &&Operation| o.listed_from(listing.delay) <= at;
        let t = Totals::of(self.operations.iter().filter(listed));
        let balance = if t.voided {
            0
        } else {
            t.authorized.saturating_sub(t.captured)
        };
        let operations: Vec<Value> = self
            .operations
            .iter()
            .filter(|o| operationid.is_none_or(|id| o.operationid == id))
            .filter_map(|o| match (listed(&o), listing.pending) {
                (true, _) => Some(o.to_json(listing.form)),
                (false, true) => Some(codes::pending(&o.to_json(listing.form))),
                (false, false) => None,
            })
            .collect();
        // Choice: the card fields besides last4 and expiry (L304-310) are fixed sandbox values.
        let mut v = json!({
            "merchantid": self.merchantid,
            "paymentid": self.paymentid,
            "merchantpaymentid": self.merchantpaymentid,
            "parentpaymentid": self.parentpaymentid.clone().unwrap_or_default(),
            "responseid": responseid,
            "amount": self.amount,
            "balance": balance,
            "currency": self.currency,
            "reference": self.reference,
            "paymenttype": self.paymenttype,
            "processor": self.processor,
            "textonstatement": self.textonstatement,
            "note": self.note,
            "tags": self.tags,
            "sca": "0",
            "scheme": "visa",
            "segment": "consumer",
            "Issuer": "Payrun Sandbox Bank",
            "Expiry date": format!("{:02}/{}", self.card.expmonth, self.card.expyear),
            "last4": self.card.last4,
            "funding": "debit",
            "pantype": "dpan",
            "customer": self.customer,
            "operations": operations,
        });
        if gfx {
            v["gfx"] = json!({
                "b64image": PIXEL_PNG,
                "mimetype": "image/png",
                "height": 1,
                "width": 1,
                "expmonth": self.card.expmonth,
                "expyear": self.card.expyear,
                "last4": self.card.last4,
                "issuer": "Payrun Sandbox Bank",
            });
        }
        v
    }
}

/// A 1×1 transparent PNG: the sandbox's card image (L357).
const PIXEL_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(ops: &[(OpType, u64, &'static str)]) -> Payment {
        Payment {
            paymentid: "p1".into(),
            merchantpaymentid: "m1".into(),
            parentpaymentid: None,
            merchantid: "m".into(),
            amount: 1000,
            currency: "DKK".into(),
            reference: String::new(),
            paymenttype: "unscheduled".into(),
            processor: "finaro".into(),
            textonstatement: String::new(),
            note: String::new(),
            tags: String::new(),
            customer: PayonicCustomer::default(),
            card: Card::default(),
            operations: ops
                .iter()
                .enumerate()
                .map(|(i, (ty, amount, code))| Operation {
                    operationid: format!("op{i}"),
                    responseid: format!("r{i}"),
                    optype: *ty,
                    paymenttype: None,
                    amount: *amount,
                    currency: "DKK".into(),
                    at: Duration::from_secs(i as u64),
                    created: String::new(),
                    note: String::new(),
                    tags: String::new(),
                    responsecode: code,
                    authorizationcode: String::new(),
                    traceapi: None,
                })
                .collect(),
        }
    }

    use OpType::*;

    #[test]
    fn the_rules_decide_each_operation_from_the_history() {
        let authorized = [(Authorize, 1000, "00")];
        let captured = [(Authorize, 1000, "00"), (Capture, 600, "00")];
        let refunded = [
            (Authorize, 1000, "00"),
            (Capture, 600, "00"),
            (Refund, 500, "00"),
        ];
        let voided = [(Authorize, 1000, "00"), (Void, 1000, "00")];
        let declined_auth = [(Authorize, 1000, "51")];
        for (what, history, ty, amount, code) in [
            ("capture in full", &authorized[..], Capture, 1000, "00"),
            ("capture beyond", &authorized[..], Capture, 1001, "13"),
            ("second capture within", &captured[..], Capture, 400, "00"),
            ("second capture beyond", &captured[..], Capture, 401, "13"),
            ("capture after void", &voided[..], Capture, 10, "12"),
            (
                "capture of a declined auth",
                &declined_auth[..],
                Capture,
                10,
                "12",
            ),
            (
                "refund of nothing captured",
                &authorized[..],
                Refund,
                10,
                "12",
            ),
            ("refund within", &captured[..], Refund, 600, "00"),
            ("refund beyond", &refunded[..], Refund, 101, "13"),
            ("refund the rest", &refunded[..], Refund, 100, "00"),
            ("void before capture", &authorized[..], Void, 0, "00"),
            ("void after capture", &captured[..], Void, 0, "12"),
            ("void twice", &voided[..], Void, 0, "12"),
            ("zero capture", &authorized[..], Capture, 0, "13"),
            ("payout", &captured[..], Payout, 5000, "00"),
            ("trigger 051", &authorized[..], Capture, 51, "51"),
            ("trigger 005", &captured[..], Payout, 2005, "05"),
            (
                "rules before triggers",
                &authorized[..],
                Capture,
                2051,
                "13",
            ),
        ] {
            assert_eq!(payment(history).decide(ty, amount), code, "{what}");
        }
    }

    #[test]
    fn the_payment_view_shows_what_was_processed_by_then() {
        let p = payment(&[
            (Authorize, 1000, "00"),
            (Capture, 1000, "00"),
            (Refund, 500, "00"),
        ]);
        let v = p.to_json("r", Duration::from_secs(1), None, false, Listing::default());
        assert_eq!(v["operations"].as_array().unwrap().len(), 2);
        assert_eq!(v["balance"], 0);
        let v = p.to_json(
            "r",
            Duration::from_secs(9),
            Some("op2"),
            true,
            Listing::default(),
        );
        assert_eq!(v["operations"][0]["operationtype"], "refund");
        assert_eq!(v["operations"][0]["amount"], "500");
        assert_eq!(v["gfx"]["mimetype"], "image/png");
    }

    #[test]
    fn the_listing_delay_and_pending_listings_decide_what_operations_shows() {
        // Processed at 0 s (seeded), 1 s and 2 s.
        let p = payment(&[
            (Authorize, 1000, "00"),
            (Capture, 600, "00"),
            (Payout, 5051, "51"),
        ]);
        let secs = Duration::from_secs;
        let delayed = |pending| Listing {
            delay: secs(10),
            pending,
            form: codes::CodeForm::Text,
        };
        for (what, at, listing, statuses, balance) in [
            (
                "by default, what is processed",
                secs(2),
                Listing::default(),
                &["approved", "approved", "declined"][..],
                400,
            ),
            (
                "within the delay, seeded only",
                secs(5),
                delayed(false),
                &["approved"][..],
                1000,
            ),
            (
                "within the delay, pending",
                secs(5),
                delayed(true),
                &["approved", "pending", "pending"][..],
                1000,
            ),
            (
                "the capture's delay passed",
                secs(11),
                delayed(true),
                &["approved", "approved", "pending"][..],
                400,
            ),
            (
                "every delay passed",
                secs(12),
                delayed(false),
                &["approved", "approved", "declined"][..],
                400,
            ),
        ] {
            let v = p.to_json("r", at, None, false, listing);
            let ops = v["operations"].as_array().unwrap();
            let shown: Vec<&str> = ops.iter().map(|o| o["status"].as_str().unwrap()).collect();
            assert_eq!(shown, statuses, "{what}");
            assert_eq!(v["balance"], balance, "{what}");
            for o in ops.iter().filter(|o| o["status"] == "pending") {
                assert!(o.get("responsecode").is_none() && o.get("authorizationcode").is_none());
            }
        }
        let numeric = Listing {
            form: codes::CodeForm::Number,
            ..Listing::default()
        };
        let v = p.to_json("r", secs(2), None, false, numeric);
        let codes: Vec<&Value> = v["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| &o["responsecode"])
            .collect();
        assert_eq!(codes, [&json!(0), &json!(0), &json!(51)]);
    }

    #[test]
    fn an_updated_card_shows_a_new_last4_and_a_later_expiry() {
        let mut p = payment(&[(Authorize, 1000, "00")]);
        let v = p.to_json("r", Duration::ZERO, None, true, Listing::default());
        assert_eq!(
            (&v["last4"], &v["Expiry date"], &v["gfx"]["last4"]),
            (&json!("4242"), &json!("12/2030"), &json!("4242"))
        );
        p.card = p.card.updated(123_456_789);
        assert_eq!(p.card.last4, "6789");
        assert_eq!(p.card.updates, 1);
        let v = p.to_json("r", Duration::ZERO, None, true, Listing::default());
        assert_eq!(v["last4"], "6789");
        assert_eq!(v["Expiry date"], "12/2033");
        assert_eq!(
            (
                &v["gfx"]["last4"],
                &v["gfx"]["expyear"],
                &v["gfx"]["expmonth"]
            ),
            (&json!("6789"), &json!(2033), &json!(12))
        );
        // A draw that would keep the last4 still changes it; leading zeros are kept.
        assert_eq!(p.card.updated(6789).last4, "6790");
        assert_eq!(p.card.updated(7).last4, "0007");
        assert_eq!(Card::default().updated(9999 + 4243).last4, "4243");
    }
}

//! What Paysend keeps in memory of each request and payment, in fixed-size form: a task's result
//! is a code, a payout (its paymentId, and for a card its amount and currency), or — for the
//! rare functions whose results carry more (fx quotes, balances, lookups, validation errors) —
//! its JSON text; a payment by invoiceId is its ids, times and amount. Everything is rendered
//! back to the JSON the sandbox answered with, and a form is only taken when it renders back
//! exactly what it stands for (checked when it is made), so the answers never change.

use super::Payment;
use super::codes;
use super::tree::{self, Executed, Json, Outcome};
use crate::sandbox::compact::{self, Name};
use serde_json::{Value, json};
use std::time::Duration;

/// The comment of a payout held for review (L612-619).
pub const ON_HOLD: &str = "Offline Antifraud check: RFI";

/// A payout's `data`: its traceId and paymentId, and for a card its `arn`, `rrn` and `finance`
/// (the amount and currency paid, at rate 1).
pub fn payout_data(payment_id: &str, card: Option<(Value, &str)>) -> Value {
    let trace: String = payment_id.replace('-', "");
    match card {
        None => json!({"traceId": trace, "paymentId": payment_id}),
        Some((amount, code)) => {
            let finance = json!({"to": {"amount": amount, "currency": code}, "from": {"amount": amount, "currency": code}, "rate": 1});
            let rrn = trace.get(..12).unwrap_or("");
            let arn = trace.get(12..18).unwrap_or("");
            json!({"arn": arn, "rrn": rrn, "finance": finance, "traceId": rrn, "paymentId": payment_id})
        }
    }
}

/// A card payout's amount (digits, scale) and currency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CardPaid {
    minor: i64,
    scale: u8,
    currency: Name,
}

impl CardPaid {
    fn amount(&self) -> Value {
        serde_json::from_str(&compact::decimal_text(self.minor, self.scale)).unwrap_or(Value::Null)
    }

    /// The card part of a payout's `data`, read back from it.
    fn of(data: &Value) -> Option<CardPaid> {
        let to = data.pointer("/finance/to")?;
        let (minor, scale) = match to.get("amount")? {
            Value::Number(n) => compact::decimal(&n.to_string())?,
            _ => return None,
        };
        Some(CardPaid {
            minor,
            scale,
            currency: Name::new(to.get("currency")?.as_str()?)?,
        })
    }
}

fn data_of(payment_id: &[u8; 16], card: Option<&CardPaid>) -> Value {
    let id = compact::uuid_text(payment_id);
    payout_data(&id, card.map(|c| (c.amount(), c.currency.as_str())))
}

/// A task's result as kept.
#[derive(Debug, Clone)]
pub enum TaskResult {
    /// Its parent's result did not lead to it.
    NotRun,
    /// `{"status": "Error", "code": c, "comment": <the code's comment>}`.
    Code(u32),
    /// A payout made: Success with its data, or held for review (code 5, the same data).
    Payout {
        payment_id: [u8; 16],
        held: bool,
        card: Option<Box<CardPaid>>,
    },
    /// Any other result, as its JSON text.
    Json { ok: bool, result: Json },
}

impl TaskResult {
    /// The kept form of `o`: the smallest one that renders back exactly its result.
    pub fn new(o: &Outcome) -> TaskResult {
        let kept = match tree::parse(&o.result) {
            v if v.get("code").and_then(Value::as_u64) == Some(0) => {
                payout(v.get("data"), false).filter(|_| o.ok)
            }
            v => match (v.get("code").and_then(Value::as_u64), v.get("data")) {
                (Some(5), data @ Some(_)) => payout(data, true).filter(|_| !o.ok),
                (Some(c), None) => u32::try_from(c)
                    .ok()
                    .map(TaskResult::Code)
                    .filter(|_| !o.ok),
                _ => None,
            },
        };
        match kept {
            Some(k) if k.outcome().is_some_and(|r| r == *o) => k,
            _ => TaskResult::Json {
                ok: o.ok,
                result: o.result.clone(),
            },
        }
    }

    /// The outcome it stands for (`None`: not run).
    pub fn outcome(&self) -> Option<Outcome> {
        let (ok, v) = match self {
            TaskResult::NotRun => return None,
            TaskResult::Json { ok, result } => {
                return Some(Outcome {
                    ok: *ok,
                    result: result.clone(),
                });
            }
            TaskResult::Code(c) => (
                false,
                json!({"status": "Error", "code": c, "comment": codes::comment(*c)}),
            ),
            TaskResult::Payout {
                payment_id,
                held: false,
                card,
            } => (
                true,
                json!({"status": "Success", "code": 0, "data": data_of(payment_id, card.as_deref())}),
            ),
            TaskResult::Payout {
                payment_id,
                held: true,
                card,
            } => (
                false,
                json!({"status": "Error", "code": 5, "comment": ON_HOLD, "data": data_of(payment_id, card.as_deref())}),
            ),
        };
        Some(Outcome {
            ok,
            result: tree::compact(&v),
        })
    }
}

fn payout(data: Option<&Value>, held: bool) -> Option<TaskResult> {
    let data = data?;
    let payment_id = compact::uuid(data.get("paymentId")?.as_str()?)?;
    let card = match data.get("finance") {
        Some(_) => Some(Box::new(CardPaid::of(data)?)),
        None => None,
    };
    Some(TaskResult::Payout {
        payment_id,
        held,
        card,
    })
}

/// A task of an accepted request, as kept: its result, the level it ran on, and how many
/// children it has under `success`, `fail` and `always`. A request's tasks are kept in one
/// array, each followed by its children's (depth first): 40 bytes a task, one allocation a
/// request.
#[derive(Debug, Clone)]
pub struct Ran {
    result: TaskResult,
    level: u16,
    kids: [u16; 3],
}

/// The executed trees of a request as kept: compact where every tree fits, else as they are
/// (more than 65,535 children on one branch, or levels).
#[derive(Debug)]
pub enum Trees {
    /// Every tree one task that paid to an account (a payroll's request): their paymentIds,
    /// 16 bytes a task.
    Payouts(Box<[[u8; 16]]>),
    Kept(Box<[Ran]>),
    AsRun(Vec<Executed>),
}

/// The result of a payout to an account that completed.
fn account_payout(payment_id: [u8; 16]) -> TaskResult {
    TaskResult::Payout {
        payment_id,
        held: false,
        card: None,
    }
}

impl Trees {
    pub fn new(tree: &[Executed]) -> Trees {
        let payouts: Option<Vec<[u8; 16]>> = tree
            .iter()
            .map(|e| {
                let alone = e.level == 0
                    && e.success.is_empty()
                    && e.fail.is_empty()
                    && e.always.is_empty();
                match e.outcome.as_ref().filter(|_| alone).map(TaskResult::new) {
                    Some(TaskResult::Payout {
                        payment_id,
                        held: false,
                        card: None,
                    }) => Some(payment_id),
                    _ => None,
                }
            })
            .collect();
        if let Some(p) = payouts {
            return Trees::Payouts(p.into_boxed_slice());
        }
        fn flat(e: &Executed, out: &mut Vec<Ran>) -> Option<()> {
            let n = |v: &Vec<Executed>| u16::try_from(v.len()).ok();
            out.push(Ran {
                result: e
                    .outcome
                    .as_ref()
                    .map_or(TaskResult::NotRun, TaskResult::new),
                level: u16::try_from(e.level).ok()?,
                kids: [n(&e.success)?, n(&e.fail)?, n(&e.always)?],
            });
            e.success
                .iter()
                .chain(&e.fail)
                .chain(&e.always)
                .try_for_each(|k| flat(k, out))
        }
        let mut out = Vec::new();
        match tree.iter().try_for_each(|e| flat(e, &mut out)) {
            Some(()) => Trees::Kept(out.into_boxed_slice()),
            None => Trees::AsRun(tree.to_vec()),
        }
    }

    pub fn executed(&self) -> Vec<Executed> {
        fn tree(it: &mut std::slice::Iter<'_, Ran>) -> Executed {
            let Some(r) = it.next() else {
                // Cannot happen: the array was made from whole trees.
                return Executed {
                    level: 0,
                    outcome: None,
                    success: vec![],
                    fail: vec![],
                    always: vec![],
                };
            };
            let mut kids = r.kids.map(|n| (0..n).map(|_| tree(it)).collect::<Vec<_>>());
            Executed {
                level: usize::from(r.level),
                outcome: r.result.outcome(),
                always: std::mem::take(&mut kids[2]),
                fail: std::mem::take(&mut kids[1]),
                success: std::mem::take(&mut kids[0]),
            }
        }
        match self {
            Trees::Payouts(p) => p
                .iter()
                .map(|id| Executed {
                    level: 0,
                    outcome: account_payout(*id).outcome(),
                    success: vec![],
                    fail: vec![],
                    always: vec![],
                })
                .collect(),
            Trees::Kept(r) => {
                let mut it = r.iter();
                let mut out = Vec::new();
                while !it.as_slice().is_empty() {
                    out.push(tree(&mut it));
                }
                out
            }
            Trees::AsRun(t) => t.clone(),
        }
    }
}

/// A payment by invoiceId as kept: a payout that completed (neither held nor failed, which is
/// every payout of a batch without faults) in fixed-size fields that render back the `Payment`
/// exactly; any other, the `Payment` itself.
#[derive(Debug, Clone)]
pub enum Paid {
    Fixed(FixedPaid),
    Whole(Box<Payment>),
}

#[derive(Debug, Clone)]
pub struct FixedPaid {
    payment_id: [u8; 16],
    /// Provider times, in nanoseconds (`done_at` is never 0, which lets `Paid` keep its
    /// variant there: 40 bytes, not 48).
    accepted_at: u64,
    done_at: std::num::NonZeroU64,
    card: Option<Box<CardPaid>>,
}

impl Paid {
    pub fn new(p: &Payment) -> Paid {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).ok();
        let fixed = (|| {
            if p.error.is_some() || p.held_until.is_some() {
                return None;
            }
            Some(FixedPaid {
                payment_id: compact::uuid(&p.payment_id)?,
                accepted_at: ns(p.accepted_at)?,
                done_at: ns(p.done_at).and_then(std::num::NonZeroU64::new)?,
                card: match p.data.get("finance") {
                    Some(_) => Some(Box::new(CardPaid::of(&p.data)?)),
                    None => None,
                },
            })
        })();
        match fixed {
            Some(f) if f.payment(&p.invoice_id) == *p => Paid::Fixed(f),
            _ => Paid::Whole(Box::new(p.clone())),
        }
    }

    /// Whether it was paid (no error): the 3011 guard.
    pub fn succeeded(&self) -> bool {
        match self {
            Paid::Fixed(_) => true,
            Paid::Whole(p) => p.error.is_none(),
        }
    }

    /// The payment it stands for, kept under `invoice_id`.
    pub fn payment(&self, invoice_id: &str) -> Payment {
        match self {
            Paid::Fixed(f) => f.payment(invoice_id),
            Paid::Whole(p) => (**p).clone(),
        }
    }
}

impl FixedPaid {
    fn payment(&self, invoice_id: &str) -> Payment {
        Payment {
            payment_id: compact::uuid_text(&self.payment_id),
            invoice_id: invoice_id.to_string(),
            accepted_at: Duration::from_nanos(self.accepted_at),
            done_at: Duration::from_nanos(self.done_at.get()),
            error: None,
            held_until: None,
            data: data_of(&self.payment_id, self.card.as_deref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ok: bool, v: Value) -> Outcome {
        Outcome {
            ok,
            result: tree::compact(&v),
        }
    }

    fn pid() -> String {
        crate::keys::task_key("paysend-sandbox/1", "inv")
    }

    #[test]
    fn a_payout_an_error_code_and_a_hold_are_kept_as_fields_and_render_back_the_same() {
        let card = payout_data(&pid(), Some((serde_json::from_str("10.5").unwrap(), "EUR")));
        for (o, fixed) in [
            (
                outcome(
                    true,
                    json!({"status": "Success", "code": 0, "data": payout_data(&pid(), None)}),
                ),
                true,
            ),
            (
                outcome(true, json!({"status": "Success", "code": 0, "data": card})),
                true,
            ),
            (
                outcome(
                    false,
                    json!({"status": "Error", "code": 5, "comment": ON_HOLD, "data": card}),
                ),
                true,
            ),
            (
                outcome(
                    false,
                    json!({"status": "Error", "code": 3011, "comment": codes::comment(3011)}),
                ),
                true,
            ),
            // Not the comment the code has: kept as JSON.
            (
                outcome(
                    false,
                    json!({"status": "Error", "code": 3011, "comment": "other"}),
                ),
                false,
            ),
            (
                outcome(
                    true,
                    json!({"status": "Success", "code": 0, "data": {"balances": {"EUR": 1}}}),
                ),
                false,
            ),
            (
                outcome(
                    true,
                    json!({"status": "Success", "code": 0, "data": {"traceId": "x", "paymentId": pid()}}),
                ),
                false,
            ),
        ] {
            let kept = TaskResult::new(&o);
            assert_eq!(
                !matches!(kept, TaskResult::Json { .. }),
                fixed,
                "{}",
                o.result.get()
            );
            assert_eq!(kept.outcome().unwrap(), o);
        }
    }

    #[test]
    fn a_kept_tree_gives_back_the_executed_tree() {
        let tasks = json!([
            {"type": "a", "success": [{"type": "s"}, {"type": "s2"}], "fail": [{"type": "f"}], "always": [{"type": "x", "success": [{"type": "y"}]}]},
            {"type": "b"}
        ]);
        let mut n = 0;
        let tree = tree::run(tasks.as_array().unwrap(), &mut |ty, _, _| {
            n += 1;
            match ty {
                "b" => outcome(
                    false,
                    json!({"status": "Error", "code": 1000, "comment": codes::comment(1000)}),
                ),
                _ => outcome(
                    true,
                    json!({"status": "Success", "code": 0, "data": {"n": n}}),
                ),
            }
        });
        let kept = Trees::new(&tree);
        assert!(matches!(kept, Trees::Kept(_)));
        assert_eq!(kept.executed(), tree);
        assert!(matches!(Trees::new(&[]), Trees::Payouts(_)));
    }

    #[test]
    fn what_is_kept_per_payout_stays_small() {
        assert!(
            std::mem::size_of::<Paid>() <= 64,
            "{}",
            std::mem::size_of::<Paid>()
        );
        assert!(
            std::mem::size_of::<Ran>() <= 40,
            "{}",
            std::mem::size_of::<Ran>()
        );
    }

    #[test]
    fn a_request_of_account_payouts_is_kept_as_their_payment_ids() {
        let payout = |n: u32| {
            let id = crate::keys::task_key("paysend-sandbox/1", &n.to_string());
            outcome(
                true,
                json!({"status": "Success", "code": 0, "data": payout_data(&id, None)}),
            )
        };
        let tasks = json!([{"type": "a"}, {"type": "b"}]);
        let mut n = 0;
        let tree = tree::run(tasks.as_array().unwrap(), &mut |_, _, _| {
            n += 1;
            payout(n)
        });
        let kept = Trees::new(&tree);
        assert!(matches!(kept, Trees::Payouts(_)), "{kept:?}");
        assert_eq!(kept.executed(), tree);
        let with_child = json!([{"type": "a", "success": [{"type": "b"}]}]);
        let tree = tree::run(with_child.as_array().unwrap(), &mut |_, _, _| payout(9));
        assert!(matches!(Trees::new(&tree), Trees::Kept(_)));
    }

    #[test]
    fn a_payment_is_kept_as_fields_and_gives_back_the_same_payment() {
        let mut p = Payment {
            payment_id: pid(),
            invoice_id: "inv-1".into(),
            accepted_at: Duration::new(3, 123_456_789),
            done_at: Duration::new(4, 1),
            error: None,
            held_until: None,
            data: payout_data(&pid(), Some((serde_json::from_str("1000").unwrap(), "JPY"))),
        };
        let kept = Paid::new(&p);
        assert!(matches!(kept, Paid::Fixed(_)));
        assert!(kept.succeeded());
        assert_eq!(kept.payment("inv-1"), p);
        p.held_until = Some(Duration::from_secs(3600));
        let kept = Paid::new(&p);
        assert!(
            matches!(kept, Paid::Whole(_)),
            "a held payout is kept whole"
        );
        assert!(kept.succeeded());
        assert_eq!(kept.payment("inv-1"), p);
        p.data["traceId"] = json!("other");
        let kept = Paid::new(&p);
        assert!(
            matches!(kept, Paid::Whole(_)),
            "data it cannot render is kept whole"
        );
        assert_eq!(kept.payment("inv-1"), p);
    }
}

//! What one `payrun run` will send, worked out before the operator is asked: the start line and
//! the confirm prompt name these items and amounts, not the whole batch's. For a new batch that
//! is every valid item; for a batch started before, only the items not sent yet (items sent
//! before are looked up, not resent blindly; items that ended are not sent again); for
//! `--retry-failed`, the failed items it sends again with new keys.

use super::machine::State;
use super::runner::PlannedItem;
use super::store::Record;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

/// Where an item stands before this command, as far as sending goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Nothing sent yet, or to be sent again: a backoff (same key), `--retry-failed` (new key).
    ToSend,
    /// Sent before, outcome not known yet: looked up first; resent with the same key only if
    /// the provider has no record of it.
    Awaiting,
    /// Paid, failed or reversed: nothing is sent for it.
    Ended,
}

impl Standing {
    /// `retried`: chosen by `--retry-failed`, so sent again whatever it ended as.
    pub fn of(state: &State, retried: bool) -> Standing {
        match state {
            _ if retried => Standing::ToSend,
            State::Planned | State::RetryAt { .. } => Standing::ToSend,
            State::Sending { .. }
            | State::InDoubt { .. }
            | State::Submitted { .. }
            | State::NeedsReview { .. } => Standing::Awaiting,
            State::Succeeded { .. }
            | State::Failed { .. }
            | State::Reversed { .. }
            | State::Skipped { .. } => Standing::Ended,
            // Only delayed steps are scheduled; an item never is.
            State::Scheduled { .. } => Standing::Awaiting,
        }
    }
}

/// What this command will do with the batch's items.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outlook {
    /// No store yet: every valid item is sent.
    pub new_batch: bool,
    pub to_send: usize,
    /// Of `to_send`: failed items sent again with a new key (`--retry-failed`).
    pub retried: usize,
    /// Per currency: (amount, payouts) of the items to send.
    pub amounts: BTreeMap<String, (Decimal, usize)>,
    pub awaiting: usize,
    /// Ended before, by how: paid, failed, reversed.
    pub paid: usize,
    pub failed: usize,
    pub reversed: usize,
    /// Delayed steps not ended (or not made yet for items that ended).
    pub steps_open: usize,
    pub steps_failed: usize,
}

/// What a started batch's store says, taken one record at a time (`add`): how each item's
/// record stands (one byte an item) and how its delayed steps stand. Enough for the outlook of
/// a million-item batch without holding its records.
#[derive(Debug, Default)]
pub struct Stored {
    /// By store index: 0 no record; else `code` of its state.
    items: Vec<u8>,
    steps: usize,
    steps_open: usize,
    steps_failed: usize,
}

const PAID: u8 = 3;
const FAILED: u8 = 4;
const REVERSED: u8 = 5;

/// An item record's state as `Stored` keeps it.
fn code(s: &State) -> u8 {
    match s {
        State::Planned | State::RetryAt { .. } => 1,
        State::Succeeded { .. } => PAID,
        State::Failed { .. } => FAILED,
        State::Reversed { .. } => REVERSED,
        State::Skipped { .. } => 6,
        // Sent before (or, for a step, scheduled): awaiting.
        _ => 2,
    }
}

impl Stored {
    /// Takes the record stored at `index`.
    pub fn add(&mut self, index: u64, r: &Record) {
        if r.step.is_some() {
            self.steps += 1;
            match r.state {
                State::Failed { .. } | State::Reversed { .. } => self.steps_failed += 1,
                ref s if !s.is_final() => self.steps_open += 1,
                _ => {}
            }
            return;
        }
        let i = index as usize;
        if self.items.len() <= i {
            self.items.resize(i + 1, 0);
        }
        self.items[i] = code(&r.state);
    }

    /// How the record at `index` stands (None: it has none), `retried` by `--retry-failed`.
    fn standing(&self, index: usize, retried: bool) -> Option<Standing> {
        match self.items.get(index).copied().unwrap_or(0) {
            0 => None,
            _ if retried => Some(Standing::ToSend),
            1 => Some(Standing::ToSend),
            2 => Some(Standing::Awaiting),
            _ => Some(Standing::Ended),
        }
    }
}

impl Outlook {
    /// `stored`: the store's records (None for a new batch); `retried`: the items
    /// `--retry-failed` sends again; `steps_per_item`: the flow's delayed steps.
    pub fn of(
        items: &[PlannedItem],
        stored: Option<&[(u64, Record)]>,
        retried: &HashMap<String, u32>,
        steps_per_item: usize,
    ) -> Outlook {
        let stored = stored.map(|records| {
            let mut s = Stored::default();
            for (i, r) in records {
                s.add(*i, r);
            }
            s
        });
        Outlook::of_stored(items, stored.as_ref(), retried, steps_per_item)
    }

    /// As `of`, from what the store says taken record by record. An item's record is the one
    /// at its position (a started batch's items are checked to be the ones it started with,
    /// in their places, before this is asked).
    pub fn of_stored(
        items: &[PlannedItem],
        stored: Option<&Stored>,
        retried: &HashMap<String, u32>,
        steps_per_item: usize,
    ) -> Outlook {
        let mut o = Outlook {
            new_batch: stored.is_none(),
            ..Outlook::default()
        };
        let none = Stored::default();
        let stored = stored.unwrap_or(&none);
        let mut ended = 0;
        for (i, it) in items.iter().enumerate() {
            let again = retried.contains_key(&it.id);
            match stored.standing(i, again).unwrap_or(Standing::ToSend) {
                Standing::ToSend => {
                    o.to_send += 1;
                    o.retried += usize::from(again);
                    for (amount, currency) in &it.money {
                        let e = o.amounts.entry(currency.to_string()).or_default();
                        e.0 += Decimal::from_str(amount).unwrap_or_default();
                        e.1 += 1;
                    }
                }
                Standing::Awaiting => o.awaiting += 1,
                Standing::Ended => {
                    ended += 1;
                    match stored.items[i] {
                        PAID => o.paid += 1,
                        REVERSED => o.reversed += 1,
                        _ => o.failed += 1,
                    }
                }
            }
        }
        o.steps_open = stored.steps_open;
        o.steps_failed = stored.steps_failed;
        // The steps of an item that ended are recorded when it ends (skipped ones too); any not
        // recorded yet (a batch started by an older payrun) are still to come.
        o.steps_open += (ended * steps_per_item).saturating_sub(stored.steps);
        o
    }

    /// A batch started before with nothing left for a run to do.
    pub fn finished(&self) -> bool {
        !self.new_batch && self.to_send == 0 && self.awaiting == 0 && self.steps_open == 0
    }

    pub fn ended(&self) -> usize {
        self.paid + self.failed + self.reversed
    }

    /// The amounts to send, per currency: `EUR 1234.50 (3 payouts), JPY 5000 (1 payout)`.
    pub fn money(&self) -> String {
        self.amounts
            .iter()
            .map(|(c, (sum, n))| {
                let text = match crate::money::Currency::from_any(c) {
                    Some(cur) => {
                        let mut d = *sum;
                        d.rescale(cur.exponent().unwrap_or(0));
                        crate::plan::amount_text(cur, d.mantissa())
                    }
                    None => sum.to_string(),
                };
                format!("{c} {text} ({})", count(*n, "payout"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The line printed before anything is sent: `batch <id>: <n> items to send, <amounts>`,
    /// then, for a batch started before, what is looked up and what is not sent again.
    pub fn start_line(&self, batch: &str) -> String {
        let mut parts = Vec::new();
        if self.to_send > 0 {
            let mut send = format!("{} to send", count(self.to_send, "item"));
            if self.retried > 0 {
                send += &format!(
                    " ({} failed before, sent again with new keys)",
                    self.retried
                );
            }
            if !self.amounts.is_empty() {
                send += &format!(", {}", self.money());
            }
            parts.push(send);
        } else {
            parts.push("nothing to send".to_string());
        }
        if self.awaiting > 0 {
            parts.push(format!(
                "{} sent before and awaiting their outcome (looked up, never resent blindly)",
                self.awaiting
            ));
        }
        if self.ended() > 0 {
            parts.push(format!(
                "{} ended before ({}), not sent again",
                self.ended(),
                self.ended_by_how()
            ));
        }
        if self.steps_open > 0 {
            parts.push(format!(
                "{} still to run",
                count(self.steps_open, "delayed step")
            ));
        }
        format!("batch {batch}: {}", parts.join("; "))
    }

    /// `40 paid, 2 failed`.
    pub fn ended_by_how(&self) -> String {
        [
            (self.paid, "paid"),
            (self.failed, "failed"),
            (self.reversed, "reversed"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, how)| format!("{n} {how}"))
        .collect::<Vec<_>>()
        .join(", ")
    }

    /// The confirm question: what is paid, or, with nothing new to pay, what is continued.
    pub fn prompt(&self, batch: &str, sandbox: bool) -> String {
        let place = if sandbox { " in the sandbox" } else { "" };
        if self.to_send > 0 {
            let looked_up = if self.awaiting > 0 {
                format!(", and look up the {} sent before", self.awaiting)
            } else {
                String::new()
            };
            let money = if self.amounts.is_empty() {
                String::new()
            } else {
                format!(", {}", self.money())
            };
            format!(
                "pay these {}{money}{looked_up}{place}? [y/N] ",
                count(self.to_send, "item")
            )
        } else {
            let mut what = Vec::new();
            if self.awaiting > 0 {
                what.push(format!("look up the {} sent before", self.awaiting));
            }
            if self.steps_open > 0 {
                what.push(format!("run {}", count(self.steps_open, "delayed step")));
            }
            format!("continue batch {batch}: {}{place}? [y/N] ", what.join(", "))
        }
    }

    /// The line `run` prints for a batch with nothing left to do, on stdout, shaped like the
    /// closing line of a run.
    pub fn finished_line(&self, batch: &str) -> String {
        format!(
            "{batch}: {} items: {} paid, {} failed, 0 need review, 0 unfinished{}; nothing left to send, 0 requests",
            self.ended(),
            self.paid,
            self.failed,
            if self.reversed > 0 {
                format!(", {} reversed", self.reversed)
            } else {
                String::new()
            }
        )
    }
}

/// Whether the operator's answer to the prompt is a yes: `y` or `yes`, any case; anything
/// else, an empty line or no answer at all, is a no.
pub fn confirmed(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// `1 item`, `2 items`.
pub(crate) fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, amount: &str, currency: &str) -> PlannedItem {
        PlannedItem {
            id: id.into(),
            key: format!("k-{id}").into(),
            digest: "d".into(),
            line: 2,
            index: 0,
            offset: 0,
            money: [(amount, currency)].into_iter().collect(),
        }
    }

    fn rec(i: u64, id: &str, state: State) -> (u64, Record) {
        (
            i,
            Record {
                state,
                ..Record::planned(id, &format!("k-{id}"), "d", 2, Default::default())
            },
        )
    }

    fn failed(code: &str) -> State {
        State::Failed {
            code: code.into(),
            description: String::new(),
            at: 1,
        }
    }

    fn paid() -> State {
        State::Succeeded {
            ids: Default::default(),
            at: 1,
        }
    }

    #[test]
    fn each_state_stands_for_sent_looked_up_or_ended() {
        let cases = [
            (State::Planned, false, Standing::ToSend),
            (
                State::RetryAt {
                    attempt: 1,
                    at: 5,
                    class: crate::execute::backoff::ErrorClass::Network,
                },
                false,
                Standing::ToSend,
            ),
            (
                State::Sending {
                    attempt: 1,
                    since: 1,
                },
                false,
                Standing::Awaiting,
            ),
            (
                State::InDoubt {
                    attempt: 1,
                    since: 1,
                    at: 2,
                    lookups: 0,
                    unlisted: 0,
                },
                false,
                Standing::Awaiting,
            ),
            (
                State::Submitted {
                    attempt: 1,
                    reference: "g".into(),
                    since: 1,
                    poll_at: 2,
                    polls: 0,
                },
                false,
                Standing::Awaiting,
            ),
            (paid(), false, Standing::Ended),
            (failed("4006"), false, Standing::Ended),
            (failed("4010"), true, Standing::ToSend),
        ];
        for (state, retried, want) in cases {
            assert_eq!(Standing::of(&state, retried), want, "{state:?}");
        }
    }

    #[test]
    fn a_new_batch_sends_every_item_with_its_totals_per_currency() {
        let items = [
            item("a", "10.50", "EUR"),
            item("b", "0.5", "EUR"),
            item("c", "5000", "JPY"),
        ];
        let o = Outlook::of(&items, None, &HashMap::new(), 0);
        assert_eq!(o.to_send, 3);
        assert!(!o.finished());
        assert_eq!(
            o.start_line("b1"),
            "batch b1: 3 items to send, EUR 11.00 (2 payouts), JPY 5000 (1 payout)"
        );
        assert_eq!(
            o.prompt("b1", true),
            "pay these 3 items, EUR 11.00 (2 payouts), JPY 5000 (1 payout) in the sandbox? [y/N] "
        );
    }

    #[test]
    fn retry_failed_counts_only_the_items_it_resends() {
        let items = [
            item("OK1", "12.34", "EUR"),
            item("CANCELLED", "4010", "EUR"),
            item("RESTRICTED", "4006", "EUR"),
            item("OK2", "56.78", "EUR"),
        ];
        let stored = [
            rec(0, "OK1", paid()),
            rec(1, "CANCELLED", failed("4010")),
            rec(2, "RESTRICTED", failed("4006")),
            rec(3, "OK2", paid()),
        ];
        let retried = HashMap::from([("CANCELLED".to_string(), 2)]);
        let o = Outlook::of(&items, Some(&stored), &retried, 0);
        assert_eq!((o.to_send, o.retried, o.paid, o.failed), (1, 1, 2, 1));
        assert_eq!(
            o.start_line("t"),
            "batch t: 1 item to send (1 failed before, sent again with new keys), EUR 4010.00 (1 payout); 3 ended before (2 paid, 1 failed), not sent again"
        );
        assert!(
            o.prompt("t", false)
                .starts_with("pay these 1 item, EUR 4010.00 (1 payout)? ")
        );
    }

    #[test]
    fn items_sent_before_are_shown_apart_from_those_to_send() {
        let items = [
            item("a", "1.00", "EUR"),
            item("b", "2.00", "EUR"),
            item("c", "3.00", "GBP"),
            item("d", "4.00", "EUR"),
        ];
        // `d` has no record: never touched.
        let stored = [
            rec(0, "a", paid()),
            rec(
                1,
                "b",
                State::InDoubt {
                    attempt: 1,
                    since: 1,
                    at: 2,
                    lookups: 0,
                    unlisted: 0,
                },
            ),
            rec(2, "c", State::Planned),
        ];
        let o = Outlook::of(&items, Some(&stored), &HashMap::new(), 0);
        assert_eq!(
            o.start_line("x"),
            "batch x: 2 items to send, EUR 4.00 (1 payout), GBP 3.00 (1 payout); 1 sent before and awaiting their outcome (looked up, never resent blindly); 1 ended before (1 paid), not sent again"
        );
        assert_eq!(
            o.prompt("x", false),
            "pay these 2 items, EUR 4.00 (1 payout), GBP 3.00 (1 payout), and look up the 1 sent before? [y/N] "
        );
    }

    #[test]
    fn a_batch_whose_items_all_ended_is_finished_unless_steps_are_open() {
        let items = [item("a", "1.00", "EUR"), item("b", "2.00", "EUR")];
        let stored = [rec(0, "a", paid()), rec(1, "b", failed("4006"))];
        let o = Outlook::of(&items, Some(&stored), &HashMap::new(), 0);
        assert!(o.finished());
        assert_eq!(
            o.finished_line("x"),
            "x: 2 items: 1 paid, 1 failed, 0 need review, 0 unfinished; nothing left to send, 0 requests"
        );
        // One delayed step per item, recorded for `a` only.
        let mut with_step = stored.to_vec();
        let mut step = rec(2, "a", State::Scheduled { at: 9 });
        step.1.step = Some("0.success.0".into());
        with_step.push(step.clone());
        let o = Outlook::of(&items, Some(&with_step), &HashMap::new(), 1);
        assert_eq!(o.steps_open, 2, "a's scheduled, b's not recorded");
        assert!(!o.finished());
        assert_eq!(
            o.prompt("x", false),
            "continue batch x: run 2 delayed steps? [y/N] "
        );
    }

    #[test]
    fn only_yes_is_a_yes() {
        for yes in ["y", "Y", "yes", "YES", " yes\n"] {
            assert!(confirmed(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "N", "yep", "y es", "ok"] {
            assert!(!confirmed(no), "{no:?}");
        }
    }
}

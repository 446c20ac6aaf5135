//! What a batch looks like from outside: counts by state, amounts per currency paid / pending /
//! failed / under review, the items in doubt or needing review, and who is running it. Built
//! from the store when no runner holds it, and from the snapshot a runner writes next to the
//! store (`<batch>.status.json`) while it runs — the store admits one process at a time.

use super::machine::State;
use super::store::Record;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;

/// The process running a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub started: String,
    /// When the process started, in clock ticks since the machine booted (Linux: field 22 of
    /// `/proc/<pid>/stat`): a live pid with another start time is another process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_start: Option<u64>,
    /// The boot the process belongs to (`/proc/sys/kernel/random/boot_id`): after a restart
    /// no process of the lock's is left, whatever its pid now names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

impl Holder {
    pub fn me(started: &str) -> Holder {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".into());
        let pid = std::process::id();
        Holder {
            pid,
            host,
            started: started.to_string(),
            process_start: super::lock::process_start(pid),
            boot_id: super::lock::boot_id(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    pub id: String,
    pub line: u64,
    pub code: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub batch: String,
    pub items: usize,
    /// State name → items.
    pub states: BTreeMap<String, usize>,
    /// Currency → bucket (paid, pending, failed, review) → exact decimal.
    pub amounts: BTreeMap<String, BTreeMap<String, String>>,
    pub in_doubt: Vec<String>,
    pub needs_review: Vec<Problem>,
    pub failed: Vec<Problem>,
    /// Items paid, then reported failed or returned by the provider: money moved back.
    #[serde(default)]
    pub reversed: Vec<Problem>,
    /// Items changed or added after the batch started, accepted by an operator
    /// (`--accept-changes`): "<id> (line N): <when> accepted: <reason>".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_changes: Vec<String>,
    /// Delayed steps (requests payrun sends after a payout), state name → steps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, usize>,
    /// Set while a runner holds the batch.
    pub running: Option<Holder>,
    pub updated: String,
}

pub fn state_name(s: &State) -> &'static str {
    match s {
        State::Planned => "planned",
        State::Scheduled { .. } => "scheduled",
        State::Skipped { .. } => "skipped",
        State::Sending { .. } => "sending",
        State::RetryAt { .. } => "retry_wait",
        State::Submitted { .. } => "submitted",
        State::InDoubt { .. } => "in_doubt",
        State::Succeeded { .. } => "paid",
        State::Failed { .. } => "failed",
        State::NeedsReview { .. } => "needs_review",
        State::Reversed { .. } => "reversed",
    }
}

/// An item's state: one that pays nothing (no payout in its flow, e.g. a reconciliation or a
/// capture) and succeeded is `done`, not `paid`.
pub fn item_state_name(r: &Record) -> &'static str {
    match &r.state {
        State::Succeeded { .. } if r.money.is_empty() => "done",
        s => state_name(s),
    }
}

/// A delayed step's state: a step that got its answer is `done`, not `paid` (most steps pay
/// nothing).
pub fn step_state_name(s: &State) -> &'static str {
    match s {
        State::Succeeded { .. } => "done",
        s => state_name(s),
    }
}

fn bucket(s: &State) -> &'static str {
    match s {
        State::Succeeded { .. } => "paid",
        State::Failed { .. } => "failed",
        State::NeedsReview { .. } => "review",
        State::Reversed { .. } => "reversed",
        _ => "pending",
    }
}

/// At most this many problems are listed (the counts cover all).
const LIST: usize = 100;

/// A batch's status from its records.
pub fn view(batch: &str, records: &[Record], running: Option<Holder>) -> StatusView {
    let mut t = Tally::default();
    for (i, r) in records.iter().enumerate() {
        t.add(i as u64, r);
    }
    t.view(batch, running)
}

/// What the status view counts, kept up to date one record at a time: a record is `add`ed
/// when it takes a state and `remove`d (as it was) when it leaves it, so a run holding a
/// million items answers `status` without reading them (`execute::graph::Book` keeps one).
/// The lists keep the first `LIST` entries by store index, as a read of the store lists them.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    items: usize,
    states: BTreeMap<&'static str, usize>,
    steps: BTreeMap<&'static str, usize>,
    /// Currency → bucket → (sum, how many amounts it holds).
    sums: BTreeMap<String, BTreeMap<&'static str, (Decimal, usize)>>,
    in_doubt: BTreeMap<u64, String>,
    needs_review: BTreeMap<u64, Problem>,
    failed: BTreeMap<u64, Problem>,
    reversed: BTreeMap<u64, Problem>,
    accepted_changes: BTreeMap<u64, String>,
}

/// Inserts into a list kept to its first `LIST` entries.
fn listed<V>(list: &mut BTreeMap<u64, V>, index: u64, v: impl FnOnce() -> V) {
    if list.len() >= LIST && list.last_key_value().is_some_and(|(&k, _)| k < index) {
        return;
    }
    list.insert(index, v());
    if list.len() > LIST {
        list.pop_last();
    }
}

impl Tally {
    /// Items (not steps) counted.
    pub fn items(&self) -> usize {
        self.items
    }

    /// Items (not steps) in the state named `name` (`state_name`, `done` for a succeeded
    /// item that pays nothing).
    pub fn items_in(&self, name: &str) -> usize {
        self.states.get(name).copied().unwrap_or(0)
    }

    /// Steps counted.
    pub fn steps(&self) -> usize {
        self.steps.values().sum()
    }

    /// Steps in the state named `name` (`step_state_name`).
    pub fn steps_in(&self, name: &str) -> usize {
        self.steps.get(name).copied().unwrap_or(0)
    }

    /// Amounts per currency in `bucket` (`paid`, `pending`, `failed`, `review`, `reversed`).
    pub fn amounts_in(&self, bucket: &str) -> BTreeMap<String, Decimal> {
        self.sums
            .iter()
            .filter_map(|(c, b)| {
                b.get(bucket)
                    .filter(|(_, n)| *n > 0)
                    .map(|d| (c.clone(), d.0))
            })
            .collect()
    }

    /// An item never stored: planned, with its amounts pending.
    pub fn add_untouched(&mut self, money: &crate::wire::Amounts) {
        self.items += 1;
        *self.states.entry("planned").or_insert(0) += 1;
        self.move_money(money, "pending", true);
    }

    fn move_money(&mut self, money: &crate::wire::Amounts, bucket: &'static str, add: bool) {
        for (amount, currency) in money {
            let d = Decimal::from_str(amount).unwrap_or_default();
            let per = match self.sums.get_mut(currency) {
                Some(p) => p,
                None => self.sums.entry(currency.to_string()).or_default(),
            };
            let (sum, n) = per.entry(bucket).or_insert((Decimal::ZERO, 0));
            match add {
                true => {
                    *sum += d;
                    *n += 1;
                }
                false => {
                    *sum -= d;
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    /// Counts record `r`, stored at `index`.
    pub fn add(&mut self, index: u64, r: &Record) {
        match &r.step {
            Some(_) => *self.steps.entry(step_state_name(&r.state)).or_insert(0) += 1,
            None => {
                self.items += 1;
                *self.states.entry(item_state_name(r)).or_insert(0) += 1;
            }
        }
        if let Some(note) = &r.accepted {
            listed(&mut self.accepted_changes, index, || {
                format!("{} (line {}): {note}", r.id, r.line)
            });
        }
        self.move_money(&r.money, bucket(&r.state), true);
        let id = || match &r.step {
            Some(path) => format!("{} (step {path})", r.id),
            None => r.id.clone(),
        };
        let problem = |code: &String, description: &String| Problem {
            id: id(),
            line: r.line,
            code: code.clone(),
            description: description.clone(),
        };
        match &r.state {
            State::InDoubt { .. } => listed(&mut self.in_doubt, index, id),
            State::NeedsReview {
                code, description, ..
            } => listed(&mut self.needs_review, index, || problem(code, description)),
            State::Failed {
                code, description, ..
            } => listed(&mut self.failed, index, || problem(code, description)),
            State::Reversed {
                code, description, ..
            } => listed(&mut self.reversed, index, || problem(code, description)),
            _ => {}
        }
    }

    /// Stops counting record `r` (as it was when it was added), stored at `index`.
    pub fn remove(&mut self, index: u64, r: &Record) {
        let counts = match &r.step {
            Some(_) => self.steps.get_mut(step_state_name(&r.state)),
            None => {
                self.items = self.items.saturating_sub(1);
                self.states.get_mut(item_state_name(r))
            }
        };
        if let Some(n) = counts {
            *n = n.saturating_sub(1);
        }
        if r.accepted.is_some() {
            self.accepted_changes.remove(&index);
        }
        self.move_money(&r.money, bucket(&r.state), false);
        match &r.state {
            State::InDoubt { .. } => {
                self.in_doubt.remove(&index);
            }
            State::NeedsReview { .. } => {
                self.needs_review.remove(&index);
            }
            State::Failed { .. } => {
                self.failed.remove(&index);
            }
            State::Reversed { .. } => {
                self.reversed.remove(&index);
            }
            _ => {}
        }
    }

    /// Lists the records in doubt and under review afresh from `open` (every record not final,
    /// by store index): a list kept to its first entries runs short as they settle.
    pub fn relist<'r>(&mut self, open: impl Iterator<Item = (u64, &'r Record)>) {
        let mut t = Tally::default();
        for (i, r) in open {
            if matches!(r.state, State::InDoubt { .. } | State::NeedsReview { .. }) {
                t.add(i, r);
            }
        }
        self.in_doubt = t.in_doubt;
        self.needs_review = t.needs_review;
    }

    /// The status view of batch `batch`.
    pub fn view(&self, batch: &str, running: Option<Holder>) -> StatusView {
        let named = |m: &BTreeMap<&'static str, usize>| -> BTreeMap<String, usize> {
            m.iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.to_string(), *n))
                .collect()
        };
        let amounts = self
            .sums
            .iter()
            .map(|(c, b)| {
                (
                    c.clone(),
                    b.iter()
                        .filter(|(_, (_, n))| *n > 0)
                        .map(|(k, (v, _))| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<String, String>>(),
                )
            })
            .filter(|(_, b): &(String, BTreeMap<String, String>)| !b.is_empty())
            .collect();
        StatusView {
            batch: batch.to_string(),
            items: self.items,
            states: named(&self.states),
            steps: named(&self.steps),
            amounts,
            in_doubt: self.in_doubt.values().cloned().collect(),
            needs_review: self.needs_review.values().cloned().collect(),
            failed: self.failed.values().cloned().collect(),
            reversed: self.reversed.values().cloned().collect(),
            accepted_changes: self.accepted_changes.values().cloned().collect(),
            running,
            updated: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

pub fn render(v: &StatusView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "batch {}: {} items (as of {})",
        v.batch, v.items, v.updated
    );
    match &v.running {
        Some(h) => {
            let _ = writeln!(
                out,
                "running: pid {} on {} since {}",
                h.pid, h.host, h.started
            );
        }
        None => {
            let _ = writeln!(out, "not running");
        }
    }
    let states: Vec<String> = v.states.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(out, "states: {}", states.join(", "));
    if !v.steps.is_empty() {
        let steps: Vec<String> = v.steps.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "delayed steps: {}", steps.join(", "));
    }
    for (c, b) in &v.amounts {
        let parts: Vec<String> = ["paid", "pending", "failed", "review", "reversed"]
            .iter()
            .filter_map(|k| b.get(*k).map(|a| format!("{k} {a}")))
            .collect();
        let _ = writeln!(out, "{c}: {}", parts.join(", "));
    }
    if !v.in_doubt.is_empty() {
        let _ = writeln!(
            out,
            "in doubt (settled by lookup before anything is resent): {}",
            v.in_doubt.join(", ")
        );
    }
    for a in &v.accepted_changes {
        let _ = writeln!(out, "changed after the start, accepted: {a}");
    }
    for (title, list) in [
        ("needs review", &v.needs_review),
        ("failed", &v.failed),
        ("reversed after it was paid", &v.reversed),
    ] {
        for p in list {
            let _ = writeln!(
                out,
                "{title}: {} (line {}): {} {}",
                p.id, p.line, p.code, p.description
            );
        }
    }
    out
}

/// A spreadsheet-safe cell: a value that a spreadsheet would read as a formula gets a leading
/// apostrophe (OWASP CSV injection advice).
pub fn safe_cell(s: &str) -> String {
    match s.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{s}"),
        _ => s.to_string(),
    }
}

/// The results CSV: one row per item.
pub fn report_csv(records: &[Record]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record([
        "item_id",
        "line",
        "state",
        "payment_id",
        "global_id",
        "error_code",
        "error_description",
        "amount",
        "currency",
        "attempt",
        "idempotency_key",
        "requests",
        "first_sent_at",
        "finished_at",
        "updated_at",
        "earlier_attempts",
        "delayed_steps",
        "reference",
        "trace_id",
        "accepted_change",
    ]);
    // Delayed steps, by item: "path state [code]".
    let mut steps: std::collections::HashMap<&str, Vec<String>> = std::collections::HashMap::new();
    for r in records {
        if let Some(path) = &r.step {
            let mut detail = match &r.state {
                State::Failed { code, .. } | State::NeedsReview { code, .. } => {
                    format!(" {code}")
                }
                State::Succeeded { ids, .. } => ids
                    .get("globalId")
                    .map(|g| format!(" {g}"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            if let Some(t) = r
                .first_sent
                .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
            {
                detail.push_str(&format!(
                    " sent {}",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ));
            }
            steps
                .entry(r.id.as_str())
                .or_default()
                .push(format!("{path} {}{detail}", step_state_name(&r.state)));
        }
    }
    for r in records.iter().filter(|r| r.step.is_none()) {
        let (ids, code, desc, finished) = match &r.state {
            State::Succeeded { ids, at } => (Some(ids), "", "", Some(*at)),
            State::Failed {
                code,
                description,
                at,
            } => (None, code.as_str(), description.as_str(), Some(*at)),
            State::NeedsReview {
                code, description, ..
            } => (None, code.as_str(), description.as_str(), None),
            State::Reversed {
                ids,
                code,
                description,
                at,
                ..
            } => (Some(ids), code.as_str(), description.as_str(), Some(*at)),
            _ => (None, "", "", None),
        };
        let get = |k: &str| {
            ids.and_then(|m| m.get(k))
                .map(str::to_string)
                .unwrap_or_default()
        };
        let (amount, currency) = r
            .money
            .first()
            .map(|(a, c)| (a.to_string(), c.to_string()))
            .unwrap_or_default();
        let time = |ms: Option<u64>| {
            ms.filter(|&ms| ms > 0)
                .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default()
        };
        let earlier: Vec<String> = r
            .earlier
            .iter()
            .map(|e| format!("{} {} {}", e.key, e.code, time(Some(e.at))))
            .collect();
        let row = [
            r.id.clone(),
            r.line.to_string(),
            item_state_name(r).to_string(),
            get("paymentId"),
            get("globalId"),
            code.to_string(),
            desc.to_string(),
            amount,
            currency,
            r.attempt.to_string(),
            r.key.clone(),
            r.requests.to_string(),
            time(r.first_sent),
            time(finished),
            time(Some(r.updated)),
            earlier.join("; "),
            steps
                .get(r.id.as_str())
                .map(|s| s.join("; "))
                .unwrap_or_default(),
            r.state
                .reference()
                .map_or_else(|| get("responseid"), str::to_string),
            r.trace.clone().unwrap_or_default(),
            r.accepted.clone().unwrap_or_default(),
        ];
        let _ = w.write_record(row.iter().map(|c| safe_cell(c)));
    }
    w.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, state: State, amount: &str) -> Record {
        Record {
            state,
            requests: 1,
            ..Record::planned(
                id,
                &format!("k-{id}"),
                "d",
                2,
                [(amount, "EUR")].into_iter().collect(),
            )
        }
    }

    #[test]
    fn amounts_are_summed_per_currency_and_outcome() {
        let records = vec![
            rec(
                "a",
                State::Succeeded {
                    ids: Default::default(),
                    at: 1,
                },
                "10.50",
            ),
            rec(
                "b",
                State::Succeeded {
                    ids: Default::default(),
                    at: 1,
                },
                "0.50",
            ),
            rec(
                "c",
                State::Failed {
                    code: "4006".into(),
                    description: "x".into(),
                    at: 1,
                },
                "3",
            ),
            rec(
                "d",
                State::InDoubt {
                    attempt: 1,
                    since: 0,
                    at: 0,
                    lookups: 0,
                    unlisted: 0,
                },
                "7",
            ),
        ];
        let v = view("b1", &records, None);
        assert_eq!(v.amounts["EUR"]["paid"], "11.00");
        assert_eq!(v.amounts["EUR"]["failed"], "3");
        assert_eq!(v.amounts["EUR"]["pending"], "7");
        assert_eq!(v.in_doubt, vec!["d"]);
        assert_eq!(v.failed[0].code, "4006");
        assert_eq!(v.states["paid"], 2);
    }

    #[test]
    fn report_cells_that_look_like_formulas_are_neutralised() {
        assert_eq!(safe_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(safe_cell("-5"), "'-5");
        assert_eq!(safe_cell("E001"), "E001");
        let csv = String::from_utf8(report_csv(&[rec("=cmd", State::Planned, "1")])).unwrap();
        assert!(csv.contains("'=cmd"), "{csv}");
    }
}

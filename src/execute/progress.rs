//! Progress on stderr while a batch runs. On a terminal: a bar with done / in flight / awaiting
//! an outcome / failed / under review, the amounts paid per currency and the rate. Otherwise one
//! plain line per item that reaches an end or needs review — what a log collector wants — and a
//! closing line with the amounts. While the provider pushes back (`super::pace`), the pace it is
//! sent at: in the bar's message, or as a plain line at most every `PACE_EVERY`.

use super::machine::State;
use super::pace::{Pace, per_second};
use super::store::Record;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::str::FromStr;

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    reported: HashSet<usize>,
    /// Amounts paid per currency, this run and before.
    paid: BTreeMap<String, Decimal>,
    started: std::time::Instant,
    /// Items settled by this run (for the rate).
    settled_now: u64,
    /// What the bar says about the pace while it is below the ceiling.
    pace_note: Option<String>,
    /// When a plain line last said it.
    pace_said: Option<std::time::Instant>,
}

/// Plain lines about the pace come at most this often.
const PACE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Progress {
    /// Counts items settled before this run without announcing them again.
    pub fn new(recs: &[Record]) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(
                recs.iter().filter(|r| r.step.is_none()).count() as u64
            );
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} done · {msg}")
            {
                b.set_style(style);
            }
            b
        });
        let mut p = Progress {
            bar,
            reported: HashSet::new(),
            paid: BTreeMap::new(),
            started: std::time::Instant::now(),
            settled_now: 0,
            pace_note: None,
            pace_said: None,
        };
        for (i, r) in recs.iter().enumerate() {
            if r.step.is_some() {
                continue;
            }
            if r.state.is_final() || matches!(r.state, State::NeedsReview { .. }) {
                p.reported.insert(i);
                if r.state.is_final()
                    && let Some(b) = &p.bar
                {
                    b.inc(1);
                }
                p.count_paid(r);
            }
        }
        p
    }

    fn count_paid(&mut self, r: &Record) {
        if matches!(r.state, State::Succeeded { .. }) {
            for (amount, currency) in &r.money {
                *self.paid.entry(currency.clone()).or_default() +=
                    Decimal::from_str(amount).unwrap_or_default();
            }
        }
    }

    fn amounts(&self) -> String {
        if self.paid.is_empty() {
            return "nothing paid yet".to_string();
        }
        let parts: Vec<String> = self.paid.iter().map(|(c, a)| format!("{c} {a}")).collect();
        format!("{} paid", parts.join(", "))
    }

    /// Says that the provider pushes back and how fast payrun sends while the pace is below the
    /// ceiling (a plain line at most every `PACE_EVERY`), and once when it is back up.
    pub fn pace(&mut self, pace: &Pace) {
        let note = pace.below_ceiling().then(|| {
            format!(
                "provider pushing back: sending at {}/s of {}/s (busy answers: {})",
                per_second(pace.rate()),
                per_second(pace.ceiling()),
                pace.pushbacks()
            )
        });
        if self.bar.is_none() {
            let line = match (&note, &self.pace_note) {
                (Some(n), _) if self.pace_said.is_none_or(|t| t.elapsed() >= PACE_EVERY) => {
                    self.pace_said = Some(std::time::Instant::now());
                    Some(n.clone())
                }
                (None, Some(_)) => Some(format!(
                    "provider pace back at {}/s (busy answers: {})",
                    per_second(pace.ceiling()),
                    pace.pushbacks()
                )),
                _ => None,
            };
            if let Some(line) = line {
                crate::out::err_bytes(format!("{line}\n").as_bytes());
            }
        }
        self.pace_note = note;
    }

    /// Reports the items among `changed` that just reached an end or review, and refreshes the
    /// bar. `in_flight` is how many items have a request out.
    pub fn update(&mut self, recs: &[Record], changed: &[usize], in_flight: usize) {
        use std::fmt::Write as _;
        // Plain lines go out in one write per round, not one per item.
        let mut lines = String::new();
        for &i in changed {
            let r = &recs[i];
            if let Some(path) = &r.step {
                // Delayed steps are reported as lines of their own, not counted as items.
                let what = match &r.state {
                    State::Succeeded { .. } => Some("done".to_string()),
                    State::Failed {
                        code, description, ..
                    } => Some(format!("failed: {code} {description}")),
                    State::Skipped { reason, .. } => Some(format!("skipped ({reason})")),
                    _ => None,
                };
                if let Some(what) = what
                    && self.bar.is_none()
                {
                    let _ = writeln!(lines, "{} step {path} {what}", r.id);
                }
                continue;
            }
            let line = match &r.state {
                State::Succeeded { ids, .. } => Some(format!(
                    "{} {}{}",
                    r.id,
                    super::status::item_state_name(r),
                    ids.get("paymentId")
                        .map(|p| format!(" (paymentId {p})"))
                        .unwrap_or_default()
                )),
                State::Failed {
                    code, description, ..
                } => Some(format!("{} failed: {code} {description}", r.id)),
                State::NeedsReview {
                    code, description, ..
                } => Some(format!("{} needs review: {code} {description}", r.id)),
                State::Reversed {
                    code, description, ..
                } => Some(format!(
                    "{} REVERSED after it was paid: {code} {description}",
                    r.id
                )),
                _ => None,
            };
            let reversed = matches!(r.state, State::Reversed { .. });
            if let Some(line) = line
                && (self.reported.insert(i) || reversed)
            {
                self.settled_now += 1;
                self.count_paid(r);
                match &self.bar {
                    // Final states count as done; review is shown in the message.
                    Some(b) => {
                        if r.state.is_final() {
                            b.inc(1);
                        }
                    }
                    None => {
                        let _ = writeln!(lines, "{line}");
                    }
                }
            }
        }
        if !lines.is_empty() {
            crate::out::err_bytes(lines.as_bytes());
        }
        if let Some(b) = &self.bar
            && !changed.is_empty()
        {
            let count = |f: fn(&State) -> bool| {
                recs.iter()
                    .filter(|r| r.step.is_none() && f(&r.state))
                    .count()
            };
            let awaiting = count(|s| matches!(s, State::Submitted { .. } | State::InDoubt { .. }));
            let failed = count(|s| matches!(s, State::Failed { .. }));
            let review = count(|s| matches!(s, State::NeedsReview { .. }));
            b.set_message(format!(
                "{in_flight} in flight · {awaiting} awaiting outcome · {failed} failed · {review} review · {} · {}{}",
                self.amounts(),
                self.rate(),
                self.pace_note
                    .as_ref()
                    .map(|n| format!(" · {n}"))
                    .unwrap_or_default()
            ));
        }
    }

    fn rate(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        format!("{:.1} items/s", self.settled_now as f64 / secs)
    }

    pub fn finish(&self, recs: &[Record]) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let _ = recs;
        eprintln!("{} ({} this run)", self.amounts(), self.rate());
    }
}

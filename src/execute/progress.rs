//! Progress on stderr while a batch runs. On a terminal: a bar with done / in flight / awaiting
//! an outcome / failed / under review, the amounts paid per currency and the rate. Otherwise one
//! plain line per item that reaches an end or needs review — what a log collector wants — and a
//! closing line with the amounts. While nothing is in flight and the run only waits (a
//! propagation delay, a backoff, a notification deadline, a delayed step), it says what for and
//! until when: in the bar's message, or a plain line at most every few seconds. While the provider
//! pushes back (`super::pace`), the pace it is sent at: in the bar's message, or as a plain line
//! at most every `PACE_EVERY`.

use super::machine::{Millis, State};
use super::outlook::count;
use super::pace::{Pace, per_second};
use super::status::Tally;
use super::store::Record;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A plain waiting line at most this often, and the same one again at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
const PLAIN_SAME_EVERY: Duration = Duration::from_secs(60);

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// Amounts paid per currency, this run and before.
    paid: BTreeMap<String, Decimal>,
    started: std::time::Instant,
    /// Items settled by this run (for the rate).
    settled_now: u64,
    context: WaitContext,
    /// When waiting was last looked at, and the last waiting line printed (plain output).
    waits_checked: Option<Instant>,
    waits_printed: Option<(Instant, String)>,
    /// The bar's message is a waiting one (put back to the counts once the run moves).
    bar_waiting: bool,
    /// What the bar says about the pace while it is below the ceiling.
    pace_note: Option<String>,
    /// When a plain line last said it.
    pace_said: Option<std::time::Instant>,
}

/// What the waiting display needs to know about the run beyond the records.
#[derive(Debug, Clone, Default)]
pub struct WaitContext {
    /// The provider's name for people (`Paysend Enterprise`).
    pub provider: String,
    /// The wait after acceptance before a lookup means anything (Paysend: 3 minutes).
    pub propagation: Duration,
    /// Outcomes arrive by notification (webhooks) while accepted items wait.
    pub notifications: bool,
    /// The task id of each step, by its tree path (`0.success.0` → `refund`).
    pub step_names: std::collections::HashMap<String, String>,
}

/// Plain lines about the pace come at most this often.
const PACE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Progress {
    /// Counts items settled before this run without announcing them again.
    pub fn new(tally: &Tally) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(tally.items() as u64);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} done · {msg}")
            {
                b.set_style(style);
            }
            b
        });
        let done: usize = ["paid", "done", "failed", "reversed"]
            .iter()
            .map(|s| tally.items_in(s))
            .sum();
        if let Some(b) = &bar {
            b.inc(done as u64);
        }
        Progress {
            bar,
            paid: tally.amounts_in("paid"),
            started: std::time::Instant::now(),
            settled_now: 0,
            context: WaitContext::default(),
            waits_checked: None,
            waits_printed: None,
            bar_waiting: false,
            pace_note: None,
            pace_said: None,
        }
    }

    /// Names the provider and its waits in the waiting display.
    pub fn explain(&mut self, context: WaitContext) {
        self.context = context;
    }

    fn count_paid(&mut self, r: &Record) {
        if matches!(r.state, State::Succeeded { .. }) {
            for (amount, currency) in &r.money {
                *self.paid.entry(currency.to_string()).or_default() +=
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

    /// Reports the units in `ended` (records in `held`; whether each was final before), which
    /// just took a final or review state, and refreshes the bar from `tally`. `in_flight` is how many items have a request
    /// out; `ready`: items are still to be started.
    pub fn update(
        &mut self,
        held: &HashMap<usize, Record>,
        tally: &Tally,
        ended: &[(usize, bool)],
        in_flight: usize,
        ready: bool,
    ) {
        use std::fmt::Write as _;
        // Plain lines go out in one write per round, not one per item.
        let mut lines = String::new();
        for (i, was_final) in ended {
            let Some(r) = held.get(i) else {
                continue;
            };
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
                    let name = self.context.step_names.get(path).unwrap_or(path);
                    let _ = writeln!(lines, "{} step `{name}` {what}", r.id);
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
            if let Some(line) = line {
                self.settled_now += 1;
                self.count_paid(r);
                match &self.bar {
                    // Final states count as done; review is shown in the message.
                    Some(b) => {
                        if r.state.is_final() && !was_final {
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
        // Only waiting: nothing in flight. Looked at about once a second (it reads every
        // record); a plain line goes out at most every few seconds.
        let every = Duration::from_secs(1);
        let waiting = if in_flight == 0
            && !ready
            && self.waits_checked.is_none_or(|t| t.elapsed() >= every)
        {
            self.waits_checked = Some(Instant::now());
            waiting(
                held.values(),
                super::runner::now_ms(),
                &self.context,
                self.bar.is_some(),
            )
        } else {
            None
        };
        match (&self.bar, waiting) {
            (Some(b), Some(w)) => {
                b.set_message(w);
                self.bar_waiting = true;
            }
            (None, Some(w)) => {
                let due = self.waits_printed.as_ref().is_none_or(|(at, last)| {
                    at.elapsed() >= PLAIN_SAME_EVERY || (*last != w && at.elapsed() >= PLAIN_EVERY)
                });
                if due {
                    crate::out::err_bytes(format!("{w}\n").as_bytes());
                    self.waits_printed = Some((Instant::now(), w));
                }
            }
            (Some(b), None) if !ended.is_empty() || (self.bar_waiting && in_flight > 0) => {
                let awaiting = tally.items_in("submitted") + tally.items_in("in_doubt");
                let failed = tally.items_in("failed");
                let review = tally.items_in("needs_review");
                b.set_message(format!(
                    "{in_flight} in flight · {awaiting} awaiting outcome · {failed} failed · {review} review · {} · {}{}",
                    self.amounts(),
                    self.rate(),
                    self.pace_note
                        .as_ref()
                        .map(|n| format!(" · {n}"))
                        .unwrap_or_default()
                ));
                self.bar_waiting = false;
            }
            _ => {}
        }
    }

    fn rate(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        format!("{:.1} items/s", self.settled_now as f64 / secs)
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        eprintln!("{} ({} this run)", self.amounts(), self.rate());
    }
}

/// What a run with nothing in flight is waiting for and until when (UTC, HH:MM:SS), or None
/// when it is not only waiting (an item is about to be sent, or nothing waits for a time).
/// Items under review are left out: the run does not wait for them. `relative` adds how long
/// until the first of each kind ("in 2m 10s"), for the bar, which is redrawn; a plain line
/// stays the same while the wait does.
pub fn waiting<'r>(
    recs: impl IntoIterator<Item = &'r Record>,
    now: Millis,
    ctx: &WaitContext,
    relative: bool,
) -> Option<String> {
    /// Records waiting for one reason: how many, and the first and last of their due times.
    #[derive(Default)]
    struct Wait {
        n: usize,
        first: Millis,
        last: Millis,
    }
    impl Wait {
        fn add(&mut self, at: Millis) {
            (self.first, self.last) = if self.n == 0 {
                (at, at)
            } else {
                (self.first.min(at), self.last.max(at))
            };
            self.n += 1;
        }
    }
    let (mut doubt, mut retry, mut outcome, mut steps) = (
        Wait::default(),
        Wait::default(),
        Wait::default(),
        Wait::default(),
    );
    // In doubt and not looked up yet: waiting out the propagation delay.
    let mut first_lookups = 0;
    for r in recs {
        match &r.state {
            State::Sending { .. } => return None,
            // An item not sent yet goes out as soon as there is room; a delayed step waits
            // for the payout it follows, which is counted itself.
            State::Planned if r.step.is_none() => return None,
            State::InDoubt { at, lookups, .. } => {
                doubt.add(*at);
                first_lookups += usize::from(*lookups == 0);
            }
            State::RetryAt { at, .. } => retry.add(*at),
            State::Submitted { poll_at, .. } => outcome.add(*poll_at),
            State::Scheduled { at } => steps.add(*at),
            _ => {}
        }
    }
    let when = |w: &Wait| {
        let (a, b) = (clock(w.first), clock(w.last));
        let rel = if relative {
            format!(" ({})", until(w.first, now))
        } else {
            String::new()
        };
        if a == b {
            format!("at {a}{rel}")
        } else {
            format!("from {a}{rel} to {b}")
        }
    };
    let mut parts = Vec::new();
    if doubt.n > 0 {
        let why = if first_lookups > 0 && !ctx.propagation.is_zero() {
            let who = if ctx.provider.is_empty() {
                "the provider".to_string()
            } else {
                ctx.provider.clone()
            };
            format!(" ({who}'s {} propagation delay)", span(ctx.propagation))
        } else {
            String::new()
        };
        parts.push(format!(
            "{} in doubt, looked up {}{why}",
            count(doubt.n, "item"),
            when(&doubt)
        ));
    }
    if retry.n > 0 {
        parts.push(format!(
            "{} retrying {} (backoff)",
            count(retry.n, "item"),
            when(&retry)
        ));
    }
    if outcome.n > 0 {
        parts.push(if ctx.notifications {
            format!(
                "{} awaiting notifications, looked up {} if none comes",
                count(outcome.n, "item"),
                when(&outcome)
            )
        } else {
            format!(
                "{} awaiting their outcome, asked again {}",
                count(outcome.n, "item"),
                when(&outcome)
            )
        });
    }
    if steps.n > 0 {
        parts.push(format!(
            "{} due {}",
            count(steps.n, "delayed step"),
            when(&steps)
        ));
    }
    (!parts.is_empty()).then(|| format!("waiting (UTC): {}", parts.join("; ")))
}

/// `14:03:10` (UTC).
fn clock(at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at as i64)
        .map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_else(|| "?".into())
}

/// `in 2m 10s`, or `now` once due.
fn until(at: Millis, now: Millis) -> String {
    match at.saturating_sub(now) {
        0 => "now".into(),
        ms => format!("in {}", span(Duration::from_millis(ms))),
    }
}

/// `1h 5m`, `2m 10s`, `3m`, `45s`, `180ms` (a sandbox's scaled time).
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{s}s"),
        60..=3599 if s.is_multiple_of(60) => format!("{}m", s / 60),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01 14:00:00 UTC.
    const T0: Millis = 1_796_133_600_000;
    const SEC: Millis = 1000;

    fn rec(id: &str, state: State) -> Record {
        Record {
            state,
            ..Record::planned(id, &format!("k-{id}"), "d", 2, Default::default())
        }
    }

    fn in_doubt(at: Millis, lookups: u32) -> State {
        State::InDoubt {
            attempt: 1,
            since: T0,
            at,
            lookups,
            unlisted: 0,
        }
    }

    fn retry(at: Millis) -> State {
        State::RetryAt {
            attempt: 2,
            at,
            class: super::super::backoff::ErrorClass::ServerError,
        }
    }

    fn submitted(poll_at: Millis) -> State {
        State::Submitted {
            attempt: 1,
            reference: "g".into(),
            since: T0,
            poll_at,
            polls: 0,
        }
    }

    fn paid() -> State {
        State::Succeeded {
            ids: Default::default(),
            at: T0,
        }
    }

    fn paysend() -> WaitContext {
        WaitContext {
            provider: "Paysend Enterprise".into(),
            propagation: Duration::from_secs(180),
            notifications: false,
            step_names: Default::default(),
        }
    }

    #[test]
    fn the_waiting_line_says_what_for_and_until_when() {
        let cases: Vec<(&str, Vec<State>, WaitContext, Option<&str>)> = vec![
            ("nothing open", vec![paid()], paysend(), None),
            (
                "an item about to be sent",
                vec![in_doubt(T0 + 190 * SEC, 0), State::Planned],
                paysend(),
                None,
            ),
            (
                "a request on its way",
                vec![State::Sending {
                    attempt: 1,
                    since: T0,
                }],
                paysend(),
                None,
            ),
            (
                "the propagation delay",
                vec![
                    in_doubt(T0 + 190 * SEC, 0),
                    in_doubt(T0 + 190 * SEC, 0),
                    paid(),
                ],
                paysend(),
                Some(
                    "waiting (UTC): 2 items in doubt, looked up at 14:03:10 (Paysend Enterprise's 3m propagation delay)",
                ),
            ),
            (
                "a later lookup, a backoff and a poll",
                vec![
                    in_doubt(T0 + 5 * SEC, 3),
                    retry(T0 + 62 * SEC),
                    submitted(T0 + SEC),
                    submitted(T0 + 2 * SEC),
                ],
                paysend(),
                Some(
                    "waiting (UTC): 1 item in doubt, looked up at 14:00:05; 1 item retrying at 14:01:02 (backoff); 2 items awaiting their outcome, asked again from 14:00:01 to 14:00:02",
                ),
            ),
            (
                "notifications with a deadline",
                vec![submitted(T0 + 300 * SEC)],
                WaitContext {
                    notifications: true,
                    ..paysend()
                },
                Some(
                    "waiting (UTC): 1 item awaiting notifications, looked up at 14:05:00 if none comes",
                ),
            ),
            (
                "a delayed step",
                vec![paid(), State::Scheduled { at: T0 + 30 * SEC }],
                paysend(),
                Some("waiting (UTC): 1 delayed step due at 14:00:30"),
            ),
            (
                "under review only: the run does not wait for it",
                vec![State::NeedsReview {
                    attempt: 1,
                    code: "9999".into(),
                    description: String::new(),
                    since: T0,
                    at: T0 + 600 * SEC,
                    reference: None,
                }],
                paysend(),
                None,
            ),
        ];
        for (what, states, ctx, want) in cases {
            let recs: Vec<Record> = states
                .into_iter()
                .enumerate()
                .map(|(i, s)| rec(&format!("i{i}"), s))
                .collect();
            assert_eq!(waiting(&recs, T0, &ctx, false).as_deref(), want, "{what}");
        }
    }

    #[test]
    fn a_planned_delayed_step_waits_for_its_payout_and_the_bar_counts_down() {
        let step = Record {
            step: Some("0.success.0".into()),
            ..rec("a", State::Planned)
        };
        let recs = vec![rec("a", retry(T0 + 130 * SEC)), step];
        assert_eq!(
            waiting(&recs, T0, &paysend(), true).as_deref(),
            Some("waiting (UTC): 1 item retrying at 14:02:10 (in 2m 10s) (backoff)")
        );
        assert_eq!(until(T0, T0 + 5), "now");
        assert_eq!(span(Duration::from_millis(180)), "180ms");
        assert_eq!(span(Duration::from_secs(3725)), "1h 2m");
    }
}

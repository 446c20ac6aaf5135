//! Progress on stderr while a batch runs: a bar on a terminal (done / in flight / awaiting an
//! outcome / failed / under review), and otherwise one plain line per item that reaches an end
//! or needs review — what a log collector wants.

use super::machine::State;
use super::store::Record;
use std::collections::HashSet;
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    reported: HashSet<usize>,
}

impl Progress {
    pub fn new(items: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(items as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} done · {msg} · {per_sec}",
            ) {
                b.set_style(style);
            }
            b
        });
        Progress {
            bar,
            reported: HashSet::new(),
        }
    }

    /// Counts items settled before this run without announcing them again.
    pub fn already(&mut self, recs: &[Record], settled: &[usize]) {
        for &i in settled {
            if self.reported.insert(i)
                && let Some(b) = &self.bar
                && recs[i].state.is_final()
            {
                b.inc(1);
            }
        }
    }

    /// Reports the items among `changed` that just reached an end or review, and refreshes the
    /// bar. `in_flight` is how many requests are out.
    pub fn update(&mut self, recs: &[Record], changed: &[usize], in_flight: usize) {
        for &i in changed {
            let r = &recs[i];
            let line = match &r.state {
                State::Succeeded { ids, .. } => Some(format!(
                    "{} paid{}",
                    r.id,
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
                _ => None,
            };
            if let Some(line) = line
                && self.reported.insert(i)
            {
                match &self.bar {
                    // Final states count as done; review is shown in the message.
                    Some(b) => {
                        if !matches!(r.state, State::NeedsReview { .. }) {
                            b.inc(1);
                        }
                    }
                    None => eprintln!("{line}"),
                }
            }
        }
        if let Some(b) = &self.bar {
            let count = |f: fn(&State) -> bool| recs.iter().filter(|r| f(&r.state)).count();
            let awaiting = count(|s| matches!(s, State::Submitted { .. } | State::InDoubt { .. }));
            let failed = count(|s| matches!(s, State::Failed { .. }));
            let review = count(|s| matches!(s, State::NeedsReview { .. }));
            b.set_message(format!("{in_flight} in flight · {awaiting} awaiting outcome · {failed} failed · {review} review"));
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

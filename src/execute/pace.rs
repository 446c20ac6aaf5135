//! The adaptive send rate: the manifest's `requests_per_second` is a ceiling, not a promise.
//! A provider that pushes back — Paysend's 404 "Sorry. Can't accept your request now.", a 429,
//! a Retry-After — is offered fewer requests (multiplicative decrease), and sustained clean
//! sending raises the pace again by a fixed share of the ceiling per second (additive
//! increase), back up to the ceiling.
//!
//! How it sits in the runner: governor's limiter stays as it was, fixed at the ceiling (with the
//! manifest's burst and the preflight's spent requests), and the per-endpoint limiters too; the
//! pace is one more gate every request passes just before it leaves. The gate is a plain
//! interval: below the ceiling requests leave evenly spaced at the current rate (no burst: a
//! provider that just pushed back is not offered one); at the ceiling it lets everything
//! through and governor alone decides. Rebuilding governor's limiter on every change would lose
//! its state (and the preflight's share) and race with requests already waiting on the old one;
//! a gate checked under a lock by each request as it is about to leave cannot, and sees a cut
//! the moment the answer that caused it is read. Requests already sent are not affected.
//!
//! `Pace` is pure (time comes in as the time since the run began); `Shared` is the runner's
//! handle: the clock and a lock. The runner's loop asks it (`try_claim`) as it lets each
//! request leave, and when the answer is no, how long until yes is one of the loop's timers.

use super::backoff::ErrorClass;
use super::machine::Verdict;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Each pushback multiplies the rate by this.
const CUT: f64 = 0.7;
/// Clean sending raises the rate by this share of the ceiling per second.
const RAISE: f64 = 0.05;
/// At most one cut per this window (the refusals of one burst, answers to requests that left
/// before the cut, say nothing new); nor is the rate raised during it.
const HOLD: Duration = Duration::from_millis(500);
/// At most this much of clean sending is credited between two clean answers (an idle run is
/// not "sending cleanly").
const CREDIT: Duration = Duration::from_secs(1);
/// A Retry-After pauses every new request, for this long at most (the item that carried it
/// still waits all of it: its backoff takes Retry-After as a floor). A stop waits for requests
/// held here, so an hour-long Retry-After must not hold the whole run.
const MAX_PAUSE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Pace {
    ceiling: f64,
    floor: f64,
    rate: f64,
    lowest: f64,
    cut_at: Option<Duration>,
    clean_at: Option<Duration>,
    paused_until: Duration,
    /// When the gate lets the next request go (below the ceiling).
    next: Duration,
    pushbacks: u64,
}

/// What one answer says about the pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Heard {
    /// The provider pushed back (with its Retry-After, if any).
    Pushback(Option<Duration>),
    /// Taken, or refused for reasons of its own: not a word about the rate.
    Clean,
    /// A 5xx, a failed connection, an answer lost: no evidence either way.
    Nothing,
}

impl Heard {
    /// Reads the verdicts of one request's answer (a pack's verdicts all come from it).
    pub fn of<'a>(verdicts: impl IntoIterator<Item = &'a Verdict>) -> Heard {
        let mut heard = Heard::Nothing;
        for v in verdicts {
            match v {
                Verdict::RetryLater {
                    class: ErrorClass::RateLimited,
                    retry_after,
                }
                | Verdict::RetryLater {
                    retry_after: retry_after @ Some(_),
                    ..
                } => return Heard::Pushback(*retry_after),
                Verdict::RetryLater { .. } | Verdict::InDoubt => {}
                _ => heard = Heard::Clean,
            }
        }
        heard
    }
}

impl Pace {
    /// A pace that starts at `ceiling` (requests per second, > 0).
    pub fn new(ceiling: f64) -> Pace {
        let ceiling = ceiling.max(f64::MIN_POSITIVE);
        Pace {
            ceiling,
            // 1 request/s, or a twentieth of the ceiling if that is more; never above it.
            floor: (ceiling / 20.0).max(1.0).min(ceiling),
            rate: ceiling,
            lowest: ceiling,
            cut_at: None,
            clean_at: None,
            paused_until: Duration::ZERO,
            next: Duration::ZERO,
            pushbacks: 0,
        }
    }

    /// The provider pushed back at `now`: the rate is cut (at most once per `HOLD`), and a
    /// Retry-After pauses every new request until then.
    pub fn on_pushback(&mut self, now: Duration, retry_after: Option<Duration>) {
        self.pushbacks += 1;
        if let Some(r) = retry_after {
            self.paused_until = self.paused_until.max(now + r.min(MAX_PAUSE));
        }
        if self.cut_at.is_none_or(|c| now >= c + HOLD) {
            self.rate = (self.rate * CUT).max(self.floor);
            self.lowest = self.lowest.min(self.rate);
            self.cut_at = Some(now);
        }
        self.clean_at = Some(now);
    }

    /// A request was answered without pushback at `now`: the time since the last such answer
    /// (after any cut's `HOLD`, at most `CREDIT`) raises the rate.
    pub fn on_success(&mut self, now: Duration) {
        let held = self.cut_at.map_or(Duration::ZERO, |c| c + HOLD);
        if let Some(prev) = self.clean_at {
            let from = prev.max(held).max(now.saturating_sub(CREDIT));
            let clean = now.saturating_sub(from).as_secs_f64();
            self.rate = (self.rate + RAISE * self.ceiling * clean).min(self.ceiling);
        }
        self.clean_at = Some(now);
    }

    /// What an answer said, heard at `now`.
    pub fn on_answer(&mut self, now: Duration, heard: Heard) {
        match heard {
            Heard::Pushback(retry_after) => self.on_pushback(now, retry_after),
            Heard::Clean => self.on_success(now),
            Heard::Nothing => {}
        }
    }

    /// Requests per second now.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// The lowest the rate went.
    pub fn lowest(&self) -> f64 {
        self.lowest
    }

    /// Pushback answers heard.
    pub fn pushbacks(&self) -> u64 {
        self.pushbacks
    }

    pub fn below_ceiling(&self) -> bool {
        self.rate < self.ceiling
    }

    /// The earliest the next request may leave (`now`: at once).
    pub fn not_before(&self, now: Duration) -> Duration {
        let spaced = if self.below_ceiling() {
            self.next
        } else {
            Duration::ZERO
        };
        self.paused_until.max(spaced).max(now)
    }

    /// Takes the gate for one request at `now`, or says when to ask again. Below the ceiling
    /// the next one may go an interval later; half an interval of lateness is made up (a timer
    /// wakes late), never more (no burst after a pause).
    pub fn claim(&mut self, now: Duration) -> Result<(), Duration> {
        let at = self.not_before(now);
        if at > now {
            return Err(at);
        }
        self.next = if self.below_ceiling() {
            let interval = Duration::from_secs_f64(1.0 / self.rate);
            self.next.max(now.saturating_sub(interval / 2)) + interval
        } else {
            now
        };
        Ok(())
    }
}

/// A rate as people read it: `34`, `2.5`.
pub fn per_second(rate: f64) -> String {
    if rate >= 10.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}

/// The runner's pace: shared by the requests waiting to leave and the loop that reads answers.
pub struct Shared {
    origin: Instant,
    pace: Mutex<Pace>,
}

impl Shared {
    pub fn new(ceiling: f64) -> Shared {
        Shared {
            origin: Instant::now(),
            pace: Mutex::new(Pace::new(ceiling)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pace> {
        // The pace holds no invariant a panic elsewhere could break halfway.
        self.pace.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets one more request leave now, or says how long until it may.
    pub fn try_claim(&self) -> Result<(), Duration> {
        let now = self.origin.elapsed();
        self.lock().claim(now).map_err(|at| at.saturating_sub(now))
    }

    /// One request's answer, read by the loop.
    pub fn heard<'a>(&self, verdicts: impl IntoIterator<Item = &'a Verdict>) {
        let heard = Heard::of(verdicts);
        let now = self.origin.elapsed();
        self.lock().on_answer(now, heard);
    }

    /// The pace as it is now.
    pub fn now(&self) -> Pace {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    enum Step {
        Pushback(u64),
        RetryAfter(u64, u64),
        Success(u64),
    }
    use Step::*;

    fn after(ceiling: f64, steps: &[Step]) -> Pace {
        let mut p = Pace::new(ceiling);
        for s in steps {
            match *s {
                Pushback(t) => p.on_pushback(ms(t), None),
                RetryAfter(t, r) => p.on_pushback(ms(t), Some(ms(r))),
                Success(t) => p.on_success(ms(t)),
            }
        }
        p
    }

    #[test]
    fn pushback_cuts_the_rate_once_per_window_and_success_raises_it_back() {
        // (ceiling, what happened, rate after, pushbacks counted)
        let cases: &[(f64, &[Step], f64, u64)] = &[
            (80.0, &[], 80.0, 0),
            (80.0, &[Success(0), Success(1000)], 80.0, 0),
            (80.0, &[Pushback(0)], 56.0, 1),
            // One burst of refusals is one cut.
            (80.0, &[Pushback(0), Pushback(10), Pushback(499)], 56.0, 3),
            (80.0, &[Pushback(0), Pushback(500)], 39.2, 2),
            // +4/s (5% of 80) per second of clean sending, after the window.
            (
                80.0,
                &[Pushback(0), Success(500), Success(1000), Success(1500)],
                60.0,
                1,
            ),
            // Answers inside the window raise nothing.
            (80.0, &[Pushback(0), Success(100), Success(499)], 56.0, 1),
            // An idle second credits at most one second.
            (80.0, &[Pushback(0), Success(500), Success(10_500)], 60.0, 1),
            // Back to the ceiling, not beyond.
            (
                80.0,
                &[
                    Pushback(0),
                    Success(500),
                    Success(1500),
                    Success(2500),
                    Success(3500),
                    Success(4500),
                    Success(5500),
                    Success(6500),
                ],
                80.0,
                1,
            ),
            // Never below the floor: 1/s, or a twentieth of the ceiling.
            (
                10.0,
                &[Pushback(0), Pushback(1000), Pushback(2000), Pushback(3000)],
                2.401,
                4,
            ),
            (
                2.0,
                &[Pushback(0), Pushback(1000), Pushback(2000), Pushback(3000)],
                1.0,
                4,
            ),
            (
                200.0,
                &[
                    Pushback(0),
                    Pushback(1000),
                    Pushback(2000),
                    Pushback(3000),
                    Pushback(4000),
                    Pushback(5000),
                    Pushback(6000),
                    Pushback(7000),
                    Pushback(8000),
                    Pushback(9000),
                ],
                10.0,
                10,
            ),
            (0.5, &[Pushback(0)], 0.5, 1),
        ];
        for (i, (ceiling, steps, rate, pushbacks)) in cases.iter().enumerate() {
            let p = after(*ceiling, steps);
            assert!(
                (p.rate() - rate).abs() < 0.01,
                "case {i}: rate {} instead of {rate}",
                p.rate()
            );
            assert_eq!(p.pushbacks(), *pushbacks, "case {i}");
            assert!(p.rate() <= *ceiling && p.lowest() <= p.rate(), "case {i}");
        }
    }

    #[test]
    fn the_gate_spaces_requests_below_the_ceiling_and_a_retry_after_pauses_all() {
        // (what happened, claims at these times, which of them go)
        let cases: &[(&[Step], &[u64], &[bool])] = &[
            // At the ceiling the gate lets everything through (governor limits).
            (&[], &[0, 0, 0, 1], &[true, true, true, true]),
            // 10/s → 7/s: one request every 142.9 ms.
            (
                &[Pushback(0)],
                &[0, 1, 100, 143, 200, 286],
                &[true, false, false, true, false, true],
            ),
            // Half an interval of lateness is made up, not a burst after idling.
            (&[Pushback(0)], &[1000, 1075, 1150], &[true, true, false]),
            // Retry-After: nothing leaves until then, even at the ceiling's pace…
            (
                &[RetryAfter(0, 2000)],
                &[1, 1999, 2000],
                &[false, false, true],
            ),
            // … and at most MAX_PAUSE.
            (
                &[RetryAfter(0, 3_600_000)],
                &[29_999, 30_000],
                &[false, true],
            ),
        ];
        for (i, (steps, claims, go)) in cases.iter().enumerate() {
            let mut p = after(10.0, steps);
            let got: Vec<bool> = claims.iter().map(|&t| p.claim(ms(t)).is_ok()).collect();
            assert_eq!(&got, go, "case {i}");
        }
    }

    #[test]
    fn a_refused_claim_says_when_to_ask_again() {
        let mut p = after(10.0, &[RetryAfter(0, 2000)]);
        assert_eq!(p.claim(ms(5)), Err(ms(2000)));
        assert_eq!(p.not_before(ms(5)), ms(2000));
        let mut p = after(10.0, &[Pushback(0)]);
        assert_eq!(p.claim(ms(0)), Ok(()));
        assert_eq!(p.claim(ms(1)), Err(Duration::from_secs_f64(1.0 / 7.0)));
    }

    #[test]
    fn answers_are_read_as_pushback_clean_or_nothing() {
        let busy = Verdict::RetryLater {
            class: ErrorClass::RateLimited,
            retry_after: None,
        };
        let later = Verdict::RetryLater {
            class: ErrorClass::ServerError,
            retry_after: Some(ms(3000)),
        };
        let five_hundred = Verdict::RetryLater {
            class: ErrorClass::ServerError,
            retry_after: None,
        };
        let taken = Verdict::Accepted {
            reference: "r".into(),
        };
        let cases: &[(&[&Verdict], Heard)] = &[
            (&[&busy, &busy], Heard::Pushback(None)),
            (&[&later], Heard::Pushback(Some(ms(3000)))),
            (&[&five_hundred], Heard::Nothing),
            (&[&Verdict::InDoubt], Heard::Nothing),
            (&[&taken, &taken], Heard::Clean),
            (&[], Heard::Nothing),
        ];
        for (i, (verdicts, heard)) in cases.iter().enumerate() {
            assert_eq!(Heard::of(verdicts.iter().copied()), *heard, "case {i}");
        }
    }
}

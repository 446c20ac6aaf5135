//! The life of one item's submission as a pure function: `step(state, event) -> (state,
//! effects)`. The current time arrives inside the event; the executor persists the new state
//! *before* it performs the effects, which is what makes "exactly once" hold across crashes:
//!
//! - `Sending` is recorded before a request leaves. A run that stops in `Sending` cannot know
//!   whether the provider got the request, so on resume the item is `InDoubt`.
//! - An item in doubt is never resent blindly: its key is looked up first, and only when the
//!   provider has no record of it is it sent again — with the same key.
//! - A provider that says "already paid with this key" (Paysend 3011) is reconciled by a lookup,
//!   never counted as a failure.
//! - Final states absorb every later event, so duplicated or late notifications are harmless.
//!
//! Provider adapters turn wire answers into `Verdict`s; nothing here knows a provider.

use super::backoff::{self, ErrorClass};
use crate::manifest::RetryPolicy;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub use crate::wire::{Millis, Timings, Verdict};

fn plus(t: Millis, d: Duration) -> Millis {
    t.saturating_add(d.as_millis() as u64)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Planned,
    /// A delayed step: sent at `at` (once the task it follows ended and its delay passed).
    Scheduled {
        at: Millis,
    },
    /// A delayed step whose branch was not taken: nothing is sent.
    Skipped {
        reason: String,
        at: Millis,
    },
    /// Recorded before the request leaves.
    Sending {
        attempt: u32,
        since: Millis,
    },
    /// Nothing reached the provider, or it refused to process: send again at `at`.
    RetryAt {
        attempt: u32,
        at: Millis,
        class: ErrorClass,
    },
    /// Accepted; waiting for the outcome (a notification, or a poll at `poll_at`).
    Submitted {
        attempt: u32,
        reference: String,
        since: Millis,
        poll_at: Millis,
        /// Lookups made while waiting (counted only where `Timings::max_polls` is set).
        #[serde(default, skip_serializing_if = "is_zero")]
        polls: u32,
    },
    /// The outcome is unknown; the key is looked up at `at` before anything is resent.
    InDoubt {
        attempt: u32,
        since: Millis,
        at: Millis,
        lookups: u32,
        /// Lookups asked once the settle window had passed whose answers did not list the
        /// request (`Verdict::Unlisted`): the second confirms it was never processed.
        #[serde(default, skip_serializing_if = "is_zero")]
        unlisted: u32,
    },
    Succeeded {
        ids: crate::wire::Ids,
        at: Millis,
    },
    Failed {
        code: String,
        description: String,
        at: Millis,
    },
    /// Paid, then the provider said the payment failed or is being returned (Paysend: a
    /// decline or 4008 "money will be refunded" after Completed): money moved back. Final —
    /// nothing is sent again — and shown apart from paid in status, report and exit code.
    Reversed {
        /// What the payment was paid under.
        ids: crate::wire::Ids,
        paid_at: Millis,
        code: String,
        description: String,
        at: Millis,
    },
    /// A person must look (not final, or held for manual action); asked again at `at`.
    NeedsReview {
        attempt: u32,
        code: String,
        description: String,
        since: Millis,
        at: Millis,
        /// The reference it was accepted under, when it came here from `Submitted`: its
        /// outcome may still arrive by notification.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
}

impl State {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            State::Succeeded { .. }
                | State::Failed { .. }
                | State::Skipped { .. }
                | State::Reversed { .. }
        )
    }

    /// Whether a request for this item may have reached the provider: only then can an
    /// outcome (a notification, a lookup) be about it.
    pub fn was_sent(&self) -> bool {
        !matches!(
            self,
            State::Planned | State::Scheduled { .. } | State::Skipped { .. }
        )
    }

    /// The reference of the accepted request whose outcome this item waits for, if any.
    pub fn reference(&self) -> Option<&str> {
        match self {
            State::Submitted { reference, .. } => Some(reference),
            State::NeedsReview { reference, .. } => reference.as_deref(),
            _ => None,
        }
    }

    /// When the item next needs attention, if it waits for a time.
    pub fn due(&self) -> Option<Millis> {
        match self {
            State::RetryAt { at, .. }
            | State::Scheduled { at }
            | State::InDoubt { at, .. }
            | State::NeedsReview { at, .. } => Some(*at),
            State::Submitted { poll_at, .. } => Some(*poll_at),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start, or a due time passed.
    Tick { now: Millis },
    /// The answer to the request sent in `Sending`.
    Sent { verdict: Verdict, now: Millis },
    /// A lookup's answer, or a verified notification.
    Observed { verdict: Verdict, now: Millis },
    /// The run starts again after it stopped, cleanly or not.
    Resume { now: Millis },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send the item's request, with the item's (unchanging) idempotency key.
    Send {
        attempt: u32,
    },
    /// Ask the provider for the outcome (by reference when submitted, by key otherwise).
    Lookup,
    WakeAt(Millis),
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub fn step(
    state: &State,
    event: Event,
    policy: &RetryPolicy,
    t: &Timings,
) -> (State, Vec<Effect>) {
    use Event as E;
    use State as S;
    let keep = || (state.clone(), vec![]);
    // An outcome that contradicts a final one is news, not noise (see `contradicted`).
    if let (true, E::Observed { verdict, now }) = (state.is_final(), &event) {
        return contradicted(state, verdict, *now, t).unwrap_or_else(keep);
    }
    if state.is_final() {
        return keep();
    }
    // Nothing was sent for it: no outcome can be about it (a notification naming an unsent
    // item is forged or misdirected, and once made one `paid` that was never paid).
    if !state.was_sent() && matches!(event, E::Observed { .. }) {
        return keep();
    }
    match (state, event) {
        (S::Planned, E::Tick { now } | E::Resume { now }) => send(1, now),

        (S::Scheduled { at }, E::Tick { now } | E::Resume { now }) => {
            if now >= *at {
                send(1, now)
            } else {
                (state.clone(), vec![Effect::WakeAt(*at)])
            }
        }

        (S::RetryAt { attempt, at, .. }, E::Tick { now } | E::Resume { now }) => {
            if now >= *at {
                send(attempt + 1, now)
            } else {
                (state.clone(), vec![Effect::WakeAt(*at)])
            }
        }

        (S::Sending { attempt, .. }, E::Sent { verdict, now }) => {
            after_send(*attempt, verdict, now, policy, t)
        }

        // The run stopped between recording `Sending` and learning the answer. `since` is when
        // the item was marked, not when the provider took the request (limiter, queue and
        // timeout came after it); the stopped process can only have sent it before now. So the
        // first lookup waits the propagation delay from now — a lookup sooner could be told
        // "not found" about a payment still propagating, and resend it.
        (S::Sending { attempt, since }, E::Resume { now }) => {
            let at = plus(now, t.propagation);
            (
                S::InDoubt {
                    attempt: *attempt,
                    since: *since,
                    at,
                    lookups: 0,
                    unlisted: 0,
                },
                vec![Effect::WakeAt(at)],
            )
        }

        // A new run asks at once about items left under review: the provider may have released
        // or settled them since.
        (S::NeedsReview { at, .. }, E::Resume { now }) if *at > now => {
            let mut next = state.clone();
            let at = plus(now, t.review_every);
            if let State::NeedsReview { at: a, .. } = &mut next {
                *a = at;
            }
            (next, vec![Effect::Lookup, Effect::WakeAt(at)])
        }

        // A new run asks at once about accepted items: their notifications may have come while
        // no run listened.
        (S::Submitted { poll_at, .. }, E::Resume { now }) if *poll_at > now => {
            let mut due_now = state.clone();
            if let S::Submitted { poll_at, .. } = &mut due_now {
                *poll_at = now;
            }
            look_again(&due_now, now, t)
        }

        (
            S::Submitted { .. } | S::InDoubt { .. } | S::NeedsReview { .. },
            E::Tick { now } | E::Resume { now },
        ) => look_again(state, now, t),

        (_, E::Observed { verdict, now }) => observed(state, verdict, now, t),

        // Stale answers (a `Sent` when no request is outstanding) change nothing.
        _ => keep(),
    }
}

/// An outcome about an item that already ended. A failure after a success is money moving
/// back (a decline, a return): the item becomes `Reversed`, never silently stays paid. A
/// success after a failure means money moved although payrun recorded that it did not: a
/// person must look (and `--retry-failed` must not resend it). Anything else (a duplicate, a
/// late copy of the same outcome) changes nothing: None.
fn contradicted(
    state: &State,
    verdict: &Verdict,
    now: Millis,
    t: &Timings,
) -> Option<(State, Vec<Effect>)> {
    match (state, verdict) {
        (State::Succeeded { .. }, Verdict::Failed { code, description }) if !t.reversals => {
            Some(review(
                1,
                "contradicted".into(),
                format!(
                    "recorded paid, then reported failed ({code}{}): the provider's reports disagree",
                    if description.is_empty() {
                        String::new()
                    } else {
                        format!(" {description}")
                    }
                ),
                now,
                t,
                None,
            ))
        }
        (State::Succeeded { ids, at }, Verdict::Failed { code, description }) => Some((
            State::Reversed {
                ids: ids.clone(),
                paid_at: *at,
                code: code.clone(),
                description: description.clone(),
                at: now,
            },
            vec![],
        )),
        (State::Failed { code, .. }, Verdict::Succeeded { .. }) => Some(review(
            1,
            "paid-after-failure".into(),
            format!("recorded failed ({code}), then reported paid by the provider: money moved"),
            now,
            t,
            None,
        )),
        _ => None,
    }
}

/// An item waiting on the provider whose time came: ask again, and wait until the next ask.
fn look_again(state: &State, now: Millis, t: &Timings) -> (State, Vec<Effect>) {
    let due = state.due().unwrap_or(now);
    if now < due {
        return (state.clone(), vec![Effect::WakeAt(due)]);
    }
    let mut next = state.clone();
    let at = match &mut next {
        State::Submitted {
            poll_at,
            polls,
            attempt,
            reference,
            ..
        } => {
            *polls += 1;
            if let Some(max) = t.max_polls
                && *polls > max
            {
                return review(
                    *attempt,
                    "no-outcome".into(),
                    format!("accepted, but no outcome arrived after {max} lookups"),
                    now,
                    t,
                    Some(reference.clone()),
                );
            }
            *poll_at = plus(now, t.gap(*polls));
            *poll_at
        }
        State::InDoubt {
            at,
            lookups,
            attempt,
            unlisted,
            ..
        } => {
            // Asked often enough without an answer that settles it: a person looks.
            if *lookups >= t.max_lookups {
                return review(
                    *attempt,
                    "in-doubt".into(),
                    unsettled(*lookups, *unlisted),
                    now,
                    t,
                    None,
                );
            }
            *lookups += 1;
            *at = plus(now, t.gap(*lookups));
            *at
        }
        State::NeedsReview { at, .. } => {
            *at = plus(now, t.review_every);
            *at
        }
        _ => return (state.clone(), vec![]),
    };
    (next, vec![Effect::Lookup, Effect::WakeAt(at)])
}

/// Accepted by the provider: wait for the outcome, asking again after `poll_every`.
fn submitted(attempt: u32, reference: String, now: Millis, t: &Timings) -> (State, Vec<Effect>) {
    let poll_at = plus(now, t.poll_every);
    (
        State::Submitted {
            attempt,
            reference,
            since: now,
            poll_at,
            polls: 0,
        },
        vec![Effect::WakeAt(poll_at)],
    )
}

fn send(attempt: u32, now: Millis) -> (State, Vec<Effect>) {
    (
        State::Sending {
            attempt,
            since: now,
        },
        vec![Effect::Send { attempt }],
    )
}

fn review(
    attempt: u32,
    code: String,
    description: String,
    now: Millis,
    t: &Timings,
    reference: Option<String>,
) -> (State, Vec<Effect>) {
    let at = plus(now, t.review_every);
    (
        State::NeedsReview {
            attempt,
            code,
            description,
            since: now,
            at,
            reference,
        },
        vec![Effect::WakeAt(at)],
    )
}

fn in_doubt(
    attempt: u32,
    since: Millis,
    now: Millis,
    lookups: u32,
    unlisted: u32,
    t: &Timings,
) -> (State, Vec<Effect>) {
    // The first lookup waits out the propagation delay: before it, "not found" means nothing.
    let at = plus(now, t.gap(lookups.max(1))).max(plus(since, t.propagation));
    doubt_until(attempt, since, at, lookups, unlisted)
}

/// In doubt, next looked up at `at`.
fn doubt_until(
    attempt: u32,
    since: Millis,
    at: Millis,
    lookups: u32,
    unlisted: u32,
) -> (State, Vec<Effect>) {
    (
        State::InDoubt {
            attempt,
            since,
            at,
            lookups,
            unlisted,
        },
        vec![Effect::WakeAt(at)],
    )
}

/// Why an item in doubt goes to a person after `lookups` lookups.
fn unsettled(lookups: u32, unlisted: u32) -> String {
    match unlisted {
        0 => format!("the outcome is still unknown after {lookups} lookups"),
        _ => format!(
            "not listed by the provider after the settle window, but {lookups} lookups could \
             not confirm it twice: it may still have been processed, so it is not sent again"
        ),
    }
}

/// "Not listed" in the answer to a lookup asked at `asked`, about an item in doubt since
/// `since`. Before the settle window passed it means nothing (the provider may list an
/// operation only once processed): the next lookup is moved to the window's end. After it, the
/// first such answer is noted and confirmed by another lookup; the second sends the item again
/// (with the same key).
fn unlisted_after(
    attempt: u32,
    since: Millis,
    lookups: u32,
    unlisted: u32,
    asked: Millis,
    now: Millis,
    t: &Timings,
) -> (State, Vec<Effect>) {
    let window = plus(since, t.settle.max(t.propagation));
    // An answer before the window says nothing, so the lookup that got it does not count
    // against `max_lookups`: otherwise a window longer than the lookups' spacing times their
    // budget would send an item that was never processed to a person instead of sending it
    // again once the window passed.
    if asked < window {
        let at = plus(now, t.gap(lookups.max(1))).min(window).max(now);
        return doubt_until(attempt, since, at, lookups.saturating_sub(1), unlisted);
    }
    if unlisted + 1 >= 2 {
        return send(attempt + 1, now);
    }
    // Confirmed by a lookup one wait later.
    doubt_until(
        attempt,
        since,
        plus(now, t.poll_every),
        lookups,
        unlisted + 1,
    )
}

fn after_send(
    attempt: u32,
    verdict: Verdict,
    now: Millis,
    policy: &RetryPolicy,
    t: &Timings,
) -> (State, Vec<Effect>) {
    match verdict {
        Verdict::Accepted { reference } => submitted(attempt, reference, now, t),
        Verdict::Succeeded { ids, .. } => (
            State::Succeeded {
                ids: ids.into(),
                at: now,
            },
            vec![],
        ),
        Verdict::Failed { code, description } => (
            State::Failed {
                code,
                description,
                at: now,
            },
            vec![],
        ),
        Verdict::NeedsReview { code, description } => {
            review(attempt, code, description, now, t, None)
        }
        // Paid before with this key: find that payment rather than fail or pay again.
        Verdict::AlreadyExists => {
            let at = now;
            (
                State::InDoubt {
                    attempt,
                    since: now,
                    at,
                    lookups: 0,
                    unlisted: 0,
                },
                vec![Effect::WakeAt(at)],
            )
        }
        Verdict::RetryLater { class, retry_after } => {
            // A request that never reached the provider is no outcome of the item's: it keeps
            // its place at the policy's longest interval, however often the network failed
            // (the run stops by itself when the provider stays unreachable).
            let exhausted_network = || {
                (class == ErrorClass::Network).then(|| {
                    policy
                        .for_class(class)
                        .max_interval
                        .max(retry_after.unwrap_or_default())
                })
            };
            match backoff::delay(policy.for_class(class), attempt, retry_after)
                .or_else(exhausted_network)
            {
                Some(d) => {
                    let at = plus(now, d);
                    (
                        State::RetryAt { attempt, at, class },
                        vec![Effect::WakeAt(at)],
                    )
                }
                // A 5xx may come after the provider processed the request: not "failed" but in
                // doubt, settled by a lookup by key before anything is sent again.
                None if class == ErrorClass::ServerError => fresh_doubt(attempt, now, t),
                // The provider said "not now" every time: nothing was processed, so giving up
                // pays nothing.
                None => (
                    State::Failed {
                        code: format!("retries-exhausted:{}", class_name(class)),
                        description: format!(
                            "the provider did not take the request after {attempt} attempts"
                        ),
                        at: now,
                    },
                    vec![],
                ),
            }
        }
        Verdict::InDoubt
        | Verdict::NotYetVisible
        | Verdict::Unknown
        | Verdict::Pending
        | Verdict::Unlisted { .. } => fresh_doubt(attempt, now, t),
    }
}

/// In doubt from `now`: first looked up once the propagation delay has passed.
fn fresh_doubt(attempt: u32, now: Millis, t: &Timings) -> (State, Vec<Effect>) {
    doubt_until(attempt, now, plus(now, t.propagation), 0, 0)
}

fn class_name(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::RateLimited => "rate_limited",
        ErrorClass::ServerError => "server_error",
        ErrorClass::Network => "network",
    }
}

/// A lookup's answer or a notification, in any state that is not final.
fn observed(state: &State, verdict: Verdict, now: Millis, t: &Timings) -> (State, Vec<Effect>) {
    let attempt = match state {
        State::Sending { attempt, .. }
        | State::RetryAt { attempt, .. }
        | State::Submitted { attempt, .. }
        | State::InDoubt { attempt, .. }
        | State::NeedsReview { attempt, .. } => *attempt,
        _ => 0,
    };
    match verdict {
        Verdict::Succeeded { ids, .. } => (
            State::Succeeded {
                ids: ids.into(),
                at: now,
            },
            vec![],
        ),
        Verdict::Failed { code, description } => (
            State::Failed {
                code,
                description,
                at: now,
            },
            vec![],
        ),
        Verdict::NeedsReview { code, description } => match state {
            // Still under review: keep the original time it began.
            State::NeedsReview {
                since,
                at,
                reference,
                ..
            } => (
                State::NeedsReview {
                    attempt,
                    code,
                    description,
                    since: *since,
                    at: *at,
                    reference: reference.clone(),
                },
                vec![Effect::WakeAt(*at)],
            ),
            _ => review(
                attempt,
                code,
                description,
                now,
                t,
                state.reference().map(str::to_string),
            ),
        },
        Verdict::Accepted { reference } => match state {
            State::Submitted { .. } | State::NeedsReview { .. } => (
                state.clone(),
                state.due().map(Effect::WakeAt).into_iter().collect(),
            ),
            _ => submitted(attempt, reference, now, t),
        },
        Verdict::Unknown => match state {
            // The provider has no record of the key once it could have one: send again, with
            // the same key.
            State::InDoubt {
                since,
                lookups,
                unlisted,
                ..
            } => {
                if now >= plus(*since, t.propagation) {
                    send(attempt + 1, now)
                } else {
                    in_doubt(attempt, *since, now, *lookups, *unlisted, t)
                }
            }
            // The provider no longer finds an accepted request by its reference (Paysend: the
            // globalId window passed): look the key up instead.
            State::Submitted { since, .. } => in_doubt(attempt, *since, now, 0, 0, t),
            _ => (
                state.clone(),
                state.due().map(Effect::WakeAt).into_iter().collect(),
            ),
        },
        // Not listed, by a provider that gives no idempotency: see `unlisted_after`.
        Verdict::Unlisted { asked } => match state {
            State::InDoubt {
                since,
                lookups,
                unlisted,
                ..
            } => unlisted_after(attempt, *since, *lookups, *unlisted, asked, now, t),
            _ => (
                state.clone(),
                state.due().map(Effect::WakeAt).into_iter().collect(),
            ),
        },
        // The answer is on its way: wait for it (or for the next lookup).
        Verdict::Pending => (
            state.clone(),
            state.due().map(Effect::WakeAt).into_iter().collect(),
        ),
        // "Already paid with this key" about a request we thought accepted or still open (the
        // key was paid by an earlier request): find that payment now, rather than poll a
        // request that will never pay.
        Verdict::AlreadyExists if !matches!(state, State::InDoubt { .. }) => (
            State::InDoubt {
                attempt,
                since: now,
                at: now,
                lookups: 0,
                unlisted: 0,
            },
            vec![Effect::WakeAt(now)],
        ),
        Verdict::NotYetVisible
        | Verdict::RetryLater { .. }
        | Verdict::InDoubt
        | Verdict::AlreadyExists => match state {
            State::InDoubt {
                since,
                lookups,
                unlisted,
                ..
            } => {
                if *lookups >= t.max_lookups {
                    review(
                        attempt,
                        "in-doubt".into(),
                        unsettled(*lookups, *unlisted),
                        now,
                        t,
                        None,
                    )
                } else {
                    in_doubt(attempt, *since, now, *lookups, *unlisted, t)
                }
            }
            _ => (
                state.clone(),
                state.due().map(Effect::WakeAt).into_iter().collect(),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Backoff;

    const MIN: u64 = 60_000;
    const SEC: u64 = 1_000;

    fn policy() -> RetryPolicy {
        let b = Backoff {
            initial_interval: Duration::from_secs(1),
            factor: 2.0,
            max_interval: Duration::from_secs(60),
            max_attempts: 3,
        };
        RetryPolicy {
            default: b.clone(),
            rate_limited: b.clone(),
            server_error: b.clone(),
            network: b,
        }
    }

    fn timings() -> Timings {
        Timings {
            propagation: Duration::from_secs(180),
            poll_every: Duration::from_secs(30),
            review_every: Duration::from_secs(600),
            max_lookups: 3,
            max_polls: None,
            poll_backoff: 1.0,
            settle: Duration::ZERO,
            reversals: true,
            confirm_failures: false,
        }
    }

    /// Runs events through the machine from `Planned`, returning every state and effect.
    fn run(events: Vec<Event>) -> (State, Vec<Vec<Effect>>) {
        let mut s = State::Planned;
        let mut all = Vec::new();
        for e in events {
            let (next, fx) = step(&s, e, &policy(), &timings());
            s = next;
            all.push(fx);
        }
        (s, all)
    }

    fn paid() -> Verdict {
        Verdict::Succeeded {
            ids: std::collections::BTreeMap::from([("paymentId".to_string(), "p-1".to_string())]),
            result: None,
        }
    }

    fn sends(fx: &[Vec<Effect>]) -> usize {
        fx.iter()
            .flatten()
            .filter(|e| matches!(e, Effect::Send { .. }))
            .count()
    }

    #[test]
    fn a_planned_item_is_marked_sending_before_its_request_leaves() {
        let (s, fx) = run(vec![Event::Tick { now: 0 }]);
        assert_eq!(
            s,
            State::Sending {
                attempt: 1,
                since: 0
            }
        );
        assert_eq!(fx, vec![vec![Effect::Send { attempt: 1 }]]);
    }

    #[test]
    fn a_busy_provider_is_asked_again_after_backoff_and_honouring_retry_after() {
        let busy = Verdict::RetryLater {
            class: ErrorClass::RateLimited,
            retry_after: Some(Duration::from_secs(5)),
        };
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: busy,
                now: 100,
            },
            Event::Tick { now: 2_000 },
            Event::Tick { now: 5_100 },
        ]);
        assert_eq!(
            s,
            State::Sending {
                attempt: 2,
                since: 5_100
            }
        );
        assert_eq!(
            fx[1],
            vec![Effect::WakeAt(5_100)],
            "Retry-After 5 s beats the 1 s backoff"
        );
        assert_eq!(fx[2], vec![Effect::WakeAt(5_100)], "not due yet");
        assert_eq!(fx[3], vec![Effect::Send { attempt: 2 }]);
    }

    /// Three answers of one class to an item's three attempts (max_attempts 3).
    fn three_times(class: ErrorClass) -> (State, Vec<Vec<Effect>>) {
        let answer = || Verdict::RetryLater {
            class,
            retry_after: None,
        };
        run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: answer(),
                now: 0,
            },
            Event::Tick { now: 10_000 },
            Event::Sent {
                verdict: answer(),
                now: 10_000,
            },
            Event::Tick { now: 20_000 },
            Event::Sent {
                verdict: answer(),
                now: 20_000,
            },
        ])
    }

    #[test]
    fn when_busy_answers_run_out_the_item_fails_having_paid_nothing() {
        let (s, fx) = three_times(ErrorClass::RateLimited);
        assert!(
            matches!(&s, State::Failed { code, .. } if code == "retries-exhausted:rate_limited"),
            "{s:?}"
        );
        assert_eq!(sends(&fx), 3, "max_attempts 3");
    }

    #[test]
    fn when_5xx_answers_run_out_the_item_is_in_doubt_not_failed() {
        // A 5xx may come after the provider processed the request.
        let (s, _) = three_times(ErrorClass::ServerError);
        assert!(matches!(s, State::InDoubt { .. }), "{s:?}");
    }

    #[test]
    fn a_network_failure_is_never_an_items_outcome_however_often_it_comes() {
        let (s, _) = three_times(ErrorClass::Network);
        assert!(matches!(s, State::RetryAt { .. }), "{s:?}");
    }

    #[test]
    fn a_lost_answer_makes_the_item_in_doubt_and_nothing_is_resent_before_a_lookup() {
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: Verdict::InDoubt,
                now: 1_000,
            },
            Event::Tick { now: 2 * MIN },
        ]);
        assert!(matches!(s, State::InDoubt { .. }));
        assert_eq!(sends(&fx), 1);
        assert_eq!(
            fx[1],
            vec![Effect::WakeAt(1_000 + 3 * MIN)],
            "the lookup waits out the propagation delay"
        );
    }

    #[test]
    fn an_in_doubt_item_the_provider_paid_is_settled_as_paid_without_resending() {
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: Verdict::InDoubt,
                now: 0,
            },
            Event::Tick { now: 3 * MIN },
            Event::Observed {
                verdict: paid(),
                now: 3 * MIN + 10,
            },
        ]);
        assert!(matches!(s, State::Succeeded { .. }));
        assert_eq!(fx[2][0], Effect::Lookup);
        assert_eq!(sends(&fx), 1);
    }

    #[test]
    fn an_in_doubt_item_the_provider_never_saw_is_sent_again_with_the_same_key() {
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: Verdict::InDoubt,
                now: 0,
            },
            Event::Tick { now: 3 * MIN },
            Event::Observed {
                verdict: Verdict::Unknown,
                now: 3 * MIN,
            },
        ]);
        assert_eq!(
            s,
            State::Sending {
                attempt: 2,
                since: 3 * MIN
            }
        );
        assert_eq!(fx[3], vec![Effect::Send { attempt: 2 }]);
    }

    #[test]
    fn not_found_before_the_propagation_delay_is_not_taken_for_never_sent() {
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: Verdict::AlreadyExists,
                now: 0,
            },
            Event::Tick { now: 0 },
            Event::Observed {
                verdict: Verdict::Unknown,
                now: MIN,
            },
        ]);
        assert!(
            matches!(s, State::InDoubt { at, .. } if at == 3 * MIN),
            "{s:?}"
        );
        assert_eq!(sends(&fx), 1);
    }

    #[test]
    fn already_paid_is_reconciled_by_a_lookup_not_failed() {
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: Verdict::AlreadyExists,
                now: 5,
            },
            Event::Tick { now: 5 },
            Event::Observed {
                verdict: paid(),
                now: 6,
            },
        ]);
        assert!(matches!(s, State::Succeeded { .. }));
        assert_eq!(fx[2][0], Effect::Lookup, "looked up at once");
        assert_eq!(sends(&fx), 1);
    }

    #[test]
    fn a_run_that_stopped_while_sending_resumes_in_doubt() {
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Resume { now: 10 * MIN },
        ]);
        let due = 10 * MIN + timings().propagation.as_millis() as u64;
        assert!(
            matches!(s, State::InDoubt { since: 0, at, .. } if at == due),
            "in doubt since it was marked; looked up once the propagation delay has passed after the resume: {s:?}"
        );
        assert_eq!(sends(&fx), 1, "nothing resent on resume");
    }

    #[test]
    fn already_paid_about_a_request_thought_accepted_is_looked_up_at_once() {
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: Verdict::Accepted {
                    reference: "g#0".into(),
                },
                now: 10,
            },
            Event::Observed {
                verdict: Verdict::AlreadyExists,
                now: 20,
            },
            Event::Tick { now: 20 },
        ]);
        assert!(matches!(s, State::InDoubt { .. }), "{s:?}");
        assert_eq!(
            fx[3],
            vec![
                Effect::Lookup,
                Effect::WakeAt(20 + timings().poll_every.as_millis() as u64)
            ]
        );
        assert_eq!(sends(&fx), 1, "never sent again");
    }

    #[test]
    fn a_new_run_asks_at_once_about_items_left_under_review() {
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: Verdict::NeedsReview {
                    code: "5".into(),
                    description: "OnHold".into(),
                },
                now: 10,
            },
            Event::Resume { now: 20 },
        ]);
        assert!(matches!(s, State::NeedsReview { .. }));
        assert_eq!(fx[2][0], Effect::Lookup);
        assert_eq!(sends(&fx), 1);
    }

    #[test]
    fn a_submitted_request_is_polled_until_its_outcome_is_known() {
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: Verdict::Accepted {
                    reference: "g-1".into(),
                },
                now: 0,
            },
            Event::Tick { now: 30_000 },
            Event::Observed {
                verdict: Verdict::Accepted {
                    reference: "g-1".into(),
                },
                now: 30_100,
            },
            Event::Tick { now: 60_000 },
            Event::Observed {
                verdict: paid(),
                now: 60_100,
            },
        ]);
        assert!(matches!(s, State::Succeeded { .. }));
        assert_eq!(fx[2][0], Effect::Lookup);
        assert_eq!(fx[4][0], Effect::Lookup);
    }

    #[test]
    fn duplicate_and_late_notifications_change_nothing_after_a_final_state() {
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: paid(),
                now: 1,
            },
            Event::Observed {
                verdict: paid(),
                now: 2,
            },
            Event::Observed {
                verdict: Verdict::NeedsReview {
                    code: "5".into(),
                    description: "late".into(),
                },
                now: 3,
            },
            Event::Sent {
                verdict: Verdict::InDoubt,
                now: 4,
            },
            Event::Resume { now: 5 },
        ]);
        assert!(matches!(s, State::Succeeded { at: 1, .. }));
        assert!(fx[2..].iter().all(Vec::is_empty));
    }

    #[test]
    fn a_decline_after_success_is_money_moving_back_and_never_silently_kept_paid() {
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: paid(),
                now: 1,
            },
            Event::Observed {
                verdict: Verdict::Failed {
                    code: "4008".into(),
                    description: "money will be refunded".into(),
                },
                now: 3,
            },
            Event::Resume { now: 5 },
            Event::Observed {
                verdict: paid(),
                now: 6,
            },
        ]);
        assert!(
            matches!(&s, State::Reversed { code, paid_at: 1, at: 3, .. } if code == "4008"),
            "{s:?}"
        );
        assert!(s.is_final(), "nothing is sent again");
        assert!(fx[2..].iter().all(Vec::is_empty));
    }

    #[test]
    fn a_success_after_a_failure_goes_to_a_person_not_to_a_resend() {
        let (s, _) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: Verdict::Failed {
                    code: "4000".into(),
                    description: "generic decline".into(),
                },
                now: 1,
            },
            Event::Observed {
                verdict: paid(),
                now: 2,
            },
        ]);
        assert!(
            matches!(&s, State::NeedsReview { code, .. } if code == "paid-after-failure"),
            "{s:?}"
        );
    }

    #[test]
    fn an_outcome_about_an_item_never_sent_changes_nothing() {
        for verdict in [
            paid(),
            Verdict::Failed {
                code: "4006".into(),
                description: "x".into(),
            },
        ] {
            let (s, fx) = step(
                &State::Planned,
                Event::Observed { verdict, now: 1 },
                &policy(),
                &timings(),
            );
            assert_eq!(s, State::Planned);
            assert!(fx.is_empty());
        }
    }

    #[test]
    fn an_accepted_item_is_asked_about_at_once_by_a_new_run_then_waits_its_usual_interval() {
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: Verdict::Accepted {
                    reference: "r1@p1".into(),
                },
                now: 1,
            },
            Event::Resume { now: 2 },
        ]);
        assert_eq!(
            fx[2],
            vec![
                Effect::Lookup,
                Effect::WakeAt(2 + timings().poll_every.as_millis() as u64)
            ]
        );
        assert!(matches!(s, State::Submitted { polls: 1, .. }));
    }

    #[test]
    fn lookups_of_an_accepted_item_back_off_when_the_provider_says_so() {
        let t = Timings {
            poll_backoff: 2.0,
            ..timings()
        };
        let mut s = State::Planned;
        let mut wakes = Vec::new();
        let accepted = Verdict::Accepted {
            reference: "r1@p1".into(),
        };
        for e in [
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: accepted,
                now: 0,
            },
            Event::Tick { now: 30 * SEC },
            Event::Tick { now: 60 * SEC },
            Event::Tick { now: 120 * SEC },
            Event::Tick { now: 240 * SEC },
            Event::Tick { now: 480 * SEC },
            Event::Tick { now: 960 * SEC },
        ] {
            let (next, fx) = step(&s, e, &policy(), &t);
            s = next;
            wakes.extend(fx.iter().filter_map(|e| match e {
                Effect::WakeAt(at) => Some(at / SEC),
                _ => None,
            }));
        }
        // 30 s after acceptance, then 30, 60, 120, 240, 480 s apart, then capped at
        // review_every (600 s).
        assert_eq!(wakes, vec![30, 60, 120, 240, 480, 960, 1560]);
    }

    #[test]
    fn an_accepted_item_sent_to_review_for_lack_of_news_keeps_its_reference_for_a_late_outcome() {
        let t = Timings {
            max_polls: Some(1),
            ..timings()
        };
        let mut s = State::Planned;
        for e in [
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: Verdict::Accepted {
                    reference: "r1@p1".into(),
                },
                now: 1,
            },
            Event::Tick { now: 31_000 },
            Event::Tick { now: 62_000 },
        ] {
            s = step(&s, e, &policy(), &t).0;
        }
        assert!(matches!(&s, State::NeedsReview { code, .. } if code == "no-outcome"));
        assert_eq!(s.reference(), Some("r1@p1"));
        let late = Event::Observed {
            verdict: paid(),
            now: 70_000,
        };
        assert!(matches!(
            step(&s, late, &policy(), &t).0,
            State::Succeeded { .. }
        ));
    }

    #[test]
    fn an_item_under_review_is_asked_about_again_on_schedule_until_it_resolves() {
        let held = Verdict::NeedsReview {
            code: "5".into(),
            description: "Offline Antifraud check: RFI".into(),
        };
        let (s, fx) = run(vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: held.clone(),
                now: 0,
            },
            Event::Tick { now: 10 * MIN },
            Event::Observed {
                verdict: held,
                now: 10 * MIN,
            },
            Event::Tick { now: 20 * MIN },
            Event::Observed {
                verdict: paid(),
                now: 20 * MIN,
            },
        ]);
        assert!(matches!(s, State::Succeeded { .. }));
        assert_eq!(fx[2][0], Effect::Lookup);
        assert_eq!(fx[4][0], Effect::Lookup);
        assert_eq!(sends(&fx), 1);
    }

    #[test]
    fn lookups_that_keep_failing_hand_an_in_doubt_item_to_a_person() {
        let mut events = vec![
            Event::Tick { now: 0 },
            Event::Sent {
                verdict: Verdict::InDoubt,
                now: 0,
            },
        ];
        let mut now = 3 * MIN;
        for _ in 0..4 {
            events.push(Event::Tick { now });
            events.push(Event::Observed {
                verdict: Verdict::RetryLater {
                    class: ErrorClass::Network,
                    retry_after: None,
                },
                now,
            });
            now += MIN;
        }
        let (s, fx) = run(events);
        assert!(
            matches!(&s, State::NeedsReview { code, .. } if code == "in-doubt"),
            "{s:?}"
        );
        assert_eq!(
            sends(&fx),
            1,
            "an item in doubt is never resent without a definite 'unknown'"
        );
    }

    /// Whatever the order of answers, lookups, notifications, timers and restarts, a request is
    /// only sent from `Planned`, after a refusal that processed nothing (`RetryAt`), or when a
    /// lookup said the provider never saw the key — never twice on a doubt, never after the end.
    #[test]
    fn no_sequence_of_events_sends_a_request_without_a_reason() {
        let verdicts = || {
            vec![
                Verdict::Accepted {
                    reference: "g".into(),
                },
                paid(),
                Verdict::Failed {
                    code: "4006".into(),
                    description: "x".into(),
                },
                Verdict::NeedsReview {
                    code: "9999".into(),
                    description: "x".into(),
                },
                Verdict::AlreadyExists,
                Verdict::NotYetVisible,
                Verdict::Unknown,
                Verdict::RetryLater {
                    class: ErrorClass::RateLimited,
                    retry_after: None,
                },
                Verdict::InDoubt,
            ]
        };
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2_000 {
            let mut s = State::Planned;
            let mut now = 0;
            for _ in 0..40 {
                now += next() % (5 * MIN);
                let v = verdicts()[(next() % 9) as usize].clone();
                let e = match next() % 4 {
                    0 => Event::Tick { now },
                    1 => Event::Sent {
                        verdict: v.clone(),
                        now,
                    },
                    2 => Event::Observed {
                        verdict: v.clone(),
                        now,
                    },
                    _ => Event::Resume { now },
                };
                let (n, fx) = step(&s, e.clone(), &policy(), &timings());
                if fx.iter().any(|f| matches!(f, Effect::Send { .. })) {
                    let reason = matches!(
                        (&s, &e),
                        (State::Planned, _)
                            | (State::RetryAt { .. }, _)
                            | (
                                State::InDoubt { .. },
                                Event::Observed {
                                    verdict: Verdict::Unknown,
                                    ..
                                }
                            )
                    );
                    assert!(reason, "sent from {s:?} on {e:?}");
                    assert!(
                        matches!(n, State::Sending { .. }),
                        "a send is always recorded as Sending first"
                    );
                }
                if s.is_final() && n != s {
                    // Only an outcome contradicting a final one moves it: money moving back,
                    // or money that moved after all.
                    let contradiction = matches!(
                        (&s, &e, &n),
                        (
                            State::Succeeded { .. },
                            Event::Observed {
                                verdict: Verdict::Failed { .. },
                                ..
                            },
                            State::Reversed { .. }
                        ) | (
                            State::Failed { .. },
                            Event::Observed {
                                verdict: Verdict::Succeeded { .. },
                                ..
                            },
                            State::NeedsReview { .. }
                        )
                    );
                    assert!(contradiction, "final {s:?} moved to {n:?} on {e:?}");
                }
                s = n;
            }
        }
    }

    #[test]
    fn states_survive_a_round_trip_through_the_store_format() {
        let s = State::InDoubt {
            attempt: 2,
            since: 5,
            at: 9,
            lookups: 1,
            unlisted: 0,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"state":"in_doubt","attempt":2,"since":5,"at":9,"lookups":1}"#
        );
        assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
    }

    /// Payonic-like timings: no idempotency, a settle window of 10 minutes, no reversals.
    fn no_idempotency() -> Timings {
        Timings {
            propagation: Duration::from_secs(5),
            poll_every: Duration::from_secs(60),
            settle: Duration::from_secs(600),
            reversals: false,
            max_lookups: 10,
            poll_backoff: 2.0,
            ..timings()
        }
    }

    /// An item in doubt since `since` (a 5xx to its request at that time).
    fn in_doubt_since(since: Millis, t: &Timings) -> State {
        let (s, _) = step(
            &State::Sending { attempt: 1, since },
            Event::Sent {
                verdict: Verdict::InDoubt,
                now: since,
            },
            &policy(),
            t,
        );
        assert!(matches!(s, State::InDoubt { .. }), "{s:?}");
        s
    }

    fn unlisted(s: &State, asked: Millis, now: Millis, t: &Timings) -> (State, Vec<Effect>) {
        step(
            s,
            Event::Observed {
                verdict: Verdict::Unlisted { asked },
                now,
            },
            &policy(),
            t,
        )
    }

    #[test]
    fn not_listed_before_the_settle_window_sends_nothing_and_moves_the_next_lookup_to_its_end() {
        let t = no_idempotency();
        let s = in_doubt_since(0, &t);
        let (s, fx) = unlisted(&s, 5 * SEC, 6 * SEC, &t);
        assert_eq!(sends(&[fx]), 0);
        match s {
            State::InDoubt { at, unlisted, .. } => {
                assert_eq!(unlisted, 0, "an answer before the window confirms nothing");
                assert!(at <= 10 * MIN, "asked again by the window's end: {at}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_listed_answers_before_the_settle_window_do_not_use_up_the_lookups() {
        // A window twenty lookups long (at the time scale the tests run, where the runner's
        // waits have a floor): every early answer is followed by another lookup, never by a
        // person, and the two after the window send the item again.
        let t = Timings {
            max_lookups: 3,
            settle: Duration::from_secs(20 * 60),
            ..no_idempotency()
        };
        let mut s = in_doubt_since(0, &t);
        let mut now = 0;
        let mut sent = 0;
        for _ in 0..40 {
            let State::InDoubt { at, .. } = s else { break };
            now = now.max(at);
            let (next, fx) = step(&s, Event::Tick { now }, &policy(), &t);
            assert!(
                !matches!(next, State::NeedsReview { .. }),
                "sent to a person before the window passed, at {now}"
            );
            assert!(fx.contains(&Effect::Lookup));
            let (next, fx) = unlisted(&next, now, now + SEC, &t);
            sent += sends(&[fx]);
            s = next;
            now += SEC;
        }
        assert_eq!(
            sent, 1,
            "sent again once, after two answers past the window"
        );
        assert!(now >= 20 * MIN);
    }

    #[test]
    fn not_listed_is_trusted_only_after_the_settle_window_and_confirmed_by_a_second_lookup() {
        let t = no_idempotency();
        let s = in_doubt_since(0, &t);
        // Asked before the window's end, answered after it: still nothing.
        let (s, fx) = unlisted(&s, 10 * MIN - 1, 10 * MIN + SEC, &t);
        assert_eq!(sends(&[fx]), 0);
        let (s, fx) = unlisted(&s, 10 * MIN, 10 * MIN + SEC, &t);
        assert_eq!(
            sends(std::slice::from_ref(&fx)),
            0,
            "one lookup is no proof"
        );
        assert!(matches!(s, State::InDoubt { unlisted: 1, .. }), "{s:?}");
        let (s, fx) = unlisted(&s, 11 * MIN, 11 * MIN + SEC, &t);
        assert_eq!(
            sends(&[fx]),
            1,
            "confirmed twice: sent again, with the same key"
        );
        assert!(matches!(s, State::Sending { attempt: 2, .. }), "{s:?}");
    }

    #[test]
    fn an_item_in_doubt_whose_lookups_never_settle_it_goes_to_a_person_saying_why() {
        let t = no_idempotency();
        let mut s = in_doubt_since(0, &t);
        s = unlisted(&s, 10 * MIN, 10 * MIN + SEC, &t).0;
        let mut now = 10 * MIN;
        for _ in 0..=t.max_lookups {
            now = s.due().unwrap_or(now).max(now);
            s = step(&s, Event::Tick { now }, &policy(), &t).0;
        }
        match s {
            State::NeedsReview {
                code, description, ..
            } => {
                assert_eq!(code, "in-doubt");
                assert!(description.contains("not listed"), "{description}");
                assert!(description.contains("not sent again"), "{description}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failure_reported_after_a_success_goes_to_review_where_the_provider_has_no_reversals() {
        let t = no_idempotency();
        let paid = State::Succeeded {
            ids: Default::default(),
            at: 1,
        };
        let declined = Verdict::Failed {
            code: "51".into(),
            description: "declined".into(),
        };
        let (s, _) = step(
            &paid,
            Event::Observed {
                verdict: declined.clone(),
                now: 2,
            },
            &policy(),
            &t,
        );
        assert!(
            matches!(&s, State::NeedsReview { code, .. } if code == "contradicted"),
            "{s:?}"
        );
        let (s, _) = step(
            &paid,
            Event::Observed {
                verdict: declined,
                now: 2,
            },
            &policy(),
            &timings(),
        );
        assert!(matches!(s, State::Reversed { .. }), "{s:?}");
    }
}

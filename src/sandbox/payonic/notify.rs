//! Posting a notification (L23) to a request's `notificationurl`, after the configured
//! processing latency and subject to the webhook faults (drop, duplicate, delay, reorder).
//!
//! Choices: the body is the JSON of the function's notification, `Content-Type:
//! application/json`, with the request's `TraceApi` header echoed when it had one; there is no
//! signature (the document defines none), so `webhook_bad_signature_rate` does not apply; a
//! failed delivery is not retried. The fault "step" (how late a delayed or reordered
//! notification comes, how soon a duplicate follows) is `notify_delay_max`.

use super::Ctx;
use crate::sandbox::faults;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Schedules `body` to `url` at provider time `at`; `rng` decides the faults.
pub fn send(
    ctx: &Ctx,
    rng: &mut rand::rngs::StdRng,
    url: &str,
    trace: Option<&str>,
    at: Duration,
    body: Value,
) {
    let state = &ctx.state;
    let f = state.faults();
    let step = state.clock.real(ctx.payonic.config.notify_delay_max);
    let due = state.clock.real(at.saturating_sub(state.clock.now()));
    let d = faults::delivery(rng, &f, due, step);
    for (happened, what) in [
        (d.dropped, "dropped"),
        (d.duplicated, "duplicated"),
        (d.delayed, "delayed"),
        (d.reordered, "reordered"),
    ] {
        if happened {
            state.ledger.event(&format!("payonic.notifications.{what}"));
        }
    }
    if d.sends.is_empty() || tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let url = url.to_string();
    let trace = trace.map(str::to_string);
    let body = body.to_string();
    let state = Arc::clone(state);
    tokio::spawn(async move {
        for (delay, _) in d.sends {
            tokio::time::sleep(delay).await;
            // Never tell of an outcome the state file could still lose.
            if let Some(j) = state.ledger.journal()
                && j.commit().await.is_err()
            {
                return;
            }
            let mut req = crate::sandbox::notify_client()
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(t) = &trace {
                req = req.header("TraceApi", t);
            }
            let ok = req.send().await.is_ok_and(|r| r.status().is_success());
            state.ledger.event(if ok {
                "payonic.notifications.sent"
            } else {
                "payonic.notifications.failed"
            });
        }
    });
}

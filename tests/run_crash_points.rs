//! `kill -9` at every kind of instant, then `payrun resume`: the sandbox's ledger shows every
//! item paid exactly once, and `payrun report` agrees with it.
//!
//! `PAYRUN_CRASH_AT=<point>:<n>` (src/execute/crash.rs) makes the runner SIGKILL itself the
//! n-th time it passes a point:
//!
//! - `before-send`: the items' `sending` state is durable, the request has not left;
//! - `after-send`: the provider answered (and paid), the answer is not recorded;
//! - `mid-commit`: a group commit wrote its rows but did not commit them;
//! - `after-commit`: a group commit is durable, nothing else happened since.
//!
//! The payroll example runs in packs of 2 (25 requests), so the points are passed many times.

mod support;

use std::time::Duration;
use support::run::*;

/// The sandbox refuses a second payment with an invoiceId already paid (3011) and replays a
/// request id it has seen, so the ledger alone would not show a runner that resends blindly:
/// its counters do. An item in doubt must be looked up, not offered again.
fn nothing_paid_was_offered_again(sandbox: &Sandbox) {
    let c = sandbox.counters();
    assert_eq!(
        c["duplicates_refused"], 0,
        "a paid item was sent again: {c}"
    );
    assert_eq!(c["replays"], 0, "a request was sent again: {c}");
}

/// The payroll, killed at `point:n`, then resumed; returns how many payments the sandbox had
/// made when the runner died.
fn killed_at_and_resumed(point: &str, n: u32) -> usize {
    let sandbox = sandbox().start();
    let batch = Batch::payroll(&sandbox).packs_of(2);

    let crashed = batch
        .run()
        .env("PAYRUN_CRASH_AT", &format!("{point}:{n}"))
        .dies_by_sigkill();
    assert!(
        crashed.log().contains("crash point"),
        "{point}:{n}\n{}",
        crashed.log_tail()
    );
    let paid_at_crash = sandbox.ledger().len();
    assert!(paid_at_crash < 50, "{point}:{n}: killed before the end");

    batch.resume().succeeds();

    let report = batch.report();
    report.all_paid().agrees_with(&sandbox.ledger());
    assert_eq!(sandbox.ledger().len(), 50, "{point}:{n}");
    nothing_paid_was_offered_again(&sandbox);
    paid_at_crash
}

#[test]
fn killed_before_a_request_leaves_then_resumed_pays_every_item_exactly_once() {
    for n in [1, 5, 13] {
        killed_at_and_resumed("before-send", n);
    }
}

#[test]
fn killed_after_the_provider_paid_but_before_the_answer_is_recorded_then_resumed_pays_every_item_exactly_once()
 {
    for n in [1, 5, 13] {
        let paid = killed_at_and_resumed("after-send", n);
        // Each of the n answered packs of 2 was paid before its answer came back.
        assert!(paid >= 2 * n as usize, "after-send:{n}: {paid} paid");
    }
}

#[test]
fn killed_in_the_middle_of_a_group_commit_then_resumed_pays_every_item_exactly_once() {
    // The 1st commit records all 50 items as `sending`: killed in it, nothing is durable.
    for n in [1, 2, 6] {
        killed_at_and_resumed("mid-commit", n);
    }
}

#[test]
fn killed_just_after_a_group_commit_then_resumed_pays_every_item_exactly_once() {
    // A run of this batch makes a dozen or so commits; on a loaded machine more answers share
    // a commit, so the points stay well before its end.
    for n in [1, 3, 6] {
        killed_at_and_resumed("after-commit", n);
    }
}

#[test]
fn killed_while_items_wait_for_their_webhooks_then_resumed_pays_every_item_exactly_once() {
    // Each level of a tree takes 30 provider minutes (1.8 s here), and webhooks come late: the
    // runner has sent everything and waits, with every item `submitted`, when it is killed.
    let port = free_port();
    let sandbox = sandbox()
        .paysend("level_time: 30m")
        .webhooks_to(port)
        .fault("webhook_delay_rate=1")
        .start();
    let batch = Batch::payroll(&sandbox).packs_of(5).webhooks_on(port);
    let run = batch.run().spawn();
    let waiting = eventually(Duration::from_secs(10), || {
        batch
            .try_status()
            .is_some_and(|s| s["states"]["submitted"] == 50)
    });
    assert!(
        waiting,
        "items waited for their outcome: {}",
        batch.status()
    );
    let status = batch.status();
    assert!(status["running"]["pid"].is_u64(), "{status}");
    assert_eq!(
        status["states"]["paid"].as_u64().unwrap_or(0),
        0,
        "{status}"
    );

    run.kill9();

    let paid_at_kill = sandbox.ledger().len();
    assert!(
        paid_at_kill == 50,
        "the provider had taken them: {paid_at_kill}"
    );
    batch.resume().succeeds();

    let report = batch.report();
    report.all_paid().agrees_with(&sandbox.ledger());
    assert_eq!(sandbox.ledger().len(), 50);
    nothing_paid_was_offered_again(&sandbox);
}

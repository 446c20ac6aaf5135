//! Delayed steps survive `kill -9`: a run killed while every item is paid and its delayed step
//! is scheduled resumes, waits out what is left of the delay, sends each step once, and pays
//! nobody twice.

mod support;

use std::time::Duration;
use support::run::*;

/// The payroll example with a delayed confirmation under each payout.
fn payroll_with_a_delayed_confirmation(sandbox: &Sandbox, delay: &str) -> Batch {
    Batch::payroll(sandbox).edit(
        "            country: ${item.country}\n\n# Paysend",
        &format!(
            "            country: ${{item.country}}\n    success:\n      - id: confirm\n        op: task.statusGet\n        delay: {delay}\n        payload:\n          invoiceId: ${{idempotency_key}}\n\n# Paysend"
        ),
    )
}

#[test]
fn a_run_killed_while_its_delayed_steps_wait_resumes_and_sends_each_step_once() {
    let sandbox = sandbox().start();
    let batch = payroll_with_a_delayed_confirmation(&sandbox, "3s");
    let run = batch.run().spawn();
    let waiting = eventually(Duration::from_secs(20), || {
        batch
            .try_status()
            .is_some_and(|s| s["states"]["paid"] == 50 && s["steps"]["scheduled"] == 50)
    });
    assert!(
        waiting,
        "every payout done, every step waiting: {}",
        batch.status()
    );
    run.kill9();
    let posts_before = sandbox.requests("POST /paysend/processing 200");

    batch.resume().succeeds();

    let status = batch.status();
    assert_eq!(status["steps"]["done"], 50, "{status}");
    let report = batch.report();
    report.all_paid().agrees_with(&sandbox.ledger());
    for row in &report.rows {
        assert!(
            row.get("delayed_steps").starts_with("0.success.0 done "),
            "{}: {}",
            row.id(),
            row.get("delayed_steps")
        );
    }
    // The resume's getBalance preflight, then 50 steps packed 10 per request (status polls
    // are GETs): 6 POSTs at most.
    let sent = sandbox.requests("POST /paysend/processing 200") - posts_before;
    assert!(
        sent <= 6,
        "each step sent once, in packs: {sent} submissions"
    );
    assert_eq!(sandbox.ledger().len(), 50);
}

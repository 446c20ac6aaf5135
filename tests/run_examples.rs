//! The example batches paid end to end: `payrun run` against a `payrun sandbox` process, judged
//! by the sandbox's ledger — every item paid once, and `payrun report` tells the same story
//! (payment ids, amounts, currencies).

mod support;

use support::run::*;

#[test]
fn the_payroll_example_pays_every_employee_once_after_its_balance_preflight() {
    let sandbox = sandbox().start();
    let batch = Batch::payroll(&sandbox);
    batch.run().succeeds();

    let report = batch.report();
    assert_eq!(report.rows.len(), 50);
    report.all_paid().agrees_with(&sandbox.ledger());
    assert_eq!(sandbox.ledger().len(), 50);
    // The getBalance preflight, then 5 packs of 10 (the manifest's tasks_per_request).
    assert_eq!(sandbox.requests("POST /paysend/processing 200"), 6);
}

#[test]
fn running_the_payroll_example_again_pays_nobody_twice() {
    let sandbox = sandbox().start();
    let batch = Batch::payroll(&sandbox);
    batch.run().succeeds();
    let before = batch.report();

    batch.run().succeeds();

    let after = batch.report();
    after.all_paid().agrees_with(&sandbox.ledger());
    assert_eq!(sandbox.ledger().len(), 50);
    for r in &before.rows {
        assert_eq!(after.row(r.id()).get("payment_id"), r.get("payment_id"));
    }
    let c = sandbox.counters();
    assert_eq!(c["duplicates_refused"], 0, "nothing was even offered twice");
    assert_eq!(c["replays"], 0, "{c}");
}

#[test]
fn the_card_example_pays_every_contractor_once_with_webhooks_to_its_listener() {
    let port = free_port();
    let sandbox = sandbox().webhooks_to(port).start();
    let batch = Batch::contractors(&sandbox, port);
    batch.run().succeeds();

    let report = batch.report();
    assert_eq!(report.rows.len(), 8);
    report.all_paid().agrees_with(&sandbox.ledger());
    let ledger = sandbox.ledger();
    assert_eq!(ledger.len(), 8);
    assert!(ledger.0.iter().all(|e| e["operation"] == "pay.toCard"));
    // One TransactionStatusUpdate per payment, and a basic callback per request, were sent to
    // payrun's listener.
    let sent = sandbox.counters()["webhooks_sent"].as_u64().unwrap();
    assert!(sent >= 8, "{sent} notifications sent");
}

#[test]
fn the_card_example_rehearsed_on_the_embedded_sandbox_pays_every_contractor() {
    // `--sandbox`: payrun starts the sandbox itself and wires its webhooks to a free port, so
    // only the report can tell what happened.
    let sandbox = sandbox().start(); // only for credentials the manifest names; not used
    let batch = Batch::contractors(&sandbox, free_port());
    batch.run().arg("--sandbox").succeeds();

    let report = batch.report();
    report.all_paid();
    assert_eq!(report.rows.len(), 8);
    let mut ids: Vec<&str> = report.rows.iter().map(|r| r.get("payment_id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "a payment id of its own for each contractor");
    assert!(ids.iter().all(|id| id.len() == 36));
    assert!(
        sandbox.ledger().is_empty(),
        "the embedded sandbox paid, not this one"
    );
}

#[test]
fn the_payonic_payouts_example_with_its_listener_rehearsed_on_the_embedded_sandbox_pays_every_player_once()
 {
    // The example listens for the Payment API's answers (a lost payout answer is settled only
    // that way); with --sandbox the listener is on a free loopback port.
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    support::payrun([
        "run",
        "batches/payouts-payonic/manifest.yaml",
        "--sandbox",
        "--yes",
        "--state-dir",
        state_dir,
    ])
    .succeeds()
    .stdout_has("5 items: 5 paid, 0 failed, 0 need review, 0 unfinished");
    let ledger = state.path().join("acme-games-payouts-2026-11.sandbox");
    support::payrun(["sandbox", "ledger", "--state", ledger.to_str().unwrap()])
        .succeeds()
        .stdout_has("5 movements, 0 keys paid more than once");
}

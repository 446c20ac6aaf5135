//! Notifications that arrive twice, late, out of order or forged: every item still ends in
//! the state its outcome calls for, and is paid exactly once. Outcomes arrive both by
//! TransactionStatusUpdate webhooks to payrun's listener and by polling; the sandbox's faults
//! (batches/sandbox.yaml) decide how the webhooks travel.

mod support;

use std::collections::BTreeSet;
use support::run::*;
use support::wire::Proxy;

#[test]
fn duplicated_delayed_reordered_and_forged_webhooks_leave_every_card_payout_in_its_right_state() {
    // Each level of a tree takes 2 provider minutes (120 ms here), so a notification shifted
    // by a few levels overtakes its neighbours. Every webhook comes twice.
    let port = free_port();
    let sandbox = sandbox()
        .paysend("level_time: 2m")
        .webhooks_to(port)
        .fault("webhook_duplicate_rate=1")
        .fault("webhook_reorder_rate=0.5")
        .fault("webhook_delay_rate=0.3")
        .fault("webhook_bad_signature_rate=0.2")
        .start();
    let example =
        std::fs::read_to_string(root().join("batches/contractors-cards/contractors.csv")).unwrap();
    let mut rows = String::new();
    for (i, line) in example.lines().skip(1).cycle().take(24).enumerate() {
        let rest = line.split_once(',').unwrap().1;
        rows.push_str(&format!("C-{:03},{rest}\n", 300 + i));
    }
    // Declined by the card issuer (pay.toCard triggers), and one the table calls not final.
    rows.push_str("DECLINED-4004,Emma,Schulz,4716949985538078,4004,USD,US\n");
    rows.push_str("DECLINED-4006,Leon,Richter,5555555555554444,4006,EUR,DE\n");
    rows.push_str("UNKNOWN-9999,Hugo,Bernard,5105105105105100,9999,USD,US\n");
    // The example's rows repeat, so their cards and amounts do: allowed for this batch.
    let batch = Batch::contractors_with(&sandbox, port, Some(&rows))
        .limits(50, 5, 4, 4)
        .edit("items:\n", "items:\n  allow_repeated_recipients: true\n");

    batch.run().exits_with(4);

    let report = batch.report();
    assert_eq!(report.rows.len(), 27);
    for r in &report.rows {
        let want = match r.id() {
            "DECLINED-4004" | "DECLINED-4006" => "failed",
            "UNKNOWN-9999" => "needs_review",
            _ => "paid",
        };
        assert_eq!(r.state(), want, "{:?}", r.0);
    }
    assert_eq!(report.row("DECLINED-4004").code(), "4004");
    assert_eq!(report.row("DECLINED-4006").code(), "4006");
    report.agrees_with(&sandbox.ledger());
    assert_eq!(sandbox.ledger().len(), 24);
    // Late webhooks may still be on their way when the run ends.
    let twice = eventually(std::time::Duration::from_secs(3), || {
        sandbox.counters()["webhooks_sent"].as_u64().unwrap() >= 2 * 24
    });
    assert!(
        twice,
        "every payment's webhook was sent twice: {}",
        sandbox.counters()
    );
}

#[test]
fn a_held_payout_whose_completed_webhook_payrun_accepted_during_the_run_ends_paid() {
    // Half the payouts are held for 1 provider minute (60 ms); each level of a tree takes 2
    // (120 ms); notifications are shifted by up to 3 levels, so "Completed" often comes before
    // "OnHold". Packs of one at 10 requests a second keep the run going for a while, and keep
    // payrun's polls waiting for its rate limiter. The sandbox's webhooks go through a
    // recording proxy to payrun's listener: every "Completed" payrun answered 200 while it ran
    // must leave that item paid.
    let port = free_port();
    let hooks = Proxy::to(&format!("http://127.0.0.1:{port}"));
    let sandbox = sandbox()
        .paysend("level_time: 2m")
        .paysend(&format!("webhook_url: {}/paysend/webhook", hooks.root))
        .fault("on_hold_rate=0.5")
        .fault("hold_time=1m")
        .fault("webhook_reorder_rate=1")
        .fault("webhook_duplicate_rate=0.5")
        .start();
    let batch = Batch::payroll_of(&sandbox, 16)
        .limits(10, 1, 4, 1)
        .webhooks_on(port);

    let code = batch.run().spawn().wait().code();

    assert!(matches!(code, Some(0 | 4)), "{code:?}");
    let report = batch.report();
    report.agrees_with(&sandbox.ledger());
    assert_eq!(
        sandbox.ledger().len(),
        16,
        "a held payout is reserved, then completed"
    );
    let completed: BTreeSet<String> = hooks
        .exchanges()
        .iter()
        .filter(|e| e.status == Some(200) && e.request["status"] == "Completed")
        .filter_map(|e| e.request["invoiceId"].as_str().map(String::from))
        .collect();
    let held = report.rows.iter().filter(|r| r.state() == "needs_review");
    for r in held {
        assert_eq!(r.code(), "5", "{:?}", r.0);
        assert!(
            !completed.contains(r.key()),
            "{} is still under review, though payrun accepted its Completed webhook",
            r.id()
        );
    }
}

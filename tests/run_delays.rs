//! Delayed steps of a tree Paysend runs itself: payrun sends a delayed task in a request of its
//! own once the payout above it ended and the delay passed, on the branch that was taken, with
//! `${result.<payout>.<id>}` filled in from the payout's outcome. The report is the judge.

mod support;

use std::collections::HashMap;
use support::payrun_in;

const MANIFEST: &str = r#"batch: delays-test
provider: paysend
environment: sandbox
credentials:
  partner_id: PAYSEND_PARTNER_ID
  inbound_key: PAYSEND_INBOUND_KEY
  outbound_key: PAYSEND_OUTBOUND_KEY
items:
  inline:
    - {id: OK1, amount: "12.34"}
    - {id: CANCELLED, amount: "4010"}
    - {id: OK2, amount: "56.78"}
flow:
  - id: pay
    op: pay.toAccount
    payload:
      transferAmount: ${item.amount}
      transferCurrency: EUR
      purposeOfPayment: Salary
      from: {sender: {type: LegalEntity, name: ACME, address: {addressLine1: Main 1, city: Berlin, country: DE}}}
      to:
        destinationTransactionInstrument: {identifierType: IBAN, accountIdentifier: DE89370400440532013000, bic: COBADEFFXXX, country: DE}
        recipient: {type: Individual, firstName: Anna, lastName: Muller, address: {addressLine1: Main 2, city: Berlin, country: DE}}
    success:
      - id: confirm
        op: task.statusGet
        delay: 700ms
        payload:
          identifier: ${result.pay.paymentId}
    fail:
      - id: recheck
        op: task.statusGet
        delay: 300ms
        payload:
          invoiceId: ${idempotency_key}
"#;

fn report(dir: &std::path::Path) -> Vec<HashMap<String, String>> {
    let out = payrun_in(dir, ["report", "delays-test", "--state-dir", "state"]).succeeds();
    let text = out.stdout();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let headers: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|row| {
            headers
                .iter()
                .cloned()
                .zip(row.unwrap().iter().map(String::from))
                .collect()
        })
        .collect()
}

/// "path state [code or globalId] [sent <time>]" entries of one item's delayed steps.
fn steps(row: &HashMap<String, String>) -> HashMap<String, Vec<String>> {
    row["delayed_steps"]
        .split("; ")
        .map(|s| {
            let mut words = s.split(' ').map(String::from);
            let path = words.next().unwrap();
            (path, words.collect())
        })
        .collect()
}

fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

#[test]
fn a_delayed_step_runs_after_its_payout_on_the_branch_taken_and_is_skipped_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.yaml"), MANIFEST).unwrap();
    payrun_in(
        dir.path(),
        [
            "run",
            "manifest.yaml",
            "--sandbox",
            "--yes",
            "--state-dir",
            "state",
            "--time-scale",
            "1000",
        ],
    )
    // The recheck of the cancelled payout finds nothing (3006): a failed step is a failed run.
    .exits_with(4)
    .stdout_has("3 items: 2 paid, 1 failed")
    .stdout_has("delayed steps: 5 done or skipped, 1 failed, 0 unfinished");
    let rows = report(dir.path());
    assert_eq!(rows.len(), 3, "one row per item, steps are not items");
    for row in rows.iter().filter(|r| r["state"] == "paid") {
        let s = steps(row);
        assert_eq!(s["0.fail.0"][0], "skipped", "{row:?}");
        assert_eq!(
            s["0.success.0"][0], "done",
            "the paymentId of the payout was filled in and found: {row:?}"
        );
        let sent = s["0.success.0"].iter().position(|w| w == "sent").unwrap() + 1;
        let waited = millis(&s["0.success.0"][sent]) - millis(&row["finished_at"]);
        assert!(
            waited >= 700,
            "the step waited its delay after the payout ended ({waited} ms): {row:?}"
        );
    }
    let cancelled = rows.iter().find(|r| r["item_id"] == "CANCELLED").unwrap();
    let s = steps(cancelled);
    assert_eq!(s["0.success.0"][0], "skipped");
    assert_eq!(&s["0.fail.0"][..2], ["failed", "3006"]);
}

#[test]
fn a_delay_that_payrun_cannot_honour_in_a_provider_run_tree_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    // The quote is not a payout: payrun would not know how it ended.
    let m = MANIFEST.replace(
        "flow:\n  - id: pay\n",
        "flow:\n  - id: quote\n    op: fx.rateGet\n    payload: {currencyIn: USD, currencyOut: EUR, amountIn: \"10\", paysystem: VISA}\n    success:\n      - id: later\n        op: task.statusGet\n        delay: 1s\n        payload: {invoiceId: \"${idempotency_key}\"}\n  - id: pay\n",
    );
    std::fs::write(dir.path().join("manifest.yaml"), m).unwrap();
    payrun_in(dir.path(), ["validate", "manifest.yaml"])
        .exits_with(1)
        .stderr_has("flow.delay")
        .stderr_has("`fx.rateGet` is not one");
}

#[test]
fn a_result_of_a_task_in_the_same_provider_run_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = MANIFEST.replace("        delay: 700ms\n", "");
    std::fs::write(dir.path().join("manifest.yaml"), m).unwrap();
    payrun_in(dir.path(), ["validate", "manifest.yaml"])
        .exits_with(1)
        .stderr_has("`result.pay` is not known when this task is sent")
        .stderr_has("give this task (or one between it and `pay`) a `delay`");
}

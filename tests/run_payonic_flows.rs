//! Payonic flows of several operations per item, run by payrun node by node (the job graph):
//! each node is a request of its own, sent once the node above it ended, reading its result.
//! Judged by the sandbox's ledger and its Payment API: every operation exactly once, a branch
//! not taken never sent, also when payrun is killed between and during the steps.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use support::payonic::*;
use support::run::*;

/// Captures of `n` authorized payments `ca00000001…` (DKK 100.00 each), then a refund of part of
/// what was captured; a declined capture (an amount ending in 051 minor units) voids instead.
fn shipments(dir: &std::path::Path, sb: &Sandbox, n: usize, declined: &[usize], port: u16) {
    let mut csv = String::from("order,payment,shipped,returned,currency\n");
    for i in 1..=n {
        let shipped = if declined.contains(&i) {
            "10.51".to_string()
        } else {
            format!("{}.00", 40 + i % 50)
        };
        csv.push_str(&format!(
            "SO-{i:04},ca{i:08},{shipped},{}.25,DKK\n",
            1 + i % 9
        ));
    }
    std::fs::write(dir.join("shipments.csv"), csv).unwrap();
    std::fs::write(
        dir.join("manifest.yaml"),
        format!(
            r#"batch: refunds-test
provider: payonic
environment: {}/payonic
credentials:
  api_key: PAYONIC_API_KEY
items:
  source: shipments.csv
  columns: {{id: order, paymentid: payment, amount: shipped, returned: returned, currency: currency}}
flow:
  - id: capture
    op: capture
    payload:
      paymentid: ${{item.paymentid}}
      amount: ${{item.amount}}
      currency: ${{item.currency}}
    success:
      - id: refund
        op: refund
        payload:
          paymentid: ${{result.capture.paymentid}}
          amount: ${{item.returned}}
          currency: ${{item.currency}}
    fail:
      - id: release
        op: void
        payload:
          paymentid: ${{item.paymentid}}
          amount: ${{item.amount}}
          currency: ${{item.currency}}
notifications:
  listen: 127.0.0.1:{port}
  public_url: http://127.0.0.1:{port}
  settle: 3m
  lookups: 10
limits: {{requests_per_second: 200, burst: 50, concurrency: 8}}
"#,
            sb.root
        ),
    )
    .unwrap();
}

/// Subscriptions: an MIT on each of `n` payments `ca00000001…`, then the capture of what it
/// authorized, on the payment it created; a declined MIT captures nothing.
fn subscriptions(dir: &std::path::Path, sb: &Sandbox, n: usize, declined: &[usize], port: u16) {
    let mut csv = String::from("subscriber,card_payment,fee,currency\n");
    for i in 1..=n {
        let fee = if declined.contains(&i) {
            "20.51".to_string()
        } else {
            format!("{}.{:02}", 9 + i % 20, i % 100)
        };
        csv.push_str(&format!("S-{i:04},ca{i:08},{fee},DKK\n"));
    }
    std::fs::write(dir.join("subscribers.csv"), csv).unwrap();
    std::fs::write(
        dir.join("manifest.yaml"),
        format!(
            r#"batch: refunds-test
provider: payonic
environment: {}/payonic
credentials:
  api_key: PAYONIC_API_KEY
items:
  source: subscribers.csv
  columns: {{id: subscriber, card_payment: card_payment, amount: fee, currency: currency}}
flow:
  - id: charge
    op: mit
    payload:
      merchantid: payrunsandbox
      paymentid: ${{item.card_payment}}
      amount: ${{item.amount}}
      currency: ${{item.currency}}
    success:
      - id: capture
        op: capture
        payload:
          paymentid: ${{result.charge.paymentid}}
          amount: ${{result.charge.amount}}
          currency: ${{item.currency}}
notifications:
  listen: 127.0.0.1:{port}
  public_url: http://127.0.0.1:{port}
  settle: 3m
  lookups: 10
limits: {{requests_per_second: 200, burst: 50, concurrency: 8}}
"#,
            sb.root
        ),
    )
    .unwrap();
}

fn sandbox_of(n: usize, state: &str, faults: &[&str]) -> Sandbox {
    let mut spec = sandbox()
        .payonic(&format!(
            "generate: {{prefix: ca, count: {n}, amount: 10000, currency: DKK, state: {state}}}"
        ))
        .payonic("notify_delay_min: 1m")
        .payonic("notify_delay_max: 1m");
    for f in faults {
        spec = spec.fault(f);
    }
    spec.start()
}

/// Money movements per (payment, operation).
fn movements(sb: &Sandbox) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for row in &sb.ledger().0 {
        if row["provider"] == "payonic" {
            out.entry((
                row["payment_id"].as_str().unwrap_or("").to_string(),
                row["operation"].as_str().unwrap_or("").to_string(),
            ))
            .or_default()
            .push(row["amount"].as_str().unwrap_or("").to_string());
        }
    }
    out
}

/// The operations the Payment API lists for `payment`, by type (approved ones only).
fn listed(sb: &Sandbox, payment: &str) -> BTreeMap<String, usize> {
    let v: Value = payment_listing(sb, payment);
    let mut out = BTreeMap::new();
    for op in v["operations"].as_array().into_iter().flatten() {
        if op["status"] == "approved" {
            *out.entry(op["operationtype"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    out
}

/// Runs until the batch's items all ended; exit 4 when some failed (a declined capture).
fn runs_to_the_end(dir: &std::path::Path, sb: &Sandbox, args: &[&str], failed: bool) {
    let out = payrun(dir, sb, args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(if failed { 4 } else { 0 }),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn judge_shipments(dir: &std::path::Path, sb: &Sandbox, n: usize, declined: &[usize]) {
    let moved = movements(sb);
    for i in 1..=n {
        let p = format!("ca{i:08}");
        let capture = moved.get(&(p.clone(), "capture".into()));
        let refund = moved.get(&(p.clone(), "refund".into()));
        if declined.contains(&i) {
            assert!(capture.is_none() && refund.is_none(), "{p}: {moved:?}");
            assert_eq!(
                listed(sb, &p).get("void"),
                Some(&1),
                "{p}: the declined capture's authorization was voided once"
            );
        } else {
            assert_eq!(
                capture.map(Vec::len),
                Some(1),
                "{p} captured once: {moved:?}"
            );
            assert_eq!(
                refund,
                Some(&vec![format!("{}.25", 1 + i % 9)]),
                "{p} refunded once, the returned amount: {moved:?}"
            );
            assert_eq!(listed(sb, &p).get("void"), None, "{p}: no void");
        }
    }
    let rows = report(dir, sb);
    let steps = rows.iter().filter(|r| r[1].contains('.')).count();
    assert!(steps == 0 || steps == n, "{rows:?}");
}

#[test]
fn a_capture_is_refunded_on_success_and_voided_on_decline_each_operation_once() {
    let (n, declined) = (10, [3, 7]);
    let sb = sandbox_of(
        n,
        "authorized",
        &["drop_after_commit_rate=0.25", "error_5xx_rate=0.05"],
    );
    let dir = tempfile::tempdir().unwrap();
    shipments(dir.path(), &sb, n, &declined, free_port());
    runs_to_the_end(dir.path(), &sb, &RUN, true);
    judge_shipments(dir.path(), &sb, n, &declined);
    let status = payrun(
        dir.path(),
        &sb,
        &["status", "refunds-test", "--state-dir", "state"],
    )
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        said.contains("skipped 10"),
        "one branch per item not taken, skipped: {said}"
    );
}

#[test]
fn an_mit_is_captured_on_the_payment_it_created_for_the_amount_it_authorized() {
    let (n, declined) = (8, [5]);
    let sb = sandbox_of(n, "captured", &["drop_after_commit_rate=0.25"]);
    let dir = tempfile::tempdir().unwrap();
    subscriptions(dir.path(), &sb, n, &declined, free_port());
    runs_to_the_end(dir.path(), &sb, &RUN, true);
    let moved = movements(&sb);
    let captures: Vec<(&(String, String), &Vec<String>)> = moved
        .iter()
        .filter(|((_, op), _)| op == "capture")
        .collect();
    assert_eq!(captures.len(), n - declined.len(), "{moved:?}");
    for ((payment, _), amounts) in &captures {
        assert!(
            !payment.starts_with("ca"),
            "captured on the payment the MIT created, not its parent: {payment}"
        );
        assert_eq!(amounts.len(), 1, "{payment} captured once: {moved:?}");
    }
    let mut captured: Vec<String> = captures.iter().map(|(_, a)| a[0].clone()).collect();
    captured.sort();
    let mut fees: Vec<String> = (1..=n)
        .filter(|i| !declined.contains(i))
        .map(|i| format!("{}.{:02}", 9 + i % 20, i % 100))
        .collect();
    fees.sort();
    assert_eq!(
        captured, fees,
        "each capture is for what its MIT authorized"
    );
    let c = sb.counters();
    assert_eq!(
        c["events"]["payonic.mit.replayed"].as_u64().unwrap_or(0),
        0,
        "no MIT was sent twice: a lost answer was settled through the Payment API: {c}"
    );
}

#[test]
fn killed_between_and_during_the_steps_every_operation_still_happens_once() {
    let (n, declined) = (8, [2]);
    for (point, seed) in [
        ("after-send:3", 1),
        ("after-send:10", 2),
        ("before-send:9", 3),
        ("after-journal:4", 4),
        ("after-commit:12", 5),
    ] {
        let sb = sandbox()
            .seed(seed)
            .payonic(&format!(
                "generate: {{prefix: ca, count: {n}, amount: 10000, currency: DKK, state: authorized}}"
            ))
            .payonic("notify_delay_min: 1m")
            .payonic("notify_delay_max: 1m")
            .fault("drop_after_commit_rate=0.1")
            .start();
        let dir = tempfile::tempdir().unwrap();
        shipments(dir.path(), &sb, n, &declined, free_port());
        let out = payrun(dir.path(), &sb, &RUN)
            .env("PAYRUN_CRASH_AT", point)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "killed at {point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        runs_to_the_end(dir.path(), &sb, &RESUME, true);
        judge_shipments(dir.path(), &sb, n, &declined);
    }
}

#[test]
fn a_preflight_result_every_items_request_reads_is_filled_in_when_it_is_sent() {
    // Each refund's `tags` is what the health preflight said of the first API: filled in by
    // the runner when the refund is sent, after the preflight passed.
    let sb = sandbox_of(4, "captured", &[]);
    let dir = tempfile::tempdir().unwrap();
    refunds(dir.path(), &sb, 4, free_port());
    let manifest = dir.path().join("manifest.yaml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("rf", "ca")
        .replace(
            "      currency: ${item.currency}\n",
            "      currency: ${item.currency}\n      tags: ${result.health.api.0.status}\n",
        );
    std::fs::write(&manifest, text).unwrap();
    let csv = dir.path().join("refunds.csv");
    let rows = std::fs::read_to_string(&csv).unwrap().replace("rf", "ca");
    std::fs::write(&csv, rows).unwrap();
    runs_to_the_end(dir.path(), &sb, &RUN, false);
    for i in 1..=4 {
        let v = payment_listing(&sb, &format!("ca{i:08}"));
        let refund = v["operations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["operationtype"] == "refund")
            .cloned()
            .unwrap_or_else(|| panic!("refunded: {v}"));
        assert_eq!(refund["tags"], "ok", "{refund}");
    }
}

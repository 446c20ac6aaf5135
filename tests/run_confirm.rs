//! What the operator is asked to confirm is what will be sent (issue 8): the start line and
//! the prompt name the items and amounts per currency *this* command sends — the failed items
//! `--retry-failed` resends, nothing for a batch that has ended — and answering no sends
//! nothing. Real binary against a `payrun sandbox` process on 127.0.0.1; the sandbox's ledger
//! and request counters say whether anything was sent.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::run::{Batch, LIMIT, Sandbox, bank_payouts_manifest, sandbox};

fn items(list: &[(&str, &str, &'static str)]) -> Vec<(String, String, &'static str)> {
    list.iter()
        .map(|(id, amount, currency)| (id.to_string(), amount.to_string(), *currency))
        .collect()
}

/// Requests the provider emulation has answered, by endpoint and status (the harness's own
/// `/__sandbox/` reads left out).
fn provider_requests(sandbox: &Sandbox) -> Vec<(String, serde_json::Value)> {
    let counters = sandbox.counters();
    let Some(all) = counters["requests"].as_object() else {
        return Vec::new();
    };
    all.iter()
        .filter(|(k, _)| !k.contains("/__sandbox/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The line `run` starts with (`batch <id>: …`).
fn start_line(log: &str, batch: &str) -> String {
    log.lines()
        .find(|l| l.starts_with(&format!("batch {batch}: ")))
        .unwrap_or_else(|| panic!("no start line in:\n{log}"))
        .to_string()
}

#[test]
fn retry_failed_shows_and_confirms_only_the_items_it_resends() {
    let sandbox = sandbox().start();
    // The Mock Service declines by amount: 4010 ("Transaction cancelled. Please try again.")
    // is safe to resend, 4006 (account restrictions) is not.
    let batch = Batch::new(
        &sandbox,
        &bank_payouts_manifest(
            "confirm-retry",
            &items(&[
                ("OK1", "12.34", "EUR"),
                ("CANCELLED-EUR", "4010", "EUR"),
                ("RESTRICTED-EUR", "4006", "EUR"),
                ("CANCELLED-GBP", "4010", "GBP"),
                ("RESTRICTED-GBP", "4006", "GBP"),
                ("OK2", "56.78", "GBP"),
            ]),
        ),
        &[],
    );
    let first = batch.run().exits_with(4).log();
    assert_eq!(
        start_line(&first, "confirm-retry"),
        "batch confirm-retry: 6 items to send, EUR 8028.34 (3 payouts), GBP 8072.78 (3 payouts)"
    );

    let again = batch.run().arg("--retry-failed").exits_with(4).log();
    let line = start_line(&again, "confirm-retry");
    assert_eq!(
        line,
        "batch confirm-retry: 2 items to send (2 failed before, sent again with new keys), EUR 4010.00 (1 payout), GBP 4010.00 (1 payout); 4 ended before (2 paid, 2 failed), not sent again",
        "only the resent items and their amounts:\n{again}"
    );
    let report = batch.report();
    for id in ["CANCELLED-EUR", "CANCELLED-GBP"] {
        assert_eq!(report.row(id).get("attempt"), "2", "{id} was resent");
    }
    for id in ["OK1", "OK2", "RESTRICTED-EUR", "RESTRICTED-GBP"] {
        assert_eq!(report.row(id).get("attempt"), "1", "{id} was not");
    }
}

#[test]
fn a_finished_batch_run_again_says_nothing_is_left_to_send() {
    let sandbox = sandbox().start();
    let batch = Batch::new(
        &sandbox,
        &bank_payouts_manifest(
            "confirm-done",
            &items(&[("A", "10.00", "EUR"), ("B", "20.00", "GBP")]),
        ),
        &[],
    );
    batch.run().succeeds();
    let (paid, asked) = (sandbox.ledger().len(), provider_requests(&sandbox));
    assert_eq!(paid, 2);

    let log = batch.run().succeeds().log();
    assert!(
        log.contains("batch confirm-done: nothing left to send: its 2 items ended before (2 paid)"),
        "{log}"
    );
    assert!(
        !log.contains("to send,") && !log.contains("EUR 10.00") && !log.contains("pay these"),
        "no totals as if paying them:\n{log}"
    );
    // Nothing was started: no sandbox traffic at all, not even a lookup.
    assert_eq!(sandbox.ledger().len(), paid);
    assert_eq!(provider_requests(&sandbox), asked);
    // Without --yes and without a terminal: nothing to confirm, so nothing is refused either.
    let log = batch.run_asking().succeeds().log();
    assert!(log.contains("nothing left to send"), "{log}");
}

#[test]
fn a_finished_batch_with_failures_run_again_sends_nothing_and_still_exits_4() {
    let sandbox = sandbox().start();
    let batch = Batch::new(
        &sandbox,
        &bank_payouts_manifest(
            "confirm-failed",
            &items(&[("A", "10.00", "EUR"), ("RESTRICTED", "4006", "EUR")]),
        ),
        &[],
    );
    batch.run().exits_with(4);
    let asked = provider_requests(&sandbox);
    let log = batch.run().exits_with(4).log();
    assert!(
        log.contains("nothing left to send: its 2 items ended before (1 paid, 1 failed)"),
        "{log}"
    );
    assert_eq!(provider_requests(&sandbox), asked);
}

/// `payrun run` (no --yes) on a terminal of its own (`script` gives it a pseudo-terminal),
/// with `answer` typed at the prompt. Returns (exit code, what the terminal showed), or None
/// where `script` is not installed.
fn on_a_terminal(sandbox: &Sandbox, batch: &Batch, answer: &str) -> Option<(i32, String)> {
    let bin = env!("CARGO_BIN_EXE_payrun");
    let mut child = Command::new("script")
        .args([
            "-qec",
            &format!("'{bin}' run manifest.yaml --state-dir state --time-scale 1000"),
            "/dev/null",
        ])
        .current_dir(batch.dir.path())
        .env("PAYSEND_PARTNER_ID", &sandbox.partner)
        .env("PAYSEND_INBOUND_KEY", &sandbox.inbound_key)
        .env("PAYSEND_OUTBOUND_KEY", &sandbox.outbound_key)
        .env_remove("PAYRUN_STATE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut b).ok();
        String::from_utf8_lossy(&b).into_owned()
    });
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("payrun on a terminal did not finish in {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Some((status.code().unwrap_or(-1), reader.join().unwrap()))
}

#[test]
fn answering_no_sends_nothing_and_exits_1() {
    let sandbox = sandbox().start();
    let batch = Batch::new(
        &sandbox,
        &bank_payouts_manifest(
            "confirm-no",
            &items(&[("A", "10.00", "EUR"), ("B", "20.50", "EUR")]),
        ),
        &[],
    );
    let asked = provider_requests(&sandbox);
    // No terminal: --yes is required, and nothing is sent.
    let log = batch.run_asking().exits_with(2).log();
    assert!(log.contains("pass --yes"), "{log}");
    assert_eq!(provider_requests(&sandbox), asked);

    // The decision itself is unit-tested (`outlook::tests::only_yes_is_a_yes`); on a real
    // terminal, where `script` can provide one:
    let Some((code, shown)) = on_a_terminal(&sandbox, &batch, "n\n") else {
        eprintln!("no `script` to provide a terminal; the terminal part is skipped");
        return;
    };
    assert!(
        shown.contains("pay these 2 items, EUR 30.50 (2 payouts)? [y/N]"),
        "{shown}"
    );
    assert!(shown.contains("nothing was sent"), "{shown}");
    assert_eq!(code, 1, "{shown}");
    assert!(sandbox.ledger().is_empty());
    assert_eq!(provider_requests(&sandbox), asked);
    assert!(
        !batch.dir.path().join("state/confirm-no.redb").exists(),
        "declined before the batch started"
    );
}

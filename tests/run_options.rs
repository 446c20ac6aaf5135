//! `payrun run` options against the embedded sandbox: `--retry-failed` (a new attempt with a new
//! key, only for failures the provider calls safe to resend), SHA-512 request signatures, and
//! per-endpoint rate limits. The report is the judge: it carries each item's attempt, key and
//! earlier attempts.

mod support;

use support::payrun_in;

/// A pay.toCard batch where the Mock Service declines by amount: 4010 ("Transaction cancelled.
/// Please try again.") is safe to resend, 4006 (account restrictions) is not.
fn batch(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        r#"batch: options-test
provider: paysend
environment: sandbox
credentials:
  partner_id: PAYSEND_PARTNER_ID
  inbound_key: PAYSEND_INBOUND_KEY
  outbound_key: PAYSEND_OUTBOUND_KEY
items:
  inline:
    - {{id: OK1, amount: "12.34"}}
    - {{id: CANCELLED, amount: "4010"}}
    - {{id: RESTRICTED, amount: "4006"}}
    - {{id: OK2, amount: "56.78"}}
flow:
  - op: pay.toAccount
    payload:
      transferAmount: ${{item.amount}}
      transferCurrency: EUR
      purposeOfPayment: Salary
      from: {{sender: {{type: LegalEntity, name: ACME, address: {{addressLine1: Main 1, city: Berlin, country: DE}}}}}}
      to:
        destinationTransactionInstrument: {{identifierType: IBAN, accountIdentifier: DE89370400440532013000, bic: COBADEFFXXX, country: DE}}
        recipient: {{type: Individual, firstName: Anna, lastName: Muller, address: {{addressLine1: Main 2, city: Berlin, country: DE}}}}
{extra}"#
    );
    std::fs::write(dir.path().join("manifest.yaml"), manifest).unwrap();
    dir
}

const STATE: [&str; 2] = ["--state-dir", "state"];

fn run(dir: &std::path::Path, more: &[&str]) -> support::Run {
    let mut args = vec!["run", "--sandbox", "--yes", "--time-scale", "1000"];
    args.extend_from_slice(&STATE);
    args.extend_from_slice(more);
    payrun_in(dir, args)
}

/// The report as rows of cells by column name.
fn report(dir: &std::path::Path) -> Vec<std::collections::HashMap<String, String>> {
    let out = payrun_in(dir, ["report", "options-test", "--state-dir", "state"]).succeeds();
    let text = out.stdout();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let headers: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|row| {
            let row = row.unwrap();
            headers
                .iter()
                .cloned()
                .zip(row.iter().map(String::from))
                .collect()
        })
        .collect()
}

fn row<'a>(
    rows: &'a [std::collections::HashMap<String, String>],
    id: &str,
) -> &'a std::collections::HashMap<String, String> {
    rows.iter()
        .find(|r| r["item_id"] == id)
        .unwrap_or_else(|| panic!("no row for {id}"))
}

#[test]
fn retry_failed_sends_only_resend_safe_failures_again_as_a_new_attempt_with_a_new_key() {
    let dir = batch("");
    run(dir.path(), &["manifest.yaml"]).exits_with(4);
    let first = report(dir.path());
    assert_eq!(row(&first, "CANCELLED")["error_code"], "4010");
    assert_eq!(row(&first, "RESTRICTED")["error_code"], "4006");
    assert_eq!(row(&first, "CANCELLED")["attempt"], "1");

    // By batch id, as an operator would after a first look at the report.
    run(dir.path(), &["--retry-failed", "options-test"])
        .exits_with(4)
        .stderr_has("retrying 1 failed item(s) with new keys")
        .stderr_has("not sent again")
        .stderr_has("4006");
    let second = report(dir.path());
    let cancelled = row(&second, "CANCELLED");
    assert_eq!(cancelled["attempt"], "2");
    assert_ne!(
        cancelled["idempotency_key"],
        row(&first, "CANCELLED")["idempotency_key"],
        "a new attempt has a new key"
    );
    assert!(
        cancelled["earlier_attempts"].starts_with(&format!(
            "{} 4010 ",
            row(&first, "CANCELLED")["idempotency_key"]
        )),
        "the earlier key and its code stay in the report: {cancelled:?}"
    );
    // The Mock Service declines that amount every time: attempt 2 failed the same way.
    assert_eq!(cancelled["state"], "failed");
    // Untouched: the unsafe failure and the paid items keep their first attempt and key.
    for id in ["RESTRICTED", "OK1", "OK2"] {
        assert_eq!(row(&second, id)["attempt"], "1", "{id}");
        assert_eq!(
            row(&second, id)["idempotency_key"],
            row(&first, id)["idempotency_key"],
            "{id}"
        );
        assert_eq!(row(&second, id)["state"], row(&first, id)["state"], "{id}");
    }

    // Once more: attempt 3, with both earlier keys kept.
    run(dir.path(), &["--retry-failed", "manifest.yaml"]).exits_with(4);
    let third = report(dir.path());
    assert_eq!(row(&third, "CANCELLED")["attempt"], "3");
    assert_eq!(
        row(&third, "CANCELLED")["earlier_attempts"]
            .split("; ")
            .count(),
        2
    );
}

#[test]
fn retry_failed_with_nothing_safe_to_resend_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = batch("");
    let m = std::fs::read_to_string(src.path().join("manifest.yaml"))
        .unwrap()
        .replace("    - {id: CANCELLED, amount: \"4010\"}\n", "");
    std::fs::write(dir.path().join("manifest.yaml"), m).unwrap();
    run(dir.path(), &["manifest.yaml"]).exits_with(4);
    let before = report(dir.path());
    run(dir.path(), &["--retry-failed", "options-test"])
        .succeeds()
        .stderr_has("nothing was sent");
    assert_eq!(report(dir.path()), before);
}

#[test]
fn retry_failed_of_a_batch_never_run_is_an_error() {
    let dir = batch("");
    run(dir.path(), &["--retry-failed", "no-such-batch"])
        .exits_with(2)
        .stderr_has("no batch `no-such-batch`");
}

#[test]
fn requests_signed_with_sha512_are_accepted_and_the_batch_is_paid() {
    let dir = batch("signature: sha512\n");
    run(dir.path(), &["manifest.yaml"]).exits_with(4);
    let rows = report(dir.path());
    for id in ["OK1", "OK2"] {
        assert_eq!(row(&rows, id)["state"], "paid", "{id}");
    }
}

#[test]
fn a_batch_with_a_per_endpoint_limit_runs_to_the_end() {
    let dir = batch(
        "limits:\n  requests_per_second: 100\n  burst: 10\n  endpoints:\n    status: {requests_per_second: 5, burst: 1}\n",
    );
    run(dir.path(), &["manifest.yaml"]).exits_with(4);
    let rows = report(dir.path());
    assert_eq!(row(&rows, "OK1")["state"], "paid");
    assert_eq!(row(&rows, "RESTRICTED")["state"], "failed");
}

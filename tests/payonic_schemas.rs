//! Payonic's field schemas (schemas/payonic/) and example batches: amounts become exact minor
//! units with each currency's exponent (never rounded), keys fit Payonic's ids, payrun fills the
//! note and the notification URL itself.

mod support;

use rand::{Rng, SeedableRng};
use support::{payrun, payrun_in};

fn preview(manifest: &str) -> serde_json::Value {
    payrun(["plan", manifest, "--format", "json", "--show", "100"])
        .succeeds()
        .json()["preview"]
        .clone()
}

#[test]
fn both_payonic_examples_validate() {
    payrun(["validate", "batches/payouts-payonic/manifest.yaml"])
        .succeeds()
        .stdout_has("5 items, 5 valid");
    payrun(["validate", "batches/refunds-payonic/manifest.yaml"])
        .succeeds()
        .stdout_has("4 items, 4 valid");
}

#[test]
fn payout_amounts_are_sent_in_exact_minor_units_and_the_note_carries_the_keyed_key() {
    let items = preview("batches/payouts-payonic/manifest.yaml");
    let amounts: Vec<String> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["tasks"][0]["payload"]["amount"].to_string())
        .collect();
    // DKK 125.50, DKK 80.00, JPY 1500, KWD 42.125, EUR 19.99.
    assert_eq!(amounts, ["12550", "8000", "1500", "42125", "1999"]);
    // The note carries the item's key keyed with the batch's secret, known only to the run.
    for i in items.as_array().unwrap() {
        let note = i["tasks"][0]["payload"]["note"].as_str().unwrap();
        assert_eq!(note, "${keyed_idempotency_key}");
    }
}

#[test]
fn refunds_get_payruns_notification_url_which_the_template_leaves_out() {
    let items = preview("batches/refunds-payonic/manifest.yaml");
    let p = &items[0]["tasks"][0]["payload"];
    assert_eq!(p["notificationurl"], "${notification_url}");
    assert_eq!(p["amount"], 2500);
    payrun(["template", "payonic", "refund"])
        .succeeds()
        .stdout_has("payrun fills `notificationurl`")
        .stdout_lacks("\nnotificationurl ");
}

/// A one-item refund batch with this amount and currency.
fn refund_batch(amount: &str, currency: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("manifest.yaml"),
        format!(
            "batch: b\nprovider: payonic\nenvironment: production\ncredentials: {{api_key: PAYONIC_API_KEY}}\nitems:\n  inline:\n    - {{id: R1, payment: abc123, amount: \"{amount}\", currency: {currency}}}\nflow:\n  - op: refund\n    payload:\n      paymentid: ${{item.payment}}\n      amount: ${{item.amount}}\n      currency: ${{item.currency}}\n{extra}notifications: {{listen: 127.0.0.1:8788, public_url: https://acme.example/payrun}}\n"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn random_amounts_in_jpy_dkk_and_kwd_convert_to_minor_units_exactly() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (currency, exponent) in [("JPY", 0u32), ("DKK", 2), ("KWD", 3)] {
        for _ in 0..5 {
            let minor: u64 = rng.random_range(1..10_000_000_000);
            let scale = 10u64.pow(exponent);
            let text = if exponent == 0 {
                minor.to_string()
            } else {
                format!(
                    "{}.{:0width$}",
                    minor / scale,
                    minor % scale,
                    width = exponent as usize
                )
            };
            let dir = refund_batch(&text, currency, "");
            let out = payrun_in(dir.path(), ["plan", "manifest.yaml", "--format", "json"])
                .succeeds()
                .json();
            assert_eq!(
                out["preview"][0]["tasks"][0]["payload"]["amount"].to_string(),
                minor.to_string(),
                "{currency} {text}"
            );
        }
    }
}

#[test]
fn an_amount_with_more_decimals_than_its_currency_is_refused_never_rounded() {
    for (amount, currency) in [("10.955", "DKK"), ("1500.5", "JPY"), ("1.0001", "KWD")] {
        let dir = refund_batch(amount, currency, "");
        payrun_in(dir.path(), ["validate", "manifest.yaml"])
            .exits_with(1)
            .stderr_has(currency);
    }
}

#[test]
fn a_notification_url_written_in_the_manifest_is_refused() {
    let dir = refund_batch(
        "10.95",
        "DKK",
        "      notificationurl: https://evil.example/steal\n",
    );
    payrun_in(dir.path(), ["validate", "manifest.yaml"])
        .exits_with(1)
        .stderr_has("flow.notification-url");
}

#[test]
fn run_refuses_a_payonic_graph_that_starts_with_two_tasks_and_sends_nothing() {
    // Below the first task, payrun runs a graph node by node (tests/run_payonic_flows.rs); two
    // tasks at the top would be two graphs per item.
    let dir = refund_batch(
        "10.95",
        "DKK",
        "  - op: capture\n    payload:\n      paymentid: ${item.payment}\n      amount: ${item.amount}\n      currency: ${item.currency}\n",
    );
    payrun_in(dir.path(), ["validate", "manifest.yaml"]).succeeds();
    payrun_in(
        dir.path(),
        [
            "run",
            "manifest.yaml",
            "--sandbox",
            "--yes",
            "--state-dir",
            "state",
        ],
    )
    .exits_with(1)
    .stderr_has("starts with one task")
    .stderr_has("nothing was sent");
}

/// The payouts example without its `notifications:` block.
fn payouts_without_a_listener() -> tempfile::TempDir {
    let dir = support::copy_batch("payouts-payonic");
    let manifest = dir.path().join("manifest.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let (start, end) = (
        text.find("# A payout is answered at once").unwrap(),
        text.find("limits:").unwrap(),
    );
    std::fs::write(&manifest, format!("{}{}", &text[..start], &text[end..])).unwrap();
    dir
}

#[test]
fn a_payonic_payout_batch_without_a_notification_listener_is_refused_since_a_lost_answer_could_never_be_settled()
 {
    let dir = payouts_without_a_listener();
    let text = std::fs::read_to_string(dir.path().join("manifest.yaml")).unwrap();
    let flow_line = text.lines().position(|l| l == "flow:").unwrap() + 1;
    let report = payrun_in(
        dir.path(),
        ["validate", "manifest.yaml", "--format", "json"],
    )
    .exits_with(1)
    .json();
    let e = &report["errors"][0];
    assert_eq!(report["errors"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(e["rule"], "manifest.notifications-required", "{e}");
    assert_eq!(e["file"], "manifest.yaml");
    assert_eq!(e["line"], flow_line, "{e}");
    let hint = e["hint"].as_str().unwrap();
    assert!(
        hint.contains("notifications: {listen:")
            && hint.contains("settled only through `payment`, whose answer comes by notification"),
        "{hint}"
    );
    // plan and run refuse it as well; nothing is sent.
    payrun_in(dir.path(), ["plan", "manifest.yaml"])
        .exits_with(1)
        .stderr_has("manifest.notifications-required");
    payrun_in(
        dir.path(),
        [
            "run",
            "manifest.yaml",
            "--sandbox",
            "--yes",
            "--state-dir",
            "state",
        ],
    )
    .exits_with(1)
    .stderr_has("manifest.notifications-required");
    assert!(
        !dir.path()
            .join("state/acme-games-payouts-2026-11.redb")
            .exists()
    );
}

#[test]
fn every_payonic_operation_that_moves_money_needs_a_notification_listener() {
    for op in ["mit", "capture", "refund", "void", "payout"] {
        let dir = tempfile::tempdir().unwrap();
        let csv = payrun(["template", "payonic", op, "--csv"])
            .succeeds()
            .stdout();
        std::fs::write(dir.path().join(format!("{op}.csv")), csv).unwrap();
        let manifest = payrun(["template", "payonic", op, "--manifest"])
            .succeeds()
            .stdout()
            .replace("-CHANGE-ME", "-2026-11");
        // The template asks for the listener; with notifications off the batch is refused.
        let (start, _) = manifest.split_once("notifications:\n").unwrap();
        std::fs::write(
            dir.path().join("manifest.yaml"),
            format!("{start}notifications:\n  mode: polling\n"),
        )
        .unwrap();
        let run = payrun_in(dir.path(), ["validate", "manifest.yaml"]).exits_with(1);
        // An operation answered by notification says so about itself; one answered at once
        // (payout) needs the listener for the Payment API's answer.
        let rule = if op == "payout" {
            "manifest.notifications-required"
        } else {
            "flow.needs-notifications"
        };
        run.stderr_has(rule);
    }
}

#[test]
fn a_thirteen_digit_minor_unit_amount_is_refused_with_the_limit_in_the_items_currency() {
    for (amount, currency, largest) in [
        ("10000000000.00", "DKK", "9999999999.99 DKK"),
        ("1000000000000", "JPY", "999999999999 JPY"),
        ("1000000000.000", "KWD", "999999999.999 KWD"),
    ] {
        let dir = refund_batch(amount, currency, "");
        let report = payrun_in(
            dir.path(),
            ["validate", "manifest.yaml", "--format", "json"],
        )
        .exits_with(1)
        .json();
        let e = &report["errors"][0];
        assert_eq!(e["rule"], "amount.max-digits", "{currency}: {report}");
        assert_eq!(e["field"], "amount");
        assert_eq!(e["line"], 7, "the inline item's line: {e}");
        assert!(
            e["hint"].as_str().unwrap().contains(&format!(
                "at most 12 digits in minor units: at most {largest}"
            )),
            "{e}"
        );
    }
    // Twelve digits are Payonic's limit, not over it.
    for (amount, currency) in [
        ("9999999999.99", "DKK"),
        ("999999999999", "JPY"),
        ("999999999.999", "KWD"),
    ] {
        let dir = refund_batch(amount, currency, "");
        payrun_in(dir.path(), ["validate", "manifest.yaml"]).succeeds();
    }
}

#[test]
fn a_schema_whose_max_digits_or_lookup_cannot_be_right_is_refused_when_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("payonic");
    std::fs::create_dir(&folder).unwrap();
    for e in std::fs::read_dir(support::root().join("schemas/payonic"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), folder.join(e.file_name())).unwrap();
    }
    let edit = |file: &str, from: &str, to: &str| {
        let path = folder.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    };
    edit("payout.yaml", "lookup: payment", "lookup: paymnt");
    edit("refund.yaml", "max_digits: 12", "max_digits: 0");
    edit(
        "capture.yaml",
        "    max_length: 255\n    example: \"taga tagb\"",
        "    max_length: 255\n    max_digits: 3\n    example: \"taga tagb\"",
    );
    let schemas = dir.path().to_str().unwrap();
    payrun([
        "--schemas",
        schemas,
        "validate",
        "batches/payouts-payonic/manifest.yaml",
    ])
    .exits_with(1)
    .stderr_has("error[schema.lookup]: lookup `paymnt` is not an operation of `payonic`")
    .stderr_has("did you mean `payment`?")
    .stderr_has("`max_digits` 0 is not between 1 and 30")
    .stderr_has("`max_digits` does not apply to type string");
}

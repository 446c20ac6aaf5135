//! The `payrun` binary end to end: examples, plans, fingerprints, keys, graphs, templates and
//! exit codes.

mod support;

use support::{copy_batch, payrun, payrun_in, root};

const PAYROLL: &str = "batches/payroll-paysend/manifest.yaml";
const CONTRACTORS: &str = "batches/contractors-cards/manifest.yaml";
const BONUS: &str = "batches/bonus-inline/manifest.yaml";

#[test]
fn every_example_batch_validates() {
    for m in [PAYROLL, CONTRACTORS, BONUS] {
        payrun(["validate", m])
            .succeeds()
            .stdout_has("0 invalid, 0 errors");
    }
    payrun(["validate", PAYROLL])
        .succeeds()
        .stdout_has("50 items, 50 valid");
}

#[test]
fn the_plan_of_the_card_payout_tree_reads_as_expected() {
    let run = payrun(["plan", CONTRACTORS]).succeeds();
    insta::assert_snapshot!("plan_contractors_cards", run.stdout());
}

#[test]
fn the_plan_shows_totals_per_currency_and_masks_account_numbers() {
    let run = payrun(["plan", PAYROLL, "--show", "50"]).succeeds();
    let out = run.stdout();
    assert!(out.contains("Totals per currency"), "{out}");
    assert!(out.contains("EUR ") && out.contains("GBP "), "{out}");
    // No IBAN of the file appears in full.
    let csv =
        std::fs::read_to_string(root().join("batches/payroll-paysend/employees.csv")).unwrap();
    for line in csv.lines().skip(1) {
        for cell in line.split(',') {
            if cell.len() > 20
                && cell.chars().take(2).all(|c| c.is_ascii_uppercase())
                && cell[2..4].chars().all(|c| c.is_ascii_digit())
            {
                assert!(!out.contains(cell), "the IBAN {cell} is shown in full");
            }
        }
    }
    assert!(out.contains("********"), "{out}");
}

#[test]
fn the_json_plan_lists_every_item_with_the_keys_derived_from_batch_and_item_id() {
    let plan = payrun(["plan", PAYROLL, "--format", "json"])
        .succeeds()
        .json();
    let items = plan["items"].as_array().unwrap();
    assert_eq!(items.len(), 50);
    let mut keys = std::collections::HashSet::new();
    for item in items {
        let id = item["id"].as_str().unwrap();
        let key = item["key"].as_str().unwrap();
        assert_eq!(key, payrun::keys::item_key("acme-payroll-2026-11", id));
        assert!(keys.insert(key.to_string()), "keys are unique");
        assert_eq!(item["digest"].as_str().unwrap().len(), 32);
    }
    assert_eq!(plan["summary"]["items"], 50);
    assert_eq!(plan["format"], "payrun-plan/1");
    assert!(plan["fingerprint"]["sha256"].as_str().unwrap().len() == 64);
    // The preview carries the payload the provider would receive, masked.
    // Task keys derive from the item key and the node's place in the template.
    assert_eq!(plan["template"]["flow"][0]["tree_path"], "0");
    assert_eq!(
        plan["preview"][0]["tasks"][0]["key"].as_str().unwrap(),
        payrun::keys::task_key(items[0]["key"].as_str().unwrap(), "0")
    );
    let payload = &plan["preview"][0]["tasks"][0]["payload"];
    assert_eq!(payload["invoiceId"], items[0]["key"]);
    assert!(
        payload["to"]["destinationTransactionInstrument"]["accountIdentifier"]
            .as_str()
            .unwrap()
            .starts_with("********")
    );
    assert!(
        payload["transferAmount"].is_number(),
        "pay.toAccount sends transferAmount as a JSON number"
    );
}

#[test]
fn the_same_inputs_always_give_the_same_plan_keys_and_fingerprint() {
    let a = payrun(["plan", PAYROLL, "--format", "json"])
        .succeeds()
        .json();
    let b = payrun(["plan", PAYROLL, "--format", "json"])
        .succeeds()
        .json();
    assert_eq!(a["items"], b["items"]);
    assert_eq!(a["fingerprint"], b["fingerprint"]);
}

#[test]
fn a_saved_plan_has_a_fingerprint_that_changes_with_the_source_file() {
    let dir = copy_batch("payroll-paysend");
    let m = dir.path().join("manifest.yaml");
    let out = dir.path().join("plan.json");
    payrun([
        "plan".as_ref(),
        m.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ])
    .succeeds()
    .stderr_has("plan saved to");
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let inputs = first["fingerprint"]["inputs"].as_array().unwrap();
    let kinds: Vec<&str> = inputs.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["manifest", "source", "schema", "schema", "schema"],
        "manifest, CSV, and the schemas of getBalance (preflight), provider.yaml and pay.toAccount"
    );

    // One cent more for one employee: the source hash and the fingerprint change.
    let csv = dir.path().join("employees.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let line = text.lines().nth(1).unwrap().to_string();
    let pay = line.split(',').nth(9).unwrap().to_string();
    let cents: u64 = pay.replace('.', "").parse().unwrap();
    let bumped = format!("{}.{:02}", (cents + 1) / 100, (cents + 1) % 100);
    std::fs::write(&csv, text.replacen(&line, &line.replace(&pay, &bumped), 1)).unwrap();
    payrun([
        "plan".as_ref(),
        m.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ])
    .succeeds();
    let second: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_ne!(
        first["fingerprint"]["sha256"],
        second["fingerprint"]["sha256"]
    );
    let a: payrun::plan::fingerprint::Fingerprint =
        serde_json::from_value(first["fingerprint"].clone()).unwrap();
    let b: payrun::plan::fingerprint::Fingerprint =
        serde_json::from_value(second["fingerprint"].clone()).unwrap();
    let changes = a.changes(&b);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(
        changes[0].starts_with("source ") && changes[0].ends_with("employees.csv changed"),
        "{changes:?}"
    );
    // Keys do not depend on the amounts: only on batch id and item id.
    assert_eq!(first["items"][0]["key"], second["items"][0]["key"]);
    assert_ne!(
        first["items"][0]["digest"], second["items"][0]["digest"],
        "the content digest sees the change"
    );
}

#[test]
fn an_invalid_batch_has_no_plan_and_no_plan_file() {
    let dir = copy_batch("payroll-paysend");
    let csv = dir.path().join("employees.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(
        &csv,
        text.replacen("COBADEFFXXX,", "COBADEFFXXX,1,", 0)
            .replacen(",EUR,", ",EURO,", 1),
    )
    .unwrap();
    let out = dir.path().join("plan.json");
    let m = dir.path().join("manifest.yaml");
    payrun([
        "plan".as_ref(),
        m.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ])
    .exits_with(1)
    .stderr_has("error[currency.unknown]")
    .stderr_has("there is no plan");
    assert!(!out.exists());
}

#[test]
fn the_flow_template_is_drawn_for_graphviz() {
    let run = payrun(["plan", CONTRACTORS, "--graph", "dot"]).succeeds();
    insta::assert_snapshot!("graph_contractors_cards", run.stdout());
}

#[test]
fn validation_errors_name_file_line_column_rule_value_and_hint() {
    let dir = copy_batch("payroll-paysend");
    let csv = dir.path().join("employees.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<String> = text.split("\r\n").map(String::from).collect();
    lines[3] = lines[3].replace(
        &lines[3].split(',').nth(9).unwrap().to_string(),
        "\"1,000.50\"",
    );
    let mut cells: Vec<&str> = lines[5].split(',').collect();
    cells[6] = "Deutschland";
    cells[0] = "E01001";
    lines[5] = cells.join(",");
    std::fs::write(&csv, lines.join("\r\n")).unwrap();
    let run = support::payrun_in(dir.path(), ["validate", "manifest.yaml"]).exits_with(1);
    insta::assert_snapshot!("validate_errors_payroll", run.stderr());
    insta::assert_snapshot!("validate_summary_payroll", run.stdout());
}

#[test]
fn every_operation_template_validates_as_generated() {
    for (provider, op) in [
        ("paysend", "pay.toAccount"),
        ("paysend", "pay.toCard"),
        ("paysend", "fx.rateGet"),
        ("paysend", "fx.rateGet.p2a"),
        ("paysend", "card.infoGet"),
        ("paysend", "getBalance"),
        ("paysend", "task.statusGet"),
        ("payonic", "payout"),
        ("payonic", "refund"),
        ("payonic", "capture"),
        ("payonic", "void"),
        ("payonic", "mit"),
        ("payonic", "payment"),
    ] {
        for all in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let flag = |f: &str| {
                if all {
                    vec![f.to_string(), "--all".into()]
                } else {
                    vec![f.to_string()]
                }
            };
            let mut csv_args = vec!["template".to_string(), provider.into(), op.into()];
            csv_args.extend(flag("--csv"));
            let csv = payrun(&csv_args).succeeds().stdout();
            let mut man_args = vec!["template".to_string(), provider.into(), op.into()];
            man_args.extend(flag("--manifest"));
            let manifest = payrun(&man_args).succeeds().stdout();
            std::fs::write(dir.path().join(format!("{op}.csv")), csv).unwrap();
            std::fs::write(
                dir.path().join("manifest.yaml"),
                manifest.replace("-CHANGE-ME", "-2026-11"),
            )
            .unwrap();
            support::payrun_in(dir.path(), ["validate", "manifest.yaml"])
                .succeeds()
                .stdout_has("1 item, 1 valid");
        }
    }
}

#[test]
fn the_template_table_lists_required_columns_with_format_and_example() {
    let run = payrun(["template", "paysend", "pay.toCard"]).succeeds();
    insta::assert_snapshot!("template_pay_to_card", run.stdout());
}

#[test]
fn unknown_providers_and_operations_get_a_suggestion_and_exit_2() {
    payrun(["template", "paysnd", "pay.toCard"])
        .exits_with(2)
        .stderr_has("did you mean `paysend`?");
    payrun(["template", "paysend", "pay.toCardd"])
        .exits_with(2)
        .stderr_has("did you mean `pay.toCard`?");
}

#[test]
fn usage_and_io_errors_exit_2_and_invalid_batches_exit_1() {
    payrun(["validate"]).exits_with(2);
    payrun(["frobnicate"]).exits_with(2);
    payrun(["validate", "no/such/manifest.yaml"])
        .exits_with(2)
        .stderr_has("cannot read the manifest");
    payrun(["validate", "--format", "json", "no/such/manifest.yaml"]).exits_with(2);
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["validate", "--help"],
        vec!["plan", "--help"],
        vec!["template", "--help"],
        vec!["sandbox", "--help"],
        vec!["run", "--help"],
        vec!["resume", "--help"],
        vec!["status", "--help"],
        vec!["report", "--help"],
        vec!["list", "--help"],
        vec!["unlock", "--help"],
    ] {
        payrun(cmd).succeeds().stdout_has("Usage:");
    }
}

#[test]
fn the_readme_run_pays_the_example_payroll_in_the_sandbox_and_a_second_run_pays_nothing() {
    let state = tempfile::tempdir().unwrap();
    let s = state.path().to_str().unwrap();
    payrun(["run", PAYROLL, "--sandbox", "--yes", "--state-dir", s])
        .succeeds()
        .stdout_has("50 items: 50 paid, 0 failed");
    payrun(["run", PAYROLL, "--sandbox", "--yes", "--state-dir", s])
        .succeeds()
        .stdout_has("50 paid")
        .stdout_has("0 requests")
        .stderr_has("nothing left to send");
    payrun(["list", "--state-dir", s])
        .succeeds()
        .stdout_has("acme-payroll-2026-11");
    payrun(["status", "acme-payroll-2026-11", "--state-dir", s])
        .succeeds()
        .stdout_has("paid 50")
        .stdout_has("not running");
}

#[test]
fn run_refuses_to_pay_without_confirmation_when_there_is_no_terminal() {
    let state = tempfile::tempdir().unwrap();
    payrun([
        "run",
        PAYROLL,
        "--sandbox",
        "--state-dir",
        state.path().to_str().unwrap(),
    ])
    .exits_with(2)
    .stderr_has("pass --yes");
}

#[test]
fn run_refuses_a_stale_plan_and_names_what_changed() {
    let dir = copy_batch("payroll-paysend");
    let m = dir.path().join("manifest.yaml");
    let plan = dir.path().join("plan.json");
    payrun([
        "plan".as_ref(),
        m.as_os_str(),
        "-o".as_ref(),
        plan.as_os_str(),
    ])
    .succeeds();
    let csv = dir.path().join("employees.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, text.replacen("Berlin", "Bremen", 1)).unwrap();
    let state = dir.path().join("state");
    payrun([
        "run".as_ref(),
        m.as_os_str(),
        "--sandbox".as_ref(),
        "--yes".as_ref(),
        "--plan".as_ref(),
        plan.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ])
    .exits_with(1)
    .stderr_has("no longer matches")
    .stderr_has("employees.csv changed");
}

#[test]
fn a_delayed_step_on_a_branch_not_taken_is_skipped_and_the_run_does_not_wait_for_it() {
    let dir = copy_batch("contractors-cards");
    let m = dir.path().join("manifest.yaml");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(
        &m,
        text.replace(
            "            op: task.statusGet\n",
            "            op: task.statusGet\n            delay: 3m\n",
        ),
    )
    .unwrap();
    payrun(["plan".as_ref(), m.as_os_str()])
        .succeeds()
        .stdout_has("after 3m");
    let state = dir.path().join("state");
    payrun([
        "run".as_ref(),
        m.as_os_str(),
        "--sandbox".as_ref(),
        "--yes".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--time-scale".as_ref(),
        "1000".as_ref(),
    ])
    .succeeds()
    .stdout_has("delayed steps: 8 done or skipped, 0 failed, 0 unfinished");
    payrun([
        "report".as_ref(),
        "contractors-2026-11-w3".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ])
    .succeeds()
    .stdout_has(",0.success.0.fail.0 skipped,,,\n");
}

#[test]
fn a_listener_other_machines_can_reach_is_stated_by_validate_plan_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let case = root().join("tests/fixtures/bad/notifications-listen-all-interfaces-stated");
    for f in ["manifest.yaml", "payouts.csv"] {
        std::fs::copy(case.join(f), dir.path().join(f)).unwrap();
    }
    let stated =
        "warning: notifications.listen 0.0.0.0:8789 accepts connections from other machines";
    payrun_in(dir.path(), ["validate", "manifest.yaml"])
        .succeeds()
        .stderr_has(stated);
    payrun_in(dir.path(), ["plan", "manifest.yaml"])
        .succeeds()
        .stderr_has(stated);
    // run states it before anything else happens (here it then stops: no API key is set).
    payrun_in(
        dir.path(),
        ["run", "manifest.yaml", "--yes", "--state-dir", "state"],
    )
    .stderr_has(stated);
    // A rehearsal's listener takes a free loopback port instead: nothing to state.
    payrun_in(
        dir.path(),
        [
            "run",
            "manifest.yaml",
            "--sandbox",
            "--yes",
            "--state-dir",
            "rehearsal",
            "--time-scale",
            "1000",
        ],
    )
    .succeeds()
    .stderr_lacks("accepts connections from other machines");
}

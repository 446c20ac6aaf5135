//! The manifest shape written for Paysend fits the other providers' flows too: Payonic's request
//! answered by notification, Yuansfer's register -> bank account -> pay chain, Paymega's
//! create -> process, and Payoneer's token -> balance check -> mass payout. Each flow lives in
//! tests/fixtures/flows/<provider>/ and compiles against the PLACEHOLDER schemas in
//! tests/fixtures/placeholder-schemas/ (real field names, patterns and rules from the provider
//! documents, but only for the fields these flows use).

use payrun::compile::{Bound, Task};
use payrun::diagnostic::Diagnostic;
use payrun::manifest::raw::NotificationMode;
use payrun::pipeline::{Prepared, prepare};
use payrun::schema::{Completion, Registry, Role, TreeExecution};
use std::path::{Path, PathBuf};

const PROVIDERS: [&str; 4] = ["payonic", "yuansfer", "paymega", "payoneer"];

fn placeholder_schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/placeholder-schemas")
}

fn placeholder_schemas() -> Registry {
    Registry::Dir(placeholder_schemas_dir())
}

fn flow_folder(provider: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/flows")
        .join(provider)
}

fn rendered(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| d.render())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The provider's fixture manifest, compiled against the placeholder schemas.
fn compiled(provider: &str) -> Prepared {
    let manifest = flow_folder(provider).join("manifest.yaml");
    match prepare(&manifest, &placeholder_schemas()) {
        Ok(prepared) => prepared,
        Err(failure) => panic!(
            "the {provider} manifest does not compile:\n{}",
            rendered(&failure.diagnostics)
        ),
    }
}

/// The provider's fixture manifest with `from` (which must occur exactly once) replaced by `to`,
/// prepared from a copy of its folder.
fn prepared_after_replacing(
    provider: &str,
    from: &str,
    to: &str,
) -> Result<Prepared, payrun::pipeline::Failure> {
    let folder = flow_folder(provider);
    let text = std::fs::read_to_string(folder.join("manifest.yaml")).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "`{from}` must occur exactly once in the {provider} manifest"
    );
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&folder).unwrap().flatten() {
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    let manifest = copy.path().join("manifest.yaml");
    std::fs::write(&manifest, text.replace(from, to)).unwrap();
    prepare(&manifest, &placeholder_schemas())
}

/// The replaced manifest must be refused; its diagnostics are returned.
fn refused_after_replacing(provider: &str, from: &str, to: &str) -> Vec<Diagnostic> {
    match prepared_after_replacing(provider, from, to) {
        Ok(_) => panic!("the {provider} manifest with `{to}` compiled, but it must be refused"),
        Err(failure) => failure.diagnostics,
    }
}

/// The replaced manifest must compile.
fn compiled_after_replacing(provider: &str, from: &str, to: &str) -> Prepared {
    match prepared_after_replacing(provider, from, to) {
        Ok(p) => p,
        Err(failure) => panic!(
            "the {provider} manifest with `{to}` does not compile:\n{}",
            rendered(&failure.diagnostics)
        ),
    }
}

fn assert_refused_as_not_an_ancestor(diagnostics: &[Diagnostic], node: &str) {
    assert!(
        diagnostics.iter().any(|d| d.rule == "flow.reference"
            && d.message
                .contains(&format!("`result.{node}` is not an ancestor"))),
        "expected a flow.reference diagnostic about `result.{node}`, got:\n{}",
        rendered(diagnostics)
    );
}

/// Every item row of the batch passes validation.
fn assert_every_row_validates(prepared: &mut Prepared, rows: u64) {
    let report = payrun::validate::validate(
        &prepared.flow,
        &mut prepared.source,
        100,
        &payrun::validate::NoVisitor,
        |_| {},
    )
    .unwrap_or_else(|d| panic!("the item source cannot be read: {}", d.render()));
    assert!(
        report.is_ok(),
        "rows of {} are invalid:\n{}",
        report.source,
        rendered(&report.errors)
    );
    assert_eq!(report.rows, rows);
    assert_eq!(report.valid_items, rows);
}

fn result_of(node: &str, path: &str) -> Bound {
    Bound::Result {
        node: node.into(),
        path: path.into(),
    }
}

fn value<'a>(task: &'a Task, path: &str) -> &'a Bound {
    &task
        .binding(path)
        .unwrap_or_else(|| panic!("task `{}` has no `{path}`", task.id))
        .value
}

#[test]
fn every_placeholder_provider_is_walked_client_side_and_only_payoneer_packs_payments() {
    for name in PROVIDERS {
        let provider = placeholder_schemas()
            .provider(name)
            .unwrap_or_else(|d| panic!("{name} schemas do not load:\n{}", rendered(&d.0)));
        assert_eq!(provider.tree, TreeExecution::Client, "{name}");
        assert_eq!(provider.packing, name == "payoneer", "{name}");
    }
}

// Payonic: the payout answers on the socket; the request -> notification shape is the payment
// lookup, whose answer arrives as a POST to notificationurl.

#[test]
fn payonic_payout_compiles_with_a_lookup_whose_answer_arrives_by_notification() {
    let mut prepared = compiled("payonic");
    let flow = &prepared.flow;

    let [payout] = flow.tasks.as_slice() else {
        panic!("one root task expected")
    };
    assert_eq!(payout.op, "payout");
    assert_eq!(flow.op("payout").role, Role::Payout);
    assert_eq!(flow.op("payout").completion, Completion::Sync);
    assert_eq!(
        value(payout, "paymentid"),
        &Bound::Row {
            field: "payment_id".into(),
            default: None
        }
    );

    let [lookup] = payout.always.as_slice() else {
        panic!("the lookup runs after the payout, whatever it answered")
    };
    assert_eq!(lookup.id, "lookup");
    assert_eq!(flow.op(&lookup.op).completion, Completion::Notification);
    assert_eq!(
        value(lookup, "notificationurl"),
        &Bound::Const("https://payouts.acme.example.com/payrun/payonic".into())
    );

    let notifications = &flow.manifest.notifications;
    assert_eq!(notifications.mode, NotificationMode::Webhook);
    assert_eq!(notifications.listen.as_deref(), Some("127.0.0.1:8787"));
    assert_eq!(
        notifications.public_url.as_deref(),
        Some("https://payouts.acme.example.com/payrun/payonic")
    );
    assert_eq!(flow.money.len(), 1, "only the payout moves money");

    assert_every_row_validates(&mut prepared, 3);
}

#[test]
fn a_payonic_payout_cannot_read_the_result_of_the_lookup_that_runs_after_it() {
    let diagnostics = refused_after_replacing(
        "payonic",
        "textonstatement: ACME winnings ${item.id}",
        "textonstatement: ${result.lookup.responseid}",
    );
    assert_refused_as_not_an_ancestor(&diagnostics, "lookup");
}

// Yuansfer: register payee -> add bank account -> pay, each step reading the one before.

#[test]
fn yuansfer_chains_register_bank_account_and_pay_by_success_links() {
    let mut prepared = compiled("yuansfer");
    let flow = &prepared.flow;

    let [register] = flow.tasks.as_slice() else {
        panic!("one root task expected")
    };
    let [bank] = register.success.as_slice() else {
        panic!("the bank account is added only after the payee is registered")
    };
    let [pay] = bank.success.as_slice() else {
        panic!("the payee is paid only after the bank account is added")
    };
    assert_eq!(
        [register.op.as_str(), bank.op.as_str(), pay.op.as_str()],
        [
            "payee.register",
            "payee.account.bank-account",
            "payouts.pay"
        ]
    );
    assert_eq!(flow.all_tasks().len(), 3);
    assert!(register.fail.is_empty() && register.always.is_empty());
    assert!(bank.fail.is_empty() && bank.always.is_empty());

    let registered_payee = result_of("register", "customer.customerNo");
    assert_eq!(value(bank, "customerNo"), &registered_payee);
    assert_eq!(value(pay, "customerNo"), &registered_payee);
    assert!(matches!(value(pay, "customerNo"), Bound::Result { node, .. } if node == "register"));
    assert_eq!(
        value(pay, "accountToken"),
        &result_of("bank", "result.accountToken")
    );

    assert_eq!(flow.op("payouts.pay").role, Role::Payout);
    assert_eq!(flow.op("payouts.pay").completion, Completion::Notification);
    assert_eq!(
        value(pay, "invoiceId"),
        &Bound::IdempotencyKey,
        "payrun fills invoiceId in"
    );

    assert_every_row_validates(&mut prepared, 3);
}

#[test]
fn a_yuansfer_bank_account_cannot_read_the_result_of_the_payment_below_it() {
    let diagnostics = refused_after_replacing(
        "yuansfer",
        "\n          customerNo: ${result.register.customer.customerNo}",
        "\n          customerNo: ${result.pay.result.customerNo}",
    );
    assert_refused_as_not_an_ancestor(&diagnostics, "pay");
}

// Paymega: create the invoice, then process it by the id Paymega gave it.

#[test]
fn paymega_processes_the_invoice_only_after_it_was_created() {
    let mut prepared = compiled("paymega");
    let flow = &prepared.flow;

    let [create] = flow.tasks.as_slice() else {
        panic!("one root task expected")
    };
    assert_eq!(create.op, "payout-invoices.create");
    let [process] = create.success.as_slice() else {
        panic!("process must sit under create's success")
    };
    assert_eq!(process.op, "payout-invoices.process");
    assert_eq!(value(process, "id"), &result_of("create", "data.id"));

    assert_eq!(flow.op("payout-invoices.create").role, Role::Payout);
    assert_eq!(
        value(create, "data.attributes.reference_id"),
        &Bound::IdempotencyKey,
        "reference_id is the item's idempotency key"
    );
    assert_eq!(
        value(create, "data.attributes.options.auto_process"),
        &Bound::Const("false".into())
    );
    let [money] = flow.money.as_slice() else {
        panic!("one payout per item expected")
    };
    assert_eq!(money.task, "create");

    assert_every_row_validates(&mut prepared, 3);
}

#[test]
fn a_paymega_invoice_cannot_read_the_result_of_the_processing_below_it() {
    let diagnostics = refused_after_replacing(
        "paymega",
        "description: Contractor payout ${item.id}",
        "description: ${result.process.data.attributes.status}",
    );
    assert_refused_as_not_an_ancestor(&diagnostics, "process");
}

// Payoneer: a token and a balance check once per batch, then one payment per item, many
// payments to a mass payout request.

#[test]
fn payoneer_checks_the_balance_once_per_batch_then_submits_packed_payments() {
    let mut prepared = compiled("payoneer");
    let flow = &prepared.flow;

    let mut preflight = Vec::new();
    for task in &flow.preflight {
        task.walk(&mut preflight);
    }
    let [token, balance] = preflight.as_slice() else {
        panic!("two preflight tasks expected, got {}", preflight.len())
    };
    assert_eq!(flow.op(&token.op).role, Role::Auth);
    assert_eq!(flow.op(&balance.op).role, Role::Balance);
    assert_eq!(
        token.success.len(),
        1,
        "the balance is checked with the token"
    );
    assert_eq!(
        value(balance, "account_id"),
        &Bound::Const("4366181865108056".into())
    );

    let [payout] = flow.tasks.as_slice() else {
        panic!("one task per item expected")
    };
    assert_eq!(payout.op, "masspayouts");
    assert_eq!(flow.op("masspayouts").role, Role::Payout);
    assert_eq!(flow.op("masspayouts").completion, Completion::Poll);
    assert!(flow.provider.packing, "many payments share one request");
    assert_eq!(flow.limits.tasks_per_request, 50);
    assert_eq!(value(payout, "client_reference_id"), &Bound::IdempotencyKey);

    assert_every_row_validates(&mut prepared, 3);
}

#[test]
fn a_payoneer_payment_may_read_a_preflight_result_but_not_an_unknown_node() {
    // Preflight tasks finish before any item starts, so their results (the token) are readable.
    let ok = compiled_after_replacing(
        "payoneer",
        "description: ${item.invoice}",
        "description: ${result.token.access_token}",
    );
    let [payout] = ok.flow.tasks.as_slice() else {
        panic!("one task per item expected")
    };
    assert_eq!(
        value(payout, "description"),
        &Bound::Result {
            node: "token".into(),
            path: "access_token".into()
        }
    );
    let diagnostics = refused_after_replacing(
        "payoneer",
        "description: ${item.invoice}",
        "description: ${result.tokn.access_token}",
    );
    assert_refused_as_not_an_ancestor(&diagnostics, "tokn");
}

#[test]
fn a_payonic_amount_is_sent_in_minor_units() {
    let mut prepared = compiled("payonic");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_payrun"))
        .args([
            "--schemas",
            placeholder_schemas_dir().to_str().unwrap(),
            "plan",
            "--format",
            "json",
        ])
        .arg(flow_folder("payonic").join("manifest.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let amount = &plan["preview"][0]["tasks"][0]["payload"]["amount"];
    assert!(
        amount.is_u64(),
        "amount {amount} is an integer of minor units"
    );
    assert_every_row_validates(&mut prepared, 3);
}

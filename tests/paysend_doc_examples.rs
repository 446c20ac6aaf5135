//! Every task payload printed in the Paysend Enterprise document validates against payrun's
//! Paysend schemas, and the ones the document itself presents as invalid (the "with validation
//! error" example, auto-generated placeholders, mock triggers for error 1000) are refused.
//! The fixtures were extracted from ../shared/providers/paysend-enterprise-api.txt; each names
//! the line it starts on.

use payrun::schema::{Registry, payload::check_payload};
use std::path::Path;

#[test]
fn every_example_payload_in_the_paysend_document_gets_the_verdict_the_document_implies() {
    let provider = Registry::Embedded
        .provider("paysend")
        .expect("paysend schemas load");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paysend-doc-examples");
    let mut seen = 0;
    let mut wrong = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap();
        let ex: serde_json::Value = serde_json::from_str(&text).unwrap();
        let op_name = ex["operation"].as_str().unwrap();
        let op = provider
            .operation(op_name)
            .unwrap_or_else(|| panic!("{}: no schema for {op_name}", path.display()));
        let errors = check_payload(op, &ex["payload"]);
        let valid = ex["expect"] == "valid";
        if valid != errors.is_empty() {
            wrong.push(format!(
                "{} (line {}, expected {}): {:?}",
                path.file_name().unwrap().to_string_lossy(),
                ex["line"],
                ex["expect"],
                errors
            ));
        }
        seen += 1;
    }
    assert!(seen >= 40, "only {seen} examples found");
    assert!(
        wrong.is_empty(),
        "examples with the wrong verdict:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_documented_validation_error_example_is_refused_for_its_zero_amount() {
    let provider = Registry::Embedded.provider("paysend").unwrap();
    let op = provider.operation("pay.toCard").unwrap();
    let payload = serde_json::json!({
        "to": {"cardNumber": "4716949985538078", "amount": 0, "currency": "USD", "firstName": "Derufrewe", "lastName": "Hecdioht"},
        "invoiceId": "Test_TT12"
    });
    let errors = check_payload(op, &payload);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "to.amount");
    assert_eq!(errors[0].violation.rule, "amount.zero");
}

#[test]
fn numeric_and_alphabetic_currencies_both_work_for_pay_to_card() {
    let provider = Registry::Embedded.provider("paysend").unwrap();
    let op = provider.operation("pay.toCard").unwrap();
    for (currency, amount, ok) in [
        ("840", "15", true),
        ("USD", "15.25", true),
        ("392", "15.5", false),
        ("JPY", "1500", true),
        ("999", "1", false),
    ] {
        let payload = serde_json::json!({
            "to": {"cardNumber": "4539025531693033", "amount": amount, "currency": currency, "firstName": "A", "lastName": "B"},
            "invoiceId": "inv-1"
        });
        let errors = check_payload(op, &payload);
        assert_eq!(errors.is_empty(), ok, "{currency} {amount}: {errors:?}");
    }
}

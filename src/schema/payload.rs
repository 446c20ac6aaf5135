//! Checking a whole JSON payload against an operation's schema: the path the provider's own
//! example payloads take (a test proves every example in the Paysend document passes), and the
//! path the sandbox will take for incoming requests.
//!
//! JSON conventions, as the Paysend examples use them: `null`, `""` and `{}` mean "absent";
//! a JSON number stands for its text; a list of objects is checked element by element under
//! the same dotted paths.

use super::{CurrencyRef, FieldKind, Operation, Violation};
use crate::money::Currency;
use serde_json::Value;

/// A problem with one payload path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadError {
    pub path: String,
    pub violation: Violation,
}

fn err(
    path: &str,
    rule: &'static str,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> PayloadError {
    PayloadError {
        path: path.to_string(),
        violation: Violation {
            rule,
            message: message.into(),
            hint: hint.into(),
        },
    }
}

/// Checks `payload` (the task's `payload` object) against `op`; every problem in one pass.
pub fn check_payload(op: &Operation, payload: &Value) -> Vec<PayloadError> {
    let mut leaves: Vec<(String, String)> = Vec::new();
    let mut errors = Vec::new();
    match payload {
        Value::Object(_) => flatten(op, "", payload, &mut leaves, &mut errors),
        _ => errors.push(err(
            "",
            "payload.not-object",
            "the payload is not an object",
            "send a JSON object",
        )),
    }
    let value_of = |p: &str| {
        leaves
            .iter()
            .find(|(lp, _)| lp == p)
            .map(|(_, v)| v.as_str())
    };
    for (path, text) in &leaves {
        let Some(field) = op.field(path) else {
            continue;
        };
        let res = match &field.kind {
            FieldKind::Amount { currency, .. } => {
                let cur = match currency {
                    CurrencyRef::Fixed(c) => Some(*c),
                    CurrencyRef::Path(p) => value_of(p).and_then(Currency::from_any),
                };
                field.check_amount(text, cur).map(|_| ())
            }
            // What the field holds may depend on a sibling (`holds_if`: an accountIdentifier
            // whose identifierType is IBAN is an IBAN).
            _ => field.check_holding(text, field.holds_given(|p| value_of(p).map(str::to_string))),
        };
        if let Err(v) = res {
            errors.push(PayloadError {
                path: path.clone(),
                violation: v,
            });
        }
    }
    for f in &op.fields {
        if f.required && value_of(&f.path).is_none() {
            errors.push(err(
                &f.path,
                "required",
                "is required",
                f.description.clone(),
            ));
        }
    }
    for group in &op.any_of {
        if group.iter().all(|p| value_of(p).is_none()) {
            errors.push(err(
                &group.join("|"),
                "required.any-of",
                format!("one of {} is required", group.join(", ")),
                "give one of them",
            ));
        }
    }
    errors
}

fn flatten(
    op: &Operation,
    prefix: &str,
    v: &Value,
    leaves: &mut Vec<(String, String)>,
    errors: &mut Vec<PayloadError>,
) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    Value::Object(_) | Value::Array(_) => {
                        if op.field(&path).is_some() {
                            errors.push(err(
                                &path,
                                "payload.not-scalar",
                                "is a block where a value is expected",
                                "send a single value",
                            ));
                        } else if op.is_object_path(&path) {
                            flatten(op, &path, v, leaves, errors);
                        } else if !is_empty(v) {
                            errors.push(unknown(op, &path));
                        }
                    }
                    Value::Null => {}
                    scalar => {
                        if op.is_object_path(&path) && op.field(&path).is_none() {
                            errors.push(err(
                                &path,
                                "payload.not-object",
                                "is a value where a block is expected",
                                format!(
                                    "`{path}` holds fields, see `payrun template {} {}`",
                                    op.provider, op.name
                                ),
                            ));
                        } else if op.field(&path).is_none() {
                            errors.push(unknown(op, &path));
                        } else {
                            let text = match scalar {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            if !text.is_empty() {
                                leaves.push((path, text));
                            }
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                flatten(op, prefix, item, leaves, errors);
            }
        }
        _ => errors.push(err(
            prefix,
            "payload.not-object",
            "is a value where a block is expected",
            "send an object",
        )),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.values().all(is_empty),
        Value::Array(a) => a.iter().all(is_empty),
        Value::Null => true,
        _ => false,
    }
}

fn unknown(op: &Operation, path: &str) -> PayloadError {
    let hint = match op.closest_path(path) {
        Some(p) => format!("did you mean `{p}`?"),
        None => format!("see `payrun template {} {}`", op.provider, op.name),
    };
    err(
        path,
        "payload.unknown-field",
        format!("is not a field of {}", op.name),
        hint,
    )
}

//! Payload template strings: `${item.amount}`, `${idempotency_key}`, `Salary ${item.month}`.
//!
//! References:
//! - `item.<field>[.<sub>…]`: an item field (a CSV column, an inline key, or a `defaults` entry;
//!   sub-paths reach into `defaults` blocks);
//! - `idempotency_key`: the item's key (derived from batch id and item id);
//! - `task_key`: the key of this task (item key + the task's place in the tree);
//! - `batch`: the batch id;
//! - `result.<node id>.<path>`: a value from the result of an ancestor task or of a preflight
//!   task, known at run time;
//! - `notifications.public_url`: the manifest's public notification URL.
//!
//! `$$` writes a literal `$`.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    Item {
        field: String,
        sub: Vec<String>,
    },
    IdempotencyKey,
    TaskKey,
    Batch,
    Result {
        node: String,
        path: String,
    },
    /// `notifications.public_url`: the URL the provider calls back (Payonic's `notificationurl`,
    /// Yuansfer's `ipnUrl`).
    NotificationUrl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(String),
    Ref(Ref),
}

/// Splits a template string into literal text and references.
pub fn parse(s: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            lit.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| "`${` without a closing `}`".to_string())?;
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Ref(parse_ref(r[..end].trim())?));
            rest = &r[end + 1..];
        } else {
            lit.push('$');
            rest = after;
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(parts)
}

fn parse_ref(r: &str) -> Result<Ref, String> {
    let segs: Vec<&str> = r.split('.').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(format!("`${{{r}}}` is not a reference"));
    }
    match segs.as_slice() {
        ["idempotency_key"] => Ok(Ref::IdempotencyKey),
        ["task_key"] => Ok(Ref::TaskKey),
        ["batch"] => Ok(Ref::Batch),
        ["notifications", "public_url"] => Ok(Ref::NotificationUrl),
        ["item", field, sub @ ..] => Ok(Ref::Item {
            field: field.to_string(),
            sub: sub.iter().map(|s| s.to_string()).collect(),
        }),
        ["result", node, path @ ..] if !path.is_empty() => Ok(Ref::Result {
            node: node.to_string(),
            path: path.join("."),
        }),
        _ => Err(format!(
            "`${{{r}}}` is not a known reference; use item.<field>, idempotency_key, task_key, batch, notifications.public_url or result.<node id>.<path>"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(f: &str) -> Part {
        Part::Ref(Ref::Item {
            field: f.into(),
            sub: vec![],
        })
    }

    #[test]
    fn a_whole_string_reference_is_one_part() {
        assert_eq!(parse("${item.amount}"), Ok(vec![item("amount")]));
        assert_eq!(
            parse("${ idempotency_key }"),
            Ok(vec![Part::Ref(Ref::IdempotencyKey)])
        );
    }

    #[test]
    fn text_and_references_interleave() {
        assert_eq!(
            parse("Salary ${item.month} for ${item.id}"),
            Ok(vec![
                Part::Lit("Salary ".into()),
                item("month"),
                Part::Lit(" for ".into()),
                item("id")
            ])
        );
        assert_eq!(
            parse("costs $$5 or $6"),
            Ok(vec![Part::Lit("costs $5 or $6".into())])
        );
    }

    #[test]
    fn results_and_sub_paths() {
        assert_eq!(
            parse("${result.register.customerNo}"),
            Ok(vec![Part::Ref(Ref::Result {
                node: "register".into(),
                path: "customerNo".into()
            })])
        );
        assert_eq!(
            parse("${item.sender.address.city}"),
            Ok(vec![Part::Ref(Ref::Item {
                field: "sender".into(),
                sub: vec!["address".into(), "city".into()]
            })])
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(parse("${item.amount").is_err());
        assert!(parse("${amount}").is_err());
        assert!(parse("${item.}").is_err());
        assert!(parse("${result.x}").is_err());
    }
}

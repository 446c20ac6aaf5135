//! `payrun template`: what a payroll clerk needs to prepare a file for one operation, generated
//! from the same schema files that `validate` enforces — a table of columns, a CSV header with
//! an example row, or a starter manifest that maps those columns onto the payload.

use crate::schema::{Field, Operation, Provider};
use std::fmt::Write;

/// The item field (and CSV column) name for a payload path: `to.cardNumber` → `to_cardNumber`.
pub fn column_name(path: &str) -> String {
    path.replace('.', "_")
}

/// Fields a clerk fills in: everything but the idempotency and notification URL fields, which
/// payrun fills.
fn fillable(op: &Operation) -> impl Iterator<Item = &Field> {
    op.fields.iter().filter(move |f| {
        op.idempotency.as_deref() != Some(f.path.as_str())
            && op.notification_url.as_deref() != Some(f.path.as_str())
    })
}

/// Required fields, the first field of each any_of group, and the money fields; `all` adds the rest.
fn chosen(op: &Operation, all: bool) -> Vec<&Field> {
    let mut out: Vec<&Field> = fillable(op)
        .filter(|f| {
            all || f.required
                || op.any_of.iter().any(|g| g.first() == Some(&f.path))
                || op
                    .money
                    .as_ref()
                    .is_some_and(|(a, c)| *a == f.path || *c == f.path)
        })
        .collect();
    // Required first, in schema order.
    out.sort_by_key(|f| !f.required);
    out
}

fn requirement(op: &Operation, f: &Field) -> String {
    if f.required {
        return "required".into();
    }
    match op.any_of.iter().find(|g| g.contains(&f.path)) {
        Some(g) => format!(
            "one of {}",
            g.iter()
                .map(|p| column_name(p))
                .collect::<Vec<_>>()
                .join("/")
        ),
        None => "optional".into(),
    }
}

/// The table shown on a terminal.
pub fn table(op: &Operation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} {} — {}", op.provider, op.name, op.summary);
    let _ = writeln!(out, "Source: {}", op.doc);
    if let Some(i) = &op.idempotency {
        let _ = writeln!(
            out,
            "payrun fills `{i}` with each item's idempotency key; every file also needs an `id` column (a stable item id)."
        );
    }
    if let Some(n) = &op.notification_url {
        let _ = writeln!(
            out,
            "payrun fills `{n}` with the URL where it listens for the answer (notifications.public_url and a secret token)."
        );
    }
    let _ = writeln!(out);
    let mut rows: Vec<[String; 4]> = vec![[
        "id".into(),
        "required".into(),
        "text, unique per batch".into(),
        "E0001".into(),
    ]];
    let mut descriptions = vec![String::from(
        "Stable item id (e.g. employee number); seeds the idempotency key.",
    )];
    let mut fields: Vec<&Field> = fillable(op).collect();
    fields.sort_by_key(|f| !f.required);
    for f in fields {
        let example = match &f.example {
            Some(e) => crate::mask::for_error(e, f.privacy()),
            None => String::new(),
        };
        let mut format = f.format();
        if f.sensitive {
            format.push_str(" (sensitive: masked in all output)");
        }
        rows.push([column_name(&f.path), requirement(op, f), format, example]);
        descriptions.push(format!("{} [{}]", f.description, f.path));
    }
    let headers = ["COLUMN", "REQUIRED", "FORMAT", "EXAMPLE"];
    let w: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
                .min(if i == 2 { 60 } else { 48 })
        })
        .collect();
    let _ = writeln!(
        out,
        "{:w0$}  {:w1$}  {:w2$}  {}",
        headers[0],
        headers[1],
        headers[2],
        headers[3],
        w0 = w[0],
        w1 = w[1],
        w2 = w[2]
    );
    for (r, d) in rows.iter().zip(&descriptions) {
        let _ = writeln!(
            out,
            "{:w0$}  {:w1$}  {:w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        );
        let _ = writeln!(out, "    {d}");
    }
    out
}

/// A CSV header row and one example row.
pub fn csv(op: &Operation, all: bool) -> String {
    let fields = chosen(op, all);
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let mut header = vec!["id".to_string()];
    header.extend(fields.iter().map(|f| column_name(&f.path)));
    let mut example = vec!["E0001".to_string()];
    example.extend(fields.iter().map(|f| f.example.clone().unwrap_or_default()));
    let _ = w.write_record(&header);
    let _ = w.write_record(&example);
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// A starter manifest that reads the CSV written by `csv` (same `all`).
pub fn manifest(provider: &Provider, op: &Operation, all: bool) -> String {
    let fields = chosen(op, all);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Starter manifest for {} {}: {}",
        provider.name, op.name, op.summary
    );
    let _ = writeln!(
        out,
        "# Generated by `payrun template {} {} --manifest`; the CSV comes from `--csv`.",
        provider.name, op.name
    );
    let _ = writeln!(
        out,
        "batch: {}-CHANGE-ME     # a new stable id for every run: it seeds the idempotency keys",
        op.name.replace('.', "-")
    );
    let _ = writeln!(out, "provider: {}", provider.name);
    let _ = writeln!(out, "environment: sandbox");
    let _ = writeln!(
        out,
        "credentials:              # names of environment variables, never the secrets"
    );
    for (name, description) in &provider.credentials {
        let _ = writeln!(
            out,
            "  {name}: {}_{}    # {description}",
            provider.name.to_uppercase(),
            name.to_uppercase()
        );
    }
    let _ = writeln!(out, "items:");
    let _ = writeln!(out, "  source: {}.csv", op.name);
    let _ = writeln!(out, "  columns:");
    let _ = writeln!(out, "    id: id");
    for f in &fields {
        let c = column_name(&f.path);
        let _ = writeln!(out, "    {c}: {c}");
    }
    let _ = writeln!(out, "flow:");
    let _ = writeln!(out, "  - op: {}", op.name);
    let _ = writeln!(out, "    payload:");
    // Nested YAML from dotted paths: each block once, its fields in the order chosen above.
    #[derive(Default)]
    struct Tree(Vec<(String, Option<String>, Tree)>);
    impl Tree {
        fn insert(&mut self, segs: &[&str], value: String) {
            let pos = self.0.iter().position(|(k, _, _)| k == segs[0]);
            let i = pos.unwrap_or_else(|| {
                self.0.push((segs[0].to_string(), None, Tree::default()));
                self.0.len() - 1
            });
            if segs.len() == 1 {
                self.0[i].1 = Some(value);
            } else {
                self.0[i].2.insert(&segs[1..], value);
            }
        }
        fn print(&self, out: &mut String, depth: usize) {
            for (k, v, kids) in &self.0 {
                match v {
                    Some(v) => {
                        let _ = writeln!(out, "{}{k}: {v}", "  ".repeat(depth));
                    }
                    None => {
                        let _ = writeln!(out, "{}{k}:", "  ".repeat(depth));
                        kids.print(out, depth + 1);
                    }
                }
            }
        }
    }
    let mut tree = Tree::default();
    for f in &fields {
        let segs: Vec<&str> = f.path.split('.').collect();
        tree.insert(&segs, format!("${{item.{}}}", column_name(&f.path)));
    }
    tree.print(&mut out, 3);
    if let Some(i) = &op.idempotency {
        let _ = writeln!(
            out,
            "      # {i}: filled in by payrun with ${{idempotency_key}}"
        );
    }
    if let Some(n) = &op.notification_url {
        let _ = writeln!(out, "      # {n}: filled in by payrun (its listener's URL)");
    }
    let l = &provider.limits;
    let _ = writeln!(
        out,
        "limits:                   # the provider's defaults; set yours"
    );
    let _ = writeln!(out, "  requests_per_second: {}", l.requests_per_second);
    let _ = writeln!(out, "  burst: {}", l.burst);
    let _ = writeln!(out, "  concurrency: {}", l.concurrency);
    if provider.packing {
        let _ = writeln!(out, "  tasks_per_request: {}", l.tasks_per_request);
    }
    let _ = writeln!(out, "notifications:");
    if provider.needs_listener(op) {
        // The answer (or that of the lookup settling a lost one) only ever arrives as a POST
        // to payrun's listener.
        let _ = writeln!(
            out,
            "  listen: 127.0.0.1:8787                          # where payrun listens"
        );
        let _ = writeln!(
            out,
            "  public_url: https://CHANGE-ME.example/payrun    # the URL the provider can reach"
        );
    } else {
        let _ = writeln!(out, "  mode: polling");
    }
    out
}

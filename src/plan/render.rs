//! Human renderings of validation reports and plans (the JSON forms are serde's).

use super::Summary;
use crate::compile::Flow;
use crate::manifest::Environment;
use crate::validate::Report;
use serde_json::Value;
use std::fmt::Write;

/// The summary printed by `validate` (and by `plan` when the batch is invalid).
pub fn validation_summary(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} item{}, {} valid, {} invalid, {} error{}",
        r.source,
        r.rows,
        if r.rows == 1 { "" } else { "s" },
        r.valid_items,
        r.invalid_items,
        r.error_count,
        if r.error_count == 1 { "" } else { "s" }
    );
    if !r.errors_by_rule.is_empty() {
        let _ = writeln!(out, "errors by rule:");
        let width = r.errors_by_rule.keys().map(String::len).max().unwrap_or(0);
        for (rule, n) in &r.errors_by_rule {
            let _ = writeln!(out, "  {rule:width$}  {n}");
        }
    }
    if r.error_count > r.errors.len() as u64 {
        let _ = writeln!(
            out,
            "(printed the first {} of {} errors; --max-errors N prints more, --format json lists them)",
            r.errors.len(),
            r.error_count
        );
    }
    out
}

/// The human plan.
pub fn plan(s: &Summary, preview: &[Value], flow: &Flow) -> String {
    let mut out = String::new();
    let env = match &s.environment {
        Environment::Sandbox => "sandbox".to_string(),
        Environment::Production => "production".to_string(),
        Environment::Url(u) => u.clone(),
    };
    let _ = writeln!(
        out,
        "Plan for batch {} — {} ({}), {}{}",
        s.batch,
        s.provider_name,
        s.provider,
        env,
        s.base_url
            .as_ref()
            .map(|u| format!(" at {u}"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "Items: {} from {}", s.items, s.source);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Tasks per operation        role      per item       total  if all succeed"
    );
    for o in &s.operations {
        let _ = writeln!(
            out,
            "  {:<24} {:<8} {:>8} {:>11} {:>15}",
            o.operation,
            format!("{:?}", o.role).to_lowercase(),
            o.per_item,
            o.total,
            o.if_all_succeed
        );
    }
    let _ = writeln!(out);
    if s.totals.is_empty() {
        let _ = writeln!(out, "No payouts in this flow.");
    } else {
        let _ = writeln!(
            out,
            "Totals per currency{}",
            if s.totals_are_upper_bound {
                " (upper bound: the tree has more than one payout task)"
            } else {
                ""
            }
        );
        let width = s.totals.iter().map(|t| t.amount.len()).max().unwrap_or(0);
        for t in &s.totals {
            let _ = writeln!(
                out,
                "  {} {:>width$}  in {} payout{}",
                t.currency,
                t.amount,
                t.payouts,
                if t.payouts == 1 { "" } else { "s" }
            );
        }
    }
    let _ = writeln!(out);
    let c = &s.api_calls;
    let _ = match flow.provider.tree {
        crate::schema::TreeExecution::Server => writeln!(
            out,
            "API calls: about {} if every task succeeds ({} preflight, {} submissions of up to {} item trees, {} delayed subtrees, {} status lookups); at most {} before retries",
            c.expected,
            c.preflight,
            c.submit,
            s.limits.tasks_per_request,
            c.delayed,
            c.status,
            c.max
        ),
        crate::schema::TreeExecution::Client => writeln!(
            out,
            "API calls: {} if every task succeeds ({} preflight); at most {} before retries",
            c.expected, c.preflight, c.max
        ),
    };
    let _ = writeln!(
        out,
        "Estimated duration: {} ({})",
        s.estimate.human, s.estimate.basis
    );
    let _ = writeln!(
        out,
        "Limits: {} requests/s, burst {}, concurrency {}, {} tasks per request",
        s.limits.requests_per_second,
        s.limits.burst,
        s.limits.concurrency,
        s.limits.tasks_per_request
    );
    let r = &s.retry.default;
    let _ = writeln!(
        out,
        "Retry: from {} ×{} up to {}, {} attempts{}",
        humantime::format_duration(r.initial_interval),
        r.factor,
        humantime::format_duration(r.max_interval),
        r.max_attempts,
        if s.retry.rate_limited != s.retry.default
            || s.retry.server_error != s.retry.default
            || s.retry.network != s.retry.default
        {
            " (with per-class overrides)"
        } else {
            ""
        }
    );
    let n = &s.notifications;
    let _ = match n.mode {
        crate::manifest::raw::NotificationMode::Webhook => writeln!(
            out,
            "Notifications: webhooks to {} (listening on {})",
            n.public_url.as_deref().unwrap_or("?"),
            n.listen.as_deref().unwrap_or("?")
        ),
        crate::manifest::raw::NotificationMode::Polling => {
            writeln!(out, "Notifications: none, status is polled")
        }
    };
    let creds: Vec<String> = s
        .credentials
        .iter()
        .map(|c| {
            format!(
                "{} from ${}{}",
                c.name,
                c.env,
                if c.set { "" } else { " (not set)" }
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "Credentials: {}",
        if creds.is_empty() {
            "none".into()
        } else {
            creds.join(", ")
        }
    );
    if !preview.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "First {} item{} (account numbers, secrets and personal data masked):",
            preview.len(),
            if preview.len() == 1 { "" } else { "s" }
        );
        for item in preview {
            let _ = writeln!(
                out,
                "  {} (line {}), key {}",
                item["id"].as_str().unwrap_or(""),
                item["line"],
                item["key"].as_str().unwrap_or("")
            );
            for t in item["tasks"].as_array().into_iter().flatten() {
                task(&mut out, t, 2);
            }
        }
    }
    out
}

fn task(out: &mut String, t: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    let link = t
        .get("link")
        .and_then(Value::as_str)
        .map(|l| format!("on {l}: "))
        .unwrap_or_default();
    let delay = t
        .get("delay")
        .and_then(Value::as_str)
        .map(|d| format!(" after {d}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{pad}{link}{} [{}]{delay}, key {}",
        t["node"].as_str().unwrap_or(""),
        t["op"].as_str().unwrap_or(""),
        t["key"].as_str().unwrap_or("")
    );
    let mut leaves = Vec::new();
    flatten("", &t["payload"], &mut leaves);
    for (k, v) in leaves {
        let _ = writeln!(out, "{pad}    {k}: {v}");
    }
    for c in t
        .get("children")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        task(out, c, depth + 1);
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), crate::mask::shorten(s))),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

//! The dry run: every item compiled into its job graph, summarised (tasks per operation, totals
//! per currency, API calls, estimated duration) and, for the JSON plan, listed with its
//! idempotency key, task keys and content digest. The JSON plan is streamed to a temporary file
//! while the items are validated, so memory does not grow with the batch; it is only kept when
//! every item passed. A fingerprint over the inputs lets `run` refuse a stale plan.

pub mod dot;
pub mod fingerprint;
pub mod render;

use crate::compile::{Bound, Flow, Task};
use crate::diagnostic::Diagnostic;
use crate::keys;
use crate::manifest::{Environment, Link};
use crate::mask;
use crate::money::Currency;
use crate::pipeline::Prepared;
use crate::schema::{TreeExecution, Wire};
use crate::validate::{self, ItemRow, Report, source::Source};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::{BufWriter, Write};

/// Plan format version written into every JSON plan.
pub const FORMAT: &str = "payrun-plan/1";

/// A built plan.
pub struct Built {
    pub summary: Summary,
    pub preview: Vec<Value>,
    /// The fingerprint's SHA-256, when the full plan was built.
    pub fingerprint: Option<String>,
    /// The full JSON plan, when requested; only present when the batch is valid.
    pub full: Option<tempfile::NamedTempFile>,
    pub human: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub batch: String,
    pub provider: String,
    pub provider_name: String,
    pub environment: Environment,
    pub base_url: Option<String>,
    pub source: String,
    pub items: u64,
    pub operations: Vec<OperationCount>,
    pub totals: Vec<CurrencyTotal>,
    /// True when a tree has more than one payout task, so totals are an upper bound.
    pub totals_are_upper_bound: bool,
    pub api_calls: ApiCalls,
    pub estimate: Estimate,
    pub limits: crate::manifest::Limits,
    pub retry: crate::manifest::RetryPolicy,
    pub notifications: crate::manifest::Notifications,
    pub credentials: Vec<Credential>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperationCount {
    pub operation: String,
    pub role: crate::schema::Role,
    /// Tasks of this operation in one item's tree.
    pub per_item: u64,
    /// Over the batch, every branch included.
    pub total: u64,
    /// Over the batch, when every task succeeds (success and always branches only).
    pub if_all_succeed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CurrencyTotal {
    pub currency: String,
    /// Exact decimal, e.g. "167234.12".
    pub amount: String,
    pub minor_units: String,
    pub payouts: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiCalls {
    pub preflight: u64,
    /// Requests that carry item tasks.
    pub submit: u64,
    /// Status lookups: at least one per submitted request where the provider runs trees.
    pub status: u64,
    /// Requests for subtrees with a `delay`, which payrun sends itself after the delay.
    pub delayed: u64,
    /// Expected total if every task succeeds.
    pub expected: u64,
    /// Upper bound, every branch taken (before retries).
    pub max: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub seconds: f64,
    pub human: String,
    pub basis: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Credential {
    pub name: String,
    pub env: String,
    pub set: bool,
}

/// Builds the plan: one validation pass that also renders the preview and streams the items of
/// the full plan. Returns the plan (meaningful only when the report is clean) and the report.
pub fn build(
    prepared: Prepared,
    show: usize,
    full: bool,
    max_errors: usize,
) -> Result<(Built, Report), Diagnostic> {
    let Prepared { flow, source } = prepared;
    // Reopen with hashing when fingerprinting a CSV source.
    let mut source = match (&source, full) {
        (Source::Csv(_), true) => match Source::open_hashed(&flow.manifest, true) {
            Ok((s, _)) => s,
            Err(_) => source,
        },
        _ => source,
    };
    let mut preview = Vec::new();
    let mut writer: Option<(tempfile::NamedTempFile, BufWriter<std::fs::File>)> = None;
    let mut write_error: Option<std::io::Error> = None;
    if full {
        let tmp = tempfile::NamedTempFile::new().map_err(|e| {
            Diagnostic::new(
                "plan",
                "plan.io",
                format!("cannot create a temporary file: {e}"),
            )
        })?;
        let f = tmp.reopen().map_err(|e| {
            Diagnostic::new(
                "plan",
                "plan.io",
                format!("cannot open the temporary file: {e}"),
            )
        })?;
        let mut w = BufWriter::with_capacity(1 << 16, f);
        let head = format!(
            "{{\n  \"format\": \"{FORMAT}\",\n  \"payrun_version\": \"{}\",\n  \"items\": [",
            env!("CARGO_PKG_VERSION")
        );
        let _ = w.write_all(head.as_bytes());
        writer = Some((tmp, w));
    }
    let task_paths: Vec<(String, String)> = flow
        .all_tasks()
        .iter()
        .map(|t| (t.id.clone(), t.tree_path.clone()))
        .collect();
    let mut first = true;
    let mut line_buf = Vec::with_capacity(512);
    let report = validate::validate(&flow, &mut source, max_errors, |item: &ItemRow| {
        if !item.valid {
            return;
        }
        let key = keys::item_key(&flow.manifest.batch, item.id);
        if (item.index as usize) < show {
            preview.push(preview_item(&flow, item, &key));
        }
        if let Some((_, w)) = &mut writer
            && write_error.is_none()
        {
            line_buf.clear();
            line_buf.extend_from_slice(if first { b"\n    " } else { b",\n    " });
            first = false;
            let entry = item_entry(&flow, item, &key, &task_paths);
            if let Err(e) = serde_json::to_writer(&mut line_buf, &entry)
                .map_err(std::io::Error::other)
                .and_then(|_| w.write_all(&line_buf))
            {
                write_error = Some(e);
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(Diagnostic::new(
            "plan",
            "plan.io",
            format!("cannot write the plan: {e}"),
        ));
    }
    let summary = summarise(&flow, &report);
    let source_sha = match &source {
        Source::Csv(c) => c.sha256(),
        Source::Inline(_) => None,
    };
    let fp = full.then(|| fingerprint::Fingerprint::of(&flow, source_sha.as_deref()));
    let full_file = match (writer, &fp) {
        (Some((tmp, mut w)), Some(fp)) if report.is_ok() => {
            // The items were streamed first; the members known only at the end follow them.
            let tail = json!({
                "summary": summary,
                "preview": preview,
                "template": template_json(&flow),
                "fingerprint": fp,
            });
            let io = (|| -> std::io::Result<()> {
                w.write_all(if first { b"],\n" } else { b"\n  ],\n" })?;
                let tail_text = serde_json::to_string_pretty(&tail)?;
                w.write_all(reindent_members(&tail_text).as_bytes())?;
                w.write_all(b"\n}\n")?;
                w.flush()
            })();
            io.map_err(|e| {
                Diagnostic::new("plan", "plan.io", format!("cannot write the plan: {e}"))
            })?;
            Some(tmp)
        }
        _ => None,
    };
    let human = render::plan(&summary, &preview, &flow);
    Ok((
        Built {
            summary,
            preview,
            fingerprint: fp.map(|f| f.sha256),
            full: full_file,
            human,
        },
        report,
    ))
}

/// `{ "a": 1, "b": 2 }` pretty-printed → `  "a": 1,\n  "b": 2` (members of an enclosing object).
fn reindent_members(obj: &str) -> String {
    let inner = obj.trim().trim_start_matches('{').trim_end_matches('}');
    inner.trim_matches('\n').to_string()
}

/// The value of a binding for one item, as text (masked if `mask_sensitive` and the field is).
fn eval(b: &Bound, flow: &Flow, item: &ItemRow, key: &str, task: &Task) -> String {
    match b {
        Bound::Const(s) => s.clone(),
        Bound::Row { field, default } => {
            let i = flow
                .row_fields
                .iter()
                .position(|f| f == field)
                .expect("row field");
            let v = item.values[i];
            if v.is_empty() {
                default.clone().unwrap_or_default()
            } else {
                v.to_string()
            }
        }
        Bound::Interp(parts) => parts
            .iter()
            .map(|p| eval(p, flow, item, key, task))
            .collect(),
        Bound::IdempotencyKey => key.to_string(),
        Bound::TaskKey => keys::task_key(key, &task.tree_path),
        Bound::Batch => flow.manifest.batch.clone(),
        Bound::Result { .. } => b.describe(),
    }
}

/// A task's payload for one item, as the JSON the provider would receive, sensitive values masked.
pub fn payload(flow: &Flow, task: &Task, item: &ItemRow, key: &str) -> Value {
    let op = flow.op(&task.op);
    let mut root = serde_json::Map::new();
    for b in &task.bindings {
        let field = &op.fields[b.field];
        let text = eval(&b.value, flow, item, key, task);
        if text.is_empty() {
            continue;
        }
        let value = if field.sensitive {
            Value::String(mask::mask(&text))
        } else if matches!(b.value, Bound::Result { .. }) {
            Value::String(text)
        } else {
            match field.wire {
                Wire::Number => serde_json::from_str::<serde_json::Number>(&text)
                    .map(Value::Number)
                    .unwrap_or(Value::String(text)),
                Wire::Boolean => Value::Bool(text.eq_ignore_ascii_case("true")),
                Wire::String => Value::String(text),
            }
        };
        let mut node = &mut root;
        let segs: Vec<&str> = b.path.split('.').collect();
        for s in &segs[..segs.len() - 1] {
            node = node
                .entry(s.to_string())
                .or_insert_with(|| Value::Object(Default::default()))
                .as_object_mut()
                .expect("objects along a path");
        }
        node.insert(segs[segs.len() - 1].to_string(), value);
    }
    Value::Object(root)
}

fn preview_task(flow: &Flow, task: &Task, link: Option<Link>, item: &ItemRow, key: &str) -> Value {
    let mut v = json!({
        "node": task.id,
        "op": task.op,
        "key": keys::task_key(key, &task.tree_path),
        "payload": payload(flow, task, item, key),
    });
    if let Some(l) = link {
        v["link"] = json!(l.as_str());
    }
    if let Some(d) = task.delay {
        v["delay"] = json!(humantime::format_duration(d).to_string());
    }
    let children: Vec<Value> = task
        .children()
        .map(|(l, c)| preview_task(flow, c, Some(l), item, key))
        .collect();
    if !children.is_empty() {
        v["children"] = Value::Array(children);
    }
    v
}

fn preview_item(flow: &Flow, item: &ItemRow, key: &str) -> Value {
    json!({
        "id": item.id,
        "line": item.line,
        "key": key,
        "tasks": flow.tasks.iter().map(|t| preview_task(flow, t, None, item, key)).collect::<Vec<_>>(),
    })
}

/// The content digest of an item: the values of the fields the flow reads, so that `resume`
/// can tell an item changed since it was planned or started.
pub fn content_digest(flow: &Flow, values: &[&str]) -> String {
    let mut h = Sha256::new();
    for &i in &flow.used_row_fields {
        h.update(flow.row_fields[i].as_bytes());
        h.update([0x1f]);
        h.update(values[i].as_bytes());
        h.update([0x1e]);
    }
    hex::encode(&h.finalize()[..16])
}

#[derive(Serialize)]
struct ItemEntry<'a> {
    id: &'a str,
    line: u64,
    key: &'a str,
    digest: String,
    tasks: serde_json::Map<String, Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    money: Vec<(String, String)>,
}

fn item_entry<'a>(
    flow: &Flow,
    item: &ItemRow<'a>,
    key: &'a str,
    task_paths: &[(String, String)],
) -> ItemEntry<'a> {
    let mut tasks = serde_json::Map::new();
    for (id, path) in task_paths {
        tasks.insert(id.clone(), Value::String(keys::task_key(key, path)));
    }
    let mut money = Vec::new();
    for m in &flow.money {
        let task = flow
            .all_tasks()
            .into_iter()
            .find(|t| t.id == m.task)
            .expect("money task");
        let amount = eval(&m.amount, flow, item, key, task);
        let currency = match &m.currency {
            crate::compile::CurrencySource::Fixed(c) => c.code(),
            crate::compile::CurrencySource::Row { value, .. } => eval(value, flow, item, key, task),
            crate::compile::CurrencySource::Unknown => String::new(),
        };
        money.push((amount, currency));
    }
    ItemEntry {
        id: item.id,
        line: item.line,
        key,
        digest: content_digest(flow, item.values),
        tasks,
        money,
    }
}

/// The flow template in JSON: what every item's tree is made from.
fn template_json(flow: &Flow) -> Value {
    fn task(flow: &Flow, t: &Task) -> Value {
        let op = flow.op(&t.op);
        let payload: serde_json::Map<String, Value> = t
            .bindings
            .iter()
            .map(|b| {
                (
                    b.path.clone(),
                    Value::String(
                        if op.fields[b.field].sensitive && matches!(b.value, Bound::Const(_)) {
                            mask::mask(&b.value.describe())
                        } else {
                            b.value.describe()
                        },
                    ),
                )
            })
            .collect();
        let mut v = json!({"node": t.id, "op": t.op, "tree_path": t.tree_path, "payload": payload});
        if let Some(d) = t.delay {
            v["delay"] = json!(humantime::format_duration(d).to_string());
        }
        for (l, c) in t.children() {
            let arr = v
                .as_object_mut()
                .expect("object")
                .entry(l.as_str())
                .or_insert_with(|| Value::Array(vec![]));
            arr.as_array_mut().expect("array").push(task(flow, c));
        }
        v
    }
    json!({
        "preflight": flow.preflight.iter().map(|t| task(flow, t)).collect::<Vec<_>>(),
        "flow": flow.tasks.iter().map(|t| task(flow, t)).collect::<Vec<_>>(),
    })
}

/// Counts and estimates for the whole batch.
fn summarise(flow: &Flow, report: &Report) -> Summary {
    let items = report.valid_items;
    let mut ops: Vec<OperationCount> = Vec::new();
    fn count(t: &Task, on_success: bool, acc: &mut Vec<(String, u64, u64)>) {
        match acc.iter_mut().find(|(o, _, _)| *o == t.op) {
            Some(e) => {
                e.1 += 1;
                e.2 += u64::from(on_success);
            }
            None => acc.push((t.op.clone(), 1, u64::from(on_success))),
        }
        for (l, c) in t.children() {
            count(c, on_success && l != Link::Fail, acc);
        }
    }
    let mut acc = Vec::new();
    for t in &flow.tasks {
        count(t, true, &mut acc);
    }
    for (op, per_item, succ) in &acc {
        ops.push(OperationCount {
            operation: op.clone(),
            role: flow.op(op).role,
            per_item: *per_item,
            total: per_item * items,
            if_all_succeed: succ * items,
        });
    }
    let totals = report
        .totals
        .iter()
        .map(|(c, (minor, n))| CurrencyTotal {
            currency: c.code(),
            amount: amount_text(*c, *minor),
            minor_units: minor.to_string(),
            payouts: *n,
        })
        .collect();
    let payout_tasks: u64 = acc
        .iter()
        .filter(|(op, _, _)| flow.op(op).role == crate::schema::Role::Payout)
        .map(|(_, n, _)| *n)
        .sum();

    // API calls.
    let l = &flow.limits;
    let tasks_all: u64 = acc.iter().map(|(_, n, _)| n).sum();
    let tasks_succ: u64 = acc.iter().map(|(_, _, s)| s).sum();
    let (delayed_succ, delayed_all) = delayed_subtrees(flow);
    let (preflight, submit, status, delayed, expected, max) = match flow.provider.tree {
        TreeExecution::Server => {
            let per = u64::from(l.tasks_per_request.max(1));
            let submit = items.div_ceil(per);
            let pre = u64::from(!flow.preflight.is_empty());
            let delayed = delayed_succ * items;
            // One status lookup per request, at least (after the callback, or one poll).
            let status = submit + delayed + pre;
            (
                pre,
                submit,
                status,
                delayed,
                pre + submit + delayed + status,
                pre * 2 + submit * 2 + delayed_all * items * 2,
            )
        }
        TreeExecution::Client => {
            let pre: u64 = flow
                .preflight
                .iter()
                .map(|t| {
                    let mut v = Vec::new();
                    t.walk(&mut v);
                    v.len() as u64
                })
                .sum();
            (
                pre,
                tasks_succ * items,
                0,
                0,
                pre + tasks_succ * items,
                pre + tasks_all * items,
            )
        }
    };
    let rps = l.requests_per_second.max(f64::MIN_POSITIVE);
    let seconds = (expected.saturating_sub(u64::from(l.burst)) as f64 / rps) + longest_delay(flow);
    let estimate = Estimate {
        seconds: (seconds * 10.0).round() / 10.0,
        human: human_duration(seconds),
        basis: format!(
            "{expected} calls at {} requests/s after a burst of {}, plus the longest delay on the success path; provider latency not included",
            trim_float(l.requests_per_second),
            l.burst
        ),
    };
    Summary {
        batch: flow.manifest.batch.clone(),
        provider: flow.provider.name.clone(),
        provider_name: flow.provider.title.clone(),
        environment: flow.manifest.environment.clone(),
        base_url: flow.base_url.clone(),
        source: report.source.clone(),
        items,
        operations: ops,
        totals,
        totals_are_upper_bound: payout_tasks > 1,
        api_calls: ApiCalls {
            preflight,
            submit,
            status,
            delayed,
            expected,
            max,
        },
        estimate,
        limits: flow.limits.clone(),
        retry: flow.manifest.retry.clone(),
        notifications: flow.manifest.notifications.clone(),
        credentials: flow
            .manifest
            .credentials
            .iter()
            .map(|(n, e)| Credential {
                name: n.clone(),
                env: e.clone(),
                set: std::env::var_os(e).is_some(),
            })
            .collect(),
    }
}

/// Subtrees with a delay (sent by payrun itself after waiting): (on the success path, in all).
fn delayed_subtrees(flow: &Flow) -> (u64, u64) {
    fn walk(t: &Task, on_success: bool, under_root: bool, acc: &mut (u64, u64)) {
        if t.delay.is_some() && under_root {
            acc.1 += 1;
            acc.0 += u64::from(on_success);
        }
        for (l, c) in t.children() {
            walk(c, on_success && l != Link::Fail, true, acc);
        }
    }
    let mut acc = (0, 0);
    for t in &flow.tasks {
        walk(t, true, false, &mut acc);
    }
    acc
}

fn longest_delay(flow: &Flow) -> f64 {
    fn walk(t: &Task) -> f64 {
        let own = t.delay.map(|d| d.as_secs_f64()).unwrap_or(0.0);
        own + t
            .children()
            .filter(|(l, _)| *l != Link::Fail)
            .map(|(_, c)| walk(c))
            .fold(0.0, f64::max)
    }
    flow.tasks.iter().map(walk).fold(0.0, f64::max)
}

pub fn amount_text(c: Currency, minor: i128) -> String {
    rust_decimal::Decimal::from_i128_with_scale(minor, c.exponent().unwrap_or(0)).to_string()
}

fn trim_float(f: f64) -> String {
    let s = format!("{f:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub fn human_duration(seconds: f64) -> String {
    let s = seconds.ceil() as u64;
    match s {
        0 => "under a second".into(),
        1..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

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

/// What the plan needs from every valid item, computed on the validation workers.
struct PlanVisitor<'f> {
    flow: &'f Flow,
    show: usize,
    full: bool,
    /// Amount and currency sources of the payout tasks.
    money: Vec<(Src, Src)>,
}

/// A value source resolved to a row field index.
enum Src {
    Const(String),
    Field(usize, Option<String>),
    Other(Bound, usize),
}

impl Src {
    fn of(b: &Bound, flow: &Flow, task: usize) -> Src {
        match b {
            Bound::Const(c) => Src::Const(c.clone()),
            Bound::Row { field, default } => Src::Field(
                flow.row_fields
                    .iter()
                    .position(|f| f == field)
                    .expect("row field"),
                default.clone(),
            ),
            other => Src::Other(other.clone(), task),
        }
    }

    fn text(&self, flow: &Flow, item: &ItemRow, key: &str) -> String {
        match self {
            Src::Const(c) => c.clone(),
            Src::Field(i, default) => {
                let v = item.values[*i];
                if v.is_empty() {
                    default.clone().unwrap_or_default()
                } else {
                    v.to_string()
                }
            }
            Src::Other(b, t) => eval(b, flow, item, key, flow.all_tasks()[*t]),
        }
    }
}

#[derive(Default)]
struct PlanChunk {
    /// Serialised item entries, each preceded by ",\n    ".
    bytes: Vec<u8>,
    preview: Vec<(u64, Value)>,
}

impl crate::validate::Visitor for PlanVisitor<'_> {
    type Chunk = PlanChunk;

    fn item(&self, item: &ItemRow, chunk: &mut PlanChunk) {
        if !item.valid {
            return;
        }
        let key = keys::item_key(&self.flow.manifest.batch, item.id);
        if (item.index as usize) < self.show {
            chunk
                .preview
                .push((item.index, preview_item(self.flow, item, &key)));
        }
        if self.full {
            // Written by hand rather than through serde: a large batch has a million of these.
            // {"id":…,"line":…,"key":…,"digest":…,"money":[[amount,currency],…]}. Task keys are not
            // repeated per item: each is keys::task_key(item key, the node's tree_path in
            // "template"), and the preview shows them.
            let out = &mut chunk.bytes;
            out.extend_from_slice(b",\n    {\"id\":");
            json_str(out, item.id);
            out.extend_from_slice(
                format!(",\"line\":{},\"key\":\"{key}\",\"digest\":\"", item.line).as_bytes(),
            );
            out.extend_from_slice(content_digest(self.flow, item.values).as_bytes());
            out.push(b'"');
            if !self.money.is_empty() {
                out.extend_from_slice(b",\"money\":[");
                for (i, (a, c)) in self.money.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'[');
                    json_str(out, &a.text(self.flow, item, &key));
                    out.push(b',');
                    json_str(out, &c.text(self.flow, item, &key));
                    out.push(b']');
                }
                out.push(b']');
            }
            out.push(b'}');
        }
    }
}

/// Builds the plan: one validation pass that also renders the preview and streams the items of
/// the full plan. Returns the plan (meaningful only when the report is clean) and the report.
pub fn build(
    prepared: Prepared,
    show: usize,
    full: bool,
    tmp_dir: Option<&std::path::Path>,
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
    let mut writer: Option<(tempfile::NamedTempFile, BufWriter<std::fs::File>)> = None;
    if full {
        let tmp = match tmp_dir {
            Some(d) => tempfile::NamedTempFile::new_in(d),
            None => tempfile::NamedTempFile::new(),
        };
        let tmp = tmp.map_err(|e| {
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
        writer = Some((tmp, BufWriter::with_capacity(1 << 16, f)));
    }
    let all = flow.all_tasks();
    let task_index = |id: &str| all.iter().position(|t| t.id == id).expect("money task");
    let visitor = PlanVisitor {
        flow: &flow,
        show,
        full,
        money: flow
            .money
            .iter()
            .map(|m| {
                let t = task_index(&m.task);
                let cur = match &m.currency {
                    crate::compile::CurrencySource::Fixed(c) => Src::Const(c.code()),
                    crate::compile::CurrencySource::Row { value, .. } => Src::of(value, &flow, t),
                    crate::compile::CurrencySource::Unknown => Src::Const(String::new()),
                };
                (Src::of(&m.amount, &flow, t), cur)
            })
            .collect(),
    };
    let mut preview: Vec<(u64, Value)> = Vec::new();
    let mut wrote_any = false;
    // The plan file is written on its own thread: the reading thread is the busiest one.
    let (tmp, spool) = match writer {
        Some((tmp, mut w)) => {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
            let handle = std::thread::spawn(
                move || -> std::io::Result<BufWriter<std::fs::File>> {
                    let head = format!(
                        "{{\n  \"format\": \"{FORMAT}\",\n  \"payrun_version\": \"{}\",\n  \"items\": [",
                        env!("CARGO_PKG_VERSION")
                    );
                    w.write_all(head.as_bytes())?;
                    while let Ok(bytes) = rx.recv() {
                        w.write_all(&bytes)?;
                    }
                    Ok(w)
                },
            );
            (Some(tmp), Some((tx, handle)))
        }
        None => (None, None),
    };
    let report = validate::validate(
        &flow,
        &mut source,
        max_errors,
        &visitor,
        |chunk: PlanChunk| {
            preview.extend(chunk.preview);
            if let Some((tx, _)) = &spool
                && !chunk.bytes.is_empty()
            {
                let mut bytes = chunk.bytes;
                // Every entry starts with ",\n"; the first one of the list must not.
                if !wrote_any {
                    bytes.remove(0);
                }
                wrote_any = true;
                // A failed writer shows up when it is joined below.
                let _ = tx.send(bytes);
            }
        },
    )?;
    drop(visitor);
    let writer = match spool {
        Some((tx, handle)) => {
            drop(tx);
            let w = handle
                .join()
                .map_err(|_| Diagnostic::new("plan", "plan.io", "the plan writer stopped"))?
                .map_err(|e| {
                    Diagnostic::new("plan", "plan.io", format!("cannot write the plan: {e}"))
                })?;
            tmp.map(|t| (t, w))
        }
        None => None,
    };
    preview.sort_by_key(|(i, _)| *i);
    let preview: Vec<Value> = preview.into_iter().map(|(_, v)| v).collect();
    let first = !wrote_any;
    let summary = summarise(&flow, &report);
    let source_sha = match &mut source {
        Source::Csv(c) => c.finish_sha256(),
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
        Bound::IdempotencyKey => keys::idempotency_on_wire(key, flow.provider.keys),
        Bound::TaskKey => keys::on_wire(&keys::task_key(key, &task.tree_path), flow.provider.keys),
        Bound::Batch => flow.manifest.batch.clone(),
        Bound::Result { .. } | Bound::NotifyUrl => b.describe(),
    }
}

/// The (amount, currency) of each payout task of one item, as text (currency as the ISO alpha
/// code when it is a code payrun knows).
pub fn item_money(flow: &Flow, item: &ItemRow, key: &str) -> Vec<(String, String)> {
    let all = flow.all_tasks();
    flow.money
        .iter()
        .filter_map(|m| {
            let task = all.iter().find(|t| t.id == m.task)?;
            let amount = eval(&m.amount, flow, item, key, task);
            let currency = match &m.currency {
                crate::compile::CurrencySource::Fixed(c) => c.code(),
                crate::compile::CurrencySource::Row { value, .. } => {
                    eval(value, flow, item, key, task)
                }
                crate::compile::CurrencySource::Unknown => String::new(),
            };
            let currency = Currency::from_any(&currency)
                .map(|c| c.code())
                .unwrap_or(currency);
            Some((amount, currency))
        })
        .collect()
}

/// A task's payload for one item, as the JSON the provider would receive, sensitive values and
/// personal data masked (`Field::privacy`, `mask::for_preview`).
pub fn payload(flow: &Flow, task: &Task, item: &ItemRow, key: &str) -> Value {
    render_payload(flow, task, item, key, true)
}

/// A task's payload for one item; `masked` hides sensitive values (every output does; only
/// the request sent to the provider carries them): accounts keep their last four characters,
/// names their initials, e-mails their domain.
pub fn render_payload(flow: &Flow, task: &Task, item: &ItemRow, key: &str, masked: bool) -> Value {
    let op = flow.op(&task.op);
    let mut root = serde_json::Map::new();
    for b in &task.bindings {
        let field = &op.fields[b.field];
        let mut text = eval(&b.value, flow, item, key, task);
        if field.wire == Wire::MinorUnits
            && let crate::schema::FieldKind::Amount { currency, .. } = &field.kind
        {
            let cur = match currency {
                crate::schema::CurrencyRef::Fixed(c) => Some(*c),
                crate::schema::CurrencyRef::Path(p) => task
                    .binding(p)
                    .and_then(|cb| Currency::from_any(&eval(&cb.value, flow, item, key, task))),
            };
            if let Some(minor) = cur
                .and_then(|c| c.exponent())
                .and_then(|e| crate::money::parse_amount(&text, e).ok())
            {
                text = minor.minor.to_string();
            }
        }
        if text.is_empty() {
            continue;
        }
        let privacy = field.privacy();
        let value = if masked && privacy != mask::Privacy::Plain {
            Value::String(mask::for_preview(&text, privacy))
        } else if matches!(b.value, Bound::Result { .. }) {
            Value::String(text)
        } else {
            match field.wire {
                Wire::Number | Wire::MinorUnits => {
                    serde_json::from_str::<serde_json::Number>(&text)
                        .map(Value::Number)
                        .unwrap_or(Value::String(text))
                }
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
    // A graph payrun runs node by node sends each node under its own key, as `run` will: the
    // item's for the first, one derived from it and the node's path for the rest.
    let (node_key, payload_key) = match (flow.provider.tree, link) {
        (TreeExecution::Client, None) => (key.to_string(), key.to_string()),
        (TreeExecution::Client, Some(_)) => {
            let k = keys::task_key(key, &format!("step/{}", task.tree_path));
            (k.clone(), k)
        }
        (TreeExecution::Server, _) => (keys::task_key(key, &task.tree_path), key.to_string()),
    };
    let mut v = json!({
        "node": task.id,
        "op": task.op,
        "key": node_key,
        "payload": payload(flow, task, item, &payload_key),
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
/// Appends `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("serialising to memory cannot fail");
    }
}

pub fn content_digest(flow: &Flow, values: &[&str]) -> String {
    let mut h = Sha256::new();
    for &i in &flow.used_row_fields {
        h.update(flow.row_fields[i].as_bytes());
        h.update([0x1f]);
        h.update(values[i].as_bytes());
        h.update([0x1e]);
    }
    keys::hex_lower(&h.finalize()[..16])
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
                        if op.fields[b.field].privacy() != mask::Privacy::Plain
                            && matches!(b.value, Bound::Const(_))
                        {
                            mask::for_preview(&b.value.describe(), op.fields[b.field].privacy())
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
    // Totals of a million amounts of at most 18 digits stay far inside Decimal's 96 bits; fall
    // back to the raw minor units rather than panic if they ever do not.
    match rust_decimal::Decimal::try_from_i128_with_scale(minor, c.exponent().unwrap_or(0)) {
        Ok(d) => d.to_string(),
        Err(_) => format!("{minor} minor units"),
    }
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

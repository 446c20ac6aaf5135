//! Compilation: a checked `Manifest` plus the provider's schemas become a `Flow` — the job graph
//! template every item is instantiated from. Every payload field of every task is bound to a
//! source (a constant, an item field, a key, a result of an ancestor task); constants are
//! checked once here, so per-row validation only looks at the values that vary per row.

pub mod template;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::keys;
use crate::manifest::{Environment, Limits, Link, Manifest, Node};
use crate::money::Currency;
use crate::schema::{
    CurrencyFormat, CurrencyRef, Field, FieldKind, Operation, Provider, Role, TreeExecution,
};
use crate::yaml::{self, Seg, key};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use template::{Part, Ref};

/// Where a payload value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    Const(String),
    /// An item field that varies per row; `default` is used when the cell is empty.
    Row {
        field: String,
        default: Option<String>,
    },
    /// Text with references, rendered per item.
    Interp(Vec<Bound>),
    IdempotencyKey,
    TaskKey,
    Batch,
    /// A value from an ancestor task's result, known only at run time.
    Result {
        node: String,
        path: String,
    },
    /// The URL where payrun listens for this task's notification (with the batch's secret
    /// token), known only at run time; filled in by the runner.
    NotifyUrl,
}

/// How a run-time notification URL stands in a rendered payload until the runner fills it.
pub const NOTIFY_URL: &str = "${notification_url}";

impl Bound {
    /// True when the value is the same for every item.
    pub fn is_static(&self) -> bool {
        match self {
            Bound::Const(_) | Bound::Batch => true,
            Bound::Interp(parts) => parts.iter().all(Bound::is_static),
            _ => false,
        }
    }

    /// True when the value is (or contains) a result of another task, known only at run time.
    pub fn reads_result(&self) -> bool {
        match self {
            Bound::Result { .. } => true,
            Bound::Interp(parts) => parts.iter().any(Bound::reads_result),
            _ => false,
        }
    }

    /// The row fields this value reads.
    pub fn row_fields(&self, out: &mut Vec<String>) {
        match self {
            Bound::Row { field, .. } => out.push(field.clone()),
            Bound::Interp(parts) => parts.iter().for_each(|p| p.row_fields(out)),
            _ => {}
        }
    }

    /// How the template shows the value, e.g. `${item.amount}`.
    pub fn describe(&self) -> String {
        match self {
            Bound::Const(s) => s.clone(),
            Bound::Row { field, .. } => format!("${{item.{field}}}"),
            Bound::Interp(parts) => parts.iter().map(Bound::describe).collect(),
            Bound::IdempotencyKey => "${idempotency_key}".into(),
            Bound::TaskKey => "${task_key}".into(),
            Bound::Batch => "${batch}".into(),
            Bound::Result { node, path } => format!("${{result.{node}.{path}}}"),
            Bound::NotifyUrl => NOTIFY_URL.into(),
        }
    }
}

/// Marks, in a task's list of ancestors, where a new request begins (a delayed task of a
/// server-run tree); node ids cannot contain `|`.
const REQUEST_BOUNDARY: &str = "|";

/// Delays in trees the provider runs itself: payrun sends a delayed subtree in a request of its
/// own once it knows how the task above it ended, and what it knows is the item's payout verdict.
/// So a delayed task must hang off a payout task that is the only payout of its request, and
/// the tree's roots cannot wait (run the batch later instead).
fn check_server_delays(c: &mut Compiler, roots: &[Node], provider: &crate::schema::Provider) {
    let is_payout = |n: &Node| {
        provider
            .operation(&n.op)
            .is_some_and(|o| o.role == Role::Payout)
    };
    // Payout tasks of the request that `n` belongs to, below `n` (not crossing delays).
    fn payouts_in_request(n: &Node, is_payout: &dyn Fn(&Node) -> bool) -> usize {
        usize::from(is_payout(n))
            + n.children()
                .filter(|(_, c)| c.delay.is_none())
                .map(|(_, c)| payouts_in_request(c, is_payout))
                .sum::<usize>()
    }
    fn walk(
        c: &mut Compiler,
        n: &Node,
        request_root: &Node,
        is_payout: &dyn Fn(&Node) -> bool,
        title: &str,
    ) {
        for (_, child) in n.children() {
            if child.delay.is_some() {
                let mut at = child.yaml_path.clone();
                at.push(key("delay"));
                if !is_payout(n) {
                    c.error(
                        &at,
                        "flow.delay",
                        format!("{title} runs a whole tree itself; payrun can delay a task only after a payout it follows, and `{}` is not one", n.op),
                        "move the delay to a task under the payout, or drop it to let the provider run the task at once",
                    );
                } else if payouts_in_request(request_root, is_payout) > 1 {
                    c.error(
                        &at,
                        "flow.delay",
                        format!("the request this delay follows has more than one payout, so payrun cannot tell which one `{}` waits for", n.op),
                        "give the other payouts a delay of their own, so each request has one payout",
                    );
                }
                walk(c, child, child, is_payout, title);
            } else {
                walk(c, child, request_root, is_payout, title);
            }
        }
    }
    for r in roots {
        if r.delay.is_some() {
            let mut at = r.yaml_path.clone();
            at.push(key("delay"));
            c.error(
                &at,
                "flow.delay",
                "a task at the top of the flow cannot wait: it is what starts each item",
                "run the batch later instead, or put the delay on a task under a payout",
            );
        }
        walk(c, r, r, &is_payout, &provider.title);
    }
}

/// An item whose answer is lost is settled by a lookup (the schema's `lookup:`); where that
/// lookup answers only by notification (Payonic's Payment API), a batch without payrun's
/// listener could never settle it, and sending the item again could pay twice. Reported once,
/// and not where `flow.needs-notifications` already asks for the same listener.
fn check_lookups_can_be_answered(c: &mut Compiler, tasks: &[Task]) {
    use crate::manifest::raw::NotificationMode;
    use crate::schema::Completion;
    if c.manifest.notifications.mode == NotificationMode::Webhook {
        return;
    }
    let provider = c.provider;
    let mut all = Vec::new();
    for t in tasks {
        t.walk(&mut all);
    }
    let ops: Vec<&Operation> = all
        .iter()
        .filter_map(|t| provider.operation(&t.op))
        .collect();
    if ops.iter().any(|o| o.completion == Completion::Notification) {
        return;
    }
    let Some((op, lookup)) = ops
        .iter()
        .find_map(|o| provider.lookup_by_notification(o).map(|l| (o, l)))
    else {
        return;
    };
    c.error(
        &[key("flow")],
        "manifest.notifications-required",
        format!(
            "`{}` needs payrun's notification listener, but notifications are off",
            op.name
        ),
        format!(
            "add `notifications: {{listen: 127.0.0.1:8787, public_url: <url>}}`, the URL e.g. https://<a host {} reaches>/payrun: a `{}` whose answer is lost can be settled only through `{}`, whose answer comes by notification; without the listener it could never be settled, and sending it again could pay twice",
            provider.title, op.name, lookup.name
        ),
    );
}

/// One payload field of a task, bound to its source.
#[derive(Debug, Clone)]
pub struct Binding {
    pub path: String,
    /// Index into the operation's `fields`.
    pub field: usize,
    pub value: Bound,
}

/// A node of the compiled job graph template.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub op: String,
    pub tree_path: String,
    pub delay: Option<Duration>,
    pub bindings: Vec<Binding>,
    pub success: Vec<Task>,
    pub fail: Vec<Task>,
    pub always: Vec<Task>,
}

impl Task {
    pub fn children(&self) -> impl Iterator<Item = (Link, &Task)> {
        self.success
            .iter()
            .map(|t| (Link::Success, t))
            .chain(self.fail.iter().map(|t| (Link::Fail, t)))
            .chain(self.always.iter().map(|t| (Link::Always, t)))
    }

    /// This task and the tasks below it that go in the same request (not below a delay).
    pub fn walk_request<'a>(&'a self, out: &mut Vec<&'a Task>) {
        out.push(self);
        for (_, c) in self.children() {
            if c.delay.is_none() {
                c.walk_request(out);
            }
        }
    }

    /// This task and all below it, depth first.
    pub fn walk<'a>(&'a self, out: &mut Vec<&'a Task>) {
        out.push(self);
        for (_, c) in self.children() {
            c.walk(out);
        }
    }

    pub fn binding(&self, path: &str) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.path == path)
    }
}

/// A node of an item's graph that payrun sends as a request of its own once the node above it
/// ended (see `Flow::steps`).
#[derive(Debug, Clone)]
pub struct Step<'a> {
    /// The step's task: the root of its request.
    pub task: &'a Task,
    /// The step whose outcome it waits for (0: the item's first request).
    pub after: usize,
    /// The task it hangs off (for a tree the provider runs, the only payout of step `after`).
    pub after_task: &'a Task,
    pub link: Link,
    /// How long after `after_task` ended it is sent (zero: at once).
    pub delay: Duration,
    /// How a request of the step whose answer was lost is settled: looked up (it pays, or
    /// its operation names a lookup), sent again under the same key, or handed to a person.
    pub settle: crate::schema::Settle,
    /// The tasks above it whose results it may read, nearest first, with the step each one is
    /// the root of or belongs to (0: the item's first request).
    pub ancestors: Vec<(&'a Task, usize)>,
}

/// How an amount finds its currency, per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CurrencySource {
    Fixed(Currency),
    Row {
        value: Bound,
        format: CurrencyFormat,
    },
    /// The currency is missing or invalid (already reported); only the number's shape is checked.
    Unknown,
}

/// A check to run on every row: one payload field bound to a value that varies per row.
#[derive(Debug, Clone)]
pub struct RowCheck {
    pub task: String,
    pub op: String,
    pub field: Field,
    pub value: Bound,
    pub currency: Option<CurrencySource>,
    /// The per-row values of the siblings the field's `holds_if` names (an accountIdentifier
    /// whose identifierType comes from the file): what it holds is decided row by row.
    pub siblings: Vec<(String, Bound)>,
}

/// At least one of these per-row values must be non-empty.
#[derive(Debug, Clone)]
pub struct RowAnyOf {
    pub task: String,
    pub op: String,
    pub paths: Vec<String>,
    pub values: Vec<Bound>,
}

/// Where a payout task's money comes from, for totals.
#[derive(Debug, Clone)]
pub struct MoneySource {
    pub task: String,
    pub op: String,
    pub amount: Bound,
    pub currency: CurrencySource,
}

/// The compiled batch: the job graph template and everything the validator needs.
#[derive(Debug, Clone)]
pub struct Flow {
    pub manifest: Manifest,
    pub provider: Provider,
    pub base_url: Option<String>,
    pub limits: Limits,
    pub preflight: Vec<Task>,
    pub tasks: Vec<Task>,
    /// Item fields read from each row (CSV columns or inline keys), in a fixed order.
    pub row_fields: Vec<String>,
    /// Indices into `row_fields` of the fields some task reads, and the id: an item's content
    /// for change detection is exactly these values.
    pub used_row_fields: Vec<usize>,
    pub checks: Vec<RowCheck>,
    pub any_of: Vec<RowAnyOf>,
    pub money: Vec<MoneySource>,
    /// Non-fatal remarks shown by validate and plan (e.g. mapped columns nothing uses).
    pub warnings: Vec<String>,
}

impl Flow {
    /// Every task of the template (not preflight), depth first.
    pub fn all_tasks(&self) -> Vec<&Task> {
        let mut out = Vec::new();
        for t in &self.tasks {
            t.walk(&mut out);
        }
        out
    }

    /// The requests of an item after its first one, each sent by payrun once the task above it
    /// ended (and its delay passed). For a tree the provider runs itself (Paysend), each delayed
    /// task with the tasks below it up to the next delay; for a provider that runs nothing,
    /// every task below the first. Step 0 — the item's first request — is not in the list;
    /// step `k` is `steps()[k - 1]`. Depth first, so a step's parent step comes before it.
    pub fn steps(&self) -> Vec<Step<'_>> {
        fn walk<'a>(
            flow: &Flow,
            t: &'a Task,
            current: usize,
            above: &mut Vec<(&'a Task, usize)>,
            out: &mut Vec<Step<'a>>,
        ) {
            let client = flow.provider.tree == TreeExecution::Client;
            above.push((t, current));
            for (link, c) in t.children() {
                if c.delay.is_none() && !client {
                    walk(flow, c, current, above, out);
                    continue;
                }
                let settle = match client {
                    true => flow.op(&c.op).settle,
                    false => {
                        let mut below = Vec::new();
                        c.walk_request(&mut below);
                        match below.iter().any(|t| flow.op(&t.op).role == Role::Payout) {
                            true => crate::schema::Settle::Lookup,
                            false => crate::schema::Settle::Resend,
                        }
                    }
                };
                out.push(Step {
                    task: c,
                    after: current,
                    after_task: t,
                    link,
                    delay: c.delay.unwrap_or_default(),
                    settle,
                    ancestors: above.iter().rev().copied().collect(),
                });
                let me = out.len();
                walk(flow, c, me, above, out);
            }
            above.pop();
        }
        let mut out = Vec::new();
        for t in &self.tasks {
            walk(self, t, 0, &mut Vec::new(), &mut out);
        }
        out
    }

    pub fn op(&self, name: &str) -> &Operation {
        self.provider
            .operation(name)
            .expect("compiled tasks name known operations")
    }

    /// The schema files this flow depends on: (display name, sha256), sorted.
    pub fn schema_files(&self) -> Vec<(String, String)> {
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        files.insert(self.provider.file.clone(), self.provider.sha256.clone());
        for t in self.preflight.iter().chain(self.tasks.iter()) {
            let mut all = Vec::new();
            t.walk(&mut all);
            for t in all {
                let op = self.op(&t.op);
                files.insert(op.file.clone(), op.sha256.clone());
            }
        }
        files.into_iter().collect()
    }
}

struct Compiler<'a> {
    manifest: &'a Manifest,
    provider: &'a Provider,
    row_fields: &'a [String],
    errors: Vec<Diagnostic>,
    checks: Vec<RowCheck>,
    any_of: Vec<RowAnyOf>,
    money: Vec<MoneySource>,
    used_fields: HashSet<String>,
    sample_key: String,
    /// Payload paths of the current task whose value could not be compiled (already reported),
    /// so that they are not reported again as missing.
    failed_paths: HashSet<String>,
    /// Ids of preflight tasks: they finish before any item starts, so every item task may read
    /// their results (e.g. Payoneer's token).
    preflight_ids: Vec<String>,
}

/// Compiles `manifest` against `provider`. `row_fields` are the item fields each row provides
/// (from the CSV header and column mapping, or the inline items' keys).
pub fn compile(
    manifest: &Manifest,
    provider: &Provider,
    row_fields: &[String],
) -> Result<Flow, Diagnostics> {
    let mut c = Compiler {
        manifest,
        provider,
        row_fields,
        errors: Vec::new(),
        checks: Vec::new(),
        any_of: Vec::new(),
        money: Vec::new(),
        used_fields: HashSet::new(),
        sample_key: keys::item_key(&manifest.batch, "sample"),
        preflight_ids: Vec::new(),
        failed_paths: HashSet::new(),
    };
    fn ids(nodes: &[Node], out: &mut Vec<String>) {
        for n in nodes {
            out.push(n.id.clone());
            ids(&n.success, out);
            ids(&n.fail, out);
            ids(&n.always, out);
        }
    }
    ids(&manifest.preflight, &mut c.preflight_ids);
    let m = manifest;
    let base_url = match &m.environment {
        Environment::Sandbox => provider.sandbox_url.clone(),
        Environment::Production => {
            // A provider with one host per operation (Payonic) needs no single production URL.
            let per_operation = !provider.operations.is_empty()
                && provider.operations.values().all(|o| {
                    o.request
                        .as_ref()
                        .is_some_and(|r| r.hosts.contains_key("production"))
                });
            if provider.production_url.is_none() && !per_operation {
                c.error(
                    &[key("environment")],
                    "manifest.environment",
                    format!("{} documents no production URL", provider.title),
                    "write the base URL your account manager gave you as `environment:`",
                );
            }
            provider.production_url.clone()
        }
        Environment::Url(u) => Some(u.clone()),
    };
    // Credentials: exactly the provider's names.
    let known: Vec<&str> = provider
        .credentials
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    for (name, _) in &m.credentials {
        if !known.contains(&name.as_str()) {
            let hint = match crate::text::did_you_mean(name, known.iter().copied()) {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!("{} takes: {}", provider.name, known.join(", ")),
            };
            c.error(
                &[key("credentials"), key(name)],
                "manifest.credential-unknown",
                format!("{} has no credential `{name}`", provider.name),
                hint,
            );
        }
    }
    for (name, description) in &provider.credentials {
        if !m.credentials.iter().any(|(n, _)| n == name) {
            c.error(&[key("credentials")], "manifest.credential-missing", format!("credential `{name}` is not given ({description})"), format!("add `{name}: SOME_ENV_VAR` under credentials and export that variable before `payrun run`"));
        }
    }
    if !row_fields.iter().any(|f| f == "id") {
        let at = match &m.items {
            crate::manifest::Items::Csv(_) => vec![key("items")],
            crate::manifest::Items::Inline(_) => vec![key("items"), key("inline")],
        };
        c.error(&at, "manifest.item-id", "items have no `id` field", "every item needs a stable id (e.g. the employee number): map a column to `id` under items.columns, or name a column `id`");
    }
    for f in m.defaults.keys() {
        if !crate::manifest::is_field_name(f) {
            c.error(
                &[key("defaults"), key(f)],
                "manifest.defaults",
                format!("`{f}` is not a usable item field name"),
                "use letters, digits and '_', starting with a letter",
            );
        }
    }
    let preflight: Vec<Task> = m.preflight.iter().map(|n| c.task(n, &[], true)).collect();
    let tasks: Vec<Task> = m.flow.iter().map(|n| c.task(n, &[], false)).collect();
    if provider.tree == TreeExecution::Server {
        check_server_delays(&mut c, &m.flow, provider);
    } else {
        // payrun sends every task of the graph itself, each once the one above it ended: a
        // delay anywhere but at the top is an ordinary wait.
        for r in &m.flow {
            if r.delay.is_some() {
                let mut at = r.yaml_path.clone();
                at.push(key("delay"));
                c.error(
                    &at,
                    "flow.delay",
                    "a task at the top of the flow cannot wait: it is what starts each item",
                    "run the batch later instead, or put the delay on a task below it",
                );
            }
        }
    }
    check_lookups_can_be_answered(&mut c, &tasks);

    let limits = Limits {
        requests_per_second: if m.limits.requests_per_second > 0.0 {
            m.limits.requests_per_second
        } else {
            provider.limits.requests_per_second
        },
        burst: if m.limits.burst > 0 {
            m.limits.burst
        } else {
            provider.limits.burst
        },
        concurrency: if m.limits.concurrency > 0 {
            m.limits.concurrency
        } else {
            provider.limits.concurrency
        },
        tasks_per_request: if m.limits.tasks_per_request > 0 {
            m.limits.tasks_per_request
        } else {
            provider.limits.tasks_per_request
        },
        endpoints: m.limits.endpoints.clone(),
    };
    for (name, _, _) in &m.limits.endpoints {
        if !provider.endpoints.contains(name) {
            c.error(
                &[key("limits"), key("endpoints"), key(name)],
                "manifest.limits",
                format!(
                    "{} has no endpoint `{name}` payrun can limit",
                    provider.title
                ),
                if provider.endpoints.is_empty() {
                    "remove limits.endpoints: this provider has one limit".to_string()
                } else {
                    format!("use one of: {}", provider.endpoints.join(", "))
                },
            );
        }
    }
    if !provider.packing && m.limits.tasks_per_request > 1 {
        c.error(
            &[key("limits"), key("tasks_per_request")],
            "manifest.limits",
            format!("{} takes one task per request", provider.title),
            "remove tasks_per_request",
        );
    }
    let mut warnings = manifest.warnings.clone();
    let unused: Vec<&str> = row_fields
        .iter()
        .filter(|f| *f != "id" && !c.used_fields.contains(*f))
        .map(String::as_str)
        .collect();
    if !unused.is_empty() {
        let shown: Vec<String> = unused
            .iter()
            .take(10)
            .map(|f| format!("`{}`", crate::diagnostic::quote_header(f)))
            .collect();
        let more = if unused.len() > 10 {
            format!(" and {} more", unused.len() - 10)
        } else {
            String::new()
        };
        warnings.push(format!(
            "item field{} {}{more} {} not used by any task",
            if unused.len() == 1 { "" } else { "s" },
            shown.join(", "),
            if unused.len() == 1 { "is" } else { "are" }
        ));
    }
    if !c.errors.is_empty() {
        return Err(Diagnostics(c.errors));
    }
    let used_row_fields = row_fields
        .iter()
        .enumerate()
        .filter(|(_, f)| *f == "id" || c.used_fields.contains(*f))
        .map(|(i, _)| i)
        .collect();
    Ok(Flow {
        manifest: manifest.clone(),
        provider: provider.clone(),
        base_url,
        limits,
        preflight,
        tasks,
        row_fields: row_fields.to_vec(),
        used_row_fields,
        checks: c.checks,
        any_of: c.any_of,
        money: c.money,
        warnings,
    })
}

impl Compiler<'_> {
    fn error(
        &mut self,
        at: &[Seg],
        rule: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.errors.push(
            Diagnostic::new(&self.manifest.display, rule, message)
                .at_opt(yaml::locate(&self.manifest.text, at))
                .hint(hint),
        );
    }

    fn task(&mut self, node: &Node, ancestors: &[String], preflight: bool) -> Task {
        self.failed_paths.clear();
        // A delayed task of a provider that runs whole trees is sent by payrun in a request of
        // its own, after the tasks above it finished: their results are known from here on.
        let mut marked;
        let ancestors = if node.delay.is_some() && self.provider.tree == TreeExecution::Server {
            marked = ancestors.to_vec();
            marked.push(REQUEST_BOUNDARY.to_string());
            marked.as_slice()
        } else {
            ancestors
        };
        let op_at = {
            let mut p = node.yaml_path.clone();
            p.push(key("op"));
            p
        };
        let provider = self.provider;
        let Some(op) = provider.operation(&node.op) else {
            let hint = match crate::text::did_you_mean(
                &node.op,
                provider.operations.keys().map(String::as_str),
            ) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!(
                    "{} operations: {}",
                    provider.name,
                    provider
                        .operations
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            self.error(
                &op_at,
                "flow.unknown-operation",
                format!("{} has no operation `{}`", provider.name, node.op),
                hint,
            );
            return Task {
                id: node.id.clone(),
                op: node.op.clone(),
                tree_path: node.tree_path.clone(),
                delay: node.delay,
                bindings: vec![],
                success: vec![],
                fail: vec![],
                always: vec![],
            };
        };
        if op.completion == crate::schema::Completion::Notification
            && self.manifest.notifications.mode == crate::manifest::raw::NotificationMode::Polling
        {
            self.error(
                &op_at,
                "flow.needs-notifications",
                format!("`{}` reports its result only by notification, but notifications are off", op.name),
                "set notifications: {listen: 127.0.0.1:8787, public_url: https://...} so the provider can call back",
            );
        }
        if preflight && op.role == Role::Payout {
            self.error(
                &op_at,
                "flow.preflight-payout",
                format!("`{}` moves money and cannot be a preflight task", op.name),
                "preflight tasks run once per batch before any payout, e.g. a balance check",
            );
        }
        // Flatten the payload template into (path, value, where).
        let mut leaves: Vec<(String, Bound, Vec<Seg>)> = Vec::new();
        let mut payload_at = node.yaml_path.clone();
        payload_at.push(key("payload"));
        for (k, v) in &node.payload {
            let mut at = payload_at.clone();
            at.push(key(k));
            self.flatten(k.clone(), v, at, Some((ancestors, preflight)), &mut leaves);
        }
        let mut bindings = Vec::new();
        let mut seen = HashSet::new();
        for (path, value, at) in leaves {
            if !seen.insert(path.clone()) {
                self.error(
                    &at,
                    "flow.duplicate-field",
                    format!("`{path}` is given twice for {}", op.name),
                    "keep one",
                );
                continue;
            }
            match op.field_index(&path) {
                Some(i) => bindings.push(Binding {
                    path,
                    field: i,
                    value,
                }),
                None if op.is_object_path(&path) => self.error(
                    &at,
                    "flow.object-field",
                    format!("`{path}` of {} is an object, not a value", op.name),
                    format!(
                        "give its fields, see `payrun template {} {}`",
                        op.provider, op.name
                    ),
                ),
                None => {
                    let hint = match op.closest_path(&path) {
                        Some(p) => format!("did you mean `{p}`?"),
                        None => format!(
                            "see `payrun template {} {}` for its fields",
                            op.provider, op.name
                        ),
                    };
                    self.error(
                        &at,
                        "flow.unknown-field",
                        format!("{} has no payload field `{path}`", op.name),
                        hint,
                    );
                }
            }
        }
        // The idempotency field must carry the item's key: anything else breaks exactly-once.
        if let Some(ip) = &op.idempotency {
            match bindings.iter().find(|b| &b.path == ip) {
                None if !preflight => {
                    let i = op.field_index(ip).expect("checked when the schema loaded");
                    bindings.push(Binding {
                        path: ip.clone(),
                        field: i,
                        value: Bound::IdempotencyKey,
                    });
                }
                Some(b) if !matches!(b.value, Bound::IdempotencyKey) && !preflight => {
                    let mut at = payload_at.clone();
                    at.extend(ip.split('.').map(key));
                    self.error(&at, "flow.idempotency-field", format!("`{ip}` of {} must be the item's idempotency key", op.name), format!("leave `{ip}` out (payrun fills it in) or write `${{idempotency_key}}`; a key from the file could pay an item twice if the file changes"));
                }
                _ => {}
            }
        }
        // The notification URL is payrun's own (its listener, with the batch's token); without a
        // listener it is left out.
        let listening =
            self.manifest.notifications.mode == crate::manifest::raw::NotificationMode::Webhook;
        if let Some(np) = &op.notification_url {
            match bindings.iter().find(|b| &b.path == np) {
                None if !listening => {}
                None => {
                    let i = op.field_index(np).expect("checked when the schema loaded");
                    bindings.push(Binding {
                        path: np.clone(),
                        field: i,
                        value: Bound::NotifyUrl,
                    });
                }
                Some(_) => {
                    let mut at = payload_at.clone();
                    at.extend(np.split('.').map(key));
                    self.error(&at, "flow.notification-url", format!("`{np}` of {} is where payrun listens for the answer", op.name), format!("leave `{np}` out: payrun fills in its listener's URL (notifications.public_url) with a secret token"));
                }
            }
        }
        let mut task = Task {
            id: node.id.clone(),
            op: op.name.clone(),
            tree_path: node.tree_path.clone(),
            delay: node.delay,
            bindings,
            success: vec![],
            fail: vec![],
            always: vec![],
        };
        self.check_task(&task, op, &payload_at);
        let mut below = ancestors.to_vec();
        below.push(node.id.clone());
        task.success = node
            .success
            .iter()
            .map(|n| self.task(n, &below, preflight))
            .collect();
        task.fail = node
            .fail
            .iter()
            .map(|n| self.task(n, &below, preflight))
            .collect();
        task.always = node
            .always
            .iter()
            .map(|n| self.task(n, &below, preflight))
            .collect();
        task
    }

    /// Turns one payload template value into leaves.
    /// `scope` is (ancestor ids, preflight) for payload templates, `None` for a defaults block,
    /// whose strings are taken literally.
    fn flatten(
        &mut self,
        path: String,
        v: &serde_yaml::Value,
        at: Vec<Seg>,
        scope: Option<(&[String], bool)>,
        out: &mut Vec<(String, Bound, Vec<Seg>)>,
    ) {
        use serde_yaml::Value as Y;
        match v {
            Y::Null => {}
            Y::Mapping(m) => {
                for (k, v) in m {
                    let Some(k) = crate::schema::raw::scalar_text(k) else {
                        continue;
                    };
                    let mut a = at.clone();
                    a.push(key(&k));
                    self.flatten(format!("{path}.{k}"), v, a, scope, out);
                }
            }
            Y::Sequence(_) => self.error(
                &at,
                "flow.list-value",
                format!("`{path}` is a list; payload templates take values and blocks only"),
                "list items one by one as separate items of the batch",
            ),
            Y::Tagged(t) => self.flatten(path, &t.value, at, scope, out),
            Y::String(s) if scope.is_none() => out.push((path, Bound::Const(s.clone()), at)),
            Y::String(s) => {
                let (ancestors, preflight) = scope.expect("templates have a scope");
                let parts = match template::parse(s) {
                    Ok(p) => p,
                    Err(e) => {
                        self.error(
                            &at,
                            "flow.template",
                            e,
                            "write ${item.<field>}, e.g. ${item.amount}",
                        );
                        self.failed_paths.insert(path.clone());
                        return;
                    }
                };
                // A whole-value reference to a defaults block expands into its fields.
                if let [Part::Ref(Ref::Item { field, sub })] = parts.as_slice()
                    && !self.row_fields.contains(field)
                    && let Some(block) = self
                        .default_at(field, sub)
                        .filter(|b| b.is_mapping())
                        .cloned()
                {
                    self.used_fields.insert(field.clone());
                    let mut dat = vec![key("defaults"), key(field)];
                    dat.extend(sub.iter().map(|s| key(s)));
                    // Its scalars are constants, located in `defaults`; `${…}` in them is text.
                    self.flatten(path, &block, dat, None, out);
                    return;
                }
                let mut bound = Vec::new();
                for p in parts {
                    match p {
                        Part::Lit(l) => bound.push(Bound::Const(l)),
                        Part::Ref(r) => match self.resolve(r, ancestors, preflight) {
                            Ok(b) => bound.push(b),
                            Err((msg, hint)) => {
                                self.error(&at, "flow.reference", msg, hint);
                                self.failed_paths.insert(path.clone());
                                return;
                            }
                        },
                    }
                }
                let value = if bound.len() == 1 {
                    bound.pop().expect("one part")
                } else if bound.iter().all(|b| matches!(b, Bound::Const(_))) {
                    Bound::Const(bound.iter().map(Bound::describe).collect())
                } else {
                    Bound::Interp(bound)
                };
                out.push((path, value, at));
            }
            other => {
                let text = crate::schema::raw::scalar_text(other).unwrap_or_default();
                out.push((path, Bound::Const(text), at));
            }
        }
    }

    fn default_at(&self, field: &str, sub: &[String]) -> Option<&serde_yaml::Value> {
        let mut v = self.manifest.defaults.get(field)?;
        for s in sub {
            v = v.as_mapping()?.get(s.as_str())?;
        }
        Some(v)
    }

    fn resolve(
        &mut self,
        r: Ref,
        ancestors: &[String],
        preflight: bool,
    ) -> Result<Bound, (String, String)> {
        match r {
            Ref::IdempotencyKey | Ref::TaskKey if preflight => Err((
                "preflight tasks run once per batch and have no item key".into(),
                "use ${batch} or a constant".into(),
            )),
            Ref::IdempotencyKey => Ok(Bound::IdempotencyKey),
            Ref::TaskKey => Ok(Bound::TaskKey),
            Ref::Batch => Ok(Bound::Batch),
            Ref::Result { node, path } => {
                let boundary = ancestors.iter().rposition(|a| a == REQUEST_BOUNDARY);
                let position = ancestors.iter().position(|a| *a == node);
                if self.provider.tree == TreeExecution::Server
                    && let Some(at) = position
                    && boundary.is_none_or(|b| at > b)
                {
                    return Err((
                        format!(
                            "{} runs a whole task tree in one request, so `result.{node}` is not known when this task is sent",
                            self.provider.title
                        ),
                        format!(
                            "give this task (or one between it and `{node}`) a `delay`: payrun then sends it in a request of its own once `{node}` finished"
                        ),
                    ));
                }
                if ancestors.contains(&node) || (!preflight && self.preflight_ids.contains(&node)) {
                    Ok(Bound::Result { node, path })
                } else {
                    Err((
                        format!("`result.{node}` is not an ancestor of this task nor a preflight task"),
                        "a task can use the results of the tasks above it in its tree and of preflight tasks; give them an `id`".into(),
                    ))
                }
            }
            Ref::NotificationUrl => match (
                &self.manifest.notifications.mode,
                &self.manifest.notifications.public_url,
            ) {
                (crate::manifest::raw::NotificationMode::Webhook, Some(u)) => {
                    Ok(Bound::Const(u.clone()))
                }
                _ => Err((
                    "`notifications.public_url` is not set".into(),
                    "set notifications: {listen: ..., public_url: ...}".into(),
                )),
            },
            Ref::Item { field, sub } => {
                if preflight && self.row_fields.contains(&field) {
                    return Err((
                        format!(
                            "preflight tasks run once per batch and cannot read item field `{field}`"
                        ),
                        "use a constant or a defaults entry".into(),
                    ));
                }
                self.used_fields.insert(field.clone());
                let default = self.default_at(&field, &sub).cloned();
                if self.row_fields.contains(&field) {
                    if !sub.is_empty() {
                        return Err((
                            format!(
                                "item field `{field}` is a single value and has no `{}`",
                                sub.join(".")
                            ),
                            format!("write ${{item.{field}}}"),
                        ));
                    }
                    let default = match default {
                        Some(d) => Some(crate::schema::raw::scalar_text(&d).ok_or((format!("the default for `{field}` is a block but the column gives a single value"), "make the default a single value".to_string()))?),
                        None => None,
                    };
                    return Ok(Bound::Row { field, default });
                }
                match default {
                    Some(serde_yaml::Value::Mapping(_)) => Err((format!("`item.{field}` is a block; it can only stand alone as the whole value"), "write it as the whole value of a payload block, e.g. `from: ${item.sender}`".into())),
                    Some(v) => Ok(Bound::Const(crate::schema::raw::scalar_text(&v).unwrap_or_default())),
                    None => {
                        let candidates: Vec<&str> = self.row_fields.iter().map(String::as_str).chain(self.manifest.defaults.keys().map(String::as_str)).collect();
                        let hint = match crate::text::did_you_mean(&field, candidates.iter().copied()) {
                            Some(m) => format!("did you mean `{m}`?"),
                            None => format!("item fields: {}", crate::diagnostic::quote_names(&candidates)),
                        };
                        let full = if sub.is_empty() { field.clone() } else { format!("{field}.{}", sub.join(".")) };
                        Err((format!("item field `{full}` is neither a column nor a default"), hint))
                    }
                }
            }
        }
    }

    /// Checks constants now and registers per-row checks for the rest.
    fn check_task(&mut self, task: &Task, op: &Operation, payload_at: &[Seg]) {
        let at_path = |p: &str| {
            let mut a = payload_at.to_vec();
            a.extend(p.split('.').map(key));
            a
        };
        let value_of = |path: &str| {
            task.bindings
                .iter()
                .find(|b| b.path == path)
                .map(|b| &b.value)
        };
        // The currency an amount field's decimals follow.
        let currency_of = |field: &Field| -> Option<CurrencySource> {
            let FieldKind::Amount { currency, .. } = &field.kind else {
                return None;
            };
            Some(match currency {
                CurrencyRef::Fixed(c) => CurrencySource::Fixed(*c),
                CurrencyRef::Path(p) => {
                    let format = match op.field(p).map(|f| &f.kind) {
                        Some(FieldKind::Currency { format }) => *format,
                        _ => CurrencyFormat::Any,
                    };
                    match value_of(p) {
                        Some(Bound::Const(c)) => crate::schema::field::check_currency(c, format)
                            .map(CurrencySource::Fixed)
                            .unwrap_or(CurrencySource::Unknown),
                        Some(v) if !v.is_static() => CurrencySource::Row {
                            value: v.clone(),
                            format,
                        },
                        _ => CurrencySource::Unknown,
                    }
                }
            })
        };
        for b in &task.bindings {
            // What the field holds may depend on a sibling set in the manifest (`holds_if`:
            // Paysend's accountIdentifier is an IBAN when identifierType is IBAN).
            let field = op.fields[b.field].given(|p| match value_of(p) {
                Some(Bound::Const(c)) => Some(c.clone()),
                _ => None,
            });
            let field: &Field = &field;
            let currency = currency_of(field);
            let sample = match &b.value {
                Bound::Const(s) => Some(s.clone()),
                Bound::Batch => Some(self.manifest.batch.clone()),
                Bound::IdempotencyKey => Some(keys::on_wire(&self.sample_key, self.provider.keys)),
                Bound::TaskKey => Some(keys::on_wire(
                    &keys::task_key(&self.sample_key, &task.tree_path),
                    self.provider.keys,
                )),
                Bound::NotifyUrl => Some("https://payrun.invalid/notify/token".into()),
                _ => None,
            };
            // Text written in the manifest (payload constants, defaults blocks, the literal parts
            // of `Salary ${item.month}`) is held to the rule item values are: no control or
            // invisible character reaches the provider.
            let written: Vec<&str> = match &b.value {
                Bound::Const(c) => vec![c.as_str()],
                Bound::Interp(parts) => parts
                    .iter()
                    .filter_map(|p| match p {
                        Bound::Const(c) => Some(c.as_str()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            if let Some(h) = written
                .iter()
                .find_map(|c| crate::validate::text::first_hostile(c, true))
            {
                self.errors.push(
                    Diagnostic::new(
                        &self.manifest.display,
                        h.rule(),
                        format!("{} `{}` holds {}", op.name, b.path, h.describe()),
                    )
                    .at_opt(yaml::locate(&self.manifest.text, &at_path(&b.path)))
                    .field(b.path.clone())
                    .hint(format!(
                        "remove {} from the manifest: the provider or a bank would mangle it, and hidden characters can make a name or number read as another",
                        crate::validate::text::name(h.ch)
                    )),
                );
            }
            let row_currency = matches!(currency, Some(CurrencySource::Row { .. }));
            match sample {
                Some(s) if !row_currency => {
                    let res = match (&field.kind, &currency) {
                        (FieldKind::Amount { .. }, Some(CurrencySource::Fixed(c))) => {
                            field.check_amount(&s, Some(*c)).map(|_| ())
                        }
                        (FieldKind::Amount { .. }, _) => field.check_amount(&s, None).map(|_| ()),
                        _ if s.is_empty() => Ok(()),
                        _ => field.check(&s),
                    };
                    if let Err(v) = res {
                        let shown = crate::mask::for_error(&s, field.privacy());
                        self.errors.push(
                            Diagnostic::new(
                                &self.manifest.display,
                                v.rule,
                                format!("{} `{}`: {shown:?} {}", op.name, b.path, v.message),
                            )
                            .at_opt(yaml::locate(&self.manifest.text, &at_path(&b.path)))
                            .field(b.path.clone())
                            .hint(v.hint),
                        );
                    }
                    if s.is_empty() && field.required {
                        self.error(
                            &at_path(&b.path),
                            "required",
                            format!("{} `{}` is required but empty", op.name, b.path),
                            field.description.clone(),
                        );
                    }
                }
                _ => {
                    if matches!(b.value, Bound::Result { .. }) {
                        continue;
                    }
                    let siblings = field
                        .holds_if
                        .iter()
                        .filter_map(|c| {
                            let v = value_of(&c.field)?;
                            (!v.is_static()).then(|| (c.field.clone(), v.clone()))
                        })
                        .collect();
                    self.checks.push(RowCheck {
                        task: task.id.clone(),
                        op: op.name.clone(),
                        field: field.clone(),
                        value: b.value.clone(),
                        currency,
                        siblings,
                    });
                }
            }
        }
        for f in &op.fields {
            if f.required && value_of(&f.path).is_none() && !self.failed_paths.contains(&f.path) {
                self.error(
                    payload_at,
                    "required",
                    format!("{} needs `{}`", op.name, f.path),
                    format!(
                        "{} — add it to the payload, e.g. `{}: ${{item.<column>}}`",
                        f.description, f.path
                    ),
                );
            }
        }
        for group in &op.any_of {
            let values: Vec<&Bound> = group.iter().filter_map(|p| value_of(p)).collect();
            if values.is_empty() {
                self.error(
                    payload_at,
                    "required.any-of",
                    format!("{} needs one of {}", op.name, group.join(", ")),
                    "add one of them to the payload",
                );
            } else if values.iter().all(|v| !v.is_static()) {
                self.any_of.push(RowAnyOf {
                    task: task.id.clone(),
                    op: op.name.clone(),
                    paths: group.clone(),
                    values: values.into_iter().cloned().collect(),
                });
            }
        }
        if let Some((amount, currency)) = &op.money {
            let amount_field = op.field(amount).expect("checked at load");
            match value_of(amount) {
                Some(a) if currency_of(amount_field).is_some() => {
                    let cur = currency_of(amount_field).expect("amount field");
                    if value_of(currency).is_none() {
                        self.error(
                            payload_at,
                            "required",
                            format!("{} needs `{currency}` for its amount", op.name),
                            "give the currency of the payout",
                        );
                    }
                    self.money.push(MoneySource {
                        task: task.id.clone(),
                        op: op.name.clone(),
                        amount: a.clone(),
                        currency: cur,
                    });
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::schema::{Registry, Settle};

    fn prepared(manifest: &str, csv: &str) -> Result<super::Flow, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("items.csv"), csv).unwrap();
        std::fs::write(dir.path().join("manifest.yaml"), manifest).unwrap();
        crate::pipeline::prepare(&dir.path().join("manifest.yaml"), &Registry::Embedded)
            .map(|p| p.flow)
            .map_err(|f| {
                f.diagnostics
                    .iter()
                    .map(|d| d.render())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
    }

    const CHAIN: &str = r#"batch: chain
provider: payonic
environment: sandbox
credentials: {api_key: K}
items: {source: items.csv}
flow:
  - id: charge
    op: mit
    payload:
      merchantid: m1
      paymentid: ${item.p}
      amount: ${item.amount}
      currency: DKK
    success:
      - id: capture
        op: capture
        payload:
          paymentid: ${result.charge.paymentid}
          amount: ${result.charge.amount}
          currency: DKK
        success:
          - id: refund
            op: refund
            delay: 1h
            payload:
              paymentid: ${result.charge.paymentid}
              amount: ${item.back}
              currency: DKK
notifications: {listen: 127.0.0.1:8799, public_url: "https://acme.example/payrun"}
"#;

    #[test]
    fn every_task_below_the_first_is_a_step_of_its_own_for_a_provider_that_runs_nothing() {
        let flow = prepared(CHAIN, "id,p,amount,back\na,p1,10.00,2.00\n").unwrap();
        let steps = flow.steps();
        type Shape<'a> = (&'a str, usize, &'a str, Settle, u64, Vec<&'a str>);
        let shape: Vec<Shape> = steps
            .iter()
            .map(|s| {
                (
                    s.task.id.as_str(),
                    s.after,
                    s.after_task.id.as_str(),
                    s.settle,
                    s.delay.as_secs(),
                    s.ancestors.iter().map(|(t, _)| t.id.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("capture", 0, "charge", Settle::Lookup, 0, vec!["charge"]),
                (
                    "refund",
                    1,
                    "capture",
                    Settle::Lookup,
                    3600,
                    vec!["capture", "charge"]
                ),
            ]
        );
        assert_eq!(
            steps[1]
                .ancestors
                .iter()
                .map(|(_, at)| *at)
                .collect::<Vec<_>>(),
            [1, 0],
            "the step each result is kept in"
        );
    }

    #[test]
    fn the_first_task_of_a_graph_payrun_runs_cannot_wait() {
        let manifest = CHAIN.replace(
            "  - id: charge\n    op: mit\n",
            "  - id: charge\n    op: mit\n    delay: 1h\n",
        );
        let err = prepared(&manifest, "id,p,amount,back\na,p1,10.00,2.00\n").unwrap_err();
        assert!(err.contains("flow.delay"), "{err}");
    }

    #[test]
    fn a_result_of_a_task_not_above_is_refused() {
        let manifest = CHAIN.replace(
            "paymentid: ${result.charge.paymentid}\n              amount: ${item.back}",
            "paymentid: ${result.nowhere.paymentid}\n              amount: ${item.back}",
        );
        let err = prepared(&manifest, "id,p,amount,back\na,p1,10.00,2.00\n").unwrap_err();
        assert!(err.contains("not an ancestor"), "{err}");
    }
}

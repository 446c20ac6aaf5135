//! `payrun run` and `payrun resume`: the front end of execution — validate, check a saved plan,
//! confirm, open the batch's store (refusing items that changed since they were started), pick
//! the endpoint (the embedded sandbox or the manifest's environment with credentials from the
//! environment variables it names), run, and report. Returns the process exit code: what stops
//! a command is reported, and its code chosen, by `errors` from the error's kind.

use super::errors::{self, RunError, exit};
use super::machine::Timings;
use super::outlook::Outlook;
use super::runner::{self, Endpoint, PlannedItem};
use super::store::{Store, StoreError};
use crate::compile::Flow;
use crate::pipeline;
use crate::schema::Registry;
use crate::validate::{ItemRow, Visitor};
use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Collects the valid items: identity, digest, where the row is and what it pays (requests
/// are rendered from the row when they are sent, `rows::FromRows`). `attempts`: items sent
/// again by `--retry-failed`, with their new attempt number (their key changes with it).
struct Collect<'f> {
    flow: &'f Flow,
    attempts: &'f HashMap<String, u32>,
}

impl Visitor for Collect<'_> {
    type Chunk = Vec<PlannedItem>;
    fn item(&self, item: &ItemRow, chunk: &mut Vec<PlannedItem>) {
        if !item.valid {
            return;
        }
        let mut key = crate::keys::item_key(&self.flow.manifest.batch, item.id);
        if let Some(&n) = self.attempts.get(item.id) {
            key = crate::keys::attempt_key(&key, n);
        }
        chunk.push(PlannedItem {
            id: item.id.to_string(),
            digest: crate::plan::content_digest(self.flow, item.values).into(),
            line: item.line,
            index: item.index,
            offset: item.offset,
            money: crate::plan::item_money(self.flow, item, &key).into(),
            key: key.into(),
        });
    }
}

/// The failed items `--retry-failed` sends again: those whose code the provider's table calls
/// safe to resend (schemas/<provider>/provider.yaml `resend_safe`), and those payrun gave up on
/// before the provider took them. Read from the store one record at a time. Returns (item id →
/// next attempt, the codes of the failed items not sent again).
fn retry_selection(
    flow: &Flow,
    store: &Store,
) -> Result<(HashMap<String, u32>, std::collections::BTreeSet<String>), StoreError> {
    let mut pick = HashMap::new();
    let mut left = std::collections::BTreeSet::new();
    store.each(|_, r| {
        if r.step.is_some() {
            return;
        }
        // Only requests that provably never reached the provider, or that it refused to
        // take ("not now"), or codes its table calls safe: a 5xx may have been processed.
        if let super::machine::State::Failed { code, .. } = &r.state {
            if matches!(
                code.as_str(),
                "retries-exhausted:network" | "retries-exhausted:rate_limited"
            ) || flow.provider.resend_safe.iter().any(|c| c == code)
            {
                pick.insert(r.id.clone(), r.attempt + 1);
            } else {
                left.insert(code.clone());
            }
        }
    })?;
    Ok((pick, left))
}

/// Where the embedded sandbox of a batch keeps what it remembers across commands.
pub fn sandbox_state_file(state_dir: &Path, batch: &str) -> std::path::PathBuf {
    state_dir.join(format!("{batch}.sandbox"))
}

/// payrun's default waits, which each adapter adjusts to its provider (`Adapter::timings`):
/// a 3-minute propagation delay before a lookup means anything (Paysend documents it, L633,
/// L659-667; a provider that documents none gets the same caution), polls every second of
/// provider time; `scale` > 1 for a sandbox whose provider time runs that much faster.
fn timings(scale: f64) -> Timings {
    let s = |d: Duration| d.div_f64(scale.max(1.0)).max(Duration::from_millis(20));
    Timings {
        propagation: s(Duration::from_secs(180)),
        poll_every: s(Duration::from_secs(1)),
        review_every: s(Duration::from_secs(600)),
        max_lookups: 20,
        max_polls: None,
        poll_backoff: 1.0,
        settle: Duration::ZERO,
        reversals: true,
        confirm_failures: false,
    }
}

/// How `run` was asked to run.
pub struct RunOptions<'a> {
    pub sandbox: bool,
    pub yes: bool,
    pub plan: Option<&'a Path>,
    pub state_dir: &'a Path,
    pub time_scale: f64,
    /// Send again, with a new key, the failed items the provider calls safe to resend.
    pub retry_failed: bool,
    /// A PEM bundle of CAs to trust on top of the platform's and the manifest's `tls.ca_file`.
    pub ca_file: Option<&'a Path>,
    /// The configuration the embedded sandbox starts from (`--sandbox-config`).
    pub sandbox_config: Option<&'a Path>,
    /// The embedded sandbox keeps nothing after the command (`--sandbox-in-memory`).
    pub sandbox_in_memory: bool,
    /// Accept, for this reason, items changed or added since the batch started that were never
    /// sent (`--accept-changes`): recorded in the batch, shown by status and report.
    pub accept_changes: Option<&'a str>,
}

/// Opens a started batch's store to read it. Another process that has it open with no runner's
/// lock in place is another command reading it, for a moment: that is waited for. A runner's
/// store gives `Busy`.
fn open_to_read(batch: &str, state_dir: &Path) -> Result<Store, StoreError> {
    let no_runner = || super::lock::holder(state_dir, batch).is_none();
    match Store::open_existing(state_dir, batch) {
        Err(StoreError::Busy { .. }) if no_runner() => Store::open_waiting(
            state_dir,
            batch,
            super::store::READERS_PATIENCE,
            no_runner,
            || waiting_for_reader(batch),
        ),
        r => r,
    }
}

fn waiting_for_reader(batch: &str) {
    eprintln!(
        "note: waiting for another payrun command (status, report) to finish reading batch {batch}"
    );
}

/// The manifest a started batch was run from.
fn stored_manifest(batch: &str, state_dir: &Path) -> Result<std::path::PathBuf, StoreError> {
    let store = open_to_read(batch, state_dir)?;
    match store.meta("manifest")? {
        Some(m) => Ok(std::path::PathBuf::from(m)),
        None => Err(StoreError::Missing {
            batch: batch.to_string(),
            dir: state_dir.to_path_buf(),
        }),
    }
}

/// `payrun run <manifest>`; with `--retry-failed`, `<manifest>` may be the batch id.
pub fn run(registry: &Registry, target: &Path, o: &RunOptions) -> u8 {
    let manifest = if o.retry_failed && !target.is_file() {
        match stored_manifest(&target.to_string_lossy(), o.state_dir) {
            Ok(m) => m,
            Err(e) => return errors::report_as("run.retry-failed", &e.into(), ""),
        }
    } else {
        target.to_path_buf()
    };
    let manifest = manifest.as_path();
    let prepared = match pipeline::prepare(manifest, registry) {
        Ok(p) => p,
        Err(f) => {
            for d in &f.diagnostics {
                eprintln!("{}\n", d.render());
            }
            return f.exit_code as u8;
        }
    };
    let flow = prepared.flow;
    if crate::providers::plugin(&flow.provider.name).is_none() {
        eprintln!(
            "error[run.provider]: `payrun run` has no adapter for {} yet (validate and plan work); nothing was sent",
            flow.provider.name
        );
        return 2;
    }
    // A provider that runs nothing itself: each item is one graph, started by one task.
    if flow.provider.tree == crate::schema::TreeExecution::Client && flow.tasks.len() != 1 {
        eprintln!(
            "error[run.flow]: each item's graph starts with one task for {}; this flow has {} at the top; nothing was sent",
            flow.provider.title,
            flow.tasks.len()
        );
        eprintln!(
            "  hint: hang the others under the first (`success:`, `fail:` or `always:`), or run each as a batch of its own"
        );
        return 1;
    }
    // `--retry-failed`: which items go again, decided from the store before their keys are made.
    // A batch started before: taken (lock, store) now and read once; a new batch gets its
    // store only once it is known to be valid.
    let batch_exists = match Store::find(o.state_dir, &flow.manifest.batch) {
        super::store::Found::Missing => false,
        super::store::Found::Ready => true,
        // Killed while its store was being created (older payruns): nothing was sent for it.
        super::store::Found::Unfinished(why) => {
            let _lock = match take_lock(&flow.manifest.batch, o.state_dir) {
                Ok(l) => l,
                Err(e) => return errors::report(&e, ""),
            };
            match Store::set_aside(o.state_dir, &flow.manifest.batch) {
                Ok(to) => eprintln!(
                    "note: the store of batch {} was left unfinished by a run killed while starting ({why}); nothing was sent for it; moved to {} and starting the batch afresh",
                    flow.manifest.batch,
                    to.display()
                ),
                Err(e) => return errors::report(&e.into(), ""),
            }
            false
        }
    };
    if o.retry_failed && !batch_exists {
        let e = StoreError::Missing {
            batch: flow.manifest.batch.clone(),
            dir: o.state_dir.to_path_buf(),
        };
        return errors::report_as("run.retry-failed", &e.into(), "");
    }
    let mut held = if batch_exists {
        match hold(&flow.manifest.batch, o.state_dir) {
            Ok(h) => Some(h),
            Err(e) => return errors::report(&e, ""),
        }
    } else {
        None
    };
    let attempts = if let Some(h) = held.as_ref().filter(|_| o.retry_failed) {
        let (pick, unsafe_codes) = match retry_selection(&flow, &h.store) {
            Ok(p) => p,
            Err(e) => return errors::report_as("run.retry-failed", &e.into(), ""),
        };
        if !unsafe_codes.is_empty() {
            eprintln!(
                "not sent again (the provider's table does not call these safe to resend): {}",
                unsafe_codes.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        if pick.is_empty() {
            eprintln!(
                "no failed item of batch {} is safe to resend; nothing was sent",
                flow.manifest.batch
            );
            return exit::OK;
        }
        eprintln!("retrying {} failed item(s) with new keys", pick.len());
        pick
    } else {
        HashMap::new()
    };
    let mut source = prepared.source;
    let display = match &source {
        crate::validate::source::Source::Csv(c) => c.display.clone(),
        crate::validate::source::Source::Inline(r) => r.display.clone(),
    };
    let rows = match crate::validate::source::Rows::of(&mut source, &flow.row_fields) {
        Ok(rows) => super::rows::FromRows::new(&flow, rows, display),
        Err(e) => {
            eprintln!("error[source.io]: cannot read the item source {display}: {e}");
            return exit::IO;
        }
    };
    let mut items: Vec<PlannedItem> = Vec::new();
    let report = match crate::validate::validate(
        &flow,
        &mut source,
        20,
        &Collect {
            flow: &flow,
            attempts: &attempts,
        },
        |c: Vec<PlannedItem>| items.extend(c),
    ) {
        Ok(r) => r,
        Err(d) => {
            eprintln!("{}", d.render());
            return exit::IO;
        }
    };
    for w in &report.warnings {
        // A rehearsal's listener takes a free loopback port, whatever `listen` says: the
        // manifest's warning about who can reach it does not apply (`Manifest::warnings`).
        if o.sandbox && w.starts_with("notifications.listen ") {
            continue;
        }
        eprintln!("warning: {w}");
    }
    if !report.is_ok() {
        for d in &report.errors {
            eprintln!("{}\n", d.render());
        }
        eprintln!(
            "payrun: the batch is invalid ({} errors); nothing was sent",
            report.error_count
        );
        return exit::INVALID;
    }
    if let Some(plan) = o.plan
        && let Some(code) = check_plan(&flow, plan)
    {
        return code;
    }
    // A started batch runs the items it started with: the whole source is compared with them
    // before anything is shown, asked or sent.
    if let Some(h) = held.as_mut()
        && let Err(code) = settle_drift(&flow, &items, h, o.accept_changes)
    {
        return code;
    }
    // What this command sends, not the whole batch's totals: items that ended are not sent
    // again, items sent before are looked up, `--retry-failed` resends only what it chose.
    // The store is read once for this and for the checks `execute` makes before sending.
    let mut prior = Prior {
        changed: Vec::new(),
        started: vec![false; items.len()],
    };
    let stored = match held.as_ref().map(|h| {
        let mut s = super::outlook::Stored::default();
        h.store
            .each(|i, r| {
                s.add(i, &r);
                prior.add(&items, &attempts, i, &r);
            })
            .map(|()| s)
    }) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return errors::report(&e.into(), "; nothing was sent"),
    };
    let outlook = Outlook::of_stored(&items, stored.as_ref(), &attempts, flow.steps().len());
    if outlook.finished() {
        return nothing_left(&flow, &outlook);
    }
    eprintln!("{}", outlook.start_line(&flow.manifest.batch));
    if !o.yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "error[run.confirm]: no terminal to confirm on; pass --yes to run without asking"
            );
            return exit::IO;
        }
        eprint!("{}", outlook.prompt(&flow.manifest.batch, o.sandbox));
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !super::outlook::confirmed(&answer) {
            eprintln!("nothing was sent");
            return exit::INVALID;
        }
    }
    // Held for the whole run: no room left from growing it (a million items grow it by half).
    items.shrink_to_fit();
    // Shared with the run's report answers, which list the items not started from here.
    let items = Arc::new(items);
    let code = execute(&flow, &items, &rows, manifest, &attempts, prior, o, held);
    // The process ends right after; freeing every item's requests one by one only costs time.
    std::mem::forget(items);
    code
}

/// A batch started before whose items (and delayed steps) all ended: nothing is sent, no
/// runtime or sandbox is started and nobody is asked (its items were compared with the ones
/// the batch started with before: an edited or added row is reported, not silently left
/// unpaid). Exit 4 when the batch holds failures, as its last run ended.
fn nothing_left(flow: &Flow, outlook: &Outlook) -> u8 {
    let batch = &flow.manifest.batch;
    eprintln!(
        "batch {batch}: nothing left to send: its {} items ended before ({}); `payrun report {batch}` lists them",
        outlook.ended(),
        outlook.ended_by_how()
    );
    sayln!("{}", outlook.finished_line(batch));
    if outlook.failed + outlook.reversed + outlook.steps_failed > 0 {
        exit::UNSETTLED
    } else {
        exit::OK
    }
}

/// Compares the whole source with the items batch `flow` started with (and the flow with the
/// one it started with). Drift is refused by file:line — unless `accept` gives a reason and
/// every drifted item is one never sent, changed or added at the end: then the new items are
/// fixed, each accepted item's record carries the note, and the override is recorded in the
/// batch (status and report show both). Removed and moved rows, items already sent and a
/// changed flow are never accepted. Err: the exit code of what it reported (nothing was sent).
fn settle_drift(
    flow: &Flow,
    items: &[PlannedItem],
    held: &mut Held,
    accept: Option<&str>,
) -> Result<(), u8> {
    let batch = &flow.manifest.batch;
    let source = match &flow.manifest.items {
        crate::manifest::Items::Csv(src) => src.display.clone(),
        crate::manifest::Items::Inline(_) => flow.manifest.display.clone(),
    };
    if let Ok(Some(then)) = held.store.meta("flow_digest")
        && then != super::fixed::flow_digest(&flow.manifest)
    {
        eprintln!(
            "error[run.changed-flow]: the manifest's flow, defaults or preflight changed since batch {batch} started; unsent items would be sent otherwise than the batch started with; nothing was sent"
        );
        eprintln!(
            "  hint: restore the manifest's flow, defaults and preflight to continue (limits, retry and notifications may change), or run the changed flow as a new batch (a new `batch:` id)"
        );
        return Err(exit::INVALID);
    }
    let fixed = match held.store.fixed() {
        Ok(Some(f)) => f,
        // A batch started before items were fixed: checked by record in `execute`.
        Ok(None) => return Ok(()),
        Err(e) => return Err(errors::report(&e.into(), "")),
    };
    let drift = super::fixed::compare(&fixed, items);
    if drift.is_empty() {
        return Ok(());
    }
    let Some(reason) = accept else {
        for l in super::fixed::describe(&drift, &source, batch, 20) {
            eprintln!("{l}");
        }
        if drift.removed.is_empty() && drift.moved.is_empty() {
            eprintln!(
                "  or, for a deliberate change of rows never sent: run again with --accept-changes \"<reason>\" (recorded in the batch; status and report show it)"
            );
        }
        return Err(exit::INVALID);
    };
    // What may be accepted: rows never sent, changed in place or added at the end.
    // The records of the drifted items, read one by one.
    let mut by_index: HashMap<u64, super::store::Record> = HashMap::new();
    let reader = held.store.reader();
    let index_of: HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.id.as_str(), i))
        .collect();
    for (id, _) in drift.changed.iter().chain(&drift.added) {
        if let Some(&i) = index_of.get(id.as_str()) {
            match reader.record(i as u64) {
                Ok(Some(r)) => {
                    by_index.insert(i as u64, r);
                }
                Ok(None) => {}
                Err(e) => return Err(errors::report(&e.into(), "; nothing was accepted or sent")),
            }
        }
    }
    let sent: Vec<String> = drift
        .changed
        .iter()
        .filter(|(id, _)| {
            index_of.get(id.as_str()).is_some_and(|&i| {
                by_index.get(&(i as u64)).is_some_and(|r| {
                    r.requests > 0 || !matches!(r.state, super::machine::State::Planned)
                })
            })
        })
        .map(|(id, line)| format!("{source}:{line}: item {id}"))
        .collect();
    if !drift.removed.is_empty() || !drift.moved.is_empty() || !sent.is_empty() {
        for l in super::fixed::describe(&drift, &source, batch, 20) {
            eprintln!("{l}");
        }
        eprintln!(
            "error[run.accept-changes]: --accept-changes accepts only rows never sent, changed in place or added at the end; nothing was accepted"
        );
        for s in sent.iter().take(20) {
            eprintln!(
                "  {s} was already sent with its old content: a correction of it is a new payment, in a new batch"
            );
        }
        if !drift.removed.is_empty() || !drift.moved.is_empty() {
            eprintln!("  rows removed or moved cannot be accepted: restore their places");
        }
        return Err(exit::INVALID);
    }
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let note = format!("{at} accepted: {reason}");
    let mut rows: Vec<(u64, super::store::Record)> = Vec::new();
    for (id, _) in drift.changed.iter().chain(&drift.added) {
        let Some(&i) = index_of.get(id.as_str()) else {
            continue;
        };
        let it = &items[i];
        let mut r = by_index
            .get(&(i as u64))
            .map_or_else(|| it.record(), |r| r.clone());
        r.digest = it.digest.text();
        r.line = it.line;
        r.money = it.money.clone();
        r.accepted = Some(note.clone());
        rows.push((i as u64, r));
    }
    let line = serde_json::json!({
        "at": at,
        "reason": reason,
        "changed": drift.changed.iter().map(|(id, line)| format!("{id} ({source}:{line})")).collect::<Vec<_>>(),
        "added": drift.added.iter().map(|(id, line)| format!("{id} ({source}:{line})")).collect::<Vec<_>>(),
    })
    .to_string();
    let refs: Vec<(u64, &super::store::Record)> = rows.iter().map(|(i, r)| (*i, r)).collect();
    if let Err(e) = held
        .store
        .accept(&super::fixed::entries(items), &refs, &line)
    {
        return Err(errors::report(&e.into(), "; nothing was accepted or sent"));
    }
    eprintln!(
        "accepted changes to batch {batch} ({reason}): {} changed, {} added; recorded in the batch (`payrun status {batch}`, `payrun report {batch}`)",
        drift.changed.len(),
        drift.added.len()
    );
    Ok(())
}

/// Compares a saved plan's fingerprint with the inputs as they are now.
fn check_plan(flow: &Flow, plan: &Path) -> Option<u8> {
    use crate::plan::fingerprint::Fingerprint;
    let saved: Option<Fingerprint> = std::fs::read(plan)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| serde_json::from_value(v["fingerprint"].clone()).ok());
    let Some(saved) = saved else {
        eprintln!(
            "error[run.plan]: {} is not a plan written by `payrun plan -o`",
            plan.display()
        );
        return Some(exit::IO);
    };
    let source_sha = match &flow.manifest.items {
        crate::manifest::Items::Csv(src) => {
            crate::input_file::open(&src.path)
                .ok()
                .and_then(|(mut f, _)| {
                    use sha2::{Digest, Sha256};
                    let mut h = Sha256::new();
                    std::io::copy(&mut f, &mut h).ok()?;
                    Some(crate::keys::hex_lower(&h.finalize()))
                })
        }
        crate::manifest::Items::Inline(_) => None,
    };
    let now = Fingerprint::of(flow, source_sha.as_deref());
    if now.sha256 != saved.sha256 {
        eprintln!(
            "error[run.stale-plan]: the plan {} no longer matches its inputs:",
            plan.display()
        );
        for c in saved.changes(&now) {
            eprintln!("  {c}");
        }
        eprintln!("  hint: run `payrun plan` again and review it");
        return Some(exit::INVALID);
    }
    None
}

#[allow(clippy::too_many_arguments)]
pub fn resume(
    registry: &Registry,
    batch: &str,
    sandbox: bool,
    state_dir: &Path,
    time_scale: f64,
    ca_file: Option<&Path>,
    sandbox_config: Option<&Path>,
    sandbox_in_memory: bool,
    accept_changes: Option<&str>,
) -> u8 {
    let manifest = match stored_manifest(batch, state_dir) {
        Ok(m) => m,
        Err(e) => return errors::report_as("resume", &e.into(), ""),
    };
    run(
        registry,
        &manifest,
        &RunOptions {
            sandbox,
            yes: true,
            plan: None,
            state_dir,
            time_scale,
            retry_failed: false,
            ca_file,
            sandbox_config,
            sandbox_in_memory,
            accept_changes,
        },
    )
}

/// The batch taken for this process: its lock, its store, and what the store held then.
struct Held {
    _lock: super::lock::Lock,
    store: Store,
}

/// What a started batch's records say that `execute` checks before sending, read with the
/// start line's pass over the store.
struct Prior {
    /// Items whose stored record is not the item as it is now (its key or content changed):
    /// `<id> (line N)`.
    changed: Vec<String>,
    /// By position: the item was started (a retried one starts again).
    started: Vec<bool>,
}

impl Prior {
    fn add(
        &mut self,
        items: &[PlannedItem],
        attempts: &HashMap<String, u32>,
        index: u64,
        r: &super::store::Record,
    ) {
        if r.step.is_some() {
            return;
        }
        // A retried item's record takes the item's new key before it is sent.
        let retried = attempts.contains_key(&r.id);
        match items.get(index as usize) {
            Some(it) if (retried || it.key == r.key) && it.digest == r.digest => {
                self.started[index as usize] =
                    !retried && !matches!(r.state, super::machine::State::Planned);
            }
            _ => self.changed.push(format!("{} (line {})", r.id, r.line)),
        }
    }
}

/// Takes the batch's lock, or says who holds it; tells the operator what taking it found (a
/// state folder made private, a stale lock taken over).
fn take_lock(batch: &str, state_dir: &Path) -> Result<super::lock::Lock, RunError> {
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let lock = super::lock::Lock::take(state_dir, batch, &started)?;
    if let Some(note) = lock.folder.notice(state_dir) {
        eprintln!("{note}");
    }
    if let Some(stale) = &lock.took_over {
        eprintln!("note: took over the stale {stale}");
    }
    Ok(lock)
}

/// Takes the batch's lock, then opens and reads its store. With the lock taken, no other
/// runner has the store: a process that has it open is a `status` or `report` reading it,
/// which lets go within moments, so the run waits for it rather than failing.
fn hold(batch: &str, state_dir: &Path) -> Result<Held, RunError> {
    let lock = take_lock(batch, state_dir)?;
    let store = Store::open_waiting(
        state_dir,
        batch,
        super::store::READERS_PATIENCE,
        || true,
        || waiting_for_reader(batch),
    )?;
    Ok(Held { _lock: lock, store })
}

#[allow(clippy::too_many_arguments)]
fn execute(
    flow: &Flow,
    shared: &Arc<Vec<PlannedItem>>,
    rows: &super::rows::FromRows,
    manifest: &Path,
    attempts: &HashMap<String, u32>,
    prior: Prior,
    o: &RunOptions,
    held: Option<Held>,
) -> u8 {
    let items: &[PlannedItem] = shared;
    let (sandbox, state_dir, time_scale) = (o.sandbox, o.state_dir, o.time_scale);
    let manifest_abs = std::fs::canonicalize(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    let held = match held {
        Some(h) => h,
        None => {
            // A new batch: its item set is fixed in the store's very first commit.
            let lock = match take_lock(&flow.manifest.batch, state_dir) {
                Ok(l) => l,
                Err(e) => return errors::report(&e, ""),
            };
            let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let flow_digest = super::fixed::flow_digest(&flow.manifest);
            let fixed = super::fixed::entries(items);
            let count = items.len().to_string();
            // Keyed keys: the batch's secret is durable before the store that says it is used.
            let keyed = flow.provider.keys == crate::schema::KeyFormat::Keyed;
            if keyed && let Err(e) = super::secret::for_new_batch(state_dir, &flow.manifest.batch) {
                return errors::report(&e.into(), "; nothing was sent");
            }
            let manifest_text = manifest_abs.to_string_lossy();
            let mut meta: Vec<(&str, &str)> = vec![
                ("manifest", &manifest_text),
                ("batch", &flow.manifest.batch),
                ("provider", &flow.provider.name),
                ("flow_digest", &flow_digest),
                ("items", &count),
                ("started", &started),
            ];
            if keyed {
                meta.push((super::secret::META, super::secret::KEYED_V1));
            }
            let store = match Store::create(state_dir, &flow.manifest.batch, &meta, &fixed) {
                Ok(s) => s,
                Err(e) => return errors::report(&e.into(), "; nothing was sent"),
            };
            Held { _lock: lock, store }
        }
    };
    let Held { _lock, mut store } = held;
    // The batch's secret, for keyed keys; a batch started before keys were keyed has none.
    let note_secret = match store.meta(super::secret::META) {
        Ok(Some(v)) if v == super::secret::KEYED_V1 => {
            match super::secret::read(state_dir, &flow.manifest.batch) {
                Ok(s) => Some(s),
                Err(e) => return errors::report(&e.into(), ""),
            }
        }
        Ok(Some(other)) => {
            let e = super::secret::SecretError::Unknown { keys: other };
            return errors::report(&e.into(), "");
        }
        Ok(None) => None,
        Err(e) => return errors::report(&e.into(), "; nothing was sent"),
    };
    // `--retry-failed`: each chosen item starts a new attempt with a new key; the old key and
    // how it ended are kept. Committed before anything is sent.
    let now = runner::now_ms();
    let mut retried = Vec::new();
    let mut no_longer_failed = None;
    let read = match attempts.is_empty() {
        true => Ok(()),
        false => store.each(|i, mut r| {
            if r.step.is_some() {
                return;
            }
            let (Some(&n), Some(it)) = (attempts.get(&r.id), items.get(i as usize)) else {
                return;
            };
            let super::machine::State::Failed { code, at, .. } = &r.state else {
                no_longer_failed.get_or_insert(r.id.clone());
                return;
            };
            r.earlier.push(super::store::Earlier {
                key: r.key.clone(),
                code: code.clone(),
                at: *at,
            });
            r.attempt = n;
            r.key = it.key.text();
            r.state = super::machine::State::Planned;
            r.first_sent = None;
            r.updated = now;
            retried.push((i, r));
        }),
    };
    if let Err(e) = read {
        return errors::report(&e.into(), "; nothing was sent");
    }
    if let Some(id) = no_longer_failed {
        eprintln!(
            "error[run.retry-failed]: item {id} is no longer failed (another run changed the batch); nothing was sent"
        );
        return exit::IO;
    }
    let refs: Vec<(u64, &super::store::Record)> = retried.iter().map(|(i, r)| (*i, r)).collect();
    if let Err(e) = store.commit(&refs) {
        return errors::report(&e.into(), "");
    }
    drop(retried);
    // An item whose content changed since it was started is never sent as it is now.
    let Prior { changed, started } = prior;
    if !changed.is_empty() {
        eprintln!(
            "error[run.changed-items]: {} item(s) changed since this batch started: {}",
            changed.len(),
            changed
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        eprintln!(
            "  hint: a started batch must not change; put corrections in a new batch with a new id"
        );
        return exit::INVALID;
    }
    if let Err(e) = store.set_meta(&[
        ("manifest", &manifest_abs.to_string_lossy()),
        ("batch", &flow.manifest.batch),
        ("provider", &flow.provider.name),
    ]) {
        return errors::report(&e.into(), "");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("payrun: cannot start the async runtime: {e}");
            return exit::IO;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    runtime.block_on(async {
        let mut sandbox_handle = None;
        let webhooks =
            flow.manifest.notifications.mode == crate::manifest::raw::NotificationMode::Webhook;
        let mut listen = None;
        // Where the provider reaches payrun's listener (each adapter adds its own paths).
        let mut callback = None;
        let Some(plugin) = crate::providers::plugin(&flow.provider.name) else {
            eprintln!("error[run.provider]: `payrun run` has no adapter for {}; nothing was sent", flow.provider.name);
            return 2;
        };
        let (base_url, credentials) = if sandbox {
            // The rehearsal's provider: the configuration given (balances, faults, seeds…), its
            // memory in the state folder, so that a resume meets the provider that saw the run.
            let mut cfg = match o.sandbox_config {
                Some(path) => match crate::sandbox::SandboxConfig::load(path) {
                    Ok(c) => c,
                    Err(d) => {
                        eprintln!("{}", d.render_with(None));
                        return exit::IO;
                    }
                },
                None => crate::sandbox::SandboxConfig::default(),
            };
            cfg.time_scale = time_scale.max(1.0);
            // In a rehearsal the sandbox calls payrun's listener on a free loopback port.
            if webhooks
                && let Ok(addr) =
                    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr())
            {
                callback = Some(format!("http://{addr}"));
                listen = Some(addr);
            }
            // Fitted to the batch by the provider's plugin (the payments it names, where
            // notifications go); its test credentials.
            let each_item = |f: &mut dyn FnMut(&str, Option<&str>)| {
                for it in items.iter() {
                    use super::graph::Render;
                    if let Ok(p) = rows.planned(it)
                        && let Some(first) = p.payload.first()
                    {
                        f(first.get(), it.money.first().map(|(_, c)| c));
                    }
                }
            };
            let rehearsal = crate::providers::Rehearsal {
                flow,
                items: &each_item,
                listener: callback.as_deref(),
            };
            let credentials = (plugin.rehearse)(&mut cfg, &rehearsal);
            let state_file = sandbox_state_file(state_dir, &flow.manifest.batch);
            let persist = (!o.sandbox_in_memory).then_some(state_file.as_path());
            match crate::sandbox::Sandbox::start_with_state(cfg, "127.0.0.1:0".parse().expect("loopback address"), persist).await {
                Ok(sb) => {
                    let base = sb.base_url(&flow.provider.name);
                    eprintln!("sandbox: {base}");
                    if let Some(r) = sb.restored.filter(|r| r.starts > 0) {
                        eprintln!(
                            "sandbox: continues {} ({} records from {} earlier run{})",
                            state_file.display(),
                            r.records,
                            r.starts,
                            if r.starts == 1 { "" } else { "s" }
                        );
                    }
                    sandbox_handle = Some(sb);
                    (base, credentials)
                }
                Err(e) => {
                    eprintln!("error[run.sandbox]: cannot start the sandbox: {e}");
                    return exit::IO;
                }
            }
        } else {
            // A provider with one host per operation (Payonic in production) needs no base URL.
            let per_operation = flow.provider.operations.values().all(|o| {
                o.request
                    .as_ref()
                    .is_some_and(|r| r.hosts.contains_key("production"))
            });
            let base_url = match flow.base_url.clone() {
                Some(u) => u,
                None if per_operation => String::new(),
                None => {
                    eprintln!("error[run.endpoint]: no base URL for environment {:?}", flow.manifest.environment);
                    return exit::IO;
                }
            };
            // Credentials come from the environment variables the manifest names, never from
            // the manifest itself.
            let mut credentials = crate::providers::Credentials::new();
            let mut missing = Vec::new();
            for (name, var) in &flow.manifest.credentials {
                match std::env::var(var) {
                    Ok(v) if !v.is_empty() => {
                        credentials.insert(name.clone(), v);
                    }
                    _ => missing.push(format!("${var} ({name})")),
                }
            }
            let optional = (plugin.optional_credentials)(webhooks);
            let needed = |name: &str| !optional.contains(&name);
            let missing: Vec<String> = missing
                .into_iter()
                .filter(|m| needed(m.rsplit_once('(').map_or("", |(_, n)| n.trim_end_matches(')'))))
                .collect();
            if !missing.is_empty() {
                eprintln!(
                    "error[run.credentials]: set the environment variables the manifest names: {}; nothing was sent",
                    missing.join(", ")
                );
                return exit::IO;
            }
            if webhooks {
                let n = &flow.manifest.notifications;
                let (Some(addr), Some(public)) = (n.listen.as_ref().and_then(|l| l.parse().ok()), n.public_url.as_ref()) else {
                    eprintln!("error[run.notifications]: webhook notifications need `listen` and `public_url`");
                    return exit::IO;
                };
                let public = public.trim_end_matches('/');
                let setup = crate::providers::Setup {
                    flow,
                    credentials: &credentials,
                    callback_url: None,
                    base_url: &base_url,
                    key_secret: None,
                };
                match (plugin.listening)(&setup, public) {
                    Ok(line) => eprintln!("notifications: {line}"),
                    Err(why) => {
                        eprintln!("error[run.credentials]: {why}");
                        return exit::IO;
                    }
                }
                callback = Some(public.to_string());
                listen = Some(addr);
            }
            (base_url, credentials)
        };
        let adapter = match crate::providers::adapter(&crate::providers::Setup {
            flow,
            credentials: &credentials,
            callback_url: callback,
            base_url: &base_url,
            key_secret: note_secret.as_deref(),
        }) {
            Ok(a) => a,
            Err(m) => {
                eprintln!("error[run.adapter]: {m}; nothing was sent");
                return exit::IO;
            }
        };
        let http = match super::http::client(&flow.manifest.tls, o.ca_file) {
            Ok(h) => h,
            Err(m) => {
                eprintln!("error[run.tls]: {m}; nothing was sent");
                return exit::IO;
            }
        };
        let endpoint = Endpoint { base_url, adapter, http };
        // Provider time runs faster only in a sandbox: a real provider's mandatory waits
        // (Paysend's 3 minutes before a lookup) are never shortened. Another machine is refused
        // before any traffic; a server on this one must say it is a sandbox (after the probe,
        // so a TLS problem is reported as what it is).
        let scaled = !sandbox && time_scale != 1.0;
        if scaled && let Err(why) = loopback_origin(&endpoint.base_url) {
            eprintln!("error[run.time-scale]: --time-scale is for the sandbox only, and {why}; nothing was sent");
            eprintln!("  hint: drop --time-scale, or rehearse with --sandbox or against `payrun sandbox`");
            return exit::IO;
        }
        if let Err(m) = super::http::probe(&endpoint.http, &endpoint.base_url).await {
            // What `http::describe` says carries its own hint (a certificate, a proxy…).
            let e = RunError::Transport(format!("{m}; nothing was sent"));
            eprintln!("error[{}]: {e}", e.name());
            return errors::exit_code(&e);
        }
        if scaled && let Err(why) = sandbox_at(&endpoint.http, &endpoint.base_url).await {
            eprintln!("error[run.time-scale]: --time-scale is for the sandbox only, and {why}; nothing was sent");
            eprintln!("  hint: drop --time-scale, or rehearse with --sandbox or against `payrun sandbox`");
            return exit::IO;
        }
        // The preflight (e.g. getBalance) is the first node the runner sends: a balance below
        // what this run still has to pay in a currency stops it with nothing sent.
        let owed = owed(items, &started);
        let flag = Arc::clone(&stop);
        tokio::spawn(async move {
            let term = async {
                #[cfg(unix)]
                if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    s.recv().await;
                    return;
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
                _ = term => {}
            }
            // The flag first: stopping must never depend on stderr being writable.
            flag.store(true, Ordering::Relaxed);
            eprintln!("\nstopping: no new requests; waiting for the ones in flight");
        });
        let started = std::time::Instant::now();
        let summary = match runner::run(flow, shared, rows, &mut store, &endpoint, &endpoint.adapter.timings(timings(time_scale)), Arc::clone(&stop), listen, owed).await {
            Ok(s) => s,
            Err(e) => return errors::report(&e, ""),
        };
        if let Some(sb) = sandbox_handle {
            sb.stop().await;
        }
        // The preflight failed: nothing was sent. No answer from the provider is a transport
        // problem (exit 2), a refusal the batch's (exit 1).
        if let Some((why, unreachable)) = &summary.preflight {
            let e = match unreachable {
                true => RunError::Transport(why.clone()),
                false => RunError::Refused(why.clone()),
            };
            return errors::report(&e, "");
        }
        sayln!(
            "{}: {} items: {} paid, {} failed, {} need review, {} unfinished; {} requests, {} commits ({:.2} per item), {:.1} s{}",
            flow.manifest.batch,
            summary.items,
            summary.succeeded,
            summary.failed,
            summary.needs_review,
            summary.unfinished,
            summary.requests,
            summary.commits,
            summary.commits as f64 / summary.items.max(1) as f64,
            started.elapsed().as_secs_f64(),
            runner::pushback_note(&summary)
        );
        if summary.reversed > 0 {
            sayln!(
                "reversed: {} item(s) paid, then reported failed or returned by the provider (money moved back); see `payrun status {}`",
                summary.reversed,
                flow.manifest.batch
            );
        }
        if let Some(why) = &summary.unreachable {
            let e = RunError::Transport(format!("{} could not be reached: {why}", flow.provider.title));
            eprintln!("error[{}]: {e}", e.name());
            eprintln!(
                "  no item was marked failed for it: unsent items stay unsent, items whose request may have arrived are looked up before anything is resent"
            );
            eprintln!(
                "  fix the connection or the base URL, then: payrun resume {}{} --state-dir {}",
                flow.manifest.batch,
                if sandbox { " --sandbox" } else { "" },
                state_dir.display()
            );
            return errors::exit_code(&e);
        }
        if stop.load(Ordering::Relaxed) {
            eprintln!(
                "stopped; continue with: payrun resume {}{} --state-dir {}",
                flow.manifest.batch,
                if sandbox { " --sandbox" } else { "" },
                state_dir.display()
            );
            return exit::STOPPED;
        }
        let n = summary.notices;
        if n.taken + n.duplicates + n.rejected + n.replayed > 0 {
            sayln!(
                "notifications: {} taken, {} duplicates, {} rejected{}",
                n.taken,
                n.duplicates,
                n.rejected,
                if n.replayed > 0 { format!(", {} journaled before the stop taken now", n.replayed) } else { String::new() }
            );
        }
        if summary.steps_done + summary.steps_failed + summary.steps_open > 0 {
            sayln!(
                "delayed steps: {} done or skipped, {} failed, {} unfinished",
                summary.steps_done, summary.steps_failed, summary.steps_open
            );
        }
        if summary.failed + summary.needs_review + summary.unfinished + summary.reversed + summary.steps_failed + summary.steps_open > 0 { exit::UNSETTLED } else { exit::OK }
    })
}

/// Reads a batch's status: from its store when no runner holds it; else from the runner itself
/// (its control socket), or failing that from the snapshot it keeps.
fn status_view(
    batch: &str,
    state_dir: &Path,
    records: bool,
) -> Result<(super::status::StatusView, Option<Vec<super::store::Record>>), StoreError> {
    match open_to_read(batch, state_dir) {
        Ok(store) => {
            let records: Vec<super::store::Record> =
                store.items()?.into_iter().map(|(_, r)| r).collect();
            let mut view = super::status::view(batch, &records, None);
            // Items never touched have no record; the batch's size was fixed when it started.
            if let Ok(Some(n)) = store.meta("items")
                && let Ok(n) = n.parse::<usize>()
                && n > view.items
            {
                *view.states.entry("planned".into()).or_default() += n - view.items;
                view.items = n;
            }
            Ok((view, Some(records)))
        }
        Err(e @ StoreError::Busy { .. }) => {
            let store_path = state_dir.join(format!("{batch}.redb"));
            // The runner answers the status from the counts it keeps; the records (for a
            // report) it streams from its store.
            if records {
                if let Some(records) = runner::records_from_runner(&store_path) {
                    let holder = super::lock::holder(state_dir, batch);
                    return Ok((super::status::view(batch, &records, holder), Some(records)));
                }
            } else if let Some(view) = runner::status_from_runner(&store_path) {
                return Ok((view, None));
            }
            let snap = state_dir.join(format!("{batch}.status.json"));
            let bytes = std::fs::read(&snap)
                .map_err(|_| StoreError::other(format!("{e}, and it has written no status yet")))?;
            let view = serde_json::from_slice(&bytes).map_err(|x| StoreError::Corrupt {
                path: snap.clone(),
                why: x.to_string(),
            })?;
            Ok((view, None))
        }
        Err(e) => Err(e),
    }
}

/// `payrun status <batch>`.
pub fn status(batch: &str, state_dir: &Path, json: bool) -> u8 {
    match status_view(batch, state_dir, false) {
        Ok((v, _)) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", super::status::render(&v));
            }
            exit::OK
        }
        Err(e) => errors::report_as("status", &e.into(), ""),
    }
}

/// `payrun report <batch> -o results.csv`: one row per item, spreadsheet-safe.
pub fn report(batch: &str, state_dir: &Path, output: Option<&Path>) -> u8 {
    let records = match status_view(batch, state_dir, true) {
        Ok((_, Some(r))) => r,
        Ok((v, None)) => {
            let who = v
                .running
                .map(|h| format!("pid {} on {}", h.pid, h.host))
                .unwrap_or_default();
            eprintln!(
                "error[report.running]: the batch is running ({who}) and did not answer for its records; `payrun status {batch}` shows its progress"
            );
            return exit::IO;
        }
        Err(e) => return errors::report_as("report", &e.into(), ""),
    };
    let csv = super::status::report_csv(&records);
    match output {
        // Private (0600) like the plan: it lists what each employee was paid.
        // A FIFO or device (`-o /dev/stdout`) is written to as it is; it cannot be replaced.
        Some(path) => match if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            std::fs::write(path, &csv)
        } else {
            crate::private::write_atomic(path, &csv, false)
        } {
            Ok(()) => {
                eprintln!(
                    "report of {} items written to {}",
                    records.len(),
                    path.display()
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("error[report.io]: cannot write {}: {e}", path.display());
                exit::IO
            }
        },
        None => {
            let _ = std::io::stdout().write_all(&csv);
            exit::OK
        }
    }
}

/// `payrun unlock <batch> [--force]`.
pub fn unlock(batch: &str, state_dir: &Path, force: bool) -> u8 {
    match super::lock::unlock(state_dir, batch, force) {
        Ok(m) => {
            eprintln!("{m}");
            exit::OK
        }
        Err(e) => errors::report_as("unlock", &e.into(), ""),
    }
}

/// What this run still has to pay, per currency: the items not started yet (a balance the
/// preflight reports must cover it).
fn owed(
    items: &[PlannedItem],
    started: &[bool],
) -> std::collections::BTreeMap<String, rust_decimal::Decimal> {
    use std::str::FromStr;
    let mut owed = std::collections::BTreeMap::new();
    for (it, _) in items.iter().zip(started).filter(|(_, s)| !**s) {
        for (a, c) in &it.money {
            *owed.entry(c.to_string()).or_default() +=
                rust_decimal::Decimal::from_str(a).unwrap_or_default();
        }
    }
    owed
}

/// Whether `base_url` is served by a payrun sandbox: a loopback host whose origin answers the
/// sandbox's own `GET /__sandbox/counters`. Err says why not.
async fn sandbox_at(http: &reqwest::Client, base_url: &str) -> Result<(), String> {
    let origin = loopback_origin(base_url)?;
    let answer = http
        .get(format!("{origin}/__sandbox/counters"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| {
            format!(
                "{origin} did not answer as a payrun sandbox ({})",
                super::http::describe(&e)
            )
        })?;
    let body: Option<serde_json::Value> = answer.json().await.ok();
    match body {
        Some(v) if v.get("requests").is_some() => Ok(()),
        _ => Err(format!("{origin} did not answer as a payrun sandbox")),
    }
}

/// The origin (`scheme://host:port`) of `base_url` when its host is this machine.
fn loopback_origin(base_url: &str) -> Result<&str, String> {
    let origin_end = base_url
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base_url[start..].find('/').map(|j| start + j))
        .unwrap_or(base_url.len());
    let origin = &base_url[..origin_end];
    let host = origin
        .split("://")
        .nth(1)
        .unwrap_or("")
        .rsplit_once(':')
        .map_or(origin.split("://").nth(1).unwrap_or(""), |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(format!("{origin} is not a sandbox on this machine"));
    }
    Ok(origin)
}

/// `payrun list`: the batches in `state_dir`, with their states.
pub fn list(state_dir: &Path, json: bool) -> u8 {
    let mut batches: Vec<String> = std::fs::read_dir(state_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".redb"))
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    batches.sort();
    let mut views = Vec::new();
    for b in &batches {
        match status_view(b, state_dir, false) {
            Ok((v, _)) => views.push(v),
            Err(e) => eprintln!("warning: {b}: {e}"),
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&views).unwrap_or_default()
        );
        return exit::OK;
    }
    if views.is_empty() {
        eprintln!("no batches in {}", state_dir.display());
        return exit::OK;
    }
    println!(
        "{:<32} {:>8} {:>8} {:>8} {:>8} {:>8}  RUNNER",
        "BATCH", "ITEMS", "DONE", "FAILED", "REVIEW", "OPEN"
    );
    for v in views {
        let n = |k: &str| v.states.get(k).copied().unwrap_or(0);
        let done = n("paid") + n("done");
        let open = v
            .items
            .saturating_sub(done + n("failed") + n("needs_review"));
        let runner = v
            .running
            .map(|h| format!("pid {} on {}", h.pid, h.host))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<32} {:>8} {:>8} {:>8} {:>8} {:>8}  {runner}",
            v.batch,
            v.items,
            done,
            n("failed"),
            n("needs_review"),
            open
        );
    }
    exit::OK
}

//! `payrun run` and `payrun resume`: the front end of execution — validate, check a saved plan,
//! confirm, open the batch's store (refusing items that changed since they were started), pick
//! the endpoint (the embedded sandbox or the manifest's environment with credentials from the
//! environment variables it names), run, and report. Returns the process exit code.

use super::machine::Timings;
use super::runner::{self, Endpoint, PlannedItem};
use super::store::Store;
use crate::compile::Flow;
use crate::pipeline;
use crate::schema::Registry;
use crate::validate::{ItemRow, Visitor};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

struct Collect<'f>(&'f Flow);

impl Visitor for Collect<'_> {
    type Chunk = Vec<PlannedItem>;
    fn item(&self, item: &ItemRow, chunk: &mut Vec<PlannedItem>) {
        if !item.valid {
            return;
        }
        let key = crate::keys::item_key(&self.0.manifest.batch, item.id);
        chunk.push(PlannedItem {
            id: item.id.to_string(),
            digest: crate::plan::content_digest(self.0, item.values),
            line: item.line,
            trees: crate::providers::paysend::item_tree(self.0, item, &key),
            money: crate::plan::item_money(self.0, item, &key),
            key,
        });
    }
}

/// Paysend's timings as its document gives them (L633, L659-667), and this runner's polling;
/// `scale` > 1 for a sandbox whose provider time runs that much faster.
fn timings(scale: f64) -> Timings {
    let s = |d: Duration| d.div_f64(scale.max(1.0)).max(Duration::from_millis(20));
    Timings {
        propagation: s(Duration::from_secs(180)),
        poll_every: s(Duration::from_secs(1)),
        review_every: s(Duration::from_secs(600)),
        max_lookups: 20,
    }
}

pub fn run(
    registry: &Registry,
    manifest: &Path,
    sandbox: bool,
    yes: bool,
    plan: Option<&Path>,
    state_dir: &Path,
    time_scale: f64,
) -> u8 {
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
    if flow.provider.name != "paysend" {
        eprintln!(
            "error[run.provider]: `payrun run` drives Paysend so far; {} comes with its adapter",
            flow.provider.name
        );
        return 2;
    }
    // Paysend runs a whole tree itself and has no delays; a delayed subtree would have to be
    // sent by payrun later, which this runner does not do yet. Refuse rather than run something
    // other than what `plan` shows.
    if let Some(t) = flow.all_tasks().into_iter().find(|t| t.delay.is_some()) {
        eprintln!(
            "error[run.delay]: task `{}` has a `delay`, which `payrun run` does not carry out yet; nothing was sent",
            t.id
        );
        eprintln!(
            "  hint: remove the delay to let Paysend run the subtree at once, or run that step as a separate batch later"
        );
        return 1;
    }
    let mut source = prepared.source;
    let mut items: Vec<PlannedItem> = Vec::new();
    let report = match crate::validate::validate(
        &flow,
        &mut source,
        20,
        &Collect(&flow),
        |c: Vec<PlannedItem>| items.extend(c),
    ) {
        Ok(r) => r,
        Err(d) => {
            eprintln!("{}", d.render());
            return 2;
        }
    };
    if !report.is_ok() {
        for d in &report.errors {
            eprintln!("{}\n", d.render());
        }
        eprintln!(
            "payrun: the batch is invalid ({} errors); nothing was sent",
            report.error_count
        );
        return 1;
    }
    if let Some(plan) = plan
        && let Some(code) = check_plan(&flow, plan)
    {
        return code;
    }
    let totals: Vec<String> = report
        .totals
        .iter()
        .map(|(c, (minor, n))| {
            format!(
                "{} {} ({n} payouts)",
                c.code(),
                crate::plan::amount_text(*c, *minor)
            )
        })
        .collect();
    eprintln!(
        "batch {}: {} items, {}",
        flow.manifest.batch,
        items.len(),
        totals.join(", ")
    );
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "error[run.confirm]: no terminal to confirm on; pass --yes to run without asking"
            );
            return 2;
        }
        eprint!(
            "pay these {} items{}? [y/N] ",
            items.len(),
            if sandbox { " in the sandbox" } else { "" }
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing was sent");
            return 0;
        }
    }
    execute(&flow, &items, sandbox, state_dir, manifest, time_scale)
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
        return Some(2);
    };
    let source_sha = match &flow.manifest.items {
        crate::manifest::Items::Csv(src) => std::fs::read(&src.path).ok().map(|b| {
            use sha2::{Digest, Sha256};
            crate::keys::hex_lower(&Sha256::digest(&b))
        }),
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
        return Some(1);
    }
    None
}

pub fn resume(
    registry: &Registry,
    batch: &str,
    sandbox: bool,
    state_dir: &Path,
    time_scale: f64,
) -> u8 {
    let manifest = {
        let store = match Store::open(state_dir, batch) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error[resume.store]: {e}");
                return 2;
            }
        };
        match store.meta("manifest") {
            Ok(Some(m)) => std::path::PathBuf::from(m),
            _ => {
                eprintln!(
                    "error[resume.unknown]: no batch `{batch}` in {}",
                    state_dir.display()
                );
                return 2;
            }
        }
    };
    run(
        registry, &manifest, sandbox, true, None, state_dir, time_scale,
    )
}

fn execute(
    flow: &Flow,
    items: &[PlannedItem],
    sandbox: bool,
    state_dir: &Path,
    manifest: &Path,
    time_scale: f64,
) -> u8 {
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let _lock = match super::lock::Lock::take(state_dir, &flow.manifest.batch, &started) {
        Ok(l) => l,
        Err(m) => {
            eprintln!("error[run.locked]: {m}");
            eprintln!(
                "  hint: one runner per batch; if that process is gone, `payrun unlock {} --force`",
                flow.manifest.batch
            );
            return 2;
        }
    };
    let mut store = match Store::open(state_dir, &flow.manifest.batch) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error[run.store]: {e}");
            return 2;
        }
    };
    // An item whose content changed since it was started is never sent as it is now.
    let stored = store.items().unwrap_or_default();
    let changed: Vec<String> = stored
        .iter()
        .filter(|(i, r)| {
            items
                .get(*i as usize)
                .is_none_or(|it| it.key != r.key || it.digest != r.digest)
        })
        .map(|(_, r)| format!("{} (line {})", r.id, r.line))
        .collect();
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
        return 1;
    }
    let manifest_abs = std::fs::canonicalize(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    if let Err(e) = store.set_meta(&[
        ("manifest", &manifest_abs.to_string_lossy()),
        ("batch", &flow.manifest.batch),
        ("provider", &flow.provider.name),
    ]) {
        eprintln!("error[run.store]: {e}");
        return 2;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("payrun: cannot start the async runtime: {e}");
            return 2;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    runtime.block_on(async {
        let mut sandbox_handle = None;
        let webhooks = flow.manifest.notifications.mode == crate::manifest::raw::NotificationMode::Webhook;
        // In a rehearsal the sandbox calls payrun's listener on a free loopback port.
        let local = if sandbox && webhooks { std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).ok() } else { None };
        let mut listener = None;
        let mut endpoint = if sandbox {
            let mut cfg = crate::sandbox::SandboxConfig { time_scale: time_scale.max(1.0), ..crate::sandbox::SandboxConfig::default() };
            if let Some(addr) = local {
                cfg.paysend.webhook_url = Some(format!("http://{addr}/paysend/webhook"));
                listener = Some(runner::Listener { listen: addr, callback_url: format!("http://{addr}/paysend/callback"), outbound_key: cfg.paysend.outbound_key.clone() });
            }
            let (partner_id, inbound_key) = (cfg.paysend.partner_id.clone(), cfg.paysend.inbound_key.clone());
            match crate::sandbox::Sandbox::start(cfg, "127.0.0.1:0".parse().expect("loopback address")).await {
                Ok(sb) => {
                    let e = Endpoint { base_url: sb.base_url("paysend"), partner_id, inbound_key, spent: 0 };
                    eprintln!("sandbox: {}", e.base_url);
                    sandbox_handle = Some(sb);
                    e
                }
                Err(e) => {
                    eprintln!("error[run.sandbox]: cannot start the sandbox: {e}");
                    return 2;
                }
            }
        } else {
            let Some(base_url) = flow.base_url.clone() else {
                eprintln!("error[run.endpoint]: no base URL for environment {:?}", flow.manifest.environment);
                return 2;
            };
            let var = |name: &str| flow.manifest.credentials.iter().find(|(n, _)| n == name).and_then(|(_, v)| std::env::var(v).ok().map(|x| (v.clone(), x)));
            let (Some((_, partner_id)), Some((_, inbound_key))) = (var("partner_id"), var("inbound_key")) else {
                let names: Vec<String> = flow.manifest.credentials.iter().map(|(_, v)| format!("${v}")).collect();
                eprintln!("error[run.credentials]: set the environment variables the manifest names: {}", names.join(", "));
                return 2;
            };
            if webhooks {
                let n = &flow.manifest.notifications;
                let (Some(listen), Some(public)) = (n.listen.as_ref().and_then(|l| l.parse().ok()), n.public_url.as_ref()) else {
                    eprintln!("error[run.notifications]: webhook notifications need `listen` and `public_url`");
                    return 2;
                };
                let Some((_, outbound_key)) = var("outbound_key") else {
                    eprintln!("error[run.credentials]: webhooks are verified with the outbound key: set the variable named by credentials.outbound_key");
                    return 2;
                };
                let public = public.trim_end_matches('/');
                eprintln!("notifications: callbacks to {public}/paysend/callback; set {public}/paysend/webhook as the expanded webhook URL with Paysend");
                listener = Some(runner::Listener { listen, callback_url: format!("{public}/paysend/callback"), outbound_key });
            }
            Endpoint { base_url, partner_id, inbound_key, spent: 0 }
        };
        // Preflight (e.g. getBalance): before any payout of this run; a balance below what is
        // still to be paid in a currency stops the run with nothing sent.
        match preflight(flow, &endpoint, &store, items).await {
            Ok(sent) => endpoint.spent = sent,
            Err(m) => {
                eprintln!("error[run.preflight]: {m}");
                return 1;
            }
        }
        let flag = Arc::clone(&stop);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nstopping: no new requests; waiting for the ones in flight");
                flag.store(true, Ordering::Relaxed);
            }
        });
        let started = std::time::Instant::now();
        let summary = match runner::run(flow, items, &mut store, &endpoint, &timings(time_scale), Arc::clone(&stop), listener).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error[run.store]: {e}");
                return 2;
            }
        };
        if let Some(sb) = sandbox_handle {
            sb.stop().await;
        }
        println!(
            "{}: {} items: {} paid, {} failed, {} need review, {} unfinished; {} requests, {} commits ({:.2} per item), {:.1} s",
            flow.manifest.batch,
            summary.items,
            summary.succeeded,
            summary.failed,
            summary.needs_review,
            summary.unfinished,
            summary.requests,
            summary.commits,
            summary.commits as f64 / summary.items.max(1) as f64,
            started.elapsed().as_secs_f64()
        );
        if stop.load(Ordering::Relaxed) {
            eprintln!("stopped; continue with: payrun resume {}{}", flow.manifest.batch, if sandbox { " --sandbox" } else { "" });
            return 130;
        }
        if summary.failed + summary.needs_review + summary.unfinished > 0 { 4 } else { 0 }
    })
}

/// Reads a batch's status: from its store when no runner holds it, else from the runner's
/// snapshot.
fn status_view(
    batch: &str,
    state_dir: &Path,
) -> Result<(super::status::StatusView, Option<Vec<super::store::Record>>), String> {
    match Store::open_existing(state_dir, batch) {
        Ok(store) => {
            let records: Vec<super::store::Record> = store
                .items()
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            Ok((super::status::view(batch, &records, None), Some(records)))
        }
        Err(e) if e.0.contains("another payrun process") => {
            let snap = state_dir.join(format!("{batch}.status.json"));
            let bytes = std::fs::read(&snap)
                .map_err(|_| format!("{e}, and it has written no status yet"))?;
            let view = serde_json::from_slice(&bytes)
                .map_err(|x| format!("cannot read {}: {x}", snap.display()))?;
            Ok((view, None))
        }
        Err(e) => Err(e.0),
    }
}

/// `payrun status <batch>`.
pub fn status(batch: &str, state_dir: &Path, json: bool) -> u8 {
    match status_view(batch, state_dir) {
        Ok((v, _)) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", super::status::render(&v));
            }
            0
        }
        Err(m) => {
            eprintln!("error[status]: {m}");
            2
        }
    }
}

/// `payrun report <batch> -o results.csv`: one row per item, spreadsheet-safe.
pub fn report(batch: &str, state_dir: &Path, output: Option<&Path>) -> u8 {
    let records = match status_view(batch, state_dir) {
        Ok((_, Some(r))) => r,
        Ok((v, None)) => {
            let who = v
                .running
                .map(|h| format!("pid {} on {}", h.pid, h.host))
                .unwrap_or_default();
            eprintln!(
                "error[report.running]: the batch is running ({who}); `payrun status {batch}` shows its progress, the per-item report is available once it stops"
            );
            return 2;
        }
        Err(m) => {
            eprintln!("error[report]: {m}");
            return 2;
        }
    };
    let csv = super::status::report_csv(&records);
    match output {
        Some(path) => match std::fs::write(path, &csv) {
            Ok(()) => {
                eprintln!(
                    "report of {} items written to {}",
                    records.len(),
                    path.display()
                );
                0
            }
            Err(e) => {
                eprintln!("error[report.io]: cannot write {}: {e}", path.display());
                2
            }
        },
        None => {
            let _ = std::io::stdout().write_all(&csv);
            0
        }
    }
}

/// `payrun unlock <batch> --force`.
pub fn unlock(batch: &str, state_dir: &Path, force: bool) -> u8 {
    match super::lock::unlock(state_dir, batch, force) {
        Ok(m) => {
            eprintln!("{m}");
            0
        }
        Err(m) => {
            eprintln!("error[unlock]: {m}");
            2
        }
    }
}

/// Runs the manifest's preflight tasks once and checks balances against what is still to pay;
/// returns how many requests it sent.
async fn preflight(
    flow: &Flow,
    endpoint: &Endpoint,
    store: &Store,
    items: &[PlannedItem],
) -> Result<u32, String> {
    use rust_decimal::Decimal;
    use std::str::FromStr;
    let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
    let Some(sub) = crate::providers::paysend::preflight(
        flow,
        &endpoint.partner_id,
        &endpoint.inbound_key,
        &date,
    ) else {
        return Ok(0);
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    // Preflight tasks only read (balances, rates): a lost or refused answer is simply asked again,
    // with the same request id, following the manifest's backoff.
    let policy = &flow.manifest.retry.default;
    let mut attempt = 1;
    let mut requests = 0u32;
    let (status, mut v) = loop {
        requests += 1;
        let sent = http
            .post(format!("{}/processing", endpoint.base_url))
            .header("content-type", "application/json")
            .header("X-OPP-Signature", &sub.signature)
            .body(sub.body.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(a)
                if a.status().is_success()
                    || a.status().as_u16() == 400
                    || a.status().as_u16() == 401 =>
            {
                let status = a.status().as_u16();
                match a.json::<serde_json::Value>().await {
                    Ok(v) => break (status, v),
                    Err(e) => format!("the preflight answer is not JSON ({status}): {e}"),
                }
            }
            Ok(a) => format!("the preflight request was answered {}", a.status()),
            Err(e) => format!("the preflight request failed: {e}"),
        };
        match super::backoff::delay(policy, attempt, None) {
            Some(d) => tokio::time::sleep(d).await,
            None => return Err(failure),
        }
        attempt += 1;
    };
    // Not finished within the sync wait: ask again by globalId (bounded).
    for _ in 0..30 {
        if v.pointer("/result/status")
            .and_then(serde_json::Value::as_str)
            == Some("Finished")
        {
            break;
        }
        let Some(global) = v
            .pointer("/header/response/globalId")
            .and_then(serde_json::Value::as_str)
            .map(String::from)
        else {
            return Err(format!("the preflight request was refused ({status}): {v}"));
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        requests += 1;
        v = http
            .get(format!("{}/processing/status/{global}", endpoint.base_url))
            .header(
                "X-OPP-Signature",
                crate::providers::paysend::sign(global.as_bytes(), &endpoint.inbound_key),
            )
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
    }
    // What is still to pay, per currency: items not started yet.
    let mut owed: std::collections::BTreeMap<String, Decimal> = std::collections::BTreeMap::new();
    let started: std::collections::HashSet<String> = store
        .items()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(_, r)| !matches!(r.state, super::machine::State::Planned))
        .map(|(_, r)| r.key)
        .collect();
    for it in items.iter().filter(|it| !started.contains(&it.key)) {
        for (a, c) in &it.money {
            *owed.entry(c.clone()).or_default() += Decimal::from_str(a).unwrap_or_default();
        }
    }
    for (ty, result) in crate::providers::paysend::preflight_results(&v) {
        if result.get("status").and_then(serde_json::Value::as_str) != Some("Success") {
            return Err(format!(
                "preflight {ty} failed: {} {}",
                result.get("code").unwrap_or(&serde_json::Value::Null),
                result
                    .get("comment")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("")
            ));
        }
        if ty == "getBalance"
            && let Some(balances) = result
                .pointer("/data/balances")
                .and_then(serde_json::Value::as_object)
        {
            for (currency, need) in &owed {
                let have = balances
                    .get(currency)
                    .map(|b| Decimal::from_str(&b.to_string()).unwrap_or_default());
                if let Some(have) = have
                    && have < *need
                {
                    return Err(format!(
                        "the {currency} balance is {have}, below the {need} this batch still has to pay; nothing was sent (hint: top up, or split the batch)"
                    ));
                }
            }
        }
    }
    Ok(requests)
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
        match status_view(b, state_dir) {
            Ok((v, _)) => views.push(v),
            Err(m) => eprintln!("warning: {b}: {m}"),
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&views).unwrap_or_default()
        );
        return 0;
    }
    if views.is_empty() {
        eprintln!("no batches in {}", state_dir.display());
        return 0;
    }
    println!(
        "{:<32} {:>8} {:>8} {:>8} {:>8} {:>8}  RUNNER",
        "BATCH", "ITEMS", "PAID", "FAILED", "REVIEW", "OPEN"
    );
    for v in views {
        let n = |k: &str| v.states.get(k).copied().unwrap_or(0);
        let open = v.items - n("paid") - n("failed") - n("needs_review");
        let runner = v
            .running
            .map(|h| format!("pid {} on {}", h.pid, h.host))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<32} {:>8} {:>8} {:>8} {:>8} {:>8}  {runner}",
            v.batch,
            v.items,
            n("paid"),
            n("failed"),
            n("needs_review"),
            open
        );
    }
    0
}

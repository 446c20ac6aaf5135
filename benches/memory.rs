//! Where `payrun run`'s memory goes, for the issue-13 target: a 1,000,000-item Paysend batch
//! against the in-process sandbox with peak RSS ≤ 300 MB. Run with
//! `cargo bench --bench memory -- [--items 100000] [--time-scale 1000] [--sandbox-only | --runs-only]`
//! (`--sandbox-only`: only the embedded sandbox's part, 2's last step; `--runs-only`: only the
//! runs of the binary, 1 and 1b, as at 1,000,000 items).
//! Prints figures; asserts only correctness (every item paid, in every run).
//!
//! Method:
//!
//! 1. The real binary. One generated batch (`common::write_batch`: the format of
//!    batches/payroll-paysend, every item its own IBAN, packs of 20, 16 in flight, rate limit
//!    off; `common::write_sandbox_config` for the balance and status window a big batch needs)
//!    is run by `payrun run --sandbox --sandbox-in-memory --sandbox-config … --yes` as
//!    `benches/throughput.rs` runs it, and /proc/<pid>/status is sampled every 5 ms (VmRSS, and
//!    VmHWM for the peak; not wait4's ru_maxrss, see `common::ProcSampler`). RSS is printed at
//!    the instants the store's own timestamps mark: the first item sent (validation done, every
//!    item rendered, the store created), 25/50/75% of the sending window, the last item paid.
//!    A 100-item run gives the fixed cost (binary, runtime, TLS roots).
//!    1b. The same batch again, `payrun run` against a sandbox served by this bench process
//!    (same configuration, `environment:` its URL): payrun's own memory, without the sandbox.
//! 2. The parts, measured in this process with a counting global allocator (live bytes as
//!    asked of the allocator; glibc adds ~16 bytes per block and keeps freed memory, so RSS is
//!    higher), each built the way `payrun run` builds it:
//!    - the validator alone (`validate::NoVisitor`), then the planned items
//!      (`runner::PlannedItem`, as `execute::command`'s `Collect` visitor makes them);
//!    - the records (`store::Record`) in their final state, loaded from the store the real run
//!      left (what the runner's `Book::recs` holds at the end), and redb's read cache;
//!    - the store's write path: a fresh store created with the fixed item set and written as the
//!      runner writes it (`Sending` in groups of 640, final states in packs of 20);
//!    - the runner's other per-item books (`Progress::reported`, `Book::groups`, never pruned);
//!    - the sandbox: the same items sent to an in-process `Sandbox` by a small client loop;
//!      what it retains is taken apart by clearing its ledger and maps one at a time.
//!
//! Measured (2 shared cores, load average 1–5; 100,000 items: `-- --items 100000`, and 500,000
//! items, which gave the same bytes per item within 1–4%; 1,000,000 items were not run: payrun
//! would need about 14.5 GB and the bare loop of `throughput` 19 GB on this shared 24 GB
//! machine, so they are extrapolated linearly, which the 100k/200k/500k runs support):
//!
//! | payrun run, peak RSS                 | 100,000   | 500,000   | per item | 1,000,000 (extrap.) |
//! |--------------------------------------|-----------|-----------|----------|---------------------|
//! | with the embedded sandbox (the target's setting) | 1,445 MB | 7,246 MB | 15.2 KB | ≈ 14.5 GB |
//! | payrun alone (sandbox in another process) | 358 MB | 1,729 MB | 3.6–3.8 KB | ≈ 3.6 GB |
//! | fixed cost (a 100-item run)          | 17.5 MB   |           |          |                     |
//!
//! RSS when the first item was sent: 216 MB at 100k (2.09 KB/item above the fixed cost:
//! planned items and planned records); it then grows steadily through the sending window
//! (12.9 KB/item with the embedded sandbox, 1.5 KB/item without) and peaks at the end.
//!
//! Heap by part, bytes per item (100k and 500k agree):
//!
//! - payrun, held from validation to the end (`std::mem::forget(items)`):
//!   planned items 1,367 (rendered JSON 875 — `payload` as `Box<RawValue>`; money 200; the
//!   `Vec<PlannedItem>` array 152 B × capacity, up to 2× the items: 159–199; id/key/digest 76).
//! - payrun, growing in the window: records 1,284 (`State::Succeeded`'s `BTreeMap` of 3 provider
//!   ids 672 — one B-tree leaf of 11 slots for 3 strings; `(u64, Record)` array 336; id, key,
//!   digest, money 276); redb's cache 666 (the store file is 650 B/item and redb caches all of it
//!   up to its default `cache_size` of 1 GiB); `Progress::reported` 12–19; `Book::groups` 18.
//! - transient: the validator alone peaks 11.7 MB at 100k, 30 MB at 500k (≈ 7 MB + 46 B/item:
//!   the row hashes of the repeated-id and repeated-payment checks); the fixed item set 32.
//! - the embedded sandbox, 9,100–9,200 in ~120 allocations per item: its `requests`
//!   (`paysend::Stored`: each request kept as a `serde_json::Value` to echo it, with the executed
//!   tree) 7,608; `invoices` (`Payment` with its task data as a `Value`) 556; the ledger's
//!   entries (9 `String`s each) 209; `payments` 72; `by_global` 5; the maps' and the ledger
//!   `Vec`'s own tables 633–769. (2,612 once requests and results were compact JSON text; since
//!   issue 13 see "The sandbox since issue 13" below.)
//! - glibc's ~16 B per block: ~22 blocks per item on payrun's side (≈ 340 B), ~120 on the
//!   sandbox's (≈ 1.9 KB; since issue 13 ~0.4 blocks per item, ≈ 6 B).
//!
//! Sum for payrun alone: 1,367 + 1,284 + 666 + 31 + ~340 ≈ 3.7 KB/item, against 3.58 KB/item
//! measured (3,757 less the fixed cost); with the sandbox, + 9.1 KB + ~1.9 KB ≈ 14.7 KB/item
//! against 15.0 KB/item measured.
//!
//! After requests are rendered when they are sent (2026-12-02, 100,000 items, load average 6):
//! 525 MB peak with the embedded sandbox, 263 MB for payrun alone (130 MB when the first item
//! is sent); planned items 434 B/item (id + key + digest 76, money 200, the array 157); records
//! 1,356; redb's cache 344 (capped at 32 MiB); the sandbox 2,612. Then with provider ids and
//! amounts packed (`wire::Ids`, `wire::Amounts`; load average 4): 433 MB, payrun alone 159 MB
//! (97 MB at the first send); planned items 234 B/item (money 10), records 620 (ids 134, the
//! `Record` array 400). With the sandbox's compaction as well (its section below): the whole
//! run with the embedded sandbox peaks at 185 MB (load average 4.7).
//!
//! What the 300 MB target needs: 300 MB for 1,000,000 items is 18 MB fixed plus 282 bytes
//! per item for everything — payrun, the embedded sandbox, redb's cache and glibc's overhead.
//! - The sandbox alone was 9.1 KB/item (≈ 11 KB in RSS): even a payrun that held nothing
//!   would have peaked near 11 GB. Done in issue 13 (below): ~250–270 B/item, ≈ 250 MB at 1M —
//!   which leaves payrun ~30 B/item; the bench should therefore also judge payrun's share (1b)
//!   against the target, and the sandbox apart.
//! - payrun: no rendered payloads held (render when sent: 640 in flight ≈ 0.9 MB), no
//!   `Record` per item in memory (the store has them): per open node a compact state (tag,
//!   attempt, due time, item index: ≤ 40 B, so ≤ 40 MB at 1M, less if ended nodes leave
//!   memory); provider ids and keys only in the store; `Progress::reported` a counter or a
//!   bit set; `Book::groups` pruned as requests settle; redb's cache capped
//!   (`redb::Builder::set_cache_size`, e.g. 16–32 MB, instead of 1 GiB); the validator's
//!   ~46 B/item of row hashes is transient (done before sending) but still ~55 MB at 1M.
//!
//! The sandbox since issue 13 (2 shared cores, load average 2–6). Every answer is the same
//! (tests/sandbox_paysend.rs's echo test passes before and after); what changed is what is
//! held: each accepted Paysend request's body — echoed whole by every status answer and replay,
//! ~900 B/item as compact JSON — is sealed (AES-256-GCM, key in memory only) in a nameless
//! temporary file (`paysend/bodies.rs`: 12 bytes of memory a request); task results, payments
//! by invoiceId and ledger rows are fixed-size fields (`compact.rs`, `paysend/kept.rs`),
//! rendered back to the same JSON; maps of UUID keys are sorted arrays plus a small recent
//! map (`sharded::IdMap`), not hash tables up to 2.3× their entries. Heap, bytes per item:
//!
//! | part                                   | before | 100,000 | 1,000,000 (`--sandbox-only`) |
//! |----------------------------------------|--------|---------|------------------------------|
//! | ledger (`(u64, Fixed)`: 96 B a row, in chunks of 4,096) | 209 | 102 | 96          |
//! | requests (ids, task results: a request of account payouts keeps 16 B a task) | 1,137 | 30 | 30 |
//! | invoices (a completed payout by invoiceId: 16 + 40 B) | 556 | 64 | 58             |
//! | payments (paymentId → invoiceId: 16 + 16 B) | 72 | 37  | 33                           |
//! | by_global, the maps' tables, the rest  | 638    | 17      | 14                           |
//! | **everything it retains**              | **2,612** | **251** | **232  **                 |
//!
//! ("before": compact JSON text, this bench at 100,000 items before these changes.) At 100k the
//! ledger's partly filled last chunks (one per shard) weigh more; from 1M on it is flat: ≈ 232 MB
//! for the sandbox at 1,000,000 items. Sealed bodies on disk: 887 B/item (85 MB at 100k, 846 MB
//! at 1M), gone when the process ends. `payrun run --sandbox --sandbox-in-memory` at 100,000
//! items peaks at 612.8 MB before and 383.6 MB after (measured one change earlier, with the
//! sandbox at 268 B/item), of which payrun alone 355.5 MB (1b): the sandbox's share of RSS is
//! 28 MB, ≈ 295 B/item.
//!
//! Records out of memory (2026-12-02, load average under 1): a run holds the records of the
//! nodes not ended only (`graph::Book::live`; ended ones are read back from the store when
//! asked about), status, progress and summary read counts kept as states change, and planned
//! items keep their key and digest as 16 bytes (`wire::Id128`). At 100,000 items: 113.9 MB
//! with the embedded sandbox, 84.9 MB payrun alone (45.6 MB at the first send, then 411
//! B/item over the window, which is redb's cache filling up to its 32 MiB). At 1,000,000 items
//! (`-- --items 1000000 --runs-only`): **payrun alone 246.7 MB peak** (186.2 MB at the first
//! send: planned items and the validator's transient; +44 B/item over the window), with the
//! embedded sandbox 511.5 MB (189.6 MB at the first send, +338 B/item over the window: the
//! sandbox's ledger, payments and invoices, ≈ 290 B/item of RSS).

mod common;

use common::{
    Limits, ProcSampler, Sampled, arg, mb, paid_everything, payrun_rehearsal, payrun_run, prepared,
    sending_window, summary_numbers, validated, wait_rss, write_batch, write_sandbox_config,
};
use payrun::compile::Flow;
use payrun::execute::runner::PlannedItem;
use payrun::execute::store::{Record, Store};
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const BATCH: &str = "bench-memory";
const PACK: usize = 20;
const CONCURRENCY: usize = 16;

/// Counts the bytes asked of the allocator that are live, and their highest point.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; only counters are kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
            BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
            BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                grew(new - l.size());
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Live heap bytes and blocks now; the peak is reset to now.
fn mark() -> (usize, usize) {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    (live, BLOCKS.load(Ordering::Relaxed))
}

/// Bytes and blocks live since `m`, and the highest point above `m` since then.
fn since(m: (usize, usize)) -> (isize, isize, usize) {
    let live = LIVE.load(Ordering::Relaxed);
    (
        live as isize - m.0 as isize,
        BLOCKS.load(Ordering::Relaxed) as isize - m.1 as isize,
        PEAK.load(Ordering::Relaxed).saturating_sub(m.0),
    )
}

/// "123.4 MB (1234 B/item)".
fn part(bytes: isize, items: usize) -> String {
    format!(
        "{:>7.1} MB {:>6.0} B/item",
        bytes as f64 / 1048576.0,
        bytes as f64 / items as f64
    )
}

fn main() {
    let items: usize = arg("--items", 100_000);
    let time_scale: f64 = arg("--time-scale", 1000.0);
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        requests_per_second: 10_000,
        burst: 10_000,
        concurrency: CONCURRENCY as u32,
        tasks_per_request: PACK as u32,
    };
    let t = std::time::Instant::now();
    let manifest = write_batch(dir.path(), BATCH, items, "sandbox", &limits);
    let config = write_sandbox_config(dir.path());
    println!(
        "memory: {items} items (CSV of {:.1} MB written in {:.1} s), packs of {PACK}, concurrency {CONCURRENCY}, time scale {time_scale}; load average {}",
        std::fs::metadata(dir.path().join("employees.csv"))
            .map(|m| m.len())
            .unwrap_or(0) as f64
            / 1048576.0,
        t.elapsed().as_secs_f64(),
        common::load_average()
    );

    // `--sandbox-only`: the sandbox's part alone (2, last step), e.g. at 1,000,000 items, which
    // the runs of the binary could not afford on a shared machine.
    if std::env::args().any(|a| a == "--sandbox-only") {
        println!("parts, live heap as asked of the allocator (this process, counting allocator):");
        sandbox(Arc::new(sent_items(&manifest)), &config, time_scale, items);
        return;
    }

    // 1. The real binary, and its fixed cost.
    let small = tempfile::tempdir().unwrap();
    let small_manifest = write_batch(small.path(), BATCH, 100, "sandbox", &limits);
    write_sandbox_config(small.path());
    let (base, _) = payrun(small.path(), &small_manifest, 100, time_scale);
    let state = dir.path().join("state");
    let (run, window) = payrun(dir.path(), &manifest, items, time_scale);
    let (first, last) = window;
    let per = |kib: u64| kib as f64 * 1024.0 / items as f64;
    println!("payrun run (the binary, RSS sampled every 5 ms):");
    println!(
        "  peak RSS (VmHWM) {} = {:.0} B/item; a 100-item run of the same batch peaks at {} (fixed cost)",
        mb(run.peak_kib),
        per(run.peak_kib),
        mb(base.peak_kib)
    );
    let at = |ms: u64| mb(run.rss_at(ms));
    let span = last.saturating_sub(first);
    println!(
        "  RSS when the first item was sent (validated, rendered, store created) {}; sending window {:.1} s: at 25% {}, 50% {}, 75% {}; when the last item was paid {}; highest in the window {}",
        at(first),
        span as f64 / 1000.0,
        at(first + span / 4),
        at(first + span / 2),
        at(first + span * 3 / 4),
        at(last),
        mb(run.rss_max(first, last)),
    );
    println!(
        "  growth in the window {:.0} B/item; before it, above the fixed cost, {:.0} B/item",
        per(run.rss_max(first, last).saturating_sub(run.rss_at(first))),
        per(run.rss_at(first).saturating_sub(base.peak_kib))
    );

    // 1b. The same batch with the sandbox in this process instead: payrun's own memory.
    let apart = tempfile::tempdir().unwrap();
    let (own, (first, last)) = payrun_apart(apart.path(), &config, items, time_scale, &limits);
    println!("payrun run against the sandbox in another process (this bench): payrun's own memory",);
    println!(
        "  peak RSS (VmHWM) {} = {:.0} B/item; RSS when the first item was sent {}, when the last was paid {}; growth in the window {:.0} B/item",
        mb(own.peak_kib),
        per(own.peak_kib),
        mb(own.rss_at(first)),
        mb(own.rss_at(last)),
        per(own.rss_max(first, last).saturating_sub(own.rss_at(first)))
    );
    drop(apart);

    // `--runs-only`: the two runs of the binary, without taking the parts apart (which holds
    // every record in this process at once).
    if std::env::args().any(|a| a == "--runs-only") {
        return;
    }

    // 2. The parts, in this process.
    println!("parts, live heap as asked of the allocator (this process, counting allocator):");
    let m = mark();
    validate_only(&manifest);
    println!(
        "  validation alone (a visitor keeping nothing): peak {:.1} MB = {:.0} B/item above its start",
        since(m).2 as f64 / 1048576.0,
        since(m).2 as f64 / items as f64
    );
    let m = mark();
    let (flow, planned) = planned_items(&manifest);
    let (planned_bytes, planned_blocks, validate_peak) = since(m);
    assert_eq!(planned.len(), items);
    println!(
        "  planned items (Vec<PlannedItem>)        {} in {} blocks; validation peaked {:.1} MB above its start",
        part(planned_bytes, items),
        planned_blocks,
        validate_peak as f64 / 1048576.0
    );
    planned_breakdown(&planned);
    let m = mark();
    let fixed = payrun::execute::fixed::entries(&planned);
    println!(
        "  fixed item set (store creation, transient) {}",
        part(since(m).0, items)
    );

    // Reading the records fills redb's read cache: measured apart, when the store closes.
    let m = mark();
    let store = Store::open(&state, BATCH).unwrap();
    let mut recs = store.items().unwrap();
    recs.shrink_to_fit();
    let (with_cache, _, load_peak) = since(m);
    drop(store);
    let (loaded, loaded_blocks, _) = since(m);
    assert_eq!(recs.len(), items);
    println!(
        "  records, final (Vec<(u64, Record)>)     {} in {} blocks (loading peaked {:.1} MB)",
        part(loaded, items),
        loaded_blocks,
        load_peak as f64 / 1048576.0
    );
    records_breakdown(&recs);
    let records: Vec<Record> = recs.into_iter().map(|(_, r)| r).collect();
    println!(
        "  redb read cache after reading them all  {} (store file {:.1} MB)",
        part(with_cache - loaded, items),
        std::fs::metadata(state.join(format!("{BATCH}.redb")))
            .map(|m| m.len())
            .unwrap_or(0) as f64
            / 1048576.0,
    );
    store_writes(&records, &fixed, items);
    drop(fixed);
    runner_books(&records, items);
    drop(records);

    drop((flow, planned));
    sandbox(Arc::new(sent_items(&manifest)), &config, time_scale, items);
}

/// Runs `payrun run` on a batch of `items` in `dir` against a sandbox this process serves (same
/// configuration): what was sampled of the child, and its sending window.
fn payrun_apart(
    dir: &Path,
    config: &Path,
    items: usize,
    time_scale: f64,
    limits: &Limits,
) -> (Sampled, (u64, u64)) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = payrun::sandbox::SandboxConfig {
        time_scale,
        ..payrun::sandbox::SandboxConfig::load(config).expect("the sandbox configuration")
    };
    let env = [
        ("PAYSEND_PARTNER_ID", cfg.paysend.partner_id.clone()),
        ("PAYSEND_INBOUND_KEY", cfg.paysend.inbound_key.clone()),
        ("PAYSEND_OUTBOUND_KEY", cfg.paysend.outbound_key.clone()),
    ];
    let sb = runtime
        .block_on(payrun::sandbox::Sandbox::start(
            cfg,
            "127.0.0.1:0".parse().unwrap(),
        ))
        .expect("the sandbox starts");
    let manifest = write_batch(dir, BATCH, items, &sb.base_url("paysend"), limits);
    let out = dir.join("payrun.out");
    let err = dir.join("payrun.err");
    let state = dir.join("state");
    let mut child = payrun_run(&manifest, &state, &out, &err)
        .args(["--time-scale", &time_scale.to_string()])
        .envs(env)
        .spawn()
        .unwrap();
    let sampler = ProcSampler::start(child.id());
    let ended = wait_rss(&mut child);
    let sampled = sampler.finish_all();
    runtime.block_on(sb.stop());
    drop(runtime);
    paid_everything(&ended, &out, &err, items);
    (sampled, window(&state))
}

/// The sending window of the batch in `state` (see `common::sending_window`).
fn window(state: &Path) -> (u64, u64) {
    let (first, last, _) = sending_window(state, BATCH);
    (first, last)
}

/// Runs `payrun run` on `manifest`; returns what was sampled and the sending window (the
/// earliest `first_sent` and the latest `Succeeded.at` in its store, ms since the epoch).
fn payrun(dir: &Path, manifest: &Path, items: usize, time_scale: f64) -> (Sampled, (u64, u64)) {
    let state: PathBuf = dir.join("state");
    let out = dir.join("payrun.out");
    let err = dir.join("payrun.err");
    let mut child = payrun_rehearsal(manifest, &state, &out, &err, time_scale)
        .spawn()
        .unwrap();
    let sampler = ProcSampler::start(child.id());
    let ended = wait_rss(&mut child);
    let sampled = sampler.finish_all();
    let stdout = paid_everything(&ended, &out, &err, items);
    assert!(summary_numbers(&stdout).is_some(), "{stdout}");
    (sampled, window(&state))
}

/// Every item as `payrun run` plans it (`execute::command`'s `Collect`: a first run, no
/// `--retry-failed`, nothing settled before).
fn planned_items(manifest: &Path) -> (Flow, Vec<PlannedItem>) {
    validated(manifest, 20, |flow, item| {
        let key = payrun::keys::item_key(&flow.manifest.batch, item.id);
        PlannedItem {
            id: item.id.to_string(),
            digest: payrun::plan::content_digest(flow, item.values).into(),
            line: item.line,
            index: item.index,
            offset: item.offset,
            money: payrun::plan::item_money(flow, item, &key).into(),
            key: key.into(),
        }
    })
}

/// What the sandbox part sends: each item's key and request, rendered as `payrun run`
/// renders it when it sends it.
struct Sent {
    key: String,
    payload: Vec<payrun::providers::Rendered>,
}

fn sent_items(manifest: &Path) -> Vec<Sent> {
    validated(manifest, 20, |flow, item| {
        let key = payrun::keys::item_key(&flow.manifest.batch, item.id);
        Sent {
            payload: payrun::providers::render(flow, item, &key),
            key,
        }
    })
    .1
}

/// Validates the batch with a visitor that keeps nothing: the validator's own memory (its
/// chunks in flight, the hashes of every row for the repeated-id and repeated-payment checks).
fn validate_only(manifest: &Path) {
    let prepared = prepared(manifest);
    let mut source = prepared.source;
    let report = payrun::validate::validate(
        &prepared.flow,
        &mut source,
        20,
        &payrun::validate::NoVisitor,
        |_| {},
    )
    .expect("the generated CSV reads");
    assert!(report.is_ok(), "the generated batch is invalid");
}

/// What a planned item's bytes are (heap, as sized by their capacities).
#[allow(clippy::ptr_arg)] // the Vec's capacity is part of the cost
fn planned_breakdown(items: &Vec<PlannedItem>) {
    let n = items.len();
    let (mut strings, mut money) = (0usize, 0usize);
    for it in items {
        // Keys and digests are 16 bytes inside the item (`wire::Id128`): no heap of their own.
        let text = |t: &payrun::wire::Id128| match t {
            payrun::wire::Id128::Text(t) => t.len(),
            _ => 0,
        };
        strings += it.id.capacity() + text(&it.key) + text(&it.digest);
        money += it.money.heap_bytes();
    }
    let array = items.capacity() * std::mem::size_of::<PlannedItem>();
    let b = |x: usize| x as f64 / n as f64;
    println!(
        "    of which: id + key + digest {:.0} B/item; money {:.0}; the array itself {:.0} ({} × {} B, capacity {}); requests are rendered when sent",
        b(strings),
        b(money),
        b(array),
        items.capacity(),
        std::mem::size_of::<PlannedItem>(),
        items.capacity()
    );
}

#[allow(clippy::ptr_arg)] // the Vec's capacity is part of the cost
fn records_breakdown(recs: &Vec<(u64, Record)>) {
    let n = recs.len();
    let m = mark();
    let states: Vec<payrun::execute::machine::State> =
        recs.iter().map(|(_, r)| r.state.clone()).collect();
    let state_heap = since(m).0 as usize - states.capacity() * std::mem::size_of_val(&states[0]);
    drop(states);
    let mut strings = 0usize;
    for (_, r) in recs {
        strings += r.id.capacity() + r.key.capacity() + r.digest.capacity() + r.money.heap_bytes();
    }
    let ids = recs
        .iter()
        .map(|(_, r)| match &r.state {
            payrun::execute::machine::State::Succeeded { ids, .. } => ids.len(),
            _ => 0,
        })
        .sum::<usize>() as f64
        / n as f64;
    println!(
        "    of which: the state's heap (Succeeded: {ids:.1} provider ids in one allocation) {:.0} B/item; id + key + digest + money {:.0}; the array {:.0} ({} B per (u64, Record))",
        state_heap as f64 / n as f64,
        strings as f64 / n as f64,
        (recs.capacity() * std::mem::size_of::<(u64, Record)>()) as f64 / n as f64,
        std::mem::size_of::<(u64, Record)>()
    );
}

/// A fresh store written the way the runner writes one: its peak and what it holds while open.
fn store_writes(records: &[Record], fixed: &[u8], items: usize) {
    let dir = tempfile::tempdir().unwrap();
    let m = mark();
    let mut store = Store::create(
        dir.path(),
        BATCH,
        &[("batch", BATCH), ("items", &items.to_string())],
        fixed,
    )
    .unwrap();
    let created = since(m).0;
    let window = PACK * CONCURRENCY * 2;
    let mut sending: Vec<Record> = Vec::with_capacity(window);
    for (c, chunk) in records.chunks(window).enumerate() {
        sending.clear();
        sending.extend(chunk.iter().map(|r| {
            let mut s = r.clone();
            s.state = payrun::execute::machine::State::Sending {
                attempt: 1,
                since: r.first_sent.unwrap_or(0),
            };
            s
        }));
        let base = (c * window) as u64;
        let rows: Vec<(u64, &Record)> = sending
            .iter()
            .enumerate()
            .map(|(i, r)| (base + i as u64, r))
            .collect();
        store.commit(&rows).unwrap();
        for (p, pack) in chunk.chunks(PACK).enumerate() {
            let rows: Vec<(u64, &Record)> = pack
                .iter()
                .enumerate()
                .map(|(i, r)| (base + (p * PACK + i) as u64, r))
                .collect();
            store.commit(&rows).unwrap();
        }
    }
    let (open, _, peak) = since(m);
    drop(store);
    let after = since(m).0;
    println!(
        "  store writes (redb, fresh store, {:.3} commits per item): peak {:.1} MB; held while open {} (creating it {:.1} MB); after closing {:.1} MB",
        (records.len().div_ceil(window) + records.len().div_ceil(PACK)) as f64 / items as f64,
        peak as f64 / 1048576.0,
        part(open, items),
        created as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
}

/// The runner's other books that grow with the items: `Progress::reported` (every settled
/// item's index) and `Book::groups` (the units of every submitted request, by its globalId;
/// never pruned).
fn runner_books(records: &[Record], items: usize) {
    let m = mark();
    let reported: std::collections::HashSet<usize> = (0..records.len()).collect();
    let r = since(m).0;
    let m = mark();
    let mut groups: std::collections::HashMap<String, Vec<usize>> =
        std::collections::HashMap::new();
    for (i, rec) in records.iter().enumerate() {
        if let payrun::execute::machine::State::Succeeded { ids, .. } = &rec.state
            && let Some(g) = ids.get("globalId")
        {
            groups.entry(g.to_string()).or_default().push(i);
        }
    }
    let g = since(m).0;
    println!(
        "  runner books: Progress::reported {}; Book::groups ({} requests) {}",
        part(r, items),
        groups.len(),
        part(g, items)
    );
    drop((reported, groups));
}

/// The sandbox's memory: the items sent to an in-process sandbox, then its parts cleared one
/// at a time.
fn sandbox(planned: Arc<Vec<Sent>>, config: &Path, time_scale: f64, items: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cfg = payrun::sandbox::SandboxConfig {
            time_scale,
            ..payrun::sandbox::SandboxConfig::load(config).expect("the sandbox configuration")
        };
        let (partner, key) = (
            cfg.paysend.partner_id.clone(),
            cfg.paysend.inbound_key.clone(),
        );
        let m = mark();
        let sb = payrun::sandbox::Sandbox::start(cfg, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("the sandbox starts");
        let started = since(m).0;
        let base = sb.base_url("paysend");
        let next = Arc::new(AtomicUsize::new(0));
        let paid = Arc::new(AtomicUsize::new(0));
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..CONCURRENCY {
            let (planned, next, paid, http) = (
                Arc::clone(&planned),
                Arc::clone(&next),
                Arc::clone(&paid),
                http.clone(),
            );
            let (base, partner, key) = (base.clone(), partner.clone(), key.clone());
            set.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(pack) = planned.chunks(PACK).nth(i) else {
                        return;
                    };
                    let keys: Vec<&str> = pack.iter().map(|p| p.key.as_str()).collect();
                    let trees: Vec<Value> = pack
                        .iter()
                        .flat_map(|p| p.payload.iter())
                        .map(|r| serde_json::from_str(r.get()).unwrap())
                        .collect();
                    let date =
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
                    let sub = payrun::providers::paysend::submission(
                        &partner, &key, &keys, trees, None, &date,
                    );
                    let r = http
                        .post(format!("{base}/processing"))
                        .header("content-type", "application/json")
                        .header("X-OPP-Signature", &sub.signature)
                        .body(sub.body)
                        .send()
                        .await
                        .expect("POST /processing");
                    assert_eq!(r.status().as_u16(), 200, "POST /processing");
                    let mut v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                    let global = v
                        .pointer("/header/response/globalId")
                        .and_then(Value::as_str)
                        .expect("a globalId")
                        .to_string();
                    while v.pointer("/result/status").and_then(Value::as_str) != Some("Finished") {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        let r = http
                            .get(format!("{base}/processing/status/{global}"))
                            .header(
                                "X-OPP-Signature",
                                payrun::providers::paysend::sign(global.as_bytes(), &key),
                            )
                            .send()
                            .await
                            .expect("GET /processing/status");
                        assert_eq!(r.status().as_u16(), 200, "GET /processing/status");
                        v = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                    }
                    let ok = v
                        .pointer("/payload/tasks")
                        .and_then(Value::as_array)
                        .expect("tasks")
                        .iter()
                        .filter(|t| {
                            t.pointer("/result/status").and_then(Value::as_str) == Some("Success")
                        })
                        .count();
                    assert_eq!(ok, pack.len(), "every task of a pack paid");
                    paid.fetch_add(ok, Ordering::Relaxed);
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        drop(http);
        assert_eq!(paid.load(Ordering::Relaxed), items);
        // Let the server's connection tasks end.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let (held, held_blocks, _) = since(m);
        println!(
            "  sandbox, everything it retains        {} in {} blocks (started empty: {:.1} MB)",
            part(held, items),
            held_blocks,
            started as f64 / 1048576.0
        );
        let ledger_entries = sb.state.ledger.entries().len();
        let sealed = sb.state.paysend.bodies.on_disk();
        let parts: [(&str, &dyn Fn()); 5] = [
            ("ledger (entries)", &|| sb.state.ledger.reset()),
            ("requests (Stored: ids, executed trees)", &|| {
                sb.state.paysend.requests.clear()
            }),
            ("invoices (payments by invoiceId)", &|| {
                sb.state.paysend.invoices.clear()
            }),
            ("payments (paymentId → invoiceId)", &|| {
                sb.state.paysend.payments.clear()
            }),
            ("by_global (globalId → request id)", &|| {
                sb.state.paysend.by_global.clear()
            }),
        ];
        for (name, clear) in parts {
            let m = mark();
            clear();
            println!("    {name:<50} {}", part(-since(m).0, items));
        }
        let m2 = mark();
        sb.stop().await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        println!(
            "    {:<50} {}",
            "the maps' emptied tables, and the rest (stop)",
            part(-since(m2).0, items)
        );
        println!(
            "    ({ledger_entries} ledger entries; request bodies sealed in a temporary file, not in memory: {:.1} MB = {:.0} B/item on disk)",
            sealed as f64 / 1048576.0,
            sealed as f64 / items as f64
        );
    });
}

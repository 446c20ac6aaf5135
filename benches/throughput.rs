//! Execution throughput of `payrun run --sandbox` with the rate limit effectively off, as a
//! share of what a bare HTTP client loop gets out of the same sandbox doing the same wire work.
//! Target (issue): payrun ≥ 0.8 × the bare loop. Run with
//! `cargo bench --bench throughput -- [--items 20000] [--pack 20] [--concurrency 16] [--rounds 5] [--time-scale 1000]`.
//! Prints figures; asserts only correctness (every item paid, and on the bare side every item
//! in the sandbox's ledger exactly once).
//!
//! Method, made to be fair:
//!
//! - One generated batch of `--items` rows in the format of batches/payroll-paysend; the
//!   manifest sets `requests_per_second: 10000` and `burst: 10000` (the manifest's maximum; no
//!   request waits on the limiter at these sizes), `concurrency` and `tasks_per_request` from
//!   the flags. payrun keeps its durable redb checkpoints (fsync per commit) as always.
//! - payrun: `payrun run manifest.yaml --sandbox --yes --time-scale T`, a fresh process and
//!   state folder per round; its sandbox is embedded in that process, so client and sandbox
//!   share the 2 cores.
//! - bare loop: also a fresh process per round (this bench re-run with `--bare-once`), with a
//!   multi-thread tokio runtime holding the same `payrun::sandbox::Sandbox` (default config, same
//!   time scale, no rate limit, no faults) and a reqwest client built as payrun builds its own
//!   (30 s timeout, defaults otherwise). It does the wire work payrun does: for every pack of
//!   `--pack` items, in file order as payrun packs them, it builds and signs the very same body
//!   with the library's `providers::paysend::submission` (item trees from
//!   `providers::paysend::item_tree`, keys from `keys::item_key`, as `payrun run` computes
//!   them; the trees are cloned per request as payrun does), POSTs it to /processing and parses
//!   the answer; unless that answer already shows the request Finished (at ×1000 the sandbox
//!   often finishes a pack while answering; payrun then asks nothing more either), it GETs
//!   /processing/status/{globalId} (signed with `providers::paysend::sign`) until it is, and
//!   checks that every task is Success. At most `--concurrency` requests are in flight, taken
//!   from one FIFO queue where a pack's GET goes to the back: the order payrun's FIFO semaphore
//!   gives (payrun dispatches every pack at the first tick and its polls queue behind them).
//!   No warm-up on either side.
//! - Rates are over the sending window. Bare: first POST to last settled answer. payrun: the
//!   earliest `first_sent` to the latest `Succeeded.at` in its store (millisecond timestamps
//!   the runner records itself, from the instant the items became `Sending` to the instant the
//!   last answer was applied), so validation, store creation, sandbox start-up, preflight and
//!   teardown are left out on both sides; payrun's whole-process time is printed too.
//! - CPU per item in the window: the bare side measures it with getrusage; for payrun this
//!   bench samples /proc/<pid>/stat every 5 ms and interpolates at the window's ends. Both sides
//!   are CPU-bound on 2 cores, so this ratio is what the throughput ratio tends to on an idle
//!   machine, and it is much less sensitive than wall time to other work on a shared machine.
//! - Rounds alternate bare / payrun; the best round of each is compared (wall times on the
//!   2-core machine vary by ±30% and more when something else runs), with the median of the
//!   per-round ratios next to it.
//! - Scale: both sandboxes are configured by `common::write_sandbox_config` (`sandbox.yaml`,
//!   given to `payrun run --sandbox-config`): a EUR balance for a million items, and a status
//!   window of 100,000 h so that packs polled long after they were sent (payrun polls only after
//!   every pack was sent) are still answered by `GET /processing/status` at ×1000, instead of
//!   one task.statusGet per item. Neither changes anything at 20,000 items.
//! - Memory: peak RSS is VmHWM sampled from /proc every 5 ms (and at the end), for both sides;
//!   payrun's RSS is also printed when its first item was sent, at its highest in the window
//!   and when its last item was paid. The bare loop's includes its pre-built trees (printed:
//!   its RSS just before its window). Both include the sandbox, which keeps every request
//!   (see `benches/memory.rs` for where payrun's memory goes, part by part).
//!
//! Measured for issue 13 (one round each, 2 shared cores; `-- --items N --rounds 1`):
//! 100,000 items, load 2.7: bare 5,534 items/s, payrun 4,438 items/s, ratio 0.80, CPU per item
//! payrun/bare 1.18; peak RSS payrun 1,446 MB (15.2 KB/item; 216 MB when the first item was
//! sent), bare 1,861 MB (700 MB of it its trees). 200,000 items, load 5.6 (other sessions
//! building): bare 4,578 items/s, payrun 2,402 items/s, ratio 0.52 (wall time under load),
//! CPU per item 1.28 (payrun 343 µs against 320 µs at 100k: its CPU per item grows with the
//! batch, the bare loop's does not); peak RSS payrun 2,871 MB (15.1 KB/item), bare 3,707 MB.
//! 100,000 items again, load 4.2: ratio 0.76, CPU per item 1.25 (payrun 348 µs, bare 278 µs).
//! 20,000 items (`-- --rounds 2`, load 4.2): ratio 0.66 (rounds 0.78 and 0.64), CPU per item
//! 1.23; peak RSS payrun 306 MB, bare 384 MB. The same with the former data (one IBAN for every
//! item, repeats allowed): bare 267 µs, payrun 338 µs CPU per item, so the IBANs of their own
//! change nothing; both sides spend about twice the CPU per item the README's figures imply.
//! 1,000,000 items were not run (≈ 14.5 GB and 19 GB of RSS on a shared 24 GB machine).

mod common;

use common::{
    Limits, ProcSampler, arg, cpu_at, describe, load_average, mb, own_cpu, paid_everything,
    payrun_rehearsal, sending_window, summary_numbers, vm_rss_kib, wait_rss, write_batch,
    write_sandbox_config,
};
use payrun::providers::paysend;
use payrun::sandbox::{Sandbox, SandboxConfig};
use serde_json::Value;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BATCH: &str = "bench-throughput";

fn main() {
    let items: usize = arg("--items", 20_000);
    let pack: u32 = arg("--pack", 20);
    let concurrency: u32 = arg("--concurrency", 16);
    let rounds: usize = arg("--rounds", 5);
    let time_scale: f64 = arg("--time-scale", 1000.0);
    let bare_once: String = arg("--bare-once", String::new());
    if !bare_once.is_empty() {
        // One round of the bare loop, in a fresh process as payrun's is.
        bare_child(Path::new(&bare_once), items, pack, concurrency, time_scale);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        requests_per_second: 10_000,
        burst: 10_000,
        concurrency,
        tasks_per_request: pack,
    };
    let manifest = write_batch(dir.path(), BATCH, items, "sandbox", &limits);
    write_sandbox_config(dir.path());
    println!(
        "throughput: {items} items, packs of {pack}, concurrency {concurrency}, rate limit off (10000/s, burst 10000), time scale {time_scale}, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let mut bares = Vec::new();
    let mut runs = Vec::new();
    for round in 1..=rounds {
        let b = bare_process(&manifest, items);
        let p = payrun(dir.path(), &manifest, round, items, time_scale);
        println!(
            "round {round}: bare {:>6.0} items/s {:>5.0} req/s {:>4.0} µs CPU/item {} | payrun {:>6.0} items/s {:>5.0} req/s {:>4.0} µs CPU/item {} | ratio {:.2} | load {}",
            b.items_per_s(),
            b.requests_per_s(),
            b.window_cpu.as_secs_f64() * 1e6 / items as f64,
            mb(b.rss_kib),
            p.items_per_s(),
            p.requests_per_s(),
            p.window_cpu.as_secs_f64() * 1e6 / items as f64,
            mb(p.rss_kib),
            p.items_per_s() / b.items_per_s(),
            load_average()
        );
        bares.push(b);
        runs.push(p);
    }
    let best = |v: &[Rates]| {
        v.iter()
            .max_by(|a, b| a.items_per_s().total_cmp(&b.items_per_s()))
            .cloned()
            .unwrap()
    };
    let (b, p) = (best(&bares), best(&runs));
    let per_item = |d: Duration| d.as_secs_f64() * 1e6 / items as f64;
    let cpu_ratio = |p: &Rates, b: &Rates| p.window_cpu.as_secs_f64() / b.window_cpu.as_secs_f64();
    println!();
    println!(
        "best of {rounds} (rates over the sending window; load average now {}):",
        load_average()
    );
    println!(
        "  bare client loop: {:.3} s, {:.0} items/s, {:.0} requests/s, {:.3} requests per item; CPU in the window {:.0} µs per item; whole process CPU {:.2} s, peak RSS {}",
        b.window.as_secs_f64(),
        b.items_per_s(),
        b.requests_per_s(),
        b.requests as f64 / items as f64,
        per_item(b.window_cpu),
        b.cpu.as_secs_f64(),
        mb(b.rss_kib)
    );
    println!(
        "  payrun run:       {:.3} s, {:.0} items/s, {:.0} requests/s, {:.3} requests per item, {} commits ({:.3} per item); CPU in the window {:.0} µs per item; whole process {:.2} s ({:.0} items/s), CPU {:.2} s, peak RSS {}",
        p.window.as_secs_f64(),
        p.items_per_s(),
        p.requests_per_s(),
        p.requests as f64 / items as f64,
        p.commits,
        p.commits as f64 / items as f64,
        per_item(p.window_cpu),
        p.process.as_secs_f64(),
        items as f64 / p.process.as_secs_f64(),
        p.cpu.as_secs_f64(),
        mb(p.rss_kib)
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "  ratio payrun/bare: {:.2} items/s, {:.2} requests/s (median of the rounds' ratios {:.2}); target ≥ 0.80",
        p.items_per_s() / b.items_per_s(),
        p.requests_per_s() / b.requests_per_s(),
        median(
            runs.iter()
                .zip(&bares)
                .map(|(p, b)| p.items_per_s() / b.items_per_s())
                .collect()
        )
    );
    println!(
        "  CPU per item in the window payrun/bare: {:.2} (median of the rounds {:.2}); both sides are CPU-bound on 2 cores, so 1/this is the ratio an idle machine allows",
        cpu_ratio(&p, &b),
        median(
            runs.iter()
                .zip(&bares)
                .map(|(p, b)| cpu_ratio(p, b))
                .collect()
        )
    );
    // Memory: the lowest peak of the rounds (other work cannot raise a process's own RSS, but
    // allocator timing varies a little).
    let low = |v: &[Rates]| v.iter().min_by_key(|r| r.rss_kib).cloned().unwrap();
    let (b, p) = (low(&bares), low(&runs));
    let per_item = |kib: u64| kib as f64 * 1024.0 / items as f64;
    println!(
        "  peak RSS (VmHWM), payrun: {} ({:.0} bytes per item; target for 1,000,000 items ≤ 300 MB); RSS when the first item was sent {}, highest in the sending window {}, when the last was paid {}",
        mb(p.rss_kib),
        per_item(p.rss_kib),
        mb(p.rss_start_kib),
        mb(p.rss_window_kib),
        mb(p.rss_end_kib)
    );
    println!(
        "  peak RSS (VmHWM), bare loop: {} ({:.0} bytes per item), of which {} before its window (every pack's trees built, sandbox not started)",
        mb(b.rss_kib),
        per_item(b.rss_kib),
        mb(b.rss_start_kib)
    );
}

/// One pack as payrun sends it: its items' keys and their trees, in order.
struct Pack {
    keys: Vec<String>,
    trees: Vec<Value>,
}

#[derive(Clone)]
struct Rates {
    items: usize,
    requests: u64,
    /// The sending window.
    window: Duration,
    /// CPU used in the window (payrun: interpolated from /proc samples, ±10 ms).
    window_cpu: Duration,
    commits: u64,
    /// Whole process: wall time, CPU time, peak RSS.
    process: Duration,
    cpu: Duration,
    /// Peak RSS (VmHWM, sampled every 5 ms and read at the end).
    rss_kib: u64,
    /// RSS at the window's start and end, and the highest sampled in it (payrun); bare: RSS
    /// just before its window (its packs built).
    rss_start_kib: u64,
    rss_end_kib: u64,
    rss_window_kib: u64,
}

impl Rates {
    fn items_per_s(&self) -> f64 {
        self.items as f64 / self.window.as_secs_f64()
    }
    fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.window.as_secs_f64()
    }
}

/// The bare round of `--bare-once`: prints "bare <requests> <window ns> <window CPU ns> <RSS KiB
/// before the window>".
fn bare_child(manifest: &Path, items: usize, pack: u32, concurrency: u32, time_scale: f64) {
    let (_flow, trees) = common::item_trees(manifest);
    assert_eq!(trees.len(), items);
    // Moved, not cloned, into the packs: a million items' trees fit once, not twice.
    let mut packs: Vec<Pack> = Vec::with_capacity(items.div_ceil(pack as usize));
    for (i, (key, t)) in trees.into_iter().enumerate() {
        if i % pack as usize == 0 {
            packs.push(Pack {
                keys: Vec::with_capacity(pack as usize),
                trees: Vec::with_capacity(pack as usize),
            });
        }
        let p = packs.last_mut().expect("a pack");
        p.keys.push(key);
        p.trees.extend(t);
    }
    let config = manifest.with_file_name("sandbox.yaml");
    let rss_before = vm_rss_kib(std::process::id()).unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let b = runtime.block_on(bare(
        Arc::new(packs),
        items,
        concurrency as usize,
        time_scale,
        &config,
    ));
    println!(
        "bare {} {} {} {rss_before}",
        b.requests,
        b.window.as_nanos(),
        b.window_cpu.as_nanos()
    );
}

/// One bare round in a child process (this bench again, with `--bare-once <manifest>`).
fn bare_process(manifest: &Path, items: usize) -> Rates {
    let t = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(std::env::args().skip(1))
        .arg("--bare-once")
        .arg(manifest)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let sampler = ProcSampler::start(child.id());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let ended = wait_rss(&mut child);
    let (_, peak_kib) = sampler.finish();
    assert!(
        libc::WIFEXITED(ended.status) && libc::WEXITSTATUS(ended.status) == 0,
        "the bare loop failed: {}",
        describe(ended.status)
    );
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("bare "))
        .expect("the bare loop's figures");
    let w: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
    Rates {
        items,
        requests: w[0],
        window: Duration::from_nanos(w[1]),
        window_cpu: Duration::from_nanos(w[2]),
        commits: 0,
        process: t.elapsed(),
        cpu: ended.cpu,
        rss_kib: peak_kib,
        rss_start_kib: w[3],
        rss_end_kib: 0,
        rss_window_kib: 0,
    }
}

fn payrun(dir: &Path, manifest: &Path, round: usize, items: usize, time_scale: f64) -> Rates {
    let state: PathBuf = dir.join(format!("state-{round}"));
    let out = dir.join(format!("payrun-{round}.out"));
    let err = dir.join(format!("payrun-{round}.err"));
    let t = Instant::now();
    // Like the bare loop's in-process sandbox: no state file, the same configuration.
    let mut child = payrun_rehearsal(manifest, &state, &out, &err, time_scale)
        .spawn()
        .unwrap();
    let sampler = ProcSampler::start(child.id());
    let ended = wait_rss(&mut child);
    let process = t.elapsed();
    let sampled = sampler.finish_all();
    let samples = &sampled.cpu;
    let stdout = paid_everything(&ended, &out, &err, items);
    let (requests, commits) = summary_numbers(&stdout).expect("the run's summary line");
    // The sending window, from the runner's own timestamps in its store.
    let (first, last, stored) = sending_window(&state, BATCH);
    assert_eq!(stored, items);
    let _ = std::fs::remove_dir_all(&state);
    Rates {
        items,
        // The preflight (getBalance) is one request outside the window.
        requests: requests.saturating_sub(1),
        window: Duration::from_millis(last.saturating_sub(first).max(1)),
        window_cpu: Duration::from_secs_f64(
            (cpu_at(samples, last) - cpu_at(samples, first)).max(0.0),
        ),
        commits,
        process,
        cpu: ended.cpu,
        rss_kib: sampled.peak_kib,
        rss_start_kib: sampled.rss_at(first),
        rss_end_kib: sampled.rss_at(last),
        rss_window_kib: sampled.rss_max(first, last),
    }
}

struct Shared {
    http: reqwest::Client,
    base: String,
    partner: String,
    key: String,
    packs: Arc<Vec<Pack>>,
    queue: Mutex<VecDeque<Job>>,
    wake: tokio::sync::Notify,
    settled: AtomicUsize,
    paid: AtomicUsize,
    requests: AtomicU64,
}

enum Job {
    Post(usize),
    Get(usize, String),
}

async fn bare(
    packs: Arc<Vec<Pack>>,
    items: usize,
    concurrency: usize,
    time_scale: f64,
    config: &Path,
) -> Rates {
    let cfg = SandboxConfig {
        time_scale,
        ..SandboxConfig::load(config).expect("the bench's sandbox configuration")
    };
    assert!(cfg.paysend.rate_limit.is_none(), "rate limit off");
    let (partner, key) = (
        cfg.paysend.partner_id.clone(),
        cfg.paysend.inbound_key.clone(),
    );
    let sb = Sandbox::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the sandbox starts");
    let sh = Arc::new(Shared {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        base: sb.base_url("paysend"),
        partner,
        key,
        queue: Mutex::new((0..packs.len()).map(Job::Post).collect()),
        packs,
        wake: tokio::sync::Notify::new(),
        settled: AtomicUsize::new(0),
        paid: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
    });
    let (t, cpu0) = (Instant::now(), own_cpu());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        set.spawn(worker(Arc::clone(&sh)));
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let (window, window_cpu) = (t.elapsed(), own_cpu() - cpu0);
    assert_eq!(sh.paid.load(Ordering::Relaxed), items, "bare loop: paid");
    let ledger = sb.state.ledger.entries();
    let keys: std::collections::HashSet<&str> = ledger.iter().map(|e| e.key.as_str()).collect();
    assert!(
        ledger.len() == items && keys.len() == items,
        "bare loop: {} ledger entries for {} keys, {items} items",
        ledger.len(),
        keys.len()
    );
    sb.stop().await;
    Rates {
        items,
        requests: sh.requests.load(Ordering::Relaxed),
        window,
        window_cpu,
        commits: 0,
        process: window,
        cpu: window_cpu,
        rss_kib: 0,
        rss_start_kib: 0,
        rss_end_kib: 0,
        rss_window_kib: 0,
    }
}

async fn worker(sh: Arc<Shared>) {
    loop {
        let wake = sh.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let job = sh.queue.lock().unwrap().pop_front();
        let Some(job) = job else {
            if sh.settled.load(Ordering::Acquire) == sh.packs.len() {
                return;
            }
            wake.await;
            continue;
        };
        sh.requests.fetch_add(1, Ordering::Relaxed);
        let next = match job {
            Job::Post(i) => {
                let p = &sh.packs[i];
                let keys: Vec<&str> = p.keys.iter().map(String::as_str).collect();
                let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
                let sub =
                    paysend::submission(&sh.partner, &sh.key, &keys, p.trees.clone(), None, &date);
                let r = sh
                    .http
                    .post(format!("{}/processing", sh.base))
                    .header("content-type", "application/json")
                    .header("X-OPP-Signature", &sub.signature)
                    .body(sub.body)
                    .send()
                    .await
                    .expect("POST /processing");
                assert_eq!(r.status().as_u16(), 200, "POST /processing");
                let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                // A pack the sandbox finished while answering needs no GET (payrun asks none).
                if settle(&sh, i, &v) {
                    None
                } else {
                    let global = v
                        .pointer("/header/response/globalId")
                        .and_then(Value::as_str)
                        .expect("a globalId")
                        .to_string();
                    Some(Job::Get(i, global))
                }
            }
            Job::Get(i, global) => {
                let r = sh
                    .http
                    .get(format!("{}/processing/status/{global}", sh.base))
                    .header("X-OPP-Signature", paysend::sign(global.as_bytes(), &sh.key))
                    .send()
                    .await
                    .expect("GET /processing/status");
                assert_eq!(
                    r.status().as_u16(),
                    200,
                    "GET /processing/status: the request's status window (2 h of provider time) closed; lower --time-scale for this many items"
                );
                let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                if settle(&sh, i, &v) {
                    None
                } else {
                    Some(Job::Get(i, global))
                }
            }
        };
        if let Some(j) = next {
            sh.queue.lock().unwrap().push_back(j);
            sh.wake.notify_one();
        }
    }
}

/// Counts pack `i` as settled when the answer `v` says its request is Finished (every task must
/// then be Success); false while it is still running.
fn settle(sh: &Shared, i: usize, v: &Value) -> bool {
    if v.pointer("/result/status").and_then(Value::as_str) != Some("Finished") {
        return false;
    }
    let paid = v
        .pointer("/payload/tasks")
        .and_then(Value::as_array)
        .expect("tasks")
        .iter()
        .filter(|t| t.pointer("/result/status").and_then(Value::as_str) == Some("Success"))
        .count();
    assert_eq!(paid, sh.packs[i].keys.len(), "every task of a pack paid");
    sh.paid.fetch_add(paid, Ordering::Relaxed);
    if sh.settled.fetch_add(1, Ordering::AcqRel) + 1 == sh.packs.len() {
        sh.wake.notify_waiters();
    }
    true
}

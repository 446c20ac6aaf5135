//! Resume of a large batch with a few items left: how long `payrun resume` takes from process
//! start to its first request reaching the provider, and to the end, with the peak RSS of the
//! big run and of the resume. Targets (issue): first request within 1 s for 100,000 items with
//! 10 left. Run with
//! `cargo bench --bench resume -- [--items 100000] [--left both|in-doubt|unpolled] [--time-scale 1000] [--keep]`
//! (`--keep` keeps the temporary folder with both runs' logs; set `PAYRUN_LOG=debug` for
//! timestamps of payrun's phases in them). Prints figures; asserts only that the runs end as
//! expected and that the sandbox's ledger holds every item exactly once.
//!
//! Method:
//!
//! - The provider is the sandbox's Paysend emulation (`payrun::sandbox::paysend::routes`, the
//!   same handlers `payrun sandbox` serves, default config and the same time scale as payrun)
//!   running in this process behind a small middleware that timestamps every request as it
//!   arrives and can hold one request back. The sandbox lives across both runs, so its ledger
//!   sees the whole story. One knob differs: the status window (GET /processing/status answers
//!   only that long after acceptance; documented 2-3 h) is 24 h of provider time, because at
//!   ×1000 the 2 h are 7.2 s of real time, less than the big run takes — and payrun polls only
//!   after it has sent every pack, so most packs' windows would close first and the run would
//!   fall back to one task.statusGet per item, measuring that fallback instead of the runner.
//! - A generated batch of `--items` rows (packs of 10, concurrency 16, rate limit effectively
//!   off) is run with `payrun run` against it. The middleware stops exactly the last 10 items
//!   from finishing, deterministically (packs are consecutive items in file order, so the last
//!   pack is the last 10 items; it is recognised by the last item's idempotency key):
//!   - `in-doubt`: the POST carrying the last pack is held and never processed. The run pays
//!     everything else; once its status snapshot says so, it is killed with SIGKILL. The 10
//!     items are left `Sending` — a crash with a request possibly on the wire. A resume must
//!     treat them as in doubt: wait out the provider's propagation delay (180 s of provider
//!     time, scaled by `--time-scale`), look each key up, and send again with the same key.
//!   - `unpolled`: the last pack is paid, but the GET of its status is held; the run is killed
//!     the same way. The 10 items are left `Submitted` (paid, answer not yet observed): a
//!     resume asks about them at once, so its first item request measures start-up alone.
//! - `payrun resume <batch>` is then started; times are from its spawn to the arrival of its
//!   first request (the preflight getBalance, which every run sends first), of its first
//!   request about an item, of its last request, and to its exit (the spawn itself takes well
//!   under a millisecond). Peak RSS is each child's VmHWM, sampled from /proc every 5 ms and
//!   read once more just before the kill (not wait4's ru_maxrss: see `common::ProcSampler`).
//! - At the end the ledger must hold exactly one payment per item key, and no other.

mod common;

use axum::body::Body;
use axum::extract::{Request, State as Ax};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use common::{Limits, ProcSampler, arg, describe, item_id, mb, vm_hwm_kib, wait_rss, write_batch};
use payrun::sandbox::{SandboxConfig, clock::Clock, ledger::Ledger, paysend::Paysend};
use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const BATCH: &str = "bench-resume";
const PACK: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Left {
    /// The last pack's POST never reaches the provider: its items stay `Sending`.
    InDoubt,
    /// The last pack is paid; its status GET is held: its items stay `Submitted`.
    Unpolled,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Preflight,
    Send,
    Lookup,
    Poll,
}

/// What the middleware knows and does.
struct Observer {
    /// Every arrival since the last `clear`.
    arrivals: Mutex<Vec<(Instant, Kind)>>,
    /// The last item's key: the POST carrying it is the last pack.
    last_key: String,
    left: Left,
    armed: AtomicBool,
    held: AtomicUsize,
    /// The globalId of the last pack (`unpolled`).
    last_global: Mutex<Option<String>>,
    release: tokio::sync::watch::Sender<bool>,
}

async fn observe(Ax(obs): Ax<Arc<Observer>>, req: Request, next: Next) -> Response {
    let arrived = Instant::now();
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let is_post = parts.method == axum::http::Method::POST;
    let kind = if !is_post {
        Kind::Poll
    } else if memchr::memmem::find(&bytes, b"\"getBalance\"").is_some() {
        Kind::Preflight
    } else if memchr::memmem::find(&bytes, b"\"task.statusGet\"").is_some() {
        Kind::Lookup
    } else {
        Kind::Send
    };
    obs.arrivals.lock().unwrap().push((arrived, kind));
    let last_pack =
        kind == Kind::Send && memchr::memmem::find(&bytes, obs.last_key.as_bytes()).is_some();
    if obs.armed.load(Ordering::SeqCst) {
        let hold = match obs.left {
            Left::InDoubt => last_pack,
            Left::Unpolled => {
                kind == Kind::Poll
                    && obs.last_global.lock().unwrap().as_deref().is_some_and(|g| {
                        parts
                            .uri
                            .path()
                            .ends_with(&format!("/processing/status/{g}"))
                    })
            }
        };
        if hold {
            // Never processed: released (and answered 503) only after the runner is gone.
            obs.held.fetch_add(1, Ordering::SeqCst);
            let mut rx = obs.release.subscribe();
            let _ = rx.wait_for(|r| *r).await;
            return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if last_pack && obs.left == Left::Unpolled && obs.armed.load(Ordering::SeqCst) {
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if let Some(g) = v
            .pointer("/header/response/globalId")
            .and_then(serde_json::Value::as_str)
        {
            *obs.last_global.lock().unwrap() = Some(g.to_string());
        }
        return Response::from_parts(parts, Body::from(bytes));
    }
    resp
}

fn main() {
    let items: usize = arg("--items", 100_000);
    let time_scale: f64 = arg("--time-scale", 1000.0);
    let which: String = arg("--left", "both".to_string());
    let scenarios: Vec<Left> = match which.as_str() {
        "both" => vec![Left::Unpolled, Left::InDoubt],
        "in-doubt" => vec![Left::InDoubt],
        "unpolled" => vec![Left::Unpolled],
        other => panic!("--left both|in-doubt|unpolled, not {other}"),
    };
    assert!(items > PACK, "--items must be more than {PACK}");
    println!(
        "resume: {items} items, packs of {PACK}, concurrency 16, rate limit effectively off, time scale {time_scale}, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    for left in scenarios {
        scenario(items, time_scale, left);
    }
}

fn scenario(items: usize, time_scale: f64, left: Left) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SandboxConfig {
        time_scale,
        ..SandboxConfig::default()
    };
    // The documented 2 h status window is 7.2 s at ×1000, shorter than the big run: see above.
    cfg.paysend.status_window = Duration::from_secs(24 * 3600);
    // The sandbox as `Sandbox::start` assembles it, with the timestamping middleware in front.
    let clock = Clock::new(cfg.time_scale);
    let state = Arc::new(payrun::sandbox::State {
        seed: cfg.seed,
        paysend: Paysend::new(&cfg.paysend, &clock),
        clock,
        ledger: Ledger::default(),
        faults: RwLock::new(cfg.faults.clone()),
    });
    let obs = Arc::new(Observer {
        arrivals: Mutex::new(Vec::new()),
        last_key: payrun::keys::item_key(BATCH, &item_id(items - 1)),
        left,
        armed: AtomicBool::new(true),
        held: AtomicUsize::new(0),
        last_global: Mutex::new(None),
        release: tokio::sync::watch::channel(false).0,
    });
    let app = axum::Router::new()
        .nest("/paysend", payrun::sandbox::paysend::routes())
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&obs),
            observe,
        ))
        // How payrun recognises a sandbox (for --time-scale); not a provider request.
        .merge(payrun::sandbox::inspection())
        .with_state(Arc::clone(&state));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}/paysend", listener.local_addr().unwrap());
    runtime.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let manifest = write_batch(
        dir.path(),
        BATCH,
        items,
        &base,
        &Limits {
            requests_per_second: 10_000,
            burst: 10_000,
            concurrency: 16,
            tasks_per_request: PACK as u32,
        },
    );
    let state_dir = dir.path().join("state");
    let scale = time_scale.to_string();
    let payrun = |args: &[&str], name: &str| {
        Command::new(env!("CARGO_BIN_EXE_payrun"))
            .args(args)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--time-scale", &scale])
            .env("PAYSEND_PARTNER_ID", &cfg.paysend.partner_id)
            .env("PAYSEND_INBOUND_KEY", &cfg.paysend.inbound_key)
            .env("PAYSEND_OUTBOUND_KEY", &cfg.paysend.outbound_key)
            .env_remove("PAYRUN_CRASH_AT")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join(format!("{name}.out"))).unwrap())
            .stderr(std::fs::File::create(dir.path().join(format!("{name}.err"))).unwrap())
            .spawn()
            .unwrap()
    };
    let log = |name: &str| {
        let read = |ext: &str| {
            std::fs::read_to_string(dir.path().join(format!("{name}.{ext}"))).unwrap_or_default()
        };
        let err = read("err");
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        format!(
            "{}\n{}",
            read("out"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    };

    // 1. The big run, stopped with exactly the last pack unfinished.
    println!();
    println!(
        "scenario {}:",
        match left {
            Left::InDoubt =>
                "in-doubt (the last pack's POST never arrived; its items are `sending`)",
            Left::Unpolled =>
                "unpolled (the last pack is paid, its status not yet asked; its items are `submitted`)",
        }
    );
    let started = Instant::now();
    let mut child = payrun(&["run", manifest.to_str().unwrap(), "--yes"], "run");
    let run_sampler = ProcSampler::start(child.id());
    let snapshot = state_dir.join(format!("{BATCH}.status.json"));
    let deadline = started + Duration::from_secs(600);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(s) = child.try_wait().unwrap() {
            panic!("payrun run ended by itself ({s}):\n{}", log("run"));
        }
        assert!(
            Instant::now() < deadline,
            "payrun run did not get there in 10 minutes"
        );
        if obs.held.load(Ordering::SeqCst) == 0 {
            continue;
        }
        let paid = std::fs::read(&snapshot)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.pointer("/states/paid").and_then(|p| p.as_u64()))
            .unwrap_or(0);
        if paid as usize == items - PACK {
            break;
        }
    }
    let seen = started.elapsed();
    let run_rss = vm_hwm_kib(child.id())
        .unwrap_or(0)
        .max(run_sampler.peak_rss_kib());
    // SAFETY: a child this bench started and has not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
    }
    let run_end = wait_rss(&mut child);
    let status = run_end.status;
    let _ = run_sampler.finish();
    obs.armed.store(false, Ordering::SeqCst);
    obs.release.send_replace(true);
    let run_kinds = kinds(&obs.arrivals.lock().unwrap());
    let paid_before = state.ledger.entries().len();
    let expected_before = match left {
        Left::InDoubt => items - PACK,
        Left::Unpolled => items,
    };
    assert_eq!(
        paid_before, expected_before,
        "payments in the ledger when the run was killed"
    );
    // A copy to inspect later: opening the store here would let this bench, not the resume,
    // pay for redb's recovery after the kill.
    let inspect = dir.path().join("inspect");
    std::fs::create_dir_all(&inspect).unwrap();
    std::fs::copy(
        state_dir.join(format!("{BATCH}.redb")),
        inspect.join(format!("{BATCH}.redb")),
    )
    .unwrap();

    // 2. The resume, timed from its spawn to what arrives at the provider.
    obs.arrivals.lock().unwrap().clear();
    let t0 = Instant::now();
    let mut child = payrun(&["resume", BATCH], "resume");
    let resume_sampler = ProcSampler::start(child.id());
    let resume_end = wait_rss(&mut child);
    let rstatus = resume_end.status;
    let (_, resume_rss) = resume_sampler.finish();
    let total = t0.elapsed();
    assert!(
        libc::WIFEXITED(rstatus) && libc::WEXITSTATUS(rstatus) == 0,
        "payrun resume: {}\n{}",
        describe(rstatus),
        log("resume")
    );
    let arrivals = obs.arrivals.lock().unwrap().clone();
    let first = |item: bool| {
        arrivals
            .iter()
            .filter(|(_, kind)| (*kind != Kind::Preflight) == item)
            .map(|(t, _)| t.duration_since(t0))
            .min()
    };
    let ms = |d: Option<Duration>| {
        d.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "-".into())
    };
    let first_item_kind = arrivals
        .iter()
        .filter(|(_, k)| *k != Kind::Preflight)
        .min_by_key(|(t, _)| *t)
        .map(|(_, k)| *k);
    let last = arrivals.iter().map(|(t, _)| t.duration_since(t0)).max();

    // 3. Exactly once, from the provider's ledger.
    let ledger = state.ledger.entries();
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for e in &ledger {
        *per_key.entry(e.key.as_str()).or_default() += 1;
    }
    let missing = (0..items)
        .filter(|&i| !per_key.contains_key(payrun::keys::item_key(BATCH, &item_id(i)).as_str()))
        .count();
    let twice = per_key.values().filter(|&&n| n > 1).count();
    assert!(
        ledger.len() == items && per_key.len() == items && missing == 0 && twice == 0,
        "ledger: {} payments, {} keys, {missing} items unpaid, {twice} paid more than once",
        ledger.len(),
        per_key.len()
    );

    // What the killed run left, from the copy of its store.
    let store = payrun::execute::store::Store::open(&inspect, BATCH).unwrap();
    let recs = store.items().unwrap();
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    let mut last_paid = 0u64;
    let mut first_sent = u64::MAX;
    for (_, r) in &recs {
        *states
            .entry(payrun::execute::status::state_name(&r.state))
            .or_default() += 1;
        if let payrun::execute::machine::State::Succeeded { at, .. } = r.state {
            last_paid = last_paid.max(at);
        }
        if let Some(s) = r.first_sent {
            first_sent = first_sent.min(s);
        }
    }
    let file = std::fs::metadata(inspect.join(format!("{BATCH}.redb")))
        .map(|m| m.len())
        .unwrap_or(0);

    let run_secs = Duration::from_millis(last_paid.saturating_sub(first_sent)).as_secs_f64();
    println!(
        "  run:    {} items paid in {:.2} s of sending ({:.0} items/s); requests: {run_kinds}; seen by this bench after {:.2} s, then killed ({}); CPU {:.1} s, peak RSS {} ({:.1} KB per item)",
        items - PACK,
        run_secs,
        (items - PACK) as f64 / run_secs,
        seen.as_secs_f64(),
        describe(status),
        run_end.cpu.as_secs_f64(),
        mb(run_rss),
        run_rss as f64 * 1.024 / items as f64
    );
    println!(
        "  left:   {states:?}; store {:.1} MB ({:.0} bytes per item)",
        file as f64 / 1e6,
        file as f64 / items as f64
    );
    let propagation = Duration::from_secs(180)
        .div_f64(time_scale.max(1.0))
        .max(Duration::from_millis(20));
    println!(
        "  resume: first request (preflight) at {}, first item request at {} ({}{}), last request at {}, exit at {}; CPU {:.2} s, peak RSS {}",
        ms(first(false)),
        ms(first(true)),
        first_item_kind.map_or("-".to_string(), |k| format!("{k:?}").to_lowercase()),
        match left {
            Left::InDoubt => format!(
                ", after the {:.0} ms propagation wait payrun keeps before looking up an in-doubt item",
                propagation.as_secs_f64() * 1e3
            ),
            Left::Unpolled => String::new(),
        },
        ms(last),
        ms(Some(total)),
        resume_end.cpu.as_secs_f64(),
        mb(resume_rss)
    );
    println!("          requests: {}", kinds(&arrivals));
    println!(
        "  ledger: {} payments for {items} items, each key once: every item paid exactly once",
        ledger.len()
    );
    println!(
        "  {}",
        std::fs::read_to_string(dir.path().join("resume.out"))
            .unwrap_or_default()
            .trim()
    );
    drop(store);
    runtime.shutdown_timeout(Duration::from_secs(1));
    if std::env::args().any(|a| a == "--keep") {
        println!(
            "  kept: {} (logs: run.err, resume.err)",
            dir.keep().display()
        );
    }
}

/// "1 preflight, 10 send, …"
fn kinds(arrivals: &[(Instant, Kind)]) -> String {
    let mut by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    for (_, k) in arrivals {
        *by_kind.entry(*k).or_default() += 1;
    }
    by_kind
        .iter()
        .map(|(k, n)| format!("{n} {}", format!("{k:?}").to_lowercase()))
        .collect::<Vec<_>>()
        .join(", ")
}

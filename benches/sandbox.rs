//! Throughput of the sandbox's Paysend emulation: the ceiling any executor driving it can reach.
//! Starts the sandbox in-process on a multi-thread tokio runtime, then a bare client loop
//! (reqwest, keep-alive, `--concurrency` tasks) posts signed single-task pay.toAccount requests
//! with unique request ids and invoiceIds, `--requests` in all. Prints requests/s, latency
//! percentiles and the ledger count, which must equal the request count (exit 1 otherwise).
//! Run with `cargo bench --bench sandbox` (add `-- --requests N --concurrency C`; `--state
//! FILE` measures the sandbox persisting its state to FILE, which should not exist yet).

use payrun::sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let mut requests: usize = 20_000;
    let mut concurrency: usize = 16;
    let mut state: Option<std::path::PathBuf> = None;
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--requests" => requests = w[1].parse().expect("--requests N"),
            "--concurrency" => concurrency = w[1].parse().expect("--concurrency N"),
            "--state" => state = Some(w[1].clone().into()),
            _ => {}
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(run(requests, concurrency.max(1), state));
    std::process::exit(code);
}

struct Target {
    base: String,
    root: String,
    key: String,
    partner: String,
    http: reqwest::Client,
}

fn sign(data: &[u8], key: &str) -> String {
    let d = Sha256::new()
        .chain_update(data)
        .chain_update(key.as_bytes())
        .finalize();
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn body(t: &Target, run: &str, i: usize) -> Vec<u8> {
    let task = json!({"type": "pay.toAccount", "payload": {
        "transferAmount": 1.25,
        "transferCurrency": "EUR",
        "purposeOfPayment": "Salary",
        "invoiceId": format!("bench-{run}-{i}"),
        "from": {"sender": {"type": "LegalEntity", "name": "ACME Europe GmbH", "address": {"addressLine1": "Friedrichstrasse 68", "city": "Berlin", "country": "DE"}}},
        "to": {
            "destinationTransactionInstrument": {"identifierType": "IBAN", "accountIdentifier": "DE89370400440532013000", "bic": "COBADEFFXXX", "country": "DE"},
            "recipient": {"type": "Individual", "firstName": "Anna", "lastName": "Muller", "address": {"addressLine1": "Torstrasse 1", "city": "Berlin", "country": "DE"}}
        }
    }});
    serde_json::to_vec(&json!({
        "header": {"request": {"id": format!("req-{run}-{i}"), "date": "2026-11-21T10:00:00+00:00"}, "service": {"sync": false}},
        "payload": {"partner": {"identifier": t.partner}, "tasks": [task]}
    }))
    .unwrap()
}

/// Posts `n` requests with `concurrency` tasks; returns each latency and the failures.
async fn drive(t: &Arc<Target>, run: &str, n: usize, concurrency: usize) -> (Vec<Duration>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let t = Arc::clone(t);
        let next = Arc::clone(&next);
        let run = run.to_string();
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let b = body(&t, &run, i);
                let sig = sign(&b, &t.key);
                let start = Instant::now();
                let r = t
                    .http
                    .post(format!("{}/processing", t.base))
                    .header("content-type", "application/json")
                    .header("X-OPP-Signature", sig)
                    .body(b)
                    .send()
                    .await;
                let ok = match r {
                    Ok(resp) => resp.status().as_u16() == 200 && resp.bytes().await.is_ok(),
                    Err(_) => false,
                };
                lat.push(start.elapsed());
                if !ok {
                    failed += 1;
                }
            }
            (lat, failed)
        });
    }
    let mut all = Vec::with_capacity(n);
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        let (l, f) = r.unwrap();
        all.extend(l);
        failed += f;
    }
    (all, failed)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(requests: usize, concurrency: usize, state: Option<std::path::PathBuf>) -> i32 {
    let cfg = SandboxConfig {
        seed: 1,
        time_scale: 1000.0,
        ..SandboxConfig::default()
    };
    assert!(cfg.paysend.rate_limit.is_none(), "rate limit off");
    let partner = cfg.paysend.partner_id.clone();
    let key = cfg.paysend.inbound_key.clone();
    let sb = Sandbox::start_with_state(cfg, "127.0.0.1:0".parse().unwrap(), state.as_deref())
        .await
        .expect("the sandbox starts");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let t = Arc::new(Target {
        base: sb.base_url("paysend"),
        root: format!("http://{}", sb.addr),
        key,
        partner,
        http,
    });

    // Warm up connections and caches, then start from an empty ledger.
    let warm = (requests / 20).clamp(100, 1000);
    drive(&t, "warmup", warm, concurrency).await;
    let r = t
        .http
        .post(format!("{}/__sandbox/reset", t.root))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);

    println!(
        "sandbox bench: {requests} signed pay.toAccount requests, {concurrency} concurrent, keep-alive, {} worker threads",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let started = Instant::now();
    let (mut lat, failed) = drive(&t, "run", requests, concurrency).await;
    let wall = started.elapsed();
    lat.sort();

    let ledger: Vec<Value> = t
        .http
        .get(format!("{}/__sandbox/ledger", t.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let counters: Value = t
        .http
        .get(format!("{}/__sandbox/counters", t.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("wall:        {:.3} s", wall.as_secs_f64());
    println!(
        "throughput:  {:.0} requests/s",
        requests as f64 / wall.as_secs_f64()
    );
    println!(
        "latency:     p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&lat, 0.50).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    println!("failed:      {failed}");
    println!(
        "ledger:      {} payments (counters: {} payments, {} × 200)",
        ledger.len(),
        counters["payments"],
        counters["requests"]["POST /paysend/processing 200"]
    );
    sb.stop().await;
    if ledger.len() != requests || failed != 0 {
        eprintln!(
            "MISMATCH: {requests} requests, {} payments, {failed} failed",
            ledger.len()
        );
        return 1;
    }
    0
}

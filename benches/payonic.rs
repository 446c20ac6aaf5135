//! Payonic's async flow at scale: a 20,000-item refund batch (`--items N`) through `payrun run`
//! against a `payrun sandbox` process whose notifications come 50–500 ms after each request
//! (real time), with a modest concurrency cap (8) that must not bound how many notifications are
//! awaited at once (waiting is not work). Prints items/s, the most items awaiting a notification
//! at once (sampled from `payrun status`), requests and commits per item and payrun's peak RSS;
//! checks that every payment was refunded exactly once. `cargo bench --bench payonic`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let items: usize = common::arg("--items", 20_000);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sandbox.yaml");
    std::fs::write(
        &config,
        format!(
            "payonic:\n  generate: {{prefix: rf, count: {items}, amount: 100000, currency: DKK, state: captured}}\n  notify_delay_min: 50ms\n  notify_delay_max: 500ms\nfaults:\n  latency_min: 0ms\n  latency_max: 0ms\n  error_5xx_rate: 0\n  timeout_rate: 0\n  drop_after_commit_rate: 0\n  webhook_drop_rate: 0\n  webhook_duplicate_rate: 0\n  webhook_delay_rate: 0\n  webhook_reorder_rate: 0\n  on_hold_rate: 0\n"
        ),
    )
    .unwrap();
    let mut sandbox = Command::new(env!("CARGO_BIN_EXE_payrun"))
        .args(["sandbox", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut base, mut key) = (String::new(), String::new());
    for line in BufReader::new(sandbox.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if let Some(u) = line.strip_prefix("payonic: ") {
            base = u.trim().to_string();
        } else if let Some(k) = line.trim().strip_prefix("api_key:") {
            key = k.trim().to_string();
        } else if line.starts_with("ledger:") {
            break;
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut csv = String::from("payment,amount,currency\n");
    for i in 1..=items {
        csv.push_str(&format!("rf{i:08},{}.{:02},DKK\n", 10 + i % 50, i % 100));
    }
    std::fs::write(dir.path().join("refunds.csv"), csv).unwrap();
    std::fs::write(
        dir.path().join("manifest.yaml"),
        format!(
            "batch: bench-payonic\nprovider: payonic\nenvironment: {base}\ncredentials:\n  api_key: PAYONIC_API_KEY\nitems:\n  source: refunds.csv\n  columns: {{id: payment, paymentid: payment, amount: amount, currency: currency}}\nflow:\n  - op: refund\n    payload:\n      paymentid: ${{item.paymentid}}\n      amount: ${{item.amount}}\n      currency: ${{item.currency}}\nnotifications:\n  listen: 127.0.0.1:{port}\n  public_url: http://127.0.0.1:{port}\nlimits: {{requests_per_second: 10000, burst: 1000, concurrency: 8}}\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_payrun"))
        .current_dir(dir.path())
        .args(["run", "manifest.yaml", "--yes", "--state-dir", "state"])
        .env("PAYONIC_API_KEY", &key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = run.id();
    // The most items awaiting their notification at once.
    let sampler = {
        let dir = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let mut most = 0u64;
            let mut rss = 0u64;
            loop {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
                let Ok(status) = status else { break };
                if let Some(kb) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                {
                    rss = kb;
                }
                if let Ok(s) = std::fs::read(dir.join("state/bench-payonic.status.json"))
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&s)
                {
                    most = most.max(v["states"]["submitted"].as_u64().unwrap_or(0));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (most, rss)
        })
    };
    let out = run.wait_with_output().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let (most_waiting, rss_kib) = sampler.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let ledger: serde_json::Value = http::get_json(&format!(
        "{}/__sandbox/ledger",
        base.trim_end_matches("/payonic")
    ));
    let rows = ledger["entries"]
        .as_array()
        .or_else(|| ledger.as_array())
        .map(Vec::len)
        .unwrap_or(0);
    let _ = sandbox.kill();
    let _ = sandbox.wait();
    let (requests, commits) = common::summary_numbers(&stdout).unwrap_or((0, 0));
    println!(
        "payonic refunds: {items} items in {secs:.2} s = {:.0} items/s (notifications 50-500 ms after each request, concurrency 8)",
        items as f64 / secs
    );
    println!(
        "  most awaiting a notification at once: {most_waiting} (the concurrency cap is 8); {:.2} requests and {:.3} commits per item; peak RSS {}",
        requests as f64 / items as f64,
        commits as f64 / items as f64,
        common::mb(rss_kib)
    );
    println!("  ledger rows: {rows} for {items} items");
    assert_eq!(rows, items, "every payment refunded exactly once");
    println!("{}", stdout.trim());
}

mod http {
    /// A GET with std only (the bench needs one request).
    pub fn get_json(url: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut c = std::net::TcpStream::connect(host).unwrap();
        write!(
            c,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
    }
}

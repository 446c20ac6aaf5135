//! Payonic batches driven by the real binary against a `payrun sandbox` process: the batch
//! files, the commands, and the judges (the report, the sandbox's ledger).

#![allow(dead_code)]

use super::run::*;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A refund batch of `n` items against generated captured payments `rf00000001…`, with
/// payrun's listener on `port`.
pub fn refunds(dir: &std::path::Path, sb: &Sandbox, n: usize, port: u16) {
    let mut csv = String::from("payment,amount,currency\n");
    for i in 1..=n {
        csv.push_str(&format!("rf{i:08},{}.{:02},DKK\n", 10 + i % 50, i % 100));
    }
    std::fs::write(dir.join("refunds.csv"), csv).unwrap();
    std::fs::write(
        dir.join("manifest.yaml"),
        format!(
            "batch: refunds-test\nprovider: payonic\nenvironment: {}/payonic\ncredentials:\n  api_key: PAYONIC_API_KEY\nitems:\n  source: refunds.csv\n  columns: {{id: payment, paymentid: payment, amount: amount, currency: currency}}\npreflight:\n  - id: health\n    op: health\nflow:\n  - op: refund\n    payload:\n      paymentid: ${{item.paymentid}}\n      amount: ${{item.amount}}\n      currency: ${{item.currency}}\nnotifications:\n  listen: 127.0.0.1:{port}\n  public_url: http://127.0.0.1:{port}\nlimits: {{requests_per_second: 200, burst: 50, concurrency: 8}}\n",
            sb.root
        ),
    )
    .unwrap();
}

pub fn payrun(dir: &std::path::Path, sb: &Sandbox, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrun"));
    cmd.current_dir(dir)
        .args(args)
        .env("PAYONIC_API_KEY", &sb.payonic_key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// POSTs JSON to payrun's listener; the HTTP status.
pub fn post(port: u16, path: &str, body: &Value) -> Option<u16> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = body.to_string();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    c.read_to_string(&mut answer).ok()?;
    answer.split(' ').nth(1)?.parse().ok()
}

/// Runs `cmd` and insists on exit 0 (showing its stderr otherwise).
pub fn succeeds(mut cmd: Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn report(dir: &std::path::Path, sb: &Sandbox) -> Vec<csv::StringRecord> {
    let out = payrun(dir, sb, &["report", "refunds-test", "--state-dir", "state"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    csv::Reader::from_reader(out.stdout.as_slice())
        .records()
        .map(Result::unwrap)
        .collect()
}

/// Every item paid (refunded or paid out) once: one ledger row per payment, none twice.
pub fn each_paid_once(sb: &Sandbox, n: usize) {
    let ledger = sb.ledger();
    let mut by_payment: std::collections::HashMap<String, usize> = Default::default();
    for row in &ledger.0 {
        if row["provider"] == "payonic" {
            let key = row["key"].as_str().unwrap_or("");
            let payment = key.split('/').next().unwrap_or("").to_string();
            *by_payment.entry(payment).or_default() += 1;
        }
    }
    // The generated payments were captured when the sandbox started (no ledger rows): every
    // row is a refund.
    assert_eq!(by_payment.len(), n, "refunded payments: {by_payment:?}");
    assert!(
        by_payment.values().all(|&c| c == 1),
        "a payment refunded twice: {by_payment:?}"
    );
}

pub fn sandbox_with_payments(n: usize, faults: &[&str], delay: &str) -> Sandbox {
    sandbox_with(n, faults, delay, &[])
}

/// As `sandbox_with_payments`, with more lines of the sandbox config's `payonic:` section.
pub fn sandbox_with(n: usize, faults: &[&str], delay: &str, payonic: &[&str]) -> Sandbox {
    let mut spec = sandbox()
        .payonic(&format!(
            "generate: {{prefix: rf, count: {n}, amount: 100000, currency: DKK, state: captured}}"
        ))
        .payonic(&format!("notify_delay_min: {delay}"))
        .payonic(&format!("notify_delay_max: {delay}"));
    for line in payonic {
        spec = spec.payonic(line);
    }
    for f in faults {
        spec = spec.fault(f);
    }
    spec.start()
}

/// A payout batch of `n` items against generated payments `rf00000001…`.
pub fn payouts(dir: &std::path::Path, sb: &Sandbox, n: usize, port: u16) {
    let mut csv = String::from("player,paymentid,amount,currency,email\n");
    for i in 1..=n {
        csv.push_str(&format!(
            "P{i:04},rf{i:08},{}.{:02},DKK,p{i}@example.com\n",
            20 + i % 30,
            i % 100
        ));
    }
    std::fs::write(dir.join("payouts.csv"), csv).unwrap();
    std::fs::write(
        dir.join("manifest.yaml"),
        format!(
            "batch: refunds-test\nprovider: payonic\nenvironment: {}/payonic\ncredentials:\n  api_key: PAYONIC_API_KEY\nitems:\n  source: payouts.csv\n  columns: {{id: player, paymentid: paymentid, amount: amount, currency: currency, email: email}}\nflow:\n  - op: payout\n    payload:\n      paymentid: ${{item.paymentid}}\n      amount: ${{item.amount}}\n      currency: ${{item.currency}}\n      email: ${{item.email}}\nnotifications:\n  listen: 127.0.0.1:{port}\n  public_url: http://127.0.0.1:{port}\nlimits: {{requests_per_second: 200, burst: 50, concurrency: 8}}\n{}",
            sb.root,
            "retry: {initial_interval: 20ms, max_interval: 200ms, max_attempts: 30}\n"
        ),
    )
    .unwrap();
}

pub const RUN: [&str; 7] = [
    "run",
    "manifest.yaml",
    "--yes",
    "--state-dir",
    "state",
    "--time-scale",
    "1000",
];
pub const RESUME: [&str; 6] = [
    "resume",
    "refunds-test",
    "--state-dir",
    "state",
    "--time-scale",
    "1000",
];

/// The batch's notification token, as payrun derives it (the path its listener takes).
pub fn token(sb: &Sandbox, batch: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"payrun/notify-token/v1\x1f")
        .chain_update(batch.as_bytes())
        .chain_update(b"\x1f")
        .chain_update(sb.payonic_key.as_bytes())
        .finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Asks the sandbox's Payment API about `payment` and returns the answer it posts.
pub fn payment_listing(sb: &Sandbox, payment: &str) -> Value {
    // A sandbox with faults may lose the request or its answer: asked again, a few times.
    for _ in 0..20 {
        if let Some(v) = try_payment_listing(sb, payment) {
            return v;
        }
    }
    panic!("the Payment API did not list {payment} in 20 tries");
}

fn try_payment_listing(sb: &Sandbox, payment: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = json!({"notificationurl": format!("http://127.0.0.1:{port}/listing")}).to_string();
    let root = sb.root.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(root).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET /payonic/api/{payment}/payment HTTP/1.1\r\nHost: {root}\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        sb.payonic_key,
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    if !answer.starts_with("HTTP/1.1 200") {
        return None;
    }
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return None,
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if rest.len() >= len {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                return serde_json::from_str(&rest[..len]).ok();
            }
        }
        if n == 0 {
            return None;
        }
    }
}

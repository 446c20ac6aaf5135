//! `payrun sandbox` as a user runs it: the real binary on a free port, its printed base URL and
//! credentials used by a signed client, the ledger read over HTTP; and its refusals of a bad
//! configuration (exit 2).

mod support;

use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::paysend::{Client, to_account};

/// The running binary; killed when dropped, whether the test passed or not.
struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrun"));
    cmd.current_dir(support::root()).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PAYSEND_") || k == "PAYRUN_SCHEMAS" || k == "PAYRUN_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// What the sandbox prints on start.
#[derive(Debug, Default)]
struct Banner {
    root: String,
    paysend: String,
    partner_id: String,
    inbound_key: String,
    outbound_key: String,
}

/// Starts the sandbox and reads its banner (bounded: 20 s).
fn start(args: &[&str]) -> (Running, Banner) {
    let mut child = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("payrun starts");
    let stdout = child.stdout.take().unwrap();
    let running = Running { child };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut b = Banner::default();
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no complete banner ({e}); got {seen:#?}"));
        seen.push(line.clone());
        let value = |prefix: &str| {
            line.trim()
                .strip_prefix(prefix)
                .map(|v| v.trim().to_string())
        };
        if let Some(v) = value("payrun sandbox listening on") {
            b.root = v;
        } else if let Some(v) = value("paysend:") {
            b.paysend = v;
        } else if let Some(v) = value("partner_id:") {
            b.partner_id = v;
        } else if let Some(v) = value("inbound_key:") {
            b.inbound_key = v;
        } else if let Some(v) = value("outbound_key:") {
            b.outbound_key = v;
        } else if line.starts_with("ledger:") {
            break;
        }
    }
    for (name, v) in [
        ("root", &b.root),
        ("paysend", &b.paysend),
        ("partner_id", &b.partner_id),
        ("inbound_key", &b.inbound_key),
        ("outbound_key", &b.outbound_key),
    ] {
        assert!(!v.is_empty(), "{name} missing from the banner: {seen:#?}");
    }
    (running, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_a_signed_payout_and_its_ledger() {
    let (_running, b) = start(&[
        "sandbox",
        "--listen",
        "127.0.0.1:0",
        "--seed",
        "3",
        "--time-scale",
        "1000",
    ]);
    assert!(
        b.root.starts_with("http://127.0.0.1:") && !b.root.ends_with(":0"),
        "a real port: {}",
        b.root
    );
    assert_eq!(b.paysend, format!("{}/paysend", b.root));
    let c = Client {
        base: b.paysend.clone(),
        root: b.root.clone(),
        key: b.inbound_key.clone(),
        partner: b.partner_id.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    let body = c.envelope("cli-1", json!([to_account("cli-inv-1", "12.34", "EUR")]));
    let a = c.post(&body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let gid = a.json()["header"]["response"]["globalId"]
        .as_str()
        .unwrap()
        .to_string();

    // At 1000× the payout finishes within a few real milliseconds: poll, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = c.status(&gid).await.json();
        if s["result"]["status"] == "Finished" {
            assert_eq!(
                s["payload"]["tasks"][0]["result"]["status"], "Success",
                "{s}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never finished: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let ledger = c.ledger().await;
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    let e = &ledger[0];
    assert_eq!(e["provider"], "paysend");
    assert_eq!(e["key"], "cli-inv-1");
    assert_eq!(e["request_id"], "cli-1");
    assert_eq!(e["operation"], "pay.toAccount");
    assert_eq!(e["amount"], "12.34");
    assert_eq!(e["currency"], "EUR");
    let counters = c.counters().await;
    assert_eq!(counters["payments"], 1);
    assert_eq!(counters["requests"]["POST /paysend/processing 200"], 1);

    // A request signed with the outbound key (the wrong one) is refused.
    let bytes =
        serde_json::to_vec(&c.envelope("cli-2", json!([to_account("cli-inv-2", "1", "EUR")])))
            .unwrap();
    let wrong = support::paysend::sign(&bytes, &b.outbound_key);
    assert_eq!(c.post_raw(bytes, Some(wrong)).await.unwrap().status, 401);
}

#[test]
fn an_unknown_key_in_the_config_exits_2_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandbox.yaml");
    std::fs::write(&path, "seed: 3\ntime_scale: 100\npaysend:\n  partner_id: acme\n  inbound_key: k\n  webhook_urll: http://127.0.0.1:9/hook\n").unwrap();
    let out = command(&[
        "sandbox",
        "--listen",
        "127.0.0.1:0",
        "--config",
        path.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("webhook_urll"), "names the key: {stderr}");
    assert!(stderr.contains("sandbox.yaml:6"), "names line 6: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "never started"
    );
}

#[test]
fn a_zero_time_scale_exits_2() {
    let out = command(&["sandbox", "--listen", "127.0.0.1:0", "--time-scale", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("time_scale"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "never started"
    );
}

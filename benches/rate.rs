//! Rate-limit fidelity: `payrun run` configured at R requests/s (default 200) against a sandbox
//! process that enforces the same limit, for about `--seconds S` (default 20). Prints the
//! achieved request rate as a share of R and the sandbox's rate-limit refusals (target: ≥ 98%
//! and none). Run with `cargo bench --bench rate -- --rate 200 --seconds 20`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

fn main() {
    let (mut rate, mut seconds) = (200u32, 20u32);
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--rate" => rate = w[1].parse().expect("--rate N"),
            "--seconds" => seconds = w[1].parse().expect("--seconds N"),
            _ => {}
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sandbox.yaml");
    std::fs::write(
        &cfg,
        format!("paysend:\n  rate_limit: {{requests_per_second: {rate}, burst: 10}}\n"),
    )
    .unwrap();
    let mut sb = Command::new(env!("CARGO_BIN_EXE_payrun"))
        .args([
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--time-scale",
            "1000",
            "--config",
        ])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut base = String::new();
    for line in BufReader::new(sb.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if let Some(u) = line.strip_prefix("paysend: ") {
            base = u.trim().to_string();
            break;
        }
    }
    // One item per request; the run also polls each request once, so items ≈ requests / 2.
    let items = (rate * seconds / 2) as usize;
    let mut csv =
        std::io::BufWriter::new(std::fs::File::create(dir.path().join("employees.csv")).unwrap());
    writeln!(
        csv,
        "employee_id,first_name,last_name,email,street,city,country,iban,bic,net_pay,currency"
    )
    .unwrap();
    for i in 0..items {
        // Every item its own account: the same one paid twice is refused as a double payment.
        let iban = common::iban(i);
        writeln!(csv, "E{i:07},Anna,Muller,anna@acme.example,Torstrasse 1,Berlin,DE,{iban},COBADEFFXXX,100.00,EUR").unwrap();
    }
    csv.flush().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("batches/payroll-paysend/manifest.yaml"))
        .unwrap()
        .replace("batch: acme-payroll-2026-11", "batch: bench-rate")
        .replace("environment: sandbox", &format!("environment: {base}"))
        .replace(
            "requests_per_second: 5",
            &format!("requests_per_second: {rate}"),
        )
        .replace("burst: 5", "burst: 10")
        .replace("concurrency: 4", "concurrency: 32")
        .replace("tasks_per_request: 10 ", "tasks_per_request: 1 ");
    std::fs::write(dir.path().join("manifest.yaml"), manifest).unwrap();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_payrun"))
        .current_dir(dir.path())
        .args([
            "run",
            "manifest.yaml",
            "--yes",
            "--state-dir",
            "state",
            "--time-scale",
            "1000",
        ])
        .env("PAYSEND_PARTNER_ID", "payrun-sandbox")
        .env("PAYSEND_INBOUND_KEY", "sandbox-inbound-key")
        .env("PAYSEND_OUTBOUND_KEY", "sandbox-outbound-key")
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let root_url = base.trim_end_matches("/paysend");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let counters: serde_json::Value = rt.block_on(async {
        reqwest::get(format!("{root_url}/__sandbox/counters"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let _ = sb.kill();
    let _ = sb.wait();
    let requests: u64 = counters["requests"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() {
        eprintln!(
            "payrun run exited with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!(
        "configured {rate} req/s; {requests} requests in {secs:.1} s = {:.1} req/s ({:.1}% of the limit); rate-limit refusals: {}; payments: {}",
        requests as f64 / secs,
        100.0 * requests as f64 / secs / rate as f64,
        counters["rate_limited"],
        counters["payments"]
    );
}

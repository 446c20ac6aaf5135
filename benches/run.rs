//! Throughput of `payrun run --sandbox`: a generated payroll of N items (default 10,000) paid
//! against the embedded sandbox at a high configured rate, reporting items/s, requests and
//! commits per item, and checking every item was paid. Run with
//! `cargo bench --bench run -- --items N`. Prints figures; asserts nothing about time.

use std::io::Write;
use std::process::Command;
use std::time::Instant;

fn main() {
    let mut items: usize = 10_000;
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        if w[0] == "--items" {
            items = w[1].parse().expect("--items N");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut csv =
        std::io::BufWriter::new(std::fs::File::create(dir.path().join("employees.csv")).unwrap());
    writeln!(
        csv,
        "employee_id,first_name,last_name,email,street,city,country,iban,bic,net_pay,currency"
    )
    .unwrap();
    for i in 0..items {
        writeln!(csv, "E{i:07},Anna,Muller,anna{}@acme.example,Torstrasse {},Berlin,DE,DE89370400440532013000,COBADEFFXXX,{}.{:02},EUR", i % 1000, i % 200 + 1, 100 + i % 900, i % 100).unwrap();
    }
    csv.flush().unwrap();
    let manifest =
        std::fs::read_to_string(root.join("batches/payroll-paysend/manifest.yaml")).unwrap();
    let manifest = manifest
        .replace("batch: acme-payroll-2026-11", "batch: bench-run")
        .replace("requests_per_second: 5", "requests_per_second: 2000")
        .replace("burst: 5", "burst: 100")
        .replace("concurrency: 4", "concurrency: 16")
        .replace("tasks_per_request: 10 ", "tasks_per_request: 20 ")
        .replace("    department: department\n", "");
    std::fs::write(dir.path().join("manifest.yaml"), manifest).unwrap();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_payrun"))
        .current_dir(dir.path())
        .args([
            "run",
            "manifest.yaml",
            "--sandbox",
            // payrun's own throughput, as before the sandbox kept a state file.
            "--sandbox-in-memory",
            "--yes",
            "--state-dir",
            "state",
            "--time-scale",
            "1000",
        ])
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{items} items: {items} paid")),
        "{stdout}"
    );
    println!(
        "payrun run --sandbox: {items} items in {secs:.2} s = {:.0} items/s (validation, store and sandbox included)",
        items as f64 / secs
    );
    println!("{}", stdout.trim());
}

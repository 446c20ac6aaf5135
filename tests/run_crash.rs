//! `payrun run` against a sandbox process, killed with SIGKILL mid-run and resumed: every item
//! is paid exactly once, even with answers lost after the provider committed (in doubt).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A run of the test batch with a state folder of its own, provider time 1000× faster.
const RUN: [&str; 7] = [
    "run",
    "manifest.yaml",
    "--yes",
    "--state-dir",
    "state",
    "--time-scale",
    "1000",
];
const RESUME: [&str; 6] = [
    "resume",
    "acme-payroll-2026-11",
    "--state-dir",
    "state",
    "--time-scale",
    "1000",
];

/// Kills the process when dropped, so no test leaves one behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct SandboxProcess {
    _child: Killed,
    base: String,
    partner: String,
    key: String,
}

fn start_sandbox(faults: &[&str]) -> SandboxProcess {
    start_sandbox_with(faults, None)
}

fn start_sandbox_with(faults: &[&str], config: Option<&Path>) -> SandboxProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrun"));
    cmd.args([
        "sandbox",
        "--listen",
        "127.0.0.1:0",
        "--seed",
        "5",
        "--time-scale",
        "1000",
    ]);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    for f in faults {
        cmd.args(["--fault", f]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (mut base, mut partner, mut key) = (String::new(), String::new(), String::new());
    for line in out.lines().map_while(Result::ok) {
        if let Some(u) = line.strip_prefix("paysend: ") {
            base = u.trim().to_string();
        } else if let Some(p) = line.trim().strip_prefix("partner_id:") {
            partner = p.trim().to_string();
        } else if let Some(k) = line.trim().strip_prefix("inbound_key:") {
            key = k.trim().to_string();
        } else if line.starts_with("ledger:") {
            break;
        }
    }
    assert!(!base.is_empty(), "the sandbox printed its URL");
    SandboxProcess {
        _child: Killed(child),
        base,
        partner,
        key,
    }
}

fn payrun(dir: &Path, sb: &SandboxProcess, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrun"));
    cmd.current_dir(dir)
        .args(args)
        .env("PAYSEND_PARTNER_ID", &sb.partner)
        .env("PAYSEND_INBOUND_KEY", &sb.key)
        .env("PAYSEND_OUTBOUND_KEY", "unused");
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// The payroll example pointed at the sandbox, in small packs at a modest rate so a run lasts
/// long enough to be killed in the middle.
fn batch_for(sb: &SandboxProcess) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("batches/payroll-paysend");
    std::fs::copy(src.join("employees.csv"), dir.path().join("employees.csv")).unwrap();
    let m = std::fs::read_to_string(src.join("manifest.yaml")).unwrap();
    let m = m
        .replace("environment: sandbox", &format!("environment: {}", sb.base))
        .replace("requests_per_second: 5", "requests_per_second: 20")
        .replace("burst: 5", "burst: 1")
        .replace("tasks_per_request: 10 ", "tasks_per_request: 2 ");
    std::fs::write(dir.path().join("manifest.yaml"), m).unwrap();
    dir
}

fn ledger(sb: &SandboxProcess) -> Vec<Value> {
    let root = sb.base.trim_end_matches("/paysend");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::get(format!("{root}/__sandbox/ledger"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    })
}

fn wait_exit(mut child: Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("payrun did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_each_employee_paid_once(sb: &SandboxProcess) {
    let entries = ledger(sb);
    let mut keys: Vec<&str> = entries.iter().map(|e| e["key"].as_str().unwrap()).collect();
    keys.sort_unstable();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "a key was paid twice");
    let csv = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("batches/payroll-paysend/employees.csv"),
    )
    .unwrap();
    let ids: Vec<String> = csv
        .lines()
        .filter_map(|l| l.split(',').next())
        .filter(|c| c.starts_with('E') && c.len() == 6)
        .map(String::from)
        .collect();
    assert_eq!(ids.len(), 50);
    for id in ids {
        let k = payrun::keys::item_key("acme-payroll-2026-11", &id);
        assert!(keys.contains(&k.as_str()), "{id} was not paid");
    }
    assert_eq!(n, 50);
}

#[test]
fn a_run_killed_mid_batch_and_resumed_pays_every_item_exactly_once() {
    let sb = start_sandbox(&["drop_after_commit_rate=0.2"]);
    let dir = batch_for(&sb);
    let run = payrun(dir.path(), &sb, &RUN).spawn().unwrap();
    // Kill it once payments are under way (not at a fixed time: the run's pace depends on the
    // faults it meets).
    let deadline = Instant::now() + Duration::from_secs(20);
    while ledger(&sb).len() < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut run = Killed(run);
    run.0.kill().unwrap(); // SIGKILL: no chance to clean up
    let _ = run.0.wait();
    let paid_before = ledger(&sb).len();
    assert!(
        paid_before > 0 && paid_before < 50,
        "killed mid-run ({paid_before} paid)"
    );
    let resume = payrun(dir.path(), &sb, &RESUME).spawn().unwrap();
    assert_eq!(wait_exit(resume, Duration::from_secs(60)), 0);
    assert_each_employee_paid_once(&sb);
}

#[test]
fn a_second_runner_for_the_same_batch_is_refused_with_who_holds_it() {
    let sb = start_sandbox(&[]);
    let dir = batch_for(&sb);
    let args = RUN;
    let first = Killed(payrun(dir.path(), &sb, &args).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let second = payrun(dir.path(), &sb, &args)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains(&format!("is being run by pid {}", first.0.id())),
        "{said}"
    );
    drop(first);
    // The killed holder's lock is stale: the batch resumes without `unlock`.
    let resume = payrun(dir.path(), &sb, &RESUME).spawn().unwrap();
    assert_eq!(wait_exit(resume, Duration::from_secs(60)), 0);
    assert_each_employee_paid_once(&sb);
}

#[test]
fn an_item_changed_after_the_batch_started_is_refused_on_resume() {
    let sb = start_sandbox(&[]);
    let dir = batch_for(&sb);
    let run = payrun(dir.path(), &sb, &RUN).spawn().unwrap();
    assert_eq!(wait_exit(run, Duration::from_secs(60)), 0);
    let csv = dir.path().join("employees.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, text.replacen("COBADEFFXXX", "DEUTDEFFXXX", 1)).unwrap();
    let out = payrun(
        dir.path(),
        &sb,
        &["run", "manifest.yaml", "--yes", "--state-dir", "state"],
    )
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed since the batch started"));
    assert_each_employee_paid_once(&sb);
}

#[test]
fn a_row_changed_while_the_run_sends_stops_it_before_that_row_is_sent_and_a_resume_pays_everyone_once()
 {
    // Requests are rendered when they are sent, from the row read again: a row changed in the
    // meantime must never go out as it now reads.
    let sb = start_sandbox(&[]);
    let dir = batch_for(&sb);
    let manifest = dir.path().join("manifest.yaml");
    let m = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        m.replace("requests_per_second: 20", "requests_per_second: 4"),
    )
    .unwrap();
    let run = payrun(dir.path(), &sb, &RUN)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ledger(&sb).len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let csv = dir.path().join("employees.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    // The last row, the last to be sent: another amount, the same length.
    std::fs::write(&csv, text.replace("6393.52,GBP", "9393.52,GBP")).unwrap();
    let out = run.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("error[run.source]"), "{said}");
    assert!(said.contains("no longer holds item E01050"), "{said}");
    let paid = ledger(&sb);
    let changed = payrun::keys::item_key("acme-payroll-2026-11", "E01050");
    assert!(paid.len() < 50, "stopped before the end");
    assert!(
        paid.iter().all(|e| e["key"] != changed.as_str()),
        "the changed row was not sent"
    );
    // Put back, the batch goes on and ends with everyone paid once.
    std::fs::write(&csv, text).unwrap();
    let resume = payrun(dir.path(), &sb, &RESUME).spawn().unwrap();
    assert_eq!(wait_exit(resume, Duration::from_secs(60)), 0);
    assert_each_employee_paid_once(&sb);
}

#[test]
fn status_and_report_work_during_a_run_from_another_process_and_after_it() {
    let sb = start_sandbox(&[]);
    let dir = batch_for(&sb);
    let run = payrun(dir.path(), &sb, &RUN).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let during = payrun(
        dir.path(),
        &sb,
        &[
            "status",
            "acme-payroll-2026-11",
            "--state-dir",
            "state",
            "--format",
            "json",
        ],
    )
    .stdout(Stdio::piped())
    .output()
    .unwrap();
    assert_eq!(during.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&during.stdout).unwrap();
    assert_eq!(v["items"], 50);
    assert!(v["running"]["pid"].is_u64(), "{v}");
    let report_during = payrun(
        dir.path(),
        &sb,
        &["report", "acme-payroll-2026-11", "--state-dir", "state"],
    )
    .stdout(Stdio::piped())
    .output()
    .unwrap();
    assert_eq!(
        report_during.status.code(),
        Some(0),
        "the running process answers for its records"
    );
    let rows = String::from_utf8_lossy(&report_during.stdout)
        .lines()
        .count();
    assert_eq!(rows, 51, "a header and one row per item, during the run");
    assert_eq!(wait_exit(run, Duration::from_secs(60)), 0);
    let after = payrun(
        dir.path(),
        &sb,
        &[
            "status",
            "acme-payroll-2026-11",
            "--state-dir",
            "state",
            "--format",
            "json",
        ],
    )
    .stdout(Stdio::piped())
    .output()
    .unwrap();
    let v: Value = serde_json::from_slice(&after.stdout).unwrap();
    assert!(v["running"].is_null());
    assert_eq!(v["states"]["paid"], 50);
    let report = payrun(
        dir.path(),
        &sb,
        &[
            "report",
            "acme-payroll-2026-11",
            "--state-dir",
            "state",
            "-o",
            "results.csv",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(report.status.code(), Some(0));
    let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 51);
    assert!(csv.lines().skip(1).all(|l| l.contains(",paid,")));
    let employees = std::fs::read_to_string(dir.path().join("employees.csv")).unwrap();
    for iban in employees
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(7))
        .filter(|c| c.len() > 15)
    {
        assert!(
            !csv.contains(iban),
            "the report shows the account number {iban}"
        );
    }
    let state_files: Vec<u8> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .flatten()
        .flat_map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    let state_text = String::from_utf8_lossy(&state_files);
    for iban in employees
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(7))
        .filter(|c| c.len() > 15)
    {
        assert!(
            !state_text.contains(iban),
            "the state store holds the account number {iban}"
        );
    }
}

#[test]
fn a_balance_below_the_batch_total_stops_the_run_before_any_payout() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("sandbox.yaml");
    std::fs::write(
        &cfg,
        "paysend:\n  balances:\n    EUR: \"1000.00\"\n    GBP: \"1000000.00\"\n",
    )
    .unwrap();
    let sb = start_sandbox_with(&[], Some(&cfg));
    let dir = batch_for(&sb);
    let out = payrun(dir.path(), &sb, &RUN)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("EUR: balance 1000") && said.contains("nothing was sent"),
        "{said}"
    );
    assert!(ledger(&sb).is_empty());
}

#[test]
fn forged_and_duplicated_webhooks_change_nothing_and_polling_still_finishes_the_batch() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("sandbox.yaml");
    std::fs::write(&cfg, format!("paysend:\n  outbound_key: hook-key\n  webhook_url: http://127.0.0.1:{port}/paysend/webhook\n")).unwrap();
    let sb = start_sandbox_with(
        &[
            "webhook_bad_signature_rate=0.5",
            "webhook_duplicate_rate=0.5",
        ],
        Some(&cfg),
    );
    let dir = batch_for(&sb);
    let manifest = dir.path().join("manifest.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replace(
        "notifications:\n  mode: polling",
        &format!(
            "notifications:\n  listen: 127.0.0.1:{port}\n  public_url: http://127.0.0.1:{port}"
        ),
    );
    std::fs::write(&manifest, text).unwrap();
    let mut cmd = payrun(dir.path(), &sb, &RUN);
    cmd.env("PAYSEND_OUTBOUND_KEY", "hook-key");
    let run = cmd.spawn().unwrap();
    assert_eq!(wait_exit(run, Duration::from_secs(60)), 0);
    assert_each_employee_paid_once(&sb);
}

#[test]
fn every_documented_pay_to_account_error_ends_in_the_right_state() {
    // The Mock Service declines a payout whose transferAmount is an error code (L452-471).
    let sb = start_sandbox(&[]);
    let dir = tempfile::tempdir().unwrap();
    let codes = [
        1000, 2000, 3008, 4003, 4006, 4007, 4008, 4009, 4010, 4011, 4012, 4013, 4014, 4015, 4016,
        4017, 4018, 9999,
    ];
    let mut items = String::new();
    for (i, c) in codes.iter().enumerate() {
        items.push_str(&format!("    - {{id: T{i:02}, amount: \"{c}\"}}\n"));
    }
    items.push_str("    - {id: OK1, amount: \"12.34\"}\n");
    let manifest = format!(
        "batch: error-table-{}\nprovider: paysend\nenvironment: {}\ncredentials:\n  partner_id: PAYSEND_PARTNER_ID\n  inbound_key: PAYSEND_INBOUND_KEY\n  outbound_key: PAYSEND_OUTBOUND_KEY\nitems:\n  inline:\n{items}defaults:\n  company: {{type: LegalEntity, name: ACME, address: {{addressLine1: Main 1, city: Berlin, country: DE}}}}\nflow:\n  - op: pay.toAccount\n    payload:\n      transferAmount: ${{item.amount}}\n      transferCurrency: EUR\n      purposeOfPayment: Salary\n      from: {{sender: \"${{item.company}}\"}}\n      to:\n        destinationTransactionInstrument: {{identifierType: IBAN, accountIdentifier: DE89370400440532013000, bic: COBADEFFXXX, country: DE}}\n        recipient: {{type: Individual, firstName: Anna, lastName: Muller, address: {{addressLine1: Main 2, city: Berlin, country: DE}}}}\nlimits: {{requests_per_second: 100, burst: 20, tasks_per_request: 5}}\n",
        std::process::id(),
        sb.base
    );
    std::fs::write(dir.path().join("manifest.yaml"), manifest).unwrap();
    let out = payrun(dir.path(), &sb, &RUN)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "items failed or need review: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batch = format!("error-table-{}", std::process::id());
    let out = payrun(dir.path(), &sb, &["report", &batch, "--state-dir", "state"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout).to_string();
    let row = |id: &str| {
        csv.lines()
            .find(|l| l.starts_with(&format!("{id},")))
            .unwrap_or_else(|| panic!("no row for {id}:\n{csv}"))
            .to_string()
    };
    for (i, c) in codes.iter().enumerate() {
        let r = row(&format!("T{i:02}"));
        let cells: Vec<&str> = r.split(',').collect();
        let want = if *c == 9999 { "needs_review" } else { "failed" };
        assert_eq!((cells[2], cells[5]), (want, c.to_string().as_str()), "{r}");
    }
    assert!(row("OK1").contains(",paid,"));
    assert_eq!(ledger(&sb).len(), 1, "only the ordinary payout moved money");
}

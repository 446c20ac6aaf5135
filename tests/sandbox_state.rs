//! The sandbox's state file: a rehearsal (`run --sandbox`, killed, `resume --sandbox`) meets
//! the provider that saw the first run, `payrun sandbox --state F` killed with SIGKILL comes
//! back with its ledger (a torn last line tolerated), `payrun sandbox ledger|counters --state`
//! read the file, and `run --sandbox --sandbox-config` starts from the configured balances.
//! Real binary, 127.0.0.1 only, every process bounded in time and killed when its test ends.

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::paysend::{Client, to_account};

const BATCH: &str = "acme-payroll-2026-11";

/// A child process that is killed (SIGKILL) and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Killed {
    /// Waits for the process to end by itself, at most `limit`.
    fn wait_for(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "payrun did not finish in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn payrun(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrun"));
    cmd.current_dir(dir).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PAYSEND_") || k.starts_with("PAYRUN_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs to the end (bounded): exit status, stdout, stderr.
fn output(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Killed(
        payrun(dir, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.0.stdout.take().unwrap()));
    let err = read(Box::new(child.0.stderr.take().unwrap()));
    let status = child.wait_for(Duration::from_secs(60));
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

/// The payroll example in a folder of its own, in packs of two at a modest rate so that a run
/// lasts long enough to be killed in the middle.
fn payroll() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = support::root().join("batches/payroll-paysend");
    std::fs::copy(src.join("employees.csv"), dir.path().join("employees.csv")).unwrap();
    let m = std::fs::read_to_string(src.join("manifest.yaml"))
        .unwrap()
        .replace("requests_per_second: 5", "requests_per_second: 20")
        .replace("burst: 5", "burst: 1")
        .replace("tasks_per_request: 10 ", "tasks_per_request: 2 ");
    std::fs::write(dir.path().join("manifest.yaml"), m).unwrap();
    dir
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state").join(format!("{BATCH}.sandbox"))
}

/// `payrun sandbox ledger --state F --format json`.
fn ledger_of(file: &Path) -> Value {
    let (code, out, err) = output(
        Path::new("."),
        &[
            "sandbox",
            "ledger",
            "--state",
            file.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap()
}

fn counters_of(file: &Path) -> Value {
    let (code, out, err) = output(
        Path::new("."),
        &["sandbox", "counters", "--state", file.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap()
}

/// The report's rows by idempotency key.
fn report_by_key(dir: &Path) -> std::collections::HashMap<String, (String, String)> {
    let (code, out, err) = output(dir, &["report", BATCH, "--state-dir", "state"]);
    assert_eq!(code, Some(0), "{err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (key, state, payment) = (col("idempotency_key"), col("state"), col("payment_id"));
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (
                cells[key].to_string(),
                (cells[state].to_string(), cells[payment].to_string()),
            )
        })
        .collect()
}

#[test]
fn a_sandbox_rehearsal_remembers_what_it_paid_across_a_kill() {
    let dir = payroll();
    let run = [
        "run",
        "manifest.yaml",
        "--sandbox",
        "--yes",
        "--state-dir",
        "state",
        "--time-scale",
        "1000",
    ];
    // Killed (SIGKILL, sandbox and all) once the provider answered a pack the run has not
    // recorded: its items are in doubt.
    let mut killed = Killed(
        payrun(dir.path(), &run)
            .env("PAYRUN_CRASH_AT", "after-send:5")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = killed.wait_for(Duration::from_secs(60));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "died by SIGKILL: {status:?}");
    let file = state_file(dir.path());
    let before = ledger_of(&file);
    let paid_before = before["entries"].as_array().unwrap().clone();
    assert!(
        !paid_before.is_empty() && paid_before.len() < 50,
        "killed mid-run ({} paid)",
        paid_before.len()
    );

    let started = Instant::now();
    let (code, _, err) = output(
        dir.path(),
        &[
            "resume",
            BATCH,
            "--sandbox",
            "--state-dir",
            "state",
            "--time-scale",
            "1000",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("sandbox: continues"),
        "the resume met the same provider: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    let after = ledger_of(&file);
    assert_eq!(after["movements"], 50, "{after}");
    assert_eq!(after["keys_paid_more_than_once"], json!([]), "{after}");
    let entries = after["entries"].as_array().unwrap();
    for e in &paid_before {
        assert!(entries.contains(e), "the first run's payment {e} was kept");
    }
    let csv = std::fs::read_to_string(dir.path().join("employees.csv")).unwrap();
    for id in csv
        .lines()
        .filter_map(|l| l.split(',').next())
        .filter(|c| c.starts_with('E') && c.len() == 6)
    {
        let key = payrun::keys::item_key(BATCH, id);
        assert_eq!(
            entries.iter().filter(|e| e["key"] == key.as_str()).count(),
            1,
            "{id} paid exactly once"
        );
    }
    // What the first run paid, in doubt or not, was found by the resume — the very payment,
    // not a new one made after a lookup that a fresh provider answers "not found".
    let report = report_by_key(dir.path());
    for e in &paid_before {
        let (state, payment) = &report[e["key"].as_str().unwrap()];
        assert_eq!(state, "paid");
        assert_eq!(payment, e["payment_id"].as_str().unwrap(), "{e}");
    }
    assert_eq!(
        counters_of(&file)["duplicates_refused"],
        0,
        "nothing was offered again under a paid key"
    );

    // The human form says the same at a glance.
    let (code, out, _) = output(
        Path::new("."),
        &["sandbox", "ledger", "--state", file.to_str().unwrap()],
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        out.lines().last(),
        Some("50 movements, 0 keys paid more than once")
    );
    assert_eq!(out.lines().count(), 51);

    // No account number is written to the sandbox's state.
    let text = std::fs::read_to_string(&file).unwrap();
    for iban in ["DE89370400440532013000", "GB86BARC15102255229565"] {
        if csv.contains(iban) {
            assert!(!text.contains(iban), "the state file holds {iban}");
        }
    }
    for line in csv.lines().skip(1) {
        for cell in line.split(',') {
            let c = cell.trim_matches('"');
            let looks_like_iban = c.len() >= 15
                && c[..2].bytes().all(|b| b.is_ascii_uppercase())
                && c[2..4].bytes().all(|b| b.is_ascii_digit());
            if looks_like_iban {
                assert!(
                    !text.contains(c),
                    "the state file holds the account number {c}"
                );
            }
        }
    }
}

/// A `payrun sandbox` process and what its banner said.
struct Server {
    child: Killed,
    client: Client,
    banner: Vec<String>,
}

fn serve(state: &Path) -> Server {
    let mut child = Killed(
        payrun(
            Path::new("."),
            &[
                "sandbox",
                "--listen",
                "127.0.0.1:0",
                "--time-scale",
                "1000",
                "--state",
                state.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no complete banner ({e}): {banner:#?}"));
        banner.push(line.clone());
        if line.starts_with("ledger:") {
            break;
        }
    }
    let said = |prefix: &str| {
        banner
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {prefix} in {banner:#?}"))
    };
    let root = said("payrun sandbox listening on");
    let client = Client {
        base: said("paysend:"),
        root,
        key: said("inbound_key:"),
        partner: said("partner_id:"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    Server {
        child,
        client,
        banner,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_killed_with_sigkill_keeps_its_ledger_and_survives_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("provider.sandbox");

    let first = serve(&file);
    let c = &first.client;
    let mut globals = Vec::new();
    for i in 1..=3 {
        let body = c.envelope(
            &format!("req-{i}"),
            json!([to_account(&format!("inv-{i}"), "10.00", "EUR")]),
        );
        let a = c.post(&body).await;
        assert_eq!(a.status, 200, "{}", a.text);
        globals.push(
            a.json()["header"]["response"]["globalId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(c.ledger().await.len(), 3);
    // kill -9 right after the answers: what they reported must already be on disk.
    let mut first = first;
    first.child.0.kill().unwrap();
    first.child.0.wait().unwrap();
    // As if it had died in the middle of a write.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(br#"{"entry":{"entry":{"provider":"paysend","key":"inv-4","#)
        .unwrap();

    let second = serve(&file);
    assert!(
        second
            .banner
            .iter()
            .any(|l| l.starts_with("state:") && l.contains("torn last line")),
        "{:#?}",
        second.banner
    );
    let c = &second.client;
    let ledger = c.ledger().await;
    let keys: Vec<&str> = ledger.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["inv-1", "inv-2", "inv-3"]);
    // The restarted provider remembers: a replay gets the first answer, a new request for a
    // paid invoice is refused (3011), and task.statusGet finds the payment.
    let replay = c
        .post(&c.envelope("req-1", json!([to_account("inv-1", "10.00", "EUR")])))
        .await;
    assert_eq!(
        replay.json()["header"]["response"]["globalId"],
        globals[0].as_str()
    );
    let again = c
        .post(&c.envelope("req-1-again", json!([to_account("inv-1", "10.00", "EUR")])))
        .await;
    assert_eq!(again.task()["code"], 3011, "{}", again.text);
    // Once the propagation delay (3 min, 180 ms at 1000×) has passed since the payment, which
    // provider time counts across the restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lookup = c
        .post(&c.envelope(
            "lookup-2",
            json!([{"type": "task.statusGet", "payload": {"invoiceId": "inv-2"}}]),
        ))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let gid = lookup.json()["header"]["response"]["globalId"]
        .as_str()
        .unwrap()
        .to_string();
    loop {
        let s = c.status(&gid).await.json();
        if s["result"]["status"] == "Finished" {
            assert_eq!(
                s["payload"]["tasks"][0]["result"]["status"], "Success",
                "{s}"
            );
            assert_eq!(
                s["payload"]["tasks"][0]["result"]["data"]["invoiceId"],
                "inv-2"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the lookup never finished: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let counters = c.counters().await;
    assert_eq!(counters["replays"], 1);
    assert_eq!(counters["duplicates_refused"], 1);
    let balance = c
        .post(&c.envelope(
            "balance-1",
            json!([{"type": "getBalance", "payload": {"currency": "EUR"}}]),
        ))
        .await;
    assert_eq!(balance.status, 200);
    drop(second);

    let (code, out, _) = output(
        Path::new("."),
        &["sandbox", "ledger", "--state", file.to_str().unwrap()],
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        out.lines().last(),
        Some("3 movements, 0 keys paid more than once"),
        "{out}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains("DE89370400440532013000"),
        "an IBAN in the state file"
    );
    assert!(
        !text.contains("sandbox-inbound-key"),
        "a key in the state file"
    );

    let (code, _, err) = output(
        Path::new("."),
        &[
            "sandbox",
            "counters",
            "--state",
            dir.path().join("missing.sandbox").to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("no sandbox state at"), "{err}");
}

#[test]
fn a_rehearsal_with_a_low_sandbox_balance_is_refused_before_any_payout() {
    let dir = payroll();
    std::fs::write(
        dir.path().join("low.yaml"),
        "paysend:\n  balances:\n    EUR: \"1000.00\"\n    GBP: \"1000000.00\"\n",
    )
    .unwrap();
    let run = [
        "run",
        "manifest.yaml",
        "--sandbox",
        "--sandbox-config",
        "low.yaml",
        "--yes",
        "--state-dir",
        "state",
        "--time-scale",
        "1000",
    ];
    let (code, _, err) = output(dir.path(), &run);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("EUR: balance 1000") && err.contains("nothing was sent"),
        "{err}"
    );
    let file = state_file(dir.path());
    assert_eq!(ledger_of(&file)["movements"], 0);

    // What the provider remembers wins over a configuration given later: still 1000 EUR.
    std::fs::write(
        dir.path().join("rich.yaml"),
        "paysend:\n  balances:\n    EUR: \"9000000.00\"\n    GBP: \"1000000.00\"\n",
    )
    .unwrap();
    let (code, _, err) = output(
        dir.path(),
        &[
            "resume",
            BATCH,
            "--sandbox",
            "--sandbox-config",
            "rich.yaml",
            "--state-dir",
            "state",
            "--time-scale",
            "1000",
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("EUR: balance 1000"), "{err}");
    assert_eq!(ledger_of(&file)["movements"], 0);

    // --sandbox-config without --sandbox is a usage error.
    let (code, _, err) = output(
        dir.path(),
        &[
            "run",
            "manifest.yaml",
            "--sandbox-config",
            "low.yaml",
            "--yes",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
}

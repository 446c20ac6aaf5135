//! Regression of issue 12, "the lock": of runners starting together over a stale lock, 1 in 15
//! times two believed they held the batch (the loser deleted the winner's lock). Here separate
//! processes race over a stale lock, round after round: exactly one wins each round, and the
//! lock in place is the winner's for as long as it runs.
//!
//! The racers are this test binary started again (`a_racer`, which does nothing unless
//! `PAYRUN_LOCK_RACE` names a state folder): each says `ready`, waits for `go` on its stdin,
//! tries to take the lock, says `won` or `lost`, and holds what it took until its stdin closes.
//!
//! Readers and runners: a `status` or `report` that has the store open for a moment never makes
//! a run starting then fail, nor another reader (stop 21: a run started while the test polled
//! `status` failed with "open in another payrun process").

use payrun::execute::{lock::Lock, status::Holder};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const BATCH: &str = "race";
const RACERS: usize = 6;
const ROUNDS: usize = 15;

#[test]
fn a_racer() {
    let Ok(dir) = std::env::var("PAYRUN_LOCK_RACE") else {
        return;
    };
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    println!("ready");
    let _ = lines.next();
    let taken = Lock::take(Path::new(&dir), BATCH, "now");
    match &taken {
        Ok(_) => println!("won"),
        Err(m) => println!("lost: {m}"),
    }
    for _ in lines {}
    drop(taken);
}

/// A racer process, killed when dropped.
struct Racer {
    child: Child,
    out: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Drop for Racer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Racer {
    fn start(dir: &Path) -> Racer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_racer", "--nocapture", "--test-threads", "1"])
            .env("PAYRUN_LOCK_RACE", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut r = Racer { child, out };
        // libtest's "test a_racer ... " precedes it on its line.
        r.expect(|l| l.ends_with("ready"));
        r
    }

    /// The next line of ours (libtest's own lines are skipped).
    fn expect(&mut self, ours: impl Fn(&str) -> bool) -> String {
        for line in self.out.by_ref() {
            let line = line.unwrap();
            if ours(&line) {
                return line;
            }
        }
        panic!("a racer ended without saying what it did");
    }
}

/// A lock left by a process that is gone, as a killed runner leaves it.
fn stale_lock(dir: &Path) {
    let dead = Holder {
        pid: u32::MAX - 1,
        started: "earlier".into(),
        process_start: None,
        ..Holder::me("")
    };
    std::fs::write(
        dir.join(format!("{BATCH}.lock")),
        serde_json::to_vec(&dead).unwrap(),
    )
    .unwrap();
}

#[test]
fn processes_racing_over_a_stale_lock_leave_exactly_one_holder_whose_lock_survives() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join(format!("{BATCH}.lock"));
    for round in 0..ROUNDS {
        stale_lock(dir.path());
        let mut racers: Vec<Racer> = (0..RACERS).map(|_| Racer::start(dir.path())).collect();
        for r in racers.iter_mut() {
            r.child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        }
        let said: Vec<String> = racers
            .iter_mut()
            .map(|r| r.expect(|l| l == "won" || l.starts_with("lost: ")))
            .collect();
        let winners: Vec<u32> = racers
            .iter()
            .zip(&said)
            .filter(|(_, s)| *s == "won")
            .map(|(r, _)| r.child.id())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {said:?}");
        // Every loser met the winner's lock, alive, and said whose it is.
        for s in said.iter().filter(|s| s.starts_with("lost")) {
            assert!(
                s.contains(&format!("is being run by pid {}", winners[0])),
                "round {round}: {s}"
            );
        }
        let holder: Holder = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
        assert_eq!(
            holder.pid, winners[0],
            "round {round}: the winner's lock is in place"
        );
        for mut r in racers {
            drop(r.child.stdin.take());
            assert!(r.child.wait().unwrap().success());
        }
        assert!(!lock.exists(), "round {round}: the winner released it");
    }
}

/// The payroll example, paid in full against the embedded sandbox, in `dir`.
fn a_paid_batch(dir: &Path) -> &'static str {
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("batches/payroll-paysend/manifest.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_payrun"))
        .arg("run")
        .arg(&manifest)
        .args(["--sandbox", "--yes", "--time-scale", "1000", "--state-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    "acme-payroll-2026-11"
}

/// The batch's store held open by this process, as a reading `status` holds it, until dropped.
fn reading(dir: &Path, batch: &str) -> redb::Database {
    redb::Database::create(dir.join(format!("{batch}.redb"))).unwrap()
}

#[test]
fn a_run_started_while_another_command_reads_its_store_waits_for_the_reader_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let batch = a_paid_batch(dir.path());
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("batches/payroll-paysend/manifest.yaml");
    for how in ["run", "resume"] {
        let reader = reading(dir.path(), batch);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrun"));
        match how {
            "run" => cmd.arg("run").arg(&manifest).arg("--yes"),
            _ => cmd.args(["resume", batch]),
        };
        let started = cmd
            .args(["--sandbox", "--time-scale", "1000", "--state-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        drop(reader);
        let out = started.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{how}: {said}");
        assert!(
            said.contains("waiting for another payrun command"),
            "{how}: {said}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("50 paid"),
            "{how}"
        );
    }
}

#[test]
fn status_asked_while_another_command_reads_the_store_waits_for_it_and_reads_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let batch = a_paid_batch(dir.path());
    // No snapshot to fall back on: what status says comes from the store.
    std::fs::remove_file(dir.path().join(format!("{batch}.status.json"))).unwrap();
    let reader = reading(dir.path(), batch);
    let status = Command::new(env!("CARGO_BIN_EXE_payrun"))
        .args(["status", batch, "--format", "json", "--state-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    drop(reader);
    let out = status.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["states"]["paid"], 50, "{view}");
}

//! Regression of issue 12, "the lock": of runners starting together over a stale lock, 1 in 15
//! times two believed they held the batch (the loser deleted the winner's lock). Here separate
//! processes race over a stale lock, round after round: exactly one wins each round, and the
//! lock in place is the winner's for as long as it runs.
//!
//! The racers are this test binary started again (`a_racer`, which does nothing unless
//! `PAYRUN_LOCK_RACE` names a state folder): each says `ready`, waits for `go` on its stdin,
//! tries to take the lock, says `won` or `lost`, and holds what it took until its stdin closes.

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

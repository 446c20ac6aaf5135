//! Regressions of issue 12, "data at rest": the state folder holds net pay per employee, yet a
//! run left its store, lock, status snapshot, control socket, sandbox journal and report
//! readable by every user of the machine. Each test is named after what broke. Real binary,
//! 127.0.0.1 only; the umask is the common 022, so nothing here passes by a strict umask.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::run::*;

/// The usual umask (group and others may read), for this process and the runs it starts.
fn usual_umask() {
    // SAFETY: umask(2) only sets the process's file mode creation mask.
    unsafe {
        libc::umask(0o022);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every entry of `dir` with its mode, names sorted.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    let mut all: Vec<(String, u32)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                mode(&e.path()),
            )
        })
        .collect();
    all.sort();
    all
}

fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "the state folder {}", dir.display());
    for (name, m) in modes(dir) {
        assert_eq!(m, 0o600, "{name} is {m:04o}: {:?}", modes(dir));
    }
}

fn payrun(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrun"));
    cmd.current_dir(dir).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PAYSEND_") || k.starts_with("PAYRUN_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().unwrap()
}

#[test]
fn every_file_a_run_writes_is_private_while_it_runs_and_after() {
    usual_umask();
    let sandbox = sandbox().start();
    // A rehearsal (`run --sandbox`, which journals its sandbox in the state folder), slow
    // enough to be looked at while it runs.
    let batch = Batch::payroll(&sandbox).limits(25, 1, 1, 1);
    let state = batch.dir.path().join("state");
    let sock = state.join(format!("{}.sock", batch.id));
    let snapshot = state.join(format!("{}.status.json", batch.id));
    let mut run = batch.run().arg("--sandbox").spawn();
    assert!(
        eventually(Duration::from_secs(30), || sock.exists()
            && snapshot.exists()),
        "the run opened its control socket and wrote a status snapshot\n{}",
        run.log()
    );
    let seen = modes(&state);
    for name in ["lock", "redb", "sock", "status.json", "sandbox"] {
        assert!(
            seen.iter()
                .any(|(n, _)| *n == format!("{}.{name}", batch.id)),
            "{name} while running: {seen:?}"
        );
    }
    assert_private(&state);
    assert_eq!(run.wait().code(), Some(0), "{}", run.log());
    assert_private(&state);
    // The report, like the plan, lists what each employee was paid.
    batch.report();
    assert_eq!(mode(&batch.dir.path().join("report.csv")), 0o600);
    let out = payrun(
        batch.dir.path(),
        &["plan", "manifest.yaml", "-o", "plan.json"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(mode(&batch.dir.path().join("plan.json")), 0o600);
}

#[test]
fn a_state_folder_open_to_others_is_made_private_and_the_operator_is_told() {
    usual_umask();
    let sandbox = sandbox().start();
    let batch = Batch::payroll(&sandbox).packs_of(10);
    let state = batch.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let said = batch.run().succeeds().log();
    assert!(
        said.contains("was open to other users (mode 0755)"),
        "{said}"
    );
    assert_private(&state);
    assert!(sandbox.ledger().paid_twice().is_empty());
}

#[cfg(target_os = "linux")]
#[test]
fn a_lock_naming_a_live_pid_that_is_no_payrun_is_stale_and_unlock_says_so() {
    use payrun::execute::{lock, status::Holder};
    usual_umask();
    let sandbox = sandbox().start();
    let batch = Batch::payroll(&sandbox).packs_of(10);
    let state = batch.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    // pid 1 is alive, and it is not a payrun: it started at another time than the lock says.
    let reused = Holder {
        pid: 1,
        started: "2026-11-20T09:00:00Z".into(),
        process_start: Some(lock::process_start(1).unwrap() + 7),
        ..Holder::me("")
    };
    let lock_file = state.join(format!("{}.lock", batch.id));
    std::fs::write(&lock_file, serde_json::to_vec(&reused).unwrap()).unwrap();
    let out = payrun(
        batch.dir.path(),
        &["unlock", &batch.id, "--state-dir", "state"],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("stale") && said.contains("pid 1 is now another process"),
        "{said}"
    );
    assert!(!lock_file.exists());
    // And a run takes such a lock over by itself: no `unlock --force` needed.
    std::fs::write(&lock_file, serde_json::to_vec(&reused).unwrap()).unwrap();
    batch.run().succeeds();
    assert_eq!(sandbox.ledger().len(), 50);
    assert!(!lock_file.exists(), "released at the end");
}

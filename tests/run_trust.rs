//! Regressions from payrun tried end to end as a user and an operations engineer would (issue
//! "Trust first"): each test is named after what broke.

mod support;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;
use support::run::*;

/// A pipe as two owned ends (read, write).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: a two-element array for pipe(2); both descriptors are owned from here on.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh descriptors nobody else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// What stdout and stderr of the run are.
enum Pipe {
    /// Its reader is gone (`payrun run … 2>&1 | head -2`, after head exited).
    Closed,
    /// Its reader never reads, and it is already full.
    Full,
}

#[test]
fn ctrl_c_and_sigterm_stop_a_run_whose_stderr_is_a_closed_or_a_full_pipe() {
    for (sig, pipe_kind) in [
        (libc::SIGINT, Pipe::Closed),
        (libc::SIGTERM, Pipe::Closed),
        (libc::SIGINT, Pipe::Full),
        (libc::SIGTERM, Pipe::Full),
    ] {
        let sandbox = sandbox().start();
        // Slow enough to be stopped half-way: one item per request, 40 requests a second.
        let batch = Batch::payroll_of(&sandbox, 400).limits(40, 1, 1, 1);
        let (read, write) = pipe();
        let keep_reader = match pipe_kind {
            Pipe::Closed => {
                drop(read);
                None
            }
            Pipe::Full => {
                // Fill it to the brim (64 KiB on Linux) before payrun writes anything.
                let mut w = std::fs::File::from(write.try_clone().unwrap());
                // SAFETY: F_SETFL on a descriptor this test owns (a dup of the write end).
                unsafe {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&w);
                    libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
                }
                let chunk = [b'#'; 4096];
                while std::io::Write::write(&mut w, &chunk).is_ok() {}
                Some(read)
            }
        };
        let mut run = batch
            .run()
            .spawn_into(Stdio::from(write.try_clone().unwrap()), Stdio::from(write));
        assert!(
            eventually(Duration::from_secs(20), || sandbox.ledger().len() >= 5),
            "the run pays while nobody reads its output"
        );
        run.signal(sig);
        let status = run
            .wait_at_most(Duration::from_secs(20))
            .expect("the run stops on the signal although its output goes nowhere");
        assert_eq!(status.code(), Some(130), "signal {sig}: {status}");
        // Stopped for good: nothing more is paid, and the state was committed.
        let paid = sandbox.ledger().len();
        assert!(paid < 400, "it stopped before the end");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(sandbox.ledger().len(), paid);
        let status = batch.status();
        assert_eq!(
            status["states"]["sending"].as_u64().unwrap_or(0),
            0,
            "{status}"
        );
        drop(keep_reader);
    }
}

//! The notification listener under siege: whoever can reach its port must not be able to keep
//! a genuine notification out — not with more idle connections than payrun has file
//! descriptors, and not with headers sent a byte at a time. The sandbox posts the genuine
//! notifications; its ledger and payrun's report judge.

#![cfg(unix)]

mod support;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::payonic::*;
use support::run::*;

/// Waits until something accepts connections on `port` (payrun's listener is up).
fn listening(port: u16, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_thousand_idle_connections_and_slow_headers_do_not_keep_a_genuine_notification_out() {
    // Refund results come only by notification, 30 provider minutes (1.8 s) after each
    // request: long enough for the siege to be in place before the first one.
    let sb = sandbox_with_payments(12, &[], "30m");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    refunds(dir.path(), &sb, 12, port);
    let mut cmd = payrun(dir.path(), &sb, &RUN);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    // Fewer file descriptors than the siege has connections: a listener that keeps every
    // connection it accepts runs out and accepts nothing more.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 512,
                rlim_max: 512,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Killed(cmd.spawn().unwrap());
    assert!(
        listening(port, Duration::from_secs(30)),
        "the listener never came up"
    );

    let mut idle = Vec::new();
    for _ in 0..1100 {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            idle.push(c);
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drip = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut slow: Vec<_> = (0..20)
                .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
                .collect();
            let head = b"POST /payonic/notify/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
            let mut at = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A byte per connection every 100 ms; a closed one is opened again.
                for c in slow.iter_mut() {
                    let byte = head.get(at).copied().unwrap_or(b'a');
                    if c.write_all(&[byte]).is_err()
                        && let Ok(fresh) = std::net::TcpStream::connect(("127.0.0.1", port))
                    {
                        *c = fresh;
                    }
                }
                at += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > Duration::from_secs(90) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drip.join().unwrap();
    drop(idle);
    let mut stderr = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let status = status.unwrap_or_else(|| panic!("the run never ended: {stderr}"));
    assert_eq!(status.code(), Some(0), "{stderr}");
    let rows = report(dir.path(), &sb);
    assert!(rows.iter().all(|r| &r[2] == "paid"), "{rows:?}");
    each_paid_once(&sb, 12);
}

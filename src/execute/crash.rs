//! Crash points for the crash tests: `PAYRUN_CRASH_AT=<point>[:<n>]` makes the runner kill
//! itself with SIGKILL the n-th time (default 1st) it passes `<point>` — no destructors, no
//! flush, exactly what `kill -9` does, but at an instant a test can name. Points:
//!
//! - `before-send`: the item's `sending` state is committed; the request has not left.
//! - `after-send`: the provider answered (and committed its side); the answer is not recorded.
//! - `mid-commit`: a group commit has written its rows but not committed the transaction.
//! - `after-commit`: a group commit is durable; nothing else happened since.
//! - `after-journal`: notifications are journaled; they are neither acknowledged nor acted on.
//! - `store-create`: a new batch's store is written under its temporary name, not committed.
//! - `store-created`: the new store is in place; nothing else happened since.
//! - `lock-written`: the lock file's content is written, not yet linked into place.
//!
//! Without the variable each point costs one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    point: String,
    at: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("PAYRUN_CRASH_AT").ok()?;
            let (point, at) = match v.split_once(':') {
                Some((p, n)) => (p.to_string(), n.trim().parse().ok()?),
                None => (v.clone(), 1),
            };
            Some(Armed {
                point,
                at,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Passes crash point `name`; dies here if the environment asked for it.
pub fn point(name: &str) {
    let Some(a) = armed() else { return };
    if a.point != name {
        return;
    }
    if a.seen.fetch_add(1, Ordering::SeqCst) + 1 == a.at {
        eprintln!("payrun: crash point {name} reached (PAYRUN_CRASH_AT); killing myself");
        die();
    }
}

#[cfg(unix)]
fn die() -> ! {
    // SAFETY: getpid and kill have no preconditions; SIGKILL cannot be caught.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

#[cfg(not(unix))]
fn die() -> ! {
    std::process::abort()
}

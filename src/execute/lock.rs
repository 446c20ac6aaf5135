//! One runner per batch. The store itself is opened with an exclusive OS lock (released by the
//! OS when the process dies, so a killed runner never blocks a resume on this machine); next to
//! it a lock file names the holder — pid, host, start time — so that a refused second runner can
//! say who holds the batch, and so that a batch on a shared disk is guarded across machines.
//! `payrun unlock <batch> --force` removes a lock file whose holder is gone.

use super::status::Holder;
use std::path::{Path, PathBuf};

pub struct Lock {
    path: PathBuf,
}

fn lock_path(dir: &Path, batch: &str) -> PathBuf {
    dir.join(format!("{batch}.lock"))
}

/// Whether `holder` is a process that still runs (on this host; another host's cannot be seen).
pub fn alive(holder: &Holder) -> bool {
    let me = Holder::me("");
    if holder.host != me.host {
        return true;
    }
    Path::new(&format!("/proc/{}", holder.pid)).exists()
}

pub fn holder(dir: &Path, batch: &str) -> Option<Holder> {
    std::fs::read(lock_path(dir, batch))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

impl Lock {
    /// Takes the batch's lock, or says who holds it. A lock file left by a process that died on
    /// this host is taken over.
    pub fn take(dir: &Path, batch: &str, started: &str) -> Result<Lock, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let path = lock_path(dir, batch);
        // The lock file appears whole or not at all: its content is written under a name of
        // this process and linked into place (link fails if a lock exists). A runner killed in
        // between leaves no empty lock that another runner could mistake for a stale one.
        let me = Holder::me(started);
        let tmp = dir.join(format!("{batch}.lock.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(&me).unwrap_or_default())
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        super::crash::point("lock-written");
        let result = (|| {
            for _ in 0..2 {
                match std::fs::hard_link(&tmp, &path) {
                    Ok(()) => return Ok(Lock { path: path.clone() }),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        match holder(dir, batch) {
                            Some(h) if alive(&h) => {
                                return Err(format!(
                                    "batch `{batch}` is being run by pid {} on {} since {}",
                                    h.pid, h.host, h.started
                                ));
                            }
                            // Its holder is gone (killed), or the file is not a lock payrun
                            // wrote whole: stale on this host.
                            _ => {
                                let _ = std::fs::remove_file(&path);
                            }
                        }
                    }
                    Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
                }
            }
            Err(format!("cannot take the lock {}", path.display()))
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `payrun unlock <batch> --force`: removes the lock file of a holder that is gone.
pub fn unlock(dir: &Path, batch: &str, force: bool) -> Result<String, String> {
    let path = lock_path(dir, batch);
    let Some(h) = holder(dir, batch) else {
        return Ok(format!("batch `{batch}` is not locked"));
    };
    if alive(&h) && Holder::me("").host == h.host {
        return Err(format!(
            "pid {} on {} is still running batch `{batch}`; stop it (Ctrl-C) instead",
            h.pid, h.host
        ));
    }
    if !force {
        return Err(format!(
            "batch `{batch}` is locked by pid {} on {} since {}; pass --force once you are sure that process is gone",
            h.pid, h.host, h.started
        ));
    }
    std::fs::remove_file(&path).map_err(|e| e.to_string())?;
    Ok(format!("removed the lock of pid {} on {}", h.pid, h.host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_learns_who_holds_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lock::take(dir.path(), "b", "2026-11-21T10:00:00Z").unwrap();
        let second = Lock::take(dir.path(), "b", "later");
        assert!(
            second
                .as_ref()
                .is_err_and(|m| m.contains(&format!("pid {}", std::process::id()))
                    && m.contains("since 2026-11-21T10:00:00Z")),
            "{:?}",
            second.err()
        );
        drop(first);
        assert!(
            Lock::take(dir.path(), "b", "now").is_ok(),
            "released on drop"
        );
    }

    #[test]
    fn a_lock_left_by_a_dead_process_is_taken_over_and_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = Holder {
            pid: u32::MAX - 1,
            host: Holder::me("").host,
            started: "earlier".into(),
        };
        std::fs::write(
            lock_path(dir.path(), "b"),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        assert!(unlock(dir.path(), "b", false).is_err_and(|m| m.contains("--force")));
        assert!(unlock(dir.path(), "b", true).is_ok());
        std::fs::write(
            lock_path(dir.path(), "b"),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        assert!(
            Lock::take(dir.path(), "b", "now").is_ok(),
            "a dead holder's lock is stale"
        );
    }
}

//! One runner per batch. The store itself is opened with an exclusive OS lock (released by the
//! OS when the process dies, so a killed runner never blocks a resume on this machine); next to
//! it a lock file names the holder — pid, host, start time, and the process's start time and
//! boot id — so that a refused second runner can say who holds the batch, and so that a batch
//! on a shared disk is guarded across machines.
//!
//! The lock file appears whole: its content is written under a name of the taker's own and
//! linked into place (link(2) fails if a lock exists). The holder keeps an flock(2) on it for
//! as long as it lives, taken before the link, and the kernel drops that flock when the process
//! dies, however it dies: a lock whose flock is free has no runner behind it. A stale lock is
//! taken over while holding its flock, and its name is removed only while it still names the
//! very file locked — the holder's own removal on exit does the same — so of runners starting
//! together over a stale lock exactly one links its own, and the others meet that live lock.
//!
//! On this host a lock nobody flocks is stale when its pid is gone, ended (a zombie), or alive
//! but started at another time or in another boot than the lock records (the pid was reused);
//! where the start time cannot be read, a live pid is respected as before. Another host's
//! processes cannot be seen, so its lock stands until `payrun unlock <batch> --force`.

use super::status::Holder;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a batch's lock cannot be taken or removed, by kind; the CLI turns it into words and an
/// exit code (`errors::exit_code`).
#[derive(Debug)]
pub enum LockError {
    /// A runner that may still run holds the batch (on another host, payrun cannot tell).
    Held { batch: String, holder: Holder },
    /// The lock stays held by a process payrun cannot name (its lock file is being replaced,
    /// or stays flocked while naming a holder that is gone).
    Unnamed { batch: String, path: PathBuf },
    /// `unlock` refused: a runner alive on this host holds the batch. `flocked`: it holds the
    /// lock's flock (a payrun of today); otherwise only `--force` removes the lock.
    Running {
        batch: String,
        holder: Holder,
        flocked: bool,
    },
    /// `unlock` refused: another host's runner holds the batch; only `--force` removes it.
    Remote { batch: String, holder: Holder },
    /// A file operation on the lock or its folder failed.
    Io {
        /// What payrun was doing, after "cannot": "create", "read", "remove the stale"…
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { batch, holder: h } => write!(
                f,
                "batch `{batch}` is being run by pid {} on {} since {}",
                h.pid, h.host, h.started
            ),
            LockError::Unnamed { batch, path } => write!(
                f,
                "batch `{batch}` is held by a process payrun cannot name ({} is being replaced, or stays locked by it); try again in a moment",
                path.display()
            ),
            LockError::Running {
                batch,
                holder: h,
                flocked,
            } => write!(
                f,
                "pid {} on {} is still running batch `{batch}`; {}",
                h.pid,
                h.host,
                if *flocked {
                    "stop it (Ctrl-C) instead"
                } else {
                    "it holds no flock on the lock (a payrun from before flocks, or another program that reuses the pid); pass --force once you are sure it is no payrun running this batch"
                }
            ),
            LockError::Remote { batch, holder: h } => write!(
                f,
                "batch `{batch}` is locked by pid {} on {} since {}; payrun cannot see that machine's processes: pass --force once you are sure that process is gone",
                h.pid, h.host, h.started
            ),
            LockError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for LockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An I/O failure on `path` while doing `action`.
fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LockError {
    let path = path.to_path_buf();
    move |source| LockError::Io {
        action,
        path,
        source,
    }
}

pub struct Lock {
    path: PathBuf,
    /// The lock file, flocked for as long as this runner holds the batch.
    file: File,
    /// What taking the lock found of the state folder's mode (the caller tells the operator).
    pub folder: crate::private::Folder,
    /// The stale lock this runner took over, in words (whose, and why it was stale).
    pub took_over: Option<String>,
}

fn lock_path(dir: &Path, batch: &str) -> PathBuf {
    dir.join(format!("{batch}.lock"))
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
pub fn process_start(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start)
}

/// The id of the current boot (Linux), which changes with every restart.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

struct Stat {
    state: char,
    start: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `pid (comm) state ppid …`: the command name may hold spaces and parentheses, so fields are
/// counted after the last `)`; there the state is field 3 and the start time field 22.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start })
}

/// Whether a lock's holder may still run, and if not, why.
#[derive(Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Gone(String),
}

/// What payrun can tell of `h` from this host.
pub fn liveness(h: &Holder) -> Liveness {
    let me = Holder::me("");
    if h.host != me.host {
        return Liveness::Alive;
    }
    if let (Some(then), Some(now)) = (&h.boot_id, &me.boot_id)
        && then != now
    {
        return Liveness::Gone("the machine has restarted since".into());
    }
    if !Path::new(&format!("/proc/{}", h.pid)).exists() {
        return Liveness::Gone(format!("pid {} is not running", h.pid));
    }
    let Some(now) = stat(h.pid) else {
        return Liveness::Alive;
    };
    if matches!(now.state, 'Z' | 'X') {
        return Liveness::Gone(format!("pid {} has ended", h.pid));
    }
    match h.process_start {
        Some(then) if then != now.start => Liveness::Gone(format!(
            "pid {} is now another process (it started {} clock ticks after boot, the lock's holder {then})",
            h.pid, now.start
        )),
        _ => Liveness::Alive,
    }
}

/// Whether `holder` is a process that still runs (on this host; another host's cannot be seen).
pub fn alive(holder: &Holder) -> bool {
    liveness(holder) == Liveness::Alive
}

pub fn holder(dir: &Path, batch: &str) -> Option<Holder> {
    std::fs::read(lock_path(dir, batch))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// What is at a lock's name.
enum Found {
    Missing,
    /// Held by a runner: its flock is taken (`flocked`), or its holder may still run.
    Held {
        holder: Option<Holder>,
        flocked: bool,
    },
    /// Nobody holds it. `file` is open on it and, where the file system has flocks, flocked
    /// by this process, so that only this process may remove it now.
    Stale {
        file: File,
        holder: Option<Holder>,
        why: String,
    },
}

fn inspect(path: &Path) -> std::io::Result<Found> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let holder: Option<Holder> = serde_json::from_slice(&bytes).ok();
    match file.try_lock() {
        Err(std::fs::TryLockError::WouldBlock) => {
            return Ok(Found::Held {
                holder,
                flocked: true,
            });
        }
        // A file system without flocks (some network ones): the holder alone decides.
        Err(std::fs::TryLockError::Error(_)) | Ok(()) => {}
    }
    Ok(match holder {
        None => Found::Stale {
            file,
            holder: None,
            why: "it is not a lock payrun wrote whole".into(),
        },
        Some(h) => match liveness(&h) {
            Liveness::Alive => Found::Held {
                holder: Some(h),
                flocked: false,
            },
            Liveness::Gone(why) => Found::Stale {
                file,
                holder: Some(h),
                why,
            },
        },
    })
}

/// Removes `path` if it still names the file `file` is open on.
fn remove_if_same(path: &Path, file: &File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let (ours, there) = (file.metadata()?, std::fs::symlink_metadata(path)?);
        if ours.dev() != there.dev() || ours.ino() != there.ino() {
            return Ok(());
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    std::fs::remove_file(path)
}

/// Temporary lock files of takers that died between writing and linking them.
fn clear_leftovers(dir: &Path, batch: &str) {
    // Without /proc every pid would look dead, and a live taker's file would go.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!("{batch}.lock.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        // `<batch>.lock.<pid>.<n>` (and `<batch>.lock.<pid>` of older payruns) only: batch
        // ids may hold dots, and another batch's files are not this one's to clear.
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|rest| {
                let parts: Vec<&str> = rest.split('.').collect();
                parts.len() <= 2
                    && parts
                        .iter()
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            })
            .and_then(|rest| rest.split('.').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// How long a taker waits, at most, for another taker that holds a stale lock's flock to put
/// its own lock in place (it takes microseconds): `ATTEMPTS` rounds of `PAUSE`.
const ATTEMPTS: u32 = 400;
const PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

impl Lock {
    /// Takes the batch's lock, or says who holds it. A lock nobody holds any more (its process
    /// died, or its pid now names another process) is taken over.
    pub fn take(dir: &Path, batch: &str, started: &str) -> Result<Lock, LockError> {
        let folder = crate::private::state_dir(dir).map_err(io("create", dir))?;
        clear_leftovers(dir, batch);
        let path = lock_path(dir, batch);
        let me = Holder::me(started);
        static TAKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = TAKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!("{batch}.lock.{}.{n}", std::process::id()));
        let file = (|| {
            let mut f = crate::private::create_new(&tmp)?;
            std::io::Write::write_all(&mut f, &serde_json::to_vec(&me).unwrap_or_default())?;
            Ok(f)
        })()
        .map_err(io("create", &tmp))?;
        // Flocked before it is linked: the lock is never in place unheld. A file system
        // without flocks leaves the holder's pid to decide, as it did before.
        let _ = file.try_lock();
        super::crash::point("lock-written");
        let result = Lock::link(&tmp, &path, batch);
        let _ = std::fs::remove_file(&tmp);
        result.map(|took_over| Lock {
            path,
            file,
            folder,
            took_over,
        })
    }

    /// Links `tmp` into place as the lock; returns the stale lock it replaced, in words.
    fn link(tmp: &Path, path: &Path, batch: &str) -> Result<Option<String>, LockError> {
        let mut took_over = None;
        for _ in 0..ATTEMPTS {
            match std::fs::hard_link(tmp, path) {
                Ok(()) => return Ok(took_over),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("create", path)(e)),
            }
            match inspect(path).map_err(io("read", path))? {
                Found::Missing => {}
                Found::Stale { file, holder, why } => {
                    took_over = Some(match holder {
                        Some(h) => format!(
                            "the lock of pid {} on {} since {}: {why}",
                            h.pid, h.host, h.started
                        ),
                        None => format!("lock file {}: {why}", path.display()),
                    });
                    remove_if_same(path, &file)
                        .or_else(|e| match e.kind() {
                            std::io::ErrorKind::NotFound => Ok(()),
                            _ => Err(e),
                        })
                        .map_err(io("remove the stale", path))?;
                }
                Found::Held {
                    holder: Some(h), ..
                } if alive(&h) => {
                    return Err(LockError::Held {
                        batch: batch.to_string(),
                        holder: h,
                    });
                }
                // Flocked, and yet its holder is gone: another runner is taking that stale
                // lock over at this instant, and its own lock is in place in a moment.
                Found::Held { .. } => std::thread::sleep(PAUSE),
            }
        }
        Err(LockError::Unnamed {
            batch: batch.to_string(),
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still flocked, and only if it is still ours.
        let _ = remove_if_same(&self.path, &self.file);
    }
}

/// `payrun unlock <batch> [--force]`: removes a lock nobody holds, saying why it is stale;
/// another host's lock only with `--force`; never the lock of a runner alive on this host.
pub fn unlock(dir: &Path, batch: &str, force: bool) -> Result<String, LockError> {
    let path = lock_path(dir, batch);
    let found = inspect(&path).map_err(io("read", &path))?;
    let here = Holder::me("").host;
    match found {
        Found::Missing => Ok(format!("batch `{batch}` is not locked")),
        Found::Stale { file, holder, why } => {
            remove_if_same(&path, &file).map_err(io("remove", &path))?;
            let whose = holder
                .map(|h| format!(" of pid {} on {} since {}", h.pid, h.host, h.started))
                .unwrap_or_default();
            Ok(format!(
                "removed the stale lock{whose} of batch `{batch}`: {why}, so no payrun holds it (a run takes such a lock over by itself)"
            ))
        }
        Found::Held {
            holder: Some(h),
            flocked,
        } if h.host == here => {
            if flocked || !force {
                return Err(LockError::Running {
                    batch: batch.to_string(),
                    holder: h,
                    flocked,
                });
            }
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
            Ok(format!("removed the lock of pid {} on {}", h.pid, h.host))
        }
        Found::Held {
            holder: Some(h), ..
        } => {
            if !force {
                return Err(LockError::Remote {
                    batch: batch.to_string(),
                    holder: h,
                });
            }
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
            Ok(format!("removed the lock of pid {} on {}", h.pid, h.host))
        }
        Found::Held { holder: None, .. } => Err(LockError::Unnamed {
            batch: batch.to_string(),
            path,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder_of(pid: u32, process_start: Option<u64>) -> Holder {
        Holder {
            pid,
            host: Holder::me("").host,
            started: "earlier".into(),
            process_start,
            boot_id: boot_id(),
        }
    }

    fn write_lock(dir: &Path, h: &Holder) {
        std::fs::write(lock_path(dir, "b"), serde_json::to_vec(h).unwrap()).unwrap();
    }

    #[test]
    fn a_second_taker_learns_who_holds_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lock::take(dir.path(), "b", "2026-11-21T10:00:00Z").unwrap();
        let second = Lock::take(dir.path(), "b", "later");
        assert!(
            second.as_ref().is_err_and(
                |e| matches!(e, LockError::Held { holder, .. } if holder.pid == std::process::id())
                    && e.to_string()
                        .contains(&format!("pid {}", std::process::id()))
                    && e.to_string().contains("since 2026-11-21T10:00:00Z")
            ),
            "{:?}",
            second.err()
        );
        assert!(
            unlock(dir.path(), "b", true)
                .is_err_and(|e| matches!(e, LockError::Running { flocked: true, .. })
                    && e.to_string().contains("Ctrl-C")),
            "a live runner's lock is never removed"
        );
        drop(first);
        assert!(!lock_path(dir.path(), "b").exists(), "removed on drop");
        assert!(
            Lock::take(dir.path(), "b", "now").is_ok(),
            "released on drop"
        );
    }

    #[test]
    fn a_lock_left_by_a_dead_process_is_taken_over_and_unlock_says_why_it_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let dead = holder_of(u32::MAX - 1, None);
        write_lock(dir.path(), &dead);
        let said = unlock(dir.path(), "b", false).unwrap();
        assert!(
            said.contains("stale") && said.contains("is not running"),
            "{said}"
        );
        assert!(!lock_path(dir.path(), "b").exists());
        write_lock(dir.path(), &dead);
        assert!(
            Lock::take(dir.path(), "b", "now").is_ok(),
            "a dead holder's lock is stale"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_lock_naming_a_live_pid_that_started_at_another_time_is_stale_without_force() {
        let dir = tempfile::tempdir().unwrap();
        // pid 1 is alive and is not this payrun: the lock says its holder started another time.
        let real = process_start(1).expect("pid 1's start time");
        let reused = holder_of(1, Some(real + 1));
        write_lock(dir.path(), &reused);
        let said = unlock(dir.path(), "b", false).unwrap();
        assert!(
            said.contains("pid 1 is now another process") && said.contains("stale"),
            "{said}"
        );
        write_lock(dir.path(), &reused);
        let lock = Lock::take(dir.path(), "b", "now").expect("taken over without --force");
        assert_eq!(
            holder(dir.path(), "b").map(|h| h.pid),
            Some(std::process::id())
        );
        drop(lock);
        // The same pid in another boot is no holder either.
        let rebooted = Holder {
            boot_id: Some("00000000-0000-0000-0000-000000000000".into()),
            ..holder_of(1, Some(real))
        };
        write_lock(dir.path(), &rebooted);
        assert!(Lock::take(dir.path(), "b", "now").is_ok());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_live_pid_with_its_own_start_time_and_no_flock_is_respected_as_before() {
        // A lock of a payrun from before flocks, still running: its pid and start time match.
        let dir = tempfile::tempdir().unwrap();
        let real = process_start(1).expect("pid 1's start time");
        write_lock(dir.path(), &holder_of(1, Some(real)));
        assert!(
            Lock::take(dir.path(), "b", "now")
                .is_err_and(|e| matches!(e, LockError::Held { holder, .. } if holder.pid == 1))
        );
        assert!(unlock(dir.path(), "b", false).is_err_and(|e| matches!(
            e,
            LockError::Running { flocked: false, .. }
        )
            && e.to_string().contains("--force")));
        assert!(unlock(dir.path(), "b", true).is_ok());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_temporary_lock_file_of_a_dead_taker_is_cleared_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let dead = u32::MAX - 1;
        let me = std::process::id();
        let names = [
            format!("b.lock.{dead}.3"),
            format!("b.lock.{dead}"),
            format!("b.lock.{me}.0"),
            format!("b.lock.{dead}.lock"),
            format!("b.lock.{dead}.7.lock"),
            "b.lock".to_string(),
        ];
        for n in &names {
            std::fs::write(dir.path().join(n), "x").unwrap();
        }
        clear_leftovers(dir.path(), "b");
        let left: Vec<bool> = names.iter().map(|n| dir.path().join(n).exists()).collect();
        assert_eq!(left, [false, false, true, true, true, true]);
    }

    #[test]
    fn a_state_folder_that_cannot_be_made_is_an_io_error_not_a_holder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let e = Lock::take(&file.join("state"), "b", "now").err().unwrap();
        assert!(
            matches!(
                e,
                LockError::Io {
                    action: "create",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.state, s.start), ('S', 123456));
        assert!(parse_stat("garbage").is_none());
    }

    #[cfg(unix)]
    #[test]
    fn many_takers_racing_over_a_stale_lock_leave_exactly_one_winner_whose_lock_survives() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        for round in 0..40 {
            write_lock(dir.path(), &holder_of(u32::MAX - 1, None));
            let barrier = std::sync::Barrier::new(8);
            let won: Vec<Lock> = std::thread::scope(|s| {
                let takers: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            Lock::take(dir.path(), "b", "now").ok()
                        })
                    })
                    .collect();
                takers
                    .into_iter()
                    .filter_map(|t| t.join().unwrap())
                    .collect()
            });
            assert_eq!(won.len(), 1, "round {round}: exactly one winner");
            let on_disk = std::fs::metadata(lock_path(dir.path(), "b")).unwrap();
            let winner = won[0].file.metadata().unwrap();
            assert_eq!(
                (on_disk.dev(), on_disk.ino()),
                (winner.dev(), winner.ino()),
                "round {round}: the lock in place is the winner's"
            );
            drop(won);
            assert!(!lock_path(dir.path(), "b").exists());
        }
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "no temporary files left: {left:?}");
    }
}

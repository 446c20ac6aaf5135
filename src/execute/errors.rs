//! The errors a command meets, by the layer that raises them — the batch's store
//! ([`StoreError`]), its lock ([`LockError`]), its secret ([`SecretError`]), the provider's
//! transport and its refusals — and the one place where they become exit codes
//! ([`exit_code`]) and what the operator reads ([`report`]). The layers say what happened by
//! kind; nothing decides an exit code by matching an error's words.
//!
//! Exit codes (docs/architecture.md, [`exit`]): 0 ok, 1 invalid / changed / declined, 2 usage,
//! I/O or transport, 4 items failed / need review / reversed, 130 stopped by a signal.

use super::lock::LockError;
use super::secret::SecretError;
use super::store::StoreError;

/// The process's exit codes.
pub mod exit {
    /// Everything asked was done.
    pub const OK: u8 = 0;
    /// The batch is invalid, changed since it started, or refused (a failed preflight, a
    /// balance too low), or the operator declined: nothing was sent.
    pub const INVALID: u8 = 1;
    /// A usage error, a file that cannot be read or written (store, lock, secret), or a
    /// provider that cannot be reached: fix it and run again (a run resumes where it stopped).
    pub const IO: u8 = 2;
    /// The run ended with items failed, needing review, reversed or unfinished.
    pub const UNSETTLED: u8 = 4;
    /// Stopped by a signal (Ctrl-C, SIGTERM); `payrun resume` continues.
    pub const STOPPED: u8 = 130;
}

/// What stops a command, by the layer that raised it.
#[derive(Debug)]
pub enum RunError {
    Store(StoreError),
    Lock(LockError),
    Secret(SecretError),
    /// The provider could not be reached, or what answered was not the provider
    /// (`providers::Answer::Transport`), in words: nothing it said is an outcome.
    Transport(String),
    /// The provider answered, and what it said stops the run before anything is sent: a
    /// failed or unfinished preflight, an answer without a result the items need, a balance
    /// below what the run has to pay. In words, with a hint where there is one.
    Refused(String),
    /// The item source no longer holds an item as it was validated (a request is rendered
    /// from its row when it is sent): the run stops before sending it. In words.
    Source(String),
}

impl From<StoreError> for RunError {
    fn from(e: StoreError) -> RunError {
        RunError::Store(e)
    }
}

impl From<LockError> for RunError {
    fn from(e: LockError) -> RunError {
        RunError::Lock(e)
    }
}

impl From<SecretError> for RunError {
    fn from(e: SecretError) -> RunError {
        RunError::Secret(e)
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Store(e) => e.fmt(f),
            RunError::Lock(e) => e.fmt(f),
            RunError::Secret(e) => e.fmt(f),
            RunError::Transport(why) | RunError::Refused(why) | RunError::Source(why) => {
                f.write_str(why)
            }
        }
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunError::Store(e) => Some(e),
            RunError::Lock(e) => Some(e),
            RunError::Secret(e) => Some(e),
            RunError::Transport(_) | RunError::Refused(_) | RunError::Source(_) => None,
        }
    }
}

impl RunError {
    /// The name in `error[<name>]` when `run` or `resume` meets it.
    pub fn name(&self) -> &'static str {
        match self {
            RunError::Store(StoreError::Listen { .. }) => "run.listen",
            RunError::Store(_) => "run.store",
            RunError::Lock(LockError::Held { .. } | LockError::Unnamed { .. }) => "run.locked",
            RunError::Lock(_) => "run.lock",
            RunError::Secret(_) => "run.secret",
            RunError::Transport(_) => "run.transport",
            RunError::Refused(_) => "run.preflight",
            RunError::Source(_) => "run.source",
        }
    }

    /// What the operator can do about it, where its message carries no hint of its own.
    pub fn hint(&self) -> Option<String> {
        match self {
            RunError::Lock(LockError::Held { batch, .. }) => Some(format!(
                "one runner per batch: stop that one first (a lock whose process is gone is taken over by itself; another machine's: `payrun unlock {batch} --force` once it is gone)"
            )),
            RunError::Lock(LockError::Io { .. }) | RunError::Store(StoreError::Io { .. }) => Some(
                "check the state folder (`--state-dir`): its disk, its space and who may write it"
                    .into(),
            ),
            RunError::Transport(_) => Some(
                "check the connection and the base URL (`environment:`), then run again".into(),
            ),
            RunError::Source(_) => Some(
                "put the item source back as it was when the batch started, then `payrun resume`: what was sent is not sent again, and the file is compared with the batch before anything more is"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// The exit code of a command stopped by `e` (see [`exit`]).
pub fn exit_code(e: &RunError) -> u8 {
    match e {
        // The batch's own files, or another process holding them: fix, then run again.
        RunError::Store(s) => match s {
            StoreError::Missing { .. }
            | StoreError::Busy { .. }
            | StoreError::Appeared { .. }
            | StoreError::Io { .. }
            | StoreError::Incompatible { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Database { .. }
            | StoreError::Listen { .. }
            | StoreError::Other(_) => exit::IO,
        },
        RunError::Lock(l) => match l {
            LockError::Held { .. }
            | LockError::Unnamed { .. }
            | LockError::Running { .. }
            | LockError::Remote { .. }
            | LockError::Io { .. } => exit::IO,
        },
        RunError::Secret(s) => match s {
            SecretError::NoRandom
            | SecretError::Missing { .. }
            | SecretError::Damaged { .. }
            | SecretError::Unknown { .. }
            | SecretError::Io { .. } => exit::IO,
        },
        // Nothing the provider said: the batch is not at fault, a resume goes on.
        RunError::Transport(_) | RunError::Source(_) => exit::IO,
        // What the provider said stops this batch as it is.
        RunError::Refused(_) => exit::INVALID,
    }
}

/// Tells the operator what stopped the command — `error[<name>]: <message><tail>` on stderr,
/// and the hint on the next line — and returns the exit code. `tail` is what the caller adds
/// (e.g. "; nothing was sent").
pub fn report(e: &RunError, tail: &str) -> u8 {
    report_as(e.name(), e, tail)
}

/// [`report`] under another command's name (`status`, `resume`, `unlock`…).
pub fn report_as(name: &str, e: &RunError, tail: &str) -> u8 {
    eprintln!("error[{name}]: {e}{tail}");
    if let Some(h) = e.hint() {
        eprintln!("  hint: {h}");
    }
    exit_code(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execute::status::Holder;
    use std::path::PathBuf;

    fn io() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device")
    }

    fn holder() -> Holder {
        Holder {
            pid: 4242,
            host: "host-a".into(),
            started: "2026-12-01T10:00:00Z".into(),
            process_start: None,
            boot_id: None,
        }
    }

    /// Every kind of every layer, with its exit code and words its message must hold (the
    /// hint included: in the message or on the hint line).
    fn every_kind() -> Vec<(RunError, u8, &'static [&'static str])> {
        let p = || PathBuf::from("/state/b.redb");
        vec![
            (
                StoreError::Missing {
                    batch: "b".into(),
                    dir: "/state".into(),
                }
                .into(),
                2,
                &["no batch `b` in /state", "hint: `payrun list"],
            ),
            (
                StoreError::Busy { path: p() }.into(),
                2,
                &["another payrun process", "only one runner per batch"],
            ),
            (
                StoreError::Appeared { path: p() }.into(),
                2,
                &["appeared while this run started", "run again"],
            ),
            (
                StoreError::Io {
                    action: "create",
                    path: p(),
                    source: io(),
                }
                .into(),
                2,
                &[
                    "cannot create /state/b.redb: no space",
                    "hint: check the state folder",
                ],
            ),
            (
                StoreError::Incompatible {
                    path: p(),
                    why: "file format version 2".into(),
                }
                .into(),
                2,
                &[
                    "cannot open /state/b.redb",
                    "hint: run the batch with the payrun version",
                ],
            ),
            (
                StoreError::Corrupt {
                    path: p(),
                    why: "Invalid magic number".into(),
                }
                .into(),
                2,
                &["/state/b.redb cannot be read", "hint:", "backup"],
            ),
            (
                StoreError::Database {
                    path: p(),
                    why: "Table already open".into(),
                }
                .into(),
                2,
                &["/state/b.redb: Table already open", "hint: run again"],
            ),
            (
                StoreError::Listen {
                    addr: "0.0.0.0:8080".into(),
                    source: io(),
                }
                .into(),
                2,
                &[
                    "cannot listen for notifications on 0.0.0.0:8080",
                    "hint:",
                    "notifications.listen",
                ],
            ),
            (StoreError::other("odd").into(), 2, &["odd"]),
            (
                LockError::Held {
                    batch: "b".into(),
                    holder: holder(),
                }
                .into(),
                2,
                &[
                    "batch `b` is being run by pid 4242 on host-a since 2026-12-01T10:00:00Z",
                    "hint: one runner per batch",
                    "payrun unlock b --force",
                ],
            ),
            (
                LockError::Unnamed {
                    batch: "b".into(),
                    path: "/state/b.lock".into(),
                }
                .into(),
                2,
                &["cannot name", "try again in a moment"],
            ),
            (
                LockError::Running {
                    batch: "b".into(),
                    holder: holder(),
                    flocked: true,
                }
                .into(),
                2,
                &["pid 4242 on host-a is still running batch `b`", "Ctrl-C"],
            ),
            (
                LockError::Running {
                    batch: "b".into(),
                    holder: holder(),
                    flocked: false,
                }
                .into(),
                2,
                &["is still running batch `b`", "pass --force once"],
            ),
            (
                LockError::Remote {
                    batch: "b".into(),
                    holder: holder(),
                }
                .into(),
                2,
                &["locked by pid 4242 on host-a", "pass --force once"],
            ),
            (
                LockError::Io {
                    action: "read",
                    path: "/state/b.lock".into(),
                    source: io(),
                }
                .into(),
                2,
                &["cannot read /state/b.lock", "hint: check the state folder"],
            ),
            (SecretError::NoRandom.into(), 2, &["no random bytes"]),
            (
                SecretError::Missing {
                    path: "/state/b.secret".into(),
                }
                .into(),
                2,
                &["/state/b.secret is missing", "hint: restore the file"],
            ),
            (
                SecretError::Damaged {
                    path: "/state/b.secret".into(),
                }
                .into(),
                2,
                &["is damaged", "hint: restore the file"],
            ),
            (
                SecretError::Unknown {
                    keys: "keyed/v9".into(),
                }
                .into(),
                2,
                &["`keyed/v9`", "hint: resume it with the payrun version"],
            ),
            (
                SecretError::Io {
                    action: "write",
                    path: "/state/b.secret".into(),
                    source: io(),
                }
                .into(),
                2,
                &["cannot write the batch's secret /state/b.secret"],
            ),
            (
                RunError::Transport("Paysend could not be reached: connection refused".into()),
                2,
                &[
                    "connection refused",
                    "hint: check the connection and the base URL",
                ],
            ),
            (
                RunError::Refused("not enough balance to pay this batch; nothing was sent".into()),
                1,
                &["not enough balance"],
            ),
        ]
    }

    /// What `report` prints for `e`: its message and its hint line.
    fn words(e: &RunError) -> String {
        format!(
            "{e}\n{}",
            e.hint().map(|h| format!("  hint: {h}")).unwrap_or_default()
        )
    }

    #[test]
    fn every_kind_of_every_layer_has_the_documented_exit_code() {
        for (e, code, _) in every_kind() {
            assert_eq!(exit_code(&e), code, "{e:?}");
            assert!(
                [exit::INVALID, exit::IO].contains(&code),
                "an error is never taken for success, unsettled items or a stop: {e:?}"
            );
        }
    }

    #[test]
    fn every_kind_says_what_happened_and_what_to_do() {
        for (e, _, said) in every_kind() {
            let w = words(&e);
            for s in said {
                assert!(w.contains(s), "{e:?} should say {s:?}:\n{w}");
            }
        }
    }

    #[test]
    fn a_layer_error_is_named_by_its_kind() {
        let named: Vec<&str> = every_kind().iter().map(|(e, _, _)| e.name()).collect();
        assert_eq!(named[0], "run.store");
        assert_eq!(named[7], "run.listen", "the listener's port, not the store");
        assert_eq!(named[9], "run.locked");
        assert_eq!(
            named[14], "run.lock",
            "an I/O failure is no runner holding the batch"
        );
        assert_eq!(named[15], "run.secret");
        assert_eq!(named[20], "run.transport");
        assert_eq!(named[21], "run.preflight");
    }

    #[test]
    fn an_unlock_refusal_carries_its_own_advice_and_no_second_hint() {
        let running: RunError = LockError::Running {
            batch: "b".into(),
            holder: holder(),
            flocked: true,
        }
        .into();
        assert!(
            running.hint().is_none(),
            "`unlock`'s refusal says what to do in its message"
        );
    }
}

//! A batch's own secret, for providers whose keys must not be computable from the batch and item
//! ids (`keys: keyed`, Payonic's `note`): 32 random bytes in `<state>/<batch>.secret`, readable
//! by its owner only, made once before the batch's store and read by every resume. Never
//! printed, never in the store, the plan or a report: losing it means the batch's operations can
//! no longer be recognised at the provider, so a resume without it refuses to send anything.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a batch's secret is kept.
pub fn path(state_dir: &Path, batch: &str) -> PathBuf {
    state_dir.join(format!("{batch}.secret"))
}

/// The store meta key that says a batch's keys are keyed, and with which derivation.
pub const META: &str = "keys";
/// Its value for `keys::keyed` with the secret of this module.
pub const KEYED_V1: &str = "keyed/v1";

const LEN: usize = 32;

/// Why a batch's secret cannot be made or read, by kind; the CLI turns it into words and an
/// exit code (`errors::exit_code`). Never holds the secret itself.
#[derive(Debug)]
pub enum SecretError {
    /// The system gave no random bytes to make one.
    NoRandom,
    /// The batch uses keyed keys and its secret file is gone.
    Missing { path: PathBuf },
    /// The secret file is not 32 bytes as hex digits.
    Damaged { path: PathBuf },
    /// The batch's keys are derived in a way this payrun does not know (a newer payrun's).
    Unknown { keys: String },
    /// Reading or writing the secret file failed.
    Io {
        /// "read" or "write".
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretError::NoRandom => {
                f.write_str("the system gave no random bytes for the batch's secret")
            }
            SecretError::Missing { path } => write!(
                f,
                "the batch's secret {} is missing: without it payrun cannot recognise this \
                 batch's operations at the provider, so it sends nothing (hint: restore the file \
                 from a backup of the state folder)",
                path.display()
            ),
            SecretError::Damaged { path } => write!(
                f,
                "the batch's secret {} is damaged (not {LEN} bytes as hex digits); payrun sends nothing \
                 (hint: restore the file from a backup of the state folder)",
                path.display()
            ),
            SecretError::Unknown { keys } => write!(
                f,
                "the batch's keys are `{keys}`, which this payrun does not know; nothing was sent \
                 (hint: resume it with the payrun version that started it)"
            ),
            SecretError::Io {
                action,
                path,
                source,
            } => write!(
                f,
                "cannot {action} the batch's secret {}: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SecretError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SecretError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The secret of a batch about to be created: the one left by a run that stopped before its
/// store was made (nothing was sent with it), or a new one, durable before this returns.
pub fn for_new_batch(state_dir: &Path, batch: &str) -> Result<Vec<u8>, SecretError> {
    let p = path(state_dir, batch);
    if p.exists() {
        return read(state_dir, batch);
    }
    let mut bytes = vec![0u8; LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| SecretError::NoRandom)?;
    let text = crate::keys::hex_lower(&bytes);
    let tmp = state_dir.join(format!(".{batch}.secret.tmp"));
    let write = || -> std::io::Result<()> {
        // A leftover of a run killed here was never used: made again, private from its start.
        let _ = std::fs::remove_file(&tmp);
        let mut f = crate::private::create_new(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        if let Ok(d) = std::fs::File::open(state_dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|source| SecretError::Io {
        action: "write",
        path: p.clone(),
        source,
    })?;
    Ok(bytes)
}

/// The secret of a batch that has one.
pub fn read(state_dir: &Path, batch: &str) -> Result<Vec<u8>, SecretError> {
    let p = path(state_dir, batch);
    let text = std::fs::read_to_string(&p).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            SecretError::Missing { path: p.clone() }
        } else {
            SecretError::Io {
                action: "read",
                path: p.clone(),
                source,
            }
        }
    })?;
    crate::providers::decode_hex(text.trim())
        .filter(|b| b.len() == LEN)
        .ok_or(SecretError::Damaged { path: p })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_batchs_secret_is_kept_and_read_back_the_same_by_every_resume() {
        let dir = tempfile::tempdir().unwrap();
        let made = for_new_batch(dir.path(), "b1").unwrap();
        assert_eq!(made.len(), 32);
        assert_eq!(read(dir.path(), "b1").unwrap(), made);
        assert_eq!(
            for_new_batch(dir.path(), "b1").unwrap(),
            made,
            "a batch whose first run stopped before its store keeps its secret"
        );
        assert_ne!(for_new_batch(dir.path(), "b2").unwrap(), made);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path(dir.path(), "b1"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only");
        }
    }

    #[test]
    fn a_missing_or_damaged_secret_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(dir.path(), "b1").unwrap_err();
        assert!(matches!(e, SecretError::Missing { .. }), "{e}");
        assert!(
            e.to_string().contains("is missing") && e.to_string().contains("hint"),
            "{e}"
        );
        std::fs::write(path(dir.path(), "b1"), "0f-not-hex-0f").unwrap();
        let e = read(dir.path(), "b1").unwrap_err();
        assert!(matches!(e, SecretError::Damaged { .. }), "{e}");
        assert!(
            e.to_string().contains("damaged") && e.to_string().contains("hint"),
            "{e}"
        );
        assert!(
            !e.to_string().contains("not-hex"),
            "what the file holds is never repeated"
        );
    }
}

//! Files only their owner can read. The state folder holds net pay per employee, keys, the
//! batch's secret and the sandbox's ledger, so payrun creates it 0700 and every file it writes
//! there — store, lock, status snapshot, secret, sandbox journal, control socket — and the
//! plan and report it writes elsewhere 0600. Files are *created* with that mode (never written
//! first and restricted afterwards), so no instant exists at which another user could open one.
//!
//! A state folder that already exists with group or other access is tightened to 0700 by the
//! run that writes into it, and the run says so: the folder is payrun's own (`--state-dir`,
//! `.payrun` by default), and its mode is what keeps others from *replacing* files in it (a
//! lock, the control socket, the store), which 0600 on the files alone cannot do; a warning
//! would scroll by in a cron log while the folder stayed open. A folder payrun may not chmod
//! (another owner's) is left as it is, with a warning saying why that matters.

use std::io::Write;
use std::path::Path;

/// The mode of every file payrun writes.
pub const FILE_MODE: u32 = 0o600;
/// The mode of the state folder.
pub const DIR_MODE: u32 = 0o700;

/// Options that create a file readable and writable by its owner only (on unix).
pub fn options() -> std::fs::OpenOptions {
    #[allow(unused_mut)]
    let mut o = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, FILE_MODE);
    o
}

/// A new private file at `path` (fails if the name exists), open for writing.
pub fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    options().read(true).write(true).create_new(true).open(path)
}

/// `bytes` in a private file at `path`, replacing whatever is there in one rename (a reader
/// sees the old file or the new one, never half of it). With `sync`, durable before it is
/// renamed.
pub fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // tempfile creates its files 0600 (O_EXCL, owner only); asked for explicitly all the same.
    // Named after the file, so that one left by a kill at this instant says whose it was.
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let prefix = format!(".{}.", name.as_deref().unwrap_or("payrun"));
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix).suffix(".partial");
    #[cfg(unix)]
    b.permissions(std::os::unix::fs::PermissionsExt::from_mode(FILE_MODE));
    let mut tmp = b.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if sync {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// What [`state_dir`] did to an existing folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Folder {
    /// Created 0700, or it already was private.
    Private,
    /// It had group/other access (the old mode) and is 0700 now.
    Tightened(u32),
    /// It has group/other access (its mode) and payrun may not change that.
    Open(u32),
}

impl Folder {
    /// What the operator is told, if anything.
    pub fn notice(&self, dir: &Path) -> Option<String> {
        match self {
            Folder::Private => None,
            Folder::Tightened(old) => Some(format!(
                "note: the state folder {} was open to other users (mode {old:04o}); it is 0700 now: it holds net pay per employee",
                dir.display()
            )),
            Folder::Open(mode) => Some(format!(
                "warning: the state folder {} is open to other users (mode {mode:04o}) and payrun may not change that; its files are private (0600), but others can list them{} (hint: `chmod 700 {}`, or a --state-dir of your own)",
                dir.display(),
                if mode & 0o022 != 0 {
                    " and replace them"
                } else {
                    ""
                },
                dir.display()
            )),
        }
    }
}

/// Creates the state folder `dir` 0700 (its parents as the umask says), or tightens an
/// existing one that others can read, enter or write (see the module's comment).
pub fn state_dir(dir: &Path) -> std::io::Result<Folder> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, DIR_MODE);
    match b.create(dir) {
        Ok(()) => return Ok(Folder::Private),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
        if mode & 0o077 == 0 {
            return Ok(Folder::Private);
        }
        let private = std::fs::Permissions::from_mode(mode & !0o077);
        return Ok(match std::fs::set_permissions(dir, private) {
            Ok(()) => Folder::Tightened(mode),
            Err(_) => Folder::Open(mode),
        });
    }
    #[allow(unreachable_code)]
    Ok(Folder::Private)
}

/// Restricts an existing file that a payrun from before private files left readable by others
/// (its store). Files payrun creates now are private from their first byte.
pub fn tighten(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(
                path,
                std::fs::Permissions::from_mode(m.permissions().mode() & 0o7700),
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_state_folder_is_private_and_so_is_every_file_written_into_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/state");
        assert_eq!(state_dir(&dir).unwrap(), Folder::Private);
        assert_eq!(mode(&dir), 0o700);
        create_new(&dir.join("x")).unwrap();
        assert_eq!(mode(&dir.join("x")), 0o600);
        write_atomic(&dir.join("y"), b"net pay", true).unwrap();
        assert_eq!(mode(&dir.join("y")), 0o600);
        assert_eq!(std::fs::read(dir.join("y")).unwrap(), b"net pay");
    }

    #[test]
    fn a_file_written_over_an_open_one_is_private_afterwards() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.csv");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&p, b"new", false).unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn an_existing_state_folder_open_to_others_is_tightened_and_the_operator_told() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let done = state_dir(&dir).unwrap();
        assert_eq!(done, Folder::Tightened(0o755));
        assert_eq!(mode(&dir), 0o700);
        assert!(done.notice(&dir).unwrap().contains("0755"));
        assert_eq!(state_dir(&dir).unwrap(), Folder::Private, "once is enough");
        assert_eq!(Folder::Private.notice(&dir), None);
    }
}

//! Opening the files a user points payrun at (the manifest, the item source): regular files
//! only. A FIFO or a device such as `/dev/zero` would block `validate` or feed it forever, a
//! folder cannot be read, and the kernel's `/proc` and `/sys` files (which claim a size of 0)
//! hold things like the process's environment that must never reach a diagnostic. The path is
//! checked with `stat` before anything is opened (opening a FIFO blocks), then opened without
//! blocking and checked again on the opened file, so that a file swapped in between is caught.
//! Whole-file reads (manifests) stop at a cap instead of reading until memory runs out.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why payrun does not read a file.
#[derive(Debug)]
pub enum Refusal {
    /// The file cannot be found, opened or read.
    Io(std::io::Error),
    /// It is not a regular file: what it is instead ("a FIFO (named pipe)", "a folder", …).
    NotRegular(&'static str),
    /// A file of the kernel's `/proc` or `/sys`, not a user's file.
    System,
    /// Larger than the cap, in bytes.
    TooLarge { len: u64, cap: u64 },
    /// The path named another file when it was opened than when it was checked.
    Changed,
}

impl Refusal {
    /// What went wrong, reading naturally after "the manifest" or "the item source".
    pub fn describe(&self) -> String {
        match self {
            Refusal::Io(e) => format!("cannot be read: {e}"),
            Refusal::NotRegular(what) => format!("is {what}, not a regular file"),
            Refusal::System => {
                "is a file of the kernel's /proc or /sys, not a file of yours".to_string()
            }
            Refusal::TooLarge { len, cap } => format!(
                "is {} bytes; payrun reads at most {} bytes ({}) here",
                len,
                cap,
                human_size(*cap)
            ),
            Refusal::Changed => "was replaced by another file while payrun opened it".to_string(),
        }
    }

    /// Whether the path is missing or unreadable (as opposed to a file payrun refuses).
    pub fn is_io(&self) -> bool {
        matches!(self, Refusal::Io(_) | Refusal::Changed)
    }
}

fn human_size(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// What a file type that is not a regular file is, in words.
fn kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a folder"
    } else {
        "not a plain file"
    }
}

/// Whether `canonical` (an absolute path without symlinks) lies in `/proc` or `/sys`.
fn is_system_path(canonical: &Path) -> bool {
    canonical.starts_with("/proc") || canonical.starts_with("/sys")
}

/// Whether the opened file lives on procfs or sysfs, wherever they are mounted.
#[cfg(target_os = "linux")]
fn on_system_fs(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `fstatfs` fills `st` for an open descriptor and is read only when it succeeded.
    let ok = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) } == 0;
    if !ok {
        return false;
    }
    // SAFETY: initialised by the successful call above. `f_type`'s type differs between
    // targets (i64, u32…): the cast is a no-op on some.
    #[allow(clippy::unnecessary_cast)]
    let t = unsafe { st.assume_init() }.f_type as i64;
    t == PROC_SUPER_MAGIC || t == SYSFS_MAGIC
}

#[cfg(not(target_os = "linux"))]
fn on_system_fs(_file: &File) -> bool {
    false
}

/// Opens a regular file for reading, refusing anything else before it is opened. Returns the
/// file and its canonical path (absolute, symlinks resolved).
pub fn open(path: &Path) -> Result<(File, PathBuf), Refusal> {
    // `metadata` follows symlinks without opening anything: a FIFO is refused before an open
    // could block on it.
    let before = std::fs::metadata(path).map_err(Refusal::Io)?;
    if !before.file_type().is_file() {
        return Err(Refusal::NotRegular(kind(&before.file_type())));
    }
    let canonical = std::fs::canonicalize(path).map_err(Refusal::Io)?;
    if is_system_path(&canonical) {
        return Err(Refusal::System);
    }
    let file = open_nonblocking(&canonical).map_err(Refusal::Io)?;
    let after = file.metadata().map_err(Refusal::Io)?;
    if !after.file_type().is_file() {
        return Err(Refusal::NotRegular(kind(&after.file_type())));
    }
    if !same_file(&before, &after) {
        return Err(Refusal::Changed);
    }
    if on_system_fs(&file) {
        return Err(Refusal::System);
    }
    Ok((file, canonical))
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: should a FIFO be swapped in after the check, the open returns instead of
    // waiting for a writer (and the file is then refused by its type). It changes nothing for
    // a regular file. O_NOCTTY: a terminal device never becomes the controlling terminal.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(_a: &std::fs::Metadata, _b: &std::fs::Metadata) -> bool {
    true
}

/// Reads a whole regular file of at most `cap` bytes.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, Refusal> {
    let (file, _) = open(path)?;
    let len = file.metadata().map_err(Refusal::Io)?.len();
    if len > cap {
        return Err(Refusal::TooLarge { len, cap });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // One byte more than the cap tells a file that grew after the check.
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(Refusal::Io)?;
    if bytes.len() as u64 > cap {
        return Err(Refusal::TooLarge {
            len: bytes.len() as u64,
            cap,
        });
    }
    Ok(bytes)
}

/// The canonical folder of a file named by `path` (`.` for a bare file name).
pub fn canonical_folder(path: &Path) -> std::io::Result<PathBuf> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => std::fs::canonicalize(p),
        _ => std::fs::canonicalize("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("items.csv");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Were the FIFO opened for reading, this would wait for a writer forever.
        assert!(matches!(
            open(&fifo),
            Err(Refusal::NotRegular("a FIFO (named pipe)"))
        ));
    }

    #[test]
    fn devices_folders_and_kernel_files_are_refused() {
        assert!(matches!(
            open(Path::new("/dev/zero")),
            Err(Refusal::NotRegular("a character device"))
        ));
        assert!(matches!(
            open(Path::new("/tmp")),
            Err(Refusal::NotRegular("a folder"))
        ));
        assert!(matches!(
            open(Path::new("/proc/self/environ")),
            Err(Refusal::System)
        ));
        assert!(matches!(
            read_capped(Path::new("/dev/zero"), 1 << 20),
            Err(Refusal::NotRegular(_))
        ));
    }

    #[test]
    fn a_symlink_into_proc_is_refused_by_where_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("items.csv");
        std::os::unix::fs::symlink("/proc/self/environ", &link).unwrap();
        assert!(matches!(open(&link), Err(Refusal::System)));
    }

    #[test]
    fn a_file_over_the_cap_is_refused_and_one_at_the_cap_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.yaml");
        std::fs::write(&f, vec![b'a'; 100]).unwrap();
        assert_eq!(read_capped(&f, 100).unwrap().len(), 100);
        match read_capped(&f, 99) {
            Err(Refusal::TooLarge { len: 100, cap: 99 }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_capped(&dir.path().join("missing.yaml"), 99),
            Err(Refusal::Io(_))
        ));
    }
}

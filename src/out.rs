//! Writing to stdout and stderr without ever dying of it.
//!
//! `println!` and `eprintln!` panic when the stream is a closed pipe (`payrun run … | head -2`),
//! and block for as long as a full pipe is not read. Neither may stop a batch that is moving
//! money: a panic in the signal handler once left payrun paying after Ctrl-C, and a run blocked
//! on stderr cannot stop, commit or answer its notifications.
//!
//! So the crate shadows both macros (`src/lib.rs`, `src/main.rs`):
//! - `eprintln!`/`eprint!` (diagnostics, progress) go through [`err`]: a write is attempted
//!   only when the stream can take it (`poll`), waiting at most [`STALL`] once; while stderr
//!   stays full, lines are dropped and counted instead of blocking, and errors are ignored;
//! - `println!`/`print!` (data) go through [`out`]: blocking, as data must not be lost, but a
//!   closed stdout is ignored rather than fatal;
//! - [`say`] is for the few stdout lines a run prints when it ends: like `err`, they never block
//!   a process that has committed its state and wants to exit.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How long one line may wait for a full stream before the stream counts as stalled.
pub const STALL: Duration = Duration::from_millis(200);

/// Which stream.
#[derive(Clone, Copy)]
enum Fd {
    Out = 1,
    Err = 2,
}

static STALLED: [AtomicBool; 3] = [
    AtomicBool::new(false),
    AtomicBool::new(false),
    AtomicBool::new(false),
];
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines (or parts of lines) dropped because stderr or stdout was not being read.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Writes diagnostics or progress to stderr: never panics, never blocks for long.
pub fn err(args: std::fmt::Arguments<'_>) {
    write_fmt_nonblocking(Fd::Err, args);
}

/// Writes a closing line to stdout the same way: never panics, never blocks for long.
pub fn say(args: std::fmt::Arguments<'_>) {
    write_fmt_nonblocking(Fd::Out, args);
}

/// Writes data to stdout: blocks while the reader is slow, ignores a closed stdout.
pub fn out(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_fmt(args);
}

/// Bytes for stderr (the run's plain progress lines), written as [`err`] writes.
pub fn err_bytes(bytes: &[u8]) {
    write_nonblocking(Fd::Err, bytes);
}

/// stderr as an `io::Write` for the log (`tracing`): the same rules as [`err`].
pub struct ErrWriter;

impl Write for ErrWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        err_bytes(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_fmt_nonblocking(fd: Fd, args: std::fmt::Arguments<'_>) {
    match args.as_str() {
        Some(s) => write_nonblocking(fd, s.as_bytes()),
        None => write_nonblocking(fd, std::fmt::format(args).as_bytes()),
    }
}

#[cfg(unix)]
fn write_nonblocking(fd: Fd, bytes: &[u8]) {
    write_to(fd as i32, &STALLED[fd as usize], bytes);
}

#[cfg(unix)]
fn write_to(fd: i32, stalled: &AtomicBool, bytes: &[u8]) {
    // A pipe that polls writable takes PIPE_BUF bytes without blocking (POSIX), so each chunk
    // is written only once poll says so. Files and terminals always poll writable.
    const PIPE_BUF: usize = 4096;
    for chunk in bytes.chunks(PIPE_BUF) {
        let wait = if stalled.load(Ordering::Relaxed) {
            0
        } else {
            STALL.as_millis() as i32
        };
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, its count, and a finite timeout.
        let ready = unsafe { libc::poll(&mut p, 1, wait) };
        if ready <= 0 || p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            // A closed stream (POLLERR/POLLHUP) or one nobody reads: the rest is dropped.
            stalled.store(ready <= 0, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stalled.store(false, Ordering::Relaxed);
        let mut rest = chunk;
        while !rest.is_empty() {
            // SAFETY: writes at most `rest.len()` bytes from a valid slice to a file descriptor
            // this process owns (1 or 2); errors are returned, not raised.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n > 0 {
                rest = &rest[n as usize..];
            } else if n < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
                continue;
            } else {
                // EPIPE, EBADF, …: the stream is gone; nothing to die for.
                DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

#[cfg(not(unix))]
fn write_nonblocking(fd: Fd, bytes: &[u8]) {
    let _ = match fd {
        Fd::Out => std::io::stdout().lock().write_all(bytes),
        Fd::Err => std::io::stderr().lock().write_all(bytes),
    };
}

// The crate's `println!`/`eprintln!` family: see the module comment. `src/lib.rs` declares this
// module first with `#[macro_use]`, so textual scope makes these shadow the standard macros in
// every module of the library; `src/main.rs` imports them by name.

/// `eprintln!` that never panics and never blocks for long (see `payrun::out`).
#[macro_export]
macro_rules! eprintln {
    () => { $crate::out::err(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::err(format_args!("{}\n", format_args!($($t)*))) };
}

/// `eprint!` that never panics and never blocks for long (see `payrun::out`).
#[macro_export]
macro_rules! eprint {
    ($($t:tt)*) => { $crate::out::err(format_args!($($t)*)) };
}

/// `println!` that never panics (see `payrun::out`).
#[macro_export]
macro_rules! println {
    () => { $crate::out::out(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::out(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` that never panics (see `payrun::out`).
#[macro_export]
macro_rules! print {
    ($($t:tt)*) => { $crate::out::out(format_args!($($t)*)) };
}

/// A closing line of a run on stdout: never panics, never blocks for long.
#[macro_export]
macro_rules! sayln {
    ($($t:tt)*) => { $crate::out::say(format_args!("{}\n", format_args!($($t)*))) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_not_worth_dying_for() {
        // Write to a pipe whose reader is gone: EPIPE (SIGPIPE is ignored by Rust programs).
        let mut fds = [0; 2];
        // SAFETY: a two-element array for pipe(2).
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: closing the read end we own.
        unsafe { libc::close(fds[0]) };
        let before = dropped();
        // Not fd 2 (the test harness owns it): the same function on another descriptor.
        write_to(fds[1], &AtomicBool::new(false), b"hello\n");
        assert!(dropped() > before);
        // SAFETY: closing the write end we own.
        unsafe { libc::close(fds[1]) };
    }

    #[test]
    fn a_full_pipe_drops_lines_instead_of_blocking() {
        let mut fds = [0; 2];
        // SAFETY: a two-element array for pipe(2).
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let start = std::time::Instant::now();
        let before = dropped();
        // Far more than a pipe holds (64 KiB by default), with nobody reading.
        let line = vec![b'x'; 1000];
        let stalled = AtomicBool::new(false);
        for _ in 0..1000 {
            write_to(fds[1], &stalled, &line);
        }
        assert!(dropped() > before);
        // One stall is waited for, not one per line.
        assert!(start.elapsed() < Duration::from_secs(30));
        // SAFETY: closing both ends we own.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}

//! The bodies of the requests Paysend accepted, kept out of memory: every status answer and
//! every replay echoes its request whole (header, partner, settings, each task's payload —
//! L945-1022), which is most of what a sandbox paying a million items would hold (~500 bytes per
//! payout as compact JSON). They are appended to a temporary file that has no name (unlinked as
//! soon as it is created, so it goes with the process, `kill -9` included), sealed with
//! AES-256-GCM under a random key that only this process's memory holds: the card and account
//! numbers a request carries are never readable on disk. A body costs 12 bytes of memory.
//!
//! A reset leaves the file as it is: the bodies it forgot are never read again.
//!
//! Choice: where no such file can be made (no writable temporary folder), bodies are kept in
//! memory as before; an answer never depends on where its body is.

use super::tree::Json;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where one accepted request's body is.
#[derive(Debug)]
pub enum Body {
    /// Sealed in the file at `at` (which is also its nonce: no two bodies start at one offset).
    Sealed {
        at: u64,
        len: u32,
    },
    Held(Json),
}

pub struct Bodies {
    file: Option<(std::fs::File, LessSafeKey)>,
    /// Where the next body goes.
    end: AtomicU64,
}

impl Bodies {
    pub fn new() -> Bodies {
        Bodies {
            file: sealed_file(),
            end: AtomicU64::new(0),
        }
    }

    /// Keeps `body` (in the file when there is one and the write succeeds; else in memory).
    pub fn keep(&self, body: &Json) -> Body {
        if let Some((file, key)) = &self.file {
            let mut buf = body.get().as_bytes().to_vec();
            let sealed_len = buf.len() + AES_256_GCM.tag_len();
            if let Ok(len) = u32::try_from(sealed_len) {
                // Reserved before writing, so concurrent requests never share bytes (or a nonce).
                let at = self.end.fetch_add(u64::from(len), Ordering::Relaxed);
                if key
                    .seal_in_place_append_tag(nonce(at), Aad::empty(), &mut buf)
                    .is_ok()
                    && write_at(file, &buf, at).is_ok()
                {
                    return Body::Sealed { at, len };
                }
            }
        }
        Body::Held(body.clone())
    }

    /// Bytes written to the file so far.
    pub fn on_disk(&self) -> u64 {
        self.end.load(Ordering::Relaxed)
    }

    /// The body kept as `b`; `None` only if the file cannot be read back (it was written
    /// whole, so only a failing disk does that).
    pub fn read(&self, b: &Body) -> Option<Json> {
        match b {
            Body::Held(j) => Some(j.clone()),
            Body::Sealed { at, len } => {
                let (file, key) = self.file.as_ref()?;
                let mut buf = vec![0u8; *len as usize];
                read_at(file, &mut buf, *at).ok()?;
                let plain = key.open_in_place(nonce(*at), Aad::empty(), &mut buf).ok()?;
                let text = std::str::from_utf8(plain).ok()?.to_string();
                serde_json::value::RawValue::from_string(text).ok()
            }
        }
    }
}

impl Default for Bodies {
    fn default() -> Self {
        Bodies::new()
    }
}

fn nonce(at: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&at.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// A nameless temporary file and a fresh key, or `None` where either cannot be had.
fn sealed_file() -> Option<(std::fs::File, LessSafeKey)> {
    let mut k = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k).ok()?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).ok()?);
    let file = tempfile::tempfile().ok()?;
    Some((file, key))
}

#[cfg(unix)]
fn write_at(f: &std::fs::File, buf: &[u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, at)
}

#[cfg(unix)]
fn read_at(f: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, at)
}

#[cfg(not(unix))]
fn write_at(_: &std::fs::File, _: &[u8], _: u64) -> std::io::Result<()> {
    Err(std::io::Error::other("positioned writes are for unix"))
}

#[cfg(not(unix))]
fn read_at(_: &std::fs::File, _: &mut [u8], _: u64) -> std::io::Result<()> {
    Err(std::io::Error::other("positioned reads are for unix"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_body_reads_back_the_same_and_is_not_on_disk_in_clear() {
        let b = Bodies::new();
        let card = "4539025531693033";
        let one = super::super::tree::compact(&serde_json::json!({"to": {"cardNumber": card}}));
        let two = super::super::tree::compact(&serde_json::json!({"n": 2}));
        let (k1, k2) = (b.keep(&one), b.keep(&two));
        assert!(matches!(k1, Body::Sealed { .. }), "{k1:?}");
        assert_eq!(b.read(&k2).unwrap().get(), two.get());
        assert_eq!(b.read(&k1).unwrap().get(), one.get());
        let (file, _) = b.file.as_ref().unwrap();
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut &*file, &mut all).unwrap();
        assert!(!all.is_empty());
        assert!(!String::from_utf8_lossy(&all).contains(card));
        assert!(!String::from_utf8_lossy(&all).contains("cardNumber"));
    }
}

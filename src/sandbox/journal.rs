//! The sandbox's state file: what a provider remembers across restarts (accepted requests,
//! payments, balances, operations, the ledger and counters), written as an append-only journal
//! of JSON lines and replayed when a sandbox starts with the same file (`payrun sandbox --state`,
//! and `<state-dir>/<batch>.sandbox` for the one `run --sandbox` embeds).
//!
//! Why a journal of JSON lines and not redb (which payrun's own store uses): the sandbox's
//! state lives in memory, sharded so that requests never wait on one lock; persisting it means
//! recording *changes* in the order they happen, which is what an append-only log is. A line is
//! written whole with one `write` and the file is only ever appended to, so `kill -9` at any
//! instant leaves at worst a torn last line, which replay drops (and cuts off before appending
//! again); nothing already on disk is ever rewritten, so the file cannot become unreadable.
//! Lines that carry state the provider answers for (a payment, a debit, an accepted request, an
//! operation, a ledger row) are *durable*: the server answers a request, and a notification is
//! posted, only once every durable line appended so far is on disk (`commit`, one
//! `fdatasync` shared by all the requests waiting at that moment — group commit). Counter lines
//! ride along with the next commit, or the periodic flush, and may be lost by a kill: they
//! count, they never pay. The file is human-readable and needs no tool to inspect, which is
//! what `payrun sandbox ledger --state FILE` does without starting a server.
//!
//! Nothing secret is written but the key of the ledger's recipient digests (so that they stay
//! comparable across restarts; the file is created 0600): no credentials (they come from the
//! configuration on each start), and card and account numbers are masked before a request is
//! journaled (`mask`); the ledger keeps only a keyed digest of recipients, as it does in memory.
//!
//! Persistence is off unless a file is given: without one, no `Journal` exists and each
//! journaling point costs one `Option` check.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One change of the sandbox's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// A sandbox started on this file: the wall-clock time (µs since the Unix epoch), its
    /// provider time then and its time scale, so that provider time continues where it was.
    Start {
        wall_us: i64,
        provider: Duration,
        time_scale: f64,
    },
    /// Paysend accepted a request (its payloads masked): a repeat of its id is answered again.
    PaysendRequest {
        id: String,
        global_id: String,
        response_id: String,
        accepted_at: Duration,
        request: Value,
        tree: Vec<super::paysend::tree::Executed>,
        levels: usize,
    },
    /// A Paysend payment by invoiceId (3011 guard, task.statusGet).
    PaysendPayment { payment: super::paysend::Payment },
    /// A Paysend balance after a debit (minor units).
    PaysendBalance { currency: String, minor: i128 },
    /// How many times a request identity was seen (fault decisions and Payonic ids).
    Attempt {
        provider: String,
        identity: String,
        n: u64,
    },
    /// A Payonic payment as created (seeded or by an MIT), customer data masked.
    PayonicPayment {
        payment: super::payonic::payment::Payment,
    },
    /// An operation appended to a Payonic payment.
    PayonicOperation {
        paymentid: String,
        operation: super::payonic::payment::Operation,
    },
    /// The card of a Payonic payment after the issuer updated it.
    PayonicCard {
        paymentid: String,
        card: super::payonic::payment::Card,
    },
    /// A ledger row.
    Entry { entry: super::ledger::Entry },
    /// A request counted ("METHOD path status").
    Count { what: String },
    /// A named event counted.
    Event { what: String },
    /// One of the ledger's fixed counters (`rate_limited`, `replays`, …) went up by one.
    Bump { counter: String },
    /// `POST /__sandbox/reset`: everything before is forgotten (but the digest key).
    Reset,
    /// The key of the ledger's recipient digests (`ledger::Ledger::recipient_digest`),
    /// written by the first start on a file; never printed.
    DigestKey { key: super::ledger::DigestKey },
}

impl Record {
    /// Whether the provider answers for it (see the module's comment). Payonic derives its
    /// operation and response ids from how often a request was seen, so its counts must not
    /// be lost once an answer carried such an id; Paysend's ids come from the start count.
    fn durable(&self) -> bool {
        match self {
            Record::Attempt { provider, .. } => provider == "payonic",
            Record::Count { .. } | Record::Event { .. } | Record::Bump { .. } => false,
            _ => true,
        }
    }
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// Sequence number of the last line appended.
    appended: u64,
    /// Sequence number of the last durable line appended.
    durable: u64,
}

/// An open state file, appended to by the running sandbox.
pub struct Journal {
    path: PathBuf,
    pending: Mutex<Pending>,
    file: Mutex<std::fs::File>,
    /// Lines up to this sequence number are on disk.
    synced: AtomicU64,
    /// Set by `close`: nothing more is written, and nothing more may be answered.
    closed: std::sync::atomic::AtomicBool,
}

/// What reading a state file found.
#[derive(Debug)]
pub struct Replay {
    pub records: Vec<Record>,
    /// Bytes of a torn last line that were dropped (0 when the file ended cleanly).
    pub torn: usize,
}

/// Reads every record of a state file. A torn (or garbled) tail — what a kill during a write
/// can leave — is dropped and reported; a bad line followed by good ones is corruption, an
/// error naming the line.
pub fn read(path: &Path) -> Result<Replay, String> {
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut text))
        .map_err(|e| format!("cannot read the sandbox state {}: {e}", path.display()))?;
    parse(&text).map_err(|(line, e)| {
        format!(
            "the sandbox state {} is damaged at line {line}: {e} (hint: lines after it are intact, so it was changed by something other than the sandbox)",
            path.display()
        )
    })
}

/// Parses journal text: the records and how many bytes at the end were dropped.
fn parse(text: &[u8]) -> Result<Replay, (usize, String)> {
    let mut records = Vec::new();
    let mut good_end = 0;
    let mut first_bad: Option<(usize, String)> = None;
    let mut offset = 0;
    for (i, chunk) in text.split_inclusive(|b| *b == b'\n').enumerate() {
        let start = offset;
        offset += chunk.len();
        let complete = chunk.ends_with(b"\n");
        let line = chunk.strip_suffix(b"\n").unwrap_or(chunk);
        if line.iter().all(u8::is_ascii_whitespace) && complete {
            if first_bad.is_none() {
                good_end = offset;
            }
            continue;
        }
        let parsed = if complete {
            serde_json::from_slice::<Record>(line).map_err(|e| e.to_string())
        } else {
            Err("torn line".to_string())
        };
        match (parsed, &first_bad) {
            (Ok(r), None) => {
                records.push(r);
                good_end = offset;
            }
            (Ok(_), Some((n, e))) => return Err((*n, e.clone())),
            (Err(e), None) => {
                first_bad = Some((i + 1, e));
                good_end = start;
            }
            (Err(_), Some(_)) => {}
        }
    }
    Ok(Replay {
        records,
        torn: text.len() - good_end,
    })
}

impl Journal {
    /// Opens (or creates) a state file for a sandbox: reads what it holds, cuts off a torn
    /// tail, and takes the file for this process (a second sandbox on it is refused).
    pub fn open(path: &Path) -> Result<(Journal, Replay), String> {
        // Private (0600): it holds the ledger and the key of its recipient digests.
        let mut file = crate::private::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("cannot open the sandbox state {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "the sandbox state {} is in use by another sandbox (one process per state file)",
                    path.display()
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!(
                    "cannot lock the sandbox state {}: {e}",
                    path.display()
                ));
            }
        }
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .map_err(|e| format!("cannot read the sandbox state {}: {e}", path.display()))?;
        let replay = parse(&text).map_err(|(line, e)| {
            format!(
                "the sandbox state {} is damaged at line {line}: {e}",
                path.display()
            )
        })?;
        if replay.torn > 0 {
            let keep = (text.len() - replay.torn) as u64;
            file.set_len(keep)
                .and_then(|_| file.sync_data())
                .map_err(|e| format!("cannot repair the sandbox state {}: {e}", path.display()))?;
        }
        file.seek(std::io::SeekFrom::End(0))
            .map_err(|e| format!("cannot open the sandbox state {}: {e}", path.display()))?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                pending: Mutex::new(Pending::default()),
                file: Mutex::new(file),
                synced: AtomicU64::new(0),
                closed: std::sync::atomic::AtomicBool::new(false),
            },
            replay,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record (in memory until the next commit or flush).
    pub fn append(&self, r: &Record) {
        let mut line = serde_json::to_vec(r).unwrap_or_default();
        line.push(b'\n');
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.buf.extend_from_slice(&line);
        p.appended += 1;
        if r.durable() {
            p.durable = p.appended;
        }
    }

    /// Whether durable lines wait to be written (cheap: one lock, no I/O).
    pub fn needs_commit(&self) -> bool {
        let durable = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .durable;
        self.synced.load(Ordering::Acquire) < durable
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Writes what is pending and lets go of the file (a sandbox stopping in a process that
    /// goes on, e.g. a test restarting it). Changes made after this are never on disk, so
    /// their answers are never sent (`commit` fails).
    pub fn close(&self) -> std::io::Result<()> {
        let flushed = self.flush();
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, Ordering::Release);
        let _ = file.unlock();
        flushed
    }

    /// Writes and syncs everything appended so far, unless another caller already did.
    pub fn flush(&self) -> std::io::Result<()> {
        let wanted = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .appended;
        if self.synced.load(Ordering::Acquire) >= wanted {
            return Ok(());
        }
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return Err(std::io::Error::other("the sandbox state file is closed"));
        }
        // Whoever held the file before may have written our lines with theirs.
        if self.synced.load(Ordering::Acquire) >= wanted {
            return Ok(());
        }
        let (buf, upto) = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            (std::mem::take(&mut p.buf), p.appended)
        };
        let before = file.stream_position()?;
        if let Err(e) = file.write_all(&buf).and_then(|_| file.sync_data()) {
            // A partial write (disk full) would leave a torn line in the middle of the file
            // once later lines follow: cut it off and keep the lines for the next attempt;
            // if even that fails, write nothing more.
            let cut = file
                .set_len(before)
                .and_then(|_| file.seek(std::io::SeekFrom::Start(before)));
            if cut.is_err() {
                self.closed.store(true, Ordering::Release);
            }
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let newer = std::mem::replace(&mut p.buf, buf);
            p.buf.extend_from_slice(&newer);
            return Err(e);
        }
        self.synced.store(upto, Ordering::Release);
        Ok(())
    }

    /// Makes every durable line appended so far durable: called before an answer or a
    /// notification leaves. Blocking I/O runs off the async workers.
    pub async fn commit(self: &std::sync::Arc<Self>) -> std::io::Result<()> {
        if !self.needs_commit() {
            return Ok(());
        }
        let j = std::sync::Arc::clone(self);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => h
                .spawn_blocking(move || j.flush())
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(_) => j.flush(),
        }
    }
}

/// A card or account number (or any value the schemas call sensitive) as it may be stored:
/// its last four characters only.
pub fn mask(s: &str) -> String {
    let n = s.chars().count();
    if n <= 4 {
        return "****".into();
    }
    let tail: String = s.chars().skip(n - 4).collect();
    format!("****{tail}")
}

/// Keys whose string values are never stored, wherever they appear (card and account numbers,
/// tokens standing for them, card security codes).
const SECRET_KEYS: &[&str] = &[
    "accountIdentifier",
    "accountNumber",
    "cardNumber",
    "pan",
    "token",
    "cvv",
    "cvc",
    "iban",
    "email",
    "ipaddress",
];

/// `v` with every value under a secret key masked (in place), and the paths in `sensitive`
/// (dotted, relative to `v`) as well.
pub fn mask_value(v: &mut Value, sensitive: &[&str]) {
    for path in sensitive {
        let pointer = format!("/{}", path.replace('.', "/"));
        if let Some(Value::String(s)) = v.pointer_mut(&pointer) {
            *s = mask(s);
        }
    }
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if let Value::String(s) = x
                        && SECRET_KEYS.iter().any(|sk| sk.eq_ignore_ascii_case(k))
                    {
                        *s = mask(s);
                    } else {
                        walk(x);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(v);
}

/// Microseconds since the Unix epoch, now.
pub fn wall_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Where provider time stands when a sandbox starts on a journal: where the last start left
/// it plus the wall time since, at that start's scale (the provider lived on while no sandbox
/// ran), and never before anything the journal recorded.
pub fn resumed_clock(records: &[Record], now_wall_us: i64) -> Duration {
    let mut at = Duration::ZERO;
    let mut latest = Duration::ZERO;
    for r in records {
        match r {
            Record::Start {
                wall_us,
                provider,
                time_scale,
            } => {
                let gone =
                    Duration::from_micros(now_wall_us.saturating_sub(*wall_us).max(0) as u64);
                at = *provider + gone.mul_f64(time_scale.max(0.0));
            }
            Record::PaysendRequest { accepted_at, .. } => latest = latest.max(*accepted_at),
            Record::PaysendPayment { payment } => latest = latest.max(payment.done_at),
            Record::PayonicOperation { operation, .. } => latest = latest.max(operation.at),
            _ => {}
        }
    }
    at.max(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> Record {
        Record::Entry {
            entry: crate::sandbox::ledger::Entry {
                provider: "paysend".into(),
                key: key.into(),
                payment_id: "p".into(),
                operation: "pay.toAccount".into(),
                amount: "1.00".into(),
                currency: "EUR".into(),
                recipient_digest: "d".into(),
                time: "t".into(),
                request_id: "r".into(),
            },
        }
    }

    fn keys(r: &Replay) -> Vec<String> {
        r.records
            .iter()
            .filter_map(|r| match r {
                Record::Entry { entry } => Some(entry.key.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn what_was_committed_is_read_back_by_the_next_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sandbox");
        {
            let (j, replay) = Journal::open(&path).unwrap();
            assert!(replay.records.is_empty());
            j.append(&entry("a"));
            j.append(&Record::Count {
                what: "GET / 200".into(),
            });
            j.append(&entry("b"));
            j.flush().unwrap();
        }
        let (_j, replay) = Journal::open(&path).unwrap();
        assert_eq!(keys(&replay), ["a", "b"]);
        assert_eq!(replay.records.len(), 3);
        assert_eq!(replay.torn, 0);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_cut_off_before_appending_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sandbox");
        {
            let (j, _) = Journal::open(&path).unwrap();
            j.append(&entry("a"));
            j.flush().unwrap();
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"entry":{"entry":{"provider":"pays"#)
            .unwrap();
        drop(f);
        {
            let (j, replay) = Journal::open(&path).unwrap();
            assert_eq!(keys(&replay), ["a"]);
            assert!(replay.torn > 0);
            j.append(&entry("c"));
            j.flush().unwrap();
        }
        let replay = read(&path).unwrap();
        assert_eq!(
            keys(&replay),
            ["a", "c"],
            "the new line is not glued to the torn one"
        );
        assert_eq!(replay.torn, 0);
    }

    #[test]
    fn a_garbled_tail_is_dropped_but_a_bad_line_before_good_ones_is_an_error() {
        let good = serde_json::to_string(&entry("a")).unwrap();
        let tail = format!("{good}\n\0\0\0\0\n");
        let r = parse(tail.as_bytes()).unwrap();
        assert_eq!(keys(&r), ["a"]);
        assert_eq!(r.torn, 5);
        let middle = format!("{good}\nnot json\n{good}\n");
        assert_eq!(parse(middle.as_bytes()).unwrap_err().0, 2);
    }

    #[test]
    fn only_durable_lines_ask_for_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(&dir.path().join("s")).unwrap();
        j.append(&Record::Count { what: "x".into() });
        assert!(
            !j.needs_commit(),
            "a counter alone waits for the next flush"
        );
        j.append(&entry("a"));
        assert!(j.needs_commit());
        j.flush().unwrap();
        assert!(!j.needs_commit());
    }

    #[test]
    fn a_second_sandbox_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let _first = Journal::open(&path).unwrap();
        let e = Journal::open(&path).err().unwrap();
        assert!(e.contains("in use by another sandbox"), "{e}");
    }

    #[test]
    fn card_and_account_numbers_are_masked_wherever_they_are() {
        let mut v = serde_json::json!({"to": {"cardNumber": "4539025531693033",
            "destinationTransactionInstrument": {"accountIdentifier": "DE89370400440532013000"},
            "recipient": {"firstName": "Anna"}}, "invoiceId": "k1", "list": [{"pan": "5555444433331111"}]});
        mask_value(&mut v, &["to.recipient.firstName"]);
        let text = v.to_string();
        for secret in [
            "4539025531693033",
            "DE89370400440532013000",
            "5555444433331111",
            "Anna",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(v["to"]["cardNumber"], "****3033");
        assert_eq!(v["invoiceId"], "k1");
    }

    #[test]
    fn provider_time_continues_from_the_last_start() {
        let records = vec![Record::Start {
            wall_us: 1_000_000,
            provider: Duration::from_secs(10),
            time_scale: 100.0,
        }];
        assert_eq!(
            resumed_clock(&records, 3_000_000),
            Duration::from_secs(210),
            "2 s of wall time at 100× after 10 s"
        );
        assert_eq!(resumed_clock(&[], 5), Duration::ZERO);
    }
}

//! The sandbox's ledger of money movements and its request counters: what tests and benchmarks
//! read (`GET /__sandbox/ledger`, `GET /__sandbox/counters`) to assert that every item was paid
//! exactly once. Recipient numbers are never stored, only a digest: an HMAC-SHA256 under a
//! random key of this sandbox's, so that nobody holding the ledger can find a card number or an
//! e-mail by hashing candidates. The key is kept in the state file (its first start writes it),
//! so digests stay comparable across the restarts of one sandbox; it is never printed.
//!
//! Rows are kept in fixed-size fields (`Fixed`: 96 bytes with their sequence number, where nine
//! strings took ~200), and read back as the same `Entry`s.
//!
//! The ledger also carries the sandbox's state file (`journal`), when there is one: it is the
//! one part of the sandbox every emulation already writes to, and `State` keeps its shape
//! (benches assemble it by hand).

use super::compact::{self, Name};
use super::journal::{Journal, Record};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub provider: String,
    /// The client's idempotency key for the payment (Paysend: invoiceId). Payonic has none:
    /// `<paymentid>/<operationid>`, the operation that moved the money.
    pub key: String,
    /// The provider's id of the payment.
    pub payment_id: String,
    pub operation: String,
    /// Exact decimal.
    pub amount: String,
    pub currency: String,
    /// HMAC-SHA256 (hex, first 16 bytes) of the recipient's card or account number (or
    /// e-mail) under the sandbox's digest key.
    pub recipient_digest: String,
    /// Provider time of the movement, RFC 3339.
    pub time: String,
    /// The request that carried it (Paysend: header.request.id; Payonic: its TraceApi header,
    /// empty without one).
    pub request_id: String,
}

/// A ledger row as kept in memory: an [`Entry`] in fixed-size fields (see `compact`), 88
/// bytes instead of nine strings. An entry that does not fit them (Payonic's
/// `<paymentid>/<op>` keys, a time from an older file) is kept whole, apart.
#[derive(Debug, Clone)]
struct Fixed {
    key: [u8; 16],
    payment_id: [u8; 16],
    request_id: [u8; 16],
    recipient_digest: [u8; 16],
    /// The amount's digits (with `scale`).
    minor: i64,
    /// µs since the Unix epoch.
    time: i64,
    provider: Name,
    operation: Name,
    currency: Name,
    scale: u8,
}

impl Fixed {
    fn new(e: &Entry) -> Option<Fixed> {
        let (minor, scale) = compact::decimal(&e.amount)?;
        Some(Fixed {
            key: compact::uuid(&e.key)?,
            payment_id: compact::uuid(&e.payment_id)?,
            request_id: compact::uuid(&e.request_id)?,
            recipient_digest: compact::hex16(&e.recipient_digest)?,
            minor,
            time: compact::time(&e.time)?,
            provider: Name::new(&e.provider)?,
            operation: Name::new(&e.operation)?,
            currency: Name::new(&e.currency)?,
            scale,
        })
    }

    fn entry(&self) -> Entry {
        Entry {
            provider: self.provider.as_str().to_string(),
            key: compact::uuid_text(&self.key),
            payment_id: compact::uuid_text(&self.payment_id),
            operation: self.operation.as_str().to_string(),
            amount: compact::decimal_text(self.minor, self.scale),
            currency: self.currency.as_str().to_string(),
            recipient_digest: crate::keys::hex_lower(&self.recipient_digest),
            time: compact::time_text(self.time),
            request_id: compact::uuid_text(&self.request_id),
        }
    }
}

/// One shard's rows, each with its sequence number: fixed ones in chunks of a fixed capacity
/// (a growing ledger never holds a doubled array's spare half, nor copies it when growing),
/// whole ones apart.
#[derive(Default)]
struct Rows {
    fixed: Vec<Vec<(u64, Fixed)>>,
    whole: Vec<(u64, Entry)>,
}

impl Rows {
    const CHUNK: usize = 4096;

    fn push(&mut self, seq: u64, e: Entry) {
        let Some(f) = Fixed::new(&e).filter(|f| f.entry() == e) else {
            self.whole.push((seq, e));
            return;
        };
        match self.fixed.last_mut() {
            Some(c) if c.len() < Rows::CHUNK => c.push((seq, f)),
            _ => {
                let mut c = Vec::with_capacity(Rows::CHUNK);
                c.push((seq, f));
                self.fixed.push(c);
            }
        }
    }

    fn len(&self) -> usize {
        self.fixed.iter().map(Vec::len).sum::<usize>() + self.whole.len()
    }

    /// Every row as an entry, with its sequence number.
    fn entries(&self) -> impl Iterator<Item = (u64, Entry)> + '_ {
        let fixed = self.fixed.iter().flatten().map(|(s, f)| (*s, f.entry()));
        fixed.chain(self.whole.iter().map(|(s, e)| (*s, e.clone())))
    }

    fn clear(&mut self) {
        *self = Rows::default();
    }
}

/// Entries and request counters are kept in shards picked by the recording thread, so that
/// concurrent requests never wait on one lock; reading merges the shards.
const SHARDS: usize = 16;

fn shard() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    MINE.with(|m| *m)
}

pub struct Ledger {
    /// (sequence, entry): the sequence restores the order of recording across shards.
    entries: Vec<Mutex<Rows>>,
    sequence: AtomicU64,
    counters: Vec<Mutex<BTreeMap<String, u64>>>,
    /// Named events ("payonic.notifications.dropped", "payonic.declined.capture", …).
    events: Vec<Mutex<BTreeMap<String, u64>>>,
    pub rate_limited: AtomicU64,
    pub duplicates_refused: AtomicU64,
    pub replays: AtomicU64,
    pub dropped_after_commit: AtomicU64,
    pub error_5xx_after_commit: AtomicU64,
    pub webhooks_sent: AtomicU64,
    /// The state file every change is journaled to (none: nothing is persisted).
    journal: OnceLock<Arc<Journal>>,
    /// The key of the recipient digests: random, or the one a replayed state file holds.
    digest_key: std::sync::RwLock<(DigestKey, ring::hmac::Key)>,
    /// Whether `digest_key` came from the state file (else it is journaled when one is set).
    key_replayed: std::sync::atomic::AtomicBool,
}

/// The key of a sandbox's recipient digests, as hex; its `Debug` shows no digit of it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DigestKey(String);

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(…)")
    }
}

impl DigestKey {
    fn random() -> DigestKey {
        let mut bytes = [0u8; 32];
        // Without system randomness the digests stay keyed, by a key nobody chose.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            bytes[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
        }
        DigestKey(crate::keys::hex_lower(&bytes))
    }

    fn hmac(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.0.as_bytes())
    }
}

/// The ledger's fixed counters, by name (journal lines and [`Ledger::bump`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    RateLimited,
    DuplicatesRefused,
    Replays,
    DroppedAfterCommit,
    /// Processed, then answered 504 (`faults.error_5xx_after_commit_rate`).
    Error5xxAfterCommit,
    WebhooksSent,
}

impl Counter {
    const ALL: [Counter; 6] = [
        Counter::RateLimited,
        Counter::DuplicatesRefused,
        Counter::Replays,
        Counter::DroppedAfterCommit,
        Counter::Error5xxAfterCommit,
        Counter::WebhooksSent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::RateLimited => "rate_limited",
            Counter::DuplicatesRefused => "duplicates_refused",
            Counter::Replays => "replays",
            Counter::DroppedAfterCommit => "dropped_after_commit",
            Counter::Error5xxAfterCommit => "error_5xx_after_commit",
            Counter::WebhooksSent => "webhooks_sent",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Counters {
    /// "METHOD path status" → count.
    pub requests: BTreeMap<String, u64>,
    /// Named events → count (Payonic: notifications sent/dropped/duplicated/delayed/reordered/
    /// failed, declined operations per function, replayed MITs, requests reusing a TraceApi).
    pub events: BTreeMap<String, u64>,
    pub rate_limited: u64,
    pub duplicates_refused: u64,
    pub replays: u64,
    pub dropped_after_commit: u64,
    /// Requests processed and then answered 504 (their money moved).
    #[serde(default)]
    pub error_5xx_after_commit: u64,
    pub webhooks_sent: u64,
    pub payments: u64,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            entries: (0..SHARDS).map(|_| Mutex::new(Rows::default())).collect(),
            sequence: AtomicU64::new(0),
            counters: (0..SHARDS).map(|_| Mutex::new(BTreeMap::new())).collect(),
            events: (0..SHARDS).map(|_| Mutex::new(BTreeMap::new())).collect(),
            rate_limited: AtomicU64::new(0),
            duplicates_refused: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            dropped_after_commit: AtomicU64::new(0),
            error_5xx_after_commit: AtomicU64::new(0),
            webhooks_sent: AtomicU64::new(0),
            journal: OnceLock::new(),
            digest_key: {
                let k = DigestKey::random();
                let h = k.hmac();
                std::sync::RwLock::new((k, h))
            },
            key_replayed: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Ledger {
    /// Journals every change from now on to `journal` (once; later calls change nothing),
    /// starting with the digest key when the file did not hold one yet.
    pub fn persist_to(&self, journal: Arc<Journal>) {
        if self.journal.set(journal).is_ok() && !self.key_replayed.load(Ordering::Acquire) {
            let key = self
                .digest_key
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone();
            self.journal_record(|| Record::DigestKey { key });
        }
    }

    /// The digest kept instead of a recipient's card or account number or e-mail: keyed by
    /// this sandbox's key, so it cannot be reversed by hashing candidates.
    pub fn recipient_digest(&self, number: &str) -> String {
        let k = self.digest_key.read().unwrap_or_else(|p| p.into_inner());
        let tag = ring::hmac::sign(&k.1, number.as_bytes());
        crate::keys::hex_lower(&tag.as_ref()[..16])
    }

    /// The state file, when the sandbox has one.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.get()
    }

    /// Journals `r` when the sandbox persists its state.
    pub fn journal_record(&self, r: impl FnOnce() -> Record) {
        if let Some(j) = self.journal.get() {
            j.append(&r());
        }
    }

    fn atomic(&self, c: Counter) -> &AtomicU64 {
        match c {
            Counter::RateLimited => &self.rate_limited,
            Counter::DuplicatesRefused => &self.duplicates_refused,
            Counter::Replays => &self.replays,
            Counter::DroppedAfterCommit => &self.dropped_after_commit,
            Counter::Error5xxAfterCommit => &self.error_5xx_after_commit,
            Counter::WebhooksSent => &self.webhooks_sent,
        }
    }

    /// Adds one to a fixed counter.
    pub fn bump(&self, c: Counter) {
        self.atomic(c).fetch_add(1, Ordering::Relaxed);
        self.journal_record(|| Record::Bump {
            counter: c.name().to_string(),
        });
    }

    /// Replays a journaled record of the ledger's (others are ignored).
    pub fn apply(&self, r: &Record) {
        match r {
            Record::Entry { entry } => self.push(entry.clone()),
            Record::Count { what } => self.add_count(what.clone()),
            Record::Event { what } => self.add_event(what),
            Record::Bump { counter } => {
                if let Some(c) = Counter::ALL.iter().find(|c| c.name() == counter) {
                    self.atomic(*c).fetch_add(1, Ordering::Relaxed);
                }
            }
            Record::Reset => self.clear(),
            // Kept across a reset: digests written before and after it stay comparable.
            Record::DigestKey { key } => {
                let h = key.hmac();
                *self.digest_key.write().unwrap_or_else(|p| p.into_inner()) = (key.clone(), h);
                self.key_replayed.store(true, Ordering::Release);
            }
            _ => {}
        }
    }

    pub fn record(&self, e: Entry) {
        self.journal_record(|| Record::Entry { entry: e.clone() });
        self.push(e);
    }

    fn push(&self, e: Entry) {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        self.entries[shard()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(seq, e);
    }

    /// Every entry, in the order recorded.
    pub fn entries(&self) -> Vec<Entry> {
        let mut all: Vec<(u64, Entry)> = Vec::new();
        for s in &self.entries {
            let rows = s.lock().unwrap_or_else(|p| p.into_inner());
            all.extend(rows.entries());
        }
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, e)| e).collect()
    }

    pub fn count(&self, what: String) {
        self.journal_record(|| Record::Count { what: what.clone() });
        self.add_count(what);
    }

    fn add_count(&self, what: String) {
        *self.counters[shard()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(what)
            .or_insert(0) += 1;
    }

    pub fn event(&self, what: &str) {
        self.journal_record(|| Record::Event {
            what: what.to_string(),
        });
        self.add_event(what);
    }

    fn add_event(&self, what: &str) {
        let mut m = self.events[shard()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match m.get_mut(what) {
            Some(n) => *n += 1,
            None => {
                m.insert(what.to_string(), 1);
            }
        }
    }

    pub fn counters(&self) -> Counters {
        let merge = |maps: &[Mutex<BTreeMap<String, u64>>]| {
            let mut all = BTreeMap::new();
            for s in maps {
                for (k, v) in s.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    *all.entry(k.clone()).or_insert(0) += v;
                }
            }
            all
        };
        Counters {
            requests: merge(&self.counters),
            events: merge(&self.events),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            duplicates_refused: self.duplicates_refused.load(Ordering::Relaxed),
            replays: self.replays.load(Ordering::Relaxed),
            dropped_after_commit: self.dropped_after_commit.load(Ordering::Relaxed),
            error_5xx_after_commit: self.error_5xx_after_commit.load(Ordering::Relaxed),
            webhooks_sent: self.webhooks_sent.load(Ordering::Relaxed),
            payments: self
                .entries
                .iter()
                .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len() as u64)
                .sum(),
        }
    }

    /// Forgets every entry and counter (journaled: a sandbox restarted on the file forgets
    /// them too).
    pub fn reset(&self) {
        self.journal_record(|| Record::Reset);
        self.clear();
    }

    fn clear(&self) {
        for s in self.entries.iter() {
            s.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        for s in self.counters.iter().chain(self.events.iter()) {
            s.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        for c in [
            &self.rate_limited,
            &self.duplicates_refused,
            &self.replays,
            &self.dropped_after_commit,
            &self.error_5xx_after_commit,
            &self.webhooks_sent,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

impl Ledger {
    /// The ledger and counters kept in a sandbox state file, read without starting a sandbox
    /// (a torn last line is ignored, the file is not changed).
    pub fn from_state_file(path: &std::path::Path) -> Result<Ledger, String> {
        if !path.is_file() {
            return Err(format!(
                "no sandbox state at {} (hint: `payrun sandbox --state FILE` or `payrun run --sandbox` create one; a rehearsal's is <state-dir>/<batch>.sandbox)",
                path.display()
            ));
        }
        let replay = super::journal::read(path)?;
        let ledger = Ledger::default();
        for r in &replay.records {
            ledger.apply(r);
        }
        Ok(ledger)
    }
}

/// The (provider, key, times) of every key with more than one money movement, in key order.
pub fn paid_more_than_once(entries: &[Entry]) -> Vec<(String, String, usize)> {
    let mut n: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for e in entries {
        *n.entry((&e.provider, &e.key)).or_insert(0) += 1;
    }
    n.into_iter()
        .filter(|(_, c)| *c > 1)
        .map(|((p, k), c)| (p.to_string(), k.to_string(), c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipient_digest_is_keyed_per_sandbox_and_is_no_plain_hash_of_the_number() {
        use sha2::{Digest, Sha256};
        let card = "4539025531693033";
        let (a, b) = (Ledger::default(), Ledger::default());
        assert_eq!(a.recipient_digest(card), a.recipient_digest(card));
        assert_ne!(
            a.recipient_digest(card),
            a.recipient_digest("4539025531693034")
        );
        assert_ne!(
            a.recipient_digest(card),
            b.recipient_digest(card),
            "another sandbox, another key"
        );
        let plain = crate::keys::hex_lower(&Sha256::digest(card.as_bytes())[..16]);
        assert_ne!(a.recipient_digest(card), plain);
    }

    #[test]
    fn an_entry_comes_back_as_recorded_whether_its_fields_are_kept_fixed_or_whole() {
        let ledger = Ledger::default();
        let paysend = Entry {
            provider: "paysend".into(),
            key: crate::keys::task_key("item", "key"),
            payment_id: crate::keys::task_key("payment", "id"),
            operation: "pay.toAccount".into(),
            amount: "10.50".into(),
            currency: "EUR".into(),
            recipient_digest: ledger.recipient_digest("DE89370400440532013000"),
            time: "2026-12-02T07:14:36.123456+00:00".into(),
            request_id: crate::keys::task_key("request", "id"),
        };
        let payonic = Entry {
            provider: "payonic".into(),
            key: "P1/op-1".into(),
            payment_id: "P1".into(),
            request_id: String::new(),
            ..paysend.clone()
        };
        assert!(Fixed::new(&paysend).is_some());
        assert!(Fixed::new(&payonic).is_none());
        assert_eq!(std::mem::size_of::<Fixed>(), 88);
        ledger.record(paysend.clone());
        ledger.record(payonic.clone());
        assert_eq!(ledger.entries(), [paysend, payonic]);
        assert_eq!(ledger.counters().payments, 2);
    }

    #[test]
    fn a_replayed_state_file_keeps_the_digest_key_and_never_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sandbox");
        let card = "4539025531693033";
        let first = {
            let (j, _) = Journal::open(&path).unwrap();
            let ledger = Ledger::default();
            ledger.persist_to(Arc::new(j));
            ledger.reset();
            let d = ledger.recipient_digest(card);
            ledger.journal().unwrap().flush().unwrap();
            ledger.journal().unwrap().close().unwrap();
            d
        };
        let (j, replay) = Journal::open(&path).unwrap();
        let again = Ledger::default();
        for r in &replay.records {
            again.apply(r);
        }
        again.persist_to(Arc::new(j));
        assert_eq!(
            again.recipient_digest(card),
            first,
            "kept across restarts and resets"
        );
        let keys = replay
            .records
            .iter()
            .filter(|r| matches!(r, Record::DigestKey { .. }))
            .count();
        assert_eq!(keys, 1, "written once, by the first start");
        assert!(!format!("{:?}", replay.records).contains(&again.digest_key.read().unwrap().0.0));
    }
}

//! The checkpoint store: one redb file per batch holding every item's state machine, committed
//! with ACID transactions. Transitions of many items are written in one transaction (group
//! commit), and a state is committed *before* the effect it announces is performed.
//!
//! The store holds ids, keys, states, provider ids, error codes, timings and a digest of each
//! item's content — never card or account numbers, never payloads — and amounts, so its file
//! is readable by its owner only (0600 from its creation, `crate::private`).
//!
//! It also journals the notifications that settle items: what the adapter read from each
//! (`Notice`: keys, references, outcomes — not the body), under the SHA-256 of the body so a
//! duplicate is recognised, committed before the notification is acted on or acknowledged. A
//! watermark committed with the item states tells which journaled notices have taken effect;
//! a run that stopped between the two acts on the rest when it resumes.

use super::machine::State;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const ITEMS: TableDefinition<u64, &[u8]> = TableDefinition::new("items");
/// Journaled notices by sequence number (from 1).
const NOTICES: TableDefinition<u64, &[u8]> = TableDefinition::new("notices");
/// Sequence number of each journaled notice by the SHA-256 of its path and body.
const NOTICE_DIGESTS: TableDefinition<&[u8], u64> = TableDefinition::new("notice_digests");
/// META key: the last journaled notice whose effect is committed.
const APPLIED: &str = "notices_applied";
/// The batch's items as they were when it started (`fixed::entries`), under [`FIXED_ITEMS`].
const FIXED: TableDefinition<&str, &[u8]> = TableDefinition::new("fixed");
const FIXED_ITEMS: &str = "items";

/// A notification as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journaled {
    /// When it arrived (ms since the epoch).
    pub received: u64,
    pub notice: crate::providers::Notice,
}

/// What the store keeps per item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub key: String,
    /// The item's content digest when it was first stored (see plan::content_digest).
    pub digest: String,
    pub line: u64,
    pub state: State,
    /// Requests sent for this item, lookups included.
    pub requests: u32,
    /// (amount, currency) of each payout of the item.
    #[serde(default)]
    pub money: crate::wire::Amounts,
    /// The item's attempt: 1, then 2 (with a new key) after `run --retry-failed`.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Earlier attempts' keys and how they ended (oldest first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<Earlier>,
    /// When a request for this attempt first left (ms since the epoch).
    #[serde(default)]
    pub first_sent: Option<u64>,
    /// When the state last changed.
    #[serde(default)]
    pub updated: u64,
    /// Set for a delayed step of the item (the tree path of its delayed task): a request payrun
    /// sends on its own after the payout it follows ended. Absent for the item itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The support id of the request that submitted this attempt (Payonic `TraceApi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Set when the item's content was changed or the item was added after the batch started
    /// and an operator accepted that (`--accept-changes`): when and why, for reviewers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<String>,
    /// What the provider answered when this node succeeded, as JSON, kept where a later node
    /// reads it (`${result.<node>.<path>}`): the fields the request sent, overlaid with the
    /// answer's, with every field the schema marks sensitive and anything shaped like a card
    /// number removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

fn first_attempt() -> u32 {
    1
}

/// An attempt that ended in a failure the provider calls safe to resend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Earlier {
    pub key: String,
    pub code: String,
    pub at: u64,
}

/// Where a delayed step of item `item` is stored: above every item index.
pub fn step_index(step: usize, item: usize) -> u64 {
    ((step as u64) << 32) | item as u64
}

/// (step, item) of a stored index; step 0 is the item itself.
pub fn split_index(index: u64) -> (usize, usize) {
    ((index >> 32) as usize, (index & 0xffff_ffff) as usize)
}

impl Record {
    /// A planned item that has not been touched yet.
    pub fn planned(
        id: &str,
        key: &str,
        digest: &str,
        line: u64,
        money: crate::wire::Amounts,
    ) -> Record {
        Record {
            id: id.to_string(),
            key: key.to_string(),
            digest: digest.to_string(),
            line,
            state: State::Planned,
            requests: 0,
            money,
            attempt: 1,
            earlier: Vec::new(),
            first_sent: None,
            updated: 0,
            step: None,
            trace: None,
            accepted: None,
            result: None,
        }
    }
}

/// What went wrong with a batch's store, by the kind that matters to the operator; the CLI
/// turns it into words and an exit code (`errors::exit_code`). Each message names the file.
/// redb's page cache for a batch's store. Its default (1 GiB) would keep the whole store in
/// memory — some 650 bytes per item, 650 MB for a million; the runner reads each record once
/// and writes in groups, so a small cache costs nothing measurable.
const CACHE_BYTES: usize = 32 << 20;

#[derive(Debug)]
pub enum StoreError {
    /// The batch has no store in the folder: it never started there.
    Missing { batch: String, dir: PathBuf },
    /// Another process has the store open: a runner of the batch (one runner per batch).
    Busy { path: PathBuf },
    /// A store appeared while this run was starting the batch (another run started it).
    Appeared { path: PathBuf },
    /// A file operation on the store or its folder failed (a full disk, permissions…).
    Io {
        /// What payrun was doing, after "cannot": "create", "open", "sync"…
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store is in a file format or layout this payrun does not read.
    Incompatible { path: PathBuf, why: String },
    /// What the store holds cannot be read: the file is damaged, or a newer payrun wrote it.
    Corrupt { path: PathBuf, why: String },
    /// The database refused an operation for a reason none of the above names (a bug).
    Database { path: PathBuf, why: String },
    /// The runner cannot listen for notifications on the manifest's address.
    Listen {
        addr: String,
        source: std::io::Error,
    },
    /// Anything else, in words.
    Other(String),
}

impl StoreError {
    /// A store error of no particular kind, in words.
    pub fn other(why: impl std::fmt::Display) -> StoreError {
        StoreError::Other(why.to_string())
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Missing { batch, dir } => write!(
                f,
                "no batch `{batch}` in {} (hint: `payrun list --state-dir {}` lists the batches there)",
                dir.display(),
                dir.display()
            ),
            StoreError::Busy { path } => write!(
                f,
                "{} is open in another payrun process (only one runner per batch)",
                path.display()
            ),
            StoreError::Appeared { path } => write!(
                f,
                "{} appeared while this run started the batch (another run?); run again",
                path.display()
            ),
            StoreError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            StoreError::Incompatible { path, why } => write!(
                f,
                "cannot open {}: {why} (hint: run the batch with the payrun version that started it)",
                path.display()
            ),
            StoreError::Corrupt { path, why } => write!(
                f,
                "{} cannot be read: {why} (hint: a newer payrun may have written it; else restore the state folder from a backup)",
                path.display()
            ),
            StoreError::Database { path, why } => write!(
                f,
                "{}: {why} (hint: run again; if it repeats, report it with this message)",
                path.display()
            ),
            StoreError::Listen { addr, source } => write!(
                f,
                "cannot listen for notifications on {addr}: {source} (hint: is another process using it? `notifications.listen` in the manifest names it)"
            ),
            StoreError::Other(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } | StoreError::Listen { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A record that cannot be put into JSON (never seen: records are plain data).
fn encode(e: serde_json::Error) -> StoreError {
    StoreError::other(format!("cannot encode a record for the store: {e}"))
}

/// What redb said of the store at `path`, by kind: another process holding it, I/O, damage, a
/// format this payrun does not read, or anything else in redb's words.
fn db(path: &Path, action: &'static str, e: impl Into<redb::Error>) -> StoreError {
    let path = path.to_path_buf();
    match e.into() {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            StoreError::Busy { path }
        }
        redb::Error::Io(source) => StoreError::Io {
            action,
            path,
            source,
        },
        redb::Error::Corrupted(why) => StoreError::Corrupt { path, why },
        e @ (redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }) => StoreError::Incompatible {
            path,
            why: e.to_string(),
        },
        e => StoreError::Database {
            path,
            why: e.to_string(),
        },
    }
}

pub struct Store {
    db: std::sync::Arc<Database>,
    pub path: PathBuf,
    /// Transactions committed so far (for the commits-per-payout figure).
    pub commits: u64,
}

/// How long a command waits for another payrun command reading a store it needs: a reader of
/// a million-item batch lets go within seconds.
pub const READERS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
/// After how long a wait for a reader is said, and how often the store is tried again.
const READER_NOTICE: std::time::Duration = std::time::Duration::from_millis(500);
const READER_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// What is at a batch's store path.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// No store: the batch never started (nothing was sent for it).
    Missing,
    /// A store a run was killed while creating (by a payrun older than atomic creation): it
    /// holds no commit of a started batch, so nothing was sent for it. Why, in words.
    Unfinished(String),
    /// A started batch.
    Ready,
}

fn store_path(dir: &Path, batch: &str) -> PathBuf {
    dir.join(format!("{batch}.redb"))
}

/// Where a store is built before it is renamed into place.
const PARTIAL: &str = ".redb.partial-";

impl Store {
    /// What redb said while this store was in use.
    fn fail(&self, e: impl Into<redb::Error>) -> StoreError {
        db(&self.path, "read or write", e)
    }

    /// A record of this store that cannot be read back.
    fn unreadable(&self, what: String, e: serde_json::Error) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            why: format!("{what} is not one this payrun wrote ({e})"),
        }
    }

    /// Whether batch `batch` has a store in `dir`, and whether it is one a run completed.
    /// Never creates anything.
    pub fn find(dir: &Path, batch: &str) -> Found {
        let path = store_path(dir, batch);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Found::Missing;
        };
        // redb writes its header (magic number first) last when it creates a file: without
        // it, creation never finished. Read directly: opening a large store costs a recovery.
        let mut magic = [0u8; 9];
        let has_magic = std::fs::File::open(&path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && magic == *b"redb\x1a\x0a\xa9\x0d\x0a";
        if !has_magic {
            return Found::Unfinished(format!(
                "it was never completed (no redb header in its {} bytes)",
                meta.len()
            ));
        }
        // A store an older payrun created and was killed before starting the batch in is
        // small (empty tables); a large one is a started batch.
        if meta.len() > 1 << 20 {
            return Found::Ready;
        }
        match Database::open(&path) {
            Ok(db) => {
                // A batch starts with one commit holding its meta; a store without it was never
                // started (older payruns created the store first and wrote the meta later).
                let started = db
                    .begin_read()
                    .ok()
                    .and_then(|t| t.open_table(META).ok())
                    .and_then(|t| t.get("batch").ok().flatten().map(|_| ()))
                    .is_some();
                let touched = db
                    .begin_read()
                    .ok()
                    .and_then(|t| t.open_table(ITEMS).ok())
                    .is_some_and(|t| {
                        use redb::ReadableTableMetadata;
                        t.len().unwrap_or(1) > 0
                    });
                if started || touched {
                    Found::Ready
                } else {
                    Found::Unfinished("it holds no started batch".into())
                }
            }
            // What redb says of a file whose creation never finished: its header (written
            // last) is missing or the file is empty. redb tells these apart from other damage
            // only in words (`StorageError::Corrupted(String)`), so its words are read here;
            // the magic number was checked above, so this is a last resort.
            Err(e)
                if {
                    let t = e.to_string();
                    t.contains("magic number") || t.contains("file is empty")
                } =>
            {
                Found::Unfinished(format!("it was never completed ({e})"))
            }
            // Held by a runner, or damaged in a way creation cannot explain: open() says why.
            Err(_) => Found::Ready,
        }
    }

    /// Moves an unfinished store aside (to `<batch>.redb.unfinished-<ms>`) so the batch can
    /// start; the caller holds the batch's lock. Returns where it went.
    pub fn set_aside(dir: &Path, batch: &str) -> Result<PathBuf, StoreError> {
        let path = store_path(dir, batch);
        let to = dir.join(format!(
            "{batch}.redb.unfinished-{}",
            super::runner::now_ms()
        ));
        std::fs::rename(&path, &to).map_err(|source| StoreError::Io {
            action: "move aside",
            path: path.clone(),
            source,
        })?;
        crate::private::tighten(&to);
        Ok(to)
    }

    /// Starts a batch: its store, with `meta` and the fixed item entries, built under a
    /// temporary name, made durable and renamed into place (then the folder synced). A run
    /// killed at any instant of this leaves either no store (the batch never started; a
    /// leftover temporary file is removed by the next start) or a complete one.
    pub fn create(
        dir: &Path,
        batch: &str,
        meta: &[(&str, &str)],
        fixed: &[u8],
    ) -> Result<Store, StoreError> {
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| StoreError::Io {
                action,
                path,
                source,
            }
        };
        crate::private::state_dir(dir).map_err(io("create", dir))?;
        let path = store_path(dir, batch);
        if path.exists() {
            return Err(StoreError::Appeared { path });
        }
        let prefix = format!("{batch}{PARTIAL}");
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let tmp = dir.join(format!("{prefix}{}", std::process::id()));
        {
            // Private (0600) before redb writes a byte into it: the store holds net pay per
            // employee. redb initialises an empty file it is given.
            crate::private::create_new(&tmp).map_err(io("create", &tmp))?;
            let fail = |e: redb::Error| db(&tmp, "create", e);
            let database = Database::create(&tmp).map_err(|e| fail(e.into()))?;
            let txn = database.begin_write().map_err(|e| fail(e.into()))?;
            {
                let mut m = txn.open_table(META).map_err(|e| fail(e.into()))?;
                for (k, v) in meta {
                    m.insert(*k, *v).map_err(|e| fail(e.into()))?;
                }
                txn.open_table(ITEMS).map_err(|e| fail(e.into()))?;
                txn.open_table(NOTICES).map_err(|e| fail(e.into()))?;
                txn.open_table(NOTICE_DIGESTS).map_err(|e| fail(e.into()))?;
                let mut f = txn.open_table(FIXED).map_err(|e| fail(e.into()))?;
                f.insert(FIXED_ITEMS, fixed).map_err(|e| fail(e.into()))?;
            }
            super::crash::point("store-create");
            txn.commit().map_err(|e| fail(e.into()))?;
        }
        let sync = |p: &Path| {
            std::fs::File::open(p)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", p))
        };
        sync(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(io("create", &path))?;
        sync(dir)?;
        super::crash::point("store-created");
        let mut s = Store::open(dir, batch)?;
        s.commits = 1;
        Ok(s)
    }

    /// Records an accepted change of the batch's items in one transaction: the new fixed
    /// entries, the items' records (marked with the note) and the override in the meta's
    /// `overrides` list (JSON lines, oldest first).
    pub fn accept(
        &mut self,
        fixed: &[u8],
        records: &[(u64, &Record)],
        override_line: &str,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut f = txn.open_table(FIXED).map_err(|e| self.fail(e))?;
            f.insert(FIXED_ITEMS, fixed).map_err(|e| self.fail(e))?;
            let mut t = txn.open_table(ITEMS).map_err(|e| self.fail(e))?;
            for (i, r) in records {
                let bytes = serde_json::to_vec(r).map_err(encode)?;
                t.insert(*i, bytes.as_slice()).map_err(|e| self.fail(e))?;
            }
            let mut m = txn.open_table(META).map_err(|e| self.fail(e))?;
            let mut all = m
                .get("overrides")
                .map_err(|e| self.fail(e))?
                .map(|v| v.value().to_string())
                .unwrap_or_default();
            all.push_str(override_line);
            all.push('\n');
            m.insert("overrides", all.as_str())
                .map_err(|e| self.fail(e))?;
        }
        txn.commit().map_err(|e| self.fail(e))?;
        self.commits += 1;
        Ok(())
    }

    /// The fixed item entries of the batch (None: a store from before they were kept).
    pub fn fixed(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let t = match txn.open_table(FIXED) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.fail(e)),
        };
        Ok(t.get(FIXED_ITEMS)
            .map_err(|e| self.fail(e))?
            .map(|v| v.value().to_vec()))
    }

    /// The store of a started batch in `dir`.
    pub fn open(dir: &Path, batch: &str) -> Result<Store, StoreError> {
        let path = store_path(dir, batch);
        if !path.exists() {
            return Err(StoreError::Missing {
                batch: batch.to_string(),
                dir: dir.to_path_buf(),
            });
        }
        // A store an older payrun left open to others is made private.
        crate::private::tighten(&path);
        let fail = |e: redb::Error| db(&path, "open", e);
        let database = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| fail(e.into()))?;
        let txn = database.begin_write().map_err(|e| fail(e.into()))?;
        {
            txn.open_table(META).map_err(|e| fail(e.into()))?;
            txn.open_table(ITEMS).map_err(|e| fail(e.into()))?;
            txn.open_table(NOTICES).map_err(|e| fail(e.into()))?;
            txn.open_table(NOTICE_DIGESTS).map_err(|e| fail(e.into()))?;
        }
        txn.commit().map_err(|e| fail(e.into()))?;
        Ok(Store {
            db: std::sync::Arc::new(database),
            path,
            commits: 0,
        })
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let t = txn.open_table(META).map_err(|e| self.fail(e))?;
        Ok(t.get(key)
            .map_err(|e| self.fail(e))?
            .map(|v| v.value().to_string()))
    }

    pub fn set_meta(&mut self, pairs: &[(&str, &str)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut t = txn.open_table(META).map_err(|e| self.fail(e))?;
            for (k, v) in pairs {
                t.insert(*k, *v).map_err(|e| self.fail(e))?;
            }
        }
        txn.commit().map_err(|e| self.fail(e))?;
        self.commits += 1;
        Ok(())
    }

    /// Opens an existing store; fails while a runner holds it.
    pub fn open_existing(dir: &Path, batch: &str) -> Result<Store, StoreError> {
        Store::open(dir, batch)
    }

    /// Opens the store of a started batch, waiting while another payrun process has it open
    /// and `keep_waiting` says that process only reads it (`status` and `report` hold a store
    /// for the moment a read takes): up to `patience`, saying once through `waiting` that it
    /// waits. Gives `Busy` if the store is still held then, or as soon as `keep_waiting` says no.
    pub fn open_waiting(
        dir: &Path,
        batch: &str,
        patience: std::time::Duration,
        mut keep_waiting: impl FnMut() -> bool,
        waiting: impl FnOnce(),
    ) -> Result<Store, StoreError> {
        let start = std::time::Instant::now();
        let mut waiting = Some(waiting);
        loop {
            match Store::open(dir, batch) {
                Err(StoreError::Busy { .. }) if start.elapsed() < patience && keep_waiting() => {
                    if start.elapsed() >= READER_NOTICE
                        && let Some(say) = waiting.take()
                    {
                        say();
                    }
                    std::thread::sleep(READER_PAUSE);
                }
                r => return r,
            }
        }
    }

    /// Every stored record by index: items at their position in the batch, delayed steps at
    /// `step_index`. All at once: for a run, which must not hold a million of them, see `each`.
    pub fn items(&self) -> Result<Vec<(u64, Record)>, StoreError> {
        let mut out = Vec::new();
        self.each(|i, r| out.push((i, r)))?;
        Ok(out)
    }

    /// Every stored record by index, one at a time (in index order).
    pub fn each(&self, f: impl FnMut(u64, Record)) -> Result<(), StoreError> {
        self.reader().each(f)
    }

    /// A handle that reads this store's committed records while it is written: what a run
    /// pages back in of the records it let go, and what `report` streams from a running batch.
    pub fn reader(&self) -> Reader {
        Reader {
            db: std::sync::Arc::clone(&self.db),
            path: self.path.clone(),
        }
    }

    /// Writes many items' records in one durable transaction.
    pub fn commit(&mut self, records: &[(u64, &Record)]) -> Result<(), StoreError> {
        self.commit_with(records, None)
    }

    /// Writes many items' records, and the journal watermark `applied` (the last journaled
    /// notice whose effect these records hold), in one durable transaction.
    pub fn commit_with(
        &mut self,
        records: &[(u64, &Record)],
        applied: Option<u64>,
    ) -> Result<(), StoreError> {
        if records.is_empty() && applied.is_none() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut t = txn.open_table(ITEMS).map_err(|e| self.fail(e))?;
            for (i, r) in records {
                let bytes = serde_json::to_vec(r).map_err(encode)?;
                t.insert(*i, bytes.as_slice()).map_err(|e| self.fail(e))?;
            }
            if let Some(seq) = applied {
                let mut m = txn.open_table(META).map_err(|e| self.fail(e))?;
                m.insert(APPLIED, seq.to_string().as_str())
                    .map_err(|e| self.fail(e))?;
            }
        }
        super::crash::point("mid-commit");
        txn.commit().map_err(|e| self.fail(e))?;
        super::crash::point("after-commit");
        self.commits += 1;
        Ok(())
    }
}

/// Reads a store's committed records (`Store::reader`); every read sees the last commit.
#[derive(Clone)]
pub struct Reader {
    db: std::sync::Arc<Database>,
    path: PathBuf,
}

impl Reader {
    fn fail(&self, e: impl Into<redb::Error>) -> StoreError {
        db(&self.path, "read", e)
    }

    fn parse(&self, index: u64, bytes: &[u8]) -> Result<Record, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            why: format!("the record at {index} is not one this payrun wrote ({e})"),
        })
    }

    /// The record stored at `index`, if any.
    pub fn record(&self, index: u64) -> Result<Option<Record>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let t = txn.open_table(ITEMS).map_err(|e| self.fail(e))?;
        match t.get(index).map_err(|e| self.fail(e))? {
            Some(v) => self.parse(index, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Every stored record by index, one at a time (in index order), as of one commit.
    pub fn each(&self, f: impl FnMut(u64, Record)) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        self.each_in(&txn, f)
    }

    /// A read of the store as of its last commit (`each_in` reads it later, elsewhere).
    pub fn begin(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db.begin_read().map_err(|e| self.fail(e))
    }

    /// Every record `txn` sees, one at a time (in index order).
    pub fn each_in(
        &self,
        txn: &redb::ReadTransaction,
        mut f: impl FnMut(u64, Record),
    ) -> Result<(), StoreError> {
        let t = txn.open_table(ITEMS).map_err(|e| self.fail(e))?;
        for row in t.iter().map_err(|e| self.fail(e))? {
            let (k, v) = row.map_err(|e| self.fail(e))?;
            f(k.value(), self.parse(k.value(), v.value())?);
        }
        Ok(())
    }
}

impl Store {
    /// Journals notices in one durable transaction, each under the digest of what arrived.
    /// Returns each one's sequence number, or None for a duplicate of one journaled before
    /// (in this call or any earlier one), which must not be acted on again.
    pub fn journal(
        &mut self,
        notices: &[([u8; 32], &crate::providers::Notice)],
        received: u64,
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        let mut out = Vec::with_capacity(notices.len());
        {
            let mut t = txn.open_table(NOTICES).map_err(|e| self.fail(e))?;
            let mut d = txn.open_table(NOTICE_DIGESTS).map_err(|e| self.fail(e))?;
            let mut next = t
                .last()
                .map_err(|e| self.fail(e))?
                .map_or(1, |(k, _)| k.value() + 1);
            for (digest, notice) in notices {
                if d.get(digest.as_slice())
                    .map_err(|e| self.fail(e))?
                    .is_some()
                {
                    out.push(None);
                    continue;
                }
                let entry = Journaled {
                    received,
                    notice: (*notice).clone(),
                };
                let bytes = serde_json::to_vec(&entry).map_err(encode)?;
                t.insert(next, bytes.as_slice()).map_err(|e| self.fail(e))?;
                d.insert(digest.as_slice(), next)
                    .map_err(|e| self.fail(e))?;
                out.push(Some(next));
                next += 1;
            }
        }
        txn.commit().map_err(|e| self.fail(e))?;
        self.commits += 1;
        Ok(out)
    }

    /// Whether a notice with this digest was journaled.
    pub fn knows_notice(&self, digest: &[u8; 32]) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let t = txn.open_table(NOTICE_DIGESTS).map_err(|e| self.fail(e))?;
        Ok(t.get(digest.as_slice())
            .map_err(|e| self.fail(e))?
            .is_some())
    }

    /// Journaled notices whose effect was not committed (after the watermark), in order.
    pub fn unapplied_notices(&self) -> Result<Vec<(u64, Journaled)>, StoreError> {
        let applied: u64 = self
            .meta(APPLIED)?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let t = txn.open_table(NOTICES).map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for row in t.range(applied + 1..).map_err(|e| self.fail(e))? {
            let (k, v) = row.map_err(|e| self.fail(e))?;
            let n = serde_json::from_slice(v.value())
                .map_err(|e| self.unreadable(format!("journaled notice {}", k.value()), e))?;
            out.push((k.value(), n));
        }
        Ok(out)
    }

    /// How many notices the journal holds.
    #[cfg(test)]
    pub fn journaled(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let t = txn.open_table(NOTICES).map_err(|e| self.fail(e))?;
        t.len().map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64, state: State) -> Record {
        Record {
            state,
            ..Record::planned(
                &format!("E{i}"),
                &format!("k{i}"),
                "d",
                i + 2,
                Default::default(),
            )
        }
    }

    #[test]
    fn committed_records_are_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::create(dir.path(), "b1", &[("batch", "b1")], &[]).unwrap();
            s.set_meta(&[("fingerprint", "abc")]).unwrap();
            let a = record(0, State::Planned);
            let b = record(
                1,
                State::Sending {
                    attempt: 1,
                    since: 5,
                },
            );
            s.commit(&[(0, &a), (1, &b)]).unwrap();
            assert_eq!(s.commits, 3);
        }
        let s = Store::open(dir.path(), "b1").unwrap();
        assert_eq!(s.meta("fingerprint").unwrap().as_deref(), Some("abc"));
        let items = s.items().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[1].1.state,
            State::Sending {
                attempt: 1,
                since: 5
            }
        );
    }

    fn notice(key: &str) -> crate::providers::Notice {
        crate::providers::Notice::Item {
            key: key.into(),
            verdict: crate::execute::machine::Verdict::Unknown,
        }
    }

    #[test]
    fn a_journaled_notice_is_kept_once_and_stays_unapplied_until_a_commit_says_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::create(dir.path(), "b3", &[("batch", "b3")], &[]).unwrap();
            let (a, b) = (notice("a"), notice("b"));
            let seqs = s
                .journal(&[([1; 32], &a), ([2; 32], &b), ([1; 32], &a)], 7)
                .unwrap();
            assert_eq!(
                seqs,
                vec![Some(1), Some(2), None],
                "the repeat is a duplicate"
            );
            assert_eq!(s.journal(&[([2; 32], &b)], 8).unwrap(), vec![None]);
            s.commit_with(&[], Some(1)).unwrap();
        }
        let s = Store::open(dir.path(), "b3").unwrap();
        let left = s.unapplied_notices().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, 2);
        assert_eq!(left[0].1.notice, notice("b"));
        assert_eq!(left[0].1.received, 7);
        assert_eq!(s.journaled().unwrap(), 2);
    }

    #[test]
    fn a_second_runner_cannot_open_the_same_batch() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::create(dir.path(), "b2", &[("batch", "b2")], &[]).unwrap();
        let second = Store::open(dir.path(), "b2");
        assert!(second.is_err_and(|e| matches!(e, StoreError::Busy { .. })
            && e.to_string().contains("another payrun process")));
    }

    #[test]
    fn a_batch_never_started_or_started_twice_is_told_by_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Store::open(dir.path(), "nope").err().unwrap();
        assert!(
            matches!(&missing, StoreError::Missing { batch, .. } if batch == "nope"),
            "{missing:?}"
        );
        assert!(missing.to_string().contains("no batch `nope` in"));
        drop(Store::create(dir.path(), "b", &[("batch", "b")], &[]).unwrap());
        let again = Store::create(dir.path(), "b", &[("batch", "b")], &[])
            .err()
            .unwrap();
        assert!(matches!(again, StoreError::Appeared { .. }), "{again:?}");
    }

    #[test]
    fn what_redb_says_is_sorted_into_kinds() {
        let p = Path::new("/state/b.redb");
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full");
        assert!(matches!(
            db(p, "open", redb::Error::DatabaseAlreadyOpen),
            StoreError::Busy { .. }
        ));
        assert!(matches!(
            db(p, "open", redb::Error::LockProtocolMismatch),
            StoreError::Busy { .. }
        ));
        assert!(matches!(
            db(p, "open", redb::Error::Io(io)),
            StoreError::Io { action: "open", .. }
        ));
        assert!(matches!(
            db(p, "open", redb::Error::Corrupted("bad page".into())),
            StoreError::Corrupt { .. }
        ));
        assert!(matches!(
            db(p, "open", redb::Error::UpgradeRequired(2)),
            StoreError::Incompatible { .. }
        ));
        assert!(matches!(
            db(p, "open", redb::Error::TableDoesNotExist("x".into())),
            StoreError::Database { .. }
        ));
    }

    #[test]
    fn a_record_that_cannot_be_read_back_is_corrupt_naming_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path(), "b", &[("batch", "b")], &[]).unwrap();
        {
            let txn = s.db.begin_write().unwrap();
            txn.open_table(ITEMS)
                .unwrap()
                .insert(3, b"not json".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let e = s.items().err().unwrap();
        assert!(
            matches!(&e, StoreError::Corrupt { path, why } if path == &s.path && why.contains("the record at 3")),
            "{e:?}"
        );
    }

    #[test]
    fn a_store_killed_while_being_created_is_recognised_as_never_started() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Store::find(dir.path(), "b"), Found::Missing);
        // What an older payrun left when killed inside redb's create: no header yet.
        std::fs::write(dir.path().join("b.redb"), [0u8; 100]).unwrap();
        assert!(matches!(Store::find(dir.path(), "b"), Found::Unfinished(_)));
        std::fs::write(dir.path().join("b.redb"), []).unwrap();
        assert!(matches!(Store::find(dir.path(), "b"), Found::Unfinished(_)));
        let aside = Store::set_aside(dir.path(), "b").unwrap();
        assert!(aside.exists());
        assert_eq!(Store::find(dir.path(), "b"), Found::Missing);
        // A leftover temporary file of a killed creation is no store, and is cleared away.
        std::fs::write(dir.path().join("b.redb.partial-1"), b"junk").unwrap();
        let s = Store::create(dir.path(), "b", &[("batch", "b")], &[7; 32]).unwrap();
        assert_eq!(s.fixed().unwrap(), Some(vec![7; 32]));
        drop(s);
        assert_eq!(Store::find(dir.path(), "b"), Found::Ready);
        assert!(!dir.path().join("b.redb.partial-1").exists());
    }
}

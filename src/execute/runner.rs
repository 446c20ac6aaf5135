//! The runner: the I/O around the pure state machine, for any provider behind the `Adapter`
//! trait. One loop owns every node's state (`graph::Book`, which holds only the nodes not
//! ended). Items not started wait behind a cursor, nodes due at a time in a timer queue; the
//! loop ticks what is due, admits new items only as fast as requests can leave (so a crash
//! finds few items "sending"), commits the new states in one transaction, and only then
//! performs the effects — packed submissions and lookups. Each waits in the loop's outbox until
//! a slot, the rate limiters and the pace let it leave (`Wire::dispatch`; their waits are the
//! loop's timers), then a spawned task exchanges it and classifies the answer. Answers,
//! notifications and control-socket questions come back as messages, are applied, and
//! committed together (group commit).

use super::errors::RunError;
use super::graph::{Ask, Book, Gate, HOLD, Rejection, Render, Unmade};
use super::machine::{Event, Millis, State, Timings, Verdict};
use super::store::{Record, Store, StoreError};
use crate::compile::Flow;
use crate::providers::{Adapter, Answer, Method, Notice, Outgoing, Rendered, Request};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One item as planned: identity, content digest, where its row is, and what it pays. What
/// it sends is rendered from its row when it is sent (`graph::Render`), never kept.
pub struct PlannedItem {
    pub id: String,
    pub key: crate::wire::Id128,
    pub digest: crate::wire::Id128,
    pub line: u64,
    /// Its position in the batch, and where its row starts in a CSV file (`validate::ItemRow`).
    pub index: u64,
    pub offset: u64,
    pub money: crate::wire::Amounts,
}

impl PlannedItem {
    /// Its record before anything was done for it.
    pub fn record(&self) -> Record {
        Record::planned(
            &self.id,
            &self.key.text(),
            &self.digest.text(),
            self.line,
            self.money.clone(),
        )
    }
}

/// Where and through which adapter to send.
#[derive(Clone)]
pub struct Endpoint {
    pub base_url: String,
    pub adapter: Arc<dyn Adapter>,
    /// The client that reaches the provider (`super::http::client`: TLS, proxies).
    pub http: reqwest::Client,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub items: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub needs_review: usize,
    pub unfinished: usize,
    /// Paid, then reported failed or returned (money moved back).
    pub reversed: usize,
    /// Set when the run stopped because the provider could not be reached: the last failure.
    pub unreachable: Option<String>,
    /// Set when the batch's preflight failed (nothing was sent): why, and whether the provider
    /// could not be reached at all.
    pub preflight: Option<(String, bool)>,
    pub requests: u64,
    pub commits: u64,
    /// Delayed steps: done (sent and answered, or skipped), failed, not finished.
    pub steps_done: usize,
    pub steps_failed: usize,
    pub steps_open: usize,
    /// Notifications journaled and acted on, recognised as duplicates, and rejected (they name
    /// nothing this run waits for, or contradict what an item sent).
    pub notices: NoticeCounts,
    /// Answers in which the provider pushed back (busy, 429, Retry-After), the configured rate
    /// and the lowest the pace went under it (`super::pace`).
    pub pushbacks: u64,
    pub pace_ceiling: f64,
    pub pace_lowest: f64,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct NoticeCounts {
    pub taken: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Taken from the journal after a stop: journaled, but their effect was not committed.
    pub replayed: u64,
}

/// What the run's closing line appends when the provider pushed back (nothing otherwise).
pub fn pushback_note(s: &Summary) -> String {
    if s.pushbacks == 0 {
        return String::new();
    }
    format!(
        "; {} pushback answers (busy, 429, Retry-After), pace down to {}/s of {}/s",
        s.pushbacks,
        super::pace::per_second(s.pace_lowest),
        super::pace::per_second(s.pace_ceiling)
    )
}

pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// What comes back to the loop.
enum Outcome {
    Sent(Vec<(usize, Verdict)>),
    /// What the batch's preflight answered (`true`: no answer of the provider's).
    Preflight(crate::providers::Preflight, bool),
    /// A key lookup of this unit (asked at this time) was answered before it finished: this
    /// request fetches its outcome, after `FOLLOWUP_WAIT`; `n` follow-ups were made so far.
    Followup {
        unit: usize,
        next: Request,
        n: u32,
        asked: Millis,
    },
    Observed(Vec<(usize, Verdict)>),
    /// A lookup of this unit, made at this time, was taken under this reference; its answer
    /// comes by notification.
    Asked(usize, String, Millis),
    /// An authentic notification, the SHA-256 of its path and body, and who waits to answer it
    /// (with this HTTP status) until it is journaled.
    Notice(Notice, [u8; 32], tokio::sync::oneshot::Sender<u16>),
    /// Another payrun process asks through the control socket.
    Control(Question),
}

/// What another payrun process asks a running batch (its control socket).
enum Question {
    /// `payrun status`: the status view as this run holds it (counts kept as states change).
    Status(tokio::sync::oneshot::Sender<super::status::StatusView>),
    /// `payrun report`: every record as it is now.
    Records(tokio::sync::oneshot::Sender<Records>),
}

/// Every record as it is at one instant of a run: the store as of the run's last commit, read
/// elsewhere (the run holds only the records of nodes not ended), overlaid with the records the
/// run holds — the same, or changed since and not committed yet.
struct Records {
    reader: super::store::Reader,
    txn: redb::ReadTransaction,
    /// By store index, ascending.
    held: Vec<(u64, Record)>,
    /// The batch's items: one neither stored nor held was not started (planned).
    items: Arc<Vec<PlannedItem>>,
}

impl Records {
    /// Writes every record, one JSON line each, in store order.
    fn write(self, out: &mut impl std::io::Write) -> Result<(), StoreError> {
        let Records {
            reader,
            txn,
            held,
            items,
        } = self;
        let mut w = Emit {
            out,
            failed: None,
            next_item: 0,
            items: &items,
        };
        let mut held = held.into_iter().peekable();
        reader.each_in(&txn, |i, r| {
            while let Some((h, _)) = held.peek()
                && *h < i
            {
                let (h, r) = held.next().expect("peeked");
                w.emit(h, &r);
            }
            match held.next_if(|(h, _)| *h == i) {
                Some((h, r)) => w.emit(h, &r),
                None => w.emit(i, &r),
            }
        })?;
        for (h, r) in held {
            w.emit(h, &r);
        }
        w.fill(u64::MAX);
        match w.failed {
            None => Ok(()),
            Some(e) => Err(StoreError::other(format!(
                "the report's reader went away: {e}"
            ))),
        }
    }
}

/// Writes records in store order, with the items that have none (not started) in their place.
struct Emit<'w, W> {
    out: &'w mut W,
    failed: Option<serde_json::Error>,
    next_item: u64,
    items: &'w [PlannedItem],
}

impl<W: std::io::Write> Emit<'_, W> {
    fn emit(&mut self, index: u64, r: &Record) {
        self.fill(index);
        self.line(r);
        if index < self.items.len() as u64 {
            self.next_item = index + 1;
        }
    }

    /// The items before `to` not written yet, as planned.
    fn fill(&mut self, to: u64) {
        while self.next_item < to.min(self.items.len() as u64) {
            let r = self.items[self.next_item as usize].record();
            self.line(&r);
            self.next_item += 1;
        }
    }

    fn line(&mut self, r: &Record) {
        if self.failed.is_none()
            && let Err(e) = serde_json::to_writer(&mut *self.out, r)
                .and_then(|()| self.out.write_all(b"\n").map_err(serde_json::Error::io))
        {
            self.failed = Some(e);
        }
    }
}

/// Serves the adapter's notification paths on `addr` (`super::listener`: no connection, idle
/// or slow, can keep a genuine notification out). Forged notifications are answered with the
/// adapter's refusal and logged; they never reach the loop.
///
/// The provider is given `<public_url><path>`: with a `public_url` that has a path
/// (`https://payments.acme.example/payrun`), a reverse proxy in front of the listener either
/// forwards that path as it is (`/payrun/payonic/notify/<token>`) or strips its prefix
/// (`/payonic/notify/<token>`). Each path is served in both forms (`public_path` is the
/// prefix, `None` without one), and the adapter always reads it without the prefix: that is
/// what it compares, and what the digest of a copy that came the other way is made from.
async fn listen(
    addr: std::net::SocketAddr,
    public_path: Option<String>,
    adapter: Arc<dyn Adapter>,
    tx: tokio::sync::mpsc::UnboundedSender<Outcome>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let socket = tokio::net::TcpListener::bind(addr).await?;
    // The prefix is the user's text, not a route template: no `:`/`*` segment checks, and
    // braces (which `Url::path` percent-encodes anyway) escaped.
    let mut app = axum::Router::new().without_v07_checks();
    let prefix: Arc<str> = public_path.unwrap_or_default().into();
    for &path in adapter.notification_paths() {
        let mut routes = vec![(path.to_string(), false)];
        if !prefix.is_empty() {
            let escaped = prefix.replace('{', "{{").replace('}', "}}");
            routes.push((format!("{escaped}{path}"), true));
        }
        for (route, prefixed) in routes {
            let (adapter, tx, prefix) = (Arc::clone(&adapter), tx.clone(), Arc::clone(&prefix));
            let handler = move |uri: axum::http::Uri,
                                headers: axum::http::HeaderMap,
                                body: axum::body::Bytes| {
                let (adapter, tx) = (Arc::clone(&adapter), tx.clone());
                let seen = if prefixed {
                    uri.path().strip_prefix(&*prefix).unwrap_or(uri.path())
                } else {
                    uri.path()
                }
                .to_string();
                async move {
                    match adapter.notice(&seen, &headers, uri.query(), &body) {
                        Notice::Refused(status, why) => {
                            tracing::warn!(path, status, "refused {why}");
                            axum::http::StatusCode::from_u16(status)
                                .unwrap_or(axum::http::StatusCode::BAD_REQUEST)
                        }
                        Notice::Ignored => {
                            tracing::info!(path, "a notification of no interest to this run");
                            axum::http::StatusCode::OK
                        }
                        // Answered 200 only once journaled: a crash before that leaves the
                        // provider without an acknowledgement (and the item to be looked up),
                        // never with one for a notification payrun lost.
                        n => {
                            use sha2::Digest;
                            let digest: [u8; 32] = sha2::Sha256::new()
                                .chain_update(seen.as_bytes())
                                .chain_update([0u8])
                                .chain_update(&body)
                                .finalize()
                                .into();
                            let (ack, answered) = tokio::sync::oneshot::channel();
                            if tx.send(Outcome::Notice(n, digest, ack)).is_err() {
                                return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            match tokio::time::timeout(Duration::from_secs(30), answered).await {
                                Ok(Ok(code)) => axum::http::StatusCode::from_u16(code)
                                    .unwrap_or(axum::http::StatusCode::OK),
                                _ => axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            }
                        }
                    }
                }
            };
            app = app.route(&route, axum::routing::any(handler));
        }
    }
    Ok(super::listener::serve(
        socket,
        app,
        super::listener::Limits::default(),
    ))
}

/// Where a running batch answers `payrun report` from other processes.
pub fn control_path(store: &std::path::Path) -> std::path::PathBuf {
    store.with_extension("sock")
}

/// Answers whoever connects to the control socket: a first line `status` gets the status view
/// as JSON, `records` every record, one JSON line each.
#[cfg(unix)]
fn serve_records(
    path: std::path::PathBuf,
    tx: tokio::sync::mpsc::UnboundedSender<Outcome>,
) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    // Bound under a temporary name, made private (0600), then renamed into place: the socket
    // answers with every item's amount, so it never exists under its name open to others.
    let tmp = path.with_extension("sock.tmp");
    let _ = std::fs::remove_file(&tmp);
    let socket = tokio::net::UnixListener::bind(&tmp).ok()?;
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(crate::private::FILE_MODE);
        if std::fs::set_permissions(&tmp, private)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
            return None;
        }
    }
    Some(tokio::spawn(async move {
        while let Ok((conn, _)) = socket.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut conn = tokio::io::BufReader::new(conn);
                let mut question = String::new();
                let asked =
                    tokio::time::timeout(Duration::from_secs(5), conn.read_line(&mut question))
                        .await;
                if !matches!(asked, Ok(Ok(_))) {
                    return;
                }
                let mut conn = conn.into_inner();
                match question.trim() {
                    "status" => {
                        let (reply, answer) = tokio::sync::oneshot::channel();
                        if tx.send(Outcome::Control(Question::Status(reply))).is_err() {
                            return;
                        }
                        if let Ok(view) = answer.await
                            && let Ok(bytes) = serde_json::to_vec(&view)
                        {
                            let _ = conn.write_all(&bytes).await;
                        }
                        let _ = conn.shutdown().await;
                    }
                    "records" => {
                        let (reply, answer) = tokio::sync::oneshot::channel();
                        if tx.send(Outcome::Control(Question::Records(reply))).is_err() {
                            return;
                        }
                        let Ok(records) = answer.await else {
                            return;
                        };
                        // Read from the store and written out away from the loop.
                        let Ok(conn) = conn.into_std() else {
                            return;
                        };
                        let _ = tokio::task::spawn_blocking(move || {
                            let _ = conn.set_nonblocking(false);
                            let mut out = std::io::BufWriter::new(conn);
                            if let Err(e) = records.write(&mut out) {
                                tracing::warn!("report: {e}");
                            }
                            let _ = std::io::Write::flush(&mut out);
                        })
                        .await;
                    }
                    _ => {}
                }
            });
        }
    }))
}

#[cfg(not(unix))]
fn serve_records(
    _path: std::path::PathBuf,
    _tx: tokio::sync::mpsc::UnboundedSender<Outcome>,
) -> Option<tokio::task::JoinHandle<()>> {
    None
}

/// Asks a running batch's control socket `question` (None when nobody answers).
#[cfg(unix)]
fn ask_runner(
    store: &std::path::Path,
    question: &str,
) -> Option<std::io::BufReader<std::os::unix::net::UnixStream>> {
    use std::io::Write;
    let mut conn = std::os::unix::net::UnixStream::connect(control_path(store)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    conn.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.write_all(format!("{question}\n").as_bytes()).ok()?;
    Some(std::io::BufReader::new(conn))
}

/// The status view of a running batch, from its control socket (None when nobody answers).
pub fn status_from_runner(store: &std::path::Path) -> Option<super::status::StatusView> {
    #[cfg(unix)]
    {
        serde_json::from_reader(ask_runner(store, "status")?).ok()
    }
    #[cfg(not(unix))]
    {
        let _ = store;
        None
    }
}

/// Reads the records from a running batch's control socket (None when nobody answers).
pub fn records_from_runner(store: &std::path::Path) -> Option<Vec<Record>> {
    #[cfg(unix)]
    {
        use std::io::BufRead;
        let conn = ask_runner(store, "records")?;
        let mut out = Vec::new();
        for line in conn.lines() {
            out.push(serde_json::from_str(&line.ok()?).ok()?);
        }
        Some(out)
    }
    #[cfg(not(unix))]
    {
        let _ = store;
        None
    }
}

type Limiter = governor::DefaultDirectRateLimiter;

/// A limiter 1% under `rate`: requests that leave evenly spaced can still arrive bunched, and a
/// provider's limiter counts arrivals.
fn limiter(rate: f64, burst: u32) -> Limiter {
    let period = Duration::from_secs_f64(1.0 / (rate.max(0.001) * 0.99));
    let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    let quota = governor::Quota::with_period(period)
        .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN))
        .allow_burst(burst);
    governor::RateLimiter::direct(quota)
}

/// Consecutive transport failures (no answer from the provider) after which a run stops by
/// itself: the provider is unreachable or misconfigured, and every item would only wait.
pub const TRANSPORT_FAILURES_TO_STOP: u32 = 12;

/// How the way to the provider fares: consecutive exchanges that got no answer of the
/// provider's, and what the last one failed with. Any answer of the provider's resets it.
#[derive(Default)]
pub struct Reach {
    failures: std::sync::atomic::AtomicU32,
    last: std::sync::Mutex<Option<String>>,
    said: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Reach {
    fn record(&self, answer: &Answer) {
        match answer {
            Answer::Transport { why, .. } => {
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
                // Said at most once a second: what fails and what payrun does about it.
                let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
                if said.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    *said = Some(std::time::Instant::now());
                    eprintln!(
                        "transport: {why}; retrying with backoff ({n} failure(s) in a row; payrun stops after {TRANSPORT_FAILURES_TO_STOP})"
                    );
                }
            }
            Answer::Http { .. } => self.failures.store(0, Ordering::Relaxed),
        }
    }

    /// The last failure, once there were enough in a row to stop.
    pub fn gave_up(&self) -> Option<String> {
        (self.failures.load(Ordering::Relaxed) >= TRANSPORT_FAILURES_TO_STOP)
            .then(|| self.last.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .flatten()
    }
}

/// An HTTP answer that is not the provider's own (see `Adapter::speaks`) is a transport
/// problem, never an outcome: an HTML error page, a proxy's 502 or the 404 of a base URL
/// without its path prefix once failed every item of a batch permanently.
pub fn vetted(adapter: &dyn Adapter, provider: &str, url: &str, answer: Answer) -> Answer {
    match answer {
        Answer::Http {
            status, ref body, ..
        } if !adapter.speaks(status, body) => {
            let hint = match status {
                404 | 405 => " — is the base URL right (its path prefix included)?",
                401 | 403 => " — is a proxy or firewall in the way?",
                _ => "",
            };
            Answer::Transport {
                // A gateway's 5xx may come after it passed the request on; a 4xx of something
                // that is not the provider means the provider never processed it.
                maybe_sent: status >= 500,
                why: format!("{status} from {url} without a {provider} body{hint}"),
            }
        }
        a => a,
    }
}

/// Everything an exchange needs: the client, the limits, the way back.
#[derive(Clone)]
struct Wire {
    http: reqwest::Client,
    base_url: String,
    adapter: Arc<dyn Adapter>,
    provider: String,
    reach: Arc<Reach>,
    limiter: Arc<Limiter>,
    per_endpoint: Arc<HashMap<String, Limiter>>,
    /// The adaptive rate under `limiter`'s ceiling: slower while the provider pushes back.
    pace: Arc<super::pace::Shared>,
    /// Requests out, and how many may be.
    busy: Arc<std::sync::atomic::AtomicUsize>,
    concurrency: usize,
    tx: tokio::sync::mpsc::UnboundedSender<Outcome>,
}

/// A request waiting to leave, and what is done with its answer (classifying it and telling
/// the loop, where it is sent).
struct Pending {
    req: Request,
    /// The request may pay: the crash points around a send apply.
    submission: bool,
    then: Box<dyn FnOnce(Answer) + Send>,
}

impl Pending {
    fn new(req: Request, submission: bool, then: impl FnOnce(Answer) + Send + 'static) -> Pending {
        Pending {
            req,
            submission,
            then: Box::new(then),
        }
    }
}

/// Whether the next request may leave now.
enum Admit {
    Go,
    /// Every slot is taken: it waits for an answer.
    Full,
    /// A limiter or the pace lets it go after this long: a timer of the loop's.
    After(Duration),
}

impl Wire {
    /// Whether a request to `endpoint` may leave now: a slot is free, then its endpoint's
    /// limiter, the provider's and the pace let it (each taking its share as it says yes, so a
    /// later one saying no costs the earlier ones a token: slower, never faster).
    fn admit(&self, endpoint: &str) -> Admit {
        use governor::clock::Clock;
        if self.busy.load(Ordering::Acquire) >= self.concurrency {
            return Admit::Full;
        }
        let clock = governor::clock::DefaultClock::default();
        let limiters = self
            .per_endpoint
            .get(endpoint)
            .into_iter()
            .chain([&*self.limiter]);
        for l in limiters {
            if let Err(not_until) = l.check() {
                return Admit::After(not_until.wait_time_from(clock.now()));
            }
        }
        match self.pace.try_claim() {
            Ok(()) => Admit::Go,
            Err(wait) => Admit::After(wait),
        }
    }

    /// Sends `p` now (it was admitted) and hands its answer on where it is sent.
    fn go(&self, p: Pending) {
        self.busy.fetch_add(1, Ordering::AcqRel);
        let wire = self.clone();
        tokio::spawn(async move {
            let Pending {
                req,
                submission,
                then,
            } = p;
            if submission {
                super::crash::point("before-send");
            }
            let url = request_url(&wire.base_url, &req);
            let answer = send(&wire.http, &wire.base_url, req).await;
            if submission {
                super::crash::point("after-send");
            }
            let answer = vetted(wire.adapter.as_ref(), &wire.provider, &url, answer);
            wire.reach.record(&answer);
            wire.busy.fetch_sub(1, Ordering::AcqRel);
            then(answer);
        });
    }

    /// Lets the requests of `outbox` leave, in order, as far as slots, limiters and the pace
    /// allow; says when to look again if a limiter or the pace holds the next one back.
    fn dispatch(&self, outbox: &mut std::collections::VecDeque<Pending>) -> Option<Duration> {
        while let Some(p) = outbox.front() {
            match self.admit(p.req.endpoint) {
                Admit::Go => {
                    let p = outbox.pop_front().expect("looked at");
                    self.go(p);
                }
                Admit::Full => return None,
                Admit::After(wait) => return Some(wait),
            }
        }
        None
    }
}

/// Runs `items` to the end (or until `stop` is set), resuming from whatever `store` holds.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    flow: &Flow,
    shared: &Arc<Vec<PlannedItem>>,
    render: &dyn Render,
    store: &mut Store,
    endpoint: &Endpoint,
    timings: &Timings,
    stop: Arc<AtomicBool>,
    listener: Option<std::net::SocketAddr>,
    owed: std::collections::BTreeMap<String, rust_decimal::Decimal>,
) -> Result<Summary, RunError> {
    let items: &[PlannedItem] = shared;
    let policy = &flow.manifest.retry;
    let limits = &flow.limits;
    let adapter: &dyn Adapter = endpoint.adapter.as_ref();
    let now = now_ms();
    // The records of ended nodes stay in the store; the book reads them back when asked.
    let reader = store.reader();
    let mut book = Book::new(flow, items, render, &reader, adapter, now, timings)?;
    book.owed = owed;
    book.commit(store)?;

    let http = endpoint.http.clone();
    let provider_limiter = Arc::new(limiter(limits.requests_per_second, limits.burst));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let reach = Arc::new(Reach::default());
    let mut unreachable: Option<String> = None;
    let wire = Wire {
        http,
        base_url: endpoint.base_url.clone(),
        adapter: Arc::clone(&endpoint.adapter),
        provider: flow.provider.title.clone(),
        reach: Arc::clone(&reach),
        limiter: provider_limiter,
        per_endpoint: Arc::new(
            limits
                .endpoints
                .iter()
                .map(|(name, rate, burst)| (name.clone(), limiter(*rate, *burst)))
                .collect(),
        ),
        pace: Arc::new(super::pace::Shared::new(limits.requests_per_second)),
        busy: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        concurrency: limits.concurrency.max(1) as usize,
        tx: tx.clone(),
    };
    let pack = adapter.pack_limit().max(1);
    // Items admitted to `sending` at most this far ahead of the requests actually leaving.
    let window = pack * limits.concurrency.max(1) as usize * 2;
    let mut sending = 0usize;
    let mut requests = 0u64;
    let holder = super::status::Holder::me(&rfc3339(now_ms()));
    let mut progress = super::progress::Progress::new(&book.tally);
    progress.explain(super::progress::WaitContext {
        provider: flow.provider.title.clone(),
        propagation: timings.propagation,
        notifications: listener.is_some(),
        step_names: flow
            .steps()
            .iter()
            .map(|s| (s.task.tree_path.clone(), s.task.id.clone()))
            .collect(),
    });
    // Notifications journaled before a stop whose effect was not committed: taken now.
    let unapplied = store.unapplied_notices()?;
    // Notifications name items by key (only needed when they can arrive).
    if listener.is_some() || !unapplied.is_empty() {
        book.keyed_notices = true;
        let units = if book.client_run {
            book.units()
        } else {
            items.len()
        };
        book.by_key = super::graph::KeyIndex::build(
            (0..units).map(|u| (adapter.wire_key(&book.rec(u).key), u)),
        );
        book.check_fault()?;
    }
    let now = now_ms();
    for (seq, j) in unapplied {
        tracing::info!(seq, "acting on a notification journaled before the stop");
        book.take(j.notice, now, policy, timings, adapter);
        book.applied = Some(seq);
        book.notices.replayed += 1;
    }
    book.commit(store)?;
    let server = match listener {
        Some(addr) => Some(
            listen(
                addr,
                flow.manifest.notifications.public_path(),
                Arc::clone(&endpoint.adapter),
                tx.clone(),
            )
            .await
            .map_err(|source| StoreError::Listen {
                addr: addr.to_string(),
                source,
            })?,
        ),
        None => None,
    };
    let control = serve_records(control_path(&store.path), tx.clone());
    let snapshot = store.path.with_extension("status.json");
    let mut last_snapshot = std::time::Instant::now() - Duration::from_secs(1);
    // Follow-ups of key lookups, due at a time: (due, seq) and what each sends.
    let mut followups: BTreeSet<(Millis, u64)> = BTreeSet::new();
    let mut waiting_followups: HashMap<u64, (usize, Request, u32, Millis)> = HashMap::new();
    let mut followup_seq = 0u64;
    // Requests committed for and waiting to leave: sent in order as slots, limiters and the
    // pace allow; a limiter's or the pace's wait is one of the loop's timers.
    let mut outbox: std::collections::VecDeque<Pending> = std::collections::VecDeque::new();
    let mut snapshot_every = Duration::from_millis(300);
    loop {
        // A provider that answers nothing, many times in a row, stops the run: items stay
        // unsent or in doubt, resumable, and the operator learns what failed.
        if unreachable.is_none()
            && let Some(why) = reach.gave_up()
        {
            eprintln!(
                "stopping: the provider did not answer {TRANSPORT_FAILURES_TO_STOP} requests in a row ({why})"
            );
            unreachable = Some(why);
            stop.store(true, Ordering::Relaxed);
        }
        let stopping = stop.load(Ordering::Relaxed);
        let now = now_ms();
        if stopping {
            book.sends.clear();
            book.lookups.clear();
        } else if let Some(next) = book.preflight_due(now) {
            // The batch's preflight: through the same limiter as every request.
            let req = next.or_else(|| adapter.preflight(&rfc3339(now)));
            if let Some(req) = req {
                requests += 1;
                let (tx, adapter) = (wire.tx.clone(), Arc::clone(&endpoint.adapter));
                outbox.push_back(Pending::new(req, false, move |answer| {
                    let unreachable = matches!(answer, Answer::Transport { .. });
                    let verdict = adapter.classify_preflight(&answer);
                    let _ = tx.send(Outcome::Preflight(verdict, unreachable));
                }));
            }
        } else if book.gate_open() {
            for i in book.due(now) {
                book.apply(i, Event::Tick { now }, policy, timings, adapter);
            }
            // New items only as fast as requests can leave.
            while sending + book.sends.len() < window {
                let Some(i) = book.pop_ready() else {
                    break;
                };
                book.apply(i, Event::Tick { now }, policy, timings, adapter);
            }
        }
        // Durable before anything leaves: a crash after this commit finds `Sending`.
        progress.pace(&wire.pace.now());
        show_and_commit(&mut progress, &mut book, store)?;

        // Effects asked for earlier may have been overtaken (a notification settled the item):
        // only what the current state still calls for is carried out.
        // Nothing of an item's leaves before the batch's preflight passed.
        let held = !book.gate_open();
        let mut sends_now = match held {
            true => Vec::new(),
            false => std::mem::take(&mut book.sends),
        };
        sends_now.sort_unstable();
        sends_now.dedup();
        sends_now.retain(|&i| {
            matches!(book.rec(i).state, State::Sending { .. }) && !book.in_flight.contains(&i)
        });
        let mut lookups_now = match held {
            true => Vec::new(),
            false => std::mem::take(&mut book.lookups),
        };
        lookups_now.sort_unstable();
        lookups_now.dedup();
        lookups_now.retain(|&i| !book.rec(i).state.is_final() && !book.in_flight.contains(&i));
        // A delayed step's request gets the results of the payout it follows; one that cannot
        // be filled in is not sent.
        let mut unresolved: Vec<(usize, String)> = Vec::new();
        // Every request is rendered now from its item's row, with the results it reads (the
        // preflight's, the nodes' above it). A row that cannot be read again as validated
        // stops the run before anything more is sent.
        let mut filled: HashMap<usize, Vec<Rendered>> = HashMap::new();
        let mut unreadable: Option<String> = None;
        sends_now.retain(|&u| match book.payload_of(u) {
            Ok(v) => {
                filled.insert(u, v);
                true
            }
            Err(Unmade::Missing(why)) => {
                unresolved.push((u, why));
                false
            }
            Err(Unmade::Source(why)) => {
                unreadable.get_or_insert(why);
                false
            }
        });
        if let Some(why) = unreadable {
            return Err(RunError::Source(why));
        }
        // One step per request (a pack's answer is read against one kind of tree).
        sends_now.sort_unstable_by_key(|&u| (book.unit(u).1, u));
        let packs: Vec<Vec<usize>> = sends_now
            .chunk_by(|&a, &b| book.unit(a).1 == book.unit(b).1)
            .flat_map(|same| same.chunks(pack).map(<[usize]>::to_vec))
            .collect();
        for mut idx in packs {
            // Always the same order for the same items: a pack sent again is the same request,
            // and the provider's replayed answer lines up with it.
            idx.sort_unstable_by(|&a, &b| book.rec(a).key.cmp(&book.rec(b).key));
            book.in_flight.extend(&idx);
            sending += idx.len();
            requests += 1;
            for &i in &idx {
                book.rec_mut(i).requests += 1;
            }
            let out: Vec<Outgoing> = idx
                .iter()
                .map(|&u| Outgoing {
                    key: &book.live[&u].key,
                    op: book.op_of(u),
                    payload: filled.get(&u).map(Vec::as_slice).unwrap_or_default(),
                    attempt: match &book.live[&u].state {
                        State::Sending { attempt, .. } => *attempt,
                        _ => book.live[&u].requests,
                    },
                })
                .collect();
            // Paysend's idempotency is header.request.id *and* header.request.date: a pack sent
            // again must carry the date it first carried, or it is a new request. That date is
            // the pack's first send, recorded (committed with `Sending`) before it left.
            let date = idx
                .iter()
                .filter_map(|&u| book.live[&u].first_sent)
                .min()
                .unwrap_or(now);
            let req = adapter.submit(&out, &rfc3339(date));
            if let (Some(trace), [u]) = (&req.trace, idx.as_slice())
                && book.live[u].trace.as_ref() != Some(trace)
            {
                book.rec_mut(*u).trace = Some(trace.clone());
                book.changed.push(*u);
            }
            let (tx, adapter) = (wire.tx.clone(), Arc::clone(&endpoint.adapter));
            let sent = req.clone();
            outbox.push_back(Pending::new(req, true, move |answer| {
                let verdicts = adapter.classify_submit(&sent, &answer, idx.len());
                let _ = tx.send(Outcome::Sent(idx.into_iter().zip(verdicts).collect()));
            }));
        }
        // Lookups, as each node's state and its operation's settlement rule route them.
        let mut by_group = Vec::new();
        let asks = book
            .route(&lookups_now, now, policy, timings, adapter)
            .map_err(RunError::Source)?;
        for ask in asks {
            match ask {
                Ask::Group {
                    group,
                    seq,
                    members,
                } => by_group.push((group, seq, members)),
                Ask::Resend { unit, payload } => {
                    requests += 1;
                    let req = adapter.submit(
                        &[Outgoing {
                            key: &book.live[&unit].key,
                            op: book.op_of(unit),
                            payload: &payload,
                            attempt: book.live[&unit].requests,
                        }],
                        &rfc3339(now),
                    );
                    let (tx, adapter) = (wire.tx.clone(), Arc::clone(&endpoint.adapter));
                    let sent = req.clone();
                    outbox.push_back(Pending::new(req, false, move |answer| {
                        let verdict = adapter
                            .classify_submit(&sent, &answer, 1)
                            .pop()
                            .unwrap_or(Verdict::InDoubt);
                        let _ = tx.send(Outcome::Observed(vec![(unit, verdict)]));
                    }));
                }
                Ask::Key { unit, key, payload } => {
                    requests += 1;
                    let req = adapter.key_lookup(
                        book.op_of(unit),
                        &key,
                        &payload,
                        book.live[&unit].requests,
                        &rfc3339(now),
                    );
                    outbox.push_back(key_lookup(&wire, &endpoint.adapter, unit, req, 0, now));
                }
            }
        }
        // A stop abandons the follow-ups not made yet: their units are looked up again later.
        if stopping {
            for (unit, ..) in waiting_followups.drain().map(|(_, v)| v) {
                book.in_flight.remove(&unit);
            }
            followups.clear();
        }
        // Follow-ups of key lookups whose wait is over.
        while let Some(&(at, seq)) = followups.first()
            && at <= now
        {
            followups.pop_first();
            if let Some((unit, next, n, asked)) = waiting_followups.remove(&seq) {
                requests += 1;
                outbox.push_back(key_lookup(&wire, &endpoint.adapter, unit, next, n, asked));
            }
        }
        for (group, seq, members) in by_group {
            requests += 1;
            let req = adapter.group_lookup(&group, seq, &rfc3339(now));
            let (tx, adapter) = (wire.tx.clone(), Arc::clone(&endpoint.adapter));
            outbox.push_back(Pending::new(req, false, move |answer| {
                if let Some(reference) = adapter.lookup_reference(&answer) {
                    for &(i, _) in &members {
                        let _ = tx.send(Outcome::Asked(i, reference.clone(), now));
                    }
                }
                let n = members.iter().map(|(_, p)| p + 1).max().unwrap_or(1);
                let verdicts = adapter.classify_group(&answer, n);
                let _ = tx.send(Outcome::Observed(
                    members
                        .into_iter()
                        .map(|(i, p)| (i, verdicts.get(p).cloned().unwrap_or(Verdict::InDoubt)))
                        .collect(),
                ));
            }));
        }

        let held_back = wire.dispatch(&mut outbox);

        for (u, why) in unresolved {
            let verdict = Verdict::Failed {
                code: "unresolved-result".into(),
                description: why,
            };
            book.apply(
                u,
                Event::Observed { verdict, now },
                policy,
                timings,
                adapter,
            );
        }
        // A run that asked the provider something waits for the answers (they come by
        // notification), up to a notification's deadline, before it ends: an item under review
        // is settled by them.
        let awaited = book
            .asked
            .values()
            .any(|(_, at)| now_ms() < at.saturating_add(timings.poll_every.as_millis() as u64));
        let preflight_out = matches!(book.gate, Gate::Asking { .. });
        if book.in_flight.is_empty()
            && outbox.is_empty()
            && !preflight_out
            && (stopping || (book.open == 0 && !book.any_ready() && !awaited))
        {
            break;
        }
        // Wait for an answer, the next due time, or a stop.
        let next_due = if stopping {
            None
        } else {
            let follow = followups.first().map(|&(t, _)| t);
            book.timers
                .first()
                .map(|&(t, _)| t)
                .into_iter()
                .chain(follow)
                .chain(book.preflight_at())
                .min()
        };
        let wait = next_due
            .map(|d| Duration::from_millis(d.saturating_sub(now_ms()).min(500)))
            .unwrap_or(Duration::from_millis(500))
            .min(held_back.unwrap_or(Duration::MAX));
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep(wait) => None,
        };
        // Apply every answer that is in, then commit them together.
        let mut msgs: Vec<Outcome> = first.into_iter().collect();
        while let Ok(m) = rx.try_recv() {
            msgs.push(m);
        }
        let now = now_ms();
        // Lookup-triggering notifications; and the notifications that settle items, journaled
        // before they are acted on.
        let mut acks = Vec::new();
        let mut incoming: Vec<(Notice, [u8; 32], tokio::sync::oneshot::Sender<u16>)> = Vec::new();
        for m in msgs {
            let (list, sent) = match m {
                Outcome::Sent(l) => {
                    sending = sending.saturating_sub(l.len());
                    (l, true)
                }
                Outcome::Observed(l) => (l, false),
                Outcome::Preflight(answer, unreachable) => {
                    book.preflight_answer(answer, unreachable, now, &policy.default);
                    if let Gate::Closed { why, .. } = &book.gate {
                        tracing::info!("preflight failed: {why}");
                        stop.store(true, Ordering::Relaxed);
                    }
                    continue;
                }
                // The follow-up waits for its time like every other wait: a timer of the loop.
                Outcome::Followup {
                    unit,
                    next,
                    n,
                    asked,
                } => {
                    followup_seq += 1;
                    followups.insert((now + FOLLOWUP_WAIT.as_millis() as u64, followup_seq));
                    waiting_followups.insert(followup_seq, (unit, next, n, asked));
                    continue;
                }
                Outcome::Asked(i, reference, at) => {
                    let entry = book.asked.entry(reference).or_insert((Vec::new(), at));
                    entry.0.push(i);
                    entry.1 = entry.1.min(at);
                    continue;
                }
                Outcome::Notice(n @ Notice::Group(_), _, ack) => {
                    acks.push(ack);
                    book.take(n, now, policy, timings, adapter);
                    continue;
                }
                Outcome::Notice(n, digest, ack) => {
                    incoming.push((n, digest, ack));
                    continue;
                }
                Outcome::Control(Question::Status(reply)) => {
                    let _ = reply.send(book.status(&flow.manifest.batch, Some(holder.clone())));
                    continue;
                }
                Outcome::Control(Question::Records(reply)) => {
                    // The store as of the last commit, and what this run holds.
                    let mut held: Vec<(u64, Record)> = book
                        .live
                        .iter()
                        .map(|(&u, r)| (book.store_index(u), r.clone()))
                        .collect();
                    held.sort_unstable_by_key(|(i, _)| *i);
                    if let Ok(txn) = reader.begin() {
                        let _ = reply.send(Records {
                            reader: reader.clone(),
                            txn,
                            held,
                            items: Arc::clone(shared),
                        });
                    }
                    continue;
                }
            };
            // One request's answer: did the provider push back?
            wire.pace.heard(list.iter().map(|(_, v)| v));
            for (i, verdict) in list {
                book.in_flight.remove(&i);
                tracing::debug!(item = %book.rec(i).id, ?verdict, sent, "answer");
                let event = if sent {
                    Event::Sent { verdict, now }
                } else {
                    Event::Observed { verdict, now }
                };
                book.apply(i, event, policy, timings, adapter);
            }
        }
        // Notifications: vetted, journaled (durable, duplicates recognised by their digest),
        // acknowledged, then acted on. A stop after the journal commit leaves them to be acted
        // on by the next run; the watermark committed with the states says how far they went.
        type Ack = Option<tokio::sync::oneshot::Sender<u16>>;
        let mut fresh: Vec<(Notice, [u8; 32], Ack)> = Vec::new();
        // Held ones whose request's answer has come since (answered 202 when they came).
        for (n, digest, came) in std::mem::take(&mut book.held) {
            match book.vet(&n) {
                Ok(()) => fresh.push((n, digest, None)),
                Err(Rejection::NotYet(_)) if now < came + HOLD.as_millis() as u64 => {
                    book.held.push((n, digest, came));
                }
                Err(r) => {
                    tracing::warn!("rejected {}", r.why());
                    book.notices.rejected += 1;
                }
            }
        }
        for (n, digest, ack) in incoming {
            match book.vet(&n) {
                Ok(()) => fresh.push((n, digest, Some(ack))),
                // A copy of one journaled earlier, about an item since settled.
                Err(_) if store.knows_notice(&digest)? => {
                    book.notices.duplicates += 1;
                    let _ = ack.send(200);
                }
                Err(Rejection::NotYet(why)) => {
                    tracing::debug!("held {why}");
                    book.held.push((n, digest, now));
                    let _ = ack.send(202);
                }
                Err(Rejection::Never(why)) => {
                    tracing::warn!("rejected {why}");
                    book.notices.rejected += 1;
                    let _ = ack.send(422);
                }
            }
        }
        if !fresh.is_empty() {
            let entries: Vec<([u8; 32], &Notice)> = fresh.iter().map(|(n, d, _)| (*d, n)).collect();
            let seqs = store.journal(&entries, now)?;
            super::crash::point("after-journal");
            for ((n, _, ack), seq) in fresh.into_iter().zip(seqs) {
                if let Some(ack) = ack {
                    let _ = ack.send(200);
                }
                match seq {
                    Some(seq) => {
                        book.take(n, now, policy, timings, adapter);
                        book.applied = Some(seq);
                        book.notices.taken += 1;
                    }
                    None => book.notices.duplicates += 1,
                }
            }
        }
        // What these answers changed is committed at the top of the loop, with whatever comes
        // due now, in one transaction. A notification that only asks for lookups is answered
        // now: it changes no state.
        for ack in acks {
            let _ = ack.send(200);
        }
        // While this process holds the store, others read the batch's status from here.
        // At most every 300 ms, and never more than ~5% of the loop's time on a large batch.
        if last_snapshot.elapsed() > snapshot_every {
            let t = std::time::Instant::now();
            write_snapshot(
                &snapshot,
                &book.status(&flow.manifest.batch, Some(holder.clone())),
            );
            snapshot_every = Duration::from_millis(300).max(t.elapsed() * 20);
            last_snapshot = std::time::Instant::now();
        }
    }
    for (n, ..) in std::mem::take(&mut book.held) {
        if let Err(r) = book.vet(&n) {
            tracing::warn!("rejected {}", r.why());
        }
        book.notices.rejected += 1;
    }
    show_and_commit(&mut progress, &mut book, store)?;
    progress.finish();
    write_snapshot(&snapshot, &book.status(&flow.manifest.batch, None));
    if let Some(s) = server {
        s.abort();
    }
    if let Some(c) = control {
        c.abort();
        let _ = std::fs::remove_file(control_path(&store.path));
    }
    let pace = wire.pace.now();
    let preflight = match &book.gate {
        Gate::Closed { why, unreachable } => Some((why.clone(), *unreachable)),
        _ => None,
    };
    let t = &book.tally;
    let steps = t.steps();
    let mut s = Summary {
        preflight,
        items: t.items(),
        requests,
        commits: store.commits,
        notices: book.notices,
        unreachable,
        pushbacks: pace.pushbacks(),
        pace_ceiling: pace.ceiling(),
        pace_lowest: pace.lowest(),
        succeeded: t.items_in("paid") + t.items_in("done"),
        failed: t.items_in("failed"),
        needs_review: t.items_in("needs_review"),
        reversed: t.items_in("reversed"),
        steps_done: t.steps_in("done") + t.steps_in("skipped"),
        steps_failed: t.steps_in("failed"),
        ..Summary::default()
    };
    s.unfinished = s.items - s.succeeded - s.failed - s.needs_review - s.reversed;
    s.steps_open = steps - s.steps_done - s.steps_failed;
    Ok(s)
}

/// Shows what ended since the last round, then commits what changed (and lets go of the
/// records of the nodes that ended: the display reads them first).
fn show_and_commit(
    progress: &mut super::progress::Progress,
    book: &mut Book,
    store: &mut Store,
) -> Result<(), StoreError> {
    let ready = book.any_ready();
    progress.update(
        &book.live,
        &book.tally,
        &book.ended,
        book.in_flight.len(),
        ready,
    );
    book.ended.clear();
    book.commit(store)
}

/// Replaces the status snapshot atomically (write, then rename). A failure only costs freshness.
fn write_snapshot(path: &std::path::Path, view: &super::status::StatusView) {
    if let Ok(bytes) = serde_json::to_vec_pretty(view) {
        let _ = crate::private::write_atomic(path, &bytes, false);
    }
}

/// How long a key lookup the provider answered before it finished waits before its outcome is
/// fetched (`Adapter::lookup_followup`), and how many times, before it counts as lost.
const FOLLOWUP_WAIT: Duration = Duration::from_millis(300);
const FOLLOWUPS: u32 = 10;

/// Key lookup `req` of `unit` (asked at `asked`; `n` follow-ups made before it), to send: its
/// answer reports what it says — or, when the provider answered before it finished, the
/// follow-up to make after `FOLLOWUP_WAIT` (the loop's timer, not a sleep here).
fn key_lookup(
    wire: &Wire,
    adapter: &Arc<dyn Adapter>,
    unit: usize,
    req: Request,
    n: u32,
    asked: Millis,
) -> Pending {
    let (tx, adapter) = (wire.tx.clone(), Arc::clone(adapter));
    Pending::new(req, false, move |answer| {
        if n < FOLLOWUPS
            && let Some(next) = adapter.lookup_followup(&answer)
        {
            let _ = tx.send(Outcome::Followup {
                unit,
                next,
                n: n + 1,
                asked,
            });
            return;
        }
        let verdict = match adapter.classify_key_lookup(&answer) {
            // "Not listed", as of when it was asked.
            Verdict::Unlisted { .. } => Verdict::Unlisted { asked },
            v => v,
        };
        if let Some(reference) = adapter.lookup_reference(&answer) {
            let _ = tx.send(Outcome::Asked(unit, reference, asked));
        }
        let _ = tx.send(Outcome::Observed(vec![(unit, verdict)]));
    })
}

/// Where a request goes (for messages).
fn request_url(base_url: &str, req: &Request) -> String {
    if req.path.starts_with("http://") || req.path.starts_with("https://") {
        req.path.clone()
    } else {
        format!("{base_url}{}", req.path)
    }
}

/// One HTTP exchange as the adapter described it.
async fn send(http: &reqwest::Client, base_url: &str, req: Request) -> Answer {
    // An operation with a host of its own (Payonic in production) comes with its full URL.
    let url = if req.path.starts_with("http://") || req.path.starts_with("https://") {
        req.path.clone()
    } else {
        format!("{base_url}{}", req.path)
    };
    let mut b = match req.method {
        Method::Get => http.get(url),
        Method::Post => http.post(url),
    };
    // Payonic's Payment API takes a JSON body on its GET (L270-282).
    if !req.body.is_empty() {
        b = b.body(req.body);
    }
    for (name, value) in req.headers {
        b = b.header(name, value);
    }
    match b.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            match r.bytes().await {
                Ok(b) => Answer::Http {
                    status,
                    body: b.to_vec(),
                    retry_after,
                },
                // The answer began but broke off: the request did arrive.
                Err(e) => Answer::Transport {
                    maybe_sent: true,
                    why: format!("the answer broke off: {}", super::http::describe(&e)),
                },
            }
        }
        // A connection that could not be made sent nothing; anything else may have.
        Err(e) => Answer::Transport {
            maybe_sent: !e.is_connect(),
            why: super::http::describe(&e),
        },
    }
}

//! The runner: the I/O around the pure state machine, for any provider behind the `Adapter`
//! trait. One loop owns every item's state. Items wait in a ready queue (not started) or a timer
//! queue (due at a time); the loop ticks what is due, admits new items only as fast as requests
//! can leave (so a crash finds few items "sending"), commits the new states in one transaction,
//! and only then performs the effects — packed submissions and lookups — on spawned tasks bounded
//! by the rate limiters and the concurrency cap. Answers and notifications come back as events,
//! are applied, and committed together (group commit).

use super::machine::{self, Effect, Event, Millis, State, Timings, Verdict};
use super::store::{Record, Store, StoreError};
use crate::compile::Flow;
use crate::providers::{
    Adapter, Answer, Method, Notice, Outgoing, Rendered, Request, contradiction,
};
use crate::schema::Settle;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One item as planned: identity, content digest and what the adapter rendered for it (real
/// values; kept in memory only, never stored).
pub struct PlannedItem {
    pub id: String,
    pub key: String,
    pub digest: String,
    pub line: u64,
    pub payload: Vec<Rendered>,
    /// What each delayed step sends (`Flow::steps` order; results filled in when sent).
    pub steps: Vec<Rendered>,
    pub money: Vec<(String, String)>,
}

/// Where and through which adapter to send.
#[derive(Clone)]
pub struct Endpoint {
    pub base_url: String,
    pub adapter: Arc<dyn Adapter>,
    /// Requests already sent against the provider's rate just before the run (preflight): the
    /// run's limiter starts with that many fewer in its burst.
    pub spent: u32,
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
    Observed(Vec<(usize, Verdict)>),
    /// A lookup of this unit, made at this time, was taken under this reference; its answer
    /// comes by notification.
    Asked(usize, String, Millis),
    /// An authentic notification, the SHA-256 of its path and body, and who waits to answer it
    /// (with this HTTP status) until it is journaled.
    Notice(Notice, [u8; 32], tokio::sync::oneshot::Sender<u16>),
    /// `payrun report` (another process) asks for the records as they are now.
    Records(tokio::sync::oneshot::Sender<Vec<Record>>),
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

/// Serves the records, one JSON line each, to whoever connects to the control socket.
#[cfg(unix)]
fn serve_records(
    path: std::path::PathBuf,
    tx: tokio::sync::mpsc::UnboundedSender<Outcome>,
) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::io::AsyncWriteExt;
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
        while let Ok((mut conn, _)) = socket.accept().await {
            let (reply, answer) = tokio::sync::oneshot::channel();
            if tx.send(Outcome::Records(reply)).is_err() {
                break;
            }
            tokio::spawn(async move {
                if let Ok(records) = answer.await {
                    let mut out = Vec::with_capacity(records.len() * 256);
                    for r in &records {
                        if serde_json::to_writer(&mut out, r).is_ok() {
                            out.push(b'\n');
                        }
                    }
                    let _ = conn.write_all(&out).await;
                    let _ = conn.shutdown().await;
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

/// Reads the records from a running batch's control socket (None when nobody answers).
pub fn records_from_runner(store: &std::path::Path) -> Option<Vec<Record>> {
    #[cfg(unix)]
    {
        use std::io::{BufRead, BufReader};
        let conn = std::os::unix::net::UnixStream::connect(control_path(store)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let mut out = Vec::new();
        for line in BufReader::new(conn).lines() {
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

/// Everything a spawned exchange needs: the client, the limits, the way back.
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
    slots: Arc<tokio::sync::Semaphore>,
    tx: tokio::sync::mpsc::UnboundedSender<Outcome>,
}

impl Wire {
    /// Waits for a slot and the limiters, then sends.
    /// `submission`: the request may pay (crash points apply).
    async fn exchange(
        &self,
        req: Request,
        submission: bool,
    ) -> (tokio::sync::OwnedSemaphorePermit, Answer) {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        if let Some(l) = self.per_endpoint.get(req.endpoint) {
            l.until_ready().await;
        }
        self.limiter.until_ready().await;
        self.pace.ready().await;
        if submission {
            super::crash::point("before-send");
        }
        let url = request_url(&self.base_url, &req);
        let answer = send(&self.http, &self.base_url, req).await;
        if submission {
            super::crash::point("after-send");
        }
        let answer = vetted(self.adapter.as_ref(), &self.provider, &url, answer);
        self.reach.record(&answer);
        (slot, answer)
    }
}

/// A step — a node of the item's graph sent as a request of its own — as the runner needs it
/// (see `Flow::steps`).
struct StepInfo {
    path: String,
    /// The step it follows (0: the item's first request).
    after: usize,
    /// The id of the task it follows.
    after_id: String,
    link: crate::manifest::Link,
    delay: Duration,
    /// How a request of it whose answer was lost is settled.
    settle: Settle,
    /// Its operation.
    op: String,
    /// The tasks whose results it may read (`${result.<id>.<path>}`), by id, with the step each
    /// one's result is kept in. For a tree the provider runs, only the payout it follows.
    reads: Vec<(String, usize)>,
    /// Payload paths filled from results, and the type each goes on the wire as.
    typed: Vec<(String, crate::schema::Wire)>,
}

/// The loop's bookkeeping around the records: which items wait for what. A record is a *unit*:
/// an item's first request (units `0..items`, in batch order) or one of its delayed steps
/// (appended as they come due).
struct Book<'a> {
    flow: &'a Flow,
    items: &'a [PlannedItem],
    /// Every node is a request of its own, under its own key (the provider runs nothing itself).
    client_run: bool,
    /// The first request's operation, and how it settles.
    root_op: String,
    root_settle: Settle,
    /// Steps (0: the item's first request) whose results later steps read: kept in the record.
    read: Vec<bool>,
    adapter: &'a dyn Adapter,
    /// Notifications name nodes by key (`by_key` is kept up to date as steps are created).
    keyed_notices: bool,
    recs: Vec<Record>,
    /// (item, step) of each unit; step 0 is the item's first request.
    units: Vec<(usize, usize)>,
    /// Delayed steps' units by (item, step); an item's first request is unit `item`.
    unit_at: HashMap<(usize, usize), usize>,
    /// Steps 1.. (index k - 1), and the steps that follow each step (index k).
    steps: Vec<StepInfo>,
    followers: Vec<Vec<usize>>,
    /// Not started yet, in file order.
    ready: VecDeque<usize>,
    /// (due time, item); stale entries are skipped when popped.
    timers: BTreeSet<(Millis, usize)>,
    /// Items with a request out (their answers are awaited).
    in_flight: HashSet<usize>,
    /// Items neither final nor under review.
    open: usize,
    /// Submitted items by the group their reference belongs to.
    groups: HashMap<String, Vec<usize>>,
    changed: Vec<usize>,
    sends: Vec<usize>,
    lookups: Vec<usize>,
    /// Items by key, as notifications name them (built when notifications can arrive).
    by_key: HashMap<String, usize>,
    /// Lookups whose answer comes as a `Notice::Subject` and has not come yet: the units that
    /// asked and when, by the lookup's reference.
    asked: HashMap<String, (Vec<usize>, Millis)>,
    /// Lookups whose answer came: a later answer under the same reference (a copy, or the
    /// genuine one after a forgery) is still taken, so a contradiction is seen.
    answered: HashSet<String>,
    /// The last journaled notice acted on since the last commit (committed with the states).
    applied: Option<u64>,
    /// Notifications that came before the answer they follow (`Rejection::NotYet`): the notice,
    /// its digest, and when it came. Memory only: a provider that hears 202 may send it again.
    held: Vec<(Notice, [u8; 32], Millis)>,
    notices: NoticeCounts,
}

/// Why a notification is not taken.
enum Rejection {
    /// It contradicts what an item sent, or names nothing of this batch.
    Never(String),
    /// It names a request or lookup whose answer has not come back yet: a notification can
    /// overtake the answer it follows. Held a while, looked at again each round, then rejected.
    NotYet(String),
}

impl Rejection {
    fn why(&self) -> &str {
        match self {
            Rejection::Never(w) | Rejection::NotYet(w) => w,
        }
    }
}

/// How long a notification that overtook its request's answer is held.
const HOLD: Duration = Duration::from_secs(10);

fn is_open(s: &State) -> bool {
    !(s.is_final() || matches!(s, State::NeedsReview { .. }))
}

impl Book<'_> {
    /// Steps item `i` with `event`: records a changed state, schedules its next due time and
    /// routes the effects.
    fn apply(
        &mut self,
        i: usize,
        event: Event,
        policy: &crate::manifest::RetryPolicy,
        timings: &Timings,
        adapter: &dyn Adapter,
    ) {
        let now = match &event {
            Event::Tick { now }
            | Event::Sent { now, .. }
            | Event::Observed { now, .. }
            | Event::Resume { now } => *now,
        };
        let answer = match &event {
            Event::Sent {
                verdict: Verdict::Succeeded { result, .. },
                ..
            }
            | Event::Observed {
                verdict: Verdict::Succeeded { result, .. },
                ..
            } => result.clone(),
            _ => None,
        };
        let (s, fx) = machine::step(&self.recs[i].state, event, policy, timings);
        let ends = s.is_final() && !self.recs[i].state.is_final();
        // What a later node reads of this one: kept with the record, committed with its end.
        if matches!(s, State::Succeeded { .. })
            && !matches!(self.recs[i].state, State::Succeeded { .. })
            && self.read[self.units[i].1]
        {
            self.recs[i].result = Some(self.keep_result(i, answer.as_ref()));
        }
        if s != self.recs[i].state {
            let r = &mut self.recs[i];
            if matches!(s, State::Sending { .. }) && r.first_sent.is_none() {
                r.first_sent = Some(now);
            }
            if let State::Submitted { reference, .. } = &s {
                let (group, _) = adapter.reference_group(reference);
                self.groups.entry(group).or_default().push(i);
            }
            match (is_open(&r.state), is_open(&s)) {
                (true, false) => self.open -= 1,
                (false, true) => self.open += 1,
                _ => {}
            }
            r.updated = now;
            r.state = s;
            self.changed.push(i);
        }
        self.schedule(i);
        if ends {
            self.follow(i, now);
        }
        for e in fx {
            match e {
                Effect::Send { .. } => self.sends.push(i),
                Effect::Lookup => self.lookups.push(i),
                Effect::WakeAt(_) => {}
            }
        }
    }

    /// Creates the delayed steps that follow unit `u`, which just ended: scheduled after their
    /// delay when the branch they hang on was taken, skipped otherwise. Committed with `u`'s
    /// final state, so a crash cannot lose them.
    fn follow(&mut self, u: usize, now: Millis) {
        use crate::manifest::Link;
        let (item, step) = self.units[u];
        for k in self.followers[step].clone() {
            if self.unit_at.contains_key(&(item, k)) {
                continue;
            }
            let s = &self.steps[k - 1];
            let outcome = match &self.recs[u].state {
                State::Succeeded { .. } => Some(Link::Success),
                State::Failed { .. } => Some(Link::Fail),
                _ => None,
            };
            let state = match outcome {
                Some(o) if s.link == Link::Always || s.link == o => State::Scheduled {
                    at: now.saturating_add(s.delay.as_millis() as u64),
                },
                Some(o) => State::Skipped {
                    reason: format!("`{}` ended in {}", s.after_id, o.as_str()),
                    at: now,
                },
                None => State::Skipped {
                    reason: format!("`{}` did not run", s.after_id),
                    at: now,
                },
            };
            let base = &self.recs[item];
            let mut r = Record::planned(
                &base.id,
                &crate::keys::task_key(&base.key, &format!("step/{}", s.path)),
                &base.digest,
                base.line,
                Vec::new(),
            );
            r.step = Some(s.path.clone());
            r.updated = now;
            let skipped = state.is_final();
            r.state = state;
            let v = self.recs.len();
            if self.client_run && self.keyed_notices {
                self.by_key.insert(self.adapter.wire_key(&r.key), v);
            }
            self.recs.push(r);
            self.units.push((item, k));
            self.unit_at.insert((item, k), v);
            if !skipped {
                self.open += 1;
            }
            self.changed.push(v);
            self.schedule(v);
            if skipped {
                self.follow(v, now);
            }
        }
    }

    /// The request of step unit `u`, with the results of the nodes above it it reads: a full
    /// path into a node's kept result (`${result.auth.paymentid}`,
    /// `${result.account.result.accountToken}`); for a failed node its `code` and
    /// `description`; for a tree the provider ran, the ids its verdict reported.
    fn step_payload(&self, u: usize) -> Result<Rendered, String> {
        let (item, step) = self.units[u];
        let planned = &self.items[item].steps[step - 1];
        let s = &self.steps[step - 1];
        let lookup = |id: &str, path: &str| -> Option<Value> {
            let &(_, at) = s.reads.iter().find(|(n, _)| n == id)?;
            let unit = match at {
                0 => item,
                _ => *self.unit_at.get(&(item, at))?,
            };
            let rec = &self.recs[unit];
            let name = path.rsplit('.').next().unwrap_or(path);
            match &rec.state {
                State::Succeeded { ids, .. } => rec
                    .result
                    .as_ref()
                    .and_then(|r| crate::providers::json_path(r, path))
                    .cloned()
                    .or_else(|| {
                        ids.get(path)
                            .or_else(|| ids.get(name))
                            .cloned()
                            .map(Value::String)
                    }),
                State::Failed {
                    code, description, ..
                } => match name {
                    "code" => Some(code.clone()),
                    "description" | "comment" => Some(description.clone()),
                    _ => None,
                }
                .map(Value::String),
                _ => None,
            }
        };
        let mut missing = Vec::new();
        let v = crate::providers::fill_rendered(planned, &lookup, &mut missing);
        if !missing.is_empty() {
            return Err(format!(
                "`{}` needs {} of the task{} above it, which did not report it",
                s.path,
                missing.join(", "),
                if s.reads.len() == 1 { "" } else { "s" }
            ));
        }
        if s.typed.is_empty() || !planned.get().contains("${result.") {
            return Ok(v);
        }
        // A value read from a result goes on the wire as the field's type (an amount the
        // provider listed as "1095" is the number 1095 in a minor-units field).
        let mut tree: Value = serde_json::from_str(v.get()).expect("kept JSON parses");
        for (path, wire) in &s.typed {
            if let Some(x) = crate::providers::json_path_mut(&mut tree, path) {
                crate::providers::retype(x, *wire)
                    .map_err(|why| format!("`{}`: `{path}` read from a result {why}", s.path))?;
            }
        }
        Ok(crate::providers::keep(&tree))
    }

    /// The result kept for unit `u`, which just succeeded: for a node payrun sent on its own,
    /// what its request sent (keys as they went on the wire) overlaid with the provider's
    /// `answer`; then every field its operation marks sensitive, and any value shaped like a
    /// card number, removed — nothing of the kind is ever at rest.
    fn keep_result(&self, u: usize, answer: Option<&Value>) -> Value {
        let op = self.flow.op(self.op_of(u));
        let mut out = serde_json::Map::new();
        if self.client_run
            && let Some(Value::Object(sent)) = self
                .sent(u)
                .first()
                .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
        {
            out = sent;
            let key = self.adapter.wire_key(&self.recs[u].key);
            for v in out.values_mut() {
                if v.as_str() == Some(crate::keys::KEYED) {
                    *v = Value::String(key.clone());
                }
            }
        }
        if let Some(Value::Object(a)) = answer {
            out.extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut v = Value::Object(out);
        crate::providers::scrub(&mut v, op);
        v
    }

    /// Where unit `u` is stored.
    fn store_index(&self, u: usize) -> u64 {
        match self.units[u] {
            (item, 0) => item as u64,
            (item, step) => super::store::step_index(step, item),
        }
    }

    fn schedule(&mut self, i: usize) {
        if let Some(d) = self.recs[i].state.due() {
            self.timers.insert((d, i));
        }
    }

    /// Items whose due time has come, each once.
    fn due(&mut self, now: Millis) -> Vec<usize> {
        let mut out = Vec::new();
        while let Some(&(t, i)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            if self.recs[i].state.due() == Some(t) && !self.in_flight.contains(&i) {
                out.push(i);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn commit(&mut self, store: &mut Store) -> Result<(), StoreError> {
        self.changed.sort_unstable();
        self.changed.dedup();
        let rows: Vec<(u64, &Record)> = self
            .changed
            .iter()
            .map(|&i| (self.store_index(i), &self.recs[i]))
            .collect();
        store.commit_with(&rows, self.applied)?;
        self.changed.clear();
        self.applied = None;
        Ok(())
    }

    /// What unit `u` sends: its item's request, or its step's with the results it reads
    /// filled in.
    fn sent(&self, u: usize) -> Vec<Rendered> {
        match self.units[u] {
            (item, 0) => self.items[item].payload.clone(),
            (item, s) => match self.step_payload(u) {
                Ok(v) => vec![v],
                Err(_) => self.items[item]
                    .steps
                    .get(s - 1)
                    .cloned()
                    .into_iter()
                    .collect(),
            },
        }
    }

    /// How unit `u`'s lost answer is settled.
    fn settle_of(&self, u: usize) -> Settle {
        match self.units[u].1 {
            0 => self.root_settle,
            k => self.steps[k - 1].settle,
        }
    }

    /// What unit `u` sends, with the results it reads; Err: a result it needs is missing.
    fn payload_of(&self, u: usize) -> Result<Vec<Rendered>, String> {
        match self.units[u] {
            (item, 0) => Ok(self.items[item].payload.clone()),
            _ => self.step_payload(u).map(|v| vec![v]),
        }
    }

    /// The operation of unit `u`.
    fn op_of(&self, u: usize) -> &str {
        match self.units[u].1 {
            0 => &self.root_op,
            k => &self.steps[k - 1].op,
        }
    }

    /// `contradiction` of `claims` with what unit `u` sent.
    fn contradicts(&self, u: usize, claims: &crate::providers::Claims) -> Option<String> {
        let op = self.op_of(u);
        contradiction(&self.sent(u), claims, &|ty| {
            self.adapter.names_operation(op, ty)
        })
    }

    /// Submitted units waiting for exactly `reference`.
    fn waiting_for<'a>(&'a self, reference: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.groups
            .get(reference)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(move |&i| self.recs[i].state.reference() == Some(reference))
    }

    /// Units a report about the request accepted under `reference` concerns: those waiting for
    /// exactly it, and those that ended since they were accepted under it (a late copy, or a
    /// contradiction).
    fn concerned<'a>(&'a self, reference: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.groups
            .get(reference)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(move |&i| {
                let s = &self.recs[i].state;
                s.is_final() || s.reference() == Some(reference)
            })
    }

    /// Checks an authentic notice against this run before it is journaled: it must concern an
    /// item of the batch — for a reference, one waiting for exactly it; for a lookup's answer, a
    /// lookup payrun made — and agree with what the item sent. Err says why it is not taken
    /// (it then changes nothing).
    fn vet(&self, notice: &Notice) -> Result<(), Rejection> {
        match notice {
            Notice::Item { key, .. } => match self.by_key.get(&key.replace('-', "")) {
                // An outcome is about a request payrun recorded as sent, or about nothing.
                Some(&i) if self.recs[i].state.was_sent() => Ok(()),
                Some(&i) => Err(Rejection::Never(format!(
                    "a notification about item {}, for which nothing was sent",
                    self.recs[i].id
                ))),
                None => Err(Rejection::Never(
                    "a notification about a key not in this batch".into(),
                )),
            },
            Notice::Reference {
                candidates, claims, ..
            } => {
                let mut waiting = false;
                for c in candidates {
                    // Waiting for it, or settled since it was accepted under it (a late copy).
                    for i in self.concerned(c) {
                        if let Some(why) = self.contradicts(i, claims) {
                            return Err(Rejection::Never(format!(
                                "a notification about item {} that contradicts it: {why}",
                                self.recs[i].id
                            )));
                        }
                        waiting = true;
                    }
                }
                match waiting {
                    true => Ok(()),
                    false => Err(Rejection::NotYet(
                        "a notification for a request no item of this run waits for \
                         (unknown responseid or payment)"
                            .into(),
                    )),
                }
            }
            Notice::Subject {
                subjects,
                found,
                answered,
            } => {
                let rid = answered.as_ref().map(|(rid, _)| rid.as_str());
                let reconciles = rid.is_some_and(|rid| {
                    subjects
                        .iter()
                        .any(|s| self.waiting_for(&format!("{rid}@{s}")).next().is_some())
                });
                for (key, _, claims) in found {
                    if let Some(&i) = self.by_key.get(&key.replace('-', ""))
                        && let Some(why) = self.contradicts(i, claims)
                    {
                        return Err(Rejection::Never(format!(
                            "a payment notification that contradicts item {}: {why}",
                            self.recs[i].id
                        )));
                    }
                }
                // Taken only as the answer to a lookup payrun made (or a reconciliation item's
                // own request): a listing posted by anyone else proves nothing.
                let ours = rid
                    .is_some_and(|rid| self.asked.contains_key(rid) || self.answered.contains(rid));
                if reconciles || ours {
                    Ok(())
                } else {
                    Err(Rejection::NotYet(
                        "a payment notification answering no lookup of this run \
                         (unknown responseid)"
                            .into(),
                    ))
                }
            }
            Notice::Group(_) | Notice::Refused(..) | Notice::Ignored => Ok(()),
        }
    }

    /// Acts on a notice (vetted before it was journaled, or replayed from the journal).
    fn take(
        &mut self,
        notice: Notice,
        now: Millis,
        policy: &crate::manifest::RetryPolicy,
        timings: &Timings,
        adapter: &dyn Adapter,
    ) {
        let observe = |book: &mut Book, i: usize, verdict: Verdict| {
            tracing::debug!(item = %book.recs[i].id, ?verdict, "notification");
            book.apply(
                i,
                Event::Observed { verdict, now },
                policy,
                timings,
                adapter,
            );
        };
        match notice {
            // One more observation; duplicates and stale ones are absorbed by the state machine.
            Notice::Item { key, verdict } => {
                if let Some(&i) = self.by_key.get(&key.replace('-', "")) {
                    observe(self, i, verdict);
                }
            }
            // Ask about that submission's items now instead of at their next poll.
            Notice::Group(group) => {
                for i in self.groups.get(&group).cloned().unwrap_or_default() {
                    if let State::Submitted { reference, .. } = &self.recs[i].state
                        && adapter.reference_group(reference).0 == group
                        && !self.in_flight.contains(&i)
                    {
                        self.lookups.push(i);
                    }
                }
            }
            // The outcome of an accepted request, for the item waiting for exactly it.
            // The outcome of an accepted request, for the item waiting for exactly it — or that
            // ended since it was accepted under it: a later report that contradicts the end is
            // news (the machine keeps a copy of the same outcome from changing anything).
            Notice::Reference {
                candidates,
                verdict,
                ..
            } => {
                // An unsigned report of a failure about an item still waiting: asked about
                // through a lookup instead, whose answer (taken only as the answer to payrun's
                // own lookup) settles it.
                let confirm = timings.confirm_failures && matches!(verdict, Verdict::Failed { .. });
                for c in &candidates {
                    let concerned: Vec<usize> = self.concerned(c).collect();
                    for i in concerned {
                        if confirm && !self.recs[i].state.is_final() {
                            tracing::info!(item = %self.recs[i].id, "a reported failure, confirmed by a lookup");
                            self.lookups.push(i);
                        } else {
                            observe(self, i, verdict.clone());
                        }
                    }
                }
            }
            // A lookup's answer about a subject: the items it lists; an item whose own request
            // was this lookup (a reconciliation); and the items in doubt that asked through it
            // and are not listed (never processed: sent again with the same key).
            Notice::Subject {
                subjects,
                found,
                answered,
            } => {
                let mut listed = HashSet::new();
                if let Some((rid, verdict)) = &answered {
                    for s in &subjects {
                        let waiting: Vec<usize> = self.waiting_for(&format!("{rid}@{s}")).collect();
                        for i in waiting {
                            listed.insert(i);
                            observe(self, i, verdict.clone());
                        }
                    }
                }
                for (key, verdict, _) in found {
                    if let Some(&i) = self.by_key.get(&key.replace('-', "")) {
                        listed.insert(i);
                        observe(self, i, verdict);
                    }
                }
                // Not listed: what that means is the machine's to say (a provider without
                // idempotency needs the settle window and a second lookup).
                if let Some((rid, _)) = &answered
                    && let Some((units, at)) = self.asked.remove(rid)
                {
                    self.answered.insert(rid.clone());
                    for i in units {
                        if !listed.contains(&i)
                            && matches!(self.recs[i].state, State::InDoubt { .. })
                        {
                            observe(self, i, Verdict::Unlisted { asked: at });
                        }
                    }
                }
            }
            Notice::Refused(..) | Notice::Ignored => {}
        }
    }
}

impl<'a> Book<'a> {
    /// The bookkeeping of a run over `items`, resuming from the records `stored` (by store
    /// index): every node's record, the steps each is followed by, and what is due — nodes
    /// left `Sending` by a stopped run are in doubt, nodes that ended get the steps that follow
    /// them. Nothing is committed yet.
    fn new(
        flow: &'a Flow,
        items: &'a [PlannedItem],
        stored: Vec<(u64, Record)>,
        adapter: &'a dyn Adapter,
        now: Millis,
        timings: &Timings,
    ) -> Book<'a> {
        let policy = &flow.manifest.retry;
        let mut stored: HashMap<u64, Record> = stored.into_iter().collect();
        let mut recs: Vec<Record> = items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                stored.remove(&(i as u64)).unwrap_or_else(|| {
                    Record::planned(&it.id, &it.key, &it.digest, it.line, it.money.clone())
                })
            })
            .collect();
        let mut units: Vec<(usize, usize)> = (0..recs.len()).map(|i| (i, 0)).collect();
        // Delayed steps already under way, after the items.
        let mut rest: Vec<(u64, Record)> = stored.into_iter().collect();
        rest.sort_unstable_by_key(|(i, _)| *i);
        for (index, r) in rest {
            let (step, item) = super::store::split_index(index);
            if step > 0 && item < items.len() {
                units.push((item, step));
                recs.push(r);
            }
        }
        let client_run = flow.provider.tree == crate::schema::TreeExecution::Client;
        let flow_steps = flow.steps();
        // The step each task is sent in (0: the item's first request).
        let step_of: HashMap<&str, usize> = flow_steps
            .iter()
            .enumerate()
            .map(|(k, s)| (s.task.id.as_str(), k + 1))
            .chain(flow.tasks.iter().map(|t| (t.id.as_str(), 0)))
            .collect();
        let steps: Vec<StepInfo> = flow_steps
            .iter()
            .map(|s| StepInfo {
                path: s.task.tree_path.clone(),
                after: s.after,
                after_id: s.after_task.id.clone(),
                link: s.link,
                delay: s.delay,
                settle: s.settle,
                op: s.task.op.clone(),
                reads: match client_run {
                    true => s
                        .ancestors
                        .iter()
                        .map(|(t, _)| (t.id.clone(), step_of[t.id.as_str()]))
                        .collect(),
                    false => vec![(s.after_task.id.clone(), s.after)],
                },
                typed: s
                    .task
                    .bindings
                    .iter()
                    .filter(|b| matches!(b.value, crate::compile::Bound::Result { .. }))
                    .map(|b| (b.path.clone(), flow.op(&s.task.op).fields[b.field].wire))
                    .collect(),
            })
            .collect();
        let mut followers = vec![Vec::new(); steps.len() + 1];
        for (k, s) in steps.iter().enumerate() {
            followers[s.after].push(k + 1);
        }
        let mut read = vec![false; steps.len() + 1];
        for s in &steps {
            for (_, at) in &s.reads {
                read[*at] = true;
            }
        }
        let root = flow.tasks.first();
        let mut book = Book {
            flow,
            items,
            client_run,
            root_op: root.map(|t| t.op.clone()).unwrap_or_default(),
            root_settle: match (client_run, root) {
                (true, Some(t)) => flow.op(&t.op).settle,
                _ => Settle::Lookup,
            },
            read,
            adapter,
            keyed_notices: false,
            open: recs.iter().filter(|r| is_open(&r.state)).count(),
            unit_at: units
                .iter()
                .enumerate()
                .filter(|(_, (_, step))| *step > 0)
                .map(|(u, &iu)| (iu, u))
                .collect(),
            units,
            steps,
            followers,
            recs,
            ready: VecDeque::new(),
            timers: BTreeSet::new(),
            in_flight: HashSet::new(),
            groups: HashMap::new(),
            changed: Vec::new(),
            sends: Vec::new(),
            lookups: Vec::new(),
            by_key: HashMap::new(),
            asked: HashMap::new(),
            answered: HashSet::new(),
            applied: None,
            held: Vec::new(),
            notices: NoticeCounts::default(),
        };
        // A resumed run: whatever was being sent when it stopped is now in doubt; whatever waited
        // keeps its due time (pending backoffs are respected).
        for i in 0..book.recs.len() {
            match &book.recs[i].state {
                State::Planned => book.ready.push_back(i),
                State::Sending { .. } | State::NeedsReview { .. } => {
                    if let Some(reference) = book.recs[i].state.reference() {
                        let (group, _) = adapter.reference_group(reference);
                        book.groups.entry(group).or_default().push(i);
                    }
                    book.apply(i, Event::Resume { now }, policy, timings, adapter)
                }
                // Accepted and waiting: whatever the provider told while no run listened is lost,
                // so each is asked about once now.
                State::Submitted { reference, .. } => {
                    let (group, _) = adapter.reference_group(reference);
                    book.groups.entry(group).or_default().push(i);
                    book.apply(i, Event::Resume { now }, policy, timings, adapter);
                }
                _ => book.schedule(i),
            }
        }
        // Steps that should follow what ended before (a batch started by an older payrun).
        for u in 0..book.recs.len() {
            if book.recs[u].state.is_final() {
                book.follow(u, now);
            }
        }
        book
    }
}

/// Runs `items` to the end (or until `stop` is set), resuming from whatever `store` holds.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    flow: &Flow,
    items: &[PlannedItem],
    stored: Vec<(u64, Record)>,
    store: &mut Store,
    endpoint: &Endpoint,
    timings: &Timings,
    stop: Arc<AtomicBool>,
    listener: Option<std::net::SocketAddr>,
) -> Result<Summary, StoreError> {
    let policy = &flow.manifest.retry;
    let limits = &flow.limits;
    let adapter: &dyn Adapter = endpoint.adapter.as_ref();
    let now = now_ms();
    let mut book = Book::new(flow, items, stored, adapter, now, timings);
    book.commit(store)?;

    let http = endpoint.http.clone();
    let provider_limiter = Arc::new(limiter(limits.requests_per_second, limits.burst));
    for _ in 0..endpoint.spent {
        let _ = provider_limiter.check();
    }
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
        slots: Arc::new(tokio::sync::Semaphore::new(
            limits.concurrency.max(1) as usize
        )),
        tx: tx.clone(),
    };
    let pack = adapter.pack_limit().max(1);
    // Items admitted to `sending` at most this far ahead of the requests actually leaving.
    let window = pack * limits.concurrency.max(1) as usize * 2;
    let mut sending = 0usize;
    let mut requests = 0u64;
    let holder = super::status::Holder::me(&rfc3339(now_ms()));
    let mut progress = super::progress::Progress::new(&book.recs);
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
        book.by_key = book
            .recs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.step.is_none() || book.client_run)
            .map(|(i, r)| (adapter.wire_key(&r.key), i))
            .collect();
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
        } else {
            for i in book.due(now) {
                book.apply(i, Event::Tick { now }, policy, timings, adapter);
            }
            // New items only as fast as requests can leave.
            while sending + book.sends.len() < window {
                let Some(i) = book.ready.pop_front() else {
                    break;
                };
                if matches!(book.recs[i].state, State::Planned) {
                    book.apply(i, Event::Tick { now }, policy, timings, adapter);
                }
            }
        }
        // Durable before anything leaves: a crash after this commit finds `Sending`.
        progress.pace(&wire.pace.now());
        progress.update(&book.recs, &book.changed, book.in_flight.len());
        book.commit(store)?;

        // Effects asked for earlier may have been overtaken (a notification settled the item):
        // only what the current state still calls for is carried out.
        let mut sends_now = std::mem::take(&mut book.sends);
        sends_now.sort_unstable();
        sends_now.dedup();
        sends_now.retain(|&i| {
            matches!(book.recs[i].state, State::Sending { .. }) && !book.in_flight.contains(&i)
        });
        // Nodes in doubt whose operation offers no safe way to settle them (`settle: review`).
        let mut unsettled: Vec<usize> = Vec::new();
        let mut lookups_now = std::mem::take(&mut book.lookups);
        lookups_now.sort_unstable();
        lookups_now.dedup();
        lookups_now.retain(|&i| !book.recs[i].state.is_final() && !book.in_flight.contains(&i));
        // A delayed step's request gets the results of the payout it follows; one that cannot
        // be filled in is not sent.
        let mut unresolved: Vec<(usize, String)> = Vec::new();
        let mut filled: HashMap<usize, Vec<Rendered>> = HashMap::new();
        sends_now.retain(|&u| {
            if book.units[u].1 == 0 {
                return true;
            }
            match book.step_payload(u) {
                Ok(v) => {
                    filled.insert(u, vec![v]);
                    true
                }
                Err(why) => {
                    unresolved.push((u, why));
                    false
                }
            }
        });
        // One step per request (a pack's answer is read against one kind of tree).
        sends_now.sort_unstable_by_key(|&u| (book.units[u].1, u));
        let packs: Vec<Vec<usize>> = sends_now
            .chunk_by(|&a, &b| book.units[a].1 == book.units[b].1)
            .flat_map(|same| same.chunks(pack).map(<[usize]>::to_vec))
            .collect();
        for mut idx in packs {
            // Always the same order for the same items: a pack sent again is the same request,
            // and the provider's replayed answer lines up with it.
            idx.sort_unstable_by(|&a, &b| book.recs[a].key.cmp(&book.recs[b].key));
            book.in_flight.extend(&idx);
            sending += idx.len();
            requests += 1;
            for &i in &idx {
                book.recs[i].requests += 1;
            }
            let out: Vec<Outgoing> = idx
                .iter()
                .map(|&u| Outgoing {
                    key: &book.recs[u].key,
                    op: book.op_of(u),
                    payload: match filled.get(&u) {
                        Some(v) => v,
                        None => &items[book.units[u].0].payload,
                    },
                    attempt: match &book.recs[u].state {
                        State::Sending { attempt, .. } => *attempt,
                        _ => book.recs[u].requests,
                    },
                })
                .collect();
            // Paysend's idempotency is header.request.id *and* header.request.date: a pack sent
            // again must carry the date it first carried, or it is a new request. That date is
            // the pack's first send, recorded (committed with `Sending`) before it left.
            let date = idx
                .iter()
                .filter_map(|&u| book.recs[u].first_sent)
                .min()
                .unwrap_or(now);
            let req = adapter.submit(&out, &rfc3339(date));
            if let (Some(trace), [u]) = (&req.trace, idx.as_slice())
                && book.recs[*u].trace.as_ref() != Some(trace)
            {
                book.recs[*u].trace = Some(trace.clone());
                book.changed.push(*u);
            }
            let (wire, adapter) = (wire.clone(), Arc::clone(&endpoint.adapter));
            tokio::spawn(async move {
                let sent = req.clone();
                let (_slot, answer) = wire.exchange(req, true).await;
                let verdicts = adapter.classify_submit(&sent, &answer, idx.len());
                let _ = wire
                    .tx
                    .send(Outcome::Sent(idx.into_iter().zip(verdicts).collect()));
            });
        }
        // Lookups: a submitted group is asked about once; the rest by key.
        let mut by_group: std::collections::BTreeMap<String, Vec<(usize, usize)>> =
            std::collections::BTreeMap::new();
        for &i in &lookups_now {
            book.in_flight.insert(i);
            book.recs[i].requests += 1;
            match &book.recs[i].state {
                State::Submitted { reference, .. } => {
                    let (group, pos) = adapter.reference_group(reference);
                    by_group.entry(group).or_default().push((i, pos));
                }
                // How this node's lost answer is settled is its operation's rule (`settle:`):
                // sent again under the same key (it only reads, or the provider deduplicates
                // it), handed to a person, or looked up by key.
                _ if book.settle_of(i) == Settle::Resend => match book.payload_of(i) {
                    Ok(payload) => {
                        requests += 1;
                        let req = adapter.submit(
                            &[Outgoing {
                                key: &book.recs[i].key,
                                op: book.op_of(i),
                                payload: &payload,
                                attempt: book.recs[i].requests,
                            }],
                            &rfc3339(now),
                        );
                        let (wire, adapter) = (wire.clone(), Arc::clone(&endpoint.adapter));
                        tokio::spawn(async move {
                            let sent = req.clone();
                            let (_slot, answer) = wire.exchange(req, false).await;
                            let verdict = adapter
                                .classify_submit(&sent, &answer, 1)
                                .pop()
                                .unwrap_or(Verdict::InDoubt);
                            let _ = wire.tx.send(Outcome::Observed(vec![(i, verdict)]));
                        });
                    }
                    Err(why) => {
                        book.in_flight.remove(&i);
                        unresolved.push((i, why));
                    }
                },
                _ if book.settle_of(i) == Settle::Review => {
                    book.in_flight.remove(&i);
                    book.recs[i].requests -= 1;
                    unsettled.push(i);
                }
                _ => {
                    // A tree the provider ran is looked up by the item's key and request; a
                    // node payrun sent on its own by its own.
                    let (key, payload) = match (book.client_run, book.units[i]) {
                        (false, (item, _)) => {
                            (book.recs[item].key.clone(), items[item].payload.clone())
                        }
                        (true, _) => match book.payload_of(i) {
                            Ok(p) => (book.recs[i].key.clone(), p),
                            Err(why) => {
                                book.in_flight.remove(&i);
                                unresolved.push((i, why));
                                continue;
                            }
                        },
                    };
                    requests += 1;
                    let req = adapter.key_lookup(
                        book.op_of(i),
                        &key,
                        &payload,
                        book.recs[i].requests,
                        &rfc3339(now),
                    );
                    let (wire, adapter) = (wire.clone(), Arc::clone(&endpoint.adapter));
                    tokio::spawn(async move {
                        let (slot, mut answer) = wire.exchange(req, false).await;
                        drop(slot);
                        // Answered before the lookup ran: fetch its outcome by the lookup's own
                        // reference, a few times.
                        for _ in 0..10 {
                            let Some(next) = adapter.lookup_followup(&answer) else {
                                break;
                            };
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            answer = wire.exchange(next, false).await.1;
                        }
                        let verdict = match adapter.classify_key_lookup(&answer) {
                            // "Not listed", as of when it was asked.
                            Verdict::Unlisted { .. } => Verdict::Unlisted { asked: now },
                            v => v,
                        };
                        if let Some(reference) = adapter.lookup_reference(&answer) {
                            let _ = wire.tx.send(Outcome::Asked(i, reference, now));
                        }
                        let _ = wire.tx.send(Outcome::Observed(vec![(i, verdict)]));
                    });
                }
            }
        }
        for (group, members) in by_group {
            requests += 1;
            let seq = members
                .iter()
                .map(|&(i, _)| book.recs[i].requests)
                .max()
                .unwrap_or(0);
            let req = adapter.group_lookup(&group, seq, &rfc3339(now));
            let (wire, adapter) = (wire.clone(), Arc::clone(&endpoint.adapter));
            tokio::spawn(async move {
                let (_slot, answer) = wire.exchange(req, false).await;
                if let Some(reference) = adapter.lookup_reference(&answer) {
                    for &(i, _) in &members {
                        let _ = wire.tx.send(Outcome::Asked(i, reference.clone(), now));
                    }
                }
                let n = members.iter().map(|(_, p)| p + 1).max().unwrap_or(1);
                let verdicts = adapter.classify_group(&answer, n);
                let _ = wire.tx.send(Outcome::Observed(
                    members
                        .into_iter()
                        .map(|(i, p)| (i, verdicts.get(p).cloned().unwrap_or(Verdict::InDoubt)))
                        .collect(),
                ));
            });
        }

        for u in unsettled {
            let verdict = Verdict::NeedsReview {
                code: "in-doubt".into(),
                description: format!(
                    "its answer was lost and {} offers no way to find out whether `{}` was done: \
                     it is not sent again",
                    flow.provider.title,
                    book.op_of(u)
                ),
            };
            book.apply(
                u,
                Event::Observed { verdict, now },
                policy,
                timings,
                adapter,
            );
        }
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
        if book.in_flight.is_empty()
            && (stopping || (book.open == 0 && book.ready.is_empty() && !awaited))
        {
            break;
        }
        // Wait for an answer, the next due time, or a stop.
        let next_due = if stopping {
            None
        } else {
            book.timers.first().map(|&(t, _)| t)
        };
        let wait = next_due
            .map(|d| Duration::from_millis(d.saturating_sub(now_ms()).min(500)))
            .unwrap_or(Duration::from_millis(500));
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
                Outcome::Records(reply) => {
                    let _ = reply.send(book.recs.clone());
                    continue;
                }
            };
            // One request's answer: did the provider push back?
            wire.pace.heard(list.iter().map(|(_, v)| v));
            for (i, verdict) in list {
                book.in_flight.remove(&i);
                tracing::debug!(item = %book.recs[i].id, ?verdict, sent, "answer");
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
                &flow.manifest.batch,
                &book.recs,
                Some(holder.clone()),
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
    progress.update(&book.recs, &book.changed, book.in_flight.len());
    book.commit(store)?;
    progress.finish(&book.recs);
    write_snapshot(&snapshot, &flow.manifest.batch, &book.recs, None);
    if let Some(s) = server {
        s.abort();
    }
    if let Some(c) = control {
        c.abort();
        let _ = std::fs::remove_file(control_path(&store.path));
    }
    let pace = wire.pace.now();
    let mut s = Summary {
        items: book.recs.iter().filter(|r| r.step.is_none()).count(),
        requests,
        commits: store.commits,
        notices: book.notices,
        unreachable,
        pushbacks: pace.pushbacks(),
        pace_ceiling: pace.ceiling(),
        pace_lowest: pace.lowest(),
        ..Summary::default()
    };
    for r in &book.recs {
        if r.step.is_some() {
            match r.state {
                State::Succeeded { .. } | State::Skipped { .. } => s.steps_done += 1,
                State::Failed { .. } => s.steps_failed += 1,
                _ => s.steps_open += 1,
            }
            continue;
        }
        match r.state {
            State::Succeeded { .. } => s.succeeded += 1,
            State::Failed { .. } => s.failed += 1,
            State::NeedsReview { .. } => s.needs_review += 1,
            State::Reversed { .. } => s.reversed += 1,
            _ => s.unfinished += 1,
        }
    }
    Ok(s)
}

/// Replaces the status snapshot atomically (write, then rename). A failure only costs freshness.
fn write_snapshot(
    path: &std::path::Path,
    batch: &str,
    recs: &[Record],
    holder: Option<super::status::Holder>,
) {
    let view = super::status::view(batch, recs, holder);
    if let Ok(bytes) = serde_json::to_vec_pretty(&view) {
        let _ = crate::private::write_atomic(path, &bytes, false);
    }
}

/// One HTTP exchange as the adapter described it, outside the run's limiters (preflight).
pub async fn exchange_once(
    http: &reqwest::Client,
    base_url: &str,
    req: Request,
    adapter: &dyn Adapter,
    provider: &str,
) -> Answer {
    let url = request_url(base_url, &req);
    vetted(adapter, provider, &url, send(http, base_url, req).await)
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

#[cfg(test)]
mod graph_tests {
    //! The runner's bookkeeping of item graphs driven by random answers, lost answers and
    //! crashes (a new `Book` from what was committed), against the invariants that make
    //! "exactly once" hold: a node is never sent again while a request of it may have been
    //! processed and nothing settled that; a node is sent only once its own `Sending` and its
    //! parent's outcome are durable, on the branch that outcome took; every item's graph ends
    //! with each node final or with a person.

    use super::*;
    use crate::providers::payonic::Payonic;
    use serde_json::json;

    const FLOW: &str = r#"batch: graph-test
provider: payonic
environment: sandbox
credentials: {api_key: K}
items: {source: items.csv}
flow:
  - id: capture
    op: capture
    payload:
      paymentid: ${item.p}
      amount: ${item.amount}
      currency: DKK
    success:
      - id: refund
        op: refund
        payload:
          paymentid: ${result.capture.paymentid}
          amount: ${item.back}
          currency: DKK
        success:
          - id: again
            op: refund
            delay: 10m
            payload:
              paymentid: ${result.capture.paymentid}
              amount: ${result.refund.amount}
              currency: DKK
    fail:
      - id: release
        op: void
        payload:
          paymentid: ${item.p}
          amount: ${item.amount}
          currency: DKK
notifications: {listen: 127.0.0.1:8799, public_url: "https://acme.example/payrun"}
"#;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn flow() -> Flow {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("items.csv"),
            "id,p,amount,back\na,p1,10.00,2.00\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("manifest.yaml"), FLOW).unwrap();
        crate::pipeline::prepare(
            &dir.path().join("manifest.yaml"),
            &crate::schema::Registry::Embedded,
        )
        .map_err(|f| f.diagnostics)
        .expect("the graph compiles")
        .flow
    }

    fn items(flow: &Flow, n: usize) -> Vec<PlannedItem> {
        (0..n)
            .map(|i| {
                let key = crate::keys::item_key("graph-test", &format!("i{i}"));
                let steps = flow
                    .steps()
                    .iter()
                    .map(|s| {
                        let amount = match s.task.id.as_str() {
                            "again" => json!("${result.refund.amount}"),
                            _ => json!(200),
                        };
                        crate::providers::keep(&json!({
                            "paymentid": match s.task.id.as_str() {
                                "release" => json!(format!("p{i}")),
                                _ => json!("${result.capture.paymentid}"),
                            },
                            "amount": amount,
                            "note": crate::keys::KEYED,
                        }))
                    })
                    .collect();
                PlannedItem {
                    id: format!("i{i}"),
                    key,
                    digest: String::new(),
                    line: i as u64 + 2,
                    payload: vec![crate::providers::keep(&json!({
                        "paymentid": format!("p{i}"), "amount": 1000, "note": crate::keys::KEYED
                    }))],
                    steps,
                    money: Vec::new(),
                }
            })
            .collect()
    }

    fn timings() -> Timings {
        Timings {
            propagation: Duration::from_secs(5),
            poll_every: Duration::from_secs(60),
            review_every: Duration::from_secs(600),
            max_lookups: 10,
            max_polls: Some(5),
            poll_backoff: 2.0,
            settle: Duration::from_secs(600),
            reversals: false,
            confirm_failures: true,
        }
    }

    /// What the test knows of a unit's requests: one may have been processed, and the
    /// settlement observed since.
    #[derive(Default, Clone)]
    struct Doubt {
        maybe: bool,
        evidence: u32,
    }

    fn commit(book: &mut Book, durable: &mut HashMap<u64, Record>) {
        book.changed.sort_unstable();
        book.changed.dedup();
        for &i in &book.changed {
            durable.insert(book.store_index(i), book.recs[i].clone());
        }
        book.changed.clear();
    }

    fn succeeded(paymentid: String, amount: u64) -> Verdict {
        Verdict::Succeeded {
            ids: BTreeMap::new(),
            result: Some(json!({"paymentid": paymentid, "amount": amount.to_string()})),
        }
    }

    use std::collections::BTreeMap;

    /// A random answer to a send (`benign`: the provider answers, at once, with an outcome).
    fn answer(rng: &mut Rng, benign: bool, pay: String) -> Verdict {
        match (benign, rng.below(8)) {
            (true, 0) => Verdict::Failed {
                code: "51".into(),
                description: "declined".into(),
            },
            (true, _) => succeeded(pay, 200),
            (false, 0) => Verdict::InDoubt,
            (false, 1) => Verdict::RetryLater {
                class: crate::execute::backoff::ErrorClass::RateLimited,
                retry_after: None,
            },
            (false, 2) => Verdict::Failed {
                code: "51".into(),
                description: "declined".into(),
            },
            (false, 3) => Verdict::NeedsReview {
                code: "x".into(),
                description: "odd".into(),
            },
            (false, 4 | 5) => Verdict::Accepted {
                reference: format!("r{}@{pay}", rng.next() % 1000),
            },
            _ => succeeded(pay, 200),
        }
    }

    /// A random answer to a lookup, asked at `now`.
    fn observation(rng: &mut Rng, benign: bool, now: Millis, pay: String) -> Verdict {
        match (benign, rng.below(7)) {
            (true, _) => succeeded(pay, 200),
            (false, 0) => Verdict::Unknown,
            (false, 1) => Verdict::Unlisted { asked: now },
            (false, 2) => Verdict::Pending,
            (false, 3) => Verdict::Failed {
                code: "05".into(),
                description: "declined".into(),
            },
            (false, 4) => Verdict::RetryLater {
                class: crate::execute::backoff::ErrorClass::Network,
                retry_after: None,
            },
            _ => succeeded(pay, 200),
        }
    }

    #[test]
    fn random_answers_losses_and_crashes_never_break_the_graph_invariants() {
        let flow = flow();
        let adapter = Payonic {
            flow: Arc::new(flow.clone()),
            api_key: "k".into(),
            listener: Some("https://acme.example/payrun".into()),
            token: "0123456789abcdef0123456789abcdef".into(),
            per_operation_hosts: false,
            note_secret: Some(b"secret".to_vec()),
        };
        let t = timings();
        let policy = flow.manifest.retry.clone();
        let flow_steps = flow.steps();
        for seed in 1..=150u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let items = items(&flow, 3);
            let mut durable: HashMap<u64, Record> = HashMap::new();
            // Units by store index, so they survive a crash's renumbering.
            let mut doubt: HashMap<u64, Doubt> = HashMap::new();
            let mut now: Millis = 1_000_000;
            let mut book = Book::new(&flow, &items, Vec::new(), &adapter, now, &t);
            commit(&mut book, &mut durable);
            let mut rounds = 0;
            loop {
                rounds += 1;
                let benign = rounds > 60;
                assert!(
                    rounds < 4000,
                    "seed {seed}: the graphs never ended: {:?}",
                    book.recs
                        .iter()
                        .map(|r| (&r.step, &r.state))
                        .filter(|(_, s)| is_open(s))
                        .collect::<Vec<_>>()
                );
                // A crash: everything not committed is lost; a new run resumes.
                if !benign && rng.below(15) == 0 {
                    let stored: Vec<(u64, Record)> =
                        durable.iter().map(|(k, r)| (*k, r.clone())).collect();
                    book = Book::new(&flow, &items, stored, &adapter, now, &t);
                    commit(&mut book, &mut durable);
                }
                for i in book.due(now) {
                    book.apply(i, Event::Tick { now }, &policy, &t, &adapter);
                }
                while let Some(i) = book.ready.pop_front() {
                    if matches!(book.recs[i].state, State::Planned) {
                        book.apply(i, Event::Tick { now }, &policy, &t, &adapter);
                    }
                }
                commit(&mut book, &mut durable);
                let mut sends = std::mem::take(&mut book.sends);
                sends.sort_unstable();
                sends.dedup();
                sends.retain(|&u| matches!(book.recs[u].state, State::Sending { .. }));
                let mut lookups = std::mem::take(&mut book.lookups);
                lookups.sort_unstable();
                lookups.dedup();
                lookups.retain(|&u| !book.recs[u].state.is_final());
                for u in sends {
                    let at = book.store_index(u);
                    // Its own `Sending`, and its parent's end on its branch, are durable.
                    assert!(
                        matches!(durable[&at].state, State::Sending { .. }),
                        "seed {seed}: sent before its Sending was committed"
                    );
                    let (item, step) = book.units[u];
                    if step > 0 {
                        let s = &book.steps[step - 1];
                        let parent = match s.after {
                            0 => item as u64,
                            a => crate::execute::store::step_index(a, item),
                        };
                        let taken = match &durable[&parent].state {
                            State::Succeeded { .. } => crate::manifest::Link::Success,
                            State::Failed { .. } => crate::manifest::Link::Fail,
                            other => panic!("seed {seed}: sent while its parent is {other:?}"),
                        };
                        assert!(
                            s.link == taken || s.link == crate::manifest::Link::Always,
                            "seed {seed}: a node on the branch not taken was sent"
                        );
                        assert!(
                            book.step_payload(u).is_ok(),
                            "seed {seed}: sent without the results it reads"
                        );
                    }
                    let d = doubt.entry(at).or_default();
                    assert!(
                        !d.maybe || d.evidence > 0,
                        "seed {seed}: unit {at:x} sent again while a request of it may have been processed and nothing settled it"
                    );
                    let verdict = answer(&mut rng, benign, format!("p{item}"));
                    // A request may have been processed unless the provider said it was not.
                    *d = Doubt {
                        maybe: !matches!(verdict, Verdict::RetryLater { .. }),
                        evidence: 0,
                    };
                    // The answer lost on the way (a timeout): in doubt.
                    let verdict = match !benign && rng.below(6) == 0 {
                        true => Verdict::InDoubt,
                        false => verdict,
                    };
                    book.apply(u, Event::Sent { verdict, now }, &policy, &t, &adapter);
                }
                for u in lookups {
                    let (item, _) = book.units[u];
                    let verdict = observation(&mut rng, benign, now, format!("p{item}"));
                    if matches!(verdict, Verdict::Unknown | Verdict::Unlisted { .. }) {
                        doubt.entry(book.store_index(u)).or_default().evidence += 1;
                    }
                    book.apply(u, Event::Observed { verdict, now }, &policy, &t, &adapter);
                }
                commit(&mut book, &mut durable);
                if book.open == 0 && book.ready.is_empty() && book.timers.is_empty() {
                    break;
                }
                if book.open == 0 && benign {
                    break;
                }
                now += match benign {
                    true => 700_000,
                    false => rng.below(120_000),
                };
            }
            // Every node of every graph ended, or waits for a person; every step whose parent
            // ended exists, run or skipped as its branch says.
            for (u, r) in book.recs.iter().enumerate() {
                assert!(
                    r.state.is_final() || matches!(r.state, State::NeedsReview { .. }),
                    "seed {seed}: unit {u} left {:?}",
                    r.state
                );
            }
            for item in 0..items.len() {
                for (k, s) in flow_steps.iter().enumerate() {
                    let parent = match s.after {
                        0 => Some(&book.recs[item].state),
                        a => book.unit_at.get(&(item, a)).map(|&p| &book.recs[p].state),
                    };
                    let child = book
                        .unit_at
                        .get(&(item, k + 1))
                        .map(|&c| &book.recs[c].state);
                    match (parent, child) {
                        (Some(p), None) if p.is_final() => {
                            panic!(
                                "seed {seed}: item {item}'s `{}` was never created",
                                s.task.id
                            )
                        }
                        (Some(State::Succeeded { .. }), Some(State::Skipped { .. }))
                            if s.link == crate::manifest::Link::Success =>
                        {
                            panic!("seed {seed}: `{}` skipped on the branch taken", s.task.id)
                        }
                        (Some(State::Failed { .. }), Some(c))
                            if s.link == crate::manifest::Link::Success
                                && !matches!(c, State::Skipped { .. }) =>
                        {
                            panic!("seed {seed}: `{}` ran on the branch not taken", s.task.id)
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

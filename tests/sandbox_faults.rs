//! The sandbox's fault injection, observed from outside as a client and a webhook receiver
//! would see it: each knob at roughly its configured rate over a few hundred requests with a
//! fixed seed, the in-doubt case (paid, never answered, or answered 504) and its replay,
//! timeouts, latency, reproducibility by seed, and basic callbacks / expanded webhooks with
//! their signatures and their own faults. Provider time runs 1000× faster; every wait is a bounded poll.

mod support;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use payrun::sandbox::{Faults, SandboxConfig};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::paysend::{Client, sandbox, sign, to_account};

fn config(seed: u64, faults: Faults) -> SandboxConfig {
    SandboxConfig {
        seed,
        time_scale: 1000.0,
        faults,
        ..SandboxConfig::default()
    }
}

/// `count` of `n` is `rate` give or take `tolerance` (absolute, in rate units).
fn roughly(what: &str, count: usize, n: usize, rate: f64, tolerance: f64) {
    let observed = count as f64 / n as f64;
    eprintln!("{what}: {count} of {n} = {observed:.3} (configured {rate})");
    assert!(
        (observed - rate).abs() <= tolerance,
        "{what}: {count} of {n} = {observed:.3}, configured {rate} (±{tolerance})"
    );
}

// ---------------------------------------------------------------------------------------------
// Requests and their outcomes
// ---------------------------------------------------------------------------------------------

/// What a client saw for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// An HTTP answer with this status.
    Answered(u16),
    /// The connection closed without an answer (reqwest error, not a timeout).
    Dropped,
    /// The client's own timeout fired first.
    TimedOut,
}

#[derive(Debug, Clone)]
struct Sent {
    outcome: Outcome,
    body: String,
    started: Instant,
    elapsed: Duration,
}

impl Sent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn global_id(&self) -> String {
        self.json()["header"]["response"]["globalId"]
            .as_str()
            .expect("a globalId")
            .to_string()
    }
}

/// Posts `body`, signed, with `http` (whose timeout decides what a timeout is).
async fn send(c: &Client, http: &reqwest::Client, body: &Value) -> Sent {
    let bytes = serde_json::to_vec(body).unwrap();
    let sig = sign(&bytes, &c.key);
    let started = Instant::now();
    let r = http
        .post(format!("{}/processing", c.base))
        .header("content-type", "application/json")
        .header("X-OPP-Signature", sig)
        .body(bytes)
        .send()
        .await;
    let (outcome, body) = match r {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.text().await {
                Ok(t) => (Outcome::Answered(status), t),
                Err(e) if e.is_timeout() => (Outcome::TimedOut, String::new()),
                Err(_) => (Outcome::Dropped, String::new()),
            }
        }
        Err(e) if e.is_timeout() => (Outcome::TimedOut, String::new()),
        Err(_) => (Outcome::Dropped, String::new()),
    };
    Sent {
        outcome,
        body,
        started,
        elapsed: started.elapsed(),
    }
}

/// A one-payment request: request id `id`, invoiceId `inv-{id}`.
fn payment(c: &Client, id: &str) -> Value {
    c.envelope(id, json!([to_account(&format!("inv-{id}"), "10", "EUR")]))
}

/// Sends `bodies` (request id → body) with at most `concurrency` in flight.
async fn send_all(
    c: &Arc<Client>,
    http: &reqwest::Client,
    bodies: Vec<(String, Value)>,
    concurrency: usize,
) -> BTreeMap<String, Sent> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut set = tokio::task::JoinSet::new();
    for (id, body) in bodies {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let c = Arc::clone(c);
        let http = http.clone();
        set.spawn(async move {
            let s = send(&c, &http, &body).await;
            drop(permit);
            (id, s)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let (id, s) = r.expect("a sender task");
        out.insert(id, s);
    }
    out
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

fn payments(c: &Client, ids: &[String]) -> Vec<(String, Value)> {
    ids.iter().map(|id| (id.clone(), payment(c, id))).collect()
}

/// Ledger entries per request id.
async fn paid_by_request(c: &Client) -> HashMap<String, Vec<Value>> {
    let mut m: HashMap<String, Vec<Value>> = HashMap::new();
    for e in c.ledger().await {
        m.entry(e["request_id"].as_str().unwrap().to_string())
            .or_default()
            .push(e);
    }
    m
}

fn patient() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Request faults
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_5xx_rate_answers_500_and_pays_nothing() {
    let (_sb, c) = sandbox(config(
        41,
        Faults {
            error_5xx_rate: 0.2,
            ..Faults::default()
        },
    ))
    .await;
    let c = Arc::new(c);
    let n = 300;
    let sent = send_all(&c, &patient(), payments(&c, &ids("e5", n)), 8).await;
    let failed: Vec<&String> = sent
        .iter()
        .filter(|(_, s)| s.outcome == Outcome::Answered(500))
        .map(|(id, _)| id)
        .collect();
    let ok = sent
        .values()
        .filter(|s| s.outcome == Outcome::Answered(200))
        .count();
    assert_eq!(
        failed.len() + ok,
        n,
        "every request is answered 200 or 500: {sent:?}"
    );
    roughly("HTTP 500", failed.len(), n, 0.2, 0.07);

    let paid = paid_by_request(&c).await;
    for id in &failed {
        assert!(!paid.contains_key(*id), "{id} was answered 500 yet paid");
    }
    assert_eq!(paid.len(), ok, "every 200 paid");
    assert!(
        paid.values().all(|v| v.len() == 1),
        "each request paid once"
    );
    let counters = c.counters().await;
    assert_eq!(
        counters["requests"]["POST /paysend/processing 500"],
        failed.len() as u64
    );
    assert_eq!(counters["payments"], ok as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_5xx_after_commit_pays_answers_504_and_a_retry_with_the_same_id_replays() {
    let (sb, c) = sandbox(config(
        43,
        Faults {
            error_5xx_after_commit_rate: 0.2,
            ..Faults::default()
        },
    ))
    .await;
    let c = Arc::new(c);
    let n = 300;
    let sent = send_all(&c, &patient(), payments(&c, &ids("ec", n)), 8).await;
    let failed: Vec<String> = sent
        .iter()
        .filter(|(_, s)| s.outcome == Outcome::Answered(504))
        .map(|(id, _)| id.clone())
        .collect();
    let ok = sent
        .values()
        .filter(|s| s.outcome == Outcome::Answered(200))
        .count();
    assert_eq!(failed.len() + ok, n, "answered 200 or 504: {sent:?}");
    roughly("504 after commit", failed.len(), n, 0.2, 0.07);
    for id in &failed {
        assert_eq!(
            sent[id].json(),
            json!({"status": "Error", "code": 504, "comment": "upstream timed out after processing"}),
            "{id}: the documented error envelope"
        );
    }

    // Answered as failed, yet every one of them was paid, once.
    let paid = paid_by_request(&c).await;
    assert_eq!(paid.len(), n, "every request paid, whatever its answer");
    assert!(paid.values().all(|v| v.len() == 1));
    let counters = c.counters().await;
    assert_eq!(counters["error_5xx_after_commit"], failed.len() as u64);
    assert_eq!(
        counters["requests"]["POST /paysend/processing 504"],
        failed.len() as u64
    );

    // A retry with the same header.request.id replays the committed payment (until one is
    // answered 200: a retry draws its own faults).
    let http = patient();
    for id in &failed {
        let body = payment(&c, id);
        let mut tries = 0;
        let answer = loop {
            tries += 1;
            assert!(tries < 20, "{id}: retries never answered 200");
            let s = send(&c, &http, &body).await;
            if s.outcome == Outcome::Answered(200) {
                break s;
            }
        };
        let task = &answer.json()["payload"]["tasks"][0]["result"];
        assert_eq!(task["data"]["paymentId"], paid[id][0]["payment_id"], "{id}");
    }
    let paid_after = paid_by_request(&c).await;
    assert_eq!(
        paid_after.values().map(Vec::len).sum::<usize>(),
        n,
        "no retry paid again"
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_after_commit_pays_exactly_once_and_a_retry_with_the_same_id_replays() {
    let (sb, c) = sandbox(config(
        42,
        Faults {
            drop_after_commit_rate: 0.2,
            ..Faults::default()
        },
    ))
    .await;
    let c = Arc::new(c);
    let n = 300;
    let sent = send_all(&c, &patient(), payments(&c, &ids("dc", n)), 8).await;
    let dropped: Vec<String> = sent
        .iter()
        .filter(|(_, s)| s.outcome == Outcome::Dropped)
        .map(|(id, _)| id.clone())
        .collect();
    let ok = sent
        .values()
        .filter(|s| s.outcome == Outcome::Answered(200))
        .count();
    assert_eq!(dropped.len() + ok, n, "answered 200 or dropped: {sent:?}");
    roughly("dropped after commit", dropped.len(), n, 0.2, 0.07);

    // The in-doubt case: the client heard nothing, yet every one of them was paid, once.
    let paid = paid_by_request(&c).await;
    assert_eq!(paid.len(), n, "every request paid, answered or not");
    for id in &dropped {
        let entries = &paid[id];
        assert_eq!(entries.len(), 1, "{id}: {entries:?}");
        assert_eq!(entries[0]["key"], format!("inv-{id}"));
    }
    let counters = c.counters().await;
    assert_eq!(counters["dropped_after_commit"], dropped.len() as u64);
    assert_eq!(
        counters["requests"]["POST /paysend/processing dropped"],
        dropped.len() as u64
    );

    // Retrying with the same header.request.id replays the committed request: the same
    // payment comes back and nothing is paid again. A retry draws its own faults (attempt 1,
    // 2, …), so it may be dropped again; it is retried until answered.
    let http = patient();
    let mut retries = 0u64;
    let mut dropped_again = 0u64;
    for id in &dropped {
        let body = payment(&c, id);
        let answer = loop {
            retries += 1;
            assert!(
                retries < 10 * dropped.len() as u64 + 10,
                "retries never answered"
            );
            let s = send(&c, &http, &body).await;
            match s.outcome {
                Outcome::Answered(200) => break s,
                Outcome::Dropped => dropped_again += 1,
                other => panic!("{id}: {other:?} {}", s.body),
            }
        };
        let task = &answer.json()["payload"]["tasks"][0]["result"];
        assert_eq!(task["status"], "Success", "{id}: {task}");
        assert_eq!(
            task["data"]["paymentId"], paid[id][0]["payment_id"],
            "{id}: the replay shows the first payment"
        );
    }
    let paid_after = paid_by_request(&c).await;
    assert_eq!(
        paid_after.values().map(Vec::len).sum::<usize>(),
        n,
        "no retry paid again"
    );
    let counters = c.counters().await;
    assert_eq!(counters["replays"], retries);
    assert_eq!(
        counters["dropped_after_commit"],
        dropped.len() as u64 + dropped_again
    );
    assert_eq!(
        counters["duplicates_refused"], 0,
        "a replay never reaches the 3011 guard"
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_pays_nothing_and_a_later_retry_pays_once() {
    let faults = Faults {
        timeout_rate: 0.2,
        timeout_after: Some(Duration::from_millis(200)),
        ..Faults::default()
    };
    let (sb, c) = sandbox(config(43, faults.clone())).await;
    let c = Arc::new(c);
    let n = 100;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let sent = send_all(&c, &impatient, payments(&c, &ids("to", n)), 16).await;
    let timed_out: Vec<String> = sent
        .iter()
        .filter(|(_, s)| s.outcome == Outcome::TimedOut)
        .map(|(id, _)| id.clone())
        .collect();
    let ok = sent
        .values()
        .filter(|s| s.outcome == Outcome::Answered(200))
        .count();
    assert_eq!(timed_out.len() + ok, n, "answered or timed out: {sent:?}");
    roughly("timed out", timed_out.len(), n, 0.2, 0.1);
    let paid = paid_by_request(&c).await;
    for id in &timed_out {
        assert!(!paid.contains_key(id), "{id} timed out yet paid");
    }
    assert_eq!(paid.len(), ok);

    // A patient client sees the connection held for timeout_after, then closed unanswered.
    let held = send_all(&c, &patient(), payments(&c, &ids("held", 30)), 30).await;
    let closed: Vec<&Sent> = held
        .values()
        .filter(|s| s.outcome != Outcome::Answered(200))
        .collect();
    assert!(
        !closed.is_empty(),
        "some of 30 requests meet the 20% timeout fault"
    );
    for s in &closed {
        assert_eq!(s.outcome, Outcome::Dropped, "closed without an answer");
        assert!(
            s.elapsed >= Duration::from_millis(190),
            "held only {:?}",
            s.elapsed
        );
    }

    // Nothing was committed, so a retry of the same request id is a first commit, not a replay.
    sb.set_faults(Faults::default());
    let retried = send_all(&c, &patient(), payments(&c, &timed_out), 8).await;
    assert!(
        retried
            .values()
            .all(|s| s.outcome == Outcome::Answered(200))
    );
    let paid = paid_by_request(&c).await;
    for id in &timed_out {
        assert_eq!(paid[id].len(), 1, "{id} paid once after its retry");
    }
    assert_eq!(c.counters().await["replays"], 0);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_added_uniformly_between_min_and_max() {
    let (sb, c) = sandbox(config(44, Faults::default())).await;
    let http = patient();
    let mut base = Vec::new();
    for id in ids("lat-base", 10) {
        base.push(send(&c, &http, &payment(&c, &id)).await.elapsed);
    }
    base.sort();
    let base = base[base.len() / 2];

    let (lo, hi) = (Duration::from_millis(30), Duration::from_millis(80));
    sb.set_faults(Faults {
        latency_min: Some(lo),
        latency_max: Some(hi),
        ..Faults::default()
    });
    let mut seen = Vec::new();
    for id in ids("lat", 40) {
        let s = send(&c, &http, &payment(&c, &id)).await;
        assert_eq!(s.outcome, Outcome::Answered(200));
        seen.push(s.elapsed);
    }
    let min = *seen.iter().min().unwrap();
    let max = *seen.iter().max().unwrap();
    let mean = seen.iter().sum::<Duration>() / seen.len() as u32;
    assert!(min >= lo, "fastest {min:?} below latency_min {lo:?}");
    assert!(
        max <= hi + base + Duration::from_millis(100),
        "slowest {max:?} far above latency_max {hi:?}"
    );
    let expected = (lo + hi) / 2 + base;
    assert!(
        mean >= expected.saturating_sub(Duration::from_millis(15))
            && mean <= expected + Duration::from_millis(25),
        "mean {mean:?}, expected about {expected:?} (baseline {base:?})"
    );
    assert!(
        max - min >= Duration::from_millis(25),
        "latencies spread over the range: {min:?}..{max:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_max_alone_adds_latency_up_to_it() {
    let (_sb, c) = sandbox(config(
        45,
        Faults {
            latency_max: Some(Duration::from_millis(80)),
            ..Faults::default()
        },
    ))
    .await;
    let http = patient();
    let mut seen = Vec::new();
    for id in ids("latmax", 30) {
        seen.push(send(&c, &http, &payment(&c, &id)).await.elapsed);
    }
    let mean = seen.iter().sum::<Duration>() / seen.len() as u32;
    assert!(
        mean >= Duration::from_millis(20),
        "mean {mean:?}: no latency was added (expected uniform 0..80 ms)"
    );
}

/// Every request id sent twice (attempt 0, then attempt 1), under 5xx, drop and timeout faults.
async fn outcomes(seed: u64) -> BTreeMap<String, Vec<Outcome>> {
    let faults = Faults {
        error_5xx_rate: 0.15,
        drop_after_commit_rate: 0.15,
        timeout_rate: 0.1,
        timeout_after: Some(Duration::from_millis(600)),
        ..Faults::default()
    };
    let (sb, c) = sandbox(config(seed, faults)).await;
    let c = Arc::new(c);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let list = ids("det", 150);
    let mut out: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    for _attempt in 0..2 {
        for (id, s) in send_all(&c, &http, payments(&c, &list), 16).await {
            out.entry(id).or_default().push(s.outcome);
        }
    }
    sb.stop().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_meets_the_same_faults_and_another_seed_other_ones() {
    let a = outcomes(7).await;
    let b = outcomes(7).await;
    let c = outcomes(8).await;
    let kinds: std::collections::BTreeSet<String> =
        a.values().flatten().map(|o| format!("{o:?}")).collect();
    assert_eq!(kinds.len(), 4, "every kind of outcome occurs: {kinds:?}");
    let diff: Vec<_> = a.iter().filter(|(id, o)| b[*id] != **o).collect();
    assert!(
        diff.is_empty(),
        "seed 7 twice, different outcomes: {diff:?}"
    );
    assert_ne!(a, c, "seed 8 meets other faults than seed 7");
}

// ---------------------------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------------------------

/// One request received by the webhook receiver.
#[derive(Debug, Clone)]
struct Hit {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Hit {
    fn signature(&self) -> &str {
        self.headers
            .get("x-opp-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("webhook body not JSON ({e}): {:?}", self.body))
    }

    /// The globalId of a basic callback (query of a GET, form body of a POST).
    fn global_id(&self) -> String {
        let text = if self.method == Method::GET {
            self.query.clone().unwrap_or_default()
        } else {
            String::from_utf8_lossy(&self.body).into_owned()
        };
        text.strip_prefix("globalId=")
            .unwrap_or_else(|| panic!("no globalId in {text:?}"))
            .to_string()
    }
}

type Hits = Arc<Mutex<Vec<Hit>>>;

/// A small HTTP server on a free loopback port that records whatever it is sent.
struct Receiver {
    url: String,
    hits: Hits,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(hits): State<Hits>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = Instant::now();
    let hit = Hit {
        method,
        path: uri.path().to_string(),
        query: uri.query().map(String::from),
        headers,
        body,
        at,
    };
    hits.lock().unwrap().push(hit);
    StatusCode::OK
}

impl Receiver {
    async fn start() -> Receiver {
        let hits: Hits = Arc::default();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(Arc::clone(&hits));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, hits, task }
    }

    fn snapshot(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Polls until `done` holds for what arrived, or panics at the deadline.
    async fn wait_for(
        &self,
        deadline: Duration,
        what: &str,
        done: impl Fn(&[Hit]) -> bool,
    ) -> Vec<Hit> {
        let end = Instant::now() + deadline;
        loop {
            let hits = self.snapshot();
            if done(&hits) {
                return hits;
            }
            assert!(
                Instant::now() < end,
                "{what}: not there after {deadline:?}; {} hits: {hits:#?}",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until nothing more can be due: past `not_before` and quiet for `quiet`, bounded
    /// by `deadline`.
    async fn settle(&self, not_before: Instant, quiet: Duration, deadline: Duration) -> Vec<Hit> {
        let end = Instant::now() + deadline;
        loop {
            let hits = self.snapshot();
            let last = hits.iter().map(|h| h.at).max();
            let now = Instant::now();
            if now >= not_before && last.is_none_or(|l| now.duration_since(l) >= quiet) {
                return hits;
            }
            assert!(now < end, "deliveries never settled within {deadline:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn md5_hex(data: &[u8], key: &str) -> String {
    use md5::{Digest, Md5};
    Md5::new()
        .chain_update(data)
        .chain_update(key.as_bytes())
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// X-OPP-Signature = lowercase hex md5(signed data + outbound key).
fn signature_ok(hit: &Hit, signed: &[u8], key: &str) -> bool {
    constant_time_eq(md5_hex(signed, key).as_bytes(), hit.signature().as_bytes())
}

/// What a basic callback's signature covers: the globalId of a GET, the raw body of a POST.
fn callback_signature_ok(hit: &Hit, key: &str) -> bool {
    if hit.method == Method::GET {
        signature_ok(hit, hit.global_id().as_bytes(), key)
    } else {
        signature_ok(hit, &hit.body, key)
    }
}

const ACCEPT: Duration = Duration::from_millis(50);
const LEVEL: Duration = Duration::from_millis(100);

/// Real-time accept 50 ms, level 100 ms (provider 50 s and 100 s at 1000×), expanded webhooks
/// to the receiver.
fn hook_config(seed: u64, faults: Faults, receiver: &Receiver) -> SandboxConfig {
    let mut c = config(seed, faults);
    c.paysend.accept_time = ACCEPT * 1000;
    c.paysend.level_time = LEVEL * 1000;
    c.paysend.webhook_url = Some(format!("{}/webhook", receiver.url));
    c
}

fn with_results(mut body: Value, results: Value) -> Value {
    body["header"]["service"]["result"] = results;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_and_webhooks_arrive_once_signed_after_the_work_is_done() {
    let r = Receiver::start().await;
    let cfg = hook_config(51, Faults::default(), &r);
    let key = cfg.paysend.outbound_key.clone();
    let (_sb, c) = sandbox(cfg).await;
    let http = patient();
    let results = json!([
        {"type": "web", "uri": format!("{}/cb-post", r.url), "method": "POST"},
        {"type": "web", "uri": format!("{}/cb-get", r.url), "method": "get"}
    ]);
    let mut requests = Vec::new();
    for id in ids("cb", 4) {
        let tasks: Vec<Value> = (0..3)
            .map(|k| to_account(&format!("inv-{id}-{k}"), "10", "EUR"))
            .collect();
        let s = send(
            &c,
            &http,
            &with_results(c.envelope(&id, json!(tasks)), results.clone()),
        )
        .await;
        assert_eq!(s.outcome, Outcome::Answered(200), "{}", s.body);
        requests.push((id, s));
    }
    let count = |hits: &[Hit], path: &str| hits.iter().filter(|h| h.path == path).count();
    r.wait_for(
        Duration::from_secs(5),
        "4 POST callbacks, 4 GET callbacks, 12 webhooks",
        |h| count(h, "/cb-post") >= 4 && count(h, "/cb-get") >= 4 && count(h, "/webhook") >= 12,
    )
    .await;
    let hits = r
        .settle(
            Instant::now(),
            Duration::from_millis(200),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(
        (
            count(&hits, "/cb-post"),
            count(&hits, "/cb-get"),
            count(&hits, "/webhook")
        ),
        (4, 4, 12),
        "no extra deliveries"
    );

    // Basic callbacks: one per result URI, after the request finished, signed with the
    // outbound key over the form body (POST) or the globalId (GET).
    let finish = ACCEPT + LEVEL;
    for (id, s) in &requests {
        let gid = s.global_id();
        for (path, method) in [("/cb-post", Method::POST), ("/cb-get", Method::GET)] {
            let mine: Vec<&Hit> = hits
                .iter()
                .filter(|h| h.path == path && h.global_id() == gid)
                .collect();
            assert_eq!(mine.len(), 1, "{id}: {path} once");
            let h = mine[0];
            assert_eq!(h.method, method);
            if method == Method::POST {
                assert_eq!(h.body.as_ref(), format!("globalId={gid}").as_bytes());
                assert_eq!(
                    h.headers["content-type"],
                    "application/x-www-form-urlencoded"
                );
            } else {
                assert!(h.body.is_empty());
            }
            assert!(
                h.at >= s.started + finish,
                "{id}: {path} {:?} after sending, before the request finished ({finish:?})",
                h.at - s.started
            );
            assert!(
                callback_signature_ok(h, &key),
                "{id}: {path} signature {:?}",
                h.signature()
            );
        }
        let status = c.status(&gid).await.json();
        assert_eq!(status["result"]["status"], "Finished");
    }

    // Expanded webhooks: one TransactionStatusUpdate per payment, signed md5(raw body + key).
    let ledger: HashMap<String, Value> = c
        .ledger()
        .await
        .into_iter()
        .map(|e| (e["key"].as_str().unwrap().to_string(), e))
        .collect();
    assert_eq!(ledger.len(), 12);
    let mut seen = HashMap::new();
    for h in hits.iter().filter(|h| h.path == "/webhook") {
        assert_eq!(h.method, Method::POST);
        assert_eq!(h.headers["content-type"], "application/json");
        let sig = h.signature();
        assert!(
            sig.len() == 32 && sig.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "lowercase hex MD5: {sig:?}"
        );
        assert!(
            signature_ok(h, &h.body, &key),
            "bad signature {sig} on {:?}",
            h.body
        );
        let w = h.json();
        assert_eq!(w["webhookType"], "TransactionStatusUpdate");
        let invoice = w["invoiceId"].as_str().unwrap().to_string();
        let entry = ledger
            .get(&invoice)
            .unwrap_or_else(|| panic!("webhook for an unknown invoice: {w}"));
        assert_eq!(w["transactionId"], entry["payment_id"], "{w}");
        assert_eq!(w["status"], "Completed");
        assert_eq!(w["errorCode"], "0");
        let (_, s) = requests
            .iter()
            .find(|(id, _)| invoice.starts_with(&format!("inv-{id}-")))
            .unwrap();
        assert!(
            h.at >= s.started + ACCEPT + LEVEL,
            "{invoice}: webhook before the payment completed"
        );
        *seen.entry(invoice).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1) && seen.len() == 12,
        "{seen:?}"
    );
    assert_eq!(c.counters().await["webhooks_sent"], 20);
}

/// What happened to the notifications of `n` one-payment requests, each with one POST callback.
struct Deliveries {
    n: usize,
    /// invoiceId → expanded webhooks received, in arrival order.
    webhooks: HashMap<String, Vec<Hit>>,
    /// request id → basic callbacks received.
    callbacks: HashMap<String, Vec<Hit>>,
    /// request id → (sent, answered): the payment was committed in between.
    window: HashMap<String, (Instant, Instant)>,
    key: String,
    webhooks_sent: u64,
}

impl Deliveries {
    /// Share of notifications whose deliveries satisfy `f` (webhooks, callbacks).
    fn count(&self, f: impl Fn(&[Hit]) -> bool) -> (usize, usize) {
        let per_request = |m: &HashMap<String, Vec<Hit>>, prefix: &str| {
            self.window
                .keys()
                .filter(|id| {
                    f(m.get(&format!("{prefix}{id}"))
                        .map(Vec::as_slice)
                        .unwrap_or(&[]))
                })
                .count()
        };
        (
            per_request(&self.webhooks, "inv-"),
            per_request(&self.callbacks, ""),
        )
    }

    /// Deliveries whose first arrival is not when it was due (finish ± `slack`), and by how much
    /// the late ones were late.
    fn displaced(&self, slack: Duration) -> (usize, usize, Vec<Duration>) {
        let due = ACCEPT + LEVEL;
        let mut late = Vec::new();
        let mut off = |hits: Option<&Vec<Hit>>, (sent, answered): (Instant, Instant)| -> bool {
            let Some(first) = hits.and_then(|h| h.first()) else {
                return false;
            };
            let (lo, hi) = (sent + due, answered + due + slack);
            if first.at > hi {
                late.push(first.at - (answered + due));
            }
            first.at + slack < lo || first.at > hi
        };
        let mut w = 0;
        let mut cb = 0;
        for (id, window) in &self.window {
            w += off(self.webhooks.get(&format!("inv-{id}")), *window) as usize;
            cb += off(self.callbacks.get(id), *window) as usize;
        }
        (w, cb, late)
    }

    fn total(&self) -> usize {
        self.webhooks
            .values()
            .chain(self.callbacks.values())
            .map(Vec::len)
            .sum()
    }
}

/// `n` one-payment requests with a POST callback each under `faults`; waits until every
/// delivery that can still come (`longest` after due) has come.
async fn deliveries(seed: u64, faults: Faults, n: usize, longest: Duration) -> Deliveries {
    let r = Receiver::start().await;
    let cfg = hook_config(seed, faults, &r);
    let key = cfg.paysend.outbound_key.clone();
    let (_sb, c) = sandbox(cfg).await;
    let c = Arc::new(c);
    let results = json!([{"type": "web", "uri": format!("{}/cb", r.url), "method": "POST"}]);
    let bodies: Vec<(String, Value)> = ids("wh", n)
        .into_iter()
        .map(|id| {
            let b = with_results(payment(&c, &id), results.clone());
            (id, b)
        })
        .collect();
    // One at a time: which notification meets which fault depends on the order of arrival
    // (see the ignored test at the end), so a sequential run keeps the observed rates fixed.
    let sent = send_all(&c, &patient(), bodies, 1).await;
    let mut window = HashMap::new();
    let mut gids = HashMap::new();
    let mut last = Instant::now();
    for (id, s) in &sent {
        assert_eq!(s.outcome, Outcome::Answered(200), "{id}: {}", s.body);
        let answered = s.started + s.elapsed;
        last = last.max(answered);
        window.insert(id.clone(), (s.started, answered));
        gids.insert(s.global_id(), id.clone());
    }
    let hits = r
        .settle(
            last + ACCEPT + LEVEL + longest,
            Duration::from_millis(250),
            Duration::from_secs(8),
        )
        .await;
    let mut webhooks: HashMap<String, Vec<Hit>> = HashMap::new();
    let mut callbacks: HashMap<String, Vec<Hit>> = HashMap::new();
    for h in hits {
        match h.path.as_str() {
            "/webhook" => webhooks
                .entry(h.json()["invoiceId"].as_str().unwrap().to_string())
                .or_default()
                .push(h),
            "/cb" => {
                let id = gids
                    .get(&h.global_id())
                    .unwrap_or_else(|| panic!("callback for an unknown globalId: {h:?}"))
                    .clone();
                callbacks.entry(id).or_default().push(h)
            }
            other => panic!("unexpected path {other}"),
        }
    }
    let webhooks_sent = c.counters().await["webhooks_sent"].as_u64().unwrap();
    Deliveries {
        n,
        webhooks,
        callbacks,
        window,
        key,
        webhooks_sent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_drop_rate_loses_notifications() {
    let d = deliveries(
        61,
        Faults {
            webhook_drop_rate: 0.2,
            ..Faults::default()
        },
        200,
        Duration::ZERO,
    )
    .await;
    let (w, cb) = d.count(|h| h.is_empty());
    roughly("webhooks dropped", w, d.n, 0.2, 0.08);
    roughly("callbacks dropped", cb, d.n, 0.2, 0.08);
    assert_eq!(d.count(|h| h.len() > 1), (0, 0), "nothing duplicated");
    assert_eq!(
        d.webhooks_sent as usize,
        d.total(),
        "the sandbox counts what it sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_duplicate_rate_sends_twice() {
    let d = deliveries(
        62,
        Faults {
            webhook_duplicate_rate: 0.2,
            ..Faults::default()
        },
        200,
        LEVEL,
    )
    .await;
    let (w, cb) = d.count(|h| h.len() == 2);
    roughly("webhooks duplicated", w, d.n, 0.2, 0.08);
    roughly("callbacks duplicated", cb, d.n, 0.2, 0.08);
    assert_eq!(
        d.count(|h| h.is_empty() || h.len() > 2),
        (0, 0),
        "none lost, none sent thrice"
    );
    for h in d
        .webhooks
        .values()
        .chain(d.callbacks.values())
        .filter(|h| h.len() == 2)
    {
        assert_eq!(h[0].body, h[1].body, "a duplicate is the same notification");
        assert_eq!(h[0].signature(), h[1].signature());
    }
    assert_eq!(d.webhooks_sent as usize, d.total());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_bad_signature_rate_signs_wrongly() {
    let d = deliveries(
        63,
        Faults {
            webhook_bad_signature_rate: 0.2,
            ..Faults::default()
        },
        200,
        Duration::ZERO,
    )
    .await;
    let key = d.key.clone();
    let (w, _) = d.count(|h| h.len() == 1 && !signature_ok(&h[0], &h[0].body, &key));
    let (_, cb) = d.count(|h| h.len() == 1 && !callback_signature_ok(&h[0], &key));
    roughly("webhooks badly signed", w, d.n, 0.2, 0.08);
    roughly("callbacks badly signed", cb, d.n, 0.2, 0.08);
    assert_eq!(d.count(|h| h.len() != 1), (0, 0), "each delivered once");
    // The body is intact: only the signature is wrong, so a verifying receiver rejects it.
    for (inv, h) in &d.webhooks {
        assert_eq!(h[0].json()["invoiceId"], inv.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_delay_rate_sends_late() {
    // A delayed notification comes 10 levels (1 s real here) after it was due.
    let d = deliveries(
        64,
        Faults {
            webhook_delay_rate: 0.2,
            ..Faults::default()
        },
        200,
        LEVEL * 10,
    )
    .await;
    let (w, cb, late) = d.displaced(Duration::from_millis(300));
    roughly("webhooks delayed", w, d.n, 0.2, 0.08);
    roughly("callbacks delayed", cb, d.n, 0.2, 0.08);
    for l in &late {
        assert!(
            *l >= LEVEL * 10 - Duration::from_millis(100)
                && *l <= LEVEL * 10 + Duration::from_millis(300),
            "late by {l:?}, expected about {:?}",
            LEVEL * 10
        );
    }
    assert_eq!(d.count(|h| h.len() != 1), (0, 0), "each delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_reorder_rate_shifts_deliveries_against_their_neighbours() {
    // A reordered notification is sent up to 3 levels (300 ms here) early or late, so it
    // overtakes or trails others; displacements under the slack go unseen (~13% of them).
    let d = deliveries(
        65,
        Faults {
            webhook_reorder_rate: 0.25,
            ..Faults::default()
        },
        200,
        LEVEL * 3,
    )
    .await;
    let (w, cb, _) = d.displaced(Duration::from_millis(40));
    roughly("webhooks reordered", w, d.n, 0.25 * 0.87, 0.09);
    roughly("callbacks reordered", cb, d.n, 0.25 * 0.87, 0.09);
    // Arrival order differs from commit order.
    let mut by_commit: Vec<(&String, Instant)> =
        d.window.iter().map(|(id, (s, _))| (id, *s)).collect();
    by_commit.sort_by_key(|(_, s)| *s);
    let arrivals: Vec<Instant> = by_commit
        .iter()
        .filter_map(|(id, _)| d.webhooks.get(&format!("inv-{id}")).map(|h| h[0].at))
        .collect();
    let inversions = arrivals.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(
        inversions >= 10,
        "only {inversions} neighbours arrived out of order"
    );
    assert_eq!(d.count(|h| h.len() != 1), (0, 0), "each delivered once");
}

/// The invoiceIds whose expanded webhook never came, with the requests sent one by one in
/// `order`.
async fn dropped_webhooks(seed: u64, order: &[String]) -> Vec<String> {
    let r = Receiver::start().await;
    let (_sb, c) = sandbox(hook_config(
        seed,
        Faults {
            webhook_drop_rate: 0.3,
            ..Faults::default()
        },
        &r,
    ))
    .await;
    let http = patient();
    for id in order {
        assert_eq!(
            send(&c, &http, &payment(&c, id)).await.outcome,
            Outcome::Answered(200)
        );
    }
    let hits = r
        .settle(
            Instant::now() + ACCEPT + LEVEL,
            Duration::from_millis(200),
            Duration::from_secs(5),
        )
        .await;
    let got: std::collections::HashSet<String> = hits
        .iter()
        .map(|h| h.json()["invoiceId"].as_str().unwrap().to_string())
        .collect();
    let mut dropped: Vec<String> = order
        .iter()
        .map(|id| format!("inv-{id}"))
        .filter(|i| !got.contains(i))
        .collect();
    dropped.sort();
    dropped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_faults_do_not_depend_on_the_order_requests_arrive_in() {
    // faults.rs: "the same run of a client meets the same faults whatever the timing of
    // concurrent requests". The same 60 payments, in order and in reverse.
    let forward = ids("ord", 60);
    let reverse: Vec<String> = forward.iter().rev().cloned().collect();
    let a = dropped_webhooks(71, &forward).await;
    assert!(!a.is_empty());
    assert_eq!(
        a,
        dropped_webhooks(71, &forward).await,
        "control: the same order twice meets the same faults"
    );
    let b = dropped_webhooks(71, &reverse).await;
    assert_eq!(
        a, b,
        "the same payments, the same seed: the same webhooks dropped"
    );
}

//! Paysend Enterprise, emulated from `paysend-enterprise-api.txt` (digest with line references in
//! docs/paysend-wire.md).
//!
//! A request is checked (signature, envelope, partner), then its task trees are *committed* at
//! once — payments recorded, balances debited, outcomes fixed — and its statuses unfold in
//! provider time: Accepted, then InProgress while the levels of the trees run (`level_time`
//! each), then Finished. Choices where the document is silent are marked "Choice:".
//!
//! What it keeps is small, so that a rehearsal of a million payouts fits in memory: each
//! request's body (which every status answer and replay echoes) sealed in a temporary file
//! (`bodies`), task results and payments in fixed-size fields (`kept`).
//!
//! The shared request faults apply to `POST /processing`, whatever its tasks: before the
//! commit (latency, 500, timeout) nothing is processed; after it, the answer is dropped
//! (`drop_after_commit_rate`) or replaced by a 504 in the documented error envelope
//! (`error_5xx_after_commit_rate`), and a retry with the same request id replays it.

pub mod bodies;
pub mod codes;
pub mod functions;
pub mod kept;
pub mod tree;

pub use super::sharded::{Sharded, ShardedIds};

use super::State;
use super::clock::Clock;
use super::compact;
use super::config::PaysendConfig;
use super::faults;
use super::server::DropConnection;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The documented answer when the provider is over its rate (L185).
pub const BUSY: &str = "Sorry. Can't accept your request now.";

/// A committed request, enough to answer status calls and replays.
pub struct Stored {
    pub global_id: String,
    pub response_id: String,
    pub accepted_at: Duration,
    /// The request as received (its header and payload are echoed in every answer), kept in
    /// `Paysend::bodies`.
    pub body: bodies::Body,
    pub tree: kept::Trees,
    pub levels: usize,
}

/// A payment Paysend knows about (task.statusGet finds it by invoiceId or paymentId).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Payment {
    pub payment_id: String,
    pub invoice_id: String,
    pub accepted_at: Duration,
    pub done_at: Duration,
    /// `None`: completed; `Some(code)`: failed with that code.
    pub error: Option<u32>,
    /// Held for manual review until then (provider time), then completed.
    pub held_until: Option<Duration>,
    pub data: Value,
}

pub struct Paysend {
    pub config: PaysendConfig,
    pub requests: Sharded<Arc<Stored>>,
    pub by_global: Sharded<String>,
    /// invoiceId → successful payment (3011 guard) or the last failed one.
    pub invoices: ShardedIds<kept::Paid>,
    /// paymentId → invoiceId, for invoiceIds that are UUIDs (as their bytes; see
    /// `index_payment`) …
    pub payments: ShardedIds<[u8; 16]>,
    /// … and for any other.
    payments_text: ShardedIds<Box<str>>,
    /// The bodies of `requests`.
    pub bodies: bodies::Bodies,
    /// Minor units per currency.
    pub balances: Sharded<i128>,
    /// How many times each request id was seen (fault decisions).
    attempts: Sharded<u64>,
    limiter: Option<governor::DefaultDirectRateLimiter>,
    sequence: AtomicU64,
    /// How many sandboxes ran on the state file before this one: part of every new id, so
    /// that ids never repeat across restarts (0 without a state file).
    epoch: AtomicU64,
}

impl Paysend {
    pub fn new(config: &PaysendConfig, _clock: &Clock) -> Paysend {
        let limiter = config.rate_limit.map(|r| {
            let rps = std::num::NonZeroU32::new(r.requests_per_second)
                .unwrap_or(std::num::NonZeroU32::MIN);
            let burst = std::num::NonZeroU32::new(r.burst).unwrap_or(std::num::NonZeroU32::MIN);
            governor::RateLimiter::direct(governor::Quota::per_second(rps).allow_burst(burst))
        });
        let p = Paysend {
            config: config.clone(),
            requests: Sharded::new(),
            by_global: Sharded::new(),
            invoices: ShardedIds::new(),
            payments: ShardedIds::new(),
            payments_text: ShardedIds::new(),
            bodies: bodies::Bodies::new(),
            balances: Sharded::new(),
            attempts: Sharded::new(),
            limiter,
            sequence: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
        };
        p.fund();
        p
    }

    fn fund(&self) {
        for (c, amount) in &self.config.balances {
            let exp = crate::money::Currency::from_alpha(c)
                .and_then(|c| c.exponent())
                .unwrap_or(2);
            if let Ok(a) = crate::money::parse_amount(amount, exp) {
                self.balances.shard(c).insert(c.clone(), a.minor);
            }
        }
    }

    pub fn reset(&self) {
        self.forget();
        self.fund();
    }

    /// Everything the emulation remembers, gone (a reset; or a journaled one, replayed).
    fn forget(&self) {
        self.requests.clear();
        self.by_global.clear();
        self.invoices.clear();
        self.payments.clear();
        self.payments_text.clear();
        self.balances.clear();
        self.attempts.clear();
    }

    /// A fresh provider id, unique within the sandbox's life (and its state file's), shaped
    /// as a UUID.
    pub fn new_id(&self, salt: &str) -> String {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        match self.epoch.load(Ordering::Relaxed) {
            0 => crate::keys::task_key(&format!("paysend-sandbox/{n}"), salt),
            e => crate::keys::task_key(&format!("paysend-sandbox/{e}/{n}"), salt),
        }
    }

    /// Records which invoiceId a paymentId paid (task.statusGet by identifier).
    pub fn index_payment(&self, payment_id: &str, invoice_id: &str) {
        match compact::uuid(invoice_id) {
            Some(b) => self.payments.shard(payment_id).insert(payment_id, b),
            None => self
                .payments_text
                .shard(payment_id)
                .insert(payment_id, invoice_id.into()),
        }
    }

    /// The invoiceId a paymentId paid.
    pub fn invoice_of(&self, payment_id: &str) -> Option<String> {
        let uuid = self.payments.shard(payment_id).get(payment_id).copied();
        uuid.map(|b| compact::uuid_text(&b)).or_else(|| {
            let text = self.payments_text.shard(payment_id);
            text.get(payment_id).map(|s| s.to_string())
        })
    }

    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    /// Replays a journaled record of Paysend's (others are ignored). Returns the currency of a
    /// balance it set.
    pub fn apply(&self, r: &super::journal::Record) -> Option<String> {
        use super::journal::Record as R;
        match r {
            R::PaysendRequest {
                id,
                global_id,
                response_id,
                accepted_at,
                request,
                tree,
                levels,
            } => {
                self.by_global
                    .shard(global_id)
                    .insert(global_id.clone(), id.clone());
                self.requests.shard(id).insert(
                    id.clone(),
                    Arc::new(Stored {
                        global_id: global_id.clone(),
                        response_id: response_id.clone(),
                        accepted_at: *accepted_at,
                        body: self.bodies.keep(&tree::compact(request)),
                        tree: kept::Trees::new(tree),
                        levels: *levels,
                    }),
                );
            }
            R::PaysendPayment { payment } => {
                self.index_payment(&payment.payment_id, &payment.invoice_id);
                self.invoices
                    .shard(&payment.invoice_id)
                    .insert(&payment.invoice_id, kept::Paid::new(payment));
            }
            R::PaysendBalance { currency, minor } => {
                self.balances
                    .shard(currency)
                    .insert(currency.clone(), *minor);
                return Some(currency.clone());
            }
            R::Attempt {
                provider,
                identity,
                n,
            } if provider == "paysend" => {
                self.attempts.shard(identity).insert(identity.clone(), *n);
            }
            R::Reset => self.forget(),
            _ => {}
        }
        None
    }

    /// Journals the balances as they are (after a start on a new state file, or a reset).
    pub fn journal_balances(&self, ledger: &super::ledger::Ledger, only: &[String]) {
        for c in only {
            if let Some(minor) = self.balances.shard(c).get(c).copied() {
                ledger.journal_record(|| super::journal::Record::PaysendBalance {
                    currency: c.clone(),
                    minor,
                });
            }
        }
    }
}

/// A request as it may be journaled: payloads without card or account numbers (the fields
/// the schemas call sensitive, and any secret key anywhere), results likewise. A replay after a
/// restart echoes these masked values; the outcomes are the same.
fn masked_for_journal(
    request: &tree::Json,
    tree: &[tree::Executed],
) -> (Value, Vec<tree::Executed>) {
    let mut request = tree::parse(request);
    if let Some(tasks) = request
        .pointer_mut("/payload/tasks")
        .and_then(Value::as_array_mut)
    {
        fn each(t: &mut Value) {
            let ty = t
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let sensitive: Vec<&str> = functions::sensitive_paths(&ty);
            if let Some(p) = t.get_mut("payload") {
                super::journal::mask_value(p, &sensitive);
            }
            for b in ["success", "fail", "always"] {
                if let Some(kids) = t.get_mut(b).and_then(Value::as_array_mut) {
                    kids.iter_mut().for_each(each);
                }
            }
        }
        tasks.iter_mut().for_each(each);
    }
    fn results(e: &mut tree::Executed) {
        if let Some(o) = &mut e.outcome {
            let mut v = tree::parse(&o.result);
            super::journal::mask_value(&mut v, &[]);
            o.result = tree::compact(&v);
        }
        e.success
            .iter_mut()
            .chain(e.fail.iter_mut())
            .chain(e.always.iter_mut())
            .for_each(results);
    }
    let mut tree = tree.to_vec();
    tree.iter_mut().for_each(results);
    (request, tree)
}

pub fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/processing", post(processing))
        .route("/processing/status/{global_id}", get(status))
}

fn error_body(status: StatusCode, code: u32, comment: &str) -> Response {
    (
        status,
        axum::Json(json!({"status": "Error", "code": code, "comment": comment})),
    )
        .into_response()
}

fn busy() -> Response {
    (StatusCode::NOT_FOUND, BUSY).into_response()
}

/// Whether this request is over the configured rate (counted as refused when it is).
fn over_rate(state: &State) -> bool {
    let over = state
        .paysend
        .limiter
        .as_ref()
        .is_some_and(|l| l.check().is_err());
    if over {
        state
            .ledger
            .bump(crate::sandbox::ledger::Counter::RateLimited);
    }
    over
}

/// X-OPP-Signature: hex SHA-256 or SHA-512 of `data` + inbound key (the length says which),
/// compared in constant time.
pub fn signature_ok(headers: &HeaderMap, data: &[u8], key: &str) -> bool {
    use sha2::{Digest, Sha256, Sha512};
    use subtle::ConstantTimeEq;
    let Some(given) = headers.get("x-opp-signature").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let given = given.trim().to_ascii_lowercase();
    let expected = match given.len() {
        64 => crate::keys::hex_lower(
            &Sha256::new()
                .chain_update(data)
                .chain_update(key.as_bytes())
                .finalize(),
        ),
        128 => crate::keys::hex_lower(
            &Sha512::new()
                .chain_update(data)
                .chain_update(key.as_bytes())
                .finalize(),
        ),
        _ => return false,
    };
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

async fn processing(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ps = &state.paysend;
    if over_rate(&state) {
        return busy();
    }
    if !signature_ok(&headers, &body, &ps.config.inbound_key) {
        return error_body(StatusCode::UNAUTHORIZED, 401, "Invalid X-OPP-Signature.");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error_body(
            StatusCode::BAD_REQUEST,
            400,
            "The request body is not JSON.",
        );
    };
    let request_id = request
        .pointer("/header/request/id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let tasks_empty = request
        .pointer("/payload/tasks")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    // L181: no header.request and empty payload.tasks is a 400. Choice: either alone is too,
    // since neither can be processed.
    if request_id.is_empty() || tasks_empty {
        return error_body(
            StatusCode::BAD_REQUEST,
            400,
            "header.request.id and payload.tasks are required.",
        );
    }
    if request
        .pointer("/payload/partner/identifier")
        .and_then(Value::as_str)
        != Some(ps.config.partner_id.as_str())
    {
        return error_body(StatusCode::UNAUTHORIZED, 401, "Unknown partner.");
    }

    // Faults are drawn per request id and attempt, so a rerun meets the same ones.
    let attempt = {
        let mut a = ps.attempts.shard(&request_id);
        let n = a.entry(request_id.clone()).or_insert(0);
        *n += 1;
        state
            .ledger
            .journal_record(|| super::journal::Record::Attempt {
                provider: "paysend".into(),
                identity: request_id.clone(),
                n: *n,
            });
        *n - 1
    };
    let f = state.faults();
    let mut rng = faults::rng(state.seed, &request_id, attempt, "paysend.processing");
    // Either bound alone is enough: a missing minimum is 0, a missing maximum the minimum.
    if f.latency_min.is_some() || f.latency_max.is_some() {
        use rand::Rng;
        let lo = f.latency_min.unwrap_or_default().as_millis() as u64;
        let hi = f.latency_max.map_or(lo, |h| h.as_millis() as u64).max(lo);
        tokio::time::sleep(Duration::from_millis(rng.random_range(lo..=hi))).await;
    }
    if faults::happens(&mut rng, f.error_5xx_rate) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
    }
    if faults::happens(&mut rng, f.timeout_rate) {
        tokio::time::sleep(f.timeout_after.unwrap_or(Duration::from_secs(30))).await;
        let mut r = StatusCode::GATEWAY_TIMEOUT.into_response();
        r.extensions_mut().insert(DropConnection);
        return r;
    }

    let sync = request
        .pointer("/header/service/sync")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let wait_for = request
        .pointer("/header/service/waitTime")
        .and_then(Value::as_str)
        .and_then(|w| w.strip_prefix("WaitFor"))
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or(2000);
    let Some((stored, echo)) = commit(&state, &request_id, request) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
    };
    // L73: with `sync`, a request that finishes within `waitTime` is answered finished; one that
    // takes longer continues asynchronously.
    if sync {
        let cfg = &ps.config;
        let finish = stored.accepted_at + cfg.accept_time + cfg.level_time * stored.levels as u32;
        let left = finish.saturating_sub(state.clock.now());
        let wait = left.min(Duration::from_millis(wait_for));
        tokio::time::sleep(state.clock.real(wait)).await;
    }
    let now = state.clock.now();
    let mut resp = (
        StatusCode::OK,
        axum::Json(render(&state, &stored, &echo, now)),
    )
        .into_response();
    if faults::happens(&mut rng, f.drop_after_commit_rate) {
        state
            .ledger
            .bump(crate::sandbox::ledger::Counter::DroppedAfterCommit);
        resp.extensions_mut().insert(DropConnection);
    } else if faults::happens(&mut rng, f.error_5xx_after_commit_rate) {
        // Choice: the documented error envelope (L257-261) with the HTTP status as its code;
        // the request is committed, so a retry with the same id replays it.
        state
            .ledger
            .bump(crate::sandbox::ledger::Counter::Error5xxAfterCommit);
        return error_body(
            StatusCode::GATEWAY_TIMEOUT,
            504,
            "upstream timed out after processing",
        );
    }
    resp
}

/// Processes a request once: a request id seen before gets its first answer again. Returns the
/// stored request and the request its answers echo (this one, or for a replay the first, as
/// kept); `None` if a replay's first request cannot be read back (see `bodies`).
fn commit(state: &Arc<State>, request_id: &str, request: Value) -> Option<(Arc<Stored>, Value)> {
    let ps = &state.paysend;
    // Idempotency is header.request.id *and* header.request.date (Authentication &
    // Idempotency, L7021-7029): the same id with another date is a new request (whose payouts
    // then meet the invoiceId check, 3011), not a replay.
    let date = request
        .pointer("/header/request/date")
        .map(|d| d.to_string())
        .unwrap_or_default();
    let replay_key = format!("{request_id}\u{1f}{date}");
    let replay_key = replay_key.as_str();
    // The shard stays locked while the request commits, so two copies of one request arriving
    // together cannot both be processed.
    let mut shard = ps.requests.shard(replay_key);
    if let Some(s) = shard.get(replay_key) {
        state.ledger.bump(crate::sandbox::ledger::Counter::Replays);
        let first = ps.bodies.read(&s.body)?;
        return Some((Arc::clone(s), tree::parse(&first)));
    }
    let accepted_at = state.clock.now();
    let global_id = ps.new_id("global");
    let response_id = ps.new_id("response");
    let tasks = request
        .pointer("/payload/tasks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let cfg = &ps.config;
    let mut ctx = functions::Ctx {
        state,
        request_id,
        accepted_at,
        payments: Vec::new(),
    };
    let tree = tree::run(&tasks, &mut |ty, payload, level| {
        functions::execute(&mut ctx, ty, payload, level)
    });
    let payments = ctx.payments;
    // Levels are known only after the tree ran; payments learn when they complete.
    let levels = tree::depth(&tree);
    let body = tree::compact(&request);
    let stored = Arc::new(Stored {
        global_id: global_id.clone(),
        response_id,
        accepted_at,
        body: ps.bodies.keep(&body),
        tree: kept::Trees::new(&tree),
        levels,
    });
    let finish = accepted_at + cfg.accept_time + cfg.level_time * levels as u32;
    state.ledger.journal_record(|| {
        let (request, tree) = masked_for_journal(&body, &tree);
        super::journal::Record::PaysendRequest {
            id: replay_key.to_string(),
            global_id: global_id.clone(),
            response_id: stored.response_id.clone(),
            accepted_at,
            request,
            tree,
            levels,
        }
    });
    shard.insert(replay_key.to_string(), Arc::clone(&stored));
    drop(shard);
    ps.by_global
        .shard(&global_id)
        .insert(global_id.clone(), replay_key.to_string());
    functions::notify(state, &stored, &request, finish, payments);
    Some((stored, request))
}

/// The answer for a stored request at provider time `now`; `req` is the request it echoes.
pub fn render(state: &State, s: &Stored, req: &Value, now: Duration) -> Value {
    let cfg = &state.paysend.config;
    let started = s.accepted_at + cfg.accept_time;
    let finished = started + cfg.level_time * s.levels as u32;
    let (status, code) = if now < started {
        ("Accepted", 0)
    } else if now < finished {
        ("InProgress", 1)
    } else {
        ("Finished", 2)
    };
    let mut header = json!({
        "request": req.pointer("/header/request").cloned().unwrap_or(Value::Null),
        "response": {
            "globalId": s.global_id,
            "id": s.response_id,
            "date": state.clock.date(s.accepted_at),
            "statusUri": format!("http://host/processing/status/{}", s.global_id),
        },
    });
    if let Some(service) = req.pointer("/header/service") {
        header["service"] = service.clone();
    }
    let mut partner = req
        .pointer("/payload/partner")
        .cloned()
        .unwrap_or(json!({}));
    if partner.get("parameters").is_none() {
        partner["parameters"] = json!({});
    }
    let tasks = req
        .pointer("/payload/tasks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let expiration = state
        .clock
        .date(s.accepted_at + Duration::from_secs(40 * 60));
    let rendered: Vec<Value> = tasks
        .iter()
        .zip(&s.tree.executed())
        .map(|(t, e)| task(cfg, t, e, started, now, &expiration))
        .collect();
    let mut payload = json!({"partner": partner, "tasks": rendered});
    if let Some(settings) = req.pointer("/payload/settings") {
        payload["settings"] = settings.clone();
    }
    json!({"header": header, "result": {"status": status, "code": code}, "payload": payload})
}

fn task(
    cfg: &PaysendConfig,
    t: &Value,
    e: &tree::Executed,
    started: Duration,
    now: Duration,
    expiration: &str,
) -> Value {
    let mut out = json!({
        "type": t.get("type").cloned().unwrap_or(Value::Null),
        "payload": t.get("payload").cloned().unwrap_or(json!({})),
    });
    for (branch, kids) in [
        ("success", &e.success),
        ("fail", &e.fail),
        ("always", &e.always),
    ] {
        let given = t
            .get(branch)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        out[branch] = Value::Array(
            given
                .iter()
                .zip(kids.iter())
                .map(|(gt, ge)| task(cfg, gt, ge, started, now, expiration))
                .collect(),
        );
    }
    // Choice: a task its parent's result did not lead to gets no `result` (the document shows
    // none); a task still waiting for its level is Accepted, one on its level InProgress.
    if let Some(outcome) = &e.outcome {
        let begins = started + cfg.level_time * e.level as u32;
        let ends = begins + cfg.level_time;
        out["result"] = if now < begins {
            json!({"status": "Accepted", "code": 0})
        } else if now < ends {
            json!({"status": "InProgress", "code": 1})
        } else {
            tree::parse(&outcome.result)
        };
    }
    out["expiration"] = json!({"date": expiration});
    out
}

async fn status(
    AxState(state): AxState<Arc<State>>,
    Path(global_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ps = &state.paysend;
    if over_rate(&state) {
        return busy();
    }
    // Status checks are signed over the globalId + key (L7015-7016).
    if !signature_ok(&headers, global_id.as_bytes(), &ps.config.inbound_key) {
        return error_body(StatusCode::UNAUTHORIZED, 401, "Invalid X-OPP-Signature.");
    }
    let request_id = ps.by_global.shard(&global_id).get(&global_id).cloned();
    let stored = request_id.and_then(|r| ps.requests.shard(&r).get(&r).cloned());
    let now = state.clock.now();
    match stored {
        // Choice: outside its window (docs: 2-3 hours) or unknown, the globalId is answered
        // like the document's "no data was found" (3006) with HTTP 400 — not 404, which
        // clients must read as "retry later".
        Some(s) if now < s.accepted_at + ps.config.status_window => match ps.bodies.read(&s.body) {
            Some(req) => (
                StatusCode::OK,
                axum::Json(render(&state, &s, &tree::parse(&req), now)),
            )
                .into_response(),
            None => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response(),
        },
        _ => error_body(StatusCode::BAD_REQUEST, 3006, codes::comment(3006)),
    }
}

//! Payonic, emulated from `payonic-api.txt` (line references "Lnnn" are to that document).
//!
//! The document gives each function its own host (api.mit…, api.capture…, …); their paths are
//! distinct, so the sandbox serves them all under `/payonic`: `POST /api/mit`,
//! `POST /api/{paymentid}/capture|refund|void|payout`, `GET /api/{paymentid}/payment` and
//! `GET /api/health`. `{paymentid}` is a paymentid or a merchantpaymentid (L107, L147 …).
//!
//! A request is checked (API key, TraceApi, body), then decided at once against the payment's
//! history ([`payment::Payment::decide`]) and recorded as an operation — approved or declined —
//! so that requests are decided in the order they arrive. Async functions answer only a
//! `responseid` (L20) and post their notification after `notify_delay_min..max` of provider
//! time, when the operation counts as processed: the Payment API shows an operation only from
//! then on, and its ledger row bears that time. Payout answers on the socket (L228).
//!
//! Life cycle management (L461-469) starts at the card issuer, not the merchant: the sandbox's
//! own `POST /__sandbox/payonic/lifecycle/{paymentid}` plays the issuer, updating the payment's
//! card and notifying `payonic.lifecycle_url` (see `lifecycle` below).
//!
//! Choices where the document is silent (besides those in `wire`, `codes`, `payment`,
//! `notify`, `health`):
//! - a wrong or missing API key is 401, an unknown {paymentid} 404, both with
//!   `{"error", "field"}` bodies like the 400s; the health API wants the key too ("all API
//!   requests", L26);
//! - TraceApi, when sent, must be a UUID: 32 hex digits (L31) or the dashed 8-4-4-4-12 form;
//! - an MIT's `paymentid` is the parent payment whose stored card it charges: it must exist;
//!   the new payment gets a fresh paymentid and the request's merchantpaymentid
//!   (`newmerchantpaymentid`, L86/L98). A second MIT with a merchantpaymentid already known
//!   creates nothing: it is answered with the first authorization's responseid, and that
//!   authorization's notification is posted again to the new notificationurl;
//! - a declined MIT still creates its payment (with the declined authorization), so the
//!   merchantpaymentid is taken and the Payment API shows why;
//! - payouts have no idempotency key in the document: a repeated payout pays again. A payout
//!   posts no notification (it is answered on the socket); its notificationurl is only
//!   checked;
//! - the shared request faults (latency, 5xx, timeout, drop after commit, 5xx after commit)
//!   apply to Payonic requests too, drawn from the seed, the request's identity (its
//!   TraceApi, else a digest of method, path and body) and how many times that identity was
//!   seen. 5xx after commit applies to the functions that record an operation (mit, capture,
//!   refund, void, payout), not to health or the Payment API: the operation is recorded, money
//!   moves and the notification is scheduled as for a success, but the answer is
//!   `504 {"error": "upstream timed out after processing", "field": ""}`;
//! - TraceApi "must be set to an unique value" (L29): a request reusing one already seen (by
//!   any Payonic function, since the start or the last reset) is served as usual and counted
//!   as the event `payonic.trace_reused`. The seen set is the per-identity attempt count
//!   above, which the state file keeps, so it survives a restart;
//! - an API that `payonic.health` reports "error" is down: its functions answer 503 and do
//!   nothing (see `health`).
//!
//! Behaviours an independent Payonic implementation showed, each off by default (the
//! document's reading above stays the default), so that a client can be tested against them:
//! - `payonic.listing_delay`: the Payment API lists an operation only that long (provider
//!   time) after it was processed — payouts, processed at request time, are no longer listed
//!   at once; `balance` follows the listed operations;
//! - `payonic.pending_listings`: an operation not listable yet (not processed, or within the
//!   listing delay) is listed with `"status": "pending"` and without `responsecode` and
//!   `authorizationcode`, instead of being left out;
//! - `payonic.pending_notifications`: MIT, capture, refund and void first post their
//!   notification in that pending form right after the request (webhook faults drawn on
//!   their own), then the final one when processed; a replayed MIT posts only the final one;
//! - `payonic.numeric_responsecode`: `responsecode` is a JSON number (`"00"` → `0`, `"51"` →
//!   `51`) in operation notifications, the payout answer and `operations[]`.

pub mod codes;
pub mod health;
pub mod notify;
pub mod payment;
pub mod wire;

use super::State;
use super::config::{PayonicConfig, SeedState};
use super::faults;
use super::ledger::Entry;
use super::server::DropConnection;
use super::sharded::Sharded;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use payment::{Card, OpType, Operation, Payment};
use rand::Rng;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use wire::Invalid;

pub struct Payonic {
    pub config: PayonicConfig,
    seed: u64,
    /// paymentid → payment.
    payments: Sharded<Payment>,
    /// merchantpaymentid → paymentid.
    aliases: Sharded<String>,
    /// How many times each request identity was seen (fault decisions, ids).
    attempts: Sharded<u64>,
}

/// 32 lowercase hex digits from the seed and `parts`: the shape of every id in the document.
fn hex_id(seed: u64, parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    for p in parts {
        h.update(p.as_bytes());
        h.update([0x1f]);
    }
    crate::keys::hex_lower(&h.finalize()[..16])
}

/// A six-digit authorization code for an approved operation, "" for a declined one (choice).
fn authorization_code(operationid: &str, code: &str) -> String {
    if code != codes::APPROVED {
        return String::new();
    }
    let n = u64::from_str_radix(&operationid[..8.min(operationid.len())], 16).unwrap_or(0);
    format!("{:06}", n % 1_000_000)
}

/// A payment as it may be journaled: the customer's e-mail and IP address masked (the ledger
/// keeps only a digest of the e-mail).
fn masked_for_journal(p: &Payment) -> Payment {
    let mut p = p.clone();
    p.customer.email = super::journal::mask(&p.customer.email);
    p.customer.ipaddress = super::journal::mask(&p.customer.ipaddress);
    p.operations.clear();
    p
}

impl Payonic {
    pub fn new(config: &PayonicConfig, seed: u64) -> Payonic {
        let p = Payonic::empty(config, seed);
        p.seed_payments(None);
        p
    }

    /// Without its seeded payments (a sandbox with a state file seeds after the replay).
    pub fn empty(config: &PayonicConfig, seed: u64) -> Payonic {
        Payonic {
            config: config.clone(),
            seed,
            payments: Sharded::new(),
            aliases: Sharded::new(),
            attempts: Sharded::new(),
        }
    }

    pub fn reset(&self, ledger: &super::ledger::Ledger) {
        self.payments.clear();
        self.aliases.clear();
        self.attempts.clear();
        self.seed_payments(Some(ledger));
    }

    /// Replays a journaled record of Payonic's (others are ignored).
    pub fn apply(&self, r: &super::journal::Record) {
        use super::journal::Record as R;
        match r {
            R::PayonicPayment { payment } => {
                self.aliases
                    .shard(&payment.merchantpaymentid)
                    .insert(payment.merchantpaymentid.clone(), payment.paymentid.clone());
                self.payments
                    .shard(&payment.paymentid)
                    .insert(payment.paymentid.clone(), payment.clone());
            }
            R::PayonicOperation {
                paymentid,
                operation,
            } => {
                if let Some(p) = self.payments.shard(paymentid).get_mut(paymentid) {
                    p.operations.push(operation.clone());
                }
            }
            R::PayonicCard { paymentid, card } => {
                if let Some(p) = self.payments.shard(paymentid).get_mut(paymentid) {
                    p.card = card.clone();
                }
            }
            R::Attempt {
                provider,
                identity,
                n,
            } if provider == "payonic" => {
                self.attempts.shard(identity).insert(identity.clone(), *n);
            }
            R::Reset => {
                self.payments.clear();
                self.aliases.clear();
                self.attempts.clear();
            }
            _ => {}
        }
    }

    /// Creates the configured payments the sandbox does not know yet (journaled to
    /// `ledger`'s state file when given); known ones are left as they are.
    pub fn seed_payments(&self, ledger: Option<&super::ledger::Ledger>) {
        let c = &self.config;
        for s in &c.payments {
            let mpid = s.merchantpaymentid.clone().unwrap_or(s.paymentid.clone());
            self.seed_one(
                ledger,
                &s.paymentid,
                &mpid,
                s.amount,
                &s.currency,
                s.state,
                &s.reference,
                s.customer.clone(),
            );
        }
        if let Some(g) = &c.generate {
            for n in 1..=g.count {
                let id = format!("{}{n:08}", g.prefix);
                self.seed_one(
                    ledger,
                    &id,
                    &id,
                    g.amount,
                    &g.currency,
                    g.state,
                    "",
                    Default::default(),
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn seed_one(
        &self,
        ledger: Option<&super::ledger::Ledger>,
        paymentid: &str,
        merchantpaymentid: &str,
        amount: u64,
        currency: &str,
        state: SeedState,
        reference: &str,
        customer: super::config::PayonicCustomer,
    ) {
        if self.resolve(paymentid).is_some() || self.resolve(merchantpaymentid).is_some() {
            return;
        }
        let op = |ty: OpType| {
            let operationid = hex_id(self.seed, &[paymentid, "seed", ty.as_str()]);
            Operation {
                responseid: hex_id(self.seed, &[paymentid, "seed-response", ty.as_str()]),
                authorizationcode: authorization_code(&operationid, codes::APPROVED),
                operationid,
                optype: ty,
                paymenttype: (ty == OpType::Authorize).then(|| "unscheduled".to_string()),
                amount,
                currency: currency.to_string(),
                at: Duration::ZERO,
                created: chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
                note: String::new(),
                tags: String::new(),
                responsecode: codes::APPROVED,
                traceapi: None,
            }
        };
        let mut operations = vec![op(OpType::Authorize)];
        if state == SeedState::Captured {
            operations.push(op(OpType::Capture));
        }
        let p = Payment {
            paymentid: paymentid.to_string(),
            merchantpaymentid: merchantpaymentid.to_string(),
            parentpaymentid: None,
            merchantid: self.config.merchant_id.clone(),
            amount,
            currency: currency.to_string(),
            reference: reference.to_string(),
            paymenttype: "unscheduled".into(),
            processor: "finaro".into(),
            textonstatement: String::new(),
            note: String::new(),
            tags: String::new(),
            customer,
            card: Card::default(),
            operations,
        };
        if let Some(l) = ledger {
            l.journal_record(|| super::journal::Record::PayonicPayment {
                payment: masked_for_journal(&p),
            });
            for op in &p.operations {
                l.journal_record(|| super::journal::Record::PayonicOperation {
                    paymentid: paymentid.to_string(),
                    operation: op.clone(),
                });
            }
        }
        self.aliases
            .shard(merchantpaymentid)
            .insert(merchantpaymentid.to_string(), paymentid.to_string());
        self.payments
            .shard(paymentid)
            .insert(paymentid.to_string(), p);
    }

    /// The paymentid for a paymentid or merchantpaymentid.
    fn resolve(&self, id: &str) -> Option<String> {
        if self.payments.shard(id).contains_key(id) {
            return Some(id.to_string());
        }
        self.aliases.shard(id).get(id).cloned()
    }

    /// How the Payment API lists operations, from the configuration.
    fn listing(&self) -> payment::Listing {
        payment::Listing {
            delay: self.config.listing_delay,
            pending: self.config.pending_listings,
            form: self.form(),
        }
    }

    /// How `responsecode` is written, from the configuration.
    fn form(&self) -> codes::CodeForm {
        codes::CodeForm::numeric(self.config.numeric_responsecode)
    }

    /// A copy of a payment (tests and the sandbox's own views).
    pub fn payment(&self, id: &str) -> Option<Payment> {
        let pid = self.resolve(id)?;
        self.payments.shard(&pid).get(&pid).cloned()
    }
}

/// The Payonic emulation and the sandbox's shared state. Choice: it is kept beside `State`, not
/// in it, so that code assembling a `State` by hand (benches/resume.rs) needs no change.
pub struct Ctx {
    pub state: Arc<State>,
    pub payonic: Payonic,
}

pub fn routes(ctx: Arc<Ctx>) -> Router<Arc<State>> {
    Router::new()
        .route("/api/mit", post(mit))
        .route("/api/health", get(health))
        .route("/api/{paymentid}/capture", post(capture))
        .route("/api/{paymentid}/refund", post(refund))
        .route("/api/{paymentid}/void", post(void))
        .route("/api/{paymentid}/payout", post(payout))
        .route("/api/{paymentid}/payment", get(payment_info))
        .with_state(ctx)
}

/// The sandbox's own Payonic endpoints (under `/__sandbox/`, beside the ledger and reset).
pub fn admin_routes(ctx: Arc<Ctx>) -> Router<Arc<State>> {
    Router::new()
        .route("/__sandbox/payonic/lifecycle/{paymentid}", post(lifecycle))
        .with_state(ctx)
}

fn error(status: StatusCode, field: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": message, "field": field})),
    )
        .into_response()
}

/// 503 when `payonic.health` reports `api` down (see `health`); counted as the event
/// `payonic.unavailable.<api>`.
fn unavailable(ctx: &Ctx, api: health::Api) -> Option<Response> {
    let msg = health::outage(&ctx.payonic.config.health, api)?;
    ctx.state
        .ledger
        .event(&format!("payonic.unavailable.{}", api.name()));
    Some(error(StatusCode::SERVICE_UNAVAILABLE, "", &msg))
}

fn bad_request(e: Invalid) -> Response {
    error(StatusCode::BAD_REQUEST, &e.field, &e.error)
}

fn unknown_payment(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "paymentid",
        &format!("no payment with paymentid or merchantpaymentid `{id}`"),
    )
}

/// A checked request: who sent it and how often (for faults and ids).
struct Call {
    trace: Option<String>,
    identity: String,
    attempt: u64,
    body: Value,
}

fn trace_ok(t: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    match t.len() {
        32 => hex(t),
        36 => {
            let parts: Vec<&str> = t.split('-').collect();
            parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| hex(p))
        }
        _ => false,
    }
}

/// Authorization (L24-27: "Basic " then the key itself, not base64 user:password) and TraceApi
/// (L28-31), then the body as a JSON object.
fn check(
    ctx: &Ctx,
    headers: &HeaderMap,
    what: &str,
    body: &[u8],
    empty_ok: bool,
) -> Result<Call, Response> {
    use subtle::ConstantTimeEq;
    let key = &ctx.payonic.config.api_key;
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .unwrap_or("");
    let auth_ok: bool = given.as_bytes().ct_eq(key.as_bytes()).into();
    if !auth_ok {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "Authorization",
            "missing or wrong API key (hint: Authorization: Basic <api-key>)",
        ));
    }
    let trace = match headers.get("traceapi").map(|v| v.to_str()) {
        None => None,
        Some(Ok(t)) if trace_ok(t) => Some(t.to_string()),
        Some(_) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "TraceApi",
                "TraceApi must be a UUID: 32 hex digits or the 8-4-4-4-12 form",
            ));
        }
    };
    let body_value = wire::object(body, empty_ok).map_err(bad_request)?;
    // Without a TraceApi, a request is what the client chose: the function, the path's id and
    // the body — less the notificationurl, which names the client's own endpoint (its port
    // may change from run to run).
    let identity = match &trace {
        Some(t) => t.clone(),
        None => {
            let mut chosen = body_value.clone();
            if let Value::Object(m) = &mut chosen {
                m.remove("notificationurl");
            }
            hex_id(0, &[what, &chosen.to_string()])
        }
    };
    let attempt = {
        let mut a = ctx.payonic.attempts.shard(&identity);
        let n = a.entry(identity.clone()).or_insert(0);
        *n += 1;
        ctx.state
            .ledger
            .journal_record(|| super::journal::Record::Attempt {
                provider: "payonic".into(),
                identity: identity.clone(),
                n: *n,
            });
        *n - 1
    };
    // L29: TraceApi "must be set to an unique value". Choice: a reuse is counted, not
    // refused. With a TraceApi the identity is the TraceApi itself, so its attempt count is
    // how often it was seen — journaled, so a restarted sandbox still knows it.
    if trace.is_some() && attempt > 0 {
        ctx.state.ledger.event("payonic.trace_reused");
    }
    Ok(Call {
        trace,
        identity,
        attempt,
        body: body_value,
    })
}

/// The shared request faults before processing: latency, 5xx, timeout. On success, the
/// generator that later decides whether the answer is dropped after commit.
async fn request_faults(state: &State, call: &Call) -> Result<rand::rngs::StdRng, Response> {
    let f = state.faults();
    let mut rng = faults::rng(state.seed, &call.identity, call.attempt, "payonic.request");
    if f.latency_min.is_some() || f.latency_max.is_some() {
        let lo = f.latency_min.unwrap_or_default().as_millis() as u64;
        let hi = f.latency_max.map_or(lo, |h| h.as_millis() as u64).max(lo);
        tokio::time::sleep(Duration::from_millis(rng.random_range(lo..=hi))).await;
    }
    if faults::happens(&mut rng, f.error_5xx_rate) {
        return Err((StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response());
    }
    if faults::happens(&mut rng, f.timeout_rate) {
        tokio::time::sleep(f.timeout_after.unwrap_or(Duration::from_secs(30))).await;
        let mut r = StatusCode::GATEWAY_TIMEOUT.into_response();
        r.extensions_mut().insert(DropConnection);
        return Err(r);
    }
    Ok(rng)
}

/// What a processed request is: which faults after commit its answer may meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Processed {
    /// MIT, capture, refund, void, payout: an operation was recorded (money may have moved).
    /// Dropped after commit, or answered 504 after commit.
    Operation,
    /// The Payment API: dropped after commit only.
    Lookup,
}

/// The 200 answer of a processed request, unless a fault after commit takes it: the
/// connection dropped unanswered, or (operations only) 504 with the body below. Both drawn
/// from the request's own generator, after its faults before processing.
fn answer(
    state: &State,
    rng: &mut rand::rngs::StdRng,
    body: Value,
    processed: Processed,
) -> Response {
    let f = state.faults();
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    if faults::happens(rng, f.drop_after_commit_rate) {
        state
            .ledger
            .bump(crate::sandbox::ledger::Counter::DroppedAfterCommit);
        resp.extensions_mut().insert(DropConnection);
    } else if processed == Processed::Operation
        && faults::happens(rng, f.error_5xx_after_commit_rate)
    {
        state
            .ledger
            .bump(crate::sandbox::ledger::Counter::Error5xxAfterCommit);
        return error(
            StatusCode::GATEWAY_TIMEOUT,
            "",
            "upstream timed out after processing",
        );
    }
    resp
}

/// When an async request made now is processed, drawn from `notify_delay_min..=max`.
fn processing_time(ctx: &Ctx, call: &Call) -> Duration {
    let state = &ctx.state;
    let c = &ctx.payonic.config;
    let mut rng = faults::rng(state.seed, &call.identity, call.attempt, "payonic.delay");
    let lo = c.notify_delay_min.as_micros() as u64;
    let hi = (c.notify_delay_max.as_micros() as u64).max(lo);
    state.clock.now() + Duration::from_micros(rng.random_range(lo..=hi))
}

fn notification_rng(state: &State, call: &Call) -> rand::rngs::StdRng {
    faults::rng(
        state.seed,
        &call.identity,
        call.attempt,
        "payonic.notification",
    )
}

/// Posts an async operation's notification: with `payonic.pending_notifications`, first its
/// pending form at once (faults drawn on their own, so the final one meets the same as
/// without), then `body` at `at`, when the operation is processed.
fn notify_operation(ctx: &Ctx, call: &Call, url: &str, at: Duration, body: Value) {
    let state = &ctx.state;
    if ctx.payonic.config.pending_notifications {
        let mut rng = faults::rng(
            state.seed,
            &call.identity,
            call.attempt,
            "payonic.notification.pending",
        );
        let now = state.clock.now();
        notify::send(
            ctx,
            &mut rng,
            url,
            call.trace.as_deref(),
            now,
            codes::pending(&body),
        );
    }
    notify::send(
        ctx,
        &mut notification_rng(state, call),
        url,
        call.trace.as_deref(),
        at,
        body,
    );
}

/// A new operation of `ty` decided against `p` and appended to it.
#[allow(clippy::too_many_arguments)]
fn operate(
    state: &State,
    call: &Call,
    p: &mut Payment,
    ty: OpType,
    amount: u64,
    currency: &str,
    at: Duration,
    note: &str,
    tags: &str,
) -> Operation {
    let seed = state.seed;
    let attempt = call.attempt.to_string();
    let code = p.decide(ty, amount);
    let operationid = hex_id(seed, &[&call.identity, &attempt, "operationid"]);
    let op = Operation {
        responseid: hex_id(seed, &[&call.identity, &attempt, "responseid"]),
        authorizationcode: authorization_code(&operationid, code),
        operationid,
        optype: ty,
        paymenttype: (ty == OpType::Authorize).then(|| p.paymenttype.clone()),
        amount,
        currency: currency.to_string(),
        at,
        created: state
            .clock
            .datetime(at)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        note: note.to_string(),
        tags: tags.to_string(),
        responsecode: code,
        traceapi: call.trace.clone(),
    };
    state
        .ledger
        .journal_record(|| super::journal::Record::PayonicOperation {
            paymentid: p.paymentid.clone(),
            operation: op.clone(),
        });
    p.operations.push(op.clone());
    if !op.approved() {
        state
            .ledger
            .event(&format!("payonic.declined.{}", ty.as_str()));
    } else if ty.moves_money() {
        let exp = crate::money::Currency::from_alpha(currency)
            .and_then(|c| c.exponent())
            .unwrap_or(2);
        state.ledger.record(Entry {
            provider: "payonic".into(),
            key: format!("{}/{}", p.paymentid, op.operationid),
            payment_id: p.paymentid.clone(),
            operation: ty.as_str().into(),
            amount: rust_decimal::Decimal::try_from_i128_with_scale(i128::from(amount), exp)
                .unwrap_or_default()
                .to_string(),
            currency: currency.to_string(),
            recipient_digest: state.ledger.recipient_digest(&p.customer.email),
            time: state.clock.date(at),
            request_id: call.trace.clone().unwrap_or_default(),
        });
    }
    op
}

/// The capture/refund/void notification (L129-136).
fn modify_notification(p: &Payment, op: &Operation, form: codes::CodeForm) -> Value {
    json!({
        "responseid": op.responseid,
        "paymentid": p.paymentid,
        "merchantpaymentid": p.merchantpaymentid,
        "responsecode": form.value(op.responsecode),
        "authorizationcode": op.authorizationcode,
        "status": codes::status(op.responsecode),
    })
}

/// The MIT notification (L83-93). Choice: eci "07" and a PAR derived from the root payment
/// (the same card gives the same PAR).
fn mit_notification(p: &Payment, op: &Operation, seed: u64, form: codes::CodeForm) -> Value {
    let root = p.parentpaymentid.as_deref().unwrap_or(&p.paymentid);
    let par = hex_id(seed, &[root, "par"]) + &hex_id(seed, &[root, "par2"]);
    json!({
        "responseid": op.responseid,
        "paymentid": p.paymentid,
        "newmerchantpaymentid": p.merchantpaymentid,
        "responsecode": form.value(op.responsecode),
        "authorizationcode": op.authorizationcode,
        "status": codes::status(op.responsecode),
        "processor": p.processor,
        "eci": "07",
        "par": &par[..29],
    })
}

async fn mit(AxState(ctx): AxState<Arc<Ctx>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = unavailable(&ctx, health::Api::Mit) {
        return r;
    }
    let state = &ctx.state;
    let call = match check(&ctx, &headers, "mit", &body, false) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let req = match wire::Mit::parse(&call.body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let Some(parent) = ctx.payonic.payment(&req.paymentid) else {
        return unknown_payment(&req.paymentid);
    };
    let mut rng = match request_faults(state, &call).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let ps = &ctx.payonic;
    let at = processing_time(&ctx, &call);
    // The alias shard stays locked from the lookup to the insert: two MITs with one
    // merchantpaymentid cannot both create a payment.
    let mut aliases = ps.aliases.shard(&req.merchantpaymentid);
    if let Some(pid) = aliases.get(&req.merchantpaymentid).cloned() {
        drop(aliases);
        state.ledger.event("payonic.mit.replayed");
        let first = ps.payments.shard(&pid).get(&pid).and_then(|p| {
            p.first_authorization().map(|op| {
                let body = mit_notification(p, op, state.seed, ps.form());
                (op.responseid.clone(), body)
            })
        });
        let Some((responseid, body)) = first else {
            return unknown_payment(&req.merchantpaymentid);
        };
        notify::send(
            &ctx,
            &mut notification_rng(state, &call),
            &req.notificationurl,
            call.trace.as_deref(),
            at,
            body,
        );
        return answer(
            state,
            &mut rng,
            json!({"responseid": responseid}),
            Processed::Operation,
        );
    }
    let attempt = call.attempt.to_string();
    let paymentid = hex_id(state.seed, &[&call.identity, &attempt, "paymentid"]);
    let mut p = Payment {
        paymentid: paymentid.clone(),
        merchantpaymentid: req.merchantpaymentid.clone(),
        parentpaymentid: Some(parent.paymentid.clone()),
        merchantid: req.merchantid,
        amount: req.amount,
        currency: req.currency.clone(),
        reference: req.reference,
        paymenttype: req.paymenttype,
        processor: req.processor.unwrap_or(parent.processor),
        textonstatement: req.textonstatement,
        note: req.note.clone(),
        tags: req.tags.clone(),
        customer: req.customer.unwrap_or(parent.customer),
        card: parent.card,
        operations: Vec::new(),
    };
    // Journaled before its first operation, which replay appends to it.
    state
        .ledger
        .journal_record(|| super::journal::Record::PayonicPayment {
            payment: masked_for_journal(&p),
        });
    let op = operate(
        state,
        &call,
        &mut p,
        OpType::Authorize,
        req.amount,
        &req.currency,
        at,
        &req.note,
        &req.tags,
    );
    let body = mit_notification(&p, &op, state.seed, ps.form());
    aliases.insert(req.merchantpaymentid.clone(), paymentid.clone());
    ps.payments.shard(&paymentid).insert(paymentid.clone(), p);
    drop(aliases);
    notify_operation(&ctx, &call, &req.notificationurl, at, body);
    answer(
        state,
        &mut rng,
        json!({"responseid": op.responseid}),
        Processed::Operation,
    )
}

/// Capture, refund and void: the same request shape and notification.
async fn modify(
    ctx: Arc<Ctx>,
    id: String,
    headers: HeaderMap,
    body: Bytes,
    ty: OpType,
) -> Response {
    // Void is served by api.refund (L187).
    let api = match ty {
        OpType::Capture => health::Api::Capture,
        _ => health::Api::Refund,
    };
    if let Some(r) = unavailable(&ctx, api) {
        return r;
    }
    let state = &ctx.state;
    let call = match check(
        &ctx,
        &headers,
        &format!("{}/{id}", ty.as_str()),
        &body,
        false,
    ) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let req = match wire::Modify::parse(&call.body, ty != OpType::Void) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let Some(pid) = ctx.payonic.resolve(&id) else {
        return unknown_payment(&id);
    };
    let mut rng = match request_faults(state, &call).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let at = processing_time(&ctx, &call);
    let notification = {
        let mut shard = ctx.payonic.payments.shard(&pid);
        let Some(p) = shard.get_mut(&pid) else {
            return unknown_payment(&id);
        };
        let amount = match ty {
            OpType::Void => p.voidable(),
            _ => req.amount.unwrap_or(0),
        };
        let currency = p.currency.clone();
        let op = operate(
            state, &call, p, ty, amount, &currency, at, &req.note, &req.tags,
        );
        modify_notification(p, &op, ctx.payonic.form())
    };
    let responseid = notification["responseid"].clone();
    notify_operation(&ctx, &call, &req.notificationurl, at, notification);
    answer(
        state,
        &mut rng,
        json!({"responseid": responseid}),
        Processed::Operation,
    )
}

async fn capture(
    AxState(ctx): AxState<Arc<Ctx>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    modify(ctx, id, headers, body, OpType::Capture).await
}

async fn refund(
    AxState(ctx): AxState<Arc<Ctx>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    modify(ctx, id, headers, body, OpType::Refund).await
}

async fn void(
    AxState(ctx): AxState<Arc<Ctx>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    modify(ctx, id, headers, body, OpType::Void).await
}

/// Payout, synchronous (L228): the answer is L254-260.
async fn payout(
    AxState(ctx): AxState<Arc<Ctx>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = unavailable(&ctx, health::Api::Payout) {
        return r;
    }
    let state = &ctx.state;
    let call = match check(&ctx, &headers, &format!("payout/{id}"), &body, false) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let req = match wire::Payout::parse(&call.body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let Some(pid) = ctx.payonic.resolve(&id) else {
        return unknown_payment(&id);
    };
    let mut rng = match request_faults(state, &call).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let now = state.clock.now();
    let answer_body = {
        let mut shard = ctx.payonic.payments.shard(&pid);
        let Some(p) = shard.get_mut(&pid) else {
            return unknown_payment(&id);
        };
        // The recipient's e-mail, when given, is what the ledger digests.
        let saved = p.customer.email.clone();
        if !req.email.is_empty() {
            p.customer.email = req.email.clone();
        }
        let op = operate(
            state,
            &call,
            p,
            OpType::Payout,
            req.amount,
            &req.currency,
            now,
            &req.note,
            &req.tags,
        );
        p.customer.email = saved;
        json!({
            "responseid": op.responseid,
            "responsecode": ctx.payonic.form().value(op.responsecode),
            "authorizationcode": op.authorizationcode,
            "status": codes::status(op.responsecode),
            "processor": req.processor.unwrap_or(p.processor.clone()),
        })
    };
    answer(state, &mut rng, answer_body, Processed::Operation)
}

/// Payment (L270-365): its fields come in a JSON body on the GET (L272-276) or, as the
/// sandbox also accepts, as query parameters; the body wins where both give one.
async fn payment_info(
    AxState(ctx): AxState<Arc<Ctx>>,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = unavailable(&ctx, health::Api::Payment) {
        return r;
    }
    let state = &ctx.state;
    let chosen: Vec<_> = query
        .iter()
        .filter(|(k, _)| k.as_str() != "notificationurl")
        .collect();
    let what = format!("payment/{id}?{chosen:?}");
    let mut call = match check(&ctx, &headers, &what, &body, true) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Value::Object(m) = &mut call.body {
        for (k, v) in query {
            m.entry(k).or_insert(Value::String(v));
        }
    }
    let req = match wire::PaymentQuery::parse(&call.body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let Some(p) = ctx.payonic.payment(&id) else {
        return unknown_payment(&id);
    };
    if let Some(op) = &req.operationid
        && !p.operations.iter().any(|o| &o.operationid == op)
    {
        return error(
            StatusCode::NOT_FOUND,
            "operationid",
            &format!("payment `{id}` has no operation `{op}`"),
        );
    }
    let mut rng = match request_faults(state, &call).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let at = processing_time(&ctx, &call);
    let responseid = hex_id(
        state.seed,
        &[&call.identity, &call.attempt.to_string(), "responseid"],
    );
    let body = p.to_json(
        &responseid,
        at,
        req.operationid.as_deref(),
        req.gfx,
        ctx.payonic.listing(),
    );
    notify::send(
        &ctx,
        &mut notification_rng(state, &call),
        &req.notificationurl,
        call.trace.as_deref(),
        at,
        body,
    );
    answer(
        state,
        &mut rng,
        json!({"responseid": responseid}),
        Processed::Lookup,
    )
}

async fn health(AxState(ctx): AxState<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if let Err(r) = check(&ctx, &headers, "health", b"", true) {
        return r;
    }
    (
        StatusCode::OK,
        axum::Json(health::document(&ctx.payonic.config.health)),
    )
        .into_response()
}

/// `POST /__sandbox/payonic/lifecycle/{paymentid}` (a paymentid or merchantpaymentid): the
/// card issuer updates the PAN behind the payment (L462). Its card gets a new last4 and expiry
/// at once — the Payment API shows them from then on — and the life cycle notification
/// (L465-469) is posted to `payonic.lifecycle_url` like any other notification: after
/// `notify_delay_min..max`, subject to the webhook faults. Answers the payment's new card
/// details. 409 without a lifecycle_url (then nothing changes), 404 for an unknown payment.
///
/// Choices where the document is silent: no TraceApi (no merchant request started it); the
/// payment's MIT children keep the card they were made with; each update of a payment draws
/// its new last4, delay and faults from the seed, the paymentid and the update's number.
async fn lifecycle(AxState(ctx): AxState<Arc<Ctx>>, Path(id): Path<String>) -> Response {
    let state = &ctx.state;
    let Some(url) = ctx.payonic.config.lifecycle_url.clone() else {
        return error(
            StatusCode::CONFLICT,
            "",
            "no life cycle notification can be sent: payonic.lifecycle_url is not configured \
             (hint: set it in the sandbox config, the back-office setting of L463)",
        );
    };
    let Some(pid) = ctx.payonic.resolve(&id) else {
        return unknown_payment(&id);
    };
    let (body, card) = {
        let mut shard = ctx.payonic.payments.shard(&pid);
        let Some(p) = shard.get_mut(&pid) else {
            return unknown_payment(&id);
        };
        let n = p.card.updates.to_string();
        let digest = hex_id(state.seed, &[&p.paymentid, "lifecycle", &n]);
        p.card = p
            .card
            .updated(u64::from_str_radix(&digest[..12], 16).unwrap_or(0));
        state
            .ledger
            .journal_record(|| super::journal::Record::PayonicCard {
                paymentid: p.paymentid.clone(),
                card: p.card.clone(),
            });
        (
            json!({"paymentid": p.paymentid, "merchantpaymentid": p.merchantpaymentid}),
            p.card.clone(),
        )
    };
    state.ledger.event("payonic.lifecycle.updated");
    // The update's own identity and number decide its delay and faults, as a request's do.
    let call = Call {
        trace: None,
        identity: format!("lifecycle/{pid}"),
        attempt: card.updates - 1,
        body: Value::Null,
    };
    let at = processing_time(&ctx, &call);
    notify::send(
        &ctx,
        &mut notification_rng(state, &call),
        &url,
        None,
        at,
        body.clone(),
    );
    let mut answer = body;
    answer["last4"] = json!(card.last4);
    answer["expmonth"] = json!(card.expmonth);
    answer["expyear"] = json!(card.expyear);
    (StatusCode::OK, axum::Json(answer)).into_response()
}

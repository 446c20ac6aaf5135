//! The Payonic client adapter (payonic-api.txt; digest in docs/payonic-wire.md). One REST call
//! per item; `payout` and `health` answer on the socket, everything else answers with a
//! `responseid` and POSTs the outcome later to the `notificationurl` payrun gives out (Flow,
//! L16-23). Pure functions: the runner does the I/O.
//!
//! - The notification URL is `<listener>/payonic/notify/<token>`, the token a per-batch secret:
//!   Payonic does not sign notifications, so a notification is taken only on the right URL, for
//!   a responseid this run waits for, naming the payment the request was about.
//! - Payouts and refunds carry no client reference in the document, so payrun writes each item's
//!   key in `note`, the one operation field the Payment API reports back (operations[].note,
//!   L327, L397) — keyed with the batch's secret (`keys::keyed`), so nobody can compute it. An
//!   item whose answer was lost is looked up through the Payment API (whose answer is itself a
//!   notification) and recognised there by its note.
//! - Payonic gives no idempotency: a money-moving request that may have been processed (a 5xx,
//!   a timeout, a dropped connection) is in doubt, never retried. "Not listed" by the Payment API
//!   means "never processed" only for a lookup asked once the settle window passed
//!   (`notifications.settle`, 10 minutes by default), confirmed by a second one; only then is
//!   the item sent again.

use super::{Adapter, Answer, Method, Notice, Outgoing, Preflight, Rendered, Request};
use crate::compile::Flow;
use crate::schema::{Completion, Operation};
use crate::wire::{ErrorClass, Timings, Verdict};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Payonic in the registry of providers `payrun run` drives.
pub const PLUGIN: super::Plugin = super::Plugin {
    name: "payonic",
    adapter,
    optional_credentials,
    listening,
    rehearse,
};

fn adapter(s: &super::Setup<'_>) -> Result<Arc<dyn super::Adapter>, String> {
    let api_key = super::need(s.credentials, "api_key")?;
    Ok(Arc::new(Payonic {
        flow: Arc::new(s.flow.clone()),
        token: notify_token(&s.flow.manifest.batch, &api_key),
        api_key,
        listener: s.callback_url.clone(),
        per_operation_hosts: s.base_url.is_empty(),
        note_secret: s.key_secret.map(<[u8]>::to_vec),
    }))
}

/// The secret token in the URL payrun gives Payonic for its notifications, which are unsigned:
/// derived from the API key and the batch, so it survives a resume and is never stored.
pub fn notify_token(batch: &str, api_key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"payrun/notify-token/v1\x1f")
        .chain_update(batch.as_bytes())
        .chain_update(b"\x1f")
        .chain_update(api_key.as_bytes())
        .finalize();
    crate::keys::hex_lower(&digest[..16])
}

fn optional_credentials(_webhooks: bool) -> &'static [&'static str] {
    &[]
}

fn listening(s: &super::Setup<'_>, public: &str) -> Result<String, String> {
    Ok(format!(
        "{} posts outcomes to {public}{NOTIFY_PREFIX}<a secret token of this batch>",
        s.flow.provider.title
    ))
}

/// A rehearsal: the sandbox holds the payments the batch names, and accepts its test key.
fn rehearse(
    cfg: &mut crate::sandbox::SandboxConfig,
    r: &super::Rehearsal<'_>,
) -> super::Credentials {
    seed(cfg, r.flow, r.items);
    [("api_key".to_string(), cfg.payonic.api_key.clone())]
        .into_iter()
        .collect()
}

/// A rehearsal of a Payonic batch needs the payments its items name (refunds, captures, voids
/// and payouts act on existing payments, an MIT charges one): each is created in the embedded
/// sandbox — authorized for a batch that starts with a capture or void, captured otherwise —
/// for ten times the item's amount in the item's currency — unless `--sandbox-config` lists
/// it. The sandbox creates only those its state file does not know yet, so a resumed
/// rehearsal keeps the payments (and their refunds) the first run made.
fn seed(cfg: &mut crate::sandbox::SandboxConfig, flow: &Flow, items: &super::EachItem<'_>) {
    let Some(op) = flow.tasks.first().map(|t| flow.op(&t.op)) else {
        return;
    };
    // The payment it acts on: in the path, or (an MIT) the parent payment in the body.
    let Some(var) = op
        .fields
        .iter()
        .find(|f| f.in_path)
        .or_else(|| op.field("paymentid"))
        .map(|f| f.path.clone())
    else {
        return;
    };
    let mut seen: std::collections::HashSet<String> = cfg
        .payonic
        .payments
        .iter()
        .flat_map(|p| {
            [p.paymentid.clone()]
                .into_iter()
                .chain(p.merchantpaymentid.clone())
        })
        .collect();
    let mut named = 0;
    items(&mut |payload, currency| {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
            return;
        };
        let Some(id) = v.get(&var).and_then(|x| x.as_str()).map(String::from) else {
            return;
        };
        let amount = v
            .get("amount")
            .and_then(|a| a.to_string().parse::<u64>().ok())
            .unwrap_or(100_000);
        let currency = currency.unwrap_or("EUR").to_string();
        if seen.insert(id.clone()) {
            named += 1;
            cfg.payonic
                .payments
                .push(crate::sandbox::config::PayonicPayment {
                    paymentid: id,
                    merchantpaymentid: None,
                    amount: amount.saturating_mul(10).max(1),
                    currency,
                    // A capture or void needs an authorization still open.
                    state: match op.name.as_str() {
                        "capture" | "void" => crate::sandbox::config::SeedState::Authorized,
                        _ => crate::sandbox::config::SeedState::Captured,
                    },
                    reference: String::new(),
                    customer: Default::default(),
                });
        }
    });
    eprintln!(
        "sandbox: the batch refers to {named} payments; each is created unless the sandbox has it"
    );
}

/// Where the runner's listener takes Payonic's notifications: this prefix and the token.
pub const NOTIFY_PREFIX: &str = "/payonic/notify/";

pub struct Payonic {
    pub flow: Arc<Flow>,
    pub api_key: String,
    /// `<listener base>` (public_url, or the loopback listener in a rehearsal); None when the
    /// manifest has no listener.
    pub listener: Option<String>,
    /// The batch's secret notification token.
    pub token: String,
    /// Send each operation to its own production host (`request.hosts.production`) instead of
    /// the base URL.
    pub per_operation_hosts: bool,
    /// The batch's secret for the keys in `note` (`keys: keyed`); None for a batch started
    /// before keys were keyed, whose notes are the keys' hex digits.
    pub note_secret: Option<Vec<u8>>,
}

/// How long after a request the Payment API's "not listed" can mean "never processed", by
/// default (`notifications.settle`): the document states no processing time (see
/// docs/payonic-wire.md §6.1 for the reasoning).
pub const DEFAULT_SETTLE_SECS: u32 = 600;

fn text(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The `responsecode` of an operation as text, and whether it is the approval code: "00" in the
/// document (L87), also written as the number 0 (or "0", "000") by other readings.
fn code(v: &Value) -> Option<(String, bool)> {
    let c = text(v, "responsecode")?;
    let c = c.trim().to_string();
    let zero = !c.is_empty() && c.bytes().all(|b| b == b'0');
    Some((c, zero))
}

/// `status` values that end an operation without paying. The document shows only `approved`
/// (L89, L135, L258); these are the words other readings use for a decline.
const DECLINED: &[&str] = &[
    "declined",
    "failed",
    "rejected",
    "refused",
    "cancelled",
    "canceled",
];

/// An operation's outcome from its `responsecode` and `status` (L87-89, L133-135, L256-258).
/// Approved when `status` is `approved` and the code is 00 (as text or the number 0) or absent,
/// or, without a status, when the code is 00. Failed when `status` is a decline word with a
/// code other than 00, or without a status when the code is another one. Any other status
/// (`pending`, `processing`, one the document does not name) is not final: Pending, the item
/// keeps waiting and is asked again. A status and a code that disagree (approved with 51,
/// declined with 00) go to a person. None: neither field.
fn outcome(v: &Value) -> Option<Verdict> {
    outcome_in(None, v)
}

/// The fields of an operation's outcome later nodes may read (`${result.<node>.<path>}`): the
/// payment's ids and money from `payment` (a Payment API answer's top level), overlaid with the
/// operation's own (`op`: a notification, a socket answer, or an entry of `operations[]`).
/// Card details (`last4`, `Issuer`, `gfx` …) are never taken.
fn result_of(payment: Option<&Value>, op: &Value) -> Value {
    const PAYMENT: &[&str] = &[
        "paymentid",
        "merchantpaymentid",
        "parentpaymentid",
        "amount",
        "currency",
        "balance",
        "reference",
    ];
    const OPERATION: &[&str] = &[
        "responseid",
        "paymentid",
        "merchantpaymentid",
        "newmerchantpaymentid",
        "operationid",
        "operationtype",
        "amount",
        "currency",
        "responsecode",
        "authorizationcode",
        "status",
        "processor",
        "created",
    ];
    let mut out = Map::new();
    for (v, keys) in payment
        .map(|p| (p, PAYMENT))
        .into_iter()
        .chain([(op, OPERATION)])
    {
        for k in keys {
            if let Some(x) = v.get(*k).filter(|x| x.is_string() || x.is_number()) {
                out.insert((*k).to_string(), x.clone());
            }
        }
    }
    Value::Object(out)
}

/// `outcome` of operation `v`, in the payment `payment` when it comes from a Payment API answer.
fn outcome_in(payment: Option<&Value>, v: &Value) -> Option<Verdict> {
    let code = code(v);
    let status = text(v, "status").map(|s| s.trim().to_ascii_lowercase());
    let succeeded = || {
        let mut ids = BTreeMap::new();
        for (k, name) in [
            ("responseid", "responseid"),
            ("paymentid", "paymentId"),
            ("operationid", "operationid"),
            ("authorizationcode", "authorizationcode"),
            ("newmerchantpaymentid", "newmerchantpaymentid"),
        ] {
            if let Some(s) = text(v, k) {
                ids.insert(name.to_string(), s);
            }
        }
        if let Some(p) = payment.and_then(|p| text(p, "paymentid")) {
            ids.insert("paymentId".into(), p);
        }
        Verdict::Succeeded {
            ids,
            result: Some(result_of(payment, v)),
        }
    };
    let disagree = |status: &str, code: &str| Verdict::NeedsReview {
        code: "contradictory-outcome".into(),
        description: format!("Payonic reported status {status} with responsecode {code}"),
    };
    Some(match (status.as_deref(), code) {
        (None, None) => return None,
        (None, Some((_, true))) => succeeded(),
        (None, Some((c, false))) => Verdict::Failed {
            code: c,
            description: String::new(),
        },
        (Some("approved"), None | Some((_, true))) => succeeded(),
        (Some(s @ "approved"), Some((c, false))) => disagree(s, &c),
        (Some(s), Some((c, true))) if DECLINED.contains(&s) => disagree(s, &c),
        (Some(s), Some((c, false))) if DECLINED.contains(&s) => Verdict::Failed {
            code: c,
            description: s.to_string(),
        },
        (Some(s), None) if DECLINED.contains(&s) => Verdict::Failed {
            code: s.to_string(),
            description: s.to_string(),
        },
        // Not final: asked again.
        (Some(_), _) => Verdict::Pending,
    })
}

/// The `operationtype` names the Payment API may give an operation of each function
/// (`authorize`, `capture`, `refund` are shown, L322/L334/L345; void and payout are not).
fn operation_types(function: &str) -> &'static [&'static str] {
    match function {
        "mit" => &["authorize", "authorization", "authorisation", "mit"],
        "capture" => &["capture"],
        "refund" => &["refund"],
        "void" => &["void", "cancel", "cancellation"],
        "payout" => &["payout"],
        _ => &[],
    }
}

/// What an operation's notification (or its entry `op` in the Payment API's `operations[]`)
/// asserts about the request: the payment (by paymentid or merchantpaymentid, from `payment`,
/// the notification's top level) and the operation's amount (minor units) and currency, where
/// it carries them. The document's operation notifications carry no amount (L128-135); a body
/// that does must agree.
fn claims(payment: &Value, op: &Value) -> super::Claims {
    // An MIT's outcome names the payment it created (L85-86), not the one it was about.
    let created = text(payment, "newmerchantpaymentid").is_some();
    let ids = ["paymentid", "merchantpaymentid"]
        .iter()
        .filter(|_| !created)
        .filter_map(|k| Some(("paymentid".to_string(), text(payment, k)?)));
    let money = ["amount", "currency"]
        .iter()
        .filter_map(|k| Some((k.to_string(), text(op, k)?)));
    ids.chain(money).collect()
}

/// What an entry `op` of the Payment API's `operations[]` (about `payment`) claims, for an
/// operation of `function`: all of payment, amount and currency are required (L318-354 show
/// them on every operation), and its `operationtype` must be `function`'s. What is missing or
/// of another type is a claim no item can satisfy (`!field`): a listing under an item's key
/// that does not show the item's operation is never taken, neither as its outcome nor as
/// "not listed".
fn listing_claims(payment: &Value, op: &Value) -> super::Claims {
    let mut c = claims(payment, op);
    for (field, present) in [
        (
            "paymentid",
            text(payment, "paymentid").is_some() || text(payment, "merchantpaymentid").is_some(),
        ),
        ("amount", text(op, "amount").is_some()),
        ("currency", text(op, "currency").is_some()),
    ] {
        if !present {
            c.push((
                format!("!{field}"),
                "missing from the listed operation".into(),
            ));
        }
    }
    c.push((
        super::OPERATION_CLAIM.into(),
        text(op, "operationtype").unwrap_or_default(),
    ));
    c
}

/// What the Payment API lists about the payment an MIT created, found by its merchantpaymentid
/// (the MIT's key, unguessable: `keys: keyed`): the payment's `authorize` operation and its
/// money. Not the payment it was made from: the MIT may have named it by either of its ids,
/// and `parentpaymentid` (L371) gives one.
fn created_claims(_payment: &Value, op: &Value) -> super::Claims {
    let mut c = super::Claims::new();
    for k in ["amount", "currency"] {
        match text(op, k) {
            Some(v) => c.push((k.to_string(), v)),
            None => c.push((format!("!{k}"), "missing from the listed operation".into())),
        }
    }
    c.push((
        super::OPERATION_CLAIM.into(),
        text(op, "operationtype").unwrap_or_default(),
    ));
    c
}

/// Whether `s` is a key as payrun writes it on Payonic's wire (32 hex digits).
fn is_wire_key(s: &str) -> bool {
    s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())
}

impl Payonic {
    /// The schema operation `name` (one of the flow's, or the Payment and Health APIs).
    fn op(&self, name: &str) -> &Operation {
        self.flow.op(name)
    }

    fn notify_url(&self) -> Option<String> {
        self.listener
            .as_ref()
            .map(|l| format!("{}{NOTIFY_PREFIX}{}", l.trim_end_matches('/'), self.token))
    }

    /// The URL (relative to the base, or absolute with per-operation hosts) of `op` with its
    /// path variables filled from `payload`, and the body that remains.
    fn request(&self, op: &Operation, payload: &Value, trace: &str) -> Request {
        let shape = op
            .request
            .as_ref()
            .expect("Payonic operations have a request");
        let mut body: Map<String, Value> = payload.as_object().cloned().unwrap_or_default();
        let mut path = shape.path.clone();
        for f in &op.fields {
            if f.in_path {
                let v = body
                    .remove(&f.path)
                    .map(|v| match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .unwrap_or_default();
                path = path.replace(&format!("{{{}}}", f.path), &v);
            } else if f.local {
                body.remove(&f.path);
            }
        }
        if let Some(n) = &op.notification_url {
            match self.notify_url() {
                Some(url) => {
                    body.insert(n.clone(), Value::String(url));
                }
                None => {
                    body.remove(n);
                }
            }
        }
        if self.per_operation_hosts
            && let Some(host) = shape.hosts.get("production")
        {
            path = format!("{}{path}", host.trim_end_matches('/'));
        }
        let body = if body.is_empty() && shape.method == "GET" {
            Vec::new()
        } else {
            serde_json::to_vec(&Value::Object(body)).expect("JSON values serialise")
        };
        Request {
            method: if shape.method == "GET" {
                Method::Get
            } else {
                Method::Post
            },
            path,
            endpoint: endpoint_name(&op.name),
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("Authorization", format!("Basic {}", self.api_key)),
                ("TraceApi", trace.to_string()),
            ],
            body,
            trace: Some(trace.to_string()),
            op: op.name.clone(),
        }
    }

    /// The Payment API request for `paymentid` (L268-282); its answer comes by notification.
    fn payment_lookup(&self, paymentid: &str, trace: &str) -> Request {
        let op = self
            .flow
            .provider
            .operation("payment")
            .expect("payonic has payment");
        let mut payload = Map::new();
        payload.insert("paymentid".into(), Value::String(paymentid.to_string()));
        if op.notification_url.is_some() {
            payload.insert(
                "notificationurl".into(),
                Value::String(crate::compile::NOTIFY_URL.into()),
            );
        }
        self.request(op, &Value::Object(payload), trace)
    }

    /// The payment a node's request is about: its `{paymentid}` path variable; for an MIT,
    /// which has none, the payment it creates, named by its merchantpaymentid (the node's key).
    fn paymentid(&self, op: &Operation, key: &str, payload: &[Rendered]) -> Option<String> {
        let v: Value = serde_json::from_str(payload.first()?.get()).ok()?;
        let f = op
            .fields
            .iter()
            .find(|f| f.in_path)
            .map(|f| f.path.as_str())
            .or(op.idempotency.as_deref())?;
        text(&v, f).map(|t| match t == crate::keys::KEYED {
            true => self.wire_key(key),
            false => t,
        })
    }
}

/// Names for per-endpoint limits (provider.yaml `endpoints`).
fn endpoint_name(op: &str) -> &'static str {
    match op {
        "mit" => "mit",
        "capture" => "capture",
        "refund" => "refund",
        "void" => "void",
        "payout" => "payout",
        "payment" => "payment",
        _ => "health",
    }
}

/// The payment id in a request path `…/api/{paymentid}/<function>`.
fn path_paymentid(path: &str) -> Option<&str> {
    let rest = &path[path.find("/api/")? + 5..];
    let (id, _) = rest.split_once('/')?;
    Some(id)
}

/// The payment a sent request is about, as its notification names it: the path's payment, or
/// for an MIT (`/api/mit`, no payment in the path) the merchantpaymentid of the payment it
/// creates.
fn sent_payment(sent: &Request) -> Option<String> {
    path_paymentid(&sent.path).map(str::to_string).or_else(|| {
        let v: Value = serde_json::from_slice(&sent.body).ok()?;
        text(&v, "merchantpaymentid")
    })
}

/// A TraceApi value: 32 hex digits (L28-31), "an unique value" per request (L29). Derived from
/// the item's key and what makes this request unlike every other of the item (the attempt,
/// recorded before the request leaves; a lookup's number and time), so it is unique without
/// being random, and the report's trace_id finds the submitting request.
fn trace(key: &str, what: &str) -> String {
    crate::keys::task_key(key, &format!("payonic/trace/{what}")).replace('-', "")
}

/// Whether `function` moves money (everything but the Payment and Health APIs).
fn moves_money(function: &str) -> bool {
    !matches!(function, "payment" | "health")
}

fn retry(class: ErrorClass) -> Verdict {
    Verdict::RetryLater {
        class,
        retry_after: None,
    }
}

impl Adapter for Payonic {
    fn pack_limit(&self) -> usize {
        1
    }

    fn submit(&self, items: &[Outgoing<'_>], _now: &str) -> Request {
        let item = &items[0];
        let mut payload: Value = item
            .payload
            .first()
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or(Value::Null);
        // The keyed key goes where the plan shows `${keyed_idempotency_key}`.
        if let Value::Object(m) = &mut payload {
            for v in m.values_mut() {
                if v.as_str() == Some(crate::keys::KEYED) {
                    *v = Value::String(self.wire_key(item.key));
                }
            }
        }
        self.request(
            self.op(item.op),
            &payload,
            &trace(item.key, &format!("submit/{}", item.attempt)),
        )
    }

    fn wire_key(&self, key: &str) -> String {
        match &self.note_secret {
            Some(secret) => crate::keys::keyed(secret, key),
            None => key.replace('-', ""),
        }
    }

    fn classify_submit(&self, sent: &Request, answer: &Answer, n: usize) -> Vec<Verdict> {
        let op = self.op(&sent.op);
        let verdict = match answer {
            Answer::Transport {
                maybe_sent: true, ..
            } => Verdict::InDoubt,
            Answer::Transport {
                maybe_sent: false, ..
            } => retry(ErrorClass::Network),
            // Payonic has no idempotency: a 5xx may come after the work was done (a gateway's
            // timeout, a crash after the commit), so a money-moving request is in doubt, settled
            // through the Payment API, never sent again on a guess.
            Answer::Http { status, .. } if *status >= 500 && moves_money(&op.name) => {
                Verdict::InDoubt
            }
            // "Too many requests", "request timeout", or a 5xx of a request that moves nothing:
            // not taken, so sent again later.
            Answer::Http {
                status,
                retry_after,
                ..
            } if *status >= 500 || *status == 429 || *status == 408 => Verdict::RetryLater {
                class: match status {
                    429 => ErrorClass::RateLimited,
                    408 => ErrorClass::Network,
                    _ => ErrorClass::ServerError,
                },
                retry_after: *retry_after,
            },
            Answer::Http {
                status: 200, body, ..
            } => match serde_json::from_slice::<Value>(body) {
                Ok(v) => match (op.completion, text(&v, "responseid")) {
                    // Payout answers on the socket (L228, L254-260).
                    (Completion::Sync, _) => outcome(&v).unwrap_or(Verdict::InDoubt),
                    (_, Some(rid)) => Verdict::Accepted {
                        reference: format!("{rid}@{}", sent_payment(sent).unwrap_or_default()),
                    },
                    // A 200 without a responseid may still have been taken.
                    (_, None) => Verdict::InDoubt,
                },
                Err(_) => Verdict::InDoubt,
            },
            // 400, 401, 404 …: refused as a whole; nothing was done.
            Answer::Http { status, body, .. } => {
                let text = String::from_utf8_lossy(body);
                let why = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error").and_then(Value::as_str).map(String::from))
                    .unwrap_or_else(|| crate::mask::shorten(&text));
                Verdict::Failed {
                    code: format!("http-{status}"),
                    description: why,
                }
            }
        };
        vec![verdict; n]
    }

    fn reference_group(&self, reference: &str) -> (String, usize) {
        (reference.to_string(), 0)
    }

    /// A request accepted and still without its notification: ask the Payment API.
    fn group_lookup(&self, group: &str, seq: u32, now: &str) -> Request {
        let (rid, paymentid) = group.split_once('@').unwrap_or((group, ""));
        self.payment_lookup(paymentid, &trace(rid, &format!("lookup/{seq}/{now}")))
    }

    fn classify_group(&self, answer: &Answer, n: usize) -> Vec<Verdict> {
        vec![self.classify_key_lookup(answer); n]
    }

    fn key_lookup(
        &self,
        op: &str,
        key: &str,
        payload: &[Rendered],
        seq: u32,
        now: &str,
    ) -> Request {
        let paymentid = self
            .paymentid(self.op(op), key, payload)
            .unwrap_or_default();
        self.payment_lookup(&paymentid, &trace(key, &format!("lookup/{seq}/{now}")))
    }

    fn names_operation(&self, op: &str, claimed: &str) -> bool {
        operation_types(op)
            .iter()
            .any(|t| t.eq_ignore_ascii_case(claimed.trim()))
    }

    /// Taken: the answer comes as a notification (L283-289). A payment Payonic does not know
    /// (404: the one an MIT would have created, by its merchantpaymentid) has no operation of
    /// the node's: "not listed" (asked now; the runner stamps the time).
    fn classify_key_lookup(&self, answer: &Answer) -> Verdict {
        match answer {
            Answer::Http { status: 200, .. } => Verdict::Pending,
            Answer::Http { status: 404, .. } => Verdict::Unlisted { asked: 0 },
            Answer::Http { status: 429, .. } => retry(ErrorClass::RateLimited),
            Answer::Http { status, .. } if *status >= 500 => retry(ErrorClass::ServerError),
            _ => retry(ErrorClass::Network),
        }
    }

    fn lookup_followup(&self, _answer: &Answer) -> Option<Request> {
        None
    }

    fn lookup_reference(&self, answer: &Answer) -> Option<String> {
        match answer {
            Answer::Http {
                status: 200, body, ..
            } => text(&serde_json::from_slice::<Value>(body).ok()?, "responseid"),
            _ => None,
        }
    }

    /// Payonic documents no propagation delay or answer time: by default a notification is
    /// awaited a minute (provider time; `notifications.deadline`) before the Payment API is
    /// asked, then asked again after twice, four times … that wait (capped at the review
    /// interval), at most 5 times (`notifications.lookups`), then a person looks; an item in
    /// doubt is looked up after 5 s, then with the same backoff. "Not listed" counts only for
    /// lookups asked 10 minutes (`notifications.settle`) or more after the request, twice. A
    /// failure reported after a success is a contradiction for a person, not a reversal; a
    /// failure a notification reports is confirmed through the Payment API first.
    fn timings(&self, base: Timings) -> Timings {
        // `base.poll_every` is one second of provider time.
        let n = &self.flow.manifest.notifications;
        let deadline = n
            .deadline
            .map(|d| base.poll_every.mul_f64(d.as_secs_f64()))
            .unwrap_or(base.poll_every * 60);
        Timings {
            propagation: base.poll_every * 5,
            poll_every: deadline.max(std::time::Duration::from_millis(20)),
            review_every: base.review_every,
            max_lookups: 10,
            max_polls: Some(n.lookups.unwrap_or(5)),
            poll_backoff: 2.0,
            settle: n
                .settle
                .map(|d| base.poll_every.mul_f64(d.as_secs_f64()))
                .unwrap_or(base.poll_every * DEFAULT_SETTLE_SECS),
            reversals: false,
            confirm_failures: true,
        }
    }

    fn preflight(&self, _now: &str) -> Option<Request> {
        let t = self.flow.preflight.first()?;
        let op = self.flow.op(&t.op);
        Some(self.request(
            op,
            &Value::Object(Map::new()),
            &trace(&self.token, "health"),
        ))
    }

    /// The health document (L414-460): refuse to start when an API the batch uses reports an
    /// error.
    fn classify_preflight(&self, answer: &Answer) -> Preflight {
        let v = match answer {
            Answer::Http {
                status: 200, body, ..
            } => match serde_json::from_slice::<Value>(body) {
                Ok(v) => v,
                Err(e) => return Preflight::Retry(format!("the health answer is not JSON: {e}")),
            },
            Answer::Http { status, .. } => {
                return Preflight::Retry(format!("the health request was answered {status}"));
            }
            Answer::Transport { why, .. } => {
                return Preflight::Retry(format!("the health request got no answer: {why}"));
            }
        };
        let mut needed: Vec<String> = self
            .flow
            .all_tasks()
            .into_iter()
            .filter_map(|t| self.flow.op(&t.op).request.as_ref())
            .filter_map(|r| r.hosts.get("production"))
            .map(|h| {
                h.trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect();
        needed.push("api.payment.payonic.com".into());
        for api in v.get("api").and_then(Value::as_array).into_iter().flatten() {
            let name = text(api, "api").unwrap_or_default();
            if needed.contains(&name) && text(api, "status").as_deref() != Some("ok") {
                return Preflight::Failed(format!(
                    "Payonic reports {name} as {}: {}",
                    text(api, "status").unwrap_or_default(),
                    text(api, "msg").unwrap_or_default()
                ));
            }
        }
        let mut results = BTreeMap::new();
        results.insert(self.flow.preflight[0].id.clone(), v);
        Preflight::Done {
            balances: None,
            results,
        }
    }

    fn notification_paths(&self) -> &'static [&'static str] {
        &["/payonic/notify/{token}"]
    }

    fn notice(
        &self,
        path: &str,
        _headers: &axum::http::HeaderMap,
        _query: Option<&str>,
        body: &[u8],
    ) -> Notice {
        use subtle::ConstantTimeEq;
        let token = path.strip_prefix(NOTIFY_PREFIX).unwrap_or("");
        if !bool::from(token.as_bytes().ct_eq(self.token.as_bytes())) {
            return Notice::Refused(
                404,
                "a notification on a URL without the batch's token".into(),
            );
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return Notice::Refused(400, "a notification that is not JSON".into());
        };
        let ids: Vec<String> = ["paymentid", "merchantpaymentid"]
            .iter()
            .filter_map(|k| text(&v, k))
            .collect();
        // The Payment API's answer: the payment with its operations (L289-365).
        if let Some(ops) = v.get("operations").and_then(Value::as_array) {
            let mut found: Vec<(String, Verdict, super::Claims)> = ops
                .iter()
                .filter_map(|op| {
                    let note = text(op, "note").filter(|n| is_wire_key(n))?;
                    // Listed without an outcome yet: it exists, so it is not "not listed".
                    let verdict = outcome_in(Some(&v), op).unwrap_or(Verdict::Pending);
                    Some((note, verdict, listing_claims(&v, op)))
                })
                .collect();
            // A payment an MIT created carries the MIT's key as its merchantpaymentid (L39,
            // L98): its authorization is that MIT's outcome.
            if let Some(mpid) = text(&v, "merchantpaymentid").filter(|m| is_wire_key(m))
                && !found.iter().any(|(k, ..)| *k == mpid)
                && let Some(auth) = ops.iter().find(|op| {
                    let ty = text(op, "operationtype").unwrap_or_default();
                    operation_types("mit")
                        .iter()
                        .any(|t| t.eq_ignore_ascii_case(ty.trim()))
                })
            {
                let verdict = outcome_in(Some(&v), auth).unwrap_or(Verdict::Pending);
                found.push((mpid, verdict, created_claims(&v, auth)));
            }
            // A reconciliation item's own answer: the payment as Payonic has it.
            let answered = text(&v, "responseid").map(|rid| {
                let mut about = BTreeMap::new();
                for (k, name) in [
                    ("paymentid", "paymentId"),
                    ("merchantpaymentid", "merchantpaymentid"),
                    ("balance", "balance"),
                    ("amount", "amount"),
                    ("currency", "currency"),
                ] {
                    if let Some(s) = text(&v, k) {
                        about.insert(name.to_string(), s);
                    }
                }
                about.insert("operations".into(), ops.len().to_string());
                about.insert("responseid".into(), rid.clone());
                let result = Some(result_of(Some(&v), &Value::Object(Map::new())));
                (rid, Verdict::Succeeded { ids: about, result })
            });
            let references = match &answered {
                Some((rid, _)) => ids.iter().map(|p| format!("{rid}@{p}")).collect(),
                None => Vec::new(),
            };
            return Notice::Subject {
                subjects: ids,
                found,
                answered,
                references,
            };
        }
        // An operation's outcome (L86-95, L124-131, L164-171, L204-211).
        // An MIT's names the payment it created and, as newmerchantpaymentid, the MIT's own
        // merchantpaymentid (L85-86, L98): the reference its request was accepted under.
        let ids: Vec<String> = ids
            .into_iter()
            .chain(text(&v, "newmerchantpaymentid"))
            .collect();
        match (text(&v, "responseid"), outcome(&v)) {
            (Some(rid), Some(verdict)) => Notice::Reference {
                candidates: ids.iter().map(|p| format!("{rid}@{p}")).collect(),
                verdict,
                claims: claims(&v, &v),
            },
            // Life cycle notifications (L461-472) and anything else: nothing to act on.
            _ => Notice::Ignored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Registry;

    /// The refunds example as an adapter with a listener at https://acme.example/payrun.
    fn refunds() -> Payonic {
        let p = crate::pipeline::prepare(
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/batches/refunds-payonic/manifest.yaml"
            )),
            &Registry::Embedded,
        )
        .map_err(|f| f.diagnostics)
        .expect("the example compiles");
        Payonic {
            flow: Arc::new(p.flow),
            api_key: "k123".into(),
            listener: Some("https://acme.example/payrun".into()),
            token: "0123456789abcdef0123456789abcdef".into(),
            per_operation_hosts: false,
            note_secret: Some(b"a secret of the batch".to_vec()),
        }
    }

    fn keep(v: serde_json::Value) -> Vec<Rendered> {
        vec![super::super::keep(&v)]
    }

    #[test]
    fn a_refund_goes_to_its_payments_path_with_the_key_in_note_and_payruns_notification_url() {
        let a = refunds();
        let payload = keep(serde_json::json!({
            "paymentid": "abc123", "amount": 2500, "currency": "DKK",
            "note": "aa11", "notificationurl": crate::compile::NOTIFY_URL
        }));
        let r = a.submit(
            &[Outgoing {
                key: "k-1",
                op: "refund",
                payload: &payload,
                attempt: 1,
            }],
            "now",
        );
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.path, "/api/abc123/refund");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"amount": 2500, "note": "aa11",
                "notificationurl": "https://acme.example/payrun/payonic/notify/0123456789abcdef0123456789abcdef"}),
            "the path variable and the local currency are not in the body"
        );
        assert!(r.headers.contains(&("Authorization", "Basic k123".into())));
        assert!(
            r.headers
                .iter()
                .any(|(h, v)| *h == "TraceApi" && v.len() == 32)
        );
        let accepted = a.classify_submit(
            &r,
            &Answer::Http {
                status: 200,
                body: br#"{"responseid": "r9"}"#.to_vec(),
                retry_after: None,
            },
            1,
        );
        assert_eq!(
            accepted,
            vec![Verdict::Accepted {
                reference: "r9@abc123".into()
            }]
        );
    }

    #[test]
    fn a_notification_is_taken_only_on_the_tokened_url_and_names_its_payment() {
        let a = refunds();
        let h = axum::http::HeaderMap::new();
        let body = br#"{"responseid": "r9", "paymentid": "abc123", "merchantpaymentid": "m1", "responsecode": "00", "status": "approved"}"#;
        assert!(matches!(
            a.notice("/payonic/notify/wrong", &h, None, body),
            Notice::Refused(404, _)
        ));
        match a.notice(
            "/payonic/notify/0123456789abcdef0123456789abcdef",
            &h,
            None,
            body,
        ) {
            Notice::Reference {
                candidates,
                verdict,
                claims,
            } => {
                assert!(
                    claims.iter().all(|(f, _)| f == "paymentid"),
                    "the document's body carries no amount: {claims:?}"
                );
                assert_eq!(candidates, ["r9@abc123", "r9@m1"]);
                assert!(matches!(verdict, Verdict::Succeeded { .. }));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_payment_apis_answer_lists_payruns_operations_by_the_key_in_their_note() {
        let a = refunds();
        let h = axum::http::HeaderMap::new();
        let key = "a6431184f3088de2bb16f2aa4cd2153a";
        let body = serde_json::json!({
            "paymentid": "abc123", "merchantpaymentid": "m1", "responseid": "r2",
            "operations": [
                {"operationid": "o1", "operationtype": "capture", "note": "a capture", "responsecode": "00", "status": "approved"},
                {"operationid": "o2", "operationtype": "refund", "note": key, "amount": "500", "currency": "DKK", "responsecode": "51", "status": "declined"}
            ]
        });
        match a.notice(
            "/payonic/notify/0123456789abcdef0123456789abcdef",
            &h,
            None,
            &serde_json::to_vec(&body).unwrap(),
        ) {
            Notice::Subject {
                subjects, found, ..
            } => {
                assert_eq!(subjects, ["abc123", "m1"]);
                assert_eq!(
                    found,
                    vec![(
                        key.to_string(),
                        Verdict::Failed {
                            code: "51".into(),
                            description: "declined".into()
                        },
                        vec![
                            ("paymentid".to_string(), "abc123".to_string()),
                            ("paymentid".to_string(), "m1".to_string()),
                            ("amount".to_string(), "500".to_string()),
                            ("currency".to_string(), "DKK".to_string()),
                            (
                                super::super::OPERATION_CLAIM.to_string(),
                                "refund".to_string()
                            )
                        ]
                    )]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_payment_id_is_read_from_a_request_path() {
        assert_eq!(path_paymentid("/api/abc123/refund"), Some("abc123"));
        assert_eq!(
            path_paymentid("https://api.refund.payonic.com/api/abc123/refund"),
            Some("abc123")
        );
        assert_eq!(path_paymentid("/api/health"), None);
    }

    #[test]
    fn an_approved_operation_succeeds_and_a_declined_one_fails_with_its_code() {
        let ok = serde_json::json!({"responseid": "r1", "responsecode": "00", "status": "approved", "authorizationcode": "654321"});
        assert!(
            matches!(outcome(&ok), Some(Verdict::Succeeded { ids, .. }) if ids["authorizationcode"] == "654321")
        );
        let no =
            serde_json::json!({"responseid": "r1", "responsecode": "51", "status": "declined"});
        assert_eq!(
            outcome(&no),
            Some(Verdict::Failed {
                code: "51".into(),
                description: "declined".into()
            })
        );
        assert_eq!(outcome(&serde_json::json!({"responseid": "r1"})), None);
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer::Http {
            status,
            body: body.as_bytes().to_vec(),
            retry_after: None,
        }
    }

    #[test]
    fn a_5xx_to_a_money_moving_request_is_in_doubt_never_a_retry() {
        let a = refunds();
        for status in [500, 502, 503, 504] {
            assert_eq!(
                a.classify_submit(
                    &sent_to("/api/p1/refund"),
                    &answer(status, r#"{"error":"x"}"#),
                    1
                ),
                vec![Verdict::InDoubt],
                "{status}"
            );
        }
        assert!(matches!(
            a.classify_submit(&sent_to("/api/p1/refund"), &answer(429, "{}"), 1)[0],
            Verdict::RetryLater { .. }
        ));
        assert!(matches!(
            a.classify_submit(
                &sent_to("/api/p1/refund"),
                &answer(400, r#"{"error":"amount"}"#),
                1
            )[0],
            Verdict::Failed { .. }
        ));
    }

    #[test]
    fn pending_statuses_wait_numeric_approvals_succeed_and_disagreements_go_to_review() {
        let o = |v: serde_json::Value| outcome(&v);
        assert_eq!(
            o(serde_json::json!({"status": "pending"})),
            Some(Verdict::Pending)
        );
        assert_eq!(
            o(serde_json::json!({"status": "processing", "responsecode": "51"})),
            Some(Verdict::Pending)
        );
        for ok in [
            serde_json::json!({"status": "approved", "responsecode": 0}),
            serde_json::json!({"status": "approved"}),
            serde_json::json!({"status": "Approved", "responsecode": "00"}),
            serde_json::json!({"responsecode": "00"}),
        ] {
            assert!(
                matches!(o(ok.clone()), Some(Verdict::Succeeded { .. })),
                "{ok}"
            );
        }
        assert_eq!(
            o(serde_json::json!({"status": "declined", "responsecode": 51})),
            Some(Verdict::Failed {
                code: "51".into(),
                description: "declined".into()
            })
        );
        for odd in [
            serde_json::json!({"status": "approved", "responsecode": "51"}),
            serde_json::json!({"status": "declined", "responsecode": "00"}),
        ] {
            assert!(
                matches!(o(odd.clone()), Some(Verdict::NeedsReview { .. })),
                "{odd}"
            );
        }
    }

    #[test]
    fn the_note_is_keyed_with_the_batch_secret_and_each_request_has_its_own_trace() {
        let a = refunds();
        let payload = keep(serde_json::json!({
            "paymentid": "abc123", "amount": 2500, "currency": "DKK",
            "note": crate::keys::KEYED, "notificationurl": crate::compile::NOTIFY_URL
        }));
        let key = "a6431184-f308-8de2-bb16-f2aa4cd2153a";
        let send = |attempt| {
            a.submit(
                &[Outgoing {
                    key,
                    op: "refund",
                    payload: &payload,
                    attempt,
                }],
                "now",
            )
        };
        let (first, again) = (send(1), send(2));
        let note = serde_json::from_slice::<Value>(&first.body).unwrap()["note"].clone();
        assert_eq!(note, Value::String(a.wire_key(key)));
        assert_ne!(a.wire_key(key), key.replace('-', ""), "not the plain key");
        assert_eq!(a.wire_key(key).len(), 32);
        assert_ne!(first.trace, again.trace, "TraceApi is unique per request");
        let l1 = a.key_lookup("refund", key, &payload, 3, "2026-12-01T00:00:00.001Z");
        let l2 = a.key_lookup("refund", key, &payload, 3, "2026-12-01T00:00:00.002Z");
        assert_ne!(l1.trace, l2.trace);
    }

    #[test]
    fn a_payment_api_listing_must_show_the_payment_amount_currency_and_type_of_the_operation() {
        let payment = serde_json::json!({"paymentid": "p1"});
        let full =
            serde_json::json!({"operationtype": "refund", "amount": "500", "currency": "DKK"});
        assert!(
            listing_claims(&payment, &full)
                .iter()
                .all(|(f, _)| !f.starts_with('!'))
        );
        let bare = serde_json::json!({"note": "k", "responsecode": "00"});
        let c = listing_claims(&serde_json::json!({}), &bare);
        let unmet: Vec<&str> = c
            .iter()
            .filter(|(f, _)| f.starts_with('!'))
            .map(|(f, _)| f.as_str())
            .collect();
        assert_eq!(unmet, ["!paymentid", "!amount", "!currency"]);
        // The kind of operation is the node's: a refund listed for a payout contradicts it.
        let a = refunds();
        let sent = [super::super::keep(
            &serde_json::json!({"paymentid": "p1", "amount": 500}),
        )];
        let claims = listing_claims(&payment, &full);
        let as_node =
            |op: &str| super::super::contradiction(&sent, &claims, &|ty| a.names_operation(op, ty));
        assert_eq!(as_node("refund"), None);
        assert_eq!(
            as_node("payout"),
            Some("it lists a `refund` operation, not the item's".into())
        );
        assert!(a.names_operation("mit", "authorize"));
        assert!(a.names_operation("void", "cancel"));
    }

    #[test]
    fn an_mit_is_known_by_the_merchantpaymentid_of_the_payment_it_creates() {
        let a = refunds();
        let key = "a6431184-f308-8de2-bb16-f2aa4cd2153a";
        let wire = a.wire_key(key);
        let payload = [super::super::keep(&serde_json::json!({
            "merchantid": "m", "paymentid": "parent1", "merchantpaymentid": crate::keys::KEYED,
            "amount": 1095, "currency": "DKK", "notificationurl": crate::compile::NOTIFY_URL
        }))];
        let r = a.submit(
            &[Outgoing {
                key,
                op: "mit",
                payload: &payload,
                attempt: 1,
            }],
            "now",
        );
        assert_eq!(r.path, "/api/mit");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["merchantpaymentid"], Value::String(wire.clone()));
        // Accepted under the payment it creates, as its notification names it.
        let accepted = a.classify_submit(&r, &answer(200, r#"{"responseid": "r7"}"#), 1);
        assert_eq!(
            accepted,
            vec![Verdict::Accepted {
                reference: format!("r7@{wire}")
            }]
        );
        let h = axum::http::HeaderMap::new();
        let path = "/payonic/notify/0123456789abcdef0123456789abcdef";
        let note = serde_json::json!({"responseid": "r7", "paymentid": "new1",
            "newmerchantpaymentid": wire, "responsecode": "00", "status": "approved"});
        match a.notice(path, &h, None, &serde_json::to_vec(&note).unwrap()) {
            Notice::Reference {
                candidates,
                claims,
                verdict: Verdict::Succeeded { result, .. },
            } => {
                assert!(candidates.contains(&format!("r7@{wire}")), "{candidates:?}");
                assert!(
                    claims.iter().all(|(f, _)| f != "paymentid"),
                    "the new payment is not the one the MIT named: {claims:?}"
                );
                assert_eq!(result.unwrap()["paymentid"], "new1", "what a capture reads");
            }
            other => panic!("{other:?}"),
        }
        // Lost: looked up as the payment it would have created; unknown there, not listed.
        let lookup = a.key_lookup("mit", key, &payload, 1, "now");
        assert_eq!(lookup.path, format!("/api/{wire}/payment"));
        assert_eq!(
            a.classify_key_lookup(&answer(
                404,
                r#"{"error": "unknown payment", "field": "paymentid"}"#
            )),
            Verdict::Unlisted { asked: 0 }
        );
        // Listed: the payment carries the MIT's key as its merchantpaymentid.
        let listing = serde_json::json!({"paymentid": "new1", "merchantpaymentid": wire,
            "parentpaymentid": "parent1", "responseid": "r8", "amount": 1095, "currency": "DKK",
            "operations": [{"operationid": "o1", "operationtype": "authorize", "amount": "1095",
                "currency": "DKK", "note": "", "responsecode": "00", "status": "approved"}]});
        match a.notice(path, &h, None, &serde_json::to_vec(&listing).unwrap()) {
            Notice::Subject { found, .. } => {
                assert_eq!(found.len(), 1, "{found:?}");
                let (k, verdict, claims) = &found[0];
                assert_eq!(*k, wire);
                assert!(matches!(verdict, Verdict::Succeeded { .. }));
                let sent = [super::super::keep(
                    &serde_json::json!({"paymentid": "parent1", "amount": 1095, "currency": "DKK"}),
                )];
                assert_eq!(
                    super::super::contradiction(&sent, claims, &|ty| a.names_operation("mit", ty)),
                    None
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// A request as `submit` would have made it, to `path`.
    fn sent_to(path: &str) -> Request {
        Request {
            method: Method::Post,
            path: path.into(),
            endpoint: "refund",
            headers: Vec::new(),
            body: Vec::new(),
            trace: None,
            op: "refund".into(),
        }
    }
}

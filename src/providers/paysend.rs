//! The Paysend Enterprise client adapter: payrun's item trees to `POST /processing` requests,
//! and Paysend's answers, lookups and webhooks back to provider-neutral `Verdict`s. Pure
//! functions: the runner does the I/O. Wire facts with document lines are in
//! docs/paysend-wire.md; this module shares no code with the sandbox's emulation.

use super::{Adapter, Method, Notice, Outgoing, Preflight, Rendered, Request};
use crate::compile::{Flow, Task};
use crate::manifest::Signature;
use crate::validate::ItemRow;
use crate::wire::{ErrorClass, Verdict};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The documented "retry later" answer (HTTP 404, L185).
const BUSY: &str = "Sorry. Can't accept your request now.";

/// One task and its children as Paysend takes them, with real (unmasked) values.
fn tree(flow: &Flow, t: &Task, item: &ItemRow, key: &str) -> Value {
    let mut v =
        json!({"type": t.op, "payload": crate::plan::render_payload(flow, t, item, key, false)});
    // A delayed task goes in a request of its own, later (see `step_trees`).
    for (link, c) in t.children().filter(|(_, c)| c.delay.is_none()) {
        let branch = v
            .as_object_mut()
            .expect("object")
            .entry(link.as_str())
            .or_insert_with(|| Value::Array(vec![]));
        branch
            .as_array_mut()
            .expect("array")
            .push(tree(flow, c, item, key));
    }
    v
}

/// The trees of an item's delayed steps (`Flow::steps` order), one per step. References to
/// the results of the tasks they follow stay `${result.<id>.<path>}` until they are sent.
pub fn step_trees(flow: &Flow, item: &ItemRow, key: &str) -> Vec<Value> {
    flow.steps()
        .iter()
        .map(|s| tree(flow, s.task, item, key))
        .collect()
}

/// One item's task trees as Paysend takes them (`payload.tasks[]` elements).
pub fn item_tree(flow: &Flow, item: &ItemRow, key: &str) -> Vec<Value> {
    flow.tasks
        .iter()
        .map(|t| tree(flow, t, item, key))
        .collect()
}

/// A signed request, ready to send.
#[derive(Debug, Clone)]
pub struct Submission {
    pub request_id: String,
    pub body: Vec<u8>,
    pub signature: String,
}

/// The request id of a pack of items: the same items always give the same id, so resending a
/// pack is a replay to Paysend (L7021-7036), never a second request.
pub fn request_id(item_keys: &[&str]) -> String {
    let mut keys: Vec<&str> = item_keys.to_vec();
    keys.sort_unstable();
    crate::keys::task_key("paysend/request", &keys.join(","))
}

/// Builds and signs `POST /processing` for a pack of item trees (one root task per tree).
pub fn submission(
    partner_id: &str,
    inbound_key: &str,
    item_keys: &[&str],
    trees: Vec<Value>,
    callback: Option<&str>,
    date: &str,
) -> Submission {
    let body = submission_body(partner_id, item_keys, trees, callback, date);
    let signature = sign(&body, inbound_key);
    Submission {
        request_id: request_id(item_keys),
        body,
        signature,
    }
}

fn submission_body(
    partner_id: &str,
    item_keys: &[&str],
    trees: Vec<Value>,
    callback: Option<&str>,
    date: &str,
) -> Vec<u8> {
    let mut service = json!({"sync": false});
    if let Some(uri) = callback {
        service["result"] = json!([{"type": "web", "uri": uri, "method": "POST"}]);
    }
    let body = json!({
        "header": {"request": {"id": request_id(item_keys), "date": date}, "service": service},
        "payload": {"partner": {"identifier": partner_id}, "tasks": trees}
    });
    serde_json::to_vec(&body).expect("JSON values serialise")
}

/// X-OPP-Signature: lowercase hex SHA-256 of the data followed by the inbound key (L7010-7016).
pub fn sign(data: &[u8], inbound_key: &str) -> String {
    sign_with(Signature::Sha256, data, inbound_key)
}

/// X-OPP-Signature with the digest the manifest chose (SHA-256 or SHA-512, L7010-7016).
pub fn sign_with(alg: Signature, data: &[u8], inbound_key: &str) -> String {
    use sha2::{Digest, Sha256, Sha512};
    match alg {
        Signature::Sha256 => crate::keys::hex_lower(
            &Sha256::new()
                .chain_update(data)
                .chain_update(inbound_key.as_bytes())
                .finalize(),
        ),
        Signature::Sha512 => crate::keys::hex_lower(
            &Sha512::new()
                .chain_update(data)
                .chain_update(inbound_key.as_bytes())
                .finalize(),
        ),
    }
}

/// Where the runner's listener takes Paysend's expanded webhooks and basic callbacks.
/// Paysend in the registry of providers `payrun run` drives.
pub const PLUGIN: super::Plugin = super::Plugin {
    name: "paysend",
    adapter,
    optional_credentials,
    listening,
    rehearse,
};

fn adapter(s: &super::Setup<'_>) -> Result<Arc<dyn super::Adapter>, String> {
    Ok(Arc::new(Paysend {
        flow: Arc::new(s.flow.clone()),
        partner_id: super::need(s.credentials, "partner_id")?,
        inbound_key: super::need(s.credentials, "inbound_key")?,
        outbound_key: s.credentials.get("outbound_key").cloned(),
        callback_url: s
            .callback_url
            .as_ref()
            .map(|base| format!("{base}{CALLBACK_PATH}")),
        signature: s.flow.manifest.signature,
    }))
}

/// The outbound key verifies webhooks: a batch without them runs without it.
fn optional_credentials(webhooks: bool) -> &'static [&'static str] {
    match webhooks {
        true => &[],
        false => &["outbound_key"],
    }
}

fn listening(s: &super::Setup<'_>, public: &str) -> Result<String, String> {
    if !s.credentials.contains_key("outbound_key") {
        return Err("webhooks are verified with the outbound key: set the variable named by credentials.outbound_key".into());
    }
    Ok(format!(
        "callbacks to {public}{CALLBACK_PATH}; set {public}{WEBHOOK_PATH} as the expanded webhook URL with Paysend"
    ))
}

/// A rehearsal: the sandbox posts webhooks to payrun's listener, and accepts its test keys.
fn rehearse(
    cfg: &mut crate::sandbox::SandboxConfig,
    r: &super::Rehearsal<'_>,
) -> super::Credentials {
    if let Some(l) = r.listener {
        cfg.paysend.webhook_url = Some(format!("{l}{WEBHOOK_PATH}"));
    }
    [
        ("partner_id", &cfg.paysend.partner_id),
        ("inbound_key", &cfg.paysend.inbound_key),
        ("outbound_key", &cfg.paysend.outbound_key),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.clone()))
    .collect()
}

pub const WEBHOOK_PATH: &str = "/paysend/webhook";
pub const CALLBACK_PATH: &str = "/paysend/callback";

/// Paysend as the runner sees it: who we are, how we sign, where callbacks go.
pub struct Paysend {
    pub flow: Arc<Flow>,
    pub partner_id: String,
    pub inbound_key: String,
    /// Verifies expanded webhooks; None when webhooks are not used.
    pub outbound_key: Option<String>,
    /// `header.service.result` of submissions: where basic callbacks go.
    pub callback_url: Option<String>,
    pub signature: Signature,
}

impl Paysend {
    fn post(&self, path: &str, endpoint: &'static str, body: Vec<u8>) -> Request {
        let signature = sign_with(self.signature, &body, &self.inbound_key);
        Request {
            method: Method::Post,
            path: path.to_string(),
            endpoint,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("X-OPP-Signature", signature),
            ],
            body,
            trace: None,
            op: endpoint.to_string(),
        }
    }
}

impl Adapter for Paysend {
    /// Paysend answers JSON (an envelope, or an error object), and "busy" as a bare 404 text.
    fn speaks(&self, status: u16, body: &[u8]) -> bool {
        (status == 404 && String::from_utf8_lossy(body).trim() == BUSY)
            || serde_json::from_slice::<serde_json::Map<String, Value>>(body).is_ok()
    }

    fn pack_limit(&self) -> usize {
        self.flow.limits.tasks_per_request.max(1) as usize
    }

    fn submit(&self, items: &[Outgoing<'_>], now: &str) -> Request {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            header: Value,
            payload: Payload<'a>,
        }
        #[derive(serde::Serialize)]
        struct Payload<'a> {
            partner: Value,
            tasks: Vec<&'a serde_json::value::RawValue>,
        }
        let keys: Vec<&str> = items.iter().map(|o| o.key).collect();
        let mut service = json!({"sync": false});
        if let Some(uri) = &self.callback_url {
            service["result"] = json!([{"type": "web", "uri": uri, "method": "POST"}]);
        }
        let body = Body {
            header: json!({"request": {"id": request_id(&keys), "date": now}, "service": service}),
            payload: Payload {
                partner: json!({"identifier": self.partner_id}),
                tasks: items
                    .iter()
                    .flat_map(|o| o.payload.iter().map(|r| r.as_ref()))
                    .collect(),
            },
        };
        let body = serde_json::to_vec(&body).expect("JSON values serialise");
        self.post("/processing", "processing", body)
    }

    fn classify_submit(&self, _sent: &Request, answer: &Answer, n: usize) -> Vec<Verdict> {
        // The items of a pack share its globalId; each keeps its place in the pack, which is
        // where its tree sits in every status answer.
        classify_submission(&self.flow, answer, n)
            .into_iter()
            .enumerate()
            .map(|(pos, v)| match v {
                Verdict::Accepted { reference } => Verdict::Accepted {
                    reference: format!("{reference}#{pos}"),
                },
                v => v,
            })
            .collect()
    }

    fn reference_group(&self, reference: &str) -> (String, usize) {
        match reference.rsplit_once('#') {
            Some((global, pos)) => (global.to_string(), pos.parse().unwrap_or(0)),
            None => (reference.to_string(), 0),
        }
    }

    fn group_lookup(&self, group: &str, _seq: u32, _now: &str) -> Request {
        Request {
            method: Method::Get,
            path: format!("/processing/status/{group}"),
            endpoint: "status",
            headers: vec![(
                "X-OPP-Signature",
                sign_with(self.signature, group.as_bytes(), &self.inbound_key),
            )],
            body: Vec::new(),
            trace: None,
            op: "processing".into(),
        }
    }

    fn classify_group(&self, answer: &Answer, n: usize) -> Vec<Verdict> {
        match answer {
            Answer::Http {
                status: 200, body, ..
            } => match serde_json::from_slice::<Value>(body) {
                Ok(v) => classify_envelope(&self.flow, &v, n),
                Err(_) => vec![Verdict::InDoubt; n],
            },
            // Outside its window the globalId is unknown: look the keys up instead.
            Answer::Http { status: 400, .. } => vec![Verdict::Unknown; n],
            Answer::Http {
                status,
                retry_after,
                ..
            } => vec![
                Verdict::RetryLater {
                    class: if *status == 404 {
                        ErrorClass::RateLimited
                    } else {
                        ErrorClass::ServerError
                    },
                    retry_after: *retry_after,
                };
                n
            ],
            Answer::Transport { .. } => vec![
                Verdict::RetryLater {
                    class: ErrorClass::Network,
                    retry_after: None
                };
                n
            ],
        }
    }

    fn key_lookup(
        &self,
        _op: &str,
        key: &str,
        _payload: &[Rendered],
        seq: u32,
        now: &str,
    ) -> Request {
        self.post(
            "/processing",
            "processing",
            lookup_body(&self.partner_id, key, seq, now),
        )
    }

    fn classify_key_lookup(&self, answer: &Answer) -> Verdict {
        classify_lookup(answer)
    }

    fn lookup_followup(&self, answer: &Answer) -> Option<Request> {
        let Answer::Http {
            status: 200, body, ..
        } = answer
        else {
            return None;
        };
        let v: Value = serde_json::from_slice(body).ok()?;
        let running = matches!(
            task_verdict(v.pointer("/payload/tasks/0/result"), ""),
            Verdict::Accepted { .. }
        );
        let global = v.pointer("/header/response/globalId")?.as_str()?;
        running.then(|| self.group_lookup(global, 0, ""))
    }

    fn preflight(&self, now: &str) -> Option<Request> {
        let sub = preflight(&self.flow, &self.partner_id, &self.inbound_key, now)?;
        Some(self.post("/processing", "processing", sub.body))
    }

    fn classify_preflight(&self, answer: &Answer) -> Preflight {
        let (status, body) = match answer {
            Answer::Http { status, body, .. } => (*status, body),
            Answer::Transport { why, .. } => {
                return Preflight::Retry(format!("the preflight request got no answer: {why}"));
            }
        };
        let v = match serde_json::from_slice::<Value>(body) {
            Ok(v) if matches!(status, 200 | 400 | 401) => v,
            _ => {
                return Preflight::Retry(format!(
                    "the preflight request was answered {status}: {}",
                    crate::mask::shorten(&String::from_utf8_lossy(body))
                ));
            }
        };
        if v.pointer("/result/status").and_then(Value::as_str) != Some("Finished") {
            return match v
                .pointer("/header/response/globalId")
                .and_then(Value::as_str)
            {
                // Not finished within the sync wait: ask by globalId.
                Some(global) if status == 200 => Preflight::Again(self.group_lookup(global, 0, "")),
                _ => Preflight::Failed(format!(
                    "the preflight request was refused ({status}): {}",
                    v.get("comment").and_then(Value::as_str).unwrap_or("")
                )),
            };
        }
        let mut balances: Option<BTreeMap<String, rust_decimal::Decimal>> = None;
        let mut results = BTreeMap::new();
        // Results by task id: the answer's trees mirror the preflight templates.
        fn by_id(t: &Task, v: &Value, out: &mut BTreeMap<String, Value>) {
            if let Some(r) = v.get("result") {
                out.insert(t.id.clone(), r.clone());
            }
            let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
            for (link, c) in t.children() {
                let n = seen.entry(link.as_str()).or_insert(0);
                if let Some(cv) = v.get(link.as_str()).and_then(|a| a.get(*n)) {
                    by_id(c, cv, out);
                }
                *n += 1;
            }
        }
        let answered = v
            .pointer("/payload/tasks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (t, tv) in self.flow.preflight.iter().zip(answered.iter()) {
            by_id(t, tv, &mut results);
        }
        for (ty, result) in preflight_results(&v) {
            if !matches!(task_verdict(Some(&result), ""), Verdict::Succeeded { .. }) {
                return Preflight::Failed(format!(
                    "preflight {ty} failed: {} {}",
                    result.get("code").unwrap_or(&Value::Null),
                    result.get("comment").and_then(Value::as_str).unwrap_or("")
                ));
            }
            if ty == "getBalance" {
                let known = balances.get_or_insert_with(BTreeMap::new);
                for (currency, amount) in result
                    .pointer("/data/balances")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    if let Ok(d) =
                        rust_decimal::Decimal::from_str_exact(&amount.to_string().replace('"', ""))
                    {
                        known.insert(currency.to_ascii_uppercase(), d);
                    }
                }
            }
        }
        Preflight::Done { balances, results }
    }

    fn notification_paths(&self) -> &'static [&'static str] {
        &[WEBHOOK_PATH, CALLBACK_PATH]
    }

    fn notice(
        &self,
        path: &str,
        headers: &axum::http::HeaderMap,
        query: Option<&str>,
        body: &[u8],
    ) -> Notice {
        match path {
            WEBHOOK_PATH => {
                let Some(key) = &self.outbound_key else {
                    return Notice::Refused(404, "expanded webhooks are not expected".into());
                };
                let sig = headers
                    .get("x-opp-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !webhook_is_authentic(body, sig, key) {
                    return Notice::Refused(401, "a webhook with a wrong signature".into());
                }
                match webhook_verdict(body) {
                    Some((key, verdict)) => Notice::Item { key, verdict },
                    None => Notice::Ignored,
                }
            }
            // Basic callbacks carry only the globalId (GET query or form body, L598-611).
            _ => {
                let from_query = query.and_then(|q| {
                    q.split('&')
                        .find_map(|p| p.strip_prefix("globalId=").map(String::from))
                });
                let from_body = std::str::from_utf8(body)
                    .ok()
                    .and_then(|b| b.trim().strip_prefix("globalId=").map(String::from));
                match from_query.or(from_body) {
                    Some(g) if !g.is_empty() => Notice::Group(g),
                    _ => Notice::Ignored,
                }
            }
        }
    }
}

pub use super::Answer;

/// The verdict of one task `result` object. The document gives three shapes of a result:
/// the examples (`"status": "Success", "code": 0`), the status table (L612-617: code 0
/// Accepted, 1 InProgress, 2 Success, 3 Error, 5 manual action) and the Sandbox Mock Service
/// (L222-235: `"status": "string"` — a placeholder — with `"code": 0` meaning success, data
/// with a paymentId). On an error the wire carries the processing error code itself. Read
/// together (docs/paysend-wire.md): a known status decides, its code must not contradict it;
/// a placeholder status defers to the code. When status and code disagree the item goes to
/// review — never to failed: a false `failed` invites a second payment.
pub fn task_verdict(result: Option<&Value>, global_id: &str) -> Verdict {
    let Some(r) = result else {
        return Verdict::Accepted {
            reference: global_id.to_string(),
        };
    };
    let status = r.get("status").and_then(Value::as_str).unwrap_or("");
    let code = match r.get("code") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let comment = r
        .get("comment")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let accepted = || Verdict::Accepted {
        reference: global_id.to_string(),
    };
    let succeeded = || {
        let mut ids = BTreeMap::new();
        ids.insert("globalId".to_string(), global_id.to_string());
        for k in ["paymentId", "traceId", "rrn", "arn"] {
            if let Some(v) = r.pointer(&format!("/data/{k}")).and_then(Value::as_str) {
                ids.insert(k.to_string(), v.to_string());
            }
        }
        Verdict::Succeeded {
            ids,
            result: Some(r.clone()),
        }
    };
    let disagree = |why: &str| Verdict::NeedsReview {
        code: code.map_or_else(|| "no-code".to_string(), |c| c.to_string()),
        description: format!(
            "the answer contradicts itself: status {status:?} with code {}{why}",
            code.map_or_else(|| "none".to_string(), |c| c.to_string())
        ),
    };
    let by_error_code = |c: u64| match c {
        // 3011: already paid with this invoiceId — reconcile, never a failure.
        3011 => Verdict::AlreadyExists,
        // 9999 is "Not final"; 5 waits for manual action (sanctions review, RFI).
        9999 | 5 => Verdict::NeedsReview {
            code: c.to_string(),
            description: comment.clone(),
        },
        3006 => Verdict::Unknown,
        _ => Verdict::Failed {
            code: c.to_string(),
            description: comment.clone(),
        },
    };
    let has_data = r
        .get("data")
        .and_then(Value::as_object)
        .is_some_and(|d| !d.is_empty());
    match status.to_ascii_lowercase().as_str() {
        "accepted" | "inprogress" => accepted(),
        // A success with code 0 (examples) or 2 (status table); an error code contradicts it.
        "success" => match code {
            None | Some(0) | Some(2) => succeeded(),
            Some(_) => disagree(""),
        },
        "error" => match code {
            // "Error" with a success code (0 as the Mock Service reads it, 2 by the table).
            Some(0) | Some(2) => disagree(""),
            // 3 is the table's bare "Error status", without the processing code that says why.
            None | Some(3) => disagree(": no processing error code"),
            Some(c) => by_error_code(c),
        },
        // A placeholder ("string") or no status: the code decides where the readings agree.
        _ => match code {
            // The Mock Service's success (code 0 with data), or the table's 2.
            Some(0) if has_data => succeeded(),
            Some(2) => succeeded(),
            // The table's Accepted / InProgress: still running, asked again.
            Some(0) | Some(1) => accepted(),
            Some(3011) => Verdict::AlreadyExists,
            Some(9999) | Some(5) => by_error_code(code.unwrap_or(5)),
            _ => disagree(": no status that says how it ended"),
        },
    }
}

/// The verdict for one item from its task tree in an answer: the first payout task that ran
/// decides; if none ran, the first error on the way decides; otherwise it is still running.
/// The answer's tree is read by its task types, so it works for an item's first request and for
/// its delayed steps alike.
pub fn tree_verdict(flow: &Flow, tree: &Value, global_id: &str) -> Verdict {
    let is_payout = |v: &Value| {
        v.get("type")
            .and_then(Value::as_str)
            .and_then(|t| flow.provider.operation(t))
            .is_some_and(|o| o.role == crate::schema::Role::Payout)
    };
    fn first_payout<'a>(v: &'a Value, is_payout: &dyn Fn(&Value) -> bool) -> Option<&'a Value> {
        if is_payout(v)
            && let Some(r) = v.get("result")
        {
            return Some(r);
        }
        for b in ["success", "fail", "always"] {
            for c in v.get(b).and_then(Value::as_array).into_iter().flatten() {
                if let Some(r) = first_payout(c, is_payout) {
                    return Some(r);
                }
            }
        }
        None
    }
    if let Some(r) = first_payout(tree, &is_payout) {
        return task_verdict(Some(r), global_id);
    }
    // No payout ran: still running, or a task before it failed — or the request had none.
    // Only asked when the request's first task succeeded and no payout ran.
    let expects_payout = || {
        let root_type = tree.get("type").and_then(Value::as_str).unwrap_or("");
        let mut roots: Vec<&Task> = flow.tasks.iter().collect();
        roots.extend(flow.steps().into_iter().map(|s| s.task));
        roots.iter().filter(|t| t.op == root_type).any(|t| {
            let mut all = Vec::new();
            t.walk_request(&mut all);
            all.iter()
                .any(|t| flow.op(&t.op).role == crate::schema::Role::Payout)
        })
    };
    match task_verdict(tree.get("result"), global_id) {
        Verdict::Succeeded { .. } if expects_payout() => Verdict::Failed {
            code: "not-paid".into(),
            description: "the tree finished without running its payout".into(),
        },
        // 3006 and 3011 say something about a payout only when a payout answered them; from any
        // other task (a delayed task.statusGet, say) they are simply how that task ended.
        Verdict::Unknown | Verdict::AlreadyExists => {
            let r = tree.get("result");
            Verdict::Failed {
                code: r
                    .and_then(|r| r.get("code"))
                    .map(|c| c.to_string().trim_matches('"').to_string())
                    .unwrap_or_default(),
                description: r
                    .and_then(|r| r.get("comment"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            }
        }
        v => v,
    }
}

/// Classifies the answer to a submission of `n` item trees (in the order sent).
pub fn classify_submission(flow: &Flow, answer: &Answer, n: usize) -> Vec<Verdict> {
    let all = |v: Verdict| vec![v; n];
    match answer {
        Answer::Transport {
            maybe_sent: true, ..
        } => all(Verdict::InDoubt),
        Answer::Transport {
            maybe_sent: false, ..
        } => all(Verdict::RetryLater {
            class: ErrorClass::Network,
            retry_after: None,
        }),
        Answer::Http {
            status: 404,
            body,
            retry_after,
        } if String::from_utf8_lossy(body).trim() == BUSY => all(Verdict::RetryLater {
            class: ErrorClass::RateLimited,
            retry_after: *retry_after,
        }),
        Answer::Http {
            status,
            retry_after,
            ..
        } if *status >= 500 => all(Verdict::RetryLater {
            class: ErrorClass::ServerError,
            retry_after: *retry_after,
        }),
        Answer::Http {
            status: 200, body, ..
        } => match serde_json::from_slice::<Value>(body) {
            Ok(v) => classify_envelope(flow, &v, n),
            // An unreadable 200 may still mean Paysend took the request.
            Err(_) => all(Verdict::InDoubt),
        },
        // 400/401 and anything else: Paysend refused the request as a whole; nothing ran.
        Answer::Http { status, body, .. } => {
            let text = String::from_utf8_lossy(body);
            let comment = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("comment").and_then(Value::as_str).map(String::from))
                .unwrap_or_else(|| crate::mask::shorten(&text));
            all(Verdict::Failed {
                code: format!("http-{status}"),
                description: comment,
            })
        }
    }
}

/// Verdicts from a /processing answer or a GET /processing/status answer.
pub fn classify_envelope(flow: &Flow, v: &Value, n: usize) -> Vec<Verdict> {
    let global = v
        .pointer("/header/response/globalId")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let none = Vec::new();
    let tasks = v
        .pointer("/payload/tasks")
        .and_then(Value::as_array)
        .unwrap_or(&none);
    (0..n)
        .map(|i| {
            tasks
                .get(i)
                .map_or(Verdict::InDoubt, |t| tree_verdict(flow, t, &global))
        })
        .collect()
}

/// The preflight request: the manifest's preflight trees (constants only), answered in one go.
pub fn preflight(
    flow: &Flow,
    partner_id: &str,
    inbound_key: &str,
    date: &str,
) -> Option<Submission> {
    if flow.preflight.is_empty() {
        return None;
    }
    let values: Vec<&str> = vec![""; flow.row_fields.len()];
    let none = ItemRow {
        index: 0,
        line: 0,
        offset: 0,
        id: "",
        values: &values,
        valid: true,
    };
    let trees: Vec<Value> = flow
        .preflight
        .iter()
        .map(|t| tree(flow, t, &none, ""))
        .collect();
    let request_id =
        crate::keys::task_key(&format!("paysend/preflight/{}", flow.manifest.batch), date);
    let body = json!({
        "header": {"request": {"id": request_id, "date": date}, "service": {"sync": true, "waitTime": "WaitFor2000"}},
        "payload": {"partner": {"identifier": partner_id}, "tasks": trees}
    });
    let body = serde_json::to_vec(&body).expect("JSON values serialise");
    let signature = sign(&body, inbound_key);
    Some(Submission {
        request_id,
        body,
        signature,
    })
}

/// Every task result of a finished preflight answer, depth first: (type, result).
pub fn preflight_results(v: &Value) -> Vec<(String, Value)> {
    fn walk(t: &Value, out: &mut Vec<(String, Value)>) {
        if let Some(r) = t.get("result") {
            out.push((
                t.get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                r.clone(),
            ));
        }
        for b in ["success", "fail", "always"] {
            for c in t.get(b).and_then(Value::as_array).into_iter().flatten() {
                walk(c, out);
            }
        }
    }
    let mut out = Vec::new();
    for t in v
        .pointer("/payload/tasks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        walk(t, &mut out);
    }
    out
}

/// A `task.statusGet` request for one item's invoiceId (the failover lookup, L661-683).
pub fn lookup(
    partner_id: &str,
    inbound_key: &str,
    key: &str,
    attempt: u32,
    date: &str,
) -> Submission {
    let body = lookup_body(partner_id, key, attempt, date);
    let signature = sign(&body, inbound_key);
    Submission {
        request_id: crate::keys::task_key(key, &format!("lookup/{attempt}")),
        body,
        signature,
    }
}

fn lookup_body(partner_id: &str, key: &str, attempt: u32, date: &str) -> Vec<u8> {
    let request_id = crate::keys::task_key(key, &format!("lookup/{attempt}"));
    let body = json!({
        "header": {"request": {"id": request_id, "date": date}, "service": {"sync": true, "waitTime": "WaitFor2000"}},
        "payload": {"partner": {"identifier": partner_id}, "tasks": [{"type": "task.statusGet", "payload": {"invoiceId": key}}]}
    });
    serde_json::to_vec(&body).expect("JSON values serialise")
}

/// The verdict of a task.statusGet answer about a payment.
pub fn classify_lookup(answer: &Answer) -> Verdict {
    let Answer::Http {
        status: 200, body, ..
    } = answer
    else {
        return Verdict::RetryLater {
            class: ErrorClass::Network,
            retry_after: None,
        };
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Verdict::RetryLater {
            class: ErrorClass::ServerError,
            retry_after: None,
        };
    };
    let Some(r) = v.pointer("/payload/tasks/0/result") else {
        return Verdict::RetryLater {
            class: ErrorClass::ServerError,
            retry_after: None,
        };
    };
    // The lookup task's own result, read as any task's (`task_verdict`); the payment's status
    // is in its data.
    match task_verdict(Some(r), "") {
        Verdict::Succeeded { ids, result } => match r
            .pointer("/data/status/description")
            .and_then(Value::as_str)
        {
            Some("Completed") | None => Verdict::Succeeded { ids, result },
            Some(other) => Verdict::NeedsReview {
                code: other.to_string(),
                description: format!("payment status {other}"),
            },
        },
        // The lookup itself has not run yet (the request was answered before it finished).
        Verdict::Accepted { .. } => Verdict::RetryLater {
            class: ErrorClass::ServerError,
            retry_after: None,
        },
        // 1000 is the lookup failing, not the payment.
        Verdict::Failed { code, .. } if code == "1000" => Verdict::RetryLater {
            class: ErrorClass::ServerError,
            retry_after: None,
        },
        v => v,
    }
}

/// Verifies an expanded webhook: lowercase hex MD5 of the raw body followed by the outbound key
/// (L634-654), compared in constant time.
pub fn webhook_is_authentic(body: &[u8], signature: &str, outbound_key: &str) -> bool {
    use md5::{Digest, Md5};
    use subtle::ConstantTimeEq;
    let expected = crate::keys::hex_lower(
        &Md5::new()
            .chain_update(body)
            .chain_update(outbound_key.as_bytes())
            .finalize(),
    );
    expected
        .as_bytes()
        .ct_eq(signature.trim().to_ascii_lowercase().as_bytes())
        .into()
}

/// An authentic `TransactionStatusUpdate` webhook: the invoiceId (the item key) and its verdict.
pub fn webhook_verdict(body: &[u8]) -> Option<(String, Verdict)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("webhookType").and_then(Value::as_str) != Some("TransactionStatusUpdate") {
        return None;
    }
    let invoice = v.get("invoiceId").and_then(Value::as_str)?.to_string();
    let code = v
        .get("errorCode")
        .and_then(|c| {
            c.as_str()
                .map(String::from)
                .or_else(|| c.as_u64().map(|n| n.to_string()))
        })
        .unwrap_or_default();
    let description = v
        .get("errorDescription")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    // The document shows "Completed" and "OnHold" (L649, L6998) and gives no status list
    // (docs/paysend-wire.md). A status that is not final waits; an unknown one, or one whose
    // error code contradicts it, goes to a person — never to failed, which invites a resend.
    let status = v.get("status").and_then(Value::as_str)?;
    let code_is_success = matches!(code.as_str(), "" | "0");
    let verdict = match status.to_ascii_lowercase().as_str() {
        "completed" | "success" | "paid" if code_is_success => {
            let mut ids = BTreeMap::new();
            for (k, name) in [
                ("transactionId", "paymentId"),
                ("traceId", "traceId"),
                ("rrn", "rrn"),
                ("arn", "arn"),
            ] {
                if let Some(s) = v.get(k).and_then(Value::as_str) {
                    ids.insert(name.to_string(), s.to_string());
                }
            }
            Verdict::Succeeded { ids, result: None }
        }
        "onhold" => Verdict::NeedsReview {
            code: if code.is_empty() { "5".into() } else { code },
            description,
        },
        "accepted" | "inprogress" | "pending" | "processing" | "created" | "new" => {
            Verdict::Pending
        }
        "failed" | "declined" | "error" | "rejected" | "cancelled" | "canceled" | "refunded"
        | "returned" | "reversed"
            if !code_is_success =>
        {
            Verdict::Failed { code, description }
        }
        _ => Verdict::NeedsReview {
            code: if code.is_empty() {
                format!("status-{status}")
            } else {
                code.clone()
            },
            description: format!(
                "a webhook with status {status:?} and error code {:?}, which payrun cannot read as an outcome{}",
                code,
                if description.is_empty() {
                    String::new()
                } else {
                    format!(": {description}")
                }
            ),
        },
    };
    Some((invoice, verdict))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_webhook_example_is_authentic_and_on_hold() {
        let body = br#"{"webhookType":"TransactionStatusUpdate","invoiceId":"MTCN123456789","transactionId":"5d8149f7-9dd5-4784-9f25-3da3215b8a7g","status":"OnHold","statusDateTime":"2025-06-19T00:27:01.810858+03:00","errorCode":"5","errorDescription":"Offline Antifraud check: RFI","rrn":null,"arn":null,"traceId":null}"#;
        assert!(webhook_is_authentic(
            body,
            "1f373068bd1a17e4ad2ab4462e054d37",
            "14130906-70e2-44ae-9ac1-e5f0688ebd77"
        ));
        assert!(!webhook_is_authentic(
            body,
            "1f373068bd1a17e4ad2ab4462e054d38",
            "14130906-70e2-44ae-9ac1-e5f0688ebd77"
        ));
        let (invoice, v) = webhook_verdict(body).unwrap();
        assert_eq!(invoice, "MTCN123456789");
        assert!(matches!(v, Verdict::NeedsReview { code, .. } if code == "5"));
    }

    #[test]
    fn task_results_map_to_verdicts_by_the_error_table() {
        let r = |v: Value| task_verdict(Some(&v), "g");
        assert!(
            matches!(r(json!({"status": "Success", "code": 0, "data": {"paymentId": "p"}})), Verdict::Succeeded { ids, .. } if ids["paymentId"] == "p")
        );
        assert_eq!(
            r(json!({"status": "Error", "code": 3011})),
            Verdict::AlreadyExists
        );
        assert!(matches!(
            r(json!({"status": "Error", "code": 9999})),
            Verdict::NeedsReview { .. }
        ));
        assert!(matches!(
            r(json!({"status": "Error", "code": 5})),
            Verdict::NeedsReview { .. }
        ));
        assert!(
            matches!(r(json!({"status": "Error", "code": 4006, "comment": "x"})), Verdict::Failed { code, .. } if code == "4006")
        );
        assert_eq!(
            r(json!({"status": "InProgress", "code": 1})),
            Verdict::Accepted {
                reference: "g".into()
            }
        );
        assert_eq!(
            task_verdict(None, "g"),
            Verdict::Accepted {
                reference: "g".into()
            }
        );
    }

    #[test]
    fn the_same_pack_always_has_the_same_request_id() {
        assert_eq!(request_id(&["b", "a"]), request_id(&["a", "b"]));
        assert_ne!(request_id(&["a"]), request_id(&["a", "b"]));
    }

    #[test]
    fn every_shape_of_success_the_document_prints_is_success_and_contradictions_go_to_review() {
        let r = |v: Value| task_verdict(Some(&v), "g");
        let paid = |v: &Verdict| matches!(v, Verdict::Succeeded { .. });
        let review = |v: &Verdict| matches!(v, Verdict::NeedsReview { .. });
        // The examples: "Success" with code 0.
        assert!(paid(&r(json!({"status": "Success", "code": 0}))));
        // The status table: code 2 is Success.
        assert!(paid(&r(json!({"status": "Success", "code": 2}))));
        assert!(paid(&r(json!({"status": "string", "code": 2}))));
        // The Sandbox Mock Service (L222-235): a placeholder status, code 0, data.
        let mock = json!({"status": "string", "code": 0, "comment": "string",
            "data": {"traceId": "8878b45bb948490a8971c7ac130e0461", "paymentId": "8878b45b-b948-490a-8971-c7ac130e0461"}});
        assert!(paid(&r(mock)));
        // Code 0 without data is the table's Accepted: asked again, never failed.
        assert!(matches!(
            r(json!({"status": "string", "code": 0})),
            Verdict::Accepted { .. }
        ));
        // Status and code that disagree: review, never failed.
        assert!(review(&r(json!({"status": "Success", "code": 4006}))));
        assert!(review(&r(json!({"status": "Error", "code": 0}))));
        assert!(review(&r(json!({"status": "Error", "code": 2}))));
        assert!(review(&r(json!({"status": "Error"}))));
        assert!(review(&r(json!({"status": "string", "code": 4006}))));
        // A real error still fails, by its processing code.
        assert!(
            matches!(r(json!({"status": "Error", "code": 4006})), Verdict::Failed { code, .. } if code == "4006")
        );
    }

    #[test]
    fn a_webhook_status_payrun_cannot_read_goes_to_review_and_a_non_final_one_waits() {
        let w = |status: &str, code: &str| {
            let body = json!({"webhookType": "TransactionStatusUpdate", "invoiceId": "k",
                "status": status, "errorCode": code, "errorDescription": null});
            webhook_verdict(body.to_string().as_bytes()).unwrap().1
        };
        assert!(matches!(w("Completed", "0"), Verdict::Succeeded { .. }));
        assert!(matches!(w("Declined", "4006"), Verdict::Failed { code, .. } if code == "4006"));
        assert!(matches!(w("InProgress", "0"), Verdict::Pending));
        assert!(matches!(
            w("Completed", "4006"),
            Verdict::NeedsReview { .. }
        ));
        assert!(matches!(w("Mystery", "0"), Verdict::NeedsReview { .. }));
        assert!(matches!(w("Declined", "0"), Verdict::NeedsReview { .. }));
    }
}

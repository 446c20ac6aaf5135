//! Client adapters, one per provider: payrun's compiled items to the provider's requests, and
//! the provider's answers to provider-neutral verdicts (`execute::machine::Verdict`). Provider
//! types never leave their module; the runner knows only the `Adapter` trait below, builds no
//! request and reads no answer itself, and performs the HTTP exchanges adapters describe.

pub mod payonic;
pub mod paysend;

use crate::execute::machine::Verdict;
use serde_json::Value;
use std::time::Duration;

/// What came back from one HTTP exchange.
#[derive(Debug, Clone)]
pub enum Answer {
    Http {
        status: u16,
        body: Vec<u8>,
        retry_after: Option<Duration>,
    },
    /// No answer from the provider: no connection, a timeout, a TLS failure, or an HTTP answer
    /// that is not the provider's (a proxy's 502, an HTML error page, a wrong base URL's 404).
    /// `maybe_sent`: the request may have reached the provider (a timeout, a connection lost
    /// after sending, a gateway's 5xx), as opposed to one that provably never did. `why`: what
    /// failed, in words, for the operator. Never an item's outcome.
    Transport { maybe_sent: bool, why: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// A request an adapter wants sent, relative to the provider's base URL.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    /// The endpoint's name for per-endpoint rate limits (`limits.endpoints.<name>`).
    pub endpoint: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// The id a support ticket quotes for this request (Payonic: its `TraceApi` header), kept
    /// with the item it submits.
    pub trace: Option<String>,
    /// The operation this request performs (a schema operation's name; for a provider that
    /// takes a whole tree per request, the tree's root operation).
    pub op: String,
}

/// What an adapter rendered for an item, kept as compact JSON text (a tenth of the memory of a
/// `Value` tree, and written into request bodies as it is).
pub type Rendered = Box<serde_json::value::RawValue>;

/// Renders a value for keeping.
pub fn keep(v: &Value) -> Rendered {
    serde_json::value::to_raw_value(v).expect("JSON values serialise")
}

/// An item going out in a submission: its key and what the adapter rendered for it at plan
/// time (real values, memory only).
pub struct Outgoing<'a> {
    /// The node's key: the item's for its first node, derived from it and the node's path for
    /// the nodes after it (`keys::task_key(item, "step/<path>")`).
    pub key: &'a str,
    /// The node's operation (a schema operation's name).
    pub op: &'a str,
    pub payload: &'a [Rendered],
    /// The item's attempt (recorded before the request leaves): a request of its own each time.
    pub attempt: u32,
}

/// What a notification said, once the adapter checked it. The runner journals a notice that
/// settles items before acting on it (so only what the adapter read is kept, never the body).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Notice {
    /// Forged or malformed: answered with this HTTP status and logged, never acted on.
    #[serde(skip)]
    Refused(u16, String),
    /// About one item, by its idempotency key.
    Item { key: String, verdict: Verdict },
    /// A submission (by its group reference) has news: look its items up now.
    Group(String),
    /// The outcome of an accepted request, for the submitted item whose reference is one of
    /// `candidates` (Payonic: responseid and the payment it names). No such item: rejected.
    Reference {
        candidates: Vec<String>,
        verdict: Verdict,
        claims: Claims,
    },
    /// A lookup's answer about a subject (Payonic: a payment by paymentid or merchantpaymentid):
    /// the outcomes it lists by item key. An item in doubt about this subject that is not
    /// listed was never processed.
    Subject {
        subjects: Vec<String>,
        found: Vec<(String, Verdict, Claims)>,
        /// The answer's own request (`<responseid>`: a lookup payrun made, or the request of a
        /// reconciliation item), and what it says about the subject itself: the outcome of an
        /// item whose request *was* this lookup.
        answered: Option<(String, Verdict)>,
    },
    /// Authentic but of no interest.
    Ignored,
}

/// Fields of an item's request that a notification asserts, as (field, value): what the item
/// sent in each field must equal the value claimed for it (one of them, when a field is claimed
/// more than once: a payment named by paymentid or merchantpaymentid), or the notification is
/// not taken for it. Payonic's notifications are unsigned: one naming the right payment with
/// another amount is a forgery, not news. A field named `!<field>` is a requirement the
/// notification failed (a field missing, an operation of another type), with why: it
/// contradicts every item.
pub type Claims = Vec<(String, String)>;

/// The claim naming the kind of operation a listing shows (Payonic `operationtype`): compared
/// with the node's operation through `Adapter::names_operation`, not with a payload field.
pub const OPERATION_CLAIM: &str = "@operation";

/// The first field of `payload` (the item's request, `payload[0]`) that `claims` contradict, as
/// a sentence. A field the item did not send cannot be contradicted. Currencies compare without
/// case, numbers as numbers.
pub fn contradiction(
    payload: &[Rendered],
    claims: &Claims,
    same_operation: &dyn Fn(&str) -> bool,
) -> Option<String> {
    if claims.is_empty() {
        return None;
    }
    // The kind of operation a listing shows must be the node's (`OPERATION_CLAIM`).
    if let Some((_, ty)) = claims.iter().find(|(f, _)| f == OPERATION_CLAIM)
        && !same_operation(ty)
    {
        return Some(format!("it lists a `{ty}` operation, not the item's"));
    }
    let sent: Value = payload
        .first()
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(Value::Null);
    let same = |field: &str, ours: &str, claimed: &str| {
        ours == claimed
            || (field == "currency" && ours.eq_ignore_ascii_case(claimed))
            || matches!(
                (ours.parse::<i128>(), claimed.parse::<i128>()),
                (Ok(a), Ok(b)) if a == b
            )
    };
    // A requirement the notification did not meet (see `Claims`).
    if let Some((field, why)) = claims.iter().find(|(f, _)| f.starts_with('!')) {
        return Some(format!("its {}: {why}", &field[1..]));
    }
    claims.iter().find_map(|(field, _)| {
        if field == OPERATION_CLAIM {
            return None;
        }
        let ours = match sent.get(field)? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        let claimed: Vec<&str> = claims
            .iter()
            .filter(|(f, _)| f == field)
            .map(|(_, v)| v.as_str())
            .collect();
        (!claimed.iter().any(|c| same(field, &ours, c))).then(|| {
            format!(
                "it says {field} {}, the item sent {ours}",
                claimed.join(" or ")
            )
        })
    })
}

/// What a preflight answer says.
#[derive(Debug, Clone)]
pub enum Preflight {
    /// Every preflight task finished. `balances`: Some when a balance was asked for (Paysend
    /// getBalance) — then a currency it does not list has no balance to pay from.
    Done {
        balances: Option<std::collections::BTreeMap<String, rust_decimal::Decimal>>,
        /// Each preflight task's result by its id, for `${result.<id>.<path>}` in the flow.
        results: std::collections::BTreeMap<String, Value>,
    },
    /// A preflight task failed: nothing may be sent.
    Failed(String),
    /// Not finished yet: ask with this request (after a short wait).
    Again(Request),
    /// Not taken (busy, lost, refused for now): send the preflight again later.
    Retry(String),
}

/// What the credentials of a run are, by the names the provider's schema gives them
/// (`partner_id`, `inbound_key`, ...), with their values from the environment.
pub type Credentials = std::collections::BTreeMap<String, String>;

/// The adapter of `flow`'s provider. `callback_url` is the base URL where the provider reaches
/// payrun's listener, when it listens (each adapter adds its own paths).
pub fn adapter(
    flow: &crate::compile::Flow,
    credentials: &Credentials,
    callback_url: Option<String>,
    base_url: &str,
) -> Result<std::sync::Arc<dyn Adapter>, String> {
    let need = |name: &str| {
        credentials
            .get(name)
            .cloned()
            .ok_or_else(|| format!("the credential `{name}` is not set"))
    };
    match flow.provider.name.as_str() {
        "paysend" => Ok(std::sync::Arc::new(paysend::Paysend {
            flow: std::sync::Arc::new(flow.clone()),
            partner_id: need("partner_id")?,
            inbound_key: need("inbound_key")?,
            outbound_key: credentials.get("outbound_key").cloned(),
            callback_url: callback_url.map(|base| format!("{base}{}", paysend::CALLBACK_PATH)),
            signature: flow.manifest.signature,
        })),
        "payonic" => Ok(std::sync::Arc::new(payonic::Payonic {
            flow: std::sync::Arc::new(flow.clone()),
            api_key: need("api_key")?,
            listener: callback_url,
            token: credentials
                .get("notify_token")
                .cloned()
                .ok_or("no notification token for the batch")?,
            per_operation_hosts: base_url.is_empty(),
            note_secret: match (flow.provider.keys, credentials.get("note_secret")) {
                (crate::schema::KeyFormat::Keyed, Some(hex)) => {
                    Some(decode_hex(hex).ok_or("the batch's note secret is not hex digits")?)
                }
                (crate::schema::KeyFormat::Keyed, None)
                    if !credentials.contains_key("legacy_notes") =>
                {
                    return Err("no secret for the batch's keys".into());
                }
                _ => None,
            },
        })),
        other => Err(format!(
            "`payrun run` has no adapter for {other} yet; `validate` and `plan` work for it"
        )),
    }
}

/// Bytes from hex digits (a batch secret as `execute::secret` keeps it).
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What the adapter sends for one item, rendered once at plan time (real values, memory only).
pub fn render(
    flow: &crate::compile::Flow,
    item: &crate::validate::ItemRow,
    key: &str,
) -> Vec<Rendered> {
    match flow.provider.name.as_str() {
        "paysend" => paysend::item_tree(flow, item, key)
            .iter()
            .map(keep)
            .collect(),
        // One call per task: the root task's payload (a client-run flow of one task).
        _ => flow
            .tasks
            .first()
            .map(|t| keep(&crate::plan::render_payload(flow, t, item, key, false)))
            .into_iter()
            .collect(),
    }
}

/// The requests of an item's delayed steps (`Flow::steps` order), rendered at plan time with
/// `${result.<id>.<path>}` left for the runner to fill in when the step is sent.
pub fn render_steps(
    flow: &crate::compile::Flow,
    item: &crate::validate::ItemRow,
    key: &str,
) -> Vec<Rendered> {
    match flow.provider.tree {
        crate::schema::TreeExecution::Server => paysend::step_trees(flow, item, key)
            .iter()
            .map(keep)
            .collect(),
        // Each node after the first is a request of its own, under its own key.
        crate::schema::TreeExecution::Client => flow
            .steps()
            .iter()
            .map(|s| {
                let node_key = crate::keys::task_key(key, &format!("step/{}", s.task.tree_path));
                keep(&crate::plan::render_payload(
                    flow, s.task, item, &node_key, false,
                ))
            })
            .collect(),
    }
}

/// `fill_results` on kept JSON; untouched (no parse) when it holds no reference.
pub fn fill_rendered(
    r: &Rendered,
    lookup: &dyn Fn(&str, &str) -> Option<Value>,
    missing: &mut Vec<String>,
) -> Rendered {
    if !r.get().contains("${result.") {
        return r.clone();
    }
    let mut v: Value = serde_json::from_str(r.get()).expect("kept JSON parses");
    fill_results(&mut v, lookup, missing);
    keep(&v)
}

/// The value at `path` (dot-separated; a number indexes an array) in `v`.
pub fn json_path<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(v, |v, seg| match v {
        Value::Array(a) => a.get(seg.parse::<usize>().ok()?),
        other => other.get(seg),
    })
}

/// `json_path`, to change the value.
pub fn json_path_mut<'v>(v: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    path.split('.').try_fold(v, |v, seg| match v {
        Value::Array(a) => a.get_mut(seg.parse::<usize>().ok()?),
        other => other.get_mut(seg),
    })
}

/// Gives `v` (read from a node's result) the JSON type its field goes on the wire as: a number
/// for `number` and `minor_units` (a provider's "1095" is 1095 — a result is already in the
/// provider's units), text for `string`, true/false for `boolean`. Err: it cannot be that.
pub fn retype(v: &mut Value, wire: crate::schema::Wire) -> Result<(), String> {
    use crate::schema::Wire;
    let text = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return Err("is not a single value".into()),
    };
    *v = match wire {
        Wire::String => Value::String(text),
        Wire::Number | Wire::MinorUnits => {
            match serde_json::from_str::<serde_json::Number>(&text) {
                Ok(n) if wire == Wire::Number || n.is_u64() => Value::Number(n),
                _ => return Err(format!("is {text:?}, not a whole number")),
            }
        }
        Wire::Boolean => match text.to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("is {text:?}, not true or false")),
        },
    };
    Ok(())
}

/// Removes from a node's result every field `op` marks sensitive or holding an account, card
/// or phone number, a name or an e-mail address: at its path, and under the same name anywhere
/// (an answer may echo it elsewhere). Results are kept at rest; such values never are.
pub fn scrub(v: &mut Value, op: &crate::schema::Operation) {
    let private: Vec<&str> = op
        .fields
        .iter()
        .filter(|f| f.privacy() != crate::mask::Privacy::Plain)
        .map(|f| f.path.as_str())
        .collect();
    if private.is_empty() {
        return;
    }
    for path in &private {
        if let Some((parent, leaf)) = path.rsplit_once('.') {
            if let Some(Value::Object(o)) = json_path_mut(v, parent) {
                o.remove(leaf);
            }
        } else if let Value::Object(o) = v {
            o.remove(*path);
        }
    }
    let leaves: std::collections::HashSet<&str> = private
        .iter()
        .map(|p| p.rsplit('.').next().unwrap_or(p))
        .collect();
    fn walk(v: &mut Value, leaves: &std::collections::HashSet<&str>) {
        match v {
            Value::Object(o) => {
                o.retain(|k, _| !leaves.contains(k.as_str()));
                o.values_mut().for_each(|x| walk(x, leaves));
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, leaves)),
            _ => {}
        }
    }
    walk(v, &leaves);
}

/// Replaces every string that is exactly `${result.<id>.<path>}` with what `lookup(id, path)`
/// gives; returns the references it could not fill.
pub fn fill_results(
    v: &mut Value,
    lookup: &dyn Fn(&str, &str) -> Option<Value>,
    missing: &mut Vec<String>,
) {
    match v {
        Value::String(s) => {
            if let Some(inner) = s
                .strip_prefix("${result.")
                .and_then(|r| r.strip_suffix('}'))
                && let Some((id, path)) = inner.split_once('.')
            {
                match lookup(id, path) {
                    Some(x) => *v = x,
                    None => missing.push(format!("result.{id}.{path}")),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| fill_results(x, lookup, missing)),
        Value::Object(o) => o
            .values_mut()
            .for_each(|x| fill_results(x, lookup, missing)),
        _ => {}
    }
}

/// One provider's wire protocol, as the runner needs it. Pure: no I/O.
pub trait Adapter: Send + Sync {
    /// Whether an HTTP answer is the provider's own, in its documented shape, rather than a
    /// proxy's, a web server's or a wrong URL's: only then is it read as an outcome. Default:
    /// a JSON object body.
    fn speaks(&self, _status: u16, body: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Map<String, Value>>(body).is_ok()
    }

    /// How many items one submission may carry.
    fn pack_limit(&self) -> usize;
    /// An item key as the provider's notifications and reports name it (where they name it by
    /// key): by default its 32 hex digits.
    fn wire_key(&self, key: &str) -> String {
        key.replace('-', "")
    }
    /// The request that submits `items` (always the same request for the same items, so a
    /// resend is a replay to the provider).
    fn submit(&self, items: &[Outgoing<'_>], now: &str) -> Request;
    /// One verdict per submitted item, in order (`sent`: the request `submit` made). An
    /// `Accepted` reference is what `reference_group` splits.
    fn classify_submit(&self, sent: &Request, answer: &Answer, n: usize) -> Vec<Verdict>;
    /// The submission a reference belongs to, and the item's position in it; items of one group
    /// are looked up with one `group_lookup`.
    fn reference_group(&self, reference: &str) -> (String, usize);
    /// The lookup of a whole submission by its group reference (`seq` counts the group's
    /// lookups in this run; `now` is when it is made).
    fn group_lookup(&self, group: &str, seq: u32, now: &str) -> Request;
    /// Verdicts for positions `0..n` of a group from a `group_lookup` answer.
    fn classify_group(&self, answer: &Answer, n: usize) -> Vec<Verdict>;
    /// The lookup of one node by its idempotency key (`seq` counts this node's lookups);
    /// `op` is its operation and `payload` what it sends.
    fn key_lookup(&self, op: &str, key: &str, payload: &[Rendered], seq: u32, now: &str)
    -> Request;
    /// Whether a listing's kind of operation (`OPERATION_CLAIM`) is `op`'s.
    fn names_operation(&self, op: &str, claimed: &str) -> bool {
        claimed.trim().eq_ignore_ascii_case(op)
    }
    /// The reference of a key lookup the provider took and will answer by notification
    /// (`Verdict::Pending`; Payonic: the Payment API request's `responseid`). Only a
    /// `Notice::Subject` answering a lookup payrun made may say an item was never processed.
    fn lookup_reference(&self, _answer: &Answer) -> Option<String> {
        None
    }
    /// This provider's waits, from payrun's defaults.
    fn timings(&self, base: crate::execute::machine::Timings) -> crate::execute::machine::Timings {
        base
    }
    fn classify_key_lookup(&self, answer: &Answer) -> Verdict;
    /// A key lookup the provider answered before it finished: the request that fetches its
    /// outcome (asked again after a short wait, a few times, before the lookup counts as lost).
    fn lookup_followup(&self, answer: &Answer) -> Option<Request>;
    /// The preflight request (e.g. Paysend getBalance), if the manifest has preflight tasks.
    fn preflight(&self, now: &str) -> Option<Request>;
    fn classify_preflight(&self, answer: &Answer) -> Preflight;
    /// The listener paths notifications arrive on (e.g. `/paysend/webhook`).
    fn notification_paths(&self) -> &'static [&'static str];
    /// Checks and reads a notification that arrived on `path`.
    fn notice(
        &self,
        path: &str,
        headers: &axum::http::HeaderMap,
        query: Option<&str>,
        body: &[u8],
    ) -> Notice;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_notification_contradicting_the_amount_or_currency_sent_is_caught() {
        let sent = [keep(
            &json!({"amount": 1095, "currency": "DKK", "note": "k"}),
        )];
        let claims = |pairs: &[(&str, &str)]| -> Claims {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let contradiction = |p: &[Rendered], c: &Claims| contradiction(p, c, &|_| true);
        assert_eq!(contradiction(&sent, &claims(&[("amount", "1095")])), None);
        assert_eq!(contradiction(&sent, &claims(&[("amount", "01095")])), None);
        assert_eq!(contradiction(&sent, &claims(&[("currency", "dkk")])), None);
        assert_eq!(
            contradiction(&sent, &claims(&[("amount", "1095"), ("currency", "SEK")])),
            Some("it says currency SEK, the item sent DKK".into())
        );
        assert_eq!(
            contradiction(&sent, &claims(&[("amount", "109500")])),
            Some("it says amount 109500, the item sent 1095".into())
        );
        assert_eq!(
            contradiction(&sent, &claims(&[("balance", "0")])),
            None,
            "a field the item did not send cannot be contradicted"
        );
        let named = [keep(&json!({"paymentid": "m1", "amount": 5}))];
        assert_eq!(
            contradiction(&named, &claims(&[("paymentid", "p1"), ("paymentid", "m1")])),
            None,
            "a payment is named by either of its ids"
        );
        assert_eq!(
            contradiction(&named, &claims(&[("paymentid", "p1"), ("paymentid", "m2")])),
            Some("it says paymentid p1 or m2, the item sent m1".into())
        );
    }

    #[test]
    fn a_result_is_read_by_a_full_path_through_objects_and_arrays() {
        let r = json!({"ret_code": "000100", "result": {"accountToken": "tok-1",
            "accounts": [{"id": "a0"}, {"id": "a1"}]}});
        assert_eq!(json_path(&r, "result.accountToken"), Some(&json!("tok-1")));
        assert_eq!(json_path(&r, "result.accounts.1.id"), Some(&json!("a1")));
        assert_eq!(json_path(&r, "result.accounts.7.id"), None);
        assert_eq!(json_path(&r, "result.missing"), None);
    }

    #[test]
    fn a_value_read_from_a_result_goes_on_the_wire_as_its_fields_type() {
        use crate::schema::Wire;
        let mut v = json!("1095");
        retype(&mut v, Wire::MinorUnits).unwrap();
        assert_eq!(v, json!(1095));
        let mut v = json!(42);
        retype(&mut v, Wire::String).unwrap();
        assert_eq!(v, json!("42"));
        let mut v = json!("10.95");
        assert!(
            retype(&mut v, Wire::MinorUnits).is_err(),
            "a minor-units field takes whole numbers only"
        );
        let mut v = json!({"a": 1});
        assert!(retype(&mut v, Wire::String).is_err());
    }

    #[test]
    fn a_kept_result_holds_no_field_the_schema_marks_private() {
        let flow = crate::pipeline::prepare(
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/batches/subscriptions-payonic/manifest.yaml"
            )),
            &crate::schema::Registry::Embedded,
        )
        .map_err(|f| f.diagnostics)
        .expect("the example compiles")
        .flow;
        let mut r = json!({"paymentid": "p1", "amount": 1095,
            "customer": {"email": "don@example.com", "firstname": "Don", "ipaddress": "1.2.3.4"},
            "echo": {"firstname": "Don"}});
        scrub(&mut r, flow.op("mit"));
        assert_eq!(
            r,
            json!({"paymentid": "p1", "amount": 1095,
                "customer": {"ipaddress": "1.2.3.4"}, "echo": {}})
        );
    }

    #[test]
    fn result_references_are_filled_in_where_they_stand_alone_and_the_rest_is_left_alone() {
        let mut v = json!({
            "amount": "${result.bal.data.balances.EUR}",
            "nested": [{"id": "${result.pay.paymentId}"}],
            "text": "not ${result.bal.x} a reference on its own",
            "plain": 5
        });
        let lookup = |id: &str, path: &str| match (id, path) {
            ("bal", "data.balances.EUR") => Some(json!("1000.00")),
            _ => None,
        };
        let mut missing = Vec::new();
        fill_results(&mut v, &lookup, &mut missing);
        assert_eq!(v["amount"], "1000.00");
        assert_eq!(v["nested"][0]["id"], "${result.pay.paymentId}");
        assert_eq!(v["text"], "not ${result.bal.x} a reference on its own");
        assert_eq!(v["plain"], 5);
        assert_eq!(missing, vec!["result.pay.paymentId".to_string()]);
    }
}

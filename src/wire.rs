//! The wire vocabulary payrun's core and its provider adapters share: a request an adapter
//! wants sent and the answer that came back, what an answer or a notification means
//! (`Verdict`, `Notice`, the fields a notification claims), the provider's waits (`Timings`),
//! and the JSON helpers results are read and kept with. Below both `execute/` and
//! `providers/`: adapters import this, never the executor; no web framework's types.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// Why a request is to be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The provider said "not now" (Paysend's 404 "Sorry. Can't accept your request now.").
    RateLimited,
    /// A 5xx answer.
    ServerError,
    /// The connection failed before the request could have reached the provider.
    Network,
}

/// Pairs of strings in one allocation (each string after its length, LEB128): what every item
/// holds for the whole run (its amounts, a paid node's provider ids) is kept this way rather
/// than as separate `String`s, a third or less of the memory.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pairs(Box<[u8]>);

impl Pairs {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut rest: &[u8] = &self.0;
        std::iter::from_fn(move || {
            let mut take = || -> Option<&str> {
                let (len, tail) = read_len(rest)?;
                let (text, tail) = (tail.get(..len)?, tail.get(len..)?);
                rest = tail;
                std::str::from_utf8(text).ok()
            };
            Some((take()?, take()?))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn first(&self) -> Option<(&str, &str)> {
        self.iter().next()
    }

    /// The bytes it holds on the heap (for the memory bench).
    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Pairs {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Pairs {
        let mut out = Vec::new();
        for (k, v) in pairs {
            for text in [k.as_ref(), v.as_ref()] {
                write_len(&mut out, text.len());
                out.extend_from_slice(text.as_bytes());
            }
        }
        Pairs(out.into_boxed_slice())
    }
}

/// A length as LEB128 (7 bits a byte, low first), then the rest.
fn read_len(b: &[u8]) -> Option<(usize, &[u8])> {
    let mut n = 0usize;
    for (i, &x) in b.iter().enumerate().take(5) {
        n |= usize::from(x & 0x7f) << (7 * i);
        if x & 0x80 == 0 {
            return Some((n, &b[i + 1..]));
        }
    }
    None
}

fn write_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// The ids a provider gave a paid node (`paymentId`, `globalId`, …), by name, sorted: read and
/// written as a JSON object, exactly as the `BTreeMap` it replaced, so stores are unchanged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Ids(Pairs);

impl Ids {
    /// The pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Ids {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Ids {
        let sorted: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .collect();
        Ids::from(sorted)
    }
}

impl From<BTreeMap<String, String>> for Ids {
    fn from(m: BTreeMap<String, String>) -> Ids {
        Ids(m.iter().collect())
    }
}

impl std::fmt::Debug for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Ids {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Ids {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ids, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Ids::from)
    }
}

/// What an item pays, as (amount, currency) pairs in the order of its payouts: read and
/// written as a JSON array of `[amount, currency]`, exactly as the `Vec` it replaced.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Amounts(Pairs);

impl Amounts {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter()
    }

    pub fn first(&self) -> Option<(&str, &str)> {
        self.0.first()
    }

    /// The bytes it holds on the heap (for the memory bench).
    pub fn heap_bytes(&self) -> usize {
        self.0.heap_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Amounts {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Amounts {
        Amounts(pairs.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Amounts {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl From<Vec<(String, String)>> for Amounts {
    fn from(v: Vec<(String, String)>) -> Amounts {
        v.into_iter().collect()
    }
}

impl std::fmt::Debug for Amounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Amounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Amounts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Amounts, D::Error> {
        Vec::<(String, String)>::deserialize(d).map(Amounts::from)
    }
}

/// A 128-bit value every item holds for the whole run, kept as its 16 bytes rather than as
/// text (24 bytes instead of ~90 with the text's allocation): an idempotency key (a UUID,
/// `8c4f2a1e-…`) or a content digest (32 lower-case hex digits). Text of any other shape
/// (a fixture's, an older payrun's) is kept as it is. Shown, compared and serialized as the
/// text it was made from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Id128 {
    Uuid([u8; 16]),
    Hex([u8; 16]),
    Text(Box<str>),
}

impl Id128 {
    /// The text it was made from.
    pub fn text(&self) -> String {
        match self {
            Id128::Text(t) => t.to_string(),
            Id128::Hex(b) => crate::keys::hex_lower(b),
            Id128::Uuid(b) => {
                let h = crate::keys::hex_lower(b);
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                )
            }
        }
    }

    fn hex16(h: &str) -> Option<[u8; 16]> {
        let h = h.as_bytes();
        if h.len() != 32 {
            return None;
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 16];
        for (i, pair) in h.chunks_exact(2).enumerate() {
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(out)
    }
}

impl From<&str> for Id128 {
    fn from(t: &str) -> Id128 {
        let b = t.as_bytes();
        let dashed = b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-');
        let packed = match dashed {
            true => Id128::hex16(&t.replace('-', "")).map(Id128::Uuid),
            false => Id128::hex16(t).map(Id128::Hex),
        };
        packed.unwrap_or_else(|| Id128::Text(t.into()))
    }
}

impl From<String> for Id128 {
    fn from(t: String) -> Id128 {
        Id128::from(t.as_str())
    }
}

impl std::fmt::Display for Id128 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

impl std::fmt::Debug for Id128 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.text())
    }
}

impl PartialEq<str> for Id128 {
    fn eq(&self, other: &str) -> bool {
        match self {
            Id128::Text(t) => **t == *other,
            _ => *self == Id128::from(other),
        }
    }
}

impl PartialEq<String> for Id128 {
    fn eq(&self, other: &String) -> bool {
        *self == *other.as_str()
    }
}

impl Serialize for Id128 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

impl<'de> Deserialize<'de> for Id128 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Id128, D::Error> {
        Ok(Id128::from(String::deserialize(d)?))
    }
}

/// What a provider's answer means, as the adapter classified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Taken for processing; `reference` finds it again (Paysend: globalId).
    Accepted {
        reference: String,
    },
    Succeeded {
        ids: BTreeMap<String, String>,
        /// What the provider answered, as JSON (the adapter picks the fields; the runner adds
        /// what the request sent and removes what the schema marks sensitive before keeping it):
        /// read by later nodes as `${result.<node>.<path>}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<serde_json::Value>,
    },
    Failed {
        code: String,
        description: String,
    },
    /// Not final, or held for manual action (Paysend 9999, code 5 / OnHold).
    NeedsReview {
        code: String,
        description: String,
    },
    /// "Already paid with this key" (Paysend 3011).
    AlreadyExists,
    /// The provider cannot see it yet (Paysend 3006 right after acceptance).
    NotYetVisible,
    /// The provider has no record of the key.
    Unknown,
    /// Not processed; safe to send again later.
    RetryLater {
        class: ErrorClass,
        retry_after: Option<Duration>,
    },
    /// It may have been processed; nobody knows (timeout, dropped connection).
    InDoubt,
    /// A lookup was taken; its answer comes later, by notification (Payonic's Payment API).
    /// Also: the provider lists the request as not final yet (Payonic `pending`).
    Pending,
    /// The answer to a lookup asked at `asked` does not list the request: for a provider
    /// without idempotency, "not processed" only once the settle window (`Timings::settle`)
    /// had passed when it was asked, and confirmed by a second such lookup.
    Unlisted {
        asked: Millis,
    },
}

/// Provider timings the machine waits by.
#[derive(Debug, Clone)]
pub struct Timings {
    /// After acceptance the provider may not find the payment yet (Paysend: at least 3 min).
    pub propagation: Duration,
    /// Between polls of a submitted request.
    pub poll_every: Duration,
    /// Between follow-up lookups of an item under review.
    pub review_every: Duration,
    /// Failed lookups of an item in doubt before a person is asked to look.
    pub max_lookups: u32,
    /// Lookups of a submitted item before a person is asked to look; None: poll as long as it
    /// takes (Paysend's status polls). Set for providers whose outcome comes by notification,
    /// where a lookup is the fallback for one that never came.
    pub max_polls: Option<u32>,
    /// Each further lookup of a waiting or in-doubt item waits this many times longer than the
    /// one before (1: every `poll_every`), never longer than `review_every`.
    pub poll_backoff: f64,
    /// How long after a request of an item in doubt a lookup must be asked before its "not
    /// listed" (`Verdict::Unlisted`) can mean "never processed" (a provider may list an
    /// operation only once it is processed). Two such answers are needed before a resend.
    pub settle: Duration,
    /// What a failure reported after a success means: money moved back (`Reversed`, Paysend's
    /// documented returns) when true; otherwise two contradicting reports a person must look
    /// at (Payonic documents no reversal).
    pub reversals: bool,
    /// A failure reported by a notification is confirmed by a lookup before it is taken: the
    /// provider's notifications are unsigned (Payonic), and a forged decline that ended the
    /// batch's last item would end the run before the genuine outcome came.
    pub confirm_failures: bool,
}

impl Timings {
    /// The wait after the n-th lookup (n from 1).
    pub fn gap(&self, n: u32) -> Duration {
        let factor = self
            .poll_backoff
            .max(1.0)
            .powi(n.saturating_sub(1).min(30) as i32);
        self.poll_every
            .mul_f64(factor)
            .min(self.review_every.max(self.poll_every))
    }
}

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
        /// The references an item whose request was that lookup waits under (Payonic:
        /// `<responseid>@<paymentid>` and `<responseid>@<merchantpaymentid>`).
        #[serde(default)]
        references: Vec<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id128_is_the_very_text_it_was_made_from_in_sixteen_bytes_when_it_is_a_key_or_digest() {
        let key = crate::keys::item_key("batch", "E-1");
        let digest = "0123456789abcdef0123456789abcdef";
        for (text, packed) in [
            (key.as_str(), true),
            (digest, true),
            ("0123456789ABCDEF0123456789ABCDEF", false),
            ("k1", false),
            ("", false),
            ("e08bce0f-d869-834a-8ef7-9e239f08910", false),
        ] {
            let id = Id128::from(text);
            assert_eq!(id.text(), text);
            assert_eq!(id, *text);
            assert_eq!(matches!(id, Id128::Text(_)), !packed, "{text}");
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(json, serde_json::to_string(text).unwrap());
            assert_eq!(serde_json::from_str::<Id128>(&json).unwrap(), id);
        }
        assert!(Id128::from(digest) != *"0123456789abcdef0123456789abcdee");
        assert_eq!(std::mem::size_of::<Id128>(), 24);
    }

    #[test]
    fn ids_read_and_write_the_same_json_object_a_map_of_them_did() {
        let long = "x".repeat(300);
        let map: BTreeMap<String, String> = [
            ("paymentId", "e08bce0f-d869-834a-8ef7-9e239f089103"),
            ("globalId", "g-1"),
            ("empty", ""),
            ("long", long.as_str()),
            ("unicode ü", "日本"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ids = Ids::from(map.clone());
        assert_eq!(
            serde_json::to_string(&ids).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        let back: Ids = serde_json::from_str(&serde_json::to_string(&map).unwrap()).unwrap();
        assert_eq!(back, ids);
        assert_eq!(ids.get("long"), Some(long.as_str()));
        assert_eq!(ids.get("empty"), Some(""));
        assert_eq!(ids.get("unicode ü"), Some("日本"));
        assert_eq!(ids.get("missing"), None);
        assert_eq!(ids.len(), 5);
        let names: Vec<&str> = ids.iter().map(|(k, _)| k).collect();
        assert_eq!(names, map.keys().map(String::as_str).collect::<Vec<_>>());
        assert!(Ids::default().is_empty());
        assert_eq!(serde_json::to_string(&Ids::default()).unwrap(), "{}");
    }

    #[test]
    fn amounts_read_and_write_the_same_json_array_a_vector_of_them_did_in_their_order() {
        let v: Vec<(String, String)> = vec![
            ("2004.84".into(), "EUR".into()),
            ("10".into(), "GBP".into()),
            ("0.5".into(), "EUR".into()),
        ];
        let a = Amounts::from(v.clone());
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), json);
        let back: Amounts = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        assert_eq!(a.first(), Some(("2004.84", "EUR")));
        assert_eq!(a.len(), 3);
        assert_eq!(
            a.iter()
                .map(|(x, c)| format!("{x} {c}"))
                .collect::<Vec<_>>(),
            ["2004.84 EUR", "10 GBP", "0.5 EUR"]
        );
        assert_eq!(serde_json::to_string(&Amounts::default()).unwrap(), "[]");
    }
}

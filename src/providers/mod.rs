//! Client adapters, one per provider: payrun's compiled items to the provider's requests, and
//! the provider's answers to provider-neutral verdicts (`execute::machine::Verdict`). Provider
//! types never leave their module; the runner knows only the `Adapter` trait below, builds no
//! request and reads no answer itself, and performs the HTTP exchanges adapters describe.

pub mod payonic;
pub mod paysend;

pub use crate::wire::{
    Answer, Claims, Credentials, Method, Notice, OPERATION_CLAIM, Outgoing, Preflight, Rendered,
    Request, contradiction, fill_rendered, fill_results, json_path, json_path_mut, keep, retype,
    scrub,
};
use crate::wire::{Timings, Verdict};
use serde_json::Value;
use std::sync::Arc;

/// What payrun needs of one provider beyond its schemas and its sandbox. `REGISTRY` lists one
/// per provider: outside it, the providers' files and the sandbox, no code names a provider.
pub struct Plugin {
    /// The provider's name, as `provider:` in a manifest and its folder under `schemas/`.
    pub name: &'static str,
    /// The adapter of a run.
    pub adapter: fn(&Setup<'_>) -> Result<Arc<dyn Adapter>, String>,
    /// The credentials a run can go without (`webhooks`: the batch takes notifications).
    pub optional_credentials: fn(webhooks: bool) -> &'static [&'static str],
    /// What the operator is told about where the provider must send notifications, given the
    /// batch's public URL; Err: the batch cannot take them (a credential they need is missing).
    pub listening: fn(&Setup<'_>, public_url: &str) -> Result<String, String>,
    /// A rehearsal against the embedded sandbox: fits the sandbox's configuration to the batch
    /// (the payments it names, where notifications go) and gives the credentials it accepts,
    /// by the names the provider's schema gives them.
    pub rehearse: fn(&mut crate::sandbox::SandboxConfig, &Rehearsal<'_>) -> Credentials,
}

/// Everything an adapter is made from.
pub struct Setup<'a> {
    pub flow: &'a crate::compile::Flow,
    /// The run's credentials, by the schema's names, from the environment (or the sandbox).
    pub credentials: &'a Credentials,
    /// The base URL where the provider reaches payrun's listener, when it listens (each adapter
    /// adds its own paths).
    pub callback_url: Option<String>,
    /// Where requests go; empty for a provider with one host per operation in production.
    pub base_url: &'a str,
    /// The batch's secret for keys written `keys: keyed`; None for a batch started before keys
    /// were keyed (its keys go on the wire as they are).
    pub key_secret: Option<&'a [u8]>,
}

/// What a rehearsal tells the embedded sandbox about the batch.
/// Calls the function it is given with each item's first request and its currency.
pub type EachItem<'a> = dyn Fn(&mut dyn FnMut(&str, Option<&str>)) + 'a;

pub struct Rehearsal<'a> {
    pub flow: &'a crate::compile::Flow,
    /// Gives each item's first request (rendered JSON) and its currency to the function it is
    /// called with, one item at a time (a batch's requests are never all held at once).
    pub items: &'a EachItem<'a>,
    /// Where payrun's listener takes notifications (`http://127.0.0.1:PORT`), when it listens.
    pub listener: Option<&'a str>,
}

/// Every provider `payrun run` drives.
pub static REGISTRY: &[Plugin] = &[paysend::PLUGIN, payonic::PLUGIN];

/// The plugin of provider `name`, if `payrun run` drives it.
pub fn plugin(name: &str) -> Option<&'static Plugin> {
    REGISTRY.iter().find(|p| p.name == name)
}

/// The credential `name` of a run, or why it is missing.
pub fn need(credentials: &Credentials, name: &str) -> Result<String, String> {
    credentials
        .get(name)
        .cloned()
        .ok_or_else(|| format!("the credential `{name}` is not set"))
}

/// The adapter of `flow`'s provider (see `Setup`).
pub fn adapter(setup: &Setup<'_>) -> Result<Arc<dyn Adapter>, String> {
    match plugin(&setup.flow.provider.name) {
        Some(p) => (p.adapter)(setup),
        None => Err(format!(
            "`payrun run` has no adapter for {} yet; `validate` and `plan` work for it",
            setup.flow.provider.name
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
    fn timings(&self, base: Timings) -> Timings {
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

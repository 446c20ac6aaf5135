//! The Health API's document (L409-460): one entry per `api.<name>.payonic.com`, then
//! `app.payonic.com` and `www.payonic.com`, each "ok" unless `payonic.health` says otherwise.
//! Choice: the reported status is information only; requests to an API reported "error" are
//! still served (use the faults to make them fail).

use crate::sandbox::config::HealthStatus;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The names `payonic.health` accepts, in the document's order.
pub const NAMES: &[&str] = &[
    "cit", "mit", "capture", "refund", "payout", "payment", "app", "www",
];

pub fn document(config: &BTreeMap<String, HealthStatus>) -> Value {
    let entry = |name: &str| {
        config.get(name).map_or(
            json!({"status": "ok", "msg": ""}),
            |h| json!({"status": h.status, "msg": h.msg}),
        )
    };
    let apis: Vec<Value> = NAMES[..6]
        .iter()
        .map(|n| {
            let mut e = json!({"api": format!("api.{n}.payonic.com")});
            let s = entry(n);
            e["status"] = s["status"].clone();
            e["msg"] = s["msg"].clone();
            e
        })
        .collect();
    json!({
        "api": apis,
        "app.payonic.com": entry("app"),
        "www.payonic.com": entry("www"),
    })
}

//! The Health API's document (L409-460): one entry per `api.<name>.payonic.com`, then
//! `app.payonic.com` and `www.payonic.com`, each "ok" unless `payonic.health` says otherwise —
//! and the outages it reports. An API reported "error" is down: every request to a function it
//! serves is answered HTTP 503 with `{"error": <its msg>, "field": ""}` and nothing else
//! happens (nothing decided or recorded, no money moved, no notification, no fault drawn).
//!
//! Which API serves which function is the document's host of each end-point: `/api/mit` on
//! api.mit (L34), capture on api.capture (L107), refund *and void* on api.refund (L147, L187),
//! payout on api.payout (L227), payment on api.payment (L270). Choices where it is silent:
//! - the outage is checked before anything of the request is looked at (key, TraceApi, body,
//!   payment): a host that is down has no part that could check them;
//! - a reported error without a msg answers the document's own example msg (L432);
//! - `cit` has no function in the sandbox (the document describes no CIT end-point), and
//!   `app` and `www` serve no API: their status is reported only;
//! - the Health API itself always answers (it has no entry of its own).

use crate::sandbox::config::HealthStatus;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The names `payonic.health` accepts, in the document's order.
pub const NAMES: &[&str] = &[
    "cit", "mit", "capture", "refund", "payout", "payment", "app", "www",
];

/// What a down API answers when its configured `msg` is empty (L432).
pub const NO_RESPONSE: &str = "No response received from the API request.";

/// An API with functions in the sandbox, named as in `payonic.health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Mit,
    Capture,
    Refund,
    Payout,
    Payment,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Mit => "mit",
            Api::Capture => "capture",
            Api::Refund => "refund",
            Api::Payout => "payout",
            Api::Payment => "payment",
        }
    }
}

/// Why `api` cannot answer: `Some(msg)` when `payonic.health` reports it "error".
pub fn outage(config: &BTreeMap<String, HealthStatus>, api: Api) -> Option<String> {
    let h = config.get(api.name()).filter(|h| h.status == "error")?;
    Some(if h.msg.is_empty() {
        NO_RESPONSE.to_string()
    } else {
        h.msg.clone()
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: &str, msg: &str) -> HealthStatus {
        HealthStatus {
            status: status.into(),
            msg: msg.into(),
        }
    }

    #[test]
    fn only_an_api_reported_error_is_down() {
        let mut c = BTreeMap::new();
        c.insert("capture".to_string(), status("error", ""));
        c.insert("refund".to_string(), status("error", "maintenance"));
        c.insert("payout".to_string(), status("ok", "fine"));
        for (api, expected) in [
            (Api::Mit, None),
            (Api::Capture, Some(NO_RESPONSE)),
            (Api::Refund, Some("maintenance")),
            (Api::Payout, None),
            (Api::Payment, None),
        ] {
            assert_eq!(outage(&c, api).as_deref(), expected, "{api:?}");
        }
        // Every API with functions is one the health document reports.
        for api in [
            Api::Mit,
            Api::Capture,
            Api::Refund,
            Api::Payout,
            Api::Payment,
        ] {
            assert!(NAMES[..6].contains(&api.name()), "{api:?}");
        }
    }
}

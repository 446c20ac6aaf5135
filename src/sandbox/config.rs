//! Sandbox configuration: the file given to `payrun sandbox --config`, flags, or a value built
//! by tests in-process. Every duration is in *provider* time; `time_scale` makes provider time
//! run faster than real time (1000: "3 minutes" take 180 ms).

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Seed of every random decision (faults), so a run can be replayed.
    pub seed: u64,
    /// How many times faster than real time provider time runs.
    pub time_scale: f64,
    pub paysend: PaysendConfig,
    pub payonic: PayonicConfig,
    pub faults: Faults,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            seed: 1,
            time_scale: 1.0,
            paysend: PaysendConfig::default(),
            payonic: PayonicConfig::default(),
            faults: Faults::default(),
        }
    }
}

/// Test credentials and behaviour of the Paysend emulation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaysendConfig {
    pub partner_id: String,
    /// Appended to request bodies (and globalIds) for X-OPP-Signature.
    pub inbound_key: String,
    /// Appended to webhook bodies for their MD5 X-OPP-Signature.
    pub outbound_key: String,
    /// Balances per currency (ISO 4217 alpha), as decimal text: what payouts debit (3009 below).
    pub balances: BTreeMap<String, String>,
    /// Time a request waits in Accepted before processing starts.
    #[serde(with = "humantime_serde_de")]
    pub accept_time: std::time::Duration,
    /// Time each level of a task tree takes.
    #[serde(with = "humantime_serde_de")]
    pub level_time: std::time::Duration,
    /// After acceptance, task.statusGet answers 3006 for this long (docs: wait at least 3 min).
    #[serde(with = "humantime_serde_de")]
    pub propagation_delay: std::time::Duration,
    /// GET /processing/status/{globalId} answers only this long after acceptance (docs: 2-3 h).
    #[serde(with = "humantime_serde_de")]
    pub status_window: std::time::Duration,
    /// Requests per second and burst accepted before "Sorry. Can't accept your request now.".
    pub rate_limit: Option<RateLimit>,
    /// Where expanded webhooks (TransactionStatusUpdate) are posted, if anywhere.
    pub webhook_url: Option<String>,
}

impl Default for PaysendConfig {
    fn default() -> Self {
        let mut balances = BTreeMap::new();
        for c in ["EUR", "GBP", "USD", "CHF"] {
            balances.insert(c.to_string(), "10000000.00".to_string());
        }
        balances.insert("JPY".into(), "1000000000".into());
        balances.insert("KWD".into(), "1000000.000".into());
        PaysendConfig {
            partner_id: "payrun-sandbox".into(),
            inbound_key: "sandbox-inbound-key".into(),
            outbound_key: "sandbox-outbound-key".into(),
            balances,
            accept_time: std::time::Duration::from_millis(200),
            level_time: std::time::Duration::from_millis(500),
            propagation_delay: std::time::Duration::from_secs(180),
            status_window: std::time::Duration::from_secs(2 * 3600),
            rate_limit: None,
            webhook_url: None,
        }
    }
}

/// Test credentials, timings, health and payments of the Payonic emulation
/// (`payonic-api.txt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PayonicConfig {
    /// Expected after "Basic " in the Authorization header (L24-27).
    pub api_key: String,
    /// The merchantid of seeded and generated payments (the Payment notification carries it).
    pub merchant_id: String,
    /// An async function's notification is posted this long after the request, uniformly
    /// between the two (provider time).
    #[serde(with = "humantime_serde_de")]
    pub notify_delay_min: std::time::Duration,
    #[serde(with = "humantime_serde_de")]
    pub notify_delay_max: std::time::Duration,
    /// Status reported by the Health API (L409-460) per API: keys `cit`, `mit`, `capture`,
    /// `refund`, `payout`, `payment` (the `api.<name>.payonic.com` entries), `app`, `www`.
    /// Unlisted ones report "ok". An API reported "error" is down: its functions answer 503
    /// and do nothing (void is on api.refund, L187).
    pub health: BTreeMap<String, HealthStatus>,
    /// Where life cycle notifications are posted (L461-469; "setup within the Payonic back
    /// office", so here and not per request). None: `POST /__sandbox/payonic/lifecycle/…`
    /// refuses with 409.
    pub lifecycle_url: Option<String>,
    /// Payments that exist when the sandbox starts (captures, refunds, voids and payouts need
    /// one; an MIT needs its parent).
    pub payments: Vec<PayonicPayment>,
    /// Many identical payments for big tests and benchmarks.
    pub generate: Option<PayonicGenerate>,
    /// An operation shows in the Payment API's `operations[]` only this long after it was
    /// processed (provider time; 0: at once). Payouts, processed at request time, are then
    /// not listed at once.
    #[serde(with = "humantime_serde_de")]
    pub listing_delay: std::time::Duration,
    /// An operation not yet listable (not processed, or within `listing_delay`) is listed with
    /// `"status": "pending"` and no `responsecode` or `authorizationcode`, instead of left out.
    pub pending_listings: bool,
    /// MIT, capture, refund and void post a first notification with `"status": "pending"`
    /// (no `responsecode` or `authorizationcode`) right after the request, before the final
    /// one.
    pub pending_notifications: bool,
    /// `responsecode` as a JSON number (`"00"` → 0, `"51"` → 51) in notifications, the payout
    /// answer and `operations[]`.
    pub numeric_responsecode: bool,
}

impl Default for PayonicConfig {
    fn default() -> Self {
        PayonicConfig {
            api_key: "sandbox-payonic-key".into(),
            merchant_id: "payrunsandbox".into(),
            notify_delay_min: std::time::Duration::from_millis(200),
            notify_delay_max: std::time::Duration::from_secs(2),
            health: BTreeMap::new(),
            lifecycle_url: None,
            payments: Vec::new(),
            generate: None,
            listing_delay: std::time::Duration::ZERO,
            pending_listings: false,
            pending_notifications: false,
            numeric_responsecode: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthStatus {
    /// "ok" or "error".
    pub status: String,
    #[serde(default)]
    pub msg: String,
}

/// The state a seeded payment starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeedState {
    Authorized,
    Captured,
}

/// A seeded Payonic payment: an approved authorization, and a capture of all of it when
/// `state` is `captured`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayonicPayment {
    pub paymentid: String,
    /// Defaults to the paymentid.
    #[serde(default)]
    pub merchantpaymentid: Option<String>,
    /// Minor units.
    pub amount: u64,
    pub currency: String,
    pub state: SeedState,
    #[serde(default)]
    pub reference: String,
    #[serde(default)]
    pub customer: PayonicCustomer,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PayonicCustomer {
    pub email: String,
    pub firstname: String,
    pub surename: String,
    pub ipaddress: String,
}

/// `count` payments with ids `<prefix><n>`, n from 1 zero-padded to 8 digits; the
/// merchantpaymentid is the same as the paymentid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayonicGenerate {
    pub prefix: String,
    pub count: u64,
    pub amount: u64,
    pub currency: String,
    pub state: SeedState,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// Fault injection, per request unless said otherwise. Rates are probabilities in 0..=1.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Extra latency before answering, uniform between the two (real time).
    #[serde(with = "humantime_serde_opt")]
    pub latency_min: Option<std::time::Duration>,
    #[serde(with = "humantime_serde_opt")]
    pub latency_max: Option<std::time::Duration>,
    /// Answer 500 without processing.
    pub error_5xx_rate: f64,
    /// Process nothing and hold the connection this long (real time), then close it.
    pub timeout_rate: f64,
    #[serde(with = "humantime_serde_opt")]
    pub timeout_after: Option<std::time::Duration>,
    /// Process and commit the request (the money moves), then drop the connection unanswered:
    /// the in-doubt case.
    pub drop_after_commit_rate: f64,
    /// Process and commit the request (the money moves, its notification is scheduled), then
    /// answer `504 Gateway Timeout` instead of the real answer: in doubt, with an answer that
    /// says "failed". Payonic's operations (not health or the Payment API) and Paysend's
    /// `POST /processing`.
    pub error_5xx_after_commit_rate: f64,
    /// Webhooks: not sent, sent twice, sent late, sent out of order, or signed wrongly.
    pub webhook_drop_rate: f64,
    pub webhook_duplicate_rate: f64,
    pub webhook_delay_rate: f64,
    pub webhook_reorder_rate: f64,
    pub webhook_bad_signature_rate: f64,
    /// Payouts held for manual review (task code 5, webhook status OnHold, L612-619, L649),
    /// released as completed after `hold_time` of provider time.
    pub on_hold_rate: f64,
    #[serde(with = "humantime_serde_opt")]
    pub hold_time: Option<std::time::Duration>,
}

/// A duration as the configuration writes it: text like `200ms`, `5s` or `30m`; a bare `0`
/// is zero, any other bare number is refused (its unit would be a guess).
struct Humantime(std::time::Duration);

impl<'de> serde::Deserialize<'de> for Humantime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Humantime;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration like 200ms, 5s or 30m")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Humantime, E> {
                humantime::parse_duration(s).map(Humantime).map_err(|e| {
                    E::custom(format!(
                        "`{s}` is not a duration ({e}; hint: write it like 200ms, 5s or 30m)"
                    ))
                })
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Humantime, E> {
                if n == 0 {
                    return Ok(Humantime(std::time::Duration::ZERO));
                }
                Err(E::custom(format!(
                    "`{n}` is a duration without its unit (hint: write {n}s or {n}ms)"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Humantime, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "`{n}` is not a duration: it is negative"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

mod humantime_serde_de {
    use serde::Deserialize;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        super::Humantime::deserialize(d).map(|h| h.0)
    }
}

mod humantime_serde_opt {
    use serde::Deserialize;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        Ok(Option::<super::Humantime>::deserialize(d)?.map(|h| h.0))
    }
}

impl Faults {
    /// Sets one knob from `name=value` (the `--fault` flag).
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (name, value) = assignment
            .split_once('=')
            .ok_or(format!("`{assignment}` is not name=value"))?;
        let rate = || {
            value
                .parse::<f64>()
                .map_err(|_| format!("`{value}` is not a number"))
        };
        let duration = || {
            humantime::parse_duration(value)
                .map_err(|_| format!("`{value}` is not a duration like 200ms"))
        };
        match name {
            "latency_min" => self.latency_min = Some(duration()?),
            "latency_max" => self.latency_max = Some(duration()?),
            "timeout_after" => self.timeout_after = Some(duration()?),
            "error_5xx_rate" => self.error_5xx_rate = rate()?,
            "timeout_rate" => self.timeout_rate = rate()?,
            "drop_after_commit_rate" => self.drop_after_commit_rate = rate()?,
            "error_5xx_after_commit_rate" => self.error_5xx_after_commit_rate = rate()?,
            "webhook_drop_rate" => self.webhook_drop_rate = rate()?,
            "webhook_duplicate_rate" => self.webhook_duplicate_rate = rate()?,
            "webhook_delay_rate" => self.webhook_delay_rate = rate()?,
            "webhook_reorder_rate" => self.webhook_reorder_rate = rate()?,
            "webhook_bad_signature_rate" => self.webhook_bad_signature_rate = rate()?,
            "on_hold_rate" => self.on_hold_rate = rate()?,
            "hold_time" => self.hold_time = Some(duration()?),
            other => {
                return Err(format!(
                    "unknown fault `{other}`; see batches/sandbox.yaml for the knobs"
                ));
            }
        }
        Ok(())
    }
}

impl SandboxConfig {
    /// Loads a config file, strictly (unknown keys are errors with their line).
    pub fn load(path: &std::path::Path) -> Result<SandboxConfig, crate::diagnostic::Diagnostic> {
        let display = path.display().to_string();
        // Like a manifest: a regular file of at most 1 MiB (never a FIFO or /dev/zero).
        let bytes =
            crate::input_file::read_capped(path, crate::manifest::MAX_BYTES).map_err(|r| {
                crate::diagnostic::Diagnostic::new(
                    &display,
                    "sandbox.io",
                    match r {
                        crate::input_file::Refusal::Io(e) => {
                            format!("cannot read the sandbox config: {e}")
                        }
                        other => format!("the sandbox config {}", other.describe()),
                    },
                )
            })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            crate::diagnostic::Diagnostic::new(
                &display,
                "sandbox.io",
                "the sandbox config is not UTF-8",
            )
        })?;
        let c: SandboxConfig = crate::yaml::from_str(&display, &text, "sandbox.config")?;
        c.check()
            .map_err(|m| crate::diagnostic::Diagnostic::new(&display, "sandbox.config", m))?;
        Ok(c)
    }

    /// Values that parse but make no sense.
    pub fn check(&self) -> Result<(), String> {
        if !(self.time_scale > 0.0 && self.time_scale.is_finite()) {
            return Err(format!(
                "time_scale {} must be a positive number",
                self.time_scale
            ));
        }
        let f = &self.faults;
        for (name, rate) in [
            ("error_5xx_rate", f.error_5xx_rate),
            ("timeout_rate", f.timeout_rate),
            ("drop_after_commit_rate", f.drop_after_commit_rate),
            ("error_5xx_after_commit_rate", f.error_5xx_after_commit_rate),
            ("webhook_drop_rate", f.webhook_drop_rate),
            ("webhook_duplicate_rate", f.webhook_duplicate_rate),
            ("webhook_delay_rate", f.webhook_delay_rate),
            ("webhook_reorder_rate", f.webhook_reorder_rate),
            ("webhook_bad_signature_rate", f.webhook_bad_signature_rate),
            ("on_hold_rate", f.on_hold_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!(
                    "faults.{name} {rate} is not a probability between 0 and 1"
                ));
            }
        }
        for (c, amount) in &self.paysend.balances {
            let cur = crate::money::Currency::from_alpha(c)
                .ok_or(format!("paysend.balances: `{c}` is not an ISO 4217 code"))?;
            crate::money::parse_amount(amount, cur.exponent().unwrap_or(0))
                .map_err(|e| format!("paysend.balances.{c}: `{amount}` {}", e.message()))?;
        }
        self.payonic.check()?;
        if let Some(r) = self.paysend.rate_limit
            && (r.requests_per_second == 0 || r.burst == 0)
        {
            return Err(
                "paysend.rate_limit needs requests_per_second and burst of at least 1".into(),
            );
        }
        Ok(())
    }
}

impl PayonicConfig {
    fn check(&self) -> Result<(), String> {
        let id_ok =
            |s: &str| (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if self.api_key.is_empty() {
            return Err("payonic.api_key must not be empty".into());
        }
        if self.notify_delay_min > self.notify_delay_max {
            return Err("payonic.notify_delay_min is above notify_delay_max".into());
        }
        for (name, h) in &self.health {
            if !crate::sandbox::payonic::health::NAMES.contains(&name.as_str()) {
                return Err(format!(
                    "payonic.health: unknown API `{name}` (hint: one of {})",
                    crate::sandbox::payonic::health::NAMES.join(", ")
                ));
            }
            if h.status != "ok" && h.status != "error" {
                return Err(format!(
                    "payonic.health.{name}.status `{}` must be ok or error",
                    h.status
                ));
            }
        }
        if let Some(url) = &self.lifecycle_url {
            let ok = reqwest::Url::parse(url).is_ok_and(|u| {
                (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some()
            });
            if !ok {
                return Err(format!(
                    "payonic.lifecycle_url `{url}` is not an absolute http or https URL (hint: http://127.0.0.1:8787/lifecycle)"
                ));
            }
        }
        let amount_ok = |a: u64| a <= 999_999_999_999;
        for p in &self.payments {
            let mpid = p.merchantpaymentid.as_deref().unwrap_or(&p.paymentid);
            if !id_ok(&p.paymentid) || !id_ok(mpid) {
                return Err(format!(
                    "payonic.payments: `{}`/`{mpid}` must be 1 to 32 letters or digits",
                    p.paymentid
                ));
            }
            if crate::money::Currency::from_alpha(&p.currency).is_none() || !amount_ok(p.amount) {
                return Err(format!(
                    "payonic.payments.{}: amount {} {} is not 0..=999999999999 minor units of an ISO 4217 currency",
                    p.paymentid, p.amount, p.currency
                ));
            }
        }
        if let Some(g) = &self.generate {
            if !g.prefix.bytes().all(|b| b.is_ascii_alphanumeric()) || g.prefix.len() > 24 {
                return Err("payonic.generate.prefix must be at most 24 letters or digits".into());
            }
            if g.count > 99_999_999 {
                return Err("payonic.generate.count must be below 100000000".into());
            }
            if crate::money::Currency::from_alpha(&g.currency).is_none() || !amount_ok(g.amount) {
                return Err(format!(
                    "payonic.generate: amount {} {} is not 0..=999999999999 minor units of an ISO 4217 currency",
                    g.amount, g.currency
                ));
            }
        }
        Ok(())
    }
}

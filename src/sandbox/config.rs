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
    pub faults: Faults,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            seed: 1,
            time_scale: 1.0,
            paysend: PaysendConfig::default(),
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

mod humantime_serde_de {
    use serde::Deserialize;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

mod humantime_serde_opt {
    use serde::Deserialize;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
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
        let text = std::fs::read_to_string(path).map_err(|e| {
            crate::diagnostic::Diagnostic::new(
                &display,
                "sandbox.io",
                format!("cannot read the sandbox config: {e}"),
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

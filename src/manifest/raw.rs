//! The serde shape of a batch manifest, exactly as a user writes it. Only `Manifest::load`
//! reads these types; everything after it works on the checked `Manifest`.

use indexmap::IndexMap;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub batch: String,
    pub provider: String,
    pub environment: String,
    #[serde(default)]
    pub credentials: IndexMap<String, String>,
    pub items: RawItems,
    #[serde(default)]
    pub defaults: IndexMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub preflight: Vec<RawNode>,
    pub flow: Vec<RawNode>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub notifications: RawNotifications,
    /// How requests are signed where the provider offers a choice (Paysend: sha256 or sha512).
    pub signature: Option<String>,
    /// How the provider is reached over TLS (a private CA, a client certificate), and the
    /// opt-in to plain http for a host that is not this machine.
    #[serde(default)]
    pub tls: RawTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM bundle of CAs trusted on top of the platform's (a provider with a private CA).
    pub ca_file: Option<String>,
    /// PEM certificate (chain) payrun presents to the provider, e.g. Payoneer's QWAC.
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<String>,
    /// Allows an `http://` environment on a host other than this machine.
    pub allow_insecure_http: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawItems {
    pub source: Option<String>,
    pub inline: Option<Vec<IndexMap<String, serde_yaml::Value>>>,
    pub delimiter: Option<String>,
    pub header: Option<bool>,
    pub columns: Option<IndexMap<String, serde_yaml::Value>>,
    /// Allows a `source` outside the manifest's folder (an absolute path, `..`, or a symlink
    /// leading out); without it such a source is refused.
    pub allow_outside_folder: Option<bool>,
    /// Pays the same recipient the same amount more than once on purpose (a warning, not an
    /// error).
    pub allow_repeated_recipients: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub id: Option<String>,
    pub op: String,
    pub delay: Option<String>,
    #[serde(default)]
    pub payload: IndexMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub success: Vec<RawNode>,
    #[serde(default)]
    pub fail: Vec<RawNode>,
    #[serde(default)]
    pub always: Vec<RawNode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub concurrency: Option<u32>,
    pub tasks_per_request: Option<u32>,
    /// Limits of single endpoints, on top of the provider-wide one.
    #[serde(default)]
    pub endpoints: IndexMap<String, RawEndpointLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpointLimit {
    pub requests_per_second: f64,
    pub burst: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    pub initial_interval: Option<String>,
    pub factor: Option<f64>,
    pub max_interval: Option<String>,
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub initial_interval: Option<String>,
    pub factor: Option<f64>,
    pub max_interval: Option<String>,
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub per_class: RawPerClass,
}

/// Overrides per error class; anything left out comes from the top-level policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPerClass {
    /// The provider said "not now" (Paysend's 404 "Sorry. Can't accept your request now.", 429).
    pub rate_limited: Option<RawBackoff>,
    /// 5xx answers.
    pub server_error: Option<RawBackoff>,
    /// No answer in time, or the connection failed.
    pub network: Option<RawBackoff>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationMode {
    Webhook,
    Polling,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifications {
    pub mode: Option<NotificationMode>,
    pub listen: Option<String>,
    pub public_url: Option<String>,
    /// How long an accepted request's notification is awaited before payrun asks (provider
    /// time); default: the provider's own.
    pub deadline: Option<String>,
    /// How many times payrun asks about an accepted request whose notification never came
    /// before a person is asked to look; default: the provider's own.
    pub lookups: Option<u32>,
    /// How long after a request of an item in doubt the provider's "not listed" may mean
    /// "never processed" (provider time), for a provider without idempotency (Payonic);
    /// default: the provider's own (Payonic: 10 minutes).
    pub settle: Option<String>,
    /// Allows an `http://` public_url on a host other than this machine (the URL carries the
    /// notification token); without it such a URL is refused.
    pub allow_insecure_http: Option<bool>,
}

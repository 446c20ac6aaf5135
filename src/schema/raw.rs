//! The serde shape of schema files (`schemas/<provider>/*.yaml`), as written; checked and
//! compiled into `Operation`/`Field` by the registry. See schemas/README.md.

use super::field::{CurrencyFormat, Holds, Wire};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub provider: String,
    pub name: String,
    pub doc: String,
    pub base_urls: RawBaseUrls,
    #[serde(default)]
    pub credentials: Vec<RawCredential>,
    pub tree: TreeExecution,
    #[serde(default)]
    pub packing: bool,
    pub limits: RawProviderLimits,
    /// Names of the provider's endpoints a manifest may give a rate limit of its own
    /// (`limits.endpoints.<name>`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Final error codes the provider's table says can be resent as they are (with a new
    /// idempotency key): what `run --retry-failed` sends again.
    #[serde(default)]
    pub resend_safe: Vec<String>,
    /// How idempotency and task keys are written on the wire: `uuid` (default), `hex` (the
    /// same 128 bits as 32 hex digits, for ids like `^[a-zA-Z0-9]{1,32}$`) or `keyed` (32 hex
    /// digits under the batch's secret, see `KeyFormat::Keyed`).
    #[serde(default)]
    pub keys: KeyFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    #[default]
    Uuid,
    Hex,
    /// 32 hex digits derived from the item key with a secret of the batch (`keys::keyed`): for
    /// a provider whose notifications are unsigned and whose reports list the key (Payonic's
    /// `note`), so that nobody can compute the keys from the batch and item ids.
    Keyed,
}

/// Where an operation's request goes, for providers with one URL per operation.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    /// GET or POST.
    pub method: String,
    /// Path below the base URL, with `{field}` for fields whose `in` is `path`.
    pub path: String,
    /// The operation's own host per environment (sandbox, production), when the provider has
    /// one host per operation.
    #[serde(default)]
    pub hosts: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBaseUrls {
    pub sandbox: Option<String>,
    pub production: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    pub name: String,
    pub description: String,
}

/// How an in-doubt request of an operation is settled (`RawOperation::settle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Settle {
    /// Asked about (by key, reference or group) before anything is sent again.
    Lookup,
    /// Sent again under the same key: the provider deduplicates it, or it moves no money.
    Resend,
    /// Handed to a person: the provider offers no way to find out, and resending could pay twice.
    Review,
}

impl Settle {
    pub fn as_str(self) -> &'static str {
        match self {
            Settle::Lookup => "lookup",
            Settle::Resend => "resend",
            Settle::Review => "review",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TreeExecution {
    /// The provider executes a whole task tree per request (Paysend).
    Server,
    /// payrun walks the tree and makes one call per task.
    Client,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProviderLimits {
    pub requests_per_second: f64,
    pub burst: u32,
    pub concurrency: u32,
    #[serde(default = "one")]
    pub tasks_per_request: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOperation {
    pub provider: String,
    pub operation: String,
    pub summary: String,
    pub doc: String,
    pub role: Role,
    #[serde(default)]
    pub completion: Completion,
    pub money: Option<RawMoney>,
    pub idempotency: Option<String>,
    /// The field payrun fills with the URL where it listens for this operation's notification.
    pub notification_url: Option<String>,
    /// The operation of the same provider that tells what became of a request whose answer was
    /// lost (Payonic: `payment`, the Payment API). When that operation answers only by
    /// notification, a batch of this one needs payrun's listener.
    pub lookup: Option<String>,
    /// How a request of this operation whose answer was lost (in doubt) is settled: `lookup`
    /// (asked about by its key or reference), `resend` (sent again under the same key: the
    /// provider deduplicates it, or it moves nothing), `review` (a person looks: nothing else is
    /// safe). Default: `lookup` for an operation that pays or names a `lookup`, else `resend`.
    pub settle: Option<Settle>,
    pub request: Option<RawRequest>,
    #[serde(default)]
    pub any_of: Vec<Vec<String>>,
    pub fields: Vec<RawField>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Payout,
    Fx,
    Lookup,
    Balance,
    Status,
    Auth,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Completion {
    /// The response carries the result.
    #[default]
    Sync,
    /// The result arrives later as a callback to the notification URL.
    Notification,
    /// The result must be fetched by polling.
    Poll,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMoney {
    pub amount: String,
    pub currency: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawField {
    pub path: String,
    #[serde(rename = "type")]
    pub ty: TypeName,
    #[serde(default)]
    pub required: bool,
    pub pattern: Option<String>,
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
    pub min: Option<serde_yaml::Value>,
    pub max: Option<serde_yaml::Value>,
    /// Amounts: the most digits the amount may have in the currency's minor units (the
    /// integer a `wire: minor_units` field sends; Payonic's `^[0-9]{1,12}$`).
    pub max_digits: Option<u32>,
    pub currency: Option<String>,
    pub currency_code: Option<String>,
    pub format: Option<CurrencyFormat>,
    pub values: Option<Vec<serde_yaml::Value>>,
    #[serde(default)]
    pub case_insensitive: bool,
    #[serde(default)]
    pub sensitive: bool,
    /// What the field holds: `iban`, `account`, `card`, `aba`, `id`, `phone`, `name`, `email`
    /// (checks, scientific notation, masking; see schemas/README.md).
    pub holds: Option<Holds>,
    /// What it holds when a sibling field has a given value.
    #[serde(default)]
    pub holds_if: Vec<RawHoldsIf>,
    /// The field identifies the recipient of the money (see `Field::recipient`).
    #[serde(default)]
    pub recipient: bool,
    pub wire: Option<Wire>,
    /// `body` (default) or `path`: a URL path variable of the operation's request.
    #[serde(rename = "in", default)]
    pub location: Location,
    pub example: Option<serde_yaml::Value>,
    pub description: String,
}

/// `holds_if: [{field: identifierType, equals: IBAN, holds: iban}]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHoldsIf {
    /// The payload path of a sibling field of the same operation.
    pub field: String,
    pub equals: String,
    pub holds: Holds,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    #[default]
    Body,
    Path,
    /// Checked and used by payrun (e.g. the currency that converts an amount to minor units)
    /// but not sent: the provider's request has no such field.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypeName {
    String,
    Integer,
    Amount,
    Currency,
    Country,
    Date,
    Datetime,
    Email,
    Enum,
    Uuid,
    Boolean,
}

/// The text of a YAML scalar (strings as they are, numbers and booleans as written).
pub fn scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

//! The batch manifest: loading, strict parsing with positions, and the checks that need no
//! provider schema (ids, durations, limits, credentials are env var names, …). The result is a
//! `Manifest` whose values are typed; the flow is compiled against the provider's schemas later
//! (`crate::compile`).

pub mod raw;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::yaml::{self, Seg, key};
use indexmap::IndexMap;
use raw::{NotificationMode, RawBackoff, RawManifest, RawNode};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A manifest that parsed and passed its own checks.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest as the user named it, for diagnostics.
    pub display: String,
    pub path: PathBuf,
    pub text: String,
    pub batch: String,
    pub provider: String,
    pub environment: Environment,
    /// (credential name, environment variable name).
    pub credentials: Vec<(String, String)>,
    pub items: Items,
    /// `items.allow_repeated_recipients`: the batch may pay the same recipient the same amount
    /// twice (validate warns instead of refusing).
    pub allow_repeated_recipients: bool,
    pub defaults: IndexMap<String, serde_yaml::Value>,
    pub preflight: Vec<Node>,
    pub flow: Vec<Node>,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub notifications: Notifications,
    pub signature: Signature,
    pub tls: Tls,
    /// Things the manifest allows that the operator should know (e.g. a listener reachable
    /// from other machines); every command prints them.
    pub warnings: Vec<String>,
}

/// How payrun reaches the provider over TLS (the manifest's `tls:`); paths are resolved
/// against the manifest's folder, and read only when a run builds its HTTP client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// CAs trusted on top of the platform's (PEM bundle).
    pub ca_file: Option<PathBuf>,
    /// The client certificate and its key (PEM), always both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Plain `http://` to a host other than this machine was explicitly allowed.
    pub allow_insecure_http: bool,
}

/// The digest of request signatures where a provider offers a choice (Paysend's
/// X-OPP-Signature: SHA-256 or SHA-512 of body + key, L7010-7016).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Signature {
    #[default]
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Sandbox,
    Production,
    Url(String),
}

#[derive(Debug, Clone)]
pub enum Items {
    Csv(CsvSource),
    Inline(Vec<InlineItem>),
}

#[derive(Debug, Clone)]
pub struct CsvSource {
    pub path: PathBuf,
    /// The path as written in the manifest (relative to the manifest's folder).
    pub display: String,
    pub delimiter: u8,
    pub header: bool,
    /// item field -> column; `None` means every header column is a field of the same name.
    pub columns: Option<Vec<(String, ColumnRef)>>,
    /// `items.allow_outside_folder`: the file may lie outside the manifest's folder.
    pub allow_outside_folder: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnRef {
    Name(String),
    /// 1-based, for files without a header row.
    Number(usize),
}

#[derive(Debug, Clone)]
pub struct InlineItem {
    /// The line of the item in the manifest.
    pub line: u64,
    pub fields: IndexMap<String, String>,
}

/// One node of a flow template.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub op: String,
    pub delay: Option<Duration>,
    pub payload: IndexMap<String, serde_yaml::Value>,
    pub success: Vec<Node>,
    pub fail: Vec<Node>,
    pub always: Vec<Node>,
    /// Stable position in the template (`0`, `0.success.1`), used in task keys.
    pub tree_path: String,
    /// Where the node is in the manifest, for locating errors.
    pub yaml_path: Vec<Seg>,
}

impl Node {
    /// Children with the link that leads to them.
    pub fn children(&self) -> impl Iterator<Item = (Link, &Node)> {
        self.success
            .iter()
            .map(|n| (Link::Success, n))
            .chain(self.fail.iter().map(|n| (Link::Fail, n)))
            .chain(self.always.iter().map(|n| (Link::Always, n)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    Success,
    Fail,
    Always,
}

impl Link {
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Success => "success",
            Link::Fail => "fail",
            Link::Always => "always",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Limits {
    pub requests_per_second: f64,
    pub burst: u32,
    pub concurrency: u32,
    pub tasks_per_request: u32,
    /// Per-endpoint limits (name → (requests per second, burst)), on top of the provider-wide
    /// limit.
    pub endpoints: Vec<(String, f64, u32)>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Backoff {
    #[serde(with = "humantime_serde_compat")]
    pub initial_interval: Duration,
    pub factor: f64,
    #[serde(with = "humantime_serde_compat")]
    pub max_interval: Duration,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RetryPolicy {
    pub default: Backoff,
    pub rate_limited: Backoff,
    pub server_error: Backoff,
    pub network: Backoff,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Notifications {
    pub mode: NotificationMode,
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub deadline: Option<Duration>,
    pub lookups: Option<u32>,
    pub settle: Option<Duration>,
}

impl Notifications {
    /// The path of `public_url` as a request carries it (percent-encoded, no trailing `/`),
    /// e.g. `/payrun`; `None` when the URL has no path. payrun gives the provider
    /// `<public_url><its own path>`; a reverse proxy in front of the listener may forward that
    /// path as it is or strip this prefix, so the listener serves both.
    pub fn public_path(&self) -> Option<String> {
        let url = url::Url::parse(self.public_url.as_deref()?.trim()).ok()?;
        let path = url.path().trim_end_matches('/');
        (!path.is_empty()).then(|| path.to_string())
    }
}

/// `notifications.public_url` must be an absolute http(s) URL that payrun can append its own
/// paths to (`/payonic/notify/<token>`, `/paysend/webhook`): a query or a fragment would end
/// up in the middle of the URL the provider calls.
fn check_public_url(u: &str) -> Result<(), (String, String)> {
    const EXAMPLE: &str = "e.g. https://payroll.example.com/payrun";
    let parsed = url::Url::parse(u)
        .ok()
        .filter(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some());
    let Some(p) = parsed else {
        return Err((
            "is not an absolute http(s) URL".into(),
            format!("write the full URL the provider can reach, {EXAMPLE}"),
        ));
    };
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err((
            "has a space or a control character".into(),
            format!("write the URL without spaces, {EXAMPLE}"),
        ));
    }
    let hint = |what: &str| {
        format!(
            "leave the {what} out: payrun appends its own paths to public_url (/payonic/notify/<token>, /paysend/webhook), {EXAMPLE}"
        )
    };
    if p.query().is_some() {
        return Err(("has a query (`?…`)".into(), hint("query")));
    }
    if p.fragment().is_some() {
        return Err(("has a fragment (`#…`)".into(), hint("fragment")));
    }
    Ok(())
}

mod humantime_serde_compat {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

const DEFAULT_BACKOFF: Backoff = Backoff {
    initial_interval: Duration::from_millis(500),
    factor: 2.0,
    max_interval: Duration::from_secs(60),
    max_attempts: 6,
};

/// The largest manifest payrun reads: settings and a few thousand inline items fit many times
/// over; a bigger file is not a manifest (or its items belong in a CSV source).
pub const MAX_BYTES: u64 = 1 << 20;

/// The rules whose manifest could not be read at all (exit 2 rather than 1).
pub const UNREADABLE_RULES: [&str; 3] =
    ["manifest.io", "manifest.not-a-file", "manifest.too-large"];

/// The diagnostic for a manifest payrun does not read.
fn refused(display: &str, r: &crate::input_file::Refusal) -> Diagnostic {
    use crate::input_file::Refusal;
    let (rule, hint) = match r {
        Refusal::Io(_) | Refusal::Changed => ("manifest.io", "check the path"),
        Refusal::NotRegular(_) | Refusal::System => (
            "manifest.not-a-file",
            "name the batch's manifest.yaml; payrun reads manifests from regular files only",
        ),
        Refusal::TooLarge { .. } => (
            "manifest.too-large",
            "a manifest holds settings and at most a few thousand inline items: put the items into a CSV file named in items.source",
        ),
    };
    let message = match r {
        Refusal::Io(e) => format!("cannot read the manifest: {e}"),
        other => format!("the manifest {}", other.describe()),
    };
    Diagnostic::new(display, rule, message).hint(hint)
}

impl Manifest {
    /// Reads and checks a manifest. I/O problems and content problems are both diagnostics;
    /// the caller tells them apart by rule (`manifest.io`).
    pub fn load(path: &Path) -> Result<Manifest, Diagnostics> {
        let display = path.display().to_string();
        let bytes = crate::input_file::read_capped(path, MAX_BYTES)
            .map_err(|r| Diagnostics(vec![refused(&display, &r)]))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = upto.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            Diagnostics(vec![
                Diagnostic::new(&display, "manifest.encoding", "the manifest is not UTF-8")
                    .at(line, 1)
                    .hint("save it as UTF-8"),
            ])
        })?;
        let text = text
            .strip_prefix('\u{feff}')
            .map(str::to_string)
            .unwrap_or(text);
        if text.trim().is_empty() {
            return Err(Diagnostics(vec![Diagnostic::new(&display, "manifest.empty", "the manifest is empty").hint("start from an example in batches/ or `payrun template <provider> <operation> --manifest`")]));
        }
        let raw: RawManifest =
            yaml::from_str(&display, &text, "manifest.syntax").map_err(|d| Diagnostics(vec![d]))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        check(raw, display, path.to_path_buf(), text, &base)
    }
}

struct Checker<'a> {
    display: &'a str,
    text: &'a str,
    errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(
        &mut self,
        path: &[Seg],
        rule: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let d = Diagnostic::new(self.display, rule, message)
            .at_opt(yaml::locate(self.text, path))
            .hint(hint);
        self.errors.push(d);
    }

    fn duration(&mut self, path: &[Seg], text: &Option<String>, default: Duration) -> Duration {
        match text {
            None => default,
            Some(t) => match humantime::parse_duration(t.trim()) {
                Ok(d) => d,
                Err(_) => {
                    self.error(
                        path,
                        "manifest.duration",
                        format!("`{t}` is not a duration"),
                        "write e.g. 500ms, 2s, 3m, 2h",
                    );
                    default
                }
            },
        }
    }

    fn backoff(&mut self, path: Vec<Seg>, raw: &RawBackoff, base: &Backoff) -> Backoff {
        let at = |k: &str| {
            let mut p = path.clone();
            p.push(key(k));
            p
        };
        let b = Backoff {
            initial_interval: self.duration(
                &at("initial_interval"),
                &raw.initial_interval,
                base.initial_interval,
            ),
            factor: raw.factor.unwrap_or(base.factor),
            max_interval: self.duration(&at("max_interval"), &raw.max_interval, base.max_interval),
            max_attempts: raw.max_attempts.unwrap_or(base.max_attempts),
        };
        if !(1.0..=10.0).contains(&b.factor) {
            self.error(
                &at("factor"),
                "manifest.retry",
                format!("factor {} is outside 1..10", b.factor),
                "2 doubles the wait after every attempt",
            );
        }
        if b.max_attempts == 0 {
            self.error(
                &at("max_attempts"),
                "manifest.retry",
                "max_attempts must be at least 1",
                "1 means no retries",
            );
        }
        if b.max_interval < b.initial_interval {
            self.error(
                &at("max_interval"),
                "manifest.retry",
                "max_interval is shorter than initial_interval",
                "raise max_interval",
            );
        }
        b
    }
}

fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn check(
    raw: RawManifest,
    display: String,
    path: PathBuf,
    text: String,
    base: &Path,
) -> Result<Manifest, Diagnostics> {
    let mut c = Checker {
        display: &display,
        text: &text,
        errors: Vec::new(),
    };

    if !is_id(&raw.batch) {
        c.error(&[key("batch")], "manifest.batch-id", format!("batch id `{}` is not usable as a stable id", raw.batch), "use 1-64 letters, digits, '-', '_' or '.', e.g. payroll-2026-11; it seeds every idempotency key, so never reuse one for a different payroll");
    }
    let environment = match raw.environment.as_str() {
        "sandbox" => Environment::Sandbox,
        "production" => Environment::Production,
        u if u.starts_with("https://") || u.starts_with("http://") => {
            Environment::Url(u.trim_end_matches('/').to_string())
        }
        other => {
            c.error(
                &[key("environment")],
                "manifest.environment",
                format!("environment `{other}` is not sandbox, production or a URL"),
                "write sandbox, production, or the base URL, e.g. https://api.example.com",
            );
            Environment::Sandbox
        }
    };
    let tls = check_tls(&mut c, &raw, base);
    if let Environment::Url(u) = &environment
        && u.starts_with("http://")
        && !tls.allow_insecure_http
        && !is_loopback_url(u)
    {
        c.error(
            &[key("environment")],
            "manifest.insecure-http",
            format!("`{u}` would send payments and credentials unencrypted to another machine"),
            "use the provider's https:// URL; only for a trusted private network, set `tls: {allow_insecure_http: true}`",
        );
    }
    let mut credentials = Vec::new();
    for (name, var) in &raw.credentials {
        if !is_env_name(var) {
            c.error(
                &[key("credentials"), key(name)],
                "manifest.credential-value",
                format!("credential `{name}` must name an environment variable, not hold a value"),
                "write the variable's NAME, e.g. PAYSEND_INBOUND_KEY, and export the secret in the environment; never put secrets in a manifest",
            );
        }
        credentials.push((name.clone(), var.clone()));
    }

    let items = check_items(&mut c, &raw, base);

    let mut ids = std::collections::HashMap::new();
    let preflight = nodes(
        &mut c,
        &raw.preflight,
        vec![key("preflight")],
        "pre",
        &mut ids,
    );
    if raw.flow.is_empty() {
        c.error(
            &[key("flow")],
            "manifest.flow-empty",
            "the flow has no task",
            "add at least one node, e.g. `- op: pay.toAccount`",
        );
    }
    let flow = nodes(&mut c, &raw.flow, vec![key("flow")], "", &mut ids);

    let l = &raw.limits;
    let limits = Limits {
        requests_per_second: l.requests_per_second.unwrap_or(0.0),
        burst: l.burst.unwrap_or(0),
        concurrency: l.concurrency.unwrap_or(0),
        tasks_per_request: l.tasks_per_request.unwrap_or(0),
        endpoints: l
            .endpoints
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.requests_per_second,
                    v.burst.unwrap_or(1).max(1),
                )
            })
            .collect(),
    };
    for (name, e) in &l.endpoints {
        if !(e.requests_per_second > 0.0 && e.requests_per_second <= 10_000.0) {
            c.error(
                &[
                    key("limits"),
                    key("endpoints"),
                    key(name),
                    key("requests_per_second"),
                ],
                "manifest.limits",
                format!(
                    "requests_per_second {} is not in (0, 10000]",
                    e.requests_per_second
                ),
                "ask the provider for the endpoint's rate limit",
            );
        }
        if e.burst == Some(0) {
            c.error(
                &[key("limits"), key("endpoints"), key(name), key("burst")],
                "manifest.limits",
                "burst must be at least 1",
                "1 sends evenly spaced requests",
            );
        }
    }
    if let Some(r) = l.requests_per_second
        && !(r > 0.0 && r <= 10_000.0)
    {
        c.error(
            &[key("limits"), key("requests_per_second")],
            "manifest.limits",
            format!("requests_per_second {r} is not in (0, 10000]"),
            "ask the provider for your rate limit",
        );
    }
    for (k, v) in [
        ("burst", l.burst),
        ("concurrency", l.concurrency),
        ("tasks_per_request", l.tasks_per_request),
    ] {
        if v == Some(0) {
            c.error(
                &[key("limits"), key(k)],
                "manifest.limits",
                format!("{k} must be at least 1"),
                "leave it out to use the provider's default",
            );
        }
    }

    let r = &raw.retry;
    let top = RawBackoff {
        initial_interval: r.initial_interval.clone(),
        factor: r.factor,
        max_interval: r.max_interval.clone(),
        max_attempts: r.max_attempts,
    };
    let default = c.backoff(vec![key("retry")], &top, &DEFAULT_BACKOFF);
    let class = |c: &mut Checker, name: &str, raw: &Option<RawBackoff>| match raw {
        Some(b) => c.backoff(vec![key("retry"), key("per_class"), key(name)], b, &default),
        None => default.clone(),
    };
    let retry = RetryPolicy {
        rate_limited: class(&mut c, "rate_limited", &r.per_class.rate_limited),
        server_error: class(&mut c, "server_error", &r.per_class.server_error),
        network: class(&mut c, "network", &r.per_class.network),
        default: default.clone(),
    };

    let n = &raw.notifications;
    let mode = n
        .mode
        .unwrap_or(if n.listen.is_some() || n.public_url.is_some() {
            NotificationMode::Webhook
        } else {
            NotificationMode::Polling
        });
    if mode == NotificationMode::Webhook {
        if n.listen.is_none() {
            c.error(
                &[key("notifications")],
                "manifest.notifications",
                "webhook notifications need `listen`",
                "the local address to listen on, e.g. 127.0.0.1:8787",
            );
        }
        if n.public_url.is_none() {
            c.error(
                &[key("notifications")],
                "manifest.notifications",
                "webhook notifications need `public_url`",
                "the URL the provider can reach, e.g. https://payroll.example.com/payrun",
            );
        }
    }
    let mut warnings = Vec::new();
    if let Some(listen) = &n.listen {
        match listen.parse::<std::net::SocketAddr>() {
            Err(_) => c.error(
                &[key("notifications"), key("listen")],
                "manifest.notifications",
                format!("`{}` is not an address:port", crate::mask::shorten(listen)),
                "write e.g. 127.0.0.1:8787",
            ),
            Ok(addr) => warnings.extend(listen_warning(addr)),
        }
    }
    if let Some(u) = &n.public_url {
        if let Err((why, hint)) = check_public_url(u) {
            c.error(
                &[key("notifications"), key("public_url")],
                "manifest.public-url",
                format!("`{}` {why}", crate::mask::shorten(u)),
                hint,
            );
        } else if u.trim().starts_with("http://")
            && !is_loopback_url(u.trim())
            && !n.allow_insecure_http.unwrap_or(false)
        {
            c.error(
                &[key("notifications"), key("public_url")],
                "manifest.insecure-public-url",
                format!(
                    "`{}` would carry notifications and their secret token unencrypted across the network",
                    crate::mask::shorten(u)
                ),
                "use an https:// URL (e.g. a reverse proxy with TLS in front of the listener); only for a trusted private network, set `allow_insecure_http: true` under notifications",
            );
        }
    }
    let deadline = n.deadline.as_ref().map(|_| {
        c.duration(
            &[key("notifications"), key("deadline")],
            &n.deadline,
            Duration::ZERO,
        )
    });
    let settle = n.settle.as_ref().map(|_| {
        c.duration(
            &[key("notifications"), key("settle")],
            &n.settle,
            Duration::ZERO,
        )
    });
    if n.lookups == Some(0) {
        c.error(
            &[key("notifications"), key("lookups")],
            "manifest.notifications",
            "lookups must be at least 1",
            "how many times payrun asks before a person looks, e.g. 5",
        );
    }
    let notifications = Notifications {
        mode,
        listen: n.listen.clone(),
        public_url: n.public_url.clone(),
        deadline,
        lookups: n.lookups,
        settle,
    };
    let signature = match raw
        .signature
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("sha256" | "sha-256") => Signature::Sha256,
        Some("sha512" | "sha-512") => Signature::Sha512,
        Some(other) => {
            c.error(
                &[key("signature")],
                "manifest.signature",
                format!("`{other}` is not a signature digest payrun knows"),
                "write sha256 or sha512",
            );
            Signature::Sha256
        }
    };

    if !c.errors.is_empty() {
        return Err(Diagnostics(c.errors));
    }
    let allow_repeated_recipients = raw.items.allow_repeated_recipients.unwrap_or(false);
    Ok(Manifest {
        display: display.clone(),
        path,
        text: text.clone(),
        batch: raw.batch,
        provider: raw.provider,
        environment,
        credentials,
        items: items.expect("items are present when there are no errors"),
        allow_repeated_recipients,
        defaults: raw.defaults,
        preflight,
        flow,
        limits,
        retry,
        notifications,
        signature,
        tls,
        warnings,
    })
}

/// What the operator should know about a listener on `addr`: nothing for loopback; for any
/// other address, that machines other than this one can connect to it.
fn listen_warning(addr: std::net::SocketAddr) -> Option<String> {
    let ip = addr.ip();
    if ip.is_loopback() {
        return None;
    }
    let reach = if ip.is_unspecified() {
        "on every network interface".to_string()
    } else {
        format!("on {ip}")
    };
    Some(format!(
        "notifications.listen {addr} accepts connections from other machines {reach}, not only from this one; make sure only the provider (or your TLS proxy) can reach it, or listen on 127.0.0.1 behind the proxy"
    ))
}

/// An http(s) URL whose host is this machine (localhost, 127.0.0.0/8, ::1): plain http to it
/// never crosses a network.
pub fn is_loopback_url(u: &str) -> bool {
    match url::Url::parse(u).ok().as_ref().and_then(url::Url::host) {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn check_tls(c: &mut Checker, raw: &RawManifest, base: &Path) -> Tls {
    let t = &raw.tls;
    let mut file = |k: &str, v: &Option<String>| -> Option<PathBuf> {
        let v = v.as_ref()?;
        if v.trim().is_empty() {
            c.error(
                &[key("tls"), key(k)],
                "manifest.tls",
                format!("`tls.{k}` is empty"),
                "name a PEM file, relative to the manifest's folder, or leave the key out",
            );
            return None;
        }
        Some(base.join(v))
    };
    let ca_file = file("ca_file", &t.ca_file);
    let client_cert = file("client_cert", &t.client_cert);
    let client_key = file("client_key", &t.client_key);
    match (&t.client_cert, &t.client_key) {
        (Some(_), None) => c.error(
            &[key("tls"), key("client_cert")],
            "manifest.tls",
            "`tls.client_cert` needs `tls.client_key`",
            "name the PEM file of the certificate's private key in `client_key`",
        ),
        (None, Some(_)) => c.error(
            &[key("tls"), key("client_key")],
            "manifest.tls",
            "`tls.client_key` needs `tls.client_cert`",
            "name the PEM file of the certificate in `client_cert`",
        ),
        _ => {}
    }
    Tls {
        ca_file,
        client_cert,
        client_key,
        allow_insecure_http: t.allow_insecure_http.unwrap_or(false),
    }
}

fn check_items(c: &mut Checker, raw: &RawManifest, base: &Path) -> Option<Items> {
    let it = &raw.items;
    match (&it.source, &it.inline) {
        (Some(_), Some(_)) | (None, None) => {
            c.error(
                &[key("items")],
                "manifest.items",
                "items need exactly one of `source` (a CSV file) or `inline` (a list)",
                "see batches/ for both forms",
            );
            None
        }
        (None, Some(list)) => {
            for k in ["delimiter", "header", "columns", "allow_outside_folder"] {
                let set = match k {
                    "delimiter" => it.delimiter.is_some(),
                    "header" => it.header.is_some(),
                    "allow_outside_folder" => it.allow_outside_folder.is_some(),
                    _ => it.columns.is_some(),
                };
                if set {
                    c.error(
                        &[key("items"), key(k)],
                        "manifest.items",
                        format!("`{k}` applies to a CSV source, not to inline items"),
                        "remove it",
                    );
                }
            }
            let mut out = Vec::new();
            for (i, item) in list.iter().enumerate() {
                let at = vec![key("items"), key("inline"), Seg::Index(i)];
                let line = yaml::locate(c.text, &at).map(|p| p.0).unwrap_or(0);
                let mut fields = IndexMap::new();
                for (k, v) in item {
                    match crate::schema::raw::scalar_text(v) {
                        Some(t) => {
                            fields.insert(k.clone(), t);
                        }
                        None if v.is_null() => {
                            fields.insert(k.clone(), String::new());
                        }
                        None => {
                            let mut p = at.clone();
                            p.push(key(k));
                            c.error(
                                &p,
                                "manifest.inline-value",
                                format!("inline item field `{k}` is not a plain value"),
                                "give a text or a number; shared blocks belong in `defaults`",
                            );
                        }
                    }
                }
                out.push(InlineItem { line, fields });
            }
            if out.is_empty() {
                c.error(
                    &[key("items"), key("inline")],
                    "manifest.items",
                    "the inline item list is empty",
                    "add items or use a CSV `source`",
                );
            }
            Some(Items::Inline(out))
        }
        (Some(src), None) => {
            // A path is at most PATH_MAX (4096) bytes; a longer one would come back whole in
            // every diagnostic about the file.
            if src.len() > 4096 || src.trim().is_empty() {
                c.error(
                    &[key("items"), key("source")],
                    "manifest.items",
                    format!("items.source is not a usable path ({} bytes)", src.len()),
                    "name the CSV file, relative to the manifest's folder",
                );
                return None;
            }
            let delimiter = match it.delimiter.as_deref() {
                None => b',',
                Some("\\t") | Some("tab") | Some("\t") => b'\t',
                Some(d) if d.len() == 1 && d.is_ascii() && !matches!(d, "\"" | "\n" | "\r") => {
                    d.as_bytes()[0]
                }
                Some(d) => {
                    c.error(
                        &[key("items"), key("delimiter")],
                        "manifest.delimiter",
                        format!("delimiter `{d}` is not a single character"),
                        "write \",\", \";\", \"|\" or tab",
                    );
                    b','
                }
            };
            let header = it.header.unwrap_or(true);
            let columns = it.columns.as_ref().map(|cols| {
                let mut out = Vec::new();
                for (field, v) in cols {
                    let at = [key("items"), key("columns"), key(field)];
                    let r = match v {
                        serde_yaml::Value::String(s) if header => Some(ColumnRef::Name(s.clone())),
                        serde_yaml::Value::Number(n) if !header => n
                            .as_u64()
                            .filter(|&n| n >= 1)
                            .map(|n| ColumnRef::Number(n as usize)),
                        _ => None,
                    };
                    match r {
                        Some(r) => out.push((field.clone(), r)),
                        None if header => c.error(
                            &at,
                            "manifest.columns",
                            format!("column for `{field}` must be a header name"),
                            "write the column's header text, e.g. net_pay",
                        ),
                        None => c.error(
                            &at,
                            "manifest.columns",
                            format!("column for `{field}` must be a column number from 1"),
                            "without a header row, columns are numbered from 1",
                        ),
                    }
                    if !is_field_name(field) {
                        c.error(
                            &at,
                            "manifest.columns",
                            format!("`{field}` is not a usable item field name"),
                            "use letters, digits and '_', starting with a letter",
                        );
                    }
                }
                out
            });
            if !header && columns.is_none() {
                c.error(
                    &[key("items"), key("header")],
                    "manifest.columns",
                    "a CSV without a header row needs `columns`",
                    "map each item field to a column number, e.g. id: 1",
                );
            }
            Some(Items::Csv(CsvSource {
                path: base.join(src),
                display: base.join(src).display().to_string(),
                delimiter,
                header,
                columns,
                allow_outside_folder: it.allow_outside_folder.unwrap_or(false),
            }))
        }
    }
}

pub fn is_field_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn nodes(
    c: &mut Checker,
    raw: &[RawNode],
    at: Vec<Seg>,
    prefix: &str,
    ids: &mut std::collections::HashMap<String, String>,
) -> Vec<Node> {
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            let mut path = at.clone();
            path.push(Seg::Index(i));
            let tree_path = if prefix.is_empty() {
                i.to_string()
            } else {
                format!("{prefix}.{i}")
            };
            node(c, r, path, tree_path, ids)
        })
        .collect()
}

fn node(
    c: &mut Checker,
    r: &RawNode,
    path: Vec<Seg>,
    tree_path: String,
    ids: &mut std::collections::HashMap<String, String>,
) -> Node {
    let at = |k: &str| {
        let mut p = path.clone();
        p.push(key(k));
        p
    };
    let id =
        r.id.clone()
            .unwrap_or_else(|| format!("{}#{}", r.op, tree_path));
    if let Some(given) = &r.id {
        if !is_field_name(given) {
            c.error(
                &at("id"),
                "manifest.node-id",
                format!("node id `{given}` is not a plain name"),
                "use letters, digits and '_', e.g. pay",
            );
        }
        if let Some(prev) = ids.insert(given.clone(), tree_path.clone()) {
            c.error(
                &at("id"),
                "manifest.node-id",
                format!("node id `{given}` is used twice (also at {prev})"),
                "give every node its own id",
            );
        }
    }
    let delay = r
        .delay
        .as_ref()
        .map(|_| c.duration(&at("delay"), &r.delay, Duration::ZERO));
    let mut kids = |link: &str, list: &[RawNode]| -> Vec<Node> {
        list.iter()
            .enumerate()
            .map(|(i, k)| {
                let mut p = at(link);
                p.push(Seg::Index(i));
                node(c, k, p, format!("{tree_path}.{link}.{i}"), ids)
            })
            .collect()
    };
    let success = kids("success", &r.success);
    let fail = kids("fail", &r.fail);
    let always = kids("always", &r.always);
    Node {
        id,
        op: r.op.clone(),
        delay,
        payload: r.payload.clone(),
        success,
        fail,
        always,
        tree_path,
        yaml_path: path,
    }
}

#[cfg(test)]
mod tests {
    use super::{Manifest, Notifications, check_public_url, is_loopback_url};
    use crate::manifest::raw::NotificationMode;

    const BASE: &str = "batch: b1\nprovider: paysend\nenvironment: sandbox\nitems:\n  inline:\n    - {id: E1}\nflow:\n  - op: pay.toCard\n";

    /// Loads `text` as a manifest from a temp folder.
    fn load(text: &str) -> Result<Manifest, Vec<super::Diagnostic>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.yaml");
        std::fs::write(&path, text).unwrap();
        Manifest::load(&path).map_err(|d| d.0)
    }

    fn rules(r: &Result<Manifest, Vec<super::Diagnostic>>) -> Vec<String> {
        match r {
            Ok(_) => vec![],
            Err(ds) => ds.iter().map(|d| d.rule.clone()).collect(),
        }
    }

    #[test]
    fn a_public_url_over_http_to_another_machine_is_refused_unless_allowed() {
        let with = |n: &str| {
            load(&format!(
                "{BASE}notifications:\n  listen: 127.0.0.1:8787\n{n}"
            ))
        };
        let r = with("  public_url: http://payroll.acme.example/payrun\n");
        assert_eq!(rules(&r), ["manifest.insecure-public-url"]);
        let d = &r.unwrap_err()[0];
        assert_eq!(d.line, Some(11));
        assert!(
            d.hint
                .as_deref()
                .unwrap()
                .contains("allow_insecure_http: true")
        );
        for ok in [
            "  public_url: https://payroll.acme.example/payrun\n",
            "  public_url: http://127.0.0.1:8787\n",
            "  public_url: http://localhost:8787/payrun\n",
            "  public_url: http://10.0.0.5/payrun\n  allow_insecure_http: true\n",
        ] {
            assert!(with(ok).is_ok(), "{ok}: {:?}", rules(&with(ok)));
        }
    }

    #[test]
    fn a_listener_other_machines_can_reach_is_allowed_and_stated() {
        let with = |listen: &str| {
            load(&format!(
                "{BASE}notifications:\n  listen: \"{listen}\"\n  public_url: https://payroll.acme.example/payrun\n"
            ))
            .unwrap()
            .warnings
        };
        assert!(with("127.0.0.1:8787").is_empty());
        assert!(with("[::1]:8787").is_empty());
        let w = with("0.0.0.0:8787");
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("0.0.0.0:8787") && w[0].contains("every network interface"),
            "{w:?}"
        );
        assert!(with("10.0.0.5:8787")[0].contains("on 10.0.0.5"));
        assert!(with("[::]:8787")[0].contains("every network interface"));
    }

    #[test]
    fn a_manifest_that_is_a_device_a_folder_or_too_large_is_refused_at_once() {
        for (path, rule) in [
            ("/dev/zero", "manifest.not-a-file"),
            ("/tmp", "manifest.not-a-file"),
            ("/proc/self/environ", "manifest.not-a-file"),
        ] {
            let e = Manifest::load(std::path::Path::new(path)).unwrap_err();
            assert_eq!(e.0[0].rule, rule, "{path}");
        }
        let mut big = BASE.to_string();
        while big.len() as u64 <= super::MAX_BYTES {
            big.push_str("# padding padding padding padding padding padding padding\n");
        }
        let r = load(&big);
        assert_eq!(rules(&r), ["manifest.too-large"]);
        assert!(r.unwrap_err()[0].message.contains("1 MiB"));
    }

    #[test]
    fn a_source_path_longer_than_any_path_is_refused_before_it_reaches_a_diagnostic() {
        let text = BASE.replace(
            "  inline:\n    - {id: E1}\n",
            &format!("  source: {}\n", "a".repeat(100_000)),
        );
        let r = load(&text);
        assert_eq!(rules(&r), ["manifest.items"]);
        assert!(format!("{:?}", r.unwrap_err()).len() < 1000);
    }

    #[test]
    fn allow_outside_folder_belongs_to_a_csv_source() {
        let text = BASE.replace(
            "    - {id: E1}\n",
            "    - {id: E1}\n  allow_outside_folder: true\n",
        );
        assert_eq!(rules(&load(&text)), ["manifest.items"]);
    }

    #[test]
    fn a_public_url_is_an_absolute_http_url_without_query_or_fragment() {
        for (url, ok) in [
            ("https://payments.acme.example/payrun", true),
            ("https://payments.acme.example/payrun/", true),
            ("http://127.0.0.1:8788", true),
            ("https://payments.acme.example/a/b%20c", true),
            ("payments.acme.example/payrun", false),
            ("/payrun", false),
            ("ftp://payments.acme.example/payrun", false),
            ("https://", false),
            ("https://payments.acme.example/payrun?x=1", false),
            ("https://payments.acme.example/payrun?", false),
            ("https://payments.acme.example/payrun#top", false),
            ("https://payments.acme.example/pay run", false),
        ] {
            assert_eq!(check_public_url(url).is_ok(), ok, "{url}");
        }
    }

    #[test]
    fn the_listener_prefix_is_the_public_urls_path_without_a_trailing_slash() {
        for (url, prefix) in [
            ("https://payments.acme.example/payrun", Some("/payrun")),
            ("https://payments.acme.example/payrun/", Some("/payrun")),
            ("https://payments.acme.example/a/b/", Some("/a/b")),
            ("https://payments.acme.example/café", Some("/caf%C3%A9")),
            ("https://payments.acme.example/", None),
            ("http://127.0.0.1:8788", None),
        ] {
            let n = Notifications {
                mode: NotificationMode::Webhook,
                listen: Some("127.0.0.1:8788".into()),
                public_url: Some(url.into()),
                deadline: None,
                lookups: None,
                settle: None,
            };
            assert_eq!(n.public_path().as_deref(), prefix, "{url}");
        }
    }

    #[test]
    fn loopback_urls_are_this_machine_and_nothing_else() {
        for (url, loopback) in [
            ("http://127.0.0.1:8900/paysend", true),
            ("http://127.3.2.1/paysend", true),
            ("http://localhost:8900", true),
            ("http://LOCALHOST/x", true),
            ("http://[::1]:8900/paysend", true),
            ("http://10.0.0.5/paysend", false),
            ("http://localhost.example.com/", false),
            ("http://128.0.0.1/", false),
            ("http://[::2]/", false),
            ("http://", false),
        ] {
            assert_eq!(is_loopback_url(url), loopback, "{url}");
        }
    }
}

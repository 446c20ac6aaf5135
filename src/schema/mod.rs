//! Provider field schemas: data files (`schemas/<provider>/*.yaml`) loaded into typed,
//! compiled rules. The files are embedded in the binary; `--schemas DIR` reads another tree.

pub mod account;
pub mod field;
pub mod operation;
pub mod payload;
pub mod raw;

pub use field::{CurrencyFormat, CurrencyRef, Field, FieldKind, Holds, HoldsIf, Violation, Wire};
pub use operation::Operation;
pub use raw::{Completion, KeyFormat, Location, Role, Settle, TreeExecution};

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::money::Currency;
use crate::yaml::{self, Seg, key};
use include_dir::{Dir, include_dir};
use regex::Regex;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/schemas");

/// Where schema files are read from.
#[derive(Debug, Clone)]
pub enum Registry {
    /// The `schemas/` tree compiled into the binary.
    Embedded,
    /// A directory of the same shape.
    Dir(PathBuf),
}

/// Everything payrun knows about one provider: its descriptor and its operations.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub title: String,
    pub doc: String,
    pub sandbox_url: Option<String>,
    pub production_url: Option<String>,
    pub credentials: Vec<(String, String)>,
    pub tree: TreeExecution,
    pub packing: bool,
    pub limits: raw::RawProviderLimits,
    pub endpoints: Vec<String>,
    pub resend_safe: Vec<String>,
    pub keys: raw::KeyFormat,
    pub operations: BTreeMap<String, Operation>,
    pub file: String,
    pub sha256: String,
}

impl Provider {
    pub fn operation(&self, name: &str) -> Option<&Operation> {
        self.operations.get(name)
    }

    /// The operation that settles a lost answer of `op`, when its own answer comes only by
    /// notification (Payonic's Payment API): then even an operation answered at once (a
    /// payout) can be settled only with payrun's listener running.
    pub fn lookup_by_notification(&self, op: &Operation) -> Option<&Operation> {
        self.operation(op.lookup.as_deref()?)
            .filter(|l| l.completion == Completion::Notification)
    }

    /// A batch of `op` needs payrun's notification listener: its outcome, or the answer of
    /// the lookup that settles a lost one, comes only by notification.
    pub fn needs_listener(&self, op: &Operation) -> bool {
        op.completion == Completion::Notification || self.lookup_by_notification(op).is_some()
    }
}

impl Registry {
    pub fn from_option(dir: Option<PathBuf>) -> Registry {
        match dir {
            Some(d) => Registry::Dir(d),
            None => Registry::Embedded,
        }
    }

    /// Display name of a schema file, as it appears in diagnostics and fingerprints.
    fn display(&self, provider: &str, file: &str) -> String {
        match self {
            Registry::Embedded => format!("schemas/{provider}/{file}"),
            Registry::Dir(d) => d.join(provider).join(file).display().to_string(),
        }
    }

    /// The names of the providers that have a folder.
    pub fn providers(&self) -> Vec<String> {
        let mut names: Vec<String> = match self {
            Registry::Embedded => EMBEDDED
                .dirs()
                .filter_map(|d| d.path().file_name()?.to_str().map(String::from))
                .collect(),
            Registry::Dir(d) => std::fs::read_dir(d)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| e.path().is_dir())
                        .filter_map(|e| e.file_name().to_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        };
        names.sort();
        names
    }

    /// (file name, bytes) of every YAML file in a provider's folder, sorted by name.
    fn files(&self, provider: &str) -> Result<Vec<(String, Vec<u8>)>, Diagnostic> {
        let valid_name = !provider.is_empty()
            && provider
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let not_found = || {
            let known = self.providers();
            let mut d = Diagnostic::new(
                self.display(provider, ""),
                "schema.provider-unknown",
                format!("no schemas for provider `{provider}`"),
            );
            d = match crate::text::did_you_mean(provider, known.iter().map(String::as_str)) {
                Some(m) => d.hint(format!("did you mean `{m}`?")),
                None => d.hint(format!("known providers: {}", known.join(", "))),
            };
            d
        };
        if !valid_name {
            return Err(not_found());
        }
        let mut out = Vec::new();
        match self {
            Registry::Embedded => {
                let dir = EMBEDDED.get_dir(provider).ok_or_else(not_found)?;
                for f in dir.files() {
                    let name = f
                        .path()
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                        .to_string();
                    if name.ends_with(".yaml") {
                        out.push((name, f.contents().to_vec()));
                    }
                }
            }
            Registry::Dir(d) => {
                let dir = d.join(provider);
                let rd = std::fs::read_dir(&dir).map_err(|_| not_found())?;
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if name.ends_with(".yaml") {
                        // Regular files of at most 4 MiB: a FIFO or a device never hangs payrun.
                        let bytes =
                            crate::input_file::read_capped(&e.path(), 4 << 20).map_err(|r| {
                                Diagnostic::new(
                                    e.path().display().to_string(),
                                    "schema.io",
                                    format!("cannot read schema file: it {}", r.describe()),
                                )
                            })?;
                        out.push((name, bytes));
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Loads and compiles one provider's schemas, reporting every problem in its files at once.
    pub fn provider(&self, provider: &str) -> Result<Provider, Diagnostics> {
        let files = self.files(provider).map_err(|d| Diagnostics(vec![d]))?;
        let mut errors = Vec::new();
        let mut descriptor = None;
        let mut operations = BTreeMap::new();
        // (lookup named, the error if it names no operation): checked once all are known.
        let mut lookups: Vec<(String, Diagnostic)> = Vec::new();
        for (name, bytes) in &files {
            let display = self.display(provider, name);
            let sha = crate::keys::hex_lower(&Sha256::digest(bytes));
            let Ok(text) = std::str::from_utf8(bytes) else {
                errors.push(Diagnostic::new(
                    &display,
                    "schema.encoding",
                    "schema file is not UTF-8",
                ));
                continue;
            };
            if name == "provider.yaml" {
                match yaml::from_str::<raw::RawProvider>(&display, text, "schema.syntax") {
                    Ok(p) => descriptor = Some((p, display, sha)),
                    Err(d) => errors.push(d),
                }
                continue;
            }
            match yaml::from_str::<raw::RawOperation>(&display, text, "schema.syntax") {
                Ok(op) => match compile_operation(provider, name, op, &display, text, sha) {
                    Ok(op) => {
                        if let Some(l) = &op.lookup {
                            let unknown = Diagnostic::new(
                                &display,
                                "schema.lookup",
                                format!("lookup `{l}` is not an operation of `{provider}`"),
                            )
                            .at_opt(yaml::locate(text, &[key("lookup")]));
                            lookups.push((l.clone(), unknown));
                        }
                        operations.insert(op.name.clone(), op);
                    }
                    Err(mut ds) => errors.append(&mut ds),
                },
                Err(d) => errors.push(d),
            }
        }
        for (lookup, unknown) in lookups {
            if !operations.contains_key(&lookup) {
                let hint = match crate::text::did_you_mean(
                    &lookup,
                    operations.keys().map(String::as_str),
                ) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => "name the operation that tells what became of a request whose answer was lost".into(),
                };
                errors.push(unknown.hint(hint));
            }
        }
        let Some((p, file, sha256)) = descriptor else {
            errors.push(
                Diagnostic::new(
                    self.display(provider, "provider.yaml"),
                    "schema.provider-missing",
                    "provider.yaml is missing",
                )
                .hint("every provider folder needs a provider.yaml; see schemas/README.md"),
            );
            return Err(Diagnostics(errors));
        };
        if p.provider != provider {
            errors.push(Diagnostic::new(
                &file,
                "schema.provider-name",
                format!(
                    "provider.yaml names `{}` but sits in folder `{provider}`",
                    p.provider
                ),
            ));
        }
        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        Ok(Provider {
            name: p.provider,
            title: p.name,
            doc: p.doc,
            sandbox_url: p.base_urls.sandbox,
            production_url: p.base_urls.production,
            credentials: p
                .credentials
                .into_iter()
                .map(|c| (c.name, c.description))
                .collect(),
            tree: p.tree,
            packing: p.packing,
            endpoints: p.endpoints.clone(),
            resend_safe: p.resend_safe.clone(),
            keys: p.keys,
            limits: p.limits,
            operations,
            file,
            sha256,
        })
    }
}

fn compile_operation(
    provider: &str,
    file_name: &str,
    raw: raw::RawOperation,
    display: &str,
    text: &str,
    sha256: String,
) -> Result<Operation, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let err = |path: &[Seg], rule: &str, msg: String| {
        Diagnostic::new(display, rule, msg).at_opt(yaml::locate(text, path))
    };
    let expected_file = format!("{}.yaml", raw.operation);
    if file_name != expected_file {
        errors.push(err(
            &[key("operation")],
            "schema.operation-name",
            format!(
                "operation `{}` must live in {expected_file}, not {file_name}",
                raw.operation
            ),
        ));
    }
    if raw.provider != provider {
        errors.push(err(
            &[key("provider")],
            "schema.provider-name",
            format!(
                "names provider `{}` but sits in folder `{provider}`",
                raw.provider
            ),
        ));
    }
    // Currency fields first, so that amounts can check their examples against them.
    let mut fields = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, f) in raw.fields.iter().enumerate() {
        let at = |k: &str| vec![key("fields"), Seg::Index(i), key(k)];
        if !seen.insert(f.path.clone()) {
            errors.push(err(
                &at("path"),
                "schema.duplicate-field",
                format!("field `{}` is listed twice", f.path),
            ));
        }
        match compile_field(f, &raw.fields) {
            Ok(field) => fields.push(field),
            Err((k, msg)) => errors.push(err(
                &at(k),
                "schema.field",
                format!("field `{}`: {msg}", f.path),
            )),
        }
    }
    let request = raw.request.clone();
    let notification_url = raw.notification_url.clone();
    let mut op = Operation::new(
        raw.provider.clone(),
        raw.operation.clone(),
        raw.summary,
        raw.doc,
        raw.role,
        raw.completion,
        raw.money.map(|m| (m.amount, m.currency)),
        raw.idempotency,
        raw.any_of,
        fields,
        display.to_string(),
        sha256,
    );
    op.request = request;
    op.notification_url = notification_url;
    // A request that pays, or that the provider lets payrun look up, is looked up when its
    // answer is lost; one that only reads is sent again.
    op.settle = match (raw.settle, &raw.lookup) {
        (Some(s), _) => s,
        (None, Some(_)) => raw::Settle::Lookup,
        (None, None) => op.settle,
    };
    op.lookup = raw.lookup;
    // Sending a paying request again is safe only where the provider recognises it by a key.
    if op.settle == raw::Settle::Resend && op.role == Role::Payout && op.idempotency.is_none() {
        errors.push(err(
            &[key("settle")],
            "schema.settle",
            "`settle: resend` on a payout without `idempotency`: a request whose answer was lost could be paid twice".to_string(),
        ));
    }
    if let Some(r) = &op.request {
        if !matches!(r.method.as_str(), "GET" | "POST") {
            errors.push(err(
                &[key("request"), key("method")],
                "schema.request",
                format!("method `{}` is not GET or POST", r.method),
            ));
        }
        let vars: Vec<&str> = r
            .path
            .split('{')
            .skip(1)
            .filter_map(|s| s.split_once('}').map(|(v, _)| v))
            .collect();
        for v in &vars {
            if !op.field(v).is_some_and(|f| f.in_path) {
                errors.push(err(
                    &[key("request"), key("path")],
                    "schema.request",
                    format!("`{{{v}}}` in the path is not a field with `in: path`"),
                ));
            }
        }
        for f in op.fields.iter().filter(|f| f.in_path) {
            if !vars.contains(&f.path.as_str()) {
                errors.push(err(
                    &[key("request"), key("path")],
                    "schema.request",
                    format!(
                        "field `{}` is `in: path` but the path has no `{{{}}}`",
                        f.path, f.path
                    ),
                ));
            }
        }
    } else if op.fields.iter().any(|f| f.in_path) {
        errors.push(err(
            &[key("request")],
            "schema.request",
            "fields with `in: path` need a `request:` with their path".into(),
        ));
    }
    if let Some(n) = &op.notification_url
        && op.field(n).is_none()
    {
        errors.push(err(
            &[key("notification_url")],
            "schema.notification-url",
            format!("notification_url `{n}` is not a field"),
        ));
    }
    // Cross-field consistency.
    if let Some((a, c)) = &op.money {
        if !matches!(op.field(a).map(|f| &f.kind), Some(FieldKind::Amount { .. })) {
            errors.push(err(
                &[key("money"), key("amount")],
                "schema.money",
                format!("money.amount `{a}` is not an amount field"),
            ));
        }
        if !matches!(
            op.field(c).map(|f| &f.kind),
            Some(FieldKind::Currency { .. })
        ) {
            errors.push(err(
                &[key("money"), key("currency")],
                "schema.money",
                format!("money.currency `{c}` is not a currency field"),
            ));
        }
    } else if op.role == Role::Payout {
        errors.push(err(
            &[key("role")],
            "schema.money",
            "a payout operation needs `money:` (amount and currency paths)".into(),
        ));
    }
    if let Some(p) = &op.idempotency
        && op.field(p).is_none()
    {
        errors.push(err(
            &[key("idempotency")],
            "schema.idempotency",
            format!("idempotency path `{p}` is not a field"),
        ));
    }
    for (gi, group) in op.any_of.iter().enumerate() {
        for p in group {
            if op.field(p).is_none() {
                errors.push(err(
                    &[key("any_of"), Seg::Index(gi)],
                    "schema.any-of",
                    format!("any_of names `{p}`, which is not a field"),
                ));
            }
        }
    }
    for (i, f) in op.fields.iter().enumerate() {
        for (ci, c) in f.holds_if.iter().enumerate() {
            if c.field == f.path || op.field(&c.field).is_none() {
                errors.push(err(
                    &[
                        key("fields"),
                        Seg::Index(i),
                        key("holds_if"),
                        Seg::Index(ci),
                        key("field"),
                    ],
                    "schema.field",
                    format!(
                        "field `{}`: holds_if names `{}`, which is not another field of the operation",
                        f.path, c.field
                    ),
                ));
            }
        }
        if let FieldKind::Amount {
            currency: CurrencyRef::Path(c),
            ..
        } = &f.kind
            && !matches!(
                op.field(c).map(|f| &f.kind),
                Some(FieldKind::Currency { .. })
            )
        {
            errors.push(err(
                &[key("fields"), Seg::Index(i), key("currency")],
                "schema.field",
                format!("field `{}`: currency `{c}` is not a currency field", f.path),
            ));
        }
        if let Some(example) = &f.example {
            let res = match &f.kind {
                FieldKind::Amount { currency, .. } => {
                    let cur = match currency {
                        CurrencyRef::Fixed(c) => Some(*c),
                        CurrencyRef::Path(p) => op
                            .field(p)
                            .and_then(|cf| cf.example.as_deref())
                            .and_then(Currency::from_any),
                    };
                    f.check_amount(example, cur).map(|_| ())
                }
                // Checked as what it holds beside the other fields' examples.
                _ => f
                    .given(|p| op.field(p).and_then(|s| s.example.clone()))
                    .check(example),
            };
            if let Err(v) = res {
                errors.push(err(
                    &[key("fields"), Seg::Index(i), key("example")],
                    "schema.example",
                    format!("field `{}`: the example {}", f.path, v.message),
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(op)
    } else {
        Err(errors)
    }
}

type FieldError = (&'static str, String);

fn compile_field(f: &raw::RawField, all: &[raw::RawField]) -> Result<Field, FieldError> {
    use raw::TypeName as T;
    let _ = all;
    if f.path.is_empty() || f.path.split('.').any(|s| s.is_empty()) {
        return Err((
            "path",
            "a path is dot-separated names, e.g. to.cardNumber".into(),
        ));
    }
    let only = |allowed: &[&str]| -> Result<(), FieldError> {
        let present: [(&str, bool); 10] = [
            ("pattern", f.pattern.is_some()),
            ("min_length", f.min_length.is_some()),
            ("max_length", f.max_length.is_some()),
            ("min", f.min.is_some()),
            ("max", f.max.is_some()),
            ("max_digits", f.max_digits.is_some()),
            ("currency", f.currency.is_some()),
            ("currency_code", f.currency_code.is_some()),
            ("format", f.format.is_some()),
            ("values", f.values.is_some()),
        ];
        for (k, is) in present {
            if is && !allowed.contains(&k) {
                return Err((
                    k_static(k),
                    format!("`{k}` does not apply to type {:?}", f.ty).to_lowercase(),
                ));
            }
        }
        Ok(())
    };
    let decimal =
        |v: &Option<serde_yaml::Value>, k: &'static str| -> Result<Option<Decimal>, FieldError> {
            match v {
                None => Ok(None),
                Some(v) => {
                    let t = raw::scalar_text(v).ok_or((k, format!("`{k}` must be a number")))?;
                    Decimal::from_str(&t)
                        .map(Some)
                        .map_err(|_| (k, format!("`{k}` is not a decimal number: {t}")))
                }
            }
        };
    let integer = |v: &Option<serde_yaml::Value>,
                   k: &'static str|
     -> Result<Option<i64>, FieldError> {
        match v {
            None => Ok(None),
            Some(v) => {
                let t = raw::scalar_text(v).ok_or((k, format!("`{k}` must be a whole number")))?;
                t.parse()
                    .map(Some)
                    .map_err(|_| (k, format!("`{k}` is not a whole number: {t}")))
            }
        }
    };
    let kind = match f.ty {
        T::String => {
            only(&["pattern", "min_length", "max_length"])?;
            let pattern = match &f.pattern {
                Some(p) => Some(
                    Regex::new(&format!("^(?:{p})$"))
                        .map_err(|e| ("pattern", format!("invalid pattern: {e}")))?,
                ),
                None => None,
            };
            FieldKind::String {
                pattern,
                min_length: f.min_length,
                max_length: f.max_length,
            }
        }
        T::Integer => {
            only(&["min", "max"])?;
            FieldKind::Integer {
                min: integer(&f.min, "min")?,
                max: integer(&f.max, "max")?,
            }
        }
        T::Amount => {
            only(&["min", "max", "max_digits", "currency", "currency_code"])?;
            let currency = match (&f.currency, &f.currency_code) {
                (Some(p), None) => CurrencyRef::Path(p.clone()),
                (None, Some(c)) => CurrencyRef::Fixed(
                    Currency::from_any(c)
                        .ok_or(("currency_code", format!("`{c}` is not an ISO 4217 code")))?,
                ),
                _ => {
                    return Err((
                        "type",
                        "an amount needs exactly one of `currency` (path) or `currency_code`"
                            .into(),
                    ));
                }
            };
            // 10^38 is beyond i128; 30 digits is beyond any amount payrun parses (18 integer
            // digits and a currency's few decimals).
            if let Some(d) = f.max_digits
                && !(1..=30).contains(&d)
            {
                return Err((
                    "max_digits",
                    format!("`max_digits` {d} is not between 1 and 30"),
                ));
            }
            FieldKind::Amount {
                currency,
                min: decimal(&f.min, "min")?,
                max: decimal(&f.max, "max")?,
                max_digits: f.max_digits,
            }
        }
        T::Currency => {
            only(&["format"])?;
            FieldKind::Currency {
                format: f.format.unwrap_or(CurrencyFormat::Alpha),
            }
        }
        T::Country => {
            only(&[])?;
            FieldKind::Country
        }
        T::Date => {
            only(&[])?;
            FieldKind::Date
        }
        T::Datetime => {
            only(&[])?;
            FieldKind::DateTime
        }
        T::Email => {
            only(&["max_length"])?;
            FieldKind::Email {
                max_length: f.max_length,
            }
        }
        T::Enum => {
            only(&["values"])?;
            let values: Vec<String> = f
                .values
                .as_ref()
                .map(|vs| vs.iter().filter_map(raw::scalar_text).collect())
                .unwrap_or_default();
            if values.is_empty() {
                return Err(("values", "an enum needs `values`".into()));
            }
            FieldKind::Enum {
                values,
                case_insensitive: f.case_insensitive,
            }
        }
        T::Uuid => {
            only(&[])?;
            FieldKind::Uuid
        }
        T::Boolean => {
            only(&[])?;
            FieldKind::Boolean
        }
    };
    let default_wire = if matches!(kind, FieldKind::Boolean) {
        Wire::Boolean
    } else {
        Wire::String
    };
    // What a field holds is checked on its text: a type with a fixed form of its own (amount,
    // currency, date, ...) holds nothing else.
    let holds_types = [T::String, T::Integer, T::Email, T::Uuid];
    let holds_checked = f.holds.is_some() || !f.holds_if.is_empty();
    if holds_checked && !holds_types.contains(&f.ty) {
        let k = if f.holds.is_some() {
            "holds"
        } else {
            "holds_if"
        };
        return Err((
            k,
            format!("`{k}` does not apply to type {:?}", f.ty).to_lowercase(),
        ));
    }
    let example = match &f.example {
        None => None,
        Some(v) => Some(
            raw::scalar_text(v).ok_or(("example", "an example must be a scalar".to_string()))?,
        ),
    };
    Ok(Field {
        path: f.path.clone(),
        kind,
        required: f.required,
        sensitive: f.sensitive,
        holds: f.holds,
        holds_if: f
            .holds_if
            .iter()
            .map(|c| field::HoldsIf {
                field: c.field.clone(),
                equals: c.equals.clone(),
                holds: c.holds,
            })
            .collect(),
        wire: f.wire.unwrap_or(default_wire),
        description: f.description.clone(),
        example,
        in_path: f.location == raw::Location::Path,
        local: f.location == raw::Location::Local,
        recipient: f.recipient,
    })
}

fn k_static(k: &str) -> &'static str {
    match k {
        "pattern" => "pattern",
        "min_length" => "min_length",
        "max_length" => "max_length",
        "min" => "min",
        "max" => "max",
        "max_digits" => "max_digits",
        "currency" => "currency",
        "currency_code" => "currency_code",
        "format" => "format",
        _ => "values",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> raw::RawField {
        serde_yaml::from_str(yaml).expect("a raw field")
    }

    #[test]
    fn holds_applies_to_text_fields_only() {
        let f = raw("{path: a, type: string, holds: iban, description: d}");
        assert_eq!(compile_field(&f, &[]).unwrap().holds, Some(Holds::Iban));
        let f = raw("{path: a, type: date, holds: id, description: d}");
        assert_eq!(compile_field(&f, &[]).unwrap_err().0, "holds");
        let f = raw(
            "{path: a, type: amount, currency_code: EUR, holds_if: [{field: b, equals: X, holds: iban}], description: d}",
        );
        assert_eq!(compile_field(&f, &[]).unwrap_err().0, "holds_if");
    }

    #[test]
    fn an_unknown_holds_value_is_a_schema_error() {
        let r: Result<raw::RawField, _> =
            serde_yaml::from_str("{path: a, type: string, holds: bank, description: d}");
        assert!(r.is_err());
    }

    #[test]
    fn the_embedded_schemas_mark_the_account_and_personal_fields() {
        let paysend = Registry::Embedded
            .provider("paysend")
            .expect("paysend schemas");
        let acc = paysend.operation("pay.toAccount").unwrap();
        let dest = acc
            .field("to.destinationTransactionInstrument.accountIdentifier")
            .unwrap();
        assert_eq!(dest.holds, Some(Holds::Account));
        assert_eq!(dest.holds_if[0].holds, Holds::Iban);
        assert_eq!(
            acc.field("to.recipient.email").unwrap().holds,
            Some(Holds::Email)
        );
        assert_eq!(
            acc.field("to.recipient.lastName").unwrap().holds,
            Some(Holds::Name)
        );
        let card = paysend.operation("pay.toCard").unwrap();
        assert_eq!(
            card.field("to.cardNumber").unwrap().holds,
            Some(Holds::Card)
        );
        let payonic = Registry::Embedded
            .provider("payonic")
            .expect("payonic schemas");
        let payout = payonic.operation("payout").unwrap();
        assert_eq!(payout.field("email").unwrap().holds, Some(Holds::Email));
        assert_eq!(payout.field("paymentid").unwrap().holds, Some(Holds::Id));
    }
}

//! `Diagnostic`: one problem found in a user's input, with everything needed to act on it —
//! where (file, line, column), what (field, rule, offending value, already masked) and a hint.
//! Every layer (manifest, schema files, CSV rows) reports through this one type so that the
//! human and JSON renderings are the same everywhere.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file the problem is in, as the user named it (relative paths stay relative).
    pub file: String,
    /// 1-based line; for CSV rows, the line the record starts on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// 1-based column: a character column in YAML, a field number in CSV.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    /// The CSV header of that column, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column_name: Option<String>,
    /// The item field or payload path the value feeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The item the row belongs to, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// Stable rule identifier, e.g. `amount.thousands-separator`; totals are counted per rule.
    pub rule: String,
    pub message: String,
    /// The offending value, masked if the field is sensitive and shortened if huge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(
        file: impl Into<String>,
        rule: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.into(),
            line: None,
            column: None,
            column_name: None,
            field: None,
            item: None,
            rule: rule.into(),
            message: bound_quotes(message.into()),
            value: None,
            hint: None,
        }
    }

    pub fn at(mut self, line: u64, column: u64) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    pub fn at_opt(mut self, pos: Option<(u64, u64)>) -> Self {
        if let Some((l, c)) = pos {
            self.line = Some(l);
            self.column = Some(c);
        }
        self
    }

    /// The item field or payload path, cut like a value when a key in the input is huge.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = Some(if field.chars().count() > 100 {
            crate::mask::shorten(&field)
        } else {
            field
        });
        self
    }

    /// The offending value, as the caller masked or shortened it; anything still longer than
    /// 100 characters (more than `mask::shorten` ever gives) is cut here, whatever the caller did.
    pub fn value(mut self, value: impl Into<String>) -> Self {
        let value = value.into();
        self.value = Some(if value.chars().count() > 100 {
            crate::mask::shorten(&value)
        } else {
            value
        });
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(bound_quotes(hint.into()));
        self
    }

    /// `file:line:column`, as editors and terminals recognise it.
    pub fn location(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}", self.file),
            (Some(l), None) => format!("{}:{l}", self.file),
            _ => self.file.clone(),
        }
    }

    /// The human rendering, compiler style: rule and message, then where, the offending source
    /// line with a caret when `source` (the text of `file`) is given, the value and the hint.
    pub fn render_with(&self, source: Option<&str>) -> String {
        let mut out = format!(
            "error[{}]: {}\n  --> {}",
            self.rule,
            self.message,
            self.location()
        );
        let mut what = Vec::new();
        if let Some(c) = &self.column_name {
            what.push(format!("column `{c}`"));
        }
        if let Some(i) = &self.item {
            what.push(format!("item `{i}`"));
        }
        if !what.is_empty() {
            out.push_str(&format!(" ({})", what.join(", ")));
        }
        if let (Some(src), Some(line), true) = (source, self.line, self.may_quote_source())
            && let Some(text) = src.lines().nth(line.saturating_sub(1) as usize)
        {
            let col = self.column.unwrap_or(1).max(1) as usize;
            let shown = crate::mask::shorten(&mask_secrets(text));
            let width = line.to_string().len();
            out.push_str(&format!(
                "\n {:width$} |\n {line} | {shown}\n {:width$} | {}^",
                "",
                "",
                " ".repeat(col - 1)
            ));
        }
        if let Some(v) = &self.value {
            out.push_str(&format!("\n  value: {v:?}"));
        }
        if let Some(h) = &self.hint {
            out.push_str(&format!("\n  hint: {h}"));
        }
        out
    }

    /// Whether the offending source line may be printed under the message. Never for a
    /// credential given as a value, for an item's value or for inline items (their line may hold
    /// a card or account number).
    fn may_quote_source(&self) -> bool {
        self.value.is_none()
            && self.rule != "manifest.credential-value"
            && !self
                .column_name
                .as_deref()
                .is_some_and(|c| c.starts_with("inline"))
    }

    pub fn render(&self) -> String {
        self.render_with(None)
    }
}

/// The longest quoted run a message or hint keeps whole.
const QUOTED_MAX: usize = 60;

/// Cuts every run quoted in `` `…` `` or `"…"` that is longer than `QUOTED_MAX` characters:
/// messages quote what the user wrote (a batch id, a duration, a header name, serde_yaml's
/// `invalid type: string "…"`), and a 200 MB value must not come back whole. Text outside
/// quotes is payrun's own and stays as it is.
fn bound_quotes(text: String) -> String {
    if text.len() <= QUOTED_MAX {
        return text;
    }
    let mut out = String::with_capacity(text.len().min(1024));
    let mut run = String::new();
    let mut open: Option<char> = None;
    let mut escaped = false;
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() > QUOTED_MAX {
            out.extend(run.chars().take(40));
            out.push_str(&format!("… ({} bytes in all)", run.len()));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        match open {
            None => {
                out.push(c);
                if c == '`' || c == '"' {
                    open = Some(c);
                }
            }
            Some(q) if c == q && !(q == '"' && escaped) => {
                flush(&mut run, &mut out);
                out.push(c);
                open = None;
            }
            Some(_) => run.push(c),
        }
        escaped = c == '\\' && !escaped;
    }
    // An unclosed quote: its run is cut the same way.
    flush(&mut run, &mut out);
    out
}

/// Masks what looks like a secret or an account number in a quoted source line: a run of 12 or
/// more letters, digits and underscores holding at least 6 digits (IBANs, card numbers, API keys).
fn mask_secrets(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if token.len() >= 12 && token.bytes().filter(u8::is_ascii_digit).count() >= 6 {
            out.push_str(&crate::mask::mask_account(token));
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for c in line.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// How a diagnostic quotes a name read from a file (a CSV header cell): what looks like a
/// secret or an account number masked, control characters escaped, at most 32 characters. A
/// header is the user's, but a file that is not what it should be (an environment dump, a key
/// file) must not be echoed through it.
pub fn quote_header(name: &str) -> String {
    const MAX: usize = 32;
    // Masking looks at whole tokens: a long prefix is enough to judge the shown part.
    let head: String = name.chars().take(4 * MAX).collect();
    let shown = crate::mask::shorten(&mask_secrets(&head));
    if shown.chars().count() > MAX || head.len() < name.len() {
        let mut cut: String = shown.chars().take(MAX).collect();
        cut.push('…');
        cut
    } else {
        shown
    }
}

/// A short list of names read from a file, each quoted by `quote_header`: the first eight,
/// then how many more there are.
pub fn quote_names<S: AsRef<str>>(names: &[S]) -> String {
    const SHOWN: usize = 8;
    let mut out = names
        .iter()
        .take(SHOWN)
        .map(|n| quote_header(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    out
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

/// Several diagnostics found in one pass over an input that cannot be used as it is.
#[derive(Debug, Clone)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl std::fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_source_lines_hide_account_numbers_and_keys() {
        assert_eq!(
            mask_secrets("  accountIdentifier: GB33BUKB20201555555555"),
            "  accountIdentifier: ********5555"
        );
        assert_eq!(
            mask_secrets("batch: acme-payroll-2026-11"),
            "batch: acme-payroll-2026-11"
        );
        assert_eq!(
            mask_secrets("key: sk_live_4eC39HqLyjWD1234"),
            "key: ********1234"
        );
    }

    #[test]
    fn a_huge_quoted_value_in_a_message_or_hint_is_cut_and_payruns_own_words_are_not() {
        let huge = "x".repeat(1 << 20);
        let d = Diagnostic::new(
            "m.yaml",
            "manifest.batch-id",
            format!("batch id `{huge}` is not usable as a stable id, whatever the rest of this long sentence says"),
        )
        .hint(format!("did you mean \"{huge}\"?"));
        assert_eq!(
            d.message,
            format!(
                "batch id `{}… (1048576 bytes in all)` is not usable as a stable id, whatever the rest of this long sentence says",
                "x".repeat(40)
            )
        );
        assert!(d.hint.unwrap().len() < 100);
        let plain = "a message of payrun's own words that is longer than sixty characters `ok`";
        assert_eq!(Diagnostic::new("f", "r", plain).message, plain);
    }

    #[test]
    fn header_names_are_quoted_short_and_masked() {
        assert_eq!(quote_header("net_pay"), "net_pay");
        assert_eq!(
            quote_header("AWS_SECRET=sk_live_4eC39HqLyjWD1234"),
            "AWS_SECRET=********1234"
        );
        let long = quote_header(&"x".repeat(10 << 20));
        assert_eq!(long.chars().count(), 33, "{long}");
        assert_eq!(quote_header("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        let many: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
        assert_eq!(
            quote_names(&many),
            "c0, c1, c2, c3, c4, c5, c6, c7 and 12 more"
        );
    }

    #[test]
    fn a_credential_value_error_never_quotes_its_line() {
        let src = "credentials:\n  inbound_key: sk_live_4eC39HqLyjWDarjtT1zdp7dc\n";
        let d = Diagnostic::new(
            "m.yaml",
            "manifest.credential-value",
            "must name a variable",
        )
        .at(2, 3);
        assert!(!d.render_with(Some(src)).contains("sk_live"));
        let d = Diagnostic::new("m.yaml", "manifest.syntax", "bad").at(1, 1);
        assert!(d.render_with(Some(src)).contains("credentials:"));
    }
}

//! The per-row checker: the compiled flow's checks resolved to field indices, run on one row at
//! a time. It is immutable and shared by the worker threads; each batch of rows writes its
//! findings into its own `BatchOut`.

use super::source::Source;
use super::text;
use crate::compile::{Bound, CurrencySource, Flow};
use crate::diagnostic::Diagnostic;
use crate::keys;
use crate::mask;
use crate::money::Currency;
use crate::schema::{CurrencyFormat, Field, FieldKind};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

/// A value resolved against a row: field indices instead of names.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Field { idx: usize, default: Option<String> },
    Interp(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Field { idx: usize, default: Option<String> },
    Key,
    TaskKey(String),
}

/// Where an amount's currency comes from, resolved once per row.
#[derive(Debug, Clone, Copy)]
enum Cur {
    None,
    Fixed(Currency),
    /// Index into the row's resolved currency slots.
    Slot(usize),
    Unknown,
}

struct Check {
    op: String,
    field: Field,
    val: Val,
    /// The row field the value comes from (for the column in diagnostics).
    fi: Option<usize>,
    /// Per-row values of the siblings the field's `holds_if` names.
    siblings: Vec<(String, Val)>,
    cur: Cur,
    /// Other (operation, field) pairs that take the same value under the same rule (a country
    /// column used for the bank and the address): checked once, reported for each.
    also: Vec<(String, Field)>,
}

impl Check {
    /// Whether `other` applies exactly the same rule to exactly the same value.
    fn same_rule(&self, other: &Check) -> bool {
        let (a, b) = (&self.field, &other.field);
        self.val == other.val
            && a.kind.type_name() == b.kind.type_name()
            && a.format() == b.format()
            && a.required == b.required
            && a.sensitive == b.sensitive
            && self.siblings == other.siblings
            && match (self.cur, other.cur) {
                (Cur::None, Cur::None) | (Cur::Unknown, Cur::Unknown) => true,
                (Cur::Fixed(x), Cur::Fixed(y)) => x == y,
                (Cur::Slot(x), Cur::Slot(y)) => x == y,
                _ => false,
            }
    }
}

struct AnyOf {
    op: String,
    paths: Vec<String>,
    vals: Vec<Val>,
}

struct Money {
    amount: Val,
    cur: Cur,
}

pub struct Engine {
    pub id_idx: usize,
    checks: Vec<Check>,
    any_of: Vec<AnyOf>,
    money: Vec<Money>,
    /// Distinct per-row currency sources; each row resolves them once.
    slots: Vec<(Val, CurrencyFormat)>,
    /// Row fields some check reads, and whether any of those checks is sensitive.
    used: Vec<(usize, bool)>,
    /// `used` as a lookup by field index.
    is_used: Vec<bool>,
    batch: String,
    fields: Vec<String>,
    /// The values marked `recipient` in the schemas (constants included), with their paths
    /// and whether they are sensitive: with the amounts, what identifies a payment.
    recipients: Vec<(Val, String, mask::Privacy)>,
    /// Seeds the recipient hashes of one pass.
    hasher: foldhash::quality::RandomState,
}

/// Findings of one batch of rows.
#[derive(Default)]
pub struct BatchOut {
    pub rows: u64,
    pub valid: u64,
    pub invalid: u64,
    pub error_count: u64,
    pub diagnostics: Vec<Diagnostic>,
    pub by_rule: HashMap<String, u64>,
    pub totals: BTreeMap<Currency, (i128, u64)>,
    /// (hash of the item id, line, row index, otherwise valid) of every row with an id, for the
    /// duplicate check that runs once all rows are in.
    pub ids: Vec<(u64, u64, u64, bool)>,
    /// (hash of recipient, amounts and currencies, line, row index) of every valid row, for the
    /// repeated-recipient check that runs once all rows are in.
    pub recipients: Vec<(u64, u64, u64)>,
}

impl BatchOut {
    pub fn push(&mut self, d: Diagnostic, cap: usize) {
        self.error_count += 1;
        match self.by_rule.get_mut(&d.rule) {
            Some(n) => *n += 1,
            None => {
                self.by_rule.insert(d.rule.clone(), 1);
            }
        }
        if self.diagnostics.len() < cap {
            self.diagnostics.push(d);
        }
    }
}

/// Where findings are, in the source's terms (shared, read-only).
pub enum Place {
    Csv {
        display: String,
        columns: Vec<usize>,
        header: Option<Vec<String>>,
    },
    Inline {
        display: String,
        text: String,
    },
}

impl Place {
    pub fn of(source: &Source) -> Place {
        match source {
            Source::Csv(c) => Place::Csv {
                display: c.display.clone(),
                columns: c.columns.clone(),
                header: c.header.clone(),
            },
            Source::Inline(r) => Place::Inline {
                display: r.display.clone(),
                text: r.text.clone(),
            },
        }
    }

    pub fn display(&self) -> &str {
        match self {
            Place::Csv { display, .. } | Place::Inline { display, .. } => display,
        }
    }

    fn diag(
        &self,
        line: u64,
        index: usize,
        field_idx: Option<usize>,
        fields: &[String],
        rule: &str,
        message: String,
    ) -> Diagnostic {
        match self {
            Place::Csv {
                display,
                columns,
                header,
            } => {
                let mut d = Diagnostic::new(display, rule, message);
                d.line = Some(line);
                if let Some(fi) = field_idx {
                    let col = columns[fi];
                    d.column = Some(col as u64 + 1);
                    d.column_name = header.as_ref().and_then(|h| h.get(col).cloned());
                }
                d
            }
            Place::Inline { display, text } => {
                let mut d = Diagnostic::new(display, rule, message);
                let pos = field_idx.and_then(|fi| {
                    crate::yaml::locate(
                        text,
                        &[
                            crate::yaml::key("items"),
                            crate::yaml::key("inline"),
                            crate::yaml::Seg::Index(index),
                            crate::yaml::key(&fields[fi]),
                        ],
                    )
                });
                d = d.at_opt(pos);
                if d.line.is_none() {
                    d.line = Some(line);
                }
                if let Some(fi) = field_idx {
                    d.column_name = Some(format!("inline `{}`", fields[fi]));
                }
                d
            }
        }
    }
}

fn to_val(b: &Bound, fields: &[String], task_path: &str) -> Val {
    let idx = |f: &str| {
        fields
            .iter()
            .position(|x| x == f)
            .expect("compiled against these fields")
    };
    let part = |p: &Bound| match p {
        Bound::Const(s) => Part::Lit(s.clone()),
        Bound::Row { field, default } => Part::Field {
            idx: idx(field),
            default: default.clone(),
        },
        Bound::IdempotencyKey => Part::Key,
        Bound::TaskKey => Part::TaskKey(task_path.to_string()),
        other => Part::Lit(other.describe()),
    };
    match b {
        Bound::Row { field, default } => Val::Field {
            idx: idx(field),
            default: default.clone(),
        },
        Bound::Interp(parts) => Val::Interp(parts.iter().map(part).collect()),
        other => Val::Interp(vec![part(other)]),
    }
}

fn first_field(v: &Val) -> Option<usize> {
    match v {
        Val::Field { idx, .. } => Some(*idx),
        Val::Interp(parts) => parts.iter().find_map(|p| match p {
            Part::Field { idx, .. } => Some(*idx),
            _ => None,
        }),
    }
}

/// Renders a value for one row; the item key is only computed when an interpolation needs it.
fn render<'a>(v: &'a Val, row: &[&'a str], id: &str, batch: &str) -> Cow<'a, str> {
    match v {
        Val::Field { idx, default } => {
            let s = row[*idx];
            if s.is_empty() {
                Cow::Borrowed(default.as_deref().unwrap_or(""))
            } else {
                Cow::Borrowed(s)
            }
        }
        Val::Interp(parts) => {
            let mut out = String::new();
            let mut key: Option<String> = None;
            for p in parts {
                match p {
                    Part::Lit(s) => out.push_str(s),
                    Part::Field { idx, default } => {
                        let s = row[*idx];
                        out.push_str(if s.is_empty() {
                            default.as_deref().unwrap_or("")
                        } else {
                            s
                        });
                    }
                    Part::Key => out.push_str(key.get_or_insert_with(|| keys::item_key(batch, id))),
                    Part::TaskKey(tp) => {
                        let k = key.get_or_insert_with(|| keys::item_key(batch, id)).clone();
                        out.push_str(&keys::task_key(&k, tp));
                    }
                }
            }
            Cow::Owned(out)
        }
    }
}

/// Strips surrounding spaces (which spreadsheets add around values), cheaply for the usual
/// value that has none.
fn trim_spaces(s: &str) -> &str {
    let b = s.as_bytes();
    if b.first() != Some(&b' ') && b.last() != Some(&b' ') {
        s
    } else {
        s.trim_matches(' ')
    }
}

/// A formula-looking cell: spreadsheets execute these when the file is opened, and a payroll
/// export that carries one has been tampered with or mangled.
fn looks_like_formula(s: &str) -> bool {
    let b = s.as_bytes();
    match b.first() {
        Some(b'=') | Some(b'@') | Some(b'\t') | Some(b'\r') => true,
        Some(b'+') | Some(b'-') => b
            .get(1)
            .is_some_and(|c| !(c.is_ascii_digit() || *c == b'.' || *c == b' ')),
        _ => false,
    }
}

impl Engine {
    /// The diagnostic for an item whose id appeared before, on line `first`, spelt `first_id`
    /// there (`None` when it could not be read again).
    pub fn duplicate(
        &self,
        place: &Place,
        line: u64,
        index: usize,
        id: &str,
        first: u64,
        first_id: Option<&str>,
    ) -> Diagnostic {
        let message = match first_id {
            Some(f) if f != id => format!(
                "the item id is used twice (first on line {first}): {} there and {} here are the same id once case and Unicode look-alikes (NFKC) are set aside",
                mask::shorten(&text::escape(f)),
                mask::shorten(&text::escape(id)),
            ),
            _ => format!("the item id is used twice (first on line {first})"),
        };
        let mut d = place
            .diag(line, index, Some(self.id_idx), &self.fields, "item.duplicate-id", message)
            .value(mask::shorten(&text::visible(id)))
            .hint("each item must have its own id: it seeds the idempotency key that stops double payment");
        if !id.is_empty() {
            d.item = Some(mask::shorten(&text::visible(id)));
        }
        d
    }

    /// The diagnostic for an item that pays the recipient, amount and currency of line `first`
    /// again. `row` holds the item's values when they could be read again. As a warning when
    /// `allowed` (the manifest's `items.allow_repeated_recipients`).
    pub fn repeated_recipient(
        &self,
        place: &Place,
        line: u64,
        index: usize,
        row: Option<&[&str]>,
        first: u64,
        allowed: bool,
    ) -> Diagnostic {
        let fi = self.recipients.iter().find_map(|(v, _, _)| first_field(v));
        let what = row.map(|r| self.payment_summary(r)).unwrap_or_default();
        let (message, hint) = if allowed {
            (
                format!(
                    "line {line} pays the same recipient the same amount as line {first}{what} (allowed by items.allow_repeated_recipients)"
                ),
                "nothing to do if both payments are meant".to_string(),
            )
        } else {
            (
                format!("the item pays the same recipient the same amount as line {first}{what}"),
                "a recipient paid twice in one batch is the classic double payment; remove one of the two items, or, if both payments are meant (e.g. two expense refunds of the same amount), set `allow_repeated_recipients: true` under `items:` in the manifest".to_string(),
            )
        };
        let mut d = place
            .diag(
                line,
                index,
                fi,
                &self.fields,
                "item.repeated-recipient",
                message,
            )
            .hint(hint);
        if let Some(r) = row {
            let id = r[self.id_idx];
            if !id.is_empty() {
                d.item = Some(mask::shorten(&text::visible(id)));
            }
        }
        d
    }

    /// ": `to.accountIdentifier` ********5565, 3628.61 GBP" (masked as the schema says).
    fn payment_summary(&self, row: &[&str]) -> String {
        let id = row[self.id_idx];
        let mut parts: Vec<String> = Vec::new();
        for (v, path, privacy) in &self.recipients {
            let r = render(v, row, id, &self.batch);
            if !r.is_empty() {
                // As compared (without spaces, upper case), so the masked tail is comparable.
                let mut norm = Vec::new();
                text::recipient_into(&r, &mut norm);
                let norm = String::from_utf8_lossy(&norm);
                parts.push(format!(
                    "`{path}` {}",
                    mask::for_error(&text::visible(&norm), *privacy)
                ));
            }
        }
        for m in &self.money {
            let amount = render(&m.amount, row, id, &self.batch);
            let cur = self.currency_of(m.cur, row, id).map(|c| c.code());
            parts.push(format!(
                "{} {}",
                mask::shorten(&amount),
                cur.unwrap_or_default()
            ));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(": {}", parts.join(", "))
        }
    }

    fn currency_of(&self, c: Cur, row: &[&str], id: &str) -> Option<Currency> {
        match c {
            Cur::None | Cur::Unknown => None,
            Cur::Fixed(c) => Some(c),
            Cur::Slot(i) => {
                let (v, format) = &self.slots[i];
                crate::schema::field::check_currency(&render(v, row, id, &self.batch), *format).ok()
            }
        }
    }

    /// The hash of what identifies this (valid) item's payment: its recipient values, amounts
    /// and currencies, normalised. `None` when the item names no recipient or an amount is
    /// unreadable.
    fn payment_hash(
        &self,
        row: &[&str],
        id: &str,
        money: &[Option<(Currency, i128)>],
    ) -> Option<u64> {
        use std::hash::BuildHasher;
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            let mut any = false;
            for (v, _, _) in &self.recipients {
                let r = render(v, row, id, &self.batch);
                any |= !r.is_empty();
                text::recipient_into(&r, &mut buf);
                buf.push(0xff); // never in UTF-8: separates the values
            }
            if !any {
                return None;
            }
            Some(self.hasher.hash_one((&buf[..], money)))
        })
    }

    pub fn new(flow: &Flow) -> Engine {
        let fields = &flow.row_fields;
        let paths: HashMap<&str, &str> = flow
            .all_tasks()
            .into_iter()
            .map(|t| (t.id.as_str(), t.tree_path.as_str()))
            .collect();
        let tp = |id: &str| paths.get(id).copied().unwrap_or("").to_string();
        let mut slots: Vec<(Val, CurrencyFormat)> = Vec::new();
        let mut cur = |c: &Option<CurrencySource>, task: &str| -> Cur {
            match c {
                None => Cur::None,
                Some(CurrencySource::Fixed(c)) => Cur::Fixed(*c),
                Some(CurrencySource::Unknown) => Cur::Unknown,
                Some(CurrencySource::Row { value, format }) => {
                    let v = to_val(value, fields, &tp(task));
                    match slots.iter().position(|(sv, sf)| *sv == v && sf == format) {
                        Some(i) => Cur::Slot(i),
                        None => {
                            slots.push((v, *format));
                            Cur::Slot(slots.len() - 1)
                        }
                    }
                }
            }
        };
        let checks: Vec<Check> = flow
            .checks
            .iter()
            .map(|c| {
                let val = to_val(&c.value, fields, &tp(&c.task));
                Check {
                    op: c.op.clone(),
                    field: c.field.clone(),
                    siblings: c
                        .siblings
                        .iter()
                        .map(|(p, b)| (p.clone(), to_val(b, fields, &tp(&c.task))))
                        .collect(),
                    fi: first_field(&val),
                    val,
                    cur: cur(&c.currency, &c.task),
                    also: Vec::new(),
                }
            })
            .collect();
        let checks = {
            let mut merged: Vec<Check> = Vec::new();
            for c in checks {
                match merged.iter_mut().find(|m| m.same_rule(&c)) {
                    Some(m) => m.also.push((c.op, c.field)),
                    None => merged.push(c),
                }
            }
            merged
        };
        let money: Vec<Money> = flow
            .money
            .iter()
            .map(|m| Money {
                amount: to_val(&m.amount, fields, &tp(&m.task)),
                cur: cur(&Some(m.currency.clone()), &m.task),
            })
            .collect();
        let any_of = flow
            .any_of
            .iter()
            .map(|a| AnyOf {
                op: a.op.clone(),
                paths: a.paths.clone(),
                vals: a
                    .values
                    .iter()
                    .map(|v| to_val(v, fields, &tp(&a.task)))
                    .collect(),
            })
            .collect();
        let id_idx = fields
            .iter()
            .position(|f| f == "id")
            .expect("compile requires an id field");
        let mut is_used = vec![false; fields.len()];
        let mut used: Vec<(usize, bool)> = Vec::new();
        let mut mark = |v: &Val, sensitive: bool| {
            let idxs: Vec<usize> = match v {
                Val::Field { idx, .. } => vec![*idx],
                Val::Interp(parts) => parts
                    .iter()
                    .filter_map(|p| {
                        if let Part::Field { idx, .. } = p {
                            Some(*idx)
                        } else {
                            None
                        }
                    })
                    .collect(),
            };
            for i in idxs {
                is_used[i] = true;
                match used.iter_mut().find(|(u, _)| *u == i) {
                    Some(u) => u.1 |= sensitive,
                    None => used.push((i, sensitive)),
                }
            }
        };
        for c in &checks {
            mark(&c.val, c.field.sensitive);
        }
        for (v, _) in &slots {
            mark(v, false);
        }
        for m in &money {
            mark(&m.amount, false);
        }
        used.sort_unstable();
        let mut recipients: Vec<(Val, String, mask::Privacy)> = Vec::new();
        for task in flow.all_tasks() {
            let op = flow.op(&task.op);
            for b in &task.bindings {
                let field = &op.fields[b.field];
                // A recipient read from an earlier node's result is known only when it is sent.
                if field.recipient && !b.value.reads_result() {
                    let v = to_val(&b.value, fields, &task.tree_path);
                    if !recipients.iter().any(|(x, _, _)| *x == v) {
                        recipients.push((v, b.path.clone(), field.privacy()));
                    }
                }
            }
        }
        Engine {
            id_idx,
            checks,
            any_of,
            money,
            slots,
            used,
            is_used,
            batch: flow.manifest.batch.clone(),
            fields: fields.clone(),
            recipients,
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    /// Checks one CSV record. Returns `None` for a record too ragged to read (reported), else
    /// whether the item is valid; `values` receives the row's field values.
    #[allow(clippy::too_many_arguments)]
    pub fn csv_row<'r>(
        &self,
        place: &Place,
        rec: &'r super::records::Row,
        line: u64,
        index: usize,
        width: Option<usize>,
        columns: &[usize],
        dup_of: Option<(u64, &str)>,
        values: &mut Vec<&'r str>,
        bad: &mut [bool],
        out: &mut BatchOut,
        cap: usize,
    ) -> Option<bool> {
        let width_ok = match width {
            Some(w) => rec.len() == w,
            None => columns.iter().all(|&i| i < rec.len()),
        };
        if !width_ok {
            let want = width
                .map(|w| format!("the header has {w}"))
                .unwrap_or_else(|| "the column mapping needs more".into());
            let d = place
                .diag(line, index, None, &self.fields, "csv.ragged-row", format!("the row has {} fields but {want}", rec.len()))
                .hint("a value probably contains the delimiter without quotes, or a column is missing; quote such values");
            out.push(d, cap);
            out.rows += 1;
            out.invalid += 1;
            return None;
        }
        let mut any_bad = false;
        // One UTF-8 check for the whole record: when it passes and every field boundary is a
        // character boundary, fields are slices of it. (The record's bytes are the fields
        // without delimiters, so a character split across two cells can look valid joined:
        // such a record takes the per-field path below.)
        let whole = std::str::from_utf8(rec.as_slice()).ok();
        let fast = whole.is_some_and(|w| {
            for &col in columns {
                match rec.range(col).and_then(|r| w.get(r)) {
                    Some(v) => values.push(trim_spaces(v)),
                    None => return false,
                }
            }
            true
        });
        if fast {
            bad.iter_mut().for_each(|b| *b = false);
        } else {
            values.clear();
            for (fi, &col) in columns.iter().enumerate() {
                let raw = &rec[col];
                match std::str::from_utf8(raw) {
                    Ok(s) => {
                        values.push(trim_spaces(s));
                        bad[fi] = false;
                    }
                    Err(_) => {
                        values.push("");
                        bad[fi] = true;
                        if self.is_used[fi] || fi == self.id_idx {
                            any_bad = true;
                            let d = place
                                .diag(
                                    line,
                                    index,
                                    Some(fi),
                                    &self.fields,
                                    "csv.encoding",
                                    "the cell is not valid UTF-8".into(),
                                )
                                .value(mask::shorten(&String::from_utf8_lossy(raw)))
                                .hint("save the file as CSV UTF-8 (Excel: Save As → CSV UTF-8)");
                            out.push(d, cap);
                        }
                    }
                }
            }
        }
        // One pass over the whole record tells whether any cell can hold a hidden character.
        let plain = text::printable_ascii(rec.as_slice());
        let ok = self.check(
            place,
            line,
            index,
            values,
            if any_bad { bad } else { &[] },
            dup_of,
            out,
            cap,
            plain,
        );
        Some(ok)
    }

    /// Checks one row's values. `bad` marks unreadable cells (already reported).
    #[allow(clippy::too_many_arguments)]
    pub fn check_row(
        &self,
        place: &Place,
        line: u64,
        index: usize,
        row: &[&str],
        bad: &[bool],
        dup_of: Option<(u64, &str)>,
        out: &mut BatchOut,
        cap: usize,
    ) -> bool {
        self.check(place, line, index, row, bad, dup_of, out, cap, false)
    }

    /// `check_row`; `plain`: every value is known to be printable ASCII.
    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        place: &Place,
        line: u64,
        index: usize,
        row: &[&str],
        bad: &[bool],
        dup_of: Option<(u64, &str)>,
        out: &mut BatchOut,
        cap: usize,
        plain: bool,
    ) -> bool {
        out.rows += 1;
        let before = out.error_count;
        let fields = &self.fields;
        let is_bad = |fi: usize| bad.get(fi).copied().unwrap_or(false);
        let id = row[self.id_idx];
        let with_item = |mut d: Diagnostic| {
            if !id.is_empty() {
                d.item = Some(mask::shorten(&text::visible(id)));
            }
            d
        };
        // The id: present, plain, unique.
        if id.is_empty() {
            if !is_bad(self.id_idx) {
                let d = place
                    .diag(
                        line,
                        index,
                        Some(self.id_idx),
                        fields,
                        "item.id-empty",
                        "the item has no id".into(),
                    )
                    .hint("every row needs its own stable id, e.g. the employee number");
                out.push(d, cap);
            }
        } else if let Some(h) = (!plain).then(|| text::first_hostile(id, false)).flatten() {
            // Invisible, an id can look like another one and pay its person twice.
            let d = place
                .diag(
                    line,
                    index,
                    Some(self.id_idx),
                    fields,
                    "item.id-hidden-character",
                    format!("the item id holds {}", h.describe()),
                )
                .value(mask::shorten(&text::visible(id)))
                .hint(format!("ids are plain visible text such as E0042; {} does not show on screen, so this id can look like another one: retype it in the source", text::name(h.ch)));
            out.push(with_item(d), cap);
        } else if crate::schema::field::is_scientific(id) {
            // `1.23457E+11`: the spreadsheet kept the first digits of a long numeric id, so
            // different people's ids may now read the same (or as someone else's).
            let d = place
                .diag(
                    line,
                    index,
                    Some(self.id_idx),
                    fields,
                    "identifier.scientific-notation",
                    "the item id is in scientific notation, so its digits are lost".into(),
                )
                .value(mask::shorten(id))
                .hint("the spreadsheet (e.g. Excel) formatted the id column as scientific and kept only the first digits: format the column as text and copy the ids again from the source, then export");
            out.push(with_item(d), cap);
        } else if id.len() > 128 {
            let d = place
                .diag(
                    line,
                    index,
                    Some(self.id_idx),
                    fields,
                    "item.id-format",
                    "the item id has more than 128 bytes".into(),
                )
                .value(mask::shorten(id))
                .hint("ids are short plain text such as E0042");
            out.push(with_item(d), cap);
        } else if let Some((first, first_id)) = dup_of {
            out.push(
                self.duplicate(place, line, index, id, first, Some(first_id)),
                cap,
            );
        }
        // Formula-looking cells and hidden characters in any cell we read; such a cell is not
        // checked further (its other findings would only repeat the problem).
        let mut formula_in: u64 = 0; // bit i: used[i] is reported (first 64 used fields)
        for (ui, &(fi, sensitive)) in self.used.iter().enumerate() {
            let v = row[fi];
            if is_bad(fi) {
                continue;
            }
            if looks_like_formula(v) {
                if ui < 64 {
                    formula_in |= 1 << ui;
                }
                let d = place
                    .diag(line, index, Some(fi), fields, "cell.formula", format!("item field `{}` looks like a spreadsheet formula", fields[fi]))
                    .value(mask::display(&text::visible(v), sensitive))
                    .hint("remove the leading = + - @ or tab; formulas in payroll files are either export mistakes or an injection attempt");
                out.push(with_item(d), cap);
            } else if !plain
                && fi != self.id_idx
                && let Some(h) = text::first_hostile(v, true)
            {
                if ui < 64 {
                    formula_in |= 1 << ui;
                }
                let d = place
                    .diag(line, index, Some(fi), fields, h.rule(), format!("item field `{}` holds {}", fields[fi], h.describe()))
                    .value(mask::display(&text::visible(v), sensitive))
                    .hint(format!("remove {}: the provider or a bank would mangle it, and hidden characters can make a name or number read as another", text::name(h.ch)));
                out.push(with_item(d), cap);
            }
        }
        let skip_cell = |fi: usize| -> bool {
            if is_bad(fi) {
                return true;
            }
            formula_in != 0
                && self
                    .used
                    .iter()
                    .position(|(u, _)| *u == fi)
                    .is_some_and(|ui| ui < 64 && formula_in & (1 << ui) != 0)
        };
        // Currencies, once per row.
        let mut resolved: [Option<Currency>; 8] = [None; 8];
        for (i, (v, format)) in self.slots.iter().enumerate().take(8) {
            resolved[i] =
                crate::schema::field::check_currency(&render(v, row, id, &self.batch), *format)
                    .ok();
        }
        let currency = |c: Cur| match c {
            Cur::None | Cur::Unknown => None,
            Cur::Fixed(c) => Some(c),
            Cur::Slot(i) if i < 8 => resolved[i],
            Cur::Slot(i) => {
                let (v, format) = &self.slots[i];
                crate::schema::field::check_currency(&render(v, row, id, &self.batch), *format).ok()
            }
        };
        for c in &self.checks {
            if c.fi.is_some_and(skip_cell) {
                continue;
            }
            let v = render(&c.val, row, id, &self.batch);
            let targets =
                std::iter::once((&c.op, &c.field)).chain(c.also.iter().map(|(o, f)| (o, f)));
            if v.is_empty() {
                if c.field.required {
                    for (op, field) in targets {
                        let d = place
                            .diag(
                                line,
                                index,
                                c.fi,
                                fields,
                                "required",
                                format!("{op} `{}` is required but empty", field.path),
                            )
                            .field(field.path.clone())
                            .hint(field.description.clone());
                        out.push(with_item(d), cap);
                    }
                }
                continue;
            }
            let res = match c.field.kind {
                FieldKind::Amount { .. } => c.field.check_amount(&v, currency(c.cur)).map(|_| ()),
                _ if c.siblings.is_empty() => c.field.check(&v),
                // What the field holds depends on a sibling of this row (`holds_if`).
                _ => c.field.check_holding(
                    &v,
                    c.field.holds_given(|p| {
                        let (_, sv) = c.siblings.iter().find(|(sp, _)| sp == p)?;
                        Some(render(sv, row, id, &self.batch).into_owned())
                    }),
                ),
            };
            if let Err(viol) = res {
                for (op, field) in targets {
                    let d = place
                        .diag(
                            line,
                            index,
                            c.fi,
                            fields,
                            viol.rule,
                            format!("{op} `{}` {}", field.path, viol.message),
                        )
                        .field(field.path.clone())
                        .value(mask::for_error(&v, c.field.privacy()))
                        .hint(viol.hint.clone());
                    out.push(with_item(d), cap);
                }
            }
        }
        for a in &self.any_of {
            // An unreadable cell was reported already; it may well hold the value.
            if a.vals.iter().any(|v| first_field(v).is_some_and(is_bad)) {
                continue;
            }
            if a.vals
                .iter()
                .all(|v| render(v, row, id, &self.batch).is_empty())
            {
                let fi = a.vals.iter().find_map(first_field);
                let d = place
                    .diag(
                        line,
                        index,
                        fi,
                        fields,
                        "required.any-of",
                        format!("{} needs one of {}", a.op, a.paths.join(", ")),
                    )
                    .hint("fill in one of these columns for this item");
                out.push(with_item(d), cap);
            }
        }
        // Unreadable cells were reported before the row got here.
        let ok = out.error_count == before && !bad.iter().any(|&b| b);
        if ok {
            out.valid += 1;
            let mut money: [Option<(Currency, i128)>; 4] = [None; 4];
            let mut n = 0;
            let mut whole = self.money.len() <= money.len();
            for m in &self.money {
                let amount = currency(m.cur).and_then(|cur| {
                    let exp = cur.exponent()?;
                    let a =
                        crate::money::parse_amount(&render(&m.amount, row, id, &self.batch), exp)
                            .ok()?;
                    Some((cur, a.minor))
                });
                let Some((cur, minor)) = amount else {
                    whole = false;
                    continue;
                };
                let t = out.totals.entry(cur).or_insert((0, 0));
                t.0 += minor;
                t.1 += 1;
                if n < money.len() {
                    money[n] = Some((cur, minor));
                    n += 1;
                }
            }
            if whole
                && n > 0
                && !self.recipients.is_empty()
                && let Some(h) = self.payment_hash(row, id, &money[..n])
            {
                out.recipients.push((h, line, index as u64));
            }
        } else {
            out.invalid += 1;
        }
        ok
    }
}

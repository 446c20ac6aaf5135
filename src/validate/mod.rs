//! Validation of every item of a batch in one streaming pass: each row's values are checked
//! against the compiled flow's per-row checks; every problem becomes a `Diagnostic` with file,
//! line, column, field, rule, masked value and hint. Totals per rule are always complete even
//! when the stored diagnostics are capped.

pub mod source;

use crate::compile::{Bound, CurrencySource, Flow};
use crate::diagnostic::Diagnostic;
use crate::keys;
use crate::mask;
use crate::money::Currency;
use crate::schema::{CurrencyFormat, Field, FieldKind};
use source::Source;
use std::collections::{BTreeMap, HashMap};

/// The outcome of a validation pass.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub source: String,
    /// Data rows read (items), not counting the header.
    pub rows: u64,
    pub valid_items: u64,
    pub invalid_items: u64,
    /// All errors found, including those not stored.
    pub error_count: u64,
    /// The first `cap` errors, in file order.
    pub errors: Vec<Diagnostic>,
    /// Errors per rule over the whole batch.
    pub errors_by_rule: BTreeMap<String, u64>,
    pub warnings: Vec<String>,
    /// Sums of the payout amounts of valid items, per currency (minor units).
    #[serde(skip)]
    pub totals: BTreeMap<Currency, (i128, u64)>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.error_count == 0
    }
}

/// What a pass tells its visitor about each item (used by `plan`).
pub struct ItemRow<'a> {
    pub index: u64,
    pub line: u64,
    pub id: &'a str,
    /// Values of the flow's row fields, in `flow.row_fields` order ("" when empty or unreadable).
    pub values: &'a [&'a str],
    pub valid: bool,
}

/// A value resolved against a row: field indices instead of names.
#[derive(Debug, Clone)]
enum Val {
    Field { idx: usize, default: Option<String> },
    Interp(Vec<Part>),
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Field { idx: usize, default: Option<String> },
    Key,
    TaskKey(String),
}

#[derive(Debug, Clone)]
enum Cur {
    None,
    Fixed(Currency),
    Val(Val, CurrencyFormat),
    Unknown,
}

struct Check {
    task_path: String,
    op: String,
    field: Field,
    val: Val,
    cur: Cur,
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

struct Engine {
    id_idx: usize,
    checks: Vec<Check>,
    any_of: Vec<AnyOf>,
    money: Vec<Money>,
    /// Row fields that some check reads (plus the id): the cells we look at.
    used: Vec<usize>,
    batch: String,
}

fn to_val(b: &Bound, fields: &[String], task_path: &str) -> Val {
    let idx = |f: &str| {
        fields
            .iter()
            .position(|x| x == f)
            .expect("compiled against these fields")
    };
    match b {
        Bound::Row { field, default } => Val::Field {
            idx: idx(field),
            default: default.clone(),
        },
        Bound::Interp(parts) => Val::Interp(
            parts
                .iter()
                .map(|p| match p {
                    Bound::Const(s) => Part::Lit(s.clone()),
                    Bound::Row { field, default } => Part::Field {
                        idx: idx(field),
                        default: default.clone(),
                    },
                    Bound::IdempotencyKey => Part::Key,
                    Bound::TaskKey => Part::TaskKey(task_path.to_string()),
                    other => Part::Lit(other.describe()),
                })
                .collect(),
        ),
        Bound::Const(s) => Val::Interp(vec![Part::Lit(s.clone())]),
        Bound::IdempotencyKey => Val::Interp(vec![Part::Key]),
        Bound::TaskKey => Val::Interp(vec![Part::TaskKey(task_path.to_string())]),
        other => Val::Interp(vec![Part::Lit(other.describe())]),
    }
}

fn to_cur(c: &Option<CurrencySource>, fields: &[String], task_path: &str) -> Cur {
    match c {
        None => Cur::None,
        Some(CurrencySource::Fixed(c)) => Cur::Fixed(*c),
        Some(CurrencySource::Row { value, format }) => {
            Cur::Val(to_val(value, fields, task_path), *format)
        }
        Some(CurrencySource::Unknown) => Cur::Unknown,
    }
}

impl Engine {
    fn new(flow: &Flow) -> Engine {
        let fields = &flow.row_fields;
        let paths: HashMap<&str, &str> = flow
            .all_tasks()
            .into_iter()
            .map(|t| (t.id.as_str(), t.tree_path.as_str()))
            .collect();
        let tp = |id: &str| paths.get(id).copied().unwrap_or("").to_string();
        let checks: Vec<Check> = flow
            .checks
            .iter()
            .map(|c| Check {
                task_path: tp(&c.task),
                op: c.op.clone(),
                field: c.field.clone(),
                val: to_val(&c.value, fields, &tp(&c.task)),
                cur: to_cur(&c.currency, fields, &tp(&c.task)),
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
        let money = flow
            .money
            .iter()
            .map(|m| Money {
                amount: to_val(&m.amount, fields, &tp(&m.task)),
                cur: to_cur(&Some(m.currency.clone()), fields, &tp(&m.task)),
            })
            .collect();
        let id_idx = fields
            .iter()
            .position(|f| f == "id")
            .expect("compile requires an id field");
        let mut used = vec![id_idx];
        let mut names = Vec::new();
        for c in &flow.checks {
            c.value.row_fields(&mut names);
            if let Some(CurrencySource::Row { value, .. }) = &c.currency {
                value.row_fields(&mut names);
            }
        }
        for m in &flow.money {
            m.amount.row_fields(&mut names);
        }
        for n in names {
            let i = fields.iter().position(|f| *f == n).expect("known field");
            if !used.contains(&i) {
                used.push(i);
            }
        }
        used.sort_unstable();
        Engine {
            id_idx,
            checks,
            any_of,
            money,
            used,
            batch: flow.manifest.batch.clone(),
        }
    }
}

/// Renders a value for one row. `key` is computed lazily: only interpolations need it.
fn render<'a>(v: &'a Val, row: &[&'a str], id: &str, batch: &str) -> std::borrow::Cow<'a, str> {
    match v {
        Val::Field { idx, default } => {
            let s = row[*idx];
            if s.is_empty() {
                std::borrow::Cow::Borrowed(default.as_deref().unwrap_or(""))
            } else {
                std::borrow::Cow::Borrowed(s)
            }
        }
        Val::Interp(parts) => {
            let mut out = String::new();
            let mut key = None;
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
            std::borrow::Cow::Owned(out)
        }
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

fn resolve_currency(cur: &Cur, row: &[&str], id: &str, batch: &str) -> Option<Currency> {
    match cur {
        Cur::None | Cur::Unknown => None,
        Cur::Fixed(c) => Some(*c),
        Cur::Val(v, format) => {
            crate::schema::field::check_currency(&render(v, row, id, batch), *format).ok()
        }
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

/// Where a finding is, in the source's terms.
struct Place<'a> {
    source: &'a Source,
    line: u64,
    index: usize,
}

impl Place<'_> {
    fn diag(
        &self,
        field_idx: Option<usize>,
        fields: &[String],
        rule: &str,
        message: String,
    ) -> Diagnostic {
        match self.source {
            Source::Csv(c) => {
                let mut d = Diagnostic::new(&c.display, rule, message);
                d.line = Some(self.line);
                if let Some(fi) = field_idx {
                    let col = c.columns[fi];
                    d.column = Some(col as u64 + 1);
                    d.column_name = c.header.as_ref().and_then(|h| h.get(col).cloned());
                }
                d
            }
            Source::Inline(r) => {
                let mut d = Diagnostic::new(&r.display, rule, message);
                let pos = field_idx.and_then(|fi| r.locate(self.index, &fields[fi]));
                d = d.at_opt(pos);
                if d.line.is_none() {
                    d.line = Some(self.line);
                }
                if let Some(fi) = field_idx {
                    d.column_name = Some(format!("inline `{}`", fields[fi]));
                }
                d
            }
        }
    }
}

struct Pass<'f> {
    flow: &'f Flow,
    engine: Engine,
    sink: Sink,
    seen: HashMap<u64, u64>,
    hasher: std::collections::hash_map::RandomState,
}

struct Sink {
    cap: usize,
    report: Report,
}

impl Sink {
    fn push(&mut self, d: Diagnostic) {
        self.report.error_count += 1;
        *self
            .report
            .errors_by_rule
            .entry(d.rule.clone())
            .or_insert(0) += 1;
        if self.report.errors.len() < self.cap {
            self.report.errors.push(d);
        }
    }
}

impl Pass<'_> {
    /// Checks one row; `bad_cells` marks fields whose bytes were not UTF-8 (already reported).
    fn row(&mut self, place: &Place, row: &[&str], bad_cells: &[usize]) -> bool {
        let Pass {
            flow,
            engine,
            sink,
            seen,
            hasher,
        } = self;
        let fields = &flow.row_fields;
        let before = sink.report.error_count;
        let id = row[engine.id_idx];
        let item = if id.is_empty() {
            None
        } else {
            Some(mask::shorten(id))
        };
        let with_item = |mut d: Diagnostic| {
            d.item = item.clone();
            d
        };
        // The id: present, plain, unique.
        if id.trim().is_empty() {
            if !bad_cells.contains(&engine.id_idx) {
                let d = place
                    .diag(
                        Some(engine.id_idx),
                        fields,
                        "item.id-empty",
                        "the item has no id".into(),
                    )
                    .hint("every row needs its own stable id, e.g. the employee number");
                sink.push(d);
            }
        } else if id.len() > 128 || id.chars().any(char::is_control) || id.trim() != id {
            let d = place
                .diag(
                    Some(engine.id_idx),
                    fields,
                    "item.id-format",
                    "the item id has control characters, surrounding spaces or more than 128 bytes"
                        .into(),
                )
                .value(mask::shorten(id))
                .hint("ids are short plain text such as E0042");
            sink.push(with_item(d));
        } else {
            use std::hash::BuildHasher;
            let h = hasher.hash_one(id.as_bytes());
            if let Some(first) = seen.insert(h, place.line) {
                seen.insert(h, first);
                let d = place
                    .diag(Some(engine.id_idx), fields, "item.duplicate-id", format!("item id is used twice (first on line {first})"))
                    .value(mask::shorten(id))
                    .hint("each item must have its own id: it seeds the idempotency key that stops double payment");
                sink.push(with_item(d));
            }
        }
        // Formula-looking cells in any cell we read.
        for i in 0..engine.used.len() {
            let fi = engine.used[i];
            let v = row[fi];
            if !bad_cells.contains(&fi) && looks_like_formula(v) {
                let sensitive = engine
                    .checks
                    .iter()
                    .any(|c| first_field(&c.val) == Some(fi) && c.field.sensitive);
                let d = place
                    .diag(Some(fi), fields, "cell.formula", format!("item field `{}` looks like a spreadsheet formula", fields[fi]))
                    .value(mask::display(v, sensitive))
                    .hint("remove the leading = + - @ or tab; formulas in payroll files are either export mistakes or an injection attempt");
                sink.push(with_item(d));
            }
        }
        let batch = &engine.batch;
        for ci in 0..engine.checks.len() {
            let c = &engine.checks[ci];
            let fi = first_field(&c.val);
            if fi.is_some_and(|f| bad_cells.contains(&f)) {
                continue;
            }
            let v = render(&c.val, row, id, batch);
            if fi.is_some_and(|f| looks_like_formula(row[f])) {
                continue;
            }
            if v.is_empty() {
                if c.field.required {
                    let d = place
                        .diag(
                            fi,
                            fields,
                            "required",
                            format!("{} `{}` is required but empty", c.op, c.field.path),
                        )
                        .field(c.field.path.clone())
                        .hint(c.field.description.clone());
                    sink.push(with_item(d));
                }
                continue;
            }
            let res = match c.field.kind {
                FieldKind::Amount { .. } => {
                    let cur = resolve_currency(&c.cur, row, id, batch);
                    c.field.check_amount(&v, cur).map(|_| ())
                }
                _ => c.field.check(&v),
            };
            if let Err(viol) = res {
                let d = place
                    .diag(
                        fi,
                        fields,
                        viol.rule,
                        format!("{} `{}` {}", c.op, c.field.path, viol.message),
                    )
                    .field(c.field.path.clone())
                    .value(mask::display(&v, c.field.sensitive))
                    .hint(viol.hint);
                let _ = &c.task_path;
                sink.push(with_item(d));
            }
        }
        for ai in 0..engine.any_of.len() {
            let a = &engine.any_of[ai];
            if a.vals.iter().all(|v| render(v, row, id, batch).is_empty()) {
                let fi = a.vals.iter().find_map(first_field);
                let d = place
                    .diag(
                        fi,
                        fields,
                        "required.any-of",
                        format!("{} needs one of {}", a.op, a.paths.join(", ")),
                    )
                    .hint("fill in one of these columns for this item");
                sink.push(with_item(d));
            }
        }
        let ok = sink.report.error_count == before;
        if ok {
            for m in &engine.money {
                let Some(cur) = resolve_currency(&m.cur, row, id, batch) else {
                    continue;
                };
                let Some(exp) = cur.exponent() else { continue };
                if let Ok(a) = crate::money::parse_amount(&render(&m.amount, row, id, batch), exp) {
                    let t = sink.report.totals.entry(cur).or_insert((0, 0));
                    t.0 += a.minor;
                    t.1 += 1;
                }
            }
        }
        ok
    }
}

/// Validates every item of `source` against `flow`. `cap` bounds the stored diagnostics;
/// `visit` sees every item after it was checked.
pub fn validate(
    flow: &Flow,
    source: &mut Source,
    cap: usize,
    mut visit: impl FnMut(&ItemRow),
) -> Result<Report, Diagnostic> {
    let display = match &*source {
        Source::Csv(c) => c.display.clone(),
        Source::Inline(r) => r.display.clone(),
    };
    let mut pass = Pass {
        flow,
        engine: Engine::new(flow),
        sink: Sink {
            cap,
            report: Report {
                source: display.clone(),
                rows: 0,
                valid_items: 0,
                invalid_items: 0,
                error_count: 0,
                errors: Vec::new(),
                errors_by_rule: BTreeMap::new(),
                warnings: flow.warnings.clone(),
                totals: BTreeMap::new(),
            },
        },
        seen: HashMap::new(),
        hasher: std::collections::hash_map::RandomState::new(),
    };
    let nfields = flow.row_fields.len();
    match &mut *source {
        Source::Csv(_) => {
            let mut rec = csv::ByteRecord::new();
            let mut bad: Vec<usize> = Vec::new();
            loop {
                let Source::Csv(c) = &mut *source else {
                    unreachable!()
                };
                let more = c.reader.read_byte_record(&mut rec).map_err(|e| {
                    let line = e.position().map(|p| p.line()).unwrap_or(0);
                    Diagnostic::new(&display, "source.io", format!("cannot read the file: {e}"))
                        .at(line, 1)
                })?;
                if !more {
                    break;
                }
                let line = rec.position().map(|p| p.line()).unwrap_or(0);
                let index = pass.sink.report.rows;
                pass.sink.report.rows += 1;
                let Source::Csv(c) = &*source else {
                    unreachable!()
                };
                let place = Place {
                    source: &*source,
                    line,
                    index: index as usize,
                };
                let width_ok = match c.width {
                    Some(w) => rec.len() == w,
                    None => c.columns.iter().all(|&i| i < rec.len()),
                };
                if !width_ok {
                    let want = c
                        .width
                        .map(|w| format!("the header has {w}"))
                        .unwrap_or_else(|| "the mapping needs more".into());
                    let d = place
                        .diag(None, &flow.row_fields, "csv.ragged-row", format!("the row has {} fields but {want}", rec.len()))
                        .hint("a value probably contains the delimiter without quotes, or a column is missing; quote such values");
                    pass.sink.push(d);
                    pass.sink.report.invalid_items += 1;
                    continue;
                }
                bad.clear();
                let mut values: Vec<&str> = Vec::with_capacity(nfields);
                for (fi, &col) in c.columns.iter().enumerate() {
                    let raw = &rec[col];
                    match std::str::from_utf8(raw) {
                        Ok(s) => values.push(s.trim_matches(' ')),
                        Err(_) => {
                            values.push("");
                            bad.push(fi);
                            if pass.engine.used.contains(&fi) || fi == pass.engine.id_idx {
                                let d = place
                                    .diag(
                                        Some(fi),
                                        &flow.row_fields,
                                        "csv.encoding",
                                        "the cell is not valid UTF-8".into(),
                                    )
                                    .value(mask::shorten(&String::from_utf8_lossy(raw)))
                                    .hint(
                                        "save the file as CSV UTF-8 (Excel: Save As → CSV UTF-8)",
                                    );
                                pass.sink.push(d);
                            }
                        }
                    }
                }
                let ok = pass.row(&place, &values, &bad) && bad.is_empty();
                if ok {
                    pass.sink.report.valid_items += 1;
                } else {
                    pass.sink.report.invalid_items += 1;
                }
                visit(&ItemRow {
                    index,
                    line,
                    id: values[pass.engine.id_idx],
                    values: &values,
                    valid: ok,
                });
            }
        }
        Source::Inline(r) => {
            let items = r.items.clone();
            for (index, item) in items.iter().enumerate() {
                pass.sink.report.rows += 1;
                let values: Vec<&str> = flow
                    .row_fields
                    .iter()
                    .map(|f| item.fields.get(f).map(|s| s.as_str()).unwrap_or(""))
                    .collect();
                let place = Place {
                    source: &*source,
                    line: item.line,
                    index,
                };
                let ok = pass.row(&place, &values, &[]);
                if ok {
                    pass.sink.report.valid_items += 1;
                } else {
                    pass.sink.report.invalid_items += 1;
                }
                visit(&ItemRow {
                    index: index as u64,
                    line: item.line,
                    id: values[pass.engine.id_idx],
                    values: &values,
                    valid: ok,
                });
            }
        }
    }
    if pass.sink.report.rows == 0 {
        let d = Diagnostic::new(
            &display,
            "batch.empty",
            "the batch has no items: the file has a header but no rows",
        )
        .at(2, 1)
        .hint("export the payroll rows below the header");
        pass.sink.push(d);
    }
    Ok(pass.sink.report)
}

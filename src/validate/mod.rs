//! Validation of every item of a batch in one streaming pass: each row's values are checked
//! against the compiled flow's per-row checks; every problem becomes a `Diagnostic` with file,
//! line, column, field, rule, masked value and hint. Totals per rule are always complete even
//! when the stored diagnostics are capped.
//!
//! CSV rows are parsed on the calling thread (parsing is inherently sequential: quoted fields
//! may hold newlines) and checked on worker threads in batches; results are merged back in file
//! order, so output is the same as a sequential pass. Memory is bounded by the batches in
//! flight, not by the file.
//!
//! Two checks need every row: repeated item ids (compared as `text::fold_id` folds them, so
//! `e01001` and `Ｅ０１００１` repeat `E01001`) and repeated payments (`item.repeated-recipient`:
//! the schema's `recipient` fields, amounts and currencies of two valid items are the same).
//! Rows leave only hashes; once all are in, the hashes are sorted and the few rows a message
//! shows are read again from the file.

pub mod engine;
pub mod records;
pub mod source;
pub mod text;

use crate::compile::Flow;
use crate::diagnostic::Diagnostic;
use crate::money::Currency;
use engine::{BatchOut, Engine, Place};
use source::Source;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, mpsc};

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
    /// Sums of the payout amounts of valid items, per currency (minor units, payouts).
    #[serde(skip)]
    pub totals: BTreeMap<Currency, (i128, u64)>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.error_count == 0
    }

    fn absorb(&mut self, b: BatchOut, cap: usize) {
        self.rows += b.rows;
        self.valid_items += b.valid;
        self.invalid_items += b.invalid;
        self.error_count += b.error_count;
        for (rule, n) in b.by_rule {
            *self.errors_by_rule.entry(rule).or_insert(0) += n;
        }
        for d in b.diagnostics {
            if self.errors.len() < cap {
                self.errors.push(d);
            }
        }
        for (c, (minor, n)) in b.totals {
            let t = self.totals.entry(c).or_insert((0, 0));
            t.0 += minor;
            t.1 += n;
        }
    }
}

/// What a pass tells its visitor about each item (used by `plan`).
pub struct ItemRow<'a> {
    /// 0-based position of the item in the batch.
    pub index: u64,
    pub line: u64,
    /// Where the row starts in its CSV file, in bytes (`Rows::values` reads it again from
    /// there); 0 for an item of the manifest's own `items:` list.
    pub offset: u64,
    pub id: &'a str,
    /// Values of the flow's row fields, in `flow.row_fields` order ("" when empty or unreadable).
    pub values: &'a [&'a str],
    pub valid: bool,
}

/// Sees every item after it was checked, on a worker thread; what it produces for a batch of
/// items is handed back in file order to the `merge` callback of `validate`.
pub trait Visitor: Sync {
    type Chunk: Send + Default;
    fn item(&self, item: &ItemRow, chunk: &mut Self::Chunk);
}

/// Validation only.
pub struct NoVisitor;

impl Visitor for NoVisitor {
    type Chunk = ();
    fn item(&self, _: &ItemRow, _: &mut ()) {}
}

/// Rows per batch handed to a worker.
const BATCH: usize = 2048;

/// A parsed record waiting to be checked.
struct Rec {
    rec: records::Row,
    line: u64,
    /// Where the record starts in the file, in bytes.
    offset: u64,
}

struct Job {
    seq: u64,
    first_index: u64,
    recs: Vec<Rec>,
    len: usize,
}

/// Validates every item of `source` against `flow`. `cap` bounds the stored diagnostics.
/// `visitor` sees every checked item; its output arrives at `merge` in file order.
pub fn validate<V: Visitor>(
    flow: &Flow,
    source: &mut Source,
    cap: usize,
    visitor: &V,
    mut merge: impl FnMut(V::Chunk),
) -> Result<Report, Diagnostic> {
    let engine = Engine::new(flow);
    let place = Place::of(source);
    let mut report = Report {
        source: place.display().to_string(),
        rows: 0,
        valid_items: 0,
        invalid_items: 0,
        error_count: 0,
        errors: Vec::new(),
        errors_by_rule: BTreeMap::new(),
        warnings: flow.warnings.clone(),
        totals: BTreeMap::new(),
    };
    match source {
        Source::Inline(r) => {
            let mut out = BatchOut::default();
            let mut chunk = V::Chunk::default();
            // Folded id -> (line, id as written) of its first item.
            let mut seen: HashMap<std::borrow::Cow<str>, (u64, &str)> = HashMap::new();
            for (index, item) in r.items.iter().enumerate() {
                let values: Vec<&str> = flow
                    .row_fields
                    .iter()
                    .map(|f| {
                        item.fields
                            .get(f)
                            .map(|s| s.trim_matches(' '))
                            .unwrap_or("")
                    })
                    .collect();
                let id = values[engine.id_idx];
                let dup_of = if id.is_empty() {
                    None
                } else {
                    match seen.entry(text::fold_id(id)) {
                        std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert((item.line, id));
                            None
                        }
                    }
                };
                let valid = engine.check_row(
                    &place,
                    item.line,
                    index,
                    &values,
                    &[],
                    dup_of,
                    &mut out,
                    cap,
                );
                visitor.item(
                    &ItemRow {
                        index: index as u64,
                        line: item.line,
                        offset: 0,
                        id,
                        values: &values,
                        valid,
                    },
                    &mut chunk,
                );
            }
            let repeats = duplicates(halves(out.recipients.drain(..)));
            report.absorb(out, cap);
            merge(chunk);
            if !repeats.is_empty() {
                let need = lines_to_show(&repeats, cap);
                let mut texts: HashMap<u64, Vec<String>> = HashMap::new();
                for d in &repeats {
                    for (line, index) in [(d.line, d.index), (d.first_line, d.first_index)] {
                        if need.contains(&line)
                            && let Some(item) = r.items.get(index as usize)
                        {
                            texts.insert(line, source::inline_values(item, &flow.row_fields));
                        }
                    }
                }
                let allowed = flow.manifest.allow_repeated_recipients;
                report_repeats(
                    &engine,
                    &place,
                    repeats,
                    &texts,
                    &Default::default(),
                    allowed,
                    &mut report,
                    cap,
                );
            }
        }
        Source::Csv(c) => {
            let width = c.width;
            let columns = c.columns.clone();
            let workers = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(1, 8);
            let (job_tx, job_rx) = mpsc::sync_channel::<Job>(workers * 2);
            let job_rx = Arc::new(Mutex::new(job_rx));
            let (res_tx, res_rx) = mpsc::channel::<(u64, BatchOut, V::Chunk, Vec<Rec>)>();
            let mut failure: Option<Diagnostic> = None;
            // Equal ids hash equal, so a collision can only add a false repeat (which refuses),
            // never hide one: a fast seeded hash is enough.
            let hasher = foldhash::quality::RandomState::default();
            // (id hash, line, row index, otherwise valid) of every item, in two halves by hash.
            let mut ids: [Vec<(u64, u64, u64, bool)>; 2] = [Vec::new(), Vec::new()];
            // (payment hash, line) of every valid item, likewise (CSV diagnostics need no index).
            let mut pays: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
            std::thread::scope(|s| {
                for _ in 0..workers {
                    let job_rx = Arc::clone(&job_rx);
                    let res_tx = res_tx.clone();
                    let engine = &engine;
                    let place = &place;
                    let columns = &columns;
                    let hasher = &hasher;
                    s.spawn(move || {
                        loop {
                            let job = match job_rx.lock() {
                                Ok(rx) => match rx.recv() {
                                    Ok(j) => j,
                                    Err(_) => return,
                                },
                                Err(_) => return,
                            };
                            let mut out = BatchOut::default();
                            let mut chunk = V::Chunk::default();
                            let mut values: Vec<&str> = Vec::with_capacity(columns.len());
                            let mut bad: Vec<bool> = vec![false; columns.len()];
                            for (k, r) in job.recs[..job.len].iter().enumerate() {
                                let index = job.first_index + k as u64;
                                values.clear();
                                let valid = engine.csv_row(
                                    place,
                                    &r.rec,
                                    r.line,
                                    index as usize,
                                    width,
                                    columns,
                                    None,
                                    &mut values,
                                    &mut bad,
                                    &mut out,
                                    cap,
                                );
                                if let Some(valid) = valid {
                                    let id = values[engine.id_idx];
                                    if !id.is_empty() {
                                        out.ids.push((
                                            text::id_hash(hasher, id),
                                            r.line,
                                            index,
                                            valid,
                                        ));
                                    }
                                    visitor.item(
                                        &ItemRow {
                                            index,
                                            line: r.line,
                                            offset: r.offset,
                                            id,
                                            values: &values,
                                            valid,
                                        },
                                        &mut chunk,
                                    );
                                }
                            }
                            drop(values);
                            if res_tx.send((job.seq, out, chunk, job.recs)).is_err() {
                                return;
                            }
                        }
                    });
                }
                drop(res_tx);
                // Parse on this thread.
                let mut pending: BTreeMap<u64, (BatchOut, V::Chunk)> = BTreeMap::new();
                let mut spare: Vec<Vec<Rec>> = Vec::new();
                let mut next_merge = 0u64;
                let mut seq = 0u64;
                let mut index = 0u64;
                let mut absorb = |pending: &mut BTreeMap<u64, (BatchOut, V::Chunk)>,
                                  next: &mut u64,
                                  report: &mut Report| {
                    while let Some((mut out, chunk)) = pending.remove(next) {
                        for id in out.ids.drain(..) {
                            ids[(id.0 >> 63) as usize].push(id);
                        }
                        for (h, line, _) in out.recipients.drain(..) {
                            pays[(h >> 63) as usize].push((h, line));
                        }
                        report.absorb(out, cap);
                        merge(chunk);
                        *next += 1;
                    }
                };
                'read: loop {
                    let mut recs = spare.pop().unwrap_or_else(|| {
                        (0..BATCH)
                            .map(|_| Rec {
                                rec: records::Row::new(),
                                line: 0,
                                offset: 0,
                            })
                            .collect()
                    });
                    let mut len = 0;
                    while len < BATCH {
                        let r = &mut recs[len];
                        match c.reader.read(&mut r.rec) {
                            Ok(Some(line)) => {
                                r.line = line;
                                let start = c.reader.record_start();
                                r.offset = c.reader.get_mut().raw_offset(start);
                            }
                            Ok(None) => break,
                            Err(e) => {
                                failure = Some(Diagnostic::new(
                                    &c.display,
                                    "source.io",
                                    format!("cannot read the file: {e}"),
                                ));
                                break 'read;
                            }
                        }
                        len += 1;
                    }
                    if len == 0 {
                        spare.push(recs);
                        break;
                    }
                    if job_tx
                        .send(Job {
                            seq,
                            first_index: index,
                            recs,
                            len,
                        })
                        .is_err()
                    {
                        break;
                    }
                    seq += 1;
                    index += len as u64;
                    // Take back finished batches without waiting, to bound memory and recycle buffers.
                    while let Ok((s, out, chunk, recs)) = res_rx.try_recv() {
                        pending.insert(s, (out, chunk));
                        spare.push(recs);
                    }
                    absorb(&mut pending, &mut next_merge, &mut report);
                    if len < BATCH {
                        break;
                    }
                }
                drop(job_tx);
                while let Ok((s, out, chunk, _)) = res_rx.recv() {
                    pending.insert(s, (out, chunk));
                }
                absorb(&mut pending, &mut next_merge, &mut report);
            });
            if let Some(f) = failure {
                return Err(f);
            }
            let dups = duplicates(ids);
            let repeats = repeated(
                pays,
                |&(h, line)| (h, line),
                |&(_, line), &(_, first)| Repeat {
                    line,
                    index: 0,
                    valid: true,
                    first_line: first,
                    first_index: 0,
                },
            );
            if !dups.is_empty() || !repeats.is_empty() {
                let mut need = lines_to_show(&dups, cap);
                need.extend(lines_to_show(&repeats, cap));
                let texts = reread(c, need);
                let id_col = engine.id_idx;
                let id_of = |line: u64| texts.get(&line).map(|r| r[id_col].as_str());
                let mut dup_lines = std::collections::HashSet::new();
                for d in dups {
                    let e = engine.duplicate(
                        &place,
                        d.line,
                        d.index as usize,
                        id_of(d.line).unwrap_or(""),
                        d.first_line,
                        id_of(d.first_line),
                    );
                    dup_lines.insert(d.line);
                    add_error(&mut report, e, d.valid);
                }
                let allowed = flow.manifest.allow_repeated_recipients;
                report_repeats(
                    &engine,
                    &place,
                    repeats,
                    &texts,
                    &dup_lines,
                    allowed,
                    &mut report,
                    cap,
                );
                report.errors.sort_by_key(|d| (d.line, d.column));
                report.errors.truncate(cap);
            }
        }
    }
    tracing::debug!(
        rows = report.rows,
        errors = report.error_count,
        "validation pass finished"
    );
    if report.rows == 0 {
        let mut out = BatchOut::default();
        out.push(
            Diagnostic::new(
                place.display(),
                "batch.empty",
                "the batch has no items: there is a header but no rows",
            )
            .at(2, 1)
            .hint("export the payroll rows below the header"),
            cap,
        );
        report.absorb(out, cap);
    }
    Ok(report)
}

/// A repeated hash: the row that repeats and the row it repeats.
struct Repeat {
    line: u64,
    index: u64,
    /// The repeating row was otherwise valid.
    valid: bool,
    first_line: u64,
    first_index: u64,
}

/// Splits (hash, line, row index, valid) tuples into two halves by hash, for `duplicates`.
fn halves(all: impl Iterator<Item = (u64, u64, u64)>) -> [Vec<(u64, u64, u64, bool)>; 2] {
    let mut out: [Vec<(u64, u64, u64, bool)>; 2] = [Vec::new(), Vec::new()];
    for (h, line, index) in all {
        out[(h >> 63) as usize].push((h, line, index, true));
    }
    out
}

/// Finds repeated item ids once every row is in (see `repeated`).
fn duplicates(halves: [Vec<(u64, u64, u64, bool)>; 2]) -> Vec<Repeat> {
    repeated(
        halves,
        |&(h, line, _, _)| (h, line),
        |r, f| Repeat {
            line: r.1,
            index: r.2,
            valid: r.3,
            first_line: f.1,
            first_index: f.2,
        },
    )
}

/// Finds repeated hashes (item ids, payments) once every row is in: the entries of each half
/// are sorted by (hash, line) (in parallel) and equal neighbours are repeats. Sorting a million
/// pairs costs a fraction of a million random inserts into a hash table that does not fit in
/// cache. `key` gives an entry's (hash, line); `repeat` makes the finding of an entry and the
/// first entry with its hash. Every repeat, by line.
fn repeated<T: Send>(
    halves: [Vec<T>; 2],
    key: impl Fn(&T) -> (u64, u64) + Sync,
    repeat: impl Fn(&T, &T) -> Repeat + Sync,
) -> Vec<Repeat> {
    let (key, repeat) = (&key, &repeat);
    let found: Vec<Vec<Repeat>> = std::thread::scope(|s| {
        let handles: Vec<_> = halves
            .into_iter()
            .map(|mut half| {
                s.spawn(move || {
                    half.sort_unstable_by_key(key);
                    let mut out = Vec::new();
                    let mut first = 0;
                    for i in 1..half.len() {
                        if key(&half[i]).0 == key(&half[i - 1]).0 {
                            out.push(repeat(&half[i], &half[first]));
                        } else {
                            first = i;
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut all: Vec<Repeat> = found.into_iter().flatten().collect();
    all.sort_unstable_by_key(|r| (r.line, r.index));
    all
}

/// The lines whose values a report of `repeats` shows: the repeats that can be among the first
/// `cap` diagnostics, and the lines they repeat.
fn lines_to_show(repeats: &[Repeat], cap: usize) -> std::collections::HashSet<u64> {
    repeats
        .iter()
        .take(cap)
        .flat_map(|r| [r.line, r.first_line])
        .collect()
}

/// The item field values (trimmed, in `columns` order) of the CSV records that start on `lines`,
/// read again from the file: the pass kept only hashes.
fn reread(
    c: &source::CsvRows,
    mut want: std::collections::HashSet<u64>,
) -> HashMap<u64, Vec<String>> {
    let mut texts: HashMap<u64, Vec<String>> = HashMap::new();
    if want.is_empty() {
        return texts;
    }
    if let Ok((file, _)) = crate::input_file::open(&c.path) {
        let mut r = records::Records::new(source::LineEnds::new(file), c.delimiter);
        let mut row = records::Row::new();
        while let Ok(Some(line)) = r.read(&mut row) {
            if want.remove(&line) {
                let values = c
                    .columns
                    .iter()
                    .map(|&col| {
                        row.get(col)
                            .map(|b| String::from_utf8_lossy(b).trim_matches(' ').to_string())
                            .unwrap_or_default()
                    })
                    .collect();
                texts.insert(line, values);
                if want.is_empty() {
                    break;
                }
            }
        }
    }
    texts
}

/// Counts an error found after the pass; `valid`: the item was valid until now.
fn add_error(report: &mut Report, d: Diagnostic, valid: bool) {
    report.error_count += 1;
    *report.errors_by_rule.entry(d.rule.clone()).or_insert(0) += 1;
    report.errors.push(d);
    if valid {
        report.valid_items -= 1;
        report.invalid_items += 1;
    }
}

/// Warnings listed for repeated recipients a manifest allows, before a count of the rest.
const REPEAT_WARNINGS: usize = 20;

/// Reports items that pay the recipient, amount and currency of an earlier item: errors (the
/// item becomes invalid), or warnings when the manifest allows repeats. A row already reported
/// as a duplicate id (`skip`) is not reported again. `texts` holds the values of the lines
/// shown, by line.
#[allow(clippy::too_many_arguments)]
fn report_repeats(
    engine: &Engine,
    place: &Place,
    repeats: Vec<Repeat>,
    texts: &HashMap<u64, Vec<String>>,
    skip: &std::collections::HashSet<u64>,
    allowed: bool,
    report: &mut Report,
    cap: usize,
) {
    let mut warned = 0usize;
    for r in repeats {
        if skip.contains(&r.line) {
            continue;
        }
        let values: Option<Vec<&str>> = texts
            .get(&r.line)
            .map(|v| v.iter().map(String::as_str).collect());
        if allowed {
            if warned < REPEAT_WARNINGS {
                let d = engine.repeated_recipient(
                    place,
                    r.line,
                    r.index as usize,
                    values.as_deref(),
                    r.first_line,
                    true,
                );
                report.warnings.push(d.message);
            }
            warned += 1;
            continue;
        }
        let d = engine.repeated_recipient(
            place,
            r.line,
            r.index as usize,
            values.as_deref(),
            r.first_line,
            false,
        );
        add_error(report, d, r.valid);
    }
    if warned > REPEAT_WARNINGS {
        report.warnings.push(format!(
            "{} more items pay a recipient the same amount as an earlier item (allowed by items.allow_repeated_recipients)",
            warned - REPEAT_WARNINGS
        ));
    }
    report.errors.sort_by_key(|d| (d.line, d.column));
    report.errors.truncate(cap);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Registry;

    const HEAD: &str = "batch: t
provider: paysend
environment: sandbox
credentials: {partner_id: P, inbound_key: I, outbound_key: O}
items:
";
    const FLOW: &str = r#"flow:
  - op: pay.toAccount
    payload:
      transferAmount: ${item.amount}
      transferCurrency: ${item.currency}
      purposeOfPayment: Salary
      from:
        sender: {type: LegalEntity, name: ACME, address: {addressLine1: Main 1, city: Berlin, country: DE}}
        sourceTransactionInstrument: {identifierType: PrepaidAccount, accountIdentifier: 52eab379-0bfe-4e04-9285-75fff9085765, currency: EUR}
      to:
        destinationTransactionInstrument: {identifierType: IBAN, accountIdentifier: "${item.iban}", bic: COBADEFFXXX, country: DE, currency: "${item.currency}"}
        recipient: {type: Individual, firstName: "${item.name}", lastName: Muller, address: {addressLine1: Main 2, city: Berlin, country: DE}}
"#;

    /// A batch made of `items` (the lines under `items:`) and, when given, a CSV file, prepared
    /// (its folder lives as long as the first value).
    fn prepared(items: &str, csv: Option<&str>) -> (tempfile::TempDir, crate::pipeline::Prepared) {
        let dir = tempfile::tempdir().unwrap();
        if let Some(csv) = csv {
            std::fs::write(dir.path().join("e.csv"), csv).unwrap();
        }
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, format!("{HEAD}{items}{FLOW}")).unwrap();
        let p = crate::pipeline::prepare(&path, &Registry::from_option(None))
            .map_err(|f| format!("{:?}", f.diagnostics))
            .unwrap();
        (dir, p)
    }

    /// Validates a batch made of `items` and, when given, a CSV file.
    fn check(items: &str, csv: Option<&str>) -> Report {
        let (_dir, p) = prepared(items, csv);
        let mut source = p.source;
        validate(&p.flow, &mut source, 100, &NoVisitor, |_| {}).unwrap()
    }

    fn rules(r: &Report) -> Vec<(String, Option<u64>)> {
        r.errors.iter().map(|d| (d.rule.clone(), d.line)).collect()
    }

    const CSV_HEAD: &str = "id,name,iban,amount,currency\n";

    /// Every item's position, offset and values as the validator gave them (valid or not).
    struct Keep;

    impl Visitor for Keep {
        type Chunk = Seen;
        fn item(&self, item: &ItemRow, chunk: &mut Self::Chunk) {
            let values = item.values.iter().map(|v| v.to_string()).collect();
            chunk.push((item.index, item.offset, item.valid, values));
        }
    }

    type Seen = Vec<(u64, u64, bool, Vec<String>)>;

    /// What the validator gave for each item of a batch made of `items` (and a CSV file), and
    /// the rows opened to read them again.
    fn seen_and_rows(items: &str, csv: Option<&str>) -> (Seen, source::Rows) {
        let (_dir, p) = prepared(items, csv);
        let mut source = p.source;
        let rows = source::Rows::of(&mut source, &p.flow.row_fields).unwrap();
        let mut seen = Vec::new();
        validate(&p.flow, &mut source, 100, &Keep, |c| seen.extend(c)).unwrap();
        (seen, rows)
    }

    #[test]
    fn every_row_read_again_at_its_offset_gives_the_values_it_was_validated_with() {
        // Windows line ends, old Mac ones and Unix ones mixed; blank lines; a BOM; quoted
        // values holding the delimiter, a doubled quote and a line break; an invalid row; the
        // last row without a line end; and enough rows that the readers' buffers end inside
        // a `\r\n` somewhere.
        let mut csv = String::from("\u{feff}id,name,iban,amount,currency\r\n");
        let ends = ["\r\n", "\n", "\r", "\r\n\r\n", "\n\n"];
        let mut n = 0;
        for i in 0..4000 {
            let name = match i % 7 {
                0 => "\"Doe, Jane\"".to_string(),
                1 => "\"Ann \"\"Nan\"\" Lee\"".to_string(),
                2 => "\"two\r\nlines\"".to_string(),
                3 => format!("  Spaced {i}  "),
                _ => format!("Name{i}"),
            };
            let amount = if i == 10 {
                "ten".to_string()
            } else {
                format!("{}.{:02}", i + 1, i % 100)
            };
            csv += &format!(
                "E{i},{name},DE89370400440532013000,{amount},EUR{}",
                ends[i % ends.len()]
            );
            n += 1;
        }
        csv += "LAST,Last,DE89370400440532013000,1.23,EUR";
        n += 1;
        let (seen, rows) = seen_and_rows("  source: e.csv\n", Some(&csv));
        assert_eq!(seen.len(), n);
        assert!(
            seen.iter().any(|(_, _, valid, _)| !valid),
            "an invalid row is among them"
        );
        for (index, offset, _, values) in &seen {
            assert_eq!(
                &rows.values(*index, *offset).unwrap(),
                values,
                "row {index} at byte {offset}"
            );
        }
        // A name with a line break, read again, is the value validated (`\r\n` became `\n`).
        assert!(
            seen.iter()
                .any(|(_, _, _, v)| v.iter().any(|x| x == "two\nlines"))
        );
    }

    #[test]
    fn inline_items_read_again_give_the_values_they_were_validated_with() {
        let items = "  inline:\n    - {id: A, name: Anna, iban: DE89370400440532013000, amount: \"10.00\", currency: EUR}\n    - {id: B, name: \" Bo \", iban: DE44500105175407324931, amount: \"11.00\", currency: EUR}\n";
        let (seen, rows) = seen_and_rows(items, None);
        assert_eq!(seen.len(), 2);
        for (index, offset, _, values) in &seen {
            assert_eq!(&rows.values(*index, *offset).unwrap(), values);
        }
    }

    #[test]
    fn csv_ids_differing_in_case_or_width_are_duplicates_showing_both_spellings() {
        let r = check(
            "  source: e.csv\n",
            Some(&format!(
                "{CSV_HEAD}E01001,Anna,DE89370400440532013000,10.00,EUR\ne01001,Bo,DE44500105175407324931,11.00,EUR\nＥ０１００１,Cy,DE02120300000000202051,12.00,EUR\n"
            )),
        );
        assert_eq!(
            rules(&r),
            vec![
                ("item.duplicate-id".to_string(), Some(3)),
                ("item.duplicate-id".to_string(), Some(4)),
            ]
        );
        assert!(
            r.errors[1].message.contains("\"E01001\" there"),
            "{}",
            r.errors[1].message
        );
        assert!(
            r.errors[1].message.contains("\\u{FF25}"),
            "{}",
            r.errors[1].message
        );
        assert_eq!(r.valid_items, 1);
    }

    #[test]
    fn inline_ids_differing_in_case_or_width_are_duplicates() {
        let r = check(
            "  inline:\n    - {id: E01001, name: Anna, iban: DE89370400440532013000, amount: \"10.00\", currency: EUR}\n    - {id: Ｅ０１００１, name: Bo, iban: DE44500105175407324931, amount: \"11.00\", currency: EUR}\n",
            None,
        );
        assert_eq!(rules(&r), vec![("item.duplicate-id".to_string(), Some(8))]);
        assert!(
            r.errors[0].message.contains("line 7"),
            "{}",
            r.errors[0].message
        );
    }

    #[test]
    fn an_id_with_a_zero_width_space_is_refused_not_taken_as_new() {
        let r = check(
            "  source: e.csv\n",
            Some(&format!(
                "{CSV_HEAD}E01001,Anna,DE89370400440532013000,10.00,EUR\nE01001\u{200b},Anna,DE89370400440532013000,10.00,EUR\n"
            )),
        );
        assert_eq!(
            rules(&r),
            vec![("item.id-hidden-character".to_string(), Some(3))]
        );
        assert!(
            r.errors[0]
                .message
                .contains("U+200B ZERO WIDTH SPACE at character 7")
        );
        assert!(
            !r.errors[0]
                .value
                .as_deref()
                .unwrap_or("")
                .contains('\u{200b}')
        );
    }

    #[test]
    fn a_bidi_override_or_escape_in_a_name_is_refused_and_named() {
        let r = check(
            "  source: e.csv\n",
            Some(&format!(
                "{CSV_HEAD}E1,Pa\u{202e}ul,DE89370400440532013000,10.00,EUR\nE2,\u{1b}[2JBo,DE44500105175407324931,11.00,EUR\nE3,\"Cy\nDi\",DE02120300000000202051,12.00,EUR\nE4,D\0,DE02120300000000202051,13.00,EUR\n"
            )),
        );
        assert_eq!(
            rules(&r),
            vec![
                ("text.invisible-character".to_string(), Some(2)),
                ("text.control-character".to_string(), Some(3)),
                ("text.control-character".to_string(), Some(6)),
            ]
        );
        assert!(
            r.errors[0]
                .message
                .contains("U+202E RIGHT-TO-LEFT OVERRIDE at character 3")
        );
        assert!(r.errors[2].message.contains("U+0000 NULL at character 2"));
    }

    #[test]
    fn the_same_iban_and_amount_twice_is_a_repeated_recipient_naming_both_lines() {
        let csv = format!(
            "{CSV_HEAD}E1,Anna,DE89370400440532013000,10.00,EUR\nE2,Anna,DE89370400440532013000,11.00,EUR\nE3,Anne,DE89370400440532013000,10.00,EUR\nE4,Anna,DE89370400440532013000,10.00,GBP\n"
        );
        let r = check("  source: e.csv\n", Some(&csv));
        assert_eq!(
            rules(&r),
            vec![("item.repeated-recipient".to_string(), Some(4))]
        );
        let m = &r.errors[0].message;
        assert!(m.contains("line 2") && m.contains("10.00 EUR"), "{m}");
        assert!(!m.contains("DE89370400440532013000"), "{m}");
        assert_eq!((r.valid_items, r.invalid_items), (3, 1));
    }

    #[test]
    fn repeats_the_manifest_allows_are_warnings() {
        let csv = format!(
            "{CSV_HEAD}E1,Anna,DE89370400440532013000,10.00,EUR\nE2,Anna,DE89370400440532013000,10.00,EUR\n"
        );
        let r = check(
            "  source: e.csv\n  allow_repeated_recipients: true\n",
            Some(&csv),
        );
        assert!(r.is_ok(), "{:?}", rules(&r));
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("line 3 pays the same recipient the same amount as line 2")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn inline_items_paying_one_account_the_same_amount_are_repeats() {
        let r = check(
            "  inline:\n    - {id: A, name: Anna, iban: DE89370400440532013000, amount: \"10.00\", currency: EUR}\n    - {id: B, name: Anna, iban: DE89370400440532013000, amount: \"10.0\", currency: EUR}\n",
            None,
        );
        assert_eq!(
            rules(&r),
            vec![("item.repeated-recipient".to_string(), Some(8))]
        );
        assert!(
            r.errors[0].message.contains("line 7"),
            "{}",
            r.errors[0].message
        );
    }
}

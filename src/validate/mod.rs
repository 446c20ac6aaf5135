//! Validation of every item of a batch in one streaming pass: each row's values are checked
//! against the compiled flow's per-row checks; every problem becomes a `Diagnostic` with file,
//! line, column, field, rule, masked value and hint. Totals per rule are always complete even
//! when the stored diagnostics are capped.
//!
//! CSV rows are parsed on the calling thread (parsing is inherently sequential: quoted fields
//! may hold newlines) and checked on worker threads in batches; results are merged back in file
//! order, so output is the same as a sequential pass. Memory is bounded by the batches in
//! flight, not by the file.

pub mod engine;
pub mod records;
pub mod source;

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
            let mut seen: HashMap<&str, u64> = HashMap::new();
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
                    seen.insert(id, item.line)
                };
                if let Some(first) = dup_of {
                    seen.insert(id, first);
                }
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
                        id,
                        values: &values,
                        valid,
                    },
                    &mut chunk,
                );
            }
            report.absorb(out, cap);
            merge(chunk);
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
            let hasher = std::collections::hash_map::RandomState::new();
            // (id hash, line, row index, otherwise valid) of every item, in two halves by hash.
            let mut ids: [Vec<(u64, u64, u64, bool)>; 2] = [Vec::new(), Vec::new()];
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
                                        use std::hash::BuildHasher;
                                        out.ids.push((hasher.hash_one(id), r.line, index, valid));
                                    }
                                    visitor.item(
                                        &ItemRow {
                                            index,
                                            line: r.line,
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
                            })
                            .collect()
                    });
                    let mut len = 0;
                    while len < BATCH {
                        let r = &mut recs[len];
                        match c.reader.read(&mut r.rec) {
                            Ok(Some(line)) => r.line = line,
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
            if !dups.is_empty() {
                report_duplicates(&engine, &place, c, dups, &mut report, cap);
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

/// Finds repeated item ids once every row is in: the (hash, line) pairs of each half are sorted
/// (in parallel) and equal neighbours are duplicates. Sorting a million pairs costs a fraction of
/// a million random inserts into a hash table that does not fit in cache.
/// Returns (line, row index, otherwise valid, first line) for every repeat, by line.
fn duplicates(halves: [Vec<(u64, u64, u64, bool)>; 2]) -> Vec<(u64, u64, bool, u64)> {
    let found: Vec<Vec<(u64, u64, bool, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = halves
            .into_iter()
            .map(|mut half| {
                s.spawn(move || {
                    half.sort_unstable_by_key(|&(h, line, _, _)| (h, line));
                    let mut out = Vec::new();
                    let mut first = 0;
                    for i in 0..half.len() {
                        if i > 0 && half[i].0 == half[i - 1].0 {
                            out.push((half[i].1, half[i].2, half[i].3, half[first].1));
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
    let mut all: Vec<(u64, u64, bool, u64)> = found.into_iter().flatten().collect();
    all.sort_unstable();
    all
}

/// Adds the duplicate-id diagnostics, in line order among the others, and recounts the items.
/// The ids themselves are read again from the file: only the hashes were kept.
fn report_duplicates(
    engine: &Engine,
    place: &Place,
    c: &source::CsvRows,
    dups: Vec<(u64, u64, bool, u64)>,
    report: &mut Report,
    cap: usize,
) {
    let mut texts: HashMap<u64, String> = HashMap::new();
    if let Ok((file, _)) = crate::input_file::open(&c.path) {
        let mut r = records::Records::new(source::LineEnds::new(file), c.delimiter);
        let mut row = records::Row::new();
        let id_col = c.columns[engine.id_idx];
        let mut want: std::collections::HashSet<u64> = dups.iter().map(|d| d.0).collect();
        while let Ok(Some(line)) = r.read(&mut row) {
            if want.remove(&line) {
                texts.insert(
                    line,
                    row.get(id_col)
                        .map(|b| String::from_utf8_lossy(b).trim_matches(' ').to_string())
                        .unwrap_or_default(),
                );
                if want.is_empty() {
                    break;
                }
            }
        }
    }
    for (line, index, valid, first) in dups {
        let id = texts.get(&line).map(String::as_str).unwrap_or("");
        let d = engine.duplicate(place, line, index as usize, id, first);
        report.error_count += 1;
        *report.errors_by_rule.entry(d.rule.clone()).or_insert(0) += 1;
        report.errors.push(d);
        if valid {
            report.valid_items -= 1;
            report.invalid_items += 1;
        }
    }
    report.errors.sort_by_key(|d| (d.line, d.column));
    report.errors.truncate(cap);
}

//! Item sources: a CSV file read as a stream of byte records, or the manifest's inline items.
//! Opening a source reads only the header, which fixes the item fields the flow compiles
//! against; rows are then read one at a time, so memory does not grow with the file.
//!
//! The file must be a regular file (`crate::input_file`) inside the manifest's folder unless
//! `items.allow_outside_folder` says otherwise, and its first line must be CSV text. What
//! diagnostics quote of the header is a few names, masked and cut (`diagnostic::quote_header`).

use super::records::Records;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::manifest::{ColumnRef, CsvSource, InlineItem, Items, Manifest};
use crate::yaml::{self, Seg, key};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;

/// A reader that hashes every byte it hands out.
///
/// The hashing runs on its own thread (the reading thread is the busiest one of a validation
/// pass); it sees exactly the bytes that were parsed, so the hash describes what was checked.
pub struct HashingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
}

struct Hasher {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    done: std::thread::JoinHandle<String>,
}

impl Hasher {
    fn start() -> Hasher {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
        let done = std::thread::spawn(move || {
            let mut h = Sha256::new();
            while let Ok(chunk) = rx.recv() {
                h.update(&chunk);
            }
            crate::keys::hex_lower(&h.finalize())
        });
        Hasher { tx, done }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &self.hasher
            && n > 0
        {
            h.tx.send(buf[..n].to_vec())
                .map_err(|_| std::io::Error::other("the hashing thread stopped"))?;
        }
        Ok(n)
    }
}

/// Normalises line ends to LF as the bytes stream by: `\r\n` and a lone `\r` become `\n`, so
/// that `Records` numbers lines the same way for files from Excel (CRLF), old Macs (CR) and
/// everything else. A `\r\n` inside a quoted value becomes `\n`; no payout field accepts
/// either.
pub struct LineEnds<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last byte of the previous fill was `\r`; it is held back until the next byte is known.
    carry_cr: bool,
    eof: bool,
    /// Bytes given out by the fills so far, and, of the positions where a `\r\n` became one
    /// `\n`, those not yet passed by `raw_offset` and how many were: an output position is
    /// the input position less the pairs before it.
    produced: u64,
    pairs: std::collections::VecDeque<u64>,
    pairs_passed: u64,
}

impl<R: Read> LineEnds<R> {
    pub fn new(inner: R) -> Self {
        LineEnds::with_capacity(inner, 1 << 16)
    }

    /// A reader that reads `capacity` bytes at a time.
    pub fn with_capacity(inner: R, capacity: usize) -> Self {
        LineEnds {
            inner,
            buf: vec![0; capacity.max(64)],
            start: 0,
            end: 0,
            carry_cr: false,
            eof: false,
            produced: 0,
            pairs: std::collections::VecDeque::new(),
            pairs_passed: 0,
        }
    }

    /// Where output position `at` came from in the input. `at` never decreases from one call
    /// to the next (a reader asks for record starts in file order).
    pub fn raw_offset(&mut self, at: u64) -> u64 {
        while self.pairs.front().is_some_and(|&p| p < at) {
            self.pairs.pop_front();
            self.pairs_passed += 1;
        }
        at + self.pairs_passed
    }

    /// The reader it reads from.
    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let off = usize::from(self.carry_cr);
        if self.carry_cr {
            self.buf[0] = b'\r';
        }
        let n = self.inner.read(&mut self.buf[off..])?;
        let len = off + n;
        if n == 0 {
            self.eof = true;
        }
        // Hold back a trailing CR: it may be the first half of a CRLF.
        self.carry_cr = !self.eof && len > 0 && self.buf[len - 1] == b'\r';
        let len = if self.carry_cr { len - 1 } else { len };
        let mut w = 0;
        let mut r = 0;
        while r < len {
            match memchr::memchr(b'\r', &self.buf[r..len]) {
                None => {
                    self.buf.copy_within(r..len, w);
                    w += len - r;
                    break;
                }
                Some(i) => {
                    self.buf.copy_within(r..r + i, w);
                    w += i;
                    r += i + 1;
                    if r < len && self.buf[r] == b'\n' {
                        r += 1;
                        self.pairs.push_back(self.produced + w as u64);
                    }
                    self.buf[w] = b'\n';
                    w += 1;
                }
            }
        }
        self.produced += w as u64;
        self.start = 0;
        self.end = w;
        Ok(())
    }
}

impl<R: Read> Read for LineEnds<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.start == self.end {
            if self.eof {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = (self.end - self.start).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

/// Reads a valid item's row values again, as the validator read them: a run keeps no rendered
/// request in memory, it renders each one when it is sent from the row read again here (and
/// checks that row's content digest against the one validated, see `execute::rows`).
pub enum Rows {
    /// The CSV file the batch was validated from (the very file: the handle the validator
    /// opened), read at each row's byte offset.
    Csv {
        file: File,
        delimiter: u8,
        columns: Vec<usize>,
    },
    /// The manifest's own `items:`: the values of each item's fields, in the flow's order.
    Inline(Vec<Vec<String>>),
}

/// The values of an item of the manifest's own `items:` for `row_fields`, as the validator
/// reads them ("" for a field it does not give).
pub fn inline_values(item: &InlineItem, row_fields: &[String]) -> Vec<String> {
    row_fields
        .iter()
        .map(|f| {
            item.fields
                .get(f)
                .map(|s| s.trim_matches(' ').to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// Reads a file from a position on, without moving any shared position (`pread`).
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(self.file, out, self.pos)?;
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(self.file, out, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Rows {
    /// The rows of `source`, before it is validated; `row_fields`: the flow's row fields.
    pub fn of(source: &mut Source, row_fields: &[String]) -> std::io::Result<Rows> {
        Ok(match source {
            Source::Csv(c) => Rows::Csv {
                file: c.reader.get_mut().inner_mut().inner.try_clone()?,
                delimiter: c.delimiter,
                columns: c.columns.clone(),
            },
            Source::Inline(r) => Rows::Inline(
                r.items
                    .iter()
                    .map(|item| inline_values(item, row_fields))
                    .collect(),
            ),
        })
    }

    /// The values of item `index` (0-based position in the batch), whose row starts at byte
    /// `offset` of a CSV file: as `ItemRow::values` gave them, "" for a cell that is not UTF-8.
    pub fn values(&self, index: u64, offset: u64) -> std::io::Result<Vec<String>> {
        let gone = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the row is gone");
        match self {
            Rows::Inline(items) => items.get(index as usize).cloned().ok_or_else(gone),
            Rows::Csv {
                file,
                delimiter,
                columns,
            } => {
                let at = At { file, pos: offset };
                let mut reader =
                    Records::with_capacity(LineEnds::with_capacity(at, 4096), *delimiter, 4096);
                let mut rec = super::records::Row::new();
                reader.read(&mut rec)?.ok_or_else(gone)?;
                Ok(columns
                    .iter()
                    .map(|&col| {
                        rec.get(col)
                            .and_then(|raw| std::str::from_utf8(raw).ok())
                            .map(|v| v.trim_matches(' ').to_string())
                            .unwrap_or_default()
                    })
                    .collect())
            }
        }
    }
}

impl CsvRows {
    /// The SHA-256 of the bytes read (the whole file once the rows are exhausted), when the
    /// source was opened with hashing. Ends the hashing.
    pub fn finish_sha256(&mut self) -> Option<String> {
        let h = self.reader.get_mut().inner.hasher.take()?;
        drop(h.tx);
        h.done.join().ok()
    }
}

/// Why a source could not be opened: the file is unreadable (exit 2) or its header is unusable
/// (exit 1, the batch is invalid).
#[derive(Debug)]
pub enum OpenError {
    Io(Diagnostic),
    Invalid(Diagnostics),
}

pub enum Source {
    Csv(Box<CsvRows>),
    Inline(InlineRows),
}

pub struct CsvRows {
    pub display: String,
    pub path: std::path::PathBuf,
    pub delimiter: u8,
    pub reader: Records<LineEnds<HashingReader<File>>>,
    /// Column index (0-based) of each item field.
    pub columns: Vec<usize>,
    /// Header text of each column, for diagnostics (`None` without a header row).
    pub header: Option<Vec<String>>,
    /// How many fields every record must have (the header's width), if known.
    pub width: Option<usize>,
    /// The file's size in bytes, to size per-item tables before they grow.
    pub file_len: u64,
}

pub struct InlineRows {
    pub display: String,
    pub text: String,
    pub items: Vec<InlineItem>,
}

impl Source {
    /// Opens the manifest's item source and returns it with the item fields it provides.
    pub fn open(m: &Manifest) -> Result<(Source, Vec<String>), OpenError> {
        Source::open_hashed(m, false)
    }

    /// Like `open`; with `hash`, the SHA-256 of the CSV file's bytes is computed while it is
    /// read (see `CsvRows::sha256`), so fingerprinting costs no second read.
    pub fn open_hashed(m: &Manifest, hash: bool) -> Result<(Source, Vec<String>), OpenError> {
        match &m.items {
            Items::Inline(items) => {
                let mut fields: Vec<String> = Vec::new();
                for it in items {
                    for k in it.fields.keys() {
                        if !fields.contains(k) {
                            fields.push(k.clone());
                        }
                    }
                }
                Ok((
                    Source::Inline(InlineRows {
                        display: m.display.clone(),
                        text: m.text.clone(),
                        items: items.clone(),
                    }),
                    fields,
                ))
            }
            Items::Csv(src) => open_csv(m, src, hash),
        }
    }
}

fn open_csv(m: &Manifest, src: &CsvSource, hash: bool) -> Result<(Source, Vec<String>), OpenError> {
    let (file, canonical) = crate::input_file::open(&src.path).map_err(|r| {
        let d = match &r {
            crate::input_file::Refusal::Io(e) => Diagnostic::new(
                &src.display,
                "source.io",
                format!("cannot open the item source: {e}"),
            )
            .hint("items.source is relative to the manifest's folder"),
            other => Diagnostic::new(
                &src.display,
                if other.is_io() { "source.io" } else { "source.not-a-file" },
                format!("the item source {}", other.describe()),
            )
            .hint("name the payroll's CSV export in items.source; payrun reads item sources from regular files only"),
        };
        OpenError::Io(d)
    })?;
    if !src.allow_outside_folder {
        check_inside_folder(m, &canonical)?;
    }
    let file_len = file.metadata().map(|md| md.len()).unwrap_or(0);
    let mut reader = Records::new(
        LineEnds::new(HashingReader {
            inner: file,
            hasher: hash.then(Hasher::start),
        }),
        src.delimiter,
    );
    let invalid = |d: Diagnostic| OpenError::Invalid(Diagnostics(vec![d]));
    let mut header: Option<Vec<String>> = None;
    let mut width = None;
    if src.header {
        let mut rec = super::records::Row::new();
        let got = reader.read(&mut rec).map(|l| l.is_some()).map_err(|e| {
            OpenError::Io(Diagnostic::new(
                &src.display,
                "source.io",
                format!("cannot read the header: {e}"),
            ))
        })?;
        if !got {
            return Err(invalid(
                Diagnostic::new(
                    &src.display,
                    "csv.empty",
                    "the file is empty: no header row, no items",
                )
                .at(1, 1)
                .hint("export the payroll again; the first row must name the columns"),
            ));
        }
        let mut names = Vec::new();
        for (i, f) in rec.iter().enumerate() {
            let f = if i == 0 {
                f.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(f)
            } else {
                f
            };
            // NUL and other control bytes in the first line: a binary file or a dump (e.g. an
            // environment block), never a payroll export. Nothing of it is quoted.
            if f.iter().any(|&b| b < 0x20 && b != b'\t' && b != b'\n') {
                return Err(invalid(
                    Diagnostic::new(
                        &src.display,
                        "csv.not-text",
                        "the first line holds NUL or control bytes: the file is not CSV text",
                    )
                    .at(1, i as u64 + 1)
                    .hint("name the payroll's CSV export (CSV UTF-8) in items.source"),
                ));
            }
            match std::str::from_utf8(f) {
                Ok(s) => names.push(s.trim().to_string()),
                Err(_) => {
                    return Err(invalid(
                        Diagnostic::new(
                            &src.display,
                            "csv.encoding",
                            "the header row is not UTF-8",
                        )
                        .at(1, i as u64 + 1)
                        .hint("save the file as CSV UTF-8"),
                    ));
                }
            }
        }
        width = Some(names.len());
        header = Some(names);
    }
    let mut errors = Vec::new();
    let (fields, columns) = match (&src.columns, &header) {
        (Some(map), _) => {
            let mut fields = Vec::new();
            let mut columns = Vec::new();
            for (field, col) in map {
                let at = [key("items"), key("columns"), key(field)];
                let idx = match (col, &header) {
                    (ColumnRef::Name(name), Some(h)) => {
                        let hits: Vec<usize> = h
                            .iter()
                            .enumerate()
                            .filter(|(_, x)| *x == name)
                            .map(|(i, _)| i)
                            .collect();
                        match hits.as_slice() {
                            [i] => Some(*i),
                            [] => {
                                errors.push(missing_column(m, &src.display, name, h, &at));
                                None
                            }
                            _ => {
                                errors.push(
                                    Diagnostic::new(
                                        &src.display,
                                        "csv.duplicate-column",
                                        format!(
                                            "the header has column `{}` {} times",
                                            crate::diagnostic::quote_header(name),
                                            hits.len()
                                        ),
                                    )
                                    .at(1, hits[1] as u64 + 1)
                                    .hint("rename the duplicate columns so each header is unique"),
                                );
                                None
                            }
                        }
                    }
                    (ColumnRef::Number(n), _) => Some(n - 1),
                    (ColumnRef::Name(_), None) => None,
                };
                if let Some(i) = idx {
                    fields.push(field.clone());
                    columns.push(i);
                }
            }
            (fields, columns)
        }
        (None, Some(h)) => {
            let mut seen = std::collections::HashSet::with_capacity(h.len());
            for (i, name) in h.iter().enumerate() {
                if name.chars().count() > MAX_FIELD_NAME {
                    // Every header cell names an item field here, and field names end up in
                    // messages: a cell this long is data (or no CSV at all), not a name.
                    errors.push(
                        Diagnostic::new(
                            &src.display,
                            "csv.header-too-long",
                            format!(
                                "column {} has a name of {} characters; an item field's name has at most {MAX_FIELD_NAME}",
                                i + 1,
                                name.chars().count()
                            ),
                        )
                        .at(1, i as u64 + 1)
                        .hint("is the first line a header row? map the columns you need under items.columns, or set `header: false`"),
                    );
                } else if name.is_empty() {
                    errors.push(
                        Diagnostic::new(
                            &src.display,
                            "csv.empty-header",
                            format!("column {} has no name", i + 1),
                        )
                        .at(1, i as u64 + 1)
                        .hint("name every column, or map the ones you need under items.columns"),
                    );
                } else if !seen.insert(name.as_str()) {
                    errors.push(
                        Diagnostic::new(
                            &src.display,
                            "csv.duplicate-column",
                            format!(
                                "the header has column `{}` more than once",
                                crate::diagnostic::quote_header(name)
                            ),
                        )
                        .at(1, i as u64 + 1)
                        .hint("rename the duplicate columns so each header is unique"),
                    );
                }
            }
            if h.len() == 1
                && let Some(d) = delimiter_hint(&h[0], src.delimiter)
            {
                errors.push(
                    Diagnostic::new(
                        &src.display,
                        "csv.delimiter",
                        "the header has a single column",
                    )
                    .at(1, 1)
                    .hint(d),
                );
            } else if h.len() == 1 && !crate::manifest::is_field_name(&h[0]) {
                // No delimiter and no field name: a key file, a note, anything but a CSV
                // export. Its one "column name" would be quoted in later hints: say so now,
                // quoting none of it.
                errors.push(
                    Diagnostic::new(
                        &src.display,
                        "csv.no-delimiter",
                        format!(
                            "the first line has no {} between columns and is no column name: the file is not a CSV export with a header row",
                            match src.delimiter {
                                b'\t' => "tab".to_string(),
                                d => format!("`{}`", d as char),
                            }
                        ),
                    )
                    .at(1, 1)
                    .hint("name the payroll's CSV export in items.source, or set `delimiter:` under items to the one it uses"),
                );
            }
            (h.clone(), (0..h.len()).collect())
        }
        (None, None) => {
            unreachable!("a CSV without a header needs columns (checked in the manifest)")
        }
    };
    // A file read with the wrong delimiter misses every mapped column: say that once.
    if let Some(h) = &header
        && h.len() == 1
        && errors.len() > 1
        && errors.iter().all(|e| e.rule == "csv.missing-column")
        && let Some(d) = delimiter_hint(&h[0], src.delimiter)
    {
        errors = vec![
            Diagnostic::new(
                &src.display,
                "csv.delimiter",
                "the header has a single column, so no mapped column is found",
            )
            .at(1, 1)
            .hint(d),
        ];
    }
    if !errors.is_empty() {
        return Err(OpenError::Invalid(Diagnostics(errors)));
    }
    Ok((
        Source::Csv(Box::new(CsvRows {
            display: src.display.clone(),
            path: src.path.clone(),
            delimiter: src.delimiter,
            reader,
            columns,
            // Only diagnostics read it: quoted short and masked once, here.
            header: header.map(|h| {
                h.iter()
                    .map(|n| crate::diagnostic::quote_header(n))
                    .collect()
            }),
            width,
            file_len,
        })),
        fields,
    ))
}

fn missing_column(
    m: &Manifest,
    display: &str,
    name: &str,
    header: &[String],
    at: &[Seg],
) -> Diagnostic {
    let delimiter = match &m.items {
        Items::Csv(s) => s.delimiter,
        Items::Inline(_) => b',',
    };
    let mut hint = match crate::text::did_you_mean(name, header.iter().map(String::as_str)) {
        Some(c) => format!("did you mean `{}`?", crate::diagnostic::quote_header(c)),
        // One column: no delimiter in the first line, so it is no CSV header (or the wrong
        // delimiter, said below); nothing of it is quoted.
        None if header.len() == 1 => {
            "the first line has no column delimiter: is the file the payroll's CSV export with a header row?".to_string()
        }
        None => format!(
            "the header has: {}",
            crate::diagnostic::quote_names(header)
        ),
    };
    if header.len() == 1
        && let Some(d) = delimiter_hint(&header[0], delimiter)
    {
        hint = d;
    }
    let pos = yaml::locate(&m.text, at);
    Diagnostic::new(
        display,
        "csv.missing-column",
        format!(
            "column `{name}` (mapped in {}{}) is not in the header",
            m.display,
            pos.map(|(l, _)| format!(":{l}")).unwrap_or_default()
        ),
    )
    .at(1, 1)
    .hint(hint)
}

/// The longest header cell taken as an item field's name (when every column is a field).
const MAX_FIELD_NAME: usize = 64;

/// Refuses an item source outside the manifest's folder (an absolute path, `..`, a symlink
/// leading out) unless `items.allow_outside_folder` says so: a manifest from elsewhere must
/// not make payrun read, and quote from, any file the user can read.
fn check_inside_folder(m: &Manifest, canonical: &std::path::Path) -> Result<(), OpenError> {
    let folder = crate::input_file::canonical_folder(&m.path).map_err(|e| {
        OpenError::Io(Diagnostic::new(
            &m.display,
            "source.io",
            format!("cannot resolve the manifest's folder: {e}"),
        ))
    })?;
    if canonical.starts_with(&folder) {
        return Ok(());
    }
    let at = [key("items"), key("source")];
    Err(OpenError::Invalid(Diagnostics(vec![
        Diagnostic::new(
            &m.display,
            "source.outside-folder",
            "items.source leads outside the manifest's folder",
        )
        .at_opt(yaml::locate(&m.text, &at))
        .hint("keep the CSV beside the manifest; if reading it from there is intended, set `allow_outside_folder: true` under items"),
    ])))
}

fn delimiter_hint(only: &str, delimiter: u8) -> Option<String> {
    for (c, name) in [
        (';', "\";\""),
        ('\t', "tab"),
        ('|', "\"|\""),
        (',', "\",\""),
    ] {
        if c as u32 as u8 != delimiter && only.contains(c) {
            return Some(format!(
                "the file seems to use {name} between columns; set `delimiter: {name}` under items"
            ));
        }
    }
    None
}

impl InlineRows {
    /// The manifest position of an inline item's field.
    pub fn locate(&self, index: usize, field: &str) -> Option<(u64, u64)> {
        yaml::locate(
            &self.text,
            &[key("items"), key("inline"), Seg::Index(index), key(field)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `chunk` bytes at a time, to exercise CRs at buffer edges.
    struct Chunks<'a>(&'a [u8], usize);

    impl Read for Chunks<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn through(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        LineEnds::new(Chunks(input, chunk))
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Opens the item source of a manifest written into `dir` with this `items:` block.
    fn open_in(dir: &std::path::Path, items: &str) -> Result<Vec<String>, Vec<Diagnostic>> {
        let path = dir.join("manifest.yaml");
        std::fs::write(
            &path,
            format!("batch: b1\nprovider: paysend\nenvironment: sandbox\nitems:\n{items}flow:\n  - op: pay.toCard\n"),
        )
        .unwrap();
        let m = Manifest::load(&path).unwrap();
        match Source::open(&m) {
            Ok((_, fields)) => Ok(fields),
            Err(OpenError::Io(d)) => Err(vec![d]),
            Err(OpenError::Invalid(ds)) => Err(ds.0),
        }
    }

    fn rule(r: &Result<Vec<String>, Vec<Diagnostic>>) -> &str {
        match r {
            Ok(_) => "ok",
            Err(ds) => &ds[0].rule,
        }
    }

    #[test]
    fn a_source_outside_the_manifests_folder_is_refused_unless_allowed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("batch");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(root.path().join("out.csv"), "id,amount\nE1,1.00\n").unwrap();
        std::fs::write(dir.join("in.csv"), "id,amount\nE1,1.00\n").unwrap();
        std::os::unix::fs::symlink(root.path().join("out.csv"), dir.join("link.csv")).unwrap();
        let abs_out = root.path().join("out.csv").display().to_string();
        let abs_in = dir.join("in.csv").display().to_string();
        for (source, want) in [
            ("in.csv", "ok"),
            ("./sub/../in.csv", "ok"),
            (abs_in.as_str(), "ok"),
            ("../out.csv", "source.outside-folder"),
            (abs_out.as_str(), "source.outside-folder"),
            ("link.csv", "source.outside-folder"),
        ] {
            if source.contains("sub") {
                std::fs::create_dir_all(dir.join("sub")).unwrap();
            }
            let r = open_in(&dir, &format!("  source: {source}\n"));
            assert_eq!(rule(&r), want, "{source}");
            if let Err(ds) = &r {
                assert_eq!(ds[0].line, Some(5), "{source}: points at items.source");
                assert!(
                    ds[0]
                        .hint
                        .as_deref()
                        .unwrap()
                        .contains("allow_outside_folder: true")
                );
            }
            let allowed = open_in(
                &dir,
                &format!("  source: {source}\n  allow_outside_folder: true\n"),
            );
            assert_eq!(rule(&allowed), "ok", "{source} allowed");
        }
    }

    #[test]
    fn a_fifo_a_device_a_folder_or_a_proc_file_as_source_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.csv");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::fs::create_dir(dir.path().join("folder.csv")).unwrap();
        for (source, what) in [
            ("pipe.csv", "FIFO"),
            ("folder.csv", "folder"),
            ("/dev/zero", "character device"),
            ("/proc/self/environ", "/proc"),
        ] {
            let r = open_in(
                dir.path(),
                &format!("  source: {source}\n  allow_outside_folder: true\n"),
            );
            assert_eq!(rule(&r), "source.not-a-file", "{source}");
            let d = &r.unwrap_err()[0];
            assert!(d.message.contains(what), "{source}: {}", d.message);
        }
    }

    #[test]
    fn a_first_line_with_nul_bytes_is_not_csv_and_is_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("env.csv"),
            b"SECRET_TOKEN=abc\0HOME=/root\0PATH=/bin\0\n",
        )
        .unwrap();
        let r = open_in(dir.path(), "  source: env.csv\n  columns: {id: id}\n");
        assert_eq!(rule(&r), "csv.not-text");
        let d = &r.unwrap_err()[0];
        assert!(!format!("{d:?}").contains("SECRET_TOKEN"), "{d:?}");
    }

    #[test]
    fn the_header_hint_quotes_a_few_short_masked_names_and_nothing_of_a_one_column_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut header: Vec<String> = (0..20).map(|i| format!("col{i}")).collect();
        header[0] = format!("k_{}", "9".repeat(40));
        std::fs::write(
            dir.path().join("wide.csv"),
            format!("{}\n", header.join(",")),
        )
        .unwrap();
        let r = open_in(
            dir.path(),
            "  source: wide.csv\n  columns: {id: employee_number}\n",
        );
        let d = &r.unwrap_err()[0];
        assert_eq!(d.rule, "csv.missing-column");
        let hint = d.hint.as_deref().unwrap();
        assert!(
            hint.starts_with("the header has: ********9999, col1,"),
            "{hint}"
        );
        assert!(hint.ends_with("and 12 more"), "{hint}");
        std::fs::write(dir.path().join("one.csv"), "API_KEY=sk_live_4eC39HqLyjWD\n").unwrap();
        let r = open_in(
            dir.path(),
            "  source: one.csv\n  columns: {id: employee_number}\n",
        );
        let d = &r.unwrap_err()[0];
        assert!(!format!("{d:?}").contains("API_KEY"), "{d:?}");
    }

    #[test]
    fn a_one_line_key_file_as_source_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("key.csv"),
            "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
        )
        .unwrap();
        let r = open_in(dir.path(), "  source: key.csv\n");
        let ds = r.unwrap_err();
        assert_eq!(ds[0].rule, "csv.no-delimiter");
        assert!(!format!("{ds:?}").contains("wJalr"), "{ds:?}");
        // A one-column file whose header is a field name is a CSV like any other.
        std::fs::write(dir.path().join("ids.csv"), "id\nE1\n").unwrap();
        assert_eq!(rule(&open_in(dir.path(), "  source: ids.csv\n")), "ok");
    }

    #[test]
    fn a_header_cell_too_long_for_a_field_name_is_refused_when_every_column_is_a_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("long.csv"),
            format!("id,{}\nE1,x\n", "n".repeat(1000)),
        )
        .unwrap();
        let r = open_in(dir.path(), "  source: long.csv\n");
        let d = &r.unwrap_err()[0];
        assert_eq!(
            (d.rule.as_str(), d.column),
            ("csv.header-too-long", Some(2))
        );
        assert!(d.message.len() < 120, "{}", d.message);
    }

    #[test]
    fn every_line_end_becomes_lf_whatever_the_chunking() {
        let input = b"a,b\r\n1,\"x\r\ny\"\r\n2,z\rq\r";
        for chunk in 1..12 {
            assert_eq!(
                through(input, chunk),
                b"a,b\n1,\"x\ny\"\n2,z\nq\n",
                "chunk {chunk}"
            );
        }
        assert_eq!(through(b"", 3), b"");
        assert_eq!(through(b"\r", 1), b"\n");
        assert_eq!(through(b"\r\r\n", 1), b"\n\n");
    }

    #[test]
    fn records_get_their_physical_lines_across_crlf_cr_blank_lines_and_multiline_values() {
        let text = b"id,a\r\n1,x\r\n\r\n\r\n2,\"multi\r\nline\"\r\n3,y\r4,z\n";
        for chunk in [1, 3, 7, 64] {
            let mut r = Records::new(LineEnds::new(Chunks(text, chunk)), b',');
            let mut rec = crate::validate::records::Row::new();
            let mut lines = Vec::new();
            while let Some(line) = r.read(&mut rec).unwrap() {
                lines.push((String::from_utf8_lossy(&rec[0]).to_string(), line));
            }
            let want: Vec<(String, u64)> = [("id", 1), ("1", 2), ("2", 5), ("3", 7), ("4", 8)]
                .iter()
                .map(|(a, b)| (a.to_string(), *b))
                .collect();
            assert_eq!(lines, want, "chunk {chunk}");
        }
    }
}

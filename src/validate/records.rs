//! `Records`: CSV records with their physical line numbers, fast.
//!
//! Most payroll rows hold no quote character; for those a line is split at the delimiter with
//! `memchr` (several times faster than a general CSV state machine, and parsing runs on the one
//! thread every other stage waits for). A line that holds a quote goes to `csv_core`, the csv
//! crate's own parser, so quoting (doubled quotes, delimiters and line breaks inside quotes,
//! stray quotes in unquoted fields) behaves exactly as the csv crate defines it. Blank lines are
//! skipped, as the csv crate does. The input must have LF line ends (see `LineEnds`).

use memchr::memchr;
use std::io::{self, Read};

/// One CSV record: its bytes and each field's bounds within them. (For a plain line the bytes
/// are the line itself, delimiters included; for a quoted record, the unquoted field contents.)
#[derive(Debug, Default, Clone)]
pub struct Row {
    data: Vec<u8>,
    bounds: Vec<(u32, u32)>,
}

impl Row {
    pub fn new() -> Row {
        Row::default()
    }

    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// All of the record's bytes; every field is a sub-slice.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    pub fn range(&self, i: usize) -> Option<std::ops::Range<usize>> {
        self.bounds.get(i).map(|&(a, b)| a as usize..b as usize)
    }

    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.range(i).map(|r| &self.data[r])
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.bounds
            .iter()
            .map(|&(a, b)| &self.data[a as usize..b as usize])
    }
}

impl std::ops::Index<usize> for Row {
    type Output = [u8];
    fn index(&self, i: usize) -> &[u8] {
        self.get(i).expect("field index within the record")
    }
}

pub struct Records<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    eof: bool,
    delimiter: u8,
    core: csv_core::Reader,
    /// The line of `buf[pos]`, 1-based.
    line: u64,
    /// Bytes consumed before `buf[0]`.
    base: u64,
    /// Where the record `read` returned last starts, in bytes of input.
    start: u64,
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl<R: Read> Records<R> {
    pub fn new(inner: R, delimiter: u8) -> Self {
        Records::with_capacity(inner, delimiter, 1 << 16)
    }

    /// A reader with a buffer of `capacity` bytes to start with (it grows for a longer line).
    pub fn with_capacity(inner: R, delimiter: u8, capacity: usize) -> Self {
        Records {
            inner,
            buf: vec![0; capacity.max(64)],
            pos: 0,
            end: 0,
            eof: false,
            delimiter,
            core: csv_core::ReaderBuilder::new().delimiter(delimiter).build(),
            line: 1,
            base: 0,
            start: 0,
            out: vec![0; 1 << 12],
            ends: vec![0; 64],
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Bytes of input consumed so far.
    pub fn consumed(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Where the record `read` returned last starts, in bytes of input (blank lines before it
    /// skipped): reading from there gives that record again.
    pub fn record_start(&self) -> u64 {
        self.start
    }

    /// Moves unconsumed bytes to the front and reads more; grows the buffer when a single line
    /// fills it (a 10 MB field is still read, just not in one 64 KiB gulp).
    fn fill(&mut self) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.base += self.pos as u64;
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.inner.read(&mut self.buf[self.end..])?;
        if n == 0 {
            self.eof = true;
        }
        self.end += n;
        Ok(())
    }

    /// Reads the next record into `rec`; returns the line it starts on, or `None` at the end.
    pub fn read(&mut self, rec: &mut Row) -> io::Result<Option<u64>> {
        loop {
            if self.pos == self.end {
                if self.eof {
                    return Ok(None);
                }
                self.fill()?;
                continue;
            }
            let avail = &self.buf[self.pos..self.end];
            let nl = memchr(b'\n', avail);
            if nl.is_none() && !self.eof {
                self.fill()?;
                continue;
            }
            let len = nl.unwrap_or(avail.len());
            let line = &avail[..len];
            if line.is_empty() {
                // A blank line: skipped, but it is a line.
                self.pos += 1;
                self.line += 1;
                continue;
            }
            self.start = self.base + self.pos as u64;
            if memchr(b'"', line).is_some() {
                return self.quoted(rec);
            }
            rec.data.clear();
            rec.data.extend_from_slice(line);
            rec.bounds.clear();
            let mut start = 0u32;
            for i in memchr::memchr_iter(self.delimiter, line) {
                rec.bounds.push((start, i as u32));
                start = i as u32 + 1;
            }
            rec.bounds.push((start, line.len() as u32));
            let at = self.line;
            self.pos += len + usize::from(nl.is_some());
            self.line += 1;
            return Ok(Some(at));
        }
    }

    /// A record with quotes, parsed by csv_core (it may span lines and buffer refills).
    fn quoted(&mut self, rec: &mut Row) -> io::Result<Option<u64>> {
        use csv_core::ReadRecordResult as R;
        let at = self.line;
        let (mut nout, mut nends) = (0, 0);
        loop {
            let input = &self.buf[self.pos..self.end];
            let (res, nin, o, e) =
                self.core
                    .read_record(input, &mut self.out[nout..], &mut self.ends[nends..]);
            self.line += memchr::memchr_iter(b'\n', &input[..nin]).count() as u64;
            self.pos += nin;
            nout += o;
            nends += e;
            match res {
                R::InputEmpty => {
                    if self.eof {
                        // Empty input tells csv_core the stream ended.
                        continue;
                    }
                    self.fill()?;
                }
                R::OutputFull => {
                    let n = self.out.len() * 2;
                    self.out.resize(n, 0);
                }
                R::OutputEndsFull => {
                    let n = self.ends.len() * 2;
                    self.ends.resize(n, 0);
                }
                R::Record => break,
                R::End => return Ok(None),
            }
        }
        rec.data.clear();
        rec.data.extend_from_slice(&self.out[..nout]);
        rec.bounds.clear();
        let mut start = 0u32;
        for &end in &self.ends[..nends] {
            rec.bounds.push((start, end as u32));
            start = end as u32;
        }
        Ok(Some(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the csv crate makes of `text`, and what `Records` makes of it, must agree.
    fn both(text: &[u8]) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        let mut theirs = Vec::new();
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text);
        let mut rec = csv::ByteRecord::new();
        while r.read_byte_record(&mut rec).unwrap() {
            theirs.push(
                rec.iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect(),
            );
        }
        let mut ours = Vec::new();
        let mut r = Records::new(text, b',');
        let mut rec = Row::new();
        while r.read(&mut rec).unwrap().is_some() {
            ours.push(
                rec.iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect(),
            );
        }
        (theirs, ours)
    }

    #[test]
    fn records_match_the_csv_crate_on_tricky_input() {
        let cases: &[&[u8]] = &[
            b"a,b,c\n1,2,3\n",
            b"a,b\n\"x,y\",z\n\"multi\nline\",w\nlast,row",
            b"a,b\n\"he said \"\"hi\"\"\",2\n",
            b"a\nO\"Brien,x\n\"unterminated,y\n",
            b"\n\na,b\n\n1,2\n\n",
            b",,\n,\n\"\",\"\"\n",
            b"a,\"b\"c,d\n",
        ];
        for text in cases {
            let (theirs, ours) = both(text);
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn records_match_the_csv_crate_on_random_input() {
        // Deterministic xorshift; an alphabet dense in the characters that matter.
        let mut x: u64 = 0x2545f4914f6cdd1d;
        let alphabet = b"ab,,\"\"\n \xc3\xa9";
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let text: Vec<u8> = (0..len)
                .map(|i| {
                    let r =
                        x.rotate_left(i as u32 * 7) ^ (i as u64).wrapping_mul(0x9e3779b97f4a7c15);
                    alphabet[(r % alphabet.len() as u64) as usize]
                })
                .collect();
            let (theirs, ours) = both(&text);
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn records_carry_the_line_they_start_on() {
        let text = b"id,a\n1,x\n\n\n2,\"multi\nline\"\n3,y\n";
        let mut r = Records::new(&text[..], b',');
        let mut rec = Row::new();
        let mut lines = Vec::new();
        while let Some(line) = r.read(&mut rec).unwrap() {
            lines.push((String::from_utf8_lossy(&rec[0]).into_owned(), line));
        }
        let want: Vec<(String, u64)> = [("id", 1), ("1", 2), ("2", 5), ("3", 7)]
            .iter()
            .map(|(a, b)| (a.to_string(), *b))
            .collect();
        assert_eq!(lines, want);
    }

    #[test]
    fn a_field_larger_than_the_buffer_is_read_whole() {
        let big = "x".repeat(200_000);
        let text = format!("a,b\n1,{big}\n2,\"{big}\"\n");
        let mut r = Records::new(text.as_bytes(), b',');
        let mut rec = Row::new();
        assert_eq!(r.read(&mut rec).unwrap(), Some(1));
        assert_eq!(r.read(&mut rec).unwrap(), Some(2));
        assert_eq!(rec[1].len(), 200_000);
        assert_eq!(r.read(&mut rec).unwrap(), Some(3));
        assert_eq!(rec[1].len(), 200_000);
        assert_eq!(r.read(&mut rec).unwrap(), None);
    }
}

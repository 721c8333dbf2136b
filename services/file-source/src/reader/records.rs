//! Splitting the decoded text into CSV records: [`RecordReader`], record for record what the
//! `csv` crate's reader returns in the same dialect (flexible field counts, no header handling,
//! `\n`, `\r` and `\r\n` ending a record, blank lines skipped), position included — but faster
//! on the lines real snapshot files are made of.
//!
//! Why not `csv::Reader` itself: its byte-at-a-time state machine (`csv_core`) plus one
//! `ByteRecord` copy per field was among the largest per-row costs of file-source (`perf` of
//! the convert bench). Here a line — up to `\n`, with no `\r` — is split on its delimiter
//! with `memchr`, many bytes per instruction, quoted fields included. Anything else — a `\r`
//! ending a record, text after a closing quote, an escape character in a quoted field, a
//! quoted line break, a record longer than the buffer, and the first record (where
//! `csv_core` drops a UTF-8 byte-order mark) — goes to `csv_core`, the state machine
//! `csv::Reader` runs, fed from the same buffer. Every path starts at a record
//! boundary, where `csv_core`'s state is always "start of record" (or an equivalent one that
//! skips a following `\n`), so mixing them cannot change a record. The equivalence is tested
//! against `csv::Reader` on generated inputs in several dialects, whatever the read sizes.
//!
//! Records come out as a [`Record`] (module `record`) rather than a `csv::ByteRecord`: a line
//! is copied once, delimiters and all, with each field's span (a `ByteRecord` takes its fields
//! one copy at a time), and its text is checked once for the whole line.
//!
//! A record's position is what `csv::Reader` reports: where the previous record ended (so a
//! record after blank lines reports the first blank line, as it always did). A read error
//! ends the reader, as it ends `csv::Reader`: later reads return no record. No guarantee of
//! its own: a pure reader.

use std::io::{self, Read};

use csv::Position;

use super::Record;

use crate::config::CsvDialect;

/// What [`RecordReader::split`] made of the buffered bytes.
enum Split {
    /// A record, `bytes` long, with this many `\n` in it (its own end included).
    Record { bytes: usize, newlines: u64 },
    /// Not for this path: `csv_core` reads it.
    Slow,
    /// The record goes on past the buffered bytes.
    More,
}

/// A UTF-8 byte-order mark.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Default read buffer: a line longer than this takes the `csv_core` path.
const BUFFER_BYTES: usize = 1 << 18;

/// Reads CSV records from a text stream; see the module documentation.
pub struct RecordReader {
    input: Box<dyn Read + Send>,
    core: csv_core::Reader,
    delimiter: u8,
    quote: u8,
    escape: Option<u8>,
    /// Whether lines may be split without `csv_core` (no dialect byte is a line-ending byte).
    split_fast: bool,
    buf: Box<[u8]>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
    /// No record read yet: the first goes to `csv_core`, which drops a byte-order mark there.
    first: bool,
    /// A read failed: no more records.
    failed: bool,
    /// Where the next record starts as `csv::Reader` counts it: bytes consumed, line, records.
    byte: u64,
    line: u64,
    records: u64,
    /// `csv_core`'s output and field ends, reused.
    fields: Vec<u8>,
    ends: Vec<usize>,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("line", &self.line)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl RecordReader {
    /// A reader of `input` in `dialect`.
    pub fn new(input: Box<dyn Read + Send>, dialect: &CsvDialect) -> RecordReader {
        RecordReader::with_buffer(input, dialect, BUFFER_BYTES)
    }

    fn with_buffer(input: Box<dyn Read + Send>, dialect: &CsvDialect, bytes: usize) -> Self {
        let (delimiter, quote) = (dialect.delimiter as u8, dialect.quote as u8);
        let escape = dialect.escape.map(|c| c as u8);
        let mut builder = csv_core::ReaderBuilder::new();
        builder.delimiter(delimiter).quote(quote);
        if escape.is_some() {
            builder.escape(escape).double_quote(false);
        }
        let line_byte = |b: u8| b == b'\n' || b == b'\r';
        RecordReader {
            input,
            core: builder.build(),
            delimiter,
            quote,
            escape,
            split_fast: !line_byte(delimiter)
                && !line_byte(quote)
                && !escape.is_some_and(line_byte),
            buf: vec![0; bytes.max(BOM.len() + 1)].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            first: true,
            failed: false,
            byte: 0,
            line: 1,
            records: 0,
            fields: vec![0; 1024],
            ends: vec![0; 64],
        }
    }

    /// Where the next record starts (after the last one read).
    pub fn position(&self) -> Position {
        let mut position = Position::new();
        position
            .set_byte(self.byte)
            .set_line(self.line)
            .set_record(self.records);
        position
    }

    /// Reads the next record into `record` (cleared first; its position set); `Ok(false)` at
    /// the end of the text. An `Err` is the text stream's (e.g. corrupt compressed data).
    pub fn read_record(&mut self, record: &mut Record) -> io::Result<bool> {
        record.position = self.position();
        if self.failed {
            record.clear();
            return Ok(false);
        }
        let read = self.read_next(record);
        self.failed = read.is_err();
        read
    }

    fn read_next(&mut self, record: &mut Record) -> io::Result<bool> {
        if std::mem::take(&mut self.first) {
            // A whole mark and a byte after it, whatever the read sizes: `csv_core` looks only
            // at what it is given, and takes a mark with nothing after it for the end.
            while self.end - self.start <= BOM.len() && !self.eof {
                self.fill()?;
            }
            record.clear();
            return self.read_slow(record);
        }
        loop {
            record.clear();
            if self.start == self.end && !self.fill()? {
                return Ok(false);
            }
            // Blank lines: `csv_core` skips `\n` at a record's start; so does this.
            match self.buf[self.start] {
                b'\n' => {
                    self.consume(1);
                    self.line += 1;
                    continue;
                }
                b'\r' => return self.read_slow(record),
                _ => {}
            }
            if !self.split_fast {
                return self.read_slow(record);
            }
            match self.split(record) {
                Split::Record { bytes, newlines } => {
                    self.consume(bytes);
                    self.line += newlines;
                    self.records += 1;
                    return Ok(true);
                }
                Split::Slow => {
                    record.clear();
                    return self.read_slow(record);
                }
                // The record continues past the buffered bytes: read more and split it again,
                // or leave a record longer than the buffer to `csv_core`.
                Split::More if self.start == 0 && self.end == self.buf.len() => {
                    record.clear();
                    return self.read_slow(record);
                }
                Split::More => {
                    self.fill()?;
                }
            }
        }
    }

    /// Splits the record at the start of the buffered bytes into `record`, if it is one line
    /// ending in `\n` (or the text's last line) that [`split_line`] can split. Anything else —
    /// a `\r` before the line's end, a quoted line break, text after a closing quote, an
    /// escape character in a quoted field, a quote left open — is [`Split::Slow`]: rare
    /// enough for `csv_core`. Nothing is consumed here.
    fn split(&mut self, record: &mut Record) -> Split {
        let data = &self.buf[self.start..self.end];
        // Both line ends are looked for at once: a file of `\r` line ends must not have its
        // whole buffer searched for a `\n` at every record.
        let (line_end, newline) = match memchr::memchr2(b'\n', b'\r', data) {
            Some(at) if data[at] == b'\n' => (at, true),
            Some(_) => return Split::Slow,
            None if self.eof => (data.len(), false),
            None => return Split::More,
        };
        match split_line(
            &data[..line_end],
            self.delimiter,
            self.quote,
            self.escape,
            record,
        ) {
            true => Split::Record {
                bytes: line_end + usize::from(newline),
                newlines: u64::from(newline),
            },
            false => Split::Slow,
        }
    }

    /// One record by `csv_core`, from a record boundary, reading as much as the record takes.
    fn read_slow(&mut self, record: &mut Record) -> io::Result<bool> {
        use csv_core::ReadRecordResult;
        let (mut out, mut ends) = (0, 0);
        loop {
            if self.start == self.end && !self.eof {
                self.fill()?;
            }
            let input = &self.buf[self.start..self.end];
            let (result, read, written, ended) =
                self.core
                    .read_record(input, &mut self.fields[out..], &mut self.ends[ends..]);
            let newlines = memchr::memchr_iter(b'\n', &input[..read]).count();
            self.consume(read);
            self.line += newlines as u64;
            out += written;
            ends += ended;
            match result {
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => {
                    let grown = self.fields.len() * 2;
                    self.fields.resize(grown, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let grown = self.ends.len() * 2;
                    self.ends.resize(grown, 0);
                }
                ReadRecordResult::Record => {
                    let mut field_start = 0;
                    for &field_end in &self.ends[..ends] {
                        record.push_field(&self.fields[field_start..field_end]);
                        field_start = field_end;
                    }
                    self.records += 1;
                    return Ok(true);
                }
                ReadRecordResult::End => return Ok(false),
            }
        }
    }

    fn consume(&mut self, bytes: usize) {
        self.start += bytes;
        self.byte += bytes as u64;
    }

    /// Moves the unread bytes to the front and reads more after them; `false` when the text has
    /// ended and nothing is left unread.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(self.start < self.end);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end < self.buf.len() {
            loop {
                match self.input.read(&mut self.buf[self.end..]) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => {
                        self.end += n;
                        break;
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(self.start < self.end)
    }
}

/// Splits one whole line (no `\r` in it) into `record`: a copy of the line, and per field
/// its span in it — a quoted field's between its quotes, or, when it holds doubled quotes,
/// its unescaped text appended after the line. `false` when the line is not that simple (a
/// quote left open to the line's end, text after a closing quote, an escape character in a
/// quoted field): `record` then holds a part, and the caller clears it.
fn split_line(
    line: &[u8],
    delimiter: u8,
    quote: u8,
    escape: Option<u8>,
    record: &mut Record,
) -> bool {
    record.bytes.extend_from_slice(line);
    let mut delimiters = memchr::memchr_iter(delimiter, line);
    let mut at = 0;
    loop {
        if line.get(at) != Some(&quote) {
            // Unquoted: up to the next delimiter (a quote inside is text).
            let end = delimiters.find(|&found| found >= at);
            let Some(end) = end else {
                record.spans.push((at, line.len()));
                return true;
            };
            record.spans.push((at, end));
            at = end + 1;
            continue;
        }
        // Quoted: up to a quote not doubled, which must end the field.
        let mut from = at + 1;
        let mut unescaped: Option<usize> = None;
        loop {
            let Some(found) = memchr::memchr(quote, &line[from..]) else {
                return false;
            };
            let piece = &line[from..from + found];
            if escape.is_some_and(|escape| piece.contains(&escape)) {
                return false;
            }
            let after = from + found + 1;
            let doubled = escape.is_none() && line.get(after) == Some(&quote);
            if doubled || unescaped.is_some() {
                let start = *unescaped.get_or_insert(record.bytes.len());
                record.bytes.extend_from_slice(piece);
                if doubled {
                    record.bytes.push(quote);
                    from = after + 1;
                    continue;
                }
                record.spans.push((start, record.bytes.len()));
            } else {
                record.spans.push((at + 1, from + found));
            }
            match line.get(after) {
                None => return true,
                Some(&next) if next == delimiter => {
                    at = after + 1;
                    break;
                }
                Some(_) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests;

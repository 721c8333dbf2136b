//! Reading a snapshot file: its identity (SHA-256 of the bytes as delivered), and its CSV
//! records — decompressed by content (gzip, zstd), decoded (UTF-8 with or without BOM, or
//! Latin-1) and split by the configured dialect, with the line each record starts on.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::{CsvDialect, TextEncoding};

mod record;
mod records;

pub use record::{Record, TextFields};
pub use records::RecordReader;

/// A snapshot file, identified by content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Where it is now.
    pub path: PathBuf,
    /// Its name (no directory).
    pub name: String,
    /// SHA-256 hex of its bytes as delivered (compressed or not).
    pub hash: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Modification time (ms since the Unix epoch), if the file system keeps one.
    pub modified_ms: Option<i64>,
}

impl SnapshotFile {
    /// Hashes the file (one streaming read).
    pub fn identify(path: &Path) -> io::Result<SnapshotFile> {
        let mut file = File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut bytes = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "file name is not UTF-8"))?
            .to_string();
        let modified_ms = file
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|since| since.as_millis() as i64);
        Ok(SnapshotFile {
            path: path.to_path_buf(),
            name,
            hash: snapfeed_runtime::avro::hex(&hasher.finalize()),
            bytes,
            modified_ms,
        })
    }
}

/// Counts bytes read from the underlying file, for progress reports.
#[derive(Debug)]
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Latin-1 → UTF-8, byte by byte (every byte is a code point).
#[derive(Debug)]
struct Latin1<R> {
    inner: R,
    pending: Vec<u8>,
    at: usize,
}

impl<R: Read> Read for Latin1<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.pending.len() {
            let mut raw = [0u8; 8192];
            let n = self.inner.read(&mut raw)?;
            if n == 0 {
                return Ok(0);
            }
            self.pending.clear();
            self.at = 0;
            for &b in &raw[..n] {
                if b < 0x80 {
                    self.pending.push(b);
                } else {
                    self.pending.push(0xC0 | (b >> 6));
                    self.pending.push(0x80 | (b & 0x3F));
                }
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// `\r\n` → `\n`, so the CSV parser counts lines the same for CRLF and LF files (it reports
/// a CRLF record's start line one too low otherwise). A `\r` not followed by `\n` is kept.
/// Inside quoted values a CRLF line break becomes LF: the same text, one line-ending form.
#[derive(Debug)]
struct CrlfToLf<R> {
    inner: R,
    /// A `\r` at the end of the previous read, not yet known to precede `\n`.
    held_cr: bool,
    /// An output byte that did not fit a 1-byte read.
    pending: Option<u8>,
    raw: Vec<u8>,
}

impl<R: Read> Read for CrlfToLf<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(byte) = self.pending.take() {
            buf[0] = byte;
            return Ok(1);
        }
        if buf.len() == 1 {
            // A held `\r` and the byte after it may both be due: read 2, keep one back
            // (std's read_to_end asks for single bytes at times).
            let mut two = [0u8; 2];
            let n = self.read(&mut two)?;
            if n == 2 {
                self.pending = Some(two[1]);
            }
            buf[0] = two[0];
            return Ok(n.min(1));
        }
        // At most buf.len() - 1 raw bytes, so a held `\r` always fits in front.
        let want = buf.len() - 1;
        self.raw.resize(want, 0);
        loop {
            let n = self.inner.read(&mut self.raw[..want])?;
            if n == 0 {
                if self.held_cr {
                    self.held_cr = false;
                    buf[0] = b'\r';
                    return Ok(1);
                }
                return Ok(0);
            }
            let mut out = 0;
            if self.held_cr {
                self.held_cr = false;
                if self.raw[0] != b'\n' {
                    buf[out] = b'\r';
                    out += 1;
                }
            }
            // Copy runs between `\r`s whole (memchr finds them): the text is mostly runs.
            let raw = &self.raw[..n];
            let mut start = 0;
            while let Some(found) = memchr::memchr(b'\r', &raw[start..]) {
                let cr = start + found;
                buf[out..out + found].copy_from_slice(&raw[start..cr]);
                out += found;
                match raw.get(cr + 1) {
                    // A `\r` ending the read: whether `\n` follows is the next read's question.
                    None => self.held_cr = true,
                    Some(b'\n') => {}
                    Some(_) => {
                        buf[out] = b'\r';
                        out += 1;
                    }
                }
                start = cr + 1;
            }
            let rest = n.saturating_sub(start);
            buf[out..out + rest].copy_from_slice(&raw[start.min(n)..]);
            out += rest;
            if out > 0 {
                return Ok(out);
            }
        }
    }
}

/// The decoded text stream of a file plus a live count of raw bytes read.
pub struct TextStream {
    /// UTF-8 text (BOM removed).
    pub reader: Box<dyn Read + Send>,
    /// Raw (on-disk) bytes consumed so far.
    pub raw_bytes_read: Arc<AtomicU64>,
}

impl std::fmt::Debug for TextStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextStream").finish_non_exhaustive()
    }
}

/// Opens `path` as UTF-8 text: gzip or zstd content is decompressed, the encoding applied, a
/// UTF-8 BOM dropped.
pub fn open_text(path: &Path, encoding: TextEncoding) -> io::Result<TextStream> {
    let raw_bytes_read = Arc::new(AtomicU64::new(0));
    let mut file = BufReader::with_capacity(
        1 << 16,
        Counting {
            inner: File::open(path)?,
            read: raw_bytes_read.clone(),
        },
    );
    let magic = {
        use io::BufRead;
        let head = file.fill_buf()?;
        [
            head.first().copied(),
            head.get(1).copied(),
            head.get(2).copied(),
            head.get(3).copied(),
        ]
    };
    let decompressed: Box<dyn Read + Send> = match magic {
        [Some(0x1f), Some(0x8b), ..] => Box::new(flate2::read::MultiGzDecoder::new(file)),
        [Some(0x28), Some(0xb5), Some(0x2f), Some(0xfd)] => {
            Box::new(zstd::stream::read::Decoder::with_buffer(file)?)
        }
        _ => Box::new(file),
    };
    let mut decompressed = BufReader::with_capacity(1 << 16, decompressed);
    let reader: Box<dyn Read + Send> = match encoding {
        TextEncoding::Utf8 => {
            use io::BufRead;
            if decompressed.fill_buf()?.starts_with(&[0xEF, 0xBB, 0xBF]) {
                decompressed.consume(3);
            }
            Box::new(decompressed)
        }
        TextEncoding::Latin1 => Box::new(Latin1 {
            inner: decompressed,
            pending: Vec::new(),
            at: 0,
        }),
    };
    let reader: Box<dyn Read + Send> = Box::new(CrlfToLf {
        inner: reader,
        held_cr: false,
        pending: None,
        raw: Vec::new(),
    });
    Ok(TextStream {
        reader,
        raw_bytes_read,
    })
}

/// A CSV reader over `text` in `dialect`; the header is read as the first record by the caller.
/// Flexible: rows with the wrong number of fields come back as records (and are rejected by
/// the converter) instead of stopping the file.
pub fn csv_reader(text: Box<dyn Read + Send>, dialect: &CsvDialect) -> RecordReader {
    RecordReader::new(text, dialect)
}

/// The raw text of a record for `rejects`: fields re-joined in the file's dialect (quoted
/// where needed), cut to `max_bytes` at a character boundary. Returns (text, truncated).
pub fn raw_record(record: &Record, dialect: &CsvDialect, max_bytes: usize) -> (String, bool) {
    let mut writer = csv::WriterBuilder::new()
        .delimiter(dialect.delimiter as u8)
        .quote(dialect.quote as u8)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let _ = writer.write_record(record.fields());
    let mut bytes = writer.into_inner().unwrap_or_default();
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if text.len() <= max_bytes {
        return (text, false);
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    (text[..cut].to_string(), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(path: &Path, encoding: TextEncoding) -> String {
        let mut text = String::new();
        open_text(path, encoding)
            .unwrap()
            .reader
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    #[test]
    fn gzip_zstd_bom_and_latin1_all_become_the_same_text() {
        let dir = tempfile::tempdir().unwrap();
        let text = "name\nJosé\n";
        let crlf = dir.path().join("f.csv");
        std::fs::write(&crlf, "name\r\nJosé\r\n").unwrap();
        let plain = dir.path().join("a.csv");
        std::fs::write(&plain, text).unwrap();
        let bom = dir.path().join("b.csv");
        std::fs::write(&bom, [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat()).unwrap();
        let gz = dir.path().join("c.csv.gz");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(text.as_bytes()).unwrap();
        std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
        let zst = dir.path().join("d.csv.zst");
        std::fs::write(&zst, zstd::encode_all(text.as_bytes(), 1).unwrap()).unwrap();
        let latin1 = dir.path().join("e.csv");
        std::fs::write(&latin1, b"name\nJos\xe9\n").unwrap();
        for path in [&plain, &bom, &gz, &zst, &crlf] {
            assert_eq!(
                read_all(path, TextEncoding::Utf8),
                text,
                "{}",
                path.display()
            );
        }
        assert_eq!(read_all(&latin1, TextEncoding::Latin1), text);
    }

    #[test]
    fn identity_is_the_sha256_of_the_delivered_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.csv");
        std::fs::write(&path, "abc").unwrap();
        let file = SnapshotFile::identify(&path).unwrap();
        assert_eq!(
            file.hash,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!((file.name.as_str(), file.bytes), ("x.csv", 3));
    }

    #[test]
    fn raw_record_requotes_and_truncates_on_a_char_boundary() {
        let record = Record::from_fields(["a,b", "Zoë", "plain"]);
        let (text, cut) = raw_record(&record, &CsvDialect::default(), 1000);
        assert_eq!((text.as_str(), cut), ("\"a,b\",Zoë,plain", false));
        // "a,b",Zoë is 10 bytes; cutting at 9 would split the ë, so 8 bytes remain.
        let (text, cut) = raw_record(&record, &CsvDialect::default(), 9);
        assert!(cut);
        assert_eq!(text, "\"a,b\",Zo");
    }

    #[test]
    fn truncated_gzip_is_an_error_not_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&b"h\n1\n".repeat(10_000)).unwrap();
        let bytes = encoder.finish().unwrap();
        let path = dir.path().join("t.csv.gz");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let mut text = String::new();
        let error = open_text(&path, TextEncoding::Utf8)
            .unwrap()
            .reader
            .read_to_string(&mut text)
            .unwrap_err();
        // The gzip decoder's complaint, not anything of the line-ending conversion's.
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{error}");
    }

    #[test]
    fn crlf_becomes_lf_and_every_other_cr_stays_whatever_the_read_size() {
        let inputs: [&[u8]; 7] = [
            b"a,b\r\nc,d\r\n",
            b"\r\r\n\r\r\r\n\n\r",
            b"lone\rcr\rin\rtext\r",
            b"\r",
            b"\r\n",
            b"no line endings at all",
            b"mixed\nlf\r\ncrlf\rcr\r\r",
        ];
        for input in inputs {
            let expected = String::from_utf8_lossy(input).replace("\r\n", "\n");
            for size in [1usize, 2, 3, 4, 7, 64, 8192] {
                let mut reader = CrlfToLf {
                    inner: input,
                    held_cr: false,
                    pending: None,
                    raw: Vec::new(),
                };
                let mut out = Vec::new();
                let mut buf = vec![0u8; size];
                loop {
                    let n = reader.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    expected,
                    "{input:?} in reads of {size}"
                );
            }
        }
    }
}

//! `RecordReader` against the `csv` crate's reader, configured as file-source configured it
//! before (`reference`): the same records, fields and positions, in every dialect, whatever
//! the input's read sizes and the buffer's size.

use std::io::{self, Read};

use proptest::prelude::*;

use super::*;

/// The `csv::Reader` file-source used until `RecordReader` replaced it.
fn reference<'i>(input: &'i [u8], dialect: &CsvDialect) -> csv::Reader<&'i [u8]> {
    let mut builder = csv::ReaderBuilder::new();
    builder
        .has_headers(false)
        .flexible(true)
        .delimiter(dialect.delimiter as u8)
        .quote(dialect.quote as u8);
    if let Some(escape) = dialect.escape {
        builder.escape(Some(escape as u8)).double_quote(false);
    }
    builder.from_reader(input)
}

/// A record as compared: fields, and line, byte and record count of its position.
type Seen = (Vec<Vec<u8>>, u64, u64, u64);

fn seen_by_csv(record: &csv::ByteRecord) -> Seen {
    let position = record.position().cloned().unwrap_or_else(Position::new);
    (
        record.iter().map(<[u8]>::to_vec).collect(),
        position.line(),
        position.byte(),
        position.record(),
    )
}

fn seen(record: &Record) -> Seen {
    let position = record.position();
    assert_eq!(record.len(), record.fields().len());
    (
        record.fields().map(<[u8]>::to_vec).collect(),
        position.line(),
        position.byte(),
        position.record(),
    )
}

fn expected(input: &[u8], dialect: &CsvDialect) -> Vec<Seen> {
    let mut reader = reference(input, dialect);
    let mut record = csv::ByteRecord::new();
    let mut all = Vec::new();
    while reader.read_byte_record(&mut record).unwrap() {
        all.push(seen_by_csv(&record));
    }
    all
}

/// Hands out at most `chunk` bytes per read, as a decompressor may.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    chunk: usize,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.bytes.len() - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn actual(input: &[u8], dialect: &CsvDialect, chunk: usize, buffer: usize) -> Vec<Seen> {
    let trickle = Trickle {
        bytes: input.to_vec(),
        at: 0,
        chunk,
    };
    let mut reader = RecordReader::with_buffer(Box::new(trickle), dialect, buffer);
    let mut record = Record::new();
    let mut all = Vec::new();
    while reader.read_record(&mut record).unwrap() {
        all.push(seen(&record));
    }
    // The end stays the end.
    assert!(!reader.read_record(&mut record).unwrap());
    all
}

fn dialect(delimiter: char, quote: char, escape: Option<char>) -> CsvDialect {
    CsvDialect {
        delimiter,
        quote,
        escape,
    }
}

#[test]
fn lab_lines_quotes_blank_lines_and_line_endings_read_as_the_csv_crate_reads_them() {
    let inputs: [&[u8]; 16] = [
        b"\xEF\xBB\xBFh,x\na,b\n",
        b"\xEF\xBB\xBF\xEF\xBB\xBFh,x\n",
        b"h\n\xEF\xBB\xBFx,\"a\"b\n",
        b"\n\xEF\xBB\xBFh\n",
        b"Patient_ID,Name,DOB\nP1,Ann,01/02/1990\nP2,,\n",
        b"h\n\n\na,b\n\n",
        b"h\nno,final,newline",
        b"h\r\na,b\r\nc,d\r\n",
        b"h\ra\rb\r\r\nc\n",
        b"h\n\"quoted, with comma\",x\n\"multi\nline\",y\nz,\"\"\"\"\n",
        b"h\na,b\"c,d\nmid\"quote,\"late\"rest\n",
        b"\n\n",
        b"",
        b",\n,,\n",
        b"h\n\"unterminated,quote\nand more\n",
        "h\nJosé,Zoë,\u{1F600}\n".as_bytes(),
    ];
    let dialects = [
        CsvDialect::default(),
        dialect(';', '\'', None),
        dialect(',', '"', Some('\\')),
        dialect('\t', '"', None),
    ];
    for input in inputs {
        for dialect in &dialects {
            let want = expected(input, dialect);
            for (chunk, buffer) in [(1 << 20, BUFFER_BYTES), (1, 2), (3, 5), (7, 16)] {
                assert_eq!(
                    actual(input, dialect, chunk, buffer),
                    want,
                    "{:?} in {dialect:?}, reads of {chunk}, buffer {buffer}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }
}

#[test]
fn a_line_longer_than_the_buffer_is_read_whole() {
    let long = "x".repeat(100);
    let input = format!("h\n{long},{long}\nshort,line\n");
    let records = actual(input.as_bytes(), &CsvDialect::default(), 13, 32);
    assert_eq!(records, expected(input.as_bytes(), &CsvDialect::default()));
    assert_eq!(records[1].0, [long.as_bytes(), long.as_bytes()]);
    assert_eq!(records[2].1, 3, "the line after it");
}

#[test]
fn a_read_error_is_returned_not_taken_for_the_end() {
    struct Broken(bool);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if std::mem::replace(&mut self.0, true) {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated"));
            }
            buf[..4].copy_from_slice(b"h\na,");
            Ok(4)
        }
    }
    let mut reader = RecordReader::new(Box::new(Broken(false)), &CsvDialect::default());
    let mut record = Record::new();
    assert!(reader.read_record(&mut record).unwrap());
    let error = reader.read_record(&mut record).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(
        reader.position().line(),
        2,
        "where the unread record starts"
    );
    assert!(
        !reader.read_record(&mut record).unwrap(),
        "an error ends the reader"
    );
    assert!(record.is_empty());
}

/// Bytes that matter to one of the dialects below, and two that matter to none.
fn csv_byte() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![
        b'a', b'b', b' ', b',', b';', b'"', b'\'', b'\\', b'\n', b'\r', 0xC3, 0xA9,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]
    #[test]
    fn any_input_reads_as_the_csv_crate_reads_it(
        bom in any::<bool>(),
        text in prop::collection::vec(csv_byte(), 0..200),
        which in 0usize..5,
        chunk in 1usize..40,
        buffer in 2usize..48,
    ) {
        let dialect = match which {
            0 => CsvDialect::default(),
            1 => dialect(';', '\'', None),
            2 => dialect(',', '"', Some('\\')),
            3 => dialect(';', '"', Some('\'')),
            _ => dialect('\n', '"', None),
        };
        let input = [if bom { &b"\xEF\xBB\xBF"[..] } else { &[] }, &text].concat();
        let want = expected(&input, &dialect);
        prop_assert_eq!(actual(&input, &dialect, chunk, buffer), want.clone());
        prop_assert_eq!(actual(&input, &dialect, 1 << 20, BUFFER_BYTES), want);
    }
}

#[test]
fn text_is_refused_when_a_field_is_not_utf8_even_if_the_bytes_together_are() {
    // "é" is C3 A9, split across two quoted fields: on a line of its own (the line copy is
    // not UTF-8), and ended by CRLF, which `csv_core` reads (fields concatenated, the buffer
    // valid UTF-8, the field boundary inside the character).
    let input = b"h\n\"a\xC3\",\"\xA9b\"\n\"a\xC3\",\"\xA9b\"\r\nok,\xC3\xA9\n";
    let mut reader = RecordReader::new(Box::new(&input[..]), &CsvDialect::default());
    let mut record = Record::new();
    assert!(reader.read_record(&mut record).unwrap());
    for _ in 0..2 {
        assert!(reader.read_record(&mut record).unwrap());
        assert_eq!(record.len(), 2);
        assert!(record.text().is_none(), "a character split across fields");
    }
    assert!(reader.read_record(&mut record).unwrap());
    let text: Vec<&str> = record.text().unwrap().collect();
    assert_eq!(text, ["ok", "é"]);
    assert!(
        format!("{record:?}").contains("fields: 2"),
        "Debug shows no field"
    );
    assert!(!format!("{record:?}").contains("ok"));
    // Equal fields are equal records, however they lie in the buffer.
    let mut from_fields = Record::from_fields(["ok", "é"]);
    from_fields.position = record.position().clone();
    assert_eq!(from_fields, record);
}

//! Deterministic, realistic lab-result snapshots, and the exact changes between two of them.
//!
//! A [`Snapshot`] models one full COVID-19 electronic lab report (ELR) file as a state health
//! department receives it: every result since the beginning of time, one row per
//! (facility CLIA, accession number, LOINC test code). [`Snapshot::next`] derives the file the
//! lab sends half an hour later and returns the [`ChangeSet`] a correct change detector must
//! emit — exact key sets, so tests assert sets rather than counts. [`Snapshot::write`] renders
//! a snapshot the ways real labs get it wrong or merely different: gzip/zstd, BOM, Latin-1,
//! CRLF, shuffled, extra or missing columns, and dirty rows whose physical line numbers are
//! reported so reject handling can be checked line by line.
//!
//! Everything is a pure function of the seeds: the same `(rows, seed)` gives byte-identical
//! files. Rows keep all 27 fields in one allocation, so the 2M-row benchmark snapshots fit in
//! memory and generate in seconds.
//!
//! Each row also keeps what its dates, timestamp and sex code *mean* (the values the generator
//! chose before formatting them), so [`LabRow::value`] answers "what must a correct reader make
//! of this cell" without parsing the generator's own text back; [`Snapshot::write_to`] reports
//! every record as written (its line, and its dirt), so a test can know what a correct reader
//! accepts from a file without reading it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{Datelike, Duration as ChronoDuration, NaiveDate, NaiveDateTime, Timelike};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use snapfeed_runtime::record_key::{KeyCase, RecordKey};

/// A record key: `(Facility_CLIA, Accession_Number, Test_Code)`.
pub type KeyTuple = (String, String, String);

/// The canonical record key of a generator key (the lab-results mapping's key rules).
pub fn canonical_key(key: &KeyTuple) -> String {
    RecordKey::build(
        [key.0.as_str(), key.1.as_str(), key.2.as_str()],
        &[KeyCase::Upper, KeyCase::Preserve, KeyCase::Preserve],
    )
    .expect("generated keys are complete")
    .into_string()
}

/// The CSV header in canonical order, spelled exactly as the lab writes it.
pub const COLUMNS: [&str; 27] = [
    "Patient_ID",
    "Patient_Last_Name",
    "Patient_First_Name",
    "Patient_DOB",
    "Patient_Sex",
    "Patient_Race",
    "Patient_Ethnicity",
    "Patient_Street",
    "Patient_City",
    "Patient_Zip",
    "Patient_County",
    "Patient_Phone",
    "Facility_Name",
    "Facility_CLIA",
    "Ordering_Provider_NPI",
    "Specimen_ID",
    "Specimen_Collection_Date",
    "Specimen_Type",
    "Test_Name",
    "Test_Code",
    "Test_Result",
    "Test_Result_Code",
    "Result_Date",
    "Date_Reported",
    "Accession_Number",
    "Device_ID",
    "Report_Generated_At",
];

const PATIENT_DOB: usize = 3;
const PATIENT_SEX: usize = 4;
const PATIENT_STREET: usize = 7;
const PATIENT_PHONE: usize = 11;
const FACILITY_CLIA: usize = 13;
const SPECIMEN_COLLECTION_DATE: usize = 16;
const TEST_NAME: usize = 18;
const TEST_CODE: usize = 19;
const TEST_RESULT: usize = 20;
const TEST_RESULT_CODE: usize = 21;
const RESULT_DATE: usize = 22;
const DATE_REPORTED: usize = 23;
const ACCESSION_NUMBER: usize = 24;
const DEVICE_ID: usize = 25;
const REPORT_GENERATED_AT: usize = 26;

/// Position of `column` in [`COLUMNS`], if it is one of them.
pub fn column_index(column: &str) -> Option<usize> {
    COLUMNS.iter().position(|c| *c == column)
}

/// One lab result: the 27 [`COLUMNS`] as text, stored in a single allocation, and the typed
/// values behind the text of its date, timestamp and sex columns.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LabRow {
    /// All field values concatenated in canonical order.
    text: Box<str>,
    /// End offset of each field in `text`; a field starts where the previous one ends.
    ends: [u16; 27],
    /// Days from CE of the [`DATE_COLUMNS`], in that order.
    dates: [i32; 4],
    /// `Report_Generated_At`, seconds since 1970-01-01 (written without a zone).
    generated_at: i64,
    /// `Patient_Sex`: index into [`SEX_SPELLINGS`].
    sex: u8,
}

/// The columns holding a date, in the order [`LabRow`] keeps their days.
const DATE_COLUMNS: [usize; 4] = [
    PATIENT_DOB,
    SPECIMEN_COLLECTION_DATE,
    RESULT_DATE,
    DATE_REPORTED,
];

/// How labs spell a patient's sex, and the code each spelling means.
const SEX_SPELLINGS: [(&str, &str); 6] = [
    ("F", "F"),
    ("M", "M"),
    ("U", "U"),
    ("Male", "M"),
    ("female", "F"),
    ("Female", "F"),
];

/// What a generated cell means: what a correct reader must make of its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// The text itself (empty: no value).
    Text,
    /// A calendar date, written `%m/%d/%Y` (some dates of birth `%Y-%m-%d`).
    Date(NaiveDate),
    /// A moment without zone, written `%Y-%m-%d %H:%M:%S`.
    DateTime(NaiveDateTime),
    /// A code from a small set, written in one of several spellings (sex: `F`, `female`, …).
    Code(&'static str),
}

/// One cell of a row: the text written and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value<'r> {
    /// The text as written (before CSV quoting and encoding).
    pub text: Cow<'r, str>,
    /// What it stands for.
    pub meaning: Meaning,
}

impl LabRow {
    /// The record key `(Facility_CLIA, Accession_Number, Test_Code)`.
    pub fn key(&self) -> KeyTuple {
        (
            self.field(FACILITY_CLIA).to_owned(),
            self.field(ACCESSION_NUMBER).to_owned(),
            self.field(TEST_CODE).to_owned(),
        )
    }

    /// The value of `column` (a name from [`COLUMNS`]), or `None` for an unknown column.
    pub fn get(&self, column: &str) -> Option<&str> {
        column_index(column).map(|i| self.field(i))
    }

    /// All 27 values in canonical ([`COLUMNS`]) order.
    pub fn values(&self) -> [&str; 27] {
        std::array::from_fn(|i| self.field(i))
    }

    /// The value of `column` (a name from [`COLUMNS`]) with its meaning, or `None` for an
    /// unknown column.
    pub fn value(&self, column: &str) -> Option<Value<'_>> {
        let i = column_index(column)?;
        let text = self.field(i);
        let meaning = if let Some(d) = DATE_COLUMNS.iter().position(|c| *c == i) {
            Meaning::Date(day(self.dates[d]))
        } else if i == REPORT_GENERATED_AT {
            Meaning::DateTime(
                chrono::DateTime::from_timestamp(self.generated_at, 0)
                    .expect("generated times are in range")
                    .naive_utc(),
            )
        } else if i == PATIENT_SEX {
            Meaning::Code(SEX_SPELLINGS[usize::from(self.sex)].1)
        } else {
            Meaning::Text
        };
        Some(Value {
            text: Cow::Borrowed(text),
            meaning,
        })
    }

    /// This row with a line break (and a second address line) inside its street, as labs
    /// that export multi-line address fields write it.
    fn with_line_break_in_street(&self) -> LabRow {
        let mut row = self.clone();
        let street = format!("{}\nBldg 2", self.field(PATIENT_STREET));
        row.set(PATIENT_STREET, &street);
        row
    }

    fn field(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            usize::from(self.ends[i - 1])
        };
        &self.text[start..usize::from(self.ends[i])]
    }

    fn set(&mut self, i: usize, value: &str) {
        let start = if i == 0 {
            0
        } else {
            usize::from(self.ends[i - 1])
        };
        let end = usize::from(self.ends[i]);
        let mut text = String::from(std::mem::take(&mut self.text));
        text.replace_range(start..end, value);
        let new_end = start + value.len();
        for e in &mut self.ends[i..] {
            *e = u16::try_from(usize::from(*e) + new_end - end).expect("row text under 64 KiB");
        }
        self.text = text.into_boxed_str();
    }
}

impl fmt::Debug for LabRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(COLUMNS.iter().zip(self.values()))
            .finish()
    }
}

/// Builds rows field by field in a reused buffer; each finished row costs one allocation.
struct RowBuilder {
    text: String,
    ends: [u16; 27],
    fields: usize,
    dates: [i32; 4],
    generated_at: i64,
    sex: u8,
}

impl RowBuilder {
    fn new() -> Self {
        Self {
            text: String::with_capacity(512),
            ends: [0; 27],
            fields: 0,
            dates: [0; 4],
            generated_at: 0,
            sex: 0,
        }
    }

    /// Writes `date` as the next field, `%m/%d/%Y` (or `%Y-%m-%d` when `iso`), and keeps it.
    fn push_date(&mut self, date: NaiveDate, iso: bool) {
        let d = DATE_COLUMNS
            .iter()
            .position(|c| *c == self.fields)
            .expect("a date column");
        self.dates[d] = date.num_days_from_ce();
        if iso {
            push_iso_date(&mut self.text, date);
        } else {
            push_us_date(&mut self.text, date);
        }
        self.end_field();
    }

    fn end_field(&mut self) {
        self.ends[self.fields] = u16::try_from(self.text.len()).expect("row text under 64 KiB");
        self.fields += 1;
    }

    fn push(&mut self, value: &str) {
        self.text.push_str(value);
        self.end_field();
    }

    fn finish(&mut self) -> LabRow {
        assert_eq!(self.fields, COLUMNS.len(), "every column filled");
        let row = LabRow {
            text: Box::from(self.text.as_str()),
            ends: self.ends,
            dates: self.dates,
            generated_at: self.generated_at,
            sex: self.sex,
        };
        self.text.clear();
        self.fields = 0;
        row
    }
}

/// Share of rows changed between one snapshot and the next, each in `0.0..=1.0`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SnapshotDelta {
    /// Share of existing rows whose tracked content changes (result, result date, phone, street).
    pub updated: f64,
    /// New rows appended with never-seen keys, as a share of the existing row count.
    pub added: f64,
    /// Share of existing rows dropped from the file.
    pub removed: f64,
}

/// The keys a correct change detector reports between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Keys absent from the previous snapshot.
    pub created: BTreeSet<KeyTuple>,
    /// Keys whose content changed, ignoring the volatile `Report_Generated_At`.
    pub updated: BTreeSet<KeyTuple>,
    /// Keys absent from the new snapshot.
    pub removed: BTreeSet<KeyTuple>,
}

/// Source of the never-repeating identifiers, carried from snapshot to snapshot so added rows
/// never reuse a key.
#[derive(Debug, Clone)]
struct Serials {
    patient: u64,
    specimen: u64,
    accession: u64,
}

/// A full snapshot file's rows plus what is needed to derive the next one.
#[derive(Clone)]
pub struct Snapshot {
    rows: Vec<LabRow>,
    /// Simulated time the lab generated the file; every row's `Report_Generated_At`.
    generated_at: NaiveDateTime,
    /// Seed this snapshot was made with; also seeds the dirty-row choices of [`Snapshot::write`].
    seed: u64,
    serials: Serials,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("rows", &self.rows.len())
            .field("generated_at", &self.generated_at)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// Minutes between two snapshots: the lab sends a file every half hour.
const SNAPSHOT_INTERVAL_MINUTES: i64 = 30;

impl Snapshot {
    /// A first snapshot of exactly `rows` rows with distinct keys, a pure function of the seed.
    pub fn initial(rows: usize, seed: u64) -> Snapshot {
        let mut rng = SmallRng::seed_from_u64(seed);
        let start = NaiveDate::from_ymd_opt(2021, 3, 1)
            .and_then(|d| d.and_hms_opt(6, 0, 0))
            .expect("valid start time");
        let generated_at = start
            + ChronoDuration::minutes(i64::try_from(seed % 10_000).expect("small") * 7)
            + ChronoDuration::seconds(i64::try_from(seed % 60).expect("small"));
        let first_day = NaiveDate::from_ymd_opt(2020, 3, 1)
            .expect("valid")
            .num_days_from_ce();
        let period = Period::new(generated_at, first_day);
        let mut serials = Serials {
            patient: 1_000_000,
            specimen: 100_000_000,
            accession: 2_100_000_000,
        };
        let mut builder = RowBuilder::new();
        let mut out = Vec::with_capacity(rows);
        append_rows(
            &mut out,
            rows,
            &mut rng,
            &mut serials,
            &period,
            &mut builder,
        );
        Snapshot {
            rows: out,
            generated_at,
            seed,
            serials,
        }
    }

    /// Derives the snapshot the lab sends next, and exactly what changed.
    ///
    /// `delta.updated` of the rows get a tracked field changed (test result and its code, result
    /// date, patient phone or street), `delta.added` new keys are appended, `delta.removed` rows
    /// are dropped; updated and removed rows are disjoint. `Report_Generated_At` moves on half
    /// an hour for every row without counting as a change.
    pub fn next(&self, delta: SnapshotDelta, seed: u64) -> (Snapshot, ChangeSet) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let generated_at = self.generated_at + ChronoDuration::minutes(SNAPSHOT_INTERVAL_MINUTES);
        let n = self.rows.len();
        let share = |s: f64| -> usize {
            assert!(
                (0.0..=1.0).contains(&s),
                "delta shares are within 0.0..=1.0, got {s}"
            );
            // A share in 0..=1 of a row count: the rounded product is a row count too.
            (n as f64 * s).round() as usize
        };
        let (n_removed, n_updated, n_added) = (
            share(delta.removed),
            share(delta.updated),
            share(delta.added),
        );
        assert!(
            n_removed + n_updated <= n,
            "updated + removed shares exceed the snapshot"
        );

        const KEEP: u8 = 0;
        const UPDATE: u8 = 1;
        const REMOVE: u8 = 2;
        let mut fate = vec![KEEP; n];
        let picked = rand::seq::index::sample(&mut rng, n, n_removed + n_updated).into_vec();
        for (j, i) in picked.into_iter().enumerate() {
            fate[i] = if j < n_removed { REMOVE } else { UPDATE };
        }

        // New results were collected in the last few days before this file was generated.
        let period = Period::new(generated_at, generated_at.date().num_days_from_ce() - 3);
        let mut changes = ChangeSet::default();
        let mut rows = Vec::with_capacity(n - n_removed + n_added);
        let mut scratch = String::new();
        for (row, fate) in self.rows.iter().zip(fate) {
            if fate == REMOVE {
                changes.removed.insert(row.key());
                continue;
            }
            let mut row = row.clone();
            row.set(REPORT_GENERATED_AT, &period.generated_at);
            row.generated_at = period.at.and_utc().timestamp();
            if fate == UPDATE {
                update_tracked_field(&mut row, &mut rng, &mut scratch);
                changes.updated.insert(row.key());
            }
            rows.push(row);
        }

        let mut serials = self.serials.clone();
        let before = rows.len();
        append_rows(
            &mut rows,
            n_added,
            &mut rng,
            &mut serials,
            &period,
            &mut RowBuilder::new(),
        );
        changes
            .created
            .extend(rows[before..].iter().map(LabRow::key));

        (
            Snapshot {
                rows,
                generated_at,
                seed,
                serials,
            },
            changes,
        )
    }

    /// The first `rows` rows of this snapshot as a snapshot of their own (same generation
    /// time): what the lab's file looked like when it was smaller. Keys stay distinct.
    pub fn prefix(&self, rows: usize) -> Snapshot {
        Snapshot {
            rows: self.rows[..rows.min(self.rows.len())].to_vec(),
            generated_at: self.generated_at,
            seed: self.seed,
            serials: self.serials.clone(),
        }
    }

    /// The rows, in file order.
    pub fn rows(&self) -> &[LabRow] {
        &self.rows
    }

    /// The simulated time the lab generated this file (every row's `Report_Generated_At`).
    pub fn generated_at(&self) -> NaiveDateTime {
        self.generated_at
    }

    /// Writes the snapshot as a CSV file (RFC 4180 quoting) shaped by `options`.
    ///
    /// Dirty rows are chosen deterministically from the snapshot's seed; the returned
    /// [`WrittenFile`] says where each one starts and which keys a correct reader accepts.
    pub fn write(&self, path: &Path, options: &WriteOptions) -> io::Result<WrittenFile> {
        let file = BufWriter::with_capacity(256 * 1024, File::create(path)?);
        let mut written = self.write_to(file, options, |_| {})?;
        written.path = path.to_path_buf();
        Ok(written)
    }

    /// Writes the bytes [`Snapshot::write`] puts in a file to `out` instead (e.g. a hasher),
    /// and shows `visit` every data record as written, in file order. The returned
    /// [`WrittenFile`] has an empty `path`.
    pub fn write_to<W: Write>(
        &self,
        out: W,
        options: &WriteOptions,
        mut visit: impl FnMut(&WrittenRecord<'_>),
    ) -> io::Result<WrittenFile> {
        let header = header_columns(options);
        let plan = DirtPlan::new(self, &options.dirt, &header);
        let newline = if options.crlf { "\r\n" } else { "\n" };

        let mut sink = match options.compression {
            Compression::None => Sink::Plain(out),
            Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::fast(),
            )),
            Compression::Zstd => Sink::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
        };
        let mut out = Output {
            sink: &mut sink,
            encoding: options.encoding,
            chunk: Vec::with_capacity(128 * 1024),
        };
        if options.encoding == Encoding::Utf8Bom {
            out.chunk.extend_from_slice(b"\xEF\xBB\xBF");
        }

        let mut record = String::with_capacity(1024);
        for (i, (name, _)) in header.iter().enumerate() {
            if i > 0 {
                record.push(',');
            }
            push_csv_field(&mut record, name);
        }
        record.push_str(newline);
        out.write(&record)?;

        let mut written = WrittenFile {
            path: PathBuf::new(),
            columns: header.iter().map(|(name, _)| name.clone()).collect(),
            data_rows: 0,
            dirty: Vec::new(),
            accepted_keys: BTreeSet::new(),
        };
        let mut line: u64 = 2;
        let mut duplicates = plan.duplicates.iter().peekable();
        for (i, row) in self.rows.iter().enumerate() {
            let dirt = plan.rows.get(&i).copied();
            // A quoted line break is part of the value as written, so the row carries it.
            let with_line_break;
            let row = match dirt {
                Some(RowDirt::QuotedNewline) => {
                    with_line_break = row.with_line_break_in_street();
                    &with_line_break
                }
                _ => row,
            };
            record.clear();
            let lines = push_record(&mut record, row, i, &header, dirt, newline);
            if let Some(dirt) = dirt {
                written.dirty.push(DirtyRow {
                    line,
                    kind: dirt.kind(),
                    key: row.key(),
                    column: Some(dirt.column()),
                });
            }
            visit(&WrittenRecord {
                line,
                row,
                dirt,
                index: i,
                header: &header,
            });
            line += lines;
            out.write(&record)?;
            written.data_rows += 1;

            while let Some((_, duplicate)) = duplicates.next_if(|(after, _)| *after == i) {
                record.clear();
                let lines = push_record(&mut record, duplicate, i, &header, None, newline);
                written.dirty.push(DirtyRow {
                    line,
                    kind: DirtKind::DuplicateKey,
                    key: duplicate.key(),
                    column: Some(COLUMNS[TEST_RESULT]),
                });
                visit(&WrittenRecord {
                    line,
                    row: duplicate,
                    dirt: Some(RowDirt::DuplicateKey),
                    index: i,
                    header: &header,
                });
                line += lines;
                out.write(&record)?;
                written.data_rows += 1;
            }
        }
        for _ in 0..options.dirt.trailing_blank_lines {
            out.write(newline)?;
        }
        out.flush_chunk()?;
        sink.finish()?;

        written.accepted_keys = self
            .rows
            .iter()
            .enumerate()
            .filter(|(i, _)| plan.rows.get(i).is_none_or(|d| !d.kind().is_rejected()))
            .map(|(_, row)| row.key())
            .collect();
        Ok(written)
    }
}

/// One data record as [`Snapshot::write_to`] wrote it.
#[derive(Debug)]
pub struct WrittenRecord<'a> {
    /// 1-based physical line where the record starts (the header is line 1).
    pub line: u64,
    /// The row written; a row with a quoted line break carries it in its street.
    pub row: &'a LabRow,
    dirt: Option<RowDirt>,
    /// The row's position in the snapshot (filler values of extra columns derive from it).
    index: usize,
    header: &'a [(String, Source)],
}

impl WrittenRecord<'_> {
    /// What is wrong or unusual about the record, if anything.
    pub fn dirt(&self) -> Option<DirtKind> {
        self.dirt.map(RowDirt::kind)
    }

    /// Whether a correct reader accepts the record (it may still be unusual).
    pub fn is_accepted(&self) -> bool {
        self.dirt().is_none_or(|d| !d.is_rejected())
    }

    /// The value written under `column` (a header name exactly as written), or `None` when
    /// the file has no such column. A cell the record's dirt spoiled means only its text.
    pub fn value(&self, column: &str) -> Option<Value<'_>> {
        let (_, source) = self.header.iter().find(|(name, _)| name == column)?;
        match *source {
            Source::Column(c) => match self.dirt {
                Some(dirt) if dirt.spoils(c) => Some(Value {
                    text: Cow::Borrowed(dirt.written().unwrap_or_default()),
                    meaning: Meaning::Text,
                }),
                _ => self.row.value(COLUMNS[c]),
            },
            Source::Extra(k) => {
                let mut text = String::new();
                push_extra(&mut text, k, self.index);
                Some(Value {
                    text: Cow::Owned(text),
                    meaning: Meaning::Text,
                })
            }
        }
    }

    /// The header as written: the names [`WrittenRecord::value`] knows.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.header.iter().map(|(name, _)| name.as_str())
    }
}

/// How the written file is compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// Plain CSV.
    #[default]
    None,
    /// gzip (`.csv.gz`).
    Gzip,
    /// zstd (`.csv.zst`).
    Zstd,
}

impl Compression {
    /// The compression a benchmark names `plain`, `gzip` or `zstd`, and the file name it
    /// writes it under; `None` for any other label.
    pub fn from_label(label: &str) -> Option<(Compression, &'static str)> {
        match label {
            "plain" => Some((Compression::None, "elr.csv")),
            "gzip" => Some((Compression::Gzip, "elr.csv.gz")),
            "zstd" => Some((Compression::Zstd, "elr.csv.zst")),
            _ => None,
        }
    }
}

impl Snapshot {
    /// Writes this snapshot once per label (`plain`, `gzip`, `zstd`, see
    /// [`Compression::from_label`]) into `dir`, otherwise as [`WriteOptions::default`]; returns
    /// each label with its file.
    pub fn write_compressed(
        &self,
        dir: &Path,
        labels: &[&str],
    ) -> io::Result<Vec<(String, PathBuf)>> {
        labels
            .iter()
            .map(|label| {
                let (compression, name) = Compression::from_label(label).ok_or_else(|| {
                    io::Error::other(format!("{label:?} is not plain, gzip or zstd"))
                })?;
                let path = dir.join(name);
                self.write(
                    &path,
                    &WriteOptions {
                        compression,
                        ..WriteOptions::default()
                    },
                )?;
                Ok((label.to_string(), path))
            })
            .collect()
    }
}

/// How the written file's text is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    /// UTF-8 without a byte-order mark.
    #[default]
    Utf8,
    /// UTF-8 preceded by the `EF BB BF` byte-order mark, as Excel writes it.
    Utf8Bom,
    /// ISO-8859-1: one byte per character (all generated text is representable).
    Latin1,
}

/// Order of the header's columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ColumnOrder {
    /// [`COLUMNS`] order, extra columns last.
    #[default]
    Canonical,
    /// Every written column (extras included) shuffled with this seed.
    Shuffled(u64),
    /// Exactly these columns in this order; names outside [`COLUMNS`] get filler values.
    Explicit(Vec<String>),
}

/// How many dirty rows a written file contains; all zero by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dirt {
    /// Rows whose `Specimen_Collection_Date` is unparseable (rejected).
    pub bad_dates: usize,
    /// Rows whose required `Test_Result` is empty (rejected).
    pub missing_required: usize,
    /// Extra rows repeating an earlier row's key with a different `Test_Result` (rejected:
    /// the first occurrence wins).
    pub duplicate_keys: usize,
    /// Valid rows whose `Patient_Street` holds a quoted line break (accepted).
    pub quoted_newlines: usize,
    /// Empty lines after the last record.
    pub trailing_blank_lines: usize,
}

/// Everything that shapes a written file besides its rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Compression of the whole file.
    pub compression: Compression,
    /// Text encoding.
    pub encoding: Encoding,
    /// End records with CRLF instead of LF.
    pub crlf: bool,
    /// Header order; applied to the written columns after `extra_columns` and `omit_columns`.
    pub column_order: ColumnOrder,
    /// Dirty rows to include.
    pub dirt: Dirt,
    /// Columns the reader does not know, appended (unless already named) with filler values.
    pub extra_columns: Vec<String>,
    /// Columns left out, e.g. to produce a file missing a required column.
    pub omit_columns: Vec<String>,
}

/// What [`Snapshot::write`] put in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Where the file is.
    pub path: PathBuf,
    /// The header as written.
    pub columns: Vec<String>,
    /// Data records written, dirty ones and duplicates included.
    pub data_rows: usize,
    /// Every dirty record, in file order.
    pub dirty: Vec<DirtyRow>,
    /// Keys a correct reader accepts from this file, provided the file as a whole is accepted
    /// (a file missing a required column is failed whole, so then none are).
    pub accepted_keys: BTreeSet<KeyTuple>,
}

/// One dirty record of a written file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyRow {
    /// 1-based physical line where the record starts (the header is line 1); counts embedded
    /// line breaks, with CRLF counting once.
    pub line: u64,
    /// What is wrong (or merely unusual) with it.
    pub kind: DirtKind,
    /// The record's key.
    pub key: KeyTuple,
    /// The column that carries the dirt.
    pub column: Option<&'static str>,
}

/// Kinds of dirty record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtKind {
    /// Unparseable `Specimen_Collection_Date`: rejected.
    BadDate,
    /// Empty `Test_Result`: rejected.
    MissingRequired,
    /// A key already seen earlier in the file: rejected, the first occurrence wins.
    DuplicateKey,
    /// A valid row whose `Patient_Street` contains a line break inside quotes: accepted.
    QuotedNewline,
}

impl DirtKind {
    /// Whether a correct reader sends the record to rejects.
    pub fn is_rejected(self) -> bool {
        !matches!(self, DirtKind::QuotedNewline)
    }
}

/// Values a lab might put in a date column that no date format accepts.
const BAD_DATES: [&str; 5] = [
    "13/45/2021",
    "yesterday",
    "02/30/2021",
    "2021-13-01",
    "3/14/21 9am",
];

/// Dirt applied to a row when it is written.
#[derive(Debug, Clone, Copy)]
enum RowDirt {
    BadDate(&'static str),
    MissingRequired,
    QuotedNewline,
    /// A copy of an earlier row's key (the row itself is written as it is).
    DuplicateKey,
}

impl RowDirt {
    fn kind(self) -> DirtKind {
        match self {
            RowDirt::BadDate(_) => DirtKind::BadDate,
            RowDirt::MissingRequired => DirtKind::MissingRequired,
            RowDirt::QuotedNewline => DirtKind::QuotedNewline,
            RowDirt::DuplicateKey => DirtKind::DuplicateKey,
        }
    }

    fn column(self) -> &'static str {
        COLUMNS[self.column_index()]
    }

    fn column_index(self) -> usize {
        match self {
            RowDirt::BadDate(_) => SPECIMEN_COLLECTION_DATE,
            RowDirt::MissingRequired | RowDirt::DuplicateKey => TEST_RESULT,
            RowDirt::QuotedNewline => PATIENT_STREET,
        }
    }

    /// Whether the dirt writes other text than the row's own in column `c`.
    fn spoils(self, c: usize) -> bool {
        matches!(self, RowDirt::BadDate(_) | RowDirt::MissingRequired) && c == self.column_index()
    }

    /// The text written in the spoiled column.
    fn written(self) -> Option<&'static str> {
        match self {
            RowDirt::BadDate(value) => Some(value),
            RowDirt::MissingRequired => Some(""),
            _ => None,
        }
    }
}

/// Which rows are written dirty, and the duplicate rows inserted after which row.
struct DirtPlan {
    rows: BTreeMap<usize, RowDirt>,
    /// `(index of the row it follows, duplicate row)`, sorted by that index.
    duplicates: Vec<(usize, LabRow)>,
}

impl DirtPlan {
    fn new(snapshot: &Snapshot, dirt: &Dirt, header: &[(String, Source)]) -> Self {
        let n = snapshot.rows.len();
        let total =
            dirt.bad_dates + dirt.missing_required + dirt.quoted_newlines + dirt.duplicate_keys;
        assert!(
            total <= n,
            "{total} dirty rows requested from a {n}-row snapshot"
        );
        let written = |column: usize| header.iter().any(|(_, s)| *s == Source::Column(column));
        for (count, column) in [
            (dirt.bad_dates, SPECIMEN_COLLECTION_DATE),
            (dirt.missing_required, TEST_RESULT),
            (dirt.quoted_newlines, PATIENT_STREET),
            (dirt.duplicate_keys, TEST_RESULT),
        ] {
            assert!(
                count == 0 || written(column),
                "dirt needs column {} in the file",
                COLUMNS[column]
            );
        }

        let mut rng = SmallRng::seed_from_u64(snapshot.seed ^ 0x5EED_D127_0000_0001);
        let picked = rand::seq::index::sample(&mut rng, n, total).into_vec();
        let (bad, rest) = picked.split_at(dirt.bad_dates);
        let (missing, rest) = rest.split_at(dirt.missing_required);
        let (quoted, sources) = rest.split_at(dirt.quoted_newlines);
        let mut rows = BTreeMap::new();
        for &i in bad {
            rows.insert(
                i,
                RowDirt::BadDate(BAD_DATES[rng.gen_range(0..BAD_DATES.len())]),
            );
        }
        rows.extend(missing.iter().map(|&i| (i, RowDirt::MissingRequired)));
        rows.extend(quoted.iter().map(|&i| (i, RowDirt::QuotedNewline)));

        let mut duplicates: Vec<(usize, LabRow)> = sources
            .iter()
            .map(|&s| {
                let mut row = snapshot.rows[s].clone();
                let (result, code) = other_result(row.field(TEST_RESULT), &mut rng);
                row.set(TEST_RESULT, result);
                row.set(TEST_RESULT_CODE, code);
                (rng.gen_range(s..n), row)
            })
            .collect();
        duplicates.sort_by_key(|(after, _)| *after);
        Self { rows, duplicates }
    }
}

/// Where a written column's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Index into [`COLUMNS`].
    Column(usize),
    /// The n-th unknown column: filler values.
    Extra(usize),
}

fn header_columns(options: &WriteOptions) -> Vec<(String, Source)> {
    let mut names: Vec<String> = match &options.column_order {
        ColumnOrder::Explicit(names) => names.clone(),
        _ => COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
    };
    for extra in &options.extra_columns {
        if !names.contains(extra) {
            names.push(extra.clone());
        }
    }
    names.retain(|name| !options.omit_columns.contains(name));
    if let ColumnOrder::Shuffled(seed) = options.column_order {
        names.shuffle(&mut SmallRng::seed_from_u64(seed));
    }
    let mut extras = 0;
    names
        .into_iter()
        .map(|name| {
            let source = column_index(&name).map_or_else(
                || {
                    extras += 1;
                    Source::Extra(extras - 1)
                },
                Source::Column,
            );
            (name, source)
        })
        .collect()
}

/// Appends one CSV record (with its terminator) for `row`, the `index`-th row of the snapshot,
/// and returns how many physical lines it spans.
fn push_record(
    out: &mut String,
    row: &LabRow,
    index: usize,
    header: &[(String, Source)],
    dirt: Option<RowDirt>,
    newline: &str,
) -> u64 {
    let mut lines = 1;
    for (i, (_, source)) in header.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match *source {
            Source::Column(c) => match dirt {
                Some(d) if d.spoils(c) => out.push_str(d.written().unwrap_or_default()),
                _ => lines += push_csv_field(out, row.field(c)),
            },
            Source::Extra(k) => push_extra(out, k, index),
        }
    }
    out.push_str(newline);
    lines
}

/// The filler value of the `k`-th extra column in the record of the `index`-th row.
fn push_extra(out: &mut String, k: usize, index: usize) {
    out.push('x');
    push_number(out, k as u64, 1);
    out.push('-');
    push_number(out, index as u64, 1);
}

/// Appends `value` quoted per RFC 4180 when it holds a delimiter, quote or line break.
/// Returns the line breaks inside the value: each one starts another physical line.
fn push_csv_field(out: &mut String, value: &str) -> u64 {
    if value
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        out.push('"');
        for (i, part) in value.split('"').enumerate() {
            if i > 0 {
                out.push_str("\"\"");
            }
            out.push_str(part);
        }
        out.push('"');
        value.matches('\n').count() as u64
    } else {
        out.push_str(value);
        0
    }
}

/// Encodes records and hands them to the sink in large chunks.
struct Output<'a, W: Write> {
    sink: &'a mut Sink<W>,
    encoding: Encoding,
    chunk: Vec<u8>,
}

impl<W: Write> Output<'_, W> {
    fn write(&mut self, text: &str) -> io::Result<()> {
        if self.encoding == Encoding::Latin1 && !text.is_ascii() {
            for ch in text.chars() {
                let byte = u8::try_from(u32::from(ch))
                    .unwrap_or_else(|_| panic!("{ch:?} is not representable in Latin-1"));
                self.chunk.push(byte);
            }
        } else {
            self.chunk.extend_from_slice(text.as_bytes());
        }
        if self.chunk.len() >= 64 * 1024 {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        self.sink.write_all(&self.chunk)?;
        self.chunk.clear();
        Ok(())
    }
}

enum Sink<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Sink<W> {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.write_all(bytes),
            Sink::Gzip(w) => w.write_all(bytes),
            Sink::Zstd(w) => w.write_all(bytes),
        }
    }

    fn finish(self) -> io::Result<()> {
        let mut file = match self {
            Sink::Plain(w) => w,
            Sink::Gzip(w) => w.finish()?,
            Sink::Zstd(w) => w.finish()?,
        };
        file.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// Row content: pools of realistic values (fictional people, real code systems).

const LAST_NAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "O'Brien",
    "Van der Berg",
];
const LATIN1_LAST_NAMES: &[&str] = &[
    "Müller",
    "Peña",
    "Núñez",
    "Gómez",
    "Sørensen",
    "Ibáñez",
    "Björk",
    "Lefèvre",
];
const FIRST_NAMES: &[&str] = &[
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Carlos",
    "Karen",
    "Daniel",
    "Lisa",
    "Matthew",
    "Nancy",
    "Anthony",
    "Sandra",
    "Mark",
    "Ashley",
    "Luis",
    "Emily",
    "Wei",
    "Mai",
    "Ahmed",
    "Fatima",
    "Mary Ann",
    "Jean-Paul",
];
const LATIN1_FIRST_NAMES: &[&str] = &[
    "José",
    "Zoë",
    "Renée",
    "Chloé",
    "Jesús",
    "María",
    "Søren",
    "Inês",
    "François",
];
const RACES: &[&str] = &[
    "White",
    "White",
    "White",
    "Black or African American",
    "Asian",
    "Asian, Indian",
    "American Indian or Alaska Native",
    "Native Hawaiian or Other Pacific Islander",
    "Other Race",
    "Other, multiracial",
    "Unknown",
    "Refused to answer",
];
const ETHNICITIES: &[&str] = &[
    "Not Hispanic or Latino",
    "Not Hispanic or Latino",
    "Not Hispanic or Latino",
    "Hispanic or Latino",
    "Hispanic, Latino/a, or Spanish origin",
    "Unknown",
];
const STREETS: &[&str] = &[
    "Main",
    "Maple",
    "Oak",
    "Pine",
    "Colfax",
    "Broadway",
    "Elm",
    "Cedar",
    "Aspen",
    "Lincoln",
    "Washington",
    "Sheridan",
    "Federal",
    "Alameda",
    "Evans",
    "Mississippi",
    "Quebec",
    "Havana",
    "Wadsworth",
    "Peña",
    "Martin Luther King Jr",
];
const STREET_SUFFIXES: &[&str] = &[
    "St", "Ave", "Blvd", "Dr", "Ct", "Way", "Rd", "Ln", "Pl", "Pkwy",
];
/// `(city, county, first three zip digits)`.
const PLACES: &[(&str, &str, &str)] = &[
    ("Denver", "Denver", "802"),
    ("Aurora", "Arapahoe", "800"),
    ("Boulder", "Boulder", "803"),
    ("Fort Collins", "Larimer", "805"),
    ("Colorado Springs", "El Paso", "809"),
    ("Pueblo", "Pueblo", "810"),
    ("Grand Junction", "Mesa", "815"),
    ("Greeley", "Weld", "806"),
    ("Lakewood", "Jefferson", "802"),
    ("Longmont", "Boulder", "805"),
    ("Durango", "La Plata", "813"),
    ("Cañon City", "Fremont", "812"),
    ("Alamosa", "Alamosa", "811"),
    ("Steamboat Springs", "Routt", "804"),
    ("Breckenridge", "Summit", "804"),
];
const AREA_CODES: &[&str] = &["303", "720", "970", "719"];
/// `(CLIA, facility name)`.
const FACILITIES: &[(&str, &str)] = &[
    ("05D2222542", "Denver Health Medical Center Laboratory"),
    ("06D0880233", "Colorado State Public Health Laboratory"),
    ("06D0641729", "UCHealth Anschutz Clinical Laboratory"),
    ("06D0874210", "Boulder Community Health Lab"),
    ("06D2186031", "Mesa County Public Health Lab"),
    ("06D1044928", "Parkview Medical Center, Pueblo"),
    ("05D0642827", "Quest Diagnostics - Denver"),
    ("34D0655059", "LabCorp Englewood"),
    ("06D0881474", "Children's Hospital Colorado Lab"),
    ("06D0702590", "St. Mary's Medical Center, Grand Junction"),
    ("06D2201377", "Peak Urgent Care"),
    ("06D2203410", "Front Range Drive-Thru Testing"),
    ("06D0717652", "Poudre Valley Hospital Lab"),
    (
        "06D0523377",
        "National Jewish Health Advanced Diagnostic Lab",
    ),
    ("06D2190115", "Summit County Community Clinic"),
    ("06D0881102", "Vail Health Lab"),
    ("06D0874988", "San Luis Valley Health"),
    ("06D2210583", "Walgreens #4312 Aurora"),
    ("06D2195560", "Aurora Community Testing Site"),
    ("06D2208841", "Cañon City Family Clinic"),
];
/// `(LOINC code, long name, is an antigen test)`.
const TESTS: &[(&str, &str, bool)] = &[
    ("94500-6", "SARS-CoV-2 (COVID-19) RNA [Presence] in Respiratory specimen by NAA with probe detection", false),
    ("94558-4", "SARS-CoV-2 (COVID-19) Ag [Presence] in Respiratory specimen by Rapid immunoassay", true),
    ("94534-5", "SARS-CoV-2 (COVID-19) RdRp gene [Presence] in Respiratory specimen by NAA with probe detection", false),
    ("94309-2", "SARS-CoV-2 (COVID-19) RNA [Presence] in Specimen by NAA with probe detection", false),
    ("95209-3", "SARS-CoV+SARS-CoV-2 (COVID-19) Ag [Presence] in Respiratory specimen by Rapid immunoassay", true),
];
/// Indices into [`TESTS`], repeated by how common each test is.
const TEST_WEIGHTS: &[usize] = &[0, 0, 0, 0, 0, 1, 1, 1, 2, 3, 4];
/// `(result, SNOMED CT code)`.
const RESULTS: [(&str, &str); 3] = [
    ("Detected", "260373001"),
    ("Not Detected", "260415000"),
    ("Inconclusive", "419984006"),
];
const SPECIMEN_TYPES: &[&str] = &[
    "Nasopharyngeal swab",
    "Anterior nares swab",
    "Oropharyngeal swab",
    "Saliva specimen",
    "Nasal swab",
    "Nasopharyngeal washings",
];
const NAA_DEVICES: &[&str] = &[
    "cobas SARS-CoV-2_Roche Molecular Systems, Inc._EUA",
    "Xpert Xpress SARS-CoV-2_Cepheid_EUA",
    "Aptima SARS-CoV-2 assay_Hologic, Inc._EUA",
    "TaqPath COVID-19 Combo Kit_Thermo Fisher Scientific_EUA",
];
const ANTIGEN_DEVICES: &[&str] = &[
    "BinaxNOW COVID-19 Ag Card_Abbott Diagnostics Scarborough, Inc._EUA",
    "Sofia SARS Antigen FIA_Quidel Corporation_EUA",
    "BD Veritor System for Rapid Detection of SARS-CoV-2_Becton, Dickinson and Company (BD)_EUA",
];

/// What rows made for one snapshot share: their collection dates `first_day..=last_day`
/// (days from CE) and the file's generation time.
struct Period {
    first_day: i32,
    last_day: i32,
    /// The file's generation time.
    at: NaiveDateTime,
    /// `Report_Generated_At`, formatted once.
    generated_at: String,
}

impl Period {
    fn new(generated_at: NaiveDateTime, first_day: i32) -> Self {
        let mut stamp = String::with_capacity(19);
        push_timestamp(&mut stamp, generated_at);
        Self {
            first_day,
            last_day: generated_at.date().num_days_from_ce() - 1,
            at: generated_at,
            generated_at: stamp,
        }
    }
}

fn pick<T: Copy>(rng: &mut SmallRng, pool: &[T]) -> T {
    pool[rng.gen_range(0..pool.len())]
}

fn day(days_from_ce: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(days_from_ce).expect("generated dates are in range")
}

/// Appends `count` new rows, now and then followed by a second test on the same accession.
fn append_rows(
    rows: &mut Vec<LabRow>,
    count: usize,
    rng: &mut SmallRng,
    serials: &mut Serials,
    period: &Period,
    builder: &mut RowBuilder,
) {
    let target = rows.len() + count;
    while rows.len() < target {
        let row = new_row(rng, serials, period, builder);
        let sibling =
            (rows.len() + 2 <= target && rng.gen_bool(0.06)).then(|| second_test(&row, rng));
        rows.push(row);
        rows.extend(sibling);
    }
}

fn new_row(
    rng: &mut SmallRng,
    serials: &mut Serials,
    period: &Period,
    b: &mut RowBuilder,
) -> LabRow {
    b.text.push_str("PT");
    push_number(&mut b.text, serials.patient, 8);
    serials.patient += 1;
    b.end_field();
    b.push(if rng.gen_bool(0.03) {
        pick(rng, LATIN1_LAST_NAMES)
    } else {
        pick(rng, LAST_NAMES)
    });
    b.push(if rng.gen_bool(0.03) {
        pick(rng, LATIN1_FIRST_NAMES)
    } else {
        pick(rng, FIRST_NAMES)
    });
    let dob = day(rng.gen_range(704_553..737_424)); // 1930-01-01 .. 2019-12-31
    let iso = rng.gen_bool(0.2);
    b.push_date(dob, iso);
    b.sex = match rng.gen_range(0..100) {
        0..=46 => 0,
        47..=93 => 1,
        94..=96 => 2,
        97 => 3,
        98 => 4,
        _ => 5,
    };
    b.push(SEX_SPELLINGS[usize::from(b.sex)].0);
    b.push(pick(rng, RACES));
    b.push(pick(rng, ETHNICITIES));
    push_street(&mut b.text, rng);
    b.end_field();
    let (city, county, zip3) = pick(rng, PLACES);
    b.push(city);
    b.text.push_str(zip3);
    push_number(&mut b.text, rng.gen_range(0..100), 2);
    b.end_field();
    b.push(county);
    push_phone(&mut b.text, rng);
    b.end_field();
    let (clia, facility) = pick(rng, FACILITIES);
    b.push(facility);
    b.push(clia);
    b.text.push('1');
    push_number(&mut b.text, rng.gen_range(0..1_000_000_000), 9);
    b.end_field();
    b.text.push_str("SPC");
    push_number(&mut b.text, serials.specimen, 10);
    serials.specimen += 1;
    b.end_field();
    let collected = rng.gen_range(period.first_day..=period.last_day);
    b.push_date(day(collected), false);
    b.push(pick(rng, SPECIMEN_TYPES));
    let (code, name, antigen) = TESTS[pick(rng, TEST_WEIGHTS)];
    b.push(name);
    b.push(code);
    let (result, result_code) = RESULTS[match rng.gen_range(0..100) {
        0..=9 => 0,
        10..=97 => 1,
        _ => 2,
    }];
    b.push(result);
    b.push(result_code);
    let resulted = (collected + rng.gen_range(0..=3)).min(period.last_day + 1);
    b.push_date(day(resulted), false);
    b.push_date(
        day((resulted + rng.gen_range(0..=1)).min(period.last_day + 1)),
        false,
    );
    serials.accession += rng.gen_range(1..=3);
    b.text.push_str("ACC");
    push_number(&mut b.text, serials.accession, 10);
    b.end_field();
    if rng.gen_bool(0.7) {
        b.text.push_str(pick(
            rng,
            if antigen {
                ANTIGEN_DEVICES
            } else {
                NAA_DEVICES
            },
        ));
    }
    b.end_field();
    b.generated_at = period.at.and_utc().timestamp();
    b.push(&period.generated_at);
    b.finish()
}

/// The same specimen run through a second test: same accession, another test code.
fn second_test(row: &LabRow, rng: &mut SmallRng) -> LabRow {
    let mut sibling = row.clone();
    let current = row.field(TEST_CODE);
    let others: Vec<_> = TESTS
        .iter()
        .filter(|(code, _, _)| *code != current)
        .collect();
    let &(code, name, antigen) = others[rng.gen_range(0..others.len())];
    sibling.set(TEST_NAME, name);
    sibling.set(TEST_CODE, code);
    let (result, result_code) = other_result(row.field(TEST_RESULT), rng);
    sibling.set(TEST_RESULT, result);
    sibling.set(TEST_RESULT_CODE, result_code);
    let device = if rng.gen_bool(0.7) {
        pick(
            rng,
            if antigen {
                ANTIGEN_DEVICES
            } else {
                NAA_DEVICES
            },
        )
    } else {
        ""
    };
    sibling.set(DEVICE_ID, device);
    sibling
}

/// A result (and its SNOMED code) different from `current`.
fn other_result(current: &str, rng: &mut SmallRng) -> (&'static str, &'static str) {
    let now = RESULTS.iter().position(|(r, _)| *r == current).unwrap_or(1);
    RESULTS[(now + rng.gen_range(1..=2)) % RESULTS.len()]
}

/// Changes one tracked field of `row` to a different value.
fn update_tracked_field(row: &mut LabRow, rng: &mut SmallRng, scratch: &mut String) {
    scratch.clear();
    match rng.gen_range(0..100) {
        0..=44 => {
            let (result, code) = other_result(row.field(TEST_RESULT), rng);
            row.set(TEST_RESULT, result);
            row.set(TEST_RESULT_CODE, code);
        }
        45..=64 => {
            let corrected = day(row.dates[2]) + ChronoDuration::days(1);
            push_us_date(scratch, corrected);
            row.set(RESULT_DATE, scratch);
            row.dates[2] = corrected.num_days_from_ce();
        }
        65..=84 => {
            while scratch.is_empty() || scratch.as_str() == row.field(PATIENT_PHONE) {
                scratch.clear();
                push_phone(scratch, rng);
            }
            row.set(PATIENT_PHONE, scratch);
        }
        _ => {
            while scratch.is_empty() || scratch.as_str() == row.field(PATIENT_STREET) {
                scratch.clear();
                push_street(scratch, rng);
            }
            row.set(PATIENT_STREET, scratch);
        }
    }
}

fn push_street(out: &mut String, rng: &mut SmallRng) {
    push_number(out, rng.gen_range(1..20_000), 1);
    out.push(' ');
    if rng.gen_bool(0.25) {
        out.push_str(pick(rng, &["N ", "S ", "E ", "W "]));
    }
    out.push_str(pick(rng, STREETS));
    out.push(' ');
    out.push_str(pick(rng, STREET_SUFFIXES));
    match rng.gen_range(0..100) {
        0..=9 => {
            out.push_str(", Apt ");
            push_number(out, rng.gen_range(1..400), 1);
        }
        10 => out.push_str(" Apt \"B\""),
        _ => {}
    }
}

/// A fictional number: `555-0100`..`555-0199` is reserved for fiction.
fn push_phone(out: &mut String, rng: &mut SmallRng) {
    out.push('(');
    out.push_str(pick(rng, AREA_CODES));
    out.push_str(") 555-01");
    push_number(out, rng.gen_range(0..100), 2);
}

/// Appends `n` in decimal, zero-padded to at least `width` digits.
fn push_number(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    while n > 0 || len < width.max(1) {
        digits[len] = b'0' + u8::try_from(n % 10).expect("a digit");
        n /= 10;
        len += 1;
    }
    out.extend(digits[..len].iter().rev().map(|&d| char::from(d)));
}

fn push_us_date(out: &mut String, date: NaiveDate) {
    push_number(out, u64::from(date.month()), 2);
    out.push('/');
    push_number(out, u64::from(date.day()), 2);
    out.push('/');
    push_number(out, u64::from(date.year().unsigned_abs()), 4);
}

fn push_iso_date(out: &mut String, date: NaiveDate) {
    push_number(out, u64::from(date.year().unsigned_abs()), 4);
    out.push('-');
    push_number(out, u64::from(date.month()), 2);
    out.push('-');
    push_number(out, u64::from(date.day()), 2);
}

fn push_timestamp(out: &mut String, at: NaiveDateTime) {
    push_iso_date(out, at.date());
    out.push(' ');
    push_number(out, u64::from(at.hour()), 2);
    out.push(':');
    push_number(out, u64::from(at.minute()), 2);
    out.push(':');
    push_number(out, u64::from(at.second()), 2);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;

    use super::*;

    fn parse_us_date(text: &str) -> Option<NaiveDate> {
        let mut parts = text.split('/').map(str::parse::<u32>);
        let (m, d, y) = (
            parts.next()?.ok()?,
            parts.next()?.ok()?,
            parts.next()?.ok()?,
        );
        NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, m, d)
    }

    fn write_bytes(snapshot: &Snapshot, options: &WriteOptions) -> (Vec<u8>, WrittenFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.csv");
        let written = snapshot.write(&path, options).unwrap();
        (std::fs::read(&path).unwrap(), written)
    }

    /// A record as a reader sees it: the physical line it starts on and its fields.
    #[derive(Debug)]
    struct ParsedRecord {
        line: u64,
        fields: Vec<String>,
    }

    /// A deliberately naive RFC 4180 reader, independent of the writer, that tracks physical
    /// lines the way a reject report must. Blank lines are skipped.
    fn parse_csv(text: &str) -> Vec<ParsedRecord> {
        let mut records = Vec::new();
        let mut chars = text.chars().peekable();
        let mut line = 1;
        while chars.peek().is_some() {
            let start = line;
            let mut fields = vec![String::new()];
            let mut quoted = false;
            while let Some(c) = chars.next() {
                let field = fields.last_mut().unwrap();
                match c {
                    '"' if quoted && chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' if quoted => quoted = false,
                    '"' if field.is_empty() => quoted = true,
                    '\n' if quoted => {
                        line += 1;
                        field.push('\n');
                    }
                    ',' if !quoted => fields.push(String::new()),
                    '\r' if !quoted && chars.peek() == Some(&'\n') => {}
                    '\n' => {
                        line += 1;
                        break;
                    }
                    c => field.push(c),
                }
            }
            if fields.len() > 1 || !fields[0].is_empty() {
                records.push(ParsedRecord {
                    line: start,
                    fields,
                });
            }
        }
        records
    }

    fn value<'a>(record: &'a ParsedRecord, header: &[String], column: &str) -> &'a str {
        let i = header.iter().position(|c| c == column).unwrap();
        &record.fields[i]
    }

    fn content_by_key(snapshot: &Snapshot) -> BTreeMap<KeyTuple, Vec<String>> {
        snapshot
            .rows()
            .iter()
            .map(|row| {
                let mut values: Vec<String> =
                    row.values().iter().map(|v| (*v).to_owned()).collect();
                values.remove(REPORT_GENERATED_AT);
                (row.key(), values)
            })
            .collect()
    }

    #[test]
    fn same_seed_gives_identical_bytes() {
        let options = WriteOptions {
            column_order: ColumnOrder::Shuffled(3),
            extra_columns: vec!["Lab_Comment".into()],
            dirt: Dirt {
                bad_dates: 3,
                missing_required: 2,
                duplicate_keys: 2,
                quoted_newlines: 2,
                trailing_blank_lines: 1,
            },
            ..WriteOptions::default()
        };
        let (a, written_a) = write_bytes(&Snapshot::initial(800, 42), &options);
        let (b, written_b) = write_bytes(&Snapshot::initial(800, 42), &options);
        assert!(a == b, "same rows and seed must give the same bytes");
        assert_eq!(written_a.dirty, written_b.dirty);
        let (c, _) = write_bytes(&Snapshot::initial(800, 43), &options);
        assert!(a != c, "another seed gives another file");

        let delta = SnapshotDelta {
            updated: 0.05,
            added: 0.01,
            removed: 0.01,
        };
        let (next_a, changes_a) = Snapshot::initial(800, 42).next(delta, 7);
        let (next_b, changes_b) = Snapshot::initial(800, 42).next(delta, 7);
        assert_eq!(changes_a, changes_b);
        assert_eq!(next_a.rows(), next_b.rows());
    }

    #[test]
    fn keys_are_distinct() {
        let snapshot = Snapshot::initial(20_000, 1);
        assert_eq!(snapshot.rows().len(), 20_000);
        let keys: BTreeSet<_> = snapshot.rows().iter().map(LabRow::key).collect();
        assert_eq!(keys.len(), 20_000);
        let shared_accessions = snapshot
            .rows()
            .windows(2)
            .filter(|w| w[0].field(24) == w[1].field(24))
            .count();
        assert!(shared_accessions > 0, "some accessions carry two tests");

        let (next, _) = snapshot.next(
            SnapshotDelta {
                updated: 0.1,
                added: 0.1,
                removed: 0.1,
            },
            2,
        );
        let keys: BTreeSet<_> = next.rows().iter().map(LabRow::key).collect();
        assert_eq!(keys.len(), next.rows().len());
        assert_eq!(next.rows().len(), 20_000);
    }

    #[test]
    fn next_reports_exact_change_sets() {
        let before = Snapshot::initial(3_000, 5);
        let (after, changes) = before.next(
            SnapshotDelta {
                updated: 0.05,
                added: 0.02,
                removed: 0.03,
            },
            11,
        );
        assert_eq!(
            (
                changes.updated.len(),
                changes.created.len(),
                changes.removed.len()
            ),
            (150, 60, 90)
        );

        let old = content_by_key(&before);
        let new = content_by_key(&after);
        let created: BTreeSet<_> = new
            .keys()
            .filter(|k| !old.contains_key(*k))
            .cloned()
            .collect();
        let removed: BTreeSet<_> = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        let updated: BTreeSet<_> = new
            .iter()
            .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(
            changes,
            ChangeSet {
                created,
                updated,
                removed
            }
        );

        let stamp = after.rows()[0]
            .get("Report_Generated_At")
            .unwrap()
            .to_owned();
        assert_ne!(stamp, before.rows()[0].get("Report_Generated_At").unwrap());
        assert!(after
            .rows()
            .iter()
            .all(|r| r.get("Report_Generated_At") == Some(stamp.as_str())));
        assert_eq!(
            after.generated_at() - before.generated_at(),
            ChronoDuration::minutes(30)
        );
    }

    #[test]
    fn dirty_rows_are_at_reported_lines() {
        let snapshot = Snapshot::initial(1_000, 9);
        let dirt = Dirt {
            bad_dates: 4,
            missing_required: 3,
            duplicate_keys: 5,
            quoted_newlines: 0,
            trailing_blank_lines: 2,
        };
        let (bytes, written) = write_bytes(
            &snapshot,
            &WriteOptions {
                dirt,
                ..WriteOptions::default()
            },
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.ends_with("\n\n\n"),
            "two blank lines after the last record"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], COLUMNS.join(","));
        assert_eq!(written.data_rows, 1_005);
        assert_eq!(lines.len(), 1 + 1_005 + 2);
        assert_eq!(written.dirty.len(), 12);
        assert!(written.dirty.windows(2).all(|w| w[0].line < w[1].line));

        let records = parse_csv(&text);
        let by_line: BTreeMap<u64, &ParsedRecord> = records.iter().map(|r| (r.line, r)).collect();
        let header = &written.columns;
        let mut first_seen = BTreeMap::new();
        for record in &records[1..] {
            let key = (
                value(record, header, "Facility_CLIA").to_owned(),
                value(record, header, "Accession_Number").to_owned(),
                value(record, header, "Test_Code").to_owned(),
            );
            first_seen.entry(key).or_insert(record.line);
        }
        for dirty in &written.dirty {
            let line = lines[usize::try_from(dirty.line).unwrap() - 1];
            assert!(
                line.contains(&dirty.key.1),
                "{dirty:?} not on its line: {line}"
            );
            let record = by_line[&dirty.line];
            let cell = value(record, header, dirty.column.unwrap());
            match dirty.kind {
                DirtKind::BadDate => assert!(BAD_DATES.contains(&cell), "{cell}"),
                DirtKind::MissingRequired => assert_eq!(cell, ""),
                DirtKind::DuplicateKey => {
                    let first = first_seen[&dirty.key];
                    assert!(first < dirty.line);
                    assert_ne!(value(by_line[&first], header, "Test_Result"), cell);
                }
                DirtKind::QuotedNewline => unreachable!("none requested"),
            }
        }

        let rejected: BTreeSet<_> = written
            .dirty
            .iter()
            .filter(|d| matches!(d.kind, DirtKind::BadDate | DirtKind::MissingRequired))
            .map(|d| d.key.clone())
            .collect();
        let expected: BTreeSet<_> = snapshot
            .rows()
            .iter()
            .map(LabRow::key)
            .filter(|k| !rejected.contains(k))
            .collect();
        assert_eq!(written.accepted_keys, expected);
        assert_eq!(written.accepted_keys.len(), 1_000 - 7);
    }

    #[test]
    fn quoted_newlines_count_as_physical_lines() {
        let snapshot = Snapshot::initial(400, 21);
        let dirt = Dirt {
            bad_dates: 2,
            missing_required: 1,
            duplicate_keys: 3,
            quoted_newlines: 6,
            trailing_blank_lines: 1,
        };
        let options = WriteOptions {
            dirt,
            crlf: true,
            ..WriteOptions::default()
        };
        let (bytes, written) = write_bytes(&snapshot, &options);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.ends_with("\r\n\r\n"));
        assert_eq!(
            text.matches('\n').count(),
            1 + 403 + 6 + 1,
            "one extra physical line per embedded newline"
        );

        let records = parse_csv(&text);
        assert_eq!(records.len(), 1 + written.data_rows);
        let by_line: BTreeMap<u64, &ParsedRecord> = records.iter().map(|r| (r.line, r)).collect();
        let quoted: Vec<_> = written
            .dirty
            .iter()
            .filter(|d| d.kind == DirtKind::QuotedNewline)
            .collect();
        assert_eq!(quoted.len(), 6);
        for dirty in &written.dirty {
            let record = by_line
                .get(&dirty.line)
                .unwrap_or_else(|| panic!("no record starts at {dirty:?}"));
            assert_eq!(
                value(record, &written.columns, "Accession_Number"),
                dirty.key.1
            );
            if dirty.kind == DirtKind::QuotedNewline {
                assert!(value(record, &written.columns, "Patient_Street").contains('\n'));
                assert!(written.accepted_keys.contains(&dirty.key));
            }
        }
        assert_eq!(written.accepted_keys.len(), 400 - 3);
    }

    #[test]
    fn compressed_output_matches_plain_bytes() {
        let snapshot = Snapshot::initial(2_000, 4);
        let (plain, _) = write_bytes(&snapshot, &WriteOptions::default());
        let (gz, _) = write_bytes(
            &snapshot,
            &WriteOptions {
                compression: Compression::Gzip,
                ..WriteOptions::default()
            },
        );
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut unzipped)
            .unwrap();
        assert!(unzipped == plain);
        assert!(gz.len() < plain.len() / 2);

        let (zst, _) = write_bytes(
            &snapshot,
            &WriteOptions {
                compression: Compression::Zstd,
                ..WriteOptions::default()
            },
        );
        assert!(zstd::decode_all(zst.as_slice()).unwrap() == plain);
        assert!(zst.len() < plain.len() / 2);
    }

    #[test]
    fn latin1_is_one_byte_per_char_and_bom_prefixes_utf8() {
        let mut snapshot = Snapshot::initial(300, 8);
        snapshot.rows[0].set(2, "José");
        let (utf8, _) = write_bytes(&snapshot, &WriteOptions::default());
        let (latin1, _) = write_bytes(
            &snapshot,
            &WriteOptions {
                encoding: Encoding::Latin1,
                ..WriteOptions::default()
            },
        );
        let (bom, _) = write_bytes(
            &snapshot,
            &WriteOptions {
                encoding: Encoding::Utf8Bom,
                ..WriteOptions::default()
            },
        );

        let text = String::from_utf8(utf8.clone()).unwrap();
        assert!(
            !latin1.iter().any(|b| (0x80..0xA0).contains(b)),
            "no C1 control bytes"
        );
        let decoded: String = latin1.iter().map(|&b| char::from(b)).collect();
        assert_eq!(decoded, text);
        assert_eq!(latin1.len(), text.chars().count());
        assert!(latin1.windows(4).any(|w| w == b"Jos\xE9"));
        assert!(text.contains("José"));
        assert!(latin1 != utf8);

        assert_eq!(&bom[..3], b"\xEF\xBB\xBF");
        assert!(bom[3..] == utf8[..]);
    }

    #[test]
    fn header_follows_order_extra_and_omitted_columns() {
        let snapshot = Snapshot::initial(50, 2);
        let options = WriteOptions {
            extra_columns: vec!["Lab_Comment".into()],
            omit_columns: vec!["Test_Result".into()],
            column_order: ColumnOrder::Shuffled(9),
            ..WriteOptions::default()
        };
        let (bytes, written) = write_bytes(&snapshot, &options);
        let text = String::from_utf8(bytes).unwrap();
        let records = parse_csv(&text);
        assert_eq!(records[0].fields, written.columns);
        assert_eq!(written.columns.len(), 27);
        assert!(written.columns.contains(&"Lab_Comment".to_owned()));
        assert!(!written.columns.contains(&"Test_Result".to_owned()));
        assert!(written.columns[..3] != COLUMNS[..3], "shuffled");
        for (record, row) in records[1..].iter().zip(snapshot.rows()) {
            for (name, field) in written.columns.iter().zip(&record.fields) {
                if let Some(expected) = row.get(name) {
                    assert_eq!(field, expected, "{name}");
                }
            }
        }

        let explicit = vec![
            "Test_Code".to_owned(),
            "Facility_CLIA".to_owned(),
            "Accession_Number".to_owned(),
        ];
        let options = WriteOptions {
            column_order: ColumnOrder::Explicit(explicit.clone()),
            ..WriteOptions::default()
        };
        let (bytes, written) = write_bytes(&snapshot, &options);
        assert_eq!(written.columns, explicit);
        let first_record = String::from_utf8(bytes)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_owned();
        let key = snapshot.rows()[0].key();
        assert_eq!(first_record, format!("{},{},{}", key.2, key.0, key.1));
    }

    /// What a row says a cell means is what its text says, in the generator's formats: the
    /// typed values travel with the text through `next` (which corrects result dates).
    #[test]
    fn values_mean_what_their_text_says() {
        let s1 = Snapshot::initial(2_000, 17);
        let (s2, changes) = s1.next(
            SnapshotDelta {
                updated: 0.5,
                added: 0.1,
                removed: 0.1,
            },
            18,
        );
        assert!(!changes.updated.is_empty());
        let mut spellings = BTreeMap::new();
        for row in s1.rows().iter().chain(s2.rows()) {
            for column in COLUMNS {
                let value = row.value(column).unwrap();
                let text = value.text.as_ref();
                assert_eq!(text, row.get(column).unwrap());
                assert_eq!(text, text.trim(), "{column}: no surrounding white space");
                match value.meaning {
                    Meaning::Text => {}
                    Meaning::Date(date) => {
                        let read = parse_us_date(text)
                            .or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok());
                        assert_eq!(read, Some(date), "{column} {text}");
                    }
                    Meaning::DateTime(at) => {
                        assert_eq!(at.format("%Y-%m-%d %H:%M:%S").to_string(), text);
                    }
                    Meaning::Code(code) => {
                        spellings.insert(text.to_string(), code);
                    }
                }
            }
        }
        let expected: BTreeMap<String, &str> = SEX_SPELLINGS
            .iter()
            .map(|(spelling, code)| (spelling.to_string(), *code))
            .collect();
        assert_eq!(
            spellings, expected,
            "every spelling of sex seen, each with its code"
        );
        assert_eq!(
            s2.rows()[0].value("Report_Generated_At").unwrap().meaning,
            Meaning::DateTime(s2.generated_at())
        );
    }

    /// `write_to` writes what `write` writes, and shows every record at the line it starts on,
    /// with its dirt, as the file says.
    #[test]
    fn write_to_shows_every_record_at_its_line() {
        let snapshot = Snapshot::initial(500, 23);
        let options = WriteOptions {
            dirt: Dirt {
                bad_dates: 3,
                missing_required: 2,
                duplicate_keys: 3,
                quoted_newlines: 4,
                trailing_blank_lines: 1,
            },
            crlf: true,
            extra_columns: vec!["Lab_Comment".into()],
            omit_columns: vec!["Device_ID".into()],
            compression: Compression::Gzip,
            ..WriteOptions::default()
        };
        let (file_bytes, written) = write_bytes(&snapshot, &options);
        let mut bytes = Vec::new();
        let mut seen = Vec::new();
        let shown = snapshot
            .write_to(&mut bytes, &options, |record| {
                seen.push((
                    record.line,
                    record.dirt(),
                    record.is_accepted(),
                    record.row.key(),
                    record.value("Patient_Street").unwrap().text.into_owned(),
                    record.value("Lab_Comment").unwrap().text.into_owned(),
                    record.value("Device_ID").is_none(),
                ));
            })
            .unwrap();
        assert_eq!(bytes, file_bytes);
        assert_eq!(
            (shown.columns, shown.dirty.clone()),
            (written.columns, written.dirty)
        );
        assert_eq!(seen.len(), written.data_rows);

        let mut plain = Vec::new();
        snapshot
            .write_to(
                &mut plain,
                &WriteOptions {
                    compression: Compression::None,
                    ..options.clone()
                },
                |_| {},
            )
            .unwrap();
        let text = String::from_utf8(plain).unwrap();
        let records = parse_csv(&text);
        let header = &records[0].fields;
        assert_eq!(records.len() - 1, seen.len());
        for (record, (line, dirt, accepted, key, street, comment, no_device)) in
            records[1..].iter().zip(&seen)
        {
            assert_eq!(record.line, *line);
            assert_eq!(value(record, header, "Patient_Street"), street);
            assert_eq!(value(record, header, "Lab_Comment"), comment);
            assert!(*no_device);
            let record_key = (
                value(record, header, "Facility_CLIA").to_owned(),
                value(record, header, "Accession_Number").to_owned(),
                value(record, header, "Test_Code").to_owned(),
            );
            assert_eq!(&record_key, key);
            let listed = shown.dirty.iter().find(|d| d.line == *line).map(|d| d.kind);
            assert_eq!(listed, *dirt);
            assert_eq!(*accepted, dirt.is_none_or(|d| !d.is_rejected()));
        }
        let accepted: BTreeSet<KeyTuple> =
            seen.iter().filter(|r| r.2).map(|r| r.3.clone()).collect();
        assert_eq!(accepted, shown.accepted_keys);
    }

    #[test]
    fn rows_look_like_lab_results() {
        let snapshot = Snapshot::initial(5_000, 77);
        let column = |name: &'static str| snapshot.rows().iter().map(move |r| r.get(name).unwrap());
        assert!(
            column("Patient_Race").any(|v| v.contains(',')),
            "quoting is exercised"
        );
        assert!(column("Device_ID").any(str::is_empty), "nullable device");
        assert!(column("Patient_DOB").any(|v| v.len() == 10 && v.as_bytes()[4] == b'-'));
        assert!(column("Patient_Last_Name")
            .chain(column("Patient_First_Name"))
            .any(|v| !v.is_ascii()));
        assert!(column("Facility_CLIA").all(|v| v.len() == 10 && v.as_bytes()[2] == b'D'));
        assert!(column("Specimen_Collection_Date").all(|v| parse_us_date(v).is_some()));
        assert!(column("Accession_Number").all(|v| v.starts_with("ACC")));
        for row in snapshot.rows() {
            let result = RESULTS
                .iter()
                .find(|(r, _)| Some(*r) == row.get("Test_Result"))
                .unwrap();
            assert_eq!(row.get("Test_Result_Code"), Some(result.1));
            let test = TESTS
                .iter()
                .find(|(c, _, _)| Some(*c) == row.get("Test_Code"))
                .unwrap();
            assert_eq!(row.get("Test_Name"), Some(test.1));
            let phone = row.get("Patient_Phone").unwrap();
            assert!(
                phone.len() == 14 && phone.starts_with('(') && phone[5..].starts_with(" 555-01"),
                "{phone}"
            );
            let generated = row.get("Report_Generated_At").unwrap();
            assert_eq!(generated.len(), 19);
        }
    }
}

//! CSV → Avro throughput of file-source's per-row path on one thread: split a record, decode it
//! as UTF-8, convert it by the mapping, build its key, check it against the file's earlier
//! keys and encode it (single-object encoding) — the ingest's own `RowDecider`, as each pass
//! runs it for every row, without Kafka. A generated 500k-row lab-results
//! snapshot is read plain, gzip- and zstd-compressed, five timed runs each; the report gives
//! rows/s (median, min, max) by wall clock and by this thread's CPU time.
//! Target (DESIGN § Performance targets): ≥ 1,000,000 rows/s per core.
//!
//! Run: `cargo bench -p file-source --bench convert`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failed run

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use file_source::config::{CsvDialect, TextEncoding};
use file_source::convert::HeaderMap;
use file_source::ingest::{RowDecider, RowOutcome};
use file_source::reader::{csv_reader, open_text, Record};
use snapfeed_harness::broker::repo_root;
use snapfeed_harness::generator::Snapshot;
use snapfeed_harness::measure::thread_cpu_time;
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::dataset::{Dataset, DatasetMapping};

const ROWS: usize = 500_000;
const RUNS: usize = 5;

/// A timed pass over a file: rows, wall time, thread CPU time.
type Pass = fn(&Path, &Arc<Dataset>) -> (usize, Duration, Duration);

/// One pass over the file: rows decided (converted, keyed, encoded), wall time, thread CPU time.
fn convert_all(path: &Path, dataset: &Arc<Dataset>) -> (usize, Duration, Duration) {
    let (wall, cpu) = (Instant::now(), thread_cpu_time());
    let text = open_text(path, TextEncoding::Utf8).unwrap();
    let mut csv = csv_reader(text.reader, &CsvDialect::default());
    let mut header = Record::new();
    assert!(csv.read_record(&mut header).unwrap(), "header line");
    let map = HeaderMap::match_header(header.text().unwrap(), dataset).unwrap();
    // The ingest's own per-row decision, duplicate-key check included.
    let mut decider = RowDecider::new(dataset.clone(), map);
    let mut raw = Record::new();
    let (mut rows, mut bytes) = (0, 0);
    while csv.read_record(&mut raw).unwrap() {
        match decider.decide(&raw) {
            RowOutcome::Accepted { key, payload } => bytes += key.as_str().len() + payload.len(),
            RowOutcome::Rejected(reject) => panic!("row {rows} rejected: {reject}"),
        }
        rows += 1;
    }
    std::hint::black_box(bytes);
    (rows, wall.elapsed(), thread_cpu_time() - cpu)
}

/// Only splitting the file into records, by file-source's reader or (`reference`) by the
/// `csv` crate's, as file-source read files before: rows, wall time, thread CPU time.
fn split_all(path: &Path, reference: bool) -> (usize, Duration, Duration) {
    let (wall, cpu) = (Instant::now(), thread_cpu_time());
    let text = open_text(path, TextEncoding::Utf8).unwrap();
    let mut rows = 0usize;
    if reference {
        let mut raw = csv::ByteRecord::new();
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(1 << 16)
            .from_reader(text.reader);
        while csv.read_byte_record(&mut raw).unwrap() {
            rows += raw.len();
        }
    } else {
        let mut raw = Record::new();
        let mut csv = csv_reader(text.reader, &CsvDialect::default());
        while csv.read_record(&mut raw).unwrap() {
            rows += raw.len();
        }
    }
    // Fields counted to keep the loop honest; rows reported (the header is one of them).
    std::hint::black_box(rows);
    (ROWS, wall.elapsed(), thread_cpu_time() - cpu)
}

fn rate(rows: usize, took: Duration) -> f64 {
    rows as f64 / took.as_secs_f64()
}

fn summary(mut rates: Vec<f64>) -> (f64, f64, f64) {
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], rates[0], rates[rates.len() - 1])
}

fn main() {
    let root = repo_root();
    let schemas = SchemaStore::load_dir(&root.join("schemas")).unwrap();
    let dataset = Arc::new(
        DatasetMapping::load(
            &root.join("deploy/config/lab_results.mapping.toml"),
            &schemas,
        )
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let generated = Instant::now();
    let snapshot = Snapshot::initial(ROWS, 2026);
    let inputs = snapshot
        .write_compressed(dir.path(), &["plain", "gzip", "zstd"])
        .unwrap();
    drop(snapshot);
    println!(
        "file-source convert bench: {ROWS} generated rows (in {:.1} s), 1 thread, {RUNS} runs per input",
        generated.elapsed().as_secs_f64()
    );
    println!(
        "{:<32} {:>9} {:>15} {:>15} {:>15} {:>17} {:>9}",
        "input",
        "MiB",
        "median rows/s",
        "min rows/s",
        "max rows/s",
        "median rows/CPU-s",
        "median s"
    );
    let stages: [(&str, Pass); 3] = [
        ("", convert_all),
        (" split only", |path, _| split_all(path, false)),
        (" split only, csv::Reader", |path, _| split_all(path, true)),
    ];
    let mut runs = Vec::new();
    for (label, path) in &inputs {
        runs.push((label.to_string(), path, stages[0].1));
    }
    for (stage, run) in &stages[1..] {
        runs.push((format!("plain{stage}"), &inputs[0].1, *run));
    }
    for (label, path, run) in &runs {
        let mut wall_rates = Vec::new();
        let mut cpu_rates = Vec::new();
        let mut seconds = Vec::new();
        for _ in 0..RUNS {
            let (rows, wall, cpu) = run(path, &dataset);
            assert_eq!(rows, ROWS, "every generated row converts");
            wall_rates.push(rate(rows, wall));
            cpu_rates.push(rate(rows, cpu));
            seconds.push(wall.as_secs_f64());
        }
        let (median, min, max) = summary(wall_rates);
        let (cpu_median, _, _) = summary(cpu_rates);
        let (median_seconds, _, _) = summary(seconds);
        let mib = std::fs::metadata(path).unwrap().len() as f64 / (1024.0 * 1024.0);
        println!(
            "{label:<32} {mib:>9.1} {median:>15.0} {min:>15.0} {max:>15.0} {cpu_median:>17.0} {median_seconds:>9.3}"
        );
    }
}

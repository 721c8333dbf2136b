//! CSV → Avro throughput of file-source's per-row path on one thread: read a record, decode it
//! as UTF-8, convert it by the mapping, build its key and encode it (single-object encoding) —
//! what the sending pass does for every row, without Kafka. A generated 500k-row lab-results
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
use file_source::convert::{HeaderMap, RowConverter};
use file_source::reader::{csv_reader, open_text};
use snapfeed_harness::broker::repo_root;
use snapfeed_harness::generator::Snapshot;
use snapfeed_harness::measure::thread_cpu_time;
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::dataset::{Dataset, DatasetMapping};

const ROWS: usize = 500_000;
const RUNS: usize = 5;

/// One pass over the file: rows converted and encoded, wall time, thread CPU time.
fn convert_all(path: &Path, dataset: &Arc<Dataset>) -> (usize, Duration, Duration) {
    let (wall, cpu) = (Instant::now(), thread_cpu_time());
    let text = open_text(path, TextEncoding::Utf8).unwrap();
    let mut csv = csv_reader(text.reader, &CsvDialect::default());
    let mut header = csv::StringRecord::new();
    assert!(csv.read_record(&mut header).unwrap(), "header line");
    let map = HeaderMap::match_header(header.iter(), dataset).unwrap();
    let mut converter = RowConverter::new(dataset.clone(), map);
    let mut raw = csv::ByteRecord::new();
    let mut value = Vec::with_capacity(1024);
    let (mut rows, mut bytes) = (0, 0);
    // As the ingest's row scan does: values borrowed from the row, encoded straight to Avro.
    while csv.read_byte_record(&mut raw).unwrap() {
        let record = csv::StringRecord::from_byte_record(std::mem::take(&mut raw)).unwrap();
        let mut values = Vec::with_capacity(dataset.fields().len());
        converter
            .convert_refs(dataset, &record, &mut values)
            .unwrap();
        value.clear();
        dataset.encode_refs(&values, &mut value).unwrap();
        let key = dataset.key_of_refs(&values).unwrap();
        bytes += key.as_str().len() + value.len();
        drop(values);
        raw = record.into_byte_record();
        rows += 1;
    }
    std::hint::black_box(bytes);
    (rows, wall.elapsed(), thread_cpu_time() - cpu)
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
        "{:<6} {:>9} {:>15} {:>15} {:>15} {:>17} {:>9}",
        "input",
        "MiB",
        "median rows/s",
        "min rows/s",
        "max rows/s",
        "median rows/CPU-s",
        "median s"
    );
    for (label, path) in &inputs {
        let mut wall_rates = Vec::new();
        let mut cpu_rates = Vec::new();
        let mut seconds = Vec::new();
        for _ in 0..RUNS {
            let (rows, wall, cpu) = convert_all(path, &dataset);
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
            "{label:<6} {mib:>9.1} {median:>15.0} {min:>15.0} {max:>15.0} {cpu_median:>17.0} {median_seconds:>9.3}"
        );
    }
}

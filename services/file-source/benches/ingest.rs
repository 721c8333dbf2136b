//! Whole-file ingest: a generated lab-results snapshot through `ingest_paths` (the `ingest`
//! subcommand) into a broker — read, validate, convert, send every row to `snapshots` in
//! chunked transactions (or acknowledged flushes), snapshot-end markers, ledger entries — timed
//! from the call to its return. Each run gets fresh topics; the file is plain, gzip or zstd.
//!
//! The broker is the harness's: librdkafka's in-process mock by default (`SNAPFEED_TEST_BROKER`
//! picks Nisshi or Tansu). The mock keeps only 5 MiB of batches per partition and drops the
//! oldest, which does not change what file-source does or how long it takes (nothing reads
//! the topic here).
//!
//! Run: `cargo bench -p file-source --bench ingest -- [--rows 500000] [--partitions 4]
//! [--runs 3] [--inputs plain,gzip,zstd] [--rows-per-transaction 50000]
//! [--spool-max-bytes N]` (`0`: the send pass reads the file again, as before the spool).
//! `BENCH_KAFKA_EXTRA` is appended to the `[kafka]` section (`\n` for a line break), to try
//! librdkafka properties, e.g. `'[kafka.producer_options]\n"linger.ms" = "20"'`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failed run

use std::time::{Duration, Instant};

use file_source::ingest::FileOutcome;
use file_source::FileSourceConfig;
use snapfeed_harness::broker::{repo_root, TestBroker};
use snapfeed_harness::generator::Snapshot;
use snapfeed_harness::measure::{bench_runtime, median_min_max, process_cpu, BenchArgs};
use snapfeed_runtime::config::ServiceConfig;
use snapfeed_runtime::kafka::ProcessingGuarantee;

struct Args {
    rows: usize,
    partitions: i32,
    runs: usize,
    inputs: Vec<String>,
    /// `source.rows_per_transaction` (default 50,000).
    rows_per_transaction: u64,
    /// `source.spool_max_bytes`, when given (else the config default).
    spool_max_bytes: Option<u64>,
}

fn args() -> Args {
    let given = BenchArgs::parse(&[
        "--rows",
        "--partitions",
        "--runs",
        "--inputs",
        "--rows-per-transaction",
        "--spool-max-bytes",
    ]);
    Args {
        rows: given.get("--rows", 500_000),
        partitions: given.get("--partitions", 4),
        runs: given.get("--runs", 3),
        inputs: given.list(
            "--inputs",
            vec!["plain".into(), "gzip".into(), "zstd".into()],
        ),
        rows_per_transaction: given.get("--rows-per-transaction", 50_000),
        spool_max_bytes: given
            .text("--spool-max-bytes")
            .map(|_| given.get("--spool-max-bytes", 0)),
    }
}

fn config(
    broker: &TestBroker,
    pipeline: &str,
    inbox: &std::path::Path,
    args: &Args,
) -> FileSourceConfig {
    let guarantee = match broker.guarantee() {
        ProcessingGuarantee::ExactlyOnce => "exactly_once",
        ProcessingGuarantee::AtLeastOnce => "at_least_once",
    };
    let root = repo_root();
    let text = format!(
        r#"
[pipeline]
name = {pipeline:?}
processing_guarantee = {guarantee:?}
schemas_dir = {schemas:?}

[kafka]
bootstrap_servers = {bootstrap:?}
request_timeout_ms = 30000
{kafka_extra}

[http]
listen = "127.0.0.1:0"

[log]
level = "warn"

[source]
inbox = {inbox:?}
dataset_mapping = {mapping:?}
progress_interval_ms = 600000
rows_per_transaction = {rows_per_transaction}
{spool}
"#,
        kafka_extra = std::env::var("BENCH_KAFKA_EXTRA")
            .unwrap_or_default()
            .replace("\\n", "\n"),
        rows_per_transaction = args.rows_per_transaction,
        spool = args
            .spool_max_bytes
            .map(|bytes| format!("spool_max_bytes = {bytes}"))
            .unwrap_or_default(),
        schemas = root.join("schemas").display().to_string(),
        bootstrap = broker.bootstrap(),
        inbox = inbox.display().to_string(),
        mapping = root
            .join("deploy/config/lab_results.mapping.toml")
            .display()
            .to_string(),
    );
    let config: FileSourceConfig = toml::from_str(&text).expect("bench config parses");
    ServiceConfig::validate(&config).expect("bench config is valid");
    config
}

fn main() {
    let args = args();
    let runtime = bench_runtime();
    let broker = TestBroker::from_env();
    let dir = tempfile::tempdir().unwrap();
    let generated = Instant::now();
    let snapshot = Snapshot::initial(args.rows, 2026);
    let labels: Vec<&str> = args.inputs.iter().map(String::as_str).collect();
    let inputs = snapshot
        .write_compressed(dir.path(), &labels)
        .unwrap_or_else(|error| panic!("--inputs: {error}"));
    drop(snapshot);
    println!(
        "file-source ingest bench: {} rows (generated in {:.1} s), broker {}, {:?}, {} rows per transaction, spool_max_bytes {}, {} partitions, {} runs per input",
        args.rows,
        generated.elapsed().as_secs_f64(),
        broker.kind(),
        broker.guarantee(),
        args.rows_per_transaction,
        args.spool_max_bytes
            .map_or("default".to_string(), |bytes| bytes.to_string()),
        args.partitions,
        args.runs
    );
    println!(
        "{:<6} {:>7} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "input", "MiB", "median s", "min s", "max s", "CPU s", "rows/s"
    );
    for (label, source_path) in &inputs {
        let (mut seconds, mut cpu) = (Vec::new(), Vec::new());
        for run in 0..args.runs {
            let pipeline = runtime
                .block_on(broker.pipeline(&format!("ingest-{label}-{run}"), args.partitions));
            let inbox = dir.path().join(format!("inbox-{label}-{run}"));
            std::fs::create_dir_all(&inbox).unwrap();
            let path = inbox.join(source_path.file_name().unwrap());
            std::fs::copy(source_path, &path).unwrap();
            let config = config(&broker, &pipeline.name, &inbox, &args);
            let (trigger, shutdown) = snapfeed_runtime::shutdown::channel();
            let (started, cpu_before) = (Instant::now(), process_cpu());
            let outcomes = runtime
                .block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(1800),
                        file_source::ingest_paths(config, vec![path], shutdown),
                    )
                    .await
                })
                .expect("ingest finished within 30 min")
                .expect("ingest succeeded");
            seconds.push(started.elapsed().as_secs_f64());
            cpu.push((process_cpu() - cpu_before).as_secs_f64());
            drop(trigger);
            match &outcomes[..] {
                [FileOutcome::Ingested(report)] => {
                    assert_eq!(report.rows_sent as usize, args.rows, "every row sent")
                }
                other => panic!("expected one ingested file, got {other:?}"),
            }
        }
        let mib = std::fs::metadata(source_path).unwrap().len() as f64 / (1024.0 * 1024.0);
        let (median, min, max) = median_min_max(seconds);
        let (cpu_median, _, _) = median_min_max(cpu);
        println!(
            "{label:<6} {mib:>7.1} {median:>10.2} {min:>10.2} {max:>10.2} {cpu_median:>10.2} {:>12.0}",
            args.rows as f64 / median
        );
    }
}

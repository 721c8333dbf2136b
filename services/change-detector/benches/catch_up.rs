//! The detector's read rate as a share of what the broker can deliver ("ceiling"): how fast
//! the change-detector works through a snapshot already on `snapshots` (`--changed` of its
//! rows updated, the rest unchanged), next to a plain librdkafka consumer — the same client
//! settings as the detector's consumer (`consumer_config`, plus `BENCH_KAFKA_EXTRA`), no
//! decoding, no state, no producing — reading the very same records.
//!
//! Per run, on a fresh pipeline: the first snapshot (`--rows` rows) is published with the
//! harness publisher (file-source's record layout) and a detector builds its state from it,
//! then stops. The next snapshot is published after each partition's end. Then, in turn:
//! 1. the ceiling consumer, assigned at those offsets, reads until it has every record of the
//!    next snapshot (its rows and one end marker per partition);
//! 2. a detector is started: it restores its state, joins the group and works through the
//!    snapshot, emitting the changes in transactions (`exactly_once`) or with acknowledged
//!    flushes (`at_least_once`);
//! 3. the ceiling consumer reads the same records again (the faster of its two reads is the
//!    ceiling, so a cold first read does not flatter the detector).
//!
//! Both are timed from their first record to their last, so neither the group join (~20 s on
//! Tansu) nor the restore is in the figure: the detector's progress is read from its
//! `records_total` every 10 ms (every 100 ms once the first reading that moved is 2 s old),
//! and its rate counted from that first reading. The counter moves as records are decided, so
//! the commit of the last transaction (tens of ms) is not in the window either.
//! Checked: exactly the updated rows come out as updates, every other row as unchanged.
//!
//! The broker is the harness's (`SNAPFEED_TEST_BROKER=tansu|nisshi`, `eval "$(.ci/install-
//! brokers)"`); its guarantee is the detector's (Nisshi: `at_least_once`). Not on librdkafka's
//! in-process mock: it loses the detector's committed offsets (see `main`), and keeps only
//! 5 MiB per partition.
//!
//! Run: `cargo bench -p change-detector --bench catch_up -- [--rows 500000] [--partitions 4]
//! [--changed 0.01] [--runs 3]`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failed run

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use snapfeed_harness::broker::{BrokerKind, TestBroker, TestPipeline};
use snapfeed_harness::endpoint::free_addr;
use snapfeed_harness::generator::{Snapshot, SnapshotDelta};
use snapfeed_harness::measure::{bench_runtime, median_min_max, process_cpu, BenchArgs};
use snapfeed_harness::metrics::metric;
use snapfeed_harness::schemas::{lab_results_mapping, load_dataset, schemas_dir};
use snapfeed_harness::snapshot_publisher::{PublishOptions, PublishReport, SnapshotPublisher};

const LIMIT: Duration = Duration::from_secs(600);

struct Args {
    rows: usize,
    partitions: i32,
    changed: f64,
    runs: usize,
}

fn args() -> Args {
    let given = BenchArgs::parse(&["--rows", "--partitions", "--changed", "--runs"]);
    Args {
        rows: given.get("--rows", 500_000),
        partitions: given.get("--partitions", 4),
        changed: given.get("--changed", 0.01),
        runs: given.get("--runs", 3),
    }
}

/// One run's figures: records per second from first record to last.
struct Rates {
    ceiling: f64,
    detector: f64,
}

fn main() {
    let args = args();
    let runtime = bench_runtime();
    runtime.block_on(async {
        let broker = TestBroker::from_env();
        // **Gap:** the mock cluster does not keep offsets committed in a transaction
        // (TxnOffsetCommit), and refuses a commit from outside a group that had a member: a
        // restarted detector would read the first snapshot again.
        assert!(
            broker.kind() != BrokerKind::Mock,
            "the catch-up bench needs a broker process: SNAPFEED_TEST_BROKER=tansu or nisshi \
             (after `eval \"$(.ci/install-brokers)\"`)"
        );
        println!(
            "change-detector catch-up bench: {} rows, {:.1}% updated, {} partitions, broker {} ({:?}), {} runs",
            args.rows,
            args.changed * 100.0,
            args.partitions,
            broker.kind(),
            broker.guarantee(),
            args.runs
        );
        let initial = Snapshot::initial(args.rows, 17);
        let (next, change_set) = initial.next(
            SnapshotDelta {
                updated: args.changed,
                ..SnapshotDelta::default()
            },
            18,
        );
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            let rates = run_once(&broker, &args, run, &initial, &next, change_set.updated.len())
                .await;
            println!(
                "  run {run}: ceiling {:.0} records/s, detector {:.0} records/s = {:.0}%",
                rates.ceiling,
                rates.detector,
                100.0 * rates.detector / rates.ceiling
            );
            runs.push(rates);
        }
        let (ceiling, cmin, cmax) = median_min_max(runs.iter().map(|r| r.ceiling).collect());
        let (detector, dmin, dmax) = median_min_max(runs.iter().map(|r| r.detector).collect());
        let (share, smin, smax) =
            median_min_max(runs.iter().map(|r| r.detector / r.ceiling).collect());
        println!(
            "{} rows, {} partitions ({}): plain consumer {ceiling:.0}/s ({cmin:.0}–{cmax:.0}); \
             detector {detector:.0}/s ({dmin:.0}–{dmax:.0}); share {:.0}% ({:.0}–{:.0}%)",
            args.rows,
            args.partitions,
            broker.kind(),
            share * 100.0,
            smin * 100.0,
            smax * 100.0
        );
    });
}

async fn run_once(
    broker: &TestBroker,
    args: &Args,
    run: usize,
    initial: &Snapshot,
    next: &Snapshot,
    updated: usize,
) -> Rates {
    let pipeline = broker
        .pipeline(&format!("catch-up-bench-{run}"), args.partitions)
        .await;
    let (store, dataset) = load_dataset(&schemas_dir(), &lab_results_mapping());
    let publisher = SnapshotPublisher::new(
        broker,
        &pipeline,
        args.partitions,
        broker.guarantee(),
        store,
        dataset,
    );

    // The detector's state: the first snapshot, decided and committed.
    tokio::task::block_in_place(|| publisher.publish(initial, &PublishOptions::file("a.csv")));
    let detector = support::start_detector(broker, &pipeline.name, LIMIT).await;
    detector
        .wait_metric_at_least(
            "snapfeed_change_detector_records_total{outcome=\"created\"}",
            args.rows as f64,
            LIMIT,
        )
        .await;
    detector.stop().await;
    // Where the next snapshot will begin: each partition's end, found by reading to it
    // (Tansu's ListOffsets "latest" is wrong; its fetch high-watermark is right).
    let from = tokio::task::block_in_place(|| ends(broker, &pipeline, args.partitions));
    let report =
        tokio::task::block_in_place(|| publisher.publish(next, &PublishOptions::file("b.csv")));

    let first_read =
        tokio::task::block_in_place(|| read_plainly(broker, &pipeline, &from, &report));
    let detector_rate = detector_rate(broker, &pipeline, next.rows().len(), updated).await;
    let second_read =
        tokio::task::block_in_place(|| read_plainly(broker, &pipeline, &from, &report));
    Rates {
        ceiling: first_read.max(second_read),
        detector: detector_rate,
    }
}

/// A consumer with exactly the detector's client settings (its `[kafka]` section, with
/// `BENCH_KAFKA_EXTRA`, through `consumer_config`), for the ceiling reads. It is assigned its
/// partitions and never commits, so it neither joins nor disturbs the detector's group.
fn plain_consumer(broker: &TestBroker, pipeline: &TestPipeline) -> BaseConsumer {
    support::detector_config(broker, &pipeline.name, free_addr())
        .kafka
        .consumer_config("bench-ceiling", "bench-ceiling", broker.guarantee())
        .create()
        .unwrap()
}

/// Each partition's end on `snapshots`: the offset after its last record, found by reading
/// it to its end (partition EOF).
fn ends(broker: &TestBroker, pipeline: &TestPipeline, partitions: i32) -> BTreeMap<i32, i64> {
    let mut ends: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    for message in broker.read_to_end(&pipeline.topics.snapshots, true) {
        ends.insert(message.partition(), message.offset() + 1);
    }
    ends
}

/// A plain consumer with the detector's client settings, assigned at `from`, reads every
/// record of the snapshot `report` describes; records per second from its first to its last.
fn read_plainly(
    broker: &TestBroker,
    pipeline: &TestPipeline,
    from: &BTreeMap<i32, i64>,
    report: &PublishReport,
) -> f64 {
    let consumer = plain_consumer(broker, pipeline);
    let mut assignment = TopicPartitionList::new();
    for (&partition, &offset) in from {
        assignment
            .add_partition_offset(
                &pipeline.topics.snapshots,
                partition,
                Offset::Offset(offset),
            )
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    // Its rows and one end marker on every partition.
    let expected = report.rows_sent as usize + report.rows_in_partition.len();
    let deadline = Instant::now() + LIMIT;
    let (mut read, mut bytes) = (0usize, 0usize);
    let mut first = None;
    while read < expected {
        assert!(
            Instant::now() < deadline,
            "plain consumer: {read} of {expected} records after {LIMIT:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                first.get_or_insert_with(Instant::now);
                read += 1;
                bytes += message.payload_len();
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(error)) => panic!("plain consumer: {error}"),
        }
    }
    let seconds = first.map_or(f64::NAN, |at| at.elapsed().as_secs_f64());
    println!(
        "    plain consumer: {read} records ({:.0} MiB) in {seconds:.3} s",
        bytes as f64 / (1 << 20) as f64
    );
    read as f64 / seconds
}

/// Starts a detector on the published next snapshot and times it from its first decided
/// record to its last; checks what it decided.
async fn detector_rate(
    broker: &TestBroker,
    pipeline: &TestPipeline,
    rows: usize,
    updated: usize,
) -> f64 {
    let detector = support::start_detector(broker, &pipeline.name, LIMIT).await;
    let decided = |text: &str| {
        ["unchanged", "updated", "created"]
            .iter()
            .map(|name| records(text, name))
            .sum::<f64>()
    };
    let deadline = Instant::now() + LIMIT;
    let mut first: Option<(Instant, f64, Duration)> = None;
    let last = loop {
        let text = detector.metrics();
        let now = Instant::now();
        let count = decided(&text);
        if count > 0.0 && first.is_none() {
            first = Some((now, count, process_cpu()));
        }
        if count >= rows as f64 {
            break (now, text);
        }
        assert!(
            now < deadline,
            "detector: {count} of {rows} records after {LIMIT:?}"
        );
        // Every 10 ms for a fast read; every 100 ms once it has taken 2 s, so that on a slow
        // broker the scrapes (each renders all of the detector's metrics) stay off its CPU.
        let slow = first.is_some_and(|(at, _, _)| at.elapsed() > Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(if slow { 100 } else { 10 })).await;
    };
    let cpu = process_cpu();
    let (first_at, first_count, first_cpu) = first.unwrap();
    let seconds = (last.0 - first_at).as_secs_f64();
    assert!(
        first_count < rows as f64,
        "the detector decided all {rows} records before the first reading: too few --rows to time"
    );
    let outcome = |name: &str| records(&last.1, name) as usize;
    assert_eq!(outcome("updated"), updated, "updated records");
    assert_eq!(outcome("unchanged"), rows - updated, "unchanged records");
    assert_eq!(outcome("created"), 0, "created records");
    let series = |name: &str| metric(&last.1, name).unwrap_or(0.0);
    let transactions = series("snapfeed_change_detector_transaction_seconds_count");
    println!(
        "    detector: {rows} records, the first {first_count} seen at the first reading; the rest in \
         {seconds:.3} s, process CPU {:.2} s; {transactions} transactions (or flushes) of {:.1} ms \
         on average",
        (cpu - first_cpu).as_secs_f64(),
        1e3 * series("snapfeed_change_detector_transaction_seconds_sum") / transactions.max(1.0)
    );
    detector.stop().await;
    (rows as f64 - first_count) / seconds
}

/// The detector's `records_total{outcome="<outcome>"}` in its metrics `text`.
fn records(text: &str, outcome: &str) -> f64 {
    metric(
        text,
        &format!("snapfeed_change_detector_records_total{{outcome=\"{outcome}\"}}"),
    )
    .unwrap_or(0.0)
}

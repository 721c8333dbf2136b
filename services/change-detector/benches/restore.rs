//! Restore over the network: `--entries` state entries spread over the `--partitions`
//! partitions of `state` (each on its key's partition, as the detector writes them), then a
//! change-detector started in-process — timed by its own `restore_seconds` (assignment →
//! every assigned partition read to its end and in memory), so the group join, which on Tansu
//! alone takes ~20 s, is not in the figure. Each run gets a fresh pipeline.
//!
//! The broker is the harness's: librdkafka's in-process mock by default, `SNAPFEED_TEST_BROKER=
//! tansu|nisshi` for a broker process over TCP (`eval "$(.ci/install-brokers)"` installs them).
//!
//! Run: `cargo bench -p change-detector --bench restore -- [--entries 200000] [--partitions 4]
//! [--runs 3]`. `BENCH_KAFKA_EXTRA` is appended to the detector's `[kafka]` section (`\n` for a
//! line break), to try librdkafka properties, e.g.
//! `BENCH_KAFKA_EXTRA='[kafka.consumer_options]\n"fetch.queue.backoff.ms" = "1000"\n'` (the
//! default this bench found to cost a second per queue refill).
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failed run

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use snapfeed_harness::broker::TestBroker;
use snapfeed_harness::measure::{bench_runtime, median_min_max, BenchArgs};
use snapfeed_harness::messages::send_waiting;
use snapfeed_harness::schemas::schemas_dir;
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::kafka::ProcessingGuarantee;
use snapfeed_runtime::partition::partition_for_key;
use snapfeed_runtime::records::{AvroRecord, DetectorState};

struct Args {
    entries: usize,
    partitions: i32,
    runs: usize,
}

fn args() -> Args {
    let given = BenchArgs::parse(&["--entries", "--partitions", "--runs"]);
    Args {
        entries: given.get("--entries", 200_000),
        partitions: given.get("--partitions", 4),
        runs: given.get("--runs", 3),
    }
}

/// Writes `entries` state entries (keys as long as real record keys) to `topic`.
fn write_state(broker: &TestBroker, topic: &str, entries: usize, partitions: i32) {
    let schemas = SchemaStore::load_dir(&schemas_dir()).unwrap();
    let schema = schemas.current(DetectorState::SCHEMA).unwrap();
    let producer: BaseProducer = broker
        .kafka_config()
        .producer_config("bench", ProcessingGuarantee::AtLeastOnce, None)
        .create()
        .unwrap();
    for i in 0..entries {
        let key = format!("05D{i:07}|ACC{i:09}|94500-6");
        let state = DetectorState {
            content_hash: format!("{:032x}", i as u128 * 0x9e37_79b9_7f4a_7c15),
            version: 1 + (i % 3) as i64,
            stream: "default".into(),
            first_seen_at: 1_796_000_000_000,
            last_changed_at: 1_796_000_000_000,
            last_snapshot_id: "ab".repeat(32),
            deleted: false,
            // As a detector writes it for a record of the current schema.
            tracked_hash: Some(format!("{:032x}", !(i as u128) * 0x9e37_79b9_7f4a_7c15)),
        };
        let value = schema.encode(&state).unwrap();
        let partition = partition_for_key(key.as_bytes(), partitions);
        send_waiting(
            &producer,
            BaseRecord::to(topic)
                .partition(partition)
                .key(&key)
                .payload(&value),
        );
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

fn main() {
    let args = args();
    let runtime = bench_runtime();
    runtime.block_on(async {
        let broker = TestBroker::from_env();
        println!(
            "change-detector restore bench: {} entries, {} partitions, broker {}, {} runs",
            args.entries,
            args.partitions,
            broker.kind(),
            args.runs
        );
        let mut seconds = Vec::new();
        for run in 1..=args.runs {
            let pipeline = broker
                .pipeline(&format!("restore-bench-{run}"), args.partitions)
                .await;
            let written = Instant::now();
            tokio::task::block_in_place(|| {
                write_state(
                    &broker,
                    &pipeline.topics.state,
                    args.entries,
                    args.partitions,
                )
            });
            let written = written.elapsed();
            let detector =
                support::start_detector(&broker, &pipeline.name, Duration::from_secs(300)).await;
            let restore = detector.metric("snapfeed_change_detector_restore_seconds_sum");
            let restored = detector.metric("snapfeed_change_detector_restored_entries_total");
            assert_eq!(
                restored as usize, args.entries,
                "every entry written was restored"
            );
            println!(
                "  run {run}: restore {restore:.3} s ({:.0} entries/s); writing them took {:.1} s",
                restored / restore.max(1e-9),
                written.as_secs_f64()
            );
            seconds.push(restore);
            detector.stop().await;
        }
        let (median, min, max) = median_min_max(seconds);
        println!(
            "restore of {} entries on {} partitions ({}): median {median:.3} s (min {min:.3}, max {max:.3})",
            args.entries,
            args.partitions,
            broker.kind()
        );
    });
}

//! What an operator's Prometheus sees of the sink: the undelivered changes per partition
//! (`consumer_lag{partition}`) while the API refuses and after it recovers; the end-to-end
//! latency from the file's claim (the change's `detected_at`) to the receipt; and the
//! `pipeline` label on every series, process metrics included.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use snapfeed_harness::metrics::metric;
use snapfeed_harness::stub_api::{Reply, Rule};
use snapfeed_harness::wait;

use common::{ends, key, Fixture, SinkOptions, TestChange};

const LIMIT: Duration = Duration::from_secs(90);
const CHANGES: usize = 12;
const CLAIMED_AGO: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_per_partition_end_to_end_latency_and_the_pipeline_label() {
    let f = Fixture::new("monitoring", 2).await;
    // The API refuses every change for now: they wait, and the lag shows them.
    f.stub.add_rule(Rule::body_contains(
        "HOLD",
        Reply::status(503).with_body("busy"),
    ));
    let options = SinkOptions::default()
        .sink("lag_interval_ms = 100")
        .retry("max_backoff_ms = 200");
    let sink = f.start_sink(&options).await;
    let changes: Vec<TestChange> = (0..CHANGES)
        .map(|i| {
            TestChange::new(key(i), 1)
                .marked("HOLD")
                .claimed_ago(CLAIMED_AGO)
        })
        .collect();
    let produced = f.produce(&changes).await;
    let mut per_partition: BTreeMap<i32, f64> = BTreeMap::new();
    for change in &produced {
        *per_partition.entry(change.partition).or_default() += 1.0;
    }
    assert_eq!(per_partition.len(), 2, "both partitions hold changes");
    let lag = |partition: i32| {
        metric(
            &sink.metrics(),
            &format!("snapfeed_api_sink_consumer_lag{{partition=\"{partition}\"}}"),
        )
    };
    wait::poll(LIMIT, Duration::from_millis(100), || {
        let now: BTreeMap<i32, Option<f64>> = per_partition.keys().map(|p| (*p, lag(*p))).collect();
        (now.iter().all(|(p, l)| *l == Some(per_partition[p])))
            .then_some(())
            .ok_or_else(|| format!("lag {now:?}, expected {per_partition:?}"))
    })
    .await;

    // The API recovers: everything is delivered and the lag goes back to 0.
    f.stub.clear_rules();
    f.wait_receipts(CHANGES, LIMIT).await;
    f.wait_committed(&ends(&produced), LIMIT).await;
    wait::poll(LIMIT, Duration::from_millis(100), || {
        let now: Vec<Option<f64>> = per_partition.keys().map(|p| lag(*p)).collect();
        now.iter()
            .all(|l| *l == Some(0.0))
            .then_some(())
            .ok_or_else(|| format!("lag {now:?} after delivery"))
    })
    .await;

    let text = sink.metrics();
    sink.stop().await;
    let count = metric(&text, "snapfeed_api_sink_end_to_end_seconds_count").unwrap();
    let sum = metric(&text, "snapfeed_api_sink_end_to_end_seconds_sum").unwrap();
    assert_eq!(count, CHANGES as f64, "one observation per delivery");
    let mean = sum / count;
    assert!(
        mean >= CLAIMED_AGO.as_secs_f64() && mean < CLAIMED_AGO.as_secs_f64() + 60.0,
        "latency measured from the claim: mean {mean} s"
    );
    assert_eq!(
        metric(
            &text,
            "snapfeed_api_sink_end_to_end_seconds_bucket{le=\"60\"}"
        ),
        Some(0.0),
        "nothing faster than its age"
    );
    // Every series, the process metrics too, names its pipeline.
    let label = format!("pipeline=\"{}\"", f.pipeline.name);
    let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(series.iter().all(|l| l.contains(&label)), "{text}");
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(
            series.iter().any(|l| l.starts_with(name)),
            "{name} missing:\n{text}"
        );
    }
}

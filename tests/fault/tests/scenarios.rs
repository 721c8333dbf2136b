//! Issue #7's fault scenarios, one test each: the three service binaries as OS processes on a
//! real broker, with the stub case API, fed generated snapshots; every scenario ends with the
//! ledger of truth (`snapfeed_fault::ledger`) and prints one `FAULT …` line of figures.
//!
//! Nisshi (SQLite storage, services `at_least_once`) runs all thirteen; Tansu (services
//! `exactly_once`) runs 1, 2, 3, 4, 8 and 13. The in-process mock broker skips them all (printed).
//!
//! Weakened for a broker gap, and named so in the test names:
//! - Tansu keeps aborted records visible to read_committed readers, so after a kill `changes`
//!   may hold copies of a change from an aborted transaction: checked "at least once, every copy
//!   identical" instead of "exactly once" (`…_on_tansu_changes_checked_as_identical_copies`).
//!   The API side is checked exactly (unique effects = expected) on every broker.
//! - Nisshi refuses transactions: services run `at_least_once` there, where "at least once,
//!   identical copies" is the promise itself, not a weakening.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use rand::Rng;
use snapfeed_fault::interop::{read_every_topic, Dropped};
use snapfeed_fault::ledger::{Expectation, Ledger};
use snapfeed_fault::rig::{FileFate, Proc, Rig, Service};
use snapfeed_harness::broker::{BrokerKind, StopSignal};
use snapfeed_harness::generator::{Compression, Dirt, Snapshot, SnapshotDelta, WriteOptions};
use snapfeed_harness::stub_api::{Reply, Rule};
use snapfeed_harness::stub_registry::StubRegistry;
use snapfeed_runtime::avro::registry::Registry;
use tokio::task::block_in_place;

const NISSHI_AND_TANSU: &[BrokerKind] = &[BrokerKind::Nisshi, BrokerKind::Tansu];
const NISSHI_ONLY: &[BrokerKind] = &[BrokerKind::Nisshi];

/// Bound of a file's way through file-source.
const FILE_LIMIT: Duration = Duration::from_secs(180);
/// Bound of the wait for every change to take effect at the API.
const DELIVERY_LIMIT: Duration = Duration::from_secs(300);

fn some_changes() -> SnapshotDelta {
    SnapshotDelta {
        updated: 0.01,
        added: 0.005,
        removed: 0.0,
    }
}

/// A few rows of each rejected kind: within `max_reject_ratio`, so the file is ingested.
fn a_little_dirt() -> WriteOptions {
    WriteOptions {
        dirt: Dirt {
            bad_dates: 4,
            missing_required: 3,
            duplicate_keys: 3,
            ..Dirt::default()
        },
        ..WriteOptions::default()
    }
}

/// Drops `snapshot` as `name`, adds it to `expected`, waits until file-source processed it.
async fn ingest(
    rig: &mut Rig,
    expected: &mut Expectation,
    snapshot: &Snapshot,
    name: &str,
    options: &WriteOptions,
) -> usize {
    let file = rig.drop_snapshot(snapshot, name, options);
    let added = expected.file(snapshot, file.written.as_ref().unwrap(), &file.hash);
    assert_eq!(
        rig.wait_file_done(name, FILE_LIMIT).await,
        FileFate::Processed,
        "{name} was failed"
    );
    added
}

/// Drops `snapshot` as `name` and adds it to `expected`, without waiting.
fn drop_into(
    rig: &mut Rig,
    expected: &mut Expectation,
    snapshot: &Snapshot,
    name: &str,
    options: &WriteOptions,
) {
    let file = rig.drop_snapshot(snapshot, name, options);
    expected.file(snapshot, file.written.as_ref().unwrap(), &file.hash);
}

/// Waits for the ledger, stops every process (SIGTERM), checks the ledger and prints the figures.
async fn finish(rig: &Rig, expected: &Expectation, kills: usize, procs: Vec<Proc>) {
    Ledger::wait(rig, expected, DELIVERY_LIMIT).await;
    for mut proc in procs {
        assert!(
            proc.alive(),
            "{} {} stopped by itself",
            proc.service.name(),
            proc.instance
        );
        proc.terminate();
    }
    // Reading the topics may look schema registry ids up (blocking): off the async workers.
    let figures = block_in_place(|| Ledger::check(rig, expected, kills));
    println!("{figures}");
}

/// Waits (bounded) until the detector decided `rows` records.
async fn wait_decided(detector: &Proc, rows: f64) {
    let deadline = Instant::now() + DELIVERY_LIMIT;
    while decided(detector) < rows {
        assert!(
            Instant::now() < deadline,
            "the detector decided {} of {rows} rows",
            decided(detector)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Records decided by a detector (every outcome), from its `/metrics`.
fn decided(proc: &Proc) -> f64 {
    let Some((200, text)) = block_in_place(|| proc.process.get("/metrics")) else {
        return 0.0;
    };
    ["unchanged", "created", "updated", "stale", "replayed"]
        .iter()
        .filter_map(|outcome| {
            let series = format!("snapfeed_change_detector_records_total{{outcome=\"{outcome}\"}}");
            snapfeed_harness::metrics::metric(&text, &series)
        })
        .sum()
}

// ── 1 ────────────────────────────────────────────────────────────────────────────────────────

/// New snapshot, then 1% changed + 0.5% new (with a few rejected rows), then the same file
/// again (byte-identical: a re-delivery) and the same content generated half an hour later
/// (every row unchanged): exactly the expected changes, once each at the API. Then every topic
/// is read back by confluent-kafka and fastavro, each record equal to the generator's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_happy_path_three_snapshots_exact_ledger_on_tansu_changes_checked_as_identical_copies()
{
    let Some(mut rig) = Rig::new("s01-happy-path", 4, NISSHI_AND_TANSU).await else {
        return;
    };
    let mut expected = Expectation::default();
    let procs = rig.start_pipeline();
    let s1 = Snapshot::initial(4000, 101);
    ingest(
        &mut rig,
        &mut expected,
        &s1,
        "elr-1.csv",
        &WriteOptions::default(),
    )
    .await;
    let (s2, delta) = s1.next(some_changes(), 102);
    let added = ingest(&mut rig, &mut expected, &s2, "elr-2.csv", &a_little_dirt()).await;
    assert!(added > 0 && added <= delta.created.len() + delta.updated.len());
    // A byte-identical re-delivery under another name: recognised by content, nothing sent.
    let bytes = std::fs::read(rig.processed_dir().join("elr-2.csv")).unwrap();
    rig.drop_bytes("elr-2-again.csv", &bytes);
    assert_eq!(
        rig.wait_file_done("elr-2-again.csv", FILE_LIMIT).await,
        FileFate::Processed
    );
    // The same content, generated later: every row is decided unchanged (rows rejected in
    // elr-2 come back clean, and count as what they are).
    let (s3, none) = s2.next(SnapshotDelta::default(), 103);
    assert!(none.created.is_empty() && none.updated.is_empty());
    ingest(
        &mut rig,
        &mut expected,
        &s3,
        "elr-3.csv",
        &WriteOptions::default(),
    )
    .await;
    // Every row of the three ingested files decided before the ledger is read, so a change the
    // last file must not cause would be seen.
    // (elr-2's bad-date and missing-result rows never reach the detector.)
    let rows = (s1.rows().len() + s2.rows().len() - 7 + s3.rows().len()) as f64;
    wait_decided(&procs[0], rows).await;
    finish(&rig, &expected, 0, procs).await;
    // Every topic, read by Confluent's client and fastavro from the exported schemas.
    let (clean, dirty) = (WriteOptions::default(), a_little_dirt());
    read_every_topic(
        &rig,
        &[
            Dropped {
                name: "elr-1.csv",
                snapshot: &s1,
                options: &clean,
            },
            Dropped {
                name: "elr-2.csv",
                snapshot: &s2,
                options: &dirty,
            },
            Dropped {
                name: "elr-3.csv",
                snapshot: &s3,
                options: &clean,
            },
        ],
        None,
    );
}

// ── 2 ────────────────────────────────────────────────────────────────────────────────────────

/// file-source SIGKILLed at random points while it ingests a large file (20k rows, a checkpoint
/// every 1000 rows; a kill lands 0–700 ms after the file is claimed: in start-up, in the
/// validating pass or between chunks), restarted each time, ten times; the file resumes from
/// its last checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_file_source_sigkilled_during_a_large_file_nothing_lost_on_tansu_changes_checked_as_identical_copies(
) {
    let Some(mut rig) = Rig::new("s02-kill-file-source", 4, NISSHI_AND_TANSU).await else {
        return;
    };
    rig.rows_per_transaction = 1000;
    let mut expected = Expectation::default();
    let detector = rig.start(Service::ChangeDetector, "a");
    let sink = rig.start(Service::ApiSink, "a");
    let mut source = rig.start(Service::FileSource, "a");
    let s1 = Snapshot::initial(20_000, 201);
    drop_into(
        &mut rig,
        &mut expected,
        &s1,
        "elr-1.csv",
        &WriteOptions::default(),
    );
    // Each kill waits (bounded) until the restarted file-source has claimed the file again,
    // then lands after a short random delay: a fast ingest would otherwise finish the file
    // between kills timed from the drop, and the kills would prove nothing.
    let mut mid_file = 0;
    for _ in 0..10 {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !rig.in_work("elr-1.csv")
            && !rig.processed_dir().join("elr-1.csv").exists()
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delay = rig.random_delay(Duration::from_millis(0), Duration::from_millis(700));
        tokio::time::sleep(delay).await;
        if rig.in_work("elr-1.csv") {
            mid_file += 1;
        }
        rig.kill_and_restart(&mut source);
    }
    println!(
        "FAULT s02-kill-file-source: {mid_file} of 10 kills landed while the file was being ingested"
    );
    assert!(mid_file >= 3, "too few kills landed mid-file: {mid_file}");
    assert_eq!(
        rig.wait_file_done("elr-1.csv", FILE_LIMIT).await,
        FileFate::Processed
    );
    finish(&rig, &expected, 10, vec![detector, sink, source]).await;
}

// ── 3 ────────────────────────────────────────────────────────────────────────────────────────

/// change-detector SIGKILLed at random points while it processes — after a random number
/// (20..250) of further records decided by the running instance, so every kill lands mid-stream,
/// batches being 20 records — restarted, ten times; the second snapshot arrives after the third kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_change_detector_sigkilled_while_processing_nothing_lost_on_tansu_changes_checked_as_identical_copies(
) {
    let Some(mut rig) = Rig::new("s03-kill-change-detector", 4, NISSHI_AND_TANSU).await else {
        return;
    };
    rig.batch_max_records = 20;
    let mut expected = Expectation::default();
    let mut detector = rig.start(Service::ChangeDetector, "a");
    let sink = rig.start(Service::ApiSink, "a");
    let source = rig.start(Service::FileSource, "a");
    let s1 = Snapshot::initial(6000, 301);
    let (s2, _) = s1.next(some_changes(), 302);
    drop_into(
        &mut rig,
        &mut expected,
        &s1,
        "elr-1.csv",
        &WriteOptions::default(),
    );
    let mut mid_stream = 0;
    for kill in 0..10 {
        if kill == 3 {
            drop_into(
                &mut rig,
                &mut expected,
                &s2,
                "elr-2.csv",
                &WriteOptions::default(),
            );
        }
        let target = rig.rng.gen_range(20.0..250.0);
        let deadline = Instant::now() + Duration::from_secs(8); // bounded: an idle detector is killed anyway
        while decided(&detector) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if decided(&detector) >= target {
            mid_stream += 1;
        }
        rig.kill_and_restart(&mut detector);
    }
    println!(
        "FAULT s03-kill-change-detector: {mid_stream} of 10 kills landed after a random count of \
         records decided, mid-stream"
    );
    // The ledger is the verdict; this only proves the kills were not all on an idle detector
    // (between 2 and 8 of 10 land mid-stream in practice: it often catches up with
    // file-source between restarts).
    assert!(mid_stream >= 1, "no kill landed mid-stream");
    finish(&rig, &expected, 10, vec![detector, sink, source]).await;
}

// ── 4 ────────────────────────────────────────────────────────────────────────────────────────

/// api-sink SIGKILLed during delivery — after a random number (20..300) of further changes took
/// effect, while the API answers after 20 ms, so requests are in flight and deliveries are
/// uncommitted at every kill — restarted, ten times: every change takes effect once, repeats
/// carry the same Idempotency-Key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_api_sink_sigkilled_during_delivery_each_change_takes_effect_once_on_tansu_changes_checked_as_identical_copies(
) {
    let Some(mut rig) = Rig::new("s04-kill-api-sink", 4, NISSHI_AND_TANSU).await else {
        return;
    };
    rig.stub
        .set_default_reply(Reply::ok().with_delay(Duration::from_millis(20)));
    let mut expected = Expectation::default();
    let detector = rig.start(Service::ChangeDetector, "a");
    let mut sink = rig.start(Service::ApiSink, "a");
    let source = rig.start(Service::FileSource, "a");
    let s1 = Snapshot::initial(5000, 401);
    let (s2, _) = s1.next(some_changes(), 402);
    ingest(
        &mut rig,
        &mut expected,
        &s1,
        "elr-1.csv",
        &WriteOptions::default(),
    )
    .await;
    let mut mid_delivery = 0;
    for kill in 0..10 {
        if kill == 6 {
            drop_into(
                &mut rig,
                &mut expected,
                &s2,
                "elr-2.csv",
                &WriteOptions::default(),
            );
        }
        let target = rig.stub.unique_effects() + rig.rng.gen_range(20..300);
        if rig
            .stub
            .wait_for_unique_effects(target, Duration::from_secs(15))
            .await
        {
            mid_delivery += 1;
        }
        rig.kill_and_restart(&mut sink);
    }
    println!(
        "FAULT s04-kill-api-sink: {mid_delivery} of 10 kills landed after a random count of \
         further deliveries, mid-delivery"
    );
    assert!(
        mid_delivery >= 3,
        "too few kills landed mid-delivery: {mid_delivery}"
    );
    finish(&rig, &expected, 10, vec![detector, sink, source]).await;
}

// ── 5 ────────────────────────────────────────────────────────────────────────────────────────

/// The API refuses connections for 30 s, then answers 503 for 30 s, then recovers: the sink
/// keeps retrying and delivers everything, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_api_outage_refused_then_503_then_recovered_delivers_everything() {
    let Some(mut rig) = Rig::new("s05-api-outage", 4, NISSHI_ONLY).await else {
        return;
    };
    let mut expected = Expectation::default();
    let procs = rig.start_pipeline();
    let s1 = Snapshot::initial(3000, 501);
    drop_into(
        &mut rig,
        &mut expected,
        &s1,
        "elr-1.csv",
        &WriteOptions::default(),
    );
    assert!(rig.stub.wait_for_unique_effects(200, DELIVERY_LIMIT).await);
    rig.stub.go_down().await;
    let down_at = rig.stub.requests().len();
    let (s2, _) = s1.next(some_changes(), 502);
    ingest(
        &mut rig,
        &mut expected,
        &s2,
        "elr-2.csv",
        &WriteOptions::default(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        rig.stub.requests().len(),
        down_at,
        "requests arrived while the API was down"
    );
    rig.stub.set_default_reply(Reply::status(503));
    rig.stub.come_up().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let refused = rig.stub.requests().len() - down_at;
    assert!(refused > 0, "the sink did not retry during the 503 phase");
    assert!(
        rig.stub.unique_effects() < expected.delivered().len(),
        "everything was delivered before the outage"
    );
    rig.stub.set_default_reply(Reply::ok());
    println!("FAULT s05-api-outage: 30 s refused, then {refused} requests answered 503 in 30 s");
    finish(&rig, &expected, 0, procs).await;
}

// ── 6 ────────────────────────────────────────────────────────────────────────────────────────

/// A 429 storm with `Retry-After: 3` for 15 s: each lane waits what the header says, so the
/// sink's request rate drops to at most one request per lane per 3 s (plus each lane's first);
/// then everything is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_429_storm_with_retry_after_slows_the_sink_to_what_the_header_allows() {
    let Some(mut rig) = Rig::new("s06-429-storm", 4, NISSHI_ONLY).await else {
        return;
    };
    const RETRY_AFTER_S: u64 = 3;
    const STORM: Duration = Duration::from_secs(15);
    const LANES: u64 = 4 * 4; // partitions × lanes_per_partition
    let mut expected = Expectation::default();
    let procs = rig.start_pipeline();
    let s1 = Snapshot::initial(3000, 601);
    drop_into(
        &mut rig,
        &mut expected,
        &s1,
        "elr-1.csv",
        &WriteOptions::default(),
    );
    assert!(rig.stub.wait_for_unique_effects(300, DELIVERY_LIMIT).await);
    let before = rig.stub.requests().len();
    let calm = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calm_rate = (rig.stub.requests().len() - before) as f64 / calm.elapsed().as_secs_f64();
    rig.stub
        .set_default_reply(Reply::status(429).retry_after(RETRY_AFTER_S));
    let start = rig.stub.requests().len();
    tokio::time::sleep(STORM).await;
    rig.stub.set_default_reply(Reply::ok());
    let in_storm = rig.stub.requests()[start..]
        .iter()
        .filter(|r| r.status == 429)
        .count() as u64;
    let allowed = LANES * (STORM.as_secs() / RETRY_AFTER_S + 1);
    println!(
        "FAULT s06-429-storm: {calm_rate:.0} requests/s before; {in_storm} requests in the {} s \
         storm ({:.1}/s), header allows at most {allowed}",
        STORM.as_secs(),
        in_storm as f64 / STORM.as_secs_f64()
    );
    assert!(in_storm > 0, "no request during the storm");
    assert!(
        in_storm <= allowed,
        "{in_storm} requests in the storm; Retry-After allows {allowed}"
    );
    finish(&rig, &expected, 0, procs).await;
}

// ── 7 ────────────────────────────────────────────────────────────────────────────────────────

/// The broker (Nisshi, SQLite storage) stopped mid-stream with SIGTERM and restarted, later with
/// SIGKILL: every service reconnects by itself; nothing lost. Checked exactly, after both
/// restarts: Nisshi commits each produce and offset commit to SQLite (WAL) before it answers,
/// so a SIGKILL loses nothing it acknowledged.
///
/// This once stalled: the change-detector's state restore after a restart read transport
/// errors its idle reader had queued during the outage and gave the partitions up for good
/// (fixed in `change_detector::detect`; `tests/broker_restart.rs` there pins it down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_broker_restarts_sigterm_and_sigkill_services_reconnect_nothing_lost() {
    let Some(mut rig) = Rig::new("s07-broker-restart", 4, NISSHI_ONLY).await else {
        return;
    };
    let mut expected = Expectation::default();
    let procs = rig.start_pipeline();
    let s1 = Snapshot::initial(4000, 701);
    drop_into(
        &mut rig,
        &mut expected,
        &s1,
        "elr-1.csv",
        &WriteOptions::default(),
    );
    assert!(
        rig.stub.wait_for_unique_effects(300, DELIVERY_LIMIT).await,
        "no 300 deliveries before the SIGTERM restart ({})",
        rig.stub.unique_effects()
    );
    block_in_place(|| rig.broker.restart(StopSignal::Term));
    let (s2, _) = s1.next(some_changes(), 702);
    drop_into(
        &mut rig,
        &mut expected,
        &s2,
        "elr-2.csv",
        &WriteOptions::default(),
    );
    // Progress after the restart, short of the end, so the next restart is mid-stream too.
    let now = rig.stub.unique_effects();
    let target = (now + 200).min(expected.delivered().len());
    assert!(
        rig.stub
            .wait_for_unique_effects(target, Duration::from_secs(120))
            .await,
        "no progress after the SIGTERM restart ({} of {target})",
        rig.stub.unique_effects()
    );
    // A bigger third snapshot (20% changed, 5% new); SIGKILL once its delivery is under way.
    let (s3, _) = s2.next(
        SnapshotDelta {
            updated: 0.2,
            added: 0.05,
            removed: 0.0,
        },
        703,
    );
    let before = rig.stub.unique_effects();
    drop_into(
        &mut rig,
        &mut expected,
        &s3,
        "elr-3.csv",
        &WriteOptions::default(),
    );
    assert!(
        rig.stub
            .wait_for_unique_effects(before + 100, DELIVERY_LIMIT)
            .await,
        "no progress on the third snapshot before the SIGKILL restart ({} of {})",
        rig.stub.unique_effects(),
        before + 100
    );
    let before_kill = rig.stub.unique_effects();
    block_in_place(|| rig.broker.restart(StopSignal::Kill));
    println!(
        "FAULT s07-broker-restart: SIGTERM restart after 300+ deliveries, SIGKILL restart at \
         {before_kill} of {} delivered",
        expected.delivered().len()
    );
    finish(&rig, &expected, 2, procs).await;
}

// ── 8 ────────────────────────────────────────────────────────────────────────────────────────

/// A second change-detector and a second api-sink join mid-stream (rebalance), then one of each
/// is SIGKILLed (another rebalance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_rebalance_second_detector_and_sink_join_then_one_of_each_killed_on_tansu_changes_checked_as_identical_copies(
) {
    let Some(mut rig) = Rig::new("s08-rebalance", 4, NISSHI_AND_TANSU).await else {
        return;
    };
    let mut expected = Expectation::default();
    let detector_a = rig.start(Service::ChangeDetector, "a");
    let sink_a = rig.start(Service::ApiSink, "a");
    let source = rig.start(Service::FileSource, "a");
    let s1 = Snapshot::initial(6000, 801);
    drop_into(
        &mut rig,
        &mut expected,
        &s1,
        "elr-1.csv",
        &WriteOptions::default(),
    );
    assert!(rig.stub.wait_for_unique_effects(300, DELIVERY_LIMIT).await);
    let mut detector_b = rig.start(Service::ChangeDetector, "b");
    let sink_b = rig.start(Service::ApiSink, "b");
    let (s2, _) = s1.next(some_changes(), 802);
    drop_into(
        &mut rig,
        &mut expected,
        &s2,
        "elr-2.csv",
        &WriteOptions::default(),
    );
    let delay = rig.random_delay(Duration::from_millis(500), Duration::from_millis(3000));
    tokio::time::sleep(delay).await;
    detector_b.kill();
    let mut sink_a = sink_a;
    sink_a.kill();
    let (s3, _) = s2.next(some_changes(), 803);
    drop_into(
        &mut rig,
        &mut expected,
        &s3,
        "elr-3.csv",
        &WriteOptions::default(),
    );
    finish(&rig, &expected, 2, vec![detector_a, sink_b, source]).await;
}

// ── 9 ────────────────────────────────────────────────────────────────────────────────────────

/// A change the API always rejects with 400 becomes a dead letter while everything else flows;
/// once the API is "fixed", `api-sink redrive` delivers it. The dead letter nests the change
/// and its record as typed records fastavro reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_poison_change_is_dead_lettered_then_redriven_once_fixed() {
    let Some(mut rig) = Rig::new("s09-poison", 4, NISSHI_ONLY).await else {
        return;
    };
    let mut expected = Expectation::default();
    let s1 = Snapshot::initial(2000, 901);
    // A row whose accession number is its own (no second test on the specimen): the rule hits
    // exactly one change.
    let accessions: Vec<&str> = s1
        .rows()
        .iter()
        .map(|r| r.get("Accession_Number").unwrap())
        .collect();
    let poison = s1
        .rows()
        .iter()
        .find(|r| {
            let accession = r.get("Accession_Number").unwrap();
            accessions.iter().filter(|a| **a == accession).count() == 1
        })
        .unwrap();
    let accession = poison.get("Accession_Number").unwrap().to_string();
    rig.stub.add_rule(Rule::body_contains(
        format!("\"{accession}\""),
        Reply::status(400).with_body(r#"{"error":"case rejected"}"#),
    ));
    let procs = rig.start_pipeline();
    drop_into(
        &mut rig,
        &mut expected,
        &s1,
        "elr-1.csv",
        &WriteOptions::default(),
    );
    let poison_id = (
        snapfeed_fault::ledger::canonical_key(&poison.key()),
        expected.version(&poison.key()).unwrap(),
    );
    expected.dead_letters.insert(poison_id.clone());
    Ledger::wait(&rig, &expected, DELIVERY_LIMIT).await;
    let refused = Ledger::check(&rig, &expected, 0);
    println!("{refused}");

    // Fixed: redrive it with the binary, as an operator would.
    rig.stub.clear_rules();
    let output = block_in_place(|| {
        rig.operator_command(Service::ApiSink, "a", &["redrive", "--status", "400"])
    });
    assert!(
        output.status.success(),
        "redrive failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "FAULT s09-poison: redrive said: {}",
        String::from_utf8_lossy(&output.stdout).trim()
    );
    expected.dead_letters.remove(&poison_id);
    expected.redriven.insert(poison_id);
    finish(&rig, &expected, 0, procs).await;
    // The dead letter nests the refused change with its record, readable by fastavro.
    let summary = read_every_topic(
        &rig,
        &[Dropped {
            name: "elr-1.csv",
            snapshot: &s1,
            options: &WriteOptions::default(),
        }],
        None,
    );
    assert!(
        summary.contains("dead letters with their record nested: 1"),
        "{summary}"
    );
}

// ── 10 ───────────────────────────────────────────────────────────────────────────────────────

/// Malformed files — truncated gzip, a wrong header, binary garbage, 10,000 bad rows, an empty
/// file — each fail whole into `failed/` with a report and send nothing; a file with a few bad
/// rows is ingested with its bad rows on `rejects`; a file still being written is left alone
/// until it stops growing; the services keep running throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_malformed_files_fail_whole_or_reject_rows_or_wait_and_services_keep_running() {
    let Some(mut rig) = Rig::new("s10-malformed-files", 4, NISSHI_ONLY).await else {
        return;
    };
    rig.stable_for_ms = 1500;
    let mut expected = Expectation::default();
    let procs = rig.start_pipeline();

    // Failing files (their rows, were any sent, would be unexpected changes).
    let staging = rig.root.path().join("staging");
    let truncated = {
        let path = staging.join("full.csv.gz");
        Snapshot::initial(800, 1001)
            .write(
                &path,
                &WriteOptions {
                    compression: Compression::Gzip,
                    ..WriteOptions::default()
                },
            )
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        bytes[..bytes.len() / 2].to_vec()
    };
    let wrong_header = {
        let path = staging.join("header.csv");
        Snapshot::initial(300, 1002)
            .write(
                &path,
                &WriteOptions {
                    omit_columns: vec!["Test_Result".into()],
                    ..WriteOptions::default()
                },
            )
            .unwrap();
        std::fs::read(&path).unwrap()
    };
    let garbage: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let bad_rows = rig.drop_snapshot(
        &Snapshot::initial(10_000, 1003),
        "bad-rows.csv",
        &WriteOptions {
            dirt: Dirt {
                bad_dates: 10_000,
                ..Dirt::default()
            },
            ..WriteOptions::default()
        },
    );
    rig.drop_bytes("truncated.csv.gz", &truncated);
    rig.drop_bytes("wrong-header.csv", &wrong_header);
    rig.drop_bytes("garbage.csv", &garbage);
    rig.drop_bytes("empty.csv", b"");
    let failing = [
        ("truncated.csv.gz", Some("read")),
        ("wrong-header.csv", Some("header")),
        ("garbage.csv", None),
        (bad_rows.name.as_str(), Some("rejects")),
        ("empty.csv", Some("empty")),
    ];
    for (name, stage) in failing {
        assert_eq!(
            rig.wait_file_done(name, FILE_LIMIT).await,
            FileFate::Failed,
            "{name}"
        );
        let report_path = rig.failed_dir().join(format!("{name}.error.json"));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap_or_else(|e| {
                panic!("{}: {e}", report_path.display());
            }))
            .unwrap();
        if let Some(stage) = stage {
            assert_eq!(report["stage"], stage, "{name}: {report}");
        }
        println!(
            "FAULT s10-malformed-files: {name} → failed/ (stage {})",
            report["stage"]
        );
    }

    // A good file with a few bad rows: ingested, the bad rows on `rejects`.
    let s1 = Snapshot::initial(2000, 1010);
    ingest(&mut rig, &mut expected, &s1, "elr-1.csv", &a_little_dirt()).await;

    // A file still being written: appended in pieces (cut mid-row) every 300 ms, each resetting
    // the stability clock; not taken until it stops growing.
    let (s2, _) = s1.next(some_changes(), 1011);
    let staged = staging.join("growing.csv");
    let written = s2.write(&staged, &WriteOptions::default()).unwrap();
    rig.health.remember(&s2);
    let bytes = std::fs::read(&staged).unwrap();
    let hash = snapfeed_fault::rig::file_hash(&staged);
    let target = rig.inbox().join("growing.csv");
    {
        let mut file = std::fs::File::create(&target).unwrap();
        for piece in bytes.chunks(bytes.len() / 10 + 1) {
            file.write_all(piece).unwrap();
            file.flush().unwrap();
            assert!(
                target.is_file() && !rig.in_work("growing.csv"),
                "growing.csv was taken while still being written"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    expected.file(&s2, &written, &hash);
    assert_eq!(
        rig.wait_file_done("growing.csv", FILE_LIMIT).await,
        FileFate::Processed
    );
    for proc in &procs {
        assert!(proc.alive(), "{} stopped", proc.service.name());
    }
    finish(&rig, &expected, 0, procs).await;
}

// ── 11 ───────────────────────────────────────────────────────────────────────────────────────

/// Health data never in logs: every scenario scans its own service logs (the ledger's last
/// check); this one runs the services at `debug` level through the paths most tempted to log a
/// value — rejected rows, a failed file, a change the API refuses — and scans everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_no_name_dob_phone_or_result_in_any_service_log_even_at_debug_level() {
    let Some(mut rig) = Rig::new("s11-no-health-data-in-logs", 4, NISSHI_ONLY).await else {
        return;
    };
    rig.log_level = "debug".into();
    let mut expected = Expectation::default();
    let s1 = Snapshot::initial(1500, 1101);
    let poison = &s1.rows()[7];
    let accession = poison.get("Accession_Number").unwrap().to_string();
    rig.stub.add_rule(Rule::body_contains(
        format!("\"{accession}\""),
        Reply::status(422).with_body(r#"{"error":"case rejected"}"#),
    ));
    let procs = rig.start_pipeline();
    ingest(&mut rig, &mut expected, &s1, "elr-1.csv", &a_little_dirt()).await;
    for row in s1.rows() {
        if row.get("Accession_Number") == Some(accession.as_str()) {
            if let Some(version) = expected.version(&row.key()) {
                expected
                    .dead_letters
                    .insert((snapfeed_fault::ledger::canonical_key(&row.key()), version));
            }
        }
    }
    let (s2, _) = s1.next(some_changes(), 1102);
    rig.drop_snapshot(
        &s2,
        "no-result-column.csv",
        &WriteOptions {
            omit_columns: vec!["Test_Result".into()],
            ..WriteOptions::default()
        },
    );
    assert_eq!(
        rig.wait_file_done("no-result-column.csv", FILE_LIMIT).await,
        FileFate::Failed
    );
    finish(&rig, &expected, 0, procs).await;
    let bytes: u64 = rig
        .logs()
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "FAULT s11-no-health-data-in-logs: {} log files, {bytes} bytes at debug level, {} \
         generated names and dates of birth (plus every phone and result) looked for: none found",
        rig.logs().len(),
        rig.health.len()
    );
    assert!(bytes > 0);
}

// ── 12 ───────────────────────────────────────────────────────────────────────────────────────

/// Files out of order: the 10:30 export arrives after the 11:00 one (the names carry the time,
/// `source.snapshot_time` is `auto`). The late file is ingested, and its every row passed over by
/// the detector: no change rolls a case back to 10:30 content; the 11:30 export then emits only
/// its real changes against 11:00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_an_older_export_arriving_late_changes_nothing_at_the_api() {
    let Some(mut rig) = Rig::new("s12-out-of-order", 4, NISSHI_ONLY).await else {
        return;
    };
    let plain = WriteOptions::default();
    let mut expected = Expectation::default();
    let procs = rig.start_pipeline();
    let s1 = Snapshot::initial(2000, 1201);
    let (s2, _) = s1.next(some_changes(), 1202);
    let (s3, _) = s2.next(some_changes(), 1203);
    let (s4, _) = s3.next(some_changes(), 1204);
    ingest(
        &mut rig,
        &mut expected,
        &s1,
        "elr_20261203_100000.csv",
        &plain,
    )
    .await;
    ingest(
        &mut rig,
        &mut expected,
        &s3,
        "elr_20261203_110000.csv",
        &plain,
    )
    .await;
    // Not added to `expected`'s changes: it must change nothing — only be passed over.
    rig.drop_snapshot(&s2, "elr_20261203_103000.csv", &plain);
    expected.late_files.insert("elr_20261203_103000.csv".into());
    assert_eq!(
        rig.wait_file_done("elr_20261203_103000.csv", FILE_LIMIT)
            .await,
        FileFate::Processed
    );
    ingest(
        &mut rig,
        &mut expected,
        &s4,
        "elr_20261203_113000.csv",
        &plain,
    )
    .await;
    let rows = (s1.rows().len() + s2.rows().len() + s3.rows().len() + s4.rows().len()) as f64;
    wait_decided(&procs[0], rows).await;
    let stale = metric_of(
        &procs[0],
        "snapfeed_change_detector_records_total{outcome=\"stale\"}",
    );
    assert_eq!(
        stale,
        s2.rows().len() as f64,
        "the late file's rows passed over"
    );
    // The operator's view: `reconcile` says where the late file's rows went.
    let output = block_in_place(|| {
        rig.operator_command(
            Service::ChangeDetector,
            "a",
            &["reconcile", "--file", "elr_20261203_103000.csv"],
        )
    });
    let said = String::from_utf8_lossy(&output.stdout);
    println!("FAULT s12-out-of-order: reconcile said:\n{said}");
    let rows = s2.rows().len();
    let rows = format!("{},{:03}", rows / 1000, rows % 1000);
    assert!(
        said.contains(&format!(
            "passed over:     {rows} rows on partition(s) 0, 1, 2, 3"
        )) && said.contains("0 created, 0 updated, 0 deleted"),
        "{said}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    finish(&rig, &expected, 0, procs).await;
}

/// One series of a process's `/metrics` (0 when absent).
fn metric_of(proc: &Proc, series: &str) -> f64 {
    let Some((200, text)) = block_in_place(|| proc.process.get("/metrics")) else {
        return 0.0;
    };
    snapfeed_harness::metrics::metric(&text, series).unwrap_or(0.0)
}

// ── 13 ───────────────────────────────────────────────────────────────────────────────────────

/// Schema Registry framing (issue #14): the pipeline registers its schemas with a registry
/// (the harness's stub) and writes Confluent-framed values; between the first and second
/// snapshot every service is restarted with `value_framing = "single_object"`, between the
/// second and third back to registry framing — each time with records of the other framing
/// still on the topics. Nothing is lost or sent twice, and every topic is then read by
/// Confluent's own `AvroDeserializer` (registry-framed values) and fastavro (single-object
/// ones), each record equal to the generator's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_registry_framing_switched_off_and_on_between_snapshots_loses_nothing() {
    let Some(mut rig) = Rig::new("s13-schema-registry", 4, NISSHI_AND_TANSU).await else {
        return;
    };
    let registry = StubRegistry::start().await;
    let framed = format!("url = {:?}\nrequest_timeout_ms = 5000", registry.url());
    let single_object = format!("{framed}\nvalue_framing = \"single_object\"");
    // The ledger reads the topics too: registry-framed values need ids looked up.
    let client = Registry::start(&toml::from_str(&framed).unwrap()).unwrap();
    rig.store.attach_registry(client);
    rig.schema_registry = Some(framed.clone());
    let mut expected = Expectation::default();
    let procs = rig.start_pipeline();
    let (clean, dirty) = (WriteOptions::default(), a_little_dirt());
    let s1 = Snapshot::initial(3000, 131);
    ingest(&mut rig, &mut expected, &s1, "elr-1.csv", &clean).await;
    // Each phase delivered before the switch (so every topic holds both framings), and no
    // consumer stopped while its group is still forming (Tansu does not recover a group whose
    // member left mid-join; not what this scenario is about).
    Ledger::wait(&rig, &expected, DELIVERY_LIMIT).await;
    assert!(
        registry.subjects().len() >= 11,
        "every service registered: {:?}",
        registry.subjects()
    );

    let procs = restart_all(&mut rig, procs, single_object);
    let (s2, _) = s1.next(some_changes(), 132);
    ingest(&mut rig, &mut expected, &s2, "elr-2.csv", &dirty).await;
    Ledger::wait(&rig, &expected, DELIVERY_LIMIT).await;

    let procs = restart_all(&mut rig, procs, framed);
    let (s3, _) = s2.next(some_changes(), 133);
    ingest(&mut rig, &mut expected, &s3, "elr-3.csv", &dirty).await;
    finish(&rig, &expected, 0, procs).await;

    let summary = read_every_topic(
        &rig,
        &[
            Dropped {
                name: "elr-1.csv",
                snapshot: &s1,
                options: &clean,
            },
            Dropped {
                name: "elr-2.csv",
                snapshot: &s2,
                options: &dirty,
            },
            Dropped {
                name: "elr-3.csv",
                snapshot: &s3,
                options: &dirty,
            },
        ],
        Some(&registry.url()),
    );
    // Every writer wrote each framing in its phase: each topic holds both.
    let topics = &rig.pipeline.topics;
    for topic in [
        &topics.snapshots,
        &topics.files,
        &topics.rejects,
        &topics.state,
        &topics.changes,
        &topics.deliveries,
    ] {
        let line = summary
            .lines()
            .find(|line| line.starts_with(&format!("{topic}:")))
            .unwrap_or_else(|| panic!("no line for {topic}: {summary}"));
        assert!(
            line.contains("registry ") && line.contains("single_object "),
            "{topic} holds both framings: {line}"
        );
    }
}

/// Stops every process (SIGTERM) and starts the pipeline again with `[schema_registry]` body
/// `registry`.
fn restart_all(rig: &mut Rig, procs: Vec<Proc>, registry: String) -> Vec<Proc> {
    for mut proc in procs {
        proc.terminate();
    }
    rig.schema_registry = Some(registry);
    rig.start_pipeline()
}

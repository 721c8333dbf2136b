//! Issue #7's fault scenarios, one test each: the three service binaries as OS processes on a
//! real broker, with the stub case API, fed generated snapshots; every scenario ends with the
//! ledger of truth (`snapfeed_fault::ledger`) and prints one `FAULT …` line of figures.
//!
//! Nisshi (SQLite storage, services `at_least_once`) runs all eleven; Tansu (services
//! `exactly_once`) runs 1, 2, 3, 4 and 8. The in-process mock broker skips them all (printed).
//!
//! Weakened for a broker gap, and named so in the test names:
//! - Tansu keeps aborted records visible to read_committed readers, so after a kill `changes`
//!   may hold copies of a change from an aborted transaction: checked "at least once, every copy
//!   identical" instead of "exactly once" (`…_identical_copies_where_aborts_show`). The API side
//!   is checked exactly (unique effects = expected) on every broker.
//! - Nisshi refuses transactions: services run `at_least_once` there, where "at least once,
//!   identical copies" is the promise itself, not a weakening.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use rand::Rng;
use snapfeed_fault::ledger::{Expectation, Ledger};
use snapfeed_fault::rig::{FileFate, Proc, Rig, Service};
use snapfeed_harness::broker::{BrokerKind, StopSignal};
use snapfeed_harness::generator::{Compression, Dirt, Snapshot, SnapshotDelta, WriteOptions};
use snapfeed_harness::stub_api::{Reply, Rule};
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
    let figures = Ledger::check(rig, expected, kills);
    println!("{figures}");
}

/// Records decided by a detector (every outcome), from its `/metrics`.
fn decided(proc: &Proc) -> f64 {
    let Some((200, text)) = block_in_place(|| proc.process.get("/metrics")) else {
        return 0.0;
    };
    ["unchanged", "created", "updated"]
        .iter()
        .filter_map(|outcome| {
            let series = format!("snapfeed_change_detector_records_total{{outcome=\"{outcome}\"}}");
            text.lines()
                .find_map(|line| line.strip_prefix(series.as_str()))
                .and_then(|value| value.trim().parse::<f64>().ok())
        })
        .sum()
}

/// Kills `proc` `kills` times after random delays in `low..high` from its readiness, restarting
/// it each time; returns how many kills found `busy()` true.
async fn kill_loop(
    rig: &mut Rig,
    proc: &mut Proc,
    kills: usize,
    (low, high): (Duration, Duration),
    mut between: impl FnMut(&mut Rig, usize),
    busy: impl Fn(&Rig) -> bool,
) -> usize {
    let mut busy_kills = 0;
    for kill in 0..kills {
        between(rig, kill);
        let delay = rig.random_delay(low, high);
        tokio::time::sleep(delay).await;
        if busy(rig) {
            busy_kills += 1;
        }
        rig.kill_and_restart(proc);
    }
    busy_kills
}

// ── 1 ────────────────────────────────────────────────────────────────────────────────────────

/// New snapshot, then 1% changed + 0.5% new (with a few rejected rows), then the same file
/// again (byte-identical: a re-delivery) and the same content generated half an hour later
/// (every row unchanged): exactly the expected changes, once each at the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_happy_path_three_snapshots_give_the_exact_ledger() {
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
    let deadline = Instant::now() + DELIVERY_LIMIT;
    while decided(&procs[0]) < rows {
        assert!(
            Instant::now() < deadline,
            "the detector decided {} of {rows} rows",
            decided(&procs[0])
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    finish(&rig, &expected, 0, procs).await;
}

// ── 2 ────────────────────────────────────────────────────────────────────────────────────────

/// file-source SIGKILLed at random points while it ingests a large file (20k rows, a checkpoint
/// every 1000 rows; a kill lands in start-up, in the validating pass or between chunks),
/// restarted each time, ten times; the file resumes from its last checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_file_source_sigkilled_during_a_large_file_loses_and_doubles_nothing() {
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
    let mid_file = kill_loop(
        &mut rig,
        &mut source,
        10,
        (Duration::from_millis(500), Duration::from_millis(4000)),
        |_, _| {},
        |rig| rig.in_work("elr-1.csv"),
    )
    .await;
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
/// batches being 20 records — restarted, ten times; the second snapshot arrives half way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_change_detector_sigkilled_while_processing_loses_and_doubles_nothing() {
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
        if kill == 5 {
            drop_into(
                &mut rig,
                &mut expected,
                &s2,
                "elr-2.csv",
                &WriteOptions::default(),
            );
        }
        let target = rig.rng.gen_range(20.0..250.0);
        let deadline = Instant::now() + Duration::from_secs(15);
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
    assert!(
        mid_stream >= 5,
        "too few kills landed mid-stream: {mid_stream}"
    );
    finish(&rig, &expected, 10, vec![detector, sink, source]).await;
}

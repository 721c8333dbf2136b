//! An ingest stopped mid-file — cleanly by shutdown, or by SIGKILL of the `file-source`
//! process — and started again: every row of the file ends up on `snapshots` exactly once
//! where the broker lets us observe that, and at least once with identical copies elsewhere.
//!
//! Where "exactly once" weakens: the mock cluster and Tansu leave aborted records visible to
//! read_committed readers (`!broker.hides_aborted_records()`), and Nisshi runs `at_least_once`,
//! where rows after the last checkpoint are sent again. There the check is: every key at least
//! once, all copies of a key identical, and no more extra copies than one chunk
//! (`rows_per_transaction`) — the restart resumed from the checkpoint, not from the start.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use snapfeed_harness::broker::repo_root;
use snapfeed_harness::generator::{Dirt, Snapshot, WriteOptions, WrittenFile};
use snapfeed_harness::service_process::{service_env, ServiceProcess};
use snapfeed_harness::wait;
use snapfeed_runtime::records::FileStatus;
use snapfeed_runtime::shutdown;

const BINARY: &str = env!("CARGO_BIN_EXE_file-source");

/// Rows of the interrupted file and rows per transaction: enough chunks that the interruption
/// surely lands mid-file, few enough to finish quickly.
const ROWS: usize = 12_000;
const ROWS_PER_TRANSACTION: u64 = 25;

fn interrupted_file_options() -> WriteOptions {
    WriteOptions {
        dirt: Dirt {
            bad_dates: 20,
            duplicate_keys: 20,
            ..Dirt::default()
        },
        ..WriteOptions::default()
    }
}

fn source_config() -> String {
    format!("marker_suffix = \".ok\"\nrows_per_transaction = {ROWS_PER_TRANSACTION}")
}

/// Drops a generated file into the inbox, then its marker.
fn deliver(fx: &Fixture, name: &str, seed: u64) -> (WrittenFile, String) {
    let written = Snapshot::initial(ROWS, seed)
        .write(&fx.inbox().join(name), &interrupted_file_options())
        .unwrap();
    // Hashed before its marker appears: from then on file-source may move it away.
    let hash = file_hash(&written.path);
    std::fs::write(fx.inbox().join(format!("{name}.ok")), "").unwrap();
    (written, hash)
}

/// After the interruption: the file waits in `work/`, and the ledger has checkpoints part way
/// through but no COMPLETED entry. (Read uncommitted: after a SIGKILL the dead producer's
/// transaction stays open until the restart aborts it, and Tansu's read_committed readers do
/// not reach partition EOF meanwhile.)
fn assert_interrupted_mid_file(fx: &Fixture, name: &str, hash: &str, total: u64) {
    assert!(
        !fx.processed().join(name).exists(),
        "the file completed before the interruption: make it longer"
    );
    assert!(
        fx.work().join(name).is_file(),
        "an interrupted file stays in work/ to be resumed"
    );
    let entries: Vec<_> = fx
        .ledger(false)
        .into_iter()
        .filter(|e| e.file_hash == hash)
        .collect();
    assert!(entries.iter().all(|e| e.status == FileStatus::InProgress
        && e.rows_committed > 0
        && (e.rows_committed as u64) < total));
    assert!(!entries.is_empty());
}

/// After the restart completed the file: its keys on `snapshots` (read committed) — exactly
/// once where that is observable, else at least once with identical copies and at most one
/// chunk re-sent; the ledger and the snapshot-end markers count every row once.
fn assert_every_row_once(fx: &Fixture, written: &WrittenFile, hash: &str) {
    let expected = canonical_keys(&written.accepted_keys);
    let records = fx.data_records_of(hash, true);
    if exactly_once_is_observable(&fx.broker) {
        assert_exactly_once(&records, &expected);
    } else {
        assert_same_keys(&key_counts(&records).into_keys().collect(), &expected);
        let payloads = payloads_by_key(&records);
        for record in &records {
            assert!(
                payloads[&record.key] == record.payload,
                "copies of {} differ",
                record.key
            );
        }
        assert!(
            records.len() as u64 <= expected.len() as u64 + ROWS_PER_TRANSACTION,
            "{} copies of {} rows: the restart re-sent more than the last chunk",
            records.len(),
            expected.len()
        );
    }
    let entry = fx.latest_entry(hash).unwrap();
    assert_eq!(
        (entry.status, entry.rows_total, entry.rows_sent),
        (
            FileStatus::Completed,
            Some(written.data_rows as i64),
            expected.len() as i64
        )
    );
    let markers: Vec<_> = fx
        .markers()
        .into_iter()
        .filter(|m| m.end.file_hash == hash)
        .collect();
    assert_eq!(markers.len(), 3, "one marker per partition");
    assert_eq!(
        markers.iter().map(|m| m.end.rows_in_partition).sum::<i64>(),
        expected.len() as i64
    );
    let rejects = fx.rejects(true);
    let summary = reject_summary(&rejects, hash);
    assert_eq!(summary, expected_rejects(written));
    if exactly_once_is_observable(&fx.broker) {
        assert_eq!(
            rejects.iter().filter(|(_, r)| r.file_hash == hash).count(),
            summary.len()
        );
    }
}

/// Exactly once where aborted records are hidden (a real Kafka); on the mock cluster, Tansu and
/// Nisshi (at_least_once) at least once with identical copies — see the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_file_then_restart_sends_every_row_once_or_identically_where_aborts_show() {
    let fx = Fixture::new("fs-resume-run", 3).await;
    let config = fx.config(&source_config());
    let first = start_source(config.clone());
    first.wait_ready(Duration::from_secs(60)).await;
    let (written, hash) = deliver(&fx, "elr.csv", 31);

    fx.wait_for_checkpoint(&hash, 2 * ROWS_PER_TRANSACTION, Duration::from_secs(60));
    first.stop().await;
    assert_interrupted_mid_file(&fx, "elr.csv", &hash, written.data_rows as u64);

    let second = start_source(config);
    wait::until(
        "the resumed file is processed",
        Duration::from_secs(180),
        || fx.processed().join("elr.csv").is_file(),
    )
    .await;
    second.stop().await;
    assert!(file_names(&fx.work()).is_empty());
    assert_every_row_once(&fx, &written, &hash);
}

/// The `ingest` subcommand's library call, stopped by shutdown mid-file, leaves the file to be
/// resumed (as `run` does) instead of carrying on to its end; run again, it completes the file,
/// sending the rows as validated (from the spool). Exactly once where aborted records are
/// hidden, else at least once with identical copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stopped_by_shutdown_mid_file_resumes_on_the_next_ingest() {
    stopped_ingest_resumes("fs-resume-ingest", 32, "").await;
}

/// The same, with the file read a second time to send (no spool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stopped_by_shutdown_mid_file_resumes_when_read_twice() {
    stopped_ingest_resumes("fs-resume-twice", 33, "spool_max_bytes = 0").await;
}

async fn stopped_ingest_resumes(label: &str, seed: u64, source_extra: &str) {
    let fx = Fixture::new(label, 3).await;
    let config = fx.config(&format!(
        "rows_per_transaction = {ROWS_PER_TRANSACTION}\n{source_extra}"
    ));
    let written = Snapshot::initial(ROWS, seed)
        .write(&fx.incoming().join("elr.csv"), &interrupted_file_options())
        .unwrap();
    let hash = file_hash(&written.path);

    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(file_source::ingest_paths(
        config.clone(),
        vec![written.path.clone()],
        stop,
    ));
    fx.wait_for_checkpoint(&hash, 2 * ROWS_PER_TRANSACTION, Duration::from_secs(60));
    trigger.trigger();
    let interrupted = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("ingest_paths returned within 60 s of shutdown")
        .unwrap();
    assert!(
        fx.ledger(false)
            .iter()
            .all(|e| e.file_hash != hash || e.status != FileStatus::Completed),
        "shutdown did not stop the file: it was ingested to the end ({interrupted:?})"
    );
    assert!(
        written.path.is_file(),
        "the file stays to be ingested again"
    );

    let report = single_report(&ingest(config, vec![written.path.clone()]).await.unwrap());
    assert!(report.resumed_after > 0, "resumed from the checkpoint");
    assert_eq!(
        report.spool_bytes.is_some(),
        source_extra.is_empty(),
        "sent from the spool unless it is off"
    );
    assert_every_row_once(&fx, &written, &hash);
}

/// A real crash: the `file-source` process is SIGKILLed after a checkpoint, mid-file, and started
/// again. Exactly once where aborted records are hidden (a real Kafka); on the mock cluster,
/// Tansu and Nisshi at least once with identical copies — see the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_file_then_restart_sends_every_row_once_or_identically_where_aborts_show() {
    let fx = Fixture::new("fs-resume-kill", 3).await;
    let config_path = fx.root.path().join("file-source.toml");
    std::fs::write(&config_path, fx.config_text(&source_config())).unwrap();
    let env = service_env(&fx.broker, &fx.pipeline.name);
    let start = |log: &str| {
        let mut process = ServiceProcess::start(
            Path::new(BINARY),
            &config_path,
            &repo_root(),
            &env,
            &fx.root.path().join(log),
        );
        tokio::task::block_in_place(|| process.wait_ready(Duration::from_secs(60)));
        process
    };

    let mut first = start("first.log");
    let (written, hash) = deliver(&fx, "elr.csv", 33);
    fx.wait_for_checkpoint(&hash, 2 * ROWS_PER_TRANSACTION, Duration::from_secs(60));
    tokio::task::block_in_place(|| first.kill());
    assert_interrupted_mid_file(&fx, "elr.csv", &hash, written.data_rows as u64);

    let mut second = start("second.log");
    wait::until(
        "the resumed file is processed",
        Duration::from_secs(180),
        || fx.processed().join("elr.csv").is_file(),
    )
    .await;
    let (status, _) = tokio::task::block_in_place(|| second.terminate(Duration::from_secs(15)));
    assert!(status.success(), "{}", second.log_text());
    assert_every_row_once(&fx, &written, &hash);
}

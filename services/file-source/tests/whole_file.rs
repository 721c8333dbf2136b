//! Outcomes of a file as a whole, through `ingest_paths` (the `ingest` subcommand's library
//! call): a re-delivered file is skipped, a file missing required columns or with too many bad
//! rows fails with nothing sent and a readable report in `failed/`, and a one-shot ingest ends
//! when its files do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeSet;

use common::*;
use file_source::ingest::FileOutcome;
use file_source::FileSourceError;
use rdkafka::Message;
use snapfeed_harness::generator::{Dirt, Snapshot, WriteOptions};
use snapfeed_harness::messages::header;
use snapfeed_runtime::headers;
use snapfeed_runtime::records::FileStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_identical_file_is_skipped() {
    let fx = Fixture::new("fs-redeliver", 3).await;
    let snapshot = Snapshot::initial(200, 16);
    let written = fx.write_incoming(&snapshot, "elr-0800.csv", &WriteOptions::default());
    let bytes = std::fs::read(&written.path).unwrap();
    let hash = file_hash(&written.path);
    single_report(
        &ingest(fx.config(""), vec![written.path.clone()])
            .await
            .unwrap(),
    );
    let before = fx.everything_written();

    // The lab sends the same content again under another name; a new file-source run reads
    // the ledger back from the `files` topic and skips it.
    let again = fx.incoming().join("elr-0830.csv");
    std::fs::write(&again, &bytes).unwrap();
    let outcomes = ingest(fx.config(""), vec![again.clone()]).await.unwrap();
    assert_eq!(
        outcomes,
        [FileOutcome::Duplicate {
            file: "elr-0830.csv".into(),
            hash: hash.clone()
        }]
    );
    assert!(fx.processed().join("elr-0830.csv").is_file());
    assert!(!again.exists());
    assert_eq!(
        fx.everything_written(),
        before,
        "nothing was written for the re-delivery"
    );

    // And within one run: the second copy is recognised from the entry the first just wrote.
    let other = fx.write_incoming(
        &Snapshot::initial(50, 17),
        "lab-b.csv",
        &WriteOptions::default(),
    );
    let copy = fx.incoming().join("lab-b-copy.csv");
    std::fs::copy(&other.path, &copy).unwrap();
    let outcomes = ingest(fx.config(""), vec![other.path.clone(), copy.clone()])
        .await
        .unwrap();
    assert!(
        matches!(&outcomes[..], [FileOutcome::Ingested(_), FileOutcome::Duplicate { file, .. }] if file == "lab-b-copy.csv"),
        "{outcomes:?}"
    );

    assert_exactly_once(
        &fx.data_records_of(&hash, true),
        &canonical_keys(&written.accepted_keys),
    );
    assert_exactly_once(
        &fx.data_records_of(&file_hash(&fx.processed().join("lab-b.csv")), true),
        &canonical_keys(&other.accepted_keys),
    );
    assert_eq!(
        fx.ledger(true)
            .iter()
            .filter(|e| e.status == FileStatus::Completed)
            .count(),
        2,
        "one COMPLETED entry per content"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_missing_required_columns_fails_before_anything_is_sent() {
    let fx = Fixture::new("fs-missingcol", 3).await;
    let written = fx.write_incoming(
        &Snapshot::initial(100, 18),
        "no-clia.csv",
        &WriteOptions {
            omit_columns: vec!["Test_Result".into(), "Facility_CLIA".into()],
            ..WriteOptions::default()
        },
    );
    let result = ingest(fx.config(""), vec![written.path.clone()]).await;
    assert!(
        matches!(result, Err(FileSourceError::FilesFailed(1))),
        "{result:?}"
    );

    let topics = &fx.pipeline.topics;
    assert!(fx.read(&topics.snapshots, false).is_empty());
    assert!(fx.read(&topics.rejects, false).is_empty());
    assert!(fx.failed().join("no-clia.csv").is_file());
    assert!(!fx.processed().join("no-clia.csv").exists());
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.failed().join("no-clia.csv.error.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["stage"], "header");
    assert_eq!(
        report["columns"],
        serde_json::json!(["Facility_CLIA", "Test_Result"])
    );
    assert_eq!(report["rows_read"], 0);
    assert_eq!(
        fx.latest_entry(&file_hash(&fx.failed().join("no-clia.csv")))
            .map(|e| e.status),
        Some(FileStatus::Failed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_over_the_threshold_fail_the_file_and_leave_nothing_visible() {
    let fx = Fixture::new("fs-threshold", 3).await;
    // 12 of 200 rows (6 %) are bad; the default threshold is 5 %.
    let written = fx.write_incoming(
        &Snapshot::initial(200, 19),
        "bad.csv",
        &WriteOptions {
            dirt: Dirt {
                bad_dates: 8,
                missing_required: 4,
                ..Dirt::default()
            },
            ..WriteOptions::default()
        },
    );
    let bytes = std::fs::read(&written.path).unwrap();
    let result = ingest(fx.config(""), vec![written.path.clone()]).await;
    assert!(
        matches!(result, Err(FileSourceError::FilesFailed(1))),
        "{result:?}"
    );
    let topics = &fx.pipeline.topics;
    assert!(
        fx.read(&topics.snapshots, false).is_empty(),
        "no row was sent"
    );
    assert!(
        fx.read(&topics.rejects, false).is_empty(),
        "no reject was sent"
    );
    assert!(fx.failed().join("bad.csv").is_file());
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.failed().join("bad.csv.error.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["stage"], "rejects");
    assert_eq!(
        (&report["rows_read"], &report["rows_rejected"]),
        (&serde_json::json!(200), &serde_json::json!(12))
    );
    let first_rejects: BTreeSet<(i64, String, Option<String>)> = report["first_rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_i64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
                r["column"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(first_rejects, expected_rejects(&written));

    // The same content delivered again under a looser threshold is ingested: a FAILED entry
    // does not block a retry.
    let retry = fx.incoming().join("bad-retry.csv");
    std::fs::write(&retry, bytes).unwrap();
    let report = single_report(
        &ingest(fx.config("max_reject_ratio = 0.10"), vec![retry])
            .await
            .unwrap(),
    );
    assert_eq!((report.rows_sent, report.rows_rejected), (188, 12));
    assert_exactly_once(
        &fx.data_records(true),
        &canonical_keys(&written.accepted_keys),
    );
}

/// `ingest_paths` (the `ingest` subcommand) is done when its files are: it stops its
/// `/metrics`/`/healthz` endpoint and returns, rather than leaving the endpoint serving until a
/// shutdown signal that a one-shot command never gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stops_its_endpoint_when_its_files_are_done() {
    let fx = Fixture::new("fs-oneshot", 3).await;
    let written = fx.write_incoming(
        &Snapshot::initial(20, 21),
        "small.csv",
        &WriteOptions::default(),
    );
    let mut config = fx.config("");
    let http = snapfeed_harness::endpoint::free_addr();
    config.http.listen = http.to_string();
    // The trigger lives on, as it does in the binary: no signal comes to a one-shot command.
    let (_trigger, shutdown) = snapfeed_runtime::shutdown::channel();
    let started = std::time::Instant::now();
    let outcomes = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        file_source::ingest_paths(config, vec![written.path.clone()], shutdown),
    )
    .await
    .unwrap()
    .unwrap();
    let took = started.elapsed();
    single_report(&outcomes);
    let health =
        tokio::task::block_in_place(|| snapfeed_harness::endpoint::http_get(http, "/healthz"));
    assert!(
        health.is_none(),
        "the endpoint still answers after ingest_paths returned (after {took:?}): {health:?}"
    );
}

/// `snapfeed-snapshot-time` of every record (data and markers) of the file named `name`.
fn snapshot_times(fx: &Fixture, name: &str) -> BTreeSet<Option<String>> {
    fx.read(&fx.pipeline.topics.snapshots, false)
        .iter()
        .filter(|m| header(*m, headers::FILE_NAME).as_deref() == Some(name))
        .map(|m| header(m, headers::SNAPSHOT_TIME))
        .collect()
}

/// The claim time reaches the detector and the sink through the record timestamps: every
/// record of a file (rows, rejects, snapshot-end markers) carries the time file-source claimed
/// the file — the ledger's `started_at` — whatever the time of its send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_of_a_file_is_stamped_with_the_files_claim_time() {
    let fx = Fixture::new("fs-claimtime", 3).await;
    let file = fx.write_incoming(
        &Snapshot::initial(200, 21),
        "claimed.csv",
        &WriteOptions {
            dirt: Dirt {
                bad_dates: 3,
                ..Default::default()
            },
            ..WriteOptions::default()
        },
    );
    // Small transactions: the file is sent over several sends, over time.
    ingest(fx.config("rows_per_transaction = 50"), vec![file.path])
        .await
        .unwrap();
    let started: BTreeSet<i64> = fx.ledger(true).iter().map(|e| e.started_at).collect();
    assert_eq!(started.len(), 1, "{started:?}");
    let claimed = *started.iter().next().unwrap();
    let stamps = |topic: &str| -> BTreeSet<Option<i64>> {
        fx.read(topic, false)
            .iter()
            .map(|m| m.timestamp().to_millis())
            .collect()
    };
    assert_eq!(
        stamps(&fx.pipeline.topics.snapshots),
        BTreeSet::from([Some(claimed)]),
        "rows and markers"
    );
    assert_eq!(
        stamps(&fx.pipeline.topics.rejects),
        BTreeSet::from([Some(claimed)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_carries_the_snapshot_time_of_its_file() {
    let fx = Fixture::new("fs-snaptime", 3).await;
    let dated = fx.write_incoming(
        &Snapshot::initial(60, 19),
        "elr_20261203_103000.csv",
        &WriteOptions::default(),
    );
    let plain = fx.write_incoming(
        &Snapshot::initial(40, 20),
        "plain.csv",
        &WriteOptions::default(),
    );
    let mtime = std::fs::metadata(&plain.path)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    ingest(fx.config(""), vec![dated.path, plain.path])
        .await
        .unwrap();

    // `auto`: the date-time in the name (UTC), else the file's modification time.
    assert_eq!(
        snapshot_times(&fx, "elr_20261203_103000.csv"),
        BTreeSet::from([Some("1796293800000".to_string())])
    );
    assert_eq!(
        snapshot_times(&fx, "plain.csv"),
        BTreeSet::from([Some(mtime.to_string())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_name_without_the_configured_date_time_fails_with_nothing_sent() {
    let fx = Fixture::new("fs-snaptime-pattern", 3).await;
    let config = r#"snapshot_time = { from = "file_name", pattern = "elr_%Y%m%d_%H%M%S" }"#;
    let written = fx.write_incoming(
        &Snapshot::initial(30, 21),
        "elr_latest.csv",
        &WriteOptions::default(),
    );
    let result = ingest(fx.config(config), vec![written.path]).await;
    assert!(
        matches!(result, Err(FileSourceError::FilesFailed(1))),
        "{result:?}"
    );
    assert!(fx.read(&fx.pipeline.topics.snapshots, false).is_empty());
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.failed().join("elr_latest.csv.error.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["stage"], "snapshot_time");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("elr_latest.csv") && error.contains("elr_%Y%m%d_%H%M%S"),
        "{error}"
    );

    let dated = fx.write_incoming(
        &Snapshot::initial(30, 22),
        "elr_20261203_103000.csv",
        &WriteOptions::default(),
    );
    ingest(fx.config(config), vec![dated.path]).await.unwrap();
    assert_eq!(
        snapshot_times(&fx, "elr_20261203_103000.csv"),
        BTreeSet::from([Some("1796293800000".to_string())])
    );
}

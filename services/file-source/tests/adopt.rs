//! A file left half-ingested in the work directory of an instance that never comes back: the
//! instances still running count it (`orphaned_work_files`), `adopt` refuses it while it could
//! still be that instance's work, then — fencing the gone instance's producer in exactly_once —
//! hands it back to the inbox, where a running instance claims it and resumes it from the
//! checkpoint the gone one committed (its ledger caught up before the file), not from the start.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use common::*;
use file_source::adopt::{adopt, AdoptError};
use snapfeed_harness::generator::{Dirt, Snapshot, WriteOptions};
use snapfeed_harness::wait;
use snapfeed_runtime::kafka::ProcessingGuarantee;
use snapfeed_runtime::records::FileStatus;

const ROWS: usize = 30_000;
const ROWS_PER_TRANSACTION: u64 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_a_gone_instance_is_adopted_and_resumed_from_its_checkpoint() {
    let fx = Fixture::new("fs-adopt", 3).await;
    let extra = format!(
        "marker_suffix = \".ok\"\nrows_per_transaction = {ROWS_PER_TRANSACTION}\norphaned_after_ms = 0"
    );
    let config_of = |instance: &str| {
        let mut config = fx.config(&extra);
        config.pipeline.instance_id = Some(instance.to_string());
        config
    };

    // "gone-0" claims a file and starts on it.
    let gone = start_source(config_of("gone-0"));
    gone.wait_ready(Duration::from_secs(60)).await;
    let options = WriteOptions {
        dirt: Dirt {
            bad_dates: 5,
            ..Dirt::default()
        },
        ..WriteOptions::default()
    };
    let written = Snapshot::initial(ROWS, 41)
        .write(&fx.inbox().join("elr.csv"), &options)
        .unwrap();
    let hash = file_hash(&written.path);
    std::fs::write(fx.inbox().join("elr.csv.ok"), "").unwrap();
    let gone_dir = fx.inbox().join("work").join("gone-0");
    wait::until("gone-0 claims the file", Duration::from_secs(60), || {
        gone_dir.join("elr.csv").is_file()
    })
    .await;

    // "live-1" starts meanwhile: its ledger, read at start, is behind what gone-0 commits next.
    let live = start_source(config_of("live-1"));
    live.wait_ready(Duration::from_secs(60)).await;
    let known_at_start = fx
        .ledger(true)
        .into_iter()
        .filter(|e| e.file_hash == hash)
        .map(|e| e.rows_committed as u64)
        .max()
        .unwrap_or(0);
    fx.wait_for_checkpoint(
        &hash,
        known_at_start + 10 * ROWS_PER_TRANSACTION,
        Duration::from_secs(60),
    );
    // gone-0 stops part way and never comes back.
    gone.stop().await;
    assert!(
        gone_dir.join("elr.csv").is_file(),
        "left in gone-0's work directory"
    );
    let committed = fx
        .ledger(true)
        .into_iter()
        .filter(|e| e.file_hash == hash)
        .map(|e| e.rows_committed)
        .max()
        .unwrap();
    assert!(
        (committed as usize) < written.data_rows,
        "gone-0 finished the file before it was stopped: make it longer"
    );
    live.wait_metric(
        "snapfeed_file_source_orphaned_work_files",
        1.0,
        Duration::from_secs(30),
    )
    .await;

    // Refused while it could still be gone-0's work (claimed within the bound)...
    let mut cautious = config_of("live-1");
    cautious.source.orphaned_after_ms = 3_600_000;
    let refused = tokio::task::block_in_place(|| adopt(&cautious, "gone-0", 0, false));
    assert!(
        matches!(refused, Err(AdoptError::TooRecent { .. })),
        "{refused:?}"
    );
    assert!(gone_dir.join("elr.csv").is_file(), "nothing moved");
    let own = tokio::task::block_in_place(|| adopt(&cautious, "live-1", 0, true));
    assert!(matches!(own, Err(AdoptError::OwnInstance(_))), "{own:?}");

    // ...handed back once it is an orphan.
    let adopted =
        tokio::task::block_in_place(|| adopt(&config_of("live-1"), "gone-0", 0, false)).unwrap();
    assert_eq!(adopted.files, vec!["elr.csv".to_string()]);
    assert_eq!(
        adopted.fenced.is_some(),
        fx.guarantee == ProcessingGuarantee::ExactlyOnce,
        "{adopted}"
    );
    assert!(!gone_dir.exists(), "the empty work directory is gone");

    wait::until(
        "the adopted file is processed",
        Duration::from_secs(180),
        || fx.processed().join("elr.csv").is_file(),
    )
    .await;
    live.wait_metric(
        "snapfeed_file_source_orphaned_work_files",
        0.0,
        Duration::from_secs(30),
    )
    .await;
    live.stop().await;

    let entry = fx.latest_entry(&hash).unwrap();
    assert_eq!(entry.status, FileStatus::Completed);
    let expected = canonical_keys(&written.accepted_keys);
    let records = fx.data_records_of(&hash, true);
    assert_same_keys(&key_counts(&records).into_keys().collect(), &expected);
    // Resumed from gone-0's checkpoint: at most the chunk it had open is sent again — not the
    // rows it committed.
    assert!(
        (records.len() as u64) <= expected.len() as u64 + ROWS_PER_TRANSACTION,
        "{} records of {} rows: the adopted file was ingested from the start, not resumed",
        records.len(),
        expected.len()
    );
}

//! `reconcile` reads the pipeline's topics back on every broker (`SNAPFEED_TEST_BROKER`): one
//! snapshot's ledger entry, rejects, changes (one of them repeated, as an at_least_once
//! detector writes it), a delivery, a dead letter and a pending change — and says "not
//! reconciled", naming the dead-lettered and the pending change; an undecided record on
//! `snapshots` is counted. (The whole pipeline's reconciliation on the in-process broker is
//! the demo's: `services/snapfeed-demo`.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use snapfeed_harness::broker::TestBroker;
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::reconcile::{reconcile, ReconcileError, ReconcileOptions, ReconcileTarget};
use snapfeed_runtime::records::{
    stale_snapshot_key, AvroRecord, ChangeEvent, ChangeOp, DeadLetter, DeliveryReceipt,
    FileLedgerEntry, FileStatus, Provenance, RejectedRow, StaleSnapshot,
};

const SNAPSHOT: &str = "s-1";

fn encode<T: serde::Serialize>(schemas: &SchemaStore, name: &str, value: &T) -> Vec<u8> {
    schemas.current(name).unwrap().encode(value).unwrap()
}

fn event(key: &str, op: ChangeOp, version: i64, snapshot: &str) -> ChangeEvent {
    ChangeEvent {
        op,
        key: key.into(),
        version,
        content_hash: "0".repeat(32),
        previous_hash: None,
        record_schema: "snapfeed.lab.LabResult".into(),
        source: Provenance {
            file_name: "elr_20261201.csv".into(),
            file_hash: "h1".into(),
            line: Some(2),
            snapshot_id: snapshot.into(),
            stream: "default".into(),
        },
        detected_at: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_a_dead_letter_and_a_pending_change_is_not_reconciled() {
    let broker = TestBroker::from_env();
    let pipeline = broker.pipeline("reconcile", 1).await;
    let topics = pipeline.topics.clone();
    let schemas =
        SchemaStore::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas"))
            .unwrap();
    let kafka = broker.kafka_config();
    let guarantee = broker.guarantee();
    tokio::task::block_in_place(|| {
        let producer: BaseProducer = kafka
            .producer_config(
                "test",
                snapfeed_runtime::kafka::ProcessingGuarantee::AtLeastOnce,
                None,
            )
            .create()
            .unwrap();
        let send = |topic: &str, key: &str, payload: Vec<u8>| {
            producer
                .send(
                    BaseRecord::to(topic)
                        .partition(0)
                        .key(key)
                        .payload(&payload),
                )
                .unwrap();
            producer.flush(Duration::from_secs(10)).unwrap();
        };
        let ledger = FileLedgerEntry {
            file_hash: "h1".into(),
            file_name: "elr_20261201.csv".into(),
            stream: "default".into(),
            snapshot_id: SNAPSHOT.into(),
            status: FileStatus::Completed,
            rows_committed: 5,
            rows_sent: 4,
            rows_rejected: 1,
            rows_total: Some(5),
            bytes: 100,
            started_at: 0,
            updated_at: 0,
            error: None,
        };
        send(
            &topics.files,
            "h1",
            encode(&schemas, FileLedgerEntry::SCHEMA, &ledger),
        );
        let rejected = RejectedRow {
            file_name: "elr_20261201.csv".into(),
            file_hash: "h1".into(),
            snapshot_id: SNAPSHOT.into(),
            stream: "default".into(),
            line: 4,
            column: Some("collected_at".into()),
            reason: "bad_date".into(),
            detail: "not a date".into(),
            raw_line: String::new(),
            raw_truncated: false,
            rejected_at: 0,
        };
        send(
            &topics.rejects,
            "h1:4",
            encode(&schemas, RejectedRow::SCHEMA, &rejected),
        );
        // changes[0]@0 A v1, @1 B v2, @2 C v1, @3 another snapshot's, @4 A v1 again.
        for (key, op, version, snapshot) in [
            ("A", ChangeOp::Create, 1, SNAPSHOT),
            ("B", ChangeOp::Update, 2, SNAPSHOT),
            ("C", ChangeOp::Create, 1, SNAPSHOT),
            ("D", ChangeOp::Create, 1, "s-0"),
            ("A", ChangeOp::Create, 1, SNAPSHOT),
        ] {
            let value = encode(
                &schemas,
                ChangeEvent::SCHEMA,
                &event(key, op, version, snapshot),
            );
            send(&topics.changes, key, value);
        }
        let receipt = DeliveryReceipt {
            key: "A".into(),
            version: 1,
            op: "CREATE".into(),
            status: 200,
            attempts: 1,
            latency_ms: 5,
            response_id: None,
            idempotency_key: "ik-a".into(),
            source_partition: 0,
            source_offset: 0,
            delivered_at: 0,
        };
        send(
            &topics.deliveries,
            "A",
            encode(&schemas, DeliveryReceipt::SCHEMA, &receipt),
        );
        let letter = DeadLetter {
            change: Vec::new(),
            key: Some("B".into()),
            version: Some(2),
            reason: "http_4xx".into(),
            status: Some(400),
            response_excerpt: None,
            attempts: 1,
            first_attempt_at: None,
            last_attempt_at: None,
            attempt_history: Vec::new(),
            source_topic: topics.changes.clone(),
            source_partition: 0,
            source_offset: 1,
            dead_lettered_at: 0,
            redrive_count: 0,
        };
        send(
            &topics.dead_letters,
            "B",
            encode(&schemas, DeadLetter::SCHEMA, &letter),
        );

        let run = |target: &ReconcileTarget| {
            reconcile(
                &kafka,
                &pipeline.name,
                &topics,
                &schemas,
                guarantee,
                target,
                ReconcileOptions::default(),
            )
        };
        let by_file = ReconcileTarget::File("elr_20261201.csv".into());
        let found = run(&by_file).unwrap();
        assert_eq!(found.undecided, Some(0));
        assert_eq!(found.snapshots.len(), 1);
        let s = &found.snapshots[0];
        assert_eq!((s.rows_sent, s.rows_rejected), (4, 1));
        assert_eq!(s.rejected_by_reason.get("bad_date"), Some(&1));
        assert_eq!((s.created, s.updated, s.deleted), (2, 1, 0), "A once");
        assert_eq!(s.unchanged(), 1);
        assert_eq!(s.delivered, 1);
        let named = |changes: &[snapfeed_runtime::reconcile::ChangeRef]| {
            changes
                .iter()
                .map(|c| (c.key.clone(), c.version))
                .collect::<Vec<_>>()
        };
        assert_eq!(named(&s.dead_lettered), vec![("B".to_string(), 2)]);
        assert_eq!(named(&s.pending), vec![("C".to_string(), 1)]);
        assert!(!found.is_reconciled());
        let text = found.to_string();
        println!("{text}");
        assert!(text.contains("B v2 (changes[0]@1, http_4xx 400)"), "{text}");
        assert!(text.contains("pending:         C v1"), "{text}");
        assert!(text.contains("NOT RECONCILED"), "{text}");

        // A late file: change-detector passed it over on partition 0 (its entry on `state`,
        // among the other kinds there, which reconcile does not decode).
        let late = FileLedgerEntry {
            file_hash: "h0".into(),
            file_name: "elr_20261130.csv".into(),
            snapshot_id: "s-late".into(),
            rows_committed: 3,
            rows_sent: 3,
            rows_rejected: 0,
            rows_total: Some(3),
            ..ledger.clone()
        };
        send(
            &topics.files,
            "h0",
            encode(&schemas, FileLedgerEntry::SCHEMA, &late),
        );
        send(&topics.state, "A", b"not decoded by reconcile".to_vec());
        let stale = StaleSnapshot {
            stream: "default".into(),
            snapshot_id: "s-late".into(),
            file_name: "elr_20261130.csv".into(),
            snapshot_time: 1_796_034_600_000,
            newest_snapshot_id: SNAPSHOT.into(),
            newest_snapshot_time: 1_796_121_000_000,
            rows_in_partition: 3,
            rows_passed_over: 3,
            decided_at: 0,
        };
        send(
            &topics.state,
            &stale_snapshot_key("s-late"),
            encode(&schemas, StaleSnapshot::SCHEMA, &stale),
        );
        let found = run(&ReconcileTarget::File("elr_20261130.csv".into())).unwrap();
        let s = &found.snapshots[0];
        assert_eq!(s.passed_over.len(), 1);
        assert_eq!((s.passed_over[0].partition, s.rows_passed_over()), (0, 3));
        assert_eq!(s.unchanged(), 0, "passed over, not unchanged");
        assert!(found.is_reconciled(), "every row accounted for");
        let text = found.to_string();
        println!("{text}");
        assert!(
            text.contains("passed over:     3 rows on partition(s) 0: taken 2026-11-30 10:30:00 UTC, older than snapshot s-1 (taken 2026-12-01 10:30:00 UTC)"),
            "{text}"
        );

        // A record on `snapshots` no detector has decided (the group has no offsets).
        send(&topics.snapshots, "E", b"undecided".to_vec());
        let by_id = ReconcileTarget::Snapshot(SNAPSHOT.into());
        let found = run(&by_id).unwrap();
        assert_eq!(found.undecided, Some(1));

        let missing = ReconcileTarget::File("never.csv".into());
        let error = run(&missing).unwrap_err();
        assert!(matches!(error, ReconcileError::NotFound { .. }), "{error}");
        assert!(error.to_string().contains("never.csv"), "{error}");
    });
}

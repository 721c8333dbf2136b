//! A generated snapshot on `snapshots` exactly as file-source writes it, without running
//! file-source — so change-detector's tests depend on no other service, and meet file-source
//! only where the services meet: in Kafka.
//!
//! For each row file-source accepts ([`crate::snapshot_records`]): its dataset record in Avro
//! single-object encoding, keyed by its record key, on the partition `murmur2(key)` gives (as
//! file-source addresses it), with file-source's provenance headers in file-source's order
//! (file name, file hash, snapshot id, stream, line). After the last row, a `SnapshotEnd`
//! marker on every partition with the rows sent there. Rows file-source would reject are not
//! sent (file-source sends them to `rejects`, which the detector never reads); the `files`
//! ledger is not written either.
//!
//! Guarantee, as file-source keeps it for the guarantee given: `exactly_once` sends in Kafka
//! transactions of `rows_per_transaction` rows, the markers in the last one; `at_least_once`
//! sends the rows, waits until every one is acknowledged, then sends the markers and waits for
//! those. A publish that cannot finish panics (test code).
//!
//! `services/file-source/tests/publisher_contract.rs` checks that file-source and this
//! publisher write the same records, partitions, payloads, headers and marker counts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::dataset::Dataset;
use snapfeed_runtime::headers;
use snapfeed_runtime::kafka::ProcessingGuarantee;
use snapfeed_runtime::partition::partition_for_key;
use snapfeed_runtime::records::{now_millis, AvroRecord, SnapshotEnd};

use crate::broker::{TestBroker, TestPipeline};
use crate::generator::{Snapshot, WriteOptions};
use crate::snapshot_records::snapshot_records;

/// Bound of one blocking producer call (transaction calls, flush).
const KAFKA_TIMEOUT: Duration = Duration::from_secs(60);

/// Distinguishes the transactional ids of publishers in one test process.
static PUBLISHERS: AtomicUsize = AtomicUsize::new(0);

/// Where a snapshot id comes from (file-source's `source.snapshot_id`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SnapshotIdFrom {
    /// The file's SHA-256 (file-source's default).
    #[default]
    FileHash,
    /// The file's name.
    FileName,
}

/// The file a snapshot is published as, and what file-source's config would decide about it.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The file's name (header `snapfeed-file-name`).
    pub file_name: String,
    /// Its snapshot stream: what file-source's `[[source.streams]]` rules give the name
    /// (`default` when none matches).
    pub stream: String,
    /// Where its snapshot id comes from.
    pub snapshot_id: SnapshotIdFrom,
    /// How the file is written: its bytes (so its hash), its lines and its dirty rows.
    pub write: WriteOptions,
    /// Data records per transaction (`source.rows_per_transaction`; its default is 50,000).
    pub rows_per_transaction: usize,
    /// When the snapshot was taken (header `snapfeed-snapshot-time`): what file-source's
    /// `[source.snapshot_time]` gives the file; none by default.
    pub snapshot_time: Option<i64>,
}

impl PublishOptions {
    /// A file named `file_name`, written in the canonical layout, with file-source's defaults.
    pub fn file(file_name: impl Into<String>) -> PublishOptions {
        PublishOptions {
            file_name: file_name.into(),
            stream: "default".into(),
            snapshot_id: SnapshotIdFrom::FileHash,
            write: WriteOptions::default(),
            rows_per_transaction: 50_000,
            snapshot_time: None,
        }
    }

    /// Taken at `ms` (ms since the Unix epoch).
    pub fn taken_at(mut self, ms: i64) -> PublishOptions {
        self.snapshot_time = Some(ms);
        self
    }

    /// In snapshot stream `stream`.
    pub fn stream(mut self, stream: impl Into<String>) -> PublishOptions {
        self.stream = stream.into();
        self
    }

    /// Written with `write` instead of the canonical layout.
    pub fn written(mut self, write: WriteOptions) -> PublishOptions {
        self.write = write;
        self
    }
}

/// What a publish sent: the parts of file-source's `FileReport` that tests use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReport {
    /// File name.
    pub file: String,
    /// SHA-256 of the file's bytes.
    pub hash: String,
    /// Snapshot stream.
    pub stream: String,
    /// Snapshot id.
    pub snapshot_id: String,
    /// The file's header as written.
    pub columns: Vec<String>,
    /// Data records in the file.
    pub rows_total: u64,
    /// Rows sent to `snapshots`.
    pub rows_sent: u64,
    /// Rows file-source would have sent to `rejects` (not sent here).
    pub rows_rejected: u64,
    /// Rows sent to each partition (the markers' `rows_in_partition`).
    pub rows_in_partition: Vec<i64>,
}

/// Publishes generated snapshots to one pipeline's `snapshots`, under one dataset.
pub struct SnapshotPublisher<'b> {
    broker: &'b TestBroker,
    topic: String,
    partitions: i32,
    guarantee: ProcessingGuarantee,
    transactional_id: String,
    store: SchemaStore,
    dataset: Dataset,
}

impl std::fmt::Debug for SnapshotPublisher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotPublisher")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("guarantee", &self.guarantee)
            .finish_non_exhaustive()
    }
}

impl<'b> SnapshotPublisher<'b> {
    /// A publisher to `pipeline`'s `snapshots` (`partitions` partitions) on `broker`, with
    /// `guarantee`, encoding with `dataset` (and `store`'s `SnapshotEnd` schema).
    pub fn new(
        broker: &'b TestBroker,
        pipeline: &TestPipeline,
        partitions: i32,
        guarantee: ProcessingGuarantee,
        store: SchemaStore,
        dataset: Dataset,
    ) -> SnapshotPublisher<'b> {
        SnapshotPublisher {
            broker,
            topic: pipeline.topics.snapshots.clone(),
            partitions,
            guarantee,
            transactional_id: format!(
                "{}.test-publisher-{}",
                pipeline.name,
                PUBLISHERS.fetch_add(1, Ordering::Relaxed)
            ),
            store,
            dataset,
        }
    }

    /// Publishes `snapshot` as the file `options` describes, and returns what was sent.
    /// Blocking: call it from `block_in_place` or a blocking thread.
    pub fn publish(&self, snapshot: &Snapshot, options: &PublishOptions) -> PublishReport {
        let file = snapshot_records(snapshot, &options.write, &self.dataset)
            .expect("render the snapshot file");
        let snapshot_id = match options.snapshot_id {
            SnapshotIdFrom::FileHash => file.file_hash.clone(),
            SnapshotIdFrom::FileName => options.file_name.clone(),
        };
        let provenance = Provenance {
            file_name: &options.file_name,
            file_hash: &file.file_hash,
            snapshot_id: &snapshot_id,
            stream: &options.stream,
            snapshot_time: options.snapshot_time.map(|ms| ms.to_string()),
        };
        let partitions = self.partitions.max(1);
        let mut rows_in_partition = vec![0i64; partitions as usize];
        let producer = self.producer();
        let mut send = Sender::new(&producer, self.guarantee);

        let chunks: Vec<_> = file
            .records
            .chunks(options.rows_per_transaction.max(1))
            .collect();
        let last = chunks.len().saturating_sub(1);
        for (n, chunk) in chunks.iter().enumerate() {
            send.begin();
            for record in *chunk {
                let partition = partition_for_key(record.key.as_bytes(), partitions);
                rows_in_partition[partition as usize] += 1;
                send.record(
                    BaseRecord::to(&self.topic)
                        .partition(partition)
                        .key(record.key.as_bytes())
                        .payload(record.payload.as_slice())
                        .headers(provenance.headers(Some(record.line))),
                );
            }
            if n < last {
                send.commit();
            }
        }

        // The snapshot is complete: a marker on every partition, after the rows it accounts
        // for are acknowledged (in the last transaction with `exactly_once`).
        send.begin();
        send.settle();
        let rows_sent = file.records.len() as u64;
        let marker_schema = self
            .store
            .current(SnapshotEnd::SCHEMA)
            .expect("SnapshotEnd schema");
        let completed_at = now_millis();
        for (partition, rows) in rows_in_partition.iter().enumerate() {
            let marker = SnapshotEnd {
                snapshot_id: snapshot_id.clone(),
                stream: options.stream.clone(),
                file_hash: file.file_hash.clone(),
                file_name: options.file_name.clone(),
                partition: partition as i32,
                rows_in_partition: *rows,
                rows_total: rows_sent as i64,
                completed_at,
            };
            let payload = marker_schema.encode(&marker).expect("encode SnapshotEnd");
            send.record(
                BaseRecord::to(&self.topic)
                    .partition(partition as i32)
                    .key(snapshot_id.as_bytes())
                    .payload(payload.as_slice())
                    .headers(provenance.headers(None).insert(Header {
                        key: headers::CONTROL,
                        value: Some(headers::CONTROL_SNAPSHOT_END.as_bytes()),
                    })),
            );
        }
        send.commit();

        PublishReport {
            file: options.file_name.clone(),
            hash: file.file_hash,
            stream: options.stream.clone(),
            snapshot_id,
            columns: file.columns,
            rows_total: file.rows_total,
            rows_sent,
            rows_rejected: file.rows_rejected,
            rows_in_partition,
        }
    }

    fn producer(&self) -> ThreadedProducer<Acknowledgements> {
        let producer: ThreadedProducer<Acknowledgements> = self
            .broker
            .kafka_config()
            .producer_config(
                "test-publisher",
                self.guarantee,
                Some(&self.transactional_id),
            )
            .create_with_context(Acknowledgements::default())
            .expect("publisher producer");
        if self.guarantee.is_transactional() {
            producer
                .init_transactions(KAFKA_TIMEOUT)
                .expect("init transactions");
        }
        producer
    }
}

/// The provenance headers file-source puts on a snapshot record, in its order.
struct Provenance<'a> {
    file_name: &'a str,
    file_hash: &'a str,
    snapshot_id: &'a str,
    stream: &'a str,
    snapshot_time: Option<String>,
}

impl Provenance<'_> {
    /// The headers of a data record (`line`) or of a marker (`None`).
    fn headers(&self, line: Option<u64>) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header {
                key: headers::FILE_NAME,
                value: Some(self.file_name.as_bytes()),
            })
            .insert(Header {
                key: headers::FILE_HASH,
                value: Some(self.file_hash.as_bytes()),
            })
            .insert(Header {
                key: headers::SNAPSHOT_ID,
                value: Some(self.snapshot_id.as_bytes()),
            })
            .insert(Header {
                key: headers::STREAM,
                value: Some(self.stream.as_bytes()),
            });
        if let Some(time) = &self.snapshot_time {
            headers = headers.insert(Header {
                key: headers::SNAPSHOT_TIME,
                value: Some(time.as_bytes()),
            });
        }
        if let Some(line) = line {
            headers = headers.insert(Header {
                key: headers::LINE,
                value: Some(line.to_string().as_bytes()),
            });
        }
        headers
    }
}

/// Sends, and makes what was sent durable, for one guarantee.
struct Sender<'p> {
    producer: &'p ThreadedProducer<Acknowledgements>,
    guarantee: ProcessingGuarantee,
    in_transaction: bool,
}

impl<'p> Sender<'p> {
    fn new(
        producer: &'p ThreadedProducer<Acknowledgements>,
        guarantee: ProcessingGuarantee,
    ) -> Self {
        Sender {
            producer,
            guarantee,
            in_transaction: false,
        }
    }

    /// Opens a transaction unless one is open (`exactly_once` only).
    fn begin(&mut self) {
        if self.guarantee.is_transactional() && !self.in_transaction {
            self.producer
                .begin_transaction()
                .expect("begin transaction");
            self.in_transaction = true;
        }
    }

    /// Sends one record, waiting while the producer's queue is full.
    fn record(&mut self, mut record: BaseRecord<'_, [u8], [u8]>) {
        let deadline = Instant::now() + KAFKA_TIMEOUT;
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    // The producer's own thread drains the queue; give it a moment.
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => panic!("send to snapshots: {error}"),
            }
        }
    }

    /// `at_least_once`: waits until everything sent so far is acknowledged (the commit does
    /// that with `exactly_once`).
    fn settle(&mut self) {
        if self.guarantee.is_transactional() {
            return;
        }
        self.producer.flush(KAFKA_TIMEOUT).expect("flush");
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        assert_eq!(failed, 0, "records not acknowledged by the broker");
    }

    /// Makes everything sent so far durable: commits the transaction, or settles.
    fn commit(&mut self) {
        if self.in_transaction {
            self.producer
                .commit_transaction(KAFKA_TIMEOUT)
                .expect("commit transaction");
            self.in_transaction = false;
        }
        self.settle();
    }
}

/// Counts records the broker did not acknowledge.
#[derive(Debug, Default)]
struct Acknowledgements {
    failed: AtomicU64,
}

impl ClientContext for Acknowledgements {}

impl ProducerContext for Acknowledgements {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

//! What a decision puts on the wire: the change event for `changes`, the key's new entry for
//! `state`, and the reject of a corrupt record — encoded with the current schemas, provenance
//! taken from the snapshot record's headers. Nothing here is sent: the batch
//! ([`super::batch`]) does that, in the order the guarantee needs.
//!
//! The change event nests the snapshot record as a typed record: a record written with the
//! current dataset schema is spliced in as it is; one written with an older version is nested
//! as the decision decoded it, in the current layout.
//!
//! A change event is a pure function of the [`Change`] and its provenance (no wall clock), so a
//! batch that is repeated after a crash writes byte-identical events — with the same schemas
//! (after a dataset schema upgrade the repeat names the new version; its (key, version), and so
//! its Idempotency-Key, are the same).

use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use snapfeed_runtime::avro::{AvroError, MessageLocation, SchemaStore};
use snapfeed_runtime::dataset::{ChangeRecord, ChangeWriter, Dataset};
use snapfeed_runtime::headers;
use snapfeed_runtime::records::{
    now_millis, AvroRecord, ChangeEvent, DetectorState, Provenance, RejectedRow, StaleSnapshot,
    StateLayout, StreamProgress,
};

use super::decide::Change;
use crate::content_hash::hash_hex;

/// The provenance headers of a snapshot record, borrowed from the message.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta<'a> {
    /// Source file name.
    pub file_name: &'a str,
    /// Source file content hash.
    pub file_hash: &'a str,
    /// Snapshot the record belongs to.
    pub snapshot_id: &'a str,
    /// Snapshot stream (`default` when the header is missing).
    pub stream: &'a str,
    /// Line in the source file.
    pub line: Option<i64>,
    /// When the snapshot was taken (ms), if file-source knew.
    pub snapshot_time: Option<i64>,
    /// Control record kind (snapshot-end marker), if it is one.
    pub control: Option<&'a str>,
}

impl<'a> RecordMeta<'a> {
    /// The provenance headers, borrowed from the message (no allocation per record).
    pub fn from_message(message: &'a BorrowedMessage<'_>) -> RecordMeta<'a> {
        let mut meta = RecordMeta {
            file_name: "",
            file_hash: "",
            snapshot_id: "",
            stream: "default",
            line: None,
            snapshot_time: None,
            control: None,
        };
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                let Some(Ok(value)) = header.value.map(std::str::from_utf8) else {
                    continue;
                };
                match header.key {
                    headers::FILE_NAME => meta.file_name = value,
                    headers::FILE_HASH => meta.file_hash = value,
                    headers::SNAPSHOT_ID => meta.snapshot_id = value,
                    headers::STREAM => meta.stream = value,
                    headers::LINE => meta.line = value.parse().ok(),
                    headers::SNAPSHOT_TIME => meta.snapshot_time = value.parse().ok(),
                    headers::CONTROL => meta.control = Some(value),
                    _ => {}
                }
            }
        }
        meta
    }

    /// True for a snapshot-end marker.
    pub fn is_snapshot_end(&self) -> bool {
        self.control == Some(headers::CONTROL_SNAPSHOT_END)
    }
}

/// Encodes the detector's records with the current schemas.
#[derive(Debug)]
pub struct Envelopes {
    schemas: Arc<SchemaStore>,
    changes: ChangeWriter,
    /// Full name of the dataset schema, named in every change event.
    record_schema: String,
    /// The last change event, reused (one per change, never per record).
    value: Vec<u8>,
}

impl Envelopes {
    /// Envelopes for records of `dataset`; fails when the schemas hold no change event schema
    /// composed with it.
    pub fn new(schemas: Arc<SchemaStore>, dataset: Arc<Dataset>) -> Result<Envelopes, AvroError> {
        Ok(Envelopes {
            changes: dataset.change_writer(&schemas)?,
            record_schema: dataset.schema_name().to_string(),
            schemas,
            value: Vec::with_capacity(1024),
        })
    }

    /// The change event of `change`, with `source` as its provenance.
    pub fn change_event(
        &mut self,
        change: &Change<'_>,
        source: &RecordMeta<'_>,
    ) -> Result<&[u8], AvroError> {
        let event = ChangeEvent {
            op: change.op,
            key: change.key.to_string(),
            version: change.version,
            content_hash: hash_hex(change.content_hash),
            previous_hash: change.previous_hash.map(hash_hex),
            record_schema: self.record_schema.clone(),
            source: Provenance {
                file_name: source.file_name.to_string(),
                file_hash: source.file_hash.to_string(),
                line: source.line,
                snapshot_id: source.snapshot_id.to_string(),
                stream: source.stream.to_string(),
            },
            detected_at: change.detected_at,
        };
        self.value.clear();
        let record =
            change
                .record
                .as_ref()
                .map(|record| match self.changes.current_body(record.payload) {
                    Some(body) => ChangeRecord::Body(body),
                    None => ChangeRecord::Record(&record.decoded),
                });
        self.changes.encode_into(&event, record, &mut self.value)?;
        Ok(&self.value)
    }

    /// The `state` value of a key's entry.
    pub fn state_entry(&self, entry: &DetectorState) -> Result<Vec<u8>, AvroError> {
        self.schemas.current(DetectorState::SCHEMA)?.encode(entry)
    }

    /// The `state` control entry recording `progress` as its stream's newest snapshot.
    pub fn stream_progress(&self, progress: &StreamProgress) -> Result<Vec<u8>, AvroError> {
        self.schemas
            .current(StreamProgress::SCHEMA)?
            .encode(progress)
    }

    /// The `state` control entry recording a snapshot passed over as stale.
    pub fn stale_snapshot(&self, stale: &StaleSnapshot) -> Result<Vec<u8>, AvroError> {
        self.schemas.current(StaleSnapshot::SCHEMA)?.encode(stale)
    }

    /// The `state` control entry saying `partition` was written for `partitions`.
    pub fn state_layout(&self, partition: i32, partitions: i32) -> Result<Vec<u8>, AvroError> {
        let layout = StateLayout {
            partition_count: partitions,
            partition,
            written_at: now_millis(),
            written_by: crate::SERVICE.to_string(),
        };
        self.schemas.current(StateLayout::SCHEMA)?.encode(&layout)
    }

    /// The `rejects` value of a snapshot record that does not decode: where it came from and
    /// why, never its bytes.
    pub fn reject(&self, meta: &RecordMeta<'_>, detail: &str) -> Result<Vec<u8>, AvroError> {
        let row = RejectedRow {
            file_name: meta.file_name.to_string(),
            file_hash: meta.file_hash.to_string(),
            snapshot_id: meta.snapshot_id.to_string(),
            stream: meta.stream.to_string(),
            line: meta.line.unwrap_or(0),
            column: None,
            reason: "corrupt_payload".into(),
            detail: detail.to_string(),
            raw_line: String::new(),
            raw_truncated: false,
            rejected_at: now_millis(),
        };
        self.schemas.current(RejectedRow::SCHEMA)?.encode(&row)
    }
}

/// Where a message is, for errors and reject keys.
pub fn location_of(message: &BorrowedMessage<'_>) -> MessageLocation {
    MessageLocation::of(message)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::borrow::Cow;
    use std::path::Path;

    use snapfeed_runtime::dataset::{DatasetMapping, DatasetRecord, FieldKind, FieldValue};
    use snapfeed_runtime::records::ChangeOp;

    use super::*;
    use crate::detect::decide::ChangedRecord;

    fn envelopes() -> (Envelopes, Arc<Dataset>, Arc<SchemaStore>) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let store = Arc::new(SchemaStore::load_dir(&root.join("schemas")).unwrap());
        let dataset = Arc::new(
            DatasetMapping::load(&root.join("deploy/config/lab_results.mapping.toml"), &store)
                .unwrap(),
        );
        let envelopes = Envelopes::new(store.clone(), dataset.clone()).unwrap();
        (envelopes, dataset, store)
    }

    fn record(dataset: &Dataset) -> DatasetRecord {
        let values = dataset
            .fields()
            .iter()
            .map(|spec| match (spec.name(), spec.kind()) {
                ("device_id", _) => FieldValue::String("DEV-1".into()),
                (_, FieldKind::Enum) => FieldValue::Enum(spec.symbols()[0].clone()),
                (_, FieldKind::Date) => FieldValue::Date(19_000),
                (_, FieldKind::TimestampMillis) => FieldValue::TimestampMillis(1),
                (name, _) => FieldValue::String(format!("{name} 1")),
            })
            .collect();
        dataset.record(values).unwrap()
    }

    fn meta() -> RecordMeta<'static> {
        RecordMeta {
            file_name: "s1.csv",
            file_hash: "ab",
            snapshot_id: "s1",
            stream: "default",
            line: Some(2),
            snapshot_time: None,
            control: None,
        }
    }

    fn change(payload: &[u8], decoded: DatasetRecord) -> Change<'_> {
        Change {
            op: ChangeOp::Create,
            key: Cow::Borrowed("K1"),
            version: 1,
            content_hash: 7,
            previous_hash: None,
            record: Some(ChangedRecord { payload, decoded }),
            detected_at: 5,
        }
    }

    fn location() -> MessageLocation {
        MessageLocation {
            topic: "changes".into(),
            partition: 0,
            offset: 3,
        }
    }

    #[test]
    fn a_current_record_is_spliced_in_byte_for_byte_and_reads_back() {
        let (mut envelopes, dataset, store) = envelopes();
        let record = record(&dataset);
        let mut payload = Vec::new();
        dataset.encode(&record, &mut payload).unwrap();
        // The first field's length written as an overlong (two-byte) varint: valid Avro that
        // decodes to the same record, but that no encoder writes. Finding it in the event
        // proves the body was spliced, not re-encoded.
        let length = payload[10];
        assert!(length < 0x80, "a short first string");
        payload.splice(10..11, [length | 0x80, 0x00]);
        assert_eq!(
            dataset.decode(&payload, &store, &location()).unwrap(),
            record
        );
        let bytes = envelopes
            .change_event(&change(&payload, record.clone()), &meta())
            .unwrap()
            .to_vec();
        let body = &payload[10..];
        assert!(
            bytes.windows(body.len()).any(|w| w == body),
            "spliced as it came"
        );
        let (event, decoded) = dataset.decode_change(&bytes, &store, &location()).unwrap();
        assert_eq!((event.key.as_str(), event.version), ("K1", 1));
        assert_eq!(event.source.file_name, "s1.csv");
        assert_eq!(decoded, Some(record));
    }

    #[test]
    fn a_record_of_an_older_schema_version_is_nested_as_decoded() {
        let (mut envelopes, dataset, store) = envelopes();
        let record = record(&dataset);
        // A payload under another fingerprint (an older writer): its decoded record goes in.
        let mut payload = Vec::new();
        dataset.encode(&record, &mut payload).unwrap();
        payload[2] ^= 0xFF;
        let values: Vec<FieldValue> = record
            .names()
            .iter()
            .zip(record.values())
            .map(|(name, value)| match &**name {
                "device_id" => FieldValue::Null,
                _ => value.clone(),
            })
            .collect();
        let without_device = dataset.record(values).unwrap();
        let bytes = envelopes
            .change_event(&change(&payload, without_device.clone()), &meta())
            .unwrap()
            .to_vec();
        let writer = store.writer(&bytes, &location()).unwrap();
        assert_eq!(
            writer.fingerprint,
            dataset.change_writer(&store).unwrap().schema().fingerprint
        );
        let (_, decoded) = dataset.decode_change(&bytes, &store, &location()).unwrap();
        assert_eq!(decoded, Some(without_device));
    }
}

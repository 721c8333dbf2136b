//! The ingestion ledger: the compacted `files` topic, one entry per file content hash, read
//! back in full at start and caught up before each file (other instances write to it too). It answers "was this content already ingested?" (COMPLETED → skip)
//! and "where does an interrupted file resume?" (IN_PROGRESS → after `rows_committed`).
//!
//! Entries are written by the ingest in the same transaction as the rows they account for, so
//! a `read_committed` reader never sees a checkpoint ahead of its rows.

use std::collections::{BTreeMap, HashMap};

use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset};
use snapfeed_runtime::avro::{MessageLocation, SchemaStore};
use snapfeed_runtime::kafka::TopicReader;
use snapfeed_runtime::records::{AvroRecord, FileLedgerEntry, FileStatus};

/// The latest entry per file hash.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    entries: HashMap<String, FileLedgerEntry>,
    /// Per partition of `files`, the next offset to read: where [`Ledger::catch_up`] goes on.
    read_to: BTreeMap<i32, i64>,
}

/// What the ledger says about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerVerdict {
    /// Never seen (or failed before): ingest from the start.
    New,
    /// Interrupted: resume after this many data records.
    Resume(u64),
    /// Already ingested: skip.
    Completed,
}

impl Ledger {
    /// What to do with the file of this hash.
    pub fn verdict(&self, hash: &str) -> LedgerVerdict {
        match self.entries.get(hash) {
            Some(entry) if entry.status == FileStatus::Completed => LedgerVerdict::Completed,
            Some(entry) if entry.status == FileStatus::InProgress => {
                LedgerVerdict::Resume(entry.rows_committed.max(0) as u64)
            }
            _ => LedgerVerdict::New,
        }
    }

    /// The entry for a hash.
    pub fn get(&self, hash: &str) -> Option<&FileLedgerEntry> {
        self.entries.get(hash)
    }

    /// Records an entry this instance committed.
    pub fn record(&mut self, entry: FileLedgerEntry) {
        self.entries.insert(entry.file_hash.clone(), entry);
    }

    /// Number of files known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no file is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads every partition of `topic` from the beginning to its end (blocking). Undecodable
    /// entries are skipped with a warning: a ledger entry we cannot read must not stop
    /// ingestion (at worst a file is ingested again, which the detector absorbs).
    pub fn load(
        reader: &TopicReader,
        topic: &str,
        schemas: &SchemaStore,
    ) -> Result<Ledger, KafkaError> {
        let mut ledger = Ledger::default();
        reader.read_all(topic, |message| ledger.apply(message, topic, schemas))?;
        Ok(ledger)
    }

    /// Reads what was written to `topic` since the last read (blocking): the entries other
    /// instances committed meanwhile — a file they completed (so a re-delivery of it is a
    /// duplicate here too), or the checkpoint of one they left unfinished (so it resumes
    /// there, e.g. after `file-source adopt`). Returns the entries read.
    pub fn catch_up(
        &mut self,
        reader: &TopicReader,
        topic: &str,
        schemas: &SchemaStore,
    ) -> Result<u64, KafkaError> {
        let from: Vec<(i32, Offset)> = (0..reader.partitions(topic)?)
            .map(|partition| {
                let offset = self
                    .read_to
                    .get(&partition)
                    .map_or(Offset::Beginning, |next| Offset::Offset(*next));
                (partition, offset)
            })
            .collect();
        reader.read_from(topic, &from, |message| self.apply(message, topic, schemas))
    }

    fn apply(&mut self, message: &BorrowedMessage<'_>, topic: &str, schemas: &SchemaStore) {
        self.read_to
            .insert(message.partition(), message.offset() + 1);
        let Some(payload) = message.payload() else {
            // Tombstone: the entry was deleted.
            if let Some(Ok(hash)) = message.key_view::<str>() {
                self.entries.remove(hash);
            }
            return;
        };
        let location = MessageLocation {
            topic: topic.to_string(),
            partition: message.partition(),
            offset: message.offset(),
        };
        match schemas.decode::<FileLedgerEntry>(payload, FileLedgerEntry::SCHEMA, &location) {
            Ok(entry) => self.record(entry),
            Err(error) => {
                tracing::warn!(message = "Skipping unreadable ledger entry.", %error)
            }
        }
    }
}

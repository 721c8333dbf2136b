//! Redrive: dead letters back onto `changes`, once their cause is fixed.
//!
//! Picks the letters matching the filters (dead-lettered at or after `--since`, with
//! `--status`, `--reason`, `--key`) that are **open** — where each letter stands is read from
//! `dead-letters`, `changes` and `deliveries` by [`snapfeed_runtime::dead_letters`] — and
//! re-publishes each one's original change to `changes` (same key, so the same partition and
//! lane) with the redrive count in a header. Left alone, and counted:
//! - a letter whose key has had a newer version delivered or waiting on `changes` since:
//!   sending the older version after it would overwrite the case with stale data;
//! - a letter already redriven whose copy the sink has not finished with — so a second redrive
//!   before the sink caught up publishes nothing twice;
//! - a letter delivered since, or replaced by a later letter of the same change.
//!
//! `--dry-run` prints what would be redriven and writes nothing.
//!
//! Guarantee: at least once. The changes are written through a
//! [`GuaranteedWriter`] and the redrive reports success only once every one is acknowledged;
//! a failed or interrupted redrive can be run again — a letter redriven twice reaches the API
//! with the same Idempotency-Key.

use std::fmt;

use rdkafka::message::{Header, OwnedHeaders};
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::dead_letters::{read_letters, LetterState};
use snapfeed_runtime::inspect::InspectError;
use snapfeed_runtime::kafka::{
    GuaranteedWriter, KafkaConfig, OutgoingRecord, ProcessingGuarantee, WriteError,
};
use snapfeed_runtime::topics::TopicNames;

use crate::deliver::REDRIVE_COUNT_HEADER;

/// Which dead letters to redrive: `since`, `status`, `reason`, `key` (a `state` other than
/// open selects nothing: only open letters are redriven).
pub use snapfeed_runtime::dead_letters::LetterFilter as RedriveFilter;

/// What a redrive did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Nothing was written.
    pub dry_run: bool,
    /// The changes re-published (key, version), in letter order.
    pub redriven: Vec<(String, i64)>,
    /// Letters left alone: a newer version of the key was delivered or is waiting.
    pub superseded: usize,
    /// Letters already redriven, the copy not delivered yet.
    pub already_redriven: usize,
    /// Letters delivered since, or replaced by a later letter of the same change.
    pub settled: usize,
    /// Letters not matching the filter.
    pub filtered_out: usize,
    /// Letters whose change is undecodable (reason `undecodable`) — redriving cannot help.
    pub undecodable: usize,
}

impl fmt::Display for RedriveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would redrive"
        } else {
            "redrove"
        };
        for (key, version) in &self.redriven {
            writeln!(f, "{verb} {key} v{version}")?;
        }
        write!(
            f,
            "{} {}, skipped: superseded {}, already redriven {}, delivered or replaced {}, not matching {}, undecodable {}",
            if self.dry_run { "would redrive" } else { "redriven" },
            self.redriven.len(),
            self.superseded,
            self.already_redriven,
            self.settled,
            self.filtered_out,
            self.undecodable
        )
    }
}

/// Why a redrive failed.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// Reading `deliveries`, `dead-letters` or `changes` failed.
    #[error(transparent)]
    Read(#[from] InspectError),
    /// The redriven changes could not be written (or acknowledged): run it again — a change
    /// redriven twice is delivered with the same Idempotency-Key.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Redrives the matching open dead letters, or only reports them when `dry_run` (blocking).
pub fn redrive(
    kafka: &KafkaConfig,
    guarantee: ProcessingGuarantee,
    topics: &TopicNames,
    schemas: &SchemaStore,
    filter: &RedriveFilter,
    dry_run: bool,
) -> Result<RedriveReport, RedriveError> {
    let letters = read_letters(kafka, guarantee, topics, schemas)?;
    let mut report = RedriveReport {
        dry_run,
        ..RedriveReport::default()
    };
    // at_least_once: a redrive is not part of a transaction; acknowledged before it reports.
    let writer = if dry_run {
        None
    } else {
        Some(GuaranteedWriter::connect(
            kafka,
            "api-sink-redrive",
            ProcessingGuarantee::AtLeastOnce,
            "api-sink-redrive",
        )?)
    };
    for letter in &letters {
        if !filter.matches(letter) {
            report.filtered_out += 1;
            continue;
        }
        match letter.state {
            LetterState::Open => {}
            LetterState::Superseded => {
                report.superseded += 1;
                continue;
            }
            LetterState::Redriven => {
                report.already_redriven += 1;
                continue;
            }
            LetterState::Delivered | LetterState::Replaced => {
                report.settled += 1;
                continue;
            }
            LetterState::Undecodable => {
                report.undecodable += 1;
                continue;
            }
        }
        let l = &letter.letter;
        let (Some(key), Some(version)) = (&l.key, l.version) else {
            report.undecodable += 1;
            continue;
        };
        if let Some(writer) = &writer {
            let count = (l.redrive_count + 1).to_string();
            let headers = OwnedHeaders::new().insert(Header {
                key: REDRIVE_COUNT_HEADER,
                value: Some(count.as_bytes()),
            });
            writer.send(
                OutgoingRecord::new(&topics.changes, key.as_bytes(), &l.change).headers(headers),
            )?;
        }
        report.redriven.push((key.clone(), version));
    }
    if let Some(writer) = &writer {
        writer.acknowledge()?;
    }
    tracing::info!(
        message = "Redrive done.",
        dry_run,
        redriven = report.redriven.len(),
        superseded = report.superseded,
        already_redriven = report.already_redriven,
        filtered_out = report.filtered_out
    );
    Ok(report)
}

//! The dead letters and where each stands now: `dead-letters list` prints them, and
//! `api-sink redrive` re-publishes exactly the ones [`LetterState::Open`].
//!
//! A letter's state comes from three topics read to their end:
//! - `dead-letters`: every letter. A change dead-lettered again after a redrive has a newer
//!   letter (higher redrive count); the older one is [`LetterState::Replaced`].
//! - `changes`: a copy of the change carrying a redrive count above the letter's
//!   ([`REDRIVE_COUNT_HEADER`]) means it was redriven and the sink has not finished with it
//!   ([`LetterState::Redriven`]) — so a second redrive before the sink caught up publishes
//!   nothing twice; a newer version of the key waiting there supersedes the letter.
//! - `deliveries`: a receipt for the same version makes it [`LetterState::Delivered`]; one for
//!   a newer version [`LetterState::Superseded`] (redriving it would roll the case back).
//!
//! Memory: the letters, plus the versions seen on `changes` and `deliveries` of their keys
//! only. Blocking.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};
use rdkafka::Message;

use crate::avro::{AvroError, MessageLocation, SchemaStore};
use crate::inspect::{header, millis_text, InspectError};
use crate::kafka::{KafkaConfig, ProcessingGuarantee, TopicReader};
use crate::records::{AvroRecord, ChangeEvent, DeadLetter, DeliveryReceipt};
use crate::topics::TopicNames;

/// Header counting how often a change was redriven from the dead letters (written by
/// `api-sink redrive`, copied into the letter when a redriven change fails again).
pub const REDRIVE_COUNT_HEADER: &str = "snapfeed-redrive-count";

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LetterState {
    /// Not delivered, not waiting anywhere: a redrive would publish it.
    Open,
    /// Redriven; the copy is on `changes`, not delivered yet.
    Redriven,
    /// Delivered since (after a redrive or a replay).
    Delivered,
    /// A newer version of its key was delivered or is waiting on `changes`: it must not be
    /// sent any more.
    Superseded,
    /// The same change was dead-lettered again later; that letter stands for it.
    Replaced,
    /// The change did not decode: no key or version to act on.
    Undecodable,
}

impl LetterState {
    /// The name `--state` takes and the list prints.
    pub fn as_str(self) -> &'static str {
        match self {
            LetterState::Open => "open",
            LetterState::Redriven => "redriven",
            LetterState::Delivered => "delivered",
            LetterState::Superseded => "superseded",
            LetterState::Replaced => "replaced",
            LetterState::Undecodable => "undecodable",
        }
    }
}

impl std::str::FromStr for LetterState {
    type Err = String;

    fn from_str(text: &str) -> Result<LetterState, String> {
        [
            LetterState::Open,
            LetterState::Redriven,
            LetterState::Delivered,
            LetterState::Superseded,
            LetterState::Replaced,
            LetterState::Undecodable,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
        .ok_or_else(|| {
            format!("{text:?} (expected open, redriven, delivered, superseded, replaced or undecodable)")
        })
    }
}

/// Which letters to pick.
#[derive(Debug, Clone, Default)]
pub struct LetterFilter {
    /// Dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Whose last HTTP status is this one.
    pub status: Option<i32>,
    /// Of this reason (`http_4xx`, `retry_budget_exhausted`, …).
    pub reason: Option<String>,
    /// Of this record key.
    pub key: Option<String>,
    /// In this state.
    pub state: Option<LetterState>,
}

impl LetterFilter {
    /// Whether `letter` passes.
    pub fn matches(&self, letter: &Letter) -> bool {
        let l = &letter.letter;
        self.since
            .is_none_or(|since| l.dead_lettered_at >= since.timestamp_millis())
            && self.status.is_none_or(|status| l.status == Some(status))
            && self
                .reason
                .as_deref()
                .is_none_or(|reason| l.reason == reason)
            && self
                .key
                .as_deref()
                .is_none_or(|key| l.key.as_deref() == Some(key))
            && self.state.is_none_or(|state| letter.state == state)
    }
}

/// One dead letter, where it is and where it stands.
#[derive(Debug, Clone)]
pub struct Letter {
    /// The letter.
    pub letter: DeadLetter,
    /// Where it is on `dead-letters`.
    pub location: MessageLocation,
    /// Where it stands.
    pub state: LetterState,
}

impl fmt::Display for Letter {
    /// One line, no record contents: time, state, key and version, reason, status, attempts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.letter;
        write!(
            f,
            "{}  {:<11} {} v{}  {}{}  attempts {}  redriven {}x  change {}/{}@{}  letter {}",
            millis_text(l.dead_lettered_at),
            self.state.as_str(),
            l.key.as_deref().unwrap_or("?"),
            l.version.map_or_else(|| "?".to_string(), |v| v.to_string()),
            l.reason,
            l.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(),
            l.attempts,
            l.redrive_count,
            l.source_topic,
            l.source_partition,
            l.source_offset,
            self.location,
        )
    }
}

/// Every dead letter of the pipeline with its state, in the order written (per partition).
pub fn read_letters(
    kafka: &KafkaConfig,
    guarantee: ProcessingGuarantee,
    topics: &TopicNames,
    schemas: &SchemaStore,
) -> Result<Vec<Letter>, InspectError> {
    let reader = TopicReader::new(kafka, "dead-letters", guarantee)
        .map_err(crate::inspect::failed("create a reader"))?;
    let skip = |what: &str, location: &MessageLocation, error: &dyn fmt::Display| {
        tracing::warn!(message = "Skipping a record that does not decode.", what, %location, %error);
    };
    let mut letters = Vec::new();
    reader
        .read_all(&topics.dead_letters, |m| {
            let Some(payload) = m.payload() else { return };
            let location = MessageLocation::of(m);
            match schemas.decode::<DeadLetter>(payload, DeadLetter::SCHEMA, &location) {
                Ok(letter) => letters.push(Letter {
                    letter,
                    location,
                    state: LetterState::Open,
                }),
                Err(error) => skip("dead letter", &location, &error),
            }
        })
        .map_err(crate::inspect::failed("read the dead letters"))?;
    let mut keys: HashMap<String, Seen> = letters
        .iter()
        .filter_map(|l| l.letter.key.clone())
        .map(|key| (key, Seen::default()))
        .collect();
    if keys.is_empty() {
        mark(&mut letters, &keys);
        return Ok(letters);
    }

    reader
        .read_all(&topics.changes, |m| {
            let Some(seen) = m
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| keys.get_mut(k))
            else {
                return;
            };
            let Some(payload) = m.payload() else { return };
            let location = MessageLocation::of(m);
            match schemas.decode::<ChangeEvent>(payload, ChangeEvent::SCHEMA, &location) {
                Ok(change) => seen.on_changes(change.version, redrive_count(m)),
                Err(error) => skip("change event", &location, &error),
            }
        })
        .map_err(crate::inspect::failed("read the changes"))?;
    reader
        .read_all(&topics.deliveries, |m| {
            let Some(payload) = m.payload() else { return };
            let location = MessageLocation::of(m);
            match schemas.decode::<DeliveryReceipt>(payload, DeliveryReceipt::SCHEMA, &location) {
                Ok(receipt) => {
                    if let Some(seen) = keys.get_mut(&receipt.key) {
                        if (200..300).contains(&receipt.status) {
                            seen.delivered.push(receipt.version);
                        }
                    }
                }
                // `deliveries` also carries replay markers: only receipts count.
                Err(AvroError::WrongSchema { .. }) => {}
                Err(error) => skip("delivery receipt", &location, &error),
            }
        })
        .map_err(crate::inspect::failed("read the deliveries"))?;
    mark(&mut letters, &keys);
    Ok(letters)
}

/// What the other topics say about one key.
#[derive(Debug, Default)]
struct Seen {
    /// Newest version on `changes`.
    newest_change: Option<i64>,
    /// Per version on `changes`, the highest redrive count of its copies.
    redriven: HashMap<i64, i32>,
    /// Versions with a 2xx receipt.
    delivered: Vec<i64>,
}

impl Seen {
    fn on_changes(&mut self, version: i64, redrive_count: i32) {
        self.newest_change = Some(self.newest_change.map_or(version, |v| v.max(version)));
        let count = self.redriven.entry(version).or_insert(0);
        *count = (*count).max(redrive_count);
    }
}

/// How often the change in `message` was redriven ([`REDRIVE_COUNT_HEADER`]; 0 without it).
pub fn redrive_count<M: Message>(message: &M) -> i32 {
    header(message, REDRIVE_COUNT_HEADER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mark(letters: &mut [Letter], keys: &HashMap<String, Seen>) {
    // The newest letter of each change (highest redrive count, then the later one) stands.
    let mut newest: HashMap<(String, i64), (i32, usize)> = HashMap::new();
    for (i, l) in letters.iter().enumerate() {
        if let (Some(key), Some(version)) = (&l.letter.key, l.letter.version) {
            let entry = newest
                .entry((key.clone(), version))
                .or_insert((l.letter.redrive_count, i));
            if l.letter.redrive_count >= entry.0 {
                *entry = (l.letter.redrive_count, i);
            }
        }
    }
    for (i, l) in letters.iter_mut().enumerate() {
        let (Some(key), Some(version)) = (l.letter.key.clone(), l.letter.version) else {
            l.state = LetterState::Undecodable;
            continue;
        };
        let seen = keys.get(&key);
        let delivered = |v: &i64| seen.is_some_and(|s| s.delivered.contains(v));
        l.state = if seen.is_some_and(|s| s.delivered.iter().any(|v| *v > version))
            || seen
                .and_then(|s| s.newest_change)
                .is_some_and(|v| v > version)
        {
            LetterState::Superseded
        } else if delivered(&version) {
            LetterState::Delivered
        } else if newest.get(&(key.clone(), version)).map(|(_, at)| *at) != Some(i) {
            LetterState::Replaced
        } else if seen
            .and_then(|s| s.redriven.get(&version))
            .is_some_and(|count| *count > l.letter.redrive_count)
        {
            LetterState::Redriven
        } else {
            LetterState::Open
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(key: &str, version: i64, redrive_count: i32, offset: i64) -> Letter {
        Letter {
            letter: DeadLetter {
                change: Vec::new(),
                key: Some(key.into()),
                version: Some(version),
                reason: "http_4xx".into(),
                status: Some(400),
                response_excerpt: None,
                attempts: 1,
                first_attempt_at: None,
                last_attempt_at: None,
                attempt_history: Vec::new(),
                source_topic: "p.changes".into(),
                source_partition: 0,
                source_offset: offset,
                dead_lettered_at: 0,
                redrive_count,
            },
            location: MessageLocation {
                topic: "p.dead-letters".into(),
                partition: 0,
                offset,
            },
            state: LetterState::Open,
        }
    }

    fn states(letters: &[Letter]) -> Vec<&'static str> {
        letters.iter().map(|l| l.state.as_str()).collect()
    }

    #[test]
    fn a_letter_is_open_until_redriven_and_redriven_until_delivered() {
        let mut letters = vec![letter("A", 1, 0, 0)];
        let mut keys: HashMap<String, Seen> = HashMap::new();
        keys.entry("A".into()).or_default().on_changes(1, 0);
        mark(&mut letters, &keys);
        assert_eq!(states(&letters), ["open"]);

        keys.get_mut("A").unwrap().on_changes(1, 1);
        mark(&mut letters, &keys);
        assert_eq!(states(&letters), ["redriven"], "a second redrive skips it");

        keys.get_mut("A").unwrap().delivered.push(1);
        mark(&mut letters, &keys);
        assert_eq!(states(&letters), ["delivered"]);
    }

    #[test]
    fn a_change_dead_lettered_again_after_a_redrive_is_open_once() {
        let mut letters = vec![letter("A", 1, 0, 0), letter("A", 1, 1, 1)];
        let mut keys: HashMap<String, Seen> = HashMap::new();
        let seen = keys.entry("A".into()).or_default();
        seen.on_changes(1, 0);
        seen.on_changes(1, 1);
        mark(&mut letters, &keys);
        assert_eq!(states(&letters), ["replaced", "open"]);
    }

    #[test]
    fn a_newer_version_waiting_or_delivered_supersedes_a_letter() {
        let mut letters = vec![letter("A", 1, 0, 0), letter("B", 1, 0, 1)];
        let mut keys: HashMap<String, Seen> = HashMap::new();
        keys.entry("A".into()).or_default().on_changes(2, 0);
        keys.entry("B".into()).or_default().delivered.push(3);
        mark(&mut letters, &keys);
        assert_eq!(states(&letters), ["superseded", "superseded"]);
    }

    #[test]
    fn the_filter_matches_key_state_and_reason() {
        let mut a = letter("A", 1, 0, 0);
        a.state = LetterState::Redriven;
        let by_key = LetterFilter {
            key: Some("A".into()),
            ..LetterFilter::default()
        };
        assert!(by_key.matches(&a));
        assert!(!by_key.matches(&letter("B", 1, 0, 0)));
        let open = LetterFilter {
            state: Some(LetterState::Open),
            ..LetterFilter::default()
        };
        assert!(!open.matches(&a));
        let other_reason = LetterFilter {
            reason: Some("retry_budget_exhausted".into()),
            ..LetterFilter::default()
        };
        assert!(!other_reason.matches(&a));
        assert_eq!("redriven".parse::<LetterState>(), Ok(LetterState::Redriven));
        assert!("lost".parse::<LetterState>().is_err());
    }
}

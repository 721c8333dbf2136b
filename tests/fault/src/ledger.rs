//! The ledger of truth: what every scenario ends by checking.
//!
//! [`Expectation`] is built from the generator's snapshots as they are dropped into the inbox:
//! for each key of an accepted row, CREATE v1 when the key is new, UPDATE v+1 when its content
//! (every field but the volatile `Report_Generated_At`) differs from the last accepted one,
//! nothing when it is the same (an identical re-delivery adds nothing); rejected rows are
//! expected on `rejects` by (file, line, reason); changes the API refuses for good are expected as
//! dead letters. [`Ledger::check`] then reads what happened and asserts:
//!
//! - `changes`: every expected (key, version) at least once, nothing else, every copy of one
//!   (key, version) byte-identical — and exactly once where the services run `exactly_once` on
//!   a broker that hides aborted records from read_committed readers. Where the broker cannot
//!   (Tansu keeps aborted records visible) the check is "at least once, identical copies" and the
//!   scenario's name says so.
//! - the stub API: every expected (key, version) took effect (a 2xx) — nothing else did; every
//!   request carried the Idempotency-Key the sink derives from (pipeline, key, version), so
//!   every duplicate repeated its first copy's key and body (unique effects = expected exactly);
//!   per key, effects happened in version order (never a newer version before an older one).
//! - `dead-letters` holds exactly the expected dead-lettered changes, `rejects` exactly the
//!   expected rejected rows; nothing expected is missing anywhere (lost = 0).
//! - no service log of the scenario holds a generated name, date of birth, phone or result.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use rdkafka::message::OwnedMessage;
use rdkafka::Message;
pub use snapfeed_harness::generator::canonical_key;
use snapfeed_harness::generator::{DirtKind, KeyTuple, Snapshot, WrittenFile, COLUMNS};
use snapfeed_harness::stub_api::RecordedRequest;
use snapfeed_runtime::avro::MessageLocation;
use snapfeed_runtime::kafka::ProcessingGuarantee;
use snapfeed_runtime::records::{
    AvroRecord, ChangeEvent, ChangeOp, DeadLetter, RejectedRow, StaleSnapshot,
    STALE_SNAPSHOT_KEY_PREFIX,
};
use tokio::task::block_in_place;

use crate::rig::{guarantee_name, Rig};

/// `(canonical record key, version)`.
pub type ChangeId = (String, i64);

/// `(file hash, line, reason)` of a rejected row.
pub type RejectId = (String, i64, String);

/// What must have happened, derived from the generated files.
#[derive(Debug, Default, Clone)]
pub struct Expectation {
    /// Per key: its last version and the hash of its last accepted content.
    state: HashMap<String, (i64, u64)>,
    /// Every change the detector must emit.
    pub changes: BTreeSet<ChangeId>,
    /// Changes the API refuses for good: on `dead-letters`, never delivered.
    pub dead_letters: BTreeSet<ChangeId>,
    /// Changes dead-lettered, then delivered by `redrive`.
    pub redriven: BTreeSet<ChangeId>,
    /// Every row that must be on `rejects`.
    pub rejects: BTreeSet<RejectId>,
    /// Files the detector must pass over as late (older than the newest applied): their
    /// stale-snapshot entries on `state`. No other file may have one — a file that was
    /// applied and then read again (kill -9, at_least_once) is replayed, not late.
    pub late_files: BTreeSet<String>,
}

/// Hash of a row's content as the detector compares it: every field but the volatile one.
fn content_hash(values: &[&str; 27]) -> u64 {
    let volatile = COLUMNS
        .iter()
        .position(|c| *c == "Report_Generated_At")
        .expect("volatile column");
    let mut hasher = DefaultHasher::new();
    for (i, value) in values.iter().enumerate() {
        if i != volatile {
            value.hash(&mut hasher);
        }
    }
    hasher.finish()
}

impl Expectation {
    /// `snapshot`, written as `written` with content hash `file_hash`, is ingested: its accepted
    /// rows become changes where new or different, its rejected rows rejects. Returns the
    /// changes this file adds.
    ///
    /// Dirt must not touch content (quoted line breaks rewrite a street when written), so only
    /// rejected kinds of dirt are allowed here.
    pub fn file(&mut self, snapshot: &Snapshot, written: &WrittenFile, file_hash: &str) -> usize {
        let before = self.changes.len();
        for dirty in &written.dirty {
            let reason = match dirty.kind {
                DirtKind::BadDate => "bad_date",
                DirtKind::MissingRequired => "missing_required",
                DirtKind::DuplicateKey => "duplicate_key",
                DirtKind::QuotedNewline => {
                    panic!("the ledger cannot follow quoted-newline dirt (it rewrites content)")
                }
            };
            self.rejects
                .insert((file_hash.to_string(), dirty.line as i64, reason.to_string()));
        }
        for row in snapshot.rows() {
            let key = row.key();
            if !written.accepted_keys.contains(&key) {
                continue;
            }
            let key = canonical_key(&key);
            let hash = content_hash(&row.values());
            match self.state.get_mut(&key) {
                None => {
                    self.changes.insert((key.clone(), 1));
                    self.state.insert(key, (1, hash));
                }
                Some((version, last)) if *last != hash => {
                    *version += 1;
                    *last = hash;
                    self.changes.insert((key, *version));
                }
                Some(_) => {}
            }
        }
        self.changes.len() - before
    }

    /// The current version of `key` (generator key), if it has one.
    pub fn version(&self, key: &KeyTuple) -> Option<i64> {
        self.state.get(&canonical_key(key)).map(|(v, _)| *v)
    }

    /// Changes that must take effect at the API.
    pub fn delivered(&self) -> BTreeSet<ChangeId> {
        self.changes
            .iter()
            .filter(|id| !self.dead_letters.contains(*id))
            .cloned()
            .collect()
    }

    /// Changes that must be on `dead-letters` (for good, or before their redrive).
    pub fn lettered(&self) -> BTreeSet<ChangeId> {
        self.dead_letters.union(&self.redriven).cloned().collect()
    }
}

/// What one scenario proved, printed as one line.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Scenario label.
    pub scenario: String,
    /// Broker and guarantee.
    pub broker: String,
    /// SIGKILLs (and broker stops) survived.
    pub kills: usize,
    /// Distinct changes expected.
    pub changes_expected: usize,
    /// Distinct (key, version) on `changes`.
    pub changes_seen: usize,
    /// Events on `changes` beyond one per (key, version).
    pub change_repeats: usize,
    /// Distinct (key, version) that took effect at the API.
    pub api_effects: usize,
    /// API requests in all (retries and refused ones included).
    pub api_requests: usize,
    /// 2xx requests beyond the first per Idempotency-Key.
    pub api_duplicates: usize,
    /// Dead letters (distinct) and rejects (distinct) seen.
    pub dead_letters: usize,
    /// Rejected rows on `rejects`.
    pub rejects: usize,
    /// Whether the `changes` check was exactly once (false: at least once, identical copies).
    pub exactly_once_checked: bool,
    /// Expected changes missing anywhere.
    pub lost: usize,
    /// Log files scanned for health data.
    pub logs_scanned: usize,
    /// Scenario wall time.
    pub seconds: f64,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FAULT {} [{}]: kills survived {} | changes expected {} seen {} (+{} repeats, {}) | \
             API effects {} of {} requests, {} duplicates de-duplicated by Idempotency-Key | \
             dead letters {} | rejects {} | lost {} | {} logs clean | {:.1} s",
            self.scenario,
            self.broker,
            self.kills,
            self.changes_expected,
            self.changes_seen,
            self.change_repeats,
            if self.exactly_once_checked {
                "exactly once checked"
            } else {
                "identical copies checked"
            },
            self.api_effects,
            self.api_requests,
            self.api_duplicates,
            self.dead_letters,
            self.rejects,
            self.lost,
            self.logs_scanned,
            self.seconds,
        )
    }
}

/// Reads and judges a scenario's outcome.
#[derive(Debug)]
pub struct Ledger;

fn sample<T: fmt::Debug>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<T> = items.into_iter().collect();
    let shown: Vec<&T> = items.iter().take(5).collect();
    format!("{} (first: {shown:?})", items.len())
}

fn location(message: &OwnedMessage) -> MessageLocation {
    MessageLocation {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
    }
}

impl Ledger {
    /// Waits (bounded) until the stub saw as many effects as `expected` delivers and the
    /// expected dead letters are written, then until no request arrived for a second.
    pub async fn wait(rig: &Rig, expected: &Expectation, limit: Duration) {
        let want = expected.delivered().len();
        let letters = expected.dead_letters.len();
        let deadline = Instant::now() + limit;
        loop {
            let effects = rig.stub.unique_effects();
            if effects >= want
                && (letters == 0
                    || tokio::task::block_in_place(|| Self::dead_letters(rig)).len() >= letters)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {effects} of {want} changes took effect at the API after {limit:?}",
                rig.scenario
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for _ in 0..30 {
            let seen = rig.stub.requests().len();
            if !rig
                .stub
                .wait_for_requests(seen + 1, Duration::from_secs(1))
                .await
            {
                break;
            }
        }
    }

    /// `(key, version)` of every letter on `dead-letters`.
    pub fn dead_letters(rig: &Rig) -> Vec<ChangeId> {
        let messages = block_in_place(|| {
            rig.broker
                .read_to_end(&rig.pipeline.topics.dead_letters, true)
        });
        messages
            .iter()
            .map(|m| {
                let letter: DeadLetter = rig
                    .store
                    .decode(
                        m.payload().unwrap_or_default(),
                        DeadLetter::SCHEMA,
                        &location(m),
                    )
                    .expect("a dead letter");
                (
                    letter.key.expect("a decodable change's key"),
                    letter.version.expect("a decodable change's version"),
                )
            })
            .collect()
    }

    /// Checks everything (see the module docs) and returns the figures; `kills` is what the
    /// scenario did to its processes. Panics naming the first broken promise.
    pub fn check(rig: &Rig, expected: &Expectation, kills: usize) -> Figures {
        let strict = rig.guarantee() == ProcessingGuarantee::ExactlyOnce
            && rig.broker.hides_aborted_records();
        let mut figures = Figures {
            scenario: rig.scenario.to_string(),
            broker: format!("{} {}", rig.broker.kind(), guarantee_name(rig.guarantee())),
            kills,
            changes_expected: expected.changes.len(),
            exactly_once_checked: strict,
            ..Figures::default()
        };

        // 1. `changes`.
        let committed_only = rig.guarantee().is_transactional();
        let messages = block_in_place(|| {
            rig.broker
                .read_to_end(&rig.pipeline.topics.changes, committed_only)
        });
        let mut copies: BTreeMap<ChangeId, (usize, Vec<u8>)> = BTreeMap::new();
        for message in &messages {
            let payload = message.payload().unwrap_or_default();
            let event: ChangeEvent = rig
                .store
                .decode(payload, ChangeEvent::SCHEMA, &location(message))
                .expect("a change event");
            let op_ok = match event.op {
                ChangeOp::Create => event.version == 1,
                ChangeOp::Update => event.version > 1,
                ChangeOp::Delete => false,
            };
            assert!(
                op_ok,
                "{}: {} v{} is a {:?}",
                rig.scenario, event.key, event.version, event.op
            );
            let entry = copies
                .entry((event.key.clone(), event.version))
                .or_insert_with(|| (0, payload.to_vec()));
            entry.0 += 1;
            assert!(
                entry.1 == payload,
                "{}: two different payloads for ({}, v{}) on changes (at {}/{})",
                rig.scenario,
                event.key,
                event.version,
                message.partition(),
                message.offset()
            );
        }
        let seen: BTreeSet<ChangeId> = copies.keys().cloned().collect();
        let missing: Vec<&ChangeId> = expected.changes.difference(&seen).collect();
        let unexpected: Vec<&ChangeId> = seen.difference(&expected.changes).collect();
        figures.changes_seen = seen.len();
        figures.change_repeats = messages.len() - seen.len();
        figures.lost = missing.len();
        assert!(
            missing.is_empty() && unexpected.is_empty(),
            "{}: changes differ from the {} expected — missing {}, unexpected {}",
            rig.scenario,
            expected.changes.len(),
            sample(&missing),
            sample(&unexpected)
        );
        if strict {
            // A redriven change is re-published on purpose: its second copy is not a repeat.
            let repeated: Vec<(&ChangeId, usize)> = copies
                .iter()
                .filter(|(id, (n, _))| *n > 1 + usize::from(expected.redriven.contains(*id)))
                .map(|(id, (n, _))| (id, *n))
                .collect();
            assert!(
                repeated.is_empty(),
                "{}: exactly once broken on changes: {}",
                rig.scenario,
                sample(repeated)
            );
        }

        // 2. The stub API.
        let requests = rig.stub.requests();
        figures.api_requests = requests.len();
        let mut first_effect: BTreeMap<String, (ChangeId, &RecordedRequest)> = BTreeMap::new();
        let mut effect_order: BTreeMap<String, Vec<(Instant, i64)>> = BTreeMap::new();
        let mut successes = 0usize;
        for request in &requests {
            let body = request.json();
            let key = body["key"].as_str().expect("envelope key").to_string();
            let version = body["version"].as_i64().expect("envelope version");
            let want = api_sink::request::idempotency_key(&rig.pipeline.name, &key, version);
            assert_eq!(
                request.idempotency_key(),
                Some(want.as_str()),
                "{}: a request for ({key}, v{version}) carried another Idempotency-Key",
                rig.scenario
            );
            if !(200..300).contains(&request.status) {
                continue;
            }
            successes += 1;
            match first_effect.get(&want) {
                Some((_, first)) => assert!(
                    first.body == request.body,
                    "{}: a duplicate of ({key}, v{version}) carried another body",
                    rig.scenario
                ),
                None => {
                    first_effect.insert(want, ((key.clone(), version), request));
                    effect_order
                        .entry(key)
                        .or_default()
                        .push((request.at, version));
                }
            }
        }
        let effects: BTreeSet<ChangeId> = first_effect.values().map(|(id, _)| id.clone()).collect();
        figures.api_effects = effects.len();
        figures.api_duplicates = successes - effects.len();
        let delivered = expected.delivered();
        let not_delivered: Vec<&ChangeId> = delivered.difference(&effects).collect();
        let extra: Vec<&ChangeId> = effects.difference(&delivered).collect();
        figures.lost += not_delivered.len();
        assert!(
            not_delivered.is_empty() && extra.is_empty(),
            "{}: effects at the API differ from the {} expected — not delivered {}, \
             unexpected (or refused changes delivered) {}",
            rig.scenario,
            delivered.len(),
            sample(&not_delivered),
            sample(&extra)
        );
        for (key, mut order) in effect_order {
            order.sort();
            assert!(
                order.windows(2).all(|w| w[0].1 < w[1].1),
                "{}: {key} took effect out of version order: {:?}",
                rig.scenario,
                order.iter().map(|(_, v)| v).collect::<Vec<_>>()
            );
        }

        // 3. Dead letters and rejects.
        let letters: BTreeSet<ChangeId> = Self::dead_letters(rig).into_iter().collect();
        figures.dead_letters = letters.len();
        assert_eq!(
            letters,
            expected.lettered(),
            "{}: dead letters differ from the expected",
            rig.scenario
        );
        let rejects: BTreeSet<RejectId> = block_in_place(|| {
            rig.broker
                .read_to_end(&rig.pipeline.topics.rejects, committed_only)
        })
        .iter()
        .map(|m| {
            let row: RejectedRow = rig
                .store
                .decode(
                    m.payload().unwrap_or_default(),
                    RejectedRow::SCHEMA,
                    &location(m),
                )
                .expect("a rejected row");
            (row.file_hash, row.line, row.reason)
        })
        .collect();
        figures.rejects = rejects.len();
        let missing_rejects: Vec<&RejectId> = expected.rejects.difference(&rejects).collect();
        let extra_rejects: Vec<&RejectId> = rejects.difference(&expected.rejects).collect();
        assert!(
            missing_rejects.is_empty() && extra_rejects.is_empty(),
            "{}: rejects differ from the {} expected — missing {}, unexpected {}",
            rig.scenario,
            expected.rejects.len(),
            sample(missing_rejects),
            sample(extra_rejects)
        );

        // 4. Files passed over as late, from their entries on `state`.
        let late: BTreeSet<String> = block_in_place(|| {
            rig.broker
                .read_to_end(&rig.pipeline.topics.state, committed_only)
        })
        .iter()
        .filter(|m| {
            m.key()
                .is_some_and(|k| k.starts_with(STALE_SNAPSHOT_KEY_PREFIX.as_bytes()))
        })
        .map(|m| {
            let stale: StaleSnapshot = rig
                .store
                .decode(
                    m.payload().unwrap_or_default(),
                    StaleSnapshot::SCHEMA,
                    &location(m),
                )
                .expect("a stale-snapshot entry");
            stale.file_name
        })
        .collect();
        assert_eq!(
            late, expected.late_files,
            "{}: files recorded as passed over (late) differ from the expected",
            rig.scenario
        );

        // 5. No health data in any log.
        let leaks = rig
            .health
            .scan_files(rig.logs().iter().map(|p| p.as_path()));
        assert!(
            leaks.is_empty(),
            "{}: health data in service logs: {}",
            rig.scenario,
            sample(&leaks)
        );
        figures.logs_scanned = rig.logs().len();
        figures.seconds = rig.elapsed().as_secs_f64();
        assert_eq!(figures.lost, 0);
        figures
    }
}

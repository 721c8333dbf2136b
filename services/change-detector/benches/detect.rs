//! change-detector's hot paths without Kafka, on realistic records (generator snapshot → the
//! records file-source makes of it, from the harness's `snapshot_records`: record keys and
//! `Dataset::encode` payloads), single-threaded (so "per core"):
//!
//! - unchanged records: `ContentHasher::payload` (the hash read straight from the Avro binary)
//!   and `PartitionState::observe`, as `Engine::handle` does (target ≥ 2,000,000/s); also the
//!   full-decode fallback used for payloads of older writer schemas;
//! - changed records: the same plus building and encoding the state entry and change event;
//! - restore: `SchemaStore::decode::<DetectorState>` + `PartitionState::restore_entry` (target
//!   ≥ 1,000,000/s);
//! - memory per key at 1M and 5M keys: RSS growth of a fresh process filling a
//!   `PartitionState` with ~29-character keys (target ≤ 150 B).
//!
//! Each throughput is measured over several runs; median, min and max are printed. Rates are
//! per second of this thread's CPU time, so other work on the machine does not shrink them
//! (it still costs cache).
//! Run: `cargo bench -p change-detector --bench detect`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failed run

use std::hint::black_box;
use std::process::Command;

use change_detector::content_hash::{content_hash, hash_hex, ContentHasher};
use change_detector::detect::{recognise_unchanged, Recognised};
use change_detector::state::{Decision, PartitionState, Streams};
use snapfeed_harness::generator::{Snapshot, SnapshotDelta, WriteOptions};
use snapfeed_harness::schemas::{lab_results_mapping, load_dataset, schemas_dir};
use snapfeed_harness::snapshot_records::snapshot_records;
use snapfeed_runtime::avro::{MessageLocation, SchemaStore};
use snapfeed_runtime::dataset::{ChangeRecord, Dataset};
use snapfeed_runtime::records::{AvroRecord, ChangeEvent, ChangeOp, DetectorState, Provenance};

/// Records per throughput run (`SNAPFEED_BENCH_RECORDS` overrides, e.g. for a short run under
/// `valgrind --tool=callgrind`).
const RECORDS: usize = 500_000;
/// State entries per restore run.
const RESTORE_ENTRIES: usize = 1_000_000;
/// Runs per throughput figure.
const RUNS: usize = 5;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--memory-child") {
        let keys: usize = args[at + 1].parse().expect("key count");
        memory_child(keys);
        return;
    }

    let (store, dataset) = load_dataset(&schemas_dir(), &lab_results_mapping());

    let started = Instant::now();
    let records = std::env::var("SNAPFEED_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RECORDS);
    let s1 = Snapshot::initial(records, 20_240_601);
    let (s2, _) = s1.next(
        SnapshotDelta {
            updated: 1.0,
            added: 0.0,
            removed: 0.0,
        },
        20_240_602,
    );
    let unchanged = encode_snapshot(&s1, &dataset);
    let changed = encode_snapshot(&s2, &dataset);
    let bytes: usize = unchanged.iter().map(|(_, p)| p.len()).sum();
    println!(
        "setup: {records} records encoded twice in {:.1} s (mean payload {} B, mean key {} chars)",
        started.elapsed().as_secs_f64(),
        bytes / records,
        unchanged.iter().map(|(k, _)| k.len()).sum::<usize>() / records
    );
    println!();

    // `--only unchanged|changed|restore|memory` runs one part (e.g. under callgrind).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|at| args.get(at + 1))
        .map(String::as_str);
    let runs = |part: &str| only.is_none_or(|o| o == part);
    if runs("unchanged") {
        bench_unchanged(&dataset, &store, &unchanged);
    }
    if runs("changed") {
        bench_changed(&dataset, &store, &unchanged, &changed);
        bench_change_encoding(&dataset, &store, &changed);
    }
    if runs("restore") {
        bench_restore(&store);
    }
    if runs("memory") {
        bench_memory();
    }
}

/// Each row of `snapshot` (written in the canonical layout) as file-source sends it: its
/// canonical key and `Dataset::encode` payload.
fn encode_snapshot(snapshot: &Snapshot, dataset: &Dataset) -> Vec<(String, Vec<u8>)> {
    snapshot_records(snapshot, &WriteOptions::default(), dataset)
        .expect("render the snapshot")
        .records
        .into_iter()
        .map(|record| (record.key, record.payload))
        .collect()
}

fn location() -> MessageLocation {
    MessageLocation {
        topic: "lab-results.snapshots".into(),
        partition: 0,
        offset: 0,
    }
}

fn seeded(
    dataset: &Dataset,
    store: &SchemaStore,
    records: &[(String, Vec<u8>)],
    streams: &mut Streams,
) -> PartitionState {
    let stream = streams.id("default");
    let location = location();
    let mut state = PartitionState::default();
    for (key, payload) in records {
        let record = dataset.decode(payload, store, &location).expect("decode");
        state.observe(key, content_hash(dataset, &record), stream, "seed", 1);
    }
    state
}

/// Median, min and max of `per_second`, printed with `label`.
fn report(label: &str, mut per_second: Vec<f64>, target: Option<f64>) {
    per_second.sort_by(f64::total_cmp);
    let median = per_second[per_second.len() / 2];
    let verdict = match target {
        Some(target) if median >= target => format!("  (target ≥ {target:.0}: met)"),
        Some(target) => format!("  (target ≥ {target:.0}: NOT met)"),
        None => String::new(),
    };
    println!(
        "{label:<58} median {median:>12.0}/s  min {:>12.0}  max {:>12.0}  ({} runs){verdict}",
        per_second[0],
        per_second[per_second.len() - 1],
        per_second.len()
    );
}

fn bench_unchanged(dataset: &Dataset, store: &SchemaStore, records: &[(String, Vec<u8>)]) {
    let mut streams = Streams::default();
    let stream = streams.id("default");
    let mut hasher = ContentHasher::new(dataset);

    // What Engine::handle does for an unchanged record (`recognise_unchanged`), in a fresh
    // state each run: a key without a tracked-bytes hash (state restored from entries written
    // before `tracked_hash` existed, or last seen with an older writer schema) compares content
    // hashes read from the Avro binary; every later snapshot — and the first after a restore
    // of entries that carry `tracked_hash` — recognises the tracked bytes (fields skipped,
    // not read).
    let (mut first, mut steady) = (Vec::new(), Vec::new());
    let mut state = PartitionState::default();
    for run in 0..RUNS {
        state = seeded(dataset, store, records, &mut streams);
        for (pass, rates) in [(0, &mut first), (1, &mut steady)] {
            let snapshot = format!("unchanged-{run}-{pass}");
            let started = Instant::now();
            let mut same = 0usize;
            for (key, payload) in records {
                let seen = recognise_unchanged(
                    &mut hasher,
                    dataset,
                    &mut state,
                    key,
                    payload,
                    stream,
                    &snapshot,
                );
                if seen == Recognised::Unchanged {
                    same += 1;
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            assert_eq!(same, records.len(), "every record unchanged");
            rates.push(records.len() as f64 / seconds);
        }
    }
    report(
        "unchanged: recognised by tracked bytes + state lookup",
        steady,
        Some(2_000_000.0),
    );
    report(
        "unchanged, key without a tracked hash (content hash)",
        first,
        None,
    );

    // Where the time goes: each step alone.
    let hashed: Vec<u128> = records
        .iter()
        .map(|(_, p)| hasher.payload(dataset, p).expect("current schema"))
        .collect();
    let (mut tracked, mut hash, mut observe) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        let started = Instant::now();
        for (_, payload) in records {
            black_box(hasher.tracked(dataset, payload));
        }
        tracked.push(records.len() as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        for (_, payload) in records {
            black_box(hasher.payload(dataset, payload));
        }
        hash.push(records.len() as f64 / started.elapsed().as_secs_f64());
        let snapshot = format!("observe-only-{run}");
        let started = Instant::now();
        for ((key, _), hash) in records.iter().zip(&hashed) {
            black_box(state.observe_unchanged(key, *hash, 0, stream, &snapshot));
        }
        observe.push(records.len() as f64 / started.elapsed().as_secs_f64());
    }
    report("  of which tracked-bytes hash alone", tracked, None);
    report(
        "  of which content hash from the Avro binary alone",
        hash,
        None,
    );
    report(
        "  of which PartitionState::observe_unchanged alone",
        observe,
        None,
    );

    // The fallback, for payloads of an older writer schema: a full decode, then the hash.
    let location = location();
    let mut rates = Vec::new();
    for run in 0..RUNS {
        let snapshot = format!("unchanged-decoded-{run}");
        let started = Instant::now();
        for (key, payload) in records {
            let record = dataset.decode(payload, store, &location).expect("decode");
            let hash = hasher.record(&record);
            black_box(state.observe(key, hash, stream, &snapshot, 2));
        }
        rates.push(records.len() as f64 / started.elapsed().as_secs_f64());
    }
    report(
        "unchanged via full decode (older writer schemas)",
        rates,
        None,
    );
}

fn bench_changed(
    dataset: &Dataset,
    store: &SchemaStore,
    before: &[(String, Vec<u8>)],
    after: &[(String, Vec<u8>)],
) {
    let location = location();
    let state_schema = store.current(DetectorState::SCHEMA).expect("state schema");
    let changes = dataset.change_writer(store).expect("change writer");
    let mut rates = Vec::new();
    let mut value = Vec::with_capacity(1024);
    let mut hasher = ContentHasher::new(dataset);
    for run in 0..3 {
        let mut streams = Streams::default();
        let stream = streams.id("default");
        let mut state = seeded(dataset, store, before, &mut streams);
        let snapshot = format!("changed-{run}");
        let started = Instant::now();
        let mut updates = 0usize;
        for (key, payload) in after {
            // As Engine::handle: the fast path says "not unchanged", so the record is decoded
            // (validated) before it is acted on.
            let hash = hasher.payload(dataset, payload).expect("current schema");
            if state.observe_unchanged(key, hash, 0, stream, &snapshot) {
                continue;
            }
            let record = dataset.decode(payload, store, &location).expect("decode");
            let hash = hasher.record(&record);
            let Decision::Update { version, previous } =
                state.observe(key, hash, stream, &snapshot, 3)
            else {
                continue;
            };
            updates += 1;
            let event = ChangeEvent {
                op: ChangeOp::Update,
                key: key.clone(),
                version,
                content_hash: hash_hex(hash),
                previous_hash: Some(hash_hex(previous)),
                record_schema: dataset.schema_name().to_string(),
                source: Provenance {
                    file_name: "s2.csv".into(),
                    file_hash: "5c99dfde6720b8cf68f42dbf8dfad0358226d01dd2ec165fa0ff0d78efff8bf4"
                        .into(),
                    line: Some(2),
                    snapshot_id: snapshot.clone(),
                    stream: "default".into(),
                },
                detected_at: 3,
            };
            value.clear();
            // As the detector: the snapshot record's body is spliced into the event.
            let body = changes.current_body(payload).expect("current schema");
            changes
                .encode_into(&event, Some(ChangeRecord::Body(body)), &mut value)
                .expect("encode change");
            let entry = state
                .to_record(key, &streams, &snapshot)
                .expect("state entry");
            black_box(state_schema.encode(&entry).expect("encode state"));
        }
        let seconds = started.elapsed().as_secs_f64();
        assert!(
            updates * 10 >= after.len() * 9,
            "most records changed ({updates})"
        );
        rates.push(after.len() as f64 / seconds);
    }
    report(
        "changed: + encode change event and state entry",
        rates,
        None,
    );
}

/// The change event alone, both shapes: the record nested by splicing its Avro body (since
/// session 12) and the v1 shape that carried it as single-object bytes, for the cost of the
/// switch.
fn bench_change_encoding(dataset: &Dataset, store: &SchemaStore, records: &[(String, Vec<u8>)]) {
    /// A v1 change event, fields in schema order (as the v1 `ChangeEvent` type was).
    #[derive(serde::Serialize)]
    struct V1<'a> {
        op: ChangeOp,
        key: &'a str,
        version: i64,
        content_hash: &'a str,
        previous_hash: Option<&'a str>,
        #[serde(with = "serde_bytes")]
        record: Option<&'a [u8]>,
        record_schema: &'a str,
        source: &'a Provenance,
        detected_at: i64,
    }
    let changes = dataset.change_writer(store).expect("change writer");
    let v1 = store
        .all()
        .into_iter()
        .find(|s| s.name == ChangeEvent::SCHEMA && s.dataset.is_none())
        .expect("change_event v1 in history")
        .clone();
    let source = Provenance {
        file_name: "s2.csv".into(),
        file_hash: "5c99dfde6720b8cf68f42dbf8dfad0358226d01dd2ec165fa0ff0d78efff8bf4".into(),
        line: Some(2),
        snapshot_id: "changed".into(),
        stream: "default".into(),
    };
    let (hash, previous) = ("ab".repeat(16), "cd".repeat(16));
    let mut value = Vec::with_capacity(1024);
    for nested in [true, false] {
        let mut rates = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            for (key, payload) in records {
                value.clear();
                if nested {
                    let event = ChangeEvent {
                        op: ChangeOp::Update,
                        key: key.clone(),
                        version: 2,
                        content_hash: hash.clone(),
                        previous_hash: Some(previous.clone()),
                        record_schema: dataset.schema_name().to_string(),
                        source: source.clone(),
                        detected_at: 3,
                    };
                    let body = changes.current_body(payload).expect("current schema");
                    changes
                        .encode_into(&event, Some(ChangeRecord::Body(body)), &mut value)
                        .expect("encode");
                } else {
                    // As the v1 detector: owned fields, then the record bytes copied in.
                    let (key, hash, previous) = (key.clone(), hash.clone(), previous.clone());
                    let source = source.clone();
                    let record = payload.clone();
                    let event = V1 {
                        op: ChangeOp::Update,
                        key: &key,
                        version: 2,
                        content_hash: &hash,
                        previous_hash: Some(&previous),
                        record: Some(&record),
                        record_schema: dataset.schema_name(),
                        source: &source,
                        detected_at: 3,
                    };
                    v1.encode_into(&event, &mut value).expect("encode");
                }
                black_box(&value);
            }
            rates.push(records.len() as f64 / started.elapsed().as_secs_f64());
        }
        let label = if nested {
            "change event alone: record nested (spliced body)"
        } else {
            "change event alone: v1 shape (record as bytes)"
        };
        report(label, rates, None);
    }
}

/// A realistic canonical key of about 29 characters (CLIA | accession | LOINC code).
fn synthetic_key(i: usize, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    write!(out, "05D{:07}|21{:08}|94500-6", i % 10_000_000, i).expect("format");
}

fn bench_restore(store: &SchemaStore) {
    let schema = store.current(DetectorState::SCHEMA).expect("state schema");
    let mut key = String::new();
    let entries: Vec<(String, Vec<u8>)> = (0..RESTORE_ENTRIES)
        .map(|i| {
            synthetic_key(i, &mut key);
            let entry = DetectorState {
                content_hash: hash_hex(
                    (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
                ),
                version: 1 + (i % 3) as i64,
                stream: "default".into(),
                first_seen_at: 1_700_000_000_000 + i as i64,
                last_changed_at: 1_700_000_000_000 + i as i64,
                last_snapshot_id:
                    "5c99dfde6720b8cf68f42dbf8dfad0358226d01dd2ec165fa0ff0d78efff8bf4".into(),
                deleted: false,
                // As a detector writes it for a record of the current schema.
                tracked_hash: Some(hash_hex(!(i as u128))),
            };
            (key.clone(), schema.encode(&entry).expect("encode"))
        })
        .collect();
    let location = MessageLocation {
        topic: "lab-results.state".into(),
        partition: 0,
        offset: 0,
    };
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let mut streams = Streams::default();
        let mut state = PartitionState::default();
        let started = Instant::now();
        for (key, payload) in &entries {
            let entry: DetectorState = store
                .decode(payload, DetectorState::SCHEMA, &location)
                .expect("decode state");
            state.restore_entry(key, Some(&entry), &mut streams);
        }
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(state.len(), RESTORE_ENTRIES);
        rates.push(RESTORE_ENTRIES as f64 / seconds);
        drop(black_box(state));
    }
    report(
        &format!("restore: decode state entry + restore_entry ({RESTORE_ENTRIES})"),
        rates,
        Some(1_000_000.0),
    );
}

fn bench_memory() {
    println!();
    for keys in [1_000_000usize, 5_000_000] {
        let mut per_key = Vec::new();
        for _ in 0..3 {
            let output = Command::new(std::env::current_exe().expect("own path"))
                .args(["--memory-child", &keys.to_string()])
                .output()
                .expect("memory child");
            let text = String::from_utf8_lossy(&output.stdout);
            let bytes: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("bytes_per_key="))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "child said: {text}{}",
                        String::from_utf8_lossy(&output.stderr)
                    )
                });
            per_key.push(bytes);
        }
        per_key.sort_by(f64::total_cmp);
        let median = per_key[1];
        println!(
            "memory at {keys:>9} keys (~29-char keys): median {median:>6.1} B/key  min {:>6.1}  max {:>6.1}  (3 fresh processes, RSS growth)  (target ≤ 150: {})",
            per_key[0],
            per_key[2],
            if median <= 150.0 { "met" } else { "NOT met" }
        );
    }
}

/// Resident set size of this process, in bytes (`VmRSS` of /proc/self/status).
fn rss_bytes() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("VmRSS")
        * 1024.0
}

/// In a fresh process: RSS growth per key of a `PartitionState` holding `keys` keys.
fn memory_child(keys: usize) {
    let mut streams = Streams::default();
    let stream = streams.id("default");
    let mut key = String::with_capacity(64);
    let before = rss_bytes();
    let mut state = PartitionState::default();
    for i in 0..keys {
        synthetic_key(i, &mut key);
        let hash = (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        state.observe(&key, hash, stream, "snapshot-1", 1_700_000_000_000);
    }
    let after = rss_bytes();
    assert_eq!(state.len(), keys);
    println!("bytes_per_key={:.1}", (after - before) / keys as f64);
    black_box(state);
}

/// A clock of this thread's CPU time, with `Instant`'s shape.
#[derive(Clone, Copy)]
struct Instant(std::time::Duration);

impl Instant {
    fn now() -> Instant {
        Instant(snapfeed_harness::measure::thread_cpu_time())
    }

    fn elapsed(&self) -> std::time::Duration {
        Instant::now().0.saturating_sub(self.0)
    }
}

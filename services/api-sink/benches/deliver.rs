//! api-sink delivery throughput and CPU per change against the local stub case API, 4
//! partitions: N changes (CREATEs of distinct keys) are produced to `changes` first, then the
//! sink is started in-process and timed until the stub has all N: N distinct Idempotency-Keys
//! answered 200 (`json`, one request per change), or N CommCare cases (`commcare_case_v2`, bulk
//! upserts of up to 100 cases — DESIGN's first load; checked: one form per case).
//!
//! CPU: the process's CPU time (getrusage) over that window, minus what the stub API and — on
//! the in-process mock cluster — the broker spent. Both run in this process, on threads of
//! their own: the stub on a dedicated single-threaded runtime (thread `stub-api`), the mock
//! cluster on the threads that appeared when it was created; their CPU is read per thread
//! from `/proc/self/task/*/stat` (as is the bench's own polling thread). What remains is the
//! sink: consuming, decoding, building requests, HTTP client, receipts (produce), offset
//! commits — plus sink start-up (schemas, connecting, joining the group), which is counted in.
//! Targets (DESIGN § Performance targets): ≤ 100 µs of CPU per delivery; a first load in
//! CommCare batches ≥ 20k cases/s; throughput bounded by the API, not by the sink.
//!
//! Run: `cargo bench -p api-sink --bench deliver [-- --setup json|commcare]`
//! (`SNAPFEED_BENCH_CHANGES` / `SNAPFEED_BENCH_CASES` change N; `SNAPFEED_TEST_BROKER=nisshi`
//! for a broker process, whose CPU is then outside this process).
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failed run

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use api_sink::ApiSinkConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use snapfeed_harness::broker::{repo_root, BrokerKind, TestBroker, TestPipeline};
use snapfeed_harness::endpoint::free_addr;
use snapfeed_harness::measure::{bench_runtime, process_cpu, BenchArgs};
use snapfeed_harness::metrics::metric;
use snapfeed_harness::stub_api::StubApi;
use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::dataset::{ChangeRecord, Dataset, DatasetMapping, FieldKind, FieldValue};
use snapfeed_runtime::kafka::ProcessingGuarantee;
use snapfeed_runtime::records::{now_millis, ChangeEvent, ChangeOp, Provenance};

const PARTITIONS: i32 = 4;
const DEFAULT_CHANGES: usize = 20_000;
const DEFAULT_CASES: usize = 100_000;

/// What the sink sends.
#[derive(Clone, Copy)]
enum Profile {
    /// One JSON request per change (`json`).
    Json,
    /// CommCare Case API v2 bulk upserts of up to `batch_max_cases` cases (`commcare_case_v2`).
    CommCare { batch_max_cases: usize },
}

/// A sink configuration under test.
struct Setup {
    label: &'static str,
    profile: Profile,
    lanes_per_partition: usize,
    max_in_flight: usize,
}

impl Setup {
    /// Changes to deliver: `SNAPFEED_BENCH_CHANGES` (default 20k) one by one, or
    /// `SNAPFEED_BENCH_CASES` (default 100k, DESIGN's first load) in CommCare batches.
    fn changes(&self) -> usize {
        let (variable, default) = match self.profile {
            Profile::Json => ("SNAPFEED_BENCH_CHANGES", DEFAULT_CHANGES),
            Profile::CommCare { .. } => ("SNAPFEED_BENCH_CASES", DEFAULT_CASES),
        };
        match std::env::var(variable) {
            Err(_) => default,
            Ok(text) => match text.parse() {
                Ok(n) if n > 0 => n,
                _ => panic!("{variable}: a number of changes above 0, not {text:?}"),
            },
        }
    }
}

const SETUPS: &[Setup] = &[
    Setup {
        label: "json, 1 lane/partition (default), max_in_flight 16",
        profile: Profile::Json,
        lanes_per_partition: 1,
        max_in_flight: 16,
    },
    Setup {
        label: "json, 4 lanes/partition, max_in_flight 16",
        profile: Profile::Json,
        lanes_per_partition: 4,
        max_in_flight: 16,
    },
    Setup {
        label: "commcare_case_v2 first load, batches of 100, 1 lane/partition",
        profile: Profile::CommCare {
            batch_max_cases: 100,
        },
        lanes_per_partition: 1,
        max_in_flight: 16,
    },
];

/// `--setup json|commcare` runs only the setups of that profile (default: all).
fn wanted(only: Option<&str>, setup: &Setup) -> bool {
    matches!(
        (only, setup.profile),
        (None, _) | (Some("json"), Profile::Json) | (Some("commcare"), Profile::CommCare { .. })
    )
}

fn main() {
    let args = BenchArgs::parse(&["--setup"]);
    let only = args.text("--setup");
    assert!(
        matches!(only, None | Some("json" | "commcare")),
        "--setup: json or commcare, not {only:?}"
    );
    let runtime = bench_runtime();
    // The bench's own thread only polls the stub's request count; not the sink's work.
    let main_thread = gettid();
    runtime.block_on(async {
        let before_broker = thread_ids();
        let broker = TestBroker::from_env();
        // On the mock cluster the broker is these threads of ours; elsewhere another process.
        let broker_threads: BTreeSet<i32> = if broker.kind() == BrokerKind::Mock {
            thread_ids().difference(&before_broker).copied().collect()
        } else {
            BTreeSet::new()
        };
        let stub = StubOnItsThread::start();
        let schemas_dir = repo_root().join("schemas");
        let mapping = repo_root().join("deploy/config/lab_results.mapping.toml");
        let store = SchemaStore::load_dir(&schemas_dir).unwrap();
        let dataset = DatasetMapping::load(&mapping, &store).unwrap();
        println!(
            "api-sink deliver bench: {PARTITIONS} partitions, broker {}, {} CPUs",
            broker.kind(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        for setup in SETUPS.iter().filter(|s| wanted(only, s)) {
            let changes = setup.changes();
            let pipeline = broker.pipeline("bench", PARTITIONS).await;
            let payloads = encode_changes(&store, &dataset, changes);
            produce(&broker, &pipeline, &payloads).await;
            let base = stub.api.requests().len();
            let effects_before = stub.api.unique_effects();
            let cases_before = stub.api.case_count();
            let http = free_addr();
            let config = sink_config(&broker, &pipeline, &stub.api.url(), http, setup);
            println!("\n{}: {changes} changes", setup.label);

            let (cpu_before, threads_before) = (process_cpu(), thread_cpu());
            let started = Instant::now();
            let (trigger, shutdown) = snapfeed_runtime::shutdown::channel();
            let task = tokio::spawn(api_sink::run(config, shutdown));
            // A cheap poll (a length under a lock) until every change has arrived …
            loop {
                let arrived = match setup.profile {
                    Profile::Json => {
                        stub.api
                            .wait_for_requests(base + changes, Duration::from_secs(1))
                            .await
                    }
                    Profile::CommCare { .. } => stub.api.case_count() - cases_before >= changes,
                };
                if arrived {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(600),
                    "not all {changes} changes at the API after 600 s"
                );
                assert!(!task.is_finished(), "api-sink stopped");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let wall = started.elapsed();
            let (cpu_after, threads_after) = (process_cpu(), thread_cpu());
            // Start-up (schemas, connecting, joining the group, reading receipts back) ends
            // with the first request; the steady rate is from there to the last.
            let requests = stub.api.requests();
            let first_request = requests[base].at.duration_since(started);
            let steady = wall.saturating_sub(first_request);
            // … then the exact check: one effect per change, none missing.
            let effects = match setup.profile {
                Profile::Json => stub.api.unique_effects() - effects_before,
                // One form per case: a case submitted twice would be a duplicate. (The stub
                // keeps one `forms` entry per case, so its length counts cases.)
                Profile::CommCare { .. } => {
                    let forms = stub.api.case_forms();
                    assert!(
                        forms.values().all(|&n| n == 1),
                        "a case submitted more than once"
                    );
                    forms.len() - cases_before
                }
            };
            let metrics = snapfeed_harness::service_process::http_get(http, "/metrics")
                .map(|(_, body)| body)
                .unwrap_or_default();
            trigger.trigger();
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("api-sink stopped within 30 s")
                .unwrap()
                .unwrap();

            let total = cpu_after - cpu_before;
            let stub_cpu = threads_cpu(&threads_before, &threads_after, |tid, comm| {
                comm == "stub-api" && tid == stub.tid
            });
            let broker_cpu = threads_cpu(&threads_before, &threads_after, |tid, _| {
                broker_threads.contains(&tid)
            });
            let bench_cpu =
                threads_cpu(&threads_before, &threads_after, |tid, _| tid == main_thread);
            let sink_cpu = total.saturating_sub(stub_cpu + broker_cpu + bench_cpu);
            let per = |d: Duration| d.as_secs_f64() * 1e6 / changes as f64;
            println!(
                "  delivered        {effects} unique effects of {changes} in {:.2} s = {:.0} changes/s",
                wall.as_secs_f64(),
                changes as f64 / wall.as_secs_f64()
            );
            println!(
                "  steady           first request after {:.2} s (start-up), then {:.2} s = {:.0} changes/s",
                first_request.as_secs_f64(),
                steady.as_secs_f64(),
                changes as f64 / steady.as_secs_f64()
            );
            println!(
                "  process CPU      {:.2} s = {:.1} µs per change",
                total.as_secs_f64(),
                per(total)
            );
            println!(
                "  stub API CPU     {:.2} s = {:.1} µs per change (subtracted)",
                stub_cpu.as_secs_f64(),
                per(stub_cpu)
            );
            if broker.kind() == BrokerKind::Mock {
                println!(
                    "  mock broker CPU  {:.2} s = {:.1} µs per change (subtracted)",
                    broker_cpu.as_secs_f64(),
                    per(broker_cpu)
                );
            }
            println!(
                "  bench main CPU   {:.2} s = {:.1} µs per change (subtracted)",
                bench_cpu.as_secs_f64(),
                per(bench_cpu)
            );
            println!(
                "  api-sink CPU     {:.2} s = {:.1} µs per change (target ≤ 100)",
                sink_cpu.as_secs_f64(),
                per(sink_cpu)
            );
            let (sum, count) = (
                metric(&metrics, "snapfeed_api_sink_request_duration_seconds_sum").unwrap_or(0.0),
                metric(&metrics, "snapfeed_api_sink_request_duration_seconds_count").unwrap_or(0.0),
            );
            let lanes = PARTITIONS as f64 * setup.lanes_per_partition as f64;
            println!(
                "  per lane         {:.2} ms per change; {count} requests, {:.2} ms each (mean)",
                wall.as_secs_f64() * 1e3 * lanes / changes as f64,
                sum * 1e3 / count.max(1.0)
            );
            // Where the process's CPU went, by thread name (threads that ended meanwhile are
            // missing here but counted in the total).
            let mut by_name: BTreeMap<String, Duration> = BTreeMap::new();
            for (tid, (comm, cpu)) in &threads_after {
                let before = threads_before.get(tid).map_or(Duration::ZERO, |b| b.1);
                let name = if broker_threads.contains(tid) {
                    "(mock broker)".to_string()
                } else {
                    comm.clone()
                };
                *by_name.entry(name).or_default() += cpu.saturating_sub(before);
            }
            let shown: Vec<String> = by_name
                .iter()
                .filter(|(_, cpu)| !cpu.is_zero())
                .map(|(name, cpu)| format!("{name} {:.1}", per(*cpu)))
                .collect();
            println!("  µs per change by thread: {}", shown.join(", "));
            assert_eq!(effects, changes, "every change delivered exactly once");
        }
    });
}

/// The stub API on a single-threaded runtime of its own, on thread `stub-api`, so its CPU
/// time can be told apart from the sink's.
struct StubOnItsThread {
    api: StubApi,
    tid: i32,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl StubOnItsThread {
    fn start() -> StubOnItsThread {
        let (ready, started) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("stub-api".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let api = StubApi::start().await;
                    ready.send((api, gettid())).unwrap();
                    let _ = stopped.await;
                });
            })
            .unwrap();
        let (api, tid) = started.recv().unwrap();
        StubOnItsThread {
            api,
            tid,
            _stop: stop,
        }
    }
}

fn gettid() -> i32 {
    // SAFETY: gettid(2) has no arguments and no memory effects.
    #[allow(unsafe_code)]
    unsafe {
        libc::gettid()
    }
}

fn sink_config(
    broker: &TestBroker,
    pipeline: &TestPipeline,
    api_url: &str,
    http: SocketAddr,
    setup: &Setup,
) -> ApiSinkConfig {
    let guarantee = match broker.guarantee() {
        ProcessingGuarantee::ExactlyOnce => "exactly_once",
        ProcessingGuarantee::AtLeastOnce => "at_least_once",
    };
    let text = format!(
        "[pipeline]\nname = {:?}\nprocessing_guarantee = {guarantee:?}\nschemas_dir = {:?}\n\
         [kafka]\nbootstrap_servers = {:?}\nsession_timeout_ms = 6000\n\
         [http]\nlisten = {:?}\n[log]\nlevel = \"warn\"\n[shutdown]\ndrain_timeout_ms = 5000\n\
         [sink]\napi_url = {api_url:?}\ndataset_mapping = {:?}\nprofile = {:?}\n\
         lanes_per_partition = {}\nmax_in_flight = {}\n{}",
        pipeline.name,
        repo_root().join("schemas").display().to_string(),
        broker.bootstrap(),
        http.to_string(),
        repo_root()
            .join("deploy/config/lab_results.mapping.toml")
            .display()
            .to_string(),
        match setup.profile {
            Profile::Json => "json",
            Profile::CommCare { .. } => "commcare_case_v2",
        },
        setup.lanes_per_partition,
        setup.max_in_flight,
        match setup.profile {
            Profile::Json => "[sink.json]\npath = \"/changes\"\n".to_string(),
            Profile::CommCare { batch_max_cases } => format!(
                "[sink.commcare_case_v2]\ndomain = \"lab-demo\"\ncase_type = \"lab_result\"\n\
                 owner_id = \"owner-1\"\n\
                 case_name_fields = [\"patient_first_name\", \"patient_last_name\"]\n\
                 batch_max_cases = {batch_max_cases}\n\
                 [sink.commcare_case_v2.properties]\npatient_id = \"patient_id\"\n\
                 result = \"test_result\"\n"
            ),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api-sink.toml");
    std::fs::write(&path, text).unwrap();
    snapfeed_runtime::config::load(Some(&path), Vec::new()).unwrap()
}

/// `(key, encoded change event)` for `count` distinct keys, version 1.
fn encode_changes(store: &SchemaStore, dataset: &Dataset, count: usize) -> Vec<(String, Vec<u8>)> {
    let writer = dataset.change_writer(store).unwrap();
    (0..count)
        .map(|n| {
            let key = format!("LAB-{n:07}");
            let values = dataset
                .fields()
                .iter()
                .map(|spec| match spec.kind() {
                    FieldKind::String => FieldValue::String(format!("{} {n}", spec.name())),
                    FieldKind::Enum => FieldValue::Enum(spec.symbols()[0].clone()),
                    FieldKind::Date => FieldValue::Date(19_000),
                    FieldKind::TimestampMillis => FieldValue::TimestampMillis(1_700_000_000_000),
                    FieldKind::Int => FieldValue::Int(1),
                    FieldKind::Long => FieldValue::Long(1),
                    FieldKind::Double => FieldValue::Double(1.5),
                    FieldKind::Boolean => FieldValue::Boolean(true),
                })
                .collect();
            let record = dataset.record(values).unwrap();
            let event = ChangeEvent {
                op: ChangeOp::Create,
                key: key.clone(),
                version: 1,
                content_hash: format!("{n:032x}"),
                previous_hash: None,
                record_schema: dataset.schema_name().to_string(),
                source: Provenance {
                    file_name: "bench.csv".into(),
                    file_hash: "0".repeat(64),
                    line: Some(n as i64 + 2),
                    snapshot_id: "bench".into(),
                    stream: "bench".into(),
                },
                detected_at: now_millis(),
            };
            let encoded = writer.encode(&event, Some(ChangeRecord::Record(&record)));
            (key, encoded.unwrap())
        })
        .collect()
}

async fn produce(broker: &TestBroker, pipeline: &TestPipeline, payloads: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = broker
        .kafka_config()
        .producer_config("bench", ProcessingGuarantee::AtLeastOnce, None)
        .create()
        .unwrap();
    let mut pending = Vec::with_capacity(payloads.len());
    for (key, payload) in payloads {
        let future = loop {
            let record = FutureRecord::to(&pipeline.topics.changes)
                .key(key.as_bytes())
                .payload(payload);
            match producer.send_result(record) {
                Ok(future) => break future,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        pending.push(future);
    }
    for future in pending {
        future.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

fn thread_ids() -> BTreeSet<i32> {
    thread_cpu().into_keys().collect()
}

/// Per thread of this process: (name, user + system CPU time).
fn thread_cpu() -> BTreeMap<i32, (String, Duration)> {
    // SAFETY: sysconf has no memory effects.
    #[allow(unsafe_code)]
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut threads = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // exited meanwhile
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        // After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks_used: u64 =
            fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        threads.insert(
            tid,
            (comm, Duration::from_secs_f64(ticks_used as f64 / ticks)),
        );
    }
    threads
}

/// CPU spent between two snapshots by the threads `pick` selects.
fn threads_cpu(
    before: &BTreeMap<i32, (String, Duration)>,
    after: &BTreeMap<i32, (String, Duration)>,
    pick: impl Fn(i32, &str) -> bool,
) -> Duration {
    after
        .iter()
        .filter(|(tid, (comm, _))| pick(**tid, comm))
        .map(|(tid, (_, cpu))| cpu.saturating_sub(before.get(tid).map_or(Duration::ZERO, |b| b.1)))
        .sum()
}

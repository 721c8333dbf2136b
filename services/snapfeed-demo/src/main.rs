//! `snapfeed-demo` — the whole pipeline for real on an embedded broker, in one command.
//!
//! Starts librdkafka's in-process broker and creates the topics (as `init-topics` would), the
//! stub case API (or uses `--api-url`), and the three services through their library `run`
//! functions — in-process tasks that talk to each other only through Kafka, exactly as the
//! separate binaries do. Then it generates three snapshots (the second with 1% updated and
//! 0.5% new rows; the third a byte-identical re-delivery of the second, plus a file with bad
//! rows), drops them into the inbox one after the other, waits until every expected change is
//! delivered, and prints a reconciliation table read from the services' own metrics. It exits
//! non-zero when the numbers do not add up (rows → changes → deliveries).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use snapfeed_harness::broker::TestBroker;
use snapfeed_harness::generator::{ChangeSet, Dirt, Snapshot, SnapshotDelta, WriteOptions};
use snapfeed_harness::service_process::http_get;
use snapfeed_harness::stub_api::StubApi;
use snapfeed_runtime::shutdown::{self, ShutdownTrigger};
use snapfeed_runtime::topics::{TopicNameOverrides, TopicNames, TopicsConfig};

/// Run snapfeed end to end on an embedded broker and reconcile what happened.
#[derive(Debug, Parser)]
#[command(name = "snapfeed-demo", version)]
struct Args {
    /// Rows in the first snapshot.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Partitions of the pipeline's topics.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Deliver to this API instead of the built-in stub (json profile, POST to <url>/changes).
    #[arg(long)]
    api_url: Option<String>,
    /// Keep everything running after the reconciliation (Ctrl-C to stop).
    #[arg(long)]
    keep_running: bool,
    /// Seconds to wait for each stage before giving up.
    #[arg(long, default_value_t = 300)]
    timeout_seconds: u64,
}

/// Where the repository's `schemas/` and `deploy/config/` are (the demo runs from a checkout).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// One scrape of a service's `/metrics`.
struct Scrape(String);

impl Scrape {
    fn of(addr: SocketAddr) -> Scrape {
        Scrape(
            http_get(addr, "/metrics")
                .map(|(_, body)| body)
                .unwrap_or_default(),
        )
    }

    /// The value of `name` (optionally with one `label="value"`), 0 if absent.
    fn value(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        let wanted = label.map(|(k, v)| format!("{k}=\"{v}\""));
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
                (metric == name && wanted.as_deref().is_none_or(|w| labels.contains(w)))
                    .then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }
}

struct Endpoints {
    source: SocketAddr,
    detector: SocketAddr,
    sink: SocketAddr,
}

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    files_ingested: f64,
    files_duplicate: f64,
    rows_sent: f64,
    rows_rejected: f64,
    created: f64,
    updated: f64,
    deleted: f64,
    unchanged: f64,
    delivered: f64,
    dead_letters: f64,
    retries: f64,
}

impl Totals {
    fn read(endpoints: &Endpoints) -> Totals {
        let (source, detector, sink) = (
            Scrape::of(endpoints.source),
            Scrape::of(endpoints.detector),
            Scrape::of(endpoints.sink),
        );
        let records = |outcome| {
            detector.value(
                "snapfeed_change_detector_records_total",
                Some(("outcome", outcome)),
            )
        };
        Totals {
            files_ingested: source.value(
                "snapfeed_file_source_files_total",
                Some(("outcome", "ingested")),
            ),
            files_duplicate: source.value(
                "snapfeed_file_source_files_total",
                Some(("outcome", "duplicate")),
            ),
            rows_sent: source.value("snapfeed_file_source_rows_total", Some(("outcome", "sent"))),
            rows_rejected: source.value(
                "snapfeed_file_source_rows_total",
                Some(("outcome", "rejected")),
            ),
            created: records("created"),
            updated: records("updated"),
            deleted: records("deleted"),
            unchanged: records("unchanged"),
            delivered: sink.value("snapfeed_api_sink_deliveries_total", None),
            dead_letters: sink.value("snapfeed_api_sink_dead_letters_total", None),
            retries: sink.value("snapfeed_api_sink_retries_total", None),
        }
    }

    fn minus(self, earlier: Totals) -> Totals {
        Totals {
            files_ingested: self.files_ingested - earlier.files_ingested,
            files_duplicate: self.files_duplicate - earlier.files_duplicate,
            rows_sent: self.rows_sent - earlier.rows_sent,
            rows_rejected: self.rows_rejected - earlier.rows_rejected,
            created: self.created - earlier.created,
            updated: self.updated - earlier.updated,
            deleted: self.deleted - earlier.deleted,
            unchanged: self.unchanged - earlier.unchanged,
            delivered: self.delivered - earlier.delivered,
            dead_letters: self.dead_letters - earlier.dead_letters,
            retries: self.retries - earlier.retries,
        }
    }
}

/// One file dropped into the inbox, and what it should cause.
struct Drop {
    label: &'static str,
    files: Vec<PathBuf>,
    expect_rows_sent: f64,
    expect_rejected: f64,
    expect_duplicates: f64,
    expect_created: f64,
    expect_updated: f64,
}

/// A row of the reconciliation table.
struct Row {
    label: &'static str,
    totals: Totals,
    seconds_source: f64,
    seconds_changes: f64,
    seconds_delivered: f64,
    ok: bool,
}

/// The shared config sections. `fetch.wait.max.ms` is shortened for the in-process mock
/// broker, which answers an empty fetch only after the full wait (500 ms by default) even when
/// records become readable meanwhile; Apache Kafka answers as soon as data arrives, so real
/// deployments keep librdkafka's default.
fn common_toml(name: &str, bootstrap: &str, listen: SocketAddr) -> String {
    format!(
        "[pipeline]\nname = {name:?}\nprocessing_guarantee = \"exactly_once\"\nschemas_dir = {schemas:?}\n\
         [kafka]\nbootstrap_servers = {bootstrap:?}\nrequest_timeout_ms = 10000\n\
         [kafka.librdkafka_options]\n\"fetch.wait.max.ms\" = \"10\"\n\
         [http]\nlisten = \"{listen}\"\n[log]\nlevel = \"warn\"\n[shutdown]\ndrain_timeout_ms = 5000\n",
        schemas = repo_root().join("schemas").display().to_string(),
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    snapfeed_runtime::telemetry::init(&snapfeed_runtime::telemetry::LogConfig {
        level: "warn".into(),
        ..Default::default()
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(demo(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

type DemoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn demo(args: Args) -> DemoResult<bool> {
    let started = Instant::now();
    let stage_timeout = Duration::from_secs(args.timeout_seconds);
    let work = tempfile::Builder::new()
        .prefix("snapfeed-demo-")
        .tempdir()?;
    let inbox = work.path().join("inbox");
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&inbox)?;
    std::fs::create_dir_all(&staging)?;

    println!(
        "snapfeed demo: {} rows, {} partitions",
        args.rows, args.partitions
    );
    let broker = TestBroker::mock();
    let pipeline = "lab-results";
    let names = TopicNames::resolve(pipeline, &TopicNameOverrides::default());
    broker
        .create_topics(&names.specs(&TopicsConfig {
            partitions: args.partitions,
            replication_factor: 1,
            ..TopicsConfig::default()
        }))
        .await;
    println!(
        "  broker   in-process at {} — topics created",
        broker.bootstrap()
    );

    let stub = match &args.api_url {
        Some(_) => None,
        None => Some(StubApi::start().await),
    };
    let api_url = args
        .api_url
        .clone()
        .or_else(|| stub.as_ref().map(StubApi::url))
        .unwrap_or_default();
    println!(
        "  case API {api_url}{}",
        if stub.is_some() { " (stub)" } else { "" }
    );

    let endpoints = Endpoints {
        source: free_addr()?,
        detector: free_addr()?,
        sink: free_addr()?,
    };
    let mapping = repo_root()
        .join("deploy/config/lab_results.mapping.toml")
        .display()
        .to_string();
    let source_toml = format!(
        "{}[source]\ninbox = {:?}\ndataset_mapping = {mapping:?}\nmarker_suffix = \".ok\"\npoll_interval_ms = 100\n",
        common_toml(pipeline, broker.bootstrap(), endpoints.source),
        inbox.display().to_string()
    );
    let detector_toml = format!(
        "{}[detector]\ndataset_mapping = {mapping:?}\n",
        common_toml(pipeline, broker.bootstrap(), endpoints.detector)
    );
    let sink_toml = format!(
        "{}[sink]\napi_url = {api_url:?}\ndataset_mapping = {mapping:?}\nprofile = \"json\"\nlanes_per_partition = 4\nmax_in_flight = 32\n[sink.json]\npath = \"/changes\"\n",
        common_toml(pipeline, broker.bootstrap(), endpoints.sink)
    );
    let (trigger, shutdown) = shutdown::channel();
    let tasks = vec![
        tokio::spawn({
            let config = toml::from_str(&source_toml)?;
            let shutdown = shutdown.clone();
            async move {
                file_source::run(config, shutdown)
                    .await
                    .map_err(|e| e.to_string())
            }
        }),
        tokio::spawn({
            let config = toml::from_str(&detector_toml)?;
            let shutdown = shutdown.clone();
            async move {
                change_detector::run(config, shutdown)
                    .await
                    .map_err(|e| e.to_string())
            }
        }),
        tokio::spawn({
            let config = toml::from_str(&sink_toml)?;
            let shutdown = shutdown.clone();
            async move {
                api_sink::run(config, shutdown)
                    .await
                    .map_err(|e| e.to_string())
            }
        }),
    ];
    for (name, addr) in [
        ("file-source", endpoints.source),
        ("change-detector", endpoints.detector),
        ("api-sink", endpoints.sink),
    ] {
        wait_until(stage_timeout, || {
            matches!(http_get(addr, "/readyz"), Some((200, _)))
        })
        .await
        .map_err(|_| format!("{name} not ready"))?;
        println!("  {name:<15} ready — http://{addr}/metrics");
    }

    // The snapshots, and exactly what each should cause.
    let generate = Instant::now();
    let first = Snapshot::initial(args.rows, 1);
    let (second, second_changes) = first.next(
        SnapshotDelta {
            updated: 0.01,
            added: 0.005,
            removed: 0.0,
        },
        2,
    );
    let (third, third_changes) = second.next(
        SnapshotDelta {
            updated: 0.002,
            added: 0.0,
            removed: 0.0,
        },
        3,
    );
    let dirt = Dirt {
        bad_dates: (args.rows / 1000).max(1),
        missing_required: (args.rows / 2000).max(1),
        duplicate_keys: (args.rows / 2000).max(1),
        ..Dirt::default()
    };
    let file1 = first.write(&staging.join("elr-001.csv"), &WriteOptions::default())?;
    let file2 = second.write(
        &staging.join("elr-002.csv.gz"),
        &WriteOptions {
            compression: snapfeed_harness::generator::Compression::Gzip,
            ..WriteOptions::default()
        },
    )?;
    std::fs::copy(&file2.path, staging.join("elr-002-redelivered.csv.gz"))?;
    let file3 = third.write(
        &staging.join("elr-003-with-bad-rows.csv"),
        &WriteOptions {
            dirt,
            ..WriteOptions::default()
        },
    )?;
    let bad_rows = file3.dirty.iter().filter(|d| d.kind.is_rejected()).count() as f64;
    // Updated rows that are also dirty are rejected, so they cannot change.
    let rejected_keys: std::collections::BTreeSet<_> = file3
        .dirty
        .iter()
        .filter(|d| {
            d.kind.is_rejected() && d.kind != snapfeed_harness::generator::DirtKind::DuplicateKey
        })
        .map(|d| d.key.clone())
        .collect();
    let third_updates = third_changes
        .updated
        .iter()
        .filter(|k| !rejected_keys.contains(*k))
        .count() as f64;
    println!(
        "  generated 3 snapshots in {:.1}s",
        generate.elapsed().as_secs_f64()
    );

    let count = |c: &ChangeSet| (c.created.len() as f64, c.updated.len() as f64);
    let (c2, u2) = count(&second_changes);
    let drops = vec![
        Drop {
            label: "1 initial",
            files: vec![file1.path.clone()],
            expect_rows_sent: file1.data_rows as f64,
            expect_rejected: 0.0,
            expect_duplicates: 0.0,
            expect_created: args.rows as f64,
            expect_updated: 0.0,
        },
        Drop {
            label: "2 changed",
            files: vec![file2.path.clone()],
            expect_rows_sent: file2.data_rows as f64,
            expect_rejected: 0.0,
            expect_duplicates: 0.0,
            expect_created: c2,
            expect_updated: u2,
        },
        Drop {
            label: "3 re-sent + bad rows",
            files: vec![
                staging.join("elr-002-redelivered.csv.gz"),
                file3.path.clone(),
            ],
            expect_rows_sent: file3.data_rows as f64 - bad_rows,
            expect_rejected: bad_rows,
            expect_duplicates: 1.0,
            expect_created: 0.0,
            expect_updated: third_updates,
        },
    ];

    let mut rows = Vec::new();
    for drop in drops {
        let before = Totals::read(&endpoints);
        let dropped = Instant::now();
        for file in &drop.files {
            let name = file.file_name().ok_or("file name")?;
            std::fs::rename(file, inbox.join(name))?;
            std::fs::write(inbox.join(format!("{}.ok", name.to_string_lossy())), b"")?;
        }
        print!("  snapshot {:<22}", drop.label);
        let files = drop.files.len() as f64;
        let source_done = wait_for(stage_timeout, &endpoints, before, |d| {
            d.files_ingested + d.files_duplicate >= files
        })
        .await?;
        let expected_changes = drop.expect_created + drop.expect_updated;
        let changes_done = wait_for(stage_timeout, &endpoints, before, |d| {
            d.created + d.updated >= expected_changes
                && d.created + d.updated + d.unchanged >= drop.expect_rows_sent
        })
        .await?;
        let delivered_done = wait_for(stage_timeout, &endpoints, before, |d| {
            d.delivered + d.dead_letters >= expected_changes
        })
        .await?;
        // A moment for anything unexpected (extra changes) to show up before counting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let totals = Totals::read(&endpoints).minus(before);
        let ok = totals.rows_sent == drop.expect_rows_sent
            && totals.rows_rejected == drop.expect_rejected
            && totals.files_duplicate == drop.expect_duplicates
            && totals.created == drop.expect_created
            && totals.updated == drop.expect_updated
            && totals.deleted == 0.0
            && totals.delivered == totals.created + totals.updated
            && totals.dead_letters == 0.0;
        let secs = |at: Instant| at.duration_since(dropped).as_secs_f64();
        println!(
            " {} in {:.1}s",
            if ok { "reconciled" } else { "MISMATCH" },
            secs(delivered_done)
        );
        if !ok {
            println!(
                "    expected: sent {} rejected {} duplicates {} created {} updated {}",
                drop.expect_rows_sent,
                drop.expect_rejected,
                drop.expect_duplicates,
                drop.expect_created,
                drop.expect_updated
            );
        }
        rows.push(Row {
            label: drop.label,
            totals,
            seconds_source: secs(source_done),
            seconds_changes: secs(changes_done),
            seconds_delivered: secs(delivered_done),
            ok,
        });
    }

    let unique = stub.as_ref().map(StubApi::unique_effects);
    print_table(&rows, unique);
    let mut all_ok = rows.iter().all(|r| r.ok);
    if let Some(unique) = unique {
        let delivered: f64 = rows.iter().map(|r| r.totals.delivered).sum();
        if unique as f64 != delivered {
            println!(
                "MISMATCH: the stub API saw {unique} unique effects for {delivered} deliveries"
            );
            all_ok = false;
        }
    }
    println!(
        "\n{} — {:.1}s in all",
        if all_ok {
            "every change delivered once: rows → changes → deliveries add up"
        } else {
            "NUMBERS DO NOT ADD UP"
        },
        started.elapsed().as_secs_f64()
    );

    if args.keep_running {
        println!("\nstill running (Ctrl-C to stop):");
        println!("  file-source      http://{}/metrics", endpoints.source);
        println!("  change-detector  http://{}/metrics", endpoints.detector);
        println!("  api-sink         http://{}/metrics", endpoints.sink);
        println!("  inbox            {}", inbox.display());
        let _ = tokio::signal::ctrl_c().await;
    }
    stop(trigger, tasks).await;
    drop(stub);
    drop(broker);
    Ok(all_ok)
}

async fn stop(trigger: ShutdownTrigger, tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>) {
    trigger.trigger();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(15), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => eprintln!("a service failed: {error}"),
            _ => eprintln!("a service did not stop in time"),
        }
    }
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn wait_for(
    limit: Duration,
    endpoints: &Endpoints,
    before: Totals,
    done: impl Fn(&Totals) -> bool,
) -> DemoResult<Instant> {
    wait_until(limit, || done(&Totals::read(endpoints).minus(before)))
        .await
        .map_err(|_| {
            format!(
                "a stage did not finish within {}s; totals so far: {:?}",
                limit.as_secs(),
                Totals::read(endpoints).minus(before)
            )
        })?;
    Ok(Instant::now())
}

fn print_table(rows: &[Row], unique: Option<usize>) {
    println!(
        "\n{:<22} {:>9} {:>9} {:>5} {:>8} {:>8} {:>9} {:>9} {:>6} {:>7} {:>8} {:>8} {:>8}",
        "snapshot",
        "rows sent",
        "rejected",
        "dup",
        "created",
        "updated",
        "unchanged",
        "delivered",
        "dlq",
        "retries",
        "src s",
        "chg s",
        "dlv s"
    );
    for r in rows {
        let t = r.totals;
        println!(
            "{:<22} {:>9} {:>9} {:>5} {:>8} {:>8} {:>9} {:>9} {:>6} {:>7} {:>8.2} {:>8.2} {:>8.2}",
            r.label,
            t.rows_sent,
            t.rows_rejected,
            t.files_duplicate,
            t.created,
            t.updated,
            t.unchanged,
            t.delivered,
            t.dead_letters,
            t.retries,
            r.seconds_source,
            r.seconds_changes,
            r.seconds_delivered
        );
    }
    if let Some(unique) = unique {
        println!("stub API: {unique} unique effects (by Idempotency-Key)");
    }
}

//! `snapfeed-demo` — the whole pipeline for real on an embedded broker, in one command.
//!
//! Starts librdkafka's in-process broker and creates the topics (as `init-topics` would), the
//! stub case API (or uses `--api-url`), and the three services through their library `run`
//! functions — in-process tasks that talk to each other only through Kafka, exactly as the
//! separate binaries do. Then it generates three snapshots (the second with 1% updated and
//! 0.5% new rows; the third a byte-identical re-delivery of the second, plus a file with bad
//! rows), drops them into the inbox one after the other, waits until every expected change is
//! delivered, and prints a reconciliation table read from the services' own metrics, then the
//! `trace` of one updated record. It exits non-zero when the numbers do not add up (rows →
//! changes → deliveries) or the trace misses a version or a delivery.
//!
//! The parts: `pipeline` starts the broker, the API and the three services; `feed` writes the
//! snapshots and says what each should cause; `reconcile` drops each into the inbox, waits on
//! the metrics and prints the table.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

mod feed;
mod pipeline;
mod reconcile;

use pipeline::Pipeline;

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
    let pipeline = Pipeline::start(&args, &inbox, stage_timeout).await?;
    let drops = feed::generate(args.rows, &staging)?;

    let mut rows = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for drop in &drops {
        rows.push(
            reconcile::drop_and_wait(drop, &inbox, &pipeline, &mut seen, stage_timeout).await?,
        );
    }
    let mut all_ok = reconcile::summarise(&rows, pipeline.unique_effects(), started);
    all_ok &= reconcile::show_a_trace(&pipeline)?;

    if args.keep_running {
        println!("\nstill running (Ctrl-C to stop):");
        println!(
            "  file-source      http://{}/metrics",
            pipeline.endpoints.source
        );
        println!(
            "  change-detector  http://{}/metrics",
            pipeline.endpoints.detector
        );
        println!(
            "  api-sink         http://{}/metrics",
            pipeline.endpoints.sink
        );
        println!("  inbox            {}", inbox.display());
        let _ = tokio::signal::ctrl_c().await;
    }
    pipeline.stop().await;
    Ok(all_ok)
}

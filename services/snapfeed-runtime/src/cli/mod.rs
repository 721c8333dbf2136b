//! The binary edge shared by the three services: `--config`, the common subcommands (`run`,
//! `check-config`, `init-topics`, and the operator's `reconcile`, `trace`, `tail`,
//! `dead-letters list` in `cli/operator.rs`), the tokio runtime, logging, signals and exit codes.
//!
//! Exit codes: 0 success (including a drained shutdown), 1 the stage failed, 2 bad config or
//! usage, 130 a second signal interrupted draining.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, ServiceConfig};
use crate::service::{self, HasCommonSections};
use crate::shutdown::{self, Shutdown};
use crate::telemetry;
use crate::topics;

mod operator;

pub use operator::{emit, LetterFilterArgs};

/// Options every binary takes.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// TOML config file; `SNAPFEED_…` environment variables override it (and may replace it).
    #[arg(long, short, env = "SNAPFEED_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

/// The command line of a service binary: `--config` and an optional subcommand `C` (the
/// service's own enum, which flattens [`CommonCommand`]; none given means `run`).
#[derive(Debug, clap::Parser)]
#[command(version)]
pub struct ServiceCli<C: clap::Subcommand> {
    /// Options every binary takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Option<C>,
}

impl<C: clap::Subcommand> ServiceCli<C> {
    /// Parses the process's arguments for the binary `name`, described by `about`; prints help
    /// or the error and exits (code 2) on bad usage.
    pub fn parse_as(name: &'static str, about: &'static str) -> ServiceCli<C> {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command().name(name).about(about).get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }
}

/// `replay --to …`: the subcommand of every consuming stage.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// `earliest`, `latest` (skip everything not yet processed), an RFC 3339 time, or
    /// `partition:offset,…`.
    #[arg(long)]
    pub to: String,
}

/// Subcommands every binary has.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CommonCommand {
    /// Run the service until SIGTERM/SIGINT (the default).
    Run,
    /// Validate the config and print the effective config, secrets redacted; with --connect,
    /// check everything the service needs (secrets, broker, topics, API), one line per check.
    CheckConfig(CheckConfigArgs),
    /// Create missing topics and verify existing ones (partitions, co-partitioning).
    InitTopics,
    /// Where every row of a snapshot went — rows read, rejected (by reason), sent; created,
    /// updated, deleted, unchanged; delivered, dead-lettered, pending — read from the
    /// pipeline's topics. Exit 0 only when every change of it is delivered.
    Reconcile(ReconcileArgs),
    /// One record's life across the topics, oldest first: its rows, the detector's verdicts
    /// and versions, deliveries and dead letters. Values only with --show-values.
    Trace(operator::TraceArgs),
    /// Decode a pipeline topic to JSON lines (health data redacted unless --show-values).
    Tail(operator::TailArgs),
    /// The dead letters and where each stands (open, redriven, delivered, superseded, …).
    #[command(subcommand)]
    DeadLetters(operator::DeadLettersCommand),
    /// Write every schema the topics' messages can name (the change event and dead letter
    /// composed with each dataset schema version included) as standalone .avsc files named
    /// <full name>.<fingerprint hex>.avsc, for tools that read the topics without a registry.
    Schemas(operator::SchemasArgs),
}

/// `check-config [--connect]`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckConfigArgs {
    /// Also load the mapping, schemas and templates, resolve every secret reference (never
    /// printed), reach the broker (topics, partitioning, compaction, retention) and the API;
    /// exit 1 naming each failed check.
    #[arg(long)]
    pub connect: bool,
}

/// `reconcile --file NAME | --snapshot ID`.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ReconcileArgs {
    /// Every snapshot ingested from a file of this name.
    #[arg(long)]
    pub file: Option<String>,
    /// One snapshot by id.
    #[arg(long)]
    pub snapshot: Option<String>,
}

/// Loads the config or reports why not (exit code 2).
pub fn load_config<C: ServiceConfig>(path: Option<&Path>) -> Result<C, ExitCode> {
    config::load_from_process::<C>(path).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(2)
    })
}

/// A multi-threaded tokio runtime for a service.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("snapfeed-worker")
        .build()
        .map_err(|error| {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::from(1)
        })
}

/// Runs a common subcommand for `service`; `run` is the stage's `run(config, shutdown)`.
pub fn execute_common<C, F, Fut, E>(
    service: &'static str,
    config_path: Option<&Path>,
    command: CommonCommand,
    run: F,
) -> ExitCode
where
    C: ServiceConfig + HasCommonSections + crate::preflight::ServiceChecks,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let config: C = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match command {
        CommonCommand::CheckConfig(CheckConfigArgs { connect: true }) => {
            telemetry::init(config.common().log);
            let runtime = match runtime() {
                Ok(runtime) => runtime,
                Err(code) => return code,
            };
            let preflight = runtime.block_on(crate::preflight::preflight(service, &config));
            println!("# {service} preflight\n{preflight}");
            if preflight.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        CommonCommand::CheckConfig(CheckConfigArgs { connect: false }) => {
            match config::redacted_toml(&config) {
                Ok(text) => {
                    println!("# effective {service} configuration (secrets redacted)\n{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(2)
                }
            }
        }
        CommonCommand::InitTopics => {
            telemetry::init(config.common().log);
            let runtime = match runtime() {
                Ok(runtime) => runtime,
                Err(code) => return code,
            };
            runtime.block_on(async {
                match init_topics(service, config.common()).await {
                    Ok(report) => {
                        println!("{report}\n\n{NEXT_AFTER_INIT_TOPICS}");
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("error: {error}");
                        ExitCode::from(1)
                    }
                }
            })
        }
        // Logs (to stderr: a skipped undecodable record, a broker retry) for the operator
        // commands too; their output goes to stdout.
        CommonCommand::Reconcile(args) => {
            telemetry::init(config.common().log);
            operator::reconcile(config.common(), &args)
        }
        CommonCommand::Trace(args) => {
            telemetry::init(config.common().log);
            operator::trace(config.common(), &args)
        }
        CommonCommand::Tail(args) => {
            telemetry::init(config.common().log);
            operator::tail(config.common(), &args)
        }
        CommonCommand::DeadLetters(command) => {
            telemetry::init(config.common().log);
            operator::dead_letters(config.common(), &command)
        }
        CommonCommand::Schemas(args) => {
            telemetry::init(config.common().log);
            operator::schemas_export(config.common(), &args)
        }
        CommonCommand::Run => run_with(service, config, run),
    }
}

/// Runs a service future with logging, a multi-threaded runtime and signal handling: the first
/// SIGTERM/SIGINT fires `shutdown`, a second exits at once. 0 on `Ok`, 1 on `Err`.
pub fn run_with<C, F, Fut, E>(service: &'static str, config: C, run: F) -> ExitCode
where
    C: HasCommonSections,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    telemetry::init(config.common().log);
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let code = runtime.block_on(async move {
        let (trigger, shutdown) = shutdown::channel();
        if let Err(error) = shutdown::trigger_on_signals(trigger) {
            eprintln!("error: cannot install signal handlers: {error}");
            return ExitCode::from(1);
        }
        match run(config, shutdown).await {
            Ok(()) => {
                tracing::info!(message = "Stopped.", service);
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(message = "Service failed.", service, %error);
                eprintln!("error: {error}");
                ExitCode::from(1)
            }
        }
    });
    // Anything still running (a stuck blocking call) must not hold the exit hostage.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// `replay --to …`: resets `service`'s consumer group on the topic `topic_of` picks.
pub fn execute_replay<C>(
    service: &'static str,
    config_path: Option<&Path>,
    target: &str,
    topic_of: impl Fn(&topics::TopicNames) -> String,
) -> ExitCode
where
    C: ServiceConfig + HasCommonSections,
{
    execute_replay_then::<C>(service, config_path, target, topic_of, |_, _| Ok(()))
}

/// [`execute_replay`], then `after` with what the replay did (a stage's own follow-up, e.g.
/// api-sink's replay markers); its error fails the command (exit 1).
pub fn execute_replay_then<C>(
    service: &'static str,
    config_path: Option<&Path>,
    target: &str,
    topic_of: impl Fn(&topics::TopicNames) -> String,
    after: impl FnOnce(&C, &crate::replay::ReplayReport) -> Result<(), String>,
) -> ExitCode
where
    C: ServiceConfig + HasCommonSections,
{
    let config: C = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let target: crate::replay::ReplayTarget = match target.parse() {
        Ok(target) => target,
        Err(problem) => {
            eprintln!("error: --to {problem}");
            return ExitCode::from(2);
        }
    };
    let common = config.common();
    let group = common.pipeline.group_id(service);
    let topic = topic_of(&common.topic_names());
    match crate::replay::replay(common.kafka, service, &group, &topic, &target) {
        Ok(report) => {
            print!("{report}");
            match after(&config, &report) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(1)
                }
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

/// What `init-topics` tells the operator to do once the topics are there.
pub const NEXT_AFTER_INIT_TOPICS: &str = "\
Next: start the three services, each with its own config (any order; each waits to be assigned):
  file-source --config file-source.toml
  change-detector --config change-detector.toml
  api-sink --config api-sink.toml
`<service> --config <file> check-config --connect` checks each one's secrets, topics and API
first; `check-config` alone prints what a service will use (secrets redacted);
/readyz on each one's [http] listen address says when it is ready. Then drop a snapshot file
into file-source's inbox (source.inbox).";

/// Creates missing topics and verifies all of them; returns a printable report.
pub async fn init_topics(
    service: &'static str,
    common: service::CommonSections<'_>,
) -> Result<String, service::RuntimeError> {
    let names = common.topic_names();
    let specs = names.specs(common.topics);
    let admin = service::admin_client(common.kafka, service)?;
    let all: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let before = service::fetch_partition_counts(&admin, common.kafka, &all).await?;
    let created = topics::create_missing(
        &admin,
        &specs,
        &before,
        common.topics.replication_factor,
        common.kafka.request_timeout(),
    )
    .await?;
    let after = service::fetch_partition_counts(&admin, common.kafka, &all).await?;
    let required: Vec<&str> = all.iter().map(String::as_str).collect();
    topics::verify(&names, &required, &after)?;
    let mut report = String::new();
    for spec in &specs {
        let state = if created.contains(&spec.name) {
            "created"
        } else {
            "exists"
        };
        report.push_str(&format!(
            "{:<40} {:>3} partitions  {:<8} {}\n",
            spec.name,
            after.get(&spec.name).copied().unwrap_or(0),
            spec.cleanup_policy.as_str(),
            state
        ));
    }
    report.push_str("snapshots, state and changes are co-partitioned.");
    Ok(report)
}

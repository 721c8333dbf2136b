//! The `api-sink` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use snapfeed_runtime::cli::{
    execute_common, execute_replay_then, CommonCommand, ReplayArgs, ServiceCli,
};

/// What `--help` says the binary is.
const ABOUT: &str = "Sink stage: deliver every change to the case API, in order per key; the consumer offset is the retry state.";

#[derive(Debug, clap::Subcommand)]
enum Command {
    #[command(flatten)]
    Common(CommonCommand),
    /// Reset the group's offsets on `changes` (refused while instances run), so the chosen
    /// range of changes is delivered again (with the same Idempotency-Keys).
    Replay(ReplayArgs),
    /// Re-publish dead letters to `changes` once their cause is fixed (skipping any whose key
    /// has had a newer version delivered since).
    Redrive {
        /// Only letters dead-lettered at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only letters whose last HTTP status is this one.
        #[arg(long)]
        status: Option<i32>,
        /// Only letters of this reason (`http_4xx`, `retry_budget_exhausted`, …).
        #[arg(long)]
        reason: Option<String>,
        /// Only letters of this record key.
        #[arg(long)]
        key: Option<String>,
        /// Print what would be redriven; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = ServiceCli::<Command>::parse_as(api_sink::SERVICE, ABOUT);
    let config = cli.global.config.as_deref();
    match cli.command.unwrap_or(Command::Common(CommonCommand::Run)) {
        Command::Common(command) => {
            execute_common(api_sink::SERVICE, config, command, api_sink::run)
        }
        Command::Redrive {
            since,
            status,
            reason,
            key,
            dry_run,
        } => {
            let filter = api_sink::redrive::RedriveFilter {
                since: None,
                status,
                reason,
                key,
                state: None,
            };
            redrive(config, since, filter, dry_run)
        }
        // The replay markers on `deliveries` keep the receipts of the first run from holding
        // the replayed range back (see `api_sink::receipts`).
        Command::Replay(ReplayArgs { to }) => execute_replay_then::<api_sink::ApiSinkConfig>(
            api_sink::SERVICE,
            config,
            &to,
            |t| t.changes.clone(),
            api_sink::receipts::write_replay_markers,
        ),
    }
}

fn redrive(
    config_path: Option<&std::path::Path>,
    since: Option<String>,
    mut filter: api_sink::redrive::RedriveFilter,
    dry_run: bool,
) -> ExitCode {
    let config = match snapfeed_runtime::cli::load_config::<api_sink::ApiSinkConfig>(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let since = match since
        .map(|s| chrono::DateTime::parse_from_rfc3339(&s).map(|t| t.with_timezone(&chrono::Utc)))
    {
        None => None,
        Some(Ok(time)) => Some(time),
        Some(Err(error)) => {
            eprintln!(
                "error: --since: {error} (expected an RFC 3339 time such as 2026-11-26T08:00:00Z)"
            );
            return ExitCode::from(2);
        }
    };
    snapfeed_runtime::telemetry::init(&config.log);
    let schemas = match snapfeed_runtime::avro::SchemaStore::load_dir(&config.pipeline.schemas_dir)
    {
        Ok(schemas) => schemas,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    use snapfeed_runtime::service::HasCommonSections;
    let topics = config.common().topic_names();
    filter.since = since;
    match api_sink::redrive::redrive(
        &config.kafka,
        config.pipeline.processing_guarantee,
        &topics,
        &schemas,
        &filter,
        dry_run,
    ) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

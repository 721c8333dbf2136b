//! The `api-sink` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use snapfeed_runtime::cli::{
    emit, execute_common, execute_replay_then, CommonCommand, LetterFilterArgs, ReplayArgs,
    ServiceCli,
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
    /// Re-publish open dead letters to `changes` once their cause is fixed (skipping any whose
    /// key has had a newer version delivered or queued since, and any already redriven and
    /// not yet delivered).
    Redrive {
        /// Time, status, reason, key.
        #[command(flatten)]
        filter: LetterFilterArgs,
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
        Command::Redrive { filter, dry_run } => redrive(config, &filter, dry_run),
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
    filter: &LetterFilterArgs,
    dry_run: bool,
) -> ExitCode {
    let config = match snapfeed_runtime::cli::load_config::<api_sink::ApiSinkConfig>(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let filter = match filter.filter() {
        Ok(filter) => filter,
        Err(problem) => {
            eprintln!("error: {problem}");
            return ExitCode::from(2);
        }
    };
    snapfeed_runtime::telemetry::init(&config.log);
    use snapfeed_runtime::service::HasCommonSections;
    let schemas = match config.common().load_schemas_for_command() {
        Ok(schemas) => schemas,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let topics = config.common().topic_names();
    match api_sink::redrive::redrive(
        &config.kafka,
        config.pipeline.processing_guarantee,
        &topics,
        &schemas,
        &filter,
        dry_run,
    ) {
        Ok(report) => emit(&format!("{report}\n"))
            .err()
            .unwrap_or(ExitCode::SUCCESS),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

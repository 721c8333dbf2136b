//! The `file-source` binary: parses the command line and hands over to the library; prints the
//! `ingest` subcommand's outcomes (the library never prints).

use std::path::PathBuf;
use std::process::ExitCode;

use file_source::ingest::FileOutcome;
use snapfeed_runtime::cli::{execute_common, load_config, run_with, CommonCommand, ServiceCli};

/// What `--help` says the binary is.
const ABOUT: &str =
    "Source stage: snapshot files into the `snapshots` topic, exactly once per file.";

#[derive(Debug, clap::Subcommand)]
enum Command {
    #[command(flatten)]
    Common(CommonCommand),
    /// Ingest the given files once, then exit: 0 when all were ingested (or were duplicates),
    /// 1 with the failure reports otherwise.
    Ingest {
        /// Snapshot files (CSV, optionally gzip or zstd compressed).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Hand the files another instance claimed and never finished (its work directory) back
    /// to the inbox, fencing its producer first (exactly_once): they are resumed from their
    /// checkpoints by the instance whose shard they belong to.
    Adopt {
        /// The other instance's id (`pipeline.instance_id`: its work directory's name).
        instance: String,
        /// Its `source.instance_index` (names its transactional id); default: this config's.
        #[arg(long)]
        instance_index: Option<u32>,
        /// Also take files it claimed less than `source.orphaned_after_ms` ago.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = ServiceCli::<Command>::parse_as(file_source::SERVICE, ABOUT);
    let config_path = cli.global.config.as_deref();
    match cli.command.unwrap_or(Command::Common(CommonCommand::Run)) {
        Command::Common(command) => {
            execute_common(file_source::SERVICE, config_path, command, file_source::run)
        }
        Command::Adopt {
            instance,
            instance_index,
            force,
        } => {
            let config = match load_config::<file_source::FileSourceConfig>(config_path) {
                Ok(config) => config,
                Err(code) => return code,
            };
            snapfeed_runtime::telemetry::init(&config.log);
            let index = instance_index.unwrap_or(config.source.instance_index);
            match file_source::adopt::adopt(&config, &instance, index, force) {
                Ok(adopted) => {
                    println!("{adopted}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Ingest { files } => {
            let config = match load_config::<file_source::FileSourceConfig>(config_path) {
                Ok(config) => config,
                Err(code) => return code,
            };
            run_with(
                file_source::SERVICE,
                config,
                |config, shutdown| async move {
                    file_source::ingest_paths_reporting(config, files, shutdown, print_outcome)
                        .await
                        .map(|_| ())
                },
            )
        }
    }
}

/// One line of JSON per ingested or duplicate file on stdout; a failed file's report, pretty,
/// on stderr. Reports hold names, hashes, counts and reasons — never row values.
fn print_outcome(outcome: &FileOutcome) {
    match outcome {
        FileOutcome::Ingested(report) => {
            println!("{}", serde_json::to_string(report).unwrap_or_default())
        }
        FileOutcome::Duplicate { file, hash } => {
            println!("{{\"file\":{file:?},\"hash\":{hash:?},\"duplicate\":true}}")
        }
        FileOutcome::Failed(report) => {
            eprintln!(
                "{}",
                serde_json::to_string_pretty(report).unwrap_or_default()
            )
        }
    }
}

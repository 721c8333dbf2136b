//! The `file-source` binary: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use snapfeed_runtime::cli::{execute_common, load_config, run_with, CommonCommand, GlobalArgs};

/// Snapshot files into the `snapshots` topic, exactly once per file.
#[derive(Debug, Parser)]
#[command(name = "file-source", version)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = cli.global.config.as_deref();
    match cli.command.unwrap_or(Command::Common(CommonCommand::Run)) {
        Command::Common(command) => {
            execute_common(file_source::SERVICE, config_path, command, file_source::run)
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
                    file_source::ingest_paths(config, files, shutdown)
                        .await
                        .map(|_| ())
                },
            )
        }
    }
}

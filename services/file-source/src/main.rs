//! The `file-source` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use snapfeed_runtime::cli::{execute_common, CommonCommand, GlobalArgs};

/// Snapshot files into the `snapshots` topic, exactly once per file.
#[derive(Debug, Parser)]
#[command(name = "file-source", version)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Option<CommonCommand>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(CommonCommand::Run);
    execute_common(
        file_source::SERVICE,
        cli.global.config.as_deref(),
        command,
        file_source::run,
    )
}

//! The `change-detector` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use snapfeed_runtime::cli::{execute_common, CommonCommand, GlobalArgs};

/// Filter stage: only new and changed records from snapshots to changes, with per-key state in a compacted topic.
#[derive(Debug, Parser)]
#[command(name = "change-detector", version)]
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
        change_detector::SERVICE,
        cli.global.config.as_deref(),
        command,
        change_detector::run,
    )
}

//! The `api-sink` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use snapfeed_runtime::cli::{execute_common, CommonCommand, GlobalArgs};

/// Sink stage: deliver every change to the case API, in order per key; the consumer offset is the retry state.
#[derive(Debug, Parser)]
#[command(name = "api-sink", version)]
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
        api_sink::SERVICE,
        cli.global.config.as_deref(),
        command,
        api_sink::run,
    )
}

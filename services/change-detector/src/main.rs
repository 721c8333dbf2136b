//! The `change-detector` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use snapfeed_runtime::cli::{execute_common, execute_replay, CommonCommand, GlobalArgs};

/// Filter stage: only new and changed records from snapshots to changes, with per-key state in a compacted topic.
#[derive(Debug, Parser)]
#[command(name = "change-detector", version)]
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
    /// Reset the group's offsets on `snapshots` (refused while instances run). With state
    /// intact a replay re-emits nothing: records are compared with the state they left.
    Replay {
        /// `earliest`, an RFC 3339 time, or `partition:offset,…`.
        #[arg(long)]
        to: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.global.config.as_deref();
    match cli.command.unwrap_or(Command::Common(CommonCommand::Run)) {
        Command::Common(command) => execute_common(
            change_detector::SERVICE,
            config,
            command,
            change_detector::run,
        ),
        Command::Replay { to } => execute_replay::<change_detector::ChangeDetectorConfig>(
            change_detector::SERVICE,
            config,
            &to,
            |t| t.snapshots.clone(),
        ),
    }
}

//! The `change-detector` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use snapfeed_runtime::cli::{
    execute_common, execute_replay, load_config, CommonCommand, ReplayArgs, ServiceCli,
};

/// What `--help` says the binary is.
const ABOUT: &str = "Filter stage: only new and changed records from snapshots to changes, with per-key state in a compacted topic.";

#[derive(Debug, clap::Subcommand)]
enum Command {
    #[command(flatten)]
    Common(CommonCommand),
    /// Reset the group's offsets on `snapshots` (refused while instances run). With state
    /// intact a replay re-emits nothing: records are compared with the state they left.
    Replay(ReplayArgs),
    /// After partitions were added to snapshots, state and changes: re-key `state` into the new
    /// partition count (refused while instances run, or while records of moving keys are
    /// undecided or undelivered). See README § Changing the partition count.
    Repartition {
        /// Print what would be written, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = ServiceCli::<Command>::parse_as(change_detector::SERVICE, ABOUT);
    let config = cli.global.config.as_deref();
    match cli.command.unwrap_or(Command::Common(CommonCommand::Run)) {
        Command::Common(command) => execute_common(
            change_detector::SERVICE,
            config,
            command,
            change_detector::run,
        ),
        Command::Replay(ReplayArgs { to }) => {
            execute_replay::<change_detector::ChangeDetectorConfig>(
                change_detector::SERVICE,
                config,
                &to,
                |t| t.snapshots.clone(),
            )
        }
        Command::Repartition { dry_run } => {
            let config = match load_config::<change_detector::ChangeDetectorConfig>(config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let options = change_detector::repartition::RepartitionOptions { dry_run };
            match change_detector::repartition::repartition(&config, options) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

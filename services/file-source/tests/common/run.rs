//! file-source run in-process: `ingest_paths` to its end, `run` until stopped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use file_source::ingest::{FileOutcome, FileReport};
use file_source::{FileSourceConfig, FileSourceError};
use snapfeed_harness::endpoint::free_addr;
use snapfeed_harness::in_process::InProcessService;
use snapfeed_runtime::shutdown;

/// Runs `ingest_paths` to the end (bounded), keeping its shutdown trigger alive meanwhile.
pub async fn ingest(
    config: FileSourceConfig,
    paths: Vec<PathBuf>,
) -> Result<Vec<FileOutcome>, FileSourceError> {
    let (trigger, shutdown) = shutdown::channel();
    let result = tokio::time::timeout(
        Duration::from_secs(180),
        file_source::ingest_paths(config, paths, shutdown),
    )
    .await
    .expect("ingest_paths finished within 180 s");
    drop(trigger);
    result
}

/// The report of a single ingested file.
pub fn single_report(outcomes: &[FileOutcome]) -> FileReport {
    match outcomes {
        [FileOutcome::Ingested(report)] => report.clone(),
        other => panic!("expected one ingested file, got {other:?}"),
    }
}

/// `file_source::run` in a task, until stopped.
pub type Running = InProcessService<FileSourceError>;

/// Starts `run` with its endpoint on a free port it then knows.
pub fn start_source(mut config: FileSourceConfig) -> Running {
    let http = free_addr();
    config.http.listen = http.to_string();
    InProcessService::spawn("file-source", http, Duration::from_secs(60), |shutdown| {
        file_source::run(config, shutdown)
    })
}

/// Names of the files directly in `dir` (none if it does not exist).
pub fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

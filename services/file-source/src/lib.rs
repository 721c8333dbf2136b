//! file-source — the **source** stage: snapshot files from an inbox into the `snapshots` topic,
//! exactly once per file (see DESIGN § file-source).
//!
//! A row's way through, in order:
//! - [`config`]: `[source]` — inbox, completeness rule, dialect, chunking, thresholds.
//! - [`inbox`]: which files are complete, oldest first, claimed by atomic rename.
//! - `watch`: the stage's loops — scan, claim, ingest, sleep; or the given files — on its own
//!   thread.
//! - [`service`]: start-up, and one file processed and moved where its outcome says.
//! - [`ledger`]: the compacted `files` topic — skip re-delivered files, resume interrupted ones.
//! - [`reader`]: file identity (SHA-256), decompression, text decoding, CSV records.
//! - [`snapshot_time`]: when a file's snapshot was taken (file name or mtime).
//! - [`convert`]: a CSV row → dataset record, or a reject naming column and reason.
//! - [`ingest`]: decide every row, then send the file in chunks through the runtime's
//!   guaranteed writer (the guarantee).
//! - [`metrics`]: the `snapfeed_file_source_…` metrics.
//!
//! [`run`] watches the inbox until shutdown; [`ingest_paths`] ingests given files once (the
//! `ingest` subcommand). Both run in the runtime's service frame, their work on the stage's
//! thread, through [`FileSource::process`], so they behave the same. The library never prints:
//! the binary reports outcomes.

pub mod adopt;
pub mod config;
pub mod convert;
pub mod inbox;
pub mod ingest;
pub mod ledger;
pub mod metrics;
pub mod reader;
pub mod service;
pub mod snapshot_time;
mod watch;

use std::path::PathBuf;
use std::sync::mpsc;

use snapfeed_runtime::service::{RuntimeError, StageThread};
use snapfeed_runtime::shutdown::Shutdown;

pub use config::FileSourceConfig;
use ingest::{FileOutcome, IngestError};
pub use service::FileSource;

/// The service name: metric prefix, client id.
pub const SERVICE: &str = "file-source";

/// Why file-source stopped.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    /// Start-up or the service frame failed (config, schemas, dataset, endpoint, topics,
    /// metrics, the writer, the stage's thread).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A Kafka call outside the writer failed (reading the ledger back).
    #[error("kafka {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: &'static str,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
    /// The inbox or a work directory cannot be used.
    #[error("{path}: {source}")]
    Io {
        /// Directory or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be ingested and the stage cannot go on: a fatal write error (fenced,
    /// unrecoverable) in `run`; any error, shutdown included, in `ingest`.
    #[error("{path}: {source}")]
    Ingest {
        /// The file.
        path: PathBuf,
        /// Why (boxed: the error path stays small).
        source: Box<IngestError>,
    },
    /// `ingest` was given files that failed (their reports went to the caller).
    #[error("{0} file(s) failed")]
    FilesFailed(usize),
}

/// Runs file-source until `shutdown` fires: resumes files left in the work directory, then
/// takes complete inbox files one at a time, oldest first.
pub async fn run(config: FileSourceConfig, shutdown: Shutdown) -> Result<(), FileSourceError> {
    let mut inbox = inbox::Inbox::new(&config.source, &config.pipeline.instance_id());
    let Some((runtime, mut source)) = FileSource::connect(config, &shutdown).await? else {
        return Ok(());
    };
    tracing::info!(message = "Watching the inbox.", inbox = %source.config.source.inbox.display());
    let stage = StageThread::spawn(SERVICE, move |stop| {
        watch::watch(&mut source, &mut inbox, stop)
    })?;
    runtime.serve(shutdown, stage).await
}

/// Ingests the given files once, in order (the `ingest` subcommand). Returns each outcome;
/// `Err(FilesFailed)` if any file failed.
pub async fn ingest_paths(
    config: FileSourceConfig,
    paths: Vec<PathBuf>,
    shutdown: Shutdown,
) -> Result<Vec<FileOutcome>, FileSourceError> {
    ingest_paths_reporting(config, paths, shutdown, |_| {}).await
}

/// [`ingest_paths`], handing each outcome to `report` as soon as its file is done (the binary
/// prints them), before returning them all.
pub async fn ingest_paths_reporting(
    config: FileSourceConfig,
    paths: Vec<PathBuf>,
    shutdown: Shutdown,
    mut report: impl FnMut(&FileOutcome) + Send + 'static,
) -> Result<Vec<FileOutcome>, FileSourceError> {
    let Some((runtime, mut source)) = FileSource::connect(config, &shutdown).await? else {
        return Ok(Vec::new());
    };
    let (done, outcomes) = mpsc::channel();
    let stage = StageThread::spawn(SERVICE, move |stop| {
        watch::ingest_each(&mut source, &paths, stop, &mut |outcome| {
            report(&outcome);
            // The receiver outlives the stage unless the stage was left behind at shutdown.
            let _ = done.send(outcome);
        })
    })?;
    // The frame (endpoint) stops with the stage, not only on a signal: a one-shot command must
    // not wait for one. A signal still stops the ingest mid-file.
    runtime.serve(shutdown, stage).await?;
    let outcomes: Vec<FileOutcome> = outcomes.try_iter().collect();
    match outcomes
        .iter()
        .filter(|o| matches!(o, FileOutcome::Failed(_)))
        .count()
    {
        0 => Ok(outcomes),
        failed => Err(FileSourceError::FilesFailed(failed)),
    }
}

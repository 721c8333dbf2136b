//! The service wiring: start-up through the runtime's frame (schemas, endpoint, topics, the
//! dataset, metrics, the [`GuaranteedWriter`], the ledger), and [`FileSource::process`] — one
//! file ingested and then moved where its outcome says, with its metrics and log line. Both run
//! modes (`run` and the `ingest` subcommand) process files through it, on the stage's thread.
//!
//! The guarantee is the ingest's; this file adds the order of effects around it: a file leaves
//! the work directory only after its outcome is committed, so a crash before that resumes it.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::dataset::Dataset;
use snapfeed_runtime::kafka::{GuaranteedWriter, TopicReader};
use snapfeed_runtime::service::{HasCommonSections, ServiceRuntime, CONNECTED};
use snapfeed_runtime::shutdown::Shutdown;
use snapfeed_runtime::topics::TopicNames;

use crate::config::{AfterSuccess, FileSourceConfig};
use crate::ingest::{self, FileOutcome, IngestContext, IngestError};
use crate::ledger::Ledger;
use crate::metrics::SourceMetrics;
use crate::{inbox, FileSourceError, SERVICE};

/// Readiness condition: the ledger has been read back (duplicates can be told apart).
const LEDGER_LOADED: &str = "ledger_loaded";

/// A connected file-source: everything both run modes share. Lives on the stage's thread.
pub struct FileSource {
    /// The whole configuration (`[source]` above all).
    pub config: FileSourceConfig,
    /// Resolved topic names.
    topics: TopicNames,
    /// Envelope schemas.
    schemas: Arc<SchemaStore>,
    /// Partition count of `snapshots`, as verified at start (markers go to each).
    snapshot_partitions: i32,
    /// The CSV → record mapping.
    dataset: Arc<Dataset>,
    /// Keeps the delivery guarantee for every record written.
    writer: Arc<GuaranteedWriter>,
    /// Which files are done or half-done; updated as entries are committed.
    ledger: Ledger,
    /// Catches the ledger up before each file.
    ledger_reader: TopicReader,
    /// `snapfeed_file_source_…`.
    pub(crate) metrics: SourceMetrics,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("topics", &self.topics)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl FileSource {
    /// Starts the service frame and connects: verified topics, the dataset, metrics, work
    /// directories, the writer, the ledger. `None` when shutdown came first.
    pub async fn connect(
        config: FileSourceConfig,
        shutdown: &Shutdown,
    ) -> Result<Option<(ServiceRuntime, FileSource)>, FileSourceError> {
        let required =
            |t: &TopicNames| vec![t.snapshots.clone(), t.files.clone(), t.rejects.clone()];
        let Some(runtime) =
            ServiceRuntime::start_verified(SERVICE, config.common(), required, shutdown).await?
        else {
            return Ok(None);
        };
        let Some(dataset) = runtime
            .load_dataset(&config.source.dataset_mapping, shutdown)
            .await?
        else {
            runtime.stop().await;
            return Ok(None);
        };
        let metrics = runtime.register_metrics(SourceMetrics::register)?;
        for dir in [
            inbox::instance_work_dir(&config.source, &config.pipeline.instance_id()),
            config.source.processed_dir(),
            config.source.failed_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|source| FileSourceError::Io {
                path: dir.clone(),
                source,
            })?;
        }

        // One transactional id per instance (shard + instance id): a restarted instance fences its
        // predecessor, and two instances never fence each other.
        let transactional_id = format!(
            "{}.{SERVICE}.{}.{}",
            config.pipeline.name,
            config.source.instance_index,
            config.pipeline.instance_id()
        );
        let writer = runtime
            .connect_writer(config.pipeline.processing_guarantee, transactional_id)
            .await?;
        runtime.readiness.set(CONNECTED, true);

        runtime.readiness.set(LEDGER_LOADED, false);
        let (ledger, ledger_reader) = load_ledger(&config, &runtime).await?;
        tracing::info!(message = "Ledger loaded.", files = ledger.len());
        runtime.readiness.set(LEDGER_LOADED, true);

        let source = FileSource {
            topics: runtime.topics.clone(),
            schemas: runtime.schemas.clone(),
            snapshot_partitions: runtime.partitions_of(&runtime.topics.snapshots),
            config,
            dataset,
            writer,
            ledger,
            ledger_reader,
            metrics,
        };
        Ok(Some((runtime, source)))
    }

    /// Ingests one file that is in the work directory (or named on the command line) and moves
    /// it to where its outcome says. `stop` interrupts it at the next row. Blocking.
    pub fn process(&mut self, path: &Path, stop: &AtomicBool) -> Result<FileOutcome, IngestError> {
        let started = Instant::now();
        // What other instances committed since: a file they completed, a checkpoint of one
        // they left (handed back by `adopt`). Without it the file is ingested from what this
        // instance knows — at worst again, which the detector absorbs.
        if let Err(error) =
            self.ledger
                .catch_up(&self.ledger_reader, &self.topics.files, &self.schemas)
        {
            tracing::warn!(message = "Cannot catch the ledger up; going on with what this instance knows.", %error);
        }
        let ctx = IngestContext {
            config: &self.config.source,
            topics: &self.topics,
            snapshot_partitions: self.snapshot_partitions,
            dataset: self.dataset.clone(),
            schemas: &self.schemas,
            writer: &self.writer,
            stop,
        };
        let outcome = ingest::ingest_file(&ctx, path, &mut self.ledger)?;
        self.settle(path, &outcome, started)
            .map_err(|source| IngestError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(outcome)
    }

    /// After the outcome is committed: the file moves (or goes), the metrics count it.
    fn settle(&self, path: &Path, outcome: &FileOutcome, started: Instant) -> std::io::Result<()> {
        let source = &self.config.source;
        let metrics = &self.metrics;
        match outcome {
            FileOutcome::Ingested(report) => {
                match source.on_success {
                    AfterSuccess::Move => {
                        inbox::move_into(path, &source.processed_dir())?;
                    }
                    AfterSuccess::Delete => std::fs::remove_file(path)?,
                }
                let seconds = started.elapsed().as_secs_f64();
                metrics.files.with_label_values(&["ingested"]).inc();
                metrics
                    .rows
                    .with_label_values(&["sent"])
                    .inc_by(report.rows_sent);
                metrics
                    .rows
                    .with_label_values(&["rejected"])
                    .inc_by(report.rows_rejected);
                metrics.bytes.inc_by(report.bytes);
                metrics.file_duration.observe(seconds);
                metrics
                    .last_success
                    .set(snapfeed_runtime::records::now_millis() as f64 / 1000.0);
                tracing::info!(
                    message = "File ingested.",
                    rows = report.rows_total,
                    sent = report.rows_sent,
                    rejected = report.rows_rejected,
                    resumed_after = report.resumed_after,
                    spool_bytes = report.spool_bytes,
                    seconds
                );
            }
            FileOutcome::Duplicate { .. } => {
                inbox::move_into(path, &source.processed_dir())?;
                metrics.files.with_label_values(&["duplicate"]).inc();
                tracing::info!(
                    message = "Content already ingested; skipped and moved to processed."
                );
            }
            FileOutcome::Failed(report) => {
                let moved = inbox::move_into(path, &source.failed_dir())?;
                let report_path = moved.with_file_name(format!("{}.error.json", report.file));
                let text =
                    serde_json::to_string_pretty(report).unwrap_or_else(|_| report.error.clone());
                std::fs::write(&report_path, text)?;
                metrics.files.with_label_values(&["failed"]).inc();
                tracing::error!(message = "File failed; nothing of it was sent.", stage = report.stage, error = %report.error, report = %report_path.display());
            }
        }
        Ok(())
    }

    /// At the end of the stage: aborts a transaction still open and flushes what is queued,
    /// within the drain bound. Blocking.
    pub fn close(&self) {
        if let Err(error) = self.writer.close(self.config.shutdown.drain_timeout()) {
            tracing::warn!(message = "The writer did not close cleanly before the drain bound.", %error);
        }
    }
}

/// Reads the whole `files` ledger back, off the async workers.
/// The ledger, and the reader that keeps it caught up.
async fn load_ledger(
    config: &FileSourceConfig,
    runtime: &ServiceRuntime,
) -> Result<(Ledger, TopicReader), FileSourceError> {
    let reader = TopicReader::new(&config.kafka, SERVICE, config.pipeline.processing_guarantee)
        .map_err(|source| FileSourceError::Kafka {
            context: "create ledger reader",
            source,
        })?;
    let (files_topic, schemas) = (runtime.topics.files.clone(), runtime.schemas.clone());
    // Never assigned to a group: dropping the reader does not wait on a coordinator.
    tokio::task::spawn_blocking(move || {
        Ledger::load(&reader, &files_topic, &schemas).map(|ledger| (ledger, reader))
    })
    .await
    .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
    .map_err(|source| FileSourceError::Kafka {
        context: "load ledger",
        source,
    })
}

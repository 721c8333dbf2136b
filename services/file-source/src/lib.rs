//! file-source — the **source** stage: snapshot files from an inbox into the `snapshots` topic,
//! exactly once per file (see DESIGN § file-source).
//!
//! - [`config`]: `[source]` — inbox, completeness rule, dialect, chunking, thresholds.
//! - [`inbox`]: which files are complete, oldest first, claimed by atomic rename.
//! - [`reader`]: file identity (SHA-256), decompression, text decoding, CSV records.
//! - [`convert`]: a CSV row → dataset record, or a reject naming column and reason.
//! - [`ledger`]: the compacted `files` topic — skip re-delivered files, resume interrupted ones.
//! - [`ingest`]: validate the whole file, then send it in transactional chunks (the guarantee).
//! - [`metrics`]: the `snapfeed_file_source_…` metrics.
//!
//! [`run`] watches the inbox until shutdown; [`ingest_paths`] ingests given files once (the
//! `ingest` subcommand). Both go through [`FileSource::process`], so they behave the same.

pub mod config;
pub mod convert;
pub mod inbox;
pub mod ingest;
pub mod ledger;
pub mod metrics;
pub mod reader;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::Producer;
use snapfeed_runtime::dataset::{Dataset, DatasetError, DatasetMapping};
use snapfeed_runtime::kafka::run_blocking;
use snapfeed_runtime::service::{HasCommonSections, RuntimeError, ServiceRuntime};
use snapfeed_runtime::shutdown::Shutdown;
use snapfeed_runtime::topics::TopicNames;

pub use config::FileSourceConfig;
use ingest::{FileOutcome, IngestContext, IngestError, SourceProducer};
use ledger::Ledger;
use metrics::SourceMetrics;
use snapfeed_runtime::kafka::DeliveryTracker;

/// The service name: metric prefix, client id.
pub const SERVICE: &str = "file-source";

/// Why file-source stopped.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    /// Start-up failed (config, schemas, endpoint, topics, cluster).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The dataset mapping is wrong.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A Kafka call failed.
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
    /// The producer was fenced by another instance with the same transactional id.
    #[error("producer fenced or fatally failed: {0}")]
    Fenced(IngestError),
    /// `ingest` was given files that failed (reports printed).
    #[error("{0} file(s) failed")]
    FilesFailed(usize),
}

/// A connected file-source: everything both run modes share.
pub struct FileSource {
    config: FileSourceConfig,
    runtime: ServiceRuntime,
    dataset: Arc<Dataset>,
    producer: Arc<SourceProducer>,
    ledger: Mutex<Ledger>,
    metrics: SourceMetrics,
    stop: AtomicBool,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl FileSource {
    /// Verifies topics, loads the dataset and the ledger, connects the producer. `None` when
    /// shutdown came first.
    pub async fn connect(
        config: FileSourceConfig,
        shutdown: &Shutdown,
    ) -> Result<Option<Arc<FileSource>>, FileSourceError> {
        let common = config.common();
        let required =
            |t: &TopicNames| vec![t.snapshots.clone(), t.files.clone(), t.rejects.clone()];
        let Some(runtime) =
            ServiceRuntime::start_verified(SERVICE, common, required, shutdown).await?
        else {
            return Ok(None);
        };
        let dataset = Arc::new(DatasetMapping::load(
            &config.source.dataset_mapping,
            &runtime.schemas,
        )?);
        let metrics = SourceMetrics::register(&runtime.registry).map_err(|e| {
            RuntimeError::Config(snapfeed_runtime::config::ConfigError::invalid(
                "(metrics)",
                SERVICE,
                e.to_string(),
            ))
        })?;
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

        let guarantee = config.pipeline.processing_guarantee;
        let timeout = config.kafka.request_timeout();
        // One transactional id per instance (shard + instance id): a restarted instance fences its
        // predecessor, and two instances never fence each other.
        let transactional_id = format!(
            "{}.{SERVICE}.{}.{}",
            config.pipeline.name,
            config.source.instance_index,
            config.pipeline.instance_id()
        );
        let producer: SourceProducer = config
            .kafka
            .producer_config(SERVICE, guarantee, Some(&transactional_id))
            .create_with_context(DeliveryTracker::default())
            .map_err(|source| FileSourceError::Kafka {
                context: "create producer",
                source,
            })?;
        let producer = Arc::new(producer);
        if guarantee.is_transactional() {
            let p = producer.clone();
            run_blocking(move || p.init_transactions(timeout))
                .await
                .map_err(|source| FileSourceError::Kafka {
                    context: "init transactions",
                    source,
                })?;
        }
        runtime.readiness.set("connected", true);

        runtime.readiness.set("ledger_loaded", false);
        let reader: BaseConsumer = config
            .kafka
            .reader_config(SERVICE, guarantee)
            .create()
            .map_err(|source| FileSourceError::Kafka {
                context: "create ledger reader",
                source,
            })?;
        let (files_topic, schemas) = (runtime.topics.files.clone(), runtime.schemas.clone());
        let ledger = tokio::task::spawn_blocking(move || {
            let ledger = Ledger::load(&reader, &files_topic, &schemas, timeout);
            // Never assigned to a group: dropping it does not wait on a coordinator.
            drop(reader);
            ledger
        })
        .await
        .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
        .map_err(|source| FileSourceError::Kafka {
            context: "load ledger",
            source,
        })?;
        tracing::info!(message = "Ledger loaded.", files = ledger.len());
        runtime.readiness.set("ledger_loaded", true);

        Ok(Some(Arc::new(FileSource {
            config,
            runtime,
            dataset,
            producer,
            ledger: Mutex::new(ledger),
            metrics,
            stop: AtomicBool::new(false),
        })))
    }

    /// Ingests one file that is in the work directory (or named on the command line) and moves
    /// it to where its outcome says. Blocking: call from a blocking thread.
    pub fn process(&self, path: &Path) -> Result<FileOutcome, IngestError> {
        let started = Instant::now();
        let ctx = IngestContext {
            config: &self.config.source,
            guarantee: self.config.pipeline.processing_guarantee,
            topics: &self.runtime.topics,
            snapshot_partitions: self.runtime.partitions_of(&self.runtime.topics.snapshots),
            dataset: self.dataset.clone(),
            schemas: &self.runtime.schemas,
            producer: &self.producer,
            kafka_timeout: self.config.kafka.request_timeout(),
            stop: &self.stop,
        };
        let outcome = {
            let mut ledger = self
                .ledger
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            ingest::ingest_file(&ctx, path, &mut ledger)?
        };
        let source = &self.config.source;
        let io = |source: std::io::Error| IngestError::Io {
            path: path.display().to_string(),
            source,
        };
        match &outcome {
            FileOutcome::Ingested(report) => {
                match source.on_success {
                    config::AfterSuccess::Move => inbox::move_into(path, &source.processed_dir())
                        .map(|_| ())
                        .map_err(io)?,
                    config::AfterSuccess::Delete => std::fs::remove_file(path).map_err(io)?,
                }
                self.metrics.files.with_label_values(&["ingested"]).inc();
                self.metrics
                    .rows
                    .with_label_values(&["sent"])
                    .inc_by(report.rows_sent);
                self.metrics
                    .rows
                    .with_label_values(&["rejected"])
                    .inc_by(report.rows_rejected);
                self.metrics.bytes.inc_by(report.bytes);
                self.metrics
                    .file_duration
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .last_success
                    .set(snapfeed_runtime::records::now_millis() as f64 / 1000.0);
                tracing::info!(
                    message = "File ingested.",
                    rows = report.rows_total,
                    sent = report.rows_sent,
                    rejected = report.rows_rejected,
                    resumed_after = report.resumed_after,
                    seconds = started.elapsed().as_secs_f64()
                );
            }
            FileOutcome::Duplicate { .. } => {
                inbox::move_into(path, &source.processed_dir()).map_err(io)?;
                self.metrics.files.with_label_values(&["duplicate"]).inc();
                tracing::info!(
                    message = "Content already ingested; skipped and moved to processed."
                );
            }
            FileOutcome::Failed(report) => {
                let moved = inbox::move_into(path, &source.failed_dir()).map_err(io)?;
                let report_path = moved.with_file_name(format!("{}.error.json", report.file));
                let text =
                    serde_json::to_string_pretty(report).unwrap_or_else(|_| report.error.clone());
                std::fs::write(&report_path, text).map_err(io)?;
                self.metrics.files.with_label_values(&["failed"]).inc();
                tracing::error!(message = "File failed; nothing of it was sent.", stage = report.stage, error = %report.error, report = %report_path.display());
            }
        }
        Ok(outcome)
    }

    fn stop_taking_work(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Flushes and releases the producer within the drain bound, then stops the endpoint.
    async fn close(self: Arc<Self>) {
        self.runtime.readiness.set("connected", false);
        let drain = self.config.shutdown.drain_timeout();
        let producer = self.producer.clone();
        if let Err(error) = run_blocking(move || producer.flush(drain)).await {
            tracing::warn!(message = "Producer did not flush before the drain bound.", %error);
        }
        match Arc::try_unwrap(self) {
            Ok(source) => {
                drop(source.producer);
                let _ = tokio::time::timeout(Duration::from_secs(5), source.runtime.stop()).await;
            }
            Err(_) => tracing::warn!(message = "file-source still in use at shutdown."),
        }
    }
}

/// Runs file-source until `shutdown` fires: resumes files left in the work directory, then
/// takes complete inbox files one at a time, oldest first.
pub async fn run(config: FileSourceConfig, shutdown: Shutdown) -> Result<(), FileSourceError> {
    let mut inbox = inbox::Inbox::new(&config.source, &config.pipeline.instance_id());
    let poll = Duration::from_millis(config.source.poll_interval_ms);
    let Some(source) = FileSource::connect(config, &shutdown).await? else {
        return Ok(());
    };
    tracing::info!(message = "Watching the inbox.", inbox = %source.config.source.inbox.display());
    let stopper = {
        let (source, mut shutdown) = (source.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.wait().await;
            source.stop_taking_work();
        })
    };
    let result = watch(&source, &mut inbox, poll, shutdown).await;
    stopper.abort();
    source.close().await;
    result
}

async fn watch(
    source: &Arc<FileSource>,
    inbox: &mut inbox::Inbox,
    poll: Duration,
    mut shutdown: Shutdown,
) -> Result<(), FileSourceError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FileSourceError::Io { path, source }
    };
    let mut pending: Vec<PathBuf> = inbox
        .unfinished()
        .map_err(io(&source.config.source.work_dir()))?;
    while !shutdown.is_triggered() {
        if pending.is_empty() {
            for candidate in inbox
                .scan(Instant::now())
                .map_err(io(&source.config.source.inbox))?
            {
                if let Some(claimed) = inbox.claim(&candidate).map_err(io(&candidate.path))? {
                    pending.push(claimed);
                    // One at a time: files that appear meanwhile wait their turn, oldest first.
                    break;
                }
            }
        }
        if let Some(path) = pending.first().cloned() {
            if !path.exists() {
                // Moved away by hand (or by an operator's cleanup): nothing left to resume.
                tracing::warn!(message = "A claimed file vanished from the work directory.", file = %path.display());
                pending.remove(0);
                continue;
            }
            let worker = source.clone();
            let task_path = path.clone();
            let result = tokio::task::spawn_blocking(move || worker.process(&task_path))
                .await
                .unwrap_or(Err(IngestError::Interrupted));
            match result {
                Ok(_) => {
                    pending.remove(0);
                    continue;
                }
                Err(IngestError::Interrupted) => break,
                Err(error) if error.needs_new_producer() => {
                    return Err(FileSourceError::Fenced(error))
                }
                Err(error) => {
                    // The file stays in the work directory and is resumed from its checkpoint.
                    tracing::warn!(message = "Ingest interrupted; will resume.", %error, file = %path.display());
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.wait() => {}
        }
    }
    Ok(())
}

/// Ingests the given files once, in order (the `ingest` subcommand). Returns each outcome;
/// `Err(FilesFailed)` after printing the reports if any file failed.
pub async fn ingest_paths(
    config: FileSourceConfig,
    paths: Vec<PathBuf>,
    shutdown: Shutdown,
) -> Result<Vec<FileOutcome>, FileSourceError> {
    // The service frame (endpoint) stops with this run, not only on a signal: a one-shot
    // command must not wait on it. A signal still stops the ingest mid-file.
    let (finished, run_shutdown) = snapfeed_runtime::shutdown::channel();
    let forward = {
        let (finished, mut shutdown) = (finished.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.wait().await;
            finished.trigger();
        })
    };
    let Some(source) = FileSource::connect(config, &run_shutdown).await? else {
        forward.abort();
        return Ok(Vec::new());
    };
    let stopper = {
        let (source, mut run_shutdown) = (source.clone(), run_shutdown.clone());
        tokio::spawn(async move {
            run_shutdown.wait().await;
            source.stop_taking_work();
        })
    };
    let outcomes = ingest_each(&source, paths, &shutdown).await;
    finished.trigger();
    forward.abort();
    let _ = stopper.await;
    source.close().await;
    outcomes
}

async fn ingest_each(
    source: &Arc<FileSource>,
    paths: Vec<PathBuf>,
    shutdown: &Shutdown,
) -> Result<Vec<FileOutcome>, FileSourceError> {
    let mut outcomes = Vec::new();
    let mut failed = 0;
    let mut result = Ok(());
    for path in paths {
        if shutdown.is_triggered() {
            break;
        }
        let worker = source.clone();
        let task_path = path.clone();
        match tokio::task::spawn_blocking(move || worker.process(&task_path))
            .await
            .unwrap_or(Err(IngestError::Interrupted))
        {
            Ok(outcome) => {
                match &outcome {
                    FileOutcome::Ingested(report) => {
                        println!("{}", serde_json::to_string(report).unwrap_or_default())
                    }
                    FileOutcome::Duplicate { file, hash } => {
                        println!("{{\"file\":{file:?},\"hash\":{hash:?},\"duplicate\":true}}")
                    }
                    FileOutcome::Failed(report) => {
                        failed += 1;
                        eprintln!(
                            "{}",
                            serde_json::to_string_pretty(report).unwrap_or_default()
                        );
                    }
                }
                outcomes.push(outcome);
            }
            Err(error) => {
                result = Err(FileSourceError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(error.to_string()),
                });
                break;
            }
        }
    }
    result?;
    if failed > 0 {
        return Err(FileSourceError::FilesFailed(failed));
    }
    Ok(outcomes)
}

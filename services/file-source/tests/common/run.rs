//! file-source run in-process — `ingest_paths` to its end, `run` until stopped — and bounded
//! waits on conditions.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use file_source::ingest::{FileOutcome, FileReport};
use file_source::{FileSourceConfig, FileSourceError};
use snapfeed_harness::service_process::http_get;
use snapfeed_runtime::shutdown::{self, ShutdownTrigger};
use tokio::task::JoinHandle;

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

/// `file_source::run` in a task, until [`Running::stop`].
pub struct Running {
    trigger: ShutdownTrigger,
    task: JoinHandle<Result<(), FileSourceError>>,
    /// The endpoint, when the config named a fixed port.
    pub http: Option<SocketAddr>,
}

impl Running {
    /// Starts `run` with its endpoint on a free port it then knows.
    pub fn start(mut config: FileSourceConfig) -> Running {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        config.http.listen = http.to_string();
        let (trigger, shutdown) = shutdown::channel();
        let task = tokio::spawn(file_source::run(config, shutdown));
        Running {
            trigger,
            task,
            http: Some(http),
        }
    }

    /// Waits until `/readyz` answers 200: connected and the ledger loaded.
    pub async fn wait_ready(&self, limit: Duration) {
        let http = self.http.expect("endpoint address");
        let deadline = Instant::now() + limit;
        loop {
            let ready = tokio::task::block_in_place(|| http_get(http, "/readyz"));
            if matches!(ready, Some((200, _))) {
                return;
            }
            assert!(
                !self.task.is_finished(),
                "file-source stopped before it was ready"
            );
            assert!(Instant::now() < deadline, "not ready within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter or gauge from `/metrics`, e.g. `snapfeed_file_source_files_total{outcome="ingested"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let http = self.http.expect("endpoint address");
        let (status, body) =
            tokio::task::block_in_place(|| http_get(http, "/metrics")).expect("metrics answer");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// True when `run` returned without being asked to.
    pub fn has_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Fires shutdown and waits (bounded) for `run` to return.
    pub async fn stop(self) -> Result<(), FileSourceError> {
        self.trigger.trigger();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("run returned within 60 s of shutdown")
            .expect("run did not panic")
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits (bounded) until `condition` holds.
pub async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

//! A service run in-process — its library's `run(config, shutdown)` spawned as a tokio task —
//! and the handle a test drives it by: its endpoint, readiness, metrics and a bounded stop.
//! Dropping the handle triggers shutdown, so a failed test leaves no service running behind it.
//!
//! Endpoint calls are blocking loopback GETs made inside `block_in_place`: the tests that use
//! this run on tokio's multi-threaded runtime.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use snapfeed_runtime::shutdown::{self, Shutdown, ShutdownTrigger};
use tokio::task::{block_in_place, JoinHandle};

use crate::endpoint::{http_get, metrics_text};
use crate::metrics::metric;
use crate::wait;

/// A service's `run` in a task, until [`InProcessService::stop`].
pub struct InProcessService<E> {
    /// Names the service in failure messages.
    name: &'static str,
    trigger: ShutdownTrigger,
    /// `None` once stopped.
    task: Option<JoinHandle<Result<(), E>>>,
    /// How long `run` may take to return once shutdown is triggered.
    stop_limit: Duration,
    /// Its `/metrics`, `/healthz`, `/readyz` endpoint: the config's `[http] listen`.
    pub http: SocketAddr,
}

impl<E> fmt::Debug for InProcessService<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessService")
            .field("name", &self.name)
            .field("http", &self.http)
            .field("running", &self.task.as_ref().map(|t| !t.is_finished()))
            .finish_non_exhaustive()
    }
}

impl<E: fmt::Display + Send + 'static> InProcessService<E> {
    /// Spawns `run(shutdown)`; `http` must be the address its config listens on, `stop_limit`
    /// bounds [`InProcessService::stop`].
    pub fn spawn<F>(
        name: &'static str,
        http: SocketAddr,
        stop_limit: Duration,
        run: impl FnOnce(Shutdown) -> F,
    ) -> InProcessService<E>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        init_logging();
        let (trigger, shutdown) = shutdown::channel();
        let task = tokio::spawn(run(shutdown));
        InProcessService {
            name,
            trigger,
            task: Some(task),
            stop_limit,
            http,
        }
    }

    /// GET `path` on its endpoint.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        block_in_place(|| http_get(self.http, path))
    }

    /// True while `run` has not returned.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Waits until `/readyz` answers 200 (panics if `run` returns first, or after `limit`).
    pub async fn wait_ready(&self, limit: Duration) {
        wait::poll(limit, Duration::from_millis(50), || {
            assert!(
                self.is_running(),
                "{} stopped before it was ready",
                self.name
            );
            match self.get("/readyz") {
                Some((200, _)) => Ok(()),
                _ => Err(format!("{} not ready after {limit:?}", self.name)),
            }
        })
        .await;
    }

    /// Its `/metrics` text.
    pub fn metrics(&self) -> String {
        block_in_place(|| metrics_text(self.http))
    }

    /// One series of its metrics (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics(), series).unwrap_or(0.0)
    }

    /// Waits until `series` reads exactly `value`.
    pub async fn wait_metric(&self, series: &str, value: f64, limit: Duration) {
        wait::poll(limit, Duration::from_millis(100), || {
            let now = self.metric(series);
            (now == value)
                .then_some(())
                .ok_or_else(|| format!("{series} is {now}, not {value}, after {limit:?}"))
        })
        .await;
    }

    /// Waits until `series` reads at least `value`; returns the reading.
    pub async fn wait_metric_at_least(&self, series: &str, value: f64, limit: Duration) -> f64 {
        wait::poll(limit, Duration::from_millis(100), || {
            let now = self.metric(series);
            (now >= value)
                .then_some(now)
                .ok_or_else(|| format!("{series} is {now}, not >= {value}, after {limit:?}"))
        })
        .await
    }

    /// Triggers shutdown and waits (bounded) for `run` to return `Ok`; panics otherwise.
    pub async fn stop(self) {
        let name = self.name;
        if let Err(error) = self.stop_result().await {
            panic!("{name} returned an error: {error}");
        }
    }

    /// Triggers shutdown and waits (bounded) for `run` to return; returns what it returned
    /// (panics if it does not return in time, or panicked).
    pub async fn stop_result(mut self) -> Result<(), E> {
        self.trigger.trigger();
        let task = self.task.take().expect("stopped only once");
        tokio::time::timeout(self.stop_limit, task)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not stop within {:?} of shutdown",
                    self.name, self.stop_limit
                )
            })
            .unwrap_or_else(|e| panic!("{} task panicked: {e}", self.name))
    }
}

impl<E> Drop for InProcessService<E> {
    fn drop(&mut self) {
        self.trigger.trigger();
    }
}

/// Logs of in-process services go to stderr only when `SNAPFEED_TEST_LOG` is set to a level or
/// filter (they are not captured by the test harness).
pub fn init_logging() {
    if let Ok(level) = std::env::var("SNAPFEED_TEST_LOG") {
        snapfeed_runtime::telemetry::init(&snapfeed_runtime::telemetry::LogConfig {
            format: snapfeed_runtime::telemetry::LogFormat::Human,
            level,
        });
    }
}

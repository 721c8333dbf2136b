//! The stage's own thread and the bounded shutdown around it.
//!
//! Every stage does its work — librdkafka calls, file reads, the consume loop — on one
//! dedicated thread ([`StageThread`]), so no blocking call ever runs on an async worker; the
//! async runtime serves the endpoint, signals and (in api-sink) the HTTP lanes. Shutdown is
//! explicit: the signal sets the thread's stop flag, the stage drains within
//! `shutdown.drain_timeout_ms`, and the join is bounded — a stage stuck in a call is reported and
//! left behind rather than holding the process hostage. A stage that ends on its own (a fatal
//! error such as a fenced producer) ends the service with its error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::RuntimeError;

/// A stage running on its dedicated thread.
#[derive(Debug)]
pub struct StageThread<E> {
    name: String,
    /// Set to ask the stage to stop taking work and drain.
    stop: Arc<AtomicBool>,
    /// The stage's result when it ends (on its own or after `stop`).
    ended: oneshot::Receiver<Result<(), E>>,
}

impl<E: Send + 'static> StageThread<E> {
    /// Starts `work` on a thread named `name`; `work` gets the stop flag and returns when it is
    /// set (after draining) or when it cannot go on.
    pub fn spawn(
        name: &str,
        work: impl FnOnce(&AtomicBool) -> Result<(), E> + Send + 'static,
    ) -> Result<StageThread<E>, RuntimeError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (done, ended) = oneshot::channel();
        let flag = Arc::clone(&stop);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let _ = done.send(work(&flag));
            })
            .map_err(|source| RuntimeError::Thread {
                name: name.to_string(),
                source,
            })?;
        Ok(StageThread {
            name: name.to_string(),
            stop,
            ended,
        })
    }

    /// Waits until the stage ends on its own; returns its result.
    pub(super) async fn ended(&mut self) -> Result<(), E>
    where
        E: From<RuntimeError>,
    {
        match (&mut self.ended).await {
            Ok(result) => result,
            Err(_) => Err(RuntimeError::StagePanicked {
                name: self.name.clone(),
            }
            .into()),
        }
    }

    /// Asks the stage to stop and waits at most `bound` for it to drain.
    pub(super) async fn stop(self, bound: Duration) -> Result<(), E>
    where
        E: From<RuntimeError>,
    {
        self.stop.store(true, Ordering::Relaxed);
        match tokio::time::timeout(bound, self.ended).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RuntimeError::StagePanicked { name: self.name }.into()),
            Err(_) => {
                // Its open work is abandoned; the next owner redoes it from the committed state.
                tracing::warn!(message = "Stage did not stop within the drain bound; leaving it.", stage = %self.name, bound_ms = bound.as_millis() as u64);
                Ok(())
            }
        }
    }
}

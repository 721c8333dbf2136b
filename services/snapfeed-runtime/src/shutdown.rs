//! Shutdown: one trigger, many listeners. The first SIGTERM or SIGINT fires the trigger — every
//! stage stops taking work and drains within `shutdown.drain_timeout_ms`; a second signal exits
//! the process at once (exit code 130), for an operator who means it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::ConfigError;

/// The `[shutdown]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long a stage may take to finish or abort its open work and close its Kafka clients
    /// after the signal. Keep it below the orchestrator's grace period (Kubernetes: 30 s).
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

fn default_drain_timeout_ms() -> u64 {
    20_000
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_ms: default_drain_timeout_ms(),
        }
    }
}

impl ShutdownConfig {
    /// Range check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.drain_timeout_ms < 100 {
            return Err(ConfigError::invalid(
                "shutdown.drain_timeout_ms",
                self.drain_timeout_ms,
                "at least 100",
            ));
        }
        Ok(())
    }

    /// The drain bound.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

/// Fires shutdown.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    /// Tells every listener to stop taking work.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

/// Listens for shutdown; cheap to clone into every task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// True once shutdown has been triggered.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes when shutdown is triggered (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means every trigger was dropped: nobody can stop us any more, so stop now.
        let _ = self.rx.wait_for(|triggered| *triggered).await;
    }
}

/// A connected trigger and listener.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

/// Fires `trigger` on the first SIGTERM/SIGINT; exits the process with 130 on the second.
pub fn trigger_on_signals(trigger: ShutdownTrigger) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        for count in 1.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if count == 1 {
                tracing::info!(
                    message = "Shutdown requested; draining. Signal again to exit at once."
                );
                trigger.trigger();
            } else {
                tracing::warn!(message = "Second signal; exiting without draining.");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_sees_the_trigger_even_late() {
        let (trigger, shutdown) = channel();
        let mut early = shutdown.clone();
        let waiter = tokio::spawn(async move { early.wait().await });
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        let mut late = shutdown.clone();
        tokio::time::timeout(Duration::from_secs(1), late.wait())
            .await
            .unwrap();
        assert!(late.is_triggered());
    }
}

//! A service binary run as a separate OS process, as in production: started with a config file
//! and environment overrides, probed on `/healthz` / `/readyz` / `/metrics`, stopped with SIGTERM
//! (drain) or SIGKILL (crash). Its stderr goes to a log file the test can read (e.g. to prove no
//! health data was logged). Only processes started here are ever signalled.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use snapfeed_runtime::kafka::ProcessingGuarantee;

use crate::broker::{stop_process, StopSignal};
// The fault suite and the demo reach the GET here, where it used to live.
pub use crate::endpoint::http_get;

/// A running service process.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    /// The `/metrics` endpoint address.
    pub http: SocketAddr,
    log: PathBuf,
}

impl ServiceProcess {
    /// Starts `binary run --config <config>` in `cwd` with `env` overrides; the HTTP endpoint is
    /// put on a free port. Logs go to `log`.
    pub fn start(
        binary: &Path,
        config: &Path,
        cwd: &Path,
        env: &[(String, String)],
        log: &Path,
    ) -> ServiceProcess {
        let http = crate::endpoint::free_addr();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .arg("run")
            .current_dir(cwd)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SNAPFEED_HTTP__LISTEN", http.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        ServiceProcess {
            child,
            http,
            log: log.to_path_buf(),
        }
    }

    /// GET `path` on the service's endpoint: (status, body), or `None` if it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http, path)
    }

    /// Waits until `/readyz` answers 200 (panics with the log after `limit`, or if the process exits).
    pub fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "service exited with {status} before ready; log:\n{}",
                    self.log_text()
                );
            }
            if matches!(self.get("/readyz"), Some((200, _))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready after {limit:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the exit; returns the status and how long it took.
    pub fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        signal(&self.child, libc::SIGTERM);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                stop_process(&mut self.child, StopSignal::Kill);
                panic!(
                    "did not exit within {limit:?} of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        stop_process(&mut self.child, StopSignal::Kill);
    }

    /// Waits for the process to exit by itself (bounded).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                stop_process(&mut self.child, StopSignal::Kill);
                panic!("did not exit within {limit:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        stop_process(&mut self.child, StopSignal::Kill);
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; the pid is our own unreaped child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Environment overrides that point a service at `broker` and `pipeline`, from the repository
/// root (schemas, example configs), with a short drain bound.
pub fn service_env(broker: &crate::broker::TestBroker, pipeline: &str) -> Vec<(String, String)> {
    let guarantee = guarantee_name(broker.guarantee());
    [
        ("SNAPFEED_KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap()),
        ("SNAPFEED_KAFKA__REQUEST_TIMEOUT_MS", "10000"),
        ("SNAPFEED_PIPELINE__NAME", pipeline),
        ("SNAPFEED_PIPELINE__PROCESSING_GUARANTEE", guarantee),
        ("SNAPFEED_SHUTDOWN__DRAIN_TIMEOUT_MS", "5000"),
        ("SNAPFEED_LOG__FORMAT", "human"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `"exactly_once"` / `"at_least_once"`, as a config spells `pipeline.processing_guarantee`.
pub fn guarantee_name(guarantee: ProcessingGuarantee) -> &'static str {
    match guarantee {
        ProcessingGuarantee::ExactlyOnce => "exactly_once",
        ProcessingGuarantee::AtLeastOnce => "at_least_once",
    }
}

/// Prints the last lines of a service log if the test panics while this is alive (for
/// diagnosing a failed run); keep one per log, e.g. `let _log = LogOnPanic(path);`.
#[derive(Debug)]
pub struct LogOnPanic(pub PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            eprintln!(
                "--- last lines of {} ---\n{}",
                self.0.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

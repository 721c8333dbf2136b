//! A service binary run as a separate OS process, as in production: started with a config file
//! and environment overrides, probed on `/healthz` / `/readyz` / `/metrics`, stopped with SIGTERM
//! (drain) or SIGKILL (crash). Its stderr goes to a log file the test can read (e.g. to prove no
//! health data was logged). Only processes started here are ever signalled.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{stop_process, StopSignal};

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
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let http: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
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

/// A minimal HTTP/1.1 GET over loopback: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Environment overrides that point a service at `broker` and `pipeline`, from the repository
/// root (schemas, example configs), with a short drain bound.
pub fn service_env(broker: &crate::broker::TestBroker, pipeline: &str) -> Vec<(String, String)> {
    let guarantee = match broker.guarantee() {
        snapfeed_runtime::kafka::ProcessingGuarantee::ExactlyOnce => "exactly_once",
        snapfeed_runtime::kafka::ProcessingGuarantee::AtLeastOnce => "at_least_once",
    };
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

/// The promise every binary keeps: started with its example config against `broker`, it
/// reports ready, serves its metrics, and exits 0 within the drain bound on SIGTERM.
pub async fn assert_binary_lifecycle(binary: &Path, service: &str, extra_env: &[(String, String)]) {
    let broker = crate::broker::TestBroker::from_env();
    let pipeline = broker.pipeline(&format!("life-{service}"), 3).await;
    let root = crate::broker::repo_root();
    let config = root.join("deploy/config").join(format!("{service}.toml"));
    let logs = tempfile::tempdir().expect("log dir");
    let mut env = service_env(&broker, &pipeline.name);
    env.extend_from_slice(extra_env);
    let binary = binary.to_path_buf();
    let log = logs.path().join(format!("{service}.log"));
    let (status, took, metrics) = tokio::task::spawn_blocking(move || {
        let mut process = ServiceProcess::start(&binary, &config, &root, &env, &log);
        process.wait_ready(Duration::from_secs(60));
        let (code, metrics) = process.get("/metrics").expect("metrics answer");
        assert_eq!(code, 200);
        assert_eq!(process.get("/healthz").map(|r| r.0), Some(200));
        let (status, took) = process.terminate(Duration::from_secs(15));
        (status, took, metrics)
    })
    .await
    .expect("lifecycle");
    let prefix = format!("snapfeed_{}_build_info", service.replace('-', "_"));
    assert!(
        metrics.contains(&prefix),
        "{prefix} missing from /metrics:\n{metrics}"
    );
    assert!(status.success(), "exit status {status} after SIGTERM");
    // The drain bound is 5 s; closing must stay within it (plus a margin for a loaded machine).
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} to exit after SIGTERM"
    );
}

//! The checks every service binary passes the same way, run against its example config
//! (`deploy/config/<service>.toml`) from the repository root:
//!
//! - [`assert_binary_lifecycle`]: against the test broker it reports ready, serves its
//!   metrics, exits 0 within the drain bound on SIGTERM, and logs without colour codes to a
//!   file;
//! - [`assert_check_config_redacts_secrets`]: `check-config` prints the effective config with
//!   secrets redacted;
//! - [`assert_preflight`]: `check-config --connect` passes the broker, topics and mapping, and
//!   names an unreachable broker;
//! - [`assert_wrong_config_value_is_named`]: a value of the wrong type stops it at start (exit
//!   2), naming the key, the value, what was expected and the environment variable it came from.
//!
//! Each service's `tests/lifecycle.rs` calls them with its binary, plus its own refusals.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::broker::repo_root;
use crate::service_process::{service_env, ServiceProcess};

/// The promise every binary keeps: started with its example config against `broker`, it
/// reports ready, serves its metrics, and exits 0 within the drain bound on SIGTERM.
pub async fn assert_binary_lifecycle(binary: &Path, service: &str, extra_env: &[(String, String)]) {
    let broker = crate::broker::TestBroker::from_env();
    let pipeline = broker.pipeline(&format!("life-{service}"), 3).await;
    let root = repo_root();
    let config = root.join("deploy/config").join(format!("{service}.toml"));
    let logs = tempfile::tempdir().expect("log dir");
    let mut env = service_env(&broker, &pipeline.name);
    env.extend_from_slice(extra_env);
    let binary = binary.to_path_buf();
    let log = logs.path().join(format!("{service}.log"));
    let (status, took, metrics, log_text) = tokio::task::spawn_blocking(move || {
        let mut process = ServiceProcess::start(&binary, &config, &root, &env, &log);
        process.wait_ready(Duration::from_secs(60));
        let (code, metrics) = process.get("/metrics").expect("metrics answer");
        assert_eq!(code, 200);
        assert_eq!(process.get("/healthz").map(|r| r.0), Some(200));
        let (status, took) = process.terminate(Duration::from_secs(15));
        (status, took, metrics, process.log_text())
    })
    .await
    .expect("lifecycle");
    let prefix = format!("snapfeed_{}_build_info", service.replace('-', "_"));
    assert!(
        metrics.contains(&prefix),
        "{prefix} missing from /metrics:\n{metrics}"
    );
    assert!(status.success(), "exit status {status} after SIGTERM");
    // Its log went to a file, not a terminal: plain text, no colour codes.
    assert!(
        !log_text.contains('\u{1b}'),
        "ANSI escape codes in a log written to a file:\n{log_text}"
    );
    // The drain bound is 5 s; closing must stay within it (plus a margin for a loaded machine).
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} to exit after SIGTERM"
    );
}

/// `<binary> --config deploy/config/<service>.toml check-config --connect` against the test
/// broker, with the pipeline's topics created: the broker, every topic and the mapping pass, and
/// the exit code agrees with the report (`extra_env` makes the service's own checks pass too:
/// then exit 0 is required, except on the mock cluster, which cannot describe topic configs).
/// Then with the broker unreachable: exit 1, the broker check failed, named in the summary.
pub async fn assert_preflight(binary: &Path, service: &str, extra_env: &[(String, String)]) {
    let broker = crate::broker::TestBroker::from_env();
    let pipeline = broker.pipeline(&format!("preflight-{service}"), 2).await;
    let mut env = service_env(&broker, &pipeline.name);
    env.extend_from_slice(extra_env);
    env.push(("SNAPFEED_KAFKA__REQUEST_TIMEOUT_MS".into(), "3000".into()));
    let run = |env: &[(String, String)]| {
        let output = Command::new(binary)
            .current_dir(repo_root())
            .args([
                "--config",
                &format!("deploy/config/{service}.toml"),
                "check-config",
                "--connect",
            ])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run check-config --connect");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, report) = tokio::task::block_in_place(|| run(&env));
    let starts = |prefix: &str| report.lines().any(|l| l.starts_with(prefix));
    assert!(starts("ok    broker"), "{report}");
    assert!(starts("ok    co-partitioning"), "{report}");
    assert!(
        starts(&format!("ok    topic {}.changes", pipeline.name)),
        "{report}"
    );
    assert!(starts("ok    mapping "), "{report}");
    let failed = report.lines().any(|l| l.starts_with("FAIL"));
    assert_eq!(code, Some(if failed { 1 } else { 0 }), "{report}");
    if broker.kind() != crate::broker::BrokerKind::Mock {
        assert!(!failed, "{report}");
    }

    let closed = crate::endpoint::free_addr().to_string();
    env.push(("SNAPFEED_KAFKA__BOOTSTRAP_SERVERS".into(), closed.clone()));
    let (code, report) = tokio::task::block_in_place(|| run(&env));
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("FAIL  broker") && l.contains(&closed)),
        "{report}"
    );
    assert!(
        report.contains("preflight FAILED") && report.contains("broker"),
        "{report}"
    );
}

/// `<binary> --config deploy/config/<service>.toml check-config`, with a secret passed through
/// the environment: succeeds, prints the effective config, and never the secret.
pub fn assert_check_config_redacts_secrets(binary: &Path, service: &str) {
    let output = Command::new(binary)
        .current_dir(repo_root())
        .args([
            "--config",
            &format!("deploy/config/{service}.toml"),
            "check-config",
        ])
        .env(
            "SNAPFEED_KAFKA__LIBRDKAFKA_OPTIONS__SASL_PASSWORD",
            "hunter2-secret",
        )
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("bootstrap_servers = \"localhost:9092\""),
        "{stdout}"
    );
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(!stdout.contains("hunter2-secret"), "{stdout}");
}

/// `<binary> --config deploy/config/<service>.toml run` with `shutdown.drain_timeout_ms` set to
/// text through the environment: exit 2 at start, and the error names the key, the value, the
/// expected type and the variable.
pub fn assert_wrong_config_value_is_named(binary: &Path, service: &str) {
    let output = Command::new(binary)
        .current_dir(repo_root())
        .args(["--config", &format!("deploy/config/{service}.toml"), "run"])
        .env("SNAPFEED_SHUTDOWN__DRAIN_TIMEOUT_MS", "soon")
        .output()
        .expect("run with a wrong value");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("shutdown.drain_timeout_ms"), "{stderr}");
    assert!(stderr.contains("\"soon\""), "{stderr}");
    assert!(stderr.contains("u64"), "{stderr}");
    assert!(
        stderr.contains("SNAPFEED_SHUTDOWN__DRAIN_TIMEOUT_MS"),
        "{stderr}"
    );
}

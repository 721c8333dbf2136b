//! The api-sink binary, as a separate process against the test broker: ready, metrics, clean exit
//! on SIGTERM; and its refusals at start.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::process::Command;

use snapfeed_harness::broker::repo_root;
use snapfeed_harness::service_process::assert_binary_lifecycle;

const BINARY: &str = env!("CARGO_BIN_EXE_api-sink");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_ready_serves_metrics_and_drains_on_sigterm() {
    // The example config reads the API key from COMMCARE_API_KEY (secrets only by reference).
    assert_binary_lifecycle(
        Path::new(BINARY),
        "api-sink",
        &[("COMMCARE_API_KEY".to_string(), "test-key".to_string())],
    )
    .await;
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let output = Command::new(BINARY)
        .current_dir(repo_root())
        .args(["--config", "deploy/config/api-sink.toml", "check-config"])
        .env(
            "SNAPFEED_KAFKA__LIBRDKAFKA_OPTIONS__SASL_PASSWORD",
            "hunter2-secret",
        )
        .output()
        .unwrap();
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

#[test]
fn a_wrong_config_value_fails_at_start_naming_key_value_and_expectation() {
    let output = Command::new(BINARY)
        .current_dir(repo_root())
        .args(["--config", "deploy/config/api-sink.toml", "run"])
        .env("SNAPFEED_SHUTDOWN__DRAIN_TIMEOUT_MS", "soon")
        .output()
        .unwrap();
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

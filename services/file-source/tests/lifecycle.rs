//! The file-source binary, as a separate process against the test broker: ready, metrics, clean exit
//! on SIGTERM; and its refusals at start.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;

use snapfeed_harness::lifecycle::{
    assert_binary_lifecycle, assert_check_config_redacts_secrets, assert_preflight,
    assert_wrong_config_value_is_named,
};

const BINARY: &str = env!("CARGO_BIN_EXE_file-source");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_ready_serves_metrics_and_drains_on_sigterm() {
    let inbox = tempfile::tempdir().unwrap();
    assert_binary_lifecycle(
        Path::new(BINARY),
        "file-source",
        &[(
            "SNAPFEED_SOURCE__INBOX".to_string(),
            inbox.path().display().to_string(),
        )],
    )
    .await;
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    assert_check_config_redacts_secrets(Path::new(BINARY), "file-source");
}

#[test]
fn a_wrong_config_value_fails_at_start_naming_key_value_and_expectation() {
    assert_wrong_config_value_is_named(Path::new(BINARY), "file-source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_connect_checks_broker_topics_and_mapping() {
    let inbox = tempfile::tempdir().unwrap();
    assert_preflight(
        Path::new(BINARY),
        "file-source",
        &[(
            "SNAPFEED_SOURCE__INBOX".to_string(),
            inbox.path().display().to_string(),
        )],
    )
    .await;
}

//! The api-sink binary, as a separate process against the test broker: ready, metrics, clean exit
//! on SIGTERM; and its refusals at start.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;

use snapfeed_harness::lifecycle::{
    assert_binary_lifecycle, assert_check_config_redacts_secrets,
    assert_wrong_config_value_is_named,
};

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
    assert_check_config_redacts_secrets(Path::new(BINARY), "api-sink");
}

#[test]
fn a_wrong_config_value_fails_at_start_naming_key_value_and_expectation() {
    assert_wrong_config_value_is_named(Path::new(BINARY), "api-sink");
}

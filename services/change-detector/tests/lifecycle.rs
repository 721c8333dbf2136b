//! The change-detector binary, as a separate process against the test broker: ready, metrics, clean exit
//! on SIGTERM; and its refusals at start.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::process::Command;

use snapfeed_harness::broker::repo_root;
use snapfeed_harness::lifecycle::{
    assert_binary_lifecycle, assert_check_config_redacts_secrets, assert_preflight,
    assert_wrong_config_value_is_named,
};

const BINARY: &str = env!("CARGO_BIN_EXE_change-detector");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_ready_serves_metrics_and_drains_on_sigterm() {
    assert_binary_lifecycle(Path::new(BINARY), "change-detector", &[]).await;
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    assert_check_config_redacts_secrets(Path::new(BINARY), "change-detector");
}

#[test]
fn a_wrong_config_value_fails_at_start_naming_key_value_and_expectation() {
    assert_wrong_config_value_is_named(Path::new(BINARY), "change-detector");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_when_snapshots_state_and_changes_are_not_copartitioned() {
    use snapfeed_harness::broker::TestBroker;
    use snapfeed_harness::service_process::{service_env, ServiceProcess};
    use snapfeed_runtime::topics::{TopicNameOverrides, TopicNames, TopicsConfig};

    let broker = TestBroker::from_env();
    let pipeline = format!("t-copart-{}", std::process::id());
    let names = TopicNames::resolve(&pipeline, &TopicNameOverrides::default());
    let mut specs = names.specs(&TopicsConfig {
        partitions: 3,
        replication_factor: 1,
        ..TopicsConfig::default()
    });
    for spec in &mut specs {
        if spec.name == names.state {
            spec.partitions = 2;
        }
    }
    broker.create_topics(&specs).await;

    let logs = tempfile::tempdir().unwrap();
    let env = service_env(&broker, &pipeline);
    let log = logs.path().join("detector.log");
    let (status, text) = tokio::task::spawn_blocking(move || {
        let root = repo_root();
        let config = root.join("deploy/config/change-detector.toml");
        let mut process = ServiceProcess::start(Path::new(BINARY), &config, &root, &env, &log);
        let status = process.wait_exit(std::time::Duration::from_secs(60));
        (status, process.log_text())
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("not co-partitioned"), "{text}");
    assert!(
        text.contains(&format!("\"{}\" has 2", names.state)),
        "{text}"
    );
    assert!(
        text.contains(&format!("\"{}\" has 3", names.snapshots)),
        "{text}"
    );
}

#[test]
fn init_topics_creates_missing_topics_with_their_policies_and_verifies_them() {
    use snapfeed_harness::broker::{BrokerKind, TestBroker};
    let broker = TestBroker::from_env();
    if broker.kind() == BrokerKind::Mock {
        // Gap (mock cluster): no admin API, so topics cannot be created through it.
        eprintln!("skipped on the mock cluster: no admin API");
        return;
    }
    let pipeline = format!("t-init-{}", std::process::id());
    let run = || {
        Command::new(BINARY)
            .current_dir(repo_root())
            .args([
                "--config",
                "deploy/config/change-detector.toml",
                "init-topics",
            ])
            .env("SNAPFEED_KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap())
            .env("SNAPFEED_PIPELINE__NAME", &pipeline)
            .env("SNAPFEED_TOPICS__PARTITIONS", "3")
            .env("SNAPFEED_TOPICS__REPLICATION_FACTOR", "1")
            .output()
            .unwrap()
    };
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for (topic, partitions, policy) in [
        ("snapshots", 3, "delete"),
        ("state", 3, "compact"),
        ("changes", 3, "delete"),
        ("files", 1, "compact"),
        ("dead-letters", 3, "delete"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{pipeline}.{topic} ")))
            .unwrap_or_else(|| panic!("no line for {topic}:\n{stdout}"));
        assert!(line.contains(&format!("{partitions} partitions")), "{line}");
        assert!(line.contains(policy), "{line}");
        assert!(line.ends_with("created"), "{line}");
    }
    // It tells a first-time operator what to do next.
    assert!(
        stdout.contains(snapfeed_runtime::cli::NEXT_AFTER_INIT_TOPICS),
        "no next steps after the report:\n{stdout}"
    );
    // A second run finds them all and still verifies co-partitioning.
    let second = run();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with("exists")).count(),
        7,
        "{stdout}"
    );
    assert!(stdout.contains("co-partitioned"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_connect_checks_broker_topics_and_mapping() {
    assert_preflight(Path::new(BINARY), "change-detector", &[]).await;
}

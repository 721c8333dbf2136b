//! `check-config --connect` as an operator runs it (the binary), on every broker
//! (`SNAPFEED_TEST_BROKER`): a ready pipeline passes, and each of an unreachable broker, a
//! missing topic, a non-compacted `state`, a missing secret, an unreachable API and a template
//! that does not render fails its own check, named, with exit 1 — never printing a secret.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use snapfeed_harness::broker::{repo_root, BrokerKind};
use snapfeed_runtime::topics::{CleanupPolicy, TopicNameOverrides, TopicNames, TopicsConfig};
use tokio::task::block_in_place;

use common::{Fixture, SinkOptions, BINARY};

/// Runs `check-config --connect` on `config`; (exit code, stdout).
fn preflight(config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = block_in_place(|| {
        Command::new(BINARY)
            .current_dir(repo_root())
            .arg("--config")
            .arg(config)
            .args(["check-config", "--connect"])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    });
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The line of check `name` (`ok    name …` or `FAIL  name …`).
fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| {
            l.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{name} ")))
        })
        .unwrap_or_else(|| panic!("no check {name:?} in:\n{report}"))
}

fn failed(report: &str, name: &str) -> bool {
    line(report, name).starts_with("FAIL")
}

/// The mock cluster has no admin API, so topic configs cannot be read there (a gap).
fn reads_topic_configs(kind: BrokerKind) -> bool {
    kind != BrokerKind::Mock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_passes_a_ready_pipeline_and_names_each_failure() {
    let f = Fixture::new("preflight", 2).await;
    let kind = f.broker.kind();
    let names = f.pipeline.topics.clone();
    let write = |name: &str, text: String| {
        let path = f.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    // Short Kafka requests: on the mock cluster DescribeConfigs waits for its timeout.
    let good = f
        .sink_toml(&SinkOptions::default(), "127.0.0.1:0")
        .replace("request_timeout_ms = 10000", "request_timeout_ms = 3000");

    // A ready pipeline.
    let (code, report) = preflight(&write("good", good.clone()), &[]);
    println!("{report}");
    for name in [
        "schemas",
        "broker",
        "co-partitioning",
        "mapping sink.dataset_mapping",
        "request profile",
        "auth",
        "api",
    ] {
        assert!(line(&report, name).starts_with("ok"), "{name}:\n{report}");
    }
    assert!(line(&report, &format!("topic {}", names.state)).contains("2 partitions"));
    if reads_topic_configs(kind) {
        assert!(
            line(&report, &format!("cleanup.policy {}", names.state)).starts_with("ok"),
            "{report}"
        );
        assert_eq!(code, Some(0), "{report}");
        assert!(report.contains("preflight passed"), "{report}");
    } else {
        assert!(failed(&report, "topic configs"), "{report}");
    }

    // An unreachable broker.
    let closed = snapfeed_harness::endpoint::free_addr().to_string();
    let (code, report) = preflight(
        &write("no-broker", good.replace(f.broker.bootstrap(), &closed)),
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(line(&report, "broker").contains(&closed), "{report}");

    // A pipeline whose topics do not exist.
    let missing = TopicNames::resolve("t-preflight-none", &TopicNameOverrides::default());
    let (code, report) = preflight(
        &write(
            "no-topics",
            good.replace(&f.pipeline.name, "t-preflight-none"),
        ),
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(
        line(&report, &format!("topic {}", missing.changes)).contains("init-topics"),
        "{report}"
    );

    // A secret whose variable is not set: named, and the value of one that is set never shown.
    let with_key = SinkOptions {
        auth: Some(vec![
            "type = \"api_key\"".into(),
            "user = \"integration@example.org\"".into(),
            "key = { env = \"SNAPFEED_PREFLIGHT_API_KEY\" }".into(),
        ]),
        ..SinkOptions::default()
    };
    let keyed = write(
        "keyed",
        f.sink_toml(&with_key, "127.0.0.1:0")
            .replace("request_timeout_ms = 10000", "request_timeout_ms = 3000"),
    );
    let (code, report) = preflight(&keyed, &[("SNAPFEED_PREFLIGHT_API_KEY", "")]);
    assert_eq!(code, Some(1));
    assert!(
        line(&report, "secret sink.auth.key").contains("SNAPFEED_PREFLIGHT_API_KEY"),
        "{report}"
    );
    let (_, report) = preflight(&keyed, &[("SNAPFEED_PREFLIGHT_API_KEY", "k3y-v4lue-9")]);
    assert!(
        line(&report, "secret sink.auth.key").starts_with("ok"),
        "{report}"
    );
    assert!(!report.contains("k3y-v4lue-9"), "{report}");

    // An API that does not answer.
    let nobody = format!("http://{}", snapfeed_harness::endpoint::free_addr());
    let (code, report) = preflight(&write("no-api", good.replace(&f.stub.url(), &nobody)), &[]);
    assert_eq!(code, Some(1));
    assert!(line(&report, "api").contains("no answer"), "{report}");

    // A template that cannot render a change.
    let template = f.dir.path().join("bad.j2");
    std::fs::write(
        &template,
        "{\"method\": \"POST\", \"url\": \"{{ api_base }}/x\",\n \"body\": {{ record.no_such_field | tojson }}}\n",
    )
    .unwrap();
    let templated = good
        .replace("profile = \"json\"", "profile = \"template\"")
        .replace("[sink.json]\npath = \"/changes\"\n", "")
        + &format!(
            "[sink.template]\ntemplate_file = {:?}\n",
            template.display().to_string()
        );
    let (code, report) = preflight(&write("bad-template", templated), &[]);
    assert_eq!(code, Some(1));
    let profile = line(&report, "request profile");
    assert!(
        profile.starts_with("FAIL") && profile.contains("bad.j2"),
        "{report}"
    );

    // A `state` topic that deletes by age instead of compacting.
    if reads_topic_configs(kind) {
        let name = format!("t-preflight-delete-{}", std::process::id());
        let topics = TopicNames::resolve(&name, &TopicNameOverrides::default());
        let mut specs = topics.specs(&TopicsConfig {
            partitions: 2,
            replication_factor: 1,
            ..TopicsConfig::default()
        });
        for spec in &mut specs {
            if spec.name == topics.state {
                spec.cleanup_policy = CleanupPolicy::Delete;
            }
        }
        f.broker.create_topics(&specs).await;
        let (code, report) = preflight(
            &write("deleting-state", good.replace(&f.pipeline.name, &name)),
            &[],
        );
        assert_eq!(code, Some(1));
        let policy = line(&report, &format!("cleanup.policy {}", topics.state));
        assert!(
            policy.starts_with("FAIL") && policy.contains("compact"),
            "{report}"
        );
    }
}

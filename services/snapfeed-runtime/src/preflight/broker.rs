//! The broker part of the preflight: the cluster answers, every topic exists with the
//! co-partitioning the stages need, and each topic's cleanup policy and retention are what
//! `[topics]` configures (DescribeConfigs).

use std::time::Duration;

use rdkafka::admin::{AdminOptions, ResourceSpecifier};

use super::Check;
use crate::service::{admin_client, fetch_partition_counts, CommonSections};
use crate::topics::{CleanupPolicy, TopicSpec};

/// The broker, the topics, their partitioning and their configs.
pub(super) async fn broker_checks(service: &'static str, common: CommonSections<'_>) -> Vec<Check> {
    let bootstrap = &common.kafka.bootstrap_servers;
    let names = common.topic_names();
    let specs = names.specs(common.topics);
    let all: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let admin = match admin_client(common.kafka, service) {
        Ok(admin) => admin,
        Err(error) => return vec![Check::failed("broker", error.to_string())],
    };
    let counts = match fetch_partition_counts(&admin, common.kafka, &all).await {
        Ok(counts) => counts,
        Err(error) => {
            return vec![Check::failed(
                "broker",
                format!("cannot reach kafka.bootstrap_servers = {bootstrap:?}: {error}"),
            )]
        }
    };
    // A topic the cluster does not know comes back with no partitions.
    let count = |topic: &str| counts.get(topic).copied().filter(|n| *n > 0);
    let mut checks = vec![Check::ok("broker", format!("reached {bootstrap}"))];
    for spec in &specs {
        let name = format!("topic {}", spec.name);
        checks.push(match count(&spec.name) {
            Some(n) => Check::ok(name, format!("{n} partitions")),
            None => Check::failed(
                name,
                format!(
                    "missing — run `{service} --config … init-topics` (or set topics.create_missing)"
                ),
            ),
        });
    }
    let copartitioned: Vec<(String, Option<i32>)> = names
        .copartitioned()
        .iter()
        .map(|t| (t.to_string(), count(t)))
        .collect();
    let first = copartitioned[0].1;
    checks.push(
        if copartitioned
            .iter()
            .all(|(_, n)| n.is_some() && *n == first)
        {
            Check::ok(
                "co-partitioning",
                format!(
                    "snapshots, state and changes have {} partitions",
                    first.unwrap_or(0)
                ),
            )
        } else {
            Check::failed(
                "co-partitioning",
                format!(
                    "snapshots, state and changes must have the same partition count: {}",
                    copartitioned
                        .iter()
                        .map(|(t, n)| format!(
                            "{t} {}",
                            n.map_or_else(|| "missing".to_string(), |n| n.to_string())
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        },
    );
    let present: Vec<&TopicSpec> = specs.iter().filter(|s| count(&s.name).is_some()).collect();
    checks.extend(config_checks(&admin, &present, common.kafka.request_timeout()).await);
    checks
}

/// Cleanup policy and retention of each present topic, as `[topics]` configures them.
async fn config_checks(
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    specs: &[&TopicSpec],
    timeout: Duration,
) -> Vec<Check> {
    if specs.is_empty() {
        return Vec::new();
    }
    let resources: Vec<ResourceSpecifier<'_>> = specs
        .iter()
        .map(|s| ResourceSpecifier::Topic(&s.name))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let described = match admin.describe_configs(&resources, &options).await {
        Ok(described) => described,
        Err(error) => {
            return vec![Check::failed(
                "topic configs",
                format!("cannot read the topics' configs (DescribeConfigs): {error}"),
            )]
        }
    };
    let mut checks = Vec::new();
    for (spec, result) in specs.iter().zip(described) {
        let resource = match result {
            Ok(resource) => resource,
            Err(code) => {
                checks.push(Check::failed(
                    format!("config {}", spec.name),
                    format!("DescribeConfigs answered {code}"),
                ));
                continue;
            }
        };
        let value = |key: &str| resource.get(key).and_then(|e| e.value.clone());
        let policy = value("cleanup.policy").unwrap_or_else(|| "delete".to_string());
        let compacted = policy.split(',').any(|p| p.trim() == "compact");
        let name = format!("cleanup.policy {}", spec.name);
        checks.push(match (spec.cleanup_policy, compacted) {
            (CleanupPolicy::Compact, true) | (CleanupPolicy::Delete, false) => {
                Check::ok(name, policy)
            }
            (CleanupPolicy::Compact, false) => Check::failed(
                name,
                format!("is {policy:?}; must be \"compact\": it holds the newest entry per key, which deletion by age would lose (kafka-configs --alter --add-config cleanup.policy=compact)"),
            ),
            (CleanupPolicy::Delete, true) => Check::failed(
                name,
                format!("is {policy:?}; expected \"delete\": compaction would drop history readers need"),
            ),
        });
        if let Some(expected) = spec.retention_ms {
            let name = format!("retention.ms {}", spec.name);
            let found = value("retention.ms").and_then(|v| v.parse::<i64>().ok());
            checks.push(match found {
                Some(found) if found == expected => Check::ok(name, found.to_string()),
                Some(found) => Check::failed(
                    name,
                    format!("is {found}; [topics] configures {expected} (run init-topics on a new topic, or kafka-configs --alter --add-config retention.ms={expected})"),
                ),
                None => Check::failed(name, "the broker does not report retention.ms"),
            });
        }
    }
    checks
}

//! An outcome that cannot be recorded is never passed over. When a change's receipt or dead
//! letter cannot be encoded (here: schemas deployed that no longer fit what the sink writes),
//! nothing is written in its place, the partition's committed offset stays at the change, and
//! the sink says so where an operator looks: `/readyz` turns not ready and a metric counts it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use snapfeed_harness::stub_api::{Reply, Rule};

use common::{key_version, keys_one_per_partition, Fixture, SinkOptions, TestChange};
use snapfeed_harness::metrics::metric;
use snapfeed_harness::wait;

const LIMIT: Duration = Duration::from_secs(90);

/// A copy of the repository's schemas where `source_partition` of the receipt and the dead
/// letter is a boolean: the sink's `i32` does not fit, so encoding either fails.
fn schemas_that_do_not_fit() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    snapfeed_harness::schemas::copy_schemas(dir.path());
    // The dead letter's history too: the store refuses a history its current cannot read.
    for file in [
        "delivery_receipt.avsc",
        "dead_letter.avsc",
        "history/dead_letter.v1.avsc",
    ] {
        let path = dir.path().join(file);
        let mut schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let field = schema["fields"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|f| f["name"] == "source_partition")
            .unwrap();
        field["type"] = "boolean".into();
        std::fs::write(&path, schema.to_string()).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_that_cannot_be_encoded_holds_the_offset_and_is_reported() {
    let mut f = Fixture::new("unrecordable", 3).await;
    let schemas = schemas_that_do_not_fit();
    f.schemas_dir = schemas.path().to_path_buf();
    // One change per partition: the first is delivered (its receipt cannot be encoded), the
    // second refused with a 400 (its dead letter cannot be encoded). The third partition
    // carries a later control change.
    let keys = keys_one_per_partition(3, 3);
    f.stub.add_rule(Rule::body_contains(
        keys[1].clone(),
        Reply::status(400).with_body(r#"{"error":"invalid case"}"#),
    ));
    let sink = f.start_sink(&SinkOptions::default()).await;
    let produced = f
        .produce(&[
            TestChange::new(keys[0].clone(), 1),
            TestChange::new(keys[1].clone(), 1),
        ])
        .await;
    assert!(f.stub.wait_for_requests(2, LIMIT).await);

    let passed_over = || {
        let committed = f.committed();
        produced
            .iter()
            .any(|p| committed.get(&p.partition).is_some_and(|c| *c > p.offset))
    };
    let reported = || sink.get("/readyz").is_some_and(|(status, _)| status != 200);
    wait::until(
        "the stall is reported (or an offset passes it)",
        LIMIT,
        || reported() || passed_over(),
    )
    .await;

    // A newer version behind the stalled change, then a control change on the third
    // partition. Once the control has reached the API (and stalled its own lane), the sink has
    // fetched the newer version too and had commit rounds since the stall.
    f.produce(&[TestChange::new(keys[0].clone(), 2)]).await;
    f.produce(&[TestChange::new(keys[2].clone(), 1)]).await;
    sink.wait_metric("snapfeed_api_sink_stalled_lanes", 3.0, LIMIT)
        .await;

    for topic in [
        &f.pipeline.topics.deliveries,
        &f.pipeline.topics.dead_letters,
    ] {
        let written = f.read(topic);
        assert!(
            written.is_empty(),
            "{} record(s) on {topic} in place of the outcomes that could not be encoded",
            written.len()
        );
    }
    assert!(
        !passed_over(),
        "committed {:?} past a change whose outcome was not recorded (changes at {:?})",
        f.committed(),
        produced
            .iter()
            .map(|p| (p.partition, p.offset))
            .collect::<Vec<_>>()
    );
    assert!(
        reported(),
        "/readyz stays ready while outcomes cannot be recorded"
    );
    let metrics = sink.metrics();
    assert_eq!(
        metric(
            &metrics,
            "snapfeed_api_sink_unrecordable_outcomes_total{outcome=\"receipt\"}"
        ),
        Some(2.0),
        "the first change's receipt and the control's"
    );
    assert_eq!(
        metric(
            &metrics,
            "snapfeed_api_sink_unrecordable_outcomes_total{outcome=\"dead_letter\"}"
        ),
        Some(1.0)
    );
    let sent: Vec<(String, i64)> = f.stub.requests().iter().map(key_version).collect();
    assert_eq!(
        sent.len(),
        3,
        "a stalled lane sends nothing more to the API (the newer version of {} must wait): {sent:?}",
        keys[0]
    );
    assert!(
        sent.contains(&(keys[2].clone(), 1)),
        "the control change was sent: {sent:?}"
    );
    sink.stop().await;
}

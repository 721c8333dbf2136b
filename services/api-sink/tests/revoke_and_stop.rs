//! What a lane does once its partition is no longer its own — revoked by a rebalance, or the
//! sink shutting down — while it is waiting to retry: it must give the change up (the new owner,
//! or the next start, delivers it from the committed offset), never send it later. Otherwise
//! an old version can reach the API after a newer one, and requests leave after shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use snapfeed_harness::stub_api::{RecordedRequest, Reply, Rule};
use snapfeed_harness::wait;

use common::{ends, key_version, keys_one_per_partition, Fixture, SinkOptions, TestChange};

const LIMIT: Duration = Duration::from_secs(90);

/// Requests of one sink (told apart by its `[sink.json] path`).
fn from(requests: &[RecordedRequest], path: &str) -> Vec<RecordedRequest> {
    requests
        .iter()
        .filter(|r| r.path == path)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_version_never_overtakes_a_newer_one_across_a_rebalance() {
    const PARTITIONS: i32 = 4;
    let f = Fixture::new("rebalance", PARTITIONS).await;
    let keys = keys_one_per_partition(PARTITIONS, PARTITIONS);
    // Every key's v1 is refused (503) until the API recovers; v2 is fine.
    f.stub
        .add_rule(Rule::body_contains("OLD-V1", Reply::status(503)));
    // Instance A retries patiently (up to 3 s apart); no global backoff in the way.
    let a = f
        .start_sink(
            &SinkOptions {
                json_path: "/a".into(),
                ..SinkOptions::default()
            }
            .retry("initial_backoff_ms = 3000")
            .retry("max_backoff_ms = 3000")
            .retry("global_backoff_window = 10000")
            .retry("global_backoff_failure_ratio = 1.0"),
        )
        .await;
    let changes: Vec<TestChange> = keys
        .iter()
        .map(|k| TestChange::new(k.clone(), 1).marked("OLD-V1"))
        .chain(keys.iter().map(|k| TestChange::new(k.clone(), 2)))
        .collect();
    let produced = f.produce(&changes).await;
    assert!(
        wait::within(LIMIT, || from(&f.stub.requests(), "/a").len() >= keys.len()).await,
        "A did not try every key's v1"
    );

    // Instance B joins the group: A's partitions are revoked while its lanes wait to retry v1.
    let b_started = Instant::now();
    let b = f
        .start_sink(
            &SinkOptions {
                json_path: "/b".into(),
                ..SinkOptions::default()
            }
            .retry("max_backoff_ms = 100"),
        )
        .await;
    assert!(
        wait::within(LIMIT, || !from(&f.stub.requests(), "/b").is_empty()).await,
        "B never got a partition"
    );
    let b_first = from(&f.stub.requests(), "/b")[0].at;
    eprintln!(
        "B's first request {:?} after it started",
        b_first - b_started
    );

    // The API recovers.
    f.stub.clear_rules();
    let v2: Vec<&common::Produced> = produced.iter().filter(|p| p.version == 2).collect();
    assert!(
        wait::within(LIMIT, || {
            let effects = f.stub.effects_by_idempotency_key();
            v2.iter().all(|p| effects.contains_key(&p.idempotency_key))
        })
        .await,
        "not every v2 delivered"
    );
    f.wait_committed(&ends(&produced), LIMIT).await;
    // Give a lane that still retries a revoked v1 (every ≤ 3 s) the time to show itself.
    let v1: Vec<&common::Produced> = produced.iter().filter(|p| p.version == 1).collect();
    wait::within(Duration::from_secs(5), || {
        let effects = f.stub.effects_by_idempotency_key();
        v1.iter().all(|p| {
            effects
                .get(&p.idempotency_key)
                .is_some_and(|e| e.len() >= 2)
        })
    })
    .await;
    a.stop().await;
    b.stop().await;

    let requests = f.stub.requests();
    // Which keys moved to B, and whether A kept sending them afterwards.
    let mut b_first_by_key: BTreeMap<String, Instant> = BTreeMap::new();
    for request in from(&requests, "/b") {
        b_first_by_key
            .entry(key_version(&request).0)
            .or_insert(request.at);
    }
    let stale: Vec<(String, i64, u16)> = from(&requests, "/a")
        .iter()
        .filter_map(|r| {
            let (key, version) = key_version(r);
            let moved_at = b_first_by_key.get(&key)?;
            (r.at > *moved_at).then_some((key, version, r.status))
        })
        .collect();
    // What the API ended up with, per key: the successful versions in arrival order.
    let mut delivered: BTreeMap<String, Vec<(i64, &str)>> = BTreeMap::new();
    for request in requests.iter().filter(|r| r.status == 200) {
        let (key, version) = key_version(request);
        delivered
            .entry(key)
            .or_default()
            .push((version, request.path.as_str()));
    }
    let overtaken: Vec<(&String, &Vec<(i64, &str)>)> = delivered
        .iter()
        .filter(|(_, seen)| seen.windows(2).any(|w| w[1].0 < w[0].0))
        .collect();
    assert!(
        overtaken.is_empty(),
        "an old version reached the API after a newer one (key: [(version, instance)]): \
         {overtaken:?}"
    );
    assert!(
        stale.is_empty(),
        "A kept sending changes of partitions it no longer owns (key, version, status): {stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_leaves_after_shutdown_even_during_global_backoff() {
    const PARTITIONS: i32 = 4;
    const PAUSE: Duration = Duration::from_secs(4);
    let f = Fixture::new("stop-backoff", PARTITIONS).await;
    f.stub.set_default_reply(Reply::status(503));
    // Every lane fails; the breaker opens at once and pauses everyone for 4 s, while each
    // lane's own backoff (full jitter, 0–4 s) mostly ends sooner: those lanes then wait on the
    // breaker.
    let options = SinkOptions::default()
        .sink("lanes_per_partition = 8")
        .retry(format!("initial_backoff_ms = {}", PAUSE.as_millis()))
        .retry(format!("max_backoff_ms = {}", PAUSE.as_millis()))
        .retry("global_backoff_window = 2")
        .retry("global_backoff_failure_ratio = 0.5");
    let sink = f.start_sink(&options).await;
    let changes: Vec<TestChange> = (0..32)
        .map(|n| TestChange::new(common::key(n), 1))
        .collect();
    f.produce(&changes).await;
    sink.wait_metric_at_least("snapfeed_api_sink_global_backoff_total", 1.0, LIMIT)
        .await;
    let opened = f.stub.requests()[0].at;
    // Three quarters into the pause: most lanes are past their own backoff.
    tokio::time::sleep_until((opened + PAUSE * 3 / 4).into()).await;
    let stop_at = Instant::now();
    sink.stop().await;
    let stopped_in = stop_at.elapsed();

    let late: Vec<Duration> = f
        .stub
        .requests()
        .iter()
        .filter(|r| r.at > stop_at + Duration::from_millis(200))
        .map(|r| r.at - stop_at)
        .collect();
    assert!(
        late.is_empty(),
        "{} requests sent after shutdown was triggered (at +{late:?}); stop took {stopped_in:?}",
        late.len()
    );
}

/// A change the API answers while the sink drains is recorded and committed: its receipt is
/// written and the committed offset passes it, so the next start does not send it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_delivered_during_shutdown_gets_its_receipt_and_commit() {
    const ANSWER_AFTER: Duration = Duration::from_millis(1500);
    let f = Fixture::new("stop-in-flight", 1).await;
    f.stub
        .set_default_reply(Reply::ok().with_delay(ANSWER_AFTER));
    let sink = f.start_sink(&SinkOptions::default()).await;
    let produced = f.produce(&[TestChange::new(common::key(0), 1)]).await;
    // The request has reached the API (recorded before the delay): stop while it is in flight.
    wait::poll(LIMIT, Duration::from_millis(20), || {
        (!f.stub.requests().is_empty())
            .then_some(())
            .ok_or_else(|| "the change never reached the API".to_string())
    })
    .await;
    sink.stop().await;

    assert_eq!(
        f.stub.requests().len(),
        1,
        "sent once, answered during the drain"
    );
    let receipts = f.receipts();
    assert_eq!(
        receipts.len(),
        1,
        "the change answered during the drain has no receipt: it would be sent again"
    );
    assert_eq!(
        f.committed(),
        ends(&produced),
        "the committed offset does not pass the change answered during the drain"
    );
}

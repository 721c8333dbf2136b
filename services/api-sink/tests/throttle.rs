//! The API host's rate controller, in-process against the test broker and the stub API: a 429
//! holds *every* lane (for its `Retry-After`, or for the shared backoff without one), the
//! in-flight limit falls on back-pressure and grows back, and the rate limit's burst.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use snapfeed_harness::stub_api::Reply;

use common::{key, Fixture, SinkOptions, TestChange};

const LIMIT: Duration = Duration::from_secs(90);
/// A request the client had already sent when it read the 429 still arrives after it; on
/// loopback that is well within this.
const ON_THE_WIRE: Duration = Duration::from_millis(50);

/// Many lanes busy, one request answered `refusal`: no request from any lane may arrive until
/// `quiet` has passed; then everything is delivered.
async fn every_lane_holds_after(label: &str, refusal: Reply, quiet: Duration, retry: &str) {
    const CHANGES: usize = 300;
    let f = Fixture::new(label, 4).await;
    // Enough work that, unthrottled, the other lanes would keep sending through the window.
    f.stub
        .push_replies((0..20).map(|_| Reply::ok().with_delay(Duration::from_millis(10))));
    f.stub.push_replies([refusal]);
    f.stub
        .set_default_reply(Reply::ok().with_delay(Duration::from_millis(5)));
    let changes: Vec<TestChange> = (0..CHANGES).map(|k| TestChange::new(key(k), 1)).collect();
    f.produce(&changes).await;
    let options = SinkOptions::default()
        .sink("lanes_per_partition = 4")
        .sink("max_in_flight = 8")
        .retry(retry);
    let sink = f.start_sink(&options).await;
    assert!(
        f.stub.wait_for_unique_effects(CHANGES, LIMIT).await,
        "{} of {CHANGES} delivered",
        f.stub.unique_effects()
    );
    let metrics = (
        sink.metric("snapfeed_api_sink_throttled_seconds_total"),
        sink.metrics(),
    );
    sink.stop().await;

    let requests = f.stub.requests();
    let refused = requests
        .iter()
        .find(|r| r.status == 429)
        .expect("the 429 was answered");
    let after: Vec<Duration> = requests
        .iter()
        .filter(|r| r.at > refused.at)
        .map(|r| r.at - refused.at)
        .collect();
    let inside: Vec<&Duration> = after
        .iter()
        .filter(|gap| **gap > ON_THE_WIRE && **gap < quiet)
        .collect();
    assert!(
        inside.is_empty(),
        "{} requests arrived inside the {quiet:?} the API asked for, e.g. {:?} after the 429",
        inside.len(),
        inside.first()
    );
    assert!(
        after.iter().filter(|gap| **gap <= ON_THE_WIRE).count() < 8,
        "at most the requests already in flight may arrive right after the 429"
    );
    assert!(
        after.iter().any(|gap| *gap >= quiet),
        "sending resumed after the pause"
    );
    assert!(
        metrics.0 >= quiet.as_secs_f64() * 0.99,
        "throttled {}s for a {quiet:?} pause",
        metrics.0
    );
    assert_eq!(
        snapfeed_harness::metrics::metric(
            &metrics.1,
            "snapfeed_api_sink_retries_total{reason=\"rate_limited\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_429_with_retry_after_no_lane_sends_until_it_has_passed() {
    every_lane_holds_after(
        "retry-after",
        Reply::status(429).retry_after(2),
        Duration::from_secs(2),
        // The lane's own backoff would retry after 50 ms: the pause is the header's.
        "initial_backoff_ms = 50",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_429_without_retry_after_every_lane_waits_the_shared_backoff() {
    every_lane_holds_after(
        "shared-backoff",
        Reply::status(429),
        Duration::from_secs(1),
        "initial_backoff_ms = 1000",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_falls_under_back_pressure_and_grows_back() {
    const CHANGES: usize = 200;
    let f = Fixture::new("aimd", 4).await;
    f.stub
        .set_default_reply(Reply::status(500).with_delay(Duration::from_millis(5)));
    let changes: Vec<TestChange> = (0..CHANGES).map(|k| TestChange::new(key(k), 1)).collect();
    f.produce(&changes).await;
    let options = SinkOptions::default()
        .sink("lanes_per_partition = 4")
        .sink("max_in_flight = 8");
    let sink = f.start_sink(&options).await;
    let limit = "snapfeed_api_sink_concurrency_limit";
    assert_eq!(sink.metric(limit), 8.0, "starts at max_in_flight");
    // Every request refused: halved once per round trip, down to one.
    sink.wait_metric(limit, 1.0, LIMIT).await;
    assert_eq!(f.stub.unique_effects(), 0);

    f.stub
        .set_default_reply(Reply::ok().with_delay(Duration::from_millis(5)));
    assert!(
        f.stub.wait_for_unique_effects(CHANGES, LIMIT).await,
        "{} of {CHANGES} delivered",
        f.stub.unique_effects()
    );
    // Sixteen lanes with work keep the limit in full use: successes grow it back.
    let grown = sink.metric(limit);
    sink.stop().await;
    assert!(grown >= 4.0, "limit {grown} after {CHANGES} deliveries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_lets_its_burst_through_then_spaces_requests() {
    const CHANGES: usize = 15;
    let f = Fixture::new("burst", 3).await;
    let changes: Vec<TestChange> = (0..CHANGES).map(|k| TestChange::new(key(k), 1)).collect();
    // All waiting before the sink starts: nothing but the limit holds it back.
    f.produce(&changes).await;
    let options = SinkOptions::default()
        .sink("rate_limit_per_second = 5.0")
        .sink("rate_limit_burst = 5")
        .sink("lanes_per_partition = 4");
    let sink = f.start_sink(&options).await;
    assert!(f.stub.wait_for_unique_effects(CHANGES, LIMIT).await);
    sink.stop().await;

    let requests = f.stub.requests();
    assert_eq!(requests.len(), CHANGES);
    let at = |i: usize| requests[i].at - requests[0].at;
    // Burst 1 would space the first five over 800 ms.
    assert!(
        at(4) < Duration::from_millis(500),
        "the burst of five did not go out at once: fifth request at {:?}",
        at(4)
    );
    // After the burst, five a second: the last ten take two seconds.
    assert!(
        at(CHANGES - 1) >= Duration::from_millis(1900),
        "{CHANGES} requests at 5/s with a burst of 5 took only {:?}",
        at(CHANGES - 1)
    );
}

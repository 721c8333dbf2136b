//! api-sink in-process against the test broker and the stub case API: per-key order under
//! concurrency, transient failures retried with the offset as the retry state (503s, 429 with
//! `Retry-After`, connection refused), permanent failures dead-lettered (a single 400; a poison
//! change bisected out of a CommCare batch), and the rate limit.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use snapfeed_harness::metrics::metric;
use snapfeed_harness::stub_api::{Reply, Rule};
use snapfeed_harness::wait;

use common::{
    ends, external_ids, key, key_version, receipt_ids, Fixture, ProfileChoice, SinkOptions,
    TestChange,
};

const LIMIT: Duration = Duration::from_secs(90);

fn seed() -> u64 {
    let seed = snapfeed_harness::measure::test_seed();
    eprintln!("SNAPFEED_TEST_SEED={seed}");
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_keys_versions_reach_the_api_in_order_under_concurrency() {
    const KEYS: usize = 40;
    const VERSIONS: i64 = 5;
    let f = Fixture::new("order", 3).await;
    // Random small delays, and a 503 now and then: requests finish out of order, and a retry
    // must hold back the key's next version.
    let mut rng = SmallRng::seed_from_u64(seed());
    let total = KEYS * VERSIONS as usize;
    f.stub.push_replies((0..total * 2).map(|_| {
        let delay = Duration::from_millis(rng.gen_range(0..25));
        if rng.gen_bool(0.1) {
            Reply::status(503).with_delay(delay)
        } else {
            Reply::ok().with_delay(delay)
        }
    }));
    let options = SinkOptions::default()
        .sink("lanes_per_partition = 4")
        .sink("max_in_flight = 16");
    let sink = f.start_sink(&options).await;
    // Versions interleaved across keys, as a detector emits them snapshot after snapshot.
    let changes: Vec<TestChange> = (1..=VERSIONS)
        .flat_map(|version| (0..KEYS).map(move |k| TestChange::new(key(k), version)))
        .collect();
    let produced = f.produce(&changes).await;

    assert!(
        f.stub.wait_for_unique_effects(total, LIMIT).await,
        "{} of {total} changes delivered",
        f.stub.unique_effects()
    );
    f.wait_committed(&ends(&produced), LIMIT).await;
    let metrics = sink.metrics();
    sink.stop().await;

    let mut by_key: BTreeMap<String, Vec<(i64, u16)>> = BTreeMap::new();
    for request in f.stub.requests() {
        let (key, version) = key_version(&request);
        assert_eq!(
            request.idempotency_key(),
            Some(api_sink::request::idempotency_key(&f.pipeline.name, &key, version).as_str())
        );
        by_key
            .entry(key)
            .or_default()
            .push((version, request.status));
    }
    assert_eq!(by_key.len(), KEYS);
    for (key, seen) in &by_key {
        let versions: Vec<i64> = seen.iter().map(|(v, _)| *v).collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "{key}: versions out of order at the API: {seen:?}"
        );
        let delivered: Vec<i64> = seen
            .iter()
            .filter(|(_, status)| *status == 200)
            .map(|(v, _)| *v)
            .collect();
        assert_eq!(
            delivered,
            (1..=VERSIONS).collect::<Vec<_>>(),
            "{key}: each version delivered once, in order: {seen:?}"
        );
    }
    let retried = f.stub.requests().iter().filter(|r| r.status == 503).count();
    assert!(retried > 0, "the script had 503s; none was seen");

    let receipts = f.receipts();
    assert_eq!(receipts.len(), total, "one receipt per change");
    assert_eq!(
        receipt_ids(&receipts),
        changes.iter().map(|c| (c.key.clone(), c.version)).collect()
    );
    assert!(f.dead_letters().is_empty());
    assert_eq!(
        metric(&metrics, "snapfeed_api_sink_deliveries_total"),
        Some(total as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_answered_503_n_times_is_delivered_once_and_committed_only_after() {
    const N: usize = 4;
    let f = Fixture::new("retry", 1).await;
    let sink = f.start_sink(&SinkOptions::default()).await;
    // A change that goes through first shows commits happen at all.
    let first = f.produce(&[TestChange::new(key(0), 1)]).await;
    f.wait_committed(&ends(&first), LIMIT).await;

    // N × 503, then a 200 the stub records at once but answers 3 s later: during those 3 s
    // the API has the effect but the sink has no answer yet.
    const ANSWER_DELAY: Duration = Duration::from_secs(3);
    f.stub.push_replies(
        (0..N)
            .map(|_| Reply::status(503))
            .chain([Reply::ok().with_delay(ANSWER_DELAY)]),
    );
    let change = f.produce(&[TestChange::new(key(1), 1)]).await.remove(0);
    assert!(f.stub.wait_for_requests(1 + N + 1, LIMIT).await);
    let committed = f.committed();
    let success_at = f.stub.requests()[1 + N].at;
    assert!(
        success_at.elapsed() < ANSWER_DELAY,
        "the offset check took too long to be inside the answer's delay"
    );
    assert_eq!(
        committed.get(&change.partition),
        Some(&change.offset),
        "while the change is undelivered the committed offset stays at it"
    );

    f.wait_committed(&ends(std::slice::from_ref(&change)), LIMIT)
        .await;
    let receipts = f.wait_receipts(2, LIMIT).await;
    let metrics = sink.metrics();
    sink.stop().await;

    let requests: Vec<_> = f
        .stub
        .requests()
        .into_iter()
        .filter(|r| key_version(r).0 == change.key)
        .collect();
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 503, 503, 200]
    );
    assert!(requests
        .iter()
        .all(|r| r.idempotency_key() == Some(change.idempotency_key.as_str())));
    assert_eq!(
        f.stub.effects_by_idempotency_key()[&change.idempotency_key].len(),
        1,
        "delivered once"
    );
    let receipt = receipts.iter().find(|r| r.key == change.key).unwrap();
    assert_eq!(receipt.attempts, N as i32 + 1);
    assert_eq!(receipt.status, 200);
    assert_eq!(receipt.idempotency_key, change.idempotency_key);
    assert_eq!(
        (receipt.source_partition, receipt.source_offset),
        (change.partition, change.offset)
    );
    assert!(receipt.response_id.is_some(), "the stub returns an id");
    assert_eq!(
        metric(
            &metrics,
            "snapfeed_api_sink_retries_total{reason=\"server_error\"}"
        ),
        Some(N as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_retried_no_sooner_than_asked() {
    let f = Fixture::new("429", 1).await;
    f.stub.push_replies([Reply::status(429).retry_after(2)]);
    // The backoff alone (50 ms initial) would retry far sooner.
    let sink = f.start_sink(&SinkOptions::default()).await;
    let change = f.produce(&[TestChange::new(key(0), 1)]).await.remove(0);
    assert!(f.stub.wait_for_requests(2, LIMIT).await);
    let receipts = f.wait_receipts(1, LIMIT).await;
    let metrics = sink.metrics();
    sink.stop().await;

    let requests = f.stub.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!((requests[0].status, requests[1].status), (429, 200));
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "retried {gap:?} after a 429 asking for 2 s"
    );
    assert!(requests
        .iter()
        .all(|r| r.idempotency_key() == Some(change.idempotency_key.as_str())));
    assert_eq!(receipts[0].attempts, 2);
    assert_eq!(
        metric(
            &metrics,
            "snapfeed_api_sink_retries_total{reason=\"rate_limited\"}"
        ),
        Some(1.0)
    );
}

/// CommCare has no idempotency key: a bulk request that timed out after CommCare saved it is
/// confirmed with `bulk-fetch` and not sent again — one form per case. With the confirmation
/// off (the control), the same timeout makes a second form for the cases of that request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commcare_batch_saved_before_its_answer_timed_out_is_confirmed_not_sent_again() {
    const CHANGES: usize = 10;
    for confirm in [true, false] {
        let f = Fixture::new(if confirm { "confirm" } else { "confirm-off" }, 1).await;
        // Saved at once, answered long after the client gave up.
        f.stub
            .push_replies([Reply::ok().with_delay(Duration::from_secs(3))]);
        let mut options = SinkOptions {
            profile: ProfileChoice::CommCare {
                batch_max_cases: CHANGES,
            },
            ..SinkOptions::default()
        }
        .sink("request_timeout_ms = 1000");
        options
            .commcare_keys
            .push(format!("confirm_before_resend = {confirm}"));
        let changes: Vec<TestChange> = (0..CHANGES).map(|k| TestChange::new(key(k), 1)).collect();
        let produced = f.produce(&changes).await;
        let sink = f.start_sink(&options).await;
        let receipts = f.wait_receipts(CHANGES, LIMIT).await;
        f.wait_committed(&ends(&produced), LIMIT).await;
        let landed = sink.metric("snapfeed_api_sink_confirmations_total{result=\"landed\"}");
        sink.stop().await;

        let forms = f.stub.case_forms();
        assert_eq!(forms.len(), CHANGES, "every case saved: {forms:?}");
        if confirm {
            assert!(
                forms.values().all(|n| *n == 1),
                "a case got a second form: {forms:?}"
            );
            assert!(landed >= 1.0, "the timed-out request was confirmed");
            assert!(receipts.iter().all(|r| r.status == 200));
            let lookups = f
                .stub
                .requests()
                .iter()
                .filter(|r| r.path.ends_with("/bulk-fetch/"))
                .count();
            assert!(lookups >= 1);
        } else {
            assert!(
                forms.values().any(|n| *n >= 2),
                "the control sends again without asking: {forms:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_api_refuses_connections_nothing_is_lost_and_every_lane_backs_off() {
    const CHANGES: usize = 20;
    let mut f = Fixture::new("down", 2).await;
    f.stub.go_down().await;
    // A short window so the breaker opens within seconds on two partitions' retries.
    let options = SinkOptions::default()
        .sink("unreachable_not_ready_after_ms = 1000")
        .retry("global_backoff_window = 6");
    let sink = f.start_sink(&options).await;
    let changes: Vec<TestChange> = (0..CHANGES).map(|k| TestChange::new(key(k), 1)).collect();
    let produced = f.produce(&changes).await;

    sink.wait_metric_at_least(
        "snapfeed_api_sink_retries_total{reason=\"connect_error\"}",
        1.0,
        LIMIT,
    )
    .await;
    sink.wait_metric_at_least("snapfeed_api_sink_global_backoff_total", 1.0, LIMIT)
        .await;
    assert!(
        wait::within(LIMIT, || sink.get("/readyz").is_some_and(|(s, _)| s != 200)).await,
        "/readyz stays ready while the API is unreachable"
    );
    // Nothing moved past an undelivered change.
    let committed = f.committed();
    assert!(
        committed.values().all(|offset| *offset == 0),
        "committed {committed:?} while nothing was delivered"
    );
    assert!(f.receipts().is_empty() && f.dead_letters().is_empty());

    f.stub.come_up().await;
    assert!(
        f.stub.wait_for_unique_effects(CHANGES, LIMIT).await,
        "{} of {CHANGES} delivered after the API came back",
        f.stub.unique_effects()
    );
    f.wait_committed(&ends(&produced), LIMIT).await;
    assert!(
        wait::within(LIMIT, || sink.get("/readyz").is_some_and(|(s, _)| s == 200)).await,
        "/readyz not ready again after the API came back"
    );
    let metrics = sink.metrics();
    sink.stop().await;

    let receipts = f.receipts();
    assert_eq!(receipts.len(), CHANGES);
    assert_eq!(
        receipt_ids(&receipts),
        changes.iter().map(|c| (c.key.clone(), c.version)).collect()
    );
    assert!(
        f.dead_letters().is_empty(),
        "a transient failure is never a dead letter"
    );
    for series in [
        "snapfeed_api_sink_retries_total{reason=\"connect_error\"}",
        "snapfeed_api_sink_global_backoff_total",
    ] {
        let value = metric(&metrics, series).unwrap_or(0.0);
        assert!(value > 0.0, "{series} = {value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_dead_letters_that_change_with_a_body_excerpt_and_the_next_ones_flow() {
    let f = Fixture::new("poison", 1).await;
    let body = format!(
        r#"{{"error":"invalid case","detail":"{}"}}"#,
        "x".repeat(200)
    );
    f.stub.add_rule(Rule::body_contains(
        key(1),
        Reply::status(400).with_body(body.clone()),
    ));
    let sink = f
        .start_sink(&SinkOptions::default().sink("response_excerpt_bytes = 64"))
        .await;
    let changes: Vec<TestChange> = (0..5).map(|k| TestChange::new(key(k), 1)).collect();
    let produced = f.produce(&changes).await;

    assert!(f.stub.wait_for_unique_effects(4, LIMIT).await);
    let letters = f.wait_dead_letters(1, LIMIT).await;
    f.wait_committed(&ends(&produced), LIMIT).await;
    let receipts = f.wait_receipts(4, LIMIT).await;
    let metrics = sink.metrics();
    sink.stop().await;

    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    let poison = &produced[1];
    assert_eq!(letter.key.as_deref(), Some(poison.key.as_str()));
    assert_eq!(letter.version, Some(1));
    assert_eq!(letter.reason, "http_4xx");
    assert_eq!(letter.status, Some(400));
    assert_eq!(letter.response_excerpt.as_deref(), Some(&body[..64]));
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.attempt_history.len(), 1);
    assert_eq!(letter.attempt_history[0].status, Some(400));
    assert_eq!(
        letter.change, poison.payload,
        "the original change, as received"
    );
    // And decoded, nested as typed records any Avro reader sees by field.
    let nested = f.dead_letter_json(0)["event"].clone();
    assert_eq!(nested["key"], poison.key.as_str());
    assert_eq!(nested["op"], "CREATE");
    assert_eq!(nested["record"]["schema"], "snapfeed.lab.LabResult");
    assert!(
        nested["record"]["fields"]["test_code"].is_string(),
        "{nested}"
    );
    assert_eq!(letter.source_topic, f.pipeline.topics.changes);
    assert_eq!(
        (letter.source_partition, letter.source_offset),
        (poison.partition, poison.offset)
    );
    assert_eq!(letter.redrive_count, 0);

    let requests = f.stub.requests();
    let poison_requests: Vec<usize> = requests
        .iter()
        .enumerate()
        .filter(|(_, r)| key_version(r).0 == poison.key)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        poison_requests.len(),
        1,
        "a permanent failure is not retried"
    );
    let after: BTreeSet<String> = requests[poison_requests[0] + 1..]
        .iter()
        .map(|r| key_version(r).0)
        .collect();
    assert_eq!(
        after,
        [key(2), key(3), key(4)].into_iter().collect(),
        "the changes after the poison one flow"
    );
    assert_eq!(
        receipt_ids(&receipts),
        [0, 2, 3, 4].into_iter().map(|k| (key(k), 1)).collect()
    );
    assert_eq!(
        metric(
            &metrics,
            "snapfeed_api_sink_dead_letters_total{reason=\"http_4xx\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_change_is_bisected_out_of_a_commcare_batch_and_alone_dead_lettered() {
    const KEYS: usize = 20;
    let f = Fixture::new("bisect", 1).await;
    let poison = key(10);
    f.stub.add_rule(Rule::body_contains(
        poison.clone(),
        Reply::status(400).with_body(r#"{"error":"one case in this request is invalid"}"#),
    ));
    // The first request is answered slowly, so the changes behind it queue up into one batch.
    f.stub
        .push_replies([Reply::ok().with_delay(Duration::from_millis(500))]);
    let options = SinkOptions {
        profile: ProfileChoice::CommCare {
            batch_max_cases: 100,
        },
        ..SinkOptions::default()
    };
    let sink = f.start_sink(&options).await;
    // key 3 twice: never the same case twice in one request, and v1 before v2.
    let mut changes: Vec<TestChange> = (0..KEYS).map(|k| TestChange::new(key(k), 1)).collect();
    changes.push(TestChange::new(key(3), 2));
    let produced = f.produce(&changes).await;

    let receipts = f.wait_receipts(changes.len() - 1, LIMIT).await;
    let letters = f.wait_dead_letters(1, LIMIT).await;
    f.wait_committed(&ends(&produced), LIMIT).await;
    sink.stop().await;

    assert_eq!(
        letters.len(),
        1,
        "exactly the poison change is dead-lettered"
    );
    assert_eq!(letters[0].key.as_deref(), Some(poison.as_str()));
    assert_eq!(letters[0].status, Some(400));
    assert!(letters[0]
        .response_excerpt
        .as_deref()
        .is_some_and(|e| e.contains("invalid")));
    let expected: BTreeSet<(String, i64)> = changes
        .iter()
        .filter(|c| c.key != poison)
        .map(|c| (c.key.clone(), c.version))
        .collect();
    assert_eq!(
        receipts.len(),
        expected.len(),
        "one receipt per delivered change"
    );
    assert_eq!(receipt_ids(&receipts), expected);

    // A fresh group has no committed offsets: its first batches are confirmed before they are
    // sent (an earlier run may have sent them): the lookups are not submissions.
    let requests: Vec<_> = f
        .stub
        .requests()
        .into_iter()
        .filter(|r| !r.path.ends_with("/bulk-fetch/"))
        .collect();
    for request in &requests {
        assert_eq!(request.path, "/a/lab-demo/api/case/v2/");
        let ids = external_ids(request);
        let distinct: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(
            distinct.len(),
            ids.len(),
            "a case twice in one request: {ids:?}"
        );
    }
    let refused: Vec<Vec<String>> = requests
        .iter()
        .filter(|r| r.status == 400)
        .map(external_ids)
        .collect();
    assert!(
        refused
            .iter()
            .any(|ids| ids.len() > 1 && ids.contains(&poison)),
        "no batch with the poison change was refused: {refused:?}"
    );
    assert_eq!(
        refused.last().map(Vec::as_slice),
        Some(std::slice::from_ref(&poison)),
        "the bisection ends with the poison change alone"
    );
    // Halving: one refused request per level, not one per change.
    assert!(
        refused.len() <= 2 + (changes.len() as f64).log2().ceil() as usize,
        "{} refused requests",
        refused.len()
    );
    let delivered: BTreeSet<String> = requests
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(external_ids)
        .collect();
    let mut others: BTreeSet<String> = (0..KEYS).map(key).collect();
    others.remove(&poison);
    assert_eq!(delivered, others, "the rest delivered");
    // key 3: v1 then v2.
    let key3_results: Vec<String> = requests
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| r.json().as_array().cloned().unwrap_or_default())
        .filter(|case| case["external_id"] == key(3).as_str())
        .map(|case| case["properties"]["result"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(key3_results, ["result v1", "result v2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_spreads_requests_over_time() {
    const CHANGES: usize = 15;
    let f = Fixture::new("rate", 3).await;
    let changes: Vec<TestChange> = (0..CHANGES).map(|k| TestChange::new(key(k), 1)).collect();
    // All waiting before the sink starts: nothing but the limit holds it back.
    f.produce(&changes).await;
    let options = SinkOptions::default()
        .sink("rate_limit_per_second = 5.0")
        .sink("lanes_per_partition = 4");
    let sink = f.start_sink(&options).await;
    assert!(f.stub.wait_for_unique_effects(CHANGES, LIMIT).await);
    sink.stop().await;

    let requests = f.stub.requests();
    assert_eq!(requests.len(), CHANGES);
    let span = requests[CHANGES - 1].at - requests[0].at;
    assert!(
        span >= Duration::from_millis(2500),
        "{CHANGES} requests at 5/s took only {span:?}"
    );
    // No second holds more than five (with a little slack for arrival jitter).
    for window in requests.windows(6) {
        let gap = window[5].at - window[0].at;
        assert!(
            gap >= Duration::from_millis(900),
            "six requests within {gap:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_retry_budget_dead_letters_the_change_with_its_attempts() {
    let f = Fixture::new("budget", 1).await;
    f.stub
        .add_rule(Rule::body_contains(key(0), Reply::status(503)));
    let sink = f
        .start_sink(&SinkOptions::default().retry("max_attempts = 3"))
        .await;
    let produced = f
        .produce(&[TestChange::new(key(0), 1), TestChange::new(key(1), 1)])
        .await;
    let letters = f.wait_dead_letters(1, LIMIT).await;
    assert!(f.stub.wait_for_unique_effects(1, LIMIT).await);
    f.wait_committed(&ends(&produced), LIMIT).await;
    sink.stop().await;

    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.key.as_deref(), Some(key(0).as_str()));
    assert_eq!(letter.reason, "retry_budget_exhausted");
    assert_eq!(letter.status, Some(503));
    assert_eq!(letter.attempts, 3);
    assert_eq!(
        letter
            .attempt_history
            .iter()
            .map(|a| a.status)
            .collect::<Vec<_>>(),
        [Some(503); 3]
    );
    assert!(letter.first_attempt_at <= letter.last_attempt_at);
    assert_eq!(
        f.stub
            .requests()
            .iter()
            .filter(|r| key_version(r).0 == key(0))
            .count(),
        3
    );
    assert_eq!(
        receipt_ids(&f.receipts()),
        [(key(1), 1)].into_iter().collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_change_is_dead_lettered_and_the_next_ones_flow() {
    let f = Fixture::new("undecodable", 1).await;
    let sink = f.start_sink(&SinkOptions::default()).await;
    let before = f.produce(&[TestChange::new(key(0), 1)]).await;
    // Not a change event at all, on the same partition (one partition).
    let garbage = b"not avro at all".to_vec();
    let producer: rdkafka::producer::FutureProducer = f
        .broker
        .kafka_config()
        .producer_config(
            "test",
            snapfeed_runtime::kafka::ProcessingGuarantee::AtLeastOnce,
            None,
        )
        .create()
        .unwrap();
    let (partition, offset) = producer
        .send(
            rdkafka::producer::FutureRecord::to(&f.pipeline.topics.changes)
                .key("garbage")
                .payload(&garbage),
            Duration::from_secs(30),
        )
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| e)
        .unwrap();
    let after = f.produce(&[TestChange::new(key(1), 1)]).await;
    assert!(f.stub.wait_for_unique_effects(2, LIMIT).await);
    let letters = f.wait_dead_letters(1, LIMIT).await;
    f.wait_committed(&ends(&after), LIMIT).await;
    sink.stop().await;

    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "undecodable");
    assert_eq!(letters[0].change, garbage);
    assert_eq!(letters[0].key, None);
    assert!(
        f.dead_letter_json(0)["event"].is_null(),
        "nothing decoded to nest"
    );
    assert_eq!(
        (letters[0].source_partition, letters[0].source_offset),
        (partition, offset)
    );
    assert!(before[0].offset < offset && offset < after[0].offset);
    assert_eq!(f.stub.requests().len(), 2, "nothing was sent for it");
}

//! Getting changes to the API again: after a crash before the commit (the binary, SIGKILLed
//! mid-delivery), after an operator's `replay --to partition:offset`, and after `redrive` of
//! dead letters once their cause is fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use api_sink::redrive::{RedriveFilter, RedriveReport};
use rdkafka::Message;
use snapfeed_harness::broker::{repo_root, BrokerKind};
use snapfeed_harness::service_process::LogOnPanic;
use snapfeed_harness::stub_api::{Reply, Rule};
use snapfeed_harness::wait;
use tokio::task::block_in_place;

use common::{
    ends, key, key_version, receipt_ids, redrive_count, Fixture, ProfileChoice, SinkOptions,
    TestChange, BINARY,
};

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_commit_redelivers_with_the_same_idempotency_key() {
    const CHANGES: usize = 30;
    const ANSWER_DELAY: Duration = Duration::from_millis(400);
    let f = Fixture::new("crash", 2).await;
    // Slow answers: at the kill some requests are at the API (effect counted) and unanswered.
    f.stub
        .set_default_reply(Reply::ok().with_delay(ANSWER_DELAY));
    let config = f.write_config(&SinkOptions::default(), "127.0.0.1:0", "sink");
    let changes: Vec<TestChange> = (0..CHANGES).map(|k| TestChange::new(key(k), 1)).collect();
    let produced = f.produce(&changes).await;

    let mut first = f.spawn_process(&config, &[], "first");
    let _first_log = LogOnPanic(f.dir.path().join("first.log"));
    block_in_place(|| first.wait_ready(LIMIT));
    assert!(f.stub.wait_for_requests(6, LIMIT).await);
    let killed_at = Instant::now();
    block_in_place(|| first.kill());
    let before_kill = f.stub.requests();
    assert!(
        before_kill.len() < CHANGES,
        "everything was sent before the kill"
    );
    // Recorded less than the answer delay before the kill: the sink never had the answer.
    let unanswered: BTreeSet<String> = before_kill
        .iter()
        .filter(|r| r.at + ANSWER_DELAY > killed_at)
        .map(|r| r.idempotency_key().unwrap().to_string())
        .collect();
    assert!(!unanswered.is_empty());

    f.stub.set_default_reply(Reply::ok());
    let mut second = f.spawn_process(&config, &[], "second");
    let _second_log = LogOnPanic(f.dir.path().join("second.log"));
    block_in_place(|| second.wait_ready(LIMIT));
    assert!(
        f.stub.wait_for_unique_effects(CHANGES, LIMIT).await,
        "{} of {CHANGES} delivered after the restart",
        f.stub.unique_effects()
    );
    f.wait_committed(&ends(&produced), LIMIT).await;
    let (status, _) = block_in_place(|| second.terminate(Duration::from_secs(15)));
    assert!(status.success(), "{status}");

    assert_eq!(f.stub.unique_effects(), CHANGES, "one effect per change");
    let effects = f.stub.effects_by_idempotency_key();
    let expected: BTreeSet<String> = produced.iter().map(|p| p.idempotency_key.clone()).collect();
    assert_eq!(effects.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for key in &unanswered {
        let repeats = &effects[key];
        assert!(
            repeats.len() >= 2,
            "{key} was unanswered at the crash but not sent again"
        );
        assert!(
            repeats.iter().all(|r| r.body == repeats[0].body),
            "a redelivery carries the same change"
        );
    }
    // Whatever was delivered twice was delivered with one key: receipts name each change.
    assert_eq!(
        receipt_ids(&f.receipts()),
        changes.iter().map(|c| (c.key.clone(), c.version)).collect()
    );
}

/// CommCare has no idempotency keys: a case sent again is another form in its history. Killed
/// (SIGKILL) mid-delivery with slow answers, the sink leaves cases saved but unanswered (no
/// receipt) and cases answered but uncommitted (receipt written). After the restart it skips
/// the second kind by their receipts and asks the API about the first before sending: no case
/// gets a second form. The control (`confirm_before_resend = false`) sends the unanswered ones
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_the_commcare_profile_submits_no_case_twice() {
    const CHANGES: usize = 60;
    const ANSWER_DELAY: Duration = Duration::from_millis(600);
    for confirm in [true, false] {
        let f = Fixture::new(if confirm { "kill-cc" } else { "kill-cc-off" }, 2).await;
        f.stub
            .set_default_reply(Reply::ok().with_delay(ANSWER_DELAY));
        let mut options = SinkOptions {
            profile: ProfileChoice::CommCare { batch_max_cases: 5 },
            ..SinkOptions::default()
        };
        options
            .commcare_keys
            .push(format!("confirm_before_resend = {confirm}"));
        let config = f.write_config(&options, "127.0.0.1:0", "sink");
        let changes: Vec<TestChange> = (0..CHANGES).map(|k| TestChange::new(key(k), 1)).collect();
        let produced = f.produce(&changes).await;

        let mut first = f.spawn_process(&config, &[], "first");
        let _first_log = LogOnPanic(f.dir.path().join("first.log"));
        block_in_place(|| first.wait_ready(LIMIT));
        let submissions = |f: &Fixture| {
            f.stub
                .requests()
                .iter()
                .filter(|r| !r.path.ends_with("/bulk-fetch/"))
                .count()
        };
        assert!(
            wait::within(LIMIT, || submissions(&f) >= 4).await,
            "the first run sends"
        );
        block_in_place(|| first.kill());
        let saved_before = f.stub.case_forms().len();
        assert!(
            saved_before < CHANGES,
            "everything was saved before the kill"
        );
        let receipted_before = f.receipts().len();

        f.stub.set_default_reply(Reply::ok());
        let mut second = f.spawn_process(&config, &[], "second");
        let _second_log = LogOnPanic(f.dir.path().join("second.log"));
        block_in_place(|| second.wait_ready(LIMIT));
        f.wait_committed(&ends(&produced), LIMIT).await;
        let (status, _) = block_in_place(|| second.terminate(Duration::from_secs(15)));
        assert!(status.success(), "{status}");

        let forms = f.stub.case_forms();
        assert_eq!(forms.len(), CHANGES, "every case saved");
        let twice: Vec<(&String, &usize)> = forms.iter().filter(|(_, n)| **n > 1).collect();
        eprintln!(
            "confirm_before_resend = {confirm}: {saved_before} cases saved and {receipted_before} receipts before the kill; {} cases got a second form",
            twice.len()
        );
        if confirm {
            assert!(twice.is_empty(), "cases submitted twice: {twice:?}");
            // Every change ends with one receipt (the first run's or the second's).
            assert_eq!(
                receipt_ids(&f.receipts()),
                changes.iter().map(|c| (c.key.clone(), c.version)).collect()
            );
        } else {
            assert!(
                !twice.is_empty(),
                "the control sends the unanswered cases again: {forms:?}"
            );
        }
    }
}

/// Receipts an earlier run wrote for changes past the committed offset (killed after
/// delivering, before committing) keep those changes from being sent again; the rest goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_an_earlier_run_delivered_are_not_sent_again_after_a_restart() {
    const CHANGES: usize = 24;
    let f = Fixture::new("resume", 3).await;
    let changes: Vec<TestChange> = (0..CHANGES).map(|k| TestChange::new(key(k), 1)).collect();
    let produced = f.produce(&changes).await;
    // The earlier run: every other change delivered, its receipt acknowledged; nothing
    // committed (the group has no offsets yet).
    let earlier: Vec<&common::Produced> = produced.iter().step_by(2).collect();
    f.write_receipts(&earlier);

    let sink = f.start_sink(&SinkOptions::default()).await;
    let rest = CHANGES - earlier.len();
    assert!(
        f.stub.wait_for_unique_effects(rest, LIMIT).await,
        "{} of {rest} delivered",
        f.stub.unique_effects()
    );
    f.wait_committed(&ends(&produced), LIMIT).await;
    let skipped = sink.metric("snapfeed_api_sink_already_delivered_total");
    sink.stop().await;

    let sent: BTreeSet<(String, i64)> = f.stub.requests().iter().map(key_version).collect();
    let delivered_before: BTreeSet<(String, i64)> =
        earlier.iter().map(|p| (p.key.clone(), p.version)).collect();
    assert!(
        sent.is_disjoint(&delivered_before),
        "sent again: {:?}",
        sent.intersection(&delivered_before).collect::<Vec<_>>()
    );
    assert_eq!(sent.len() + delivered_before.len(), CHANGES);
    assert_eq!(skipped, earlier.len() as f64);
    // One receipt per change: the earlier run's and this run's, none twice.
    assert_eq!(f.receipts().len(), CHANGES);
    assert_eq!(
        receipt_ids(&f.receipts()),
        changes.iter().map(|c| (c.key.clone(), c.version)).collect()
    );
}

/// An `at_least_once` detector writes a batch again after a crash: the same (key, version)
/// at later offsets, right behind the first copy or after it was delivered. Each reaches the
/// API once; the repeats' offsets are committed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_and_version_on_changes_is_sent_once() {
    let f = Fixture::new("repeats", 2).await;
    let originals: Vec<TestChange> = (0..6).map(|k| TestChange::new(key(k), 1)).collect();
    let sink = f.start_sink(&SinkOptions::default()).await;
    // Repeats right behind their originals (one run of a lane) …
    let mut first = originals.clone();
    first.extend(originals[..3].iter().cloned());
    let mut produced = f.produce(&first).await;
    assert!(f.stub.wait_for_unique_effects(originals.len(), LIMIT).await);
    f.wait_committed(&ends(&produced), LIMIT).await;
    // … and long after them.
    produced.extend(f.produce(&originals[2..]).await);
    f.wait_committed(&ends(&produced), LIMIT).await;
    let skipped = sink.metric("snapfeed_api_sink_already_delivered_total");
    sink.stop().await;

    let sent: Vec<(String, i64)> = f.stub.requests().iter().map(key_version).collect();
    assert_eq!(sent.len(), originals.len(), "requests: {sent:?}");
    assert_eq!(skipped, (3 + 4) as f64);
    assert_eq!(
        f.receipts().len(),
        originals.len(),
        "one receipt per change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_exactly_the_chosen_range_again() {
    let f = Fixture::new("replay", 2).await;
    if !matches!(f.broker.kind(), BrokerKind::Nisshi | BrokerKind::External) {
        eprintln!(
            "skipped on {}: replay lists the group's members first, which this broker does not \
             answer (mock: no group listing); run with SNAPFEED_TEST_BROKER=nisshi",
            f.broker.kind()
        );
        return;
    }
    let changes: Vec<TestChange> = (0..20).map(|k| TestChange::new(key(k), 1)).collect();
    let produced = f.produce(&changes).await;
    let sink = f.start_sink(&SinkOptions::default()).await;
    assert!(f.stub.wait_for_unique_effects(changes.len(), LIMIT).await);
    f.wait_committed(&ends(&produced), LIMIT).await;
    sink.stop().await;

    // From the second change of the fullest partition on.
    let mut by_partition: BTreeMap<i32, Vec<&common::Produced>> = BTreeMap::new();
    for p in &produced {
        by_partition.entry(p.partition).or_default().push(p);
    }
    let (partition, on_partition) = by_partition.iter().max_by_key(|(_, ps)| ps.len()).unwrap();
    assert!(on_partition.len() >= 3);
    let from = on_partition[1].offset;
    let range: BTreeSet<(String, i64)> = on_partition
        .iter()
        .filter(|p| p.offset >= from)
        .map(|p| (p.key.clone(), p.version))
        .collect();

    let config = f.write_config(&SinkOptions::default(), "127.0.0.1:0", "replay");
    let to = format!("{partition}:{from}");
    // The stopped instance has left the group; a broker may take a moment to show it empty.
    let deadline = Instant::now() + LIMIT;
    let output = loop {
        let output = Command::new(BINARY)
            .current_dir(repo_root())
            .arg("--config")
            .arg(&config)
            .args(["replay", "--to", &to])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.success() || !stderr.contains("live member") || Instant::now() > deadline {
            break output;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "replay failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&f.group()), "{stdout}");
    assert_eq!(
        f.committed().get(partition),
        Some(&from),
        "the group's offset moved to the chosen one"
    );

    let before = f.stub.requests().len();
    let sink = f.start_sink(&SinkOptions::default()).await;
    assert!(f.stub.wait_for_requests(before + range.len(), LIMIT).await);
    f.wait_committed(&ends(&produced), LIMIT).await;
    sink.stop().await;
    let again: Vec<(String, i64)> = f.stub.requests()[before..]
        .iter()
        .map(key_version)
        .collect();
    assert_eq!(again.len(), range.len(), "sent again: {again:?}");
    assert_eq!(
        again.into_iter().collect::<BTreeSet<_>>(),
        range,
        "exactly the chosen range"
    );
    assert_eq!(
        f.stub.unique_effects(),
        changes.len(),
        "a replay repeats Idempotency-Keys"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_brings_dead_letters_back_except_superseded_ones() {
    let f = Fixture::new("redrive", 2).await;
    let kafka = f.broker.kafka_config();
    // Two poison changes, told apart from other versions of their keys by a marker.
    for marker in ["POISON-A", "POISON-B"] {
        f.stub.add_rule(Rule::body_contains(
            marker,
            Reply::status(400).with_body(r#"{"error":"rejected"}"#),
        ));
    }
    let sink = f.start_sink(&SinkOptions::default()).await;
    let (a, b, c) = (key(1), key(2), key(3));
    let changes = [
        TestChange::new(a.clone(), 1).marked("POISON-A"),
        TestChange::new(b.clone(), 1).marked("POISON-B"),
        // B moves on: its v1 is superseded by the time anyone redrives it.
        TestChange::new(b.clone(), 2),
        TestChange::new(c.clone(), 1),
    ];
    let produced = f.produce(&changes).await;
    let letters = f.wait_dead_letters(2, LIMIT).await;
    f.wait_receipts(2, LIMIT).await;
    f.wait_committed(&ends(&produced), LIMIT).await;
    assert_eq!(
        letters
            .iter()
            .map(|l| (l.key.clone().unwrap(), l.version.unwrap()))
            .collect::<BTreeSet<_>>(),
        [(a.clone(), 1), (b.clone(), 1)].into_iter().collect()
    );

    // A filter that matches nothing redrives nothing.
    let none = block_in_place(|| {
        api_sink::redrive::redrive(
            &kafka,
            f.guarantee,
            &f.pipeline.topics,
            &f.store,
            &RedriveFilter {
                status: Some(500),
                ..RedriveFilter::default()
            },
            false,
        )
    })
    .unwrap();
    assert_eq!(
        none,
        RedriveReport {
            filtered_out: 2,
            ..RedriveReport::default()
        }
    );

    // The cause is fixed.
    f.stub.clear_rules();
    // A dry run names what a redrive would publish, and publishes nothing.
    let changes_before = f.read(&f.pipeline.topics.changes).len();
    let fixed = RedriveFilter {
        status: Some(400),
        reason: Some("http_4xx".into()),
        ..RedriveFilter::default()
    };
    let dry = block_in_place(|| {
        api_sink::redrive::redrive(
            &kafka,
            f.guarantee,
            &f.pipeline.topics,
            &f.store,
            &fixed,
            true,
        )
    })
    .unwrap();
    assert_eq!(dry.redriven, vec![(a.clone(), 1)]);
    assert_eq!(dry.superseded, 1);
    assert!(
        dry.to_string().contains(&format!("would redrive {a} v1")),
        "{dry}"
    );
    assert_eq!(f.read(&f.pipeline.topics.changes).len(), changes_before);
    // --key picks one key's letters.
    let other_key = block_in_place(|| {
        api_sink::redrive::redrive(
            &kafka,
            f.guarantee,
            &f.pipeline.topics,
            &f.store,
            &RedriveFilter {
                key: Some(c.clone()),
                ..RedriveFilter::default()
            },
            true,
        )
    })
    .unwrap();
    assert!(other_key.redriven.is_empty());
    assert_eq!(other_key.filtered_out, 2);

    // The sink is behind (stopped) while the operator redrives — twice.
    sink.stop().await;
    let redrive = || {
        block_in_place(|| {
            api_sink::redrive::redrive(
                &kafka,
                f.guarantee,
                &f.pipeline.topics,
                &f.store,
                &fixed,
                false,
            )
        })
        .unwrap()
    };
    let report = redrive();
    assert_eq!(report.redriven, vec![(a.clone(), 1)]);
    assert_eq!(report.superseded, 1);
    let again = redrive();
    assert!(
        again.redriven.is_empty(),
        "a second redrive before the sink caught up publishes again: {again}"
    );
    assert_eq!((again.already_redriven, again.superseded), (1, 1));
    let sink = f.start_sink(&SinkOptions::default()).await;

    let a_key = &produced[0].idempotency_key;
    assert!(
        wait::within(LIMIT, || f
            .stub
            .effects_by_idempotency_key()
            .contains_key(a_key))
        .await,
        "the redriven change was not delivered"
    );
    let receipts = f.wait_receipts(3, LIMIT).await;
    let redriven_end = f.read(&f.pipeline.topics.changes);
    f.wait_committed(
        &redriven_end
            .iter()
            .map(|m| (m.partition(), m.offset() + 1))
            .fold(BTreeMap::new(), |mut ends, (p, end)| {
                let e = ends.entry(p).or_insert(0);
                *e = end.max(*e);
                ends
            }),
        LIMIT,
    )
    .await;
    sink.stop().await;

    assert_eq!(
        receipt_ids(&receipts),
        [(a.clone(), 1), (b.clone(), 2), (c.clone(), 1)]
            .into_iter()
            .collect()
    );
    let redriven: Vec<_> = redriven_end
        .iter()
        .filter(|m| redrive_count(m).is_some())
        .collect();
    assert_eq!(redriven.len(), 1);
    assert_eq!(redriven[0].key(), Some(a.as_bytes()));
    assert_eq!(redrive_count(redriven[0]).as_deref(), Some("1"));
    assert_eq!(
        redriven[0].payload(),
        Some(produced[0].payload.as_slice()),
        "the original change, unchanged"
    );
    // B v1 never reached the API with a success: a newer version was already there.
    let b1 = &produced[1].idempotency_key;
    assert!(!f.stub.effects_by_idempotency_key().contains_key(b1));
    assert!(
        f.stub
            .requests()
            .iter()
            .filter(|r| r.idempotency_key() == Some(b1.as_str()))
            .count()
            == 1,
        "B v1 was sent once (refused), never redriven"
    );
    assert_eq!(f.dead_letters().len(), 2, "no new dead letters");

    // `dead-letters list` tells where each stands now.
    let letters = block_in_place(|| {
        snapfeed_runtime::dead_letters::read_letters(
            &kafka,
            f.guarantee,
            &f.pipeline.topics,
            &f.store,
        )
    })
    .unwrap();
    let states: BTreeSet<(String, &str)> = letters
        .iter()
        .map(|l| (l.letter.key.clone().unwrap(), l.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [(a.clone(), "delivered"), (b.clone(), "superseded")]
            .into_iter()
            .collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_never_sends_an_older_version_after_a_newer_one_still_waiting() {
    let f = Fixture::new("redrive-lag", 1).await;
    let kafka = f.broker.kafka_config();
    f.stub.add_rule(Rule::body_contains(
        "POISON",
        Reply::status(400).with_body(r#"{"error":"rejected"}"#),
    ));
    let a = key(1);
    let sink = f.start_sink(&SinkOptions::default()).await;
    let v1 = f
        .produce(&[TestChange::new(a.clone(), 1).marked("POISON")])
        .await;
    f.wait_dead_letters(1, LIMIT).await;
    f.wait_committed(&ends(&v1), LIMIT).await;
    // The sink is behind (here: stopped) while a newer version of the key arrives.
    sink.stop().await;
    let v2 = f.produce(&[TestChange::new(a.clone(), 2)]).await.remove(0);

    // The cause of the dead letter is fixed and an operator redrives.
    f.stub.clear_rules();
    let report = block_in_place(|| {
        api_sink::redrive::redrive(
            &kafka,
            f.guarantee,
            &f.pipeline.topics,
            &f.store,
            &RedriveFilter::default(),
            false,
        )
    })
    .unwrap();
    eprintln!("redrive: {report}");

    let sink = f.start_sink(&SinkOptions::default()).await;
    let changes_now = f.read(&f.pipeline.topics.changes);
    let end = changes_now.iter().map(|m| m.offset() + 1).max().unwrap();
    f.wait_committed(&[(v2.partition, end)].into_iter().collect(), LIMIT)
        .await;
    sink.stop().await;

    let versions: Vec<i64> = f
        .stub
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| key_version(r).1)
        .collect();
    assert_eq!(
        versions.last(),
        Some(&2),
        "the API ends with an older version than the newest change (successful versions in \
         order: {versions:?}; redrive: {report})"
    );
}

/// The operator's commands as the binary runs them, on a dead letter: `dead-letters list`
/// shows it open, `redrive --dry-run --key` names it and writes nothing, `trace` shows the
/// change and the letter, `tail` decodes the letter with the record redacted; after a redrive
/// the list shows it redriven, and `--state open` lists nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_show_a_dead_letter_and_redrive_it_once() {
    let f = Fixture::new("operator-cli", 2).await;
    f.stub.add_rule(Rule::body_contains(
        "POISON",
        Reply::status(400).with_body(r#"{"error":"rejected"}"#),
    ));
    let a = key(7);
    let sink = f.start_sink(&SinkOptions::default()).await;
    let produced = f
        .produce(&[TestChange::new(a.clone(), 1).marked("POISON")])
        .await;
    f.wait_dead_letters(1, LIMIT).await;
    f.wait_committed(&ends(&produced), LIMIT).await;
    sink.stop().await;
    let config = f.write_config(&SinkOptions::default(), "127.0.0.1:0", "operator");
    let run = |args: &[&str]| {
        let output = Command::new(BINARY)
            .current_dir(repo_root())
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stdout, stderr)
    };

    let (code, list, err) = block_in_place(|| run(&["dead-letters", "list"]));
    assert_eq!(code, Some(0), "{list}\n{err}");
    assert!(
        list.contains(&format!("open        {a} v1  http_4xx (HTTP 400)")),
        "{list}"
    );
    assert!(list.contains("1 dead letters listed: open 1"), "{list}");

    let changes_before = f.read(&f.pipeline.topics.changes).len();
    let (code, dry, err) = block_in_place(|| run(&["redrive", "--dry-run", "--key", &a]));
    assert_eq!(code, Some(0), "{dry}\n{err}");
    assert!(dry.contains(&format!("would redrive {a} v1")), "{dry}");
    assert_eq!(f.read(&f.pipeline.topics.changes).len(), changes_before);

    let (code, traced, err) = block_in_place(|| run(&["trace", &a]));
    assert_eq!(code, Some(0), "{traced}\n{err}");
    assert!(
        traced.contains("CREATE v1") && traced.contains("dead-letter"),
        "{traced}"
    );
    assert!(
        !traced.contains("POISON"),
        "record values in the trace: {traced}"
    );
    let (code, _, _) = block_in_place(|| run(&["trace", "LAB-99999"]));
    assert_eq!(code, Some(1), "nothing found is exit 1");

    let (code, tailed, err) = block_in_place(|| run(&["tail", "dead-letters", "--limit", "1"]));
    assert_eq!(code, Some(0), "{tailed}\n{err}");
    let line: serde_json::Value = serde_json::from_str(tailed.lines().next().unwrap()).unwrap();
    assert_eq!(line["value"]["key"], a.as_str());
    assert_eq!(line["value"]["response_excerpt"], "redacted");
    assert!(
        !tailed.contains("POISON"),
        "record values in tail: {tailed}"
    );
    let (code, shown, _) =
        block_in_place(|| run(&["tail", "dead-letters", "--limit", "1", "--show-values"]));
    assert_eq!(code, Some(0));
    assert!(
        shown.contains("POISON"),
        "--show-values shows the record: {shown}"
    );
    let (code, _, err) = block_in_place(|| run(&["tail", "chnages"]));
    assert_eq!(code, Some(2), "an unknown topic is a usage error");
    assert!(err.contains("unknown topic \"chnages\""), "{err}");

    let (code, out, err) = block_in_place(|| run(&["redrive", "--key", &a]));
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains(&format!("redrove {a} v1")), "{out}");
    let (_, again, _) = block_in_place(|| run(&["redrive"]));
    assert!(
        again.contains("redriven 0, skipped: superseded 0, already redriven 1"),
        "{again}"
    );
    let (_, list, _) = block_in_place(|| run(&["dead-letters", "list"]));
    assert!(list.contains(&format!("redriven    {a} v1")), "{list}");
    let (_, open, _) = block_in_place(|| run(&["dead-letters", "list", "--state", "open"]));
    assert!(open.contains("0 dead letters listed"), "{open}");
}

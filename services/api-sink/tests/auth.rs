//! Authentication against the stub case API: OAuth2 client-credentials tokens fetched, refreshed
//! before they expire and renewed once after a 401; and secrets kept out of the binary's logs
//! and out of `check-config`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use snapfeed_harness::service_process::LogOnPanic;
use snapfeed_harness::stub_api::{Reply, Rule, TOKEN_PATH};
use tokio::task::block_in_place;

use common::{key, key_version, Fixture, SinkOptions, TestChange, BINARY};

const LIMIT: Duration = Duration::from_secs(90);

/// A value no test would print by accident, unique to this run.
fn unique_secret(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{label}-{}-{nanos:09}-Zq7", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_refreshed_before_expiry_and_renewed_once_after_a_401() {
    let f = Fixture::new("oauth", 1).await;
    let variable = format!("SNAPFEED_TEST_OAUTH_SECRET_{}", std::process::id());
    // Only this test reads this variable; the name is unique to the process.
    std::env::set_var(&variable, unique_secret("oauth"));
    f.stub.require_bearer(true);
    // Tokens live 2 s: the sink refreshes once 80% of that has passed.
    f.stub.set_token_ttl(Duration::from_secs(2));
    let options = SinkOptions {
        auth: Some(vec![
            "type = \"oauth2_client_credentials\"".into(),
            format!("token_url = \"{}{TOKEN_PATH}\"", f.stub.url()),
            "client_id = \"snapfeed\"".into(),
            format!("client_secret = {{ env = \"{variable}\" }}"),
        ]),
        ..SinkOptions::default()
    };
    let sink = f.start_sink(&options).await;

    // 1. The first request fetches a token.
    f.produce(&[TestChange::new(key(0), 1)]).await;
    assert!(f.stub.wait_for_unique_effects(1, LIMIT).await);
    let first = f.stub.requests().remove(0);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("authorization"), Some("Bearer tok-1"));
    assert_eq!(f.stub.token_requests(), 1);

    // 2. Past 80% of its lifetime the token is replaced before use: no 401 on the way.
    f.stub.set_token_ttl(Duration::from_secs(3600));
    tokio::time::sleep_until((first.at + Duration::from_millis(1700)).into()).await;
    f.produce(&[TestChange::new(key(1), 1)]).await;
    assert!(f.stub.wait_for_unique_effects(2, LIMIT).await);
    let second = f.stub.requests().remove(1);
    assert_eq!(
        (second.status, second.header("authorization")),
        (200, Some("Bearer tok-2")),
        "refreshed before expiry"
    );
    assert_eq!(f.stub.token_requests(), 2);

    // 3. The API revokes every token: one 401, a new token, the same request again.
    f.stub.expire_tokens();
    let third = f.produce(&[TestChange::new(key(2), 1)]).await.remove(0);
    assert!(f.stub.wait_for_unique_effects(3, LIMIT).await);
    let receipts = f.wait_receipts(3, LIMIT).await;
    sink.stop().await;

    let requests: Vec<_> = f
        .stub
        .requests()
        .into_iter()
        .filter(|r| key_version(r).0 == third.key)
        .collect();
    assert_eq!(
        requests
            .iter()
            .map(|r| (r.status, r.header("authorization").unwrap_or("")))
            .collect::<Vec<_>>(),
        [(401, "Bearer tok-2"), (200, "Bearer tok-3")]
    );
    assert!(requests
        .iter()
        .all(|r| r.idempotency_key() == Some(third.idempotency_key.as_str())));
    assert_eq!(f.stub.token_requests(), 3, "one new token after the 401");
    let receipt = receipts.iter().find(|r| r.key == third.key).unwrap();
    assert_eq!(receipt.attempts, 2);
    assert!(
        f.dead_letters().is_empty(),
        "a 401 cured by a new token is no dead letter"
    );
    assert_eq!(
        f.stub.requests().iter().filter(|r| r.status == 401).count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_the_binarys_logs_or_check_config() {
    let f = Fixture::new("secrets", 1).await;
    let api_key = unique_secret("apikey");
    let sasl_password = unique_secret("sasl");
    let variable = format!("SNAPFEED_TEST_API_KEY_{}", std::process::id());
    let options = SinkOptions {
        auth: Some(vec![
            "type = \"api_key\"".into(),
            "user = \"integration@example.org\"".into(),
            format!("key = {{ env = \"{variable}\" }}"),
        ]),
        log_level: "debug".into(),
        ..SinkOptions::default()
    };
    let config = f.write_config(&options, "127.0.0.1:0", "secrets");

    // check-config, with the secret set and a librdkafka password given as an override.
    let output = Command::new(BINARY)
        .current_dir(common_root())
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .env(&variable, &api_key)
        .env(
            "SNAPFEED_KAFKA__LIBRDKAFKA_OPTIONS__SASL_PASSWORD",
            &sasl_password,
        )
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("api_key"), "{printed}");
    assert!(!printed.contains(&api_key), "{printed}");
    assert!(!printed.contains(&sasl_password), "{printed}");

    // A run at debug level through error paths: a 503 and a 401 retried, a 400 dead-lettered,
    // the rest delivered.
    f.stub.push_replies([
        Reply::status(503),
        Reply::status(401).with_body(r#"{"error":"invalid api key"}"#),
    ]);
    f.stub.add_rule(Rule::body_contains(
        key(1),
        Reply::status(400).with_body(r#"{"error":"bad case"}"#),
    ));
    let env = [
        (variable.clone(), api_key.clone()),
        ("SNAPFEED_LOG__LEVEL".to_string(), "debug".to_string()),
    ];
    let mut process = f.spawn_process(&config, &env, "secrets");
    let log_path = f.dir.path().join("secrets.log");
    let _log = LogOnPanic(log_path.clone());
    block_in_place(|| process.wait_ready(LIMIT));
    f.produce(
        &(0..5)
            .map(|k| TestChange::new(key(k), 1))
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(f.stub.wait_for_unique_effects(4, LIMIT).await);
    f.wait_dead_letters(1, LIMIT).await;
    let (status, _) = block_in_place(|| process.terminate(Duration::from_secs(15)));
    assert!(status.success(), "{status}");

    let statuses: Vec<u16> = f.stub.requests().iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&401) && statuses.contains(&400) && statuses.contains(&503),
        "{statuses:?}"
    );
    // The secret was in use …
    let expected = format!("ApiKey integration@example.org:{api_key}");
    assert!(f
        .stub
        .requests()
        .iter()
        .all(|r| r.header("authorization") == Some(expected.as_str())));
    // … and never written down.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("dead-lettered"),
        "the run logged its error paths:\n{log}"
    );
    assert!(!log.contains(&api_key), "the API key is in the log");
    for topic in [
        &f.pipeline.topics.deliveries,
        &f.pipeline.topics.dead_letters,
    ] {
        for message in f.read(topic) {
            let bytes = rdkafka::Message::payload(&message).unwrap_or_default();
            assert!(
                !bytes
                    .windows(api_key.len())
                    .any(|w| w == api_key.as_bytes()),
                "the API key is on {topic}"
            );
        }
    }
}

fn common_root() -> std::path::PathBuf {
    snapfeed_harness::broker::repo_root()
}

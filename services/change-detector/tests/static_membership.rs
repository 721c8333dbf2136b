//! Kafka static membership (`kafka.static_membership`), measured: two detector processes share
//! the snapshots topic; one is killed with SIGKILL and started again under the same
//! `pipeline.instance_id`. How long until it is ready again (assigned and restored), with and
//! without static membership, on the broker of the run (`SNAPFEED_TEST_BROKER`) — printed, not
//! asserted: it is a measurement (README § Operating it, "Static membership"). What is asserted:
//! both ways, the restarted instance gets partitions back and becomes ready, and the other
//! instance keeps running.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use snapfeed_harness::broker::{repo_root, TestBroker};
use snapfeed_harness::service_process::{service_env, ServiceProcess};

const BINARY: &str = env!("CARGO_BIN_EXE_change-detector");
const SESSION_TIMEOUT_MS: u64 = 6_000;

/// Kills instance A, starts it again, and returns how long the new process took to be ready.
async fn rejoin_after_kill(broker: &TestBroker, static_membership: bool) -> Duration {
    let pipeline = broker
        .pipeline(&format!("rejoin-{static_membership}"), 4)
        .await;
    let root = repo_root();
    let config = root.join("deploy/config/change-detector.toml");
    let logs = tempfile::tempdir().unwrap();
    let env_of = |instance: &str| {
        let mut env = service_env(broker, &pipeline.name);
        env.extend(
            [
                ("SNAPFEED_PIPELINE__INSTANCE_ID", instance.to_string()),
                (
                    "SNAPFEED_KAFKA__SESSION_TIMEOUT_MS",
                    SESSION_TIMEOUT_MS.to_string(),
                ),
                (
                    "SNAPFEED_KAFKA__STATIC_MEMBERSHIP",
                    static_membership.to_string(),
                ),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        env
    };
    let start = |instance: &str, run: usize| {
        ServiceProcess::start(
            Path::new(BINARY),
            &config,
            &root,
            &env_of(instance),
            &logs.path().join(format!("{instance}-{run}.log")),
        )
    };
    tokio::task::block_in_place(|| {
        let mut a = start("cd-a", 0);
        let mut b = start("cd-b", 0);
        a.wait_ready(Duration::from_secs(120));
        b.wait_ready(Duration::from_secs(120));
        // Let the group settle (both members assigned) before the crash.
        std::thread::sleep(Duration::from_secs(2));
        a.kill();
        let restarted_at = Instant::now();
        let mut again = start("cd-a", 1);
        again.wait_ready(Duration::from_secs(120));
        let took = restarted_at.elapsed();
        assert!(
            b.get("/healthz").is_some(),
            "the other instance stopped; log:\n{}",
            b.log_text()
        );
        again.terminate(Duration::from_secs(20));
        b.terminate(Duration::from_secs(20));
        took
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detector_restarted_under_the_same_id_rejoins_measured_with_and_without_static_membership(
) {
    let broker = TestBroker::from_env();
    let dynamic = rejoin_after_kill(&broker, false).await;
    let fixed = rejoin_after_kill(&broker, true).await;
    println!(
        "REJOIN {:?}: ready again {:.1} s after the restart without static membership, {:.1} s with it (session timeout {} s)",
        broker.kind(),
        dynamic.as_secs_f64(),
        fixed.as_secs_f64(),
        SESSION_TIMEOUT_MS / 1000
    );
}

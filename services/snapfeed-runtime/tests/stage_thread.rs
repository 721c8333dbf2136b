//! The frame around a stage: its thread stops within the drain bound when shutdown fires, and a
//! stage that ends on its own (a fatal error) ends the service with its error.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use snapfeed_harness::broker::repo_root;
use snapfeed_runtime::health::HttpConfig;
use snapfeed_runtime::kafka::KafkaConfig;
use snapfeed_runtime::service::{
    CommonSections, PipelineConfig, RuntimeError, ServiceRuntime, StageThread,
};
use snapfeed_runtime::shutdown::{self, ShutdownConfig};
use snapfeed_runtime::telemetry::LogConfig;
use snapfeed_runtime::topics::TopicsConfig;

#[derive(Debug, thiserror::Error)]
enum StageError {
    #[error("the stage gave up")]
    GaveUp,
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

struct Sections {
    pipeline: PipelineConfig,
    kafka: KafkaConfig,
    topics: TopicsConfig,
    http: HttpConfig,
    log: LogConfig,
    shutdown: ShutdownConfig,
}

impl Sections {
    fn new() -> Sections {
        Sections {
            pipeline: PipelineConfig {
                schemas_dir: repo_root().join("schemas"),
                ..PipelineConfig::default()
            },
            kafka: toml::from_str("bootstrap_servers = \"127.0.0.1:9\"").unwrap(),
            topics: TopicsConfig::default(),
            http: HttpConfig {
                listen: "127.0.0.1:0".into(),
            },
            log: LogConfig::default(),
            shutdown: ShutdownConfig {
                drain_timeout_ms: 200,
            },
        }
    }

    fn common(&self) -> CommonSections<'_> {
        CommonSections {
            pipeline: &self.pipeline,
            kafka: &self.kafka,
            topics: &self.topics,
            http: &self.http,
            log: &self.log,
            shutdown: &self.shutdown,
            schema_registry: None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_stage_thread_and_returns_its_result() {
    let sections = Sections::new();
    let (trigger, shutdown) = shutdown::channel();
    let runtime = ServiceRuntime::start("test", sections.common(), shutdown.clone())
        .await
        .unwrap();
    let stage = StageThread::<StageError>::spawn("test-stage", |stop| {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })
    .unwrap();
    let served = tokio::spawn(runtime.serve(shutdown, stage));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!served.is_finished(), "runs until shutdown");
    trigger.trigger();
    let result = tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("stopped within the bound")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_gives_up_ends_the_service_with_its_error() {
    let sections = Sections::new();
    let (_trigger, shutdown) = shutdown::channel();
    let runtime = ServiceRuntime::start("test", sections.common(), shutdown.clone())
        .await
        .unwrap();
    let stage = StageThread::spawn("test-stage", |_stop| Err(StageError::GaveUp)).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), runtime.serve(shutdown, stage))
        .await
        .expect("ended without a signal");
    assert!(matches!(result, Err(StageError::GaveUp)), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_stage_is_left_behind_after_the_bound() {
    let sections = Sections::new();
    let (trigger, shutdown) = shutdown::channel();
    let runtime = ServiceRuntime::start("test", sections.common(), shutdown.clone())
        .await
        .unwrap();
    let stage = StageThread::<StageError>::spawn("stuck-stage", |_stop| {
        // Ignores the stop flag, as a call stuck in librdkafka would.
        std::thread::sleep(Duration::from_secs(30));
        Ok(())
    })
    .unwrap();
    let started = Instant::now();
    trigger.trigger();
    let result = tokio::time::timeout(Duration::from_secs(10), runtime.serve(shutdown, stage))
        .await
        .expect("the bound holds");
    assert!(result.is_ok());
    assert!(started.elapsed() < Duration::from_secs(10));
}

//! What the change-detector benches share: the detector's config, and starting one.

use std::time::Duration;

use change_detector::{ChangeDetectorConfig, ChangeDetectorError};
use snapfeed_harness::broker::TestBroker;
use snapfeed_harness::endpoint::free_addr;
use snapfeed_harness::in_process::InProcessService;
use snapfeed_harness::schemas::{lab_results_mapping, schemas_dir};
use snapfeed_harness::service_process::guarantee_name;

/// The detector's config for `pipeline` on `broker`, HTTP on `http`, logging warnings only.
/// `BENCH_KAFKA_EXTRA` is appended to its `[kafka]` section (`\n` for a line break), to try
/// librdkafka properties; `BENCH_DETECTOR_EXTRA` to its `[detector]` section (e.g.
/// `batch_max_records = 50000`).
pub fn detector_config(
    broker: &TestBroker,
    pipeline: &str,
    http: std::net::SocketAddr,
) -> ChangeDetectorConfig {
    let text = format!(
        "[pipeline]\nname = {pipeline:?}\nprocessing_guarantee = {:?}\nschemas_dir = {:?}\n\
         [kafka]\nbootstrap_servers = {:?}\nrequest_timeout_ms = 30000\n{}\
         [http]\nlisten = {:?}\n[log]\nlevel = \"warn\"\n\
         [detector]\ndataset_mapping = {:?}\n{}",
        guarantee_name(broker.guarantee()),
        schemas_dir().display().to_string(),
        broker.bootstrap(),
        std::env::var("BENCH_KAFKA_EXTRA")
            .unwrap_or_default()
            .replace("\\n", "\n"),
        http.to_string(),
        lab_results_mapping().display().to_string(),
        std::env::var("BENCH_DETECTOR_EXTRA")
            .unwrap_or_default()
            .replace("\\n", "\n"),
    );
    toml::from_str(&text).expect("bench config parses")
}

/// A change-detector for `pipeline` on `broker`, run in-process and ready (`/readyz`: its
/// state restored) within `limit`.
pub async fn start_detector(
    broker: &TestBroker,
    pipeline: &str,
    limit: Duration,
) -> InProcessService<ChangeDetectorError> {
    let http = free_addr();
    let config = detector_config(broker, pipeline, http);
    let detector = InProcessService::spawn(
        "change-detector",
        http,
        Duration::from_secs(30),
        |shutdown| change_detector::run(config, shutdown),
    );
    detector.wait_ready(limit).await;
    detector
}

//! api-sink metrics (`snapfeed_api_sink_…`). Labels come from small fixed sets — never keys,
//! URLs or error strings.

use prometheus::{
    Counter, Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};
use snapfeed_runtime::metrics::MetricsBuilder;

use crate::retry::{Classification, Decision};

/// The metrics of one api-sink instance.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    /// Requests by outcome: `delivered`, `transient`, `permanent`.
    pub requests: IntCounterVec,
    /// `requests{outcome="delivered"}`, looked up once: it is counted on every delivery.
    pub requests_delivered: IntCounter,
    /// Request latency.
    pub request_duration: Histogram,
    /// Retries by reason: `connect_error`, `timeout`, `transport_error`, `rate_limited` (429),
    /// `server_error` (5xx), `http_status` (another listed status), `unauthorized`.
    pub retries: IntCounterVec,
    /// Dead letters by reason: `http_4xx`, `retry_budget_exhausted`, `undecodable`, `request_build_failed`.
    pub dead_letters: IntCounterVec,
    /// Changes delivered (a batch counts each change).
    pub delivered: IntCounter,
    /// Lookups after an ambiguous failure, by `result`: `landed` (nothing sent again),
    /// `partly_landed`, `not_landed`, `unknown` (the API could not say: all sent again).
    pub confirmations: IntCounterVec,
    /// Changes not sent again: an earlier run's receipt for them was read back on assignment,
    /// or they repeat a (key, version) this process already delivered.
    pub already_delivered: IntCounter,
    /// Partitions (lanes) currently waiting to retry.
    pub paused_partitions: IntGauge,
    /// Unix time of the last delivery.
    pub last_delivery: Gauge,
    /// Times the global backoff opened because most requests failed.
    pub global_backoff: IntCounter,
    /// Times the API's answer paused every lane, by `cause`: `retry_after` (the answer's
    /// header), `backoff` (a 429/503 without it).
    pub throttles: IntCounterVec,
    /// Time every lane was held by such a pause.
    pub throttled_seconds: Counter,
    /// The adaptive in-flight limit now (at most `max_in_flight`).
    pub concurrency_limit: IntGauge,
    /// Changes consumed and not yet committed.
    pub in_flight: IntGauge,
    /// Outcomes that could not be encoded, by `outcome`: `receipt`, `dead_letter`. Each one
    /// stalls its lane and holds its partition's committed offset (see `deliver::outcome`).
    pub unrecordable_outcomes: IntCounterVec,
    /// Lanes stopped at an outcome they could not record.
    pub stalled_lanes: IntGauge,
    /// Per partition of `changes` (label `partition`): changes not yet delivered and
    /// committed, from librdkafka's statistics every `sink.lag_interval_ms` (transaction
    /// markers not counted: see `undelivered`). Only the partitions this instance is assigned.
    pub consumer_lag: IntGaugeVec,
    /// From the file's claim by file-source to the change's delivery (seconds): the change's
    /// `detected_at`, which is its snapshot record's timestamp — the time file-source claimed
    /// the file — to the receipt.
    pub end_to_end: Histogram,
}

/// Buckets of [`SinkMetrics::end_to_end`]: a second to six hours (a file every 30 minutes).
pub const END_TO_END_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

impl SinkMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<SinkMetrics> {
        let metrics = MetricsBuilder::new(registry, crate::SERVICE);
        let requests = metrics.counters(
            "requests_total",
            "HTTP requests, by outcome.",
            "outcome",
            &["delivered", "transient", "permanent"],
        )?;
        Ok(SinkMetrics {
            requests_delivered: requests.get_metric_with_label_values(&["delivered"])?,
            requests,
            request_duration: metrics.histogram(
                "request_duration_seconds",
                "HTTP request latency.",
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            )?,
            retries: metrics.counters(
                "retries_total",
                "Retries, by reason.",
                "reason",
                &[
                    "connect_error",
                    "timeout",
                    "transport_error",
                    "rate_limited",
                    "server_error",
                    "http_status",
                    "unauthorized",
                ],
            )?,
            dead_letters: metrics.counters(
                "dead_letters_total",
                "Changes dead-lettered, by reason.",
                "reason",
                &[
                    "http_4xx",
                    "retry_budget_exhausted",
                    "undecodable",
                    "request_build_failed",
                ],
            )?,
            delivered: metrics.counter("deliveries_total", "Changes delivered.")?,
            confirmations: metrics.counters(
                "confirmations_total",
                "Lookups confirming an ambiguous send before sending again, by result.",
                "result",
                &["landed", "partly_landed", "not_landed", "unknown"],
            )?,
            already_delivered: metrics.counter(
                "already_delivered_total",
                "Changes not sent again: a receipt from an earlier run was found on assignment, \
                 or they repeat a (key, version) already delivered.",
            )?,
            paused_partitions: metrics
                .gauge("paused_partitions", "Partitions (lanes) waiting to retry.")?,
            last_delivery: metrics.float_gauge(
                "last_delivery_timestamp_seconds",
                "Unix time of the last delivery.",
            )?,
            global_backoff: metrics.counter(
                "global_backoff_total",
                "Times every lane backed off together because most requests failed.",
            )?,
            throttles: metrics.counters(
                "throttles_total",
                "Times an answer (429, 503 or Retry-After) paused every lane, by cause.",
                "cause",
                &["retry_after", "backoff"],
            )?,
            throttled_seconds: metrics.float_counter(
                "throttled_seconds_total",
                "Time every lane was paused because the API asked to slow down.",
            )?,
            concurrency_limit: metrics.gauge(
                "concurrency_limit",
                "Requests allowed in flight now (adaptive, at most max_in_flight).",
            )?,
            in_flight: metrics.gauge("in_flight", "Changes consumed and not yet committed.")?,
            unrecordable_outcomes: metrics.counters(
                "unrecordable_outcomes_total",
                "Receipts and dead letters that could not be encoded (each stalls its lane), \
                 by outcome.",
                "outcome",
                &["receipt", "dead_letter"],
            )?,
            stalled_lanes: metrics.gauge(
                "stalled_lanes",
                "Lanes stopped at a change whose outcome could not be recorded.",
            )?,
            consumer_lag: metrics.gauges(
                "consumer_lag",
                "Changes not yet delivered and committed, per assigned partition of changes.",
                "partition",
            )?,
            end_to_end: metrics.histogram(
                "end_to_end_seconds",
                "From the file's claim by file-source to the change's delivery.",
                END_TO_END_BUCKETS,
            )?,
        })
    }

    /// Sets `consumer_lag` from librdkafka's statistics: the assigned partitions of `topic`
    /// (a partition no longer assigned loses its series).
    pub fn record_lag(&self, statistics: &rdkafka::Statistics, topic: &str) {
        self.consumer_lag.reset();
        let Some(topic) = statistics.topics.get(topic) else {
            return;
        };
        for (partition, stats) in &topic.partitions {
            // librdkafka reports -1 for partitions it does not consume (and the internal -1
            // partition).
            if *partition < 0 || stats.consumer_lag < 0 {
                continue;
            }
            // The last stable offset (read_committed); the high watermark where it is unknown.
            let end = if stats.ls_offset >= 0 {
                stats.ls_offset
            } else {
                stats.hi_offset
            };
            let lag = undelivered(
                end,
                stats.next_offset,
                stats.app_offset,
                stats.committed_offset,
                stats.consumer_lag,
            );
            self.consumer_lag
                .with_label_values(&[&partition.to_string()])
                .set(lag);
        }
    }

    /// Counts one attempt's request (by outcome) and, for a failure that is retried or ends
    /// in a spent budget, its retry reason. The 401 that renews the credentials is not
    /// counted: the request is sent again at once, as if it had not happened.
    pub fn count_attempt(&self, classification: &Classification, decision: &Decision) {
        match (classification, decision) {
            (_, Decision::Reauthenticate) => {}
            (Classification::Delivered { .. }, _) => self.requests_delivered.inc(),
            (Classification::Transient { reason, .. }, _) => self.count_retry(reason),
            // Credentials refused: no change is at fault, so it is retried, never a dead letter.
            (Classification::Unauthorized { .. }, _) => self.count_retry("unauthorized"),
            (Classification::Permanent { .. }, _) => {
                self.requests.with_label_values(&["permanent"]).inc()
            }
        }
    }

    fn count_retry(&self, reason: &str) {
        self.requests.with_label_values(&["transient"]).inc();
        self.retries.with_label_values(&[reason]).inc();
    }
}

/// Changes of a partition not yet delivered and committed, from librdkafka's offsets: `end`
/// (the last stable offset), the fetch position `next`, the application's position `app`
/// (last message handed over + 1; negative before the first) and the `committed` offset.
///
/// librdkafka's own `consumer_lag` (end − committed) never reaches 0 on a transactional topic:
/// the commit marker after the last change takes an offset the sink never commits past. So
/// while everything handed over is committed, the lag is what is left to fetch (end − next;
/// the fetch position moves past markers); otherwise end − committed.
fn undelivered(end: i64, next: i64, app: i64, committed: i64, consumer_lag: i64) -> i64 {
    if end < 0 || next < 0 {
        return consumer_lag.max(0);
    }
    if app < 0 || committed >= app {
        (end - next).max(0)
    } else {
        (end - committed.max(0)).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::undelivered;

    #[test]
    fn a_transaction_marker_is_not_lag() {
        // Changes 0..=9 delivered and committed (10); the commit marker at 10; end 11.
        assert_eq!(undelivered(11, 11, 10, 10, 1), 0);
        // The same after a restart, before anything is consumed.
        assert_eq!(undelivered(11, 11, -1001, 10, 1), 0);
        // Not fetched yet: 5 changes past the position.
        assert_eq!(undelivered(16, 11, 10, 10, 6), 5);
        // Fetched and handed over, not delivered: from the committed offset.
        assert_eq!(undelivered(16, 16, 15, 10, 6), 6);
        // Unknown offsets: librdkafka's figure.
        assert_eq!(undelivered(-1, -1, -1, -1, 3), 3);
    }
}

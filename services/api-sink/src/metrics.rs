//! api-sink metrics (`snapfeed_api_sink_…`). Labels come from small fixed sets — never keys,
//! URLs or error strings.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

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
    /// Partitions (lanes) currently waiting to retry.
    pub paused_partitions: IntGauge,
    /// Unix time of the last delivery.
    pub last_delivery: Gauge,
    /// Times the global backoff opened because most requests failed.
    pub global_backoff: IntCounter,
    /// Changes consumed and not yet committed.
    pub in_flight: IntGauge,
}

impl SinkMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<SinkMetrics> {
        let requests = IntCounterVec::new(
            Opts::new(
                "snapfeed_api_sink_requests_total",
                "HTTP requests, by outcome.",
            ),
            &["outcome"],
        )?;
        let m = SinkMetrics {
            requests_delivered: requests.get_metric_with_label_values(&["delivered"])?,
            requests,
            request_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "snapfeed_api_sink_request_duration_seconds",
                    "HTTP request latency.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            )?,
            retries: IntCounterVec::new(
                Opts::new("snapfeed_api_sink_retries_total", "Retries, by reason."),
                &["reason"],
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "snapfeed_api_sink_dead_letters_total",
                    "Changes dead-lettered, by reason.",
                ),
                &["reason"],
            )?,
            delivered: IntCounter::new("snapfeed_api_sink_deliveries_total", "Changes delivered.")?,
            paused_partitions: IntGauge::new(
                "snapfeed_api_sink_paused_partitions",
                "Partitions (lanes) waiting to retry.",
            )?,
            last_delivery: Gauge::new(
                "snapfeed_api_sink_last_delivery_timestamp_seconds",
                "Unix time of the last delivery.",
            )?,
            global_backoff: IntCounter::new(
                "snapfeed_api_sink_global_backoff_total",
                "Times every lane backed off together because most requests failed.",
            )?,
            in_flight: IntGauge::new(
                "snapfeed_api_sink_in_flight",
                "Changes consumed and not yet committed.",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.delivered.clone()))?;
        registry.register(Box::new(m.paused_partitions.clone()))?;
        registry.register(Box::new(m.last_delivery.clone()))?;
        registry.register(Box::new(m.global_backoff.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        for outcome in ["delivered", "transient", "permanent"] {
            m.requests.with_label_values(&[outcome]);
        }
        for reason in [
            "http_4xx",
            "retry_budget_exhausted",
            "undecodable",
            "request_build_failed",
        ] {
            m.dead_letters.with_label_values(&[reason]);
        }
        Ok(m)
    }
}

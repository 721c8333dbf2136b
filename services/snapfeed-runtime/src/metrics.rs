//! Declaring a stage's metrics: [`MetricsBuilder`] creates and registers each one under the
//! service's prefix (`snapfeed_<service>_<what>_<unit>`, `_total` for counters), and sets every
//! label value of a labelled counter up front, so a series exists (at 0) before its first event
//! and an alert on `increase(…)` sees the first one. Labels come from small fixed sets given
//! here — never keys, file names or error strings.

use prometheus::{
    Counter, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

/// Creates metrics named `snapfeed_<service>_<name>` and registers them.
#[derive(Debug)]
pub struct MetricsBuilder<'r> {
    registry: &'r Registry,
    prefix: String,
}

impl<'r> MetricsBuilder<'r> {
    /// For `service` (`change-detector` → prefix `snapfeed_change_detector_`).
    pub fn new(registry: &'r Registry, service: &str) -> MetricsBuilder<'r> {
        MetricsBuilder {
            registry,
            prefix: format!("snapfeed_{}_", crate::service::metric_service(service)),
        }
    }

    /// The full name of `name`.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A counter (`name` ends in `_total`).
    pub fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.register(IntCounter::new(self.name(name), help)?)
    }

    /// A floating-point counter (`name` ends in `_seconds_total`: time spent in a state).
    pub fn float_counter(&self, name: &str, help: &str) -> prometheus::Result<Counter> {
        self.register(Counter::new(self.name(name), help)?)
    }

    /// A counter with one label, every value of which exists from the start.
    pub fn counters(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let counters = self.register(IntCounterVec::new(
            Opts::new(self.name(name), help),
            &[label],
        )?)?;
        for value in values {
            counters.with_label_values(&[value]);
        }
        Ok(counters)
    }

    /// An integer gauge with one label whose values come and go (e.g. assigned partitions).
    pub fn gauges(&self, name: &str, help: &str, label: &str) -> prometheus::Result<IntGaugeVec> {
        self.register(IntGaugeVec::new(
            Opts::new(self.name(name), help),
            &[label],
        )?)
    }

    /// An integer gauge.
    pub fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.register(IntGauge::new(self.name(name), help)?)
    }

    /// A floating-point gauge (timestamps, ratios).
    pub fn float_gauge(&self, name: &str, help: &str) -> prometheus::Result<Gauge> {
        self.register(Gauge::new(self.name(name), help)?)
    }

    /// A histogram with the given bucket bounds.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> prometheus::Result<Histogram> {
        self.register(Histogram::with_opts(
            HistogramOpts::new(self.name(name), help).buckets(buckets.to_vec()),
        )?)
    }

    fn register<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        metric: M,
    ) -> prometheus::Result<M> {
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn names_carry_the_service_prefix_and_label_values_exist_from_the_start() {
        let registry = Registry::new();
        let metrics = MetricsBuilder::new(&registry, "change-detector");
        metrics
            .counters(
                "records_total",
                "Records.",
                "outcome",
                &["created", "updated"],
            )
            .unwrap();
        metrics.gauge("state_keys", "Keys.").unwrap();
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("snapfeed_change_detector_records_total{outcome=\"created\"} 0"));
        assert!(text.contains("snapfeed_change_detector_records_total{outcome=\"updated\"} 0"));
        assert!(text.contains("snapfeed_change_detector_state_keys 0"));
        assert!(
            metrics.gauge("state_keys", "Again.").is_err(),
            "a clash is an error, not a second series"
        );
    }
}

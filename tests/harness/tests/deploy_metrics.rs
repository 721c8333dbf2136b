//! Every `snapfeed_…` metric the alert rules and dashboards under `deploy/` refer to is one the
//! services actually export — so an alert can never watch a metric that was renamed away, and a
//! dashboard panel for a metric that does not exist fails CI instead of showing "No data".
//!
//! Exported names come from the services' sources, read as text (no service is started):
//! string literals `"snapfeed_…"` handed to a metric constructor (`Opts::new`, `IntCounter::new`,
//! `Gauge::new`, `HistogramOpts::new`, …). A histogram exports `_bucket`, `_sum` and `_count`
//! series (never its bare name); counters are written with `_total` in the source already. The
//! per-service `snapfeed_<service>_build_info` gauge is built from a format string in
//! snapfeed-runtime and is expanded for each service's `SERVICE` name. Metrics declared through
//! the runtime's `MetricsBuilder` (`.counter("rows_total", …)`, `.histogram(…)`, …) are named
//! without the prefix; they get the `snapfeed_<service>_` of the crate they are declared in.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const PREFIX: &str = "snapfeed_";

/// Metric constructors of the `prometheus` crate whose first argument is the name; the one a
/// literal is passed to says what kind of metric it names. `HistogramOpts::new(` must be tried
/// before `Opts::new(`, its suffix.
const CONSTRUCTORS: &[(&str, MetricKind)] = &[
    ("HistogramOpts::new(", MetricKind::Histogram),
    ("Opts::new(", MetricKind::Plain),
    ("IntCounter::new(", MetricKind::Plain),
    ("Counter::new(", MetricKind::Plain),
    ("IntGauge::new(", MetricKind::Plain),
    ("Gauge::new(", MetricKind::Plain),
];

/// `MetricsBuilder` methods whose first argument is the name without the service prefix.
const BUILDER_METHODS: &[(&str, MetricKind)] = &[
    (".histogram(", MetricKind::Histogram),
    (".counters(", MetricKind::Plain),
    (".counter(", MetricKind::Plain),
    (".float_gauge(", MetricKind::Plain),
    (".float_counter(", MetricKind::Plain),
    (".gauges(", MetricKind::Plain),
    (".gauge(", MetricKind::Plain),
];

/// The format string snapfeed-runtime builds each service's build-info gauge name from.
const BUILD_INFO_FORMAT: &str = "\"snapfeed_{}_build_info\"";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricKind {
    /// Counter or gauge (or a vec of them): one series name, as written.
    Plain,
    /// `_bucket`, `_sum`, `_count`.
    Histogram,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'
}

/// Source text without its unit tests (a `#[cfg(test)] mod` closes each file by convention), so
/// a metric registered only in a test does not count as exported.
fn without_tests(text: &str) -> &str {
    let mut from = 0;
    while let Some(offset) = text[from..].find("#[cfg(test)]") {
        let at = from + offset;
        let item = text[at + "#[cfg(test)]".len()..].trim_start();
        if ["mod ", "pub mod ", "pub(crate) mod "]
            .iter()
            .any(|start| item.starts_with(start))
        {
            return &text[..at];
        }
        from = at + 1;
    }
    text
}

/// `"snapfeed_…"` literals passed as the name to a metric constructor, with their kind.
fn exported_in_source(text: &str) -> Vec<(String, MetricKind)> {
    let text = without_tests(text);
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let needle = format!("\"{PREFIX}");
    let mut from = 0;
    while let Some(offset) = text[from..].find(&needle) {
        let start = from + offset + 1;
        let mut end = start + PREFIX.len();
        while end < bytes.len() && is_name_char(bytes[end]) {
            end += 1;
        }
        from = end;
        // Only a whole literal is a name (`"snapfeed_{}_build_info"` is a format string).
        if bytes.get(end) != Some(&b'"') {
            continue;
        }
        // The name is a constructor's first argument: only whitespace between `new(` and it.
        let before = text[..start - 1].trim_end();
        if let Some((_, kind)) = CONSTRUCTORS
            .iter()
            .find(|(token, _)| before.ends_with(token))
        {
            found.push((text[start..end].to_string(), *kind));
        }
    }
    found
}

/// Names declared through `MetricsBuilder` in a file of `service`'s crate, prefixed as the
/// builder prefixes them.
fn built_in_source(text: &str, service: &str) -> Vec<(String, MetricKind)> {
    let text = without_tests(text);
    if !text.contains("MetricsBuilder::new(") {
        return Vec::new();
    }
    let prefix = format!("{PREFIX}{}_", service.replace('-', "_"));
    let mut found = Vec::new();
    for (method, kind) in BUILDER_METHODS {
        let mut from = 0;
        while let Some(offset) = text[from..].find(method) {
            let after = &text[from + offset + method.len()..];
            from += offset + method.len();
            let Some(literal) = after.trim_start().strip_prefix('"') else {
                continue;
            };
            let end = literal.bytes().take_while(|&c| is_name_char(c)).count();
            if literal.as_bytes().get(end) == Some(&b'"') && end > 0 {
                found.push((format!("{prefix}{}", &literal[..end]), *kind));
            }
        }
    }
    found
}

/// Every series name the services export.
fn exported_metrics(root: &Path) -> BTreeSet<String> {
    // Each source file with the service of its crate (if it is a service crate).
    let mut files: Vec<(PathBuf, Option<String>)> = Vec::new();
    let mut services = Vec::new();
    for entry in std::fs::read_dir(root.join("services")).unwrap() {
        let dir = entry.unwrap().path();
        let service = std::fs::read_to_string(dir.join("src/lib.rs"))
            .ok()
            .and_then(|lib| service_name(&lib));
        if dir.join("src").is_dir() {
            let mut crate_files = Vec::new();
            rust_files(&dir.join("src"), &mut crate_files);
            files.extend(crate_files.into_iter().map(|f| (f, service.clone())));
        }
        services.extend(service);
    }
    let mut names = BTreeSet::new();
    let mut build_info_format = false;
    for (file, service) in &files {
        let text = std::fs::read_to_string(file).unwrap();
        build_info_format |= without_tests(&text).contains(BUILD_INFO_FORMAT);
        let built = service
            .as_deref()
            .map(|service| built_in_source(&text, service))
            .unwrap_or_default();
        for (name, kind) in exported_in_source(&text).into_iter().chain(built) {
            match kind {
                MetricKind::Plain => {
                    names.insert(name);
                }
                MetricKind::Histogram => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        }
    }
    assert!(
        build_info_format,
        "snapfeed-runtime no longer builds {BUILD_INFO_FORMAT}: update this test"
    );
    for expected in ["file-source", "change-detector", "api-sink"] {
        assert!(
            services.iter().any(|s| s == expected),
            "no `pub const SERVICE: &str = \"{expected}\"` among {services:?}"
        );
    }
    for service in services {
        names.insert(format!("snapfeed_{}_build_info", service.replace('-', "_")));
    }
    names
}

/// `pub const SERVICE: &str = "file-source";` → `file-source`.
fn service_name(lib_rs: &str) -> Option<String> {
    let rest = &lib_rs[lib_rs.find("pub const SERVICE: &str = \"")? + 27..];
    Some(rest[..rest.find('"')?].to_string())
}

/// `snapfeed_…` names referenced in a deploy file (PromQL in YAML or JSON), starting at a word
/// boundary so `my_snapfeed_x` is not read as one.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find(PREFIX) {
        let start = from + offset;
        let mut end = start + PREFIX.len();
        while end < bytes.len() && is_name_char(bytes[end]) {
            end += 1;
        }
        from = end;
        if start > 0 && (is_name_char(bytes[start - 1]) || bytes[start - 1].is_ascii_uppercase()) {
            continue;
        }
        names.insert(text[start..end].to_string());
    }
    names
}

/// Names in `text` that no service exports.
fn unknown_metrics(text: &str, exported: &BTreeSet<String>) -> Vec<String> {
    referenced_metrics(text)
        .into_iter()
        .filter(|name| !exported.contains(name))
        .collect()
}

/// Alert rules and dashboards: every YAML and JSON file under deploy/prometheus and deploy/grafana.
fn deploy_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path
                .extension()
                .is_some_and(|ext| ext == "yml" || ext == "yaml" || ext == "json")
            {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for dir in ["deploy/prometheus", "deploy/grafana"] {
        walk(&root.join(dir), &mut files);
    }
    files.sort();
    files
}

#[test]
fn alerts_and_dashboards_only_use_exported_metrics() {
    let root = workspace_root();
    let exported = exported_metrics(&root);
    let mut unknown: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut used = BTreeSet::new();
    for file in deploy_files(&root) {
        let text = std::fs::read_to_string(&file).unwrap();
        let relative = file.strip_prefix(&root).unwrap().display().to_string();
        used.extend(referenced_metrics(&text));
        let bad = unknown_metrics(&text, &exported);
        if !bad.is_empty() {
            unknown.insert(relative, bad);
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics referenced under deploy/ that no service exports:\n{}\nexported:\n  {}",
        unknown
            .iter()
            .map(|(file, names)| format!("  {file}: {}", names.join(", ")))
            .collect::<Vec<_>>()
            .join("\n"),
        exported.iter().cloned().collect::<Vec<_>>().join("\n  ")
    );
    // Both the alerts and the dashboard were actually read.
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/snapfeed.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            referenced_metrics(&text).len() >= 5,
            "{file} references hardly any snapfeed_ metric"
        );
    }
    assert!(used.iter().all(|name| exported.contains(name)));
}

#[test]
fn alerts_watch_every_failure_operators_rely_on() {
    let root = workspace_root();
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let used = referenced_metrics(&alerts);
    for metric in [
        "snapfeed_change_detector_consumer_lag",
        "snapfeed_api_sink_dead_letters_total",
        "snapfeed_api_sink_paused_partitions",
        "snapfeed_file_source_files_total",
        "snapfeed_change_detector_delete_guard_tripped_total",
        "snapfeed_file_source_last_success_timestamp_seconds",
        "snapfeed_file_source_build_info",
        "snapfeed_change_detector_build_info",
        "snapfeed_api_sink_build_info",
    ] {
        assert!(used.contains(metric), "no alert on {metric}");
    }
}

#[test]
fn exported_names_are_read_from_the_sources() {
    let exported = exported_metrics(&workspace_root());
    // One of each kind, as the scanner must see them.
    for name in [
        "snapfeed_file_source_rows_total",     // MetricsBuilder::counters
        "snapfeed_api_sink_deliveries_total",  // IntCounter::new
        "snapfeed_api_sink_paused_partitions", // MetricsBuilder::gauge
        "snapfeed_file_source_last_success_timestamp_seconds", // MetricsBuilder::float_gauge
        "snapfeed_api_sink_throttled_seconds_total", // MetricsBuilder::float_counter
        "snapfeed_change_detector_state_keys", // MetricsBuilder::gauge
        "snapfeed_change_detector_restore_seconds_bucket", // MetricsBuilder::histogram
        "snapfeed_change_detector_restore_seconds_sum",
        "snapfeed_change_detector_restore_seconds_count",
        "snapfeed_api_sink_build_info", // the runtime's format string
    ] {
        assert!(
            exported.contains(name),
            "{name} not found among {exported:?}"
        );
    }
    // A histogram's bare name is no series; a test-only metric is not exported.
    assert!(!exported.contains("snapfeed_change_detector_restore_seconds"));
    assert!(!exported.contains("snapfeed_test_things_total"));
}

#[test]
fn a_panel_for_a_metric_that_does_not_exist_is_caught() {
    let exported = exported_metrics(&workspace_root());
    let panel = r#"{"targets": [
        {"expr": "sum(rate(snapfeed_api_sink_deliveries_total[5m]))"},
        {"expr": "sum(rate(snapfeed_api_sink_deliveries_per_second[5m]))"},
        {"expr": "histogram_quantile(0.9, rate(snapfeed_change_detector_restore_seconds[5m]))"}
    ]}"#;
    assert_eq!(
        unknown_metrics(panel, &exported),
        [
            "snapfeed_api_sink_deliveries_per_second",
            "snapfeed_change_detector_restore_seconds"
        ]
    );
}

#[test]
fn scanners_read_names_exactly() {
    let source = r#"
        let a = IntCounter::new("snapfeed_x_done_total", "Done.")?;
        let b = Histogram::with_opts(
            HistogramOpts::new(
                "snapfeed_x_wait_seconds",
                "Wait.",
            ),
        )?;
        let c = Opts::new(format!("snapfeed_{}_build_info", s), "Info.");
        tracing::info!(message = "snapfeed_not_a_metric");
        #[cfg(test)]
        use std::fmt;
        let d = IntGauge::new("snapfeed_x_open", "Open.")?;
        #[cfg(test)]
        mod tests { fn t() { IntCounter::new("snapfeed_test_only_total", "t"); } }
    "#;
    assert_eq!(
        exported_in_source(source),
        [
            ("snapfeed_x_done_total".to_string(), MetricKind::Plain),
            ("snapfeed_x_wait_seconds".to_string(), MetricKind::Histogram),
            ("snapfeed_x_open".to_string(), MetricKind::Plain),
        ]
    );
    let promql =
        "rate(snapfeed_a_total[5m]) / my_snapfeed_b + SNAPFEED_C + snapfeed_d{x=\"snapfeed-e\"}";
    assert_eq!(
        referenced_metrics(promql).into_iter().collect::<Vec<_>>(),
        ["snapfeed_a_total", "snapfeed_d"]
    );
    assert_eq!(
        service_name("pub const SERVICE: &str = \"api-sink\";").as_deref(),
        Some("api-sink")
    );
}

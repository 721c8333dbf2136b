//! Reading a service's `/metrics` (Prometheus text exposition): one series' value.

/// The value of one series (`name{labels}` as exposed, leaving out the `pipeline` label every
/// series carries) in Prometheus text; `None` when the series is absent (a counter never
/// incremented is often not exposed at all).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (without_pipeline(name) == series)
                .then(|| value.parse().ok())
                .flatten()
        })
}

/// `series` without its `pipeline="…"` label (and without `{}` when it was the only one).
pub fn without_pipeline(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else {
        return series.to_string();
    };
    let labels = labels.trim_end_matches('}');
    let kept: Vec<&str> = labels
        .split(',')
        .filter(|label| !label.is_empty() && !label.starts_with("pipeline="))
        .collect();
    if kept.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", kept.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exactly_the_named_series() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\nx_total{outcome=\"a\"} 3\n\
                    x_total{outcome=\"ab\"} 5\nx_total_more 7\n";
        assert_eq!(metric(text, "x_total{outcome=\"a\"}"), Some(3.0));
        assert_eq!(metric(text, "x_total{outcome=\"ab\"}"), Some(5.0));
        assert_eq!(metric(text, "x_total"), None);
        assert_eq!(metric(text, "x_total_more"), Some(7.0));
    }

    #[test]
    fn the_pipeline_label_is_left_out() {
        let text = "x_total{outcome=\"a\",pipeline=\"p\"} 3\ny{pipeline=\"p\"} 4\n";
        assert_eq!(metric(text, "x_total{outcome=\"a\"}"), Some(3.0));
        assert_eq!(metric(text, "y"), Some(4.0));
    }
}

//! Reading a service's `/metrics` (Prometheus text exposition): one series' value.

/// The value of one series (`name{labels}` exactly as exposed) in Prometheus text; `None` when
/// the series is absent (a counter never incremented is often not exposed at all).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
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
}

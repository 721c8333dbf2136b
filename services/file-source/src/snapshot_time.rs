//! When a snapshot was taken — its **snapshot time** — stamped on every record of the file
//! (header `snapfeed-snapshot-time`, ms since the Unix epoch), so the detector can refuse a
//! snapshot older than the newest it has applied for the stream (a file re-sent from a
//! backup, two files arriving out of order).
//!
//! `[source.snapshot_time] from =`:
//! - `auto` (default): a date-time written in the file name in one of the common layouts
//!   ([`AUTO_LAYOUTS`], e.g. `elr_20261203_103000.csv`, `lab-2026-12-03T10-30-00.csv`,
//!   `export_20261203.csv`), else the file's modification time;
//! - `file_name`: `pattern`, a strftime pattern found in the file name (e.g.
//!   `elr_%Y%m%d_%H%M%S`); a file whose name does not match fails with an error naming both;
//! - `modified`: the file's modification time (kept when it is claimed and moved);
//! - `none`: no snapshot time, so no ordering guard.
//!
//! Times without an offset (`%z`) are UTC. No guarantee of its own: the time is computed once
//! per file, from the name and the mtime, so a resumed or re-sent file gets the same one.

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};
use snapfeed_runtime::config::ConfigError;

/// Date-time layouts `auto` looks for in a file name, most specific first: the first that
/// matches at a run of digits wins.
pub const AUTO_LAYOUTS: &[&str] = &[
    "%Y%m%d_%H%M%S",
    "%Y%m%d-%H%M%S",
    "%Y%m%dT%H%M%S",
    "%Y%m%d%H%M%S",
    "%Y-%m-%dT%H-%M-%S",
    "%Y-%m-%d_%H-%M-%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y%m%d_%H%M",
    "%Y%m%d%H%M",
    "%Y-%m-%d_%H-%M",
    "%Y-%m-%d",
    "%Y%m%d",
];

/// Where a file's snapshot time comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotTimeSource {
    /// A date-time in the file name in a common layout, else the modification time.
    #[default]
    Auto,
    /// `pattern` found in the file name; no match fails the file.
    FileName,
    /// The file's modification time.
    Modified,
    /// No snapshot time (no ordering guard).
    None,
}

/// `[source.snapshot_time]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotTimeConfig {
    /// Where the time comes from.
    #[serde(default)]
    pub from: SnapshotTimeSource,
    /// With `from = "file_name"`: a strftime pattern found in the name, e.g. `elr_%Y%m%d_%H%M%S`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

/// Why a file has no snapshot time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotTimeError {
    /// `from = "file_name"` and the name does not contain the pattern.
    #[error("file name {file:?} does not contain a date-time of source.snapshot_time.pattern {pattern:?}")]
    NoMatch {
        /// The file name.
        file: String,
        /// The pattern.
        pattern: String,
    },
    /// `from = "modified"` and the file system gives no modification time.
    #[error("file {file:?} has no modification time (source.snapshot_time.from = \"modified\")")]
    NoModifiedTime {
        /// The file name.
        file: String,
    },
}

impl SnapshotTimeConfig {
    /// Checks the pattern goes with `file_name` and parses as a date-time pattern.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const KEY: &str = "source.snapshot_time.pattern";
        match (&self.from, &self.pattern) {
            (SnapshotTimeSource::FileName, None) => Err(ConfigError::invalid(
                KEY,
                "(missing)",
                "a strftime pattern such as \"elr_%Y%m%d_%H%M%S\", as from = \"file_name\"",
            )),
            (SnapshotTimeSource::FileName, Some(pattern)) => {
                let items: Vec<Item<'_>> = StrftimeItems::new(pattern).collect();
                let has_year = pattern.contains("%Y");
                if items.contains(&Item::Error) || !has_year {
                    return Err(ConfigError::invalid(
                        KEY,
                        format!("{pattern:?}"),
                        "a strftime pattern with at least %Y%m%d (e.g. \"elr_%Y%m%d_%H%M%S\")",
                    ));
                }
                Ok(())
            }
            (_, Some(pattern)) => Err(ConfigError::invalid(
                KEY,
                format!("{pattern:?}"),
                "no pattern unless source.snapshot_time.from = \"file_name\"",
            )),
            (_, None) => Ok(()),
        }
    }

    /// The snapshot time of the file `name` last modified at `modified_ms`.
    pub fn of(
        &self,
        name: &str,
        modified_ms: Option<i64>,
    ) -> Result<Option<i64>, SnapshotTimeError> {
        match (self.from, &self.pattern) {
            (SnapshotTimeSource::None, _) => Ok(None),
            (SnapshotTimeSource::Modified, _) => modified_ms
                .map(Some)
                .ok_or_else(|| SnapshotTimeError::NoModifiedTime { file: name.into() }),
            (SnapshotTimeSource::FileName, Some(pattern)) => find_in_name(name, &[pattern])
                .map(Some)
                .ok_or_else(|| SnapshotTimeError::NoMatch {
                    file: name.into(),
                    pattern: pattern.clone(),
                }),
            // Checked at start: `file_name` always has a pattern.
            (SnapshotTimeSource::FileName, None) => Ok(None),
            (SnapshotTimeSource::Auto, _) => Ok(find_in_name(name, AUTO_LAYOUTS).or(modified_ms)),
        }
    }
}

/// The first date-time of one of `patterns` in `name` (ms, UTC unless the pattern has an
/// offset). Tried where a pattern's first character can start: for a pattern that starts with a
/// digit field, only at the start of a run of digits, and a match may not end inside one — so
/// `%Y%m%d` never takes the first eight of fourteen digits.
fn find_in_name(name: &str, patterns: &[&str]) -> Option<i64> {
    let bytes = name.as_bytes();
    for pattern in patterns {
        let starts_with_digit_field = pattern.starts_with('%');
        for (start, _) in name.char_indices() {
            if starts_with_digit_field {
                let at_run_start = bytes[start].is_ascii_digit()
                    && (start == 0 || !bytes[start - 1].is_ascii_digit());
                if !at_run_start {
                    continue;
                }
            }
            if let Some(millis) = parse_at(&name[start..], pattern) {
                return Some(millis);
            }
        }
    }
    None
}

/// A date-time of `pattern` at the start of `text` that does not end inside a run of digits.
fn parse_at(text: &str, pattern: &str) -> Option<i64> {
    let clean = |rest: &str| !rest.starts_with(|c: char| c.is_ascii_digit());
    if let Ok((time, rest)) = DateTime::parse_and_remainder(text, pattern) {
        return clean(rest).then(|| time.timestamp_millis());
    }
    if let Ok((time, rest)) = NaiveDateTime::parse_and_remainder(text, pattern) {
        return clean(rest).then(|| time.and_utc().timestamp_millis());
    }
    if let Ok((date, rest)) = NaiveDate::parse_and_remainder(text, pattern) {
        let midnight = date.and_hms_opt(0, 0, 0)?;
        return clean(rest).then(|| midnight.and_utc().timestamp_millis());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    fn auto(name: &str) -> Option<i64> {
        SnapshotTimeConfig::default().of(name, None).unwrap()
    }

    #[test]
    fn auto_finds_the_common_layouts_in_file_names() {
        let cases = [
            ("elr_20261203_103000.csv", "2026-12-03T10:30:00Z"),
            ("elr_20261203-103000.csv.gz", "2026-12-03T10:30:00Z"),
            ("lab_a_20261203T103000.csv", "2026-12-03T10:30:00Z"),
            ("20261203103000.csv", "2026-12-03T10:30:00Z"),
            ("lab-2026-12-03T10-30-00.csv", "2026-12-03T10:30:00Z"),
            ("lab 2026-12-03 10:30:00.csv", "2026-12-03T10:30:00Z"),
            ("elr_20261203_1030.csv", "2026-12-03T10:30:00Z"),
            ("export_2026-12-03.csv", "2026-12-03T00:00:00Z"),
            ("export_20261203.csv", "2026-12-03T00:00:00Z"),
            // A digit run that is no date is passed over for one that is.
            ("v2_batch7_20261203_103000.csv", "2026-12-03T10:30:00Z"),
        ];
        for (name, expected) in cases {
            assert_eq!(auto(name), Some(utc(expected)), "{name}");
        }
    }

    #[test]
    fn auto_falls_back_to_the_modification_time() {
        let config = SnapshotTimeConfig::default();
        assert_eq!(config.of("lab_results.csv", Some(42)).unwrap(), Some(42));
        // Twelve digits are not a date, and eight of them are not taken as one.
        assert_eq!(config.of("run_123456789012.csv", Some(7)).unwrap(), Some(7));
        assert_eq!(config.of("lab_results.csv", None).unwrap(), None);
    }

    #[test]
    fn a_file_name_pattern_is_found_anywhere_in_the_name_or_fails_the_file() {
        let config = SnapshotTimeConfig {
            from: SnapshotTimeSource::FileName,
            pattern: Some("elr_%Y%m%d_%H%M%S".into()),
        };
        config.validate().unwrap();
        assert_eq!(
            config
                .of("state-x_elr_20261203_103000.csv", Some(1))
                .unwrap(),
            Some(utc("2026-12-03T10:30:00Z"))
        );
        let error = config.of("lab_20261203.csv", Some(1)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "file name \"lab_20261203.csv\" does not contain a date-time of \
             source.snapshot_time.pattern \"elr_%Y%m%d_%H%M%S\""
        );
        let with_offset = SnapshotTimeConfig {
            from: SnapshotTimeSource::FileName,
            pattern: Some("%Y%m%dT%H%M%S%z".into()),
        };
        assert_eq!(
            with_offset.of("x_20261203T103000+0100.csv", None).unwrap(),
            Some(utc("2026-12-03T09:30:00Z"))
        );
    }

    #[test]
    fn modified_and_none() {
        let modified = SnapshotTimeConfig {
            from: SnapshotTimeSource::Modified,
            pattern: None,
        };
        assert_eq!(
            modified.of("elr_20261203_103000.csv", Some(5)).unwrap(),
            Some(5)
        );
        assert!(matches!(
            modified.of("a.csv", None),
            Err(SnapshotTimeError::NoModifiedTime { .. })
        ));
        let none = SnapshotTimeConfig {
            from: SnapshotTimeSource::None,
            pattern: None,
        };
        assert_eq!(none.of("elr_20261203_103000.csv", Some(5)).unwrap(), None);
    }

    #[test]
    fn a_pattern_is_checked_at_start() {
        let check = |from, pattern: Option<&str>| {
            SnapshotTimeConfig {
                from,
                pattern: pattern.map(str::to_string),
            }
            .validate()
            .map_err(|e| e.to_string())
        };
        for (from, pattern) in [
            (SnapshotTimeSource::FileName, None),
            (SnapshotTimeSource::FileName, Some("elr_%Q")),
            (SnapshotTimeSource::FileName, Some("elr_%H%M")),
            (SnapshotTimeSource::Auto, Some("elr_%Y%m%d")),
        ] {
            let error = check(from, pattern).unwrap_err();
            assert!(
                error.starts_with("config key `source.snapshot_time.pattern`"),
                "{error}"
            );
        }
        assert!(check(SnapshotTimeSource::Auto, None).is_ok());
    }
}

//! Health data that must never reach a log: the generated rows' names, dates of birth, phone
//! numbers and test results.
//!
//! Values are chosen so that none can match a log line by accident: names of at least six
//! letters, compared as whole words and case-sensitively; dates of birth in the file's form
//! (`MM/DD/YYYY` or ISO) and in ISO form (how a decoded record would print it) — all before
//! 2020, while log timestamps are of today; phones by their fictional `) 555-01` exchange; results
//! by their distinctive texts and SNOMED codes. A log is scanned once, word by word, so a suite's
//! worth of logs is checked in linear time.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::NaiveDate;
use snapfeed_harness::generator::Snapshot;

/// Result texts and codes of the generator that cannot occur in a log by accident.
const RESULT_VALUES: [&str; 5] = [
    "Not Detected",
    "Inconclusive",
    "260373001",
    "260415000",
    "419984006",
];

/// Every phone number the generator writes contains this (`(AAA) 555-01NN`).
const PHONE_MARK: &str = ") 555-01";

/// The values to look for.
#[derive(Debug, Default, Clone)]
pub struct HealthData {
    names: BTreeSet<String>,
    dates_of_birth: BTreeSet<String>,
}

/// One value found in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// The log file.
    pub log: String,
    /// 1-based line.
    pub line: usize,
    /// What kind of value (never the value itself: the report must not leak either).
    pub kind: &'static str,
}

impl HealthData {
    /// Remembers the names and dates of birth of every row of `snapshot`.
    pub fn remember(&mut self, snapshot: &Snapshot) {
        for row in snapshot.rows() {
            for column in ["Patient_Last_Name", "Patient_First_Name"] {
                if let Some(name) = row.get(column) {
                    if name.chars().count() >= 6 {
                        self.names.insert(name.to_string());
                    }
                }
            }
            if let Some(dob) = row.get("Patient_DOB") {
                self.dates_of_birth.insert(dob.to_string());
                if let Ok(date) = NaiveDate::parse_from_str(dob, "%m/%d/%Y") {
                    self.dates_of_birth
                        .insert(date.format("%Y-%m-%d").to_string());
                }
            }
        }
    }

    /// How many distinct names and dates of birth are looked for.
    pub fn len(&self) -> usize {
        self.names.len() + self.dates_of_birth.len()
    }

    /// Whether nothing was remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every place in `text` (the log `log`) where a value appears.
    pub fn scan(&self, log: &str, text: &str) -> Vec<Leak> {
        let mut leaks = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let mut leak = |kind| {
                leaks.push(Leak {
                    log: log.to_string(),
                    line: number + 1,
                    kind,
                })
            };
            if line.contains(PHONE_MARK) {
                leak("phone");
            }
            if RESULT_VALUES.iter().any(|value| line.contains(value)) {
                leak("test result");
            }
            for word in line.split(|c: char| !c.is_alphanumeric()) {
                if word.len() >= 6 && self.names.contains(word) {
                    leak("name");
                }
            }
            for token in line.split(|c: char| !(c.is_ascii_digit() || c == '/' || c == '-')) {
                if token.len() == 10 && self.dates_of_birth.contains(token) {
                    leak("date of birth");
                }
            }
        }
        leaks
    }

    /// Scans every file in `logs`; returns every leak found.
    pub fn scan_files<'a>(&self, logs: impl IntoIterator<Item = &'a Path>) -> Vec<Leak> {
        let mut leaks = Vec::new();
        for path in logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            leaks.extend(self.scan(&path.display().to_string(), &text));
        }
        leaks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_kind_and_not_ordinary_log_text() {
        let snapshot = Snapshot::initial(300, 7);
        let mut data = HealthData::default();
        data.remember(&snapshot);
        assert!(!data.is_empty());
        let row = snapshot
            .rows()
            .iter()
            .find(|r| r.get("Patient_Last_Name").is_some_and(|n| n.len() >= 6))
            .unwrap();
        let name = row.get("Patient_Last_Name").unwrap();
        let dob = row.get("Patient_DOB").unwrap();
        let phone = row.get("Patient_Phone").unwrap();
        let text = format!(
            "2026-11-26T21:40:01.123Z INFO File ingested. rows=300 key=05D1|ACC2100000001|94500-6\n\
             leaked {name}\nleaked dob={dob}\nleaked phone {phone}\nresult Not Detected\n"
        );
        let kinds: Vec<&str> = data.scan("x.log", &text).iter().map(|l| l.kind).collect();
        assert_eq!(kinds, ["name", "date of birth", "phone", "test result"]);
    }
}

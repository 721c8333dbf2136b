//! How a [`Reconciliation`] reads: per snapshot, one line per stage, the changes that are not
//! delivered named by record key and version (never record contents), and the verdict.

use std::fmt;

use super::{ChangeRef, PassedOver, Reconciliation};
use crate::records::FileStatus;

fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn list(changes: &[ChangeRef], with_reason: bool) -> String {
    let shown: Vec<String> = changes
        .iter()
        .take(10)
        .map(|c| {
            let reason = if with_reason && !c.reason.is_empty() {
                format!(", {}", c.reason)
            } else {
                String::new()
            };
            format!(
                "{} v{} (changes[{}]@{}{reason})",
                c.key, c.version, c.partition, c.offset
            )
        })
        .collect();
    let more = changes.len().saturating_sub(shown.len());
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{}{more}", shown.join("; "))
}

/// A snapshot time for people: UTC to the second.
fn time(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{millis} ms"))
}

/// Where a snapshot was passed over, and because of which newer one (one line per newer
/// snapshot: partitions may have seen different ones).
fn passed_over(f: &mut fmt::Formatter<'_>, stream: &str, over: &[PassedOver]) -> fmt::Result {
    // (newer snapshot, its time, partitions, rows passed over, rows in those partitions)
    let mut by_newest: Vec<(&str, i64, Vec<i32>, i64, i64)> = Vec::new();
    for p in over {
        match by_newest
            .iter_mut()
            .find(|group| group.0 == p.newest_snapshot_id)
        {
            Some(group) => {
                group.2.push(p.partition);
                group.3 += p.passed_over;
                group.4 += p.rows;
            }
            None => by_newest.push((
                &p.newest_snapshot_id,
                p.newest_snapshot_time,
                vec![p.partition],
                p.passed_over,
                p.rows,
            )),
        }
    }
    let taken = over.first().map_or(0, |p| p.snapshot_time);
    for (newest, newest_time, partitions, passed, rows) in by_newest {
        let partitions: Vec<String> = partitions.iter().map(i32::to_string).collect();
        let count = if passed == rows {
            format!("{} rows", thousands(passed))
        } else {
            format!("{} of {} rows", thousands(passed), thousands(rows))
        };
        writeln!(
            f,
            "  passed over:     {count} on partition(s) {}: taken {}, older than snapshot {newest} (taken {}) already applied for stream {stream} — they changed and deleted nothing",
            partitions.join(", "),
            time(taken),
            time(newest_time)
        )?;
        if passed < rows {
            writeln!(
                f,
                "                   (the other rows were applied before the newer snapshot began there, or read before a detector restart)"
            )?;
        }
    }
    Ok(())
}

impl fmt::Display for Reconciliation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.snapshots {
            writeln!(
                f,
                "snapshot {} — file {}, stream {}",
                s.snapshot_id, s.file_name, s.stream
            )?;
            let status = match s.status {
                Some(FileStatus::Completed) => "completed",
                Some(FileStatus::InProgress) => "in progress",
                Some(FileStatus::Failed) => "FAILED",
                None => "unknown",
            };
            let total = s.rows_total.map_or("?".to_string(), thousands);
            let reasons: Vec<String> = s
                .rejected_by_reason
                .iter()
                .map(|(reason, n)| format!("{reason} {}", thousands(*n as i64)))
                .collect();
            let reasons = if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            };
            writeln!(
                f,
                "  file-source:     {status}; {total} rows read: {} sent, {} rejected{reasons}",
                thousands(s.rows_sent),
                thousands(s.rows_rejected)
            )?;
            let unchanged = if self.undecided.unwrap_or(0) == 0 {
                thousands(s.unchanged())
            } else {
                "?".to_string()
            };
            writeln!(
                f,
                "  change-detector: {} created, {} updated, {} deleted, {unchanged} unchanged",
                thousands(s.created as i64),
                thousands(s.updated as i64),
                thousands(s.deleted as i64)
            )?;
            passed_over(f, &s.stream, &s.passed_over)?;
            writeln!(
                f,
                "  api-sink:        {} delivered, {} dead-lettered, {} pending",
                thousands(s.delivered as i64),
                s.dead_lettered.len(),
                s.pending.len()
            )?;
            if !s.dead_lettered.is_empty() {
                writeln!(f, "  dead-lettered:   {}", list(&s.dead_lettered, true))?;
            }
            if !s.pending.is_empty() {
                writeln!(f, "  pending:         {}", list(&s.pending, false))?;
            }
        }
        if let Some(undecided) = self.undecided.filter(|n| *n > 0) {
            writeln!(
                f,
                "change-detector has {} snapshot record(s) not decided yet: the counts above may still grow",
                thousands(undecided as i64)
            )?;
        }
        if self.is_reconciled() {
            writeln!(
                f,
                "RECONCILED: every row is accounted for and every change delivered."
            )
        } else {
            writeln!(f, "NOT RECONCILED: see the dead-lettered, pending or undecided changes above (or a file not completed).")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_numbers_are_grouped() {
        assert_eq!(thousands(500_212), "500,212");
        assert_eq!(thousands(12), "12");
        assert_eq!(thousands(-1_000), "-1,000");
    }

    #[test]
    fn a_passed_over_snapshot_names_the_newer_one_and_its_partitions() {
        use crate::reconcile::SnapshotReconciliation;
        use crate::records::FileStatus;
        let over = |partition: i32, rows: i64| PassedOver {
            partition,
            rows,
            passed_over: rows,
            snapshot_time: 1_796_293_800_000,
            newest_snapshot_id: "s-1100".into(),
            newest_snapshot_time: 1_796_295_600_000,
        };
        let late = SnapshotReconciliation {
            snapshot_id: "s-1030".into(),
            stream: "lab-a".into(),
            status: Some(FileStatus::Completed),
            rows_sent: 30,
            passed_over: vec![over(0, 10), over(2, 20)],
            ..SnapshotReconciliation::default()
        };
        assert_eq!(late.unchanged(), 0, "passed over is not unchanged");
        let text = Reconciliation {
            snapshots: vec![late],
            undecided: Some(0),
        }
        .to_string();
        assert!(
            text.contains("passed over:     30 rows on partition(s) 0, 2: taken 2026-12-03 10:30:00 UTC, older than snapshot s-1100 (taken 2026-12-03 11:00:00 UTC) already applied for stream lab-a"),
            "{text}"
        );
        assert!(text.contains("0 unchanged"), "{text}");
    }

    #[test]
    fn a_partly_applied_snapshot_says_how_much_was_passed_over() {
        use crate::reconcile::SnapshotReconciliation;
        let late = SnapshotReconciliation {
            snapshot_id: "s-1030".into(),
            stream: "lab-a".into(),
            rows_sent: 30,
            created: 4,
            passed_over: vec![PassedOver {
                partition: 1,
                rows: 30,
                passed_over: 20,
                snapshot_time: 0,
                newest_snapshot_id: "s-1100".into(),
                newest_snapshot_time: 0,
            }],
            ..SnapshotReconciliation::default()
        };
        assert_eq!(late.unchanged(), 6);
        let text = Reconciliation {
            snapshots: vec![late],
            undecided: Some(0),
        }
        .to_string();
        assert!(
            text.contains("passed over:     20 of 30 rows on partition(s) 1"),
            "{text}"
        );
        assert!(text.contains("the other rows were applied"), "{text}");
    }
}

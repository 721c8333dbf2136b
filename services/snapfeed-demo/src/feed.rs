//! The snapshots the demo drops, and exactly what each should cause. Three drops: an initial
//! snapshot; a second with 1% of rows updated and 0.5% new (gzip); then a byte-identical
//! re-delivery of the second together with a third snapshot carrying bad rows. The expected
//! counts come from the generator's own record of what it changed and dirtied, not from the
//! pipeline, so a wrong count in the pipeline shows as a mismatch.

use std::path::{Path, PathBuf};
use std::time::Instant;

use snapfeed_harness::generator::{ChangeSet, Dirt, Snapshot, SnapshotDelta, WriteOptions};

use crate::DemoResult;

/// One drop into the inbox (one or more files), and what it should cause.
pub(crate) struct Drop {
    pub(crate) label: &'static str,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) expect_rows_sent: f64,
    pub(crate) expect_rejected: f64,
    pub(crate) expect_duplicates: f64,
    pub(crate) expect_created: f64,
    pub(crate) expect_updated: f64,
}

impl Drop {
    /// Moves the files into `inbox`, each followed by its `.ok` marker, as an upstream system
    /// would deliver them.
    pub(crate) fn put_in(&self, inbox: &Path) -> DemoResult<()> {
        for file in &self.files {
            let name = file.file_name().ok_or("file name")?;
            std::fs::rename(file, inbox.join(name))?;
            std::fs::write(inbox.join(format!("{}.ok", name.to_string_lossy())), b"")?;
        }
        Ok(())
    }
}

/// Writes the three snapshots (the first with `rows` rows) into `staging`.
pub(crate) fn generate(rows: usize, staging: &Path) -> DemoResult<Vec<Drop>> {
    let generate = Instant::now();
    let first = Snapshot::initial(rows, 1);
    let (second, second_changes) = first.next(
        SnapshotDelta {
            updated: 0.01,
            added: 0.005,
            removed: 0.0,
        },
        2,
    );
    let (third, third_changes) = second.next(
        SnapshotDelta {
            updated: 0.002,
            added: 0.0,
            removed: 0.0,
        },
        3,
    );
    let dirt = Dirt {
        bad_dates: (rows / 1000).max(1),
        missing_required: (rows / 2000).max(1),
        duplicate_keys: (rows / 2000).max(1),
        ..Dirt::default()
    };
    let file1 = first.write(&staging.join("elr-001.csv"), &WriteOptions::default())?;
    let file2 = second.write(
        &staging.join("elr-002.csv.gz"),
        &WriteOptions {
            compression: snapfeed_harness::generator::Compression::Gzip,
            ..WriteOptions::default()
        },
    )?;
    std::fs::copy(&file2.path, staging.join("elr-002-redelivered.csv.gz"))?;
    let file3 = third.write(
        &staging.join("elr-003-with-bad-rows.csv"),
        &WriteOptions {
            dirt,
            ..WriteOptions::default()
        },
    )?;
    let bad_rows = file3.dirty.iter().filter(|d| d.kind.is_rejected()).count() as f64;
    // Updated rows that are also dirty are rejected, so they cannot change.
    let rejected_keys: std::collections::BTreeSet<_> = file3
        .dirty
        .iter()
        .filter(|d| {
            d.kind.is_rejected() && d.kind != snapfeed_harness::generator::DirtKind::DuplicateKey
        })
        .map(|d| d.key.clone())
        .collect();
    let third_updates = third_changes
        .updated
        .iter()
        .filter(|k| !rejected_keys.contains(*k))
        .count() as f64;
    println!(
        "  generated 3 snapshots in {:.1}s",
        generate.elapsed().as_secs_f64()
    );

    let count = |c: &ChangeSet| (c.created.len() as f64, c.updated.len() as f64);
    let (c2, u2) = count(&second_changes);
    Ok(vec![
        Drop {
            label: "1 initial",
            files: vec![file1.path.clone()],
            expect_rows_sent: file1.data_rows as f64,
            expect_rejected: 0.0,
            expect_duplicates: 0.0,
            expect_created: rows as f64,
            expect_updated: 0.0,
        },
        Drop {
            label: "2 changed",
            files: vec![file2.path.clone()],
            expect_rows_sent: file2.data_rows as f64,
            expect_rejected: 0.0,
            expect_duplicates: 0.0,
            expect_created: c2,
            expect_updated: u2,
        },
        Drop {
            label: "3 re-sent + bad rows",
            files: vec![
                staging.join("elr-002-redelivered.csv.gz"),
                file3.path.clone(),
            ],
            expect_rows_sent: file3.data_rows as f64 - bad_rows,
            expect_rejected: bad_rows,
            expect_duplicates: 1.0,
            expect_created: 0.0,
            expect_updated: third_updates,
        },
    ])
}

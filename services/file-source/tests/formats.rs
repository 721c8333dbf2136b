//! The shapes a snapshot file arrives in — BOM, Latin-1, CRLF, gzip, zstd — are read exactly
//! like plain UTF-8 LF CSV: same keys, same encoded values, same line numbers and rejects.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeMap;

use common::*;
use snapfeed_harness::generator::{Compression, Dirt, Encoding, Snapshot, WriteOptions};

/// Dirt whose line numbers depend on how lines end (quoted line breaks, trailing blanks).
fn line_dirt() -> Dirt {
    Dirt {
        bad_dates: 3,
        quoted_newlines: 3,
        trailing_blank_lines: 2,
        ..Dirt::default()
    }
}

/// Ingests `variants` (name, options, extra `[source]` config) of one snapshot and asserts each
/// gives the same keys, encoded values and rejects (line, column, reason) as the first.
async fn assert_variants_read_alike(fx: &Fixture, variants: &[(&str, WriteOptions, &str)]) {
    let snapshot = Snapshot::initial(300, 15);
    let mut reference = None;
    for (name, options, source_extra) in variants {
        let written = fx.write_incoming(&snapshot, name, options);
        let hash = file_hash(&written.path);
        let report = single_report(
            &ingest(fx.config(source_extra), vec![written.path.clone()])
                .await
                .unwrap(),
        );
        assert_eq!(
            (report.rows_total, report.rows_rejected),
            (300, 3),
            "{name}"
        );
        let records = fx.data_records_of(&hash, true);
        assert_exactly_once(&records, &canonical_keys(&written.accepted_keys));
        let rejects = reject_summary(&fx.rejects(true), &hash);
        assert_eq!(rejects, expected_rejects(&written), "{name}");
        let lines: BTreeMap<String, u64> =
            records.iter().map(|r| (r.key.clone(), r.line)).collect();
        let seen = (payloads_by_key(&records), lines, rejects);
        match &reference {
            None => reference = Some(seen),
            Some(reference) => assert!(
                reference == &seen,
                "{name} is read differently from {}",
                variants[0].0
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bom_and_latin1_files_read_like_plain_utf8() {
    let fx = Fixture::new("fs-text", 3).await;
    let non_ascii = Snapshot::initial(300, 15)
        .rows()
        .iter()
        .filter(|r| !r.values().concat().is_ascii())
        .count();
    assert!(
        non_ascii > 0,
        "the snapshot has accented names for Latin-1 to matter"
    );
    let dirt = line_dirt();
    assert_variants_read_alike(
        &fx,
        &[
            (
                "plain.csv",
                WriteOptions {
                    dirt,
                    ..WriteOptions::default()
                },
                "",
            ),
            (
                "bom.csv",
                WriteOptions {
                    dirt,
                    encoding: Encoding::Utf8Bom,
                    ..WriteOptions::default()
                },
                "",
            ),
            (
                "latin1.csv",
                WriteOptions {
                    dirt,
                    encoding: Encoding::Latin1,
                    ..WriteOptions::default()
                },
                "encoding = \"latin1\"",
            ),
        ],
    )
    .await;
}

/// Line numbers (on rejects and in the `snapfeed-line` header) are physical lines in CRLF files
/// too, as the generator counts them: a CRLF counts once, a quoted line break once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_files_read_like_lf_files_with_the_same_line_numbers() {
    let fx = Fixture::new("fs-crlf", 3).await;
    let dirt = line_dirt();
    assert_variants_read_alike(
        &fx,
        &[
            (
                "lf.csv",
                WriteOptions {
                    dirt,
                    ..WriteOptions::default()
                },
                "",
            ),
            (
                "crlf.csv",
                WriteOptions {
                    dirt,
                    crlf: true,
                    ..WriteOptions::default()
                },
                "",
            ),
            (
                "crlf-latin1.csv",
                WriteOptions {
                    dirt,
                    crlf: true,
                    encoding: Encoding::Latin1,
                    ..WriteOptions::default()
                },
                "encoding = \"latin1\"",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_zstd_files_read_like_plain_ones() {
    let fx = Fixture::new("fs-compressed", 3).await;
    let dirt = line_dirt();
    assert_variants_read_alike(
        &fx,
        &[
            (
                "plain.csv",
                WriteOptions {
                    dirt,
                    ..WriteOptions::default()
                },
                "",
            ),
            (
                "gzipped.csv.gz",
                WriteOptions {
                    dirt,
                    compression: Compression::Gzip,
                    ..WriteOptions::default()
                },
                "",
            ),
            (
                "zstd.csv.zst",
                WriteOptions {
                    dirt,
                    compression: Compression::Zstd,
                    ..WriteOptions::default()
                },
                "",
            ),
        ],
    )
    .await;
}

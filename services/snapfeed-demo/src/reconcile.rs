//! Reconciliation: the services' own metrics, read before and after each drop, must add up —
//! rows sent → changes (created + updated) → deliveries, nothing deleted, nothing dead-lettered,
//! and, with the stub API, exactly one effect per delivery. Counts are read from `/metrics`,
//! as an operator would; a stage that does not finish within `--timeout-seconds` is an error
//! that shows the totals so far. Then the product's own check, `reconcile --file` over the
//! pipeline's topics, must say "reconciled" for every new snapshot of the drop with the same
//! numbers as the metrics.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use snapfeed_harness::service_process::http_get;

use std::collections::BTreeSet;

use snapfeed_runtime::reconcile::SnapshotReconciliation;

use crate::feed::Drop;
use crate::pipeline::{wait_until, Endpoints, Pipeline};
use crate::DemoResult;

/// One scrape of a service's `/metrics`.
struct Scrape(String);

impl Scrape {
    fn of(addr: SocketAddr) -> Scrape {
        Scrape(
            http_get(addr, "/metrics")
                .map(|(_, body)| body)
                .unwrap_or_default(),
        )
    }

    /// The value of `name` (optionally with one `label="value"`), 0 if absent.
    fn value(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        let wanted = label.map(|(k, v)| format!("{k}=\"{v}\""));
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
                (metric == name && wanted.as_deref().is_none_or(|w| labels.contains(w)))
                    .then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    files_ingested: f64,
    files_duplicate: f64,
    rows_sent: f64,
    rows_rejected: f64,
    created: f64,
    updated: f64,
    deleted: f64,
    unchanged: f64,
    delivered: f64,
    dead_letters: f64,
    retries: f64,
}

impl Totals {
    fn read(endpoints: &Endpoints) -> Totals {
        let (source, detector, sink) = (
            Scrape::of(endpoints.source),
            Scrape::of(endpoints.detector),
            Scrape::of(endpoints.sink),
        );
        let records = |outcome| {
            detector.value(
                "snapfeed_change_detector_records_total",
                Some(("outcome", outcome)),
            )
        };
        Totals {
            files_ingested: source.value(
                "snapfeed_file_source_files_total",
                Some(("outcome", "ingested")),
            ),
            files_duplicate: source.value(
                "snapfeed_file_source_files_total",
                Some(("outcome", "duplicate")),
            ),
            rows_sent: source.value("snapfeed_file_source_rows_total", Some(("outcome", "sent"))),
            rows_rejected: source.value(
                "snapfeed_file_source_rows_total",
                Some(("outcome", "rejected")),
            ),
            created: records("created"),
            updated: records("updated"),
            deleted: records("deleted"),
            unchanged: records("unchanged"),
            delivered: sink.value("snapfeed_api_sink_deliveries_total", None),
            dead_letters: sink.value("snapfeed_api_sink_dead_letters_total", None),
            retries: sink.value("snapfeed_api_sink_retries_total", None),
        }
    }

    fn minus(self, earlier: Totals) -> Totals {
        Totals {
            files_ingested: self.files_ingested - earlier.files_ingested,
            files_duplicate: self.files_duplicate - earlier.files_duplicate,
            rows_sent: self.rows_sent - earlier.rows_sent,
            rows_rejected: self.rows_rejected - earlier.rows_rejected,
            created: self.created - earlier.created,
            updated: self.updated - earlier.updated,
            deleted: self.deleted - earlier.deleted,
            unchanged: self.unchanged - earlier.unchanged,
            delivered: self.delivered - earlier.delivered,
            dead_letters: self.dead_letters - earlier.dead_letters,
            retries: self.retries - earlier.retries,
        }
    }
}

/// A row of the reconciliation table.
pub(crate) struct Row {
    label: &'static str,
    totals: Totals,
    seconds_source: f64,
    seconds_changes: f64,
    seconds_delivered: f64,
    ok: bool,
}

/// Drops one snapshot's files into the inbox, waits for each stage to account for them, and
/// checks the counts against what the drop should cause.
pub(crate) async fn drop_and_wait(
    drop: &Drop,
    inbox: &Path,
    pipeline: &Pipeline,
    seen: &mut BTreeSet<String>,
    stage_timeout: Duration,
) -> DemoResult<Row> {
    let endpoints = &pipeline.endpoints;
    let before = Totals::read(endpoints);
    let dropped = Instant::now();
    drop.put_in(inbox)?;
    print!("  snapshot {:<22}", drop.label);
    let files = drop.files.len() as f64;
    let source_done = wait_for(stage_timeout, endpoints, before, |d| {
        d.files_ingested + d.files_duplicate >= files
    })
    .await?;
    let expected_changes = drop.expect_created + drop.expect_updated;
    let changes_done = wait_for(stage_timeout, endpoints, before, |d| {
        d.created + d.updated >= expected_changes
            && d.created + d.updated + d.unchanged >= drop.expect_rows_sent
    })
    .await?;
    let delivered_done = wait_for(stage_timeout, endpoints, before, |d| {
        d.delivered + d.dead_letters >= expected_changes
    })
    .await?;
    // A moment for anything unexpected (extra changes) to show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let totals = Totals::read(endpoints).minus(before);
    let metrics_ok = totals.rows_sent == drop.expect_rows_sent
        && totals.rows_rejected == drop.expect_rejected
        && totals.files_duplicate == drop.expect_duplicates
        && totals.created == drop.expect_created
        && totals.updated == drop.expect_updated
        && totals.deleted == 0.0
        && totals.delivered == totals.created + totals.updated
        && totals.dead_letters == 0.0;
    let topics_ok = from_topics(drop, pipeline, seen, &totals, stage_timeout).await?;
    let ok = metrics_ok && topics_ok;
    let secs = |at: Instant| at.duration_since(dropped).as_secs_f64();
    println!(
        " {} in {:.1}s",
        if ok { "reconciled" } else { "MISMATCH" },
        secs(delivered_done)
    );
    if !ok {
        println!(
            "    expected: sent {} rejected {} duplicates {} created {} updated {}",
            drop.expect_rows_sent,
            drop.expect_rejected,
            drop.expect_duplicates,
            drop.expect_created,
            drop.expect_updated
        );
    }
    Ok(Row {
        label: drop.label,
        totals,
        seconds_source: secs(source_done),
        seconds_changes: secs(changes_done),
        seconds_delivered: secs(delivered_done),
        ok,
    })
}

/// `reconcile --file` for each file of `drop`, repeated (bounded) until it says reconciled —
/// the detector commits its batch, and the sink its receipts, moments after the metrics count
/// them; then the drop's new snapshots (not in `seen`) must add up to the metrics' `totals`.
async fn from_topics(
    drop: &Drop,
    pipeline: &Pipeline,
    seen: &mut BTreeSet<String>,
    totals: &Totals,
    limit: Duration,
) -> DemoResult<bool> {
    let deadline = Instant::now() + limit;
    loop {
        let mut reconciled = true;
        let mut new: Vec<SnapshotReconciliation> = Vec::new();
        let mut report = String::new();
        for file in &drop.files {
            let name = file
                .file_name()
                .ok_or("file name")?
                .to_string_lossy()
                .into_owned();
            let Some(found) = pipeline.reconcile_file(&name)? else {
                continue; // a duplicate: in the ledger under the first file's name
            };
            reconciled &= found.is_reconciled();
            report.push_str(&found.to_string());
            for snapshot in found.snapshots {
                if !seen.contains(&snapshot.snapshot_id)
                    && !new.iter().any(|s| s.snapshot_id == snapshot.snapshot_id)
                {
                    new.push(snapshot);
                }
            }
        }
        if !reconciled && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let sum =
            |f: &dyn Fn(&SnapshotReconciliation) -> i64| new.iter().map(f).sum::<i64>() as f64;
        let adds_up = sum(&|s| s.rows_sent) == totals.rows_sent
            && sum(&|s| s.rows_rejected) == totals.rows_rejected
            && sum(&|s| s.created as i64) == totals.created
            && sum(&|s| s.updated as i64) == totals.updated
            && sum(&|s| s.unchanged()) == totals.unchanged
            && sum(&|s| s.delivered as i64) == totals.delivered;
        seen.extend(new.into_iter().map(|s| s.snapshot_id));
        if !(reconciled && adds_up) {
            println!("    reconcile over the topics does not agree with the metrics:\n{report}");
        }
        return Ok(reconciled && adds_up);
    }
}

/// Prints the table and the verdict; true when every number adds up.
pub(crate) fn summarise(rows: &[Row], unique: Option<usize>, started: Instant) -> bool {
    print_table(rows, unique);
    let mut all_ok = rows.iter().all(|r| r.ok);
    if let Some(unique) = unique {
        let delivered: f64 = rows.iter().map(|r| r.totals.delivered).sum();
        if unique as f64 != delivered {
            println!(
                "MISMATCH: the stub API saw {unique} unique effects for {delivered} deliveries"
            );
            all_ok = false;
        }
    }
    println!(
        "\n{} — {:.1}s in all",
        if all_ok {
            "every change delivered once: rows → changes → deliveries add up"
        } else {
            "NUMBERS DO NOT ADD UP"
        },
        started.elapsed().as_secs_f64()
    );
    all_ok
}

/// Prints `trace` of an updated record (values redacted); true when it shows what the
/// operator expects: its rows, both versions, both deliveries.
pub(crate) fn show_a_trace(pipeline: &Pipeline) -> DemoResult<bool> {
    use snapfeed_runtime::inspect::trace::Stage;
    let Some(trace) = pipeline.trace_an_updated_key()? else {
        println!("\nno record was updated: nothing to trace");
        return Ok(false);
    };
    println!("\n`trace {}` (values redacted):\n{trace}", trace.key);
    let versions = |stage| {
        trace
            .of(stage)
            .filter_map(|e| e.version)
            .collect::<BTreeSet<_>>()
    };
    let complete = trace.of(Stage::Row).count() >= 2
        && versions(Stage::Change) == BTreeSet::from([1, 2])
        && versions(Stage::Delivery) == BTreeSet::from([1, 2]);
    if !complete {
        println!("TRACE INCOMPLETE: expected its rows, versions 1 and 2, and both deliveries");
    }
    Ok(complete)
}

async fn wait_for(
    limit: Duration,
    endpoints: &Endpoints,
    before: Totals,
    done: impl Fn(&Totals) -> bool,
) -> DemoResult<Instant> {
    wait_until(limit, || done(&Totals::read(endpoints).minus(before)))
        .await
        .map_err(|_| {
            format!(
                "a stage did not finish within {}s; totals so far: {:?}",
                limit.as_secs(),
                Totals::read(endpoints).minus(before)
            )
        })?;
    Ok(Instant::now())
}

fn print_table(rows: &[Row], unique: Option<usize>) {
    println!(
        "\n{:<22} {:>9} {:>9} {:>5} {:>8} {:>8} {:>9} {:>9} {:>6} {:>7} {:>8} {:>8} {:>8}",
        "snapshot",
        "rows sent",
        "rejected",
        "dup",
        "created",
        "updated",
        "unchanged",
        "delivered",
        "dlq",
        "retries",
        "src s",
        "chg s",
        "dlv s"
    );
    for r in rows {
        let t = r.totals;
        println!(
            "{:<22} {:>9} {:>9} {:>5} {:>8} {:>8} {:>9} {:>9} {:>6} {:>7} {:>8.2} {:>8.2} {:>8.2}",
            r.label,
            t.rows_sent,
            t.rows_rejected,
            t.files_duplicate,
            t.created,
            t.updated,
            t.unchanged,
            t.delivered,
            t.dead_letters,
            t.retries,
            r.seconds_source,
            r.seconds_changes,
            r.seconds_delivered
        );
    }
    if let Some(unique) = unique {
        println!("stub API: {unique} unique effects (by Idempotency-Key)");
    }
}

//! The stage's work, on its own thread ([`StageThread`](snapfeed_runtime::service::StageThread)):
//! [`watch`] — the inbox loop of `run` — and [`ingest_each`] — the given files of the `ingest`
//! subcommand. Both are plain blocking loops that check the stop flag between files and hand
//! it to the ingest, which stops at the next row (aborting what it sent since its last commit).
//!
//! The loop keeps the guarantee by order: files are claimed one at a time, oldest first; a file
//! whose ingest failed on a retryable error stays in `work/` and is resumed from its checkpoint
//! on the next round; a fatal error (fenced, a producer that cannot be replaced) ends the stage
//! and, with it, the service.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::inbox::Inbox;
use crate::ingest::{FileOutcome, IngestError};
use crate::service::FileSource;
use crate::FileSourceError;

/// How often a sleeping loop looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Watches the inbox until `stop`: first the files an earlier run of this instance left in
/// `work/`, then complete inbox files one at a time, oldest first. Closes the writer at the end.
pub(crate) fn watch(
    source: &mut FileSource,
    inbox: &mut Inbox,
    stop: &AtomicBool,
) -> Result<(), FileSourceError> {
    let watched = watch_until_stopped(source, inbox, stop);
    source.close();
    watched
}

fn watch_until_stopped(
    source: &mut FileSource,
    inbox: &mut Inbox,
    stop: &AtomicBool,
) -> Result<(), FileSourceError> {
    let poll = Duration::from_millis(source.config.source.poll_interval_ms);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FileSourceError::Io { path, source }
    };
    let mut pending: Vec<PathBuf> = inbox
        .unfinished()
        .map_err(io(&source.config.source.work_dir()))?;
    let mut orphans = OrphanWatch::default();
    while !stop.load(Ordering::Relaxed) {
        orphans.check(source);
        if pending.is_empty() {
            for candidate in inbox
                .scan(Instant::now())
                .map_err(io(&source.config.source.inbox))?
            {
                if let Some(claimed) = inbox.claim(&candidate).map_err(io(&candidate.path))? {
                    pending.push(claimed);
                    // One at a time: files that appear meanwhile wait their turn, oldest first.
                    break;
                }
            }
        }
        if let Some(path) = pending.first().cloned() {
            if !path.exists() {
                // Moved away by hand (or by an operator's cleanup): nothing left to resume.
                tracing::warn!(message = "A claimed file vanished from the work directory.", file = %path.display());
                pending.remove(0);
                continue;
            }
            match source.process(&path, stop) {
                Ok(_) => {
                    pending.remove(0);
                    continue;
                }
                Err(IngestError::Interrupted) => break,
                Err(error) if error.is_fatal() => {
                    return Err(FileSourceError::Ingest {
                        path,
                        source: Box::new(error),
                    })
                }
                Err(error) => {
                    // The file stays in the work directory and is resumed from its checkpoint.
                    tracing::warn!(message = "Ingest interrupted; will resume.", %error, file = %path.display());
                }
            }
        }
        sleep_unless_stopped(poll, stop);
    }
    Ok(())
}

/// How often other instances' work directories are looked at.
const ORPHAN_CHECK: Duration = Duration::from_secs(10);

/// Files another instance claimed long ago and left in its work directory: counted in the
/// `orphaned_work_files` gauge, and logged (instance and count, once per change) so an
/// operator knows to run `file-source adopt INSTANCE` if that instance is gone for good.
#[derive(Debug, Default)]
struct OrphanWatch {
    last_check: Option<Instant>,
    last_count: usize,
}

impl OrphanWatch {
    fn check(&mut self, source: &FileSource) {
        if self
            .last_check
            .is_some_and(|at| at.elapsed() < ORPHAN_CHECK)
        {
            return;
        }
        self.last_check = Some(Instant::now());
        let config = &source.config;
        let older_than = Duration::from_millis(config.source.orphaned_after_ms);
        let found = match crate::inbox::orphaned(
            &config.source,
            &config.pipeline.instance_id(),
            older_than,
        ) {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(message = "Cannot look at other instances' work directories.", %error);
                return;
            }
        };
        source.metrics.orphaned_work_files.set(found.len() as i64);
        if found.len() != self.last_count && !found.is_empty() {
            let mut instances: Vec<&str> = found.iter().map(|o| o.instance.as_str()).collect();
            instances.dedup();
            tracing::warn!(
                message = "Files claimed by another instance wait in its work directory; if that instance is gone for good, run `file-source adopt <instance>` to hand them back to the inbox.",
                files = found.len(),
                instances = ?instances,
                older_than_ms = config.source.orphaned_after_ms
            );
        }
        self.last_count = found.len();
    }
}

/// Ingests `paths` once, in order, until `stop`; hands each outcome to `report` as its file
/// finishes. The first file that cannot be finished ends the run with its error (an interrupted
/// one too: it was not ingested). Closes the writer at the end.
pub(crate) fn ingest_each(
    source: &mut FileSource,
    paths: &[PathBuf],
    stop: &AtomicBool,
    report: &mut dyn FnMut(FileOutcome),
) -> Result<(), FileSourceError> {
    let mut result = Ok(());
    for path in paths {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match source.process(path, stop) {
            Ok(outcome) => report(outcome),
            Err(error) => {
                result = Err(FileSourceError::Ingest {
                    path: path.clone(),
                    source: Box::new(error),
                });
                break;
            }
        }
    }
    source.close();
    result
}

/// Sleeps `duration` in short steps, returning early once `stop` is set.
fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) {
    let until = Instant::now() + duration;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(STOP_CHECK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_ends_early_when_stopped() {
        let stop = AtomicBool::new(true);
        let started = Instant::now();
        sleep_unless_stopped(Duration::from_secs(10), &stop);
        assert!(started.elapsed() < Duration::from_secs(1));
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        sleep_unless_stopped(Duration::from_millis(120), &stop);
        assert!(started.elapsed() >= Duration::from_millis(120));
    }
}

//! The inbox: which files are complete, whose turn it is, and claiming one so that no other
//! instance ingests it too.
//!
//! A file is complete when its marker file exists (`marker_suffix`), or, without markers, when
//! its size and mtime have not changed for `stable_for_ms` — checked across scans, so a file
//! still being written waits. Complete files are taken oldest first. Instances sharing an inbox
//! split it by a hash of the file name (`instance_index` of `instance_count`); claiming is an
//! atomic rename into the work directory, so even misconfigured instances never both take a
//! file: the loser's rename fails and it moves on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::config::SourceConfig;

/// What a scan remembers of a file it has seen but not yet taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Observation {
    size: u64,
    modified: SystemTime,
    unchanged_since: Instant,
}

/// Inbox scanning state.
#[derive(Debug)]
pub struct Inbox {
    dir: PathBuf,
    work_dir: PathBuf,
    patterns: Vec<String>,
    marker_suffix: Option<String>,
    stable_for: Duration,
    instance_index: u32,
    instance_count: u32,
    /// Files seen and not yet complete, by name.
    seen: HashMap<String, Observation>,
}

/// A file ready to be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// File name (no directory).
    pub name: String,
    /// Path in the inbox.
    pub path: PathBuf,
    modified: SystemTime,
}

impl Inbox {
    /// The inbox of `config`, for the instance `instance_id`: each instance claims into a work
    /// directory of its own, so a starting instance never adopts a file another live instance
    /// is ingesting (a crashed instance's files are resumed when it — the same id — returns).
    pub fn new(config: &SourceConfig, instance_id: &str) -> Inbox {
        Inbox {
            dir: config.inbox.clone(),
            work_dir: instance_work_dir(config, instance_id),
            patterns: config.patterns.clone(),
            marker_suffix: config.marker_suffix.clone(),
            stable_for: Duration::from_millis(config.stable_for_ms),
            instance_index: config.instance_index,
            instance_count: config.instance_count,
            seen: HashMap::new(),
        }
    }

    /// Complete files of this instance's shard, oldest first.
    pub fn scan(&mut self, now: Instant) -> std::io::Result<Vec<Candidate>> {
        let mut ready = Vec::new();
        let mut present = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !self.patterns.iter().any(|p| glob_match(p, &name)) || !self.is_mine(&name) {
                continue;
            }
            present.push(name.clone());
            let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let complete = match &self.marker_suffix {
                Some(suffix) => self.dir.join(format!("{name}{suffix}")).is_file(),
                None => {
                    let current = Observation {
                        size: metadata.len(),
                        modified,
                        unchanged_since: now,
                    };
                    let observation = self.seen.entry(name.clone()).or_insert(current);
                    if observation.size != current.size || observation.modified != current.modified
                    {
                        *observation = current;
                    }
                    now.duration_since(observation.unchanged_since) >= self.stable_for
                }
            };
            if complete {
                ready.push(Candidate {
                    name,
                    path: entry.path(),
                    modified,
                });
            }
        }
        self.seen.retain(|name, _| present.contains(name));
        ready.sort_by(|a, b| {
            a.modified
                .cmp(&b.modified)
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(ready)
    }

    /// Moves `candidate` into the work directory. `Ok(None)` when another instance took it first.
    pub fn claim(&mut self, candidate: &Candidate) -> std::io::Result<Option<PathBuf>> {
        std::fs::create_dir_all(&self.work_dir)?;
        let target = self.work_dir.join(&candidate.name);
        if target.exists() {
            // A file of the same name is already in work (being resumed): wait for it.
            return Ok(None);
        }
        match std::fs::rename(&candidate.path, &target) {
            Ok(()) => {
                self.seen.remove(&candidate.name);
                if let Some(suffix) = &self.marker_suffix {
                    let _ =
                        std::fs::remove_file(self.dir.join(format!("{}{suffix}", candidate.name)));
                }
                Ok(Some(target))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Files left in the work directory by an earlier run of this instance (to be resumed),
    /// oldest first.
    pub fn unfinished(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        match std::fs::read_dir(&self.work_dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if entry.metadata()?.is_file() && self.is_mine(name) {
                        let modified = entry
                            .metadata()?
                            .modified()
                            .unwrap_or(SystemTime::UNIX_EPOCH);
                        files.push((modified, entry.path()));
                    }
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        files.sort();
        Ok(files.into_iter().map(|(_, path)| path).collect())
    }

    fn is_mine(&self, name: &str) -> bool {
        shard_of(name, self.instance_count) == self.instance_index
    }
}

/// A file another instance claimed and left in its work directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanedFile {
    /// The work directory's name: the instance id (file-name safe).
    pub instance: String,
    /// The file.
    pub path: PathBuf,
    /// How long ago it was claimed (moved into that directory).
    pub claimed_ago: Duration,
}

/// Files in other instances' work directories (not `instance_id`'s) claimed at least
/// `older_than` ago, by instance then name.
pub fn orphaned(
    config: &SourceConfig,
    instance_id: &str,
    older_than: Duration,
) -> std::io::Result<Vec<OrphanedFile>> {
    let own = instance_work_dir(config, instance_id);
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(config.work_dir()) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let dir = entry.path();
        if dir == own || !entry.file_type()?.is_dir() {
            continue;
        }
        let instance = entry.file_name().to_string_lossy().into_owned();
        found.extend(
            claimed_files(&dir)?
                .into_iter()
                .filter(|(_, ago)| *ago >= older_than)
                .map(|(path, claimed_ago)| OrphanedFile {
                    instance: instance.clone(),
                    path,
                    claimed_ago,
                }),
        );
    }
    found.sort_by(|a, b| (&a.instance, &a.path).cmp(&(&b.instance, &b.path)));
    Ok(found)
}

/// The files of a work directory and how long ago each was claimed: the time of its rename
/// into the directory (its inode change time; the modification time is the provider's).
pub fn claimed_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, Duration)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        if metadata.is_file() {
            files.push((entry.path(), since(claim_time(&metadata))));
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(unix)]
fn claim_time(metadata: &std::fs::Metadata) -> SystemTime {
    use std::os::unix::fs::MetadataExt;
    let (seconds, nanos) = (metadata.ctime(), metadata.ctime_nsec());
    match (u64::try_from(seconds), u32::try_from(nanos)) {
        (Ok(seconds), Ok(nanos)) => SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos),
        _ => SystemTime::UNIX_EPOCH,
    }
}

#[cfg(not(unix))]
fn claim_time(metadata: &std::fs::Metadata) -> SystemTime {
    metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

fn since(time: SystemTime) -> Duration {
    SystemTime::now().duration_since(time).unwrap_or_default()
}

/// The work directory of one instance: `<work_dir>/<instance_id>` (the id made file-name safe).
pub fn instance_work_dir(config: &SourceConfig, instance_id: &str) -> std::path::PathBuf {
    let safe: String = instance_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    config.work_dir().join(if safe.is_empty() {
        "0".to_string()
    } else {
        safe
    })
}

/// The shard a file name belongs to (FNV-1a: stable across builds and platforms).
pub fn shard_of(name: &str, count: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % count.max(1)
}

/// `*` matches any run of characters, `?` one character; everything else literally.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Moves `file` into `dir` (created if needed), keeping its name; replaces an older file of the
/// same name there. Returns the new path.
pub fn move_into(file: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let target = dir.join(name);
    std::fs::rename(file, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(inbox: &Path, marker: Option<&str>) -> SourceConfig {
        let mut text = format!(
            "inbox = {:?}\ndataset_mapping = \"m.toml\"\nstable_for_ms = 1000\n",
            inbox.display().to_string()
        );
        if let Some(marker) = marker {
            text.push_str(&format!("marker_suffix = {marker:?}\n"));
        }
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn files_in_other_instances_work_directories_are_orphans_once_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), None);
        let mut own = Inbox::new(&config, "fs-0");
        std::fs::write(dir.path().join("mine.csv"), "h\n").unwrap();
        let candidate = Candidate {
            name: "mine.csv".into(),
            path: dir.path().join("mine.csv"),
            modified: SystemTime::now(),
        };
        own.claim(&candidate).unwrap().unwrap();
        let other = instance_work_dir(&config, "fs-1");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("left.csv"), "h\n").unwrap();

        let found = orphaned(&config, "fs-0", Duration::ZERO).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].instance, "fs-1");
        assert_eq!(found[0].path, other.join("left.csv"));
        // Just claimed: not an orphan under a real bound; this instance's own file never is.
        assert!(orphaned(&config, "fs-0", Duration::from_secs(3600))
            .unwrap()
            .is_empty());
        assert_eq!(
            orphaned(&config, "fs-1", Duration::ZERO).unwrap()[0].instance,
            "fs-0"
        );
        // No work directory at all: nothing.
        let empty = tempfile::tempdir().unwrap();
        assert!(
            orphaned(&self::config(empty.path(), None), "fs-0", Duration::ZERO)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn glob_patterns() {
        assert!(glob_match("*.csv", "elr.csv"));
        assert!(glob_match("*.csv.gz", "elr-2026.csv.gz"));
        assert!(!glob_match("*.csv", "elr.csv.gz"));
        assert!(glob_match("lab-?-*.csv", "lab-a-1.csv"));
        assert!(!glob_match("lab-?-*.csv", "lab-ab-1.csv"));
    }

    #[test]
    fn a_file_is_taken_only_after_it_stopped_changing() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox = Inbox::new(&config(dir.path(), None), "0");
        let t0 = Instant::now();
        std::fs::write(dir.path().join("a.csv"), "h\n").unwrap();
        assert!(inbox.scan(t0).unwrap().is_empty());
        // Still being written: growing resets the clock.
        std::fs::write(dir.path().join("a.csv"), "h\n1\n").unwrap();
        assert!(inbox
            .scan(t0 + Duration::from_millis(900))
            .unwrap()
            .is_empty());
        assert!(inbox
            .scan(t0 + Duration::from_millis(1500))
            .unwrap()
            .is_empty());
        let ready = inbox.scan(t0 + Duration::from_millis(2000)).unwrap();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].name, "a.csv");
    }

    #[test]
    fn with_markers_only_marked_files_are_complete() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox = Inbox::new(&config(dir.path(), Some(".ok")), "0");
        std::fs::write(dir.path().join("a.csv"), "h\n").unwrap();
        std::fs::write(dir.path().join("b.csv"), "h\n").unwrap();
        std::fs::write(dir.path().join("b.csv.ok"), "").unwrap();
        let ready = inbox.scan(Instant::now()).unwrap();
        assert_eq!(
            ready.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["b.csv"]
        );
        let claimed = inbox.claim(&ready[0]).unwrap().unwrap();
        assert!(claimed.ends_with("work/0/b.csv"));
        assert!(!dir.path().join("b.csv.ok").exists());
    }

    #[test]
    fn two_instances_never_claim_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), Some(".ok"));
        let (mut first, mut second) = (Inbox::new(&config, "a"), Inbox::new(&config, "b"));
        std::fs::write(dir.path().join("a.csv"), "h\n").unwrap();
        std::fs::write(dir.path().join("a.csv.ok"), "").unwrap();
        let seen_by_first = first.scan(Instant::now()).unwrap();
        let seen_by_second = second.scan(Instant::now()).unwrap();
        assert_eq!(seen_by_first, seen_by_second);
        let a = first.claim(&seen_by_first[0]).unwrap();
        let b = second.claim(&seen_by_second[0]).unwrap();
        assert!(
            a.is_some() != b.is_some(),
            "exactly one claim wins: {a:?} {b:?}"
        );
    }

    #[test]
    fn shards_split_files_between_instances() {
        let names: Vec<String> = (0..100).map(|i| format!("elr-{i}.csv")).collect();
        let per_shard: Vec<usize> = (0..3)
            .map(|index| names.iter().filter(|n| shard_of(n, 3) == index).count())
            .collect();
        assert_eq!(per_shard.iter().sum::<usize>(), 100);
        assert!(per_shard.iter().all(|n| *n > 10), "{per_shard:?}");
    }

    #[test]
    fn oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox = Inbox::new(&config(dir.path(), Some(".ok")), "0");
        for (name, age_s) in [("new.csv", 10), ("old.csv", 1000), ("mid.csv", 100)] {
            let path = dir.path().join(name);
            std::fs::write(&path, "h\n").unwrap();
            std::fs::write(dir.path().join(format!("{name}.ok")), "").unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(SystemTime::now() - Duration::from_secs(age_s))
                .unwrap();
        }
        let order: Vec<String> = inbox
            .scan(Instant::now())
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(order, ["old.csv", "mid.csv", "new.csv"]);
    }
}

//! `file-source adopt INSTANCE`: hands the files another instance claimed and never finished
//! back to the inbox, so they are resumed — by whichever instance's shard they belong to, from
//! the checkpoint the `files` ledger holds for them.
//!
//! Each instance claims into `<work_dir>/<instance_id>/` and resumes that directory when the
//! same id comes back. An id that never comes back (a pod renamed, an instance retired, a host
//! gone) leaves its files there; the others count them (`orphaned_work_files`) and this command
//! releases them:
//!
//! 1. It refuses files claimed less than `source.orphaned_after_ms` ago (that instance may
//!    still be working on them) unless `--force`.
//! 2. In `exactly_once` it first fences the instance's transactional producer
//!    (`<pipeline>.file-source.<instance_index>.<INSTANCE>`: initialising a producer with the
//!    same transactional id aborts its open transaction and makes the old producer fail on its
//!    next send) — so a still-running instance cannot commit more of a file once it is handed
//!    over. In `at_least_once` there is nothing to fence: rows of a chunk it was sending may
//!    appear twice, identical (the detector sees no change in a repeat).
//! 3. It moves each file into the inbox (refusing a name already there), writes its marker
//!    when `source.marker_suffix` is set, and removes the empty work directory.
//!
//! The command writes no record itself; blocking.

use std::path::PathBuf;
use std::time::Duration;

use snapfeed_runtime::kafka::{GuaranteedWriter, ProcessingGuarantee};

use crate::config::FileSourceConfig;
use crate::inbox::{claimed_files, instance_work_dir};
use crate::SERVICE;

/// What `adopt` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// Files moved back into the inbox, by name.
    pub files: Vec<String>,
    /// The transactional id fenced (exactly_once).
    pub fenced: Option<String>,
}

impl std::fmt::Display for Adopted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(id) = &self.fenced {
            writeln!(f, "fenced transactional id {id}")?;
        }
        for file in &self.files {
            writeln!(f, "handed back to the inbox: {file}")?;
        }
        write!(
            f,
            "{} file(s) handed back; the instance whose shard they belong to resumes each from its checkpoint",
            self.files.len()
        )
    }
}

/// Why `adopt` refused or failed (nothing was moved unless stated).
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The instance named is this one.
    #[error("{0:?} is this instance's own id: its files are resumed when it starts")]
    OwnInstance(String),
    /// A file was claimed too recently.
    #[error("{file} was claimed by {instance} {ago_s} s ago (less than source.orphaned_after_ms = {limit_ms}): is {instance} still running? Wait, or pass --force")]
    TooRecent {
        /// The instance.
        instance: String,
        /// The file.
        file: String,
        /// Seconds since its claim.
        ago_s: u64,
        /// The configured bound.
        limit_ms: u64,
    },
    /// A file of the same name waits in the inbox already.
    #[error(
        "{0} is already in the inbox: move one of them aside first (nothing after it was moved)"
    )]
    NameTaken(PathBuf),
    /// The instance's producer could not be fenced.
    #[error("cannot fence {transactional_id}: {source}")]
    Fence {
        /// The id.
        transactional_id: String,
        /// The error.
        source: Box<snapfeed_runtime::kafka::WriteError>,
    },
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Hands `instance`'s unfinished files back to the inbox (see the module doc). Blocking.
pub fn adopt(
    config: &FileSourceConfig,
    instance: &str,
    instance_index: u32,
    force: bool,
) -> Result<Adopted, AdoptError> {
    let own = config.pipeline.instance_id();
    let source = &config.source;
    let dir = instance_work_dir(source, instance);
    if dir == instance_work_dir(source, &own) {
        return Err(AdoptError::OwnInstance(own));
    }
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| AdoptError::Io { path, source }
    };
    let files = match claimed_files(&dir) {
        Ok(files) => files,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Adopted {
                files: Vec::new(),
                fenced: None,
            })
        }
        Err(error) => return Err(io(&dir)(error)),
    };
    let limit = Duration::from_millis(source.orphaned_after_ms);
    if !force {
        if let Some((path, ago)) = files.iter().find(|(_, ago)| *ago < limit) {
            return Err(AdoptError::TooRecent {
                instance: instance.to_string(),
                file: path.display().to_string(),
                ago_s: ago.as_secs(),
                limit_ms: source.orphaned_after_ms,
            });
        }
    }
    for (path, _) in &files {
        let target = source.inbox.join(path.file_name().unwrap_or_default());
        if target.exists() {
            return Err(AdoptError::NameTaken(target));
        }
    }
    let fenced = if config.pipeline.processing_guarantee.is_transactional() && !files.is_empty() {
        let transactional_id = format!(
            "{}.{SERVICE}.{instance_index}.{instance}",
            config.pipeline.name
        );
        // Initialising a producer with the id fences the old one and aborts its transaction.
        GuaranteedWriter::connect(
            &config.kafka,
            SERVICE,
            ProcessingGuarantee::ExactlyOnce,
            &transactional_id,
        )
        .map_err(|source| AdoptError::Fence {
            transactional_id: transactional_id.clone(),
            source: Box::new(source),
        })?;
        Some(transactional_id)
    } else {
        None
    };
    let mut moved = Vec::new();
    for (path, _) in &files {
        let name = path.file_name().unwrap_or_default();
        let target = source.inbox.join(name);
        std::fs::rename(path, &target).map_err(io(path))?;
        if let Some(suffix) = &source.marker_suffix {
            let marker = source
                .inbox
                .join(format!("{}{suffix}", name.to_string_lossy()));
            std::fs::write(&marker, b"").map_err(io(&marker))?;
        }
        tracing::info!(message = "Handed a file back to the inbox.", file = %target.display(), from = instance);
        moved.push(name.to_string_lossy().into_owned());
    }
    // Gone once empty; a file that appeared meanwhile keeps it (and is counted again).
    let _ = std::fs::remove_dir(&dir);
    Ok(Adopted {
        files: moved,
        fenced,
    })
}

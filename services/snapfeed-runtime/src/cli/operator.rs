//! The operator's commands every service binary has: `reconcile`, `trace`, `tail`,
//! `dead-letters list` and `schemas`. They read the pipeline's topics with the service's own
//! config (the same brokers, topic names and schemas), never write to them, and never print
//! health data unless `--show-values` is given. `schemas` writes files, not records.
//!
//! Why subcommands of the service binaries and not a fourth `snapfeed` binary: every
//! deployment already ships these binaries with a config naming the pipeline's brokers, topics
//! and schemas — an on-call operator runs `kubectl exec … api-sink --config … trace KEY` in a
//! pod that is already there, with nothing more to install or configure.
//!
//! Exit codes: 0 done (reconcile: reconciled; trace: something found), 1 not (or a Kafka
//! failure), 2 bad usage or config.

use std::process::ExitCode;

use super::ReconcileArgs;
use crate::avro::SchemaStore;
use crate::dead_letters::{read_letters, LetterFilter, LetterState};
use crate::inspect::trace::TraceOptions;
use crate::inspect::{TailFrom, TailOptions, Values};
use crate::service::CommonSections;

/// `trace KEY`.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// The record key, in its canonical form (as in logs, receipts and dead letters).
    pub key: String,
    /// Print field values (health data): changed fields old → new, each row's fields.
    #[arg(long)]
    pub show_values: bool,
    /// Read every partition, not only the key's (history written before a repartition).
    #[arg(long)]
    pub all_partitions: bool,
}

/// `tail TOPIC`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// snapshots, files, rejects, state, changes, deliveries, dead-letters (or a full name).
    pub topic: String,
    /// `earliest` or an RFC 3339 time (message timestamps).
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// Only messages with this key.
    #[arg(long)]
    pub key: Option<String>,
    /// Stop after this many messages.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print values of health data (dataset records, raw lines, API answers).
    #[arg(long)]
    pub show_values: bool,
}

/// `schemas --out DIR`.
#[derive(Debug, Clone, clap::Args)]
pub struct SchemasArgs {
    /// Directory to write the schema files into (created when missing).
    #[arg(long)]
    pub out: std::path::PathBuf,
}

/// `dead-letters …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeadLettersCommand {
    /// One line per dead letter: time, state, key and version, reason, HTTP status, attempts.
    List(DeadLettersListArgs),
}

/// Which dead letters: the filters `dead-letters list` and `api-sink redrive` share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LetterFilterArgs {
    /// Only letters dead-lettered at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only letters whose last HTTP status is this one.
    #[arg(long)]
    pub status: Option<i32>,
    /// Only letters of this reason (`http_4xx`, `retry_budget_exhausted`, …).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only letters of this record key.
    #[arg(long)]
    pub key: Option<String>,
}

impl LetterFilterArgs {
    /// The filter; `Err` names the bad argument.
    pub fn filter(&self) -> Result<LetterFilter, String> {
        let since = match self
            .since
            .as_deref()
            .map(chrono::DateTime::parse_from_rfc3339)
        {
            None => None,
            Some(Ok(time)) => Some(time.with_timezone(&chrono::Utc)),
            Some(Err(error)) => {
                return Err(format!(
                    "--since: {error} (expected an RFC 3339 time such as 2026-11-26T08:00:00Z)"
                ))
            }
        };
        Ok(LetterFilter {
            since,
            status: self.status,
            reason: self.reason.clone(),
            key: self.key.clone(),
            state: None,
        })
    }
}

/// `dead-letters list`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeadLettersListArgs {
    /// Time, status, reason, key.
    #[command(flatten)]
    pub filter: LetterFilterArgs,
    /// Only letters in this state: open, redriven, delivered, superseded, replaced, undecodable.
    #[arg(long)]
    pub state: Option<String>,
}

/// Writes `text` to stdout; a reader that went away (`… | head`) ends it quietly (exit 0), any
/// other write error is exit 1. `println!` would panic on the closed pipe.
pub fn emit(text: &str) -> Result<(), ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(ExitCode::SUCCESS),
        Err(error) => {
            eprintln!("error: cannot write the output: {error}");
            Err(ExitCode::from(1))
        }
    }
}

fn values(show: bool) -> Values {
    if show {
        Values::Shown
    } else {
        Values::Redacted
    }
}

fn schemas(common: &CommonSections<'_>) -> Result<SchemaStore, ExitCode> {
    common.load_schemas_for_command().map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(2)
    })
}

fn usage(problem: String) -> ExitCode {
    eprintln!("error: {problem}");
    ExitCode::from(2)
}

fn failure(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(1)
}

/// `reconcile`: prints the reconciliation; 0 when reconciled, 1 when not (or it failed).
pub(super) fn reconcile(common: CommonSections<'_>, args: &ReconcileArgs) -> ExitCode {
    use crate::reconcile::{reconcile, ReconcileOptions, ReconcileTarget};
    let target = match (&args.file, &args.snapshot) {
        (Some(file), _) => ReconcileTarget::File(file.clone()),
        (None, Some(snapshot)) => ReconcileTarget::Snapshot(snapshot.clone()),
        (None, None) => return usage("reconcile needs --file NAME or --snapshot ID".into()),
    };
    let schemas = match schemas(&common) {
        Ok(schemas) => schemas,
        Err(code) => return code,
    };
    match reconcile(
        common.kafka,
        &common.pipeline.name,
        &common.topic_names(),
        &schemas,
        common.pipeline.processing_guarantee,
        &target,
        ReconcileOptions::default(),
    ) {
        Ok(reconciliation) => {
            if let Err(code) = emit(&reconciliation.to_string()) {
                return code;
            }
            if reconciliation.is_reconciled() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => failure(error),
    }
}

/// `trace KEY`: prints the record's life; 1 when nothing of it is found.
pub(super) fn trace(common: CommonSections<'_>, args: &TraceArgs) -> ExitCode {
    let schemas = match schemas(&common) {
        Ok(schemas) => schemas,
        Err(code) => return code,
    };
    let options = TraceOptions {
        key: args.key.clone(),
        values: values(args.show_values),
        all_partitions: args.all_partitions,
    };
    match crate::inspect::trace::trace(
        common.kafka,
        &common.pipeline.name,
        common.pipeline.processing_guarantee,
        &common.topic_names(),
        &schemas,
        &options,
    ) {
        Ok(trace) if trace.events.is_empty() => {
            let said = emit(&format!(
                "no record of key {:?} on the pipeline's topics{}\n",
                args.key,
                if args.all_partitions {
                    ""
                } else {
                    " (its partition only; --all-partitions reads every one)"
                }
            ));
            said.err().unwrap_or(ExitCode::from(1))
        }
        Ok(trace) => emit(&trace.to_string()).err().unwrap_or(ExitCode::SUCCESS),
        Err(error) => failure(error),
    }
}

/// `tail TOPIC`: JSON lines on stdout.
pub(super) fn tail(common: CommonSections<'_>, args: &TailArgs) -> ExitCode {
    let from: TailFrom = match args.from.parse() {
        Ok(from) => from,
        Err(problem) => return usage(format!("--from {problem}")),
    };
    let schemas = match schemas(&common) {
        Ok(schemas) => schemas,
        Err(code) => return code,
    };
    let options = TailOptions {
        topic: args.topic.clone(),
        from,
        key: args.key.clone(),
        limit: args.limit,
        values: values(args.show_values),
    };
    let stdout = std::io::stdout();
    match crate::inspect::tail(
        common.kafka,
        common.pipeline.processing_guarantee,
        &common.topic_names(),
        &schemas,
        &options,
        &mut stdout.lock(),
    ) {
        Ok(_) => ExitCode::SUCCESS,
        // The reader went away (`tail … | head`): done.
        Err(crate::inspect::InspectError::Output(error))
            if error.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Err(error @ crate::inspect::InspectError::UnknownTopic { .. }) => usage(error.to_string()),
        Err(error) => failure(error),
    }
}

/// `dead-letters list`: one line per letter, then a count per state.
pub(super) fn dead_letters(common: CommonSections<'_>, command: &DeadLettersCommand) -> ExitCode {
    let DeadLettersCommand::List(args) = command;
    let mut filter = match args.filter.filter() {
        Ok(filter) => filter,
        Err(problem) => return usage(problem),
    };
    filter.state = match args.state.as_deref().map(str::parse::<LetterState>) {
        None => None,
        Some(Ok(state)) => Some(state),
        Some(Err(problem)) => return usage(format!("--state {problem}")),
    };
    let schemas = match schemas(&common) {
        Ok(schemas) => schemas,
        Err(code) => return code,
    };
    match read_letters(
        common.kafka,
        common.pipeline.processing_guarantee,
        &common.topic_names(),
        &schemas,
    ) {
        Ok(letters) => {
            let mut text = String::new();
            let mut by_state = std::collections::BTreeMap::new();
            for letter in letters.iter().filter(|l| filter.matches(l)) {
                text.push_str(&format!("{letter}\n"));
                *by_state.entry(letter.state.as_str()).or_insert(0usize) += 1;
            }
            let counts: Vec<String> = by_state
                .iter()
                .map(|(state, n)| format!("{state} {n}"))
                .collect();
            text.push_str(&format!(
                "{} dead letters listed{}\n",
                by_state.values().sum::<usize>(),
                if counts.is_empty() {
                    String::new()
                } else {
                    format!(": {}", counts.join(", "))
                }
            ));
            emit(&text).err().unwrap_or(ExitCode::SUCCESS)
        }
        Err(error) => failure(error),
    }
}

/// `schemas --out DIR`: writes every schema a message on the pipeline's topics can name —
/// each version, the change event and dead letter composed with each dataset version — as a
/// standalone `.avsc` named `<full name>.<fingerprint hex>.avsc`, and lists them. What a tool
/// that reads the topics without a registry (fastavro, a Connect converter) is given.
pub(super) fn schemas_export(common: CommonSections<'_>, args: &SchemasArgs) -> ExitCode {
    let schemas = match schemas(&common) {
        Ok(schemas) => schemas,
        Err(code) => return code,
    };
    if let Err(error) = std::fs::create_dir_all(&args.out) {
        return failure(format!("cannot create {}: {error}", args.out.display()));
    }
    let mut listing = String::new();
    for schema in schemas.all() {
        let fingerprint = crate::avro::hex(&schema.fingerprint);
        let path = args.out.join(format!("{}.{fingerprint}.avsc", schema.name));
        let text = match serde_json::to_string_pretty(&schema.json) {
            Ok(text) => text,
            Err(error) => return failure(error),
        };
        if let Err(error) = std::fs::write(&path, text + "\n") {
            return failure(format!("cannot write {}: {error}", path.display()));
        }
        let nests = match &schema.dataset {
            Some(dataset) => format!(" nesting {}", dataset.path.display()),
            None => String::new(),
        };
        listing.push_str(&format!(
            "{fingerprint}  {}  {}  (from {}{nests})\n",
            schema.name,
            path.display(),
            schema.path.display()
        ));
    }
    emit(&listing).err().unwrap_or(ExitCode::SUCCESS)
}

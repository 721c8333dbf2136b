//! The Confluent Schema Registry, optional: `[schema_registry]` ([`SchemaRegistryConfig`]).
//!
//! When set, every service registers (or, with `auto_register = false`, looks up) at start the
//! current schema of every record kind the pipeline writes, under the subject of the topic it
//! goes to ([`subjects`]), and keeps the ids: with `value_framing = "registry"` (the default)
//! every value is then written as `00` + 4-byte big-endian id + Avro binary, which Kafka
//! Connect's `AvroConverter`, ksqlDB, Flink `avro-confluent` and Confluent's clients read.
//! `value_framing = "single_object"` keeps the registry for reading only (nothing is
//! registered and start-up does not wait for the registry): the way back from registry
//! framing while its records are still on the topics.
//!
//! Ids are immutable in a registry, so an id, once learnt, is cached for the life of the
//! process: there is no cache setting. A reader meeting an id it has not seen (a schema
//! version it did not register itself, or one registered by another writer) asks the registry
//! once (`GET /schemas/ids/{id}`) and maps the answer to a schema of `schemas/` by its
//! fingerprint: values are still only decoded with schemas this pipeline knows.
//!
//! Failures at start: a registry that cannot be reached, times out, or answers 5xx or 429 is
//! retried with capped backoff and the service stays not ready meanwhile; a subject that
//! refuses the schema as incompatible (409), refused credentials (401/403) or a schema missing
//! under `auto_register = false` stop the service with an error naming the subject and the
//! registry's reason. Mid-run (a reader looking an id up): every failure but the registry's
//! own "schema not found" is retried until it answers — a record that cannot be read yet
//! waits; it is never rejected or dead-lettered for the registry's sake (it commits nothing
//! meanwhile, and the drain bound still ends the process on shutdown). Failed answers ("not
//! found", "not in schemas/") are cached like ids: they do not change either.
//!
//! Why not `schema_registry_converter`: it brings its own Avro stack (`apache-avro` with
//! default features, plus `futures`, `dashmap` and a second TLS stack through its own
//! `reqwest` features) to do what is four REST calls here, and it encodes values itself,
//! where snapfeed writes the header in front of bytes it encodes (or splices) on its hot
//! paths. The client here is a thread of its own with a single-threaded runtime, so a lookup
//! can be made from stage threads and async workers alike without nesting runtimes.
//!
//! The parts: `config` (the section and its checks), `client` ([`Registry`]: the thread, the
//! retry policies, the errors), `http` (the REST calls, on the client's thread); this file
//! holds what is registered where ([`subjects`]) and the registration itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shutdown::Shutdown;
use crate::topics::TopicNames;

use super::{AvroError, LoadedSchema, RegistryId, SchemaStore};

mod client;
mod config;
mod http;

pub use client::{Registry, RegistryError};
pub use config::{RegistryAuth, SchemaRegistryConfig, SubjectStrategy, ValueFraming};

/// Why start-up registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The subject's registered schemas do not accept this one.
    #[error("schema registry subject {subject} refuses {schema} as incompatible: {reason}")]
    Incompatible {
        /// Subject.
        subject: String,
        /// Full name of the schema.
        schema: String,
        /// The registry's reason.
        reason: String,
    },
    /// `auto_register = false` and the schema is not under the subject.
    #[error("schema registry subject {subject} does not hold {schema}: {reason}")]
    NotRegistered {
        /// Subject.
        subject: String,
        /// Full name of the schema.
        schema: String,
        /// Why.
        reason: String,
    },
    /// Any other refusal (credentials, invalid schema).
    #[error("schema registry subject {subject}: {source}")]
    Registry {
        /// Subject.
        subject: String,
        /// The error.
        source: RegistryError,
    },
    /// Shutdown came first.
    #[error("shutdown requested during schema registration")]
    Interrupted,
    /// The registration task panicked (a bug).
    #[error("schema registration panicked")]
    Panicked,
    /// A schema the pipeline writes is not in `schemas/`.
    #[error(transparent)]
    Schemas(#[from] AvroError),
}

/// The record kinds on each topic (full names; `dataset` for the dataset record).
fn kinds<'t>(topics: &'t TopicNames, dataset: &'t str) -> [(&'t str, Vec<&'t str>); 7] {
    use crate::records::{
        AvroRecord, ChangeEvent, DeadLetter, DeliveryReceipt, DetectorState, FileLedgerEntry,
        RejectedRow, SnapshotEnd, StaleSnapshot, StateLayout, StreamProgress,
    };
    [
        (&topics.snapshots, vec![dataset, SnapshotEnd::SCHEMA]),
        (&topics.files, vec![FileLedgerEntry::SCHEMA]),
        (&topics.rejects, vec![RejectedRow::SCHEMA]),
        (
            &topics.state,
            vec![
                DetectorState::SCHEMA,
                StreamProgress::SCHEMA,
                StaleSnapshot::SCHEMA,
                StateLayout::SCHEMA,
            ],
        ),
        (&topics.changes, vec![ChangeEvent::SCHEMA]),
        (&topics.deliveries, vec![DeliveryReceipt::SCHEMA]),
        (&topics.dead_letters, vec![DeadLetter::SCHEMA]),
    ]
}

/// A schema to register: topic, subject, schema.
pub type Subject = (String, String, Arc<LoadedSchema>);

/// Every (topic, subject, schema) the pipeline writes, for the pipeline's dataset — or, with
/// `only`, just those record kinds (which must not nest the dataset): the subjects registered.
pub fn subjects(
    store: &SchemaStore,
    topics: &TopicNames,
    dataset: &str,
    strategy: SubjectStrategy,
    only: Option<&[&str]>,
) -> Result<Vec<Subject>, AvroError> {
    let mut out = Vec::new();
    for (topic, names) in kinds(topics, dataset) {
        for name in &names {
            if only.is_some_and(|only| !only.contains(name)) {
                continue;
            }
            let subject = match strategy {
                SubjectStrategy::TopicName if names.len() == 1 => format!("{topic}-value"),
                _ => format!("{topic}-{name}"),
            };
            out.push((
                topic.to_string(),
                subject,
                store.current_for(name, dataset)?,
            ));
        }
    }
    Ok(out)
}

/// Registers (or looks up) each of `subjects` and gives its schema the id, framing values
/// with it when `value_framing = "registry"`. Blocking; see [`Registry::id_under`] for
/// `stop` and `give_up`.
fn register_all(
    registry: &Registry,
    store: &SchemaStore,
    subjects: Vec<Subject>,
    stop: &dyn Fn() -> bool,
    give_up: Option<Instant>,
) -> Result<(), RegistrationError> {
    let frames = registry.config().value_framing == ValueFraming::Registry;
    for (topic, subject, schema) in subjects {
        let id = registry.id_under(&subject, &schema, stop, give_up)?;
        if let Some(known) = schema.registry_id() {
            if known.id != id {
                tracing::info!(
                    message = "Schema has another id under this subject; values carry the first.",
                    subject,
                    first = known.id,
                    id
                );
            }
        }
        schema.set_registry_id(RegistryId { id, frames });
        store.remember_id(id, schema.fingerprint);
        tracing::info!(message = "Schema registered.", topic, subject, schema = %schema.name, id);
    }
    Ok(())
}

/// Registers (or looks up) every schema the pipeline writes ([`subjects`]) and gives each
/// its id (see the module documentation). Retries an unavailable registry until shutdown,
/// off the async workers.
pub async fn register_pipeline(
    registry: &Arc<Registry>,
    store: &Arc<SchemaStore>,
    topics: &TopicNames,
    dataset: &str,
    shutdown: &Shutdown,
) -> Result<(), RegistrationError> {
    if registry.config().value_framing == ValueFraming::SingleObject {
        return Ok(());
    }
    let subjects = subjects(
        store,
        topics,
        dataset,
        registry.config().subject_strategy,
        None,
    )?;
    let (registry, store, stop) = (registry.clone(), store.clone(), shutdown.clone());
    let task = tokio::task::spawn_blocking(move || {
        register_all(&registry, &store, subjects, &|| stop.is_triggered(), None)
    });
    let mut shutdown = shutdown.clone();
    tokio::select! {
        joined = task => joined.unwrap_or(Err(RegistrationError::Panicked)),
        // A request in flight ends on its own (bounded by the request timeout); the task
        // then sees the trigger and stops.
        _ = shutdown.wait() => Err(RegistrationError::Interrupted),
    }
}

/// For an operator command that writes records of `kinds` (none nesting the dataset): the
/// same registration as at start, for those kinds only, when `store` has a registry; an
/// unavailable registry is retried for up to a minute. Blocking.
pub fn register_kinds(
    store: &SchemaStore,
    topics: &TopicNames,
    kinds: &[&str],
) -> Result<(), RegistrationError> {
    let Some(registry) = store.registry() else {
        return Ok(());
    };
    if registry.config().value_framing == ValueFraming::SingleObject {
        return Ok(());
    }
    let subjects = subjects(
        store,
        topics,
        "",
        registry.config().subject_strategy,
        Some(kinds),
    )?;
    let give_up = Instant::now() + Duration::from_secs(60);
    register_all(registry, store, subjects, &|| false, Some(give_up))
}

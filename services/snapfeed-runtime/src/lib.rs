//! What the three snapfeed services share. Each service is a library with
//! `run(config, shutdown)` plus a thin binary; this crate is everything around their stages.
//!
//! - [`config`]: TOML file + `SNAPFEED_…` environment overrides, errors that name the key.
//! - [`kafka`]: client settings per [`kafka::ProcessingGuarantee`]; the one writer of the
//!   guarantee ([`kafka::GuaranteedWriter`]); the consume loop every consuming stage shares.
//! - [`client_log`]: librdkafka's own log lines and error events, into `tracing`.
//! - [`partition`]: the Java client's murmur2 partitioner, so we can count records per partition.
//! - [`topics`]: topic names from the pipeline name, creation, co-partitioning check.
//! - [`avro`]: schemas from `schemas/`, single-object encoding, fingerprint-based decoding.
//! - [`records`]: Rust mirrors of snapfeed's own record schemas (change events, state, ledger…).
//! - [`record_key`]: the canonical, escaped record key.
//! - [`dataset`]: the dataset record (CSV row as Avro), driven by the mapping file; key, codec, evolution.
//! - [`headers`]: Kafka header names for provenance and control records.
//! - [`health`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`metrics`]: declaring a stage's metrics under its prefix, label values set up front.
//! - [`telemetry`]: `tracing` logs, human or JSON; never record contents.
//! - [`shutdown`]: SIGTERM/SIGINT → drain within a bound; a second signal exits at once.
//! - [`replay`]: reset a stage's consumer-group offsets (earliest, a time, explicit offsets).
//! - [`service`]: the frame every stage runs in — shared config sections
//!   ([`service_config!`]), schemas, endpoint, topic checks, the stage thread, bounded shutdown.
//! - [`cli`]: the binary edge (`run`, `check-config`, `init-topics`).

pub mod avro;
pub mod cli;
pub mod client_log;
pub mod config;
pub mod dataset;
pub mod dead_letters;
pub mod headers;
pub mod health;
pub mod inspect;
pub mod kafka;
pub mod metrics;
pub mod partition;
pub mod preflight;
pub mod process_metrics;
pub mod reconcile;
pub mod record_key;
pub mod records;
pub mod replay;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod topics;

/// Crates the runtime's macros expand to.
#[doc(hidden)]
pub mod reexport {
    pub use serde;
}

//! Test harness shared by every crate's tests, the benchmarks and the demo.
//!
//! - [`broker`]: a Kafka cluster for a test — librdkafka's in-process mock cluster by default,
//!   or a Nisshi / Tansu broker process, or any cluster named by `SNAPFEED_TEST_BOOTSTRAP`.
//! - [`generator`]: deterministic, realistic lab-result snapshots and the exact set of keys each
//!   one creates, updates and removes, so tests assert exact sets rather than counts.
//! - [`in_process`]: a service's library `run` in a task, with its endpoint, readiness,
//!   metrics and a bounded stop; [`service_process`]: a service binary as a separate OS
//!   process (start, ready, SIGTERM, SIGKILL), its environment overrides and its log.
//! - [`lifecycle`]: the checks every binary passes alike (ready, metrics, SIGTERM within the
//!   drain bound; `check-config` redacts secrets; a wrong config value is named).
//! - [`endpoint`] (free address, GET), [`metrics`] (one series from `/metrics`), [`wait`]
//!   (bounded waits on conditions), [`offsets`] (a group's committed offsets), [`messages`]
//!   (headers, locations and values of what a service wrote), [`schemas`] (the repository's
//!   schemas and mapping, and evolved copies).
//! - [`snapshot_publisher`]: a generated snapshot on `snapshots` exactly as file-source
//!   writes it (records, partitions, provenance headers, snapshot-end markers), from
//!   [`snapshot_records`] — the records file-source makes of a generated file — so tests of
//!   the detector need no other service.
//! - [`stub_api`]: a stand-in for the case-management API that records every request, answers
//!   from a script and counts unique effects by `Idempotency-Key`.
//! - [`stub_registry`]: a stand-in for the Confluent Schema Registry REST API (register, look
//!   up, fetch by id, compatibility) with injected failures, forced incompatibility, forgotten
//!   ids, optional credentials, and going down and up on the same port.
//!
//! Test-support code: a failed expectation here is a failed test, so panicking is the intended
//! way to report it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod broker;
pub mod endpoint;
pub mod generator;
pub mod in_process;
pub mod lifecycle;
pub mod measure;
pub mod messages;
pub mod metrics;
pub mod offsets;
#[cfg(test)]
mod raw_http;
pub mod schemas;
pub mod service_process;
pub mod snapshot_publisher;
pub mod snapshot_records;
pub mod stub_api;
pub mod stub_registry;
pub mod wait;

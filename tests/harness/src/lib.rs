//! Test harness shared by every crate's tests, the benchmarks and the demo.
//!
//! - [`broker`]: a Kafka cluster for a test — librdkafka's in-process mock cluster by default,
//!   or a Nisshi / Tansu broker process, or any cluster named by `SNAPFEED_TEST_BOOTSTRAP`.
//! - [`generator`]: deterministic, realistic lab-result snapshots and the exact set of keys each
//!   one creates, updates and removes, so tests assert exact sets rather than counts.
//! - [`service_process`]: a service binary as a separate OS process (start, ready, SIGTERM, SIGKILL).
//! - [`stub_api`]: a stand-in for the case-management API that records every request, answers
//!   from a script and counts unique effects by `Idempotency-Key`.
//!
//! Test-support code: a failed expectation here is a failed test, so panicking is the intended
//! way to report it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod broker;
pub mod generator;
pub mod measure;
pub mod service_process;
pub mod stub_api;

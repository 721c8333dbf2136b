//! The end-to-end fault suite's machinery (issue #7): the three service binaries run as separate
//! OS processes against a real broker and the stub case API, fed generated snapshots whose exact
//! changes are known, and judged by one ledger of truth.
//!
//! - [`binaries`]: where the built service binaries are (`target/debug`, or `SNAPFEED_BIN_DIR`).
//! - [`rig`]: one scenario's world — broker, pipeline, stub API, inbox, configs, every service
//!   process it started (and only those are ever signalled), every log file they wrote.
//! - [`ledger`]: what must have happened ([`ledger::Expectation`], derived from the generator's
//!   snapshots and change sets) against what did (`changes`, the stub's requests, `rejects`,
//!   `dead-letters`), checked once for every scenario; it returns the [`ledger::Figures`] the
//!   scenario prints.
//! - [`interop`]: every topic read back by confluent-kafka and fastavro (not snapfeed's code),
//!   each dataset record compared with the generator's values.
//! - [`health_data`]: the generated names, dates of birth, phones and results that must never
//!   appear in a log.
//!
//! Test-support code: a failed expectation is a failed test, so panicking is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod binaries;
pub mod health_data;
pub mod interop;
pub mod ledger;
pub mod rig;

//! Topic names, specs, creation and verification.
//!
//! Names derive from the pipeline name (`lab-results.snapshots`, …), each overridable.
//! `snapshots`, `state` and `changes` must have the same partition count: the detector restores
//! partition N of `state` to process partition N of `snapshots`, and writes key K to the same
//! partition of `changes` — a mismatch would silently split one key's history, so every service
//! refuses to start on it.
//!
//! The parts: `config` is the `[topics]` section; `names` turns it and the pipeline name into
//! each topic's name and creation spec; `cluster` reads what the cluster has, refuses a missing
//! or mis-partitioned topic, and creates the missing ones.

mod cluster;
mod config;
mod names;

pub use cluster::{create_missing, partition_counts, verify, TopicError};
pub use config::{TopicNameOverrides, TopicsConfig};
pub use names::{CleanupPolicy, TopicNames, TopicSpec};

//! Snapshots change-detector passed over as stale (older than the newest applied for their
//! stream, read after it): its `StaleSnapshot` control entries on `state`, one per partition.

use std::collections::{BTreeMap, HashMap};

use rdkafka::Message;

use super::{failed, PassedOver, ReconcileError};
use crate::avro::{MessageLocation, SchemaStore};
use crate::kafka::TopicReader;
use crate::records::{AvroRecord, StaleSnapshot, STALE_SNAPSHOT_KEY_PREFIX};

/// Per snapshot id in `wanted`, the partitions it was passed over on (the last entry per
/// partition wins, as compaction keeps it). Reads all of `state`; decodes only these entries.
pub(super) fn read(
    reader: &TopicReader,
    topic: &str,
    schemas: &SchemaStore,
    wanted: &HashMap<String, usize>,
) -> Result<BTreeMap<usize, BTreeMap<i32, PassedOver>>, ReconcileError> {
    let mut found: BTreeMap<usize, BTreeMap<i32, PassedOver>> = BTreeMap::new();
    reader
        .read_all(topic, |m| {
            let Some(id) = m
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| k.strip_prefix(STALE_SNAPSHOT_KEY_PREFIX))
            else {
                return;
            };
            let Some(&i) = wanted.get(id) else { return };
            let Some(payload) = m.payload() else {
                if let Some(partitions) = found.get_mut(&i) {
                    partitions.remove(&m.partition());
                }
                return;
            };
            let location = MessageLocation::of(m);
            match schemas.decode::<StaleSnapshot>(payload, StaleSnapshot::SCHEMA, &location) {
                Ok(stale) => {
                    found.entry(i).or_default().insert(
                        m.partition(),
                        PassedOver {
                            partition: m.partition(),
                            rows: stale.rows_in_partition,
                            passed_over: stale.rows_passed_over,
                            snapshot_time: stale.snapshot_time,
                            newest_snapshot_id: stale.newest_snapshot_id,
                            newest_snapshot_time: stale.newest_snapshot_time,
                        },
                    );
                }
                Err(error) => tracing::warn!(
                    message = "Skipping a stale-snapshot entry that does not decode.",
                    %location,
                    %error
                ),
            }
        })
        .map_err(failed("read the state (stale snapshots)"))?;
    Ok(found)
}

//! Aggregate streams: per-key versions, key and id indexes, expected versions, snapshots, time
//! lookups. An event-sourced application reads one key's events as the stream of one aggregate;
//! this subsystem keeps what makes reading it fast and safe, on top of the log's partitions.

// Wired into Log by the aggregate-streams work (issue 11).
#[allow(dead_code)]
pub(crate) mod snapshot;

//! Where things live: key -> partition by a stable hash, partition -> Raft group id, partition ->
//! replica nodes, partition -> owning core. Every function here is part of the on-disk and
//! on-wire contract: identical on every node and every version.

use crate::raft::{GroupId, NodeId};

/// The replication factor of every partition.
pub const REPLICATION_FACTOR: usize = 3;

/// The partition of a key: CRC-32C (Castagnoli, fixed polynomial, no seed) of the key bytes,
/// modulo the partition count. Never ahash or anything seeded: clients and nodes of every
/// version must agree.
pub fn partition_of(key: &[u8], partitions: u64) -> u64 {
    assert!(partitions > 0);
    u64::from(crc32c::crc32c(key)) % partitions
}

/// Raft group ids are partition + 1: group 0 is reserved by storage.
pub fn group_of(partition: u64) -> GroupId {
    partition + 1
}

pub fn partition_of_group(group: GroupId) -> u64 {
    assert!(group > 0);
    group - 1
}

/// The core of a node that owns a partition. All nodes of a cluster run the same core count, so
/// core c of one node talks only to core c of the others.
pub fn core_of(partition: u64, cores: usize) -> usize {
    (partition % cores as u64) as usize
}

/// The replicas of a partition: `REPLICATION_FACTOR` consecutive nodes (of the sorted node
/// list) starting at `partition % nodes`, so every node holds and leads a fair share. The
/// first one is the preferred leader, which campaigns first at bootstrap.
pub fn replicas(partition: u64, nodes: &[NodeId]) -> Vec<NodeId> {
    assert!(!nodes.is_empty());
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    let count = REPLICATION_FACTOR.min(sorted.len());
    (0..count)
        .map(|k| sorted[(partition as usize + k) % sorted.len()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable_across_versions() {
        // Changing these breaks every existing data directory and client.
        assert_eq!(partition_of(b"", 64), 0);
        assert_eq!(
            partition_of(b"hello", 64),
            u64::from(crc32c::crc32c(b"hello")) % 64
        );
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn replicas_spread_leadership_evenly() {
        let nodes = [1, 2, 3];
        let mut preferred = [0usize; 4];
        for partition in 0..63 {
            let replicas = replicas(partition, &nodes);
            assert_eq!(replicas.len(), 3);
            preferred[replicas[0] as usize] += 1;
        }
        assert_eq!(&preferred[1..], &[21, 21, 21]);
        assert_eq!(replicas(0, &[1]), vec![1]);
    }
}

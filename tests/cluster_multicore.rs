//! Process-level test of cross-core routing: a 3-node cluster of `kahuna serve --cores 2`
//! processes. Every core accepts client connections, so whichever core a connection lands on,
//! half the partitions belong to the other core and reach it through the core mesh. Checks:
//! every partition elects a leader, status from one node lists the partitions of both cores,
//! every connection of every node serves every partition, and writes and linearizable reads of
//! keys spread over all partitions succeed through every node. Waits on conditions with
//! generous deadlines, never on fixed sleeps.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use kahuna::client::Connection;
use kahuna::proto::client::{ErrorCode, Op, Reply};
use kahuna::server::placement::{core_of, partition_of};
use kahuna::server::playground::wait_for_leaders;
use support::cluster::{stale_get_on, ProcessCluster};

const PARTITIONS: u64 = 16;
const CORES: usize = 2;
/// Connections opened to each node: the kernel spreads them over the node's cores.
const CONNECTIONS_PER_NODE: usize = 6;

/// One key of every partition, so both cores of every node are addressed.
fn key_per_partition() -> BTreeMap<u64, String> {
    let mut keys = BTreeMap::new();
    for i in 0.. {
        let key = format!("spread-{i}");
        keys.entry(partition_of(key.as_bytes(), PARTITIONS))
            .or_insert(key);
        if keys.len() as u64 == PARTITIONS {
            return keys;
        }
        assert!(i < 10_000, "the hash reaches every partition");
    }
    unreachable!()
}

#[test]
fn two_cores_per_node_serve_every_partition_through_every_node() {
    let cluster = ProcessCluster::start(17600, PARTITIONS, CORES, Vec::new());
    assert!(
        wait_for_leaders(&cluster.endpoints(), PARTITIONS, Duration::from_secs(60)),
        "every partition elects a leader"
    );

    // Status from one node lists the partitions of both cores (every node replicates every
    // partition with 3 nodes), whichever core answers.
    let addr = cluster.config.client_addr(1);
    for _ in 0..CONNECTIONS_PER_NODE {
        let connection = Connection::connect_blocking(&addr, 16, Duration::from_secs(2))
            .expect("connect to node 1");
        let response = connection
            .call_blocking(Op::Status, 0, 0, 0, Duration::from_secs(10))
            .expect("status answers");
        assert_eq!(response.error, ErrorCode::Ok, "{response:?}");
        let Some(Reply::Status(status)) = response.reply else {
            panic!("not a status: {response:?}");
        };
        let partitions: BTreeSet<u64> = status.partitions.iter().map(|p| p.partition).collect();
        assert_eq!(partitions, (0..PARTITIONS).collect(), "{status:?}");
        let cores: BTreeSet<usize> = partitions.iter().map(|&p| core_of(p, CORES)).collect();
        assert_eq!(cores, (0..CORES).collect());
    }

    // Every connection of every node serves every partition: half of them reach the other
    // core through the mesh. Nothing is written yet, so each answer is a definite NotFound.
    let keys = key_per_partition();
    for node in 1..=3 {
        let addr = cluster.config.client_addr(node);
        for c in 0..CONNECTIONS_PER_NODE {
            let connection =
                Connection::connect_blocking(&addr, 16, Duration::from_secs(2)).expect("connect");
            for (partition, key) in &keys {
                let response = stale_get_on(&connection, key.as_bytes()).expect("the node answers");
                assert_eq!(
                    response.error,
                    ErrorCode::NotFound,
                    "node {node} connection {c} partition {partition}: {response:?}"
                );
            }
        }
    }

    // Writes through every node, to keys of every partition (the client follows leader hints;
    // the leader's connection may land on either core).
    for node in 1..=3u64 {
        let client = cluster.client_via(node);
        for (partition, key) in &keys {
            let key = format!("{key}-n{node}");
            let value = format!("p{partition}-n{node}");
            client
                .put(key.as_bytes(), value.as_bytes())
                .expect("write succeeds");
        }
    }

    // Linearizable reads through every node see every write.
    for reader in 1..=3u64 {
        let client = cluster.client_via(reader);
        for writer in 1..=3u64 {
            for (partition, key) in &keys {
                let key = format!("{key}-n{writer}");
                match client.get(key.as_bytes()).expect("read succeeds") {
                    Some(found) => {
                        assert_eq!(found.value, Bytes::from(format!("p{partition}-n{writer}")))
                    }
                    None => panic!("{key} through node {reader}: not found"),
                }
            }
        }
    }
}

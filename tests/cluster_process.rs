//! Process-level test: real `kahuna serve` processes on loopback. A 3-node cluster elects a
//! leader for every partition; writes through any node succeed; kill -9 of a partition's
//! leader leads to a new leader and writes continue; the restarted node catches up and every
//! replica ends with the same data. Waits on conditions with generous deadlines, never on
//! fixed sleeps.

mod support;

use std::time::Duration;

use bytes::Bytes;
use kahuna::server::placement::partition_of;
use kahuna::server::playground::wait_for_leaders;
use support::cluster::{wait_until, ProcessCluster};

const PARTITIONS: u64 = 16;

#[test]
fn three_nodes_elect_replicate_fail_over_and_catch_up() {
    let mut cluster = ProcessCluster::start(17400, PARTITIONS, 1, Vec::new());
    assert!(
        wait_for_leaders(&cluster.endpoints(), PARTITIONS, Duration::from_secs(60)),
        "every partition elects a leader"
    );
    // Writes through each node succeed (non-leaders redirect the client).
    for node in 1..=3u64 {
        let client = cluster.client_via(node);
        for i in 0..20 {
            let key = format!("n{node}-k{i}");
            client.put(key.as_bytes(), b"v1").expect("write succeeds");
        }
    }
    // Kill -9 the leader of the partition of "failover-key"; a new leader takes over.
    let key = b"failover-key";
    let partition = partition_of(key, PARTITIONS);
    let old_leader = cluster
        .leader_of(partition)
        .expect("partition has a leader");
    cluster.kill9(old_leader);
    let client = cluster.client();
    client
        .put(key, b"after-failover")
        .expect("write after failover");
    let new_leader = cluster.leader_of(partition).expect("a new leader");
    assert_ne!(new_leader, old_leader);
    for i in 0..20 {
        client
            .put(format!("during-{i}").as_bytes(), b"v2")
            .expect("writes continue");
    }
    // Restart the killed node: it catches up from the leaders' logs.
    cluster.start_node(old_leader);
    wait_until(
        "the restarted node serves and catches up",
        Duration::from_secs(60),
        || {
            cluster.stale_get(old_leader, key).as_deref() == Some(b"after-failover".as_slice())
                && (0..20).all(|i| {
                    cluster
                        .stale_get(old_leader, format!("during-{i}").as_bytes())
                        .is_some()
                })
        },
    );
    // Every replica ends with the same data.
    wait_until("all replicas agree", Duration::from_secs(60), || {
        let keys: Vec<String> = (1..=3)
            .flat_map(|n| (0..20).map(move |i| format!("n{n}-k{i}")))
            .chain((0..20).map(|i| format!("during-{i}")))
            .collect();
        keys.iter().all(|k| {
            let values: Vec<_> = (1..=3)
                .map(|n| cluster.stale_get(n, k.as_bytes()))
                .collect();
            values.iter().all(|v| v.is_some() && *v == values[0])
        })
    });
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_from_a_snapshot() {
    // Logs compact every 20 entries, so a node that misses a few hundred writes can only catch
    // up from snapshots of its partitions' data; then the whole cluster restarts from them.
    let mut cluster = ProcessCluster::start(
        17500,
        PARTITIONS,
        1,
        vec!["--compact-after".into(), "20".into()],
    );
    assert!(wait_for_leaders(
        &cluster.endpoints(),
        PARTITIONS,
        Duration::from_secs(60)
    ));
    let client = cluster.client();
    for i in 0..50 {
        client
            .put(format!("early-{i}").as_bytes(), b"e")
            .expect("write");
    }
    cluster.kill9(3);
    for i in 0..600 {
        client
            .put(format!("late-{i}").as_bytes(), format!("v{i}").as_bytes())
            .expect("write");
    }
    cluster.start_node(3);
    let keys: Vec<String> = (0..50)
        .map(|i| format!("early-{i}"))
        .chain((0..600).map(|i| format!("late-{i}")))
        .collect();
    wait_until(
        "node 3 catches up through snapshots",
        Duration::from_secs(90),
        || {
            keys.iter()
                .all(|k| cluster.stale_get(3, k.as_bytes()).is_some())
        },
    );
    assert_eq!(
        cluster.stale_get(3, b"late-599").as_deref(),
        Some(b"v599".as_slice())
    );
    // Every node restarts from its compacted state and still serves everything. Nodes 1 and 2
    // (which compacted their own logs, never installed a snapshot) come back first and must
    // elect on their own: their membership comes from what they stored, not from the log.
    for node in 1..=3 {
        cluster.kill9(node);
    }
    cluster.start_node(1);
    cluster.start_node(2);
    let client = cluster.client();
    for i in 0..PARTITIONS * 4 {
        client
            .put(format!("two-nodes-{i}").as_bytes(), b"ok")
            .expect("nodes 1 and 2 elect alone");
    }
    cluster.start_node(3);
    assert!(wait_for_leaders(
        &cluster.endpoints(),
        PARTITIONS,
        Duration::from_secs(60)
    ));
    let client = cluster.client();
    for i in [0, 299, 599] {
        let found = client
            .get(format!("late-{i}").as_bytes())
            .expect("read after restart");
        match found {
            Some(found) => assert_eq!(found.value, Bytes::from(format!("v{i}"))),
            None => panic!("late-{i}: not found"),
        }
    }
    client
        .put(b"after-restart", b"ok")
        .expect("writes after restart");
}

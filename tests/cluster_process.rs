//! Process-level test: real `kahuna serve` processes on loopback. A 3-node cluster elects a
//! leader for every partition; writes through any node succeed; kill -9 of a partition's
//! leader leads to a new leader and writes continue; the restarted node catches up and every
//! replica ends with the same data. Waits on conditions with generous deadlines, never on
//! fixed sleeps.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kahuna::client::Client;
use kahuna::proto::client::{ErrorCode, Op, Reply};
use kahuna::server::placement::partition_of;
use kahuna::server::playground::{wait_for_leaders, PlaygroundConfig};

const PARTITIONS: u64 = 16;

struct Cluster {
    config: PlaygroundConfig,
    children: BTreeMap<u64, Child>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(base_port: u16) -> Cluster {
        Cluster::start_with(base_port, Vec::new())
    }

    fn start_with(base_port: u16, extra_serve_args: Vec<String>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let config = PlaygroundConfig {
            nodes: 3,
            data_dir: dir.path().to_path_buf(),
            base_port,
            cores: 1,
            partitions: PARTITIONS,
            storage: "rocksdb".into(),
            extra_serve_args,
        };
        let mut cluster = Cluster {
            config,
            children: BTreeMap::new(),
            _dir: dir,
        };
        for node in 1..=3 {
            cluster.start_node(node);
        }
        cluster
    }

    fn start_node(&mut self, node: u64) {
        let child = Command::new(env!("CARGO_BIN_EXE_kahuna"))
            .args(self.config.serve_args(node))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start kahuna serve");
        self.children.insert(node, child);
    }

    fn kill9(&mut self, node: u64) {
        let mut child = self.children.remove(&node).expect("node running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    fn endpoints(&self) -> Vec<String> {
        (1..=3).map(|n| self.config.client_addr(n)).collect()
    }

    /// The node currently leading `partition`, from the nodes' own status reports.
    fn leader_of(&self, partition: u64) -> Option<u64> {
        let mut client = Client::new(self.endpoints());
        for node in self.children.keys() {
            let Ok(response) = client.status_of(&self.config.client_addr(*node)) else {
                continue;
            };
            let Some(Reply::Status(status)) = response.reply else {
                continue;
            };
            for p in status.partitions {
                if p.partition == partition && p.role == kahuna::raft::Role::Leader {
                    return Some(status.node_id);
                }
            }
        }
        None
    }

    fn stale_get(&self, node: u64, key: &[u8]) -> Option<Bytes> {
        let mut connection = kahuna::client::Connection::connect(
            &self.config.client_addr(node),
            Duration::from_secs(2),
        )
        .ok()?;
        let request = kahuna::proto::client::Request {
            request_id: 1,
            client_id: 0,
            sequence: 0,
            cluster_id: 0,
            op: Op::Get {
                key: Bytes::copy_from_slice(key),
                stale_ok: true,
            },
        };
        match connection.call(&request).ok()?.reply {
            Some(Reply::Value { value, .. }) => Some(value),
            _ => None,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

#[test]
fn three_nodes_elect_replicate_fail_over_and_catch_up() {
    let mut cluster = Cluster::start(17400);
    assert!(
        wait_for_leaders(&cluster.endpoints(), PARTITIONS, Duration::from_secs(60)),
        "every partition elects a leader"
    );
    // Writes through each node succeed (non-leaders redirect the client).
    for node in 1..=3u64 {
        let mut client = Client::new(vec![cluster.config.client_addr(node)]);
        client.endpoints_hint(cluster.endpoints());
        for i in 0..20 {
            let key = format!("n{node}-k{i}");
            let response = client.put(key.as_bytes(), b"v1").expect("write succeeds");
            assert_eq!(response.error, ErrorCode::Ok, "{response:?}");
        }
    }
    // Kill -9 the leader of the partition of "failover-key"; a new leader takes over.
    let key = b"failover-key";
    let partition = partition_of(key, PARTITIONS);
    let old_leader = cluster
        .leader_of(partition)
        .expect("partition has a leader");
    cluster.kill9(old_leader);
    let mut client = Client::new(cluster.endpoints());
    client.deadline = Duration::from_secs(30);
    let response = client
        .put(key, b"after-failover")
        .expect("write after failover");
    assert_eq!(response.error, ErrorCode::Ok);
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
    let mut cluster = Cluster::start_with(17500, vec!["--compact-after".into(), "20".into()]);
    assert!(wait_for_leaders(
        &cluster.endpoints(),
        PARTITIONS,
        Duration::from_secs(60)
    ));
    let mut client = Client::new(cluster.endpoints());
    client.deadline = Duration::from_secs(30);
    for i in 0..50 {
        client
            .put(format!("early-{i}").as_bytes(), b"e")
            .expect("write");
    }
    cluster.kill9(3);
    for i in 0..600 {
        let response = client
            .put(format!("late-{i}").as_bytes(), format!("v{i}").as_bytes())
            .expect("write");
        assert_eq!(response.error, ErrorCode::Ok);
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
    let mut client = Client::new(cluster.endpoints());
    client.deadline = Duration::from_secs(30);
    for i in 0..PARTITIONS * 4 {
        let response = client
            .put(format!("two-nodes-{i}").as_bytes(), b"ok")
            .expect("nodes 1 and 2 elect alone");
        assert_eq!(response.error, ErrorCode::Ok);
    }
    cluster.start_node(3);
    assert!(wait_for_leaders(
        &cluster.endpoints(),
        PARTITIONS,
        Duration::from_secs(60)
    ));
    let mut client = Client::new(cluster.endpoints());
    client.deadline = Duration::from_secs(30);
    for i in [0, 299, 599] {
        let response = client
            .get(format!("late-{i}").as_bytes())
            .expect("read after restart");
        match response.reply.clone() {
            Some(Reply::Value { value, .. }) => assert_eq!(value, Bytes::from(format!("v{i}"))),
            other => panic!("late-{i}: {other:?} ({:?})", response.error),
        }
    }
    client
        .put(b"after-restart", b"ok")
        .expect("writes after restart");
}

//! A cluster of real `kahuna serve` processes on loopback for process-level tests: start,
//! kill -9, restart, ask who leads, read a replica's local copy. Processes are killed when the
//! harness is dropped, so a failing test leaves nothing running.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kahuna::client::{BlockingClient, CallError, ClientConfig, Connection};
use kahuna::proto::client::{Op, Reply, Response};
use kahuna::server::playground::PlaygroundConfig;

pub struct ProcessCluster {
    pub config: PlaygroundConfig,
    children: BTreeMap<u64, Child>,
    _dir: tempfile::TempDir,
}

impl ProcessCluster {
    /// Three nodes with `partitions` partitions and `cores` cores each; client ports from
    /// `base_port` (peer ports from `base_port + 1000`), data in a temporary directory.
    pub fn start(
        base_port: u16,
        partitions: u64,
        cores: usize,
        extra_serve_args: Vec<String>,
    ) -> ProcessCluster {
        let dir = tempfile::tempdir().unwrap();
        let config = PlaygroundConfig {
            nodes: 3,
            data_dir: dir.path().to_path_buf(),
            base_port,
            cores,
            partitions,
            storage: "rocksdb".into(),
            extra_serve_args,
        };
        let mut cluster = ProcessCluster {
            config,
            children: BTreeMap::new(),
            _dir: dir,
        };
        for node in 1..=3 {
            cluster.start_node(node);
        }
        cluster
    }

    pub fn start_node(&mut self, node: u64) {
        let child = Command::new(env!("CARGO_BIN_EXE_kahuna"))
            .args(self.config.serve_args(node))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start kahuna serve");
        self.children.insert(node, child);
    }

    pub fn kill9(&mut self, node: u64) {
        let mut child = self.children.remove(&node).expect("node running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    pub fn endpoints(&self) -> Vec<String> {
        (1..=3).map(|n| self.config.client_addr(n)).collect()
    }

    /// The node currently leading `partition`, from the running nodes' own status reports.
    pub fn leader_of(&self, partition: u64) -> Option<u64> {
        let client = BlockingClient::with_endpoints(self.endpoints());
        for node in self.children.keys() {
            let Ok(status) = client.status_of(&self.config.client_addr(*node)) else {
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

    /// `node`'s local copy of `key` (a stale read), `None` when absent or unreachable.
    pub fn stale_get(&self, node: u64, key: &[u8]) -> Option<Bytes> {
        let connection = Connection::connect_blocking(
            &self.config.client_addr(node),
            16,
            Duration::from_secs(2),
        )
        .ok()?;
        match stale_get_on(&connection, key).ok()?.reply {
            Some(Reply::Value { value, .. }) => Some(value),
            _ => None,
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl ProcessCluster {
    /// A client whose first endpoint is `node` (it learns the others from status answers),
    /// with a deadline long enough to ride out a failover.
    pub fn client_via(&self, node: u64) -> BlockingClient {
        let first = self.config.client_addr(node);
        let mut endpoints = vec![first.clone()];
        endpoints.extend(self.endpoints().into_iter().filter(|e| *e != first));
        BlockingClient::new(ClientConfig::new(endpoints).deadline(Duration::from_secs(30)))
    }

    /// A client of the whole cluster with a deadline long enough to ride out a failover.
    pub fn client(&self) -> BlockingClient {
        BlockingClient::new(ClientConfig::new(self.endpoints()).deadline(Duration::from_secs(30)))
    }
}

/// A stale (local) read of `key` on an open connection.
pub fn stale_get_on(connection: &Connection, key: &[u8]) -> Result<Response, CallError> {
    let op = Op::Get {
        key: Bytes::copy_from_slice(key),
        stale_ok: true,
    };
    connection.call_blocking(op, 0, 0, 0, Duration::from_secs(5))
}

/// Polls `condition` until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

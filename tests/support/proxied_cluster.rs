//! Three real `kahuna serve` processes whose peer links all run through fault-injecting
//! proxies (`proxy.rs`), one per directed link: node A's `--peers` entry for B points at the
//! proxy A->B. The harness owns the processes (start, SIGKILL, SIGSTOP/SIGCONT) and the links
//! (pass, cut, delay). Ports of slot s: 20000 + 200 s onwards (client ports, then peer ports,
//! then proxies), inside this suite's range 20000-21999. Everything stops on drop.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kahuna::client::{BlockingClient, ClientConfig};
use kahuna::raft::Role;

use super::proxy::{LinkMode, LinkProxy};

pub const NODES: u64 = 3;
const PORT_BASE: u64 = 20_000;
const SLOT_PORTS: u64 = 200;
pub const SLOTS_MAX: u64 = 10;
const CORES_MAX: usize = 8;

pub struct ClusterOptions {
    /// Port slot, `0..SLOTS_MAX`; concurrent clusters need distinct slots.
    pub slot: u64,
    pub partitions: u64,
    pub cores: usize,
    /// Environment for every node (the stale-read test switch).
    pub env: Vec<(String, String)>,
    /// Extra `kahuna serve` flags for every node (e.g. `--compact-after`).
    pub extra_args: Vec<String>,
}

pub struct ProxiedCluster {
    pub options: ClusterOptions,
    dir: tempfile::TempDir,
    children: BTreeMap<u64, Child>,
    paused: BTreeSet<u64>,
    links: BTreeMap<(u64, u64), LinkProxy>,
}

impl ProxiedCluster {
    pub fn start(options: ClusterOptions) -> ProxiedCluster {
        assert!(
            options.slot < SLOTS_MAX,
            "slot {} out of range",
            options.slot
        );
        assert!((1..=CORES_MAX).contains(&options.cores));
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut cluster = ProxiedCluster {
            options,
            dir,
            children: BTreeMap::new(),
            paused: BTreeSet::new(),
            links: BTreeMap::new(),
        };
        for from in 1..=NODES {
            for to in (1..=NODES).filter(|&to| to != from) {
                let cores = 0..cluster.options.cores as u64;
                let listen = cores
                    .clone()
                    .map(|c| cluster.proxy_port(from, to, c))
                    .map(|p| format!("127.0.0.1:{p}"))
                    .collect();
                let target = cores
                    .map(|c| format!("127.0.0.1:{}", cluster.peer_port(to) + c))
                    .collect();
                let proxy = LinkProxy::start(listen, target).expect("bind proxy ports");
                cluster.links.insert((from, to), proxy);
            }
        }
        for node in 1..=NODES {
            cluster.start_node(node);
        }
        cluster
    }

    fn base(&self) -> u64 {
        PORT_BASE + self.options.slot * SLOT_PORTS
    }

    fn peer_port(&self, node: u64) -> u64 {
        self.base() + 10 + (node - 1) * CORES_MAX as u64
    }

    fn proxy_port(&self, from: u64, to: u64, core: u64) -> u64 {
        let link = (from - 1) * NODES + (to - 1);
        self.base() + 50 + link * CORES_MAX as u64 + core
    }

    pub fn client_addr(&self, node: u64) -> String {
        format!("127.0.0.1:{}", self.base() + node - 1)
    }

    /// Where `node` serves its metrics (`--metrics-addr`).
    pub fn metrics_addr(&self, node: u64) -> String {
        format!("127.0.0.1:{}", self.base() + 150 + node - 1)
    }

    pub fn endpoints(&self) -> Vec<String> {
        (1..=NODES).map(|n| self.client_addr(n)).collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self, node: u64) -> PathBuf {
        self.dir.path().join(format!("node-{node}.log"))
    }

    /// `kahuna serve` arguments of `node`: its peers are the proxies of its outgoing links.
    pub fn serve_args(&self, node: u64) -> Vec<String> {
        let peers = (1..=NODES)
            .filter(|&n| n != node)
            .map(|n| format!("{n}=127.0.0.1:{}", self.proxy_port(node, n, 0)))
            .collect::<Vec<_>>()
            .join(",");
        let client_addrs = (1..=NODES)
            .map(|n| format!("{n}={}", self.client_addr(n)))
            .collect::<Vec<_>>()
            .join(",");
        let data_dir = self.dir.path().join(format!("node-{node}"));
        [
            "serve",
            "--id",
            &node.to_string(),
            "--data-dir",
            &data_dir.display().to_string(),
            "--client-addr",
            &self.client_addr(node),
            "--peer-addr",
            &format!("127.0.0.1:{}", self.peer_port(node)),
            "--peers",
            &peers,
            "--client-addrs",
            &client_addrs,
            "--partitions",
            &self.options.partitions.to_string(),
            "--cores",
            &self.options.cores.to_string(),
            "--pin",
            "none",
            "--metrics-addr",
            &self.metrics_addr(node),
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(self.options.extra_args.iter().cloned())
        .collect()
    }

    pub fn start_node(&mut self, node: u64) {
        assert!(
            !self.children.contains_key(&node),
            "node {node} already runs"
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(node))
            .expect("node log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_kahuna"));
        command
            .args(self.serve_args(node))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        for (key, value) in &self.options.env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start kahuna serve");
        self.children.insert(node, child);
    }

    /// Nodes whose process ended without the harness killing it (a crash), with its status.
    pub fn exited(&mut self) -> Vec<(u64, String)> {
        self.children
            .iter_mut()
            .filter_map(|(node, child)| match child.try_wait() {
                Ok(Some(status)) => Some((*node, status.to_string())),
                _ => None,
            })
            .collect()
    }

    pub fn is_running(&self, node: u64) -> bool {
        self.children.contains_key(&node)
    }

    pub fn is_paused(&self, node: u64) -> bool {
        self.paused.contains(&node)
    }

    pub fn kill9(&mut self, node: u64) {
        if let Some(mut child) = self.children.remove(&node) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused.remove(&node);
    }

    fn signal(&self, node: u64, signal: libc::c_int) {
        if let Some(child) = self.children.get(&node) {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    pub fn pause(&mut self, node: u64) {
        if self.is_running(node) {
            self.signal(node, libc::SIGSTOP);
            self.paused.insert(node);
        }
    }

    pub fn resume(&mut self, node: u64) {
        if self.paused.remove(&node) {
            self.signal(node, libc::SIGCONT);
        }
    }

    pub fn set_link(&self, from: u64, to: u64, mode: LinkMode) {
        self.links[&(from, to)].set_mode(mode);
    }

    /// Cuts every link to and from `node` (it still talks to clients).
    pub fn isolate(&self, node: u64) {
        for other in (1..=NODES).filter(|&n| n != node) {
            self.set_link(node, other, LinkMode::Cut);
            self.set_link(other, node, LinkMode::Cut);
        }
    }

    pub fn heal_links(&self) {
        for link in self.links.values() {
            link.set_mode(LinkMode::Pass);
        }
    }

    /// Every fault undone: links pass, paused nodes continue, killed nodes restart.
    pub fn heal_all(&mut self) {
        self.heal_links();
        for node in 1..=NODES {
            self.resume(node);
            if !self.is_running(node) {
                self.start_node(node);
            }
        }
    }

    /// Connections each directed link's proxy has accepted: all links above zero shows that
    /// the nodes' peer traffic really runs through the proxies.
    pub fn link_connections(&self) -> BTreeMap<(u64, u64), u64> {
        self.links
            .iter()
            .map(|(link, proxy)| (*link, proxy.connections_accepted()))
            .collect()
    }

    /// Partitions each reachable, running node says it leads.
    pub fn leader_counts(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for node in 1..=NODES {
            if !self.is_running(node) || self.is_paused(node) {
                continue;
            }
            if let Some(led) = self.partitions_led(node) {
                counts.insert(node, led.len());
            }
        }
        counts
    }

    /// The partitions `node` leads, from its own status report.
    pub fn partitions_led(&self, node: u64) -> Option<BTreeSet<u64>> {
        let addr = self.client_addr(node);
        let config = ClientConfig::new(vec![addr.clone()])
            .deadline(Duration::from_millis(500))
            .attempt_timeout(Duration::from_millis(500));
        let status = BlockingClient::new(config).status_of(&addr).ok()?;
        Some(
            status
                .partitions
                .iter()
                .filter(|p| p.role == Role::Leader)
                .map(|p| p.partition)
                .collect(),
        )
    }

    /// Whether every partition has a leader that the running nodes report.
    pub fn all_partitions_led(&self) -> bool {
        let mut led = BTreeSet::new();
        for node in 1..=NODES {
            if self.is_running(node) && !self.is_paused(node) {
                led.extend(self.partitions_led(node).unwrap_or_default());
            }
        }
        led.len() as u64 == self.options.partitions
    }
}

impl Drop for ProxiedCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

//! `kahuna playground`: a local cluster of `kahuna serve` processes on loopback, each with its
//! own data directory. Prints `endpoints: ...` once every partition has a leader, and stops
//! the nodes on Ctrl-C.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::config::{ConfigError, DEFAULT_CLIENT_PORT, DEFAULT_PARTITIONS};
use crate::client::BlockingClient;

pub struct PlaygroundConfig {
    pub nodes: u64,
    pub data_dir: PathBuf,
    pub base_port: u16,
    pub cores: usize,
    pub partitions: u64,
    pub storage: String,
    /// Extra `kahuna serve` flags for every node (tests use `--compact-after`).
    pub extra_serve_args: Vec<String>,
}

impl PlaygroundConfig {
    pub fn from_args(args: &[String]) -> Result<PlaygroundConfig, ConfigError> {
        let mut config = PlaygroundConfig {
            nodes: 3,
            data_dir: PathBuf::from("kahuna-data/playground"),
            base_port: DEFAULT_CLIENT_PORT,
            cores: 1,
            partitions: DEFAULT_PARTITIONS,
            storage: "rocksdb".into(),
            extra_serve_args: Vec::new(),
        };
        let mut iter = args.iter();
        while let Some(flag) = iter.next() {
            let value = iter
                .next()
                .ok_or_else(|| ConfigError(format!("{flag} needs a value")))?;
            let number = |what: &str| -> Result<u64, ConfigError> {
                value
                    .parse()
                    .map_err(|_| ConfigError(format!("{what}: '{value}' is not a number")))
            };
            match flag.as_str() {
                "--nodes" => config.nodes = number("--nodes")?,
                "--data-dir" => config.data_dir = PathBuf::from(value),
                "--base-port" => config.base_port = number("--base-port")? as u16,
                "--cores" => config.cores = number("--cores")? as usize,
                "--partitions" => config.partitions = number("--partitions")?,
                "--storage" => config.storage = value.clone(),
                other => return Err(ConfigError(format!("unknown flag '{other}'"))),
            }
        }
        if config.nodes == 0 || config.nodes > 9 {
            return Err(ConfigError("--nodes must be in 1..=9".into()));
        }
        Ok(config)
    }

    pub fn client_addr(&self, node: u64) -> String {
        format!("127.0.0.1:{}", self.base_port as u64 + node - 1)
    }

    /// Core 0's peer port; cores take the following ports (room for 64 cores per node).
    pub fn peer_addr(&self, node: u64) -> String {
        format!(
            "127.0.0.1:{}",
            self.base_port as u64 + 1000 + (node - 1) * 64
        )
    }

    /// The `kahuna serve` arguments of node `node`.
    pub fn serve_args(&self, node: u64) -> Vec<String> {
        let others = |addr: &dyn Fn(u64) -> String, skip_self: bool| {
            (1..=self.nodes)
                .filter(|&n| !skip_self || n != node)
                .map(|n| format!("{n}={}", addr(n)))
                .collect::<Vec<_>>()
                .join(",")
        };
        vec![
            "serve".into(),
            "--id".into(),
            node.to_string(),
            "--data-dir".into(),
            self.data_dir
                .join(format!("node-{node}"))
                .display()
                .to_string(),
            "--client-addr".into(),
            self.client_addr(node),
            "--peer-addr".into(),
            self.peer_addr(node),
            "--peers".into(),
            others(&|n| self.peer_addr(n), true),
            "--client-addrs".into(),
            others(&|n| self.client_addr(n), false),
            "--partitions".into(),
            self.partitions.to_string(),
            "--cores".into(),
            self.cores.to_string(),
            "--storage".into(),
            self.storage.clone(),
            "--pin".into(),
            "none".into(),
        ]
        .into_iter()
        .chain(self.extra_serve_args.iter().cloned())
        .collect()
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Waits until every partition has a leader known to some node. Returns false on timeout.
pub fn wait_for_leaders(endpoints: &[String], partitions: u64, timeout: Duration) -> bool {
    let start = Instant::now();
    let client = BlockingClient::with_endpoints(endpoints.to_vec());
    while start.elapsed() < timeout {
        let mut led = std::collections::BTreeSet::new();
        for endpoint in endpoints {
            if let Ok(status) = client.status_of(endpoint) {
                for partition in status.partitions {
                    if partition.leader != 0 && partition.role == crate::raft::Role::Leader {
                        led.insert(partition.partition);
                    }
                }
            }
        }
        if led.len() as u64 == partitions {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub fn run(config: PlaygroundConfig) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the kahuna binary: {e}"))?;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut children: Vec<(u64, Child)> = Vec::new();
    for node in 1..=config.nodes {
        let child = Command::new(&exe)
            .args(config.serve_args(node))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start node {node}: {e}"))?;
        children.push((node, child));
    }
    let endpoints: Vec<String> = (1..=config.nodes).map(|n| config.client_addr(n)).collect();
    let stop_all = |children: &mut Vec<(u64, Child)>| {
        for (_, child) in children.iter_mut() {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        for (_, child) in children.iter_mut() {
            let _ = child.wait();
        }
    };
    if !wait_for_leaders(&endpoints, config.partitions, Duration::from_secs(60)) {
        stop_all(&mut children);
        return Err("the cluster did not elect a leader for every partition within 60 s".into());
    }
    println!("endpoints: {}", endpoints.join(","));
    println!(
        "placement: {} nodes x {} cores, nodes unpinned (one machine)",
        config.nodes, config.cores
    );
    println!(
        "data: {}  (Ctrl-C stops the cluster)",
        config.data_dir.display()
    );
    loop {
        if STOP.load(Ordering::SeqCst) {
            stop_all(&mut children);
            println!("stopped");
            return Ok(());
        }
        for (node, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let node = *node;
                stop_all(&mut children);
                return Err(format!("node {node} exited ({status}); stopped the others"));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! A node's configuration and its command line. The flags named in the README are a contract
//! scripts rely on: add flags freely, never change these.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::raft::NodeId;
use crate::storage::Engine;

/// Default client port of `kahuna serve` and the first node of `kahuna playground`.
pub const DEFAULT_CLIENT_PORT: u16 = 7400;
/// Default peer port (core 0; core c listens on this + c).
pub const DEFAULT_PEER_PORT: u16 = 7500;
pub const DEFAULT_PARTITIONS: u64 = 64;
pub const PARTITIONS_MAX: u64 = 1 << 20;
pub const CORES_MAX: usize = 256;
/// The size (MiB) a core database's WAL files are written out to, at open and after an idle
/// flush (see `storage::wal_size`); under load RocksDB retires files larger than this.
pub const WAL_PREALLOCATE_MB_DEFAULT: usize = 48;
pub const WAL_PREALLOCATE_MB_MAX: usize = crate::storage::WAL_PREALLOCATE_BYTES_MAX >> 20;
/// Seconds without a write before a core unloads its groups' kv state (see
/// `core::unload_idle_groups` for why a minute).
pub const UNLOAD_AFTER_IDLE_S_DEFAULT: u64 = 60;
/// The longest unload delay accepted (a day).
pub const UNLOAD_AFTER_IDLE_S_MAX: u64 = 86_400;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// Pin core c to CPU c when this node is alone; leave unpinned otherwise.
    Auto,
    None,
    /// Pin core c (its reactor and its blocking pool) to the c-th CPU of the list.
    Cpus(Vec<usize>),
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub cluster_id: u64,
    pub data_dir: PathBuf,
    pub client_addr: String,
    /// Core 0's peer address; core c listens on its port + c.
    pub peer_addr: String,
    /// Peer node id -> its core-0 peer address.
    pub peers: BTreeMap<NodeId, String>,
    /// Node id -> client address, for leader hints (optional).
    pub client_addrs: BTreeMap<NodeId, String>,
    pub partitions: u64,
    pub cores: usize,
    pub storage: Engine,
    pub pinning: Pinning,
    pub tick_ms: u64,
    pub metrics_addr: Option<String>,
    /// Compact a group's log once it holds this many entries (bounds memory per group).
    pub compact_after: usize,
    /// Compact a group's log once it holds this many entries, where every member holds it
    /// (see `shard/compaction.rs`); at most `compact_after` takes effect.
    pub compact_held: usize,
    /// RocksDB: MiB each WAL file of a core's database is written out to (0: none); see
    /// `RocksEngine::open_preallocated`.
    pub wal_preallocate_mb: usize,
    /// Seconds a core writes nothing before it drops its groups' revision caches and session
    /// tables (see `core::unload_idle_groups`).
    pub unload_after_idle_s: u64,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            id: 1,
            cluster_id: 1,
            data_dir: PathBuf::from("kahuna-data/node-1"),
            client_addr: format!("127.0.0.1:{DEFAULT_CLIENT_PORT}"),
            peer_addr: format!("127.0.0.1:{DEFAULT_PEER_PORT}"),
            peers: BTreeMap::new(),
            client_addrs: BTreeMap::new(),
            partitions: DEFAULT_PARTITIONS,
            cores: 1,
            storage: Engine::RocksDb,
            pinning: Pinning::Auto,
            tick_ms: 10,
            metrics_addr: None,
            compact_after: 10_000,
            compact_held: 512,
            wal_preallocate_mb: WAL_PREALLOCATE_MB_DEFAULT,
            unload_after_idle_s: UNLOAD_AFTER_IDLE_S_DEFAULT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn parse_number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError(format!("{flag}: '{value}' is not a valid number")))
}

/// Parses `ID=HOST:PORT,ID=HOST:PORT`.
pub fn parse_id_addrs(flag: &str, value: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for item in value.split(',').filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| ConfigError(format!("{flag}: '{item}' is not ID=HOST:PORT")))?;
        let id: NodeId = parse_number(flag, id)?;
        if id == 0 {
            return Err(ConfigError(format!("{flag}: node id 0 is reserved")));
        }
        if !addr.contains(':') {
            return Err(ConfigError(format!("{flag}: '{addr}' is not HOST:PORT")));
        }
        out.insert(id, addr.to_string());
    }
    Ok(out)
}

/// Adds `delta` to the port of `HOST:PORT`.
pub fn offset_port(addr: &str, delta: u16) -> Result<String, ConfigError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| ConfigError(format!("'{addr}' is not HOST:PORT")))?;
    let port: u16 = parse_number("port", port)?;
    let port = port
        .checked_add(delta)
        .ok_or_else(|| ConfigError(format!("port {port} + {delta} overflows")))?;
    Ok(format!("{host}:{port}"))
}

impl NodeConfig {
    /// Parses `kahuna serve` flags.
    pub fn from_args(args: &[String]) -> Result<NodeConfig, ConfigError> {
        let mut config = NodeConfig::default();
        let mut data_dir_given = false;
        let mut iter = args.iter();
        while let Some(flag) = iter.next() {
            let mut value = || {
                iter.next()
                    .cloned()
                    .ok_or_else(|| ConfigError(format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "--id" => config.id = parse_number(flag, &value()?)?,
                "--cluster-id" => config.cluster_id = parse_number(flag, &value()?)?,
                "--data-dir" => {
                    config.data_dir = PathBuf::from(value()?);
                    data_dir_given = true;
                }
                "--client-addr" => config.client_addr = value()?,
                "--peer-addr" => config.peer_addr = value()?,
                "--peers" => config.peers = parse_id_addrs(flag, &value()?)?,
                "--client-addrs" => config.client_addrs = parse_id_addrs(flag, &value()?)?,
                "--partitions" => config.partitions = parse_number(flag, &value()?)?,
                "--cores" => config.cores = parse_number(flag, &value()?)?,
                "--storage" => {
                    let name = value()?;
                    config.storage = Engine::parse(&name).ok_or_else(|| {
                        ConfigError(format!("--storage: '{name}' is not rocksdb or sqlite"))
                    })?;
                }
                "--pin" => {
                    let pin = value()?;
                    config.pinning = match pin.as_str() {
                        "auto" => Pinning::Auto,
                        "none" => Pinning::None,
                        list => Pinning::Cpus(
                            list.split(',')
                                .map(|c| parse_number("--pin", c))
                                .collect::<Result<_, _>>()?,
                        ),
                    };
                }
                "--tick-ms" => config.tick_ms = parse_number(flag, &value()?)?,
                "--metrics-addr" => config.metrics_addr = Some(value()?),
                "--compact-after" => config.compact_after = parse_number(flag, &value()?)?,
                "--compact-held" => config.compact_held = parse_number(flag, &value()?)?,
                "--wal-preallocate-mb" => {
                    config.wal_preallocate_mb = parse_number(flag, &value()?)?
                }
                "--unload-after-idle" => {
                    config.unload_after_idle_s = parse_number(flag, &value()?)?
                }
                other => return Err(ConfigError(format!("unknown flag '{other}'"))),
            }
        }
        if !data_dir_given {
            config.data_dir = PathBuf::from(format!("kahuna-data/node-{}", config.id));
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |why: String| Err(ConfigError(why));
        if self.id == 0 {
            return fail("--id: node id 0 is reserved".into());
        }
        if self.peers.contains_key(&self.id) {
            return fail(format!("--peers lists this node's own id {}", self.id));
        }
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return fail(format!("--partitions must be in 1..={PARTITIONS_MAX}"));
        }
        if self.cores == 0 || self.cores > CORES_MAX {
            return fail(format!("--cores must be in 1..={CORES_MAX}"));
        }
        if self.compact_after < 2 {
            return fail("--compact-after must be at least 2".into());
        }
        if self.compact_held < 2 {
            return fail("--compact-held must be at least 2".into());
        }
        if self.wal_preallocate_mb > WAL_PREALLOCATE_MB_MAX {
            return fail(format!(
                "--wal-preallocate-mb must be at most {WAL_PREALLOCATE_MB_MAX}"
            ));
        }
        if self.unload_after_idle_s == 0 || self.unload_after_idle_s > UNLOAD_AFTER_IDLE_S_MAX {
            return fail(format!(
                "--unload-after-idle must be in 1..={UNLOAD_AFTER_IDLE_S_MAX} seconds"
            ));
        }
        if self.tick_ms == 0 || self.tick_ms > 10_000 {
            return fail("--tick-ms must be in 1..=10000".into());
        }
        if let Pinning::Cpus(cpus) = &self.pinning {
            if cpus.len() < self.cores {
                return fail(format!(
                    "--pin lists {} CPUs for {} cores",
                    cpus.len(),
                    self.cores
                ));
            }
        }
        Ok(())
    }

    /// Every node of the cluster, sorted.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.peers.keys().copied().collect();
        ids.push(self.id);
        ids.sort_unstable();
        ids
    }

    /// Core `core`'s peer address of node `node` (this node or a peer).
    pub fn peer_addr_of(&self, node: NodeId, core: usize) -> Result<String, ConfigError> {
        let base = if node == self.id {
            &self.peer_addr
        } else {
            self.peers
                .get(&node)
                .ok_or_else(|| ConfigError(format!("unknown node {node}")))?
        };
        offset_port(base, core as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_the_documented_flags() {
        let config = NodeConfig::from_args(&args(
            "--id 2 --data-dir /tmp/x --client-addr 127.0.0.1:9 --peer-addr 127.0.0.1:10 \
             --peers 1=127.0.0.1:20,3=127.0.0.1:30 --partitions 128 --cores 2 --storage sqlite \
             --unload-after-idle 600 --compact-after 5000 --compact-held 64",
        ))
        .unwrap();
        assert_eq!(config.id, 2);
        assert_eq!(config.unload_after_idle_s, 600);
        assert_eq!((config.compact_after, config.compact_held), (5000, 64));
        let defaults = NodeConfig::from_args(&[]).unwrap();
        assert_eq!(defaults.unload_after_idle_s, UNLOAD_AFTER_IDLE_S_DEFAULT);
        assert_eq!(
            (defaults.compact_after, defaults.compact_held),
            (10_000, 512)
        );
        assert_eq!(config.node_ids(), vec![1, 2, 3]);
        assert_eq!(config.partitions, 128);
        assert_eq!(config.storage, Engine::Sqlite);
        assert_eq!(config.peer_addr_of(3, 1).unwrap(), "127.0.0.1:31");
    }

    #[test]
    fn rejects_bad_flags_with_a_reason() {
        for (text, needle) in [
            ("--id 0", "reserved"),
            ("--cores 0", "--cores"),
            ("--compact-held 1", "--compact-held must be at least 2"),
            ("--storage mysql", "rocksdb or sqlite"),
            ("--peers 1", "ID=HOST:PORT"),
            ("--bogus 1", "unknown flag"),
            ("--id", "needs a value"),
            ("--id 1 --peers 1=h:1", "own id"),
            (
                "--unload-after-idle 0",
                "--unload-after-idle must be in 1..=86400",
            ),
            (
                "--unload-after-idle 86401",
                "--unload-after-idle must be in 1..=86400",
            ),
            ("--unload-after-idle soon", "not a valid number"),
        ] {
            let error = NodeConfig::from_args(&args(text)).unwrap_err();
            assert!(error.0.contains(needle), "{text}: {error}");
        }
    }
}

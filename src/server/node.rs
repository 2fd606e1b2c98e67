//! Starts a node: one glommio executor per core, each owning the partitions `core_of` assigns
//! it, its own storage instance (a subdirectory of the data directory) and its own peer
//! transport. Every core serves the client port (SO_REUSEPORT spreads connections over the
//! cores) and hands requests for other cores' partitions over the core mesh (`mesh.rs`).

use std::rc::Rc;
use std::time::Duration;

use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::{LocalExecutorBuilder, Placement};

use super::clients::{handle_handover, serve_clients, ClusterView, Serving};
use super::config::{NodeConfig, Pinning};
use super::core::{run_loop, CoreState, LoopSettings};
use super::memlock::{explain_executor_failure, raise_memlock_limit};
use super::mesh::{self, Handover, Router};
use super::placement::{core_of, group_of, replicas};
use super::storage_writer::StorageWriter;
use crate::kv::{KvMachine, KvMachineConfig};
use crate::proto::client::NodeAddress;
use crate::raft::{ConfState, Config, RestoreState};
use crate::shard::{CompactionPolicy, Shard, ShardConfig};
use crate::storage::DataDir;
use crate::transport::{PeerTransport, TransportConfig, TransportLimits};

/// Election and heartbeat timing in ticks of `--tick-ms` (10 ms by default: a 300 ms election
/// timeout, heartbeats every 50 ms).
pub const ELECTION_TICKS: u32 = 30;
pub const HEARTBEAT_TICKS: u32 = 5;
/// Ticks a commit advance waits for the next append to carry it (see
/// [`Config::commit_notice_ticks`]): 20 ms by default. Under steady writes no empty append is
/// sent for a commit; when writes stop, followers apply at most this late.
pub const COMMIT_NOTICE_TICKS: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Config(#[from] super::config::ConfigError),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("{0}")]
    Executor(String),
    #[error("core {core} failed: {reason}")]
    Core { core: usize, reason: String },
}

/// Threads of each core's blocking pool: a batch write never waits behind an image read for a
/// follower, and kv reads run beside a write (RocksDB's concurrent reader) on the other thread.
pub const BLOCKING_THREADS_PER_CORE: usize = 2;

fn placement_of(config: &NodeConfig, core: usize) -> Placement {
    match &config.pinning {
        Pinning::None => Placement::Unbound,
        Pinning::Cpus(cpus) => Placement::Fixed(cpus[core]),
        Pinning::Auto => {
            // Several nodes on one machine (the playground, tests) must not all pin to CPU 0.
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            if config.peers.is_empty() && config.cores <= cpus {
                Placement::Fixed(core)
            } else {
                Placement::Unbound
            }
        }
    }
}

/// Where a core's blocking pool runs: on its reactor's CPU when the reactor is pinned, so a
/// pinned core is the whole core (its RocksDB writes and reads included) and the hand-offs
/// between the reactor and its pool are wake-ups on one CPU, not across CPUs; anywhere when
/// the reactor is not pinned. A pinned reactor never spins before it parks: its pool thread
/// shares its CPU, and a reactor spinning while its write is in flight would keep that
/// thread off it.
fn pool_placement(placement: &Placement) -> Result<glommio::PoolPlacement, String> {
    match placement {
        Placement::Fixed(cpu) => {
            let cpus = glommio::CpuSet::online()
                .map_err(|e| format!("listing the online CPUs: {e}"))?
                .filter(|location| location.cpu == *cpu);
            if cpus.is_empty() {
                return Err(format!("CPU {cpu} is not online"));
            }
            Ok(glommio::PoolPlacement::Fenced(
                BLOCKING_THREADS_PER_CORE,
                cpus,
            ))
        }
        _ => Ok(glommio::PoolPlacement::Unbound(BLOCKING_THREADS_PER_CORE)),
    }
}

/// Describes where each core runs, for the startup banner.
pub fn describe_placement(config: &NodeConfig) -> String {
    (0..config.cores)
        .map(|core| match placement_of(config, core) {
            Placement::Fixed(cpu) => format!("core {core} pinned to cpu {cpu}"),
            _ => format!("core {core} unpinned"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the node until the process is killed.
pub fn run(config: NodeConfig) -> Result<(), NodeError> {
    config.validate()?;
    let memlock = raise_memlock_limit();
    if let Some(addr) = &config.metrics_addr {
        crate::metrics::http::start(addr, config.cores).map_err(|e| {
            NodeError::Config(super::config::ConfigError(format!(
                "--metrics-addr {addr}: {e}"
            )))
        })?;
    }
    let data_dir = DataDir::open(&config.data_dir, config.cores, config.storage)?
        .with_wal_preallocation(config.wal_preallocate_mb << 20);
    // Mesh positions follow executor creation order: the executors are created in core order
    // below, one after the other. `mesh` outlives every executor (the builder's shared parts
    // are reference counted without atomics; only the executors' own drops race, and those
    // can at worst leak it).
    let mesh = (config.cores > 1).then(|| mesh::build(config.cores));
    let mut handles = Vec::new();
    for core in 0..config.cores {
        let backend = data_dir.open_core(core)?;
        let config = config.clone();
        let mesh = mesh.clone();
        let placement = placement_of(&config, core);
        let pool = pool_placement(&placement)
            .map_err(|error| NodeError::Executor(format!("core {core}: {error}")))?;
        let builder = LocalExecutorBuilder::new(placement)
            .name(&format!("kahuna-core-{core}"))
            .blocking_thread_pool_placement(pool);
        let handle = builder
            .spawn(move || async move { run_core(config, core, backend, mesh).await })
            .map_err(|error| NodeError::Executor(explain_executor_failure(&error, memlock)))?;
        handles.push((core, handle));
    }
    for (core, handle) in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(NodeError::Core { core, reason }),
            Err(error) => {
                return Err(NodeError::Core {
                    core,
                    reason: format!("{error:?}"),
                })
            }
        }
    }
    Ok(())
}

async fn run_core(
    config: NodeConfig,
    core: usize,
    backend: Box<dyn crate::storage::Backend>,
    mesh: Option<MeshBuilder<Handover, Full>>,
) -> Result<(), String> {
    // Join the core mesh before anything can fail, so no core waits forever for a peer that
    // stopped before joining.
    let (router, handovers) = match mesh {
        Some(mesh) => {
            let (router, receivers) = Router::join(mesh, core).await?;
            (router, Some(receivers))
        }
        None => (Router::single(), None),
    };
    let storage = StorageWriter::new(backend);
    let nodes = config.node_ids();
    let raft = Config {
        election_ticks: ELECTION_TICKS,
        heartbeat_ticks: HEARTBEAT_TICKS,
        commit_notice_ticks: COMMIT_NOTICE_TICKS,
        seed: config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ core as u64,
        // A received image is checked as storage will check it, before it is accepted.
        snapshot_check: Some(|data| crate::storage::decode_snapshot_data(data, &mut |_, _| {})),
        ..Config::default()
    };
    let peers: Vec<_> = nodes.iter().copied().filter(|&n| n != config.id).collect();
    let machine = KvMachine::prefetching(KvMachineConfig::default());
    let mut shard = Shard::new(ShardConfig::new(config.id, peers.clone(), raft), machine);
    let mut preferred = Vec::new();
    for partition in (0..config.partitions).filter(|&p| core_of(p, config.cores) == core) {
        let members = replicas(partition, &nodes);
        if !members.contains(&config.id) {
            continue;
        }
        let group = group_of(partition);
        let state = storage
            .load_group_blocking(group)
            .map_err(|e| format!("loading group {group}: {e}"))?;
        if let Some((first, last)) = state.torn_tail {
            eprintln!(
                "kahuna: group {group}: removed a torn, never-committed log tail {first}..={last}"
            );
        }
        let fresh = state.hard_state.term == 0 && state.entries.is_empty();
        // A compacted group restarts from the compaction point's meta alone: its data is in
        // storage already, and an image is read only if a follower ever needs one. The log
        // after that point is stored, and apply resumes after the stored applied index.
        let snapshot = (state.snapshot.index > 0).then(|| {
            let mut meta = state.snapshot.clone();
            if meta.conf_state.voters.is_empty() {
                // Written before memberships were stored with compactions (no membership
                // changes existed then): the placement's members are the record.
                meta.conf_state = ConfState::new(members.clone(), vec![]);
            }
            meta
        });
        let restore = RestoreState {
            hard_state: state.hard_state,
            snapshot,
            entries: state.entries,
            applied: state.applied_index,
            initial_conf: ConfState::new(members.clone(), vec![]),
        };
        shard
            .add_group(group, restore)
            .map_err(|e| format!("starting group {group}: {e}"))?;
        if fresh && members[0] == config.id {
            preferred.push(group);
        }
    }
    let resolve = |addr: String| -> Result<std::net::SocketAddr, String> {
        std::net::ToSocketAddrs::to_socket_addrs(&addr)
            .map_err(|e| format!("cannot resolve {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} resolves to nothing"))
    };
    let mut peer_addrs = std::collections::BTreeMap::new();
    for &peer in &peers {
        peer_addrs.insert(
            peer,
            resolve(config.peer_addr_of(peer, core).map_err(|e| e.to_string())?)?,
        );
    }
    let listen_addr = resolve(
        config
            .peer_addr_of(config.id, core)
            .map_err(|e| e.to_string())?,
    )?;
    let transport_config = TransportConfig {
        local_node: config.id,
        cluster_id: config.cluster_id,
        listen_addr,
        peers: peer_addrs,
        limits: TransportLimits::default(),
    };
    let (transport, inbound) =
        PeerTransport::start(transport_config).map_err(|e| format!("peer transport: {e}"))?;
    let (state, ring) = CoreState::new(core, config.id, shard, storage, transport);
    // Inbound peer frames feed the shard.
    {
        let state = state.clone();
        glommio::spawn_local(async move {
            while let Some(batch) = inbound.recv().await {
                let from = batch.from_node;
                if !batch.messages.is_empty() {
                    state.received_messages();
                }
                let mut shard = state.shard.borrow_mut();
                if let Some(quiet) = &batch.quiet_nodes {
                    shard.peer_report(from, quiet);
                }
                let rejected = shard.receive(from, batch.messages);
                drop(shard);
                if let Some((group, error)) = rejected.first() {
                    // Bad peer input is refused message by message; say so once per frame.
                    eprintln!(
                        "kahuna: refused {} message(s) from node {from}: group {group}: {error}",
                        rejected.len()
                    );
                }
                state.ring();
            }
        })
        .detach();
    }
    // A fresh cluster elects the preferred replica of each partition first, so leadership is
    // spread from the start instead of going to whichever timer fires first.
    {
        let state = state.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(200)).await;
            for group in preferred {
                let _ = state
                    .shard
                    .borrow_mut()
                    .with_group(group, |raft| raft.campaign());
            }
            state.ring();
        })
        .detach();
    }
    let view = Rc::new(cluster_view(&config));
    if let Some(receivers) = handovers {
        let (state, view) = (state.clone(), view.clone());
        mesh::serve_handovers(router.clone(), receivers, move |request| {
            handle_handover(state.clone(), view.clone(), request)
        });
    }
    // Every core listens on the client address; the kernel spreads connections over them.
    let listener = glommio::net::TcpListener::bind(&config.client_addr).map_err(|e| {
        format!(
            "core {core} cannot listen for clients on {}: {e}",
            config.client_addr
        )
    })?;
    let serving = Serving {
        core: state.clone(),
        view,
        router,
    };
    glommio::spawn_local(serve_clients(listener, serving)).detach();
    let settings = LoopSettings {
        tick: Duration::from_millis(config.tick_ms),
        compaction: CompactionPolicy::new(
            config.compact_after,
            config.compact_held.min(config.compact_after),
        ),
        unload_after_idle: Duration::from_secs(config.unload_after_idle_s),
    };
    run_loop(state, ring, settings).await;
    Ok(())
}

/// What every core tells its clients about the cluster.
fn cluster_view(config: &NodeConfig) -> ClusterView {
    let mut client_addrs: Vec<NodeAddress> = config
        .client_addrs
        .iter()
        .map(|(&node_id, addr)| NodeAddress {
            node_id,
            client_address: addr.clone(),
        })
        .collect();
    if !config.client_addrs.contains_key(&config.id) {
        client_addrs.push(NodeAddress {
            node_id: config.id,
            client_address: config.client_addr.clone(),
        });
    }
    ClusterView {
        cluster_id: config.cluster_id,
        partitions: config.partitions,
        cores: config.cores,
        client_addrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_core_keeps_its_blocking_pool_on_its_cpu() {
        match pool_placement(&Placement::Fixed(0)).unwrap() {
            glommio::PoolPlacement::Fenced(threads, cpus) => {
                assert_eq!(threads, BLOCKING_THREADS_PER_CORE);
                assert!(!cpus.is_empty());
                assert!(cpus.iter().all(|location| location.cpu == 0), "{cpus:?}");
            }
            other => panic!("pinned core, pool placed {other:?}"),
        }
        assert!(matches!(
            pool_placement(&Placement::Unbound).unwrap(),
            glommio::PoolPlacement::Unbound(BLOCKING_THREADS_PER_CORE)
        ));
        let error = pool_placement(&Placement::Fixed(1 << 20)).unwrap_err();
        assert!(error.contains("not online"), "{error}");
    }
}

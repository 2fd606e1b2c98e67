//! Node metrics: per-core counters and latency histograms of the write path and the client
//! port, cheap enough for the hot path (relaxed atomic adds on the core's own cache lines; no
//! locks, no allocation), served in the Prometheus text format by a small HTTP responder on
//! its own thread (`kahuna serve --metrics-addr HOST:PORT`). This module only observes: it
//! never changes what the node does, and a metrics failure never stops serving.
//!
//! Write-path stages (see [`stages`]): time in queue (proposal -> the batch that carries it),
//! batch size, storage write and sync (split into the engine's part and the blocking-pool
//! hand-off), replication (append sent -> committed and applied in a
//! batch), apply (applied in a batch -> that batch durable and the client answered), and the
//! end-to-end latency of client requests by operation, with requests counted by error code.

pub mod exposition;
pub mod histogram;
pub mod http;
pub mod stages;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use histogram::AtomicHistogram;

use crate::proto::client::{ErrorCode, Op};
use crate::server::config::CORES_MAX;
use crate::transport::TransportStats;

/// Client operations as the metrics name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Get,
    Put,
    Delete,
    Cas,
    Scan,
    Status,
}

impl OpKind {
    pub const ALL: [OpKind; 6] = [
        OpKind::Get,
        OpKind::Put,
        OpKind::Delete,
        OpKind::Cas,
        OpKind::Scan,
        OpKind::Status,
    ];

    pub fn of(op: &Op) -> OpKind {
        match op {
            Op::Get { .. } => OpKind::Get,
            Op::Put { .. } => OpKind::Put,
            Op::Delete { .. } => OpKind::Delete,
            Op::Cas { .. } => OpKind::Cas,
            Op::Scan { .. } => OpKind::Scan,
            Op::Status => OpKind::Status,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::Delete => "delete",
            OpKind::Cas => "cas",
            OpKind::Scan => "scan",
            OpKind::Status => "status",
        }
    }
}

/// Error codes counted per operation (the wire values 0..ERROR_CODES).
pub const ERROR_CODES: usize = 14;

/// One core's metrics. Written by that core's thread (and its storage writer), read by the
/// HTTP responder.
#[derive(Default)]
pub struct CoreMetrics {
    /// Microseconds from a proposal to the batch that carries it.
    pub queue_us: AtomicHistogram,
    /// Log entries per storage write batch (every group of the core together).
    pub batch_entries: AtomicHistogram,
    /// Microseconds of one batch's storage write and sync, as the reactor waits for it: the
    /// sum of the next two.
    pub storage_write_us: AtomicHistogram,
    /// Microseconds of the engine's write call for one batch (RocksDB: memtable inserts, the
    /// WAL write and its fdatasync), timed on the blocking-pool thread that runs it.
    pub storage_engine_us: AtomicHistogram,
    /// Microseconds of one batch's write that are not the engine's: the reactor waking a pool
    /// thread, that thread getting a CPU (and waiting for the write ahead of it, when two are in
    /// flight), and the reactor waking again for the result.
    pub storage_handoff_us: AtomicHistogram,
    /// Microseconds of the hand-off's forward half: from the reactor's call to a pool thread
    /// starting on the batch (a pool thread woken and given a CPU). The rest of the hand-off
    /// is the pool thread's work after the engine's (the answers it sends, the fetches that
    /// ride with the write) and the way back.
    pub storage_forward_us: AtomicHistogram,
    /// Microseconds of the hand-off's way back: from the pool thread done with the batch to
    /// the core's writer task running again with the result (the reactor woken, or done with
    /// what it was running, and given a CPU).
    pub storage_back_us: AtomicHistogram,
    /// Microseconds from a leader's batch carrying an entry (its appends leave then) to the
    /// batch that applies it (commit known).
    pub replication_us: AtomicHistogram,
    /// Microseconds from the batch that applies an entry (its client is answered then) to that
    /// batch written (reads of the entry may proceed).
    pub apply_us: AtomicHistogram,
    /// Microseconds from a peer frame with messages received to the durable answers of the
    /// batch that took them sent (a follower's append acknowledgements).
    pub follower_ack_us: AtomicHistogram,
    /// Microseconds from a peer frame with messages received to the storage write of the batch
    /// that took them being handed to the pool (the follower's part before its write).
    pub follower_queue_us: AtomicHistogram,
    /// Microseconds per client request, by [`OpKind`], as the client port serves it.
    pub request_us: [AtomicHistogram; 6],
    /// Requests by [`OpKind`] and error code.
    pub requests: [[AtomicU64; ERROR_CODES]; 6],
    /// Proposal timestamps forgotten because the in-flight table was full (stage samples lost).
    pub stage_samples_dropped: AtomicU64,
    /// The core's peer transport counters ([`PEER_COUNTERS`] order), as the core last
    /// published them (every tick): the transport's own counters are the reactor's alone.
    pub peer: [AtomicU64; PEER_COUNTERS.len()],
    /// Groups whose kv state (revision cache, session table) the core holds in memory, as
    /// the core last published it (every second).
    pub kv_groups_loaded: AtomicU64,
    /// Batches holding new log entries that nothing waited for (a spare follower's, see
    /// `ShardBatch::prompt`) and that waited to be written with a later batch.
    pub spare_batches_held: AtomicU64,
}

/// One exposed transport counter: its name, its help, and the field of [`TransportStats`] it
/// reads.
pub type PeerCounter = (&'static str, &'static str, fn(&TransportStats) -> u64);

/// The peer transport's counters as exposed, `kahuna_peer_<name>_total`: one table, so a name
/// never labels another counter's value.
pub const PEER_COUNTERS: [PeerCounter; 19] = [
    (
        "messages_sent",
        "Raft messages written to peers' sockets, main connections and durable-answer lanes.",
        |stats| stats.messages_sent,
    ),
    (
        "lane_messages_sent",
        "Of those, messages the storage thread wrote on durable-answer lanes.",
        |stats| stats.lane_messages_sent,
    ),
    (
        "messages_received",
        "Raft messages from peers delivered to the core.",
        |stats| stats.messages_received,
    ),
    (
        "messages_dropped_queue_full",
        "Messages dropped because a peer's queue was full (the oldest).",
        |stats| stats.messages_dropped_queue_full,
    ),
    (
        "messages_dropped_unsent",
        "Messages taken for sending but lost to a broken connection or refused by the encoder.",
        |stats| stats.messages_dropped_unsent,
    ),
    (
        "frames_sent",
        "Frames written to peers, heartbeats and lane frames included.",
        |stats| stats.frames_sent,
    ),
    (
        "lane_frames_sent",
        "Frames the storage thread wrote on durable-answer lanes.",
        |stats| stats.lane_frames_sent,
    ),
    (
        "frames_received",
        "Frames from peers delivered to the core, heartbeats included.",
        |stats| stats.frames_received,
    ),
    (
        "heartbeats_sent",
        "Node heartbeat (empty) frames written.",
        |stats| stats.heartbeats_sent,
    ),
    (
        "heartbeats_received",
        "Node heartbeat (empty) frames received.",
        |stats| stats.heartbeats_received,
    ),
    ("bytes_sent", "Frame bytes written to peers.", |stats| {
        stats.bytes_sent
    }),
    (
        "bytes_received",
        "Frame bytes received from peers.",
        |stats| stats.bytes_received,
    ),
    (
        "connections_established",
        "Outbound main connections whose handshake the peer answered.",
        |stats| stats.connections_established,
    ),
    (
        "connect_failures",
        "Outbound attempts (main or lane) that failed before the peer answered.",
        |stats| stats.connect_failures,
    ),
    (
        "connections_lost",
        "Outbound main connections lost after being established.",
        |stats| stats.connections_lost,
    ),
    (
        "lanes_established",
        "Durable-answer lanes opened.",
        |stats| stats.lanes_established,
    ),
    (
        "inbound_accepted",
        "Inbound connections whose handshake was accepted.",
        |stats| stats.inbound_accepted,
    ),
    (
        "inbound_refused",
        "Inbound connections refused before or at the handshake.",
        |stats| stats.inbound_refused,
    ),
    (
        "inbound_errors",
        "Established inbound connections closed for a protocol error.",
        |stats| stats.inbound_errors,
    ),
];

fn micros(duration: Duration) -> u64 {
    duration.as_micros().min(u128::from(u64::MAX)) as u64
}

impl CoreMetrics {
    /// A batch's storage write and sync took `elapsed` as the core waited for it, of which
    /// `engine` in the storage engine's own write call on the blocking pool, after `forward`
    /// spent reaching a pool thread.
    pub fn storage_written(
        &self,
        elapsed: Duration,
        engine: Duration,
        forward: Duration,
        back: Duration,
    ) {
        self.storage_write_us.record(micros(elapsed));
        self.storage_engine_us.record(micros(engine));
        self.storage_forward_us.record(micros(forward));
        self.storage_back_us.record(micros(back));
        self.storage_handoff_us
            .record(micros(elapsed.saturating_sub(engine)));
    }

    /// Publishes the core's transport counters for the metrics responder.
    pub fn publish_peer(&self, stats: &TransportStats) {
        for (slot, (_, _, read)) in self.peer.iter().zip(PEER_COUNTERS) {
            slot.store(read(stats), Ordering::Relaxed);
        }
    }

    /// Publishes how many groups' kv state the core holds in memory.
    pub fn publish_kv_groups_loaded(&self, groups: usize) {
        self.kv_groups_loaded
            .store(groups as u64, Ordering::Relaxed);
    }

    /// The batch that took peer messages received `elapsed` ago goes to storage.
    pub fn follower_queued(&self, elapsed: Duration) {
        self.follower_queue_us.record(micros(elapsed));
    }

    /// The durable answers to peer messages received `elapsed` ago were sent.
    pub fn follower_acked(&self, elapsed: Duration) {
        self.follower_ack_us.record(micros(elapsed));
    }

    /// A client request of kind `op` was answered with `code` after `elapsed`.
    pub fn request_done(&self, op: OpKind, code: ErrorCode, elapsed: Duration) {
        let op = op as usize;
        self.request_us[op].record(micros(elapsed));
        let code = (code as usize).min(ERROR_CODES - 1);
        self.requests[op][code].fetch_add(1, Ordering::Relaxed);
    }
}

static CORES: [OnceLock<CoreMetrics>; CORES_MAX] = [const { OnceLock::new() }; CORES_MAX];

/// Core `core`'s metrics (created on first use).
pub fn core(core: usize) -> &'static CoreMetrics {
    assert!(core < CORES_MAX, "core {core} beyond {CORES_MAX}");
    CORES[core].get_or_init(CoreMetrics::default)
}

/// The cores whose metrics exist, in order.
pub fn cores() -> impl Iterator<Item = (usize, &'static CoreMetrics)> + Clone {
    CORES
        .iter()
        .enumerate()
        .filter_map(|(core, cell)| cell.get().map(|m| (core, m)))
}

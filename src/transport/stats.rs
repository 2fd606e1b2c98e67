//! Counters of one transport. Per-core state: plain `Cell`s, no atomics (nothing here crosses
//! threads). Read them as a [`TransportStats`] snapshot.

use std::cell::Cell;

/// A snapshot of the counters since start. Every count only grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Messages written to a socket (received by the peer's kernel, not necessarily its core).
    pub messages_sent: u64,
    /// Messages delivered to the core loop.
    pub messages_received: u64,
    /// Messages dropped because a peer's queue was full (the oldest make room).
    pub messages_dropped_queue_full: u64,
    /// Messages taken for sending but lost: the connection broke, or the encoder refused them
    /// (logged: a message larger than a frame is a configuration bug).
    pub messages_dropped_unsent: u64,
    /// Frames written, heartbeat frames included.
    pub frames_sent: u64,
    /// Frames delivered to the core loop, heartbeat frames included.
    pub frames_received: u64,
    /// Empty (node heartbeat) frames written / delivered.
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Outbound connections whose handshake the peer answered.
    pub connections_established: u64,
    /// Outbound attempts that failed before the peer answered the handshake.
    pub connect_failures: u64,
    /// Outbound connections lost after being established.
    pub connections_lost: u64,
    /// Inbound connections whose handshake we accepted.
    pub inbound_accepted: u64,
    /// Inbound connections refused before or at the handshake (wrong cluster, bad frame,
    /// timeout, unknown node, too many connections).
    pub inbound_refused: u64,
    /// Established inbound connections closed for a protocol error (bad frame, bad batch).
    pub inbound_errors: u64,
    /// Durable-answer lanes opened (their handshake answered).
    pub lanes_established: u64,
    /// Frames the storage thread wrote on a durable-answer lane (also in `frames_sent`).
    pub lane_frames_sent: u64,
    /// Messages in those frames (also in `messages_sent`); the rest went on main connections.
    pub lane_messages_sent: u64,
}

impl TransportStats {
    /// Every message the transport gave up on.
    pub fn messages_dropped(&self) -> u64 {
        self.messages_dropped_queue_full + self.messages_dropped_unsent
    }
}

/// The live counters; one per transport, shared by its tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) messages_sent: Cell<u64>,
    pub(crate) messages_received: Cell<u64>,
    pub(crate) messages_dropped_queue_full: Cell<u64>,
    pub(crate) messages_dropped_unsent: Cell<u64>,
    pub(crate) frames_sent: Cell<u64>,
    pub(crate) frames_received: Cell<u64>,
    pub(crate) heartbeats_sent: Cell<u64>,
    pub(crate) heartbeats_received: Cell<u64>,
    pub(crate) bytes_sent: Cell<u64>,
    pub(crate) bytes_received: Cell<u64>,
    pub(crate) connections_established: Cell<u64>,
    pub(crate) connect_failures: Cell<u64>,
    pub(crate) connections_lost: Cell<u64>,
    pub(crate) inbound_accepted: Cell<u64>,
    pub(crate) inbound_refused: Cell<u64>,
    pub(crate) inbound_errors: Cell<u64>,
    pub(crate) lanes_established: Cell<u64>,
    pub(crate) lane_frames_sent: Cell<u64>,
    pub(crate) lane_messages_sent: Cell<u64>,
}

/// Adds `amount` to a counter (saturating: a counter must never be the reason for a panic).
pub(crate) fn add(counter: &Cell<u64>, amount: usize) {
    counter.set(counter.get().saturating_add(amount as u64));
}

impl Counters {
    pub(crate) fn snapshot(&self) -> TransportStats {
        TransportStats {
            messages_sent: self.messages_sent.get(),
            messages_received: self.messages_received.get(),
            messages_dropped_queue_full: self.messages_dropped_queue_full.get(),
            messages_dropped_unsent: self.messages_dropped_unsent.get(),
            frames_sent: self.frames_sent.get(),
            frames_received: self.frames_received.get(),
            heartbeats_sent: self.heartbeats_sent.get(),
            heartbeats_received: self.heartbeats_received.get(),
            bytes_sent: self.bytes_sent.get(),
            bytes_received: self.bytes_received.get(),
            connections_established: self.connections_established.get(),
            connect_failures: self.connect_failures.get(),
            connections_lost: self.connections_lost.get(),
            inbound_accepted: self.inbound_accepted.get(),
            inbound_refused: self.inbound_refused.get(),
            inbound_errors: self.inbound_errors.get(),
            lanes_established: self.lanes_established.get(),
            lane_frames_sent: self.lane_frames_sent.get(),
            lane_messages_sent: self.lane_messages_sent.get(),
        }
    }
}

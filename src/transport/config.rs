//! What a transport is started with: who we are, where the peers are, and every limit.
//! Validation happens once, at start, so the tasks can rely on the numbers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::error::ConfigError;
use crate::proto::limits::{PEER_FRAME_BYTES_MAX, QUIET_NODES_MAX};
use crate::proto::peer::empty_batch_bytes_bound;
use crate::raft::{NodeId, NO_NODE};

/// Smallest frame limit accepted: a handshake and a batch of a few small messages must fit.
const FRAME_BYTES_MIN: usize = 4 << 10;
// Any frame may carry a quiet report naming every peer (at most `QUIET_NODES_MAX`).
const _: () = assert!(empty_batch_bytes_bound(QUIET_NODES_MAX) <= FRAME_BYTES_MIN);

/// The transport of one core of one node.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node's id (non-zero).
    pub local_node: NodeId,
    /// Nodes of other clusters are refused in the handshake.
    pub cluster_id: u64,
    /// Where this core accepts peer connections (port 0: any free port, see
    /// [`super::PeerTransport::local_addr`]).
    pub listen_addr: SocketAddr,
    /// Every other node and the address of its matching core. Resolved addresses on purpose:
    /// resolving a host name blocks, and this runs on the reactor.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub limits: TransportLimits,
}

/// Every bound of the transport (TigerBeetle style: a limit on everything, `*_max`, units last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportLimits {
    /// Messages waiting for one peer. Beyond it the oldest are dropped (and counted): Raft
    /// tolerates loss, and the newest messages carry the freshest state.
    pub peer_queue_messages_max: usize,
    /// Encoded-size upper bound of the messages waiting for one peer, the same drop rule
    /// (large appends would otherwise let a message bound hold gigabytes).
    pub peer_queue_bytes_max: usize,
    /// Largest frame body sent or accepted (at most [`PEER_FRAME_BYTES_MAX`]). Every node of a
    /// cluster must use the same value: a receiver closes the connection on a larger frame.
    pub frame_bytes_max: usize,
    /// Delay before reconnecting after a failure; doubles per failure up to the maximum.
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// Time allowed to connect and exchange handshakes, either side.
    pub handshake_timeout: Duration,
    /// Batches decoded but not yet taken by the core loop; when full, reading stops (TCP
    /// backpressure) rather than buffering.
    pub inbound_batches_max: usize,
    /// Inbound connections open at once (handshaking or established); more are closed at once.
    /// A peer keeps two: its main connection and its durable-answer lane.
    pub inbound_connections_max: usize,
    /// How long data written to a peer may stay unacknowledged, or unsent behind the peer's
    /// zero window, before the kernel drops the connection (`TCP_USER_TIMEOUT`, set on every
    /// connection this node dials); the transport then reconnects with backoff. Without it a
    /// peer whose host vanished, or that stopped reading, holds the connection for TCP's ~15
    /// minutes of retransmissions, and a partition that heals is noticed only at the next
    /// retransmission (up to two minutes apart). At least 1 ms, at most `u32::MAX` ms.
    pub unacknowledged_max: Duration,
}

impl Default for TransportLimits {
    fn default() -> TransportLimits {
        TransportLimits {
            peer_queue_messages_max: 65_536,
            peer_queue_bytes_max: 64 << 20,
            frame_bytes_max: PEER_FRAME_BYTES_MAX,
            reconnect_backoff_min: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            inbound_batches_max: 1_024,
            inbound_connections_max: 128,
            unacknowledged_max: Duration::from_secs(5),
        }
    }
}

impl TransportConfig {
    /// Checks ids and limits; every error names the offending value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.local_node == NO_NODE {
            return Err(ConfigError::InvalidLocalNode);
        }
        for &peer in self.peers.keys() {
            if peer == NO_NODE || peer == self.local_node {
                return Err(ConfigError::InvalidPeer { peer });
            }
        }
        // Every frame may carry a quiet report naming any peer (`report_quiet`).
        if self.peers.len() > QUIET_NODES_MAX {
            return Err(ConfigError::TooManyPeers {
                peers: self.peers.len(),
                max: QUIET_NODES_MAX,
            });
        }
        self.limits.validate()
    }
}

impl TransportLimits {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let frame = self.frame_bytes_max;
        if !(FRAME_BYTES_MIN..=PEER_FRAME_BYTES_MAX).contains(&frame) {
            return Err(ConfigError::FrameBytesMax {
                value: frame,
                min: FRAME_BYTES_MIN,
                max: PEER_FRAME_BYTES_MAX,
            });
        }
        if self.peer_queue_messages_max == 0 {
            return Err(ConfigError::Zero("peer_queue_messages_max"));
        }
        // A queue must hold at least one frame's worth, or the largest legal message could
        // never be queued.
        if self.peer_queue_bytes_max < frame {
            return Err(ConfigError::QueueBytesBelowFrame {
                queue: self.peer_queue_bytes_max,
                frame,
            });
        }
        if self.inbound_batches_max == 0 {
            return Err(ConfigError::Zero("inbound_batches_max"));
        }
        if self.inbound_connections_max == 0 {
            return Err(ConfigError::Zero("inbound_connections_max"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::Zero("handshake_timeout"));
        }
        if self.unacknowledged_max < Duration::from_millis(1)
            || self.unacknowledged_max.as_millis() > u128::from(u32::MAX)
        {
            return Err(ConfigError::UnacknowledgedMax(self.unacknowledged_max));
        }
        let (min, max) = (self.reconnect_backoff_min, self.reconnect_backoff_max);
        if min.is_zero() || min > max {
            return Err(ConfigError::Backoff { min, max });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TransportConfig {
        TransportConfig {
            local_node: 1,
            cluster_id: 7,
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            peers: BTreeMap::from([(2, "127.0.0.1:1".parse().unwrap())]),
            limits: TransportLimits::default(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn refuses_bad_ids_and_limits() {
        let mut bad = config();
        bad.local_node = NO_NODE;
        assert_eq!(bad.validate(), Err(ConfigError::InvalidLocalNode));
        let mut bad = config();
        bad.peers.insert(1, "127.0.0.1:2".parse().unwrap());
        assert_eq!(bad.validate(), Err(ConfigError::InvalidPeer { peer: 1 }));
        // As many peers as a quiet report can name, and one more.
        let mut most = config();
        for peer in 3..=QUIET_NODES_MAX as u64 + 1 {
            most.peers.insert(peer, "127.0.0.1:3".parse().unwrap());
        }
        assert_eq!(most.validate(), Ok(()));
        most.peers
            .insert(QUIET_NODES_MAX as u64 + 2, "127.0.0.1:4".parse().unwrap());
        assert_eq!(
            most.validate(),
            Err(ConfigError::TooManyPeers {
                peers: QUIET_NODES_MAX + 1,
                max: QUIET_NODES_MAX
            })
        );
        let mut bad = config();
        bad.limits.reconnect_backoff_min = Duration::from_secs(2);
        assert!(matches!(bad.validate(), Err(ConfigError::Backoff { .. })));
        for unacknowledged_max in [
            Duration::ZERO,
            Duration::from_micros(999),
            Duration::from_millis(u64::from(u32::MAX) + 1),
        ] {
            let mut bad = config();
            bad.limits.unacknowledged_max = unacknowledged_max;
            assert_eq!(
                bad.validate(),
                Err(ConfigError::UnacknowledgedMax(unacknowledged_max))
            );
        }
        let mut bad = config();
        bad.limits.frame_bytes_max = PEER_FRAME_BYTES_MAX + 1;
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::FrameBytesMax { .. })
        ));
        let mut bad = config();
        bad.limits.peer_queue_messages_max = 0;
        assert_eq!(
            bad.validate(),
            Err(ConfigError::Zero("peer_queue_messages_max"))
        );
    }
}

//! Node-to-node TCP transport for ONE core of one node (issue 4): core `c` of node A talks to
//! core `c` of node B over one outbound connection per peer, every message queued for that peer
//! coalesced into as few frames as possible, node-level heartbeats as empty frames.
//!
//! This layer owns sockets, connection lifecycles, per-peer queues and counters. It never looks
//! inside a Raft message beyond its addresses, never blocks the reactor, never buffers without a
//! bound, and never panics on network input: a bad peer loses its own connection, nothing else.
//!
//! Protocol on one connection (both directions use the framing of [`crate::proto::frame`]):
//! the dialer sends a Handshake; the acceptor checks it (cluster id, addressed to us, a known
//! peer) and answers with its own Handshake or closes; the dialer checks the answer and only then
//! streams batch frames. The acceptor never writes after its answer. Waiting for the answer
//! means a refused dialer learns it at once (and backs off) instead of writing into a socket
//! that is about to be closed.
//!
//! Lanes: the dialer's handshake names the connection's lane. Besides its main connection a
//! core opens a durable-answer lane to each peer whose answer offered one
//! (`accepts_durable_lane`); only the core's storage thread writes it, whole frames of answers
//! a synced batch released ([`DurableLane`]). The acceptor keeps one connection per peer and
//! lane, and reads both the same way.
//!
//! Use: inside a glommio executor call [`PeerTransport::start`]; feed the returned receiver into
//! the core loop; call [`PeerTransport::send`] with every message the loop has for a peer.
//! Dropping the transport stops every task it started.

mod backoff;
mod config;
mod durable_lane;
mod error;
mod handle;
mod inbound;
mod log;
mod outbound;
mod queue;
mod stats;
mod wire;

pub use config::{TransportConfig, TransportLimits};
pub use durable_lane::{DurableLane, LaneFrame, LANE_FRAME_BYTES_MAX};
pub use error::{ConfigError, SendError, TransportError};
pub use handle::{InboundBatch, PeerTransport};
pub use stats::TransportStats;

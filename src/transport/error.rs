//! Typed errors of the transport: configuration, start-up, sending (caller-facing), and why a
//! connection was closed (logged; never surfaces to the core loop).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::proto::frame::FrameError;
use crate::proto::peer::{HandshakeError, PeerDecodeError};
use crate::raft::{GroupId, NodeId};

/// A configuration the transport refuses to start with.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("the local node id must be non-zero")]
    InvalidLocalNode,
    #[error("peer id {peer} is zero or this node's own id")]
    InvalidPeer { peer: NodeId },
    #[error("{peers} peers, more than the {max} a quiet report can name")]
    TooManyPeers { peers: usize, max: usize },
    #[error("frame_bytes_max {value} outside {min}..={max}")]
    FrameBytesMax {
        value: usize,
        min: usize,
        max: usize,
    },
    #[error("peer_queue_bytes_max {queue} is below frame_bytes_max {frame}")]
    QueueBytesBelowFrame { queue: usize, frame: usize },
    #[error("{0} must be non-zero")]
    Zero(&'static str),
    #[error("reconnect backoff must satisfy 0 < min <= max, got {min:?}..{max:?}")]
    Backoff { min: Duration, max: Duration },
    #[error("unacknowledged_max {0:?} outside 1 ms..=u32::MAX ms")]
    UnacknowledgedMax(Duration),
}

/// Why [`super::PeerTransport::start`] failed.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("invalid transport configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen for peers on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// Why [`super::PeerTransport::send`] refused a batch; nothing of it was queued. All are
/// caller bugs: the transport drops nothing silently for these.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SendError {
    #[error("node {0} is not a configured peer")]
    UnknownPeer(NodeId),
    #[error(
        "message of group {group} is from {from} to {to}, but the batch is from {local} to {peer}"
    )]
    AddressMismatch {
        group: GroupId,
        from: NodeId,
        to: NodeId,
        local: NodeId,
        peer: NodeId,
    },
}

/// Why one connection ended: logged with the peer's address, then the connection is dropped.
#[derive(Debug, Error)]
pub(crate) enum ConnectionError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("undecodable frame: {0}")]
    Decode(#[from] PeerDecodeError),
    #[error("handshake refused: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("node {0} is not a configured peer")]
    UnknownPeer(NodeId),
    #[error("expected node {expected} to answer, node {answered} did")]
    WrongPeer { expected: NodeId, answered: NodeId },
    #[error(
        "batch addressed from {from_node} to {to_node} on a connection from {peer} to {local}"
    )]
    BatchAddress {
        from_node: NodeId,
        to_node: NodeId,
        peer: NodeId,
        local: NodeId,
    },
    #[error("peer sent bytes it must not send at this point")]
    UnexpectedData,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("connection closed by the peer")]
    Closed,
    #[error("connection closed during the handshake")]
    HandshakeClosed,
    /// The acceptor closes instead of answering a handshake it refuses (and logs why there).
    #[error("the peer closed the connection instead of answering our handshake: it refused us (see its log; check cluster ids and peer addresses)")]
    Refused,
    #[error("replaced by a newer connection from the same node")]
    Replaced,
    #[error("the core loop no longer takes inbound batches")]
    CoreGone,
}

impl<T> From<glommio::GlommioError<T>> for ConnectionError {
    fn from(error: glommio::GlommioError<T>) -> ConnectionError {
        ConnectionError::Io(error.into())
    }
}

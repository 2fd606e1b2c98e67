//! Typed errors of the Raft core. Expected refusals (not leader, backpressure) are values;
//! broken invariants are panics with every number involved.

use super::types::{Index, NodeId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    #[error("this replica is not the leader (leader hint: {leader})")]
    NotLeader { leader: NodeId },
    #[error("a leadership transfer to {to} is in progress")]
    TransferInProgress { to: NodeId },
    #[error("too many uncommitted entries ({uncommitted}, max {max})")]
    TooManyUncommitted { uncommitted: u64, max: u64 },
    #[error("too many pending reads (max {max})")]
    TooManyPendingReads { max: usize },
    #[error("a configuration change is already pending at index {index}")]
    ConfChangePending { index: Index },
    #[error("the leader has not committed an entry of its term yet")]
    LeaderNotReady,
    #[error("invalid configuration change: {0}")]
    InvalidConfChange(String),
    #[error("invalid transfer target {0}")]
    InvalidTransferTarget(NodeId),
    #[error("cannot compact to {index}: {why}")]
    InvalidCompaction { index: Index, why: &'static str },
    /// A provided snapshot image was not taken (it is dropped; a follower that still needs one
    /// asks again after its next heartbeat answer).
    #[error("snapshot image at {index} refused: {why}")]
    SnapshotRefused { index: Index, why: &'static str },
    #[error("message for group {got} delivered to group {expected}")]
    WrongGroup { expected: u64, got: u64 },
    #[error("message for node {got} delivered to node {expected}")]
    WrongNode { expected: NodeId, got: NodeId },
    #[error("invalid message from {from}: {why}")]
    InvalidMessage { from: NodeId, why: &'static str },
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("invalid restored state: {0}")]
    InvalidRestore(String),
}

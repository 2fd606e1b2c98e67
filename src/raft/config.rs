//! Per-replica settings and the limits that bound a replica's memory and traffic.

use super::types::{GroupId, NodeId, NO_NODE};
use super::RaftError;

/// A deliberately broken rule, for tests that prove the simulator catches violations.
/// Production code never sets one; `Config::default()` has none.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafetyFault {
    /// Commit entries of earlier terms by counting replicas (the thesis's Figure 8 bug).
    CommitEarlierTermByCount,
    /// Grant votes without the election restriction (the up-to-date log check).
    VoteWithoutLogCheck,
    /// Take a provided snapshot image without checking that its term matches the log's term at
    /// its index (an image that misstates its position is then streamed and installed).
    SnapshotTermUnchecked,
}

/// Verifies a received snapshot image: `Err` explains why it must not be installed.
pub type SnapshotCheck = fn(&[u8]) -> Result<(), String>;

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    pub group: GroupId,
    /// Ticks without hearing from a leader before a follower campaigns; the actual timeout is
    /// drawn uniformly from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u32,
    /// Ticks between a leader's heartbeats. Must be below `election_ticks`.
    pub heartbeat_ticks: u32,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Ticks a leader lets a commit advance wait for the next append to carry it before it
    /// sends the advance alone (an empty append to each follower). 0: at once, as textbook
    /// Raft does, which costs every follower a message, an apply write and an answer per
    /// commit. Under steady writes the next append carries the advance anyway; when writes
    /// stop, a follower learns it (and applies) at most this many ticks late. Commit on the
    /// leader, and so every client answer, does not wait for this.
    pub commit_notice_ticks: u32,
    /// Appends in flight per follower in the Replicate state.
    pub inflight_max: usize,
    /// Bytes of entries in one append message (at least one entry is always sent).
    pub append_bytes_max: usize,
    /// Bytes of committed entries handed out for applying in one Ready.
    pub apply_bytes_max: usize,
    /// Entries a leader holds beyond its commit index before proposals are refused.
    pub uncommitted_entries_max: u64,
    /// Bytes of snapshot data in one InstallSnapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot a follower accepts (bounds the reassembly buffer).
    pub snapshot_bytes_max: u64,
    /// ReadIndex requests waiting for confirmation at once.
    pub pending_reads_max: usize,
    /// Seeds the election-timeout generator; same seed, same timeouts.
    pub seed: u64,
    /// Verifies a fully received snapshot image before it is accepted (the storage layer's
    /// frame checksums, on a node). A pure function of the bytes: the core stays deterministic.
    /// `None`: accept any image.
    pub snapshot_check: Option<SnapshotCheck>,
    #[doc(hidden)]
    pub safety_fault: Option<SafetyFault>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            id: NO_NODE,
            group: 0,
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            commit_notice_ticks: 0,
            inflight_max: 64,
            append_bytes_max: 1 << 20,
            apply_bytes_max: 4 << 20,
            uncommitted_entries_max: 100_000,
            snapshot_chunk_bytes: 256 << 10,
            snapshot_bytes_max: 1 << 30,
            pending_reads_max: 4096,
            seed: 0,
            snapshot_check: None,
            safety_fault: None,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), RaftError> {
        let invalid = |why: &str| Err(RaftError::InvalidConfig(why.to_string()));
        if self.id == NO_NODE {
            return invalid("id must not be 0");
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return invalid("need 0 < heartbeat_ticks < election_ticks");
        }
        if self.commit_notice_ticks >= self.election_ticks {
            // A follower would learn of commits less often than it may campaign.
            return invalid("need commit_notice_ticks < election_ticks");
        }
        if self.inflight_max == 0 || self.append_bytes_max == 0 || self.apply_bytes_max == 0 {
            return invalid("inflight_max, append_bytes_max and apply_bytes_max must be positive");
        }
        if self.snapshot_chunk_bytes == 0
            || self.pending_reads_max == 0
            || self.uncommitted_entries_max == 0
        {
            return invalid("snapshot_chunk_bytes, pending_reads_max and uncommitted_entries_max must be positive");
        }
        Ok(())
    }
}

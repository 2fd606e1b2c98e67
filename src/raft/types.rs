//! The values the Raft core exchanges with its caller: entries, hard state, configuration,
//! snapshots and messages. Plain data, no behaviour beyond small helpers; every layer (storage,
//! transport, simulator) speaks these types.

use bytes::Bytes;

/// Identifies a node (a process hosting replicas). 0 is reserved for "none".
pub type NodeId = u64;
/// Identifies a Raft group (one partition of the key space).
pub type GroupId = u64;
/// A Raft term. Terms start at 0 for a node that never took part in an election.
pub type Term = u64;
/// A log position. Index 0 is the empty prefix; the first real entry has index 1.
pub type Index = u64;

/// The node id that means "nobody" (no vote cast, no leader known).
pub const NO_NODE: NodeId = 0;
/// `SnapshotResponse::next_offset` meaning the follower refused the whole image (it failed the
/// integrity check of `Config::snapshot_check`) and the leader should drop it.
pub const SNAPSHOT_REFUSED: u64 = u64::MAX;

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// Application data, applied to the state machine.
    Normal = 0,
    /// The empty entry a new leader appends to commit entries of earlier terms (thesis 3.6.2).
    Noop = 1,
    /// A membership change; `data` holds an encoded [`ConfState`] (the whole new configuration).
    /// It takes effect as soon as it is in a log, committed or not (thesis 4.1).
    ConfChange = 2,
}

impl EntryKind {
    pub fn from_u8(value: u8) -> Option<EntryKind> {
        match value {
            0 => Some(EntryKind::Normal),
            1 => Some(EntryKind::Noop),
            2 => Some(EntryKind::ConfChange),
            _ => None,
        }
    }
}

/// One log entry. `(index, term)` identifies it uniquely across the cluster (Log Matching).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    /// The bytes an entry costs in messages and in the in-memory log (used by size limits).
    pub fn size_bytes(&self) -> usize {
        self.data.len() + 24
    }
}

/// The state that must be durable before any message depending on it is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    /// The candidate voted for in `term`, or [`NO_NODE`].
    pub vote: NodeId,
    /// Highest index known committed. Persisting it lazily is safe: it is only an optimisation
    /// for restart (a restarted node learns the commit index again from the leader).
    pub commit: Index,
}

/// A membership configuration. Invariant: `voters` and `learners` are sorted, without
/// duplicates, and disjoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl ConfState {
    pub fn new(mut voters: Vec<NodeId>, mut learners: Vec<NodeId>) -> ConfState {
        voters.sort_unstable();
        voters.dedup();
        learners.sort_unstable();
        learners.dedup();
        learners.retain(|id| voters.binary_search(id).is_err());
        ConfState { voters, learners }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Whether the leader's commits wait, in the common case, for `id`'s durable
    /// acknowledgements in group `group` led by `leader`: the leader itself, and the first
    /// `quorum - 1` of the other voters in an order rotated by the group id (so that across
    /// many groups the waiting is spread over the nodes). With three voters that is the leader
    /// and one follower; the other follower is spare: its acknowledgement only matters when
    /// the chosen one is slow or down.
    ///
    /// A spare follower may delay making its log durable, and so its acknowledgement (the
    /// shard holds such a write briefly to join it to a later one): one fewer sync competes
    /// for the disk with the two that decide the commit, and any delay is only a slow follower
    /// to Raft, which counts whichever majority acknowledges first. Conservative everywhere
    /// else: a leader that is not known or not a voter, or a member that is not a voter,
    /// counts as waited for.
    pub fn commit_waits_for(&self, group: GroupId, leader: NodeId, id: NodeId) -> bool {
        if id == leader || !self.is_voter(leader) || !self.is_voter(id) {
            return true;
        }
        // Both are distinct voters here, so there is at least one other voter.
        let others = self.voters.len() - 1;
        debug_assert!(others >= 1);
        let waited = self.voters.len() / 2; // a majority, less the leader
        let Some(position) = self
            .voters
            .iter()
            .filter(|&&voter| voter != leader)
            .position(|&voter| voter == id)
        else {
            return true;
        };
        // Rotated order: position `(group + k) % others` is the k-th waited for.
        let rank = (position + others - (group % others as u64) as usize) % others;
        rank < waited
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// Encoding: u32 voter count, u32 learner count, then u64 ids, all big-endian.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(8 + 8 * (self.voters.len() + self.learners.len()));
        out.extend_from_slice(&(self.voters.len() as u32).to_be_bytes());
        out.extend_from_slice(&(self.learners.len() as u32).to_be_bytes());
        for id in self.members() {
            out.extend_from_slice(&id.to_be_bytes());
        }
        Bytes::from(out)
    }

    /// Decodes what [`ConfState::encode`] wrote; `None` for anything malformed.
    pub fn decode(bytes: &[u8]) -> Option<ConfState> {
        let voters_count = u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
        let learners_count = u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
        let total = voters_count.checked_add(learners_count)?;
        if bytes.len() != 8 + total.checked_mul(8)? {
            return None;
        }
        let ids: Vec<NodeId> = bytes[8..]
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        let conf = ConfState::new(ids[..voters_count].to_vec(), ids[voters_count..].to_vec());
        // Reject encodings that were not canonical (duplicates, overlap, zero ids).
        if conf.voters.len() != voters_count
            || conf.learners.len() != learners_count
            || conf.members().any(|id| id == NO_NODE)
        {
            return None;
        }
        Some(conf)
    }
}

/// Where a snapshot stands in the log, and the configuration at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    pub conf_state: ConfState,
}

/// A state machine image covering every entry up to `meta.index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

/// One Raft message between two replicas of the same group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub group: GroupId,
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term (for PreVote: the term it would campaign at).
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Pre-vote (thesis 9.6): would you vote for me at `term`? Changes nobody's term.
    PreVote {
        last_index: Index,
        last_term: Term,
    },
    PreVoteResponse {
        reject: bool,
    },
    /// `force` is set by a leadership transfer: it overrides the leader-lease check.
    Vote {
        last_index: Index,
        last_term: Term,
        force: bool,
    },
    VoteResponse {
        reject: bool,
    },
    /// Anchored append: the receiver accepts `entries` only if its log holds
    /// `(prev_index, prev_term)`.
    Append {
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    /// On success `index` is the last index now known to match the leader. On reject,
    /// `index` is the rejected `prev_index` and `(hint_index, hint_term)` is the receiver's
    /// best guess of where the logs may agree (fast backtracking).
    AppendResponse {
        reject: bool,
        index: Index,
        hint_index: Index,
        hint_term: Term,
    },
    /// `read_seq` stamps ReadIndex rounds; the response echoes it.
    Heartbeat {
        commit: Index,
        read_seq: u64,
    },
    HeartbeatResponse {
        read_seq: u64,
    },
    /// One chunk of a snapshot, starting at byte `offset` of the snapshot data.
    InstallSnapshot {
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        done: bool,
    },
    /// Acknowledges snapshot chunks: the receiver holds every byte before `next_offset`.
    /// Completion is acknowledged with an `AppendResponse` instead.
    SnapshotResponse {
        snapshot_index: Index,
        next_offset: u64,
    },
    /// Leadership transfer: campaign now, skipping pre-vote and the leader lease.
    TimeoutNow,
}

impl MessageBody {
    /// True for the messages only a leader sends. They may go out before the leader's own
    /// writes are durable (thesis 10.2.1); every other message waits for durability.
    pub fn is_from_leader(&self) -> bool {
        matches!(
            self,
            MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow
        )
    }
}

/// The leader's answer to a ReadIndex request: a read identified by `context` may be served
/// once the state machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub context: u64,
    pub index: Index,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

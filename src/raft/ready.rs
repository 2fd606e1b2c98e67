//! The batch of work a replica hands its caller: what to persist, what to send, what to apply.

use super::types::{Entry, HardState, Message, NodeId, ReadState, Role, Snapshot, Term};

/// Volatile state worth reporting when it changes (for routing and metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub leader: NodeId,
    pub term: Term,
}

/// One Ready, numbered. The contract, in order:
/// 1. `messages` may be sent at once, before anything is durable (they are a leader's appends,
///    heartbeats and snapshot chunks: thesis 10.2.1).
/// 2. Persist `snapshot` (it replaces the group's log and data), then `entries` (they replace
///    any stored entries at or after `entries[0].index`), then `hard_state`; these writes must
///    be applied in Ready order, and made durable (synced, when `must_sync`) before step 3.
/// 3. Once this Ready and every earlier one is durable: send `persisted_messages` and call
///    `Raft::on_persisted(number)`.
/// 4. Apply `committed_entries` in order (they are already durable locally and committed).
///    `read_states` may be answered once the state machine has applied their index.
/// 5. If `snapshot_wanted`: read an image of the state machine (off the hot path, any time
///    later) and hand it to `Raft::provide_snapshot`, or call `Raft::snapshot_unavailable` if
///    it cannot be read. Exactly one of the two answers each request.
#[derive(Debug, Default)]
pub struct Ready {
    pub number: u64,
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub messages: Vec<crate::raft::Message>,
    pub persisted_messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Contexts of ReadIndex requests dropped because leadership was lost: answer NotLeader.
    pub dropped_reads: Vec<u64>,
    /// The write must be synced before `on_persisted`: it holds entries, a snapshot, or a new
    /// term or vote. A hard state whose only change is the commit index need not be (a
    /// restarted replica learns the commit index again from the leader), so such a Ready may
    /// be reported persisted once written, as long as every earlier Ready that needed a sync
    /// was synced first.
    pub must_sync: bool,
    /// The hard state's term or vote changed: it must be durable before any message this
    /// Ready holds (a vote granted, an append accepted in a new term) leaves. A subset of
    /// `must_sync`, which also covers entries and snapshots.
    pub vote_changed: bool,
    /// The leader has a follower behind its log start and no image to stream to it (it keeps
    /// only the snapshot's meta). The image must cover a prefix the leader still agrees with:
    /// an index at or after its compaction point and at most its applied index, e.g. the
    /// applied state in storage. At most one request per replica is outstanding: no other is
    /// made until it is answered.
    pub snapshot_wanted: bool,
}

impl Ready {
    /// Whether this Ready has anything to write to storage.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }
}

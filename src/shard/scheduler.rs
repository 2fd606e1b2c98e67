//! The per-core scheduler of many Raft groups, free of any IO runtime: it ticks the awake
//! groups from one timer, puts idle groups to sleep and wakes them, and gathers the Readies of
//! every group with work into ONE storage write batch plus one message list per peer node.
//! glommio drives it on a real node; the simulator drives it in tests.
//!
//! Hibernation rules (each is needed for liveness; the simulator checks them):
//! - a leader sleeps once quiescent (`Raft::is_quiescent`: every follower holds its whole log
//!   and knows it committed) for `hibernate_after_ticks`; a follower sleeps as soon as it is
//!   quiescent with its leader on a live node (it needs no election timer then);
//! - any message for a group, any proposal or read wakes it;
//! - when a peer node goes silent for `node_timeout_ticks`, every group whose leader is on that
//!   node wakes, so its election timer runs and a new leader is elected; a sleeping follower
//!   whose leader is unknown or on a silent node wakes at the next tick;
//! - awake groups always tick normally (heartbeats, election timers, check-quorum).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ahash::AHashMap;
use bytes::Bytes;

use super::compaction::{compaction_point, CompactionPolicy, LogView};
use super::deferred::{DeferPolicy, Deferred};
use super::liveness::NodeLiveness;
use crate::raft::{
    ConfState, Config, Entry, EntryKind, GroupId, Index, Message, MessageBody, NodeId, Raft,
    RaftError, ReadState, RestoreState, Role, Snapshot, SnapshotMeta, SoftState, Term,
};
use crate::storage::{Apply, GroupWrite, KvOp, SnapshotInstall, WriteBatch};

/// Turns committed entries into key/value mutations. Deterministic: every replica applies the
/// same entries to the same effect.
pub trait StateMachine {
    /// Whether `entry` (the group's next committed entry) can be applied now. A machine that
    /// must first read something off the reactor says no (and arranges the read); the shard
    /// then holds this entry and every later one of the group until [`Shard::resume_apply`].
    /// May also be called for held entries further on, as a hint of what they will need.
    fn can_apply(&mut self, _group: GroupId, _entry: &Entry) -> bool {
        true
    }

    fn apply(&mut self, group: GroupId, entry: &Entry, ops: &mut Vec<KvOp>);

    /// `entries` were just appended to the group's log on this replica, a follower, in this
    /// batch; they may commit and be applied later, or be
    /// replaced. A hint only: a machine that reads before applying may start those reads now,
    /// so that they overlap replication instead of following the commit.
    fn entries_appended(&mut self, _group: GroupId, _entries: &[Entry]) {}

    /// The group's data was replaced by a snapshot at `index` (written in the same batch):
    /// forget anything cached about it.
    fn restored(&mut self, _group: GroupId, _index: Index) {}
}

#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub node: NodeId,
    /// Every other node of the cluster (for node-level heartbeats and liveness).
    pub peers: Vec<NodeId>,
    /// The template for every group's replica (`id` and `group` are filled in per group).
    pub raft: Config,
    pub hibernation: bool,
    pub hibernate_after_ticks: u32,
    /// Ticks between node-level heartbeats to each peer (coalesced for all groups).
    pub node_heartbeat_ticks: u32,
    pub node_timeout_ticks: u32,
    /// Groups a shard may hold (bounds memory).
    pub groups_max: usize,
    /// How long applies may wait to be written (see the `deferred` module).
    pub defer: DeferPolicy,
}

impl ShardConfig {
    pub fn new(node: NodeId, peers: Vec<NodeId>, raft: Config) -> ShardConfig {
        let election = raft.election_ticks;
        let heartbeat = raft.heartbeat_ticks;
        ShardConfig {
            node,
            peers,
            raft,
            hibernation: true,
            hibernate_after_ticks: 2 * election,
            node_heartbeat_ticks: heartbeat,
            node_timeout_ticks: election,
            groups_max: 100_000,
            defer: DeferPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("group {0} is not hosted on this shard")]
    UnknownGroup(GroupId),
    #[error("group {0} already exists on this shard")]
    GroupExists(GroupId),
    #[error("this shard holds its maximum of {0} groups")]
    TooManyGroups(usize),
    #[error(transparent)]
    Raft(#[from] RaftError),
}

struct Slot {
    /// Boxed so the group map's buckets stay small (the map keeps spare capacity).
    raft: Box<Raft>,
    /// Applied index at which this replica last stored its membership (None: not yet in this
    /// process; the first apply stores it).
    stored_conf_index: Option<Index>,
    awake: bool,
    quiet_ticks: u32,
    /// Committed entries the Raft core handed out that the state machine cannot apply yet
    /// (`StateMachine::can_apply`), in index order. Invariant: while non-empty the group stays
    /// awake, so it cannot sleep with work undone.
    held: VecDeque<Entry>,
    /// The last entry the state machine applied (the Raft core's `applied` counts held ones).
    applied: Index,
    /// The last applied entry (or installed snapshot) whose batch is written
    /// (`Shard::persisted`): what storage shows. Invariant: `written_applied <= flushed`.
    written_applied: Index,
    /// The last applied entry (or installed snapshot) handed to a write batch. Invariant:
    /// `flushed <= applied`, and every apply above it is in `deferred`.
    flushed: Index,
    /// Applies not yet handed to storage (see the `deferred` module). Invariant: while `Some`
    /// the group stays awake (its ticks bound the wait) and is dirty at each tick.
    deferred: Option<Deferred>,
    /// A read waits for the written applied index to reach this: applies up to it are written
    /// at once.
    flush_through: Index,
}

/// Whether `raft` is a spare follower now: the commit does not wait for it
/// ([`crate::raft::ConfState::commit_waits_for`]) and every follower it does wait for was
/// heard from within `within` ticks (a node sends at least a heartbeat each
/// `node_heartbeat_ticks`) here, and hears and is heard by the leader (by the latest quiet
/// reports of both). When one of those fails (the follower down, stalled, or cut off from the
/// leader in either direction), the commit needs this replica's acknowledgement, and its
/// writes are waited for again at once. The reports cover the one-way cuts this node cannot
/// see: the leader no longer hears the follower, or the follower no longer hears the leader
/// (it gets no appends), while this node still hears both.
fn is_spare(liveness: &NodeLiveness, within: u32, group: GroupId, raft: &Raft) -> bool {
    let (me, leader) = (raft.id(), raft.leader());
    if raft.is_leader() {
        return false;
    }
    let conf = raft.conf_state();
    !conf.commit_waits_for(group, leader, me)
        && conf
            .voters
            .iter()
            .filter(|&&voter| voter != leader && voter != me)
            .filter(|&&voter| conf.commit_waits_for(group, leader, voter))
            .all(|&voter| {
                liveness.heard_within(voter, within)
                    && !liveness.reports_quiet(leader, voter)
                    && !liveness.reports_quiet(voter, leader)
            })
}

/// Held entries a blocked group shows the state machine at once, so one read covers them.
const HINT_AHEAD_MAX: usize = 64;

/// Everything one loop iteration produced, for all groups of the shard.
///
/// Contract for the driver: send `send_now` at once; write `write` (one atomic write, one sync);
/// once it is durable, call [`Shard::persisted`] with `token`, which returns the messages that
/// waited for durability. Batches must be written in the order they were collected. For each
/// group in `snapshots_wanted`, read an image of the group's data from storage (off the
/// reactor, whenever convenient) and hand it to [`Shard::provide_snapshot`], or call
/// [`Shard::snapshot_unavailable`] if the read fails.
#[derive(Debug, Default)]
pub struct ShardBatch {
    pub write: WriteBatch,
    /// Per destination node: a leader's appends, heartbeats, snapshot chunks.
    pub send_now: BTreeMap<NodeId, Vec<Message>>,
    /// Committed entries applied in this batch (for answering clients), per group, in order.
    pub applied: Vec<(GroupId, Vec<Entry>)>,
    /// Groups whose data this batch replaces with a snapshot, and the snapshot index.
    pub restored: Vec<(GroupId, Index)>,
    pub read_states: Vec<(GroupId, ReadState)>,
    pub dropped_reads: Vec<(GroupId, u64)>,
    pub leader_changes: Vec<(GroupId, SoftState)>,
    /// Groups whose leader needs an image of the group's data to stream to a follower behind
    /// its log start (`Ready::snapshot_wanted`). Each group appears at most once until answered.
    pub snapshots_wanted: Vec<GroupId>,
    pub token: PersistToken,
    /// Something in this batch is waited for: a write that must be durable before a message
    /// leaves or a commit counts it (entries of a replica the commit waits for, a new term or
    /// vote), or a message held for durability by such a replica. Entries a spare follower
    /// wrote (see [`crate::raft::ConfState::commit_waits_for`]), and their acknowledgements,
    /// are not: no commit waits for them.
    pub prompt: bool,
    /// Peers this batch sends new entries whose commit waits for them (the leader's one
    /// follower of a group of three, see [`crate::raft::ConfState::commit_waits_for`]): send
    /// to them first, so the acknowledgements that decide commits start soonest.
    pub urgent_peers: Vec<NodeId>,
}

impl ShardBatch {
    /// Whether nothing waits for this batch's write: it applies committed entries, compacts,
    /// or holds a spare follower's entries and acknowledgements (not [`ShardBatch::prompt`]),
    /// and no read, restore or image request waits for it. Such a batch may wait for the next
    /// one and be written with it ([`ShardBatch::absorb`]); if it holds entries it is still
    /// synced when written, and its acknowledgements leave only then.
    pub fn may_wait(&self) -> bool {
        !self.prompt
            && !self.write.is_empty()
            && self.read_states.is_empty()
            && self.dropped_reads.is_empty()
            && self.restored.is_empty()
            && self.snapshots_wanted.is_empty()
            && self
                .write
                .groups
                .iter()
                .all(|write| !write.destroy && write.snapshot.is_none())
    }

    /// Appends `later`, collected after this batch, so that both are written as one storage
    /// write (this batch's parts first: storage applies a batch's group writes in order) and
    /// released in collection order. Messages to send at once must already have been sent.
    pub fn absorb(&mut self, later: ShardBatch) {
        assert!(
            self.send_now.is_empty() && later.send_now.is_empty(),
            "messages to send now are sent at collect"
        );
        self.write.sync |= later.write.sync;
        self.prompt |= later.prompt;
        for peer in later.urgent_peers {
            if !self.urgent_peers.contains(&peer) {
                self.urgent_peers.push(peer);
            }
        }
        self.write.groups.extend(later.write.groups);
        self.applied.extend(later.applied);
        self.restored.extend(later.restored);
        self.read_states.extend(later.read_states);
        self.dropped_reads.extend(later.dropped_reads);
        self.leader_changes.extend(later.leader_changes);
        self.snapshots_wanted.extend(later.snapshots_wanted);
        self.token.readies.extend(later.token.readies);
        self.token.applied.extend(later.token.applied);
        for (peer, messages) in later.token.after_persist {
            self.token
                .after_persist
                .entry(peer)
                .or_default()
                .extend(messages);
        }
    }
}

/// Identifies a collected batch; hand it back to [`Shard::persisted`] once durable.
#[derive(Debug, Default)]
pub struct PersistToken {
    readies: Vec<(GroupId, u64)>,
    /// Per group applied (or restored) in the batch: the last index its data reaches.
    applied: Vec<(GroupId, Index)>,
    after_persist: BTreeMap<NodeId, Vec<Message>>,
}

impl PersistToken {
    /// Per group applied or restored in the batch, in collect order: the last index its data
    /// in storage reaches once the batch is written (what the state machine may read back).
    pub fn written(&self) -> &[(GroupId, Index)] {
        &self.applied
    }

    /// The messages that may leave once the batch is durable, by peer (what
    /// [`Shard::persisted`] hands back): the caller may send them itself as soon as the write
    /// is durable, before telling the shard.
    pub fn after_persist(&self) -> &BTreeMap<NodeId, Vec<Message>> {
        &self.after_persist
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardStats {
    pub groups: usize,
    pub awake: usize,
    pub leaders: usize,
}

pub struct Shard<S: StateMachine> {
    config: ShardConfig,
    groups: AHashMap<GroupId, Slot>,
    /// Groups that may have a Ready (deduplicated by `BTreeSet` for a stable order).
    dirty: BTreeSet<GroupId>,
    /// The groups that tick. Invariant: exactly the slots with `awake` set. Sleeping groups are
    /// never visited by `tick`, so an idle shard costs nothing per group.
    awake: BTreeSet<GroupId>,
    /// Compactions decided since the last collect, written with the next batch.
    compactions: Vec<(GroupId, SnapshotMeta)>,
    liveness: NodeLiveness,
    ticks: u64,
    /// The keys' and values' bytes of every group's `deferred`.
    deferred_bytes: usize,
    state_machine: S,
}

impl<S: StateMachine> Shard<S> {
    pub fn new(config: ShardConfig, state_machine: S) -> Shard<S> {
        let liveness = NodeLiveness::new(config.peers.iter().copied(), config.node_timeout_ticks);
        Shard {
            config,
            groups: AHashMap::new(),
            dirty: BTreeSet::new(),
            awake: BTreeSet::new(),
            compactions: Vec::new(),
            liveness,
            ticks: 0,
            deferred_bytes: 0,
            state_machine,
        }
    }

    pub fn node(&self) -> NodeId {
        self.config.node
    }

    pub fn state_machine(&self) -> &S {
        &self.state_machine
    }

    /// For restoring the state machine's in-memory state after a restart.
    pub fn state_machine_mut(&mut self) -> &mut S {
        &mut self.state_machine
    }

    pub fn add_group(&mut self, group: GroupId, restore: RestoreState) -> Result<(), ShardError> {
        if self.groups.contains_key(&group) {
            return Err(ShardError::GroupExists(group));
        }
        if self.groups.len() >= self.config.groups_max {
            return Err(ShardError::TooManyGroups(self.config.groups_max));
        }
        let mut config = self.config.raft.clone();
        config.id = self.config.node;
        config.group = group;
        config.seed ^= group.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let raft = Raft::new(config, restore)?;
        let applied = raft.applied();
        self.awake.insert(group);
        self.groups.insert(
            group,
            Slot {
                raft: Box::new(raft),
                stored_conf_index: None,
                awake: true,
                quiet_ticks: 0,
                held: VecDeque::new(),
                applied,
                written_applied: applied,
                flushed: applied,
                deferred: None,
                flush_through: 0,
            },
        );
        self.dirty.insert(group);
        Ok(())
    }

    pub fn raft(&self, group: GroupId) -> Option<&Raft> {
        self.groups.get(&group).map(|slot| &*slot.raft)
    }

    pub fn raft_mut(&mut self, group: GroupId) -> Option<&mut Raft> {
        self.groups.get_mut(&group).map(|slot| &mut *slot.raft)
    }

    pub fn group_ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<GroupId> = self.groups.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The last entry of `group` the state machine applied (reads wait for this, not for the
    /// Raft core's applied index, which also counts held entries).
    pub fn applied(&self, group: GroupId) -> Option<Index> {
        self.groups.get(&group).map(|slot| slot.applied)
    }

    /// The last entry of `group` applied in a batch that is written: local reads of the
    /// group's data see everything up to here. Linearizable reads wait for this.
    pub fn written_applied(&self, group: GroupId) -> Option<Index> {
        self.groups.get(&group).map(|slot| slot.written_applied)
    }

    /// Where `policy` would cut `group`'s log now (see `compaction.rs`), if anywhere: pass it
    /// to [`Shard::compact`].
    pub fn compaction_point(&self, group: GroupId, policy: &CompactionPolicy) -> Option<Index> {
        let slot = self.groups.get(&group)?;
        compaction_point(&LogView::of(&slot.raft, slot.written_applied), policy)
    }

    /// Committed entries of `group` waiting for the state machine.
    pub fn held(&self, group: GroupId) -> usize {
        self.groups.get(&group).map_or(0, |slot| slot.held.len())
    }

    /// What `group`'s held entries waited for has arrived: try them at the next collect.
    pub fn resume_apply(&mut self, group: GroupId) {
        if self.groups.contains_key(&group) {
            self.dirty.insert(group);
        }
    }

    pub fn is_awake(&self, group: GroupId) -> bool {
        self.groups.get(&group).is_some_and(|slot| slot.awake)
    }

    pub fn stats(&self) -> ShardStats {
        ShardStats {
            groups: self.groups.len(),
            awake: self.groups.values().filter(|s| s.awake).count(),
            leaders: self.groups.values().filter(|s| s.raft.is_leader()).count(),
        }
    }

    fn wake(awake: &mut BTreeSet<GroupId>, group: GroupId, slot: &mut Slot) {
        if !slot.awake {
            slot.awake = true;
            slot.quiet_ticks = 0;
            awake.insert(group);
        }
    }

    /// One tick of the shard's single timer: ticks every awake group, puts quiet groups to
    /// sleep, wakes the followers of nodes that went silent. Returns the peers owed a
    /// node-level heartbeat now (send them an empty frame).
    pub fn tick(&mut self) -> Vec<NodeId> {
        self.ticks += 1;
        let newly_down = self.liveness.tick();
        let hibernation = self.config.hibernation;
        let hibernate_after = self.config.hibernate_after_ticks;
        // The only time sleeping groups are visited: a node went silent, wake what it led.
        if !newly_down.is_empty() {
            for (&group, slot) in self.groups.iter_mut() {
                if slot.raft.role() == Role::Follower && newly_down.contains(&slot.raft.leader()) {
                    // Campaign soon, asleep or not.
                    slot.raft.leader_unreachable();
                    Self::wake(&mut self.awake, group, slot);
                }
            }
        }
        let awake: Vec<GroupId> = self.awake.iter().copied().collect();
        for group in awake {
            let slot = self.groups.get_mut(&group).expect("awake groups exist");
            // A follower in step with a leader on a live node needs no election timer: it sleeps
            // at once, and node liveness (not per-group heartbeats) tells it when to wake. Were
            // it to keep ticking, it would time out while its leader sleeps and disturb the group.
            // (A sleeping follower's leader can only become unknown through a message, which
            // wakes it, or go silent, which `newly_down` handles above.)
            if hibernation
                && slot.raft.role() == Role::Follower
                && slot.held.is_empty()
                && slot.raft.is_quiescent()
                && self.liveness.is_live(slot.raft.leader())
            {
                // Asleep but for its deferred applies: they age (and are written when due),
                // the election timer does not run.
                if let Some(deferred) = &mut slot.deferred {
                    deferred.tick();
                    self.dirty.insert(group);
                    continue;
                }
                slot.awake = false;
                self.awake.remove(&group);
                continue;
            }
            slot.raft.tick();
            if let Some(deferred) = &mut slot.deferred {
                deferred.tick();
            }
            self.dirty.insert(group);
            // Quiet means quiescent: heartbeats alone do not keep a leader awake.
            if slot.raft.is_quiescent() {
                slot.quiet_ticks = slot.quiet_ticks.saturating_add(1);
            } else {
                slot.quiet_ticks = 0;
            }
            if hibernation
                && slot.raft.is_leader()
                && slot.held.is_empty()
                && slot.deferred.is_none()
                && slot.quiet_ticks >= hibernate_after
                && slot.raft.is_quiescent()
            {
                slot.awake = false;
                self.awake.remove(&group);
            }
        }
        if self.ticks % self.config.node_heartbeat_ticks as u64 == 0 {
            self.liveness.peers().collect()
        } else {
            Vec::new()
        }
    }

    /// Marks `node` as heard from (a frame arrived, possibly empty: a node heartbeat).
    pub fn heard_from(&mut self, node: NodeId) {
        self.liveness.heard_from(node);
    }

    /// Keeps `reporter`'s quiet report: the nodes it has not heard from lately (a frame's
    /// `quiet_nodes`). It decides, with this node's own view, which followers are spare.
    pub fn peer_report(&mut self, reporter: NodeId, quiet: &[NodeId]) {
        self.liveness.report(reporter, quiet);
    }

    /// This node's quiet report for its peers: the peers not heard from within the window
    /// that makes a follower not spare (`node_heartbeat_ticks + 1`, see [`is_spare`]).
    pub fn quiet_peers(&self) -> Vec<NodeId> {
        self.liveness
            .quiet_within(self.spare_window_ticks())
            .collect()
    }

    /// Ticks within which a follower the commit waits for must have been heard from for
    /// another follower to be spare: a node sends at least a heartbeat each
    /// `node_heartbeat_ticks`, so one more tick than that.
    fn spare_window_ticks(&self) -> u32 {
        self.config.node_heartbeat_ticks + 1
    }

    /// Feeds messages that arrived from `from` (one frame).
    pub fn receive(&mut self, from: NodeId, messages: Vec<Message>) -> Vec<(GroupId, ShardError)> {
        self.liveness.heard_from(from);
        let mut rejected = Vec::new();
        for message in messages {
            let group = message.group;
            let Some(slot) = self.groups.get_mut(&group) else {
                rejected.push((group, ShardError::UnknownGroup(group)));
                continue;
            };
            // A vote request means some member lost track of the leader: wake so heartbeats
            // (from the leader) or an election (elsewhere) can resolve it.
            let asks_for_votes = matches!(
                message.body,
                MessageBody::PreVote { .. } | MessageBody::Vote { .. }
            );
            if let Err(error) = slot.raft.step(message) {
                rejected.push((group, error.into()));
            }
            // Otherwise a message wakes a sleeping group only if it gave the group something to
            // do: the last heartbeat answers reaching a leader that just fell asleep must not.
            if !slot.awake && (asks_for_votes || slot.raft.has_ready() || !slot.raft.is_quiescent())
            {
                Self::wake(&mut self.awake, group, slot);
            }
            self.dirty.insert(group);
        }
        rejected
    }

    pub fn propose(&mut self, group: GroupId, data: Bytes) -> Result<(Index, Term), ShardError> {
        let slot = self
            .groups
            .get_mut(&group)
            .ok_or(ShardError::UnknownGroup(group))?;
        Self::wake(&mut self.awake, group, slot);
        slot.quiet_ticks = 0;
        self.dirty.insert(group);
        Ok(slot.raft.propose(data)?)
    }

    pub fn read_index(&mut self, group: GroupId, context: u64) -> Result<(), ShardError> {
        let slot = self
            .groups
            .get_mut(&group)
            .ok_or(ShardError::UnknownGroup(group))?;
        Self::wake(&mut self.awake, group, slot);
        self.dirty.insert(group);
        Ok(slot.raft.read_index(context)?)
    }

    /// Runs `action` on a group's replica (transfer, membership, campaign) and marks it dirty.
    pub fn with_group<T>(
        &mut self,
        group: GroupId,
        action: impl FnOnce(&mut Raft) -> T,
    ) -> Result<T, ShardError> {
        let slot = self
            .groups
            .get_mut(&group)
            .ok_or(ShardError::UnknownGroup(group))?;
        Self::wake(&mut self.awake, group, slot);
        self.dirty.insert(group);
        Ok(action(&mut slot.raft))
    }

    /// Compacts `group`'s log up to `index`, which must be applied in a written batch
    /// (`written_applied`): storage's data then covers it, so the image a follower may later
    /// need is read from there. The log entries are deleted from storage with the next batch.
    pub fn compact(&mut self, group: GroupId, index: Index) -> Result<(), ShardError> {
        let slot = self
            .groups
            .get_mut(&group)
            .ok_or(ShardError::UnknownGroup(group))?;
        if index > slot.written_applied {
            return Err(RaftError::InvalidCompaction {
                index,
                why: "beyond the applied index in storage",
            }
            .into());
        }
        let meta = slot.raft.compact(index)?;
        self.compactions.push((group, meta));
        self.dirty.insert(group);
        Ok(())
    }

    /// Answers `group`'s image request (`ShardBatch::snapshots_wanted`) with an image read
    /// from storage. See [`Raft::provide_snapshot`] for when it is refused.
    pub fn provide_snapshot(&mut self, group: GroupId, image: Snapshot) -> Result<(), ShardError> {
        Ok(self.with_group(group, |raft| raft.provide_snapshot(image))??)
    }

    /// `group`'s image could not be read: its leader asks again after a heartbeat round.
    pub fn snapshot_unavailable(&mut self, group: GroupId) {
        if let Some(slot) = self.groups.get_mut(&group) {
            slot.raft.snapshot_unavailable();
        }
    }

    /// Gathers the Readies of every group with work into one batch. `None` when idle. With
    /// `sync`, the batch is synced when it holds anything that must be durable.
    pub fn collect(&mut self, sync: bool) -> Option<ShardBatch> {
        if self.dirty.is_empty() {
            return None;
        }
        let mut batch = ShardBatch {
            write: WriteBatch::new(sync),
            ..ShardBatch::default()
        };
        for (group, meta) in self.compactions.drain(..) {
            let mut write = GroupWrite::new(group);
            write.compact = Some(meta);
            batch.write.push(write);
        }
        let dirty = std::mem::take(&mut self.dirty);
        let spare_window = self.spare_window_ticks();
        // Due deferred applies this batch writes (`DeferPolicy::batch_ops_max`), and the due
        // groups left for the next collect.
        let mut due_ops = 0;
        let mut left_due = Vec::new();
        for group in dirty {
            let Some(slot) = self.groups.get_mut(&group) else {
                continue;
            };
            let restores_before = batch.restored.len();
            // Entries held at an earlier collect first: what they waited for may have arrived.
            let flushed_before = slot.flushed;
            if !slot.held.is_empty() {
                if let Some((apply, entries)) =
                    Self::apply_held(&mut self.state_machine, group, slot)
                {
                    self.deferred_bytes += Self::defer(slot, apply);
                    batch.applied.push((group, entries));
                }
            }
            while slot.raft.has_ready() {
                let ready = slot.raft.ready();
                let mut write = GroupWrite::new(group);
                if let Some(soft) = ready.soft_state {
                    batch.leader_changes.push((group, soft));
                }
                if ready.snapshot_wanted {
                    batch.snapshots_wanted.push(group);
                }
                // A hard state whose only change is the commit index is not written: the
                // commit index is volatile in Raft (a restarted replica relearns it from the
                // leader, and restores at least its applied index, which is written with the
                // applies). Writing it cost a storage write per group per commit, most of them
                // batches with nothing else in them. Term and vote changes come with
                // `must_sync` and are written (with the commit index of the moment).
                write.hard_state = ready.hard_state.filter(|_| ready.must_sync);
                write.must_sync = ready.must_sync;
                // A spare follower's new entries wait for nobody (see `ShardBatch::prompt`);
                // a new term or vote, a snapshot, or anything of a replica the commit waits
                // for does.
                let spare = is_spare(&self.liveness, spare_window, group, &slot.raft);
                let waits_for_it = ready.must_sync || !ready.persisted_messages.is_empty();
                if waits_for_it && !(spare && !ready.vote_changed && ready.snapshot.is_none()) {
                    batch.prompt = true;
                }
                if let Some(snapshot) = &ready.snapshot {
                    let index = snapshot.meta.index;
                    // Raft installs a snapshot only past its commit index, so it covers every
                    // held entry.
                    assert!(
                        !slot.held.back().is_some_and(|entry| entry.index > index),
                        "group {group}: snapshot at {index} below a held entry"
                    );
                    slot.held.clear();
                    slot.applied = index;
                    // The image replaces whatever applies were deferred below it.
                    if let Some(deferred) = slot.deferred.take() {
                        self.deferred_bytes -= deferred.bytes();
                    }
                    slot.flushed = index;
                    self.state_machine.restored(group, index);
                    batch.restored.push((group, index));
                }
                write.snapshot = ready.snapshot.map(SnapshotInstall::from);
                // A leader's entries are its own proposals, hinted when proposed.
                if !ready.entries.is_empty() && !slot.raft.is_leader() {
                    self.state_machine.entries_appended(group, &ready.entries);
                }
                write.entries = ready.entries;
                if !ready.committed_entries.is_empty() {
                    slot.held.extend(ready.committed_entries);
                    if let Some((apply, entries)) =
                        Self::apply_held(&mut self.state_machine, group, slot)
                    {
                        self.deferred_bytes += Self::defer(slot, apply);
                        batch.applied.push((group, entries));
                    }
                }
                for message in ready.messages {
                    let urgent = matches!(&message.body, MessageBody::Append { entries, .. } if !entries.is_empty())
                        && slot
                            .raft
                            .conf_state()
                            .commit_waits_for(group, message.from, message.to)
                        && !batch.urgent_peers.contains(&message.to);
                    if urgent {
                        batch.urgent_peers.push(message.to);
                    }
                    batch.send_now.entry(message.to).or_default().push(message);
                }
                for message in ready.persisted_messages {
                    batch
                        .token
                        .after_persist
                        .entry(message.to)
                        .or_default()
                        .push(message);
                }
                for read in &ready.read_states {
                    slot.flush_through = slot.flush_through.max(read.index);
                }
                batch
                    .read_states
                    .extend(ready.read_states.into_iter().map(|r| (group, r)));
                batch
                    .dropped_reads
                    .extend(ready.dropped_reads.into_iter().map(|c| (group, c)));
                batch.token.readies.push((group, ready.number));
                if !write.is_empty() {
                    batch.write.push(write);
                }
            }
            let policy = &self.config.defer;
            let flush = slot.deferred.as_ref().is_some_and(|deferred| {
                let waited_for = policy.is_off()
                    || deferred.changes_membership()
                    || slot.flush_through > slot.flushed;
                let due = deferred.due(policy) || self.deferred_bytes > policy.shard_bytes_max;
                if waited_for {
                    true
                } else if due && (due_ops == 0 || due_ops + deferred.ops() <= policy.batch_ops_max)
                {
                    due_ops += deferred.ops();
                    true
                } else {
                    if due {
                        left_due.push(group);
                    }
                    false
                }
            });
            if flush {
                let deferred = slot.deferred.take().expect("checked above");
                self.deferred_bytes -= deferred.bytes();
                slot.flushed = deferred.index();
                let mut write = GroupWrite::new(group);
                write.apply = Some(deferred.into_apply());
                batch.write.push(write);
            }
            // Deferred applies age only while the group ticks.
            if slot.deferred.is_some() {
                Self::wake(&mut self.awake, group, slot);
            }
            if slot.flushed != flushed_before || batch.restored.len() != restores_before {
                batch.token.applied.push((group, slot.flushed));
            }
        }
        self.dirty.extend(left_due);
        // A batch of applies alone is written without a sync (see `WriteBatch::needs_sync`):
        // on a node that is most batches, one per commit learnt, on every replica.
        batch.write.sync = sync && batch.write.needs_sync();
        Some(batch)
    }

    /// Adds `apply` to `slot`'s deferred applies; returns the bytes it added.
    fn defer(slot: &mut Slot, apply: Apply) -> usize {
        let before = slot.deferred.as_ref().map_or(0, Deferred::bytes);
        match &mut slot.deferred {
            Some(deferred) => deferred.merge(apply),
            None => slot.deferred = Some(Deferred::new(apply)),
        }
        slot.deferred.as_ref().map_or(0, Deferred::bytes) - before
    }

    /// Applies `slot`'s held entries in order up to the first the state machine cannot apply
    /// yet. Returns the storage apply and the entries applied, `None` if none was.
    fn apply_held(
        state_machine: &mut S,
        group: GroupId,
        slot: &mut Slot,
    ) -> Option<(Apply, Vec<Entry>)> {
        let mut applied = Vec::new();
        let mut ops = Vec::new();
        let mut conf_change = None;
        while let Some(entry) = slot.held.front() {
            if !state_machine.can_apply(group, entry) {
                for later in slot.held.iter().skip(1).take(HINT_AHEAD_MAX) {
                    state_machine.can_apply(group, later);
                }
                break;
            }
            let entry = slot.held.pop_front().expect("front exists");
            debug_assert_eq!(entry.index, slot.applied + 1, "group {group}: apply order");
            state_machine.apply(group, &entry, &mut ops);
            if entry.kind == EntryKind::ConfChange {
                conf_change = ConfState::decode(&entry.data);
            }
            slot.applied = entry.index;
            applied.push(entry);
        }
        let last = applied.last()?;
        // The membership in force at the applied index is stored with it (a group's first apply
        // records the initial one), so a restart from compacted state knows its voters without
        // the log. Entries held from before a snapshot the core has installed since (its Ready
        // follows in this batch and records its own membership) are below the log: the first
        // apply after that snapshot stores it then.
        let in_log = last.index + 1 >= slot.raft.first_index();
        let conf_state = conf_change.or_else(|| {
            (slot.stored_conf_index.is_none() && in_log)
                .then(|| slot.raft.conf_state_at(last.index))
        });
        if conf_state.is_some() {
            slot.stored_conf_index = Some(last.index);
        }
        let apply = Apply {
            index: last.index,
            term: last.term,
            conf_state,
            ops,
        };
        Some((apply, applied))
    }

    /// The batch identified by `token` is durable: advance every group and return the messages
    /// that waited for durability, per destination node.
    pub fn persisted(&mut self, token: PersistToken) -> BTreeMap<NodeId, Vec<Message>> {
        for (group, index) in token.applied {
            if let Some(slot) = self.groups.get_mut(&group) {
                // Batches are written in collect order, and each carries the group's applied
                // index as of its collect, so the last one written tells.
                debug_assert!(index >= slot.written_applied && index <= slot.applied);
                slot.written_applied = index;
            }
        }
        for (group, number) in token.readies {
            if let Some(slot) = self.groups.get_mut(&group) {
                slot.raft.on_persisted(number);
                self.dirty.insert(group);
            }
        }
        token.after_persist
    }
}

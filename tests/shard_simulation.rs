//! Deterministic simulation of whole shards: the real Raft core, the real multi-group scheduler
//! (tick coalescing, hibernation and waking, one write batch per iteration) and the real
//! storage (the in-memory engine, which loses unsynced writes on a crash), over a simulated
//! network with loss, partitions, process pauses (SIGSTOP) and crashes, all from one seed.
//!
//! The seeds focus on hibernation: groups go to sleep once the cluster is quiet, then faults hit
//! the nodes leading sleeping groups. Safety is checked after every step; after healing, every
//! proposal must apply everywhere, and a sleeping group whose leader dies must fail over.
//!
//! `cargo test --test shard_simulation` runs fixed seeds; `KAHUNA_SHARD_SIM_SEEDS=N` runs N
//! fresh ones; `KAHUNA_SHARD_SIM_SEED=S` replays one.

mod sim;

use sim::{entry_hash, mix, Dice};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use kahuna::raft::*;
use kahuna::shard::{
    CompactionPolicy, DeferPolicy, PersistToken, Shard, ShardBatch, ShardConfig, ShardError,
    StateMachine,
};
use kahuna::storage::{Backend, KvOp, MemoryBackend};

const DIGEST_KEY: &[u8] = b"\x00digest";
/// The compaction policy's thresholds in the simulation: small, so that a leader's cut where
/// its followers hold the log and the bound's cut both happen within a run.
const SIM_COMPACTION: CompactionPolicy = CompactionPolicy {
    entries_max: 24,
    entries_held: 4,
};

/// A hash chain over applied entries, stored in the group's kv data with the applied index.
///
/// Like the node's kv machine waiting for a storage read, it refuses some entries at random
/// (`can_apply`), and the simulated loop grants them a few iterations later: the shard must hold
/// the group's committed entries meanwhile, keep them in order, answer reads only once they
/// apply, and drop them when a snapshot replaces the group's data.
struct DigestMachine {
    digests: HashMap<GroupId, (Index, u64)>,
    dice: Dice,
    /// Groups whose next entry was refused, waiting for a grant.
    waiting: BTreeSet<GroupId>,
    /// Per group: entries up to this index may apply.
    granted: HashMap<GroupId, Index>,
}

impl DigestMachine {
    fn new(seed: u64) -> DigestMachine {
        DigestMachine {
            digests: HashMap::new(),
            dice: Dice::new(seed),
            waiting: BTreeSet::new(),
            granted: HashMap::new(),
        }
    }
}

impl StateMachine for DigestMachine {
    fn can_apply(&mut self, group: GroupId, entry: &Entry) -> bool {
        if self.granted.get(&group).is_some_and(|&g| entry.index <= g) {
            return true;
        }
        if self.dice.chance(0.3) {
            self.waiting.insert(group);
            return false;
        }
        true
    }

    fn apply(&mut self, group: GroupId, entry: &Entry, ops: &mut Vec<KvOp>) {
        let state = self.digests.entry(group).or_insert((0, 0));
        assert_eq!(entry.index, state.0 + 1, "apply in order");
        *state = (entry.index, mix(state.1, entry_hash(entry)));
        let mut value = state.0.to_be_bytes().to_vec();
        value.extend_from_slice(&state.1.to_be_bytes());
        ops.push(KvOp::Put {
            key: Bytes::from_static(DIGEST_KEY),
            value: Bytes::from(value),
        });
    }
}

struct Node {
    shard: Shard<DigestMachine>,
    backend: MemoryBackend,
    /// Batches written but not yet synced, in order.
    unsynced: VecDeque<PersistToken>,
    /// A batch of applies alone held back to be written with a later one, as a node's core
    /// does (`ShardBatch::may_wait`, `ShardBatch::absorb`); lost with a crash.
    held: Option<ShardBatch>,
    up: bool,
    paused_until: u64,
}

struct Frame {
    at: u64,
    from: NodeId,
    to: NodeId,
    messages: Vec<Message>,
    /// The sender's quiet report when it sent the frame (a node's frames carry it: the spare
    /// follower rule reads the leader's).
    quiet: Vec<NodeId>,
}

struct Sim {
    seed: u64,
    dice: Dice,
    now: u64,
    nodes: BTreeMap<NodeId, Node>,
    node_count: u64,
    groups: u64,
    conf: BTreeMap<GroupId, ConfState>,
    network: Vec<Frame>,
    cuts: BTreeSet<(NodeId, NodeId)>,
    loss: f64,
    leaders: HashMap<(GroupId, Term), NodeId>,
    applied_digest: HashMap<(GroupId, Index), u64>,
    /// The hash chain of each group after each applied index, as first seen.
    chain: HashMap<(GroupId, Index), u64>,
    /// What the run exercised: compactions, snapshot installs, applies held back.
    compactions: u64,
    restores: u64,
    holds: u64,
    /// Per loop iteration, the chance a waiting group is granted (short or long holds).
    grant_chance: f64,
    proposals: BTreeMap<u64, GroupId>,
    applied_ids: HashMap<(GroupId, u64), Index>,
    next_proposal: u64,
    failures: Vec<String>,
    slept: u64,
    /// Image reads a leader asked for (`ShardBatch::snapshots_wanted`), answered from storage at
    /// the given time, as a node does on its blocking pool: (at, node, group).
    image_reads: Vec<(u64, NodeId, GroupId)>,
    /// Its own generator, so that the other choices of a seed do not depend on image reads.
    image_dice: Dice,
    images_taken: u64,
    images_refused: u64,
    /// `Config::commit_notice_ticks` of every replica (from its own generator, so the other
    /// choices of a seed are what they were before it existed).
    commit_notice_ticks: u32,
    /// Per loop iteration, the chance a batch of applies alone is held for the next batch,
    /// and the chance a held one is written when nothing new was collected (its own
    /// generator, as above).
    hold_dice: Dice,
    hold_chance: f64,
    batches_held: u64,
    /// How long applies wait to be written (`src/shard/deferred.rs`): off, a few entries or
    /// ticks, or the node's default (its own generator, as above).
    defer: DeferPolicy,
}

/// The deferral policies a seed picks from: a crash loses what waits, a restart applies it
/// again from the log, and compaction must wait for it; the small one also leaves due groups
/// for later batches (`batch_ops_max`).
const DEFER_POLICIES: [DeferPolicy; 3] = [
    DeferPolicy::OFF,
    DeferPolicy {
        ops_max: 3,
        bytes_max: 1 << 20,
        ticks_max: 4,
        shard_bytes_max: 1 << 20,
        batch_ops_max: 2,
    },
    DeferPolicy::DEFAULT,
];

fn raft_config() -> Config {
    Config {
        election_ticks: 10,
        heartbeat_ticks: 2,
        inflight_max: 8,
        // As on a node: an image is checked as storage will check it before it is accepted.
        snapshot_check: Some(|image| kahuna::storage::decode_snapshot_data(image, &mut |_, _| {})),
        ..Config::default()
    }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut dice = Dice::new(seed);
        let node_count = 3 + dice.below(3);
        let groups = 2 + dice.below(7);
        let ids: Vec<NodeId> = (1..=node_count).collect();
        let mut conf = BTreeMap::new();
        for group in 1..=groups {
            let voters = (0..3)
                .map(|k| ids[((group + k) % node_count) as usize])
                .collect();
            conf.insert(group, ConfState::new(voters, vec![]));
        }
        let loss = [0.0, 0.01, 0.05][dice.below(3) as usize];
        let grant_chance = [0.5, 0.1, 0.03][dice.below(3) as usize];
        let mut sim = Sim {
            seed,
            dice,
            now: 0,
            nodes: BTreeMap::new(),
            node_count,
            groups,
            conf,
            network: Vec::new(),
            cuts: BTreeSet::new(),
            loss,
            leaders: HashMap::new(),
            applied_digest: HashMap::new(),
            chain: HashMap::new(),
            compactions: 0,
            restores: 0,
            holds: 0,
            grant_chance,
            proposals: BTreeMap::new(),
            applied_ids: HashMap::new(),
            next_proposal: 1,
            failures: Vec::new(),
            slept: 0,
            image_reads: Vec::new(),
            image_dice: Dice::new(seed ^ 0x1_4a9e),
            images_taken: 0,
            images_refused: 0,
            commit_notice_ticks: Dice::new(seed ^ 0xc0_771).pick(&[0, 1, 2, 9]),
            hold_dice: Dice::new(seed ^ 0x401d),
            hold_chance: Dice::new(seed ^ 0x401e).pick(&[0.0, 0.5, 0.9]),
            batches_held: 0,
            defer: Dice::new(seed ^ 0xdefe).pick(&DEFER_POLICIES),
        };
        for &id in &ids {
            let node = sim.start_node(id, MemoryBackend::in_memory());
            sim.nodes.insert(id, node);
        }
        sim
    }

    fn describe(&self) -> String {
        format!(
            "seed={} nodes={} groups={} loss={} grant={} commit_notice={} hold={} defer_ops={}",
            self.seed,
            self.nodes.len(),
            self.groups,
            self.loss,
            self.grant_chance,
            self.commit_notice_ticks,
            self.hold_chance,
            self.defer.ops_max
        )
    }

    fn start_node(&mut self, id: NodeId, mut backend: MemoryBackend) -> Node {
        let peers: Vec<NodeId> = (1..=self.node_count).filter(|&p| p != id).collect();
        let mut raft = raft_config();
        raft.seed = self.seed ^ self.now;
        raft.commit_notice_ticks = self.commit_notice_ticks;
        let machine = DigestMachine::new(self.seed ^ self.now ^ id.wrapping_mul(0x51));
        let mut config = ShardConfig::new(id, peers, raft);
        config.defer = self.defer;
        let mut shard = Shard::new(config, machine);
        for (&group, conf) in &self.conf {
            if !conf.contains(id) {
                continue;
            }
            let state = backend.load_group(group).expect("durable state verifies");
            if let Some(value) = backend.kv_get(group, DIGEST_KEY).expect("kv read") {
                let index = u64::from_be_bytes(value[..8].try_into().unwrap());
                let digest = u64::from_be_bytes(value[8..16].try_into().unwrap());
                assert_eq!(
                    index, state.applied_index,
                    "digest stored with the applied index"
                );
                shard_machine(&mut shard)
                    .digests
                    .insert(group, (index, digest));
            }
            // A compacted group restarts from the compaction point's meta alone, as the node
            // does: no image is read.
            let snapshot = (state.snapshot.index > 0).then(|| state.snapshot.clone());
            let restore = RestoreState {
                hard_state: state.hard_state,
                snapshot,
                entries: state.entries,
                applied: state.applied_index,
                initial_conf: conf.clone(),
            };
            shard.add_group(group, restore).expect("group starts");
        }
        Node {
            shard,
            backend,
            unsynced: VecDeque::new(),
            held: None,
            up: true,
            paused_until: 0,
        }
    }

    fn runs(&self, id: NodeId) -> bool {
        let node = &self.nodes[&id];
        node.up && node.paused_until <= self.now
    }

    fn leader_of(&self, group: GroupId) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(&id, _)| self.runs(id))
            .filter_map(|(&id, n)| {
                n.shard
                    .raft(group)
                    .filter(|r| r.is_leader())
                    .map(|r| (id, r.term()))
            })
            .max_by_key(|&(_, term)| term)
            .map(|(id, _)| id)
    }

    fn send(&mut self, from: NodeId, to: NodeId, messages: Vec<Message>) {
        if self.cuts.contains(&(from, to)) || self.dice.chance(self.loss) {
            return;
        }
        let at = self.now + 1 + self.dice.below(3);
        let quiet = self.nodes[&from].shard.quiet_peers();
        self.network.push(Frame {
            at,
            from,
            to,
            messages,
            quiet,
        });
    }

    fn step(&mut self, faults: bool) {
        self.now += 1;
        if faults {
            self.inject_faults();
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &id in &ids {
            if !self.runs(id) {
                continue;
            }
            let heartbeat_to = self.nodes.get_mut(&id).unwrap().shard.tick();
            for peer in heartbeat_to {
                self.send(id, peer, Vec::new());
            }
        }
        // Deliver frames in order; frames to stopped or paused nodes wait or are lost.
        let now = self.now;
        let mut due = Vec::new();
        let mut kept = Vec::new();
        for frame in self.network.drain(..) {
            if frame.at <= now {
                due.push(frame);
            } else {
                kept.push(frame);
            }
        }
        self.network = kept;
        due.sort_by_key(|f| f.at);
        for frame in due {
            let node = self.nodes.get_mut(&frame.to).unwrap();
            if !node.up || self.cuts.contains(&(frame.from, frame.to)) {
                continue;
            }
            if node.paused_until > now {
                // A stopped process does not read its socket: the frame waits.
                let at = node.paused_until;
                self.network.push(Frame { at, ..frame });
                continue;
            }
            node.shard.peer_report(frame.from, &frame.quiet);
            node.shard.receive(frame.from, frame.messages);
        }
        for &id in &ids {
            if self.runs(id) {
                self.run_loop(id);
            }
        }
        if std::env::var("KAHUNA_SHARD_SIM_TRACE").is_ok() {
            for (&id, node) in &self.nodes {
                if let Some(r) = node.shard.raft(1) {
                    eprintln!(
                        "t{} n{id} run={} awake={} {:?} term={} lead={} vote={}",
                        self.now,
                        self.runs(id),
                        node.shard.is_awake(1),
                        r.role(),
                        r.term(),
                        r.leader(),
                        r.status().vote
                    );
                }
            }
        }
        self.check_safety();
    }

    /// One loop iteration of a node: collect one batch, write it, sync with some probability.
    fn run_loop(&mut self, id: NodeId) {
        let sync_now = self.dice.chance(0.7);
        let node = self.nodes.get_mut(&id).unwrap();
        let mut outgoing: Vec<(NodeId, Vec<Message>)> = Vec::new();
        let mut applied = Vec::new();
        // Grant some waiting groups their next entry (a fetch completing).
        let waiting: Vec<GroupId> = shard_machine(&mut node.shard)
            .waiting
            .iter()
            .copied()
            .collect();
        for group in waiting {
            if !self.dice.chance(self.grant_chance) {
                continue;
            }
            let next = node.shard.applied(group).unwrap_or(0) + 1 + self.dice.below(8);
            let machine = shard_machine(&mut node.shard);
            machine.waiting.remove(&group);
            self.holds += 1;
            machine.granted.insert(group, next);
            node.shard.resume_apply(group);
        }
        let mut restored = Vec::new();
        let mut collected = node.shard.collect(false);
        if let Some(batch) = collected.as_mut() {
            // Sent and asked for at collect, as on a node (before any hold).
            outgoing.extend(std::mem::take(&mut batch.send_now));
            for group in std::mem::take(&mut batch.snapshots_wanted) {
                if self
                    .image_reads
                    .iter()
                    .any(|&(_, n, g)| n == id && g == group)
                {
                    self.failures.push(format!(
                        "node {id} group {group}: two image reads outstanding"
                    ));
                }
                let at = self.now + self.image_dice.pick(&[0, 0, 1, 4, 15]);
                self.image_reads.push((at, id, group));
            }
        }
        // A batch of applies alone may wait for the next one; a held batch is written with the
        // next one collected, or alone now and then (the node's deadline).
        let to_write = match (node.held.take(), collected) {
            (Some(mut earlier), Some(later)) => {
                earlier.absorb(later);
                Some(earlier)
            }
            (Some(earlier), None) => {
                if self.hold_dice.chance(0.3) {
                    Some(earlier)
                } else {
                    node.held = Some(earlier);
                    None
                }
            }
            (None, collected) => collected,
        };
        let to_write = match to_write {
            Some(batch) if batch.may_wait() && self.hold_dice.chance(self.hold_chance) => {
                node.held = Some(batch);
                self.batches_held += 1;
                None
            }
            other => other,
        };
        if let Some(batch) = to_write {
            node.backend.write(&batch.write).expect("write");
            // A snapshot replaced the group's data: the machine continues from its digest.
            for &(group, index) in &batch.restored {
                let (at, digest) = stored_digest(&node.backend, group).expect("snapshot digest");
                assert_eq!(at, index, "snapshot digest at the snapshot index");
                shard_machine(&mut node.shard)
                    .digests
                    .insert(group, (index, digest));
                restored.push((group, index, digest));
                self.restores += 1;
            }
            applied = batch.applied;
            // As on a node: a batch with nothing that must be durable is reported persisted once
            // written, unless an earlier one still waits for its sync.
            if !batch.write.needs_sync() && node.unsynced.is_empty() {
                outgoing.extend(node.shard.persisted(batch.token));
            } else {
                node.unsynced.push_back(batch.token);
            }
        }
        // Compact some logs: at the node's policy's points (a leader where its followers
        // hold the log, small thresholds so that both rules fire), or at random up to what is
        // applied in a written batch (storage's data covers it; any such point is safe).
        for group in node.shard.group_ids() {
            if self.dice.chance(0.5) {
                if let Some(index) = node.shard.compaction_point(group, &SIM_COMPACTION) {
                    node.shard
                        .compact(group, index)
                        .expect("compaction at the policy's point");
                    self.compactions += 1;
                }
                continue;
            }
            let long = node.shard.raft(group).is_some_and(|r| r.log_len() > 6);
            if !long || !self.dice.chance(0.05) {
                continue;
            }
            let index = node.shard.written_applied(group).unwrap();
            if index < node.shard.raft(group).unwrap().first_index() {
                continue;
            }
            node.shard
                .compact(group, index)
                .expect("compaction at a written applied index");
            self.compactions += 1;
        }
        self.answer_image_reads(id);
        let node = self.nodes.get_mut(&id).unwrap();
        if sync_now && !node.unsynced.is_empty() {
            node.backend
                .write(&kahuna::storage::WriteBatch::new(true))
                .expect("sync");
            while let Some(token) = node.unsynced.pop_front() {
                outgoing.extend(node.shard.persisted(token));
            }
        }
        for (group, index, digest) in restored {
            self.check_digest(id, group, index, digest);
        }
        for (group, entries) in applied {
            for entry in entries {
                self.check_apply(id, group, &entry);
            }
            let node = self.nodes.get_mut(&id).unwrap();
            let (index, digest) = shard_machine(&mut node.shard).digests[&group];
            self.check_digest(id, group, index, digest);
        }
        for (to, messages) in outgoing {
            self.send(id, to, messages);
        }
    }

    /// Answers `id`'s due image reads from its storage, as the node does (a read sometimes
    /// fails: the leader must ask again).
    fn answer_image_reads(&mut self, id: NodeId) {
        let now = self.now;
        let mut due = Vec::new();
        self.image_reads.retain(|&(at, node, group)| {
            let is_due = node == id && at <= now;
            if is_due {
                due.push(group);
            }
            !is_due
        });
        let node = self.nodes.get_mut(&id).unwrap();
        for group in due {
            if self.image_dice.chance(0.1) {
                node.shard.snapshot_unavailable(group);
                continue;
            }
            let (meta, data) = image(&node.backend, group);
            match node.shard.provide_snapshot(group, Snapshot { meta, data }) {
                Ok(()) => self.images_taken += 1,
                Err(ShardError::Raft(RaftError::SnapshotRefused { .. })) => {
                    self.images_refused += 1
                }
                Err(error) => self
                    .failures
                    .push(format!("node {id} group {group}: image answer: {error}")),
            }
        }
    }

    /// Every replica's hash chain over a group's applied entries (snapshots included) agrees
    /// at every index.
    fn check_digest(&mut self, id: NodeId, group: GroupId, index: Index, digest: u64) {
        let seen = *self.chain.entry((group, index)).or_insert(digest);
        if seen != digest {
            self.failures.push(format!(
                "State Machine Safety: node {id} group {group} has another state at {index}"
            ));
        }
    }

    fn check_apply(&mut self, id: NodeId, group: GroupId, entry: &Entry) {
        if entry.kind == EntryKind::Normal && entry.data.len() >= 8 {
            let proposal = u64::from_be_bytes(entry.data[..8].try_into().unwrap());
            self.applied_ids
                .entry((group, proposal))
                .or_insert(entry.index);
        }
        let hash = entry_hash(entry);
        let seen = *self
            .applied_digest
            .entry((group, entry.index))
            .or_insert(hash);
        if seen != hash {
            self.failures.push(format!(
                "State Machine Safety: node {id} group {group} applied another entry at {}",
                entry.index
            ));
        }
    }

    fn check_safety(&mut self) {
        for (&id, node) in &self.nodes {
            if !node.up {
                continue;
            }
            for group in node.shard.group_ids() {
                let raft = node.shard.raft(group).unwrap();
                if raft.is_leader() {
                    let leader = *self.leaders.entry((group, raft.term())).or_insert(id);
                    if leader != id {
                        self.failures.push(format!(
                            "Election Safety: group {group} term {}: {leader} and {id}",
                            raft.term()
                        ));
                    }
                }
            }
        }
    }

    fn inject_faults(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let pick = |dice: &mut Dice| ids[dice.below(ids.len() as u64) as usize];
        // Prefer the nodes leading sleeping groups: that is where quiescence bugs live.
        let sleeping_leader = (1..=self.groups)
            .filter_map(|g| {
                self.leader_of(g)
                    .filter(|&l| !self.nodes[&l].shard.is_awake(g))
            })
            .next();
        if self.dice.chance(0.004) {
            let victim = sleeping_leader.unwrap_or_else(|| pick(&mut self.dice));
            self.crash(victim);
        }
        if self.dice.chance(0.02) {
            let down: Vec<NodeId> = ids
                .iter()
                .copied()
                .filter(|id| !self.nodes[id].up)
                .collect();
            if let Some(&id) = down.first() {
                self.restart(id);
            }
        }
        if self.dice.chance(0.004) {
            let victim = sleeping_leader.unwrap_or_else(|| pick(&mut self.dice));
            let pause = 5 + self.dice.below(40);
            self.nodes.get_mut(&victim).unwrap().paused_until = self.now + pause;
        }
        if self.dice.chance(0.004) {
            self.cuts.clear();
            match self.dice.below(3) {
                0 => {}
                1 => {
                    let victim = sleeping_leader.unwrap_or_else(|| pick(&mut self.dice));
                    for &other in &ids {
                        if other != victim {
                            self.cuts.insert((victim, other));
                            self.cuts.insert((other, victim));
                        }
                    }
                }
                _ => {
                    let a = pick(&mut self.dice);
                    let b = pick(&mut self.dice);
                    if a != b {
                        self.cuts.insert((a, b));
                    }
                }
            }
        }
        // Bursts of proposals separated by quiet spells, so groups hibernate in between.
        if (self.now / 150) % 2 == 0 && self.dice.chance(0.3) {
            let group = 1 + self.dice.below(self.groups);
            self.propose_new(group);
        }
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        if node.up {
            node.up = false;
            node.unsynced.clear();
            node.held = None;
            node.backend.crash();
            // Reads it had started die with it.
            self.image_reads.retain(|&(_, node, _)| node != id);
        }
    }

    fn restart(&mut self, id: NodeId) {
        if self.nodes[&id].up {
            return;
        }
        let backend = std::mem::replace(
            &mut self.nodes.get_mut(&id).unwrap().backend,
            MemoryBackend::in_memory(),
        );
        let node = self.start_node(id, backend);
        self.nodes.insert(id, node);
    }

    fn propose_new(&mut self, group: GroupId) {
        let id = self.next_proposal;
        self.next_proposal += 1;
        if self.propose(group, id) {
            self.proposals.insert(id, group);
        }
    }

    fn propose(&mut self, group: GroupId, id: u64) -> bool {
        let Some(leader) = self.leader_of(group) else {
            return false;
        };
        let data = Bytes::from(id.to_be_bytes().to_vec());
        self.nodes
            .get_mut(&leader)
            .unwrap()
            .shard
            .propose(group, data)
            .is_ok()
    }

    fn applied_everywhere(&self, group: GroupId, index: Index) -> bool {
        self.conf[&group].members().all(|id| {
            let node = &self.nodes[&id];
            node.up && node.shard.raft(group).is_some_and(|r| r.applied() >= index)
        })
    }

    fn heal(&mut self) {
        self.cuts.clear();
        self.loss = 0.0;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.restart(id);
            self.nodes.get_mut(&id).unwrap().paused_until = 0;
        }
    }

    /// Runs healed until every proposal is applied on every member; false on timeout.
    fn settle(&mut self, ticks: u64) -> bool {
        for _ in 0..ticks {
            self.step(false);
            if self.now % 20 == 0 {
                let missing: Vec<(u64, GroupId)> = self
                    .proposals
                    .iter()
                    .filter(|(&p, &g)| {
                        !self
                            .applied_ids
                            .get(&(g, p))
                            .is_some_and(|&i| self.applied_everywhere(g, i))
                    })
                    .map(|(&p, &g)| (p, g))
                    .collect();
                if missing.is_empty() {
                    return true;
                }
                for (proposal, group) in missing {
                    if !self.applied_ids.contains_key(&(group, proposal)) {
                        self.propose(group, proposal);
                    }
                }
            }
        }
        false
    }

    fn debug_dump(&self) {
        if std::env::var("KAHUNA_SHARD_SIM_DEBUG").is_err() {
            return;
        }
        for (&id, node) in &self.nodes {
            for g in node.shard.group_ids() {
                let r = node.shard.raft(g).unwrap();
                eprintln!(
                    "n{id} up={} g{g} awake={} quiescent={} {:?} progress={:?}",
                    node.up,
                    node.shard.is_awake(g),
                    r.is_quiescent(),
                    r.status(),
                    self.conf[&g]
                        .members()
                        .map(|m| r.progress_of(m))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    fn asleep(&self) -> usize {
        self.nodes
            .values()
            .map(|n| {
                n.shard
                    .group_ids()
                    .iter()
                    .filter(|&&g| !n.shard.is_awake(g))
                    .count()
            })
            .sum()
    }

    fn run(&mut self) -> Result<String, String> {
        for _ in 0..2000 {
            self.step(true);
            self.slept = self.slept.max(self.asleep() as u64);
            if !self.failures.is_empty() {
                return Err(self.failures.join("; "));
            }
        }
        self.heal();
        if !self.settle(2000) {
            self.debug_dump();
            return Err("liveness: proposals not applied everywhere after healing".into());
        }
        // Quiet: the groups must fall asleep...
        for _ in 0..300 {
            self.step(false);
        }
        let asleep = self.asleep();
        let replicas: usize = self.nodes.values().map(|n| n.shard.group_ids().len()).sum();
        self.debug_dump();
        // ...with every apply written: deferred applies do not wait forever.
        for (&id, node) in &self.nodes {
            for group in node.shard.group_ids() {
                let (written, applied) = (
                    node.shard.written_applied(group).unwrap(),
                    node.shard.applied(group).unwrap(),
                );
                if written != applied {
                    return Err(format!(
                        "deferred applies: node {id} group {group} wrote {written} of {applied} after a quiet spell"
                    ));
                }
            }
        }
        if asleep < replicas / 2 {
            return Err(format!(
                "hibernation: only {asleep} of {replicas} replicas asleep after a quiet spell"
            ));
        }
        // ...and a sleeping group whose leader dies must elect a new one and commit.
        let group = 1;
        let Some(old_leader) = self.leader_of(group) else {
            self.debug_dump();
            return Err("no leader after settling".into());
        };
        self.crash(old_leader);
        let mut new_leader = None;
        // Two survivors can split votes a few times in a row; the bound is generous.
        for _ in 0..1000 {
            self.step(false);
            if let Some(leader) = self.leader_of(group).filter(|&l| l != old_leader) {
                new_leader = Some(leader);
                break;
            }
        }
        let Some(new_leader) = new_leader else {
            return Err(format!(
                "failover: sleeping group {group} elected no leader after node {old_leader} died"
            ));
        };
        self.propose_new(group);
        self.restart(old_leader);
        if !self.settle(2000) {
            return Err("liveness after failover: proposals not applied everywhere".into());
        }
        if !self.failures.is_empty() {
            return Err(self.failures.join("; "));
        }
        Ok(format!(
            "{} proposals={} max_asleep={} asleep_when_quiet={asleep}/{replicas} failover {old_leader}->{new_leader} compactions={} restores={} holds={} batches_held={} images_taken={} images_refused={}",
            self.describe(),
            self.proposals.len(),
            self.slept,
            self.compactions,
            self.restores,
            self.holds,
            self.batches_held,
            self.images_taken,
            self.images_refused
        ))
    }
}

/// The group's stored digest: (applied index, hash chain).
fn stored_digest(backend: &MemoryBackend, group: GroupId) -> Option<(Index, u64)> {
    let value = backend.kv_get(group, DIGEST_KEY).expect("kv read")?;
    let index = u64::from_be_bytes(value[..8].try_into().unwrap());
    let digest = u64::from_be_bytes(value[8..16].try_into().unwrap());
    Some((index, digest))
}

/// An image of the group's kv data as written, with the position it covers.
fn image(backend: &MemoryBackend, group: GroupId) -> (SnapshotMeta, Bytes) {
    let (meta, chunks) = backend
        .kv_snapshot(group, 1 << 16)
        .expect("snapshot")
        .read_all()
        .expect("read snapshot");
    let mut data = Vec::new();
    for chunk in chunks {
        data.extend_from_slice(&chunk);
    }
    (meta, Bytes::from(data))
}

fn shard_machine(shard: &mut Shard<DigestMachine>) -> &mut DigestMachine {
    shard.state_machine_mut()
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("KAHUNA_SHARD_SIM_SEED") {
        return vec![seed.parse().expect("a number")];
    }
    if let Ok(count) = std::env::var("KAHUNA_SHARD_SIM_SEEDS") {
        let count: u64 = count.parse().expect("a number");
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        return (0..count)
            .map(|k| base.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 1)
            .collect();
    }
    // Fixed seeds, plus seeds that once found quiescence bugs (kept as regressions):
    // 2486311604276037457: a follower with a stale uncommitted suffix stayed awake and timed out
    //   under a sleeping leader; 5495325393129965013: a restarted leader with a too-short log
    //   campaigned while the others slept trusting it; 158985378458776511: a sleeping leader
    //   ignored pre-votes from a follower that had lost track of it; 1054718827274966167: a
    //   restarted follower's held entries applied after the core installed a snapshot past them
    //   looked up their membership below the log start; 14 and 26: applies deferred below a
    //   snapshot the core installed were written after it (caught with the discard removed).
    let mut seeds: Vec<u64> = (1..=12).collect();
    seeds.extend([
        14,
        26,
        2486311604276037457,
        5495325393129965013,
        158985378458776511,
        1054718827274966167,
    ]);
    seeds
}

#[test]
fn shards_hibernate_and_fail_over_under_faults() {
    let seeds = seeds();
    let mut failures = Vec::new();
    for &seed in &seeds {
        let mut sim = Sim::new(seed);
        match sim.run() {
            Ok(line) => println!("ok   {line}"),
            Err(what) => {
                println!("FAIL {}: {what}\n  replay: KAHUNA_SHARD_SIM_SEED={seed} cargo test --test shard_simulation -- --nocapture", sim.describe());
                failures.push(seed);
            }
        }
    }
    println!(
        "shard simulation: {} seeds, {} violations",
        seeds.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}

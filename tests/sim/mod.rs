//! A deterministic simulator for the Raft core: many nodes, each hosting several groups, over
//! a simulated network (loss, duplication, reordering, delay, one-way and two-way partitions),
//! a simulated disk (writes are lost on a crash until synced) and a logical clock, all driven
//! by one seed. After every step it checks the Raft safety properties; after healing it checks
//! that every proposal commits and applies on every live member (liveness).
//!
//! It runs the real `kahuna::raft` code; only time, network and disk are faked.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;

use bytes::Bytes;
use kahuna::raft::*;

/// Deterministic generator for the simulator's own choices (separate from the replicas').
pub struct Dice(SeededRng);

impl Dice {
    pub fn new(seed: u64) -> Dice {
        Dice(SeededRng::new(seed))
    }
    pub fn chance(&mut self, probability: f64) -> bool {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= probability
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.range(0, n.max(1))
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: usize,
    pub groups: usize,
    /// Steps of the fault phase; each step is one tick of logical time.
    pub steps: u64,
    /// Ticks the healed cluster gets to commit and apply every proposal.
    pub liveness_ticks: u64,
    pub loss: f64,
    pub duplication: f64,
    /// Links are FIFO (like TCP) except that a message overtakes others with this probability.
    pub reorder: f64,
    pub delay_max: u64,
    pub crash_probability: f64,
    pub partition_probability: f64,
    pub proposal_probability: f64,
    pub transfer_probability: f64,
    pub conf_change_probability: f64,
    pub sync_probability: f64,
    /// Compact a replica's log once this many applied entries sit in memory.
    pub compact_after: usize,
    pub append_bytes_max: usize,
    pub snapshot_chunk_bytes: usize,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// `Config::commit_notice_ticks`: 0 is textbook Raft; above, followers learn commit
    /// advances late unless an append carries them.
    pub commit_notice_ticks: u32,
    pub safety_fault: Option<SafetyFault>,
}

impl SimOptions {
    /// Options drawn from the seed, so different seeds explore different fault mixes.
    pub fn from_seed(seed: u64) -> SimOptions {
        let mut dice = Dice::new(seed ^ 0x0005_eed0_f097_1095);
        SimOptions {
            seed,
            nodes: dice.pick(&[3, 4, 5]),
            groups: dice.pick(&[1, 2, 4]),
            steps: 1500,
            liveness_ticks: 2000,
            loss: dice.pick(&[0.0, 0.02, 0.1]),
            duplication: dice.pick(&[0.0, 0.02, 0.05]),
            reorder: dice.pick(&[0.0, 0.01, 0.05]),
            delay_max: dice.pick(&[1, 3, 8]),
            crash_probability: dice.pick(&[0.0, 0.002, 0.01]),
            partition_probability: dice.pick(&[0.0, 0.005, 0.02]),
            proposal_probability: dice.pick(&[0.2, 0.5, 1.0]),
            transfer_probability: dice.pick(&[0.0, 0.002]),
            conf_change_probability: dice.pick(&[0.0, 0.003]),
            sync_probability: dice.pick(&[0.3, 0.8]),
            compact_after: dice.pick(&[8, 32, 1000]),
            append_bytes_max: dice.pick(&[100, 4096]),
            snapshot_chunk_bytes: dice.pick(&[7, 1024]),
            pre_vote: !dice.chance(0.2),
            check_quorum: !dice.chance(0.2),
            // Drawn last, so the draws above are what they were for every earlier seed.
            commit_notice_ticks: dice.pick(&[0, 0, 1, 3, 9]),
            safety_fault: None,
        }
    }
}

impl fmt::Display for SimOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} nodes={} groups={} steps={} loss={} dup={} reorder={} delay_max={} crash={} partition={} \
             propose={} transfer={} conf={} sync={} compact_after={} append_bytes_max={} chunk={} \
             pre_vote={} check_quorum={} commit_notice={} fault={:?}",
            self.seed,
            self.nodes,
            self.groups,
            self.steps,
            self.loss,
            self.duplication,
            self.reorder,
            self.delay_max,
            self.crash_probability,
            self.partition_probability,
            self.proposal_probability,
            self.transfer_probability,
            self.conf_change_probability,
            self.sync_probability,
            self.compact_after,
            self.append_bytes_max,
            self.snapshot_chunk_bytes,
            self.pre_vote,
            self.check_quorum,
            self.commit_notice_ticks,
            self.safety_fault
        )
    }
}

/// The replicated state machine: a hash chain over every applied entry. Two replicas that
/// applied the same prefix have the same digest; the snapshot is the digest itself, with the
/// position (index and term) it covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct StateMachine {
    applied: Index,
    applied_term: Term,
    digest: u64,
}

/// One step of the hash chains the simulators use to compare what replicas applied.
pub fn mix(mut h: u64, value: u64) -> u64 {
    h ^= value
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(h << 6)
        .wrapping_add(h >> 2);
    h.wrapping_mul(0xff51_afd7_ed55_8ccd)
}

/// A hash of everything that identifies an entry (index, term, kind, data).
pub fn entry_hash(entry: &Entry) -> u64 {
    let mut h = mix(entry.index, entry.term);
    h = mix(h, entry.kind as u64);
    for chunk in entry.data.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix(h, u64::from_le_bytes(word));
    }
    mix(h, entry.data.len() as u64)
}

impl StateMachine {
    fn apply(&mut self, entry: &Entry) {
        assert_eq!(
            entry.index,
            self.applied + 1,
            "state machine applies in order"
        );
        self.applied = entry.index;
        self.applied_term = entry.term;
        self.digest = mix(self.digest, entry_hash(entry));
    }
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.applied.to_be_bytes());
        out.extend_from_slice(&self.applied_term.to_be_bytes());
        out.extend_from_slice(&self.digest.to_be_bytes());
        Bytes::from(out)
    }
    fn decode(data: &[u8]) -> StateMachine {
        StateMachine {
            applied: u64::from_be_bytes(data[0..8].try_into().unwrap()),
            applied_term: u64::from_be_bytes(data[8..16].try_into().unwrap()),
            digest: u64::from_be_bytes(data[16..24].try_into().unwrap()),
        }
    }
}

/// What the simulated disk holds durably for one replica.
#[derive(Clone, Debug, Default)]
struct Durable {
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
    entries: Vec<Entry>,
    state_machine: StateMachine,
}

enum Write {
    Ready {
        number: u64,
        hard_state: Option<HardState>,
        /// An installed snapshot's meta; its data is the `StateMachine` write that follows.
        snapshot: Option<SnapshotMeta>,
        entries: Vec<Entry>,
        messages: Vec<Message>,
    },
    StateMachine(StateMachine),
    Compact(SnapshotMeta),
}

impl Durable {
    fn apply(&mut self, write: &Write) {
        match write {
            Write::Ready {
                hard_state,
                snapshot,
                entries,
                ..
            } => {
                if let Some(snapshot) = snapshot {
                    self.snapshot = Some(snapshot.clone());
                    self.entries.clear();
                }
                if let Some(first) = entries.first() {
                    let base = self.snapshot.as_ref().map_or(0, |s| s.index);
                    assert!(
                        first.index > base,
                        "entry {} written at or below snapshot {base}",
                        first.index
                    );
                    self.entries.truncate((first.index - base - 1) as usize);
                    assert_eq!(
                        self.entries.len() as u64,
                        first.index - base - 1,
                        "durable log gap"
                    );
                    self.entries.extend(entries.iter().cloned());
                }
                if let Some(hard_state) = hard_state {
                    self.hard_state = *hard_state;
                }
            }
            Write::StateMachine(state_machine) => self.state_machine = *state_machine,
            Write::Compact(snapshot) => {
                let base = self.snapshot.as_ref().map_or(0, |s| s.index);
                if snapshot.index > base {
                    let drop = ((snapshot.index - base) as usize).min(self.entries.len());
                    self.entries.drain(..drop);
                    self.snapshot = Some(snapshot.clone());
                }
            }
        }
    }
}

struct Replica {
    raft: Raft,
    durable: Durable,
    /// Writes issued but not yet synced, in order: lost on a crash.
    unsynced: VecDeque<Write>,
    state_machine: StateMachine,
    last_committed: Index,
    /// Removed from its group and stopped by the harness (see `heal`): it neither ticks,
    /// processes a Ready nor receives messages.
    retired: bool,
}

struct Node {
    up: bool,
    replicas: BTreeMap<GroupId, Replica>,
}

/// A leader's request for a snapshot image (`Ready::snapshot_wanted`), answered at `at`.
struct ImageRead {
    at: u64,
    node: NodeId,
    group: GroupId,
}

struct InFlight {
    deliver_at: u64,
    order: u64,
    message: Message,
}

/// A safety or liveness violation, with the step it was found at.
#[derive(Debug, Clone)]
pub struct Violation {
    pub step: u64,
    pub what: String,
}

pub struct Simulation {
    pub options: SimOptions,
    dice: Dice,
    now: u64,
    nodes: BTreeMap<NodeId, Node>,
    initial_conf: BTreeMap<GroupId, ConfState>,
    network: Vec<InFlight>,
    message_order: u64,
    /// Latest delivery time scheduled on each link (keeps links FIFO).
    link_tail: HashMap<(NodeId, NodeId), u64>,
    /// One-way cuts: (from, to) pairs whose messages are dropped.
    cuts: BTreeSet<(NodeId, NodeId)>,
    // Global knowledge for the checks.
    leaders: HashMap<(GroupId, Term), NodeId>,
    /// Per group: for each committed index (from 1), the (term, entry hash) committed there,
    /// and the term of the replica that first reported it committed (an upper bound of the
    /// term in which it was committed: leaders of later terms must hold it).
    committed: BTreeMap<GroupId, Vec<(Term, u64, Term)>>,
    /// Per group: the state-machine digest after applying each index (from 1).
    applied_digests: BTreeMap<GroupId, Vec<u64>>,
    /// Per (group, index, term): the entry hash and the previous entry's term (Log Matching).
    seen_entries: HashMap<(GroupId, Index, Term), (u64, Option<Term>)>,
    proposals: BTreeMap<u64, GroupId>,
    /// First index at which each (group, proposal id) was applied by anyone.
    applied_ids: HashMap<(GroupId, u64), Index>,
    next_proposal: u64,
    /// Snapshot requests not yet answered (at most one per replica: the core's bound, checked).
    image_reads: Vec<ImageRead>,
    pub violations: Vec<Violation>,
    pub stats: SimStats,
}

#[derive(Debug, Default, Clone)]
pub struct SimStats {
    pub messages_delivered: u64,
    pub messages_dropped: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub elections: u64,
    pub proposals: u64,
    pub committed_entries: u64,
    pub snapshots_installed: u64,
    /// Snapshot images provided to leaders, refused by them, and reads that failed.
    pub images_taken: u64,
    pub images_refused: u64,
    pub image_reads_failed: u64,
    pub conf_changes: u64,
    pub transfers: u64,
}

impl Simulation {
    pub fn new(options: SimOptions) -> Simulation {
        let mut nodes = BTreeMap::new();
        let mut initial_conf = BTreeMap::new();
        let node_ids: Vec<NodeId> = (1..=options.nodes as u64).collect();
        for group in 1..=options.groups as u64 {
            // Three voters per group, placed round-robin so leadership spreads.
            let voters: Vec<NodeId> = (0..3)
                .map(|k| node_ids[((group as usize) + k) % node_ids.len()])
                .collect();
            initial_conf.insert(group, ConfState::new(voters, vec![]));
        }
        for &id in &node_ids {
            nodes.insert(
                id,
                Node {
                    up: true,
                    replicas: BTreeMap::new(),
                },
            );
        }
        let mut simulation = Simulation {
            dice: Dice::new(options.seed),
            options,
            now: 0,
            nodes,
            initial_conf,
            network: Vec::new(),
            message_order: 0,
            cuts: BTreeSet::new(),
            link_tail: HashMap::new(),
            leaders: HashMap::new(),
            committed: BTreeMap::new(),
            applied_digests: BTreeMap::new(),
            seen_entries: HashMap::new(),
            proposals: BTreeMap::new(),
            applied_ids: HashMap::new(),
            next_proposal: 1,
            image_reads: Vec::new(),
            violations: Vec::new(),
            stats: SimStats::default(),
        };
        for &id in &node_ids {
            for group in 1..=simulation.options.groups as u64 {
                let replica = simulation.start_replica(id, group, Durable::default());
                simulation
                    .nodes
                    .get_mut(&id)
                    .unwrap()
                    .replicas
                    .insert(group, replica);
            }
        }
        simulation
    }

    fn raft_config(&self, id: NodeId, group: GroupId, incarnation: u64) -> Config {
        Config {
            id,
            group,
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: self.options.pre_vote,
            check_quorum: self.options.check_quorum,
            commit_notice_ticks: self.options.commit_notice_ticks,
            inflight_max: 8,
            append_bytes_max: self.options.append_bytes_max,
            snapshot_chunk_bytes: self.options.snapshot_chunk_bytes,
            seed: self.options.seed.wrapping_mul(31).wrapping_add(incarnation),
            safety_fault: self.options.safety_fault,
            ..Config::default()
        }
    }

    fn start_replica(&mut self, id: NodeId, group: GroupId, durable: Durable) -> Replica {
        let conf = self.initial_conf[&group].clone();
        // Nodes outside the initial configuration start empty and may join later.
        let initial_conf = if conf.contains(id) {
            conf
        } else {
            ConfState::default()
        };
        let restore = RestoreState {
            hard_state: durable.hard_state,
            snapshot: durable.snapshot.clone(),
            entries: durable.entries.clone(),
            applied: durable.state_machine.applied,
            initial_conf,
        };
        let config = self.raft_config(id, group, self.now);
        let raft = Raft::new(config, restore).expect("restored state is valid");
        let last_committed = raft.committed();
        Replica {
            raft,
            state_machine: durable.state_machine,
            durable,
            unsynced: VecDeque::new(),
            last_committed,
            retired: false,
        }
    }

    fn violation(&mut self, what: String) {
        self.violations.push(Violation {
            step: self.now,
            what,
        });
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn up_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up)
            .map(|(&id, _)| id)
            .collect()
    }

    fn leader_of(&self, group: GroupId) -> Option<NodeId> {
        // The leader with the highest term among live replicas (a retired one is not live).
        self.nodes
            .iter()
            .filter(|(_, n)| n.up)
            .filter_map(|(&id, n)| n.replicas.get(&group).map(|r| (id, r)))
            .filter(|(_, replica)| !replica.retired)
            .map(|(id, replica)| (id, &replica.raft))
            .filter(|(_, raft)| raft.is_leader())
            .max_by_key(|(_, raft)| raft.term())
            .map(|(id, _)| id)
    }

    // ----- driving -----

    /// Runs the fault phase then the liveness phase. Returns the violations found.
    pub fn run(&mut self) -> Vec<Violation> {
        for _ in 0..self.options.steps {
            self.step_with_faults();
            if !self.violations.is_empty() {
                return self.violations.clone();
            }
        }
        self.heal();
        self.check_liveness();
        self.violations.clone()
    }

    fn step_with_faults(&mut self) {
        self.now += 1;
        self.maybe_inject_faults();
        if self.dice.chance(self.options.proposal_probability) {
            let group = 1 + self.dice.below(self.options.groups as u64);
            self.propose_new(group);
        }
        self.tick_all();
        self.deliver_due();
        self.sync_some(self.options.sync_probability);
        self.answer_image_reads();
        self.process_all();
        self.check_safety();
    }

    /// Answers the leaders' snapshot requests that are due, as a node's storage would, from an
    /// image of the state machine: usually as applied now, sometimes as last synced (which may
    /// be older than the leader's compaction point: stale), sometimes the read fails, and
    /// sometimes the image misstates its term (a forgery the leader must refuse).
    fn answer_image_reads(&mut self) {
        let now = self.now;
        let (due, later): (Vec<ImageRead>, Vec<ImageRead>) =
            self.image_reads.drain(..).partition(|read| read.at <= now);
        self.image_reads = later;
        for read in due {
            let choice = self.dice.below(10);
            let replica = self
                .nodes
                .get_mut(&read.node)
                .unwrap()
                .replicas
                .get_mut(&read.group)
                .unwrap();
            if choice == 0 {
                replica.raft.snapshot_unavailable();
                self.stats.image_reads_failed += 1;
                continue;
            }
            let mut state_machine = if choice <= 2 {
                replica.durable.state_machine
            } else {
                replica.state_machine
            };
            let forged = choice == 3;
            let raft = &replica.raft;
            let in_log = state_machine.applied >= raft.first_index().saturating_sub(1)
                && state_machine.applied <= raft.last_index();
            let conf_state = if in_log {
                raft.conf_state_at(state_machine.applied)
            } else {
                raft.conf_state().clone()
            };
            if forged {
                state_machine.applied_term += 1;
            }
            let image = Snapshot {
                meta: SnapshotMeta {
                    index: state_machine.applied,
                    term: state_machine.applied_term,
                    conf_state,
                },
                data: state_machine.encode(),
            };
            match replica.raft.provide_snapshot(image) {
                Ok(()) => self.stats.images_taken += 1,
                Err(RaftError::SnapshotRefused { .. }) => self.stats.images_refused += 1,
                Err(error) => panic!("unexpected answer to an image: {error}"),
            }
        }
    }

    fn maybe_inject_faults(&mut self) {
        let ids = self.node_ids();
        if self.dice.chance(self.options.crash_probability) {
            let id = self.dice.pick(&ids);
            if self.nodes[&id].up {
                self.crash(id);
            } else {
                self.restart(id);
            }
        }
        // Crashed nodes come back after a while.
        if self.dice.chance(0.02) {
            let down: Vec<NodeId> = ids
                .iter()
                .copied()
                .filter(|id| !self.nodes[id].up)
                .collect();
            if !down.is_empty() {
                let id = self.dice.pick(&down);
                self.restart(id);
            }
        }
        if self.dice.chance(self.options.partition_probability) {
            self.change_partition();
        }
        if self.dice.chance(self.options.transfer_probability) {
            let group = 1 + self.dice.below(self.options.groups as u64);
            self.transfer_leadership(group);
        }
        if self.dice.chance(self.options.conf_change_probability) {
            let group = 1 + self.dice.below(self.options.groups as u64);
            self.change_membership(group);
        }
    }

    fn change_partition(&mut self) {
        self.stats.partitions += 1;
        let ids = self.node_ids();
        self.cuts.clear();
        match self.dice.below(5) {
            0 => {} // heal
            1 => {
                // Isolate one node both ways (often a leader).
                let group = 1 + self.dice.below(self.options.groups as u64);
                let victim = match self.leader_of(group) {
                    Some(leader) if self.dice.chance(0.7) => leader,
                    _ => self.dice.pick(&ids),
                };
                for &other in &ids {
                    if other != victim {
                        self.cuts.insert((victim, other));
                        self.cuts.insert((other, victim));
                    }
                }
            }
            2 => {
                // Majority / minority split.
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    let j = self.dice.below(i as u64 + 1) as usize;
                    shuffled.swap(i, j);
                }
                let minority = shuffled.len() / 2;
                for &a in &shuffled[..minority] {
                    for &b in &shuffled[minority..] {
                        self.cuts.insert((a, b));
                        self.cuts.insert((b, a));
                    }
                }
            }
            3 => {
                // One-way cuts.
                for _ in 0..1 + self.dice.below(3) {
                    let a = self.dice.pick(&ids);
                    let b = self.dice.pick(&ids);
                    if a != b {
                        self.cuts.insert((a, b));
                    }
                }
            }
            _ => {
                // A leader that can send but not hear (its followers' answers are lost).
                let group = 1 + self.dice.below(self.options.groups as u64);
                if let Some(leader) = self.leader_of(group) {
                    for &other in &ids {
                        if other != leader {
                            self.cuts.insert((other, leader));
                        }
                    }
                }
            }
        }
    }

    pub fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        if !node.up {
            return;
        }
        self.stats.crashes += 1;
        node.up = false;
        for replica in node.replicas.values_mut() {
            // Unsynced writes are lost.
            replica.unsynced.clear();
        }
        // So are the image reads it had started.
        self.image_reads.retain(|read| read.node != id);
    }

    pub fn restart(&mut self, id: NodeId) {
        if self.nodes[&id].up {
            return;
        }
        let groups: Vec<GroupId> = self.nodes[&id].replicas.keys().copied().collect();
        for group in groups {
            let durable = self.nodes[&id].replicas[&group].durable.clone();
            let replica = self.start_replica(id, group, durable);
            self.nodes
                .get_mut(&id)
                .unwrap()
                .replicas
                .insert(group, replica);
        }
        self.nodes.get_mut(&id).unwrap().up = true;
    }

    fn transfer_leadership(&mut self, group: GroupId) {
        let Some(leader) = self.leader_of(group) else {
            return;
        };
        let voters = self.nodes[&leader].replicas[&group]
            .raft
            .conf_state()
            .voters
            .clone();
        let targets: Vec<NodeId> = voters.into_iter().filter(|&v| v != leader).collect();
        if targets.is_empty() {
            return;
        }
        let target = self.dice.pick(&targets);
        let replica = self
            .nodes
            .get_mut(&leader)
            .unwrap()
            .replicas
            .get_mut(&group)
            .unwrap();
        if replica.raft.transfer_leader(target).is_ok() {
            self.stats.transfers += 1;
        }
    }

    fn change_membership(&mut self, group: GroupId) {
        let Some(leader) = self.leader_of(group) else {
            return;
        };
        let ids = self.node_ids();
        let conf = self.nodes[&leader].replicas[&group]
            .raft
            .conf_state()
            .clone();
        let outsiders: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|id| !conf.contains(*id))
            .collect();
        let mut voters = conf.voters.clone();
        let mut learners = conf.learners.clone();
        if let Some(&learner) = learners.first() {
            // Promote a learner to voter.
            learners.retain(|&id| id != learner);
            voters.push(learner);
        } else if voters.len() <= 3 && !outsiders.is_empty() {
            learners.push(self.dice.pick(&outsiders));
        } else if voters.len() > 3 || (voters.len() == 3 && self.dice.chance(0.2)) {
            let victim = self.dice.pick(&voters);
            voters.retain(|&id| id != victim);
        } else {
            return;
        }
        let replica = self
            .nodes
            .get_mut(&leader)
            .unwrap()
            .replicas
            .get_mut(&group)
            .unwrap();
        if replica
            .raft
            .propose_conf_change(ConfState::new(voters, learners))
            .is_ok()
        {
            self.stats.conf_changes += 1;
        }
    }

    fn propose_new(&mut self, group: GroupId) {
        let id = self.next_proposal;
        self.next_proposal += 1;
        if self.propose_id(group, id) {
            self.proposals.insert(id, group);
            self.stats.proposals += 1;
        }
    }

    /// Proposes proposal `id` through whichever live replica leads `group`.
    fn propose_id(&mut self, group: GroupId, id: u64) -> bool {
        let Some(leader) = self.leader_of(group) else {
            return false;
        };
        let mut data = id.to_be_bytes().to_vec();
        data.resize(8 + (id % 24) as usize, 0xAB);
        let replica = self
            .nodes
            .get_mut(&leader)
            .unwrap()
            .replicas
            .get_mut(&group)
            .unwrap();
        replica.raft.propose(Bytes::from(data)).is_ok()
    }

    fn tick_all(&mut self) {
        for node in self.nodes.values_mut().filter(|n| n.up) {
            for replica in node.replicas.values_mut().filter(|r| !r.retired) {
                replica.raft.tick();
            }
        }
    }

    fn send(&mut self, message: Message, loss: bool) {
        let (from, to) = (message.from, message.to);
        if self.cuts.contains(&(from, to)) || (loss && self.dice.chance(self.options.loss)) {
            self.stats.messages_dropped += 1;
            return;
        }
        let copies = if loss && self.dice.chance(self.options.duplication) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + self.dice.below(self.options.delay_max);
            let tail = self.link_tail.entry((from, to)).or_insert(0);
            let deliver_at = if self.dice.chance(self.options.reorder) {
                self.now + delay
            } else {
                let at = (self.now + delay).max(*tail);
                *tail = at;
                at
            };
            self.message_order += 1;
            self.network.push(InFlight {
                deliver_at,
                order: self.message_order,
                message: message.clone(),
            });
        }
    }

    fn deliver_due(&mut self) {
        let now = self.now;
        let mut due: Vec<InFlight> = Vec::new();
        let mut index = 0;
        while index < self.network.len() {
            if self.network[index].deliver_at <= now {
                due.push(self.network.swap_remove(index));
            } else {
                index += 1;
            }
        }
        due.sort_by_key(|m| (m.deliver_at, m.order));
        for in_flight in due {
            let message = in_flight.message;
            if self.cuts.contains(&(message.from, message.to)) {
                self.stats.messages_dropped += 1;
                continue;
            }
            let Some(node) = self.nodes.get_mut(&message.to) else {
                continue;
            };
            if !node.up {
                self.stats.messages_dropped += 1;
                continue;
            }
            let Some(replica) = node.replicas.get_mut(&message.group) else {
                continue;
            };
            if replica.retired {
                self.stats.messages_dropped += 1;
                continue;
            }
            self.stats.messages_delivered += 1;
            replica
                .raft
                .step(message)
                .expect("routed to the right replica");
        }
    }

    /// Makes unsynced writes durable on some nodes, then releases what waited for them.
    fn sync_some(&mut self, probability: f64) {
        let ids = self.up_nodes();
        for id in ids {
            if self.dice.chance(probability) {
                self.sync_node(id);
            }
        }
    }

    fn sync_node(&mut self, id: NodeId) {
        let groups: Vec<GroupId> = self.nodes[&id].replicas.keys().copied().collect();
        for group in groups {
            let replica = self
                .nodes
                .get_mut(&id)
                .unwrap()
                .replicas
                .get_mut(&group)
                .unwrap();
            let mut released = Vec::new();
            let mut last_number = None;
            while let Some(write) = replica.unsynced.pop_front() {
                replica.durable.apply(&write);
                if let Write::Ready {
                    number, messages, ..
                } = write
                {
                    last_number = Some(number);
                    released.extend(messages);
                }
            }
            if let Some(number) = last_number {
                replica.raft.on_persisted(number);
            }
            for message in released {
                self.send(message, true);
            }
        }
    }

    fn process_all(&mut self) {
        let ids = self.up_nodes();
        for id in ids {
            let groups: Vec<GroupId> = self.nodes[&id].replicas.keys().copied().collect();
            for group in groups {
                self.process_replica(id, group);
            }
        }
    }

    fn process_replica(&mut self, id: NodeId, group: GroupId) {
        loop {
            let replica = self
                .nodes
                .get_mut(&id)
                .unwrap()
                .replicas
                .get_mut(&group)
                .unwrap();
            if replica.retired || !replica.raft.has_ready() {
                return;
            }
            let ready = replica.raft.ready();
            let mut newly_applied: Vec<(Index, u64)> = Vec::new();
            let mut snapshot_installed = None;
            if let Some(snapshot) = &ready.snapshot {
                replica.state_machine = StateMachine::decode(&snapshot.data);
                snapshot_installed = Some((snapshot.meta.clone(), replica.state_machine));
            }
            let mut applied_ids = Vec::new();
            for entry in &ready.committed_entries {
                replica.state_machine.apply(entry);
                newly_applied.push((entry.index, replica.state_machine.digest));
                if entry.kind == EntryKind::Normal && entry.data.len() >= 8 {
                    applied_ids.push((
                        u64::from_be_bytes(entry.data[..8].try_into().unwrap()),
                        entry.index,
                    ));
                }
            }
            let state_machine = replica.state_machine;
            replica.unsynced.push_back(Write::Ready {
                number: ready.number,
                hard_state: ready.hard_state,
                snapshot: ready.snapshot.as_ref().map(|s| s.meta.clone()),
                entries: ready.entries.clone(),
                messages: ready.persisted_messages,
            });
            if !ready.committed_entries.is_empty() || snapshot_installed.is_some() {
                replica
                    .unsynced
                    .push_back(Write::StateMachine(state_machine));
            }
            // Compact once enough applied entries sit in memory.
            let applied = replica.raft.applied();
            let first = replica.raft.first_index();
            if applied >= first && (applied - first + 1) as usize >= self.options.compact_after {
                debug_assert_eq!(replica.state_machine.applied, applied);
                let meta = replica
                    .raft
                    .compact(applied)
                    .expect("compaction of applied entries");
                replica.unsynced.push_back(Write::Compact(meta));
            }
            if ready.snapshot_wanted {
                // The image is read later, as a node reads it off its reactor.
                let at = self.now + self.dice.pick(&[0, 0, 1, 3, 12]);
                if self
                    .image_reads
                    .iter()
                    .any(|read| read.node == id && read.group == group)
                {
                    let what = format!("node {id} group {group}: two image requests outstanding");
                    self.violation(what);
                }
                self.image_reads.push(ImageRead {
                    at,
                    node: id,
                    group,
                });
            }
            if let Some(soft) = ready.soft_state {
                if soft.role == Role::Leader {
                    self.stats.elections += 1;
                }
            }
            for message in ready.messages {
                self.send(message, true);
            }
            if let Some((meta, state_machine)) = snapshot_installed {
                self.stats.snapshots_installed += 1;
                self.check_snapshot_digest(id, group, &meta, state_machine);
            }
            for (proposal, index) in applied_ids {
                self.applied_ids.entry((group, proposal)).or_insert(index);
            }
            for (index, digest) in newly_applied {
                self.check_applied(id, group, index, digest);
            }
        }
    }

    // ----- checks -----

    fn check_applied(&mut self, id: NodeId, group: GroupId, index: Index, digest: u64) {
        let digests = self.applied_digests.entry(group).or_default();
        let position = (index - 1) as usize;
        if position < digests.len() {
            if digests[position] != digest {
                let what = format!(
                    "State Machine Safety: node {id} group {group} applied a different entry at index {index}"
                );
                self.violation(what);
            }
        } else if position == digests.len() {
            digests.push(digest);
            self.stats.committed_entries += 1;
        } else {
            // A replica applied beyond what anyone else did, after a snapshot covering a gap
            // nobody applied individually: record with a placeholder for the gap.
            digests.resize(position, 0);
            digests.push(digest);
        }
    }

    fn check_snapshot_digest(
        &mut self,
        id: NodeId,
        group: GroupId,
        meta: &SnapshotMeta,
        state_machine: StateMachine,
    ) {
        // The image must stand where its meta says: the installing replica's log now starts
        // there, so a wrong term would let it vote and campaign as if it held entries it lacks.
        let committed_term = self
            .committed
            .get(&group)
            .and_then(|record| record.get((meta.index - 1) as usize))
            .map_or(0, |&(term, _, _)| term);
        if state_machine.applied != meta.index
            || (committed_term != 0 && committed_term != meta.term)
        {
            let what = format!(
                "State Machine Safety: node {id} group {group} installed a snapshot claiming ({}, {}) holding state at {} (term {}); term {committed_term} was committed there",
                meta.index, meta.term, state_machine.applied, state_machine.applied_term
            );
            self.violation(what);
        }
        let digests = self.applied_digests.entry(group).or_default();
        let position = (state_machine.applied - 1) as usize;
        if position < digests.len()
            && digests[position] != 0
            && digests[position] != state_machine.digest
        {
            let what = format!(
                "State Machine Safety: node {id} group {group} installed a snapshot at {} that disagrees",
                state_machine.applied
            );
            self.violation(what);
        } else if position >= digests.len() {
            digests.resize(position, 0);
            digests.push(state_machine.digest);
        }
    }

    pub fn check_safety(&mut self) {
        if std::env::var("KAHUNA_SIM_TRACE").is_ok() {
            let d = self.dump();
            eprintln!(
                "--- step {}\n{}",
                self.now,
                d.lines()
                    .filter(|l| l.contains("g1 "))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let mut found = Vec::new();
        for (&id, node) in &self.nodes {
            if !node.up {
                continue;
            }
            for (&group, replica) in &node.replicas {
                let raft = &replica.raft;
                // Election Safety: at most one leader per term.
                if raft.is_leader() {
                    let leader = *self.leaders.entry((group, raft.term())).or_insert(id);
                    if leader != id {
                        found.push(format!(
                            "Election Safety: group {group} term {} has leaders {leader} and {id}",
                            raft.term()
                        ));
                    }
                }
                // Commit monotonicity while up.
                if raft.committed() < replica.last_committed {
                    found.push(format!(
                        "commit went backwards on node {id} group {group}: {} -> {}",
                        replica.last_committed,
                        raft.committed()
                    ));
                }
                // Log Matching: same (index, term) means same entry and same predecessor term.
                let first = raft.first_index();
                for index in first..=raft.last_index() {
                    let entry = raft.log_entry(index).expect("entry within log bounds");
                    let previous_term = raft.log_term(index - 1);
                    let key = (group, index, entry.term);
                    let hash = entry_hash(entry);
                    match self.seen_entries.get(&key) {
                        Some(&(seen_hash, seen_previous)) => {
                            if seen_hash != hash {
                                found.push(format!("Log Matching: group {group} ({index}, {}) differs on node {id}", entry.term));
                            }
                            if let (Some(a), Some(b)) = (seen_previous, previous_term) {
                                if a != b {
                                    found.push(format!(
                                        "Log Matching: group {group} ({index}, {}) has predecessor term {b} on node {id}, {a} elsewhere",
                                        entry.term
                                    ));
                                }
                            }
                        }
                        None => {
                            self.seen_entries.insert(key, (hash, previous_term));
                        }
                    }
                }
            }
        }
        // Committed entries: record them and check nobody committed something else.
        for (&id, node) in &self.nodes {
            if !node.up {
                continue;
            }
            for (&group, replica) in &node.replicas {
                let raft = &replica.raft;
                let record = self.committed.entry(group).or_default();
                let first = raft.first_index();
                for index in first..=raft.committed() {
                    let entry = raft
                        .log_entry(index)
                        .expect("committed entries above the snapshot are in the log");
                    let position = (index - 1) as usize;
                    let value = (entry.term, entry_hash(entry));
                    if position < record.len() {
                        if record[position].0 != 0
                            && (record[position].0, record[position].1) != value
                        {
                            found.push(format!(
                                "committed entry rolled back or diverged: group {group} index {index} on node {id} is term {} but term {} was committed",
                                entry.term, record[position].0
                            ));
                        }
                    } else {
                        record.resize(position, (0, 0, 0));
                        record.push((value.0, value.1, raft.term()));
                    }
                }
            }
        }
        // Leader Completeness: every leader holds every committed entry.
        for (&id, node) in &self.nodes {
            if !node.up {
                continue;
            }
            for (&group, replica) in &node.replicas {
                let raft = &replica.raft;
                if !raft.is_leader() {
                    continue;
                }
                let Some(record) = self.committed.get(&group) else {
                    continue;
                };
                for (position, &(term, hash, commit_term)) in record.iter().enumerate() {
                    let index = position as u64 + 1;
                    if term == 0 || index < raft.first_index() || commit_term >= raft.term() {
                        continue;
                    }
                    let held = raft.log_entry(index).map(|e| (e.term, entry_hash(e)));
                    if held != Some((term, hash)) {
                        found.push(format!(
                            "Leader Completeness: leader {id} of group {group} term {} lacks committed entry {index} (term {term})",
                            raft.term()
                        ));
                        break;
                    }
                }
            }
        }
        for node in self.nodes.values_mut() {
            for replica in node.replicas.values_mut() {
                replica.last_committed = replica.raft.committed();
            }
        }
        for what in found {
            self.violation(what);
        }
    }

    // ----- liveness -----

    fn heal(&mut self) {
        self.cuts.clear();
        self.options.loss = 0.0;
        self.options.duplication = 0.0;
        for id in self.node_ids() {
            self.restart(id);
        }
        self.retire_removed(true);
    }

    /// Without pre-vote and check-quorum, Raft itself cannot stop a replica that was removed
    /// from its group and never learnt it from campaigning with ever higher terms and deposing
    /// every leader (thesis 4.2.3). Operators shut removed servers down (and multi-Raft systems
    /// such as TiKV destroy removed replicas; kahuna's node does not expose membership changes
    /// yet), and so does the liveness phase, when healing and again as changes commit: removed
    /// replicas are retired, and with `stop_nodes` a node removed from every group is stopped.
    /// With either option on, nothing is done: removed replicas stay up, the option must keep
    /// them harmless, and the checks say whether it does.
    fn retire_removed(&mut self, stop_nodes: bool) {
        if self.options.pre_vote || self.options.check_quorum {
            return;
        }
        let removed = self.removed_replicas();
        for id in self.node_ids() {
            let groups: Vec<GroupId> = removed
                .iter()
                .filter(|(node, _)| *node == id)
                .map(|&(_, group)| group)
                .collect();
            if stop_nodes && groups.len() == self.nodes[&id].replicas.len() {
                self.crash(id);
                continue;
            }
            let node = self.nodes.get_mut(&id).unwrap();
            for group in groups {
                node.replicas.get_mut(&group).unwrap().retired = true;
            }
        }
    }

    /// (node, group) of every live replica removed from its group: a member neither of the
    /// configuration committed by the live replica with the highest commit index, nor of the
    /// latest configuration of another live replica that holds every committed entry.
    /// Configurations take effect when appended, and such a replica may still be elected and
    /// commit its uncommitted suffix, which may add a node back; a replica missing committed
    /// entries never can (the election restriction), and a replica's view of itself does not
    /// count (a removed replica that never learnt of its removal still lists itself).
    fn removed_replicas(&self) -> Vec<(NodeId, GroupId)> {
        let mut removed = Vec::new();
        for group in 1..=self.options.groups as u64 {
            let rafts: Vec<(NodeId, &Raft)> = self
                .nodes
                .iter()
                .filter(|(_, node)| node.up)
                .map(|(&id, node)| (id, &node.replicas[&group].raft))
                .collect();
            let Some((_, most)) = rafts.iter().max_by_key(|(_, raft)| raft.committed()) else {
                continue;
            };
            let commit = most.committed();
            let commit_term = most.log_term(commit);
            let committed_conf = most.conf_state_at(commit);
            let electable: Vec<(NodeId, &Raft)> = rafts
                .iter()
                .copied()
                .filter(|(_, raft)| {
                    raft.last_index() >= commit
                        && (commit_term.is_none()
                            || raft
                                .log_term(commit)
                                .map_or(true, |term| Some(term) == commit_term))
                })
                .collect();
            for &(id, _) in &rafts {
                let member = |conf: &ConfState| conf.members().any(|m| m == id);
                let listed_by_another = electable
                    .iter()
                    .any(|&(other, view)| other != id && member(view.conf_state()));
                if !member(&committed_conf) && !listed_by_another {
                    removed.push((id, group));
                }
            }
        }
        removed
    }

    fn missing_proposals(&self) -> Vec<(u64, GroupId)> {
        self.proposals
            .iter()
            .filter(|(&id, &group)| !self.seen_applied(group, id))
            .map(|(&id, &group)| (id, group))
            .collect()
    }

    /// Whether proposal `id` was committed at an index every live member has applied (also
    /// when the entry has been compacted away on the leader).
    fn seen_applied(&self, group: GroupId, id: u64) -> bool {
        let Some(leader) = self.leader_of(group) else {
            return false;
        };
        let members = self.nodes[&leader].replicas[&group]
            .raft
            .conf_state()
            .clone();
        self.applied_ids.get(&(group, id)).is_some_and(|&index| {
            members.members().all(|member| {
                let node = &self.nodes[&member];
                node.up && node.replicas[&group].state_machine.applied >= index
            })
        })
    }

    fn check_liveness(&mut self) {
        let deadline = self.now + self.options.liveness_ticks;
        while self.now < deadline {
            self.now += 1;
            self.tick_all();
            self.deliver_due();
            self.sync_some(1.0);
            self.answer_image_reads();
            self.process_all();
            self.check_safety();
            if !self.violations.is_empty() {
                return;
            }
            if self.now % 20 == 0 {
                // Removals that commit while healing retire their replicas too.
                self.retire_removed(false);
                let missing = self.missing_proposals();
                if missing.is_empty() && self.converged() {
                    return;
                }
                // Clients retry what was lost with a crashed or deposed leader (not what is
                // still in flight in the current leader's log).
                for (id, group) in missing {
                    if !self.applied_ids.contains_key(&(group, id))
                        && !self.in_leader_log(group, id)
                    {
                        self.propose_id(group, id);
                    }
                }
            }
        }
        let missing = self.missing_proposals();
        let groups_without_leader: Vec<GroupId> = (1..=self.options.groups as u64)
            .filter(|&g| self.leader_of(g).is_none())
            .collect();
        let dump = self.dump();
        self.violation(format!(
            "{dump}liveness: after healing, {} proposals not applied everywhere within {} ticks (first: {:?}); groups without a leader: {:?}; converged: {}",
            missing.len(),
            self.options.liveness_ticks,
            missing.first(),
            groups_without_leader,
            self.converged()
        ));
    }

    fn in_leader_log(&self, group: GroupId, id: u64) -> bool {
        let Some(leader) = self.leader_of(group) else {
            return false;
        };
        let raft = &self.nodes[&leader].replicas[&group].raft;
        (raft.first_index()..=raft.last_index())
            .filter_map(|i| raft.log_entry(i))
            .any(|e| {
                e.kind == EntryKind::Normal && e.data.len() >= 8 && e.data[..8] == id.to_be_bytes()
            })
    }

    /// A readable state of every replica, printed with a liveness failure.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for group in 1..=self.options.groups as u64 {
            for (&id, node) in &self.nodes {
                let r = &node.replicas[&group];
                let s = r.raft.status();
                out.push_str(&format!(
                    "    g{group} n{id} up={} {:?} term={} lead={} first={} last={} commit={} persisted={} applied={} sm={} conf={:?} unsynced={}",
                    node.up, s.role, s.term, s.leader, s.first_index, s.last_index, s.committed, s.persisted, s.applied,
                    r.state_machine.applied, r.raft.conf_state(), r.unsynced.len()
                ));
                if r.raft.is_leader() {
                    for peer in r.raft.conf_state().members() {
                        if let Some(p) = r.raft.progress_of(peer) {
                            out.push_str(&format!(" [{peer}: {:?}]", p));
                        }
                    }
                }
                out.push('\n');
            }
        }
        out
    }

    /// Every live member of every group applied the same index as its leader's commit.
    fn converged(&self) -> bool {
        (1..=self.options.groups as u64).all(|group| {
            let Some(leader) = self.leader_of(group) else {
                return false;
            };
            let committed = self.nodes[&leader].replicas[&group].raft.committed();
            let conf = self.nodes[&leader].replicas[&group]
                .raft
                .conf_state()
                .clone();
            let all = conf.members().all(|id| {
                let node = &self.nodes[&id];
                node.up && node.replicas[&group].state_machine.applied == committed
            });
            all
        })
    }
}

//! Readable scenario tests for the Raft core over a hand-driven network: each test states a
//! classic situation from the Raft thesis and what must (and must not) happen.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kahuna::raft::*;

/// A hand-driven cluster of one group. Storage is synchronous: every Ready is durable at once.
struct Cluster {
    nodes: BTreeMap<NodeId, Raft>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    reads: BTreeMap<NodeId, Vec<ReadState>>,
    queue: Vec<Message>,
    down: BTreeSet<NodeId>,
    /// One-way cuts (from, to).
    cuts: BTreeSet<(NodeId, NodeId)>,
    fault: Option<SafetyFault>,
    /// Per node, the image its "storage" answers snapshot requests with (at the node's applied
    /// index, as a node's storage does). A node without one leaves requests unanswered.
    images: BTreeMap<NodeId, Bytes>,
    /// Snapshot requests each node made (`Ready::snapshot_wanted`), and those still unanswered.
    image_requests: BTreeMap<NodeId, usize>,
    unanswered: BTreeSet<NodeId>,
    /// Images the leader refused, with why.
    image_refusals: Vec<RaftError>,
    /// The snapshots each node installed (from `Ready::snapshot`), latest last.
    installed: BTreeMap<NodeId, Vec<Snapshot>>,
}

fn config(id: NodeId, fault: Option<SafetyFault>) -> Config {
    Config {
        id,
        group: 1,
        election_ticks: 10,
        heartbeat_ticks: 2,
        pre_vote: false,
        check_quorum: false,
        append_bytes_max: 1,
        seed: id,
        safety_fault: fault,
        ..Config::default()
    }
}

impl Cluster {
    fn new(size: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        let voters: Vec<NodeId> = (1..=size).collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=size {
            let mut config = config(id, None);
            tweak(&mut config);
            let restore = RestoreState {
                initial_conf: ConfState::new(voters.clone(), vec![]),
                ..Default::default()
            };
            nodes.insert(id, Raft::new(config, restore).unwrap());
        }
        Cluster {
            applied: nodes.keys().map(|&id| (id, Vec::new())).collect(),
            reads: nodes.keys().map(|&id| (id, Vec::new())).collect(),
            nodes,
            queue: Vec::new(),
            down: BTreeSet::new(),
            cuts: BTreeSet::new(),
            fault: None,
            images: BTreeMap::new(),
            image_requests: BTreeMap::new(),
            unanswered: BTreeSet::new(),
            image_refusals: Vec::new(),
            installed: BTreeMap::new(),
        }
    }

    fn node(&mut self, id: NodeId) -> &mut Raft {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Handles every pending Ready of `id` (persisting synchronously) and queues its messages;
    /// answers its snapshot requests if it has an image.
    fn drain(&mut self, id: NodeId) {
        loop {
            self.drain_readies(id);
            if !self.answer_image_request(id) {
                return;
            }
        }
    }

    /// An image of `id`'s state machine at its applied index, with `data` as the bytes.
    fn image_of(&self, id: NodeId, data: Bytes) -> Snapshot {
        let raft = &self.nodes[&id];
        let index = raft.applied();
        Snapshot {
            meta: SnapshotMeta {
                index,
                term: raft.log_term(index).expect("applied index in the log"),
                conf_state: raft.conf_state_at(index),
            },
            data,
        }
    }

    /// Answers `id`'s outstanding snapshot request from its image, if it has one.
    fn answer_image_request(&mut self, id: NodeId) -> bool {
        let Some(data) = self.images.get(&id).cloned() else {
            return false;
        };
        if !self.unanswered.remove(&id) {
            return false;
        }
        let image = self.image_of(id, data);
        if let Err(error) = self.node(id).provide_snapshot(image) {
            self.image_refusals.push(error);
        }
        true
    }

    fn drain_readies(&mut self, id: NodeId) {
        while self.nodes[&id].has_ready() {
            let raft = self.nodes.get_mut(&id).unwrap();
            let ready = raft.ready();
            raft.on_persisted(ready.number);
            if ready.snapshot_wanted {
                *self.image_requests.entry(id).or_default() += 1;
                assert!(self.unanswered.insert(id), "two requests outstanding");
            }
            if let Some(snapshot) = ready.snapshot {
                self.installed.entry(id).or_default().push(snapshot);
            }
            self.applied
                .get_mut(&id)
                .unwrap()
                .extend(ready.committed_entries.iter().cloned());
            self.reads
                .entry(id)
                .or_default()
                .extend(ready.read_states.iter().copied());
            self.queue.extend(ready.messages);
            self.queue.extend(ready.persisted_messages);
        }
    }

    fn drain_all(&mut self) {
        let ids: Vec<NodeId> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| !self.down.contains(id))
            .collect();
        for id in ids {
            self.drain(id);
        }
    }

    /// Delivers queued messages (and what they cause) until nothing moves. Messages to down
    /// nodes and over cut links are dropped. Every message must be valid.
    fn settle(&mut self) {
        assert_eq!(self.settle_counting_refusals(), 0);
    }

    /// As `settle`, but messages a replica refuses as invalid are counted, not fatal.
    fn settle_counting_refusals(&mut self) -> usize {
        let mut refusals = 0;
        for _ in 0..10_000 {
            self.drain_all();
            if self.queue.is_empty() {
                return refusals;
            }
            let batch = std::mem::take(&mut self.queue);
            for message in batch {
                if self.down.contains(&message.to)
                    || self.cuts.contains(&(message.from, message.to))
                {
                    continue;
                }
                match self.node(message.to).step(message) {
                    Ok(()) => {}
                    Err(RaftError::InvalidMessage { .. }) => refusals += 1,
                    Err(error) => panic!("{error}"),
                }
            }
        }
        panic!("cluster did not settle");
    }

    /// Delivers only the queued messages matching `keep`; the rest are dropped.
    fn deliver_only(&mut self, keep: impl Fn(&Message) -> bool) {
        self.drain_all();
        let batch = std::mem::take(&mut self.queue);
        for message in batch.into_iter().filter(|m| keep(m)) {
            if !self.down.contains(&message.to) {
                self.node(message.to).step(message).unwrap();
            }
        }
    }

    fn tick_all(&mut self, ticks: u32) {
        assert_eq!(self.tick_all_counting_refusals(ticks), 0);
    }

    fn tick_all_counting_refusals(&mut self, ticks: u32) -> usize {
        let mut refusals = 0;
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self
                .nodes
                .keys()
                .copied()
                .filter(|id| !self.down.contains(id))
                .collect();
            for id in ids {
                self.node(id).tick();
            }
            refusals += self.settle_counting_refusals();
        }
        refusals
    }

    fn elect(&mut self, id: NodeId) {
        self.node(id).campaign();
        self.settle();
        assert!(
            self.nodes[&id].is_leader(),
            "node {id} should have won: {:?}",
            self.nodes[&id].status()
        );
    }

    /// Crash and restart `id` from its (synchronously durable) state: volatile state is lost.
    fn restart(&mut self, id: NodeId) {
        let old = &self.nodes[&id];
        let entries = (old.first_index()..=old.last_index())
            .map(|i| old.log_entry(i).unwrap().clone())
            .collect();
        let voters: Vec<NodeId> = (1..=self.nodes.len() as u64).collect();
        let restore = RestoreState {
            hard_state: old.hard_state(),
            snapshot: old.snapshot_meta(),
            entries,
            applied: old.applied(),
            initial_conf: ConfState::new(voters, vec![]),
        };
        let mut config = config(id, None);
        config.safety_fault = self.fault;
        self.nodes.insert(id, Raft::new(config, restore).unwrap());
    }

    fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids.into_iter().filter(|&o| o != id) {
            self.cuts.insert((id, other));
            self.cuts.insert((other, id));
        }
    }

    fn heal(&mut self) {
        self.cuts.clear();
    }

    fn term_at(&self, id: NodeId, index: Index) -> Option<Term> {
        self.nodes[&id].log_term(index)
    }

    fn applied_data(&self, id: NodeId) -> Vec<Bytes> {
        self.applied[&id]
            .iter()
            .filter(|e| e.kind == EntryKind::Normal)
            .map(|e| e.data.clone())
            .collect()
    }
}

fn data(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// Thesis Figure 8: a leader must not commit an entry of an earlier term by counting replicas.
/// Returns whether the old-term entry was (wrongly) committed, and whether it was later lost.
fn figure_8(fault: Option<SafetyFault>) -> (bool, bool) {
    let mut cluster = Cluster::new(5, |config| config.safety_fault = fault);
    cluster.fault = fault;
    // (a) S1 leads term 1 and appends entry "a" (index 2); its appends are lost.
    cluster.elect(1);
    cluster.node(1).propose(data("a")).unwrap();
    cluster.drain(1);
    cluster.queue.clear();
    // (b) S1 crashes; S5 wins term 2 with votes of S3 and S4 and appends its no-op at index 2
    // locally only.
    cluster.down.insert(1);
    cluster.restart(1);
    cluster.node(5).campaign();
    cluster
        .deliver_only(|m| matches!(m.body, MessageBody::Vote { .. }) && (m.to == 3 || m.to == 4));
    cluster.deliver_only(|m| matches!(m.body, MessageBody::VoteResponse { .. }));
    assert!(cluster.nodes[&5].is_leader());
    cluster.drain(5);
    cluster.queue.clear();
    let s5_term = cluster.nodes[&5].term();
    // (c) S5 crashes; S1 comes back, wins term 3 with S2 and S3 and replicates the term-1
    // entry at index 2 to them, so it sits on a majority (S1, S2, S3).
    cluster.down.insert(5);
    cluster.restart(5);
    cluster.down.remove(&1);
    // Its first campaign (term 2) is lost; the second runs at term 3.
    cluster.node(1).campaign();
    cluster.drain(1);
    cluster.queue.clear();
    cluster.node(1).campaign();
    cluster
        .deliver_only(|m| matches!(m.body, MessageBody::Vote { .. }) && (m.to == 2 || m.to == 3));
    cluster.deliver_only(|m| matches!(m.body, MessageBody::VoteResponse { .. }));
    assert!(cluster.nodes[&1].is_leader());
    // One entry per append: deliver the probe to S3 and its rejection, then the append carrying
    // index 2 (term 1) to S3 and its acknowledgement, but not the no-op of term 3 after it.
    for _ in 0..6 {
        let lasts = [
            cluster.nodes[&2].last_index(),
            cluster.nodes[&3].last_index(),
        ];
        cluster.deliver_only(|m| {
            let to_follower = (m.to == 2 || m.to == 3)
                && matches!(&m.body, MessageBody::Append { prev_index, entries, .. }
                    if entries.iter().all(|e| e.index <= 2) || *prev_index > lasts[m.to as usize - 2]);
            to_follower || ((m.from == 2 || m.from == 3) && m.to == 1)
        });
    }
    for id in [2, 3] {
        assert_eq!(
            cluster.term_at(id, 2),
            Some(1),
            "S{id} holds the term-1 entry"
        );
        assert_eq!(cluster.term_at(id, 3), None, "S{id} lacks the term-3 no-op");
    }
    let committed_old_entry = cluster.nodes[&1].committed() >= 2;
    // (d) S1 crashes before its term-3 entry spreads; S5 returns and wins with S2, S3, S4 (its
    // last term is newer) and overwrites index 2 everywhere.
    cluster.down.insert(1);
    cluster.restart(1);
    cluster.down.remove(&5);
    cluster.queue.clear();
    cluster.node(5).campaign();
    cluster.drain(5);
    cluster.queue.clear();
    cluster.node(5).campaign();
    cluster.settle();
    assert!(
        cluster.nodes[&5].is_leader(),
        "{:?}",
        cluster.nodes[&5].status()
    );
    cluster.node(5).propose(data("b")).unwrap();
    cluster.settle();
    let lost = cluster.term_at(3, 2) != Some(1) && cluster.nodes[&3].committed() >= 2;
    assert!(s5_term > 1);
    (committed_old_entry, lost)
}

#[test]
fn figure_8_old_term_entries_are_not_committed_by_counting() {
    let (committed, lost) = figure_8(None);
    assert!(
        !committed,
        "the term-1 entry on a majority must not commit before a term-3 entry does"
    );
    assert!(
        lost,
        "the scenario does overwrite the uncommitted entry, which is allowed"
    );
}

#[test]
fn figure_8_with_the_rule_broken_loses_a_committed_entry() {
    // Shows the scenario is real: without the current-term rule the entry commits, then is lost.
    let (committed, lost) = figure_8(Some(SafetyFault::CommitEarlierTermByCount));
    assert!(committed && lost, "committed={committed} lost={lost}");
}

#[test]
fn partitioned_old_leader_cannot_commit_and_rejoins_as_follower() {
    let mut cluster = Cluster::new(3, |config| {
        config.check_quorum = true;
        config.pre_vote = true;
        config.append_bytes_max = 1 << 20;
    });
    cluster.elect(1);
    cluster.node(1).propose(data("before")).unwrap();
    cluster.settle();
    cluster.isolate(1);
    // The old leader accepts a proposal it can never commit.
    let (stale_index, _) = cluster.node(1).propose(data("stale")).unwrap();
    cluster.settle();
    // The majority side elects a new leader and commits.
    cluster.tick_all(40);
    let new_leader = [2, 3]
        .into_iter()
        .find(|&id| cluster.nodes[&id].is_leader())
        .expect("majority elects a leader");
    cluster.node(new_leader).propose(data("after")).unwrap();
    cluster.settle();
    // Check-quorum made the isolated leader step down.
    assert!(
        !cluster.nodes[&1].is_leader(),
        "isolated leader steps down under check-quorum"
    );
    assert!(cluster.nodes[&1].committed() < stale_index);
    cluster.heal();
    cluster.tick_all(20);
    for id in 1..=3 {
        assert_eq!(
            cluster.applied_data(id),
            vec![data("before"), data("after")],
            "node {id}"
        );
    }
}

#[test]
fn follower_with_a_long_conflicting_suffix_is_repaired_quickly() {
    let mut cluster = Cluster::new(3, |config| config.append_bytes_max = 1 << 20);
    cluster.elect(1);
    cluster.node(1).propose(data("common")).unwrap();
    cluster.settle();
    // Node 1 leads alone and piles up 100 uncommitted entries.
    cluster.isolate(1);
    for i in 0..100 {
        cluster
            .node(1)
            .propose(data(&format!("doomed-{i}")))
            .unwrap();
    }
    cluster.settle();
    // Nodes 2 and 3 move on under a new leader with 50 entries of a newer term.
    cluster.elect(2);
    for i in 0..50 {
        cluster.node(2).propose(data(&format!("kept-{i}"))).unwrap();
    }
    cluster.settle();
    cluster.heal();
    // Node 1 hears from the newer leader, steps down, and its suffix is replaced. Count the
    // rejections it takes: fast backtracking needs a handful, not one per entry.
    cluster.tick_all(3);
    let mut rejections = 0;
    for _ in 0..50 {
        cluster.drain_all();
        if cluster.queue.is_empty() {
            break;
        }
        rejections += cluster
            .queue
            .iter()
            .filter(|m| matches!(m.body, MessageBody::AppendResponse { reject: true, .. }))
            .count();
        let batch = std::mem::take(&mut cluster.queue);
        for message in batch {
            cluster.node(message.to).step(message).unwrap();
        }
    }
    assert!(
        rejections <= 3,
        "fast backtracking took {rejections} rejections"
    );
    let expected: Vec<Bytes> = std::iter::once(data("common"))
        .chain((0..50).map(|i| data(&format!("kept-{i}"))))
        .collect();
    for id in 1..=3 {
        assert_eq!(cluster.applied_data(id), expected, "node {id}");
        assert_eq!(
            cluster.nodes[&id].last_index(),
            cluster.nodes[&2].last_index()
        );
    }
}

#[test]
fn leader_transfer_during_load_moves_leadership_without_losing_writes() {
    let mut cluster = Cluster::new(3, |config| config.append_bytes_max = 1 << 20);
    cluster.elect(1);
    let mut accepted = Vec::new();
    for i in 0..20 {
        let value = data(&format!("v{i}"));
        cluster.node(1).propose(value.clone()).unwrap();
        accepted.push(value);
    }
    // Transfer while those are still in flight.
    cluster.node(1).transfer_leader(3).unwrap();
    assert!(matches!(
        cluster.node(1).propose(data("refused")),
        Err(RaftError::TransferInProgress { to: 3 })
    ));
    cluster.settle();
    assert!(
        cluster.nodes[&3].is_leader(),
        "transfer target leads: {:?}",
        cluster.nodes[&3].status()
    );
    assert!(!cluster.nodes[&1].is_leader());
    for i in 20..30 {
        let value = data(&format!("v{i}"));
        cluster.node(3).propose(value.clone()).unwrap();
        accepted.push(value);
    }
    cluster.settle();
    cluster.tick_all(4);
    for id in 1..=3 {
        assert_eq!(cluster.applied_data(id), accepted, "node {id}");
    }
}

#[test]
fn read_index_waits_for_a_quorum_and_a_current_term_commit() {
    let mut cluster = Cluster::new(3, |config| config.append_bytes_max = 1 << 20);
    cluster.elect(1);
    cluster.node(1).propose(data("x")).unwrap();
    cluster.settle();
    cluster.node(1).read_index(7).unwrap();
    // Before the heartbeat round trip, nothing is confirmed.
    cluster.drain(1);
    assert!(cluster.reads[&1].is_empty());
    cluster.settle();
    let committed = cluster.nodes[&1].committed();
    assert_eq!(
        cluster.reads[&1],
        vec![ReadState {
            context: 7,
            index: committed
        }]
    );
    // Followers refuse and point at the leader.
    assert_eq!(
        cluster.node(2).read_index(8),
        Err(RaftError::NotLeader { leader: 1 })
    );
    // An isolated leader cannot confirm reads.
    cluster.isolate(1);
    cluster.node(1).read_index(9).unwrap();
    cluster.settle();
    assert_eq!(
        cluster.reads[&1].len(),
        1,
        "read 9 must not be confirmed without a quorum"
    );
    // A new leader's reads wait until it commits an entry of its own term.
    cluster.heal();
    cluster.elect(2);
    cluster.isolate(2);
    cluster.node(2).campaign();
    cluster.heal();
}

/// With `commit_notice_ticks`, a commit advance rides on the next append instead of costing
/// every follower an empty append; when no append comes, it goes out alone after that many
/// ticks, so followers never stay behind for long and the leader only then counts as quiescent.
#[test]
fn a_commit_advance_waits_for_the_next_append_then_for_its_notice_ticks() {
    let mut cluster = Cluster::new(3, |config| {
        config.append_bytes_max = 1 << 20;
        // Heartbeats (which also carry the commit index) out of the way of this test.
        config.heartbeat_ticks = 9;
        config.election_ticks = 20;
        config.commit_notice_ticks = 2;
    });
    cluster.elect(1);
    // The no-op's commit reaches the followers once its notice is due.
    cluster.tick_all(2);
    assert_eq!(cluster.nodes[&2].committed(), cluster.nodes[&1].committed());
    let (a, _) = cluster.node(1).propose(data("a")).unwrap();
    cluster.settle();
    assert_eq!(
        cluster.nodes[&1].committed(),
        a,
        "the leader commits at once"
    );
    for id in [2, 3] {
        assert!(
            cluster.nodes[&id].committed() < a,
            "node {id}: no notice yet"
        );
        assert!(cluster.applied_data(id).is_empty());
    }
    assert!(!cluster.nodes[&1].is_quiescent(), "a notice is owed");
    // The next append carries the advance.
    let (b, _) = cluster.node(1).propose(data("b")).unwrap();
    cluster.settle();
    assert_eq!(cluster.nodes[&1].committed(), b);
    for id in [2, 3] {
        assert_eq!(cluster.nodes[&id].committed(), a, "node {id}");
        assert_eq!(cluster.applied_data(id), vec![data("a")], "node {id}");
    }
    // One tick is not enough; the second sends the advance alone.
    cluster.tick_all(1);
    assert_eq!(cluster.nodes[&2].committed(), a);
    cluster.tick_all(1);
    for id in [2, 3] {
        assert_eq!(cluster.nodes[&id].committed(), b, "node {id}");
        assert_eq!(
            cluster.applied_data(id),
            vec![data("a"), data("b")],
            "node {id}"
        );
    }
    assert!(cluster.nodes[&1].is_quiescent());
}

#[test]
fn membership_changes_one_voter_at_a_time_with_a_learner_first() {
    let mut cluster = Cluster::new(3, |config| config.append_bytes_max = 1 << 20);
    // Node 4 starts empty: it is in no configuration yet.
    let restore = RestoreState::default();
    cluster
        .nodes
        .insert(4, Raft::new(config(4, None), restore).unwrap());
    cluster.applied.insert(4, Vec::new());
    cluster.elect(1);
    cluster.node(1).propose(data("one")).unwrap();
    cluster.settle();
    // Two voter changes at once are refused.
    let too_many = ConfState::new(vec![1, 4, 5], vec![]);
    assert!(matches!(
        cluster.node(1).propose_conf_change(too_many),
        Err(RaftError::InvalidConfChange(_))
    ));
    // Add 4 as a learner: it catches up but does not vote.
    cluster
        .node(1)
        .propose_conf_change(ConfState::new(vec![1, 2, 3], vec![4]))
        .unwrap();
    // A second change while the first is uncommitted is refused.
    assert!(matches!(
        cluster
            .node(1)
            .propose_conf_change(ConfState::new(vec![1, 2, 3, 4], vec![])),
        Err(RaftError::ConfChangePending { .. })
    ));
    cluster.settle();
    cluster.tick_all(4);
    assert_eq!(cluster.applied_data(4), vec![data("one")]);
    assert!(cluster.nodes[&4].conf_state().is_learner(4));
    // Promote it, then remove node 1 (the leader), which steps down once that commits.
    cluster
        .node(1)
        .propose_conf_change(ConfState::new(vec![1, 2, 3, 4], vec![]))
        .unwrap();
    cluster.settle();
    cluster
        .node(1)
        .propose_conf_change(ConfState::new(vec![2, 3, 4], vec![]))
        .unwrap();
    cluster.settle();
    cluster.tick_all(4);
    assert!(!cluster.nodes[&1].is_leader(), "removed leader steps down");
    cluster.tick_all(60);
    let leader = [2, 3, 4]
        .into_iter()
        .find(|&id| cluster.nodes[&id].is_leader())
        .expect("new leader among 2,3,4");
    cluster.node(leader).propose(data("two")).unwrap();
    cluster.settle();
    cluster.tick_all(4);
    for id in 2..=4 {
        assert_eq!(
            cluster.applied_data(id),
            vec![data("one"), data("two")],
            "node {id}"
        );
    }
}

#[test]
fn lagging_follower_catches_up_from_a_chunked_snapshot() {
    let mut cluster = Cluster::new(3, |config| {
        config.append_bytes_max = 1 << 20;
        config.snapshot_chunk_bytes = 3;
    });
    cluster.elect(1);
    cluster.down.insert(3);
    for i in 0..10 {
        cluster.node(1).propose(data(&format!("e{i}"))).unwrap();
    }
    cluster.settle();
    let applied = cluster.nodes[&1].applied();
    for id in [1, 2] {
        cluster.node(id).compact(applied).unwrap();
        cluster.images.insert(id, data("state-machine-image"));
    }
    cluster.down.remove(&3);
    cluster.tick_all(10);
    let status = cluster.nodes[&3].status();
    assert_eq!(status.applied, cluster.nodes[&1].applied(), "{status:?}");
    let snapshot = cluster.installed[&3].last().expect("installed a snapshot");
    assert_eq!(snapshot.data, data("state-machine-image"));
    assert_eq!(snapshot.meta.index, applied);
    assert_eq!(
        cluster.nodes[&3].snapshot_meta(),
        Some(snapshot.meta.clone())
    );
    assert_eq!(cluster.nodes[&1].snapshot_pinned_bytes(), 0, "stream over");
}

#[test]
fn a_snapshot_failing_its_integrity_check_is_refused_before_it_replaces_the_log() {
    let mut cluster = Cluster::new(3, |config| {
        config.append_bytes_max = 1 << 20;
        config.snapshot_chunk_bytes = 4;
        config.snapshot_check = Some(|image| {
            if image.starts_with(b"sound") {
                Ok(())
            } else {
                Err("damaged".into())
            }
        });
    });
    cluster.elect(1);
    cluster.down.insert(3);
    for i in 0..10 {
        cluster.node(1).propose(data(&format!("e{i}"))).unwrap();
    }
    cluster.settle();
    let applied = cluster.nodes[&1].applied();
    for id in [1, 2] {
        cluster.node(id).compact(applied).unwrap();
        cluster.images.insert(id, data("damaged-image"));
    }
    let behind = cluster.nodes[&3].status();
    cluster.down.remove(&3);
    let refusals = cluster.tick_all_counting_refusals(10);
    assert!(refusals >= 1, "the damaged image was offered and refused");
    assert!(
        cluster.nodes[&3].snapshot_meta().is_none(),
        "nothing installed"
    );
    assert!(
        cluster.image_requests[&1] >= 2,
        "a refused image is dropped and a fresh one asked for"
    );
    let status = cluster.nodes[&3].status();
    assert_eq!(status.applied, behind.applied, "the log was not replaced");
    assert_eq!(status.committed, behind.committed);
    // Once the source has a sound image, the same follower catches up from it.
    cluster.node(1).propose(data("after")).unwrap();
    cluster.settle_counting_refusals();
    let applied = cluster.nodes[&1].applied();
    cluster.node(1).compact(applied).unwrap();
    cluster.images.insert(1, data("sound-image"));
    cluster.tick_all_counting_refusals(10);
    let snapshot = cluster.installed[&3]
        .last()
        .expect("installed the sound image");
    assert_eq!(snapshot.data, data("sound-image"));
    assert_eq!(cluster.nodes[&3].status().applied, applied);
}

#[test]
fn a_lazy_image_is_asked_for_checked_streamed_and_dropped() {
    let mut cluster = Cluster::new(3, |config| {
        config.append_bytes_max = 1 << 20;
        config.snapshot_chunk_bytes = 3;
    });
    cluster.elect(1);
    cluster.down.insert(3);
    for i in 0..10 {
        cluster.node(1).propose(data(&format!("e{i}"))).unwrap();
    }
    cluster.settle();
    let applied = cluster.nodes[&1].applied();
    for id in [1, 2] {
        let meta = cluster.node(id).compact(applied).unwrap();
        assert_eq!(meta.index, applied);
        assert_eq!(cluster.nodes[&id].snapshot_meta(), Some(meta));
    }
    // Compaction keeps no image, and nobody asks for one while no follower is behind.
    assert_eq!(cluster.nodes[&1].snapshot_pinned_bytes(), 0);
    assert!(cluster.image_requests.is_empty());

    // Node 3 returns behind the log start: the leader asks once and waits, however long the
    // answer takes (heartbeats go on; nothing is streamed).
    cluster.down.remove(&3);
    cluster.tick_all(12);
    assert_eq!(cluster.image_requests[&1], 1, "one request outstanding");
    let (_, _, state) = cluster.nodes[&1].progress_of(3).unwrap();
    assert_eq!(state, ProgressState::Snapshot);
    assert!(!cluster.installed.contains_key(&3));
    assert_eq!(cluster.nodes[&1].snapshot_pinned_bytes(), 0);

    // A failed read: the follower's next heartbeat answer asks again.
    assert!(cluster.unanswered.remove(&1));
    cluster.node(1).snapshot_unavailable();
    cluster.tick_all(3);
    assert_eq!(
        cluster.image_requests[&1], 2,
        "asked again after a failed read"
    );

    // Images that do not describe the leader's log are refused and dropped.
    let good = cluster.image_of(1, data("state-machine-image"));
    let mut stale = good.clone();
    stale.meta.index = applied - 2;
    stale.meta.term = cluster.nodes[&1].log_term(applied).unwrap();
    let mut wrong_term = good.clone();
    wrong_term.meta.term += 1;
    let mut ahead = good.clone();
    ahead.meta.index += 1;
    let mut wrong_conf = good.clone();
    wrong_conf.meta.conf_state = ConfState::new(vec![1, 2], vec![]);
    for (image, why) in [
        (stale, "older than the compaction point"),
        (wrong_term, "its term differs from the log's at its index"),
        (ahead, "beyond the applied index"),
        (
            wrong_conf,
            "its configuration differs from the log's at its index",
        ),
    ] {
        let index = image.meta.index;
        assert_eq!(
            cluster.node(1).provide_snapshot(image),
            Err(RaftError::SnapshotRefused { index, why })
        );
    }
    assert_eq!(cluster.nodes[&1].snapshot_pinned_bytes(), 0);
    assert!(!cluster.installed.contains_key(&3));

    // A sound image is pinned for the waiting follower and streamed in chunks; once installed
    // the leader holds no image any more, and the follower keeps only the meta.
    cluster.unanswered.clear();
    let length = good.data.len();
    cluster.node(1).provide_snapshot(good.clone()).unwrap();
    assert_eq!(cluster.nodes[&1].snapshot_pinned_bytes(), length);
    cluster.settle();
    let installed = cluster.installed[&3].last().unwrap();
    assert_eq!(installed, &good);
    assert_eq!(cluster.nodes[&3].snapshot_meta(), Some(good.meta.clone()));
    assert_eq!(
        cluster.nodes[&1].snapshot_pinned_bytes(),
        0,
        "image dropped"
    );
    let (matched, _, state) = cluster.nodes[&1].progress_of(3).unwrap();
    assert_eq!(state, ProgressState::Replicate);
    assert_eq!(matched, cluster.nodes[&1].last_index());
    // An image nobody waits for any more is refused.
    assert_eq!(
        cluster.node(1).provide_snapshot(good.clone()),
        Err(RaftError::SnapshotRefused {
            index: good.meta.index,
            why: "no follower waits for an image"
        })
    );
    cluster.node(1).propose(data("after")).unwrap();
    cluster.settle();
    assert_eq!(cluster.applied_data(3), vec![data("after")]);
}

/// Node 1 leads, node 3 returned behind node 1's log start, and node 1 asked for an image: the
/// cluster (2-byte chunks) and the image to provide (nothing streamed yet).
fn streaming_to_node_3() -> (Cluster, Snapshot) {
    let mut cluster = Cluster::new(3, |config| {
        config.append_bytes_max = 1 << 20;
        config.snapshot_chunk_bytes = 2;
    });
    cluster.elect(1);
    cluster.down.insert(3);
    for i in 0..6 {
        cluster.node(1).propose(data(&format!("e{i}"))).unwrap();
    }
    cluster.settle();
    let applied = cluster.nodes[&1].applied();
    cluster.node(1).compact(applied).unwrap();
    cluster.down.remove(&3);
    cluster.tick_all(2);
    assert!(cluster.unanswered.remove(&1), "asked for an image");
    let image = cluster.image_of(1, data("image-of-node-1"));
    (cluster, image)
}

#[test]
fn losing_leadership_drops_a_pinned_image() {
    let (mut cluster, image) = streaming_to_node_3();
    cluster.node(1).provide_snapshot(image).unwrap();
    assert!(cluster.nodes[&1].snapshot_pinned_bytes() > 0);
    // Node 2 takes over before the stream ends: node 1's pinned image goes with its leadership.
    cluster.queue.clear();
    cluster.elect(2);
    assert!(!cluster.nodes[&1].is_leader());
    assert_eq!(cluster.nodes[&1].snapshot_pinned_bytes(), 0);
    assert!(!cluster.nodes[&1].snapshot_requested());
}

#[test]
fn a_stream_to_a_silent_follower_is_unpinned_and_restarts_when_it_answers() {
    let (mut cluster, image) = streaming_to_node_3();
    cluster.node(1).provide_snapshot(image.clone()).unwrap();
    assert!(cluster.nodes[&1].snapshot_pinned_bytes() > 0);
    // Node 3 dies mid-stream. Within two election timeouts (the first may have heard from it)
    // the leader unpins the image, keeps leading, and asks for no new one while 3 is silent.
    cluster.queue.clear();
    cluster.down.insert(3);
    let election_ticks = config(1, None).election_ticks;
    for _ in 0..2 * election_ticks {
        cluster.tick_all(1);
    }
    assert!(cluster.nodes[&1].is_leader());
    assert_eq!(
        cluster.nodes[&1].snapshot_pinned_bytes(),
        0,
        "image unpinned"
    );
    let (_, _, state) = cluster.nodes[&1].progress_of(3).unwrap();
    assert_eq!(state, ProgressState::Probe);
    assert!(
        !cluster.unanswered.contains(&1),
        "no image wanted for a silent follower"
    );
    // Node 3 answers again: it is probed, found behind the log start, and streamed a fresh
    // image to the end.
    cluster.down.remove(&3);
    cluster.tick_all(2);
    assert!(cluster.unanswered.remove(&1), "asked for a fresh image");
    cluster.node(1).provide_snapshot(image.clone()).unwrap();
    cluster.settle();
    assert_eq!(cluster.installed[&3].last().unwrap(), &image);
    assert_eq!(cluster.nodes[&1].snapshot_pinned_bytes(), 0, "stream over");
    cluster.node(1).propose(data("after")).unwrap();
    cluster.settle();
    assert_eq!(cluster.applied_data(3), vec![data("after")]);
}

#[test]
fn a_new_term_frees_a_follower_half_received_image() {
    let (mut cluster, image) = streaming_to_node_3();
    cluster.node(1).provide_snapshot(image).unwrap();
    // Two chunks reach node 3; the stream stops there.
    cluster.deliver_only(|_| true);
    cluster.deliver_only(|_| true);
    assert!(cluster.nodes[&3].incoming_snapshot_bytes() > 0);
    cluster.queue.clear();
    // Node 2 takes over (it holds the whole log: it streams nothing to node 3).
    cluster.elect(2);
    assert!(cluster.nodes[&2].is_leader());
    assert_eq!(
        cluster.nodes[&3].incoming_snapshot_bytes(),
        0,
        "the old term's half image is freed"
    );
    cluster.node(2).propose(data("after")).unwrap();
    cluster.settle();
    assert_eq!(cluster.applied_data(3).last(), Some(&data("after")));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mut cluster = Cluster::new(3, |_| {});
    let wrong_group = Message {
        group: 9,
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::TimeoutNow,
    };
    assert!(matches!(
        cluster.node(1).step(wrong_group),
        Err(RaftError::WrongGroup { .. })
    ));
    let wrong_node = Message {
        group: 1,
        from: 2,
        to: 3,
        term: 1,
        body: MessageBody::TimeoutNow,
    };
    assert!(matches!(
        cluster.node(1).step(wrong_node),
        Err(RaftError::WrongNode { .. })
    ));
    assert!(matches!(
        cluster.node(1).propose(data("x")),
        Err(RaftError::NotLeader { .. })
    ));
    let bad = RestoreState {
        hard_state: HardState {
            term: 1,
            vote: 0,
            commit: 5,
        },
        initial_conf: ConfState::new(vec![1], vec![]),
        ..Default::default()
    };
    assert!(matches!(
        Raft::new(config(1, None), bad),
        Err(RaftError::InvalidRestore(_))
    ));
}

#[test]
fn a_follower_forgets_a_leader_that_campaigns() {
    // A restarted leader that lost its last entry campaigns; the followers, which would ignore a
    // stranger's pre-vote inside the leader lease, must take their old leader's request as
    // abdication, forget it, and elect one of themselves (they hold the longer log).
    let mut cluster = Cluster::new(3, |config| {
        config.pre_vote = true;
        config.check_quorum = true;
        config.append_bytes_max = 1 << 20;
    });
    cluster.elect(1);
    cluster.node(1).propose(data("x")).unwrap();
    cluster.settle();
    cluster.node(1).propose(data("lost-on-1")).unwrap();
    cluster.drain(1);
    cluster.settle();
    assert_eq!(cluster.nodes[&2].leader(), 1);
    // Node 1 restarts without its last entry (never synced there).
    let old = &cluster.nodes[&1];
    let entries: Vec<Entry> = (1..old.last_index())
        .map(|i| old.log_entry(i).unwrap().clone())
        .collect();
    let mut hard_state = old.hard_state();
    hard_state.commit = hard_state.commit.min(entries.len() as u64);
    let restore = RestoreState {
        hard_state,
        entries,
        initial_conf: ConfState::new(vec![1, 2, 3], vec![]),
        ..Default::default()
    };
    cluster
        .nodes
        .insert(1, Raft::new(config(1, None), restore).unwrap());
    cluster.node(1).campaign();
    cluster.settle();
    assert!(!cluster.nodes[&1].is_leader(), "the short log cannot win");
    assert_eq!(
        cluster.nodes[&2].leader(),
        NO_NODE,
        "followers forgot the abdicated leader"
    );
    cluster.tick_all(40);
    let leader = [2, 3]
        .into_iter()
        .find(|&id| cluster.nodes[&id].is_leader())
        .expect("a follower takes over");
    assert_eq!(
        cluster.nodes[&leader].log_entry(3).map(|e| e.data.clone()),
        Some(data("lost-on-1"))
    );
}

#[test]
fn a_follower_told_its_leader_is_unreachable_campaigns_within_one_timeout() {
    // The scheduler calls this once the leader's node has been silent for an election timeout:
    // the follower must not wait a whole randomized timeout again.
    let mut cluster = Cluster::new(3, |config| {
        config.pre_vote = true;
        config.check_quorum = true;
        config.append_bytes_max = 1 << 20;
    });
    cluster.elect(1);
    cluster.isolate(1);
    // Every follower's node noticed the silence (each scheduler calls this for its replica).
    for id in [2, 3] {
        cluster.node(id).leader_unreachable();
        assert_eq!(cluster.nodes[&id].leader(), NO_NODE);
    }
    let election_ticks = 10;
    let mut campaigned_after = None;
    for tick in 1..=election_ticks {
        for id in [2, 3] {
            cluster.node(id).tick();
        }
        if [2, 3]
            .iter()
            .any(|id| cluster.nodes[id].role() != Role::Follower)
        {
            campaigned_after = Some(tick);
            break;
        }
    }
    assert!(
        campaigned_after.is_some(),
        "a follower campaigns within one election timeout"
    );
    cluster.settle();
    let new_leader = [2, 3]
        .into_iter()
        .find(|&id| cluster.nodes[&id].is_leader());
    assert!(
        new_leader.is_some(),
        "nodes 2 and 3 elect a leader without node 1"
    );
}

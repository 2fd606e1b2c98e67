//! The spare follower: in a group of three voters the leader's commits wait for itself and one
//! follower; the other (the spare) may hold its log write and acknowledgement briefly, to join
//! a later batch, so that one fewer sync competes for the disk with the two that decide the
//! commit. These tests pin the rule (`ConfState::commit_waits_for`) and the shard's use of it
//! (`ShardBatch::may_wait`): a spare's entries may wait, the waited-for follower's never do,
//! and a spare whose waited-for peer goes quiet is waited for again at once.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kahuna::raft::{ConfState, Config, Entry, GroupId, Message, NodeId, RestoreState};
use kahuna::shard::{Shard, ShardBatch, ShardConfig, StateMachine};
use kahuna::storage::KvOp;

#[test]
fn three_voters_wait_for_the_leader_and_one_follower_rotating_by_group() {
    let conf = ConfState::new(vec![1, 2, 3], vec![]);
    for leader in 1..=3 {
        let mut waited_per_follower: BTreeMap<NodeId, usize> = BTreeMap::new();
        for group in 0..8 {
            assert!(
                conf.commit_waits_for(group, leader, leader),
                "the leader is waited for"
            );
            let waited: Vec<NodeId> = (1..=3)
                .filter(|&id| id != leader && conf.commit_waits_for(group, leader, id))
                .collect();
            assert_eq!(
                waited.len(),
                1,
                "group {group}, leader {leader}: {waited:?}"
            );
            *waited_per_follower.entry(waited[0]).or_default() += 1;
        }
        // Spread over both followers, four groups each.
        assert_eq!(waited_per_follower.len(), 2);
        assert!(waited_per_follower.values().all(|&count| count == 4));
    }
}

#[test]
fn five_voters_wait_for_two_followers_and_small_groups_for_all() {
    let five = ConfState::new(vec![1, 2, 3, 4, 5], vec![]);
    for group in 0..8 {
        let waited = (2..=5)
            .filter(|&id| five.commit_waits_for(group, 1, id))
            .count();
        assert_eq!(waited, 2, "group {group}");
    }
    let two = ConfState::new(vec![1, 2], vec![]);
    let one = ConfState::new(vec![1], vec![]);
    for group in 0..4 {
        assert!(
            two.commit_waits_for(group, 1, 2),
            "both voters of two are needed"
        );
        assert!(one.commit_waits_for(group, 1, 1));
    }
}

#[test]
fn unknown_leaders_and_learners_are_always_waited_for() {
    let conf = ConfState::new(vec![1, 2, 3], vec![4]);
    for group in 0..4 {
        for id in 1..=4 {
            // No leader known (0), or a leader that is not a voter.
            assert!(conf.commit_waits_for(group, 0, id));
            assert!(conf.commit_waits_for(group, 4, id));
        }
        // A learner never counts, and is treated as waited for (its writes are not held).
        assert!(conf.commit_waits_for(group, 1, 4));
    }
}

/// Applies nothing: the tests look at batches, not data.
struct Nothing;

impl StateMachine for Nothing {
    fn apply(&mut self, _group: GroupId, _entry: &Entry, _ops: &mut Vec<KvOp>) {}
}

const GROUP: GroupId = 2;
const LEADER: NodeId = 1;
/// The trio's heartbeat period in ticks (its nodes' heartbeat period too).
const HEARTBEAT_TICKS: u32 = 2;
/// Ticks without a node's frames after which it counts as quiet (one more than a heartbeat
/// period: see `is_spare`).
const QUIET_TICKS: u32 = HEARTBEAT_TICKS + 1;

/// Three shards of one group each, wired by hand. Storage is synchronous: a batch is durable
/// as soon as it is collected, except where a test looks at it first.
struct Trio {
    shards: BTreeMap<NodeId, Shard<Nothing>>,
    /// The batches each node collected that held log entries, in order: whether each could wait.
    entry_batches: BTreeMap<NodeId, Vec<bool>>,
    /// Per node, the peers its batches named to be sent to first, in order.
    urgent: BTreeMap<NodeId, Vec<NodeId>>,
    /// One-way links that drop everything: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
}

impl Trio {
    fn new() -> Trio {
        let mut shards = BTreeMap::new();
        for id in 1..=3 {
            let peers = (1..=3).filter(|&p| p != id).collect();
            let raft = Config {
                election_ticks: 10,
                heartbeat_ticks: HEARTBEAT_TICKS,
                ..Config::default()
            };
            let mut shard = Shard::new(ShardConfig::new(id, peers, raft), Nothing);
            let restore = RestoreState {
                initial_conf: ConfState::new(vec![1, 2, 3], vec![]),
                ..Default::default()
            };
            shard.add_group(GROUP, restore).expect("group starts");
            shards.insert(id, shard);
        }
        Trio {
            shards,
            entry_batches: BTreeMap::new(),
            urgent: BTreeMap::new(),
            cut: BTreeSet::new(),
        }
    }

    fn deliver(&mut self, from: NodeId, messages: BTreeMap<NodeId, Vec<Message>>) {
        for (to, messages) in messages {
            if self.cut.contains(&(from, to)) {
                continue;
            }
            if let Some(shard) = self.shards.get_mut(&to) {
                let rejected = shard.receive(from, messages);
                assert!(rejected.is_empty(), "{rejected:?}");
            }
        }
    }

    /// Runs every node's loop until no node has anything to do.
    fn settle(&mut self) {
        for _ in 0..100 {
            let mut worked = false;
            let ids: Vec<NodeId> = self.shards.keys().copied().collect();
            for id in ids {
                while let Some(mut batch) = self.shards.get_mut(&id).unwrap().collect(true) {
                    worked = true;
                    if batch.write.groups.iter().any(|g| !g.entries.is_empty()) {
                        self.entry_batches
                            .entry(id)
                            .or_default()
                            .push(batch.may_wait());
                    }
                    self.urgent
                        .entry(id)
                        .or_default()
                        .extend(batch.urgent_peers.iter().copied());
                    let now = std::mem::take(&mut batch.send_now);
                    self.deliver(id, now);
                    let ShardBatch { token, .. } = batch;
                    let after = self.shards.get_mut(&id).unwrap().persisted(token);
                    self.deliver(id, after);
                }
            }
            if !worked {
                return;
            }
        }
        panic!("the trio did not settle");
    }

    fn shard(&mut self, id: NodeId) -> &mut Shard<Nothing> {
        self.shards.get_mut(&id).unwrap()
    }
}

/// Node 1 leads; returns (waited-for follower, spare follower).
fn elect() -> (Trio, NodeId, NodeId) {
    let mut trio = Trio::new();
    trio.shard(LEADER).raft_mut(GROUP).unwrap().campaign();
    trio.settle();
    assert!(trio.shard(LEADER).raft(GROUP).unwrap().is_leader());
    let conf = ConfState::new(vec![1, 2, 3], vec![]);
    let waited = (2..=3)
        .find(|&id| conf.commit_waits_for(GROUP, LEADER, id))
        .unwrap();
    let spare = 5 - waited;
    (trio, waited, spare)
}

#[test]
fn a_spare_followers_entries_may_wait_and_the_waited_for_followers_may_not() {
    let (mut trio, waited, spare) = elect();
    trio.entry_batches.clear();
    trio.urgent.clear();
    trio.shard(LEADER)
        .propose(GROUP, Bytes::from_static(b"x"))
        .expect("leader proposes");
    trio.settle();
    assert_eq!(
        trio.entry_batches[&LEADER],
        vec![false],
        "the leader's own entries"
    );
    assert_eq!(
        trio.entry_batches[&waited],
        vec![false],
        "the waited-for follower"
    );
    assert_eq!(trio.entry_batches[&spare], vec![true], "the spare");
    // The leader sends the entries to the follower its commit waits for first.
    assert_eq!(trio.urgent[&LEADER], vec![waited]);
    // Durability and commit are unchanged where the batches were written at once.
    let index = trio.shard(LEADER).raft(GROUP).unwrap().last_index();
    for id in 1..=3 {
        assert_eq!(
            trio.shard(id).raft(GROUP).unwrap().committed(),
            index,
            "node {id}"
        );
    }
}

#[test]
fn a_spare_whose_waited_for_peer_is_quiet_is_waited_for_again() {
    let (mut trio, waited, spare) = elect();
    // The spare hears from the leader (its frames) but not from the waited-for follower for
    // longer than a node-heartbeat period.
    for _ in 0..QUIET_TICKS {
        let _ = trio.shard(spare).tick();
        trio.shard(spare).heard_from(LEADER);
    }
    // Let the ticks' work (heartbeats) settle without the waited-for follower in the way.
    trio.entry_batches.clear();
    trio.shards.remove(&waited);
    trio.shard(LEADER)
        .propose(GROUP, Bytes::from_static(b"y"))
        .expect("leader proposes");
    trio.settle();
    assert_eq!(
        trio.entry_batches[&spare],
        vec![false],
        "with its peer quiet the spare's write is waited for"
    );
    let index = trio.shard(LEADER).raft(GROUP).unwrap().last_index();
    assert_eq!(
        trio.shard(LEADER).raft(GROUP).unwrap().committed(),
        index,
        "the leader commits with the spare"
    );
}

/// Ticks `id`'s shard `ticks` times, hearing from `heard` (their frames arrive) and from no
/// one else.
fn tick_hearing(trio: &mut Trio, id: NodeId, heard: &[NodeId], ticks: u32) {
    for _ in 0..ticks {
        let _ = trio.shard(id).tick();
        for &node in heard {
            trio.shard(id).heard_from(node);
        }
    }
}

#[test]
fn a_spare_whose_leader_no_longer_hears_the_waited_for_peer_is_waited_for_again() {
    let (mut trio, waited, spare) = elect();
    // A one-way cut: the waited-for follower's frames no longer reach the leader; the spare
    // still hears everyone, so only the leader's quiet report can tell it.
    trio.cut.insert((waited, LEADER));
    tick_hearing(&mut trio, LEADER, &[spare], QUIET_TICKS);
    tick_hearing(&mut trio, spare, &[LEADER, waited], QUIET_TICKS);
    let report = trio.shard(LEADER).quiet_peers();
    assert_eq!(
        report,
        vec![waited],
        "the leader reports what it no longer hears"
    );
    assert!(trio.shard(spare).quiet_peers().is_empty());
    trio.shard(spare).peer_report(LEADER, &report);
    trio.entry_batches.clear();
    trio.shard(LEADER)
        .propose(GROUP, Bytes::from_static(b"z"))
        .expect("leader proposes");
    trio.settle();
    assert_eq!(
        trio.entry_batches[&spare],
        vec![false],
        "with the leader not hearing the waited-for peer, the spare's write is waited for"
    );
    let index = trio.shard(LEADER).raft(GROUP).unwrap().last_index();
    assert_eq!(
        trio.shard(LEADER).raft(GROUP).unwrap().committed(),
        index,
        "the leader commits with the spare"
    );
    // Healed: the leader hears the follower again and its next report (empty) says so.
    trio.cut.clear();
    tick_hearing(&mut trio, LEADER, &[spare, waited], 1);
    let report = trio.shard(LEADER).quiet_peers();
    assert!(report.is_empty(), "{report:?}");
    trio.shard(spare).peer_report(LEADER, &report);
    trio.settle();
    trio.entry_batches.clear();
    trio.shard(LEADER)
        .propose(GROUP, Bytes::from_static(b"w"))
        .expect("leader proposes");
    trio.settle();
    assert_eq!(trio.entry_batches[&spare], vec![true], "spare again");
}

#[test]
fn a_spare_whose_waited_for_peer_no_longer_hears_the_leader_is_waited_for_again() {
    let (mut trio, waited, spare) = elect();
    // The other one-way cut: the leader's appends no longer reach the waited-for follower,
    // which still reaches everyone (the leader hears it). Only its own report can tell.
    trio.cut.insert((LEADER, waited));
    tick_hearing(&mut trio, waited, &[spare], QUIET_TICKS);
    tick_hearing(&mut trio, spare, &[LEADER, waited], QUIET_TICKS);
    tick_hearing(&mut trio, LEADER, &[spare, waited], QUIET_TICKS);
    assert!(trio.shard(LEADER).quiet_peers().is_empty());
    let report = trio.shard(waited).quiet_peers();
    assert_eq!(report, vec![LEADER]);
    trio.shard(spare).peer_report(waited, &report);
    trio.entry_batches.clear();
    trio.shard(LEADER)
        .propose(GROUP, Bytes::from_static(b"v"))
        .expect("leader proposes");
    trio.settle();
    assert_eq!(
        trio.entry_batches[&spare],
        vec![false],
        "with the waited-for peer not hearing the leader, the spare's write is waited for"
    );
    let index = trio.shard(LEADER).raft(GROUP).unwrap().last_index();
    assert_eq!(
        trio.shard(LEADER).raft(GROUP).unwrap().committed(),
        index,
        "the leader commits with the spare"
    );
}

#[test]
fn reports_naming_neither_the_leader_nor_the_waited_for_peer_change_nothing() {
    let (mut trio, waited, spare) = elect();
    // Both say they do not hear the spare: no commit waits for the spare.
    trio.shard(spare).peer_report(LEADER, &[spare]);
    trio.shard(spare).peer_report(waited, &[spare]);
    // The waited-for follower's view of the spare is not the leader's view of it, nor the
    // other way round.
    trio.entry_batches.clear();
    trio.shard(LEADER)
        .propose(GROUP, Bytes::from_static(b"u"))
        .expect("leader proposes");
    trio.settle();
    assert_eq!(trio.entry_batches[&spare], vec![true]);
}

//! Deferred applies (`src/shard/deferred.rs`) driven through real shards: a group's applies
//! wait in memory until its bounds are reached, then are written as one apply, sorted by key,
//! each key's last write only; a read, the ticks and the shard-wide byte bound each write them
//! sooner; the batch's token names only what it wrote (the state machine reads back only
//! that); and a follower whose applies wait does not run its election timer under a sleeping
//! leader.

use std::collections::BTreeMap;

use bytes::Bytes;
use kahuna::raft::{ConfState, Config, Entry, EntryKind, GroupId, Index, Message, NodeId};
use kahuna::raft::{RestoreState, Role};
use kahuna::shard::{DeferPolicy, Shard, ShardConfig, StateMachine};
use kahuna::storage::KvOp;

/// Writes one key per normal entry, keys falling as indexes rise (so a sorted apply differs
/// from the apply order), and a key every fourth entry reuses (so a last write replaces an
/// earlier one).
#[derive(Default)]
struct Writer;

fn key_of(index: Index) -> Bytes {
    if index % 4 == 0 {
        Bytes::from_static(b"shared")
    } else {
        Bytes::from(format!("k{:05}", 99_999 - index))
    }
}

impl StateMachine for Writer {
    fn apply(&mut self, _group: GroupId, entry: &Entry, ops: &mut Vec<KvOp>) {
        if entry.kind == EntryKind::Normal && !entry.data.is_empty() {
            ops.push(KvOp::Put {
                key: key_of(entry.index),
                value: Bytes::from(entry.index.to_be_bytes().to_vec()),
            });
        }
    }
}

const GROUP: GroupId = 3;
const LEADER: NodeId = 1;

/// What one node's batches wrote: (apply index, its operations), and the token's written
/// indexes.
#[derive(Default, Debug)]
struct Written {
    applies: Vec<(Index, Vec<KvOp>)>,
    token: Vec<Index>,
    /// Per batch with applies: the groups they were of.
    batches: Vec<Vec<GroupId>>,
}

/// Three shards of one group, wired by hand; storage is synchronous (a batch is durable when
/// collected).
struct Trio {
    shards: BTreeMap<NodeId, Shard<Writer>>,
    written: BTreeMap<NodeId, Written>,
    read_states: Vec<(NodeId, Index)>,
}

impl Trio {
    fn new(defer: DeferPolicy) -> Trio {
        Trio::with_groups(defer, &[GROUP])
    }

    /// `groups` on every node, node 1 leading each.
    fn with_groups(defer: DeferPolicy, groups: &[GroupId]) -> Trio {
        let mut shards = BTreeMap::new();
        for id in 1..=3 {
            let peers = (1..=3).filter(|&p| p != id).collect();
            let raft = Config {
                election_ticks: 10,
                heartbeat_ticks: 2,
                ..Config::default()
            };
            let mut config = ShardConfig::new(id, peers, raft);
            config.defer = defer;
            let mut shard = Shard::new(config, Writer);
            for &group in groups {
                let restore = RestoreState {
                    initial_conf: ConfState::new(vec![1, 2, 3], vec![]),
                    ..Default::default()
                };
                shard.add_group(group, restore).expect("group starts");
            }
            shards.insert(id, shard);
        }
        let mut trio = Trio {
            shards,
            written: BTreeMap::new(),
            read_states: Vec::new(),
        };
        // All at once: `raft_mut` does not mark a group for the next collect, `add_group` does.
        for &group in groups {
            trio.shard(LEADER).raft_mut(group).unwrap().campaign();
        }
        trio.settle();
        for &group in groups {
            assert!(trio.shard(LEADER).raft(group).unwrap().is_leader());
            // The first apply records the group's membership and is written at once.
            for id in 1..=3 {
                let shard = trio.shard(id);
                assert_eq!(
                    shard.written_applied(group),
                    shard.applied(group),
                    "node {id}"
                );
            }
        }
        trio.written.clear();
        trio
    }

    fn shard(&mut self, id: NodeId) -> &mut Shard<Writer> {
        self.shards.get_mut(&id).unwrap()
    }

    fn deliver(&mut self, from: NodeId, messages: BTreeMap<NodeId, Vec<Message>>) {
        for (to, messages) in messages {
            self.shard(to).heard_from(from);
            let rejected = self.shard(to).receive(from, messages);
            assert!(rejected.is_empty(), "{rejected:?}");
        }
    }

    /// Runs every node's loop until no node has anything to do.
    fn settle(&mut self) {
        for _ in 0..200 {
            let mut worked = false;
            for id in 1..=3 {
                while let Some(mut batch) = self.shard(id).collect(true) {
                    worked = true;
                    let written = self.written.entry(id).or_default();
                    let mut groups = Vec::new();
                    for write in &batch.write.groups {
                        if let Some(apply) = &write.apply {
                            if write.group == GROUP {
                                written.applies.push((apply.index, apply.ops.clone()));
                            }
                            groups.push(write.group);
                        }
                    }
                    if !groups.is_empty() {
                        written.batches.push(groups);
                    }
                    written.token.extend(
                        batch
                            .token
                            .written()
                            .iter()
                            .filter(|&&(group, _)| group == GROUP)
                            .map(|&(_, index)| index),
                    );
                    for read in &batch.read_states {
                        self.read_states.push((id, read.1.index));
                    }
                    let now = std::mem::take(&mut batch.send_now);
                    self.deliver(id, now);
                    let after = self.shard(id).persisted(batch.token);
                    self.deliver(id, after);
                }
            }
            if !worked {
                return;
            }
        }
        panic!("the trio did not settle");
    }

    fn propose(&mut self, count: usize) {
        self.propose_to(GROUP, count);
        self.settle();
    }

    fn propose_to(&mut self, group: GroupId, count: usize) {
        for n in 0..count {
            let data = Bytes::from(format!("entry {n}"));
            self.shard(LEADER).propose(group, data).expect("leader");
        }
    }

    fn tick(&mut self, ids: &[NodeId]) {
        for &id in ids {
            // Node-level heartbeats (empty frames), as a node sends them.
            for peer in self.shard(id).tick() {
                self.shard(peer).heard_from(id);
            }
        }
        self.settle();
    }

    fn lag(&mut self, id: NodeId) -> (Index, Index) {
        let shard = self.shard(id);
        (
            shard.written_applied(GROUP).unwrap(),
            shard.applied(GROUP).unwrap(),
        )
    }
}

fn policy(ops_max: usize, ticks_max: u32) -> DeferPolicy {
    DeferPolicy {
        ops_max,
        bytes_max: 1 << 20,
        ticks_max,
        shard_bytes_max: 1 << 30,
        batch_ops_max: 1 << 30,
    }
}

fn put(index: Index) -> KvOp {
    KvOp::Put {
        key: key_of(index),
        value: Bytes::from(index.to_be_bytes().to_vec()),
    }
}

#[test]
fn applies_wait_until_due_and_are_written_sorted_with_each_keys_last_write() {
    let mut trio = Trio::new(policy(5, 1_000));
    let (start, _) = trio.lag(LEADER);
    trio.propose(4);
    for id in 1..=3 {
        assert_eq!(trio.lag(id), (start, start + 4), "node {id}: applies wait");
        let written = &trio.written[&id];
        assert!(written.applies.is_empty(), "node {id}: {written:?}");
        // Nothing above the written apply may be read back from storage.
        assert!(
            written.token.iter().all(|&index| index <= start),
            "node {id}: {written:?}"
        );
    }
    trio.propose(1);
    let indexes: Vec<Index> = (start + 1..=start + 5).collect();
    // Sorted by key; "shared" (every fourth index) once, with its last value.
    let mut expected: Vec<KvOp> = indexes
        .iter()
        .copied()
        .filter(|index| index % 4 != 0)
        .map(put)
        .collect();
    if let Some(&last_shared) = indexes.iter().rev().find(|index| *index % 4 == 0) {
        expected.push(put(last_shared));
    }
    expected.sort_by(|a, b| match (a, b) {
        (KvOp::Put { key: a, .. }, KvOp::Put { key: b, .. }) => a.cmp(b),
        _ => unreachable!(),
    });
    for id in 1..=3 {
        assert_eq!(trio.lag(id), (start + 5, start + 5), "node {id}");
        let written = &trio.written[&id];
        assert_eq!(
            written.applies,
            vec![(start + 5, expected.clone())],
            "node {id}"
        );
        assert_eq!(written.token.last(), Some(&(start + 5)), "node {id}");
    }
}

#[test]
fn ticks_write_applies_that_waited_long_enough() {
    let mut trio = Trio::new(policy(1_000, 3));
    let (start, _) = trio.lag(LEADER);
    trio.propose(2);
    trio.tick(&[1, 2, 3]);
    trio.tick(&[1, 2, 3]);
    for id in 1..=3 {
        assert_eq!(trio.lag(id), (start, start + 2), "node {id}");
    }
    trio.tick(&[1, 2, 3]);
    for id in 1..=3 {
        assert_eq!(trio.lag(id), (start + 2, start + 2), "node {id}");
    }
}

#[test]
fn a_read_writes_the_leaders_applies_it_waits_for() {
    let mut trio = Trio::new(policy(1_000, 1_000));
    let (start, _) = trio.lag(LEADER);
    trio.propose(3);
    trio.shard(LEADER)
        .read_index(GROUP, 1)
        .expect("leader reads");
    trio.settle();
    assert_eq!(trio.read_states, vec![(LEADER, start + 3)]);
    assert_eq!(trio.lag(LEADER), (start + 3, start + 3));
    // Nothing waits on the followers' applies.
    for id in 2..=3 {
        assert_eq!(trio.lag(id), (start, start + 3), "node {id}");
    }
}

#[test]
fn the_shard_wide_byte_bound_writes_applies_at_once() {
    let mut trio = Trio::new(DeferPolicy {
        shard_bytes_max: 1,
        ..policy(1_000, 1_000)
    });
    let (start, _) = trio.lag(LEADER);
    trio.propose(2);
    for id in 1..=3 {
        assert_eq!(trio.lag(id), (start + 2, start + 2), "node {id}");
    }
}

#[test]
fn applies_written_at_once_when_deferral_is_off() {
    let mut trio = Trio::new(DeferPolicy::OFF);
    let (start, _) = trio.lag(LEADER);
    trio.propose(1);
    for id in 1..=3 {
        assert_eq!(trio.lag(id), (start + 1, start + 1), "node {id}");
    }
}

/// A follower in step with a sleeping leader must not time out, even while it stays awake for
/// its waiting applies: only their age is ticked, not its election timer.
#[test]
fn a_follower_with_waiting_applies_does_not_campaign_under_a_sleeping_leader() {
    let mut trio = Trio::new(policy(1_000, 60));
    let term = trio.shard(LEADER).raft(GROUP).unwrap().term();
    let (start, _) = trio.lag(LEADER);
    trio.propose(1);
    // The leader's applies are written for a read, so it may sleep; the followers' wait.
    trio.shard(LEADER)
        .read_index(GROUP, 1)
        .expect("leader reads");
    trio.settle();
    assert_eq!(trio.lag(LEADER), (start + 1, start + 1));
    for _ in 0..50 {
        trio.tick(&[1, 2, 3]);
    }
    assert!(!trio.shard(LEADER).is_awake(GROUP), "the leader sleeps");
    for id in 2..=3 {
        assert_eq!(trio.lag(id), (start, start + 1), "node {id}: still waiting");
        assert!(
            trio.shard(id).is_awake(GROUP),
            "node {id} ticks its applies"
        );
        let raft = trio.shard(id).raft(GROUP).unwrap();
        assert_eq!(
            (raft.role(), raft.term()),
            (Role::Follower, term),
            "node {id}"
        );
    }
    for _ in 0..20 {
        trio.tick(&[1, 2, 3]);
    }
    for id in 1..=3 {
        assert_eq!(trio.lag(id), (start + 1, start + 1), "node {id}");
        assert!(
            !trio.shard(id).is_awake(GROUP),
            "node {id} sleeps once written"
        );
        assert_eq!(trio.shard(id).raft(GROUP).unwrap().term(), term);
    }
}

/// Groups that come due together are written over several batches, at most `batch_ops_max`
/// operations of due applies each (a group whose run alone is larger goes alone).
#[test]
fn groups_due_together_are_spread_over_batches() {
    const OTHER: GroupId = 4;
    let mut trio = Trio::with_groups(
        DeferPolicy {
            batch_ops_max: 3,
            ..policy(1_000, 2)
        },
        &[GROUP, OTHER],
    );
    trio.propose_to(GROUP, 2);
    trio.propose_to(OTHER, 2);
    trio.settle();
    trio.tick(&[1, 2, 3]);
    trio.tick(&[1, 2, 3]);
    for id in 1..=3 {
        let shard = trio.shard(id);
        for group in [GROUP, OTHER] {
            assert_eq!(
                shard.written_applied(group),
                shard.applied(group),
                "node {id} group {group}"
            );
        }
        // Two operations each: both due on the same tick, written one group per batch.
        assert_eq!(
            trio.written[&id].batches,
            vec![vec![GROUP], vec![OTHER]],
            "node {id}"
        );
    }
}

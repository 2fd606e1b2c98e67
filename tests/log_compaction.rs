//! The log compaction policy (`src/shard/compaction.rs`) driven through real shards: logs stay
//! short while every member keeps up (the leader cuts, followers keep half the held entries);
//! a leader cuts only where every follower holds the log, so one cut off for a while catches
//! up from the log, not an image (the test that pins the leader's rule: here the harness is
//! synchronous, so in the healthy test every follower always holds everything); past the
//! bound the log is cut anyway and a follower behind asks for an image.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kahuna::raft::{ConfState, Config, Entry, GroupId, Index, Message, NodeId, RestoreState};
use kahuna::shard::{CompactionPolicy, Shard, StateMachine};
use kahuna::storage::KvOp;

/// Counts what it applies (the tests compare replicas by it).
#[derive(Default)]
struct Counter {
    applied: Vec<Index>,
}

impl StateMachine for Counter {
    fn apply(&mut self, _group: GroupId, entry: &Entry, _ops: &mut Vec<KvOp>) {
        self.applied.push(entry.index);
    }
}

const GROUP: GroupId = 7;
const LEADER: NodeId = 1;
/// The follower the tests cut off.
const CUT: NodeId = 3;

/// Three shards of one group, wired by hand; storage is synchronous (a batch is durable when
/// collected). Records every image a node asked for.
struct Trio {
    shards: BTreeMap<NodeId, Shard<Counter>>,
    policy: CompactionPolicy,
    /// Nodes that dropped all traffic to and from them.
    isolated: BTreeSet<NodeId>,
    images_wanted: Vec<(NodeId, GroupId)>,
    /// Per node, the compactions made: (cut point, last index then).
    cuts: BTreeMap<NodeId, Vec<(Index, Index)>>,
}

impl Trio {
    fn new(policy: CompactionPolicy) -> Trio {
        let mut shards = BTreeMap::new();
        for id in 1..=3 {
            let peers = (1..=3).filter(|&p| p != id).collect();
            let raft = Config {
                election_ticks: 10,
                heartbeat_ticks: 2,
                ..Config::default()
            };
            let mut config = kahuna::shard::ShardConfig::new(id, peers, raft);
            // The rules pinned here cut at the written applied index: applies are written as
            // they happen (deferred applies are tests/shard_deferred_applies.rs's).
            config.defer = kahuna::shard::DeferPolicy::OFF;
            let mut shard = Shard::new(config, Counter::default());
            let restore = RestoreState {
                initial_conf: ConfState::new(vec![1, 2, 3], vec![]),
                ..Default::default()
            };
            shard.add_group(GROUP, restore).expect("group starts");
            shards.insert(id, shard);
        }
        let mut trio = Trio {
            shards,
            policy,
            isolated: BTreeSet::new(),
            images_wanted: Vec::new(),
            cuts: BTreeMap::new(),
        };
        trio.shard(LEADER).raft_mut(GROUP).unwrap().campaign();
        trio.settle();
        assert!(trio.shard(LEADER).raft(GROUP).unwrap().is_leader());
        trio
    }

    fn shard(&mut self, id: NodeId) -> &mut Shard<Counter> {
        self.shards.get_mut(&id).unwrap()
    }

    fn deliver(&mut self, from: NodeId, messages: BTreeMap<NodeId, Vec<Message>>) {
        for (to, messages) in messages {
            if self.isolated.contains(&from) || self.isolated.contains(&to) {
                continue;
            }
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
                    for &group in &batch.snapshots_wanted {
                        self.images_wanted.push((id, group));
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

    /// One compaction pass on every node, as the node's core makes once a second.
    fn compact(&mut self) {
        let policy = self.policy;
        for id in 1..=3 {
            let shard = self.shards.get_mut(&id).unwrap();
            if let Some(index) = shard.compaction_point(GROUP, &policy) {
                let last = shard.raft(GROUP).unwrap().last_index();
                shard
                    .compact(GROUP, index)
                    .expect("a point the policy chose");
                self.cuts.entry(id).or_default().push((index, last));
            }
        }
        self.settle();
    }

    /// Proposes `count` entries in rounds of ten, with a compaction pass after each round.
    fn write(&mut self, count: usize) {
        for round in 0..count / 10 {
            for n in 0..10 {
                let data = Bytes::from(format!("{round}-{n}"));
                self.shard(LEADER).propose(GROUP, data).expect("leader");
            }
            self.settle();
            self.compact();
        }
    }

    /// Heartbeat rounds from the leader (the other nodes do not tick, so no one campaigns).
    fn heartbeats(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let _ = self.shard(LEADER).tick();
            self.settle();
        }
    }

    fn log(&mut self, id: NodeId) -> (Index, usize, Index) {
        let raft = self.shard(id).raft(GROUP).unwrap();
        (raft.first_index(), raft.log_len(), raft.last_index())
    }

    fn applied(&mut self, id: NodeId) -> Vec<Index> {
        self.shard(id).state_machine().applied.clone()
    }
}

#[test]
fn a_healthy_group_keeps_short_logs_and_never_needs_an_image() {
    let mut trio = Trio::new(CompactionPolicy::new(10_000, 32));
    trio.write(400);
    let last = trio.log(LEADER).2;
    assert!(last >= 400);
    // The leader cut where both followers held the log: at most the held threshold stays.
    let (_, leader_len, _) = trio.log(LEADER);
    assert!(leader_len <= 32, "leader log {leader_len}");
    for id in 2..=3 {
        let (first, len, node_last) = trio.log(id);
        assert_eq!(node_last, last, "node {id}");
        // A follower keeps half the held entries behind what it applied.
        assert!(
            len <= 32 && first > 1,
            "node {id}: first {first}, len {len}"
        );
        assert!(len >= 16, "node {id} kept {len} entries");
    }
    assert!(trio.cuts[&LEADER].len() >= 10, "{:?}", trio.cuts);
    // Both followers held everything at every pass (the harness settles first), so the
    // leader cut its whole log each time; the followers kept their margin.
    assert!(
        trio.cuts[&LEADER].iter().all(|&(cut, last)| cut == last),
        "{:?}",
        trio.cuts[&LEADER]
    );
    for id in 2..=3 {
        assert!(
            trio.cuts[&id].iter().all(|&(cut, last)| cut + 16 <= last),
            "node {id}: {:?}",
            trio.cuts[&id]
        );
    }
    assert_eq!(trio.images_wanted, vec![]);
    let leader_applied = trio.applied(LEADER);
    for id in 2..=3 {
        assert_eq!(trio.applied(id), leader_applied, "node {id}");
    }
}

/// A trio under `policy` that wrote 50 entries, lost its follower `CUT`, and wrote 300 more;
/// with the last index the cut follower holds.
fn with_a_follower_cut_off(policy: CompactionPolicy) -> (Trio, Index) {
    let mut trio = Trio::new(policy);
    trio.write(50);
    let behind = trio.log(CUT).2;
    trio.isolated.insert(CUT);
    trio.write(300);
    (trio, behind)
}

#[test]
fn a_follower_cut_off_holds_the_leaders_log_and_catches_up_from_it() {
    let (mut trio, behind) = with_a_follower_cut_off(CompactionPolicy::new(10_000, 32));
    // The leader kept every entry the cut follower lacks.
    let (first, _, last) = trio.log(LEADER);
    assert!(
        first <= behind + 1,
        "leader cut to {first}, follower at {behind}"
    );
    assert!(last >= behind + 300);
    trio.isolated.clear();
    trio.heartbeats(4);
    assert_eq!(trio.log(CUT).2, last, "the follower caught up");
    assert_eq!(trio.images_wanted, vec![], "from the log, not an image");
    // Once it holds the log, the leader cuts it again.
    trio.write(10);
    assert!(
        trio.log(LEADER).1 <= 32,
        "leader log {:?}",
        trio.log(LEADER)
    );
    assert_eq!(trio.applied(CUT), trio.applied(LEADER));
}

#[test]
fn past_the_bound_the_leader_cuts_and_a_follower_behind_needs_an_image() {
    let (mut trio, behind) = with_a_follower_cut_off(CompactionPolicy::new(100, 32));
    let (first, len, _) = trio.log(LEADER);
    assert!(first > behind + 1, "the leader cut past the follower");
    assert!(len <= 100, "leader log {len}");
    trio.isolated.clear();
    trio.heartbeats(4);
    assert!(
        trio.images_wanted.contains(&(LEADER, GROUP)),
        "{:?}",
        trio.images_wanted
    );
}

//! The kv state machine over a model store: revisions, compare-and-set, sessions (at-most-once,
//! original answers, bounded eviction, restarts), the cache under in-flight writes, and
//! determinism across replicas with different caches and restarts.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use bytes::Bytes;
use kahuna::kv::{
    fetch_blocking, session_key, Command, Completion, KvMachine, KvMachineConfig, KvReader, Op,
    Outcome, ReadError, Rejection, Session, StoredValue, ValueMeta, SESSIONS_END, SESSIONS_START,
};
use kahuna::raft::{Entry, EntryKind, GroupId, Index};
use kahuna::shard::StateMachine;
use kahuna::storage::KvOp;
use proptest::prelude::*;

type Data = Rc<RefCell<BTreeMap<(GroupId, Vec<u8>), Bytes>>>;

/// The group's kv data, as a backend would hold it.
struct ModelReader(Data);

impl KvReader for ModelReader {
    fn get(&self, group: GroupId, key: &[u8]) -> Result<Option<Bytes>, ReadError> {
        Ok(self.0.borrow().get(&(group, key.to_vec())).cloned())
    }

    fn scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, ReadError> {
        let data = self.0.borrow();
        let range = (group, start.to_vec())..(group, end.to_vec());
        Ok(data
            .range(range)
            .take(limit)
            .map(|((_, key), value)| (Bytes::copy_from_slice(key), value.clone()))
            .collect())
    }
}

/// One replica: a machine, its store and its log position per group.
struct Replica {
    config: KvMachineConfig,
    machine: KvMachine,
    data: Data,
    last_index: HashMap<GroupId, Index>,
    /// Ops applied but not yet written to `data` (a batch in flight).
    in_flight: Vec<(GroupId, Index, Vec<KvOp>)>,
    /// Prefetch mode (as on a node): reads are fetched before the apply, never during it.
    prefetch: bool,
    /// Fetches performed (prefetch mode).
    fetches: usize,
    /// Fetches taken from the machine (after a hint) and not yet read from `data`.
    hinted: Vec<kahuna::kv::Fetch>,
    /// Fetches read from `data` and not yet handed back to the machine.
    answered: Vec<kahuna::kv::Fetched>,
}

impl Replica {
    fn new(config: KvMachineConfig) -> Replica {
        let data = Data::default();
        let machine = KvMachine::new(config.clone(), Box::new(ModelReader(data.clone())));
        Replica {
            config,
            machine,
            data,
            last_index: HashMap::new(),
            in_flight: Vec::new(),
            prefetch: false,
            fetches: 0,
            hinted: Vec::new(),
            answered: Vec::new(),
        }
    }

    fn prefetching(config: KvMachineConfig) -> Replica {
        let mut replica = Replica::new(config.clone());
        replica.machine = KvMachine::prefetching(config);
        replica.prefetch = true;
        replica
    }

    /// Loses all memory, keeps the store (whose writes are all flushed first).
    fn restart(&mut self) {
        self.flush();
        // Answers to fetches of the old machine never reach the new one.
        self.hinted.clear();
        self.answered.clear();
        self.machine = if self.prefetch {
            KvMachine::prefetching(self.config.clone())
        } else {
            KvMachine::new(
                self.config.clone(),
                Box::new(ModelReader(self.data.clone())),
            )
        };
    }

    /// Prefetch mode: asks until the machine can apply `entry`, performing its fetches. The
    /// batches in flight land between a fetch being issued and read when `flush_between`.
    fn fetch_for(&mut self, group: GroupId, entry: &Entry, flush_between: bool) {
        for _ in 0..4 {
            if self.machine.can_apply(group, entry) {
                return;
            }
            let fetches = self.machine.take_fetches();
            if fetches.is_empty() && (!self.hinted.is_empty() || !self.answered.is_empty()) {
                // The entry waits for a fetch that a hint started: as on a node, it applies
                // once that fill arrives (and asks again for what it still lacks).
                self.read_hinted();
                self.fill_hinted();
                continue;
            }
            assert!(!fetches.is_empty(), "a refused entry queues a fetch");
            if flush_between {
                self.flush();
            }
            for fetch in fetches {
                let fetched = fetch_blocking(&ModelReader(self.data.clone()), fetch).unwrap();
                self.fetches += 1;
                self.machine.fill(fetched);
            }
        }
        panic!("entry {} still cannot apply after its fetches", entry.index);
    }

    /// A leader proposed a command on `key`: the machine may start its read now.
    fn hint(&mut self, group: GroupId, key: &Bytes) {
        self.machine.prefetch_hint(group, key);
        self.hinted.extend(self.machine.take_fetches());
    }

    /// A follower appended an entry holding `command` (at an index past everything applied;
    /// the hint does not depend on it): the machine may start its read now.
    fn appended(&mut self, group: GroupId, command: &Command) {
        let entry = Entry {
            index: self.last_index.get(&group).copied().unwrap_or(0) + 100,
            term: 1,
            kind: EntryKind::Normal,
            data: command.encode().unwrap(),
        };
        self.machine.entries_appended(group, &[entry]);
        self.hinted.extend(self.machine.take_fetches());
    }

    /// Performs the hinted fetches against storage as it is now (answers held back).
    fn read_hinted(&mut self) {
        for fetch in std::mem::take(&mut self.hinted) {
            let fetched = fetch_blocking(&ModelReader(self.data.clone()), fetch).unwrap();
            self.fetches += 1;
            self.answered.push(fetched);
        }
    }

    /// Hands the read answers back to the machine.
    fn fill_hinted(&mut self) {
        for fetched in std::mem::take(&mut self.answered) {
            self.machine.fill(fetched);
        }
    }

    /// Applies one entry without writing its ops.
    fn apply_entry(&mut self, group: GroupId, kind: EntryKind, data: Bytes) -> Vec<KvOp> {
        let index = self.last_index.entry(group).or_insert(0);
        *index += 1;
        let entry = Entry {
            index: *index,
            term: 1,
            kind,
            data,
        };
        if self.prefetch {
            let flush_between = entry.index % 2 == 0;
            self.fetch_for(group, &entry, flush_between);
        }
        let mut ops = Vec::new();
        self.machine.apply(group, &entry, &mut ops);
        self.in_flight.push((group, entry.index, ops.clone()));
        ops
    }

    /// Writes every in-flight batch and reports it visible.
    fn flush(&mut self) {
        for (group, index, ops) in std::mem::take(&mut self.in_flight) {
            let mut data = self.data.borrow_mut();
            for op in ops {
                match op {
                    KvOp::Put { key, value } => {
                        data.insert((group, key.to_vec()), value);
                    }
                    KvOp::PutJoined { key, head, tail } => {
                        let value = Bytes::from([head.as_slice(), &tail].concat());
                        data.insert((group, key.to_vec()), value);
                    }
                    KvOp::PutInline { key, value } => {
                        let value = Bytes::copy_from_slice(value.as_slice());
                        data.insert((group, key.as_slice().to_vec()), value);
                    }
                    KvOp::Delete { key } => {
                        data.remove(&(group, key.to_vec()));
                    }
                    KvOp::DeleteRange { .. } => panic!("the machine issues no range deletes"),
                }
            }
            drop(data);
            self.machine.persisted(group, index);
        }
    }

    /// Applies a command, writes its ops, returns its completion and ops.
    fn run(&mut self, group: GroupId, command: &Command) -> (Completion, Vec<KvOp>) {
        let ops = self.apply_entry(group, EntryKind::Normal, command.encode().unwrap());
        self.flush();
        let mut completions = self.machine.take_completions();
        assert_eq!(completions.len(), 1);
        (completions.pop().unwrap(), ops)
    }

    fn outcome(&mut self, group: GroupId, command: &Command) -> Outcome {
        self.run(group, command).0.outcome
    }

    fn stored(&self, group: GroupId, key: &[u8]) -> Option<StoredValue> {
        let data = self.data.borrow();
        let bytes = data.get(&(group, key.to_vec()))?;
        Some(StoredValue::decode(bytes).unwrap())
    }

    fn session_records(&self, group: GroupId) -> usize {
        let data = self.data.borrow();
        data.range((group, SESSIONS_START.to_vec())..(group, SESSIONS_END.to_vec()))
            .count()
    }
}

fn key(name: &str) -> Bytes {
    Bytes::copy_from_slice(name.as_bytes())
}

fn put(name: &str, value: &str) -> Command {
    Command {
        session: None,
        op: Op::Put {
            key: key(name),
            value: key(value),
        },
    }
}

fn delete(name: &str) -> Command {
    Command {
        session: None,
        op: Op::Delete { key: key(name) },
    }
}

fn cas(name: &str, expected_revision: Index, value: &str) -> Command {
    Command {
        session: None,
        op: Op::Cas {
            key: key(name),
            expected_revision,
            value: key(value),
        },
    }
}

fn with_session(mut command: Command, client_id: u64, sequence: u64) -> Command {
    command.session = Some(Session {
        client_id,
        sequence,
    });
    command
}

fn meta(revision: Index, create_revision: Index) -> ValueMeta {
    ValueMeta {
        revision,
        create_revision,
    }
}

const G: GroupId = 3;

#[test]
fn revisions_follow_the_raft_index_and_create_revision_survives_updates() {
    let mut replica = Replica::new(KvMachineConfig::default());
    assert_eq!(
        replica.outcome(G, &put("k", "a")),
        Outcome::Applied { revision: 1 }
    );
    replica.apply_entry(G, EntryKind::Noop, Bytes::new());
    assert_eq!(
        replica.outcome(G, &put("k", "b")),
        Outcome::Applied { revision: 3 }
    );
    let stored = replica.stored(G, b"k").unwrap();
    assert_eq!(stored.meta, meta(3, 1));
    assert_eq!(&stored.value[..], b"b");
    assert_eq!(
        replica.outcome(G, &delete("k")),
        Outcome::Deleted {
            previous_revision: 3
        }
    );
    assert_eq!(replica.stored(G, b"k"), None);
    // Re-created after a delete: a new create revision.
    replica.outcome(G, &put("k", "c"));
    assert_eq!(replica.stored(G, b"k").unwrap().meta, meta(5, 5));
}

#[test]
fn compare_and_set_on_revision_including_absent() {
    let mut replica = Replica::new(KvMachineConfig::default());
    assert_eq!(
        replica.outcome(G, &cas("k", 0, "a")),
        Outcome::Applied { revision: 1 }
    );
    let (completion, ops) = replica.run(G, &cas("k", 0, "b"));
    assert_eq!(completion.outcome, Outcome::RevisionMismatch { current: 1 });
    assert!(ops.is_empty(), "a failed compare-and-set writes nothing");
    assert_eq!(
        replica.outcome(G, &cas("k", 1, "c")),
        Outcome::Applied { revision: 3 }
    );
    assert_eq!(replica.stored(G, b"k").unwrap().meta, meta(3, 1));
    assert_eq!(
        replica.outcome(G, &cas("absent", 7, "x")),
        Outcome::RevisionMismatch { current: 0 }
    );
    let (completion, ops) = replica.run(G, &delete("absent"));
    assert_eq!(completion.outcome, Outcome::NotFound);
    assert!(ops.is_empty());
}

#[test]
fn non_commands_produce_nothing_and_bad_commands_are_rejected() {
    let mut replica = Replica::new(KvMachineConfig::default());
    assert!(replica
        .apply_entry(G, EntryKind::Noop, Bytes::new())
        .is_empty());
    assert!(replica
        .apply_entry(G, EntryKind::ConfChange, Bytes::from_static(&[0, 0, 0, 1]))
        .is_empty());
    assert!(replica
        .apply_entry(G, EntryKind::Normal, Bytes::new())
        .is_empty());
    assert!(replica.machine.take_completions().is_empty());

    let ops = replica.apply_entry(G, EntryKind::Normal, Bytes::from_static(b"garbage"));
    assert!(ops.is_empty());
    // A hand-made command aimed at the session range.
    let mut reserved = put("k", "v").encode().unwrap().to_vec();
    reserved[7] = 0x00;
    let ops = replica.apply_entry(G, EntryKind::Normal, Bytes::from(reserved));
    assert!(ops.is_empty());
    let outcomes: Vec<_> = replica
        .machine
        .take_completions()
        .into_iter()
        .map(|c| (c.index, c.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (4, Outcome::Rejected(Rejection::Malformed)),
            (5, Outcome::Rejected(Rejection::KeyReserved)),
        ]
    );
}

#[test]
fn a_retried_sequence_is_not_applied_again_and_gets_the_original_outcome() {
    let mut replica = Replica::new(KvMachineConfig::default());
    let first = with_session(cas("k", 0, "a"), 42, 1);
    let (completion, ops) = replica.run(G, &first);
    assert_eq!(completion.outcome, Outcome::Applied { revision: 1 });
    assert!(!completion.replayed);
    assert_eq!(ops.len(), 2, "the value and the session record");

    // The same command retried (say, after a leader change): without the session it would be a
    // revision mismatch; with it, the original answer and no write.
    let (retry, ops) = replica.run(G, &first);
    assert_eq!(retry.outcome, Outcome::Applied { revision: 1 });
    assert!(retry.replayed);
    assert_eq!(retry.index, 2);
    assert!(ops.is_empty());
    assert_eq!(replica.stored(G, b"k").unwrap().meta, meta(1, 1));

    // The next sequence applies; a retry older than the last is refused, not applied.
    assert_eq!(
        replica.outcome(G, &with_session(put("k", "b"), 42, 2)),
        Outcome::Applied { revision: 3 }
    );
    let (stale, ops) = replica.run(G, &first);
    assert_eq!(stale.outcome, Outcome::SequenceStale { last_sequence: 2 });
    assert!(!stale.replayed && ops.is_empty());
    // Gaps are allowed; another client is independent.
    assert_eq!(
        replica.outcome(G, &with_session(delete("k"), 42, 10)),
        Outcome::Deleted {
            previous_revision: 3
        }
    );
    assert_eq!(
        replica.outcome(G, &with_session(delete("k"), 7, 1)),
        Outcome::NotFound
    );
    let (retry, _) = replica.run(G, &with_session(delete("k"), 42, 10));
    assert!(retry.replayed);
    assert_eq!(
        retry.outcome,
        Outcome::Deleted {
            previous_revision: 3
        }
    );
    // Sessions are per group.
    assert_eq!(replica.outcome(9, &first), Outcome::Applied { revision: 1 });
}

/// An idle core drops every group's in-memory state whose writes storage shows; the next
/// commands reload what they need and decide exactly as before (sessions included).
#[test]
fn idle_groups_are_unloaded_and_reload_what_they_need() {
    let mut replica = Replica::prefetching(KvMachineConfig::default());
    for group in 1..=3 {
        replica.outcome(group, &with_session(put("k", "a"), 7, 1));
    }
    // A write in flight (applied, not yet written) keeps its group loaded.
    replica.apply_entry(3, EntryKind::Normal, put("k", "b").encode().unwrap());
    assert_eq!(replica.machine.unload_idle_groups(), 2);
    assert_eq!(replica.machine.session_count(1), None, "group 1 unloaded");
    assert!(replica.machine.session_count(3).is_some(), "group 3 kept");
    replica.flush();
    replica.machine.take_completions();
    assert_eq!(replica.machine.unload_idle_groups(), 1);
    // Reloaded from storage: the session's retry is recognised, revisions continue.
    let (retry, _) = replica.run(1, &with_session(put("k", "a"), 7, 1));
    assert!(retry.replayed, "the session table was reloaded");
    assert_eq!(retry.outcome, Outcome::Applied { revision: 1 });
    let (next, _) = replica.run(1, &with_session(put("k", "c"), 7, 2));
    assert_eq!(next.outcome, Outcome::Applied { revision: 3 });
    assert_eq!(replica.stored(1, b"k").unwrap().meta, meta(3, 1));
}

#[test]
fn sessions_survive_a_restart() {
    let mut replica = Replica::new(KvMachineConfig::default());
    let command = with_session(cas("k", 0, "a"), 5, 1);
    assert_eq!(
        replica.outcome(G, &command),
        Outcome::Applied { revision: 1 }
    );
    replica.restart();
    assert_eq!(replica.machine.session_count(G), None, "loaded lazily");
    let (retry, ops) = replica.run(G, &command);
    assert!(retry.replayed);
    assert_eq!(retry.outcome, Outcome::Applied { revision: 1 });
    assert!(ops.is_empty());
    assert_eq!(replica.machine.session_count(G), Some(1));
}

#[test]
fn the_session_table_is_bounded_and_evicts_the_least_recently_applied() {
    let config = KvMachineConfig {
        sessions_max: 3,
        ..KvMachineConfig::default()
    };
    let mut replica = Replica::new(config);
    for client in 1..=3 {
        replica.outcome(G, &with_session(put("k", "v"), client, 1));
    }
    // Client 1 applies again: client 2 is now the least recently used.
    replica.outcome(G, &with_session(put("k", "v"), 1, 2));
    let (completion, ops) = replica.run(G, &with_session(put("k", "v"), 4, 1));
    assert_eq!(completion.outcome, Outcome::Applied { revision: 5 });
    assert!(ops.contains(&KvOp::Delete {
        key: Bytes::copy_from_slice(&session_key(2))
    }));
    assert_eq!(replica.machine.session_count(G), Some(3));
    assert_eq!(replica.session_records(G), 3);
    // The documented cost: the evicted client's retry is applied again.
    let (retry, _) = replica.run(G, &with_session(put("k", "v"), 2, 1));
    assert!(!retry.replayed);
    assert_eq!(retry.outcome, Outcome::Applied { revision: 6 });
    // Clients 1 and 4 kept their sessions (client 3 was evicted by client 2's return).
    assert!(
        replica
            .run(G, &with_session(put("k", "v"), 1, 2))
            .0
            .replayed
    );
    assert!(
        replica
            .run(G, &with_session(put("k", "v"), 4, 1))
            .0
            .replayed
    );
    assert!(
        !replica
            .run(G, &with_session(put("k", "v"), 3, 1))
            .0
            .replayed
    );
    assert_eq!(replica.session_records(G), 3);
}

#[test]
fn writes_in_flight_are_answered_from_the_cache() {
    // The cache bound is 1, but keys written and not yet visible in storage must stay.
    let config = KvMachineConfig {
        cache_keys_max: 1,
        ..KvMachineConfig::default()
    };
    let mut replica = Replica::new(config);
    for (name, value) in [("a", "1"), ("b", "2"), ("c", "3")] {
        replica.apply_entry(G, EntryKind::Normal, put(name, value).encode().unwrap());
    }
    replica.apply_entry(G, EntryKind::Normal, cas("a", 1, "4").encode().unwrap());
    replica.apply_entry(G, EntryKind::Normal, delete("b").encode().unwrap());
    assert_eq!(replica.machine.cached_keys(G), 3);
    assert!(!replica.machine.unload_group(G), "writes are in flight");
    let outcomes: Vec<_> = replica
        .machine
        .take_completions()
        .into_iter()
        .map(|c| c.outcome)
        .collect();
    assert_eq!(
        outcomes[3..],
        [
            Outcome::Applied { revision: 4 },
            Outcome::Deleted {
                previous_revision: 2
            }
        ]
    );
    replica.flush();
    assert_eq!(replica.machine.cached_keys(G), 1);
    assert_eq!(replica.stored(G, b"a").unwrap().meta, meta(4, 1));
    assert!(replica.machine.unload_group(G));
    assert_eq!(
        replica.outcome(G, &cas("c", 3, "5")),
        Outcome::Applied { revision: 6 }
    );
}

#[test]
#[should_panic(expected = "before the snapshot at 10 is visible")]
fn reads_before_an_installed_snapshot_is_visible_are_refused() {
    let mut replica = Replica::new(KvMachineConfig::default());
    replica.machine.reset_group(G, 10);
    replica.last_index.insert(G, 10);
    replica.apply_entry(G, EntryKind::Normal, put("k", "v").encode().unwrap());
}

#[test]
fn after_a_snapshot_is_visible_the_group_reads_it() {
    let mut replica = Replica::new(KvMachineConfig::default());
    replica.outcome(G, &with_session(put("k", "old"), 1, 1));
    // A snapshot at 10 replaces the data: written by the driver, then reported visible.
    let snapshot_value = StoredValue {
        meta: meta(8, 6),
        value: key("new"),
    };
    replica.machine.reset_group(G, 10);
    replica.data.borrow_mut().clear();
    replica
        .data
        .borrow_mut()
        .insert((G, b"k".to_vec()), snapshot_value.encode());
    replica.machine.persisted(G, 10);
    replica.last_index.insert(G, 10);
    assert_eq!(
        replica.outcome(G, &cas("k", 8, "x")),
        Outcome::Applied { revision: 11 }
    );
    assert_eq!(replica.stored(G, b"k").unwrap().meta, meta(11, 6));
    // The snapshot had no sessions: client 1 starts over.
    assert!(
        !replica
            .run(G, &with_session(put("k", "old"), 1, 1))
            .0
            .replayed
    );
}

#[test]
#[should_panic(expected = "stored value of key")]
fn a_damaged_stored_value_stops_the_replica() {
    let mut replica = Replica::new(KvMachineConfig::default());
    replica
        .data
        .borrow_mut()
        .insert((G, b"k".to_vec()), Bytes::from_static(b"\x07bad"));
    replica.outcome(G, &put("k", "v"));
}

#[test]
#[should_panic(expected = "entry 1 applied after entry 1")]
fn applying_an_entry_twice_panics() {
    let mut replica = Replica::new(KvMachineConfig::default());
    replica.outcome(G, &put("k", "v"));
    replica.last_index.insert(G, 0);
    replica.outcome(G, &put("k", "v"));
}

/// A step of a replicated history: a command for a group (or a restart of the second replica).
#[derive(Clone, Debug)]
enum Step {
    Command(GroupId, Command),
    Restart,
    /// The prefetching replica is told a command on this key is coming (a leader's proposal):
    /// it may queue an early read, performed and filled at later steps.
    Hint(GroupId, &'static str),
    /// As `Hint`, the way a follower learns it: an entry holding this command was appended to
    /// its log (it may apply later, or never: a later leader may replace it).
    Appended(GroupId, Command),
    ReadHinted,
    FillHinted,
}

fn step() -> impl Strategy<Value = Step> {
    let name = prop::sample::select(vec!["a", "b", "c", "d"]);
    let op = prop_oneof![
        (name.clone(), "[a-z]{0,3}").prop_map(|(name, value)| put(name, &value)),
        name.clone().prop_map(delete),
        (name, 0u64..12, "[a-z]{0,3}")
            .prop_map(|(name, revision, value)| cas(name, revision, &value)),
    ];
    let session = proptest::option::of((1u64..6, 1u64..5));
    prop_oneof![
        10 => (1u64..3, op, session).prop_map(|(group, command, session)| {
            let command = match session {
                Some((client, sequence)) => with_session(command, client, sequence),
                None => command,
            };
            Step::Command(group, command)
        }),
        1 => Just(Step::Restart),
        4 => (1u64..3, prop::sample::select(vec!["a", "b", "c", "d"]))
            .prop_map(|(group, name)| Step::Hint(group, name)),
        3 => (1u64..3, prop::sample::select(vec!["a", "b", "c", "d"]), "[a-z]{0,2}")
            .prop_map(|(group, name, value)| Step::Appended(group, put(name, &value))),
        2 => Just(Step::ReadHinted),
        2 => Just(Step::FillHinted),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Two replicas with different caches, one of them restarting and writing in bursts, apply
    /// the same entries to the same mutations and the same outcomes.
    #[test]
    fn replicas_apply_identically(steps in proptest::collection::vec(step(), 1..80)) {
        let mut steady = Replica::new(KvMachineConfig { sessions_max: 3, cache_keys_max: 64 });
        let mut bumpy = Replica::new(KvMachineConfig { sessions_max: 3, cache_keys_max: 1 });
        // As on a node: reads fetched ahead, a tiny cache, batches landing at odd moments.
        let mut fetching =
            Replica::prefetching(KvMachineConfig { sessions_max: 3, cache_keys_max: 1 });
        let mut steady_log = Vec::new();
        let mut bumpy_log = Vec::new();
        let mut fetching_log = Vec::new();
        let mut steady_completions = Vec::new();
        let mut bumpy_completions = Vec::new();
        let mut fetching_completions = Vec::new();
        for (position, step) in steps.into_iter().enumerate() {
            match step {
                Step::Restart => {
                    bumpy.restart();
                    fetching.restart();
                }
                Step::Hint(group, name) => fetching.hint(group, &key(name)),
                Step::Appended(group, command) => fetching.appended(group, &command),
                Step::ReadHinted => fetching.read_hinted(),
                Step::FillHinted => fetching.fill_hinted(),
                Step::Command(group, command) => {
                    let data = command.encode().unwrap();
                    steady_log.push(steady.apply_entry(group, EntryKind::Normal, data.clone()));
                    steady.flush();
                    bumpy_log.push(bumpy.apply_entry(group, EntryKind::Normal, data.clone()));
                    if position % 3 == 0 {
                        bumpy.flush();
                    }
                    fetching_log.push(fetching.apply_entry(group, EntryKind::Normal, data));
                    if position % 4 == 1 {
                        fetching.flush();
                    }
                }
            }
            steady_completions.extend(steady.machine.take_completions());
            bumpy_completions.extend(bumpy.machine.take_completions());
            fetching_completions.extend(fetching.machine.take_completions());
        }
        bumpy.flush();
        fetching.flush();
        prop_assert_eq!(&steady_log, &bumpy_log);
        prop_assert_eq!(&steady_completions, &bumpy_completions);
        prop_assert_eq!(&*steady.data.borrow(), &*bumpy.data.borrow());
        prop_assert_eq!(&steady_log, &fetching_log);
        prop_assert_eq!(&steady_completions, &fetching_completions);
        prop_assert_eq!(&*steady.data.borrow(), &*fetching.data.borrow());
    }
}

/// Values read ahead for proposals that never apply (a leader that lost its leadership) do not
/// accumulate: beyond a bound they are dropped, and a later apply of such a key still reads
/// the right value.
#[test]
fn unused_read_ahead_values_are_bounded() {
    let mut replica = Replica::prefetching(KvMachineConfig::default());
    // The group needs state before hints count: one applied command.
    replica.outcome(1, &put("k0", "v"));
    let names: Vec<String> = (0..2000).map(|i| format!("lost-{i}")).collect();
    for chunk in names.chunks(100) {
        // Proposals arrive together; their reads go out as one fetch.
        for name in chunk {
            replica.machine.prefetch_hint(1, &key(name));
        }
        replica.hinted.extend(replica.machine.take_fetches());
        replica.read_hinted();
        replica.fill_hinted();
    }
    assert!(replica.machine.prefetched_keys(1) > 1000, "hints were read");
    replica.flush();
    replica.machine.persisted(1, 1);
    assert_eq!(replica.machine.prefetched_keys(1), 0);
    // Nothing was lost by dropping them: the key is fetched again when an entry needs it.
    assert_eq!(
        replica.outcome(1, &put("lost-7", "x")),
        Outcome::Applied { revision: 2 }
    );
}

#[test]
fn prefetch_mode_reads_nothing_during_apply_and_fetches_what_it_needs() {
    let mut replica = Replica::prefetching(KvMachineConfig {
        sessions_max: 4,
        cache_keys_max: 1,
    });
    let mut writer = Replica::new(KvMachineConfig::default());
    // Data written before this machine existed (as after a restart).
    writer.outcome(1, &put("a", "1"));
    replica.data = writer.data.clone();
    replica.last_index.insert(1, 1);
    replica.restart();
    // The key is not in memory: the first answer is no, with one fetch for it.
    let command = with_session(cas("a", 1, "2"), 7, 1);
    let entry = Entry {
        index: 2,
        term: 1,
        kind: EntryKind::Normal,
        data: command.encode().unwrap(),
    };
    assert!(!replica.machine.can_apply(1, &entry));
    // Asking again while the fetch is queued adds nothing.
    assert!(!replica.machine.can_apply(1, &entry));
    let fetches = replica.machine.take_fetches();
    assert_eq!(fetches.len(), 1);
    assert_eq!(fetches[0].keys, vec![key("a")]);
    assert!(
        fetches[0].sessions,
        "a session command needs the session table"
    );
    // While it is out, nothing more is queued.
    assert!(!replica.machine.can_apply(1, &entry));
    assert!(replica.machine.take_fetches().is_empty());
    let fetched = fetch_blocking(&ModelReader(replica.data.clone()), fetches[0].clone()).unwrap();
    replica.machine.fill(fetched);
    assert!(replica.machine.can_apply(1, &entry));
    assert_eq!(
        replica.outcome(1, &command),
        Outcome::Applied { revision: 2 },
        "decided against the fetched revision"
    );
}

/// A follower starts the read an entry's apply needs when the entry is appended, so that the
/// apply, when the commit arrives one round trip later, waits for nothing.
#[test]
fn a_follower_reads_ahead_for_appended_entries() {
    let mut replica = Replica::prefetching(KvMachineConfig::default());
    let mut writer = Replica::new(KvMachineConfig::default());
    writer.outcome(1, &put("a", "1"));
    writer.outcome(1, &put("b", "1"));
    replica.data = writer.data.clone();
    replica.last_index.insert(1, 2);
    replica.restart();
    // The group has state once it applied a command (hints before that are ignored).
    replica.outcome(1, &put("a", "2"));
    let command = put("b", "2");
    replica.appended(1, &command);
    assert_eq!(replica.hinted.len(), 1, "the append queued a read");
    assert_eq!(replica.hinted[0].keys, vec![key("b")]);
    replica.read_hinted();
    replica.fill_hinted();
    let fetches_before = replica.fetches;
    let entry = Entry {
        index: 4,
        term: 1,
        kind: EntryKind::Normal,
        data: command.encode().unwrap(),
    };
    assert!(replica.machine.can_apply(1, &entry), "nothing left to read");
    assert_eq!(
        replica.outcome(1, &command),
        Outcome::Applied { revision: 4 },
        "create revision kept from the value read ahead"
    );
    assert_eq!(replica.fetches, fetches_before);
    assert_eq!(replica.stored(1, b"b").unwrap().meta, meta(4, 2));
}

#[test]
fn a_fill_for_a_replaced_group_state_is_dropped() {
    let mut replica = Replica::prefetching(KvMachineConfig::default());
    let entry = Entry {
        index: 1,
        term: 1,
        kind: EntryKind::Normal,
        data: put("a", "1").encode().unwrap(),
    };
    assert!(!replica.machine.can_apply(1, &entry));
    let fetches = replica.machine.take_fetches();
    // A snapshot replaces the group's data before the fetch comes back.
    replica.machine.reset_group(1, 5);
    replica.machine.persisted(1, 5);
    let stale = fetch_blocking(&ModelReader(replica.data.clone()), fetches[0].clone()).unwrap();
    replica.machine.fill(stale);
    let later = Entry { index: 6, ..entry };
    assert!(
        !replica.machine.can_apply(1, &later),
        "the stale fill must not satisfy the new state"
    );
    assert_eq!(replica.machine.take_fetches().len(), 1, "it asks again");
}

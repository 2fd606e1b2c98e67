//! Criterion bench of the kv state machine's in-memory apply, as a node's reactor runs it for
//! every committed put: 1,024 session puts over 64 groups (each key in one) and 256 clients,
//! 10,000 keys, in
//! prefetch mode (hint at append, `can_apply`, `apply`), each group's batch reported persisted
//! after every 64 entries. The keys' revisions and the session tables are in memory after the
//! first rounds (as on a busy node), so this measures the machine's own bookkeeping: command
//! decoding, the revision cache, the session table and the ops it emits.

use std::cell::RefCell;
use std::collections::HashMap;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kahuna::kv::{
    fetch_blocking, Command, KvMachine, KvMachineConfig, KvReader, Op, ReadError, Session,
};
use kahuna::raft::{Entry, EntryKind, GroupId, Index};
use kahuna::shard::{Deferred, StateMachine};
use kahuna::storage::{Apply, KvOp};
use std::hint::black_box;

/// The node's allocator, so allocation costs are the node's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const GROUPS: u64 = 64;
const CLIENTS: u64 = 256;
const KEYS: u64 = 10_000;
const ENTRIES: usize = 1_024;
const BATCH: usize = 64;

/// Storage with nothing in it: every fetched key is absent, every session table empty.
struct Empty;

impl KvReader for Empty {
    fn get(&self, _group: GroupId, _key: &[u8]) -> Result<Option<Bytes>, ReadError> {
        Ok(None)
    }

    fn scan(
        &self,
        _group: GroupId,
        _start: &[u8],
        _end: &[u8],
        _limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, ReadError> {
        Ok(Vec::new())
    }
}

struct Harness {
    machine: KvMachine,
    last_index: HashMap<GroupId, Index>,
    sequences: Vec<u64>,
    /// A small xorshift state for the key choice (the bench is deterministic).
    seed: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            machine: KvMachine::prefetching(KvMachineConfig::default()),
            last_index: HashMap::new(),
            sequences: vec![0; CLIENTS as usize],
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// The next `ENTRIES` committed puts, round robin over groups and clients.
    fn entries(&mut self) -> Vec<(GroupId, Entry)> {
        (0..ENTRIES)
            .map(|i| {
                let client = i as u64 % CLIENTS;
                self.seed ^= self.seed << 13;
                self.seed ^= self.seed >> 7;
                self.seed ^= self.seed << 17;
                // A key belongs to one group (the node partitions by key): ~156 keys each.
                let key_index = self.seed % KEYS;
                let group = key_index % GROUPS;
                let key = format!("key-{key_index:06}");
                self.sequences[client as usize] += 1;
                let command = Command {
                    session: Some(Session {
                        client_id: client + 1,
                        sequence: self.sequences[client as usize],
                    }),
                    op: Op::Put {
                        key: Bytes::from(key),
                        value: Bytes::from(vec![0x5a; 256]),
                    },
                };
                let index = self.last_index.entry(group).or_insert(0);
                *index += 1;
                let entry = Entry {
                    index: *index,
                    term: 1,
                    kind: EntryKind::Normal,
                    data: command.encode().expect("a put encodes"),
                };
                (group, entry)
            })
            .collect()
    }

    /// Applies `entries` as the node does, fetching what the machine asks for.
    fn apply(&mut self, entries: &[(GroupId, Entry)]) -> usize {
        let mut ops = Vec::new();
        let mut emitted = 0;
        for batch in entries.chunks(BATCH) {
            for (group, entry) in batch {
                self.machine
                    .entries_appended(*group, std::slice::from_ref(entry));
                while !self.machine.can_apply(*group, entry) {
                    for fetch in self.machine.take_fetches() {
                        let fetched = fetch_blocking(&Empty, fetch).expect("empty storage");
                        self.machine.fill(fetched);
                    }
                }
                self.machine.apply(*group, entry, &mut ops);
                emitted += ops.len();
                ops.clear();
            }
            for (group, entry) in batch {
                self.machine.persisted(*group, entry.index);
            }
            black_box(self.machine.take_completions());
        }
        emitted
    }
}

fn kv_apply(c: &mut Criterion) {
    let harness = RefCell::new(Harness::new());
    // Warm: every key's revision and every session table in memory.
    for _ in 0..32 {
        let entries = harness.borrow_mut().entries();
        harness.borrow_mut().apply(&entries);
    }
    let mut group = c.benchmark_group("kv_apply");
    group.throughput(Throughput::Elements(ENTRIES as u64));
    group.bench_function("session_puts_1024", |b| {
        b.iter_batched(
            || harness.borrow_mut().entries(),
            |entries| black_box(harness.borrow_mut().apply(&entries)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// A group's deferred applies written out (`Deferred::into_apply`: sorted by key, each key's
/// last write): a run of 275 puts, what a group gathers in 500 ms at 256 clients over 64
/// groups, each put's key and value a slice of its own log entry buffer.
fn deferred_into_apply(c: &mut Criterion) {
    const RUN: u64 = 275;
    let run = || {
        let mut seed = 7u64;
        let mut deferred: Option<Deferred> = None;
        for index in 1..=RUN {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let entry = Bytes::from(format!("key-{:08}{}", (seed >> 33) % 1500, "v".repeat(300)));
            let apply = Apply {
                index,
                term: 1,
                conf_state: None,
                ops: vec![KvOp::Put {
                    key: entry.slice(..12),
                    value: entry.slice(12..),
                }],
            };
            match &mut deferred {
                Some(deferred) => deferred.merge(apply),
                None => deferred = Some(Deferred::new(apply)),
            }
        }
        deferred.expect("a run of applies")
    };
    let mut group = c.benchmark_group("deferred");
    group.throughput(Throughput::Elements(RUN));
    group.bench_function("into_apply_275_puts", |b| {
        b.iter_batched(
            run,
            |deferred| black_box(deferred.into_apply()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, kv_apply, deferred_into_apply);
criterion_main!(benches);

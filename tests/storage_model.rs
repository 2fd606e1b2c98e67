//! Random operation sequences (appends with suffix truncation, applies, compactions, restarts)
//! run against the RocksDB, SQLite and memory backends and a plain in-test model; after every
//! restart all three backends must recover exactly what the model holds. Catches engines that
//! disagree on ranges, deletes or ordering.

use std::collections::BTreeMap;

use bytes::Bytes;
use kahuna::raft::{Entry, EntryKind, HardState, SnapshotMeta};
use kahuna::storage::{
    Apply, Backend, GroupWrite, KvOp, MemoryBackend, RocksDbBackend, SqliteBackend, WriteBatch,
};
use proptest::prelude::*;

const GROUPS: u64 = 3;

#[derive(Clone, Debug)]
enum Op {
    Append {
        group: u64,
        back: u64,
        count: u64,
        new_term: bool,
    },
    Apply {
        group: u64,
        steps: u64,
    },
    Compact {
        group: u64,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..GROUPS, 0..6u64, 1..40u64, any::<bool>())
            .prop_map(|(group, back, count, new_term)| Op::Append { group, back, count, new_term }),
        3 => (0..GROUPS, 1..8u64).prop_map(|(group, steps)| Op::Apply { group, steps }),
        1 => (0..GROUPS).prop_map(|group| Op::Compact { group }),
        1 => Just(Op::Restart),
    ]
}

#[derive(Clone, Debug, Default)]
struct ModelGroup {
    snapshot: u64,
    snapshot_term: u64,
    log: Vec<Entry>,
    applied: u64,
    term: u64,
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl ModelGroup {
    fn last(&self) -> u64 {
        self.log.last().map_or(self.snapshot, |entry| entry.index)
    }

    fn term_at(&self, index: u64) -> u64 {
        if index == self.snapshot {
            return self.snapshot_term;
        }
        self.log[(index - self.snapshot - 1) as usize].term
    }
}

struct Backends {
    dir: tempfile::TempDir,
    memory: MemoryBackend,
    disks: Vec<Box<dyn Backend>>,
}

impl Backends {
    fn new() -> Backends {
        let dir = tempfile::tempdir().unwrap();
        let disks = Backends::open(dir.path());
        Backends {
            dir,
            memory: MemoryBackend::in_memory(),
            disks,
        }
    }

    fn open(path: &std::path::Path) -> Vec<Box<dyn Backend>> {
        vec![
            Box::new(RocksDbBackend::open_rocksdb(&path.join("rocks")).unwrap()),
            Box::new(SqliteBackend::open_sqlite(&path.join("db.sqlite")).unwrap()),
        ]
    }

    fn restart(&mut self) {
        self.memory.crash();
        self.disks.clear();
        self.disks = Backends::open(self.dir.path());
    }

    fn all(&mut self) -> Vec<&mut (dyn Backend + 'static)> {
        let mut all: Vec<&mut (dyn Backend + 'static)> = vec![&mut self.memory];
        all.extend(self.disks.iter_mut().map(|disk| disk.as_mut()));
        all
    }

    fn write(&mut self, write: GroupWrite) {
        let batch = WriteBatch {
            groups: vec![write],
            sync: true,
        };
        for backend in self.all() {
            backend.write(&batch).unwrap();
        }
    }
}

fn run(ops: Vec<Op>) {
    let mut backends = Backends::new();
    let mut model: Vec<ModelGroup> = vec![ModelGroup::default(); GROUPS as usize];
    for op in ops {
        match op {
            Op::Append {
                group,
                back,
                count,
                new_term,
            } => {
                let state = &mut model[group as usize];
                let first = (state.last() + 1)
                    .saturating_sub(back)
                    .max(state.applied + 1);
                if new_term || state.term == 0 {
                    state.term += 1;
                }
                let entries: Vec<Entry> = (first..first + count)
                    .map(|index| Entry {
                        index,
                        term: state.term,
                        kind: EntryKind::Normal,
                        data: Bytes::from(format!("{group}/{index}/{}", state.term)),
                    })
                    .collect();
                state.log.truncate((first - state.snapshot - 1) as usize);
                state.log.extend(entries.iter().cloned());
                let hard_state = HardState {
                    term: state.term,
                    vote: 1,
                    commit: state.applied,
                };
                backends.write(GroupWrite {
                    entries,
                    hard_state: Some(hard_state),
                    ..GroupWrite::new(group)
                });
            }
            Op::Apply { group, steps } => {
                let state = &mut model[group as usize];
                let target = (state.applied + steps).min(state.last());
                if target <= state.applied {
                    continue;
                }
                let mut ops = Vec::new();
                for index in state.applied + 1..=target {
                    let key = format!("k{}", index % 7).into_bytes();
                    let value = index.to_string().into_bytes();
                    state.kv.insert(key.clone(), value.clone());
                    ops.push(KvOp::Put {
                        key: key.into(),
                        value: value.into(),
                    });
                }
                let term = state.term_at(target);
                state.applied = target;
                backends.write(GroupWrite {
                    apply: Some(Apply {
                        index: target,
                        term,
                        conf_state: None,
                        ops,
                    }),
                    ..GroupWrite::new(group)
                });
            }
            Op::Compact { group } => {
                let state = &mut model[group as usize];
                if state.applied <= state.snapshot {
                    continue;
                }
                let meta = SnapshotMeta {
                    index: state.applied,
                    term: state.term_at(state.applied),
                    ..Default::default()
                };
                state.log.drain(..(state.applied - state.snapshot) as usize);
                state.snapshot = meta.index;
                state.snapshot_term = meta.term;
                backends.write(GroupWrite {
                    compact: Some(meta),
                    ..GroupWrite::new(group)
                });
            }
            Op::Restart => {
                backends.restart();
                check(&mut backends, &model);
            }
        }
    }
    backends.restart();
    check(&mut backends, &model);
}

fn check(backends: &mut Backends, model: &[ModelGroup]) {
    for (group, expected) in model.iter().enumerate() {
        for backend in backends.all() {
            let state = backend.load_group(group as u64).unwrap();
            assert_eq!(state.entries, expected.log, "group {group} log");
            assert_eq!(
                state.snapshot.index, expected.snapshot,
                "group {group} snapshot"
            );
            assert_eq!(
                state.applied_index, expected.applied,
                "group {group} applied"
            );
            let kv: BTreeMap<Vec<u8>, Vec<u8>> = backend
                .kv_scan(group as u64, b"", b"", 1000)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            assert_eq!(kv, expected.kv, "group {group} kv");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn backends_agree_with_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

//! Durable write throughput of the storage backends: one synced `WriteBatch` per iteration (what
//! a core writes per loop iteration), holding `entries` log entries of 256 B spread round-robin
//! over `groups` groups (each touched group also writes its hard state). Criterion's time per
//! iteration is the latency of one durable batch; batches/s = 1 / time, and the reported
//! throughput (elements) is entries/s.
//!
//! Runs on a temporary directory under the system temp dir (set TMPDIR to measure another disk).

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kahuna::raft::{Entry, EntryKind, HardState};
use kahuna::storage::{Backend, GroupWrite, RocksDbBackend, SqliteBackend, WriteBatch};

const ENTRY_BYTES: usize = 256;
const GROUP_COUNTS: [u64; 3] = [1, 100, 10_000];
const BATCH_ENTRIES: [usize; 3] = [1, 16, 256];

/// Produces batches and remembers each group's next index.
struct Workload {
    next_index: Vec<u64>,
    cursor: usize,
    data: Bytes,
}

impl Workload {
    fn new(groups: u64) -> Workload {
        Workload {
            next_index: vec![1; groups as usize],
            cursor: 0,
            data: Bytes::from(vec![0xAB; ENTRY_BYTES]),
        }
    }

    /// `entries` entries over consecutive groups (wrapping), one `GroupWrite` per touched group.
    fn batch(&mut self, entries: usize) -> WriteBatch {
        let groups = self.next_index.len();
        let touched = entries.min(groups);
        let mut batch = WriteBatch::new(true);
        for slot in 0..touched {
            let group = (self.cursor + slot) % groups;
            let count = entries / touched + usize::from(slot < entries % touched);
            let first = self.next_index[group];
            let log: Vec<Entry> = (first..first + count as u64)
                .map(|index| Entry {
                    index,
                    term: 1,
                    kind: EntryKind::Normal,
                    data: self.data.clone(),
                })
                .collect();
            self.next_index[group] += count as u64;
            let hard_state = HardState {
                term: 1,
                vote: 1,
                commit: first.saturating_sub(1),
            };
            let write = GroupWrite {
                entries: log,
                hard_state: Some(hard_state),
                ..GroupWrite::new(group as u64)
            };
            batch.push(write);
        }
        self.cursor = (self.cursor + touched) % groups;
        batch
    }
}

fn open(engine: &str, dir: &std::path::Path) -> Box<dyn Backend> {
    match engine {
        "rocksdb" => {
            Box::new(RocksDbBackend::open_rocksdb(&dir.join("rocksdb")).expect("open rocksdb"))
        }
        _ => Box::new(SqliteBackend::open_sqlite(&dir.join("kahuna.sqlite")).expect("open sqlite")),
    }
}

fn durable_batches(c: &mut Criterion) {
    for engine in ["rocksdb", "sqlite"] {
        let mut group = c.benchmark_group(format!("storage/{engine}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        for groups in GROUP_COUNTS {
            for entries in BATCH_ENTRIES {
                let dir = tempfile::tempdir().expect("temp dir");
                let mut backend = open(engine, dir.path());
                let mut workload = Workload::new(groups);
                // Every group exists before measuring (as on a running node).
                while workload.next_index.contains(&1) {
                    backend.write(&workload.batch(1024)).expect("prefill");
                }
                group.throughput(Throughput::Elements(entries as u64));
                let id = BenchmarkId::new(format!("groups={groups}"), format!("entries={entries}"));
                group.bench_function(id, |b| {
                    b.iter_batched(
                        || workload.batch(entries),
                        |batch| backend.write(&batch).expect("durable write"),
                        criterion::BatchSize::SmallInput,
                    )
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, durable_batches);
criterion_main!(benches);

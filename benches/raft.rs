//! Proposals per second through a 3-replica group of the Raft core, in memory: proposals,
//! steps, readies and message delivery, with persistence acknowledged at once (no IO). This is
//! the cost the consensus core adds per entry; the disk and the network are measured elsewhere.

use std::collections::VecDeque;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kahuna::raft::*;

struct Group {
    replicas: Vec<Raft>,
    inbox: VecDeque<Message>,
    applied: u64,
}

impl Group {
    fn new() -> Group {
        let voters = vec![1, 2, 3];
        let replicas = voters
            .iter()
            .map(|&id| {
                let config = Config {
                    id,
                    group: 1,
                    seed: id,
                    ..Config::default()
                };
                let restore = RestoreState {
                    initial_conf: ConfState::new(voters.clone(), vec![]),
                    ..Default::default()
                };
                Raft::new(config, restore).unwrap()
            })
            .collect();
        let mut group = Group {
            replicas,
            inbox: VecDeque::new(),
            applied: 0,
        };
        group.replicas[0].campaign();
        group.run();
        assert!(group.replicas[0].is_leader());
        group
    }

    /// Delivers messages and drains readies until the group is quiet.
    fn run(&mut self) {
        loop {
            for replica in &mut self.replicas {
                while replica.has_ready() {
                    let ready = replica.ready();
                    replica.on_persisted(ready.number);
                    if replica.id() == 1 {
                        self.applied += ready.committed_entries.len() as u64;
                    }
                    self.inbox.extend(ready.messages);
                    self.inbox.extend(ready.persisted_messages);
                }
            }
            if self.inbox.is_empty() {
                return;
            }
            while let Some(message) = self.inbox.pop_front() {
                let to = (message.to - 1) as usize;
                self.replicas[to].step(message).unwrap();
            }
        }
    }

    fn propose_batch(&mut self, batch: usize, payload: &Bytes) {
        for _ in 0..batch {
            self.replicas[0].propose(payload.clone()).unwrap();
        }
        self.run();
        // Keep memory bounded as a real node would: compact what every replica applied.
        for replica in &mut self.replicas {
            if replica.log_len() > 50_000 {
                let applied = replica.applied();
                replica.compact(applied).unwrap();
            }
        }
    }
}

fn proposals(c: &mut Criterion) {
    let payload = Bytes::from(vec![7u8; 256]);
    let mut bench = c.benchmark_group("raft_3_replicas_in_memory");
    for batch in [1usize, 64] {
        bench.throughput(Throughput::Elements(batch as u64));
        bench.bench_with_input(
            BenchmarkId::new("entries_256B_batch", batch),
            &batch,
            |b, &batch| {
                let mut group = Group::new();
                b.iter(|| group.propose_batch(batch, &payload));
                assert!(group.applied > 0);
            },
        );
    }
    bench.finish();
}

criterion_group!(benches, proposals);
criterion_main!(benches);

//! Owns [`Deferred`]: one group's applies that are computed (the state machine has applied them
//! in memory) but not yet handed to storage, and [`DeferPolicy`], when they must be.
//!
//! Why: every kv write is an insert into the kv family's memtable, a skiplist of the whole
//! core's recent writes, and an insert at a random key walks its ~20 levels through cache
//! misses (the largest single cost of a put at saturation, on each of the three replicas). A
//! group's applies gathered over many batches and written as one, sorted by key and with each
//! key's last write only, land close together in the skiplist: with the kv family's per-group
//! insert hint (`storage::rocks`) each insert starts from the previous one's position.
//!
//! Why it is safe: applies are not durable state. The log holds every applied entry until the
//! written applied index passes it (compaction is bounded by it), a restart re-applies from the
//! stored applied index, and the state machine keeps every key written above what storage shows
//! in memory (`KvMachine::persisted` is told only what was written). What waits on written
//! applies asks for them: a read parks until its index is written (the shard flushes the group
//! at once), and a group does not sleep or unload with applies deferred.

use crate::raft::Index;
use crate::storage::{Apply, KvOp};

/// When a group's deferred applies are written. `ops_max == 0` writes every apply at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeferPolicy {
    /// Write once this many kv operations are deferred in the group.
    pub ops_max: usize,
    /// Write once the deferred operations' keys and values reach this many bytes.
    pub bytes_max: usize,
    /// Write once the oldest deferred apply has waited this many ticks.
    pub ticks_max: u32,
    /// Across the shard: past this many deferred bytes, every group writes at its next collect.
    pub shard_bytes_max: usize,
    /// Operations one batch writes for groups that are due, at most (a group whose own run is
    /// larger still goes alone): the groups of a core start deferring together and come due
    /// on the same tick, and one batch carrying all their runs stalls the core's pipeline
    /// behind it. Writes that something waits for (a read, a membership change) do not count.
    pub batch_ops_max: usize,
}

impl DeferPolicy {
    /// Nothing deferred.
    pub const OFF: DeferPolicy = DeferPolicy {
        ops_max: 0,
        bytes_max: 0,
        ticks_max: 0,
        shard_bytes_max: 0,
        batch_ops_max: 0,
    };

    /// What a node runs with (`Default`); a constant so that tables of policies can name it.
    /// The age bound (50 ticks, 500 ms at the default tick) sets the run a group gathers at
    /// most loads (~275 operations at 256 clients over 64 groups, where 10 ticks gathered ~55):
    /// each run writes one applied record and each session's last record only, so longer runs
    /// write fewer (README, "deferred applies").
    pub const DEFAULT: DeferPolicy = DeferPolicy {
        ops_max: 1024,
        bytes_max: 512 * 1024,
        ticks_max: 50,
        shard_bytes_max: 32 * 1024 * 1024,
        batch_ops_max: 1024,
    };

    pub fn is_off(&self) -> bool {
        self.ops_max == 0
    }
}

impl Default for DeferPolicy {
    fn default() -> DeferPolicy {
        DeferPolicy::DEFAULT
    }
}

/// Applies merged in apply order. Invariant: `apply.index` is the last merged apply's, and
/// `apply.ops` are every merged apply's operations in apply order; `bytes` is their keys' and
/// values' size.
#[derive(Debug)]
pub struct Deferred {
    apply: Apply,
    bytes: usize,
    /// Ticks since the first merged apply.
    ticks: u32,
}

impl Deferred {
    pub fn new(apply: Apply) -> Deferred {
        let bytes = apply.ops.iter().map(KvOp::data_bytes).sum();
        Deferred {
            apply,
            bytes,
            ticks: 0,
        }
    }

    /// Appends `later`, applied after everything here.
    pub fn merge(&mut self, later: Apply) {
        assert!(
            later.index > self.apply.index,
            "deferred apply at {} merged after {}",
            later.index,
            self.apply.index
        );
        self.bytes += later.ops.iter().map(KvOp::data_bytes).sum::<usize>();
        self.apply.index = later.index;
        self.apply.term = later.term;
        // The configuration in force at the last index: the latest change merged.
        if later.conf_state.is_some() {
            self.apply.conf_state = later.conf_state;
        }
        self.apply.ops.extend(later.ops);
    }

    pub fn index(&self) -> Index {
        self.apply.index
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn tick(&mut self) {
        self.ticks = self.ticks.saturating_add(1);
    }

    /// Whether the group's own bounds say write now.
    pub fn due(&self, policy: &DeferPolicy) -> bool {
        self.apply.ops.len() >= policy.ops_max
            || self.bytes >= policy.bytes_max
            || self.ticks >= policy.ticks_max
    }

    /// A membership change is among the applies: it is written at once (it is rare, and a
    /// restart from storage should know it soon).
    pub fn changes_membership(&self) -> bool {
        self.apply.conf_state.is_some()
    }

    pub fn ops(&self) -> usize {
        self.apply.ops.len()
    }

    /// The apply to write: the operations sorted by key with each key's last one only, unless
    /// a range delete is among them (its order against the point operations then matters, and
    /// they are kept as applied).
    pub fn into_apply(self) -> Apply {
        let mut apply = self.apply;
        apply.ops = sorted_last_writes(apply.ops);
        apply
    }
}

fn point_key(op: &KvOp) -> Option<&[u8]> {
    match op {
        KvOp::Put { key, .. } | KvOp::PutJoined { key, .. } | KvOp::Delete { key } => Some(key),
        KvOp::PutInline { key, .. } => Some(key.as_slice()),
        KvOp::DeleteRange { .. } => None,
    }
}

/// `ops` in key order, each key's last operation only; `ops` unchanged if any is a range
/// delete. The final state is the same: operations on different keys commute, and on one key
/// the last one decides.
///
/// Sorts small records, not the operations: each is ~100 bytes (a stable sort moved it about
/// log2(n) times), and each comparison of two operations read both keys from the log entries
/// they point into, applied up to `DeferPolicy::ticks_max` ago and long gone from the cache (a
/// run of ~275 operations made ~2,000 such comparisons; the sort was ~3.7% of a node's CPU at
/// 256 clients, perf/HISTORY.md session 35). A record holds the key's first 16 bytes as a
/// big-endian number, so that most comparisons are one integer compare and each key is read
/// once, when its record is made; only keys equal in those bytes are compared in full.
fn sorted_last_writes(ops: Vec<KvOp>) -> Vec<KvOp> {
    if ops.len() < 2 || ops.iter().any(|op| point_key(op).is_none()) {
        return ops;
    }
    let key = |position: u32| -> &[u8] {
        point_key(&ops[position as usize]).expect("point operations only")
    };
    let mut order: Vec<SortRecord> = ops
        .iter()
        .enumerate()
        .map(|(position, op)| SortRecord::new(point_key(op).expect("checked above"), position))
        .collect();
    // By key, then by position: each key's run ends with its latest operation.
    order.sort_unstable_by(|a, b| {
        a.prefix
            .cmp(&b.prefix)
            .then_with(|| {
                if a.short && b.short {
                    // Both keys fit the prefix (zero-padded): equal prefixes leave the length.
                    a.len.cmp(&b.len)
                } else {
                    key(a.position).cmp(key(b.position))
                }
            })
            .then(a.position.cmp(&b.position))
    });
    let same_key = |a: &SortRecord, b: &SortRecord| {
        a.prefix == b.prefix && a.len == b.len && (a.short || key(a.position) == key(b.position))
    };
    // The last record of each key's run: the positions to keep, in key order.
    let keep: Vec<u32> = order
        .iter()
        .enumerate()
        .filter(|&(at, record)| order.get(at + 1).is_none_or(|next| !same_key(record, next)))
        .map(|(_, record)| record.position)
        .collect();
    drop(order);
    let mut slots: Vec<Option<KvOp>> = ops.into_iter().map(Some).collect();
    keep.into_iter()
        .map(|position| {
            slots[position as usize]
                .take()
                .expect("each position is kept once")
        })
        .collect()
}

/// One operation's place in `sorted_last_writes`'s sort.
struct SortRecord {
    /// The key's first `KEY_PREFIX_BYTES` bytes, big-endian, zero-padded: orders as the key's
    /// bytes do, up to ties between keys equal in those bytes.
    prefix: u128,
    /// The key's length, capped (only compared between short keys).
    len: u8,
    /// The whole key is in `prefix`.
    short: bool,
    position: u32,
}

const KEY_PREFIX_BYTES: usize = 16;

impl SortRecord {
    fn new(key: &[u8], position: usize) -> SortRecord {
        let mut bytes = [0u8; KEY_PREFIX_BYTES];
        let head = key.len().min(KEY_PREFIX_BYTES);
        bytes[..head].copy_from_slice(&key[..head]);
        SortRecord {
            prefix: u128::from_be_bytes(bytes),
            len: key.len().min(usize::from(u8::MAX)) as u8,
            short: key.len() <= KEY_PREFIX_BYTES,
            position: u32::try_from(position).expect("a run holds fewer than 2^32 operations"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn put(key: &str, value: &str) -> KvOp {
        KvOp::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn delete(key: &str) -> KvOp {
        KvOp::Delete {
            key: Bytes::copy_from_slice(key.as_bytes()),
        }
    }

    fn apply(index: Index, ops: Vec<KvOp>) -> Apply {
        Apply {
            index,
            term: 1,
            conf_state: None,
            ops,
        }
    }

    #[test]
    fn merged_applies_are_sorted_and_keep_each_keys_last_write() {
        let mut deferred = Deferred::new(apply(3, vec![put("b", "1"), put("a", "1")]));
        deferred.merge(apply(4, vec![delete("b"), put("c", "1")]));
        deferred.merge(apply(5, vec![put("a", "2")]));
        assert_eq!(deferred.index(), 5);
        assert_eq!(deferred.bytes(), 2 + 2 + 1 + 2 + 2);
        let written = deferred.into_apply();
        assert_eq!(written.index, 5);
        assert_eq!(written.ops, vec![put("a", "2"), delete("b"), put("c", "1")]);
    }

    /// The specification: a stable sort by key, then each key's last operation.
    fn reference(mut ops: Vec<KvOp>) -> Vec<KvOp> {
        if ops.iter().any(|op| point_key(op).is_none()) {
            return ops;
        }
        ops.sort_by(|a, b| point_key(a).cmp(&point_key(b)));
        let mut out: Vec<KvOp> = Vec::new();
        for op in ops {
            match out.last_mut() {
                Some(last) if point_key(last) == point_key(&op) => *last = op,
                _ => out.push(op),
            }
        }
        out
    }

    #[test]
    fn sorting_matches_a_stable_sort_keeping_each_keys_last_write() {
        // Keys that tie in their first 16 bytes, differ only past them, are prefixes of each
        // other, end in zero bytes (which the padding must not confuse) and repeat.
        let alphabet: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\0\0".to_vec(),
            b"ab".to_vec(),
            b"key-00000001".to_vec(),
            b"key-00000002".to_vec(),
            b"0123456789abcdef".to_vec(),
            b"0123456789abcdef\0".to_vec(),
            b"0123456789abcdefA".to_vec(),
            b"0123456789abcdefB".to_vec(),
            b"0123456789abcdefAB".to_vec(),
            vec![0xff; 20],
            vec![0xff; 16],
            [vec![b'x'; 300], b"tail".to_vec()].concat(),
            [vec![b'x'; 300], b"tail2".to_vec()].concat(),
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..2000 {
            let len = (next() % 40) as usize;
            let ops: Vec<KvOp> = (0..len)
                .map(|i| {
                    let key =
                        Bytes::from(alphabet[(next() % alphabet.len() as u64) as usize].clone());
                    if next() % 4 == 0 {
                        KvOp::Delete { key }
                    } else {
                        KvOp::Put {
                            key,
                            value: Bytes::from(format!("{round}-{i}")),
                        }
                    }
                })
                .collect();
            assert_eq!(
                sorted_last_writes(ops.clone()),
                reference(ops.clone()),
                "ops {ops:?}"
            );
        }
    }

    #[test]
    fn a_range_delete_keeps_the_apply_order() {
        let range = KvOp::DeleteRange {
            start: Bytes::from_static(b"a"),
            end: Bytes::new(),
        };
        let mut deferred = Deferred::new(apply(1, vec![put("b", "1")]));
        deferred.merge(apply(2, vec![range.clone(), put("a", "1")]));
        assert_eq!(
            deferred.into_apply().ops,
            vec![put("b", "1"), range, put("a", "1")]
        );
    }

    #[test]
    fn bounds_make_it_due() {
        let policy = DeferPolicy {
            ops_max: 3,
            bytes_max: 100,
            ticks_max: 2,
            shard_bytes_max: 1000,
            batch_ops_max: 1000,
        };
        let mut deferred = Deferred::new(apply(1, vec![put("a", "1")]));
        assert!(!deferred.due(&policy));
        deferred.tick();
        assert!(!deferred.due(&policy));
        deferred.tick();
        assert!(deferred.due(&policy));
        let mut deferred = Deferred::new(apply(1, vec![put("a", "1"), put("b", "1")]));
        deferred.merge(apply(2, vec![put("c", "1")]));
        assert!(deferred.due(&policy));
        let big = "x".repeat(100);
        assert!(Deferred::new(apply(1, vec![put("a", &big)])).due(&policy));
        let mut conf = apply(1, vec![]);
        assert!(!Deferred::new(conf.clone()).changes_membership());
        conf.conf_state = Some(crate::raft::ConfState::default());
        assert!(Deferred::new(conf).changes_membership());
    }

    #[test]
    #[should_panic(expected = "merged after")]
    fn an_older_apply_cannot_be_merged() {
        let mut deferred = Deferred::new(apply(5, vec![]));
        deferred.merge(apply(5, vec![]));
    }
}

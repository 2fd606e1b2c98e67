//! The RocksDB state column family updates its records in place (`inplace_update_support`; see
//! `src/storage/rocks.rs`): an apply rewrites the group's applied record inside the live
//! memtable instead of inserting one more version. That gives up point-in-time reads of that
//! family, which is sound only while nothing reads it at a point in time. These tests pin the
//! reads that matter: the newest record wins in a live memtable, across a flush and after a
//! reopen; a snapshot image keeps the position and the kv data of the moment it was taken while
//! later applies rewrite both under it (so the kv family must never update in place); and the
//! option is on for the state family and off for the kv and log families.

#[path = "support/rocks_options.rs"]
mod rocks_options;

use bytes::Bytes;
use kahuna::raft::{Entry, EntryKind, HardState};
use kahuna::storage::{
    decode_snapshot_data, Apply, Backend, GroupWrite, KvOp, RocksDbBackend, WriteBatch,
};

const GROUPS: [u64; 2] = [1, 2];

fn value(group: u64, index: u64) -> Bytes {
    Bytes::from(format!("group {group} value at {index}"))
}

/// Appends entry `index` to `group`'s log and applies it: a put of `key-{index % 5}`.
fn append_and_apply(backend: &mut dyn Backend, group: u64, index: u64) {
    let mut write = GroupWrite::new(group);
    write.entries = vec![Entry {
        index,
        term: 1,
        kind: EntryKind::Normal,
        data: Bytes::from_static(b"put"),
    }];
    write.hard_state = Some(HardState {
        term: 1,
        vote: 1,
        commit: index,
    });
    write.must_sync = index == 1;
    write.apply = Some(Apply {
        index,
        term: 1,
        conf_state: None,
        ops: vec![KvOp::Put {
            key: Bytes::from(format!("key-{}", index % 5)),
            value: value(group, index),
        }],
    });
    let mut batch = WriteBatch::new(true);
    batch.push(write);
    backend.write(&batch).unwrap();
}

/// Applies `range` to every group, the groups interleaved batch by batch.
fn apply_all(backend: &mut dyn Backend, range: std::ops::RangeInclusive<u64>) {
    for index in range {
        for group in GROUPS {
            append_and_apply(backend, group, index);
        }
    }
}

/// What every group must show after applying 1..=`last`.
fn check(backend: &mut dyn Backend, last: u64) {
    for group in GROUPS {
        let state = backend.load_group(group).unwrap();
        assert_eq!((state.applied_index, state.applied_term), (last, 1));
        assert_eq!(state.hard_state.commit, last);
        assert_eq!(state.last_index(), last);
        for index in last.saturating_sub(4).max(1)..=last {
            let key = format!("key-{}", index % 5);
            assert_eq!(
                backend.kv_get(group, key.as_bytes()).unwrap(),
                Some(value(group, index)),
                "group {group} {key}"
            );
        }
    }
}

fn pairs(chunks: &[Bytes]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut pairs = Vec::new();
    for chunk in chunks {
        decode_snapshot_data(chunk, &mut |key, value| {
            pairs.push((key.to_vec(), value.to_vec()))
        })
        .unwrap();
    }
    pairs
}

#[test]
fn applied_records_rewritten_in_place_read_back_newest_across_flush_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    let mut backend = RocksDbBackend::open_rocksdb(&path).unwrap();
    apply_all(&mut backend, 1..=40);
    check(&mut backend, 40);
    // The state family's memtable is flushed with the other families'; the next rewrites land
    // in a fresh memtable above an older file that holds the same keys.
    backend.release_write_buffers().unwrap();
    apply_all(&mut backend, 41..=60);
    check(&mut backend, 60);
    drop(backend);
    // The WAL holds every rewrite as an ordinary put; replaying it ends at the newest.
    let mut backend = RocksDbBackend::open_rocksdb(&path).unwrap();
    check(&mut backend, 60);
    apply_all(&mut backend, 61..=63);
    check(&mut backend, 63);
}

/// Keys of the big applies: enough data that a snapshot image's producer thread, which hands
/// over about 256 KiB at a time, is still reading from RocksDB after later writes.
const BIG_KEYS: usize = 1_000;

/// A value of exactly 1 KiB naming the index that wrote it, so every rewrite has the same size
/// (a same-size value is what an in-place update would overwrite under a reader).
fn big_value(index: u64) -> Vec<u8> {
    let mut value = format!("written at {index:08} ").into_bytes();
    value.resize(1024, b'.');
    value
}

/// Appends entry `index` to group 1's log and applies it: a put of every big key.
fn big_apply(backend: &mut dyn Backend, index: u64) {
    let mut write = GroupWrite::new(1);
    write.entries = vec![Entry {
        index,
        term: 1,
        kind: EntryKind::Normal,
        data: Bytes::from_static(b"puts"),
    }];
    write.must_sync = index == 1;
    write.hard_state = Some(HardState {
        term: 1,
        vote: 1,
        commit: index,
    });
    write.apply = Some(Apply {
        index,
        term: 1,
        conf_state: None,
        ops: (0..BIG_KEYS)
            .map(|key| KvOp::Put {
                key: Bytes::from(format!("big-{key:04}")),
                value: Bytes::from(big_value(index)),
            })
            .collect(),
    });
    let mut batch = WriteBatch::new(true);
    batch.push(write);
    backend.write(&batch).unwrap();
}

#[test]
fn a_snapshot_image_keeps_its_position_and_data_while_later_applies_rewrite_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    let mut backend = RocksDbBackend::open_rocksdb(&path).unwrap();
    big_apply(&mut backend, 1);
    big_apply(&mut backend, 2);
    let image = backend.kv_snapshot(1, 1 << 20).unwrap();
    assert_eq!(image.meta().index, 2);
    // These rewrite group 1's applied record in place and every kv value with one of the same
    // size, while the image is not yet read.
    for index in 3..=4 {
        big_apply(&mut backend, index);
    }
    let (meta, chunks) = image.read_all().unwrap();
    assert_eq!((meta.index, meta.term), (2, 1));
    let image_pairs = pairs(&chunks);
    assert_eq!(image_pairs.len(), BIG_KEYS);
    for (key, value) in &image_pairs {
        assert_eq!(
            value,
            &big_value(2),
            "{} in the image taken at 2",
            String::from_utf8_lossy(key)
        );
    }
    // A new image sees the newest position and data.
    let (meta, chunks) = backend.kv_snapshot(1, 1 << 20).unwrap().read_all().unwrap();
    assert_eq!(meta.index, 4);
    assert!(pairs(&chunks)
        .iter()
        .all(|(_, value)| value == &big_value(4)));
}

#[test]
fn only_the_state_column_family_updates_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    drop(RocksDbBackend::open_rocksdb(&path).unwrap());
    assert!(
        rocks_options::family_options(&path, "raft_state").contains("inplace_update_support=true")
    );
    // Snapshot images read the kv family through a point-in-time view, and the log keeps its
    // vector memtable: neither may update in place.
    for family in ["kv", "raft_log"] {
        assert!(
            rocks_options::family_options(&path, family).contains("inplace_update_support=false"),
            "{family}"
        );
    }
}

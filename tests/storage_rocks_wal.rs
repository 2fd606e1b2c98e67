//! The RocksDB engine's preallocated WAL: a database created with `open_preallocated` writes
//! its first batches into a recycled WAL file at least that large (so a synced write does not
//! grow the file), and the filler that made it is invisible: no group sees it, a reopen does
//! not redo it, and filler left by a crash during preallocation is removed at the next open.

use std::path::Path;

use bytes::Bytes;
use kahuna::raft::{Entry, EntryKind, HardState};
use kahuna::storage::{
    Backend, GroupWrite, RawBatch, RawEngine, RawOp, RocksDbBackend, RocksEngine, Space, WriteBatch,
};

const PREALLOCATED: usize = 4 << 20;

/// The size of the newest WAL file of the database in `dir`.
fn live_wal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".log"))
        .max_by_key(|entry| entry.file_name())
        .map_or(0, |entry| entry.metadata().unwrap().len())
}

fn filler_key() -> Vec<u8> {
    let mut key = vec![0xff; 8];
    key.extend_from_slice(b"wal-filler");
    key
}

fn write_entries(backend: &mut dyn Backend, group: u64, indexes: std::ops::RangeInclusive<u64>) {
    let mut write = GroupWrite::new(group);
    write.hard_state = Some(HardState {
        term: 1,
        vote: 1,
        commit: 0,
    });
    write.entries = indexes
        .map(|index| Entry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            data: Bytes::from(format!("entry {index}")),
        })
        .collect();
    write.must_sync = true;
    let mut batch = WriteBatch::new(true);
    batch.push(write);
    backend.write(&batch).unwrap();
}

#[test]
fn a_created_database_writes_into_a_preallocated_wal_and_hides_the_filler() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    let mut backend = RocksDbBackend::open_rocksdb_preallocated(&path, PREALLOCATED).unwrap();
    assert!(
        live_wal_bytes(&path) >= PREALLOCATED as u64,
        "live WAL is {} bytes",
        live_wal_bytes(&path)
    );
    write_entries(&mut backend, 7, 1..=3);
    assert_eq!(backend.groups().unwrap(), vec![7]);
    drop(backend);
    // A reopen recovers the synced batch from the recycled file and does not preallocate again.
    let mut backend = RocksDbBackend::open_rocksdb_preallocated(&path, PREALLOCATED).unwrap();
    assert_eq!(backend.groups().unwrap(), vec![7]);
    let state = backend.load_group(7).unwrap();
    assert_eq!(state.last_index(), 3);
    assert_eq!(state.entries[2].data, Bytes::from("entry 3"));
    drop(backend);
    let engine = RocksEngine::open(&path).unwrap();
    assert_eq!(engine.get(Space::State, &filler_key()).unwrap(), None);
}

#[test]
fn filler_left_by_a_crash_is_removed_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    {
        let mut engine = RocksEngine::open(&path).unwrap();
        let batch = RawBatch {
            ops: vec![RawOp::Put {
                space: Space::State,
                key: filler_key(),
                value: vec![0; 1024],
            }],
        };
        engine.write(&batch, true).unwrap();
    }
    let engine = RocksEngine::open(&path).unwrap();
    assert_eq!(engine.get(Space::State, &filler_key()).unwrap(), None);
}

//! The RocksDB log column family keeps its memtable as a vector (appends, sorted when read or
//! flushed; see `src/storage/rocks.rs`). These tests pin what that must not change: entries
//! inserted out of key order into one live memtable (groups interleaved, a suffix overwritten
//! after a leader change, a suffix truncated) read back in index order, with the newest version
//! of each entry, both from the live memtable and after a reopen; and the option is in force.

#[path = "support/rocks_options.rs"]
mod rocks_options;

use bytes::Bytes;
use kahuna::raft::{Entry, EntryKind, HardState};
use kahuna::storage::{Backend, GroupWrite, RocksDbBackend, WriteBatch};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: Bytes::from(format!("entry {index} term {term}")),
    }
}

fn append(
    backend: &mut dyn Backend,
    group: u64,
    term: u64,
    indexes: std::ops::RangeInclusive<u64>,
) {
    let mut write = GroupWrite::new(group);
    write.hard_state = Some(HardState {
        term,
        vote: 1,
        commit: 0,
    });
    write.entries = indexes.map(|index| entry(index, term)).collect();
    write.must_sync = true;
    let mut batch = WriteBatch::new(true);
    batch.push(write);
    backend.write(&batch).unwrap();
}

/// What group 1's log must be after `build`: 1..=49 of term 1, 50..=70 of term 2.
fn check(backend: &mut dyn Backend) {
    let expected: Vec<Entry> = (1..=49)
        .map(|index| entry(index, 1))
        .chain((50..=70).map(|index| entry(index, 2)))
        .collect();
    assert_eq!(backend.entries(1, 1, 1_000).unwrap(), expected);
    assert_eq!(
        backend.entries(1, 60, 65).unwrap(),
        expected[59..64].to_vec()
    );
    let state = backend.load_group(1).unwrap();
    assert_eq!(state.entries, expected);
    // The other group, written in between, is untouched.
    let other: Vec<Entry> = (1..=100).map(|index| entry(index, 1)).collect();
    assert_eq!(backend.entries(2, 1, 1_000).unwrap(), other);
}

/// Group 1 appends 1..=100 in term 1, interleaved with group 2's 1..=100 (key order and
/// arrival order differ); a new leader then overwrites 50..=70 in term 2, which truncates
/// 71..=100. All in one memtable: nothing here flushes.
fn build(backend: &mut dyn Backend) {
    for start in (1..=100).step_by(10) {
        append(backend, 2, 1, start..=start + 9);
        append(backend, 1, 1, start..=start + 9);
    }
    append(backend, 1, 2, 50..=70);
}

#[test]
fn a_live_log_memtable_reads_back_in_index_order_with_the_newest_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    let mut backend = RocksDbBackend::open_rocksdb(&path).unwrap();
    build(&mut backend);
    check(&mut backend);
    // Appends after a read (which sorted a copy of the live memtable) are seen by the next one.
    append(&mut backend, 1, 2, 71..=72);
    assert_eq!(backend.entries(1, 70, 1_000).unwrap().len(), 3);
    drop(backend);
    let backend = RocksDbBackend::open_rocksdb(&path).unwrap();
    assert_eq!(backend.entries(1, 70, 1_000).unwrap().len(), 3);
    assert_eq!(backend.entries(1, 72, 73).unwrap(), vec![entry(72, 2)]);
}

#[test]
fn a_reopened_log_recovers_the_same_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    let mut backend = RocksDbBackend::open_rocksdb(&path).unwrap();
    build(&mut backend);
    drop(backend);
    let mut backend = RocksDbBackend::open_rocksdb(&path).unwrap();
    check(&mut backend);
}

#[test]
fn the_log_column_family_uses_a_vector_memtable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    drop(RocksDbBackend::open_rocksdb(&path).unwrap());
    let text = rocks_options::options_text(&path);
    let log = rocks_options::family_options(&path, "raft_log");
    assert!(
        log.contains("memtable_factory={id=VectorRepFactory"),
        "log memtable factory: {:?}",
        log.lines().find(|line| line.contains("memtable_factory"))
    );
    assert!(text.contains("allow_concurrent_memtable_write=false"));
}

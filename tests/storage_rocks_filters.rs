//! The RocksDB kv column family keeps whole-key bloom filters in its tables and its memtable
//! (see `src/storage/rocks.rs`): a put whose key's revision is not cached reads the key first,
//! and for a new key the filters answer "absent" without searching. These tests pin the options
//! and check that the filters never change an answer: keys present in the memtable, in an L0
//! table or in both read back, and absent keys (beside them, before and after them) stay absent,
//! before and after a reopen.

#[path = "support/rocks_options.rs"]
mod rocks_options;

use bytes::Bytes;
use kahuna::storage::{Apply, Backend, GroupWrite, KvOp, RocksDbBackend, WriteBatch};

const GROUP: u64 = 3;

/// 1 KiB values, so 500 of them fill more than the smallest memtable a release flushes.
fn value(key: u64) -> Bytes {
    let mut value = format!("value-{key}-").into_bytes();
    value.resize(1024, b'x');
    Bytes::from(value)
}

/// Applies puts of `keys` at `index` (no log entries: applies alone).
fn put(backend: &mut dyn Backend, index: u64, keys: impl Iterator<Item = u64>) {
    let mut write = GroupWrite::new(GROUP);
    write.apply = Some(Apply {
        index,
        term: 1,
        conf_state: None,
        ops: keys
            .map(|key| KvOp::Put {
                key: Bytes::from(format!("key-{key:06}")),
                value: value(key),
            })
            .collect(),
    });
    let mut batch = WriteBatch::new(true);
    batch.push(write);
    backend.write(&batch).unwrap();
}

/// Table files in the database directory.
fn tables(path: &std::path::Path) -> usize {
    std::fs::read_dir(path)
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".sst")
        })
        .count()
}

fn check_reads(backend: &dyn Backend) {
    for key in 0..3_000u64 {
        let found = backend
            .kv_get(GROUP, format!("key-{key:06}").as_bytes())
            .unwrap();
        // Even keys were written, in 0..2,000; the odd ones between them and every key from
        // 2,000 on never were.
        if key % 2 == 0 && key < 2_000 {
            assert_eq!(found, Some(value(key)), "{key}");
        } else {
            assert_eq!(found, None, "{key}");
        }
    }
    // Absent neighbours of the stored keys, in other groups too.
    assert_eq!(backend.kv_get(GROUP, b"key-").unwrap(), None);
    assert_eq!(backend.kv_get(GROUP, b"key-0000000").unwrap(), None);
    assert_eq!(backend.kv_get(GROUP + 1, b"key-000000").unwrap(), None);
    assert_eq!(backend.kv_get(GROUP - 1, b"key-000000").unwrap(), None);
}

#[test]
fn filters_never_hide_a_stored_key_nor_show_an_absent_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    let mut backend = RocksDbBackend::open_rocksdb(&path).unwrap();
    // The first half flushed to an L0 table, then overwritten in part, then the second half in
    // the memtable: a key may be in the table, in the memtable or in both.
    put(&mut backend, 1, (0..1_000).step_by(2));
    backend.release_write_buffers().unwrap();
    assert_eq!(tables(&path), 1, "the first half is in a table");
    put(&mut backend, 2, (600..2_000).step_by(2));
    check_reads(&backend);
    backend.release_write_buffers().unwrap();
    assert_eq!(tables(&path), 2);
    check_reads(&backend);
    drop(backend);
    let backend = RocksDbBackend::open_rocksdb(&path).unwrap();
    check_reads(&backend);
}

#[test]
fn only_the_kv_column_family_keeps_filters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    drop(RocksDbBackend::open_rocksdb(&path).unwrap());
    let kv = rocks_options::family_options(&path, "kv");
    for option in [
        "filter_policy=bloomfilter",
        "whole_key_filtering=true",
        "memtable_whole_key_filtering=true",
        "memtable_prefix_bloom_size_ratio=0.020000",
    ] {
        assert!(kv.contains(option), "kv: {option} in\n{kv}");
    }
    // The log is read by range when a group loads, the state family's few records are hot:
    // filters there would only cost memory and flush time.
    for family in ["raft_log", "raft_state"] {
        let options = rocks_options::family_options(&path, family);
        assert!(options.contains("filter_policy=nullptr"), "{family}");
        assert!(
            options.contains("memtable_whole_key_filtering=false"),
            "{family}"
        );
    }
}

//! The RocksDB engine's written-out WAL (`wal_size`): a database opened with a WAL size target
//! writes into WAL files at least that large (so a synced write does not grow the file), also
//! after an idle core's memtable flush switched files; a database image taken mid-stream (WAL
//! files with zeros past their last record, as a crash leaves them) recovers every synced write;
//! and filler that databases made before the sizer wrote, left by a crash, is removed at open.
//! Also: the flushes that switch WAL files run at the lowest CPU priority.

use std::path::Path;

use bytes::Bytes;
use kahuna::raft::{Entry, EntryKind, HardState};
use kahuna::storage::{
    Backend, GroupWrite, RawBatch, RawEngine, RocksDbBackend, RocksEngine, Space, WriteBatch,
    WAL_FILL_BYTE,
};

const PREALLOCATED: usize = 4 << 20;

/// The sizes of the WAL files of the database in `dir`, newest last.
fn wal_sizes(dir: &Path) -> Vec<(String, u64)> {
    let mut sizes: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".log"))
        .map(|entry| {
            (
                entry.file_name().to_string_lossy().into_owned(),
                entry.metadata().unwrap().len(),
            )
        })
        .collect();
    sizes.sort();
    sizes
}

/// The size of the newest WAL file of the database in `dir`.
fn live_wal_bytes(dir: &Path) -> u64 {
    wal_sizes(dir).last().map_or(0, |(_, size)| *size)
}

/// Copies the database files in `from` to `to` as they are now, the database open: what a
/// crash of the process would leave (RocksDB has not retired or truncated anything).
fn copy_image(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn filler_key() -> Vec<u8> {
    let mut key = vec![0xff; 8];
    key.extend_from_slice(b"wal-filler");
    key
}

fn write_entries(backend: &mut dyn Backend, group: u64, indexes: std::ops::RangeInclusive<u64>) {
    write_entries_sized(backend, group, indexes, 0);
}

/// Synced batches of log entries for `group`, each entry's data `pad` bytes longer.
fn write_entries_sized(
    backend: &mut dyn Backend,
    group: u64,
    indexes: std::ops::RangeInclusive<u64>,
    pad: usize,
) {
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
            data: Bytes::from(format!("entry {index}{}", "-".repeat(pad))),
        })
        .collect();
    write.must_sync = true;
    let mut batch = WriteBatch::new(true);
    batch.push(write);
    backend.write(&batch).unwrap();
}

#[test]
fn a_database_writes_into_a_written_out_wal_from_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    let mut backend = RocksDbBackend::open_rocksdb_preallocated(&path, PREALLOCATED).unwrap();
    assert!(
        live_wal_bytes(&path) >= PREALLOCATED as u64,
        "live WAL is {} bytes",
        live_wal_bytes(&path)
    );
    write_entries(&mut backend, 7, 1..=3);
    // The synced write overwrote filler: the file did not grow.
    assert_eq!(live_wal_bytes(&path), PREALLOCATED as u64);
    assert_eq!(backend.groups().unwrap(), vec![7]);
    drop(backend);
    // A reopen recovers the synced batch and writes out the WAL it switched to.
    let mut backend = RocksDbBackend::open_rocksdb_preallocated(&path, PREALLOCATED).unwrap();
    assert_eq!(backend.groups().unwrap(), vec![7]);
    let state = backend.load_group(7).unwrap();
    assert_eq!(state.last_index(), 3);
    assert_eq!(state.entries[2].data, Bytes::from("entry 3"));
    assert!(
        live_wal_bytes(&path) >= PREALLOCATED as u64,
        "{:?}",
        wal_sizes(&path)
    );
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
        let mut batch = RawBatch::default();
        batch.put(Space::State, filler_key(), vec![0; 1024]);
        engine.write(&batch, true).unwrap();
    }
    let engine = RocksEngine::open(&path).unwrap();
    assert_eq!(engine.get(Space::State, &filler_key()).unwrap(), None);
}

/// The gap this closes: RocksDB truncates the WAL it retires to what was written in it, so an
/// idle core's memtable flush used to leave a small live WAL (and a small file to recycle), and
/// every synced write after it grew the file.
#[test]
fn an_idle_flush_leaves_every_wal_file_written_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    let mut backend = RocksDbBackend::open_rocksdb_preallocated(&path, PREALLOCATED).unwrap();
    let before = wal_sizes(&path);
    // Enough for the release to flush the log's memtable (it skips small ones).
    for first in (1..=1_000).step_by(100) {
        write_entries_sized(&mut backend, 7, first..=first + 99, 1_000);
    }
    backend.release_write_buffers().unwrap();
    let after = wal_sizes(&path);
    assert_ne!(
        before.last().map(|(name, _)| name),
        after.last().map(|(name, _)| name),
        "the flush switched WAL files"
    );
    for (name, size) in &after {
        assert!(
            *size >= PREALLOCATED as u64,
            "{name} is {size} bytes: {after:?}"
        );
    }
    write_entries(&mut backend, 7, 1_001..=1_003);
    drop(backend);
    let mut backend = RocksDbBackend::open_rocksdb(&path).unwrap();
    let state = backend.load_group(7).unwrap();
    assert_eq!(state.last_index(), 1_003);
}

/// The nice values of this process's threads named `name`.
fn thread_nice_values(name: &str) -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let task = task.ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            let tid: libc::id_t = task.file_name().to_str()?.parse().ok()?;
            // getpriority returns -1 both for nice -1 and for an error: clear errno first.
            unsafe { *libc::__errno_location() = 0 };
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
            (unsafe { *libc::__errno_location() } == 0).then_some(nice)
        })
        .collect()
}

/// Flushes run at the lowest CPU priority (`lower_background_priority` in the engine), so a
/// memtable flush does not take the CPU from the threads that serve requests. A flush thread
/// lowers itself when it takes a job: after a flush, one of them has.
#[test]
fn flushes_run_at_the_lowest_cpu_priority() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    let mut backend = RocksDbBackend::open_rocksdb(&path).unwrap();
    for first in (1..=1_000).step_by(100) {
        write_entries_sized(&mut backend, 7, first..=first + 99, 1_000);
    }
    backend.release_write_buffers().unwrap();
    let nice = thread_nice_values("rocksdb:high");
    assert!(!nice.is_empty(), "no flush thread (rocksdb:high) found");
    assert!(
        nice.contains(&19),
        "no flush thread at nice 19 after a flush: {nice:?}"
    );
}

/// A database image taken while it writes (WAL files with zeros past their last record, never
/// truncated by a retire) recovers every synced write, before and after a file switch.
#[test]
fn an_image_with_written_out_wals_recovers_every_synced_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    let mut backend = RocksDbBackend::open_rocksdb_preallocated(&path, PREALLOCATED).unwrap();
    write_entries(&mut backend, 7, 1..=50);
    let first = dir.path().join("image-1");
    copy_image(&path, &first);
    for start in (51..=1_050).step_by(100) {
        write_entries_sized(&mut backend, 7, start..=start + 99, 1_000);
    }
    backend.release_write_buffers().unwrap();
    write_entries(&mut backend, 7, 1_051..=1_060);
    write_entries(&mut backend, 9, 1..=5);
    let second = dir.path().join("image-2");
    copy_image(&path, &second);
    assert!(
        wal_sizes(&second)
            .iter()
            .all(|(_, size)| *size >= PREALLOCATED as u64),
        "the image holds written-out WALs: {:?}",
        wal_sizes(&second)
    );
    for (image, group, last) in [(&first, 7, 50), (&second, 7, 1_060), (&second, 9, 5)] {
        let mut backend = RocksDbBackend::open_rocksdb(image).unwrap();
        let state = backend.load_group(group).unwrap();
        assert_eq!(state.last_index(), last, "{}", image.display());
        assert_eq!(
            state.entries.last().unwrap().data,
            Bytes::from(format!("entry {last}")),
            "{}",
            image.display()
        );
    }
}

/// RocksDB's WAL block size.
const BLOCK: u64 = 32 << 10;

fn put(engine: &mut RocksEngine, key: &str, value_bytes: usize, sync: bool) {
    assert_eq!(
        key.len(),
        8,
        "every key is 8 bytes, so every batch has the same overhead"
    );
    let mut batch = RawBatch::default();
    batch.put(Space::Kv, key.as_bytes(), vec![b'v'; value_bytes]);
    engine.write(&batch, sync).unwrap();
}

/// Writes a WAL in which block `k` holds whole batches only ("lost-*"), an unsynced batch
/// ("kept-000") starts block `k + 1`, and a synced batch ("synced00") comes before both.
/// Returns `k`. No filler (the file's size is RocksDB's offset), so the layout is measured.
fn wal_with_a_block_of_whole_batches(engine: &mut RocksEngine, path: &Path) -> u64 {
    put(engine, "synced00", 100, true);
    // WAL bytes of a one-put batch beyond its value (values of 128..16383 bytes: 2-byte length).
    let before = live_wal_bytes(path);
    put(engine, "calib000", 1_000, false);
    let overhead = live_wal_bytes(path) - before - 1_000;
    // Pad to a block boundary with batches that fit where they start.
    let mut pads = 0;
    loop {
        let left = BLOCK - live_wal_bytes(path) % BLOCK;
        if left == BLOCK {
            break;
        }
        let value = if left >= overhead + 128 && left - overhead <= 16_000 {
            left - overhead
        } else if left > overhead + 16_000 {
            8_000
        } else {
            // Too little room for a batch: spill into the next block and pad on from there.
            1_000
        };
        put(engine, &format!("pad-{pads:04}"), value as usize, false);
        pads += 1;
    }
    let block = live_wal_bytes(path) / BLOCK;
    let last = BLOCK - 3 * overhead - 22_000;
    for (key, value) in [
        ("lost-001", 11_000),
        ("lost-002", 11_000),
        ("lost-003", last),
    ] {
        put(engine, key, value as usize, false);
    }
    assert_eq!(
        live_wal_bytes(path),
        (block + 1) * BLOCK,
        "the lost batches fill block {block} exactly"
    );
    put(engine, "kept-000", 500, false);
    block
}

/// Replays an image of `path` in which WAL block `block` reads back as `fill` (the filler synced
/// there before a power loss that lost the batches written over it and kept the next block).
/// Returns which of the batches recovery kept.
fn recover_with_a_lost_block(path: &Path, image: &Path, block: u64, fill: u8) -> Vec<&'static str> {
    copy_image(path, image);
    let wal = image.join(&wal_sizes(image).last().unwrap().0);
    let file = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![fill; BLOCK as usize], block * BLOCK)
        .unwrap();
    drop(file);
    let engine = RocksEngine::open(image).unwrap();
    ["synced00", "lost-001", "kept-000"]
        .into_iter()
        .filter(|key| engine.get(Space::Kv, key.as_bytes()).unwrap().is_some())
        .collect()
}

/// After a power loss that kept a later unsynced WAL block and lost an earlier one (on disk
/// the earlier one still holds the filler synced there), recovery must stop at the lost block:
/// replaying the later batch without the earlier ones would give a state that is not a prefix
/// of what was written. RocksDB reads zeros as padding and skips them silently, so zeros as
/// filler would replay "kept-000"; the filler byte reads as another log's record, the end.
#[test]
fn recovery_stops_at_a_lost_block_that_reads_as_filler() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocks");
    let mut engine = RocksEngine::open(&path).unwrap();
    let block = wal_with_a_block_of_whole_batches(&mut engine, &path);
    assert_eq!(
        recover_with_a_lost_block(&path, &dir.path().join("filler"), block, WAL_FILL_BYTE),
        vec!["synced00"]
    );
    // The test can fail: with zeros there, the batch after the lost block comes back.
    assert_eq!(
        recover_with_a_lost_block(&path, &dir.path().join("zeros"), block, 0),
        vec!["synced00", "kept-000"]
    );
}

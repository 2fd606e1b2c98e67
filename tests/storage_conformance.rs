//! Conformance tests of the storage contract, run identically against the RocksDB, SQLite and
//! in-memory backends: log append and suffix truncation, hard state, apply atomicity with the
//! applied index, snapshot streaming and install, compaction, recovery, and detection of damaged
//! records (bytes flipped through the backend's raw API).

use bytes::Bytes;
use kahuna::kv::{session_key, SESSIONS_END, SESSIONS_START, USER_KEYS_START};
use kahuna::raft::{ConfState, Entry, EntryKind, GroupId, HardState, Index, SnapshotMeta};
use kahuna::storage::{
    log_key, state_key, Apply, Backend, GroupWrite, InlineBytes, KvOp, MemoryBackend,
    RocksDbBackend, SnapshotInstall, Space, SqliteBackend, StateTag, StorageError, WriteBatch,
};
use tempfile::TempDir;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    RocksDb,
    Sqlite,
}

enum Opened {
    Memory(Box<MemoryBackend>),
    Disk(Box<dyn Backend>),
}

/// One backend under test plus the means to restart it.
struct Harness {
    kind: Kind,
    dir: TempDir,
    opened: Option<Opened>,
}

impl Harness {
    fn new(kind: Kind) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut harness = Harness {
            kind,
            dir,
            opened: None,
        };
        harness.opened = Some(harness.open());
        harness
    }

    fn open(&self) -> Opened {
        match self.kind {
            Kind::Memory => Opened::Memory(Box::new(MemoryBackend::in_memory())),
            Kind::RocksDb => Opened::Disk(Box::new(
                RocksDbBackend::open_rocksdb(&self.dir.path().join("rocks")).unwrap(),
            )),
            Kind::Sqlite => Opened::Disk(Box::new(
                SqliteBackend::open_sqlite(&self.dir.path().join("db.sqlite")).unwrap(),
            )),
        }
    }

    fn backend(&mut self) -> &mut dyn Backend {
        match self.opened.as_mut().unwrap() {
            Opened::Memory(memory) => memory.as_mut(),
            Opened::Disk(disk) => disk.as_mut(),
        }
    }

    /// Closes and reopens the backend (a crash that loses nothing unsynced for memory).
    fn restart(&mut self) {
        match self.opened.take().unwrap() {
            Opened::Memory(mut memory) => {
                memory.crash();
                self.opened = Some(Opened::Memory(memory));
            }
            Opened::Disk(disk) => {
                drop(disk);
                self.opened = Some(self.open());
            }
        }
    }

    fn write(&mut self, writes: Vec<GroupWrite>) -> Result<(), StorageError> {
        self.backend().write(&WriteBatch {
            groups: writes,
            sync: true,
        })
    }

    fn load(&mut self, group: GroupId) -> Result<kahuna::storage::RecoveryState, StorageError> {
        self.backend().load_group(group)
    }

    fn flip(&mut self, space: Space, key: &[u8], at: usize) {
        let mut value = self
            .backend()
            .raw_get(space, key)
            .unwrap()
            .expect("record to damage");
        let at = at.min(value.len() - 1);
        value[at] ^= 0x20;
        self.backend().raw_put(space, key, &value).unwrap();
    }
}

fn entry(index: Index, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: Bytes::from(format!("entry {index} term {term}")),
    }
}

fn entries(range: std::ops::RangeInclusive<Index>, term: u64) -> Vec<Entry> {
    range.map(|index| entry(index, term)).collect()
}

fn append(group: GroupId, entries: Vec<Entry>) -> GroupWrite {
    GroupWrite {
        entries,
        ..GroupWrite::new(group)
    }
}

fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn apply(group: GroupId, index: Index, ops: Vec<KvOp>) -> GroupWrite {
    GroupWrite {
        apply: Some(Apply {
            index,
            term: 1,
            conf_state: None,
            ops,
        }),
        ..GroupWrite::new(group)
    }
}

fn hard(group: GroupId, term: u64, commit: Index) -> GroupWrite {
    GroupWrite {
        hard_state: Some(HardState {
            term,
            vote: 1,
            commit,
        }),
        ..GroupWrite::new(group)
    }
}

fn conf() -> ConfState {
    ConfState::new(vec![1, 2, 3], vec![])
}

fn get(harness: &mut Harness, group: GroupId, key: &str) -> Option<String> {
    harness
        .backend()
        .kv_get(group, key.as_bytes())
        .unwrap()
        .map(|value| String::from_utf8(value.to_vec()).unwrap())
}

fn appends_and_recovers(kind: Kind) {
    let mut h = Harness::new(kind);
    h.write(vec![
        append(1, entries(1..=10, 1)),
        hard(1, 1, 4),
        append(2, entries(1..=3, 2)),
    ])
    .unwrap();
    h.write(vec![append(2, entries(4..=5, 2)), hard(2, 2, 5)])
        .unwrap();
    h.restart();
    let one = h.load(1).unwrap();
    assert_eq!(one.entries, entries(1..=10, 1));
    assert_eq!(
        one.hard_state,
        HardState {
            term: 1,
            vote: 1,
            commit: 4
        }
    );
    assert_eq!(one.torn_tail, None);
    let two = h.load(2).unwrap();
    assert_eq!(two.entries, entries(1..=5, 2));
    assert_eq!(two.last_index(), 5);
    assert_eq!(h.backend().entries(1, 3, 6).unwrap(), entries(3..=5, 1));
    assert_eq!(h.backend().entries(1, 9, 20).unwrap(), entries(9..=10, 1));
    assert_eq!(h.backend().entries(1, 11, 20).unwrap(), vec![]);
    assert_eq!(h.backend().groups().unwrap(), vec![1, 2]);
    let never = h.load(77).unwrap();
    assert_eq!(never.entries, vec![]);
    assert_eq!(never.hard_state, HardState::default());
}

fn truncates_suffix(kind: Kind) {
    let mut h = Harness::new(kind);
    h.write(vec![
        append(1, entries(1..=10, 1)),
        append(2, entries(1..=100, 1)),
    ])
    .unwrap();
    // Short truncation (point deletes) and long truncation (range delete).
    h.write(vec![
        append(1, entries(5..=6, 2)),
        append(2, entries(10..=10, 3)),
    ])
    .unwrap();
    let mut expected_one = entries(1..=4, 1);
    expected_one.extend(entries(5..=6, 2));
    let mut expected_two = entries(1..=9, 1);
    expected_two.push(entry(10, 3));
    assert_eq!(h.load(1).unwrap().entries, expected_one);
    h.restart();
    assert_eq!(h.load(1).unwrap().entries, expected_one);
    assert_eq!(h.load(2).unwrap().entries, expected_two);
    // Appending continues after the truncated log.
    h.write(vec![append(2, entries(11..=12, 3))]).unwrap();
    h.restart();
    expected_two.extend(entries(11..=12, 3));
    assert_eq!(h.load(2).unwrap().entries, expected_two);
}

fn rejects_bad_batches_atomically(kind: Kind) {
    let mut h = Harness::new(kind);
    h.write(vec![append(1, entries(1..=3, 1))]).unwrap();
    // A gap in group 1 makes the whole batch fail, group 2's part included.
    let error = h
        .write(vec![
            append(2, entries(1..=2, 1)),
            append(1, entries(5..=5, 1)),
        ])
        .unwrap_err();
    assert!(
        matches!(error, StorageError::InvalidBatch { group: 1, .. }),
        "{error}"
    );
    let error = h
        .write(vec![append(1, vec![entry(4, 1), entry(6, 1)])])
        .unwrap_err();
    assert!(
        matches!(error, StorageError::InvalidBatch { group: 1, .. }),
        "{error}"
    );
    let error = h
        .write(vec![append(u64::MAX, entries(1..=1, 1))])
        .unwrap_err();
    assert!(
        matches!(error, StorageError::InvalidBatch { .. }),
        "{error}"
    );
    h.restart();
    assert_eq!(h.load(2).unwrap().entries, vec![]);
    assert_eq!(h.load(1).unwrap().entries, entries(1..=3, 1));
    assert_eq!(h.backend().groups().unwrap(), vec![1]);
}

fn applies_with_applied_index(kind: Kind) {
    let mut h = Harness::new(kind);
    h.write(vec![
        append(1, entries(1..=5, 1)),
        hard(1, 1, 3),
        apply(1, 3, vec![put("a", "1"), put("b", "2")]),
    ])
    .unwrap();
    h.write(vec![apply(
        1,
        5,
        vec![
            KvOp::Delete {
                key: Bytes::from("a"),
            },
            put("c", "3"),
        ],
    )])
    .unwrap();
    h.restart();
    let state = h.load(1).unwrap();
    assert_eq!(state.applied_index, 5);
    assert_eq!(get(&mut h, 1, "a"), None);
    assert_eq!(get(&mut h, 1, "b").as_deref(), Some("2"));
    assert_eq!(get(&mut h, 1, "c").as_deref(), Some("3"));
    // Applying the same index again is refused: never apply twice.
    let error = h.write(vec![apply(1, 5, vec![put("d", "4")])]).unwrap_err();
    assert!(
        matches!(error, StorageError::InvalidBatch { group: 1, .. }),
        "{error}"
    );
    assert_eq!(get(&mut h, 1, "d"), None);
    // Range deletes and scans stay within the group.
    h.write(vec![apply(2, 1, vec![put("a", "other group")])])
        .unwrap();
    h.write(vec![apply(
        1,
        6,
        vec![KvOp::DeleteRange {
            start: Bytes::from("a"),
            end: Bytes::new(),
        }],
    )])
    .unwrap();
    assert_eq!(h.backend().kv_scan(1, b"", b"", 10).unwrap(), vec![]);
    assert_eq!(get(&mut h, 2, "a").as_deref(), Some("other group"));
    let scanned = h.backend().kv_scan(2, b"", b"", 10).unwrap();
    assert_eq!(
        scanned,
        vec![(Bytes::from("a"), Bytes::from("other group"))]
    );
}

fn streams_and_installs_snapshots(kind: Kind) {
    let mut h = Harness::new(kind);
    let ops: Vec<KvOp> = (0..200)
        .map(|i| put(&format!("key{i:04}"), &"v".repeat(100)))
        .collect();
    h.write(vec![
        append(1, entries(1..=10, 1)),
        GroupWrite {
            apply: Some(Apply {
                index: 8,
                term: 1,
                conf_state: Some(conf()),
                ops,
            }),
            ..GroupWrite::new(1)
        },
    ])
    .unwrap();
    let reader = h.backend().kv_snapshot(1, 4096).unwrap();
    // Later writes do not reach the reader.
    h.write(vec![apply(
        1,
        9,
        vec![put("key0000", "changed"), put("zzz", "new")],
    )])
    .unwrap();
    let (meta, chunks) = reader.read_all().unwrap();
    assert_eq!(
        meta,
        SnapshotMeta {
            index: 8,
            term: 1,
            conf_state: conf()
        }
    );
    assert!(chunks.len() > 3, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|chunk| chunk.len() <= 4096));
    let mut pairs = 0;
    for chunk in &chunks {
        kahuna::storage::decode_snapshot_data(chunk, &mut |_, value| {
            assert_eq!(value, "v".repeat(100).as_bytes());
            pairs += 1;
        })
        .unwrap();
    }
    assert_eq!(pairs, 200);

    // Group 2 has its own stale data and a log that the snapshot replaces.
    h.write(vec![
        append(2, entries(1..=20, 1)),
        apply(2, 2, vec![put("stale", "x"), put("key0001", "old")]),
    ])
    .unwrap();
    let install = SnapshotInstall {
        meta: meta.clone(),
        chunks: chunks.clone(),
    };
    h.write(vec![
        GroupWrite {
            snapshot: Some(install),
            ..GroupWrite::new(2)
        },
        hard(2, 1, 8),
    ])
    .unwrap();
    h.restart();
    let state = h.load(2).unwrap();
    assert_eq!(state.snapshot, meta);
    assert_eq!(state.entries, vec![]);
    assert_eq!((state.applied_index, state.applied_term), (8, 1));
    assert_eq!(state.conf_state, conf());
    assert_eq!(get(&mut h, 2, "stale"), None);
    assert_eq!(
        get(&mut h, 2, "key0001").as_deref(),
        Some(&*"v".repeat(100))
    );
    assert_eq!(h.backend().kv_scan(2, b"", b"", 1000).unwrap().len(), 200);
    // The log continues after the snapshot point and not before.
    assert!(h.write(vec![append(2, entries(8..=8, 1))]).is_err());
    h.write(vec![append(2, entries(9..=9, 2))]).unwrap();
    assert_eq!(h.load(2).unwrap().entries, entries(9..=9, 2));

    // Damaged snapshot data is refused and writes nothing.
    let mut bad = chunks[0].to_vec();
    bad[12] ^= 1;
    let install = SnapshotInstall {
        meta: SnapshotMeta { index: 50, ..meta },
        chunks: vec![Bytes::from(bad)],
    };
    let error = h
        .write(vec![GroupWrite {
            snapshot: Some(install),
            ..GroupWrite::new(3)
        }])
        .unwrap_err();
    assert!(
        matches!(error, StorageError::InvalidSnapshot { group: 3, .. }),
        "{error}"
    );
    assert_eq!(h.backend().groups().unwrap(), vec![1, 2]);
}

fn compacts(kind: Kind) {
    let mut h = Harness::new(kind);
    h.write(vec![
        append(1, entries(1..=10, 1)),
        hard(1, 1, 8),
        apply(1, 8, vec![put("a", "1")]),
    ])
    .unwrap();
    let meta = SnapshotMeta {
        index: 5,
        term: 1,
        conf_state: conf(),
    };
    h.write(vec![GroupWrite {
        compact: Some(meta.clone()),
        ..GroupWrite::new(1)
    }])
    .unwrap();
    h.restart();
    let state = h.load(1).unwrap();
    assert_eq!(state.snapshot, meta);
    assert_eq!(state.entries, entries(6..=10, 1));
    assert_eq!(h.backend().entries(1, 1, 11).unwrap(), vec![]);
    assert_eq!(
        h.backend().raw_get(Space::Log, &log_key(1, 5)).unwrap(),
        None
    );
    // Beyond the applied index: refused. Behind the snapshot point: a no-op.
    let beyond = SnapshotMeta {
        index: 9,
        term: 1,
        conf_state: conf(),
    };
    assert!(h
        .write(vec![GroupWrite {
            compact: Some(beyond),
            ..GroupWrite::new(1)
        }])
        .is_err());
    let stale = SnapshotMeta {
        index: 3,
        term: 1,
        conf_state: conf(),
    };
    h.write(vec![GroupWrite {
        compact: Some(stale),
        ..GroupWrite::new(1)
    }])
    .unwrap();
    // Compacting the whole log; appends continue after it.
    let all = SnapshotMeta {
        index: 10,
        term: 1,
        conf_state: conf(),
    };
    h.write(vec![
        apply(1, 10, vec![]),
        GroupWrite {
            compact: Some(all.clone()),
            ..GroupWrite::new(1)
        },
    ])
    .unwrap();
    h.write(vec![append(1, entries(11..=12, 2))]).unwrap();
    h.restart();
    let state = h.load(1).unwrap();
    assert_eq!(state.snapshot, all);
    assert_eq!(state.entries, entries(11..=12, 2));
    assert_eq!(get(&mut h, 1, "a").as_deref(), Some("1"));
}

fn detects_damage(kind: Kind) {
    // A damaged entry in the middle of the log.
    let mut h = Harness::new(kind);
    h.write(vec![append(1, entries(1..=10, 1)), hard(1, 1, 4)])
        .unwrap();
    h.flip(Space::Log, &log_key(1, 3), 7);
    h.restart();
    let error = h.load(1).unwrap_err();
    assert!(
        matches!(error, StorageError::Corruption { group: 1, .. }),
        "{error}"
    );
    assert!(h.backend().entries(1, 1, 10).is_err());

    // A damaged tail above the commit index is truncated and reported, once.
    let mut h = Harness::new(kind);
    h.write(vec![append(1, entries(1..=10, 1)), hard(1, 1, 7)])
        .unwrap();
    h.flip(Space::Log, &log_key(1, 9), 2);
    h.flip(Space::Log, &log_key(1, 10), 20);
    h.restart();
    let state = h.load(1).unwrap();
    assert_eq!(state.torn_tail, Some((9, 10)));
    assert_eq!(state.entries, entries(1..=8, 1));
    h.restart();
    let state = h.load(1).unwrap();
    assert_eq!(state.torn_tail, None);
    assert_eq!(state.entries, entries(1..=8, 1));
    h.write(vec![append(1, entries(9..=9, 2))]).unwrap();

    // A damaged tail at or below the commit index is an error, and nothing is removed.
    let mut h = Harness::new(kind);
    h.write(vec![append(1, entries(1..=10, 1)), hard(1, 1, 10)])
        .unwrap();
    h.flip(Space::Log, &log_key(1, 10), 0);
    h.restart();
    let error = h.load(1).unwrap_err();
    assert_eq!(
        error,
        StorageError::CommittedEntryDamaged {
            group: 1,
            index: 10,
            commit: 10
        }
    );
    assert!(h
        .backend()
        .raw_get(Space::Log, &log_key(1, 10))
        .unwrap()
        .is_some());
    // The applied index also counts as committed.
    let mut h = Harness::new(kind);
    h.write(vec![
        append(1, entries(1..=10, 1)),
        hard(1, 1, 2),
        apply(1, 10, vec![]),
    ])
    .unwrap();
    h.flip(Space::Log, &log_key(1, 10), 0);
    assert!(matches!(
        h.load(1).unwrap_err(),
        StorageError::CommittedEntryDamaged { .. }
    ));

    // Damaged state records and kv values.
    let mut h = Harness::new(kind);
    h.write(vec![
        append(1, entries(1..=2, 1)),
        hard(1, 1, 1),
        apply(1, 1, vec![put("k", "v")]),
    ])
    .unwrap();
    h.flip(Space::State, &state_key(1, StateTag::HardState), 10);
    assert!(matches!(
        h.load(1).unwrap_err(),
        StorageError::Corruption { group: 1, .. }
    ));
    let mut h = Harness::new(kind);
    h.write(vec![
        append(1, entries(1..=2, 1)),
        hard(1, 1, 1),
        apply(1, 1, vec![put("k", "v")]),
    ])
    .unwrap();
    h.flip(Space::State, &state_key(1, StateTag::Applied), 5);
    h.restart();
    assert!(matches!(
        h.load(1).unwrap_err(),
        StorageError::Corruption { group: 1, .. }
    ));
    assert!(h.backend().kv_snapshot(1, 1024).is_err());
    let mut h = Harness::new(kind);
    h.write(vec![apply(1, 1, vec![put("k", "v")])]).unwrap();
    let mut key = 1u64.to_be_bytes().to_vec();
    key.extend_from_slice(b"k");
    h.flip(Space::Kv, &key, 4);
    assert!(matches!(
        h.backend().kv_get(1, b"k").unwrap_err(),
        StorageError::Corruption { .. }
    ));
    assert!(h.backend().kv_scan(1, b"", b"", 10).is_err());
    assert!(matches!(
        h.backend()
            .kv_scan_page(1, b"", b"", 10, 1 << 20)
            .unwrap_err(),
        StorageError::Corruption { .. }
    ));
    let mut reader = h.backend().kv_snapshot(1, 1024).unwrap();
    assert!(
        reader.next_chunk().is_err(),
        "a damaged value must not be shipped"
    );
    // A scan that stops before a damaged value neither reads nor reports it.
    let mut h = Harness::new(kind);
    h.write(vec![apply(1, 1, vec![put("a", "1"), put("k", "v")])])
        .unwrap();
    h.flip(Space::Kv, &key, 4);
    assert_eq!(h.backend().kv_scan(1, b"", b"", 1).unwrap().len(), 1);
    let (page, more) = h.backend().kv_scan_page(1, b"", b"", 1, 1 << 20).unwrap();
    assert_eq!((page.len(), more), (1, true));
    assert!(h.backend().kv_scan_page(1, b"", b"", 2, 1 << 20).is_err());
}

fn destroys_groups(kind: Kind) {
    let mut h = Harness::new(kind);
    h.write(vec![
        append(1, entries(1..=3, 1)),
        hard(1, 1, 3),
        apply(1, 3, vec![put("a", "1")]),
    ])
    .unwrap();
    h.write(vec![append(2, entries(1..=3, 1))]).unwrap();
    h.write(vec![GroupWrite {
        destroy: true,
        ..GroupWrite::new(1)
    }])
    .unwrap();
    h.restart();
    assert_eq!(h.backend().groups().unwrap(), vec![2]);
    assert_eq!(
        h.load(1).unwrap(),
        kahuna::storage::RecoveryState {
            group: 1,
            ..Default::default()
        }
    );
    assert_eq!(get(&mut h, 1, "a"), None);
    // A destroyed group can be recreated from index 1.
    h.write(vec![append(1, entries(1..=1, 5))]).unwrap();
}

/// The reader is owned and `Send`: it streams on another thread while the owner keeps writing,
/// and sees only the data as of its creation.
fn snapshot_reader_moves_to_another_thread(kind: Kind) {
    let mut h = Harness::new(kind);
    let ops: Vec<KvOp> = (0..2000)
        .map(|i| put(&format!("key{i:05}"), "before"))
        .collect();
    h.write(vec![apply(1, 1, ops)]).unwrap();
    let reader = h.backend().kv_snapshot(1, 8192).unwrap();
    let streaming = std::thread::spawn(move || reader.read_all().unwrap());
    for index in 2..40 {
        let ops = (0..50)
            .map(|i| put(&format!("key{:05}", i * 40 + index), "after"))
            .collect();
        h.write(vec![apply(1, index, ops)]).unwrap();
    }
    let (meta, chunks) = streaming.join().unwrap();
    assert_eq!(meta.index, 1);
    let mut pairs = 0;
    for chunk in &chunks {
        kahuna::storage::decode_snapshot_data(chunk, &mut |_, value| {
            assert_eq!(value, b"before");
            pairs += 1;
        })
        .unwrap();
    }
    assert_eq!(pairs, 2000);
}

/// Releasing write buffers (an idle core flushing RocksDB's memtables) changes nothing a read
/// or a restart sees, before or after later writes, and may be repeated.
fn releasing_write_buffers_changes_nothing_visible(kind: Kind) {
    let mut h = Harness::new(kind);
    h.write(vec![
        append(1, entries(1..=6, 1)),
        hard(1, 1, 4),
        apply(1, 4, vec![put("a", "1"), put("b", "2")]),
        append(2, entries(1..=2, 3)),
    ])
    .unwrap();
    h.backend().release_write_buffers().unwrap();
    let one = h.load(1).unwrap();
    assert_eq!(one.entries, entries(1..=6, 1));
    assert_eq!(one.applied_index, 4);
    assert_eq!(get(&mut h, 1, "a").as_deref(), Some("1"));
    // Writes after a release land on top of the released ones, overwriting and deleting.
    h.write(vec![
        append(1, entries(5..=8, 2)),
        apply(
            1,
            5,
            vec![
                put("a", "3"),
                KvOp::Delete {
                    key: Bytes::from("b"),
                },
            ],
        ),
    ])
    .unwrap();
    h.backend().release_write_buffers().unwrap();
    h.backend().release_write_buffers().unwrap();
    h.restart();
    let one = h.load(1).unwrap();
    let mut expected = entries(1..=4, 1);
    expected.extend(entries(5..=8, 2));
    assert_eq!(one.entries, expected);
    assert_eq!(one.applied_index, 5);
    assert_eq!(get(&mut h, 1, "a").as_deref(), Some("3"));
    assert_eq!(get(&mut h, 1, "b"), None);
    assert_eq!(h.load(2).unwrap().entries, entries(1..=2, 3));
    assert_eq!(h.backend().groups().unwrap(), vec![1, 2]);
}

fn session_put(client: u64, value: &str) -> KvOp {
    KvOp::Put {
        key: Bytes::copy_from_slice(&session_key(client)),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// The group's session records (the reserved range the kv machine reloads its session table
/// from), as (client, value).
fn sessions(harness: &mut Harness, group: GroupId) -> Vec<(u64, String)> {
    harness
        .backend()
        .kv_scan(group, SESSIONS_START, SESSIONS_END, 1000)
        .unwrap()
        .into_iter()
        .map(|(key, value)| {
            let client = u64::from_be_bytes(key[SESSIONS_START.len()..].try_into().unwrap());
            (client, String::from_utf8(value.to_vec()).unwrap())
        })
        .collect()
}

/// Session records live in the group's reserved key range and follow its kv data everywhere
/// at-most-once depends on: they are written with the applies that record them, outlive log
/// compaction and restarts, travel in images and replace the receiver's own, and go with the
/// group. (Where an engine keeps them is its business; what a reader sees is pinned here.)
fn keeps_session_records_with_the_kv_data(kind: Kind) {
    let mut h = Harness::new(kind);
    h.write(vec![
        append(1, entries(1..=10, 1)),
        hard(1, 1, 9),
        GroupWrite {
            apply: Some(Apply {
                index: 8,
                term: 1,
                conf_state: Some(conf()),
                ops: vec![
                    put("a", "1"),
                    session_put(7, "seven-1"),
                    session_put(9, "nine"),
                ],
            }),
            ..GroupWrite::new(1)
        },
    ])
    .unwrap();
    h.write(vec![GroupWrite {
        compact: Some(SnapshotMeta {
            index: 8,
            term: 1,
            conf_state: conf(),
        }),
        ..GroupWrite::new(1)
    }])
    .unwrap();
    h.restart();
    assert_eq!(h.load(1).unwrap().applied_index, 8);
    assert_eq!(
        sessions(&mut h, 1),
        vec![(7, "seven-1".to_owned()), (9, "nine".to_owned())],
        "session records survive compaction and a restart"
    );
    let user = h.backend().kv_scan(1, USER_KEYS_START, b"", 1000).unwrap();
    assert_eq!(user.len(), 1, "user scans do not see session records");
    // A later apply rewrites one and evicts the other, atomically with the applied index.
    h.write(vec![GroupWrite {
        apply: Some(Apply {
            index: 9,
            term: 1,
            conf_state: None,
            ops: vec![
                session_put(7, "seven-2"),
                KvOp::Delete {
                    key: Bytes::copy_from_slice(&session_key(9)),
                },
            ],
        }),
        ..GroupWrite::new(1)
    }])
    .unwrap();
    assert_eq!(sessions(&mut h, 1), vec![(7, "seven-2".to_owned())]);
    // An image carries them, as of its index.
    let reader = h.backend().kv_snapshot(1, 4096).unwrap();
    h.write(vec![apply(1, 10, vec![session_put(7, "seven-3")])])
        .unwrap();
    let (meta, chunks) = reader.read_all().unwrap();
    assert_eq!(meta.index, 9);
    // Group 2 has session records of its own, which the image replaces.
    h.write(vec![
        append(2, entries(1..=3, 1)),
        apply(2, 2, vec![session_put(5, "stale"), session_put(7, "old")]),
    ])
    .unwrap();
    h.write(vec![
        GroupWrite {
            snapshot: Some(SnapshotInstall { meta, chunks }),
            ..GroupWrite::new(2)
        },
        hard(2, 1, 9),
    ])
    .unwrap();
    h.restart();
    assert_eq!(sessions(&mut h, 2), vec![(7, "seven-2".to_owned())]);
    assert_eq!(get(&mut h, 2, "a").as_deref(), Some("1"));
    assert_eq!(sessions(&mut h, 1), vec![(7, "seven-3".to_owned())]);
    // They go with their group.
    h.write(vec![GroupWrite {
        destroy: true,
        ..GroupWrite::new(1)
    }])
    .unwrap();
    h.restart();
    assert_eq!(sessions(&mut h, 1), vec![]);
    assert_eq!(sessions(&mut h, 2), vec![(7, "seven-2".to_owned())]);
}

/// A joined put stores exactly what a put of the joined bytes does, survives a restart and
/// verifies (its checksum covers head and tail as one payload), and the last write of a key
/// wins whichever form each one took.
fn joined_puts_store_head_then_tail(kind: Kind) {
    let mut h = Harness::new(kind);
    let joined = |key: &str, head: &str, tail: &str| KvOp::PutJoined {
        key: Bytes::copy_from_slice(key.as_bytes()),
        head: InlineBytes::new(head.as_bytes()),
        tail: Bytes::copy_from_slice(tail.as_bytes()),
    };
    h.write(vec![
        append(1, entries(1..=3, 1)),
        hard(1, 1, 3),
        apply(
            1,
            2,
            vec![
                joined("a", "head:", "tail"),
                put("b", "head:tail"),
                joined("c", "", "no head"),
                joined("d", "only head", ""),
                put("e", "old"),
            ],
        ),
    ])
    .unwrap();
    h.write(vec![apply(
        1,
        3,
        vec![joined("e", "new ", "value"), put("a", "put")],
    )])
    .unwrap();
    h.restart();
    h.load(1).unwrap();
    assert_eq!(get(&mut h, 1, "a").as_deref(), Some("put"));
    assert_eq!(
        h.backend().kv_get(1, b"b").unwrap(),
        Some(Bytes::from("head:tail"))
    );
    assert_eq!(get(&mut h, 1, "c").as_deref(), Some("no head"));
    assert_eq!(get(&mut h, 1, "d").as_deref(), Some("only head"));
    assert_eq!(get(&mut h, 1, "e").as_deref(), Some("new value"));
    // Stored the same way: a later joined write of the same bytes reads back the same.
    h.write(vec![apply(1, 4, vec![joined("b", "he", "ad:tail")])])
        .unwrap();
    assert_eq!(get(&mut h, 1, "b").as_deref(), Some("head:tail"));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $name() { super::$name(super::Kind::Memory) })*
        }
        mod rocksdb {
            $(#[test] fn $name() { super::$name(super::Kind::RocksDb) })*
        }
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::Kind::Sqlite) })*
        }
    };
}

conformance!(
    appends_and_recovers,
    truncates_suffix,
    rejects_bad_batches_atomically,
    applies_with_applied_index,
    streams_and_installs_snapshots,
    compacts,
    detects_damage,
    destroys_groups,
    snapshot_reader_moves_to_another_thread,
    releasing_write_buffers_changes_nothing_visible,
    keeps_session_records_with_the_kv_data,
    joined_puts_store_head_then_tail,
);

#[test]
fn memory_crash_loses_only_unsynced_batches() {
    let mut backend = MemoryBackend::in_memory();
    let synced = WriteBatch {
        groups: vec![append(1, entries(1..=2, 1))],
        sync: true,
    };
    backend.write(&synced).unwrap();
    let unsynced = |range, sync| WriteBatch {
        groups: vec![append(1, entries(range, 1))],
        sync,
    };
    backend.write(&unsynced(3..=3, false)).unwrap();
    backend.write(&unsynced(4..=4, false)).unwrap();
    assert_eq!(backend.load_group(1).unwrap().last_index(), 4);
    backend.crash();
    assert_eq!(backend.load_group(1).unwrap().last_index(), 2);
    backend.write(&unsynced(3..=3, false)).unwrap();
    backend.write(&unsynced(4..=4, false)).unwrap();
    backend.crash_keeping(1);
    assert_eq!(backend.load_group(1).unwrap().last_index(), 3);
    backend.write(&unsynced(4..=4, false)).unwrap();
    backend.write(&unsynced(5..=5, true)).unwrap();
    backend.crash();
    assert_eq!(backend.load_group(1).unwrap().entries, entries(1..=5, 1));
    assert_eq!(backend.engine().unsynced_batches(), 0);
}

#[test]
fn sqlite_damage_on_disk_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let marker = "MARKER-0123456789-MARKER";
    {
        let mut backend = SqliteBackend::open_sqlite(&path).unwrap();
        let mut log = entries(1..=3, 1);
        log[1].data = Bytes::from(marker);
        backend
            .write(&WriteBatch {
                groups: vec![append(1, log), hard(1, 1, 3)],
                sync: true,
            })
            .unwrap();
    }
    // Closing the last connection checkpoints the WAL into the database file.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("marker on disk");
    bytes[at + 3] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let mut backend = SqliteBackend::open_sqlite(&path).unwrap();
    let error = backend.load_group(1).unwrap_err();
    assert!(
        matches!(
            error,
            StorageError::CommittedEntryDamaged { group: 1, .. } | StorageError::Corruption { .. }
        ),
        "{error}"
    );
}

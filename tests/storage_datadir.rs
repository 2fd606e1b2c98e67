//! The data directory: metadata (format version, core count, engine) and per-core backends.
//! Opening with another core count, another engine or a newer format fails with a typed error
//! and leaves the directory untouched.

use bytes::Bytes;
use kahuna::raft::{Entry, EntryKind};
use kahuna::storage::{
    DataDir, Engine, GroupWrite, StorageError, WriteBatch, FORMAT_VERSION, METADATA_FILE,
};

fn snapshot_of(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let bytes = if entry.path().is_file() {
                std::fs::read(entry.path()).unwrap()
            } else {
                Vec::new()
            };
            (entry.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn creates_and_reopens_with_per_core_backends() {
    for engine in [Engine::RocksDb, Engine::Sqlite] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let data_dir = DataDir::open(&path, 2, engine).unwrap();
        assert!(data_dir.core_dir(0).is_dir() && data_dir.core_dir(1).is_dir());
        for core in 0..2u64 {
            let mut backend = data_dir.open_core(core as usize).unwrap();
            let entry = Entry {
                index: 1,
                term: 1,
                kind: EntryKind::Normal,
                data: Bytes::from("x"),
            };
            let write = GroupWrite {
                entries: vec![entry],
                ..GroupWrite::new(10 + core)
            };
            backend
                .write(&WriteBatch {
                    groups: vec![write],
                    sync: true,
                })
                .unwrap();
        }
        assert!(data_dir.open_core(2).is_err());
        let data_dir = DataDir::open(&path, 2, engine).unwrap();
        for core in 0..2u64 {
            let backend = data_dir.open_core(core as usize).unwrap();
            assert_eq!(
                backend.groups().unwrap(),
                vec![10 + core],
                "{engine:?} core {core}"
            );
        }
    }
}

#[test]
fn refuses_other_core_count_engine_or_newer_format_without_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    DataDir::open(&path, 2, Engine::RocksDb).unwrap();
    let before = snapshot_of(&path);

    let error = DataDir::open(&path, 3, Engine::RocksDb).unwrap_err();
    assert!(
        matches!(
            error,
            StorageError::CoreCountMismatch {
                recorded: 2,
                requested: 3,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("2 cores"), "{error}");
    let error = DataDir::open(&path, 2, Engine::Sqlite).unwrap_err();
    assert!(
        matches!(error, StorageError::EngineMismatch { .. }),
        "{error}"
    );
    assert_eq!(snapshot_of(&path), before);

    let metadata = path.join(METADATA_FILE);
    let text = std::fs::read_to_string(&metadata).unwrap();
    let newer = text.replace(
        &format!("format {FORMAT_VERSION}"),
        &format!("format {}", FORMAT_VERSION + 1),
    );
    std::fs::write(&metadata, &newer).unwrap();
    let before = snapshot_of(&path);
    let error = DataDir::open(&path, 2, Engine::RocksDb).unwrap_err();
    assert!(
        matches!(error, StorageError::FormatTooNew { found, .. } if found == FORMAT_VERSION + 1),
        "{error}"
    );
    assert_eq!(snapshot_of(&path), before);
    // An older format (session records in the kv space) is refused as clearly, untouched.
    let older = text.replace(
        &format!("format {FORMAT_VERSION}"),
        &format!("format {}", FORMAT_VERSION - 1),
    );
    std::fs::write(&metadata, &older).unwrap();
    let before = snapshot_of(&path);
    let error = DataDir::open(&path, 2, Engine::RocksDb).unwrap_err();
    assert!(
        matches!(error, StorageError::FormatTooOld { found, .. } if found == FORMAT_VERSION - 1),
        "{error}"
    );
    assert!(
        error.to_string().contains("empty data directory"),
        "{error}"
    );
    assert_eq!(snapshot_of(&path), before);

    std::fs::write(&metadata, text.replace("cores 2", "cores 4")).unwrap();
    let error = DataDir::open(&path, 4, Engine::RocksDb).unwrap_err();
    assert!(
        matches!(error, StorageError::BadDataDir { .. }),
        "tampered metadata must fail its checksum: {error}"
    );
}

#[test]
fn refuses_foreign_non_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("something"), b"else").unwrap();
    let error = DataDir::open(dir.path(), 1, Engine::Sqlite).unwrap_err();
    assert!(matches!(error, StorageError::BadDataDir { .. }), "{error}");
    assert!(!dir.path().join(METADATA_FILE).exists());
    assert!(DataDir::open(dir.path(), 0, Engine::Sqlite).is_err());
}

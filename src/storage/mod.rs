//! Durable storage: the raft log, raft state and key/value data of every group of one core, in
//! one engine instance per core (shared-nothing). RocksDB is the default engine, SQLite the
//! second; an in-memory engine that can lose unsynced writes serves the simulator. All three sit
//! behind [`Backend`], implemented once by [`Store`] over the small [`RawEngine`] interface.
//!
//! The write path: every group's entries, hard state, applied data, snapshot installs and log
//! compactions of one core loop iteration go into one [`WriteBatch`], written as one atomic
//! engine write with at most one sync. Every stored record carries a crc32c; reads verify it and
//! report damage as a typed [`StorageError`], never skipping a record. The calls block: run them
//! on the core's writer thread, never on the reactor.
//!
//! Modules: `keys` (key layout), `codec` (record and snapshot formats, checksums), `batch` (the
//! write batch), `engine` (the raw engine interface), `store` (semantics over an engine),
//! `recovery` (log verification rules), `snapshot` (chunked snapshot reader), `rocks`, `sqlite`,
//! `memory` (engines), `datadir` (directory metadata and per-core layout), `backend` (the trait).

mod backend;
mod batch;
mod codec;
mod datadir;
mod engine;
mod error;
mod keys;
mod memory;
mod recovery;
mod rocks;
mod snapshot;
mod sqlite;
mod store;
mod wal_size;

pub use backend::{Backend, ConcurrentKvReader, RecoveryState};
pub use batch::{
    Apply, GroupWrite, InlineBytes, KvOp, SnapshotInstall, WriteBatch, INLINE_BYTES_MAX,
};
pub use codec::decode_frames as decode_snapshot_data;
pub use datadir::{DataDir, Engine, CORES_MAX, FORMAT_VERSION, METADATA_FILE};
pub use engine::{RawBatch, RawEngine, RawOp, RawRangeView};
pub use error::{Result, StorageError};
pub use keys::{
    kv_key, log_key, state_key, Space, StateTag, GROUP_RESERVED, SESSION_KEYS_END,
    SESSION_KEYS_START,
};
pub use memory::{MemoryBackend, MemoryEngine};
pub use rocks::{RocksDbBackend, RocksEngine, WAL_PREALLOCATE_BYTES_MAX};
pub use snapshot::KvSnapshotReader;
pub use sqlite::{SqliteBackend, SqliteEngine};
pub use store::Store;
pub use wal_size::WAL_FILL_BYTE;

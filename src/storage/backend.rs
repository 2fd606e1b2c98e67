//! Owns the storage contract the rest of kahuna programs against: the [`Backend`] trait and what
//! a restart reads back ([`RecoveryState`]). One backend per core, owned by that core's writer
//! thread (shared-nothing); it is `Send` so it can be moved there, and needs no locks.

use bytes::Bytes;

use super::batch::WriteBatch;
use super::error::Result;
use super::keys::Space;
use super::snapshot::KvSnapshotReader;
use crate::raft::{ConfState, Entry, GroupId, HardState, Index, SnapshotMeta, Term};

/// Everything a group needs to restart.
///
/// Invariants (checked on load, a violation is a typed error):
/// `snapshot.index <= applied_index <= last_index()` and
/// `hard_state.commit <= last_index()`; `entries` are contiguous from `snapshot.index + 1`, with
/// non-decreasing terms not below `snapshot.term`, and every one passed its checksum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryState {
    pub group: GroupId,
    pub hard_state: HardState,
    /// The compaction point: entries up to `snapshot.index` are gone from the log and covered by
    /// the kv data. `SnapshotMeta::default()` when the log was never compacted.
    pub snapshot: SnapshotMeta,
    /// The log after the snapshot point.
    pub entries: Vec<Entry>,
    /// The last entry whose effects are in the kv data; apply resumes at `applied_index + 1`.
    pub applied_index: Index,
    pub applied_term: Term,
    /// The configuration in force at `applied_index`, as last recorded by an apply or a snapshot.
    pub conf_state: ConfState,
    /// `(first, last)` indexes of a damaged, never-committed log tail that recovery removed.
    pub torn_tail: Option<(Index, Index)>,
}

impl RecoveryState {
    /// The index of the last entry in the log (the snapshot index if the log is empty).
    pub fn last_index(&self) -> Index {
        self.entries
            .last()
            .map_or(self.snapshot.index, |entry| entry.index)
    }

    /// The term of the last entry in the log (the snapshot term if the log is empty).
    pub fn last_term(&self) -> Term {
        self.entries
            .last()
            .map_or(self.snapshot.term, |entry| entry.term)
    }
}

/// The durable store of one core: raft log, raft state and kv data of many groups.
///
/// Writes go through [`Backend::write`] only: one [`WriteBatch`] per core loop iteration, one
/// atomic engine write, at most one sync. Reads verify every record's checksum; a failed check is
/// an error, never a skipped record. All calls block: run them off the reactor.
pub trait Backend: Send {
    /// Writes the batch atomically; durable on return when `batch.sync` is set. On error nothing
    /// of the batch was applied.
    fn write(&mut self, batch: &WriteBatch) -> Result<()>;

    /// Reads and verifies a group's state for a restart. Removes a damaged log tail that lies
    /// above the durable commit point (with a synced write) and reports it in
    /// [`RecoveryState::torn_tail`]; any other damage is an error. A group never written loads as
    /// the default state.
    fn load_group(&mut self, group: GroupId) -> Result<RecoveryState>;

    /// Every group with any record in this backend, ascending.
    fn groups(&self) -> Result<Vec<GroupId>>;

    /// The contiguous run of log entries starting at `low` and ending before `high` (shorter if
    /// the log ends first; empty if `low` is not in the log).
    fn entries(&self, group: GroupId, low: Index, high: Index) -> Result<Vec<Entry>>;

    /// One value of a group's kv data.
    fn kv_get(&self, group: GroupId, key: &[u8]) -> Result<Option<Bytes>>;

    /// Up to `limit` pairs of a group's kv data in `[start, end)` (empty `end`: to the end of
    /// the group), in key order.
    fn kv_scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>>;

    /// One page of a group's kv data in `[start, end)` (empty `end`: to the end of the group),
    /// in key order, read in one view (a write in progress is in it whole or not at all): at
    /// most `items_max` pairs and, past the first pair, at most `bytes_max` bytes of keys and
    /// values. The flag says whether more pairs may follow.
    fn kv_scan_page(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        items_max: usize,
        bytes_max: usize,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool)>;

    /// A consistent, owned reader of a group's kv data as of now, with the applied position and
    /// configuration it covers, yielding chunks of about `chunk_bytes_max` bytes. Later writes do
    /// not affect it; it may be moved to another thread.
    fn kv_snapshot(&self, group: GroupId, chunk_bytes_max: usize) -> Result<KvSnapshotReader>;

    /// The stored bytes of one record, as the engine holds them (checksum included).
    fn raw_get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Overwrites one stored record without any checks (synced). For corruption tests and
    /// repair tools only.
    fn raw_put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<()>;

    /// Moves what the engine buffers in memory for writes (RocksDB's memtables) into its files,
    /// so an idle core holds no write buffers. Changes nothing that reads can see. Engines
    /// without such buffers do nothing.
    fn release_write_buffers(&mut self) -> Result<()> {
        Ok(())
    }

    /// A reader of this backend's kv data that may run on another thread while the backend
    /// writes, or `None` where the engine has none (SQLite's connection and the memory engine
    /// serve one caller at a time; their reads go through the backend itself).
    fn concurrent_kv_reader(&self) -> Option<std::sync::Arc<dyn ConcurrentKvReader>> {
        None
    }
}

/// Reads kv data while its backend writes (see [`Backend::concurrent_kv_reader`]). Each call sees
/// every write batch whole or not at all, and every batch whose write has returned; a batch being
/// written may or may not be seen. The kv machine reads only what no unwritten batch of its
/// group changes (see `crate::kv::fetch`), and a linearizable read may see state newer than its
/// read point, so neither needs more.
pub trait ConcurrentKvReader: Send + Sync {
    /// As [`Backend::kv_get`].
    fn kv_get(&self, group: GroupId, key: &[u8]) -> Result<Option<Bytes>>;

    /// As [`Backend::kv_scan`].
    fn kv_scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>>;

    /// As [`Backend::kv_scan_page`]: the page is read in one view, so it shows one state even
    /// while the backend writes.
    fn kv_scan_page(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        items_max: usize,
        bytes_max: usize,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool)>;
}

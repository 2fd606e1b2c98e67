//! Runs a core's blocking storage calls off the reactor. One backend per core, used by one
//! call at a time (batches are written in order), on glommio's blocking thread pool: the
//! reactor keeps serving and collecting the next batch while RocksDB or SQLite syncs.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::raft::GroupId;
use crate::storage::{Backend, RecoveryState, Result, StorageError, WriteBatch};

/// Bytes per frame of a snapshot image (the Raft core re-chunks the image for the wire).
const SNAPSHOT_CHUNK_BYTES: usize = 256 << 10;

fn concat(
    (meta, chunks): (crate::raft::SnapshotMeta, Vec<Bytes>),
) -> Result<(crate::raft::SnapshotMeta, Bytes)> {
    if chunks.len() == 1 {
        return Ok((meta, chunks.into_iter().next().expect("one chunk")));
    }
    let mut data = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        data.extend_from_slice(&chunk);
    }
    Ok((meta, Bytes::from(data)))
}

#[derive(Clone)]
pub struct StorageWriter {
    /// Only ever locked by one blocking call at a time: the mutex is what makes the backend
    /// movable into the blocking pool, not a point of contention.
    backend: Arc<Mutex<Box<dyn Backend>>>,
}

fn poisoned() -> StorageError {
    StorageError::Io {
        context: "locking the core's storage backend".into(),
        kind: std::io::ErrorKind::Other,
        message: "poisoned by an earlier panic".into(),
    }
}

impl StorageWriter {
    pub fn new(backend: Box<dyn Backend>) -> StorageWriter {
        StorageWriter {
            backend: Arc::new(Mutex::new(backend)),
        }
    }

    /// Writes (and, if the batch asks, syncs) one batch without blocking the reactor.
    pub async fn write(&self, batch: WriteBatch) -> Result<()> {
        let backend = self.backend.clone();
        glommio::executor()
            .spawn_blocking(move || backend.lock().map_err(|_| poisoned())?.write(&batch))
            .await
    }

    pub async fn get(&self, group: GroupId, key: Bytes) -> Result<Option<Bytes>> {
        let backend = self.backend.clone();
        glommio::executor()
            .spawn_blocking(move || backend.lock().map_err(|_| poisoned())?.kv_get(group, &key))
            .await
    }

    /// One page of `group`'s kv data in `[start, end)` (empty `end`: to the group's end), read
    /// on the blocking pool: at most `items_max` pairs and, past the first pair, at most
    /// `bytes_max` bytes of keys and values. The flag says whether more pairs may follow.
    pub async fn scan_page(
        &self,
        group: GroupId,
        start: Bytes,
        end: Bytes,
        items_max: usize,
        bytes_max: usize,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool)> {
        assert!(items_max > 0, "a page holds at least one item");
        let backend = self.backend.clone();
        glommio::executor()
            .spawn_blocking(move || {
                let backend = backend.lock().map_err(|_| poisoned())?;
                scan_page(&**backend, group, &start, &end, items_max, bytes_max)
            })
            .await
    }

    /// A consistent image of `group`'s kv data as of the last written batch, with the applied
    /// position it covers, read on the blocking pool.
    pub async fn snapshot(&self, group: GroupId) -> Result<(crate::raft::SnapshotMeta, Bytes)> {
        let backend = self.backend.clone();
        glommio::executor()
            .spawn_blocking(move || {
                let reader = backend
                    .lock()
                    .map_err(|_| poisoned())?
                    .kv_snapshot(group, SNAPSHOT_CHUNK_BYTES)?;
                concat(reader.read_all()?)
            })
            .await
    }

    /// Blocking: only for startup, before the core serves anything.
    pub fn snapshot_blocking(&self, group: GroupId) -> Result<(crate::raft::SnapshotMeta, Bytes)> {
        let reader = self
            .backend
            .lock()
            .map_err(|_| poisoned())?
            .kv_snapshot(group, SNAPSHOT_CHUNK_BYTES)?;
        concat(reader.read_all()?)
    }

    /// Blocking: only for startup, before the core serves anything.
    pub fn load_group_blocking(&self, group: GroupId) -> Result<RecoveryState> {
        self.backend
            .lock()
            .map_err(|_| poisoned())?
            .load_group(group)
    }

    /// Blocking read for the state machine's read-through on a cache miss (see kv).
    pub fn get_blocking(&self, group: GroupId, key: &[u8]) -> Result<Option<Bytes>> {
        self.backend
            .lock()
            .map_err(|_| poisoned())?
            .kv_get(group, key)
    }
}

/// Reads a scan page in chunks, so a page of large values stops at its byte bound without
/// having read (and held) every item the item bound would allow.
fn scan_page(
    backend: &dyn Backend,
    group: GroupId,
    start: &[u8],
    end: &[u8],
    items_max: usize,
    bytes_max: usize,
) -> Result<(Vec<(Bytes, Bytes)>, bool)> {
    const CHUNK_ITEMS: usize = 64;
    let mut page: Vec<(Bytes, Bytes)> = Vec::new();
    let mut bytes = 0usize;
    let mut from = start.to_vec();
    loop {
        // One more than still fits, to learn whether anything follows.
        let want = (items_max - page.len()).min(CHUNK_ITEMS) + 1;
        let chunk = backend.kv_scan(group, &from, end, want)?;
        let exhausted = chunk.len() < want;
        for (key, value) in chunk {
            let size = key.len() + value.len();
            if page.len() == items_max || (!page.is_empty() && bytes + size > bytes_max) {
                return Ok((page, true));
            }
            bytes += size;
            // The smallest key after `key`.
            from.clear();
            from.extend_from_slice(&key);
            from.push(0);
            page.push((key, value));
        }
        if exhausted {
            return Ok((page, false));
        }
    }
}

/// The state machine's read-through on a cache miss. This is a blocking point read on the
/// reactor thread (the backend is shared with the writer pool behind the mutex): rare, since the
/// machine caches every key it wrote, but a known deviation from "never block the reactor" until
/// apply moves onto the writer thread.
impl crate::kv::KvReader for StorageWriter {
    fn get(
        &self,
        group: GroupId,
        key: &[u8],
    ) -> std::result::Result<Option<Bytes>, crate::kv::ReadError> {
        self.get_blocking(group, key)
            .map_err(|source| crate::kv::ReadError::Storage { group, source })
    }

    fn scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> std::result::Result<Vec<(Bytes, Bytes)>, crate::kv::ReadError> {
        let backend = self
            .backend
            .lock()
            .map_err(|_| crate::kv::ReadError::Storage {
                group,
                source: poisoned(),
            })?;
        backend
            .kv_scan(group, start, end, limit)
            .map_err(|source| crate::kv::ReadError::Storage { group, source })
    }
}

//! Owns the narrow interface between the storage logic and a concrete engine: three ordered
//! byte-key spaces, atomic batches of puts/deletes/range deletes with an optional sync, point
//! reads, bounded scans and an owned consistent range view. Engines know nothing about Raft,
//! records or checksums; `store` builds all of that on top of this trait.

use super::error::Result;
use super::keys::Space;

/// One engine operation. Ranges are `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawOp {
    Put {
        space: Space,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        space: Space,
        key: Vec<u8>,
    },
    DeleteRange {
        space: Space,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Operations applied atomically and in order (a later put wins over an earlier range delete).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawBatch {
    pub ops: Vec<RawOp>,
}

impl RawBatch {
    /// Adds a put.
    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.ops.push(RawOp::Put {
            space,
            key: key.into(),
            value,
        });
    }

    /// About the bytes an engine's own batch format takes for these operations: the keys and
    /// values, and up to 16 bytes of tags and lengths per operation.
    pub fn encoded_bytes_hint(&self) -> usize {
        const PER_OP: usize = 16;
        const HEADER: usize = 12;
        HEADER
            + self
                .ops
                .iter()
                .map(|op| {
                    PER_OP
                        + match op {
                            RawOp::Put { key, value, .. } => key.len() + value.len(),
                            RawOp::Delete { key, .. } => key.len(),
                            RawOp::DeleteRange { start, end, .. } => start.len() + end.len(),
                        }
                })
                .sum::<usize>()
    }

    /// Adds a point delete.
    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.push(RawOp::Delete {
            space,
            key: key.into(),
        });
    }

    /// Adds a delete of every key in `[start, end)`.
    pub fn delete_range(
        &mut self,
        space: Space,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
    ) {
        self.ops.push(RawOp::DeleteRange {
            space,
            start: start.into(),
            end: end.into(),
        });
    }
}

/// An owned, consistent, forward view of one key range, taken at the moment it was created and
/// unaffected by later writes. Can be moved to another thread.
pub trait RawRangeView: Send {
    /// The next `(key, value)` in key order, `None` at the end of the range.
    fn next_pair(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
}

/// An ordered key/value engine with three key spaces. Writes take `&mut self`: one owner (the
/// core's writer thread) writes, so nothing can interleave between two `&self` calls made by that
/// owner.
pub trait RawEngine: Send {
    /// Applies `batch` atomically. With `sync`, it is durable when this returns: one sync of
    /// the engine's log for the whole batch.
    fn write(&mut self, batch: &RawBatch, sync: bool) -> Result<()>;

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The smallest key in `[start, end)`.
    fn first_key(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The largest key in `[start, end)`.
    fn last_key(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Visits `[start, end)` in key order until `visit` returns false.
    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;

    /// An owned consistent view of `[start, end)`.
    fn view(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Box<dyn RawRangeView>>;

    /// See [`super::Backend::release_write_buffers`].
    fn release_write_buffers(&mut self) -> Result<()> {
        Ok(())
    }

    /// See [`super::Backend::concurrent_kv_reader`]: engines whose data can be read from another
    /// thread during a write hand out a store over a second handle on it.
    fn concurrent_kv_reader(&self) -> Option<std::sync::Arc<dyn super::ConcurrentKvReader>> {
        None
    }

    /// Replaces one stored value without any checksum handling, synced. For tests and repair
    /// tools that need to damage or patch a record; never used by the write path.
    fn raw_put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<()> {
        let mut batch = RawBatch::default();
        batch.put(space, key, value.to_vec());
        self.write(&batch, true)
    }
}

//! Owns the narrow interface between the storage logic and a concrete engine: three ordered
//! byte-key spaces, atomic batches of puts/deletes/range deletes with an optional sync, point
//! reads, bounded scans and an owned consistent range view. Engines know nothing about Raft,
//! records or checksums; `store` builds all of that on top of this trait.

use super::error::Result;
use super::keys::Space;

/// One engine operation, borrowed from a [`RawBatch`]. Ranges are `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawOp<'a> {
    Put {
        space: Space,
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        space: Space,
        key: &'a [u8],
    },
    DeleteRange {
        space: Space,
        start: &'a [u8],
        end: &'a [u8],
    },
}

/// What a [`RawBatch`] records per operation: its kind and where its two byte strings lie in
/// the batch's buffer (a delete's second string is empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OpRecord {
    kind: OpKind,
    space: Space,
    /// `first` is `bytes[first_start..second_start]`, the second `bytes[second_start..end]`.
    first_start: usize,
    second_start: usize,
    end: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Put,
    Delete,
    DeleteRange,
}

/// Operations applied atomically and in order (a later put wins over an earlier range delete).
///
/// Every key and value lives in one buffer of the batch, written in place by the store's
/// encoders (`put_with`): a batch of thousands of operations is two growing vectors, not two
/// allocations per operation (a record's key, then its sealed value, each its own vector, was
/// ~1.5% of a node's CPU at 256 clients in allocation and freeing alone), and a batch cleared
/// and reused keeps its capacity.
/// Invariant: the records' ranges are consecutive, in order, and end at `bytes.len()`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawBatch {
    bytes: Vec<u8>,
    records: Vec<OpRecord>,
}

impl RawBatch {
    /// Adds a put.
    pub fn put(&mut self, space: Space, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        self.put_with(space, &[key.as_ref()], |out, _| {
            out.extend_from_slice(value)
        });
    }

    /// Adds a put whose key is `key_parts` concatenated and whose value `write_value` appends
    /// to the buffer it is given (and only appends: what is in it already is this batch's
    /// earlier operations and this put's key, at the range it is also given, for encoders that
    /// checksum the key with the value).
    pub fn put_with(
        &mut self,
        space: Space,
        key_parts: &[&[u8]],
        write_value: impl FnOnce(&mut Vec<u8>, std::ops::Range<usize>),
    ) {
        let first_start = self.bytes.len();
        for part in key_parts {
            self.bytes.extend_from_slice(part);
        }
        let second_start = self.bytes.len();
        write_value(&mut self.bytes, first_start..second_start);
        assert!(
            self.bytes.len() >= second_start,
            "a value writer may only append"
        );
        self.push(OpKind::Put, space, first_start, second_start);
    }

    /// Adds a point delete.
    pub fn delete(&mut self, space: Space, key: impl AsRef<[u8]>) {
        let first_start = self.bytes.len();
        self.bytes.extend_from_slice(key.as_ref());
        let second_start = self.bytes.len();
        self.push(OpKind::Delete, space, first_start, second_start);
    }

    /// Adds a delete of every key in `[start, end)`.
    pub fn delete_range(&mut self, space: Space, start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) {
        let first_start = self.bytes.len();
        self.bytes.extend_from_slice(start.as_ref());
        let second_start = self.bytes.len();
        self.bytes.extend_from_slice(end.as_ref());
        self.push(OpKind::DeleteRange, space, first_start, second_start);
    }

    fn push(&mut self, kind: OpKind, space: Space, first_start: usize, second_start: usize) {
        debug_assert_eq!(
            first_start,
            self.records.last().map_or(0, |record| record.end),
            "records are consecutive"
        );
        self.records.push(OpRecord {
            kind,
            space,
            first_start,
            second_start,
            end: self.bytes.len(),
        });
    }

    /// The operations, in the order they were added.
    pub fn ops(&self) -> impl ExactSizeIterator<Item = RawOp<'_>> + '_ {
        self.records.iter().map(|record| {
            let first = &self.bytes[record.first_start..record.second_start];
            let second = &self.bytes[record.second_start..record.end];
            match record.kind {
                OpKind::Put => RawOp::Put {
                    space: record.space,
                    key: first,
                    value: second,
                },
                OpKind::Delete => RawOp::Delete {
                    space: record.space,
                    key: first,
                },
                OpKind::DeleteRange => RawOp::DeleteRange {
                    space: record.space,
                    start: first,
                    end: second,
                },
            }
        })
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Removes every operation, keeping the buffers' capacity up to `keep_bytes` of keys and
    /// values (a batch that once carried a snapshot image does not hold on to its size).
    pub fn clear(&mut self, keep_bytes: usize) {
        self.bytes.clear();
        self.records.clear();
        if self.bytes.capacity() > keep_bytes {
            self.bytes.shrink_to(keep_bytes);
            // Records are ~40 bytes against tens to hundreds of bytes of keys and values each.
            self.records.shrink_to(keep_bytes / 64);
        }
    }

    /// About the bytes an engine's own batch format takes for these operations: the keys and
    /// values, and up to 16 bytes of tags and lengths per operation.
    pub fn encoded_bytes_hint(&self) -> usize {
        const PER_OP: usize = 16;
        const HEADER: usize = 12;
        HEADER + self.bytes.len() + PER_OP * self.records.len()
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
        batch.put(space, key, value);
        self.write(&batch, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_read_back_in_order_with_their_bytes() {
        let mut batch = RawBatch::default();
        batch.put(Space::Kv, b"k1", b"v1");
        batch.delete(Space::Log, [1u8, 2]);
        batch.put_with(Space::State, &[b"ab", b"", b"c"], |out, key| {
            assert_eq!(&out[key], b"abc", "the key is written before the value");
            out.extend_from_slice(b"value");
        });
        batch.delete_range(Space::Sessions, b"a", b"b");
        batch.put(Space::Kv, b"", b"");
        let ops: Vec<RawOp<'_>> = batch.ops().collect();
        assert_eq!(
            ops,
            vec![
                RawOp::Put {
                    space: Space::Kv,
                    key: b"k1",
                    value: b"v1"
                },
                RawOp::Delete {
                    space: Space::Log,
                    key: &[1, 2]
                },
                RawOp::Put {
                    space: Space::State,
                    key: b"abc",
                    value: b"value"
                },
                RawOp::DeleteRange {
                    space: Space::Sessions,
                    start: b"a",
                    end: b"b"
                },
                RawOp::Put {
                    space: Space::Kv,
                    key: b"",
                    value: b""
                },
            ]
        );
        assert_eq!(batch.len(), 5);
        // 16 bytes of keys and values (k1 v1, 1 2, abc value, a b).
        assert_eq!(batch.encoded_bytes_hint(), 12 + 16 + 5 * 16);
    }

    #[test]
    fn a_cleared_batch_is_empty_and_keeps_only_the_capacity_asked_for() {
        let mut batch = RawBatch::default();
        batch.put(Space::Kv, vec![1; 1000], vec![2; 1000]);
        batch.clear(4096);
        assert!(batch.is_empty());
        assert_eq!(batch.ops().count(), 0);
        assert!(batch.bytes.capacity() >= 2000, "small buffers are kept");
        batch.put(Space::Kv, vec![1; 10_000], vec![2; 10_000]);
        batch.clear(4096);
        assert!(batch.bytes.capacity() <= 4096, "large buffers are not");
        batch.put(Space::Log, b"x", b"y");
        assert_eq!(
            batch.ops().collect::<Vec<_>>(),
            vec![RawOp::Put {
                space: Space::Log,
                key: b"x",
                value: b"y"
            }]
        );
    }
}

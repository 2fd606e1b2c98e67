//! Owns the sending side of snapshot streaming: a reader over a consistent view of one group's
//! kv data that yields bounded, checksummed chunks (see `codec` for the frame format). It verifies
//! every value's checksum before shipping it, so damage is never replicated.

use bytes::Bytes;

use super::codec::{self, FrameBuilder};
use super::engine::RawRangeView;
use super::error::{Result, StorageError};
use crate::raft::{GroupId, SnapshotMeta};

/// Streams one group's kv data as of the moment it was created. `meta` holds the applied index,
/// its term and the configuration the data covers. Each chunk is one frame of at most
/// `chunk_bytes_max` bytes, except that a single pair larger than that gets a frame of its own.
pub struct KvSnapshotReader {
    group: GroupId,
    meta: SnapshotMeta,
    view: Box<dyn RawRangeView>,
    chunk_bytes_max: usize,
    carry: Option<(Vec<u8>, Vec<u8>)>,
    finished: bool,
}

impl KvSnapshotReader {
    pub(crate) fn new(
        group: GroupId,
        meta: SnapshotMeta,
        view: Box<dyn RawRangeView>,
        chunk_bytes_max: usize,
    ) -> KvSnapshotReader {
        KvSnapshotReader {
            group,
            meta,
            view,
            chunk_bytes_max,
            carry: None,
            finished: false,
        }
    }

    /// The position the data covers.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The next chunk, `None` once every pair was returned.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let mut frame = FrameBuilder::default();
        while !self.finished {
            let pair = match self.carry.take() {
                Some(pair) => Some(pair),
                None => self.view.next_pair()?,
            };
            let Some((key, value)) = pair else {
                self.finished = true;
                break;
            };
            let payload = codec::open(&key, &value).map_err(|detail| {
                StorageError::corruption(self.group, format!("kv value: {detail}"))
            })?;
            let user_key = key.get(8..).unwrap_or_default();
            if !frame.is_empty()
                && frame.size_with(user_key.len(), payload.len()) > self.chunk_bytes_max
            {
                self.carry = Some((key, value));
                break;
            }
            frame.push(user_key, payload);
        }
        Ok(if frame.is_empty() {
            None
        } else {
            Some(frame.finish())
        })
    }

    /// Reads everything into one buffer (for small groups and tests).
    pub fn read_all(mut self) -> Result<(SnapshotMeta, Vec<Bytes>)> {
        let mut chunks = Vec::new();
        while let Some(chunk) = self.next_chunk()? {
            chunks.push(chunk);
        }
        Ok((self.meta, chunks))
    }
}

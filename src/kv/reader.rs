//! Owns the read interface from the state machine to the group's stored data. The machine only
//! reads what it needs to decide a write (a key's current revisions, the session records when it
//! first touches a group), and only for data its own earlier writes no longer cover.
//!
//! Contract: a read returns the data as of every write the machine has been told is visible
//! ([`crate::kv::KvMachine::persisted`]); writes after that are served from the machine's own
//! cache and never read back. Reads are synchronous and called on the apply path.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;

use super::errors::ReadError;
use crate::raft::GroupId;
use crate::storage::{Backend, ConcurrentKvReader};

/// Reads a group's kv data (user keys as the kv layer sees them, without the group prefix).
pub trait KvReader {
    /// One stored value.
    fn get(&self, group: GroupId, key: &[u8]) -> Result<Option<Bytes>, ReadError>;

    /// Up to `limit` pairs in `[start, end)` in key order (`end` is never empty here).
    fn scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, ReadError>;
}

/// A backend shared with its writer on the same thread (tests, the simulator). In production the
/// backend lives on the core's writer thread; see [`crate::kv::KvMachine`] for what to use there.
impl<B: Backend + ?Sized> KvReader for Rc<RefCell<B>> {
    fn get(&self, group: GroupId, key: &[u8]) -> Result<Option<Bytes>, ReadError> {
        let backend = borrow(self, group)?;
        backend
            .kv_get(group, key)
            .map_err(|source| ReadError::Storage { group, source })
    }

    fn scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, ReadError> {
        let backend = borrow(self, group)?;
        backend
            .kv_scan(group, start, end, limit)
            .map_err(|source| ReadError::Storage { group, source })
    }
}

fn borrow<B: ?Sized>(
    cell: &Rc<RefCell<B>>,
    group: GroupId,
) -> Result<std::cell::Ref<'_, B>, ReadError> {
    cell.try_borrow().map_err(|_| ReadError::Other {
        group,
        detail: "backend is mutably borrowed during apply".to_string(),
    })
}

/// A backend borrowed where blocking is allowed (the node's blocking pool).
pub struct BackendReader<'a>(pub &'a dyn Backend);

impl KvReader for BackendReader<'_> {
    fn get(&self, group: GroupId, key: &[u8]) -> Result<Option<Bytes>, ReadError> {
        self.0
            .kv_get(group, key)
            .map_err(|source| ReadError::Storage { group, source })
    }

    fn scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, ReadError> {
        self.0
            .kv_scan(group, start, end, limit)
            .map_err(|source| ReadError::Storage { group, source })
    }
}

/// A backend's concurrent reader, used where blocking is allowed while the backend writes (see
/// [`crate::storage::Backend::concurrent_kv_reader`] for why the machine's reads may run then).
pub struct ConcurrentReader<'a>(pub &'a dyn ConcurrentKvReader);

impl KvReader for ConcurrentReader<'_> {
    fn get(&self, group: GroupId, key: &[u8]) -> Result<Option<Bytes>, ReadError> {
        self.0
            .kv_get(group, key)
            .map_err(|source| ReadError::Storage { group, source })
    }

    fn scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, ReadError> {
        self.0
            .kv_scan(group, start, end, limit)
            .map_err(|source| ReadError::Storage { group, source })
    }
}

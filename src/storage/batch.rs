//! Owns the shape of one write: everything that every group of a core produced in one loop
//! iteration, written atomically with at most one sync. Plain data; the translation into engine
//! operations lives in `store`.

use bytes::Bytes;

use crate::raft::{ConfState, Entry, GroupId, HardState, Index, Snapshot, SnapshotMeta, Term};

/// One atomic write for many groups. Either every part of every group is durable after a
/// successful `write` with `sync` set, or (after a crash) none of it is.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// Processed in order; a group may appear more than once (its parts are applied in order).
    pub groups: Vec<GroupWrite>,
    /// Make the batch durable (one fdatasync of the engine's log for the whole batch) before
    /// `write` returns. Without it the batch is visible but may be lost by a crash.
    pub sync: bool,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new(sync: bool) -> WriteBatch {
        WriteBatch {
            groups: Vec::new(),
            sync,
        }
    }

    /// Adds one group's part.
    pub fn push(&mut self, write: GroupWrite) {
        self.groups.push(write);
    }

    /// True when no group writes anything.
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(GroupWrite::is_empty)
    }

    /// Whether anything here must be durable before it is acted on: log entries, a new term
    /// or vote (`GroupWrite::must_sync`), snapshot installs and group removals. Applies,
    /// compactions and commit-index updates are not: they are derived from the durable log or
    /// relearnt from the leader, so a crash that loses them only makes the replica re-apply.
    /// Engines write batches in order and a sync makes every earlier batch durable too, so an
    /// unsynced write is never lost while a later synced one survives.
    pub fn needs_sync(&self) -> bool {
        self.groups.iter().any(|group| {
            group.must_sync
                || group.destroy
                || group.snapshot.is_some()
                || !group.entries.is_empty()
        })
    }

    /// Log entries across all groups (for metrics).
    pub fn entry_count(&self) -> usize {
        self.groups.iter().map(|g| g.entries.len()).sum()
    }
}

/// What one group writes in a batch. The parts are applied in field order: `destroy`, `snapshot`,
/// `entries`, `hard_state`, `apply`, `compact`.
#[derive(Clone, Debug, Default)]
pub struct GroupWrite {
    /// Must not be [`super::GROUP_RESERVED`].
    pub group: GroupId,
    /// Remove every record of the group (the replica was removed from this node).
    pub destroy: bool,
    /// Replace the group's log, kv data and applied state with a snapshot.
    pub snapshot: Option<SnapshotInstall>,
    /// Contiguous entries. If the first index is at or below the stored last index, the stored
    /// log from that index on is replaced (suffix truncation, then append). The first index
    /// must not leave a gap after the stored log (or after the snapshot point if the log is
    /// empty).
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// This part must be durable before it is acted on (a new term or vote: see
    /// `Ready::must_sync`); entries, snapshots and removals are always treated so.
    pub must_sync: bool,
    /// Results of applying committed entries, written with the applied index that covers them.
    pub apply: Option<Apply>,
    /// Delete log entries up to and including `index` and record the snapshot point. Must not
    /// exceed the applied index; a compaction at or below the current snapshot point is a no-op.
    pub compact: Option<SnapshotMeta>,
}

impl GroupWrite {
    /// An empty part for `group`.
    pub fn new(group: GroupId) -> GroupWrite {
        GroupWrite {
            group,
            ..GroupWrite::default()
        }
    }

    /// True when this part writes nothing.
    pub fn is_empty(&self) -> bool {
        !self.destroy
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.apply.is_none()
            && self.compact.is_none()
    }
}

/// The effect of applying committed entries up to `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Apply {
    /// The last applied entry; must be above the stored applied index (never apply twice).
    pub index: Index,
    pub term: Term,
    /// The configuration in force at `index`, when it changed since the last apply.
    pub conf_state: Option<ConfState>,
    pub ops: Vec<KvOp>,
}

/// A mutation of one group's kv data. Keys are the group's user keys (without the group prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Put {
        key: Bytes,
        value: Bytes,
    },
    /// A put whose value is `head` followed by `tail`: for a value held in a shared buffer (a
    /// log entry's data) behind a short header of the caller's own, which the store then
    /// copies once, into its engine batch, instead of the caller joining the two into a new
    /// buffer first (one allocation and one copy per applied put on every replica).
    PutJoined {
        key: Bytes,
        head: InlineBytes,
        tail: Bytes,
    },
    /// A put whose key and value are both short fixed-format records (a client's session
    /// record), held inline: making one allocates nothing. As a `Put` it cost two allocations
    /// (and two frees) per applied write on every replica.
    PutInline {
        key: InlineBytes,
        value: InlineBytes,
    },
    Delete {
        key: Bytes,
    },
    /// Deletes every key in `[start, end)`; an empty `end` means "to the end of the group".
    DeleteRange {
        start: Bytes,
        end: Bytes,
    },
}

impl KvOp {
    /// The bytes of the keys and values the operation carries.
    pub fn data_bytes(&self) -> usize {
        match self {
            KvOp::Put { key, value } => key.len() + value.len(),
            KvOp::PutJoined { key, head, tail } => key.len() + head.len() + tail.len(),
            KvOp::PutInline { key, value } => key.len() + value.len(),
            KvOp::Delete { key } => key.len(),
            KvOp::DeleteRange { start, end } => start.len() + end.len(),
        }
    }
}

/// The most bytes an [`InlineBytes`] holds.
pub const INLINE_BYTES_MAX: usize = 30;

/// A few bytes held inline: the head of a [`KvOp::PutJoined`] value, the key and value of a
/// [`KvOp::PutInline`].
/// Invariant: `len <= INLINE_BYTES_MAX`; the bytes past `len` are zero.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InlineBytes {
    len: u8,
    bytes: [u8; INLINE_BYTES_MAX],
}

impl InlineBytes {
    /// Panics past [`INLINE_BYTES_MAX`] bytes (a caller bug: what is held inline has a fixed
    /// format).
    pub fn new(data: &[u8]) -> InlineBytes {
        assert!(
            data.len() <= INLINE_BYTES_MAX,
            "{} bytes to hold inline (at most {INLINE_BYTES_MAX})",
            data.len()
        );
        let mut bytes = [0; INLINE_BYTES_MAX];
        bytes[..data.len()].copy_from_slice(data);
        InlineBytes {
            len: data.len() as u8,
            bytes,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for InlineBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", Bytes::copy_from_slice(self.as_slice()))
    }
}

/// A snapshot to install: the meta and the data as produced by
/// [`super::KvSnapshotReader::next_chunk`] (the chunks, in order; each one or more whole frames).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotInstall {
    pub meta: SnapshotMeta,
    pub chunks: Vec<Bytes>,
}

impl From<Snapshot> for SnapshotInstall {
    fn from(snapshot: Snapshot) -> SnapshotInstall {
        SnapshotInstall {
            meta: snapshot.meta,
            chunks: vec![snapshot.data],
        }
    }
}

//! Owns the key layout shared by every engine. Three key spaces (RocksDB column families, SQLite
//! tables, memory maps); every key starts with the big-endian group id so one group's data is
//! contiguous and a whole group is one range. Pure functions, no IO.
//!
//! | space | key                          | value                       |
//! |-------|------------------------------|-----------------------------|
//! | log   | group (8 B BE) + index (8 B BE) | entry record (codec)     |
//! | state | group (8 B BE) + tag (1 B)   | hard state / applied / conf / snapshot meta record |
//! | kv    | group (8 B BE) + user key    | checksummed value           |
//! | kv_sessions | group (8 B BE) + session key (`00 01` + client) | checksummed session record |
//!
//! The kv machine's session records (keys in [`SESSION_KEYS_START`, `SESSION_KEYS_END`) of a
//! group's kv key space) are kept in their own space: one is rewritten by every write command,
//! on every replica, and a space of their own keeps them out of the kv data's large memtable
//! skiplist (RocksDB appends them to a vector memtable; see `rocks`). The store maps them;
//! readers of the kv key space see one ordered space.
//!
//! Group id `u64::MAX` is reserved: its prefix is the exclusive upper bound of every key space.
//! (The RocksDB engine's WAL filler, written and deleted when a database is created, lives
//! there, outside every range a group reads.)

use crate::raft::{GroupId, Index};

/// One of the three key spaces a backend stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// Raft log entries.
    Log,
    /// Per-group records: hard state, applied state, configuration, snapshot meta.
    State,
    /// The replicated key/value data.
    Kv,
    /// The kv machine's session records (part of the kv key space, stored apart).
    Sessions,
}

impl Space {
    pub const ALL: [Space; 4] = [Space::Log, Space::State, Space::Kv, Space::Sessions];

    /// The column family or table name.
    pub fn name(self) -> &'static str {
        match self {
            Space::Log => "raft_log",
            Space::State => "raft_state",
            Space::Kv => "kv",
            Space::Sessions => "kv_sessions",
        }
    }

    pub(crate) fn slot(self) -> usize {
        match self {
            Space::Log => 0,
            Space::State => 1,
            Space::Kv => 2,
            Space::Sessions => 3,
        }
    }
}

/// The first key of the kv key space's session records (the kv machine's `SESSIONS_START`).
pub const SESSION_KEYS_START: &[u8] = &[0x00, 0x01];
/// The exclusive end of the session records (the kv machine's `SESSIONS_END`).
pub const SESSION_KEYS_END: &[u8] = &[0x00, 0x02];

/// The space that holds `user_key` of a group's kv key space.
pub fn kv_space(user_key: &[u8]) -> Space {
    if (SESSION_KEYS_START..SESSION_KEYS_END).contains(&user_key) {
        Space::Sessions
    } else {
        Space::Kv
    }
}

/// The group id no caller may use; see the module comment.
pub const GROUP_RESERVED: GroupId = u64::MAX;

/// Tags of the records in the state space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StateTag {
    HardState = 1,
    Applied = 2,
    ConfState = 3,
    SnapshotMeta = 4,
}

/// The first key of every group range: the big-endian group id.
pub fn group_prefix(group: GroupId) -> [u8; 8] {
    group.to_be_bytes()
}

/// The exclusive end of the range holding every key of `group` (callers reject the reserved id,
/// so `group + 1` cannot overflow).
pub fn group_end(group: GroupId) -> [u8; 8] {
    debug_assert!(group < GROUP_RESERVED);
    (group + 1).to_be_bytes()
}

/// The exclusive end of a whole key space.
pub fn space_end() -> [u8; 8] {
    GROUP_RESERVED.to_be_bytes()
}

/// The log key of one entry: group (8 B BE) + index (8 B BE).
pub fn log_key(group: GroupId, index: Index) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The key of one of a group's state records.
pub fn state_key(group: GroupId, tag: StateTag) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8] = tag as u8;
    key
}

/// The engine key of a user key of the group's kv data.
pub fn kv_key(group: GroupId, user_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + user_key.len());
    key.extend_from_slice(&group.to_be_bytes());
    key.extend_from_slice(user_key);
    key
}

/// The group id a key starts with, `None` if the key is shorter than a prefix.
pub fn key_group(key: &[u8]) -> Option<GroupId> {
    Some(GroupId::from_be_bytes(key.get(..8)?.try_into().ok()?))
}

/// The index of a log key, `None` unless the key is exactly 16 bytes.
pub fn log_key_index(key: &[u8]) -> Option<Index> {
    if key.len() != 16 {
        return None;
    }
    Some(Index::from_be_bytes(key[8..].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_group_then_index() {
        assert!(log_key(1, u64::MAX - 1) < log_key(2, 0));
        assert!(log_key(1, 255) < log_key(1, 256));
        assert_eq!(key_group(&log_key(7, 9)), Some(7));
        assert_eq!(log_key_index(&log_key(7, 9)), Some(9));
        assert!(kv_key(3, b"\xff\xff") < group_end(3).to_vec());
    }
}

//! Owns the prefetch protocol between the state machine and the thread that may read storage.
//!
//! On a node the reactor must never wait on storage, yet deciding a write needs the key's
//! current revision and, for the first session command of a group, its session table. So the
//! machine runs in prefetch mode: before applying an entry it says whether every read the entry
//! needs is already in memory ([`crate::shard::StateMachine::can_apply`]); when not, it queues a
//! [`Fetch`], the shard holds that group's remaining committed entries, the node performs the
//! fetch on its blocking pool ([`fetch_blocking`]) and hands back a [`Fetched`], and the held
//! entries apply in order at the next collect.
//!
//! Why a prefetched value stays correct until used: a group's applies are held from the first
//! entry that waits, so nothing of that group is written between the read and the use, except by
//! held entries applied after the fill — and the machine discards a prefetched key the moment an
//! entry writes it (its own cache then answers). A fill for a group whose state was replaced in
//! between (snapshot, unload) carries an older epoch and is dropped; the entry asks again.

use bytes::Bytes;

use super::errors::ReadError;
use super::keys::{SESSIONS_END, SESSIONS_START};
use super::reader::KvReader;
use crate::raft::GroupId;

/// Session records read per storage call when a group's table is loaded.
pub(crate) const SESSION_SCAN_PAGE_MAX: usize = 1024;

/// Reads one group needs before its held entries can apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetch {
    pub group: GroupId,
    /// Identifies the group's in-memory state the fetch was made for.
    pub epoch: u64,
    /// User keys whose current stored value is needed (deduplicated).
    pub keys: Vec<Bytes>,
    /// The group's session records are needed.
    pub sessions: bool,
}

/// The answer to a [`Fetch`], as storage showed it when read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    pub group: GroupId,
    pub epoch: u64,
    /// Each requested key with its stored value (`None`: absent).
    pub values: Vec<(Bytes, Option<Bytes>)>,
    /// Every stored session record, when they were requested.
    pub sessions: Option<Vec<(Bytes, Bytes)>>,
}

/// Performs `fetch` against `reader`. Blocking: call it where blocking is allowed (the node's
/// blocking pool, or synchronously in tests and the simulator).
pub fn fetch_blocking(reader: &dyn KvReader, fetch: Fetch) -> Result<Fetched, ReadError> {
    let mut values = Vec::with_capacity(fetch.keys.len());
    for key in fetch.keys {
        let value = reader.get(fetch.group, &key)?;
        values.push((key, value));
    }
    let sessions = if fetch.sessions {
        Some(scan_sessions(reader, fetch.group)?)
    } else {
        None
    };
    Ok(Fetched {
        group: fetch.group,
        epoch: fetch.epoch,
        values,
        sessions,
    })
}

/// Every stored session record of `group`, page by page (the loop ends when a page comes back
/// short; the number of pages is bounded by the stored records).
pub(crate) fn scan_sessions(
    reader: &dyn KvReader,
    group: GroupId,
) -> Result<Vec<(Bytes, Bytes)>, ReadError> {
    let mut records = Vec::new();
    let mut start = SESSIONS_START.to_vec();
    loop {
        let page = reader.scan(group, &start, SESSIONS_END, SESSION_SCAN_PAGE_MAX)?;
        let full = page.len() == SESSION_SCAN_PAGE_MAX;
        if let Some((last, _)) = page.last() {
            // The next key after `last`.
            start = last.to_vec();
            start.push(0);
        }
        records.extend(page);
        if !full {
            return Ok(records);
        }
    }
}

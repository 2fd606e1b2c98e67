//! Owns the storage semantics on top of any [`RawEngine`]: translating a [`WriteBatch`] into one
//! atomic engine batch (records, checksums, suffix truncation, snapshot install, compaction) and
//! reading state back with verification. Caches, per group, only what the write path needs to
//! check invariants without reading (last log index, snapshot index, applied index); the cache is
//! updated only after the engine write succeeded.

use ahash::AHashMap;
use bytes::Bytes;

use super::backend::{Backend, RecoveryState};
use super::batch::{Apply, GroupWrite, KvOp, SnapshotInstall, WriteBatch};
use super::codec;
use super::engine::{RawBatch, RawEngine, RawRangeView};
use super::error::{Result, StorageError};
use super::keys::{self, Space, StateTag, GROUP_RESERVED};
use super::recovery::{self, LogRecord};
use super::snapshot::KvSnapshotReader;
use crate::raft::{ConfState, Entry, GroupId, HardState, Index, SnapshotMeta, Term};

/// Truncating at most this many entries uses point deletes; more uses one range delete (range
/// tombstones are cheap to write but every later read of the range pays for them until
/// compaction, so they are kept for large truncations).
const TRUNCATE_POINT_DELETES_MAX: u64 = 32;

/// What the write path knows about a group without reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct GroupCache {
    /// Index of the last stored log entry; `None` when the log is empty.
    last: Option<Index>,
    snapshot_index: Index,
    applied: Index,
}

/// A [`Backend`] over one engine. See the module comment.
pub struct Store<E: RawEngine> {
    engine: E,
    cache: AHashMap<GroupId, GroupCache>,
    /// The engine batch `write` encodes into, kept between writes for its buffers' capacity
    /// (up to [`SCRATCH_KEEP_BYTES`]); empty between writes.
    scratch: RawBatch,
}

/// The bytes of keys and values the reused engine batch keeps room for between writes: a
/// loaded core's batches carry tens to hundreds of kilobytes; a snapshot install's may carry
/// megabytes, which are not kept.
const SCRATCH_KEEP_BYTES: usize = 1 << 20;

impl<E: RawEngine> Store<E> {
    /// A store over `engine` with an empty cache.
    pub fn new(engine: E) -> Store<E> {
        Store {
            engine,
            cache: AHashMap::new(),
            scratch: RawBatch::default(),
        }
    }

    /// The engine, for engine-specific inspection.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Mutable access to the engine. Writing through it bypasses the store's cache: call
    /// [`Store::forget_cache`] afterwards.
    pub fn engine_mut(&mut self) -> &mut E {
        &mut self.engine
    }

    /// `Backend::write` with `raw` (empty) to encode into.
    fn encode_and_write(&mut self, batch: &WriteBatch, raw: &mut RawBatch) -> Result<()> {
        debug_assert!(raw.is_empty());
        let mut updated: AHashMap<GroupId, GroupCache> =
            AHashMap::with_capacity(batch.groups.len());
        for write in &batch.groups {
            if write.group == GROUP_RESERVED {
                return Err(StorageError::invalid(
                    write.group,
                    "group id u64::MAX is reserved",
                ));
            }
            let mut cache = match updated.get(&write.group) {
                Some(cache) => *cache,
                None => self.group_cache(write.group)?,
            };
            encode_group(write, &mut cache, raw)?;
            updated.insert(write.group, cache);
        }
        self.engine.write(raw, batch.sync)?;
        self.cache.extend(updated);
        Ok(())
    }

    /// Drops every cached group fact; they are read again on next use.
    pub fn forget_cache(&mut self) {
        self.cache.clear();
    }

    fn group_cache(&self, group: GroupId) -> Result<GroupCache> {
        if let Some(cache) = self.cache.get(&group) {
            return Ok(*cache);
        }
        let snapshot_index = self.read_snapshot_meta(group)?.map_or(0, |meta| meta.index);
        let applied = self.read_applied(group)?.map_or(0, |(index, _)| index);
        let last = self
            .engine
            .last_key(
                Space::Log,
                &keys::log_key(group, 0),
                &keys::group_end(group),
            )?
            .map(|key| {
                keys::log_key_index(&key)
                    .ok_or_else(|| StorageError::corruption(group, "malformed log key"))
            })
            .transpose()?;
        Ok(GroupCache {
            last,
            snapshot_index,
            applied,
        })
    }

    fn read_state<T>(
        &self,
        group: GroupId,
        tag: StateTag,
        decode: fn(&[u8], &[u8]) -> std::result::Result<T, String>,
    ) -> Result<Option<T>> {
        let key = keys::state_key(group, tag);
        let Some(value) = self.engine.get(Space::State, &key)? else {
            return Ok(None);
        };
        decode(&key, &value)
            .map(Some)
            .map_err(|detail| StorageError::corruption(group, format!("{tag:?} record: {detail}")))
    }

    fn read_snapshot_meta(&self, group: GroupId) -> Result<Option<SnapshotMeta>> {
        self.read_state(group, StateTag::SnapshotMeta, codec::decode_snapshot_meta)
    }

    fn read_applied(&self, group: GroupId) -> Result<Option<(Index, Term)>> {
        self.read_state(group, StateTag::Applied, codec::decode_applied)
    }

    fn read_conf_state(&self, group: GroupId) -> Result<Option<ConfState>> {
        self.read_state(group, StateTag::ConfState, codec::decode_conf_state)
    }

    fn read_hard_state(&self, group: GroupId) -> Result<Option<HardState>> {
        self.read_state(group, StateTag::HardState, codec::decode_hard_state)
    }

    fn read_log_records(&self, group: GroupId, low: Index, high: Index) -> Result<Vec<LogRecord>> {
        let mut records = Vec::new();
        let mut malformed = false;
        let start = keys::log_key(group, low);
        let end = if high == Index::MAX {
            keys::group_end(group).to_vec()
        } else {
            keys::log_key(group, high).to_vec()
        };
        self.engine
            .scan(Space::Log, &start, &end, &mut |key, value| {
                let Some(index) = keys::log_key_index(key) else {
                    malformed = true;
                    return false;
                };
                records.push((index, codec::decode_entry(key, index, value)));
                true
            })?;
        if malformed {
            return Err(StorageError::corruption(group, "malformed log key"));
        }
        Ok(records)
    }
}

/// The engine ranges, in key order, that hold the user range `[start, end)` of `group`'s kv key
/// space (`end` empty: to the group's end): the kv space below the session records, the
/// session records' own space, and the kv space above them, each where the range reaches.
fn kv_segments(group: GroupId, start: &[u8], end: &[u8]) -> Vec<(Space, Vec<u8>, Vec<u8>)> {
    let (low, high) = (keys::SESSION_KEYS_START, keys::SESSION_KEYS_END);
    let before = |key: &[u8], bound: &[u8]| end_is_open(key) || key > bound;
    let engine_end = |key: &[u8]| {
        if end_is_open(key) {
            keys::group_end(group).to_vec()
        } else {
            keys::kv_key(group, key)
        }
    };
    let mut segments = Vec::with_capacity(3);
    if start < low {
        let stop = if before(end, low) { low } else { end };
        if start < stop {
            segments.push((
                Space::Kv,
                keys::kv_key(group, start),
                keys::kv_key(group, stop),
            ));
        }
    }
    let from = start.max(low);
    let to = if before(end, high) { high } else { end };
    if from < to {
        segments.push((
            Space::Sessions,
            keys::kv_key(group, from),
            keys::kv_key(group, to),
        ));
    }
    if before(end, high) {
        let from = start.max(high);
        if end_is_open(end) || from < end {
            segments.push((Space::Kv, keys::kv_key(group, from), engine_end(end)));
        }
    }
    segments
}

/// Views of consecutive key ranges read as one: each to its end, in order.
struct ChainedView {
    views: std::collections::VecDeque<Box<dyn RawRangeView>>,
}

impl RawRangeView for ChainedView {
    fn next_pair(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        while let Some(view) = self.views.front_mut() {
            if let Some(pair) = view.next_pair()? {
                return Ok(Some(pair));
            }
            self.views.pop_front();
        }
        Ok(None)
    }
}

/// An empty end of a user range means the group's end.
fn end_is_open(end: &[u8]) -> bool {
    end.is_empty()
}

/// Translation of one group's part of a batch into engine operations, checking the invariants
/// against (and advancing) the group's cached facts.
fn encode_group(write: &GroupWrite, cache: &mut GroupCache, raw: &mut RawBatch) -> Result<()> {
    let group = write.group;
    if write.destroy {
        for space in Space::ALL {
            raw.delete_range(space, keys::group_prefix(group), keys::group_end(group));
        }
        *cache = GroupCache::default();
    }
    if let Some(install) = &write.snapshot {
        encode_install(group, install, cache, raw)?;
    }
    if !write.entries.is_empty() {
        encode_entries(group, &write.entries, cache, raw)?;
    }
    if let Some(hard_state) = &write.hard_state {
        raw.put_with(
            Space::State,
            &[&keys::state_key(group, StateTag::HardState)],
            |out, key| codec::seal_into(out, key, &[&codec::hard_state_payload(hard_state)]),
        );
    }
    if let Some(apply) = &write.apply {
        encode_apply(group, apply, cache, raw)?;
    }
    if let Some(meta) = &write.compact {
        encode_compact(group, meta, cache, raw)?;
    }
    Ok(())
}

fn put_applied(group: GroupId, index: Index, term: Term, raw: &mut RawBatch) {
    raw.put_with(
        Space::State,
        &[&keys::state_key(group, StateTag::Applied)],
        |out, key| codec::seal_into(out, key, &[&codec::applied_payload(index, term)]),
    );
}

fn put_conf_state(group: GroupId, conf_state: &ConfState, raw: &mut RawBatch) {
    let key = keys::state_key(group, StateTag::ConfState);
    raw.put(
        Space::State,
        key,
        codec::encode_conf_state(&key, conf_state),
    );
}

fn put_snapshot_meta(group: GroupId, meta: &SnapshotMeta, raw: &mut RawBatch) {
    let key = keys::state_key(group, StateTag::SnapshotMeta);
    raw.put(Space::State, key, codec::encode_snapshot_meta(&key, meta));
}

fn encode_install(
    group: GroupId,
    install: &SnapshotInstall,
    cache: &mut GroupCache,
    raw: &mut RawBatch,
) -> Result<()> {
    let meta = &install.meta;
    if meta.index < cache.applied {
        return Err(StorageError::invalid(
            group,
            format!(
                "snapshot at {} is behind the applied index {}",
                meta.index, cache.applied
            ),
        ));
    }
    // Decode everything first: a bad chunk must not leave a half-built batch behind.
    let mut pairs = Vec::new();
    for chunk in &install.chunks {
        codec::decode_frames(chunk, &mut |key, value| {
            let key = keys::kv_key(group, key);
            let value = codec::seal(&key, value);
            pairs.push((key, value));
        })
        .map_err(|detail| StorageError::InvalidSnapshot { group, detail })?;
    }
    raw.delete_range(
        Space::Log,
        keys::group_prefix(group),
        keys::group_end(group),
    );
    raw.delete_range(Space::Kv, keys::group_prefix(group), keys::group_end(group));
    raw.delete_range(
        Space::Sessions,
        keys::group_prefix(group),
        keys::group_end(group),
    );
    for (key, value) in pairs {
        raw.put(keys::kv_space(&key[8..]), key, value);
    }
    put_snapshot_meta(group, meta, raw);
    put_applied(group, meta.index, meta.term, raw);
    put_conf_state(group, &meta.conf_state, raw);
    *cache = GroupCache {
        last: None,
        snapshot_index: meta.index,
        applied: meta.index,
    };
    Ok(())
}

fn encode_entries(
    group: GroupId,
    entries: &[Entry],
    cache: &mut GroupCache,
    raw: &mut RawBatch,
) -> Result<()> {
    let first = entries[0].index;
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(StorageError::invalid(
                group,
                format!(
                    "entries not contiguous: {} then {}",
                    pair[0].index, pair[1].index
                ),
            ));
        }
    }
    let next = cache.last.map_or(cache.snapshot_index, |last| last) + 1;
    if first <= cache.snapshot_index || first > next {
        return Err(StorageError::invalid(
            group,
            format!(
                "entries start at {first}; the log accepts {}..={next}",
                cache.snapshot_index + 1
            ),
        ));
    }
    let new_last = first + entries.len() as u64 - 1;
    // Entries up to new_last are overwritten by the puts; only an older, longer suffix beyond
    // them needs deleting.
    if let Some(old_last) = cache.last.filter(|&old_last| old_last > new_last) {
        if old_last - new_last <= TRUNCATE_POINT_DELETES_MAX {
            for index in new_last + 1..=old_last {
                raw.delete(Space::Log, keys::log_key(group, index));
            }
        } else {
            raw.delete_range(
                Space::Log,
                keys::log_key(group, new_last + 1),
                keys::group_end(group),
            );
        }
    }
    for entry in entries {
        raw.put_with(
            Space::Log,
            &[&keys::log_key(group, entry.index)],
            |out, key| codec::encode_entry_into(out, key, entry),
        );
    }
    cache.last = Some(new_last);
    Ok(())
}

fn encode_apply(
    group: GroupId,
    apply: &Apply,
    cache: &mut GroupCache,
    raw: &mut RawBatch,
) -> Result<()> {
    if apply.index <= cache.applied {
        return Err(StorageError::invalid(
            group,
            format!(
                "apply up to {} but {} is already applied",
                apply.index, cache.applied
            ),
        ));
    }
    for op in &apply.ops {
        match op {
            KvOp::Put { key, value } => {
                raw.put_with(
                    keys::kv_space(key),
                    &[&keys::group_prefix(group), key],
                    |out, key| codec::seal_into(out, key, &[value]),
                );
            }
            KvOp::PutJoined { key, head, tail } => {
                raw.put_with(
                    keys::kv_space(key),
                    &[&keys::group_prefix(group), key],
                    |out, key| codec::seal_into(out, key, &[head.as_slice(), tail]),
                );
            }
            KvOp::PutInline { key, value } => {
                let key = key.as_slice();
                raw.put_with(
                    keys::kv_space(key),
                    &[&keys::group_prefix(group), key],
                    |out, key| codec::seal_into(out, key, &[value.as_slice()]),
                );
            }
            KvOp::Delete { key } => raw.delete(keys::kv_space(key), keys::kv_key(group, key)),
            KvOp::DeleteRange { start, end } => {
                for (space, start, end) in kv_segments(group, start, end) {
                    raw.delete_range(space, start, end);
                }
            }
        }
    }
    put_applied(group, apply.index, apply.term, raw);
    if let Some(conf_state) = &apply.conf_state {
        put_conf_state(group, conf_state, raw);
    }
    cache.applied = apply.index;
    Ok(())
}

fn encode_compact(
    group: GroupId,
    meta: &SnapshotMeta,
    cache: &mut GroupCache,
    raw: &mut RawBatch,
) -> Result<()> {
    if meta.index <= cache.snapshot_index {
        return Ok(());
    }
    if meta.index > cache.applied {
        return Err(StorageError::invalid(
            group,
            format!(
                "compaction to {} beyond the applied index {}",
                meta.index, cache.applied
            ),
        ));
    }
    // meta.index <= applied < u64::MAX, so the increment cannot overflow.
    raw.delete_range(
        Space::Log,
        keys::log_key(group, 0),
        keys::log_key(group, meta.index + 1),
    );
    put_snapshot_meta(group, meta, raw);
    cache.snapshot_index = meta.index;
    if cache.last.is_some_and(|last| last <= meta.index) {
        cache.last = None;
    }
    Ok(())
}

impl<E: RawEngine> Backend for Store<E> {
    fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        let mut raw = std::mem::take(&mut self.scratch);
        let written = self.encode_and_write(batch, &mut raw);
        raw.clear(SCRATCH_KEEP_BYTES);
        self.scratch = raw;
        written
    }

    fn load_group(&mut self, group: GroupId) -> Result<RecoveryState> {
        if group == GROUP_RESERVED {
            return Err(StorageError::invalid(
                group,
                "group id u64::MAX is reserved",
            ));
        }
        self.cache.remove(&group);
        let hard_state = self.read_hard_state(group)?.unwrap_or_default();
        let snapshot = self.read_snapshot_meta(group)?.unwrap_or_default();
        let (applied_index, applied_term) = self.read_applied(group)?.unwrap_or((0, 0));
        let conf_state = self.read_conf_state(group)?.unwrap_or_default();
        if applied_index < snapshot.index {
            return Err(StorageError::corruption(
                group,
                format!(
                    "applied index {applied_index} below the snapshot index {}",
                    snapshot.index
                ),
            ));
        }
        // Applied entries were committed even if the lazily persisted commit index lags.
        let durable_commit = hard_state.commit.max(applied_index);
        let records = self.read_log_records(group, snapshot.index + 1, Index::MAX)?;
        let checked = recovery::check_log(group, &snapshot, records, durable_commit)?;
        let state = RecoveryState {
            group,
            hard_state,
            snapshot,
            entries: checked.entries,
            applied_index,
            applied_term,
            conf_state,
            torn_tail: checked.torn_tail,
        };
        let last_index = state.last_index();
        if durable_commit > last_index {
            return Err(StorageError::corruption(
                group,
                format!(
                    "committed index {durable_commit} is beyond the last log index {last_index}"
                ),
            ));
        }
        // Only now, with every check passed, repair the torn tail (durably).
        if let Some((first, _)) = state.torn_tail {
            let mut raw = RawBatch::default();
            raw.delete_range(
                Space::Log,
                keys::log_key(group, first),
                keys::group_end(group),
            );
            self.engine.write(&raw, true)?;
        }
        let last = state.entries.last().map(|entry| entry.index);
        let cache = GroupCache {
            last,
            snapshot_index: state.snapshot.index,
            applied: applied_index,
        };
        self.cache.insert(group, cache);
        Ok(state)
    }

    fn groups(&self) -> Result<Vec<GroupId>> {
        let mut groups = std::collections::BTreeSet::new();
        let end = keys::space_end();
        for space in Space::ALL {
            let mut start = keys::group_prefix(0);
            while let Some(key) = self.engine.first_key(space, &start, &end)? {
                let group = keys::key_group(&key).ok_or_else(|| {
                    StorageError::corruption(0, format!("short key in {}", space.name()))
                })?;
                groups.insert(group);
                start = keys::group_end(group);
            }
        }
        Ok(groups.into_iter().collect())
    }

    fn entries(&self, group: GroupId, low: Index, high: Index) -> Result<Vec<Entry>> {
        if low >= high || group == GROUP_RESERVED {
            return Ok(Vec::new());
        }
        let mut entries = Vec::new();
        for (index, record) in self.read_log_records(group, low, high)? {
            if index != low + entries.len() as u64 {
                if entries.is_empty() {
                    return Ok(entries);
                }
                return Err(StorageError::corruption(
                    group,
                    format!("log entry {index} follows a gap"),
                ));
            }
            let entry = record.map_err(|detail| {
                StorageError::corruption(group, format!("log entry {index}: {detail}"))
            })?;
            entries.push(entry);
        }
        Ok(entries)
    }

    fn kv_get(&self, group: GroupId, key: &[u8]) -> Result<Option<Bytes>> {
        let space = keys::kv_space(key);
        let key = keys::kv_key(group, key);
        let Some(value) = self.engine.get(space, &key)? else {
            return Ok(None);
        };
        let payload = codec::open(&key, &value)
            .map_err(|detail| StorageError::corruption(group, format!("kv value: {detail}")))?;
        Ok(Some(Bytes::copy_from_slice(payload)))
    }

    fn kv_scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        // A page without a byte bound, read the same way (one engine scan).
        Ok(Backend::kv_scan_page(self, group, start, end, limit, usize::MAX)?.0)
    }

    fn kv_scan_page(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        items_max: usize,
        bytes_max: usize,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool)> {
        let mut pairs = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        let mut failure = None;
        if items_max == 0 {
            return Ok((pairs, false));
        }
        for (space, start, end) in kv_segments(group, start, end) {
            if more || failure.is_some() {
                break;
            }
            self.engine.scan(space, &start, &end, &mut |key, value| {
                // Full: a pair follows, and it is not read (nor checked) beyond that.
                if pairs.len() == items_max {
                    more = true;
                    return false;
                }
                let payload = match codec::open(key, value) {
                    Ok(payload) => payload,
                    Err(detail) => {
                        failure = Some(detail);
                        return false;
                    }
                };
                let user_key = key.get(8..).unwrap_or_default();
                let size = user_key.len() + payload.len();
                if !pairs.is_empty() && bytes.saturating_add(size) > bytes_max {
                    more = true;
                    return false;
                }
                bytes += size;
                pairs.push((
                    Bytes::copy_from_slice(user_key),
                    Bytes::copy_from_slice(payload),
                ));
                true
            })?;
        }
        match failure {
            Some(detail) => Err(StorageError::corruption(
                group,
                format!("kv value: {detail}"),
            )),
            None => Ok((pairs, more)),
        }
    }

    fn kv_snapshot(&self, group: GroupId, chunk_bytes_max: usize) -> Result<KvSnapshotReader> {
        if group == GROUP_RESERVED {
            return Err(StorageError::invalid(
                group,
                "group id u64::MAX is reserved",
            ));
        }
        // One view per space the group's kv key space is kept in, in key order. Writes need
        // `&mut self`, so nothing was written between taking them: they show one state.
        let mut views = Vec::with_capacity(3);
        for (space, start, end) in kv_segments(group, b"", b"") {
            views.push(self.engine.view(space, &start, &end)?);
        }
        let view: Box<dyn RawRangeView> = Box::new(ChainedView {
            views: views.into(),
        });
        // Writes need `&mut self`, so nothing was written between taking the view and these
        // reads: they describe exactly the data the view holds.
        let (index, term) = self.read_applied(group)?.unwrap_or((0, 0));
        let conf_state = self.read_conf_state(group)?.unwrap_or_default();
        let meta = SnapshotMeta {
            index,
            term,
            conf_state,
        };
        Ok(KvSnapshotReader::new(group, meta, view, chunk_bytes_max))
    }

    fn raw_get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.engine.get(space, key)
    }

    fn raw_put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<()> {
        self.engine.raw_put(space, key, value)?;
        self.cache.clear();
        Ok(())
    }

    fn release_write_buffers(&mut self) -> Result<()> {
        self.engine.release_write_buffers()
    }

    fn concurrent_kv_reader(&self) -> Option<std::sync::Arc<dyn super::ConcurrentKvReader>> {
        self.engine.concurrent_kv_reader()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(start: &[u8], end: &[u8]) -> Vec<(Space, Vec<u8>, Vec<u8>)> {
        kv_segments(7, start, end)
    }

    fn key(user: &[u8]) -> Vec<u8> {
        keys::kv_key(7, user)
    }

    #[test]
    fn kv_ranges_split_around_the_session_records_in_key_order() {
        let end = keys::group_end(7).to_vec();
        // The whole group: below, the sessions, above.
        assert_eq!(
            segments(b"", b""),
            vec![
                (Space::Kv, key(b""), key(&[0, 1])),
                (Space::Sessions, key(&[0, 1]), key(&[0, 2])),
                (Space::Kv, key(&[0, 2]), end.clone()),
            ]
        );
        // User keys only (they start at 01): the kv space alone.
        assert_eq!(segments(&[1], b""), vec![(Space::Kv, key(&[1]), end)]);
        assert_eq!(
            segments(&[1], &[5]),
            vec![(Space::Kv, key(&[1]), key(&[5]))]
        );
        // The session range alone, and a part of it.
        assert_eq!(
            segments(&[0, 1], &[0, 2]),
            vec![(Space::Sessions, key(&[0, 1]), key(&[0, 2]))]
        );
        assert_eq!(
            segments(&[0, 1, 5], &[0, 1, 9]),
            vec![(Space::Sessions, key(&[0, 1, 5]), key(&[0, 1, 9]))]
        );
        // Below the sessions only; across their start.
        assert_eq!(
            segments(&[0, 0], &[0, 1]),
            vec![(Space::Kv, key(&[0, 0]), key(&[0, 1]))]
        );
        assert_eq!(
            segments(&[0, 0], &[0, 1, 3]),
            vec![
                (Space::Kv, key(&[0, 0]), key(&[0, 1])),
                (Space::Sessions, key(&[0, 1]), key(&[0, 1, 3])),
            ]
        );
        // Across their end.
        assert_eq!(
            segments(&[0, 1, 3], &[1]),
            vec![
                (Space::Sessions, key(&[0, 1, 3]), key(&[0, 2])),
                (Space::Kv, key(&[0, 2]), key(&[1])),
            ]
        );
        // Empty ranges give nothing.
        assert_eq!(segments(&[2], &[2]), vec![]);
        assert_eq!(segments(&[0, 1], &[0, 1]), vec![]);
    }
}

//! Owns one group's read-through cache of key revisions: for each key the machine touched
//! recently, its current [`ValueMeta`] (or absence). It exists for two reasons: hot keys are
//! decided without a storage read, and, above all, the machine's writes that storage does not
//! show yet (the write batch is still in flight on the writer thread) are answered from here.
//!
//! Invariant: every key written at an index above the visible index is in the cache ("dirty")
//! and is never evicted; only clean entries are, least recently touched first. So the bound
//! `keys_max` holds whenever the writes of one unpersisted window fit in it; a longer window
//! grows the cache past the bound rather than answer wrongly.

use std::collections::VecDeque;

use ahash::AHashMap;
use bytes::Bytes;

use super::value::ValueMeta;
use crate::raft::Index;

#[derive(Debug)]
struct Slot {
    /// `None`: the key is absent.
    meta: Option<ValueMeta>,
    /// The index of the last entry that read or wrote the key (eviction order, unique per
    /// group: one entry touches at most one user key).
    touched: Index,
    /// The index of the last write by this machine, 0 if it only read the key.
    written: Index,
}

/// Touch records kept beyond the live keys before the stale ones are swept out.
const STALE_TOUCHES_SLACK: usize = 32;

#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    slots: AHashMap<Bytes, Slot>,
    /// Every touch, oldest first, as (index, key). A key touched again leaves its earlier record
    /// here, stale (its slot's `touched` is newer); `trim` skips stale records and `insert`
    /// sweeps them out once they outnumber the live ones (plus `STALE_TOUCHES_SLACK`), so the
    /// queue stays within twice the keys. A queue instead of an ordered map: entries apply in
    /// index order, so touches arrive sorted and a re-touch costs a push, not a tree removal
    /// and insertion (those were ~4% of a node's CPU at 256 clients).
    /// Invariants: indexes strictly increase front to back; each slot's `touched` is the index
    /// of exactly one record; every record's key has a slot (a key's stale records precede
    /// its live one, so `trim` drops them before it can evict the key, and nothing else
    /// removes slots), which is what lets `trim` and the sweep index `slots` by a record's key.
    by_touch: VecDeque<(Index, Bytes)>,
}

impl KeyCache {
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<ValueMeta>> {
        self.slots.get(key).map(|slot| slot.meta)
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Remembers what storage said about `key` at entry `index`.
    pub(crate) fn fill(&mut self, key: Bytes, meta: Option<ValueMeta>, index: Index) {
        self.insert(key, meta, index, 0);
    }

    /// Remembers the machine's own write of `key` at entry `index`.
    pub(crate) fn write(&mut self, key: Bytes, meta: Option<ValueMeta>, index: Index) {
        self.insert(key, meta, index, index);
    }

    fn insert(&mut self, key: Bytes, meta: Option<ValueMeta>, index: Index, written: Index) {
        if let Some(&(newest, _)) = self.by_touch.back() {
            assert!(
                newest < index,
                "key cache touched at {index} after a touch at {newest} (entries apply in order)"
            );
        }
        let written = match self.slots.get(&key) {
            Some(slot) => written.max(slot.written),
            None => written,
        };
        self.by_touch.push_back((index, key.clone()));
        self.slots.insert(
            key,
            Slot {
                meta,
                touched: index,
                written,
            },
        );
        if self.by_touch.len() > 2 * self.slots.len() + STALE_TOUCHES_SLACK {
            let slots = &self.slots;
            self.by_touch
                .retain(|(touched, key)| slots[key].touched == *touched);
        }
    }

    /// Evicts clean entries (written at or below `visible`), least recently touched first, until
    /// at most `keys_max` remain or only dirty ones are left.
    pub(crate) fn trim(&mut self, keys_max: usize, visible: Index) {
        if self.slots.len() <= keys_max {
            return;
        }
        let mut excess = self.slots.len() - keys_max;
        // Dirty records met on the way, put back in front in their order.
        let mut dirty = Vec::new();
        while excess > 0 {
            let Some((touched, key)) = self.by_touch.pop_front() else {
                break;
            };
            let slot = &self.slots[&key];
            if slot.touched != touched {
                continue;
            }
            if slot.written <= visible {
                self.slots.remove(&key);
                excess -= 1;
            } else {
                dirty.push((touched, key));
            }
        }
        for record in dirty.into_iter().rev() {
            self.by_touch.push_front(record);
        }
    }

    /// True when every write is visible in storage.
    pub(crate) fn is_clean(&self, visible: Index) -> bool {
        self.slots.values().all(|slot| slot.written <= visible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(revision: Index) -> Option<ValueMeta> {
        Some(ValueMeta {
            revision,
            create_revision: 1,
        })
    }

    #[test]
    fn dirty_entries_survive_trimming() {
        let mut cache = KeyCache::default();
        cache.write(Bytes::from_static(b"a"), meta(1), 1);
        cache.fill(Bytes::from_static(b"b"), None, 2);
        cache.write(Bytes::from_static(b"c"), meta(3), 3);
        cache.trim(1, 0);
        // "a" and "c" are dirty; only "b" may go.
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(b"b"), None);
        assert_eq!(cache.get(b"a"), Some(meta(1)));
        assert!(!cache.is_clean(1));
        cache.trim(1, 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(b"c"), Some(meta(3)));
        assert!(cache.is_clean(3));
    }

    #[test]
    fn a_key_touched_again_is_evicted_by_its_latest_touch() {
        let mut cache = KeyCache::default();
        cache.fill(Bytes::from_static(b"a"), None, 1);
        cache.fill(Bytes::from_static(b"b"), None, 2);
        cache.fill(Bytes::from_static(b"a"), meta(3), 3);
        cache.fill(Bytes::from_static(b"c"), None, 4);
        // "b" is the least recently touched; "a"'s stale record at 1 evicts nothing.
        cache.trim(2, 4);
        assert_eq!(cache.get(b"b"), None);
        assert_eq!(cache.get(b"a"), Some(meta(3)));
        assert_eq!(cache.get(b"c"), Some(None));
        cache.trim(1, 4);
        assert_eq!(cache.get(b"a"), None);
        assert_eq!(cache.get(b"c"), Some(None));
    }

    #[test]
    fn dirty_entries_keep_their_place_in_the_eviction_order() {
        let mut cache = KeyCache::default();
        cache.write(Bytes::from_static(b"a"), meta(1), 1);
        cache.fill(Bytes::from_static(b"b"), None, 2);
        cache.fill(Bytes::from_static(b"c"), None, 3);
        // "a" is dirty (written at 1, storage shows 0): "b" goes, "a" stays first in line.
        cache.trim(2, 0);
        assert_eq!(cache.get(b"b"), None);
        cache.trim(1, 1);
        assert_eq!(cache.get(b"a"), None, "once clean, the oldest goes first");
        assert_eq!(cache.get(b"c"), Some(None));
    }

    #[test]
    fn touches_of_few_keys_keep_the_queue_bounded() {
        let mut cache = KeyCache::default();
        for index in 1..=10_000 {
            let key = Bytes::from(format!("k{}", index % 3));
            cache.write(key, meta(index), index);
            assert!(cache.by_touch.len() <= 2 * cache.len() + STALE_TOUCHES_SLACK);
        }
        assert_eq!(cache.len(), 3);
        for key in ["k0", "k1", "k2"] {
            assert!(cache.get(key.as_bytes()).is_some());
        }
    }

    #[test]
    #[should_panic(expected = "entries apply in order")]
    fn touches_never_go_back() {
        let mut cache = KeyCache::default();
        cache.fill(Bytes::from_static(b"a"), None, 5);
        cache.fill(Bytes::from_static(b"b"), None, 4);
    }
}

//! Owns one group's read-through cache of key revisions: for each key the machine touched
//! recently, its current [`ValueMeta`] (or absence). It exists for two reasons: hot keys are
//! decided without a storage read, and, above all, the machine's writes that storage does not
//! show yet (the write batch is still in flight on the writer thread) are answered from here.
//!
//! Invariant: every key written at an index above the visible index is in the cache ("dirty")
//! and is never evicted; only clean entries are, least recently touched first. So the bound
//! `keys_max` holds whenever the writes of one unpersisted window fit in it; a longer window
//! grows the cache past the bound rather than answer wrongly.

use std::collections::BTreeMap;

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

#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    slots: AHashMap<Bytes, Slot>,
    by_touch: BTreeMap<Index, Bytes>,
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
        let written = match self.slots.get(&key) {
            Some(slot) => {
                assert!(
                    slot.touched < index,
                    "key touched at {} and again at {index}",
                    slot.touched
                );
                self.by_touch.remove(&slot.touched);
                written.max(slot.written)
            }
            None => written,
        };
        let displaced = self.by_touch.insert(index, key.clone());
        assert!(displaced.is_none(), "two keys touched at index {index}");
        self.slots.insert(
            key,
            Slot {
                meta,
                touched: index,
                written,
            },
        );
    }

    /// Evicts clean entries (written at or below `visible`), least recently touched first, until
    /// at most `keys_max` remain or only dirty ones are left.
    pub(crate) fn trim(&mut self, keys_max: usize, visible: Index) {
        if self.slots.len() <= keys_max {
            return;
        }
        let mut excess = self.slots.len() - keys_max;
        let mut evict = Vec::with_capacity(excess);
        for (&touched, key) in &self.by_touch {
            if excess == 0 {
                break;
            }
            if self.slots[key].written <= visible {
                evict.push(touched);
                excess -= 1;
            }
        }
        for touched in evict {
            let key = self.by_touch.remove(&touched).expect("listed above");
            self.slots.remove(&key);
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
}

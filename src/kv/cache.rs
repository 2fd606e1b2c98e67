//! Owns one group's read-through cache of key revisions: for each key the machine touched
//! recently, its current [`ValueMeta`] (or absence). It exists for two reasons: hot keys are
//! decided without a storage read, and, above all, the machine's writes that storage does not
//! show yet (the write batch is still in flight on the writer thread) are answered from here.
//!
//! Invariant: every key written at an index above the visible index is in the cache ("dirty")
//! and is never evicted; only clean entries are, least recently touched first. So the bound
//! `keys_max` holds whenever the writes of one unpersisted window fit in it; a longer window
//! grows the cache past the bound rather than answer wrongly.

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use ahash::AHashMap;

use super::value::ValueMeta;
use crate::raft::Index;

/// Keys up to this many bytes are held inside the table's slot (and the eviction queue's
/// record) rather than behind a pointer: a probe's key comparison reads the slot's own cache
/// line instead of a second one elsewhere, and the cache does not keep the entry buffer a key
/// was decoded from alive (a shared `Bytes` would: ~300 bytes per cached key at 256-byte
/// values, with a shared reference count touched on every clone and drop).
const INLINE_KEY_BYTES: usize = 22;

/// A cached key: inline when short (see `INLINE_KEY_BYTES`), else one allocation of its own. Hashes
/// and compares as its bytes, so the table is probed with a plain `&[u8]`.
#[derive(Clone)]
enum CacheKey {
    /// Invariant: `len <= INLINE_KEY_BYTES`; the bytes past `len` are zero.
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    /// Shared by the key's slot and its touch records (a clone is a count, not a copy).
    Heap(Rc<[u8]>),
}

impl CacheKey {
    fn new(key: &[u8]) -> CacheKey {
        if key.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0; INLINE_KEY_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            CacheKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            CacheKey::Heap(key.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            CacheKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            CacheKey::Heap(bytes) => bytes,
        }
    }
}

impl Borrow<[u8]> for CacheKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

/// As `[u8]`'s: `Borrow` requires equal hashes for the key and its borrowed form.
impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &CacheKey) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for CacheKey {}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", bytes::Bytes::copy_from_slice(self.as_slice()))
    }
}

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
    slots: AHashMap<CacheKey, Slot>,
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
    by_touch: VecDeque<(Index, CacheKey)>,
}

impl KeyCache {
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<ValueMeta>> {
        self.slots.get(key).map(|slot| slot.meta)
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Remembers what storage said about `key` at entry `index`.
    pub(crate) fn fill(&mut self, key: &[u8], meta: Option<ValueMeta>, index: Index) {
        self.insert(key, meta, index, 0);
    }

    /// Remembers the machine's own write of `key` at entry `index`.
    pub(crate) fn write(&mut self, key: &[u8], meta: Option<ValueMeta>, index: Index) {
        self.insert(key, meta, index, index);
    }

    fn insert(&mut self, key: &[u8], meta: Option<ValueMeta>, index: Index, written: Index) {
        if let Some(&(newest, _)) = self.by_touch.back() {
            assert!(
                newest < index,
                "key cache touched at {index} after a touch at {newest} (entries apply in order)"
            );
        }
        let key = CacheKey::new(key);
        // One probe, whether the key is new or touched again.
        match self.slots.entry(key.clone()) {
            Entry::Occupied(mut occupied) => {
                let slot = occupied.get_mut();
                slot.meta = meta;
                slot.touched = index;
                slot.written = written.max(slot.written);
            }
            Entry::Vacant(vacant) => {
                vacant.insert(Slot {
                    meta,
                    touched: index,
                    written,
                });
            }
        }
        self.by_touch.push_back((index, key));
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
        cache.write(b"a", meta(1), 1);
        cache.fill(b"b", None, 2);
        cache.write(b"c", meta(3), 3);
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
        cache.fill(b"a", None, 1);
        cache.fill(b"b", None, 2);
        cache.fill(b"a", meta(3), 3);
        cache.fill(b"c", None, 4);
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
        cache.write(b"a", meta(1), 1);
        cache.fill(b"b", None, 2);
        cache.fill(b"c", None, 3);
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
            let key = format!("k{}", index % 3);
            cache.write(key.as_bytes(), meta(index), index);
            assert!(cache.by_touch.len() <= 2 * cache.len() + STALE_TOUCHES_SLACK);
        }
        assert_eq!(cache.len(), 3);
        for key in ["k0", "k1", "k2"] {
            assert!(cache.get(key.as_bytes()).is_some());
        }
    }

    #[test]
    fn keys_of_every_length_are_found_by_their_bytes() {
        let mut cache = KeyCache::default();
        let keys: Vec<Vec<u8>> = (0..=3 * INLINE_KEY_BYTES)
            .map(|len| (0..len).map(|i| (i * 7 + len) as u8).collect())
            .collect();
        for (index, key) in keys.iter().enumerate() {
            cache.write(key, meta(index as Index + 1), index as Index + 1);
        }
        assert_eq!(cache.len(), keys.len());
        for (index, key) in keys.iter().enumerate() {
            assert_eq!(
                cache.get(key),
                Some(meta(index as Index + 1)),
                "key of {} bytes",
                key.len()
            );
        }
        // A prefix of a key, or the key with a zero byte more, is another key (the bytes of
        // each key above depend on its length: no key is a prefix of another).
        let long = &keys[INLINE_KEY_BYTES + 5];
        assert_eq!(cache.get(&long[..long.len() - 1]), None);
        let mut padded = keys[3].clone();
        padded.push(0);
        assert_eq!(cache.get(&padded), None);
    }

    /// A key decoded from an entry shares the entry's buffer; the cache keeps its own copy, so
    /// a cached key does not keep the entry's buffer (its value above all) alive.
    #[test]
    fn cached_keys_do_not_hold_the_buffer_they_came_from() {
        let mut cache = KeyCache::default();
        let entry = bytes::Bytes::from(vec![b'k'; 300]);
        for (index, len) in [(1, 16), (3, 100)] {
            let key = entry.slice(..len);
            cache.write(&key, meta(index), index);
            cache.fill(&key, meta(index), index + 1);
        }
        assert!(
            entry.is_unique(),
            "the cache holds a reference to the entry's buffer"
        );
        assert_eq!(cache.get(&[b'k'; 16]), Some(meta(1)));
        assert_eq!(cache.get(&[b'k'; 100]), Some(meta(3)));
    }

    #[test]
    #[should_panic(expected = "entries apply in order")]
    fn touches_never_go_back() {
        let mut cache = KeyCache::default();
        cache.fill(b"a", None, 5);
        cache.fill(b"b", None, 4);
    }
}

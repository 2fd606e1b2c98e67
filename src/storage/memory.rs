//! Owns the in-memory engine used by the simulator and by fast tests. It models a disk that
//! loses unsynced writes: every batch is visible at once, but only reaches the "durable" image
//! when a synced batch is written (which also makes every earlier batch durable, as an fsync of a
//! log would). [`MemoryEngine::crash`] throws away what was never synced. Never does real IO.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::engine::{RawBatch, RawEngine, RawOp, RawRangeView};
use super::error::Result;
use super::keys::Space;

type Maps = [BTreeMap<Vec<u8>, Vec<u8>>; 4];

/// An engine that keeps everything in memory; see the module comment.
#[derive(Clone, Debug, Default)]
pub struct MemoryEngine {
    /// What reads see: durable state plus every unsynced batch.
    visible: Maps,
    /// What survives a crash.
    durable: Maps,
    /// Batches written since the last sync, oldest first.
    unsynced: Vec<RawBatch>,
    /// Number of syncs performed (for tests and the simulator's accounting).
    syncs: u64,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    /// Simulates a power loss: every batch written since the last sync is lost.
    pub fn crash(&mut self) {
        self.crash_keeping(0);
    }

    /// Simulates a power loss in which the first `kept` unsynced batches happened to reach the
    /// disk (a log is written in order, so only a prefix can survive). `kept` beyond the number
    /// of unsynced batches keeps them all.
    pub fn crash_keeping(&mut self, kept: usize) {
        let kept = kept.min(self.unsynced.len());
        for batch in self.unsynced.drain(..kept) {
            apply(&mut self.durable, &batch);
        }
        self.unsynced.clear();
        self.visible = self.durable.clone();
    }

    /// Batches that a crash would lose now.
    pub fn unsynced_batches(&self) -> usize {
        self.unsynced.len()
    }

    pub fn sync_count(&self) -> u64 {
        self.syncs
    }
}

fn apply(maps: &mut Maps, batch: &RawBatch) {
    for op in batch.ops() {
        match op {
            RawOp::Put { space, key, value } => {
                maps[space.slot()].insert(key.to_vec(), value.to_vec());
            }
            RawOp::Delete { space, key } => {
                maps[space.slot()].remove(key);
            }
            RawOp::DeleteRange { space, start, end } => {
                let map = &mut maps[space.slot()];
                let doomed: Vec<Vec<u8>> = range(map, start, end).map(|(k, _)| k.clone()).collect();
                for key in doomed {
                    map.remove(&key);
                }
            }
        }
    }
}

fn range<'a>(
    map: &'a BTreeMap<Vec<u8>, Vec<u8>>,
    start: &'a [u8],
    end: &'a [u8],
) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> {
    // An inverted range is empty rather than a panic.
    let end = if end < start { start } else { end };
    map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
}

impl RawEngine for MemoryEngine {
    fn write(&mut self, batch: &RawBatch, sync: bool) -> Result<()> {
        apply(&mut self.visible, batch);
        self.unsynced.push(batch.clone());
        if sync {
            for pending in self.unsynced.drain(..) {
                apply(&mut self.durable, &pending);
            }
            self.syncs += 1;
        }
        Ok(())
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.visible[space.slot()].get(key).cloned())
    }

    fn first_key(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(range(&self.visible[space.slot()], start, end)
            .next()
            .map(|(k, _)| k.clone()))
    }

    fn last_key(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(range(&self.visible[space.slot()], start, end)
            .next_back()
            .map(|(k, _)| k.clone()))
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        for (key, value) in range(&self.visible[space.slot()], start, end) {
            if !visit(key, value) {
                break;
            }
        }
        Ok(())
    }

    fn view(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Box<dyn RawRangeView>> {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = range(&self.visible[space.slot()], start, end)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Box::new(MemoryView {
            pairs: pairs.into_iter(),
        }))
    }
}

/// A copy of the range taken when the view was created.
struct MemoryView {
    pairs: std::vec::IntoIter<(Vec<u8>, Vec<u8>)>,
}

impl RawRangeView for MemoryView {
    fn next_pair(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.pairs.next())
    }
}

/// The in-memory backend the simulator uses.
pub type MemoryBackend = super::store::Store<MemoryEngine>;

impl super::store::Store<MemoryEngine> {
    /// A fresh, empty in-memory backend.
    pub fn in_memory() -> MemoryBackend {
        super::store::Store::new(MemoryEngine::new())
    }

    /// Simulates a crash and restart: unsynced writes are lost and every cached fact forgotten.
    pub fn crash(&mut self) {
        self.crash_keeping(0);
    }

    /// Like [`Self::crash`], but the first `kept` unsynced batches survive (see
    /// [`MemoryEngine::crash_keeping`]).
    pub fn crash_keeping(&mut self, kept: usize) {
        self.engine_mut().crash_keeping(kept);
        self.forget_cache();
    }
}

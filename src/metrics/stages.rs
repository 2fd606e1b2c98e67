//! Per-entry timing of the write path on one core, kept in thread-local tables (a core's loop
//! runs on one thread, so no locks): when a proposal was made, when the batch carrying it was
//! collected (its appends leave then), when the batch applying it was collected. Bounded:
//! a full table is cleared and the loss counted (entries of a deposed leader never complete).

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ahash::AHashMap;

use crate::raft::{Entry, GroupId, Index};
use crate::shard::ShardBatch;

/// In-flight entries a core tracks at most per stage.
const TRACKED_ENTRIES_MAX: usize = 1 << 16;

#[derive(Default)]
struct Tables {
    proposed: AHashMap<(GroupId, Index), Instant>,
    sent: AHashMap<(GroupId, Index), Instant>,
    applying: AHashMap<(GroupId, Index), Instant>,
}

thread_local! {
    static TABLES: RefCell<Tables> = RefCell::new(Tables::default());
}

fn insert(
    core: usize,
    table: &mut AHashMap<(GroupId, Index), Instant>,
    key: (GroupId, Index),
    at: Instant,
) {
    if table.len() >= TRACKED_ENTRIES_MAX {
        super::core(core)
            .stage_samples_dropped
            .fetch_add(table.len() as u64, Ordering::Relaxed);
        table.clear();
    }
    table.insert(key, at);
}

fn micros_since(earlier: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(earlier).as_micros() as u64
}

/// A client's proposal became entry `index` of `group` on this core.
pub fn proposed(core: usize, group: GroupId, index: Index) {
    let now = Instant::now();
    TABLES.with(|t| insert(core, &mut t.borrow_mut().proposed, (group, index), now));
}

/// The core collected `batch`: its entries leave in appends now and its applies are known.
pub fn collected(core: usize, batch: &ShardBatch) {
    let metrics = super::core(core);
    let entries = batch.write.entry_count() as u64;
    if entries > 0 {
        metrics.batch_entries.record(entries);
    }
    let now = Instant::now();
    TABLES.with(|t| {
        let tables = &mut *t.borrow_mut();
        if !tables.proposed.is_empty() {
            for write in &batch.write.groups {
                for entry in &write.entries {
                    let key = (write.group, entry.index);
                    if let Some(at) = tables.proposed.remove(&key) {
                        metrics.queue_us.record(micros_since(at, now));
                        insert(core, &mut tables.sent, key, now);
                    }
                }
            }
        }
        if !tables.sent.is_empty() {
            for (group, entries) in &batch.applied {
                for entry in entries {
                    let key = (*group, entry.index);
                    if let Some(at) = tables.sent.remove(&key) {
                        metrics.replication_us.record(micros_since(at, now));
                        insert(core, &mut tables.applying, key, now);
                    }
                }
            }
        }
    });
}

/// The batch applying `applied` is durable and its clients were answered.
pub fn completed(core: usize, applied: &[(GroupId, Vec<Entry>)]) {
    let now = Instant::now();
    TABLES.with(|t| {
        let tables = &mut *t.borrow_mut();
        if tables.applying.is_empty() {
            return;
        }
        let metrics = super::core(core);
        for (group, entries) in applied {
            for entry in entries {
                if let Some(at) = tables.applying.remove(&(*group, entry.index)) {
                    metrics.apply_us.record(micros_since(at, now));
                }
            }
        }
    });
}

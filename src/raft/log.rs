//! The in-memory Raft log of one replica: entries after the latest snapshot point, and the
//! indexes that walk along it (persisted, committed, applied, handed out for persistence).
//! It never performs IO: the caller persists what `take_unstable` hands out and reports back.

use std::collections::VecDeque;

use super::types::{Entry, Index, Term};

/// Invariants (checked by `assert_invariants`, called after every mutation):
/// - `entries[i].index == snapshot_index + 1 + i` (contiguous, anchored at the snapshot);
/// - `snapshot_index <= applied <= committed <= last_index`;
/// - `applied <= persisted <= last_index` (only durable entries are handed out to apply);
/// - `snapshot_index < unstable_from <= last_index + 1`.
#[derive(Debug)]
pub struct RaftLog {
    snapshot_index: Index,
    snapshot_term: Term,
    entries: VecDeque<Entry>,
    committed: Index,
    /// Highest index known durable in local storage.
    persisted: Index,
    /// First index not yet handed to the caller for persistence.
    unstable_from: Index,
    /// Highest index handed to the caller for applying.
    applied: Index,
}

impl RaftLog {
    /// A log restored from storage: everything given is durable.
    pub fn restore(
        snapshot_index: Index,
        snapshot_term: Term,
        entries: Vec<Entry>,
        committed: Index,
        applied: Index,
    ) -> RaftLog {
        let last = snapshot_index + entries.len() as u64;
        let applied = applied.max(snapshot_index);
        let log = RaftLog {
            snapshot_index,
            snapshot_term,
            entries: entries.into(),
            committed: committed.max(applied).min(last),
            persisted: last,
            unstable_from: last + 1,
            applied,
        };
        for (position, entry) in log.entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                snapshot_index + 1 + position as u64,
                "restored log has a gap"
            );
        }
        assert!(
            applied <= last,
            "applied {applied} beyond restored log end {last}"
        );
        log.assert_invariants();
        log
    }

    pub fn assert_invariants(&self) {
        let last = self.last_index();
        assert!(
            self.snapshot_index <= self.applied,
            "snapshot {} > applied {}",
            self.snapshot_index,
            self.applied
        );
        assert!(
            self.applied <= self.committed,
            "applied {} > committed {}",
            self.applied,
            self.committed
        );
        assert!(
            self.committed <= last,
            "committed {} > last {}",
            self.committed,
            last
        );
        assert!(
            self.applied <= self.persisted,
            "applied {} > persisted {}",
            self.applied,
            self.persisted
        );
        assert!(
            self.persisted <= last,
            "persisted {} > last {}",
            self.persisted,
            last
        );
        assert!(
            self.unstable_from > self.snapshot_index,
            "unstable_from {} <= snapshot {}",
            self.unstable_from,
            self.snapshot_index
        );
        assert!(
            self.unstable_from <= last + 1,
            "unstable_from {} > last+1 {}",
            self.unstable_from,
            last + 1
        );
    }

    pub fn first_index(&self) -> Index {
        self.snapshot_index + 1
    }

    pub fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.snapshot_term, |e| e.term)
    }

    pub fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    pub fn committed(&self) -> Index {
        self.committed
    }

    pub fn persisted(&self) -> Index {
        self.persisted
    }

    pub fn applied(&self) -> Index {
        self.applied
    }

    /// The term of the entry at `index`; `None` when it was compacted away or is beyond the end.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    pub fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// The election restriction (thesis 3.6.1): is a log ending at `(last_index, last_term)` at
    /// least as up to date as ours?
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        let our_term = self.last_term();
        last_term > our_term || (last_term == our_term && last_index >= self.last_index())
    }

    /// The largest index `<= index` whose term is `<= term`, with its term (fast backtracking).
    /// Stops at the snapshot point, below which nothing is known.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut probe = index.min(self.last_index());
        loop {
            match self.term(probe) {
                Some(t) if t > term && probe > self.snapshot_index => probe -= 1,
                Some(t) => return (probe, t),
                None => return (probe, 0),
            }
        }
    }

    /// Up to `max_bytes` of entries starting at `low` (always at least one if any exist);
    /// `None` when `low` was compacted away.
    pub fn entries_from(&self, low: Index, max_bytes: usize) -> Option<Vec<Entry>> {
        if low <= self.snapshot_index {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let start = (low - self.snapshot_index - 1) as usize;
        for entry in self.entries.iter().skip(start) {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Some(out)
    }

    /// Appends entries that continue the log, or replace an uncommitted suffix of it.
    /// Panics if the replaced suffix holds a committed entry: that would break State Machine
    /// Safety and means a bug in the caller.
    pub fn truncate_and_append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let first_index = first.index;
        assert!(
            first_index > self.committed,
            "truncating committed entries: first new index {first_index}, committed {}",
            self.committed
        );
        assert!(
            first_index <= self.last_index() + 1,
            "gap: appending {first_index} after {}",
            self.last_index()
        );
        if first_index <= self.last_index() {
            self.entries
                .truncate((first_index - self.snapshot_index - 1) as usize);
            self.unstable_from = self.unstable_from.min(first_index);
            self.persisted = self.persisted.min(first_index - 1);
        }
        self.entries.extend(entries.iter().cloned());
        self.assert_invariants();
    }

    /// Appends one entry at the end (the leader's path).
    pub fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "leader append must continue the log"
        );
        self.entries.push_back(entry);
    }

    /// The follower side of AppendEntries once `(prev_index, prev_term)` matched: skips the
    /// entries we already hold, truncates at the first conflict, appends the rest.
    /// Returns whether a suffix was replaced.
    pub fn append_after_match(&mut self, entries: &[Entry]) -> bool {
        let conflict = entries
            .iter()
            .position(|e| !self.match_term(e.index, e.term));
        match conflict {
            None => false,
            Some(position) => {
                let replaced = entries[position].index <= self.last_index();
                self.truncate_and_append(&entries[position..]);
                replaced
            }
        }
    }

    pub fn commit_to(&mut self, index: Index) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit {index} beyond last index {}",
            self.last_index()
        );
        self.committed = index;
        true
    }

    /// Hands out the entries not yet given to the caller for persistence.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let last = self.last_index();
        if self.unstable_from > last {
            return Vec::new();
        }
        let start = (self.unstable_from - self.snapshot_index - 1) as usize;
        let out: Vec<Entry> = self.entries.iter().skip(start).cloned().collect();
        self.unstable_from = last + 1;
        out
    }

    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Records that the entry `(index, term)` and everything before it is durable. Ignored when
    /// the log no longer holds that entry (it was replaced while the write was in flight).
    pub fn persisted_to(&mut self, index: Index, term: Term) {
        if index > self.persisted && index < self.unstable_from && self.match_term(index, term) {
            self.persisted = index;
        }
    }

    /// The highest index that may be applied now.
    fn applicable(&self) -> Index {
        self.committed.min(self.persisted)
    }

    pub fn has_next_committed(&self) -> bool {
        self.applicable() > self.applied
    }

    /// Hands out committed, durable entries for applying, up to `max_bytes` (at least one).
    pub fn take_committed(&mut self, max_bytes: usize) -> Vec<Entry> {
        let high = self.applicable();
        if high <= self.applied {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let start = (self.applied - self.snapshot_index) as usize;
        for entry in self.entries.iter().skip(start) {
            if entry.index > high {
                break;
            }
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        if let Some(last) = out.last() {
            self.applied = last.index;
        }
        out
    }

    /// Replaces the whole log by a snapshot point (a follower installing a snapshot).
    pub fn restore_snapshot(&mut self, index: Index, term: Term) {
        assert!(
            index > self.committed,
            "restoring snapshot {index} at or below commit {}",
            self.committed
        );
        self.entries.clear();
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.committed = index;
        self.persisted = index;
        self.applied = index;
        self.unstable_from = index + 1;
        self.assert_invariants();
    }

    /// Drops every entry up to `index`, which must be applied and durable.
    pub fn compact(&mut self, index: Index) {
        if index <= self.snapshot_index {
            return;
        }
        assert!(
            index <= self.applied,
            "compacting {index} beyond applied {}",
            self.applied
        );
        let term = self.term(index).expect("compaction point is in the log");
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.assert_invariants();
    }

    /// Number of entries held in memory.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Index of the last configuration entry in the log, if any, scanning backwards.
    pub fn last_conf_entry(&self) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.kind == super::types::EntryKind::ConfChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryKind;
    use bytes::Bytes;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: Bytes::new(),
        }
    }

    fn log_with(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| entry(i as u64 + 1, t))
            .collect();
        RaftLog::restore(0, 0, entries, 0, 0)
    }

    #[test]
    fn conflict_by_term_walks_back_to_a_term_not_above_the_hint() {
        let log = log_with(&[1, 1, 2, 2, 4, 4]);
        assert_eq!(log.find_conflict_by_term(6, 3), (4, 2));
        assert_eq!(log.find_conflict_by_term(6, 4), (6, 4));
        assert_eq!(log.find_conflict_by_term(10, 1), (2, 1));
        assert_eq!(log.find_conflict_by_term(6, 0), (0, 0));
    }

    #[test]
    fn append_after_match_truncates_only_at_a_conflict() {
        let mut log = log_with(&[1, 1, 1, 1]);
        // A stale duplicate: no conflict, nothing replaced, the suffix survives.
        assert!(!log.append_after_match(&[entry(2, 1)]));
        assert_eq!(log.last_index(), 4);
        // A conflict at 3 replaces the suffix.
        assert!(log.append_after_match(&[entry(2, 1), entry(3, 2)]));
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.persisted(), 2);
    }

    #[test]
    #[should_panic(expected = "truncating committed")]
    fn replacing_a_committed_entry_panics() {
        let mut log = log_with(&[1, 1, 1]);
        log.commit_to(2);
        log.append_after_match(&[entry(2, 2)]);
    }

    #[test]
    fn only_durable_committed_entries_are_applied() {
        let mut log = log_with(&[]);
        log.truncate_and_append(&[entry(1, 1), entry(2, 1)]);
        log.commit_to(2);
        assert!(log.take_committed(usize::MAX).is_empty());
        let unstable = log.take_unstable();
        assert_eq!(unstable.len(), 2);
        log.persisted_to(1, 1);
        assert_eq!(log.take_committed(usize::MAX).len(), 1);
        // A stale acknowledgement for an entry since replaced is ignored.
        log.persisted_to(2, 7);
        assert!(!log.has_next_committed());
    }

    #[test]
    fn compaction_keeps_the_term_of_the_snapshot_point() {
        let mut log = log_with(&[1, 2, 3]);
        log.commit_to(3);
        log.take_committed(usize::MAX);
        log.compact(2);
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Some(2));
        assert_eq!(log.term(1), None);
        assert_eq!(log.entries_from(2, usize::MAX), None);
    }
}

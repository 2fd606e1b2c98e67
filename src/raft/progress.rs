//! What a leader knows about one follower's log: how far it matches, where to send next, and
//! how many appends may be in flight. Pure bookkeeping; the replica decides what to send.

use std::collections::VecDeque;

use super::types::{Index, NodeId, Snapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Where the follower's log matches is unknown: one append at a time, waiting for the answer.
    Probe,
    /// The follower matches up to `match_index`: appends are pipelined up to the window.
    Replicate,
    /// The follower needs a snapshot; appends wait until it is installed. While the leader has
    /// no image to stream yet (`Progress::streaming` is `None`), it waits for one
    /// (`Raft::provide_snapshot`); heartbeats continue meanwhile.
    Snapshot,
}

/// Invariants: `match_index < next_index`; in `Replicate`, every in-flight last index is
/// `>= match_index` and `< next_index`, and there are at most `inflight_max` of them.
#[derive(Clone, Debug)]
pub struct Progress {
    pub match_index: Index,
    pub next_index: Index,
    pub state: ProgressState,
    /// In `Probe`: an append was sent and no answer came back yet.
    pub probe_sent: bool,
    /// In `Snapshot`: the index the follower must reach (the image's index once one is
    /// pinned; the leader's compaction point while it waits for an image), the byte offset
    /// acknowledged so far, and the image being streamed. The image is pinned here (a cheap
    /// shared handle), and only here: the leader keeps no image of its own, so the data is freed
    /// as soon as no stream needs it (the progress leaves `Snapshot`: installed, refused, or the
    /// follower or the leadership is gone). Compactions during the stream do not restart it: a
    /// follower always finishes the one it began.
    /// Invariant: `streaming` is `None` outside `Snapshot`; when set, its index is
    /// `pending_snapshot`.
    pub pending_snapshot: Index,
    pub snapshot_offset: u64,
    pub streaming: Option<Box<Snapshot>>,
    /// Last index of each append in flight (Replicate only), oldest first.
    inflight: VecDeque<Index>,
    inflight_max: usize,
    /// Heard from since the last election-timeout boundary (check quorum and abandoned image
    /// streams use it).
    pub recent_active: bool,
    /// Highest ReadIndex round this follower acknowledged.
    pub read_seq_acked: u64,
}

impl Progress {
    pub fn new(next_index: Index, inflight_max: usize) -> Progress {
        assert!(next_index >= 1);
        assert!(inflight_max >= 1);
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: 0,
            snapshot_offset: 0,
            streaming: None,
            inflight: VecDeque::new(),
            inflight_max,
            recent_active: false,
            read_seq_acked: 0,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.snapshot_offset = 0;
        self.streaming = None;
        self.inflight.clear();
    }

    pub fn become_probe(&mut self) {
        let next = if self.state == ProgressState::Snapshot {
            (self.match_index + 1).max(self.pending_snapshot + 1)
        } else {
            self.match_index + 1
        };
        self.reset_state(ProgressState::Probe);
        self.next_index = next;
    }

    /// The follower refused the streamed image (it failed its integrity check): forget it and
    /// probe from what the follower holds, paused until the next heartbeat answer, when the
    /// leader's current image is streamed instead.
    pub fn snapshot_refused(&mut self) {
        debug_assert_eq!(self.state, ProgressState::Snapshot);
        self.reset_state(ProgressState::Probe);
        self.next_index = self.match_index + 1;
        self.probe_sent = true;
    }

    /// The follower answered nothing for a whole election timeout while an image streamed to it:
    /// unpin the image and probe again, paused until the follower answers a heartbeat (as for a
    /// refused image, whose recovery path this is).
    pub fn abandon_stream(&mut self) {
        assert!(self.streaming.is_some(), "no stream to abandon");
        self.snapshot_refused();
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_index = self.match_index + 1;
    }

    /// The follower is behind the leader's compaction point `snapshot_index` and the leader has
    /// no image for it yet: wait for one, sending nothing but heartbeats.
    pub fn become_snapshot_waiting(&mut self, snapshot_index: Index) {
        assert!(
            self.match_index < snapshot_index,
            "follower matching {} needs no snapshot at {snapshot_index}",
            self.match_index
        );
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// Whether this follower waits for an image (`Snapshot` with nothing pinned).
    pub fn waits_for_image(&self) -> bool {
        self.state == ProgressState::Snapshot && self.streaming.is_none()
    }

    /// Pins `snapshot` and starts streaming it from the first byte.
    pub fn become_snapshot(&mut self, snapshot: Snapshot) {
        assert!(
            snapshot.meta.index > self.match_index,
            "snapshot at {} for a follower matching {}",
            snapshot.meta.index,
            self.match_index
        );
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot.meta.index;
        self.streaming = Some(Box::new(snapshot));
    }

    /// Whether the leader must hold back appends to this follower.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= self.inflight_max,
            ProgressState::Snapshot => true,
        }
    }

    /// Records an append sent with entries ending at `last_index` (Replicate: optimistic next).
    pub fn sent_entries(&mut self, last_index: Option<Index>) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last_index {
                    assert!(
                        last >= self.next_index,
                        "append ending at {last} before next {}",
                        self.next_index
                    );
                    self.next_index = last + 1;
                    assert!(
                        self.inflight.len() < self.inflight_max,
                        "in-flight window overflow"
                    );
                    self.inflight.push_back(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {
                unreachable!("appends are not sent while a snapshot streams")
            }
        }
    }

    /// A successful append answer up to `index`. Returns whether `match_index` advanced.
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// A rejected append for `rejected` (its prev_index); `match_hint` is the leader's guess of
    /// the last index that may match. Returns false when the rejection is stale.
    pub fn maybe_decrease_to(&mut self, rejected: Index, match_hint: Index) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index + 1;
            return true;
        }
        if self.next_index.saturating_sub(1) != rejected {
            return false;
        }
        self.next_index = rejected.min(match_hint + 1).max(self.match_index + 1);
        self.probe_sent = false;
        true
    }

    /// Frees the oldest in-flight slot when the window is full, so a lost append cannot
    /// stall replication forever: the next append then exposes the gap and the follower's
    /// rejection moves the progress back to probing.
    pub fn free_oldest_if_full(&mut self) {
        if self.inflight.len() >= self.inflight_max {
            self.inflight.pop_front();
        }
    }

    pub fn inflight_count(&self) -> usize {
        self.inflight.len()
    }
}

/// The leader's progress of every other member, sorted by node id. A small sorted vector:
/// groups have three to five members, and an ordered map's nodes would cost each idle group
/// more memory than the replica itself.
#[derive(Clone, Debug, Default)]
pub struct ProgressMap {
    /// Invariant: sorted by node id, no duplicates.
    entries: Vec<(NodeId, Progress)>,
}

impl ProgressMap {
    pub fn new() -> ProgressMap {
        ProgressMap {
            entries: Vec::new(),
        }
    }

    fn position(&self, id: NodeId) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&id, |(key, _)| *key)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.entries.shrink_to_fit();
    }

    pub fn contains_key(&self, id: &NodeId) -> bool {
        self.position(*id).is_ok()
    }

    pub fn get(&self, id: &NodeId) -> Option<&Progress> {
        self.position(*id).ok().map(|at| &self.entries[at].1)
    }

    pub fn get_mut(&mut self, id: &NodeId) -> Option<&mut Progress> {
        self.position(*id).ok().map(|at| &mut self.entries[at].1)
    }

    pub fn insert(&mut self, id: NodeId, progress: Progress) {
        match self.position(id) {
            Ok(at) => self.entries[at].1 = progress,
            Err(at) => self.entries.insert(at, (id, progress)),
        }
    }

    pub fn get_or_insert_with(
        &mut self,
        id: NodeId,
        make: impl FnOnce() -> Progress,
    ) -> &mut Progress {
        let at = match self.position(id) {
            Ok(at) => at,
            Err(at) => {
                self.entries.insert(at, (id, make()));
                at
            }
        };
        &mut self.entries[at].1
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&NodeId, &mut Progress) -> bool) {
        self.entries.retain_mut(|(id, progress)| keep(id, progress));
    }

    pub fn keys(&self) -> impl Iterator<Item = &NodeId> + '_ {
        self.entries.iter().map(|(id, _)| id)
    }

    pub fn values(&self) -> impl Iterator<Item = &Progress> + '_ {
        self.entries.iter().map(|(_, progress)| progress)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Progress> + '_ {
        self.entries.iter_mut().map(|(_, progress)| progress)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Progress)> + '_ {
        self.entries.iter().map(|(id, progress)| (id, progress))
    }
}

impl std::ops::Index<&NodeId> for ProgressMap {
    type Output = Progress;

    fn index(&self, id: &NodeId) -> &Progress {
        self.get(id)
            .unwrap_or_else(|| panic!("no progress for node {id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_window_pauses_when_full_and_frees_on_ack() {
        let mut progress = Progress::new(1, 2);
        progress.become_replicate();
        progress.sent_entries(Some(3));
        progress.sent_entries(Some(5));
        assert!(progress.is_paused());
        assert!(progress.maybe_update(3));
        assert!(!progress.is_paused());
        assert_eq!(progress.inflight_count(), 1);
        assert_eq!(progress.next_index, 6);
    }

    #[test]
    fn probe_ignores_stale_rejections_and_moves_back_strictly() {
        let mut progress = Progress::new(10, 4);
        assert!(
            !progress.maybe_decrease_to(5, 3),
            "stale: not our last probe"
        );
        assert!(progress.maybe_decrease_to(9, 3));
        assert_eq!(progress.next_index, 4);
        assert!(progress.maybe_decrease_to(3, 100));
        assert_eq!(progress.next_index, 3, "never moves forward on a rejection");
    }

    #[test]
    fn leaving_snapshot_resumes_after_the_snapshot() {
        let mut progress = Progress::new(1, 4);
        let mut snapshot = Snapshot::default();
        snapshot.meta.index = 50;
        progress.become_snapshot(snapshot);
        assert!(progress.is_paused());
        progress.become_probe();
        assert_eq!(progress.next_index, 51);
    }

    #[test]
    fn waiting_for_an_image_pauses_and_pinning_one_streams_it() {
        let mut progress = Progress::new(1, 4);
        progress.become_snapshot_waiting(20);
        assert!(progress.is_paused());
        assert!(progress.waits_for_image());
        let mut snapshot = Snapshot::default();
        snapshot.meta.index = 30;
        progress.become_snapshot(snapshot);
        assert!(!progress.waits_for_image());
        assert_eq!(progress.pending_snapshot, 30);
        progress.snapshot_refused();
        assert!(progress.streaming.is_none(), "a refused image is dropped");
        assert_eq!(progress.state, ProgressState::Probe);
    }

    #[test]
    fn progress_map_stays_sorted_and_replaces_on_insert() {
        let mut map = ProgressMap::new();
        for id in [5, 2, 9, 2] {
            map.insert(id, Progress::new(id, 4));
        }
        assert_eq!(map.keys().copied().collect::<Vec<_>>(), vec![2, 5, 9]);
        assert_eq!(map[&2].next_index, 2);
        map.get_or_insert_with(7, || Progress::new(70, 4));
        map.get_or_insert_with(7, || unreachable!("present already"));
        assert_eq!(map[&7].next_index, 70);
        map.retain(|&id, _| id != 5);
        assert!(!map.contains_key(&5));
        assert_eq!(
            map.iter().map(|(&id, _)| id).collect::<Vec<_>>(),
            vec![2, 7, 9]
        );
        assert!(map.get(&3).is_none());
    }
}

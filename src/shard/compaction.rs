//! Owns the log compaction policy: where a group's log may be cut, given what storage holds
//! and, on a leader, what its followers hold. Plain arithmetic over a [`LogView`]; the node's
//! core asks [`Shard::compaction_point`](super::Shard::compaction_point) once per pass.
//!
//! Why two thresholds. A log must stay bounded (memory per group, and the storage it takes),
//! so past `entries_max` it is cut at the written applied index whoever still needs it: a
//! follower behind the cut then catches up from an image. But a log kept until that bound
//! also costs the storage engine dearly: every entry of a 10,000-entry log outlives the log
//! family's memtable, so each is written again to a table file by the flush and once more by
//! the compaction that finally drops it (with 64 groups, ~200 MiB of live log per node against
//! a 64 MiB memtable). An entry that every member holds durably is needed by no one: past
//! `entries_held` a leader cuts at the smallest match index of its followers (never past a
//! follower: while it leads and the log stays under `entries_max`, a follower behind, even
//! one cut off for a while, catches up from the log, not from an image), and the log's range
//! delete lands in the same memtable as the entries it covers, so the flush drops them
//! instead of writing them. A follower does not know the other followers' progress; it keeps
//! the last `entries_held / 2` entries before its written applied index, for a peer slightly
//! behind it should it be elected.
//!
//! What that costs, and when it saves nothing:
//! - After a leader change, a follower more than `entries_held / 2` entries behind the new
//!   leader catches up from an image (with one threshold it had up to `entries_max` entries
//!   to catch up from). A follower that far behind at a failover is rare (the spare follower
//!   lags by milliseconds), and an image of a group costs about its data.
//! - While a member is down or being added (its match index stale or 0), the leader's cut
//!   stops at it: the log grows to `entries_max` and is cut there, as with one threshold.
//!
//! Safety never depends on the point chosen: any point at or below the written applied index
//! is safe (storage's data covers it, and an image serves whoever is behind), which is why
//! the simulators cut at random points. The policy only decides what costs less.

use crate::raft::{Index, Raft, Role};

/// The two thresholds (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// A log holding more entries than this is cut at the written applied index.
    pub entries_max: usize,
    /// A log holding more entries than this is cut where every member holds it (a leader), or
    /// `entries_held / 2` entries behind the written applied index (any other replica).
    /// At most `entries_max`.
    pub entries_held: usize,
}

impl CompactionPolicy {
    /// Invariant: `2 <= entries_held <= entries_max`.
    pub fn new(entries_max: usize, entries_held: usize) -> CompactionPolicy {
        assert!(
            entries_held >= 2 && entries_held <= entries_max,
            "compaction thresholds out of order: held {entries_held}, max {entries_max}"
        );
        CompactionPolicy {
            entries_max,
            entries_held,
        }
    }
}

/// What the policy looks at in one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogView {
    /// The first index still in the log (the last cut + 1).
    pub first_index: Index,
    /// Entries in the log.
    pub len: usize,
    /// The last entry applied in a written batch: no cut may pass it.
    pub written_applied: Index,
    /// On a leader, the smallest match index among the other members (voters and learners;
    /// 0 while one is unknown); `None` on any other replica.
    pub followers_hold: Option<Index>,
    /// An image is being read for a follower: no cut now (the image is taken at storage's
    /// applied index when the read runs, and a cut past it meanwhile gets it refused).
    pub image_requested: bool,
}

impl LogView {
    /// The view of `raft`'s log, with `written_applied` from the shard.
    pub fn of(raft: &Raft, written_applied: Index) -> LogView {
        let followers_hold = (raft.role() == Role::Leader).then(|| {
            let conf = raft.conf_state();
            conf.voters
                .iter()
                .chain(&conf.learners)
                .filter(|&&id| id != raft.id())
                .map(|&id| raft.progress_of(id).map_or(0, |(matched, _, _)| matched))
                .min()
                .unwrap_or(written_applied)
        });
        LogView {
            first_index: raft.first_index(),
            len: raft.log_len(),
            written_applied,
            followers_hold,
            image_requested: raft.snapshot_requested(),
        }
    }
}

/// Where to cut the log viewed, if anywhere: the index of the last entry to discard, at least
/// `first_index` and at most `written_applied`.
pub fn compaction_point(view: &LogView, policy: &CompactionPolicy) -> Option<Index> {
    if view.image_requested || view.written_applied < view.first_index {
        return None;
    }
    let point = if view.len > policy.entries_max {
        view.written_applied
    } else if view.len > policy.entries_held {
        match view.followers_hold {
            Some(held) => view.written_applied.min(held),
            None => view
                .written_applied
                .saturating_sub((policy.entries_held / 2) as Index),
        }
    } else {
        return None;
    };
    (point >= view.first_index).then_some(point)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: CompactionPolicy = CompactionPolicy {
        entries_max: 1000,
        entries_held: 100,
    };

    fn view(len: usize, written_applied: Index, followers_hold: Option<Index>) -> LogView {
        LogView {
            first_index: 11,
            len,
            written_applied,
            followers_hold,
            image_requested: false,
        }
    }

    #[test]
    fn a_short_log_stays() {
        assert_eq!(compaction_point(&view(100, 110, Some(110)), &POLICY), None);
        assert_eq!(compaction_point(&view(100, 110, None), &POLICY), None);
    }

    #[test]
    fn a_leader_cuts_where_every_follower_holds_the_log() {
        assert_eq!(
            compaction_point(&view(150, 150, Some(140)), &POLICY),
            Some(140)
        );
        // Never past its own written applied index, whatever the followers hold.
        assert_eq!(
            compaction_point(&view(150, 130, Some(160)), &POLICY),
            Some(130)
        );
        // A follower behind the log's start (or unknown, 0) holds the cut back.
        assert_eq!(compaction_point(&view(150, 150, Some(5)), &POLICY), None);
        assert_eq!(compaction_point(&view(150, 150, Some(0)), &POLICY), None);
    }

    #[test]
    fn a_follower_keeps_half_the_held_entries() {
        assert_eq!(compaction_point(&view(150, 160, None), &POLICY), Some(110));
        assert_eq!(compaction_point(&view(150, 50, None), &POLICY), None);
    }

    #[test]
    fn past_the_bound_the_log_is_cut_at_the_written_applied_index() {
        // A follower far behind no longer holds the leader's log back.
        assert_eq!(
            compaction_point(&view(1001, 900, Some(12)), &POLICY),
            Some(900)
        );
        assert_eq!(compaction_point(&view(1001, 900, None), &POLICY), Some(900));
    }

    #[test]
    fn nothing_is_cut_while_an_image_is_read_or_before_the_log_is_applied() {
        let mut reading = view(2000, 900, Some(900));
        reading.image_requested = true;
        assert_eq!(compaction_point(&reading, &POLICY), None);
        assert_eq!(compaction_point(&view(2000, 10, Some(900)), &POLICY), None);
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn thresholds_out_of_order_are_refused() {
        let _ = CompactionPolicy::new(100, 200);
    }
}

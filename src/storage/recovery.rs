//! Owns the rules for trusting a log read back from disk: contiguity after the snapshot point,
//! non-decreasing terms, checksums, and the one case where damage may be repaired (a torn tail
//! above the durable commit point). Pure: it decides, `store` performs the truncation.

use super::error::{Result, StorageError};
use crate::raft::{Entry, GroupId, Index, SnapshotMeta};

/// One stored log record: its key's index and what decoding it gave.
pub(crate) type LogRecord = (Index, std::result::Result<Entry, String>);

/// A verified log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CheckedLog {
    pub entries: Vec<Entry>,
    /// `(first, last)` of a damaged tail that may be removed.
    pub torn_tail: Option<(Index, Index)>,
}

/// Verifies the records stored after `snapshot.index` (in key order).
///
/// A damaged record is acceptable only as part of a tail made entirely of damaged records (what a
/// torn write leaves) whose first index lies above `durable_commit` (never acknowledged as
/// committed); that tail is reported for removal. Anything else is an error: a gap, a term going
/// backwards, a damaged record followed by a valid one, or damage at or below the commit point.
pub(crate) fn check_log(
    group: GroupId,
    snapshot: &SnapshotMeta,
    records: Vec<LogRecord>,
    durable_commit: Index,
) -> Result<CheckedLog> {
    let mut entries = Vec::with_capacity(records.len());
    let mut expected = snapshot.index + 1;
    let mut previous_term = snapshot.term;
    let mut records = records.into_iter();
    let mut first_bad: Option<(Index, String)> = None;
    for (index, record) in records.by_ref() {
        if index != expected {
            return Err(StorageError::corruption(
                group,
                format!("log entry {expected} is missing (next stored entry is {index})"),
            ));
        }
        match record {
            Ok(entry) if entry.term >= previous_term => {
                previous_term = entry.term;
                entries.push(entry);
                expected += 1;
            }
            Ok(entry) => {
                return Err(StorageError::corruption(
                    group,
                    format!(
                        "log entry {index} has term {} below {previous_term}",
                        entry.term
                    ),
                ));
            }
            Err(detail) => {
                first_bad = Some((index, detail));
                break;
            }
        }
    }
    let Some((bad_index, detail)) = first_bad else {
        return Ok(CheckedLog {
            entries,
            torn_tail: None,
        });
    };
    let mut last_bad = bad_index;
    for (index, record) in records {
        if record.is_ok() {
            return Err(StorageError::corruption(
                group,
                format!("log entry {bad_index} is damaged ({detail}) but entry {index} after it is valid"),
            ));
        }
        last_bad = index;
    }
    if bad_index <= durable_commit {
        return Err(StorageError::CommittedEntryDamaged {
            group,
            index: bad_index,
            commit: durable_commit,
        });
    }
    Ok(CheckedLog {
        entries,
        torn_tail: Some((bad_index, last_bad)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::EntryKind;
    use bytes::Bytes;

    fn good(index: Index, term: u64) -> LogRecord {
        (
            index,
            Ok(Entry {
                index,
                term,
                kind: EntryKind::Normal,
                data: Bytes::new(),
            }),
        )
    }

    fn bad(index: Index) -> LogRecord {
        (index, Err("checksum mismatch".to_string()))
    }

    #[test]
    fn clean_log_passes() {
        let log = check_log(1, &SnapshotMeta::default(), vec![good(1, 1), good(2, 2)], 2).unwrap();
        assert_eq!(log.entries.len(), 2);
        assert_eq!(log.torn_tail, None);
    }

    #[test]
    fn torn_tail_above_commit_is_reported() {
        let records = vec![good(1, 1), good(2, 1), bad(3), bad(4)];
        let log = check_log(1, &SnapshotMeta::default(), records, 2).unwrap();
        assert_eq!(log.entries.len(), 2);
        assert_eq!(log.torn_tail, Some((3, 4)));
    }

    #[test]
    fn damage_at_or_below_commit_is_an_error() {
        let records = vec![good(1, 1), bad(2)];
        let error = check_log(1, &SnapshotMeta::default(), records, 2).unwrap_err();
        assert_eq!(
            error,
            StorageError::CommittedEntryDamaged {
                group: 1,
                index: 2,
                commit: 2
            }
        );
    }

    #[test]
    fn damage_in_the_middle_is_an_error() {
        let records = vec![good(1, 1), bad(2), good(3, 1)];
        let error = check_log(1, &SnapshotMeta::default(), records, 0).unwrap_err();
        assert!(matches!(error, StorageError::Corruption { .. }), "{error}");
    }

    #[test]
    fn gaps_and_term_regressions_are_errors() {
        let snapshot = SnapshotMeta {
            index: 4,
            term: 3,
            ..SnapshotMeta::default()
        };
        assert!(check_log(1, &snapshot, vec![good(6, 3)], 0).is_err());
        assert!(check_log(1, &snapshot, vec![good(5, 2)], 0).is_err());
        assert!(check_log(1, &snapshot, vec![good(5, 3), good(6, 4)], 0).is_ok());
    }
}

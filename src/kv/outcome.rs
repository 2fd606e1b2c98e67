//! Owns what applying one command did, as the client is told. Outcomes of session commands are
//! stored in the session table so a retry gets the original answer, so they have a fixed
//! 9-byte encoding (tag, u64 payload). Pure, no IO.

use super::errors::{CommandError, RecordError};
use crate::raft::Index;

/// Why a committed entry was not a valid command. Nothing changed; a retry of the same bytes is
/// rejected the same way, so rejections need no session bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The entry data is not a format-1 command.
    Malformed,
    KeyEmpty,
    KeyReserved,
    SessionInvalid,
}

impl From<&CommandError> for Rejection {
    fn from(error: &CommandError) -> Rejection {
        match error {
            CommandError::KeyEmpty => Rejection::KeyEmpty,
            CommandError::KeyReserved => Rejection::KeyReserved,
            CommandError::SessionInvalid { .. } => Rejection::SessionInvalid,
            _ => Rejection::Malformed,
        }
    }
}

/// The result of one committed entry's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A put, or a compare-and-set whose revision matched, wrote the key at `revision`.
    Applied { revision: Index },
    /// A delete removed the key, whose last revision was `previous_revision`.
    Deleted { previous_revision: Index },
    /// A delete found no key; nothing changed.
    NotFound,
    /// A compare-and-set found revision `current` (0: absent); nothing changed.
    RevisionMismatch { current: Index },
    /// The entry was not a valid command; nothing changed.
    Rejected(Rejection),
    /// A session command older than the session's last applied sequence. It was not applied
    /// now; whether it was applied before is no longer known (only the last outcome is kept).
    SequenceStale { last_sequence: u64 },
}

/// Bytes of an encoded outcome.
pub(crate) const OUTCOME_BYTES: usize = 9;

const RECORD: &str = "outcome";

impl Outcome {
    pub(crate) fn encode(self) -> [u8; OUTCOME_BYTES] {
        let (tag, payload) = match self {
            Outcome::Applied { revision } => (1, revision),
            Outcome::Deleted { previous_revision } => (2, previous_revision),
            Outcome::NotFound => (3, 0),
            Outcome::RevisionMismatch { current } => (4, current),
            Outcome::Rejected(rejection) => (
                5,
                match rejection {
                    Rejection::Malformed => 1,
                    Rejection::KeyEmpty => 2,
                    Rejection::KeyReserved => 3,
                    Rejection::SessionInvalid => 4,
                },
            ),
            Outcome::SequenceStale { last_sequence } => (6, last_sequence),
        };
        let mut out = [0u8; OUTCOME_BYTES];
        out[0] = tag;
        out[1..].copy_from_slice(&payload.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Outcome, RecordError> {
        let invalid = |detail: String| RecordError::Invariant {
            record: RECORD,
            detail,
        };
        if bytes.len() != OUTCOME_BYTES {
            return Err(RecordError::Length {
                record: RECORD,
                bytes: bytes.len(),
                expected: OUTCOME_BYTES,
            });
        }
        let payload = u64::from_be_bytes(bytes[1..].try_into().expect("8 bytes"));
        let outcome = match bytes[0] {
            1 => Outcome::Applied { revision: payload },
            2 => Outcome::Deleted {
                previous_revision: payload,
            },
            3 => Outcome::NotFound,
            4 => Outcome::RevisionMismatch { current: payload },
            5 => Outcome::Rejected(match payload {
                1 => Rejection::Malformed,
                2 => Rejection::KeyEmpty,
                3 => Rejection::KeyReserved,
                4 => Rejection::SessionInvalid,
                other => return Err(invalid(format!("unknown rejection {other}"))),
            }),
            6 => Outcome::SequenceStale {
                last_sequence: payload,
            },
            tag => return Err(invalid(format!("unknown outcome tag {tag}"))),
        };
        // Canonical encodings only, so a stored record has exactly one meaning.
        if outcome.encode()[..] != bytes[..] {
            return Err(invalid(format!("non-canonical payload {payload}")));
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_round_trips() {
        let all = [
            Outcome::Applied { revision: 9 },
            Outcome::Deleted {
                previous_revision: 4,
            },
            Outcome::NotFound,
            Outcome::RevisionMismatch { current: 0 },
            Outcome::Rejected(Rejection::Malformed),
            Outcome::Rejected(Rejection::KeyEmpty),
            Outcome::Rejected(Rejection::KeyReserved),
            Outcome::Rejected(Rejection::SessionInvalid),
            Outcome::SequenceStale { last_sequence: 3 },
        ];
        for outcome in all {
            assert_eq!(Outcome::decode(&outcome.encode()), Ok(outcome));
        }
        assert!(Outcome::decode(&[3, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        assert!(Outcome::decode(&[7; 9]).is_err());
        assert!(Outcome::decode(&[1; 8]).is_err());
    }
}

//! Owns the stored value format: what a user key maps to in the group's data. The header carries
//! the revisions so a read answers "value at revision R" and a compare-and-set needs no second
//! record. Pure encode/decode, no IO.
//!
//! Layout, format 1 (integers big-endian):
//!
//! | bytes | field |
//! |-------|-------|
//! | 1 | format, [`VALUE_FORMAT_V1`] |
//! | 1 | flags, all reserved and 0 in format 1 (see below) |
//! | 8 | revision: the raft index of the write that produced this value |
//! | 8 | create revision: the raft index of the write that created the key (since its last delete) |
//! | n | the user value |
//!
//! Reserved flag bits, so multi-version and transactional values fit without a new layout:
//! bit 0 = intent (a provisional write of an undecided transaction; the header would be followed
//! by the transaction's primary key), bit 1 = tombstone (an MVCC deletion marker, no user value),
//! bit 2 = lease attached (a TTL lease id would follow), bits 3-7 unassigned. A format-1 reader
//! refuses any set flag instead of misreading a value it does not understand.
//!
//! Invariant: `1 <= create_revision <= revision`.

use bytes::{BufMut, Bytes, BytesMut};

use super::errors::RecordError;
use crate::raft::Index;

/// The only value format so far.
pub const VALUE_FORMAT_V1: u8 = 1;
/// Bytes before the user value.
pub const VALUE_HEADER_BYTES: usize = 18;
// The machine hands a value to storage as this header and the entry's own bytes.
const _: () = assert!(VALUE_HEADER_BYTES <= crate::storage::INLINE_BYTES_MAX);

const RECORD: &str = "value";

/// The header of a stored value: what the state machine needs to decide a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueMeta {
    pub revision: Index,
    pub create_revision: Index,
}

/// A decoded stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredValue {
    pub meta: ValueMeta,
    pub value: Bytes,
}

impl StoredValue {
    /// The stored bytes. Panics if the revisions break the invariant (a caller bug).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(VALUE_HEADER_BYTES + self.value.len());
        out.put_slice(&self.meta.header());
        out.put_slice(&self.value);
        out.freeze()
    }

    /// Decodes stored bytes; the user value shares `bytes`' buffer.
    pub fn decode(bytes: &Bytes) -> Result<StoredValue, RecordError> {
        let meta = ValueMeta::decode(bytes)?;
        Ok(StoredValue {
            meta,
            value: bytes.slice(VALUE_HEADER_BYTES..),
        })
    }
}

impl ValueMeta {
    /// The stored bytes before the user value (what [`StoredValue::encode`] writes first).
    /// Panics if the revisions break the invariant (a caller bug).
    pub fn header(&self) -> [u8; VALUE_HEADER_BYTES] {
        assert!(
            self.create_revision >= 1,
            "create revision {} must be at least 1",
            self.create_revision
        );
        assert!(
            self.create_revision <= self.revision,
            "create revision {} above revision {}",
            self.create_revision,
            self.revision
        );
        let mut header = [0; VALUE_HEADER_BYTES];
        header[0] = VALUE_FORMAT_V1;
        header[2..10].copy_from_slice(&self.revision.to_be_bytes());
        header[10..].copy_from_slice(&self.create_revision.to_be_bytes());
        header
    }

    /// Decodes only the header of stored bytes (checks it fully).
    pub fn decode(bytes: &[u8]) -> Result<ValueMeta, RecordError> {
        let Some(&format) = bytes.first() else {
            return Err(RecordError::Empty { record: RECORD });
        };
        if format != VALUE_FORMAT_V1 {
            return Err(RecordError::UnknownFormat {
                record: RECORD,
                format,
            });
        }
        if bytes.len() < VALUE_HEADER_BYTES {
            return Err(RecordError::Length {
                record: RECORD,
                bytes: bytes.len(),
                expected: VALUE_HEADER_BYTES,
            });
        }
        if bytes[1] != 0 {
            return Err(RecordError::UnknownFlags {
                record: RECORD,
                flags: bytes[1],
            });
        }
        let revision = u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"));
        let create_revision = u64::from_be_bytes(bytes[10..18].try_into().expect("8 bytes"));
        if create_revision == 0 || create_revision > revision {
            return Err(RecordError::Invariant {
                record: RECORD,
                detail: format!("create revision {create_revision}, revision {revision}"),
            });
        }
        Ok(ValueMeta {
            revision,
            create_revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_as_documented() {
        let stored = StoredValue {
            meta: ValueMeta {
                revision: 5,
                create_revision: 3,
            },
            value: Bytes::from_static(b"xy"),
        };
        let bytes = stored.encode();
        assert_eq!(bytes.len(), VALUE_HEADER_BYTES + 2);
        assert_eq!(&bytes[..2], &[1, 0]);
        assert_eq!(&bytes[2..10], &5u64.to_be_bytes());
        assert_eq!(&bytes[10..18], &3u64.to_be_bytes());
        assert_eq!(&bytes[18..], b"xy");
        assert_eq!(StoredValue::decode(&bytes), Ok(stored));
    }

    #[test]
    fn reserved_flags_and_bad_revisions_are_refused() {
        let good = StoredValue {
            meta: ValueMeta {
                revision: 2,
                create_revision: 1,
            },
            value: Bytes::new(),
        }
        .encode();
        let mut intent = good.to_vec();
        intent[1] = 0x01;
        assert_eq!(
            ValueMeta::decode(&intent),
            Err(RecordError::UnknownFlags {
                record: "value",
                flags: 1
            })
        );
        let mut inverted = good.to_vec();
        inverted[10..18].copy_from_slice(&3u64.to_be_bytes());
        assert!(matches!(
            ValueMeta::decode(&inverted),
            Err(RecordError::Invariant { .. })
        ));
        assert!(matches!(
            ValueMeta::decode(&good[..17]),
            Err(RecordError::Length { .. })
        ));
        assert!(matches!(
            ValueMeta::decode(&[]),
            Err(RecordError::Empty { .. })
        ));
        assert!(matches!(
            ValueMeta::decode(&[2; 18]),
            Err(RecordError::UnknownFormat { format: 2, .. })
        ));
    }
}

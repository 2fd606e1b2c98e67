//! Owns the replicated command format: the bytes a proposer puts in a Normal entry's data and
//! every replica decodes when the entry is committed. Never panics on input: any byte string
//! either decodes to exactly one command or is a typed [`CommandError`].
//!
//! Layout, format 1 (integers big-endian):
//!
//! | bytes | field |
//! |-------|-------|
//! | 1 | format, [`COMMAND_FORMAT_V1`] |
//! | 1 | operation: 1 put, 2 delete, 3 compare-and-set |
//! | 1 | flags: bit 0 = a session follows; bits 1-7 reserved, must be 0 |
//! | 16 | if bit 0: client id (u64), sequence (u64) |
//! | 8 | compare-and-set only: expected revision (u64, 0 = key absent) |
//! | 4 + n | key length (u32), key |
//! | 4 + n | put and compare-and-set only: value length (u32), value |
//!
//! Nothing may follow. Size limits ([`KEY_BYTES_MAX`], [`VALUE_BYTES_MAX`]) are checked when a
//! command enters the log ([`Command::validate`], called by [`Command::encode`]) and never when it
//! is applied: a limit changed in a later version must not make replicas of two versions apply
//! the same log differently. The format rules (non-empty, non-reserved key, valid session) never
//! change within a format, so decoding checks them.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use super::errors::CommandError;
use super::keys::{check_user_key_format, validate_user_key};
use crate::raft::Index;

/// The only command format so far.
pub const COMMAND_FORMAT_V1: u8 = 1;
/// The largest user key a command may carry.
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// The largest user value a command may carry.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

const OPERATION_PUT: u8 = 1;
const OPERATION_DELETE: u8 = 2;
const OPERATION_CAS: u8 = 3;
const FLAG_SESSION: u8 = 0x01;

/// A client session stamp (Raft thesis 6.3): the command is applied at most once per
/// `(client_id, sequence)`. Both are non-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Session {
    pub client_id: u64,
    pub sequence: u64,
}

/// What a command does to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// Put only if the key's current revision is `expected_revision` (0: the key is absent).
    Cas {
        key: Bytes,
        expected_revision: Index,
        value: Bytes,
    },
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => key,
        }
    }

    fn value(&self) -> Option<&Bytes> {
        match self {
            Op::Put { value, .. } | Op::Cas { value, .. } => Some(value),
            Op::Delete { .. } => None,
        }
    }
}

/// One replicated command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub session: Option<Session>,
    pub op: Op,
}

impl Command {
    /// Checks every rule and limit a command must meet to enter the log.
    pub fn validate(&self) -> Result<(), CommandError> {
        if let Some(session) = self.session {
            check_session(session)?;
        }
        validate_user_key(self.op.key())?;
        if let Some(value) = self.op.value() {
            if value.len() > VALUE_BYTES_MAX {
                return Err(CommandError::ValueTooLarge {
                    bytes: value.len(),
                    max: VALUE_BYTES_MAX,
                });
            }
        }
        Ok(())
    }

    /// The entry data for this command, after [`Command::validate`].
    pub fn encode(&self) -> Result<Bytes, CommandError> {
        self.validate()?;
        let key = self.op.key();
        let value_bytes = self.op.value().map_or(0, |value| 4 + value.len());
        let mut out = BytesMut::with_capacity(3 + 16 + 8 + 4 + key.len() + value_bytes);
        out.put_u8(COMMAND_FORMAT_V1);
        out.put_u8(match self.op {
            Op::Put { .. } => OPERATION_PUT,
            Op::Delete { .. } => OPERATION_DELETE,
            Op::Cas { .. } => OPERATION_CAS,
        });
        out.put_u8(if self.session.is_some() {
            FLAG_SESSION
        } else {
            0
        });
        if let Some(session) = self.session {
            out.put_u64(session.client_id);
            out.put_u64(session.sequence);
        }
        if let Op::Cas {
            expected_revision, ..
        } = self.op
        {
            out.put_u64(expected_revision);
        }
        // validate() bounded both lengths far below u32::MAX.
        out.put_u32(key.len() as u32);
        out.put_slice(key);
        if let Some(value) = self.op.value() {
            out.put_u32(value.len() as u32);
            out.put_slice(value);
        }
        Ok(out.freeze())
    }

    /// Decodes entry data. Key and value share `data`'s buffer (no copy).
    pub fn decode(data: &Bytes) -> Result<Command, CommandError> {
        let parsed = Parsed::of(data)?;
        let key = data.slice(parsed.key);
        let op = match (parsed.operation, parsed.value) {
            (OPERATION_PUT, Some(value)) => Op::Put {
                key,
                value: data.slice(value),
            },
            (OPERATION_CAS, Some(value)) => Op::Cas {
                key,
                expected_revision: parsed.expected_revision,
                value: data.slice(value),
            },
            _ => Op::Delete { key },
        };
        Ok(Command {
            session: parsed.session,
            op,
        })
    }

    /// The session and key of entry data, borrowed: what a replica looks at before it applies
    /// (every entry is looked at twice so, once when appended and once before it applies),
    /// without the reference counting of [`Command::decode`]'s slices. Fails exactly when
    /// `decode` does.
    pub fn peek(data: &[u8]) -> Result<(Option<Session>, &[u8]), CommandError> {
        let parsed = Parsed::of(data)?;
        Ok((parsed.session, &data[parsed.key]))
    }
}

/// Where the fields of a well-formed command lie in its data.
struct Parsed {
    session: Option<Session>,
    operation: u8,
    expected_revision: Index,
    key: Range<usize>,
    /// Put and compare-and-set only.
    value: Option<Range<usize>>,
}

impl Parsed {
    fn of(data: &[u8]) -> Result<Parsed, CommandError> {
        let mut cursor = Cursor { data, position: 0 };
        let format = cursor.u8("format").map_err(|_| CommandError::Empty)?;
        if format != COMMAND_FORMAT_V1 {
            return Err(CommandError::UnknownFormat(format));
        }
        let operation = cursor.u8("operation")?;
        if !matches!(operation, OPERATION_PUT | OPERATION_DELETE | OPERATION_CAS) {
            return Err(CommandError::UnknownOperation(operation));
        }
        let flags = cursor.u8("flags")?;
        if flags & !FLAG_SESSION != 0 {
            return Err(CommandError::UnknownFlags(flags));
        }
        let session = if flags & FLAG_SESSION != 0 {
            let session = Session {
                client_id: cursor.u64("client id")?,
                sequence: cursor.u64("sequence")?,
            };
            check_session(session)?;
            Some(session)
        } else {
            None
        };
        let expected_revision = if operation == OPERATION_CAS {
            cursor.u64("expected revision")?
        } else {
            0
        };
        let key = cursor.length_prefixed("key")?;
        check_user_key_format(&data[key.clone()])?;
        let value = if operation == OPERATION_DELETE {
            None
        } else {
            Some(cursor.length_prefixed("value")?)
        };
        let trailing = data.len() - cursor.position;
        if trailing != 0 {
            return Err(CommandError::TrailingBytes(trailing));
        }
        Ok(Parsed {
            session,
            operation,
            expected_revision,
            key,
            value,
        })
    }
}

fn check_session(session: Session) -> Result<(), CommandError> {
    if session.client_id == 0 || session.sequence == 0 {
        return Err(CommandError::SessionInvalid {
            client_id: session.client_id,
            sequence: session.sequence,
        });
    }
    Ok(())
}

/// Bounds-checked reads over entry data; every read either succeeds or says what was missing.
struct Cursor<'a> {
    data: &'a [u8],
    position: usize,
}

impl Cursor<'_> {
    fn take(&mut self, field: &'static str, needed: usize) -> Result<&[u8], CommandError> {
        let remaining = self.data.len() - self.position;
        if needed > remaining {
            return Err(CommandError::Truncated {
                field,
                needed,
                remaining,
            });
        }
        let start = self.position;
        self.position += needed;
        Ok(&self.data[start..self.position])
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, CommandError> {
        Ok(self.take(field, 1)?[0])
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, CommandError> {
        let bytes = self.take(field, 8)?;
        Ok(u64::from_be_bytes(
            bytes.try_into().expect("take returned 8 bytes"),
        ))
    }

    /// Where the field lies in the data.
    fn length_prefixed(&mut self, field: &'static str) -> Result<Range<usize>, CommandError> {
        let length = self.take(field, 4)?;
        let length = u32::from_be_bytes(length.try_into().expect("take returned 4 bytes")) as usize;
        let start = self.position;
        self.take(field, length)?;
        Ok(start..start + length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &'static [u8], value: &'static [u8]) -> Command {
        Command {
            session: Some(Session {
                client_id: 7,
                sequence: 9,
            }),
            op: Op::Put {
                key: Bytes::from_static(key),
                value: Bytes::from_static(value),
            },
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let bytes = put(b"k", b"vv").encode().unwrap();
        let mut expected = vec![1, 1, 1];
        expected.extend_from_slice(&7u64.to_be_bytes());
        expected.extend_from_slice(&9u64.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 1, b'k', 0, 0, 0, 2, b'v', b'v']);
        assert_eq!(&bytes[..], &expected[..]);
    }

    #[test]
    fn every_strict_prefix_is_truncated_not_a_panic() {
        let bytes = put(b"key", b"value").encode().unwrap();
        for length in 0..bytes.len() {
            let error = Command::decode(&bytes.slice(..length)).unwrap_err();
            assert!(
                matches!(error, CommandError::Empty | CommandError::Truncated { .. }),
                "{length}: {error:?}"
            );
        }
    }

    /// `peek` sees the session and key `decode` does, and fails where and as `decode` fails:
    /// a replica that peeks at an entry and later applies it must judge it the same way.
    #[test]
    fn peek_agrees_with_decode() {
        let commands = [
            put(b"key", b"value"),
            Command {
                session: None,
                op: Op::Delete {
                    key: Bytes::from_static(b"gone"),
                },
            },
            Command {
                session: Some(Session {
                    client_id: 3,
                    sequence: 4,
                }),
                op: Op::Cas {
                    key: Bytes::from_static(b"c"),
                    expected_revision: 12,
                    value: Bytes::from_static(b"new"),
                },
            },
        ];
        for command in commands {
            let bytes = command.encode().unwrap();
            let (session, key) = Command::peek(&bytes).unwrap();
            assert_eq!(session, command.session);
            assert_eq!(key, &command.op.key()[..]);
            assert_eq!(Command::decode(&bytes).unwrap(), command);
            // Every truncation, every byte changed, and a byte too many.
            let mut variants: Vec<Vec<u8>> =
                (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
            for at in 0..bytes.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut changed = bytes.to_vec();
                    changed[at] ^= flip;
                    variants.push(changed);
                }
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            variants.push(longer);
            for variant in variants {
                let decoded = Command::decode(&Bytes::from(variant.clone()));
                match (Command::peek(&variant), decoded) {
                    (Ok((session, key)), Ok(decoded)) => {
                        assert_eq!(session, decoded.session);
                        assert_eq!(key, &decoded.op.key()[..]);
                    }
                    (Err(peeked), Err(decoded)) => assert_eq!(peeked, decoded, "{variant:?}"),
                    (peeked, decoded) => panic!("{variant:?}: peek {peeked:?}, decode {decoded:?}"),
                }
            }
        }
    }

    #[test]
    fn limits_checked_at_encode() {
        let mut command = put(b"k", b"");
        command.op = Op::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![0; VALUE_BYTES_MAX + 1]),
        };
        assert_eq!(
            command.encode(),
            Err(CommandError::ValueTooLarge {
                bytes: VALUE_BYTES_MAX + 1,
                max: VALUE_BYTES_MAX
            })
        );
        command.session = Some(Session {
            client_id: 0,
            sequence: 1,
        });
        assert!(matches!(
            command.encode(),
            Err(CommandError::SessionInvalid { .. })
        ));
    }
}

//! Owns the layout of a group's key space as the kv layer sees it (the storage prefixes the
//! group id). Keys starting with byte 0x00 are reserved for the system; user keys may not start
//! with it, so no client write can reach system records and a user scan starting at
//! [`USER_KEYS_START`] never sees them. Pure functions, no IO.
//!
//! | range                   | holds                                              |
//! |-------------------------|----------------------------------------------------|
//! | `00 01` + client (8 B BE) | client session records ([`crate::kv::SessionRecord`]) |
//! | `00 02` .. `00 ff`      | reserved: transaction intents and records, leases, locks, sequencer state |
//! | `01` ..                 | user keys, values in the [`crate::kv::StoredValue`] format |

use super::command::KEY_BYTES_MAX;
use super::errors::CommandError;

/// The first byte of every system key.
pub const RESERVED_PREFIX: u8 = 0x00;
/// The first user key: user scans start here.
pub const USER_KEYS_START: &[u8] = &[0x01];
/// The start of the session records (inclusive). Storage keeps this range in a space of its
/// own (`storage::SESSION_KEYS_START`, the same bytes).
pub const SESSIONS_START: &[u8] = crate::storage::SESSION_KEYS_START;
/// The end of the session records (exclusive).
pub const SESSIONS_END: &[u8] = crate::storage::SESSION_KEYS_END;

/// The key of a client's session record.
pub fn session_key(client_id: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(SESSIONS_START);
    key[2..].copy_from_slice(&client_id.to_be_bytes());
    key
}

/// The client id of a session key, `None` if `key` is not one.
pub(crate) fn session_client(key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(SESSIONS_START)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// The rules a user key obeys forever in format v1 (empty and reserved keys are refused when a
/// command is decoded too). The size limit is checked here as well, but only when a command
/// enters the log: see [`crate::kv::Command::validate`].
pub fn validate_user_key(key: &[u8]) -> Result<(), CommandError> {
    check_user_key_format(key)?;
    if key.len() > KEY_BYTES_MAX {
        return Err(CommandError::KeyTooLarge {
            bytes: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// The format rules only (no size limit): what decoding checks.
pub(crate) fn check_user_key_format(key: &[u8]) -> Result<(), CommandError> {
    match key.first() {
        None => Err(CommandError::KeyEmpty),
        Some(&RESERVED_PREFIX) => Err(CommandError::KeyReserved),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_are_reserved_and_round_trip() {
        let key = session_key(0x0102_0304_0506_0708);
        assert_eq!(key[0], RESERVED_PREFIX);
        assert!(&key[..] >= SESSIONS_START && &key[..] < SESSIONS_END);
        assert_eq!(session_client(&key), Some(0x0102_0304_0506_0708));
        assert_eq!(session_client(b"\x00\x01short"), None);
        assert_eq!(session_client(b"user"), None);
    }

    #[test]
    fn user_key_rules() {
        assert_eq!(validate_user_key(b""), Err(CommandError::KeyEmpty));
        assert_eq!(validate_user_key(b"\x00a"), Err(CommandError::KeyReserved));
        assert_eq!(validate_user_key(b"\x01"), Ok(()));
        assert_eq!(validate_user_key(&[b'k'; KEY_BYTES_MAX]), Ok(()));
        assert_eq!(
            validate_user_key(&[b'k'; KEY_BYTES_MAX + 1]),
            Err(CommandError::KeyTooLarge {
                bytes: KEY_BYTES_MAX + 1,
                max: KEY_BYTES_MAX
            })
        );
    }
}

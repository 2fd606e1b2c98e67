//! The kv formats: commands and stored values round-trip, and no byte string makes a decoder
//! panic (each is a command or a typed error).

use bytes::Bytes;
use kahuna::kv::{
    Command, CommandError, Op, Session, StoredValue, ValueMeta, KEY_BYTES_MAX, VALUE_BYTES_MAX,
};
use proptest::prelude::*;

fn user_key() -> impl Strategy<Value = Bytes> {
    (1u8..=255, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(first, rest)| {
        let mut key = vec![first];
        key.extend(rest);
        Bytes::from(key)
    })
}

fn value() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from)
}

fn command() -> impl Strategy<Value = Command> {
    let session =
        proptest::option::of((1u64.., 1u64..).prop_map(|(client_id, sequence)| Session {
            client_id,
            sequence,
        }));
    let op = prop_oneof![
        (user_key(), value()).prop_map(|(key, value)| Op::Put { key, value }),
        user_key().prop_map(|key| Op::Delete { key }),
        (user_key(), any::<u64>(), value()).prop_map(|(key, expected_revision, value)| {
            Op::Cas {
                key,
                expected_revision,
                value,
            }
        }),
    ];
    (session, op).prop_map(|(session, op)| Command { session, op })
}

proptest! {
    #[test]
    fn commands_round_trip(command in command()) {
        let bytes = command.encode().unwrap();
        prop_assert_eq!(Command::decode(&bytes), Ok(command));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = Command::decode(&Bytes::from(bytes.clone()));
        let _ = StoredValue::decode(&Bytes::from(bytes));
    }

    #[test]
    fn damaged_commands_are_errors_or_other_commands(
        command in command(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = command.encode().unwrap().to_vec();
        let at = position.index(bytes.len());
        bytes[at] = byte;
        if let Ok(decoded) = Command::decode(&Bytes::from(bytes.clone())) {
            // Whatever decodes re-encodes to the same bytes: one meaning per byte string.
            prop_assert_eq!(decoded.encode().unwrap().to_vec(), bytes);
        }
    }

    #[test]
    fn values_round_trip(revision in 1u64.., create in 1u64.., value in value()) {
        let meta = ValueMeta { revision: revision.max(create), create_revision: create.min(revision) };
        let stored = StoredValue { meta, value };
        prop_assert_eq!(StoredValue::decode(&stored.encode()), Ok(stored));
    }
}

fn put(key: &[u8], value: &[u8]) -> Command {
    Command {
        session: None,
        op: Op::Put {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        },
    }
}

#[test]
fn malformed_commands_are_typed_errors() {
    let good = put(b"k", b"v").encode().unwrap();
    let decode = |bytes: &[u8]| Command::decode(&Bytes::copy_from_slice(bytes));
    assert_eq!(decode(&[]), Err(CommandError::Empty));
    assert_eq!(decode(&[9]), Err(CommandError::UnknownFormat(9)));
    assert_eq!(decode(&[1, 4, 0]), Err(CommandError::UnknownOperation(4)));
    assert_eq!(decode(&[1, 1, 2]), Err(CommandError::UnknownFlags(2)));
    let mut trailing = good.to_vec();
    trailing.push(0);
    assert_eq!(decode(&trailing), Err(CommandError::TrailingBytes(1)));
    // A key length far beyond the data: truncated, and no allocation of that size.
    assert!(matches!(
        decode(&[1, 2, 0, 0xff, 0xff, 0xff, 0xff, b'k']),
        Err(CommandError::Truncated { field: "key", .. })
    ));
    // Reserved and empty keys are refused when decoding too: a proposer that skipped validate
    // cannot reach the system range.
    let mut reserved = good.to_vec();
    reserved[7] = 0x00;
    assert_eq!(decode(&reserved), Err(CommandError::KeyReserved));
    assert_eq!(decode(&[1, 2, 0, 0, 0, 0, 0]), Err(CommandError::KeyEmpty));
    let mut no_sequence = vec![1, 2, 1];
    no_sequence.extend_from_slice(&5u64.to_be_bytes());
    no_sequence.extend_from_slice(&0u64.to_be_bytes());
    no_sequence.extend_from_slice(&[0, 0, 0, 1, b'k']);
    assert_eq!(
        decode(&no_sequence),
        Err(CommandError::SessionInvalid {
            client_id: 5,
            sequence: 0
        })
    );
}

#[test]
fn size_limits_are_checked_when_encoding() {
    assert!(put(&vec![b'k'; KEY_BYTES_MAX], &vec![0; VALUE_BYTES_MAX])
        .encode()
        .is_ok());
    assert_eq!(
        put(&vec![b'k'; KEY_BYTES_MAX + 1], b"").encode(),
        Err(CommandError::KeyTooLarge {
            bytes: KEY_BYTES_MAX + 1,
            max: KEY_BYTES_MAX
        })
    );
    assert_eq!(
        put(b"k", &vec![0; VALUE_BYTES_MAX + 1]).validate(),
        Err(CommandError::ValueTooLarge {
            bytes: VALUE_BYTES_MAX + 1,
            max: VALUE_BYTES_MAX
        })
    );
    assert_eq!(
        put(b"\x00sys", b"").encode(),
        Err(CommandError::KeyReserved)
    );
    assert_eq!(put(b"", b"").encode(), Err(CommandError::KeyEmpty));
}

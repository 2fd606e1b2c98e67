//! The client codec: every request and response round-trips, limits name their error codes,
//! frames of the wrong direction or shape are refused, and no input makes the decoder panic.

use bytes::Bytes;
use kahuna::proto::client::{
    decode_request, decode_response, effective_scan_limit, ClientDecodeError, ClientEncodeError,
    ClientEncoder, ErrorCode, KeyValue, NodeAddress, NodeStatus, Op, PartitionStatus, Reply,
    Request, Response,
};
use kahuna::proto::limits::{
    CLIENT_FRAME_BYTES_MAX, KEY_BYTES_MAX, SCAN_PAGE_ITEMS_DEFAULT, SCAN_PAGE_ITEMS_MAX,
    VALUE_BYTES_MAX,
};
use kahuna::raft::Role;
use proptest::prelude::*;

fn bytes(bytes_max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..bytes_max).prop_map(Bytes::from)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (bytes(32), any::<bool>()).prop_map(|(key, stale_ok)| Op::Get { key, stale_ok }),
        (bytes(32), bytes(64)).prop_map(|(key, value)| Op::Put { key, value }),
        bytes(32).prop_map(|key| Op::Delete { key }),
        (bytes(32), any::<u64>(), bytes(64)).prop_map(|(key, expected_revision, value)| Op::Cas {
            key,
            expected_revision,
            value
        }),
        (bytes(32), any::<u32>(), bytes(40), any::<Option<u64>>()).prop_map(
            |(prefix, limit, continuation, partition)| Op::Scan {
                prefix,
                limit,
                continuation,
                partition,
            }
        ),
        Just(Op::Status),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), op()).prop_map(
        |(request_id, client_id, sequence, cluster_id, op)| Request {
            request_id,
            client_id,
            sequence,
            cluster_id,
            op,
        },
    )
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Follower),
        Just(Role::PreCandidate),
        Just(Role::Candidate),
        Just(Role::Leader)
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    let key_value =
        (bytes(16), bytes(32), any::<u64>()).prop_map(|(key, value, revision)| KeyValue {
            key,
            value,
            revision,
        });
    let node =
        (any::<u64>(), "[a-z0-9.:]{0,24}").prop_map(|(node_id, client_address)| NodeAddress {
            node_id,
            client_address,
        });
    let partition = (
        any::<u64>(),
        role(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(partition, role, leader, term, commit_index, applied_index)| PartitionStatus {
                partition,
                role,
                leader,
                term,
                commit_index,
                applied_index,
            },
        );
    prop_oneof![
        (bytes(64), any::<u64>()).prop_map(|(value, revision)| Reply::Value { value, revision }),
        any::<u64>().prop_map(|revision| Reply::Revision { revision }),
        (prop::collection::vec(key_value, 0..6), bytes(24)).prop_map(|(items, continuation)| {
            Reply::Scan {
                items,
                continuation,
            }
        }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(node, 0..4),
            prop::collection::vec(partition, 0..6)
        )
            .prop_map(
                |(node_id, cluster_id, partition_count, nodes, partitions)| {
                    Reply::Status(NodeStatus {
                        node_id,
                        cluster_id,
                        partition_count,
                        nodes,
                        partitions,
                    })
                }
            ),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    (0u16..14).prop_map(|code| ErrorCode::from_u16(code).unwrap())
}

fn response() -> impl Strategy<Value = Response> {
    (
        any::<u64>(),
        error_code(),
        ".{0,40}",
        any::<u64>(),
        "[a-z0-9.:]{0,24}",
        prop::option::of(reply()),
    )
        .prop_map(
            |(request_id, error, message, leader_hint, leader_address, reply)| Response {
                request_id,
                error,
                message,
                leader_hint,
                leader_address,
                reply,
            },
        )
}

fn put(key_bytes: usize, value_bytes: usize) -> Request {
    Request {
        request_id: 1,
        client_id: 2,
        sequence: 3,
        cluster_id: 0,
        op: Op::Put {
            key: Bytes::from(vec![b'k'; key_bytes]),
            value: Bytes::from(vec![b'v'; value_bytes]),
        },
    }
}

#[test]
fn error_codes_keep_their_wire_values() {
    for code in 0u16..14 {
        assert_eq!(ErrorCode::from_u16(code).unwrap() as u16, code);
    }
    assert_eq!(ErrorCode::from_u16(14), None);
    assert!(
        ErrorCode::NotFound.is_definite_negative()
            && ErrorCode::RevisionMismatch.is_definite_negative()
    );
    assert!(!ErrorCode::Timeout.is_definite_negative());
    assert!(ErrorCode::NotLeader.is_retryable() && !ErrorCode::KeyTooLarge.is_retryable());
}

#[test]
fn limits_name_their_error_codes() {
    assert_eq!(put(KEY_BYTES_MAX, VALUE_BYTES_MAX).check_limits(), Ok(()));
    assert_eq!(
        put(KEY_BYTES_MAX + 1, 1).check_limits().unwrap_err().code,
        ErrorCode::KeyTooLarge
    );
    assert_eq!(
        put(1, VALUE_BYTES_MAX + 1).check_limits().unwrap_err().code,
        ErrorCode::ValueTooLarge
    );
    assert_eq!(
        put(0, 1).check_limits().unwrap_err().code,
        ErrorCode::Malformed
    );
    let scan = |prefix: usize, continuation: usize| Request {
        op: Op::Scan {
            prefix: Bytes::from(vec![b'p'; prefix]),
            limit: 0,
            continuation: Bytes::from(vec![0; continuation]),
            partition: Some(0),
        },
        ..put(1, 1)
    };
    assert_eq!(scan(0, 0).check_limits(), Ok(()));
    assert_eq!(
        scan(KEY_BYTES_MAX + 1, 0).check_limits().unwrap_err().code,
        ErrorCode::KeyTooLarge
    );
    assert_eq!(
        scan(0, 1 << 20).check_limits().unwrap_err().code,
        ErrorCode::Malformed
    );
    assert_eq!(effective_scan_limit(0), SCAN_PAGE_ITEMS_DEFAULT);
    assert_eq!(effective_scan_limit(7), 7);
    assert_eq!(effective_scan_limit(u32::MAX), SCAN_PAGE_ITEMS_MAX);
}

#[test]
fn the_largest_legal_request_fits_a_frame_and_a_larger_one_is_refused() {
    let mut encoder = ClientEncoder::new();
    let frame = encoder
        .encode_request(&put(KEY_BYTES_MAX, VALUE_BYTES_MAX))
        .unwrap()
        .to_vec();
    assert_eq!(
        decode_request(&frame).unwrap(),
        put(KEY_BYTES_MAX, VALUE_BYTES_MAX)
    );
    let error = encoder
        .encode_request(&put(1, CLIENT_FRAME_BYTES_MAX))
        .unwrap_err();
    assert!(matches!(
        error,
        ClientEncodeError::FrameTooLarge {
            what: "request",
            ..
        }
    ));
    // The encoder still works after a refusal and after a large frame.
    assert!(encoder.encode_request(&put(1, 1)).is_ok());
}

#[test]
fn requests_and_responses_are_not_confused() {
    let mut encoder = ClientEncoder::new();
    let request = encoder.encode_request(&put(1, 1)).unwrap().to_vec();
    assert_eq!(
        decode_response(&request),
        Err(ClientDecodeError::WrongIdentifier {
            expected: "response"
        })
    );
    let response = encoder
        .encode_response(&Response::error(9, ErrorCode::Timeout, "slow"))
        .unwrap()
        .to_vec();
    assert_eq!(
        decode_request(&response),
        Err(ClientDecodeError::WrongIdentifier {
            expected: "request"
        })
    );
    let decoded = decode_response(&response).unwrap();
    assert_eq!(
        (decoded.request_id, decoded.error, decoded.message.as_str()),
        (9, ErrorCode::Timeout, "slow")
    );
}

#[test]
fn truncated_frames_are_refused() {
    let frame = ClientEncoder::new()
        .encode_request(&put(10, 100))
        .unwrap()
        .to_vec();
    for cut in 0..frame.len() {
        assert!(
            matches!(
                decode_request(&frame[..cut]),
                Err(ClientDecodeError::Frame(_))
            ),
            "cut at {cut}"
        );
    }
    let mut lying = frame.clone();
    lying[..4].copy_from_slice(&((CLIENT_FRAME_BYTES_MAX + 1) as u32).to_le_bytes());
    assert!(matches!(
        decode_request(&lying),
        Err(ClientDecodeError::Frame(_))
    ));
}

proptest! {
    #[test]
    fn requests_round_trip(request in request()) {
        let mut encoder = ClientEncoder::new();
        let frame = encoder.encode_request(&request).unwrap();
        prop_assert_eq!(decode_request(frame).unwrap(), request);
    }

    #[test]
    fn responses_round_trip(response in response()) {
        let mut encoder = ClientEncoder::new();
        let frame = encoder.encode_response(&response).unwrap();
        prop_assert_eq!(decode_response(frame).unwrap(), response);
    }

    #[test]
    fn random_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..512), fix_header in any::<bool>()) {
        if fix_header && bytes.len() >= 4 {
            let length = (bytes.len() - 4) as u32;
            bytes[..4].copy_from_slice(&length.to_le_bytes());
        }
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(
        request in request(),
        response in response(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut encoder = ClientEncoder::new();
        let mut request_frame = encoder.encode_request(&request).unwrap().to_vec();
        let mut response_frame = encoder.encode_response(&response).unwrap().to_vec();
        for (position, value) in &flips {
            let at = 4 + position.index(request_frame.len() - 4);
            request_frame[at] = *value;
            let at = 4 + position.index(response_frame.len() - 4);
            response_frame[at] = *value;
        }
        let _ = decode_request(&request_frame);
        let _ = decode_response(&response_frame);
    }
}

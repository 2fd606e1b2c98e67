//! The peer codec: every Raft message survives a round trip, batches split to fit the frame
//! limit, handshakes check clusters, and no input (random, truncated, mutated) makes the
//! decoder panic.

use bytes::Bytes;
use kahuna::proto::frame::{FrameDecoder, FrameError};
use kahuna::proto::limits::{PEER_FRAME_BYTES_MAX, QUIET_NODES_MAX};
use kahuna::proto::peer::{
    decode_batch, decode_handshake, empty_batch_bytes_bound, message_bytes_bound, Handshake,
    HandshakeError, Lane, PeerDecodeError, PeerEncodeError, PeerEncoder, PEER_PROTOCOL_VERSION,
};
use kahuna::raft::{ConfState, Entry, EntryKind, Message, MessageBody, SnapshotMeta};
use proptest::prelude::*;

const FROM: u64 = 1;
const TO: u64 = 2;

fn entry_kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![
        Just(EntryKind::Normal),
        Just(EntryKind::Noop),
        Just(EntryKind::ConfChange)
    ]
}

fn data(bytes_max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..bytes_max).prop_map(Bytes::from)
}

/// An anchored append: entries follow (prev_index, prev_term), terms never fall.
fn append() -> impl Strategy<Value = MessageBody> {
    (
        0u64..1 << 40,
        0u64..1 << 20,
        any::<u64>(),
        prop::collection::vec((0u64..3, entry_kind(), data(64)), 0..5),
    )
        .prop_map(|(prev_index, prev_term, commit, steps)| {
            let mut term = prev_term;
            let entries = steps
                .into_iter()
                .enumerate()
                .map(|(offset, (term_step, kind, data))| {
                    term += term_step;
                    Entry {
                        index: prev_index + 1 + offset as u64,
                        term,
                        kind,
                        data,
                    }
                })
                .collect();
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            }
        })
}

fn conf_state() -> impl Strategy<Value = ConfState> {
    (
        prop::collection::vec(1u64..20, 0..6),
        prop::collection::vec(1u64..20, 0..4),
    )
        .prop_map(|(voters, learners)| ConfState::new(voters, learners))
}

fn body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(last_index, last_term)| MessageBody::PreVote {
            last_index,
            last_term
        }),
        any::<bool>().prop_map(|reject| MessageBody::PreVoteResponse { reject }),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(last_index, last_term, force)| {
            MessageBody::Vote {
                last_index,
                last_term,
                force,
            }
        }),
        any::<bool>().prop_map(|reject| MessageBody::VoteResponse { reject }),
        append(),
        (any::<bool>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(reject, index, hint_index, hint_term)| {
                MessageBody::AppendResponse {
                    reject,
                    index,
                    hint_index,
                    hint_term,
                }
            }
        ),
        (any::<u64>(), any::<u64>())
            .prop_map(|(commit, read_seq)| MessageBody::Heartbeat { commit, read_seq }),
        any::<u64>().prop_map(|read_seq| MessageBody::HeartbeatResponse { read_seq }),
        (
            any::<u64>(),
            any::<u64>(),
            conf_state(),
            any::<u64>(),
            data(256),
            any::<bool>()
        )
            .prop_map(|(index, term, conf_state, offset, data, done)| {
                MessageBody::InstallSnapshot {
                    meta: SnapshotMeta {
                        index,
                        term,
                        conf_state,
                    },
                    offset,
                    data,
                    done,
                }
            }),
        (any::<u64>(), any::<u64>()).prop_map(|(snapshot_index, next_offset)| {
            MessageBody::SnapshotResponse {
                snapshot_index,
                next_offset,
            }
        }),
        Just(MessageBody::TimeoutNow),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (any::<u64>(), any::<u64>(), body()).prop_map(|(group, term, body)| Message {
        group,
        from: FROM,
        to: TO,
        term,
        body,
    })
}

/// The order a coalescing encoder delivers in: other messages, heartbeats, heartbeat responses.
fn delivery_order(messages: &[Message]) -> Vec<Message> {
    let rank = |message: &Message| match message.body {
        MessageBody::Heartbeat { .. } => 1,
        MessageBody::HeartbeatResponse { .. } => 2,
        _ => 0,
    };
    let mut ordered = messages.to_vec();
    ordered.sort_by_key(rank); // stable: keeps the order within each kind
    ordered
}

/// One example of every MessageBody variant.
fn every_variant() -> Vec<Message> {
    let conf_state = ConfState::new(vec![1, 2, 3], vec![4]);
    let bodies = vec![
        MessageBody::PreVote {
            last_index: 10,
            last_term: 2,
        },
        MessageBody::PreVoteResponse { reject: true },
        MessageBody::Vote {
            last_index: 10,
            last_term: 2,
            force: true,
        },
        MessageBody::VoteResponse { reject: false },
        MessageBody::Append {
            prev_index: 10,
            prev_term: 2,
            entries: vec![
                Entry {
                    index: 11,
                    term: 3,
                    kind: EntryKind::Noop,
                    data: Bytes::new(),
                },
                Entry {
                    index: 12,
                    term: 3,
                    kind: EntryKind::Normal,
                    data: Bytes::from_static(b"put k v"),
                },
                Entry {
                    index: 13,
                    term: 3,
                    kind: EntryKind::ConfChange,
                    data: conf_state.encode(),
                },
            ],
            commit: 11,
        },
        MessageBody::Append {
            prev_index: 13,
            prev_term: 3,
            entries: vec![],
            commit: 13,
        },
        MessageBody::AppendResponse {
            reject: true,
            index: 10,
            hint_index: 8,
            hint_term: 1,
        },
        MessageBody::Heartbeat {
            commit: 13,
            read_seq: 77,
        },
        MessageBody::HeartbeatResponse { read_seq: 77 },
        MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                index: 100,
                term: 4,
                conf_state,
            },
            offset: 4096,
            data: Bytes::from(vec![0xab; 300]),
            done: false,
        },
        MessageBody::SnapshotResponse {
            snapshot_index: 100,
            next_offset: 4396,
        },
        MessageBody::TimeoutNow,
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(group, body)| Message {
            group: group as u64 + 1,
            from: FROM,
            to: TO,
            term: 5,
            body,
        })
        .collect()
}

#[test]
fn every_message_body_variant_round_trips() {
    let messages = every_variant();
    for coalesce in [false, true] {
        let mut encoder = PeerEncoder::new().with_coalesced_heartbeats(coalesce);
        let encoded = encoder.encode_batch(FROM, TO, &messages).unwrap();
        assert_eq!(encoded.messages_encoded, messages.len());
        let batch = decode_batch(encoded.frame).unwrap();
        assert_eq!((batch.from_node, batch.to_node), (FROM, TO));
        let expected = if coalesce {
            delivery_order(&messages)
        } else {
            messages.clone()
        };
        assert_eq!(batch.messages, expected, "coalesce = {coalesce}");
    }
}

#[test]
fn coalesced_heartbeats_are_smaller() {
    let heartbeats: Vec<Message> = (1..=64)
        .map(|group| Message {
            group,
            from: FROM,
            to: TO,
            term: 9,
            body: MessageBody::Heartbeat {
                commit: 1000,
                read_seq: 0,
            },
        })
        .collect();
    let coalesced = PeerEncoder::new()
        .encode_batch(FROM, TO, &heartbeats)
        .unwrap()
        .frame
        .len();
    let plain = PeerEncoder::new()
        .with_coalesced_heartbeats(false)
        .encode_batch(FROM, TO, &heartbeats)
        .unwrap()
        .frame
        .len();
    assert!(coalesced < 64 * 40, "coalesced frame of {coalesced} bytes");
    assert!(
        coalesced * 2 < plain,
        "coalesced {coalesced} bytes, plain {plain} bytes"
    );
}

#[test]
fn an_empty_batch_round_trips() {
    let mut encoder = PeerEncoder::new();
    let encoded = encoder.encode_batch(FROM, TO, &[]).unwrap();
    assert_eq!(encoded.messages_encoded, 0);
    assert!(decode_batch(encoded.frame).unwrap().messages.is_empty());
}

#[test]
fn quiet_reports_round_trip_and_no_report_stays_none() {
    let mut encoder = PeerEncoder::new();
    let messages = every_variant();
    let plain = decode_batch(encoder.encode_batch(FROM, TO, &messages).unwrap().frame).unwrap();
    assert_eq!(plain.quiet_nodes, None, "no report unless one is set");
    for report in [&[][..], &[3], &[2, 3, 9]] {
        encoder.set_quiet_report(Some(report));
        let batch = decode_batch(encoder.encode_batch(FROM, TO, &messages).unwrap().frame).unwrap();
        assert_eq!(batch.quiet_nodes.as_deref(), Some(report));
        assert_eq!(batch.messages, delivery_order(&messages));
        let empty = decode_batch(encoder.encode_batch(FROM, TO, &[]).unwrap().frame).unwrap();
        assert_eq!(
            empty.quiet_nodes.as_deref(),
            Some(report),
            "node heartbeats carry it"
        );
    }
    encoder.set_quiet_report(None);
    let batch = decode_batch(encoder.encode_batch(FROM, TO, &[]).unwrap().frame).unwrap();
    assert_eq!(batch.quiet_nodes, None);
}

/// The frame size bounds count the quiet report: an append that exactly fills a frame's bound
/// without a report is refused with one, before anything is built.
#[test]
fn a_quiet_report_counts_against_the_frame_limit() {
    let frame_bytes_max = 64 << 10;
    let append = |data: usize| Message {
        group: 9,
        from: FROM,
        to: TO,
        term: 2,
        body: MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            commit: 0,
            entries: vec![Entry {
                index: 1,
                term: 2,
                kind: EntryKind::Normal,
                data: Bytes::from(vec![7_u8; data]),
            }],
        },
    };
    let fixed = empty_batch_bytes_bound(0) + message_bytes_bound(&append(0));
    let exact = append(frame_bytes_max - fixed);
    let mut encoder = PeerEncoder::new().with_frame_bytes_max(frame_bytes_max);
    let encoded = encoder
        .encode_batch(FROM, TO, std::slice::from_ref(&exact))
        .unwrap();
    assert_eq!(encoded.messages_encoded, 1);
    encoder.set_quiet_report(Some(&[3]));
    assert!(matches!(
        encoder.encode_batch(FROM, TO, std::slice::from_ref(&exact)),
        Err(PeerEncodeError::MessageTooLarge { group: 9, .. })
    ));
    // The largest report still leaves room for a smaller append, and it all decodes.
    let report: Vec<u64> = (3..3 + QUIET_NODES_MAX as u64).collect();
    encoder.set_quiet_report(Some(&report));
    let smaller = append(frame_bytes_max - fixed - empty_batch_bytes_bound(QUIET_NODES_MAX));
    let batch = decode_batch(
        encoder
            .encode_batch(FROM, TO, std::slice::from_ref(&smaller))
            .unwrap()
            .frame,
    )
    .unwrap();
    assert_eq!(batch.messages, vec![smaller]);
    assert_eq!(batch.quiet_nodes.as_deref(), Some(&report[..]));
}

#[test]
fn encoding_refuses_what_a_receiver_would_refuse() {
    let mut encoder = PeerEncoder::new();
    let mut message = every_variant().pop().unwrap();
    assert!(matches!(
        encoder.encode_batch(FROM, FROM, &[message.clone()]),
        Err(PeerEncodeError::InvalidNodeId { .. })
    ));
    assert!(matches!(
        encoder.encode_batch(0, TO, &[message.clone()]),
        Err(PeerEncodeError::InvalidNodeId { .. })
    ));
    message.to = 3;
    assert!(matches!(
        encoder.encode_batch(FROM, TO, &[message]),
        Err(PeerEncodeError::AddressMismatch { .. })
    ));
    let bad_conf = Message {
        group: 1,
        from: FROM,
        to: TO,
        term: 1,
        body: MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                index: 1,
                term: 1,
                conf_state: ConfState {
                    voters: vec![2, 1],
                    learners: vec![],
                },
            },
            offset: 0,
            data: Bytes::new(),
            done: true,
        },
    };
    assert_eq!(
        encoder.encode_batch(FROM, TO, &[bad_conf]).unwrap_err(),
        PeerEncodeError::NonCanonicalConfState { group: 1 }
    );
    let gap = Message {
        group: 1,
        from: FROM,
        to: TO,
        term: 1,
        body: MessageBody::Append {
            prev_index: 5,
            prev_term: 1,
            entries: vec![Entry {
                index: 7,
                term: 1,
                kind: EntryKind::Normal,
                data: Bytes::new(),
            }],
            commit: 0,
        },
    };
    assert!(matches!(
        encoder.encode_batch(FROM, TO, &[gap]),
        Err(PeerEncodeError::NonContiguousEntries { index: 7, .. })
    ));
}

#[test]
fn a_message_larger_than_a_frame_is_refused_before_building() {
    let mut encoder = PeerEncoder::new().with_frame_bytes_max(1024);
    let message = Message {
        group: 1,
        from: FROM,
        to: TO,
        term: 1,
        body: MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![Entry {
                index: 1,
                term: 1,
                kind: EntryKind::Normal,
                data: Bytes::from(vec![0; 2048]),
            }],
            commit: 0,
        },
    };
    assert!(matches!(
        encoder.encode_batch(FROM, TO, &[message]),
        Err(PeerEncodeError::MessageTooLarge { group: 1, .. })
    ));
}

#[test]
fn handshakes_round_trip_and_check_the_cluster() {
    let mut encoder = PeerEncoder::new();
    let sent = Handshake::new(0xfeed, 3, 1);
    let received = decode_handshake(encoder.encode_handshake(&sent)).unwrap();
    assert_eq!(received, sent);
    assert_eq!(received.protocol_version, PEER_PROTOCOL_VERSION);
    assert_eq!(received.check(0xfeed, 1), Ok(()));
    assert_eq!(
        received.check(0xbeef, 1),
        Err(HandshakeError::WrongCluster {
            expected: 0xbeef,
            received: 0xfeed
        })
    );
    assert_eq!(
        received.check(0xfeed, 2),
        Err(HandshakeError::WrongNode {
            expected: 1,
            local: 2
        })
    );
    assert_eq!(
        received.check(0xfeed, 3),
        Err(HandshakeError::SelfConnection { local: 3 })
    );
    assert_eq!(
        Handshake::new(0xfeed, 0, 0).check(0xfeed, 1),
        Err(HandshakeError::InvalidNodeId)
    );
    assert_eq!(Handshake::new(0xfeed, 3, 0).check(0xfeed, 1), Ok(()));
    let future = Handshake {
        protocol_version: 99,
        ..sent
    };
    assert!(matches!(
        future.check(0xfeed, 1),
        Err(HandshakeError::UnsupportedVersion { received: 99, .. })
    ));
}

#[test]
fn handshakes_carry_the_lane_and_whether_lanes_are_taken() {
    let mut encoder = PeerEncoder::new();
    let plain = decode_handshake(encoder.encode_handshake(&Handshake::new(7, 3, 1))).unwrap();
    assert_eq!(plain.lane, Lane::Main);
    assert!(!plain.accepts_durable_lane);
    let lane = Handshake {
        lane: Lane::DurableAnswers,
        ..Handshake::new(7, 3, 1)
    };
    assert_eq!(
        decode_handshake(encoder.encode_handshake(&lane)).unwrap(),
        lane
    );
    let answer = Handshake {
        accepts_durable_lane: true,
        ..Handshake::new(7, 1, 3)
    };
    assert_eq!(
        decode_handshake(encoder.encode_handshake(&answer)).unwrap(),
        answer
    );
}

#[test]
fn handshake_and_batch_frames_are_not_confused() {
    let mut encoder = PeerEncoder::new();
    let handshake = encoder.encode_handshake(&Handshake::new(1, 3, 1)).to_vec();
    assert_eq!(
        decode_batch(&handshake),
        Err(PeerDecodeError::WrongIdentifier {
            expected: "peer batch"
        })
    );
    let batch = encoder
        .encode_batch(FROM, TO, &every_variant())
        .unwrap()
        .frame
        .to_vec();
    assert_eq!(
        decode_handshake(&batch),
        Err(PeerDecodeError::WrongIdentifier {
            expected: "handshake"
        })
    );
}

#[test]
fn truncated_and_oversized_frames_are_refused() {
    let frame = PeerEncoder::new()
        .encode_batch(FROM, TO, &every_variant())
        .unwrap()
        .frame
        .to_vec();
    for cut in 0..frame.len() {
        let error = decode_batch(&frame[..cut]).unwrap_err();
        assert!(
            matches!(
                error,
                PeerDecodeError::Frame(FrameError::LengthMismatch { .. })
            ),
            "cut at {cut}: {error:?}"
        );
    }
    let mut huge = ((PEER_FRAME_BYTES_MAX + 1) as u32).to_le_bytes().to_vec();
    huge.extend_from_slice(&[0; 64]);
    assert_eq!(
        decode_batch(&huge),
        Err(PeerDecodeError::Frame(FrameError::FrameTooLarge {
            length: PEER_FRAME_BYTES_MAX + 1,
            max: PEER_FRAME_BYTES_MAX
        }))
    );
}

#[test]
fn frames_survive_a_stream_split_anywhere() {
    let mut encoder = PeerEncoder::new();
    let messages = every_variant();
    let mut stream = Vec::new();
    for chunk in messages.chunks(3) {
        stream.extend_from_slice(encoder.encode_batch(FROM, TO, chunk).unwrap().frame);
    }
    for piece in [1, 7, 64, 4096] {
        let mut decoder = FrameDecoder::new(PEER_FRAME_BYTES_MAX);
        let mut received = Vec::new();
        for bytes in stream.chunks(piece) {
            decoder.feed(bytes);
            while let Some(frame) = decoder.next_frame().unwrap() {
                received.extend(decode_batch(&frame).unwrap().messages);
            }
        }
        assert!(decoder.is_at_frame_boundary());
        let expected: Vec<Message> = messages.chunks(3).flat_map(delivery_order).collect();
        assert_eq!(received, expected, "pieces of {piece} bytes");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn generated_messages_round_trip_in_order(messages in prop::collection::vec(message(), 0..24)) {
        let mut encoder = PeerEncoder::new().with_coalesced_heartbeats(false);
        let encoded = encoder.encode_batch(FROM, TO, &messages).unwrap();
        prop_assert_eq!(encoded.messages_encoded, messages.len());
        prop_assert_eq!(decode_batch(encoded.frame).unwrap().messages, messages);
    }

    #[test]
    fn generated_messages_round_trip_coalesced(messages in prop::collection::vec(message(), 0..24)) {
        let mut encoder = PeerEncoder::new();
        let encoded = encoder.encode_batch(FROM, TO, &messages).unwrap();
        prop_assert_eq!(decode_batch(encoded.frame).unwrap().messages, delivery_order(&messages));
    }

    /// A small frame limit forces splitting; every frame respects it (the encoder asserts its
    /// size bounds) and the frames together carry every message.
    #[test]
    fn batches_split_over_frames_lose_nothing(
        messages in prop::collection::vec(message(), 1..24),
        frame_bytes_max in 1024usize..4096,
    ) {
        let mut encoder = PeerEncoder::new().with_frame_bytes_max(frame_bytes_max).with_coalesced_heartbeats(false);
        let mut received = Vec::new();
        let mut rest = &messages[..];
        while !rest.is_empty() {
            let encoded = encoder.encode_batch(FROM, TO, rest).unwrap();
            prop_assert!(encoded.frame.len() <= 4 + frame_bytes_max);
            prop_assert!(encoded.messages_encoded >= 1);
            received.extend(decode_batch(encoded.frame).unwrap().messages);
            rest = &rest[encoded.messages_encoded..];
        }
        prop_assert_eq!(received, messages);
    }

    #[test]
    fn a_single_message_fits_its_size_bound(message in message()) {
        let mut encoder = PeerEncoder::new().with_coalesced_heartbeats(false);
        let frame = encoder.encode_batch(FROM, TO, std::slice::from_ref(&message)).unwrap().frame;
        let empty = PeerEncoder::new().encode_batch(FROM, TO, &[]).unwrap().frame.len();
        prop_assert!(frame.len() <= empty + message_bytes_bound(&message), "{} > {} + {}", frame.len(), empty, message_bytes_bound(&message));
    }

    #[test]
    fn random_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..512), fix_header in any::<bool>()) {
        if fix_header && bytes.len() >= 4 {
            let length = (bytes.len() - 4) as u32;
            bytes[..4].copy_from_slice(&length.to_le_bytes());
        }
        let _ = decode_batch(&bytes);
        let _ = decode_handshake(&bytes);
    }

    /// Mutations of a valid frame reach deep into the verifier and the checks after it.
    #[test]
    fn mutated_frames_never_panic(
        messages in prop::collection::vec(message(), 1..8),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut frame = PeerEncoder::new().encode_batch(FROM, TO, &messages).unwrap().frame.to_vec();
        for (position, value) in flips {
            // Keep the header so the mutation reaches the body.
            let position = 4 + position.index(frame.len() - 4);
            frame[position] = value;
        }
        if let Ok(batch) = decode_batch(&frame) {
            // Whatever verifies must be re-encodable: the decoder enforced every invariant.
            let mut encoder = PeerEncoder::new();
            prop_assert!(encoder.encode_batch(batch.from_node, batch.to_node, &batch.messages).is_ok());
        }
    }
}

/// The verifier's table and apparent-size limits must admit the largest legal frames: as many
/// of the smallest messages as the encoder puts in one frame.
#[test]
fn a_frame_full_of_the_smallest_messages_verifies() {
    let message = |group| Message {
        group,
        from: FROM,
        to: TO,
        term: 1,
        body: MessageBody::TimeoutNow,
    };
    let per_frame = PEER_FRAME_BYTES_MAX / message_bytes_bound(&message(0));
    let messages: Vec<Message> = (0..per_frame as u64 + 10).map(message).collect();
    let mut encoder = PeerEncoder::new();
    let encoded = encoder.encode_batch(FROM, TO, &messages).unwrap();
    assert!(
        encoded.messages_encoded + 10 >= per_frame,
        "only {} messages fit",
        encoded.messages_encoded
    );
    let decoded = decode_batch(encoded.frame).unwrap();
    assert_eq!(decoded.messages.len(), encoded.messages_encoded);
}

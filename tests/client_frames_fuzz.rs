//! Fuzzing the client frame decoder and verifier (proptest) from a small corpus of interesting
//! frames checked in under `tests/corpus/client_frames/`. Every corpus file is replayed with
//! its expected outcome (its name says it: `request-*` decodes as a request, `response-*` as a
//! response, `bad-*` as neither), then mutated: whatever the bytes, the stream decoder and
//! both verifying decoders return a value or a typed error, never panic, and whatever they
//! accept re-encodes to something that decodes to the same value.
//!
//! Regenerate the corpus (deterministic) with
//! `KAHUNA_WRITE_CORPUS=1 cargo test --test client_frames_fuzz write_corpus`.

use std::path::PathBuf;

use bytes::Bytes;
use kahuna::proto::client::{
    decode_request, decode_response, ClientEncoder, ErrorCode, KeyValue, NodeAddress, NodeStatus,
    Op, PartitionStatus, Reply, Request, Response,
};
use kahuna::proto::frame::FrameDecoder;
use kahuna::proto::limits::CLIENT_FRAME_BYTES_MAX;
use kahuna::raft::Role;
use proptest::prelude::*;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/client_frames")
}

fn request(op: Op) -> Request {
    Request {
        request_id: 42,
        client_id: 7,
        sequence: 3,
        cluster_id: 1,
        op,
    }
}

fn b(bytes: &'static [u8]) -> Bytes {
    Bytes::from_static(bytes)
}

/// The corpus: named frames.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut encoder = ClientEncoder::new();
    let mut frames = Vec::new();
    let requests = [
        (
            "get",
            Op::Get {
                key: b(b"key"),
                stale_ok: false,
            },
        ),
        (
            "get-stale",
            Op::Get {
                key: b(b"key"),
                stale_ok: true,
            },
        ),
        (
            "put",
            Op::Put {
                key: b(b"key"),
                value: b(b"value"),
            },
        ),
        (
            "put-empty-value",
            Op::Put {
                key: b(b"k"),
                value: Bytes::new(),
            },
        ),
        ("delete", Op::Delete { key: b(b"key") }),
        (
            "cas",
            Op::Cas {
                key: b(b"key"),
                expected_revision: 9,
                value: b(b"v"),
            },
        ),
        (
            "scan",
            Op::Scan {
                prefix: b(b"p/"),
                limit: 10,
                continuation: b(b"p/9"),
                partition: Some(3),
            },
        ),
        (
            "scan-unscoped",
            Op::Scan {
                prefix: Bytes::new(),
                limit: 0,
                continuation: Bytes::new(),
                partition: None,
            },
        ),
        ("status", Op::Status),
    ];
    for (name, op) in requests {
        let frame = encoder.encode_request(&request(op)).unwrap().to_vec();
        frames.push((format!("request-{name}"), frame));
    }
    let mut not_leader = Response::error(5, ErrorCode::NotLeader, "not the leader");
    not_leader.leader_hint = 2;
    not_leader.leader_address = "127.0.0.1:7401".into();
    let responses = [
        (
            "value",
            Response::ok(
                1,
                Some(Reply::Value {
                    value: b(b"v"),
                    revision: 4,
                }),
            ),
        ),
        (
            "revision",
            Response::ok(2, Some(Reply::Revision { revision: 8 })),
        ),
        (
            "scan",
            Response::ok(
                3,
                Some(Reply::Scan {
                    items: vec![
                        KeyValue {
                            key: b(b"a"),
                            value: b(b"1"),
                            revision: 1,
                        },
                        KeyValue {
                            key: b(b"b"),
                            value: Bytes::new(),
                            revision: 2,
                        },
                    ],
                    continuation: b(b"b"),
                }),
            ),
        ),
        (
            "status",
            Response::ok(
                4,
                Some(Reply::Status(NodeStatus {
                    node_id: 1,
                    cluster_id: 1,
                    partition_count: 2,
                    nodes: vec![NodeAddress {
                        node_id: 1,
                        client_address: "127.0.0.1:7400".into(),
                    }],
                    partitions: vec![PartitionStatus {
                        partition: 0,
                        role: Role::Leader,
                        leader: 1,
                        term: 3,
                        commit_index: 10,
                        applied_index: 10,
                    }],
                })),
            ),
        ),
        ("not-leader", not_leader),
        (
            "frame-too-large",
            Response::error(0, ErrorCode::FrameTooLarge, "too large"),
        ),
    ];
    for (name, response) in responses {
        let frame = encoder.encode_response(&response).unwrap().to_vec();
        frames.push((format!("response-{name}"), frame));
    }
    let put = frames
        .iter()
        .find(|(n, _)| n == "request-put")
        .unwrap()
        .1
        .clone();
    let mut bad = vec![
        ("empty-body", vec![0, 0, 0, 0]),
        ("header-only-short", vec![1, 0]),
        ("truncated", put[..put.len() - 3].to_vec()),
        ("length-too-short", {
            let mut f = put.clone();
            f[0] -= 1;
            f
        }),
        (
            "random-body",
            vec![12, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8],
        ),
        (
            "root-offset-out-of-range",
            vec![8, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, b'K', b'R', b'Q', b'1'],
        ),
    ];
    // A valid frame with its file identifier damaged.
    let mut wrong_identifier = put.clone();
    if let Some(at) = wrong_identifier.windows(4).position(|w| w == b"KRQ1") {
        wrong_identifier[at + 3] = b'9';
        bad.push(("wrong-identifier", wrong_identifier));
    }
    for (name, frame) in bad {
        frames.push((format!("bad-{name}"), frame));
    }
    frames
}

#[test]
fn write_corpus() {
    if std::env::var_os("KAHUNA_WRITE_CORPUS").is_none() {
        return;
    }
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, frame) in corpus() {
        std::fs::write(dir.join(format!("{name}.bin")), frame).unwrap();
    }
}

fn checked_in() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("the corpus is checked in")
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    assert!(files.len() >= 20, "corpus has {} files", files.len());
    files
}

/// Whatever the decoders accept must survive a re-encode.
fn check_frame(frame: &[u8]) -> (bool, bool) {
    let mut encoder = ClientEncoder::new();
    let request = decode_request(frame);
    if let Ok(request) = &request {
        if let Ok(again) = encoder.encode_request(request) {
            assert_eq!(decode_request(again).as_ref(), Ok(request));
        }
    }
    let response = decode_response(frame);
    if let Ok(response) = &response {
        if let Ok(again) = encoder.encode_response(response) {
            assert_eq!(decode_response(again).as_ref(), Ok(response));
        }
    }
    (request.is_ok(), response.is_ok())
}

/// Feeds `bytes` to a stream decoder in pieces of `split` bytes; checks every frame.
fn stream(bytes: &[u8], split: usize) {
    let mut decoder = FrameDecoder::new(CLIENT_FRAME_BYTES_MAX);
    for piece in bytes.chunks(split.max(1)) {
        decoder.feed(piece);
        while let Ok(Some(frame)) = decoder.next_frame() {
            check_frame(&frame);
        }
    }
}

#[test]
fn the_corpus_is_current_and_every_file_decodes_as_its_name_says() {
    let files = checked_in();
    let generated = corpus();
    assert_eq!(
        files.len(),
        generated.len(),
        "regenerate: KAHUNA_WRITE_CORPUS=1 cargo test --test client_frames_fuzz write_corpus"
    );
    let mut generated = generated;
    generated.sort();
    for ((name, frame), (generated_name, generated_frame)) in files.iter().zip(&generated) {
        assert_eq!(
            (name, frame),
            (generated_name, generated_frame),
            "the corpus differs from what the encoder writes now: regenerate it"
        );
    }
    for (name, frame) in &files {
        let (request, response) = check_frame(frame);
        let expected = if name.starts_with("request-") {
            (true, false)
        } else if name.starts_with("response-") {
            (false, true)
        } else {
            assert!(name.starts_with("bad-"), "{name}");
            (false, false)
        };
        assert_eq!((request, response), expected, "{name}");
        stream(frame, 3);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_corpus_frames_never_panic(
        pick in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        split in 1usize..64,
    ) {
        let files = checked_in();
        let mut frame = files[pick.index(files.len())].1.clone();
        for (at, byte) in flips {
            if !frame.is_empty() {
                let at = at.index(frame.len());
                frame[at] ^= byte;
            }
        }
        if truncate && !frame.is_empty() {
            frame.truncate(cut.index(frame.len()));
        }
        check_frame(&frame);
        // Two copies in a row through the stream decoder, in arbitrary pieces.
        let mut twice = frame.clone();
        twice.extend_from_slice(&frame);
        stream(&twice, split);
    }
}

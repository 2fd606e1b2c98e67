//! Every limit of the client port gets its precise error code, and the node keeps serving
//! other connections (and, for per-request limits, the same connection) afterwards: key too
//! large, value too large, frame too large, too many requests in flight, unknown partition,
//! wrong cluster id, a malformed frame; and a retried write (same client id and sequence) is
//! answered with the original answer without being applied again.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use kahuna::client::{BlockingClient, ClientConfig, ClientError, Connection};
use kahuna::proto::client::{
    decode_response, ClientEncoder, ErrorCode, Op, Reply, Request, Response,
};
use kahuna::proto::frame::FrameDecoder;
use kahuna::proto::limits::{
    CLIENT_FRAME_BYTES_MAX, KEY_BYTES_MAX, REQUESTS_IN_FLIGHT_MAX, VALUE_BYTES_MAX,
};
use kahuna::server::placement::partition_of;
use kahuna::server::playground::wait_for_leaders;
use support::cluster::ProcessCluster;

const PARTITIONS: u64 = 4;

fn refused(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Refused { code, message }) => {
            assert!(!message.is_empty());
            code
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Reads answers from a raw socket until `count` arrived or the node closed it.
fn read_answers(stream: &mut TcpStream, count: usize) -> (Vec<Response>, bool) {
    let mut decoder = FrameDecoder::new(CLIENT_FRAME_BYTES_MAX);
    let mut answers = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    while answers.len() < count {
        while let Some(frame) = decoder.next_frame().unwrap() {
            answers.push(decode_response(&frame).unwrap());
        }
        if answers.len() >= count {
            break;
        }
        let buffer = decoder.read_buffer(64 << 10);
        let read = stream.read(buffer).unwrap_or(0);
        decoder.filled(read);
        if read == 0 {
            while let Some(frame) = decoder.next_frame().unwrap() {
                answers.push(decode_response(&frame).unwrap());
            }
            return (answers, true);
        }
    }
    (answers, false)
}

fn request(request_id: u64, op: Op) -> Request {
    Request {
        request_id,
        client_id: 0,
        sequence: 0,
        cluster_id: 0,
        op,
    }
}

#[test]
fn each_limit_gets_its_error_code_and_the_node_keeps_serving() {
    let cluster = ProcessCluster::start(18200, PARTITIONS, 1, Vec::new());
    assert!(wait_for_leaders(
        &cluster.endpoints(),
        PARTITIONS,
        Duration::from_secs(60)
    ));
    let client = cluster.client();
    let serving = |what: &str| {
        let key = format!("still-serving-after-{what}");
        client
            .put(&key, "yes")
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(client.get(&key).unwrap().is_some(), "{what}");
    };

    // Per-request limits: a precise code, and the same connection keeps working.
    let big_key = vec![b'k'; KEY_BYTES_MAX + 1];
    assert_eq!(refused(client.put(&big_key, "v")), ErrorCode::KeyTooLarge);
    assert_eq!(refused(client.get(&big_key)), ErrorCode::KeyTooLarge);
    let big_value = vec![b'v'; VALUE_BYTES_MAX + 1];
    assert_eq!(
        refused(client.put("k", &big_value)),
        ErrorCode::ValueTooLarge
    );
    assert_eq!(refused(client.put("", "v")), ErrorCode::Malformed);
    serving("per-request limits");

    // A partition that does not exist.
    let leader_addr = cluster.config.client_addr(1);
    let connection =
        Connection::connect_blocking(&leader_addr, 16, Duration::from_secs(2)).unwrap();
    let scan = Op::Scan {
        prefix: Bytes::new(),
        limit: 0,
        continuation: Bytes::new(),
        partition: Some(PARTITIONS + 100),
    };
    let answer = connection
        .call_blocking(scan, 0, 0, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(answer.error, ErrorCode::UnknownPartition, "{answer:?}");
    let unscoped = Op::Scan {
        prefix: Bytes::new(),
        limit: 0,
        continuation: Bytes::new(),
        partition: None,
    };
    let answer = connection
        .call_blocking(unscoped, 0, 0, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(answer.error, ErrorCode::Malformed, "{answer:?}");

    // Another cluster's client is refused by every node.
    let other_cluster = client.status().unwrap().cluster_id + 1;
    let stranger = BlockingClient::new(
        ClientConfig::new(cluster.endpoints())
            .cluster_id(other_cluster)
            .deadline(Duration::from_secs(10)),
    );
    assert_eq!(refused(stranger.put("k", "v")), ErrorCode::WrongCluster);
    assert_eq!(refused(stranger.status()), ErrorCode::WrongCluster);
    serving("wrong cluster");

    // A frame larger than the maximum: answered FrameTooLarge (request id 0), then closed.
    let mut raw = TcpStream::connect(&leader_addr).unwrap();
    let header = ((CLIENT_FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
    raw.write_all(&header).unwrap();
    raw.write_all(&[0u8; 1024]).unwrap();
    let (answers, closed) = read_answers(&mut raw, 1);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(
        (answers[0].request_id, answers[0].error),
        (0, ErrorCode::FrameTooLarge)
    );
    let (_, closed_after) = read_answers(&mut raw, 1);
    assert!(closed || closed_after, "the connection is closed");
    serving("frame too large");

    // A malformed frame closes only its connection (with a Malformed answer if its request
    // id could be read).
    let mut raw = TcpStream::connect(&leader_addr).unwrap();
    let garbage = [
        0x10u8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
    ];
    raw.write_all(&garbage).unwrap();
    let (answers, closed) = read_answers(&mut raw, 2);
    assert!(closed, "a malformed frame closes the connection");
    assert!(
        answers.iter().all(|a| a.error == ErrorCode::Malformed),
        "{answers:?}"
    );
    serving("malformed frame");

    // More requests in flight than allowed: writes to one partition, sent to its leader in
    // one burst; the excess is answered TooManyInFlight, every request gets an answer.
    let key = b"burst";
    let partition = partition_of(key, PARTITIONS);
    let leader = cluster.leader_of(partition).expect("a leader");
    let mut raw = TcpStream::connect(cluster.config.client_addr(leader)).unwrap();
    let burst = REQUESTS_IN_FLIGHT_MAX * 3;
    let mut encoder = ClientEncoder::new();
    let mut bytes = Vec::new();
    for id in 1..=burst as u64 {
        let op = Op::Put {
            key: Bytes::from_static(key),
            value: Bytes::from(vec![b'x'; 256]),
        };
        bytes.extend_from_slice(encoder.encode_request(&request(id, op)).unwrap());
    }
    let writer = {
        let mut raw = raw.try_clone().unwrap();
        std::thread::spawn(move || raw.write_all(&bytes).unwrap())
    };
    let (answers, closed) = read_answers(&mut raw, burst);
    writer.join().unwrap();
    assert!(!closed, "the connection stays open");
    assert_eq!(answers.len(), burst);
    let count = |code| answers.iter().filter(|a| a.error == code).count();
    assert!(count(ErrorCode::TooManyInFlight) > 0, "some were refused");
    assert!(count(ErrorCode::Ok) >= 1, "the rest applied");
    assert_eq!(
        count(ErrorCode::TooManyInFlight) + count(ErrorCode::Ok),
        burst,
        "only Ok or TooManyInFlight"
    );
    serving("too many in flight");

    // A retried write (same client id and sequence) gets the original answer and is not
    // applied again, even when the retry is a CAS whose revision no longer matches.
    let key = Bytes::from_static(b"retried");
    let partition = partition_of(&key, PARTITIONS);
    let leader = cluster.leader_of(partition).expect("a leader");
    let connection = Connection::connect_blocking(
        &cluster.config.client_addr(leader),
        16,
        Duration::from_secs(2),
    )
    .unwrap();
    let cas = Op::Cas {
        key: key.clone(),
        expected_revision: 0,
        value: Bytes::from_static(b"once"),
    };
    let (client_id, sequence) = (0x5eed_0001, 1);
    let first = connection
        .call_blocking(cas.clone(), client_id, sequence, 0, Duration::from_secs(10))
        .unwrap();
    let retry = connection
        .call_blocking(cas, client_id, sequence, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(first.error, ErrorCode::Ok, "{first:?}");
    assert_eq!((retry.error, &retry.reply), (first.error, &first.reply));
    let Some(Reply::Revision { revision }) = first.reply else {
        panic!("{first:?}")
    };
    assert_eq!(client.get(&key).unwrap().unwrap().revision, revision);
}

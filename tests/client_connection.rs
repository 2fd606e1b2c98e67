//! One pipelined client connection (`kahuna::client::Connection`) against a stand-in node on a
//! plain socket.
//!
//! The send cork (`kahuna::client::cork_sends`): requests sent under a cork stay off the wire
//! until it drops, then leave together in one write; an inner cork holds nothing of its own; a
//! blocking call under a cork is sent at once (after what the cork held) instead of waiting for
//! its own request until its deadline.
//!
//! The window: a call past it waits, unsent, until an answer frees a slot; a call that timed
//! out keeps its slot until its late answer comes (the node still works on it); a lost
//! connection fails the calls in flight (outcome unknown) and the queued ones (never sent).

use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kahuna::client::{cork_sends, CallError, Connection};
use kahuna::proto::client::{decode_request, ClientEncoder, ErrorCode, Op, Request, Response};
use kahuna::proto::frame::FrameDecoder;
use kahuna::proto::limits::CLIENT_FRAME_BYTES_MAX;

type Call<'a> = Pin<Box<dyn Future<Output = Response> + 'a>>;
type Attempt<'a> = Pin<Box<dyn Future<Output = Result<Response, CallError>> + 'a>>;

/// A connection with a window of 64 to a stand-in node, and the node's side of it.
fn connected() -> (Connection, TcpStream) {
    connected_with_window(64)
}

fn connected_with_window(window: usize) -> (Connection, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connection = Connection::connect_blocking(&addr, window, Duration::from_secs(5)).unwrap();
    let (node, _) = listener.accept().unwrap();
    (connection, node)
}

fn get<'a>(connection: &'a Connection, key: &str) -> Call<'a> {
    let attempt = attempt_get(connection, key, Duration::from_secs(30));
    Box::pin(async move { attempt.await.unwrap() })
}

/// A get that may fail (its deadline `timeout` from now).
fn attempt_get<'a>(connection: &'a Connection, key: &str, timeout: Duration) -> Attempt<'a> {
    let key = Bytes::from(key.to_string());
    let deadline = Instant::now() + timeout;
    Box::pin(async move {
        let op = Op::Get {
            key,
            stale_ok: false,
        };
        connection.call(op, 0, 0, 0, deadline).await
    })
}

/// Polls `call` once: it takes a window slot and sends (or corks) its request, or queues for
/// a slot.
fn start<T>(call: &mut Pin<Box<dyn Future<Output = T> + '_>>) {
    assert!(futures_lite::future::block_on(futures_lite::future::poll_once(call)).is_none());
}

fn keys(requests: &[Request]) -> Vec<String> {
    requests
        .iter()
        .map(|request| match &request.op {
            Op::Get { key, .. } => String::from_utf8(key.to_vec()).unwrap(),
            other => panic!("unexpected request {other:?}"),
        })
        .collect()
}

/// Nothing arrives at the node within a short wait.
fn assert_nothing_arrives(node: &mut TcpStream) {
    node.set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    let mut byte = [0u8; 1];
    match node.read(&mut byte) {
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a corked request reached the node: {other:?}"),
    }
}

/// Reads one chunk from the node's socket and decodes the complete requests in it.
fn read_once(node: &mut TcpStream, decoder: &mut FrameDecoder) -> Vec<Request> {
    node.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let read = node.read(decoder.read_buffer(1 << 20)).unwrap();
    decoder.filled(read);
    let mut requests = Vec::new();
    while let Some(frame) = decoder.next_frame().unwrap() {
        requests.push(decode_request(&frame).unwrap());
    }
    requests
}

/// Answers `requests` (NotFound each, the key echoed in the message).
fn answer(node: &mut TcpStream, requests: &[Request]) {
    let mut encoder = ClientEncoder::new();
    for request in requests {
        let key = match &request.op {
            Op::Get { key, .. } => String::from_utf8(key.to_vec()).unwrap(),
            other => panic!("unexpected request {other:?}"),
        };
        let response = Response::error(request.request_id, ErrorCode::NotFound, key);
        node.write_all(encoder.encode_response(&response).unwrap())
            .unwrap();
    }
}

#[test]
fn corked_requests_leave_together_when_the_cork_drops() {
    let (connection, mut node) = connected();
    let mut calls: Vec<Call<'_>> = (0..16)
        .map(|i| get(&connection, &format!("k{i}")))
        .collect();
    let outer = cork_sends();
    for call in &mut calls[..8] {
        start(call);
    }
    // An inner cork (a scope opened inside another) sends nothing when it drops.
    let inner = cork_sends();
    for call in &mut calls[8..] {
        start(call);
    }
    drop(inner);
    assert_nothing_arrives(&mut node);
    drop(outer);
    // One write: everything is in the node's socket when the drop returns, in one read.
    let mut decoder = FrameDecoder::new(CLIENT_FRAME_BYTES_MAX);
    let requests = read_once(&mut node, &mut decoder);
    assert_eq!(requests.len(), 16, "all corked requests in one read");
    answer(&mut node, &requests);
    for (i, call) in calls.into_iter().enumerate() {
        let response = futures_lite::future::block_on(call);
        assert_eq!(response.error, ErrorCode::NotFound);
        assert_eq!(
            response.message,
            format!("k{i}"),
            "each call gets its own answer"
        );
    }
    // Uncorked, a request goes out at once.
    let mut call = get(&connection, "after");
    start(&mut call);
    let requests = read_once(&mut node, &mut decoder);
    assert_eq!(requests.len(), 1);
    answer(&mut node, &requests);
    assert_eq!(futures_lite::future::block_on(call).message, "after");
}

#[test]
fn a_blocking_call_under_a_cork_is_sent_at_once_after_what_the_cork_holds() {
    let (connection, mut node) = connected();
    let node_side = std::thread::spawn(move || {
        let mut decoder = FrameDecoder::new(CLIENT_FRAME_BYTES_MAX);
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let requests = read_once(&mut node, &mut decoder);
            answer(&mut node, &requests);
            seen.extend(requests);
        }
        seen.into_iter()
            .map(|request| match request.op {
                Op::Get { key, .. } => String::from_utf8(key.to_vec()).unwrap(),
                other => panic!("unexpected request {other:?}"),
            })
            .collect::<Vec<_>>()
    });
    let mut corked = get(&connection, "corked");
    let cork = cork_sends();
    start(&mut corked);
    // Its deadline is long: without the cork lifted, this would fail with Timeout after it.
    let blocking = connection
        .call_blocking(
            Op::Get {
                key: Bytes::from_static(b"blocking"),
                stale_ok: false,
            },
            0,
            0,
            0,
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(blocking.message, "blocking");
    drop(cork);
    assert_eq!(futures_lite::future::block_on(corked).message, "corked");
    assert_eq!(node_side.join().unwrap(), ["corked", "blocking"]);
}

#[test]
fn a_full_window_holds_the_next_request_until_an_answer_frees_a_slot() {
    let (connection, mut node) = connected_with_window(2);
    let mut decoder = FrameDecoder::new(CLIENT_FRAME_BYTES_MAX);
    let mut calls: Vec<Call<'_>> = ["a", "b", "c"]
        .iter()
        .map(|k| get(&connection, k))
        .collect();
    for call in &mut calls {
        start(call);
    }
    let mut sent = Vec::new();
    while sent.len() < 2 {
        sent.extend(read_once(&mut node, &mut decoder));
    }
    assert_eq!(keys(&sent), ["a", "b"]);
    assert_nothing_arrives(&mut node);
    answer(&mut node, &sent[..1]);
    // The answer to "a" frees its slot; "c" is sent on its next poll.
    let mut calls = calls.into_iter();
    assert_eq!(
        futures_lite::future::block_on(calls.next().unwrap()).message,
        "a"
    );
    let b = calls.next().unwrap();
    let mut c = calls.next().unwrap();
    start(&mut c);
    let third = read_once(&mut node, &mut decoder);
    assert_eq!(keys(&third), ["c"]);
    answer(&mut node, &sent[1..]);
    answer(&mut node, &third);
    assert_eq!(futures_lite::future::block_on(b).message, "b");
    assert_eq!(futures_lite::future::block_on(c).message, "c");
}

#[test]
fn a_timed_out_call_keeps_its_slot_until_its_late_answer() {
    let (connection, mut node) = connected_with_window(1);
    let mut decoder = FrameDecoder::new(CLIENT_FRAME_BYTES_MAX);
    let mut late = attempt_get(&connection, "late", Duration::from_millis(200));
    start(&mut late);
    let first = read_once(&mut node, &mut decoder);
    assert_eq!(keys(&first), ["late"]);
    match futures_lite::future::block_on(late) {
        Err(CallError::Timeout { sent: true, .. }) => {}
        other => panic!("expected a timeout after sending, got {other:?}"),
    }
    // The node still works on "late": its slot is not free for "next" yet.
    let mut next = get(&connection, "next");
    start(&mut next);
    assert_nothing_arrives(&mut node);
    // The late answer is dropped quietly and frees the slot.
    answer(&mut node, &first);
    let node_side = std::thread::spawn(move || {
        let second = read_once(&mut node, &mut decoder);
        answer(&mut node, &second);
        (keys(&second), node)
    });
    assert_eq!(futures_lite::future::block_on(next).message, "next");
    let (seen, _node) = node_side.join().unwrap();
    assert_eq!(seen, ["next"]);
    assert!(
        !connection.is_closed(),
        "a late answer is no protocol error"
    );
}

#[test]
fn a_lost_connection_fails_the_calls_in_flight_and_those_waiting_for_a_slot() {
    let (connection, mut node) = connected_with_window(1);
    let mut decoder = FrameDecoder::new(CLIENT_FRAME_BYTES_MAX);
    let mut in_flight = attempt_get(&connection, "in-flight", Duration::from_secs(30));
    let mut queued = attempt_get(&connection, "queued", Duration::from_secs(30));
    start(&mut in_flight);
    start(&mut queued);
    assert_eq!(keys(&read_once(&mut node, &mut decoder)), ["in-flight"]);
    drop(node);
    match futures_lite::future::block_on(in_flight) {
        Err(CallError::Closed { sent: true, .. }) => {}
        other => panic!("the request was sent: its outcome is unknown, got {other:?}"),
    }
    match futures_lite::future::block_on(queued) {
        Err(CallError::Closed { sent: false, .. }) => {}
        other => panic!("the request never left: got {other:?}"),
    }
    assert!(connection.is_closed());
}

//! The peer transport over real loopback sockets: every transport runs in its own glommio
//! executor on its own thread, driven from the test thread through std channels.
//!
//! Every wait is a condition polled against a generous deadline, never a fixed sleep.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use kahuna::proto::frame::{write_frame, FrameDecoder};
use kahuna::proto::peer::{decode_handshake, Handshake, Lane, PeerEncoder};
use kahuna::raft::{Entry, EntryKind, Message, MessageBody, NodeId};
use kahuna::transport::{
    InboundBatch, PeerTransport, SendError, TransportConfig, TransportLimits, TransportStats,
};

const CLUSTER: u64 = 0x6b61_6875_6e61;
/// How long any condition may take before the test fails: generous, for loaded CI machines.
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Harness

enum Command {
    Send(NodeId, Vec<Message>, mpsc::Sender<Result<usize, SendError>>),
    Stats(mpsc::Sender<TransportStats>),
    Connected(NodeId, mpsc::Sender<bool>),
    /// Writes the messages on the durable-answer lane as the storage thread does; answers
    /// whether they went out there (false: no open lane, or the socket did not take them).
    Lane(NodeId, Vec<Message>, mpsc::Sender<bool>),
    /// Sets the quiet report (`PeerTransport::report_quiet`).
    ReportQuiet(Vec<NodeId>, mpsc::Sender<()>),
}

/// A transport running on its own executor thread. Dropping it stops the executor.
struct Node {
    id: NodeId,
    addr: SocketAddr,
    commands: Option<mpsc::Sender<Command>>,
    inbound: mpsc::Receiver<InboundBatch>,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

/// glommio registers io_uring buffers in locked memory: raise the limit as far as allowed.
fn raise_memlock() {
    // SAFETY: getrlimit/setrlimit read and write only the struct passed in.
    unsafe {
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 {
            return;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit);
        }
    }
}

fn io_uring_help() -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    format!(
        "the glommio executor (io_uring) could not start. RLIMIT_MEMLOCK is {} bytes (hard {}); \
         run `ulimit -l unlimited` as root or raise memlock in limits.conf; io_uring needs \
         Linux 5.8+ and must not be disabled (sysctl kernel.io_uring_disabled)",
        limit.rlim_cur, limit.rlim_max
    )
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().unwrap()
}

fn limits() -> TransportLimits {
    TransportLimits {
        reconnect_backoff_min: Duration::from_millis(5),
        reconnect_backoff_max: Duration::from_millis(100),
        handshake_timeout: Duration::from_secs(5),
        ..TransportLimits::default()
    }
}

fn config(
    id: NodeId,
    cluster_id: u64,
    listen_addr: SocketAddr,
    peers: &[(NodeId, SocketAddr)],
) -> TransportConfig {
    TransportConfig {
        local_node: id,
        cluster_id,
        listen_addr,
        peers: peers.iter().copied().collect::<BTreeMap<_, _>>(),
        limits: limits(),
    }
}

impl Node {
    fn start(config: TransportConfig) -> Node {
        raise_memlock();
        let id = config.local_node;
        let (ready_sender, ready) = mpsc::channel::<Result<SocketAddr, String>>();
        let (commands, command_receiver) = mpsc::channel::<Command>();
        let (inbound_sender, inbound) = mpsc::channel::<InboundBatch>();
        let thread = LocalExecutorBuilder::default()
            .name(&format!("transport-node-{id}"))
            .spawn(move || async move {
                let (transport, receiver) = match PeerTransport::start(config) {
                    Ok(started) => started,
                    Err(error) => {
                        let _ = ready_sender.send(Err(error.to_string()));
                        return;
                    }
                };
                let _ = ready_sender.send(Ok(transport.local_addr()));
                // Forward inbound batches to the test thread.
                let forward = glommio::spawn_local(async move {
                    while let Some(batch) = receiver.recv().await {
                        if inbound_sender.send(batch).is_err() {
                            break;
                        }
                    }
                });
                // Serve commands until the test drops its sender. Polling a std channel every
                // millisecond is fine for a test and keeps the harness free of cross-thread
                // async plumbing.
                'serve: loop {
                    loop {
                        match command_receiver.try_recv() {
                            Ok(command) => serve(&transport, command),
                            Err(mpsc::TryRecvError::Empty) => break,
                            Err(mpsc::TryRecvError::Disconnected) => break 'serve,
                        }
                    }
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                drop(transport);
                forward.cancel().await;
            })
            .unwrap_or_else(|error| panic!("{error}: {}", io_uring_help()));
        let addr = match ready.recv_timeout(DEADLINE) {
            Ok(Ok(addr)) => addr,
            Ok(Err(error)) => panic!("node {id}: transport did not start: {error}"),
            Err(_) => panic!("node {id}: {}", io_uring_help()),
        };
        Node {
            id,
            addr,
            commands: Some(commands),
            inbound,
            thread: Some(thread),
        }
    }

    fn command<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Command) -> T {
        let (reply, answer) = mpsc::channel();
        let commands = self.commands.as_ref().expect("node running");
        commands.send(make(reply)).expect("node thread alive");
        answer.recv_timeout(DEADLINE).expect("node answers")
    }

    fn send(&self, to: NodeId, messages: Vec<Message>) -> Result<usize, SendError> {
        self.command(|reply| Command::Send(to, messages, reply))
    }

    fn stats(&self) -> TransportStats {
        self.command(Command::Stats)
    }

    fn is_connected(&self, peer: NodeId) -> bool {
        self.command(|reply| Command::Connected(peer, reply))
    }

    fn send_on_lane(&self, to: NodeId, messages: Vec<Message>) -> bool {
        self.command(|reply| Command::Lane(to, messages, reply))
    }

    fn report_quiet(&self, nodes: Vec<NodeId>) {
        self.command(|reply| Command::ReportQuiet(nodes, reply))
    }

    /// The first batch to arrive that `wanted` accepts (the others are dropped); fails with
    /// `what` after the deadline.
    fn receive_first(&self, what: &str, wanted: impl Fn(&InboundBatch) -> bool) -> InboundBatch {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let batch = self
                .inbound
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("node {}: no {what} before the deadline", self.id));
            if wanted(&batch) {
                return batch;
            }
        }
    }

    /// The next batch holding messages (heartbeats skipped).
    fn receive_batch(&self) -> InboundBatch {
        self.receive_first("batch", |batch| !batch.messages.is_empty())
    }

    /// Receives batches until `count` messages arrived (heartbeats skipped).
    fn receive_messages(&self, count: usize) -> Vec<(NodeId, Message)> {
        let deadline = Instant::now() + DEADLINE;
        let mut received = Vec::new();
        while received.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let batch = self.inbound.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "node {}: got {} of {count} messages before the deadline",
                    self.id,
                    received.len()
                )
            });
            received.extend(batch.messages.into_iter().map(|m| (batch.from_node, m)));
        }
        received
    }

    /// Receives batches until one empty (heartbeat) batch from `from` arrived.
    fn receive_heartbeat(&self, from: NodeId) {
        self.receive_first(&format!("heartbeat from {from}"), |batch| {
            batch.from_node == from && batch.messages.is_empty()
        });
    }
}

fn serve(transport: &PeerTransport, command: Command) {
    match command {
        Command::Send(to, messages, reply) => {
            let _ = reply.send(transport.send(to, messages));
        }
        Command::Stats(reply) => {
            let _ = reply.send(transport.stats());
        }
        Command::Connected(peer, reply) => {
            let _ = reply.send(transport.is_connected(peer));
        }
        Command::Lane(peer, messages, reply) => {
            let answers = BTreeMap::from([(peer, messages)]);
            let frames = transport.lane_frames(&answers);
            let sent: Vec<_> = frames
                .iter()
                .filter(|frame| frame.lane.try_send(&frame.frame))
                .map(|frame| (frame.lane.peer(), frame.messages, frame.frame.len()))
                .collect();
            transport.lane_frames_sent(&sent);
            let _ = reply.send(!sent.is_empty());
        }
        Command::ReportQuiet(nodes, reply) => {
            transport.report_quiet(nodes);
            let _ = reply.send(());
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !std::thread::panicking() {
                result.expect("executor thread ends cleanly");
            }
        }
    }
}

/// Polls `condition` until it holds; fails with `what` after the deadline.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An anchored append of `entries` entries of `data_bytes` bytes each, after `prev_index`.
fn append(
    from: NodeId,
    to: NodeId,
    group: u64,
    prev_index: u64,
    entries: u64,
    data_bytes: usize,
) -> Message {
    let entries = (1..=entries)
        .map(|offset| Entry {
            index: prev_index + offset,
            term: 3,
            kind: EntryKind::Normal,
            data: Bytes::from(vec![(prev_index + offset) as u8; data_bytes]),
        })
        .collect();
    Message {
        group,
        from,
        to,
        term: 3,
        body: MessageBody::Append {
            prev_index,
            prev_term: 3,
            entries,
            commit: prev_index,
        },
    }
}

fn vote(from: NodeId, to: NodeId, group: u64) -> Message {
    Message {
        group,
        from,
        to,
        term: 7,
        body: MessageBody::Vote {
            last_index: group * 10,
            last_term: 6,
            force: group > 100,
        },
    }
}

/// A std client speaking raw bytes to a transport.
fn raw_connect(addr: SocketAddr) -> StdStream {
    let stream = StdStream::connect(addr).expect("connect to the transport");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// True once the peer has closed `stream` (end of stream or reset), reading and discarding
/// anything before that.
fn closed_by_peer(stream: &mut StdStream) -> bool {
    let mut buffer = [0_u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false, // the read timed out: still open
        }
    }
}

fn handshake_frame(cluster_id: u64, from: NodeId, to: NodeId) -> Vec<u8> {
    let mut encoder = PeerEncoder::new();
    encoder
        .encode_handshake(&Handshake::new(cluster_id, from, to))
        .to_vec()
}

/// Reads one frame (the transport's answer to a handshake).
fn read_one_frame(stream: &mut StdStream) -> Option<Bytes> {
    let mut decoder = FrameDecoder::new(4096);
    let mut buffer = [0_u8; 256];
    loop {
        if let Ok(Some(frame)) = decoder.next_frame() {
            return Some(frame);
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return None,
            Ok(read) => decoder.feed(&buffer[..read]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn messages_arrive_intact_and_in_order_both_ways() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a = Node::start(config(1, CLUSTER, addr_a, &[(2, addr_b)]));
    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a)]));
    wait_until("both sides connected", || {
        a.is_connected(2) && b.is_connected(1)
    });

    let mut sent = Vec::new();
    for round in 0..50_u64 {
        let batch: Vec<Message> = (0..20)
            .map(|i| {
                let group = round * 100 + i;
                if i % 3 == 0 {
                    vote(1, 2, group)
                } else {
                    append(1, 2, group, round * 10, i % 4, (i as usize) * 37)
                }
            })
            .collect();
        sent.extend(batch.iter().cloned());
        assert_eq!(a.send(2, batch), Ok(0));
    }
    let received = b.receive_messages(sent.len());
    assert!(received.iter().all(|(from, _)| *from == 1));
    let received: Vec<Message> = received.into_iter().map(|(_, m)| m).collect();
    assert_eq!(received, sent, "B got A's messages, intact, in order");

    let reply: Vec<Message> = (0..5).map(|group| vote(2, 1, group)).collect();
    b.send(1, reply.clone()).unwrap();
    let received: Vec<Message> = a.receive_messages(5).into_iter().map(|(_, m)| m).collect();
    assert_eq!(received, reply);

    let stats = a.stats();
    assert_eq!(stats.messages_sent, sent.len() as u64);
    assert_eq!(stats.messages_dropped(), 0);
    assert!(
        stats.frames_sent >= 1 && stats.frames_sent <= 50,
        "{stats:?}"
    );
    wait_until("B counted every message", || {
        b.stats().messages_received == sent.len() as u64
    });
}

#[test]
fn a_large_batch_is_split_over_frames_and_keeps_its_order() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut config_a = config(1, CLUSTER, addr_a, &[(2, addr_b)]);
    config_a.limits.frame_bytes_max = 64 << 10;
    let a = Node::start(config_a);
    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a)]));
    // Sent before any connection exists: queued, then written once connected.
    let batch: Vec<Message> = (0..64)
        .map(|group| append(1, 2, group, 100, 4, 1_000))
        .collect();
    a.send(2, batch.clone()).unwrap();
    let received: Vec<Message> = b
        .receive_messages(batch.len())
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(received, batch);
    let stats = a.stats();
    assert!(
        stats.frames_sent >= 4,
        "256 KB over 64 KiB frames: {stats:?}"
    );
    assert_eq!(stats.messages_sent, 64);
}

#[test]
fn an_unencodable_message_is_dropped_and_the_rest_go_out() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut config_a = config(1, CLUSTER, addr_a, &[(2, addr_b)]);
    config_a.limits.frame_bytes_max = 4 << 10;
    let a = Node::start(config_a);
    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a)]));
    let too_large = append(1, 2, 5, 10, 1, 8 << 10);
    let mut non_contiguous = append(1, 2, 6, 10, 2, 10);
    if let MessageBody::Append { entries, .. } = &mut non_contiguous.body {
        entries[1].index += 1;
    }
    let batch = vec![
        vote(1, 2, 1),
        too_large,
        vote(1, 2, 2),
        non_contiguous,
        vote(1, 2, 3),
    ];
    a.send(2, batch).unwrap();
    let received: Vec<Message> = b.receive_messages(3).into_iter().map(|(_, m)| m).collect();
    assert_eq!(received, vec![vote(1, 2, 1), vote(1, 2, 2), vote(1, 2, 3)]);
    let stats = a.stats();
    assert_eq!(stats.messages_dropped_unsent, 2, "{stats:?}");
    assert_eq!(stats.messages_sent, 3);
}

#[test]
fn an_empty_batch_is_a_heartbeat_frame() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a = Node::start(config(1, CLUSTER, addr_a, &[(2, addr_b)]));
    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a)]));
    a.send(2, Vec::new()).unwrap();
    b.receive_heartbeat(1);
    wait_until("B counted the heartbeat", || {
        b.stats().heartbeats_received >= 1
    });
    assert!(a.stats().heartbeats_sent >= 1);
}

#[test]
fn send_refuses_unknown_peers_and_misaddressed_messages() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a = Node::start(config(1, CLUSTER, addr_a, &[(2, addr_b)]));
    assert_eq!(a.send(9, Vec::new()), Err(SendError::UnknownPeer(9)));
    let error = a.send(2, vec![vote(1, 2, 1), vote(1, 3, 2)]).unwrap_err();
    assert!(matches!(error, SendError::AddressMismatch { group: 2, .. }));
}

#[test]
fn a_full_queue_drops_the_oldest_and_counts() {
    let (addr_a, addr_down) = (free_addr(), free_addr());
    let mut config_a = config(1, CLUSTER, addr_a, &[(2, addr_down)]);
    config_a.limits.peer_queue_messages_max = 10;
    let a = Node::start(config_a);
    // Node 2 never comes up: nothing leaves the queue.
    let batch: Vec<Message> = (0..25).map(|group| vote(1, 2, group)).collect();
    assert_eq!(a.send(2, batch), Ok(15));
    assert_eq!(a.stats().messages_dropped_queue_full, 15);
}

#[test]
fn a_wrong_cluster_is_refused_while_the_right_one_works() {
    let (addr_a, addr_b, addr_c) = (free_addr(), free_addr(), free_addr());
    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a), (3, addr_c)]));
    let a = Node::start(config(1, CLUSTER, addr_a, &[(2, addr_b)]));
    // Node 3 of another cluster, pointed at B.
    let c = Node::start(config(3, CLUSTER + 1, addr_c, &[(2, addr_b)]));

    a.send(2, vec![vote(1, 2, 1)]).unwrap();
    c.send(2, vec![vote(3, 2, 1)]).unwrap();
    let received = b.receive_messages(1);
    assert_eq!(received, vec![(1, vote(1, 2, 1))]);
    wait_until("C was refused a few times", || {
        c.stats().connect_failures >= 2 && b.stats().inbound_refused >= 2
    });
    assert!(!c.is_connected(2));
    assert_eq!(c.stats().connections_established, 0);
    assert!(a.is_connected(2));

    // The same seen from a raw socket: a wrong cluster gets no answer, only a closed socket;
    // the right cluster gets B's handshake back.
    let mut wrong = raw_connect(b.addr);
    wrong
        .write_all(&handshake_frame(CLUSTER + 1, 3, 2))
        .unwrap();
    assert!(closed_by_peer(&mut wrong), "wrong cluster must be closed");

    let mut right = raw_connect(b.addr);
    right.write_all(&handshake_frame(CLUSTER, 3, 2)).unwrap();
    let answer = read_one_frame(&mut right).expect("B answers a right handshake");
    let answer = decode_handshake(&answer).unwrap();
    assert_eq!(
        answer,
        Handshake {
            accepts_durable_lane: true,
            ..Handshake::new(CLUSTER, 2, 3)
        }
    );
    assert_eq!(answer.check(CLUSTER, 3), Ok(()));

    // B's messages never reached C, and nothing from C reached B.
    assert!(c.inbound.try_recv().is_err());
    a.send(2, vec![vote(1, 2, 2)]).unwrap();
    assert_eq!(b.receive_messages(1), vec![(1, vote(1, 2, 2))]);
}

#[test]
fn garbage_closes_only_its_own_connection() {
    let (addr_a, addr_b, addr_unused) = (free_addr(), free_addr(), free_addr());
    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a), (3, addr_unused)]));
    let a = Node::start(config(1, CLUSTER, addr_a, &[(2, addr_b)]));
    a.send(2, vec![vote(1, 2, 1)]).unwrap();
    assert_eq!(b.receive_messages(1), vec![(1, vote(1, 2, 1))]);

    // Garbage instead of a handshake: a header announcing a huge frame.
    let mut before_handshake = raw_connect(b.addr);
    before_handshake.write_all(&[0xff; 64]).unwrap();
    assert!(closed_by_peer(&mut before_handshake));

    // A valid handshake (as node 3), then a well-framed body that is not a batch.
    let mut after_handshake = raw_connect(b.addr);
    after_handshake
        .write_all(&handshake_frame(CLUSTER, 3, 2))
        .unwrap();
    read_one_frame(&mut after_handshake).expect("handshake answered");
    let mut garbage = Vec::new();
    write_frame(&mut garbage, &[0xa5; 200], 1 << 20).unwrap();
    after_handshake.write_all(&garbage).unwrap();
    assert!(closed_by_peer(&mut after_handshake));

    // A frame claiming more than the frame limit after the handshake.
    let mut oversized = raw_connect(b.addr);
    oversized
        .write_all(&handshake_frame(CLUSTER, 3, 2))
        .unwrap();
    read_one_frame(&mut oversized).expect("handshake answered");
    oversized.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(closed_by_peer(&mut oversized));

    // A closed mid-frame connection is an error too, and harmless.
    let mut truncated = raw_connect(b.addr);
    truncated
        .write_all(&handshake_frame(CLUSTER, 3, 2)[..5])
        .unwrap();
    drop(truncated);

    wait_until("B counted the refusal and the errors", || {
        let stats = b.stats();
        stats.inbound_refused >= 2 && stats.inbound_errors >= 2
    });
    // A's connection was never disturbed, and B still serves it and new ones.
    a.send(2, vec![vote(1, 2, 2), vote(1, 2, 3)]).unwrap();
    assert_eq!(
        b.receive_messages(2),
        vec![(1, vote(1, 2, 2)), (1, vote(1, 2, 3))]
    );
    assert_eq!(a.stats().connections_established, 1);
    assert_eq!(a.stats().connections_lost, 0);
    assert!(b.stats().inbound_accepted >= 3);
}

#[test]
fn frames_carry_the_quiet_report_and_lane_frames_none() {
    let (addr_a, addr_b, addr_c) = (free_addr(), free_addr(), free_addr());
    let a = Node::start(config(1, CLUSTER, addr_a, &[(2, addr_b), (3, addr_c)]));
    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a)]));
    wait_until("A opened its lane to B", || {
        a.stats().lanes_established == 1
    });
    a.send(2, vec![vote(1, 2, 1)]).unwrap();
    assert_eq!(
        b.receive_batch().quiet_nodes,
        Some(vec![]),
        "an empty report"
    );
    // Only peers are reported, sorted and once: not this node, not strangers.
    a.report_quiet(vec![3, 1, 7, 3]);
    a.send(2, vec![vote(1, 2, 2)]).unwrap();
    let batch = b.receive_batch();
    assert_eq!(batch.messages, vec![vote(1, 2, 2)]);
    assert_eq!(batch.quiet_nodes, Some(vec![3]));
    // A lane frame is written by the storage thread with no view of liveness: no report.
    assert!(a.send_on_lane(2, vec![vote(1, 2, 3)]));
    assert_eq!(b.receive_batch().quiet_nodes, None);
    a.report_quiet(Vec::new());
    a.send(2, vec![vote(1, 2, 4)]).unwrap();
    assert_eq!(b.receive_batch().quiet_nodes, Some(vec![]));
}

#[test]
fn a_newer_connection_from_a_node_replaces_the_older() {
    let (addr_b, addr_unused) = (free_addr(), free_addr());
    let b = Node::start(config(2, CLUSTER, addr_b, &[(3, addr_unused)]));
    let mut older = raw_connect(b.addr);
    older.write_all(&handshake_frame(CLUSTER, 3, 2)).unwrap();
    read_one_frame(&mut older).expect("handshake answered");
    let mut newer = raw_connect(b.addr);
    newer.write_all(&handshake_frame(CLUSTER, 3, 2)).unwrap();
    read_one_frame(&mut newer).expect("handshake answered");
    assert!(closed_by_peer(&mut older), "the older connection is closed");

    // The newer one still delivers: a heartbeat frame from node 3.
    let mut encoder = PeerEncoder::new();
    let heartbeat = encoder.encode_batch(3, 2, &[]).unwrap().frame.to_vec();
    newer.write_all(&heartbeat).unwrap();
    b.receive_heartbeat(3);
}

#[test]
fn a_peer_that_comes_up_late_is_connected_after_backoff() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a = Node::start(config(1, CLUSTER, addr_a, &[(2, addr_b)]));
    wait_until("A failed to connect a few times", || {
        a.stats().connect_failures >= 3
    });
    assert!(!a.is_connected(2));
    let queued: Vec<Message> = (0..3).map(|group| vote(1, 2, group)).collect();
    a.send(2, queued.clone()).unwrap();

    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a)]));
    let received: Vec<Message> = b.receive_messages(3).into_iter().map(|(_, m)| m).collect();
    assert_eq!(received, queued, "messages queued while B was down arrive");
    wait_until("A connected", || a.is_connected(2));
    assert_eq!(a.stats().connections_established, 1);
}

#[test]
fn a_restarted_peer_is_reconnected() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a = Node::start(config(1, CLUSTER, addr_a, &[(2, addr_b)]));
    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a)]));
    a.send(2, vec![vote(1, 2, 1)]).unwrap();
    assert_eq!(b.receive_messages(1).len(), 1);

    drop(b);
    wait_until("A noticed B went away", || !a.is_connected(2));
    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a)]));
    wait_until("A reconnected", || a.is_connected(2));
    a.send(2, vec![vote(1, 2, 2)]).unwrap();
    assert_eq!(b.receive_messages(1), vec![(1, vote(1, 2, 2))]);
    let stats = a.stats();
    assert_eq!(stats.connections_established, 2);
    assert_eq!(stats.connections_lost, 1);
}

#[test]
fn answers_written_on_the_durable_lane_arrive_beside_the_main_connection() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a = Node::start(config(1, CLUSTER, addr_a, &[(2, addr_b)]));
    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a)]));
    wait_until("A opened its lane to B", || {
        a.stats().lanes_established == 1
    });
    let answers: Vec<Message> = (0..4).map(|group| vote(1, 2, group)).collect();
    assert!(
        a.send_on_lane(2, answers.clone()),
        "the open lane takes the frame"
    );
    let received: Vec<Message> = b.receive_messages(4).into_iter().map(|(_, m)| m).collect();
    assert_eq!(received, answers);
    // The main connection still works beside it: B kept both (neither replaced the other).
    a.send(2, vec![vote(1, 2, 9)]).unwrap();
    assert_eq!(b.receive_messages(1), vec![(1, vote(1, 2, 9))]);
    let stats = a.stats();
    assert_eq!(stats.lane_frames_sent, 1);
    assert_eq!(
        stats.messages_sent, 5,
        "lane messages count as sent: {stats:?}"
    );
    assert_eq!(stats.connections_established, 1);
    assert_eq!(stats.connections_lost, 0);
    assert_eq!(
        b.stats().inbound_accepted,
        2,
        "one main connection and one lane"
    );
}

#[test]
fn a_lane_is_reopened_after_the_peer_restarts() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a = Node::start(config(1, CLUSTER, addr_a, &[(2, addr_b)]));
    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a)]));
    wait_until("A opened its lane to B", || {
        a.stats().lanes_established == 1
    });
    drop(b);
    wait_until("A noticed B went away", || !a.is_connected(2));
    assert!(
        !a.send_on_lane(2, vec![vote(1, 2, 1)]),
        "no lane while B is down: the caller sends the usual way"
    );
    let b = Node::start(config(2, CLUSTER, addr_b, &[(1, addr_a)]));
    wait_until("A reopened its lane", || a.stats().lanes_established == 2);
    assert!(a.send_on_lane(2, vec![vote(1, 2, 2)]));
    assert_eq!(b.receive_messages(1), vec![(1, vote(1, 2, 2))]);
}

#[test]
fn no_lane_is_opened_to_a_peer_that_does_not_take_lanes() {
    // B is a node of an older build: it answers the main handshake without offering lanes.
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr_b = listener.local_addr().unwrap();
    let addr_a = free_addr();
    let a = Node::start(config(1, CLUSTER, addr_a, &[(2, addr_b)]));
    let (mut main, _) = listener.accept().unwrap();
    main.set_read_timeout(Some(DEADLINE)).unwrap();
    let hello = decode_handshake(&read_one_frame(&mut main).expect("A's handshake")).unwrap();
    assert_eq!(hello.lane, Lane::Main);
    main.write_all(&handshake_frame(CLUSTER, 2, 1)).unwrap();
    wait_until("A connected", || a.is_connected(2));
    // A lane would be dialled within a lane check interval (250 ms) of the connection; give it
    // several.
    listener.set_nonblocking(true).unwrap();
    let watch_until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < watch_until {
        match listener.accept() {
            Ok((_stream, from)) => panic!("A dialled a second connection from {from}"),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(error) => panic!("accept: {error}"),
        }
    }
    assert!(!a.send_on_lane(2, vec![vote(1, 2, 1)]));
    assert_eq!(a.stats().lanes_established, 0);
}

/// A peer that answers the handshake and then never reads again: once its buffers are full,
/// what the node writes sits unsent behind a zero window. The kernel drops the connection after
/// `unacknowledged_max` (`TCP_USER_TIMEOUT`), and the node dials again. Without the option the
/// node's writer would wait on that socket for as long as TCP keeps probing (no second
/// connection within the deadline).
#[test]
fn a_peer_that_stops_reading_is_dropped_and_dialled_again() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let listener = StdListener::bind(addr_b).expect("bind the stand-in peer");
    let (accepted, connections) = mpsc::channel::<StdStream>();
    let stand_in = std::thread::spawn(move || {
        for _ in 0..2 {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            read_one_frame(&mut stream).expect("the node's handshake");
            stream.write_all(&handshake_frame(CLUSTER, 2, 1)).unwrap();
            // Kept open, never read again.
            if accepted.send(stream).is_err() {
                return;
            }
        }
    });
    let mut config = config(1, CLUSTER, addr_a, &[(2, addr_b)]);
    config.limits.unacknowledged_max = Duration::from_millis(300);
    let a = Node::start(config);
    let _first = connections.recv_timeout(DEADLINE).expect("the node dials");
    wait_until("A connected to the stand-in", || a.is_connected(2));

    // Far more than the two sockets' buffers hold (a few MiB each on loopback).
    let deadline = Instant::now() + DEADLINE;
    let mut group = 0;
    let second = loop {
        if let Ok(stream) = connections.try_recv() {
            break stream;
        }
        assert!(
            Instant::now() < deadline,
            "the node kept its connection to a peer that stopped reading: {:?}",
            a.stats()
        );
        group += 1;
        a.send(2, vec![append(1, 2, group, 0, 1, 256 << 10)])
            .unwrap();
        std::thread::sleep(Duration::from_millis(2));
    };
    let stats = a.stats();
    assert!(stats.connections_lost >= 1, "{stats:?}");
    assert!(stats.connections_established >= 2, "{stats:?}");
    drop(second);
    drop(a);
    stand_in.join().unwrap();
}

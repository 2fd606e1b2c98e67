//! The outbound side: one writer task per peer keeps one connection to that peer's matching
//! core, and writes everything queued for the peer as few frames as the frame limit allows.
//!
//! Connection lifecycle: connect, send our handshake, wait for the peer's answer (a refusal is
//! a closed socket), then stream frames; on any error drop the connection and reconnect after an
//! exponential backoff. Messages taken from the queue but not written when a connection breaks
//! are lost and counted: Raft retransmits what matters.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWrite;
use glommio::net::TcpStream;

use super::backoff::Backoff;
use super::durable_lane;
use super::error::ConnectionError;
use super::handle::{PeerLink, Shared};
use super::log::transport_log;
use super::queue::Drained;
use super::stats::add;
use super::wire::{read_handshake, set_unacknowledged_max, wait_for_close, write_frame};
use crate::proto::peer::{Handshake, Lane, PeerEncoder};
use crate::raft::Message;

/// Runs until the transport is dropped (which cancels this task).
pub(crate) async fn run_writer(link: Rc<PeerLink>, shared: Rc<Shared>) {
    let limits = shared.limits;
    let local = shared.local_node;
    let (peer, addr) = (link.node, link.addr);
    let mut backoff = Backoff::new(limits.reconnect_backoff_min, limits.reconnect_backoff_max);
    // One encoder for the life of the writer: it reuses its buffer from frame to frame.
    let mut encoder = PeerEncoder::new().with_frame_bytes_max(limits.frame_bytes_max);
    // Log the first failure of a streak only: a peer that is down for an hour must not fill
    // the log with one line per attempt (the counter still counts every attempt).
    let mut failing = false;
    loop {
        match connect(&link, &shared, &mut encoder).await {
            Ok(stream) => {
                backoff.reset();
                failing = false;
                add(&shared.counters.connections_established, 1);
                link.connected.set(true);
                transport_log!(local, "connected to node {peer} at {addr}");
                let error = stream_batches(stream, &link, &shared, &mut encoder).await;
                link.connected.set(false);
                add(&shared.counters.connections_lost, 1);
                transport_log!(
                    local,
                    "lost the connection to node {peer} at {addr}: {error}"
                );
            }
            Err(error) => {
                add(&shared.counters.connect_failures, 1);
                if !failing {
                    failing = true;
                    transport_log!(
                        local,
                        "cannot connect to node {peer} at {addr}: {error}; retrying with backoff up to {:?}",
                        limits.reconnect_backoff_max
                    );
                }
            }
        }
        // Also after a lost connection: a peer that accepts and at once drops us must not make
        // this task spin.
        glommio::timer::sleep(backoff.next_delay()).await;
    }
}

/// A connection whose handshake the peer answered and we checked.
async fn connect(
    link: &PeerLink,
    shared: &Shared,
    encoder: &mut PeerEncoder,
) -> Result<TcpStream, ConnectionError> {
    let timeout = shared.limits.handshake_timeout;
    let mut stream = TcpStream::connect_timeout(link.addr, timeout).await?;
    stream.set_nodelay(true)?;
    set_unacknowledged_max(stream.as_raw_fd(), shared.limits.unacknowledged_max)?;
    let hello = Handshake::new(shared.cluster_id, shared.local_node, link.node);
    write_frame(&mut stream, encoder.encode_handshake(&hello)).await?;
    let answer = read_handshake(&mut stream, timeout)
        .await
        .map_err(|error| match error {
            ConnectionError::HandshakeClosed => ConnectionError::Refused,
            error => error,
        })?;
    answer.check(shared.cluster_id, shared.local_node)?;
    if answer.node_id != link.node {
        return Err(ConnectionError::WrongPeer {
            expected: link.node,
            answered: answer.node_id,
        });
    }
    link.takes_lane.set(answer.accepts_durable_lane);
    Ok(stream)
}

/// How often an open durable-answer lane is checked for a peer that closed it (the storage
/// thread finds a broken one at its next write anyway).
const LANE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// A lane open this long before it closed resets the reconnect backoff.
const LANE_HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// Keeps `link`'s durable-answer lane open while the main connection is up and the peer takes
/// lanes: connects it on a helper thread (blocking connect and handshake never run on the
/// reactor), checks it, and reconnects with backoff. Runs until the transport is dropped.
pub(crate) async fn run_lane(link: Rc<PeerLink>, shared: Rc<Shared>) {
    let limits = shared.limits;
    let local = shared.local_node;
    let mut backoff = Backoff::new(limits.reconnect_backoff_min, limits.reconnect_backoff_max);
    let mut encoder = PeerEncoder::new();
    loop {
        if !(link.connected.get() && link.takes_lane.get()) {
            link.lane.close();
            glommio::timer::sleep(LANE_CHECK_INTERVAL).await;
            continue;
        }
        let mut hello = Handshake::new(shared.cluster_id, local, link.node);
        hello.lane = Lane::DurableAnswers;
        let hello = encoder.encode_handshake(&hello).to_vec();
        let (addr, cluster_id, peer) = (link.addr, shared.cluster_id, link.node);
        let (timeout, unacknowledged_max) = (limits.handshake_timeout, limits.unacknowledged_max);
        let (sender, receiver) = flume::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("kahuna-lane-connect".into())
            .spawn(move || {
                let connected = durable_lane::connect_blocking(
                    addr,
                    &hello,
                    cluster_id,
                    (local, peer),
                    timeout,
                    unacknowledged_max,
                );
                let _ = sender.send(connected);
            });
        // The helper gives up by itself within `timeout` (one deadline for the connect and
        // both handshakes), so waiting for its answer bounds the helpers to one per lane.
        let connected = match spawned {
            Ok(_) => receiver.recv_async().await.ok(),
            Err(_) => None,
        };
        match connected {
            Some(Ok(stream)) => {
                link.lane.install(stream);
                add(&shared.counters.lanes_established, 1);
                let opened = std::time::Instant::now();
                while link.connected.get() && link.lane.check() {
                    glommio::timer::sleep(LANE_CHECK_INTERVAL).await;
                }
                link.lane.close();
                // A lane that lived a while was fine: reopen it soon. One the peer keeps
                // dropping at once is retried ever more slowly.
                if opened.elapsed() >= LANE_HEALTHY_AFTER {
                    backoff.reset();
                }
            }
            Some(Err(error)) => {
                add(&shared.counters.connect_failures, 1);
                transport_log!(
                    local,
                    "cannot open the durable-answer lane to node {peer} at {addr}: {error}"
                );
            }
            None => add(&shared.counters.connect_failures, 1),
        }
        glommio::timer::sleep(backoff.next_delay()).await;
    }
}

/// Writes whatever the queue holds, as it arrives, until the connection fails. Returns why.
async fn stream_batches(
    stream: TcpStream,
    link: &PeerLink,
    shared: &Shared,
    encoder: &mut PeerEncoder,
) -> ConnectionError {
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    loop {
        // Wait for work, or for the peer to close the idle connection: then the next batch goes
        // to a fresh connection instead of into a dead socket.
        let work = async {
            std::future::poll_fn(|context| link.queue.borrow_mut().poll_work(context)).await;
            None
        };
        let closed = async { Some(wait_for_close(&mut reader).await) };
        if let Some(error) = futures_lite::future::or(work, closed).await {
            return error;
        }
        let drained = link.queue.borrow_mut().drain();
        if let Err(error) = write_drained(&mut writer, drained, link, shared, encoder).await {
            return error;
        }
    }
}

/// Encodes and writes one drained queue: a heartbeat frame, or the messages in as few frames
/// as fit. A message the encoder refuses (a caller bug, such as an append larger than a frame)
/// is logged and dropped; the rest still go out.
async fn write_drained<W: AsyncWrite + Unpin>(
    writer: &mut W,
    drained: Drained,
    link: &PeerLink,
    shared: &Shared,
    encoder: &mut PeerEncoder,
) -> Result<(), ConnectionError> {
    let (local, peer) = (shared.local_node, link.node);
    let counters = &shared.counters;
    encoder.set_quiet_report(Some(&shared.quiet_report.borrow()));
    if drained.heartbeat {
        let encoded = encoder
            .encode_batch(local, peer, &[])
            .expect("an empty batch between validated node ids always encodes");
        write_frame(writer, encoded.frame).await?;
        add(&counters.frames_sent, 1);
        add(&counters.heartbeats_sent, 1);
        add(&counters.bytes_sent, encoded.frame.len());
    }
    let messages = &drained.messages[..];
    let mut start = 0;
    // Messages from `start` up to `limit` are believed encodable; `messages[limit]` (when
    // `limit` < len) was found not to be, and is dropped once everything before it is out.
    let mut limit = messages.len();
    while start < messages.len() {
        if start == limit {
            add(&counters.messages_dropped_unsent, 1);
            start += 1;
            limit = messages.len();
            continue;
        }
        match encoder.encode_batch(local, peer, &messages[start..limit]) {
            Ok(encoded) => {
                let (count, bytes) = (encoded.messages_encoded, encoded.frame.len());
                if let Err(error) = write_frame(writer, encoded.frame).await {
                    add(&counters.messages_dropped_unsent, messages.len() - start);
                    return Err(error);
                }
                start += count;
                add(&counters.frames_sent, 1);
                add(&counters.messages_sent, count);
                add(&counters.bytes_sent, bytes);
            }
            Err(error) => {
                let bad = start + first_unencodable(encoder, link, shared, &messages[start..limit]);
                let group = messages[bad].group;
                transport_log!(
                    local,
                    "dropped a message of group {group} for node {peer}: {error}"
                );
                limit = bad;
            }
        }
    }
    Ok(())
}

/// The position of the first message the encoder refuses on its own (0 if, against
/// expectation, every one encodes alone: dropping one message still guarantees progress).
fn first_unencodable(
    encoder: &mut PeerEncoder,
    link: &PeerLink,
    shared: &Shared,
    messages: &[Message],
) -> usize {
    (0..messages.len())
        .find(|&position| {
            let one = &messages[position..=position];
            encoder
                .encode_batch(shared.local_node, link.node, one)
                .is_err()
        })
        .unwrap_or(0)
}

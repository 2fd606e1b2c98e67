//! The durable-answer lane: a second connection to each peer, written only by the core's
//! storage thread, right after a write is durable, with the messages that write released
//! (append acknowledgements, votes).
//!
//! Why: a follower may acknowledge an append only once its write is synced (DESIGN.md, write
//! path step 5), and the sync runs on the blocking pool. Through the main connection, the pool
//! thread wakes the reactor, which then hands the answers to the peer's writer task: one more
//! thread wake-up and reactor pass on the path of every replicated write. On the lane the
//! storage thread writes the pre-encoded frame itself, and the reactor learns afterwards.
//!
//! Rules that keep it safe and bounded:
//! - A frame goes on the lane whole or not at all, and the storage thread never waits for the
//!   socket: a write that would block before its first byte leaves the frame to the main
//!   connection; a frame the socket takes only part of closes the lane at once (the peer drops
//!   the partial frame with the connection) and its messages go on the main connection too.
//!   Frames are small ([`LANE_FRAME_BYTES_MAX`]; answers are a few dozen bytes each), so a
//!   socket that cannot take one whole is a peer that stopped reading.
//! - A peer that vanishes without closing (its host gone) is found by the kernel within the
//!   transport's `unacknowledged_max` of unacknowledged data (`TCP_USER_TIMEOUT`, as on the
//!   main connection), not the ~15 minutes of TCP's retransmissions: until then the lane's
//!   answers are lost, as the main connection's would be.
//! - Only messages the core may send once the write is durable travel here; the lane carries
//!   nothing the main connection could not carry, so a lost, closed or missing lane only
//!   costs the wake-up it would have saved. Raft tolerates the reordering between the two
//!   connections (the simulator reorders and duplicates messages).
//! - The reactor owns the lane's lifecycle (connect on a helper thread, check, reconnect with
//!   backoff); the storage thread only writes, behind the lane's mutex, without waiting.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use super::error::ConnectionError;
use super::wire::{set_unacknowledged_max, HANDSHAKE_FRAME_BYTES_MAX};
use crate::proto::frame::FrameDecoder;
use crate::proto::peer::{decode_handshake, Handshake};
use crate::raft::NodeId;

/// Largest frame sent on a lane; larger answers (a batch acknowledging thousands of groups)
/// go on the main connection.
pub const LANE_FRAME_BYTES_MAX: usize = 16 << 10;

/// One peer's durable-answer lane. Shared between the reactor (lifecycle) and the storage
/// thread (writes). Invariants: `stream` is `Some` only for a connection whose handshake the
/// peer answered, in non-blocking mode, on a frame boundary (no partial frame written); `open`
/// mirrors `stream.is_some()`; the lock is held only for non-blocking calls (a peek and the
/// writes of one frame), and the reactor's periodic check only tries it.
pub struct DurableLane {
    peer: NodeId,
    stream: Mutex<Option<TcpStream>>,
    open: AtomicBool,
}

impl DurableLane {
    pub(crate) fn new(peer: NodeId) -> DurableLane {
        DurableLane {
            peer,
            stream: Mutex::new(None),
            open: AtomicBool::new(false),
        }
    }

    /// A lane to `peer` over `stream`, a connection whose handshakes are done (the transport
    /// makes its own; this serves tests and tools that stand in for a peer). The stream is
    /// made non-blocking.
    pub fn over(peer: NodeId, stream: TcpStream) -> std::io::Result<DurableLane> {
        stream.set_nonblocking(true)?;
        let lane = DurableLane::new(peer);
        lane.install(stream);
        Ok(lane)
    }

    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// True while the lane holds a connection.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub(crate) fn install(&self, stream: TcpStream) {
        if let Ok(mut slot) = self.stream.lock() {
            *slot = Some(stream);
            self.open.store(true, Ordering::Release);
        }
    }

    /// Drops the connection (closing it), if any.
    pub(crate) fn close(&self) {
        if let Ok(mut slot) = self.stream.lock() {
            self.shut(&mut slot);
        }
    }

    fn shut(&self, slot: &mut Option<TcpStream>) {
        if let Some(stream) = slot.take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.open.store(false, Ordering::Release);
    }

    /// Whether the lane is still usable: open, and not closed by the peer (which never writes
    /// after its handshake answer, so any readable byte or end of stream ends the lane).
    /// Closes it when not. While a storage thread is writing, the lane is taken as alive (it
    /// finds a closed peer itself): the reactor never waits for the lock.
    pub(crate) fn check(&self) -> bool {
        let mut slot = match self.stream.try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::WouldBlock) => return self.is_open(),
            Err(TryLockError::Poisoned(_)) => return false,
        };
        let alive = slot.as_ref().is_some_and(|stream| !peer_gone(stream));
        if !alive {
            self.shut(&mut slot);
        }
        alive
    }

    /// Writes `frame` whole without waiting for the socket, or not at all. True when every
    /// byte went out; false when the caller must send the messages the usual way (no lane, a
    /// full socket, a frame over [`LANE_FRAME_BYTES_MAX`], or the lane broke: then it is
    /// closed and the peer drops any partial frame with it).
    pub fn try_send(&self, frame: &[u8]) -> bool {
        if frame.len() > LANE_FRAME_BYTES_MAX {
            return false;
        }
        let Ok(mut slot) = self.stream.lock() else {
            return false;
        };
        let Some(stream) = slot.as_mut() else {
            return false;
        };
        // A write into a connection the peer already closed would succeed (the kernel learns
        // of the close only from the reset it provokes) and lose the frame; one peek finds
        // the close first.
        if peer_gone(stream) {
            self.shut(&mut slot);
            return false;
        }
        match write_whole(stream, frame) {
            Ok(true) => true,
            Ok(false) => false,
            Err(_) => {
                self.shut(&mut slot);
                false
            }
        }
    }
}

/// The peer closed the connection, reset it, or sent something (it never writes after its
/// handshake answer, so that ends the lane too). Never blocks.
fn peer_gone(stream: &TcpStream) -> bool {
    let mut byte = [0_u8; 1];
    // SAFETY: `byte` is valid for one byte; the descriptor is owned by `stream`.
    let peeked = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if peeked >= 0 {
        return true;
    }
    !matches!(
        std::io::Error::last_os_error().kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// `Ok(false)`: nothing written (the socket is full). `Ok(true)`: all of it. An error: the
/// connection is unusable (it failed, or took only part of the frame).
fn write_whole(stream: &mut TcpStream, frame: &[u8]) -> std::io::Result<bool> {
    let mut written = 0;
    while written < frame.len() {
        match stream.write(&frame[written..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock && written == 0 => {
                return Ok(false)
            }
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

/// Connects a lane to `addr` and exchanges handshakes, blocking (run on a helper thread, never
/// on the reactor), all within `timeout`: `hello` is our encoded handshake frame; the answer
/// must come from `expected` in `cluster_id` and offer lanes. The stream comes back in
/// non-blocking mode, with `unacknowledged_max` set (see [`super::TransportLimits`]).
pub(crate) fn connect_blocking(
    addr: SocketAddr,
    hello: &[u8],
    cluster_id: u64,
    (local, expected): (NodeId, NodeId),
    timeout: Duration,
    unacknowledged_max: Duration,
) -> Result<TcpStream, ConnectionError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or(ConnectionError::HandshakeTimeout(timeout))
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    set_unacknowledged_max(stream.as_raw_fd(), unacknowledged_max)?;
    stream.set_write_timeout(Some(left()?))?;
    stream.write_all(hello)?;
    let mut decoder = FrameDecoder::new(HANDSHAKE_FRAME_BYTES_MAX);
    let mut chunk = [0_u8; HANDSHAKE_FRAME_BYTES_MAX];
    let frame = loop {
        if let Some(frame) = decoder.next_frame()? {
            break frame;
        }
        stream.set_read_timeout(Some(left()?))?;
        let read = match stream.read(&mut chunk) {
            Ok(read) => read,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ConnectionError::HandshakeTimeout(timeout))
            }
            Err(error) => return Err(error.into()),
        };
        if read == 0 {
            return Err(ConnectionError::Refused);
        }
        decoder.feed(&chunk[..read]);
    };
    if decoder.buffered_bytes() > 0 {
        return Err(ConnectionError::UnexpectedData);
    }
    let answer: Handshake = decode_handshake(&frame)?;
    answer.check(cluster_id, local)?;
    if answer.node_id != expected {
        return Err(ConnectionError::WrongPeer {
            expected,
            answered: answer.node_id,
        });
    }
    // An acceptor that does not offer lanes took this for a main connection (and may have
    // closed our real one for it): never use it as a lane.
    if !answer.accepts_durable_lane {
        return Err(ConnectionError::Refused);
    }
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// What the storage thread writes after a durable write: one frame of a peer's answers.
pub struct LaneFrame {
    pub lane: Arc<DurableLane>,
    pub frame: Vec<u8>,
    /// Messages in the frame (for the transport's counters).
    pub messages: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A lane holding one end of a loopback connection, and the other end.
    fn lane_pair() -> (DurableLane, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dialled = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        dialled.set_nonblocking(true).unwrap();
        let lane = DurableLane::new(2);
        lane.install(dialled);
        (lane, accepted)
    }

    #[test]
    fn a_lane_without_a_connection_sends_nothing() {
        let lane = DurableLane::new(2);
        assert!(!lane.is_open());
        assert!(!lane.try_send(b"frame"));
        assert!(!lane.check());
    }

    #[test]
    fn a_frame_goes_out_whole() {
        let (lane, mut peer) = lane_pair();
        assert!(lane.check(), "an idle open lane is alive");
        assert!(lane.try_send(b"0123456789"));
        let mut got = [0_u8; 10];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"0123456789");
    }

    fn set_buffer(stream: &TcpStream, option: libc::c_int, bytes: libc::c_int) {
        // SAFETY: a valid socket and a pointer to a live c_int of the stated size.
        let set = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "setsockopt");
    }

    #[test]
    fn a_frame_the_socket_takes_only_part_of_closes_the_lane() {
        // The peer never reads and both buffers are small (fixed sizes also turn off the
        // kernel's autotuning): lane frames fill them until one is refused. A frame refused
        // before its first byte leaves the lane open on a frame boundary; one taken only in
        // part must close it at once (the peer then sees the whole frames, part of the next,
        // and the end of the stream, never a spliced frame). Which happens depends on how the
        // frame sizes meet the buffer, so several sizes are tried, and the partial case must
        // be among them.
        let mut cut_short = 0;
        for size in [
            1_000,
            3_000,
            5_000,
            7_000,
            11_000,
            13_000,
            LANE_FRAME_BYTES_MAX,
        ] {
            let (lane, mut peer) = lane_pair();
            set_buffer(&peer, libc::SO_RCVBUF, 4096);
            if let Ok(slot) = lane.stream.lock() {
                set_buffer(slot.as_ref().unwrap(), libc::SO_SNDBUF, 4096);
            }
            let frame = vec![7_u8; size];
            let mut whole = 0;
            while lane.try_send(&frame) {
                whole += 1;
                assert!(whole < 10_000, "the socket never filled");
            }
            let mut received = Vec::new();
            peer.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            if lane.is_open() {
                lane.close();
                peer.read_to_end(&mut received).unwrap();
                assert_eq!(received.len(), whole * size, "{size}: whole frames only");
            } else {
                cut_short += 1;
                assert!(!lane.try_send(b"next"), "nothing goes out after it");
                peer.read_to_end(&mut received).unwrap();
                assert!(
                    received.len() > whole * size,
                    "{size}: part of the next frame"
                );
                assert!(received.len() < (whole + 1) * size, "{size}: not all of it");
            }
        }
        assert!(
            cut_short > 0,
            "no frame size was cut short: the partial case went untested"
        );
    }

    #[test]
    fn a_frame_over_the_lane_limit_is_left_to_the_main_connection() {
        let (lane, _peer) = lane_pair();
        assert!(!lane.try_send(&vec![0_u8; LANE_FRAME_BYTES_MAX + 1]));
        assert!(
            lane.is_open(),
            "refusing a large frame does not close the lane"
        );
    }

    #[test]
    fn a_lane_the_peer_closed_fails_its_check() {
        let (lane, peer) = lane_pair();
        drop(peer);
        // The FIN arrives asynchronously on loopback; it is there within moments.
        let deadline = Instant::now() + Duration::from_secs(30);
        while lane.check() {
            assert!(Instant::now() < deadline, "the close was never noticed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!lane.is_open());
    }
}

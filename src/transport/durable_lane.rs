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
//! - A frame goes on the lane whole or not at all: a write that would block before its first
//!   byte leaves the frame to the main connection; a frame cut short by a full socket is
//!   finished within [`LANE_STALL_TIMEOUT`] or the lane is closed (the peer drops the partial
//!   frame with the connection) and the messages go on the main connection too.
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::ConnectionError;
use super::wire::HANDSHAKE_FRAME_BYTES_MAX;
use crate::proto::frame::FrameDecoder;
use crate::proto::peer::{decode_handshake, Handshake};
use crate::raft::NodeId;

/// Longest a storage thread waits to finish a frame the socket took only part of. Past it the
/// lane is closed: a peer that does not read must not hold up the core's writes.
pub const LANE_STALL_TIMEOUT: Duration = Duration::from_millis(20);

/// One peer's durable-answer lane. Shared between the reactor (lifecycle) and the storage
/// thread (writes). Invariant: `stream` is `Some` only for a connection whose handshake the
/// peer answered, in non-blocking mode, on a frame boundary (no partial frame written).
pub struct DurableLane {
    peer: NodeId,
    stream: Mutex<Option<TcpStream>>,
    /// Set by a write that failed or stalled (the stream is gone); the reactor reconnects.
    broken: AtomicBool,
}

impl DurableLane {
    pub(crate) fn new(peer: NodeId) -> DurableLane {
        DurableLane {
            peer,
            stream: Mutex::new(None),
            broken: AtomicBool::new(false),
        }
    }

    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// True while the lane holds a connection.
    pub fn is_open(&self) -> bool {
        self.stream.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    pub(crate) fn install(&self, stream: TcpStream) {
        if let Ok(mut slot) = self.stream.lock() {
            *slot = Some(stream);
            self.broken.store(false, Ordering::Release);
        }
    }

    /// Drops the connection (closing it), if any.
    pub(crate) fn close(&self) {
        if let Ok(mut slot) = self.stream.lock() {
            if let Some(stream) = slot.take() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Whether the connection is still usable: not broken by a write, and not closed by the
    /// peer (which never writes after its handshake answer, so any readable byte or end of
    /// stream ends the lane). Closes it when not. Never blocks.
    pub(crate) fn check(&self) -> bool {
        let Ok(mut slot) = self.stream.lock() else {
            return false;
        };
        let alive = !self.broken.load(Ordering::Acquire)
            && slot.as_ref().is_some_and(|stream| !peer_gone(stream));
        if !alive {
            if let Some(stream) = slot.take() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        alive
    }

    /// Writes `frame` whole without waiting for the socket, or not at all. True when every
    /// byte went out; false when the caller must send the messages the usual way (no lane, a
    /// full socket, or the lane broke: then it is closed and the peer drops any partial frame
    /// with it).
    pub fn try_send(&self, frame: &[u8]) -> bool {
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
            if let Some(stream) = slot.take() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            return false;
        }
        match write_whole(stream, frame) {
            Ok(true) => true,
            Ok(false) => false,
            Err(_) => {
                if let Some(stream) = slot.take() {
                    let _ = stream.shutdown(Shutdown::Both);
                }
                self.broken.store(true, Ordering::Release);
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
    !(peeked < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock)
}

/// `Ok(false)`: nothing written (the socket is full). `Ok(true)`: all of it. An error: the
/// connection is unusable (it failed, or a partial frame could not be finished in time).
fn write_whole(stream: &mut TcpStream, frame: &[u8]) -> std::io::Result<bool> {
    let mut written = 0;
    let mut stalled_since: Option<Instant> = None;
    while written < frame.len() {
        match stream.write(&frame[written..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                written += n;
                stalled_since = None;
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if written == 0 {
                    return Ok(false);
                }
                let since = *stalled_since.get_or_insert_with(Instant::now);
                let left = LANE_STALL_TIMEOUT.saturating_sub(since.elapsed());
                if left.is_zero() || !wait_writable(stream, left)? {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

/// Waits up to `timeout` for `stream` to take more bytes.
fn wait_writable(stream: &TcpStream, timeout: Duration) -> std::io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let millis = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the call's duration.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    if ready < 0 {
        let error = std::io::Error::last_os_error();
        return if error.kind() == std::io::ErrorKind::Interrupted {
            Ok(true)
        } else {
            Err(error)
        };
    }
    Ok(ready > 0)
}

/// Connects a lane to `addr` and exchanges handshakes, blocking (run on a helper thread, never
/// on the reactor): `hello` is our encoded handshake frame; the answer must come from
/// `expected` in `cluster_id` within `timeout`. The stream comes back in non-blocking mode.
pub(crate) fn connect_blocking(
    addr: SocketAddr,
    hello: &[u8],
    cluster_id: u64,
    local: NodeId,
    expected: NodeId,
    timeout: Duration,
) -> Result<TcpStream, ConnectionError> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(hello)?;
    let mut decoder = FrameDecoder::new(HANDSHAKE_FRAME_BYTES_MAX);
    let mut chunk = [0_u8; HANDSHAKE_FRAME_BYTES_MAX];
    let frame = loop {
        if let Some(frame) = decoder.next_frame()? {
            break frame;
        }
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

    #[test]
    fn a_frame_the_socket_takes_only_part_of_closes_the_lane() {
        // The peer never reads: a frame far larger than both socket buffers is cut short, the
        // rest cannot be written within the stall timeout, and the lane must close (the peer
        // then sees a truncated frame and the end of the stream, never a spliced one).
        let (lane, mut peer) = lane_pair();
        let frame = vec![7_u8; 64 << 20];
        assert!(!lane.try_send(&frame), "a cut-short frame is not sent");
        assert!(!lane.is_open(), "and the lane is closed");
        assert!(!lane.try_send(b"next"), "nothing goes out after it");
        let mut received = Vec::new();
        peer.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        peer.read_to_end(&mut received).unwrap();
        assert!(!received.is_empty() && received.len() < frame.len());
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

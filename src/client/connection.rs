//! One pipelined connection to a node's client port. Many requests are in flight at once (up
//! to the connection's window); each call returns a runtime-agnostic future completed by the
//! connection's reader thread, so it works under glommio, any other executor, or `block_on`.
//!
//! Threads: a writer thread sends the frames callers queue (coalescing whatever is queued into
//! one write), a reader thread decodes answers and completes the matching calls. Callers never
//! block: they await a window slot (backpressure: there is no queue beyond the window), a
//! channel send that never waits (its capacity is the window), and their answer or deadline.
//! This module routes nothing: that is the router's job (`router.rs`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::timer;
use crate::proto::client::{decode_response, ClientEncoder, Op, Request, Response};
use crate::proto::frame::FrameDecoder;
use crate::proto::limits::{CLIENT_FRAME_BYTES_MAX, REQUESTS_IN_FLIGHT_MAX};

/// Bytes the writer thread gathers into one socket write.
const WRITE_BATCH_BYTES_MAX: usize = 256 << 10;
/// Bytes the reader asks the socket for at once.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("connecting to {addr} took longer than {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
}

/// Why a call got no answer. `sent` says whether the request may have reached the node (then
/// a write's outcome is unknown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no answer from {addr} in time")]
    Timeout { addr: String, sent: bool },
    #[error("connection to {addr} lost: {reason}")]
    Closed {
        addr: String,
        reason: String,
        sent: bool,
    },
    /// The request cannot be encoded (larger than a frame may be); nothing was sent.
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

impl CallError {
    /// The request may have reached the node.
    pub fn sent(&self) -> bool {
        match self {
            CallError::Timeout { sent, .. } | CallError::Closed { sent, .. } => *sent,
            CallError::Encode(_) => false,
        }
    }
}

/// Calls waiting for an answer, by request id. Invariant: one window slot is taken per entry
/// (released when its answer arrives or the connection closes), and `closed` is set exactly
/// once, when the table is drained for good.
struct Pending {
    waiting: HashMap<u64, flume::Sender<Response>>,
    closed: Option<String>,
}

/// State shared by the callers and the two threads.
struct Shared {
    addr: String,
    pending: Mutex<Pending>,
    next_request_id: AtomicU64,
    /// One token per free window slot.
    slots: (flume::Sender<()>, flume::Receiver<()>),
    /// A clone of the socket, to shut it down from either side.
    socket: TcpStream,
}

impl Shared {
    fn close(&self, reason: String) {
        let drained = {
            let mut pending = self.pending.lock().expect("pending lock");
            if pending.closed.is_none() {
                pending.closed = Some(reason);
            }
            std::mem::take(&mut pending.waiting)
        };
        // Dropping the senders fails every waiting call with Closed.
        for _ in drained {
            let _ = self.slots.0.try_send(());
        }
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    fn close_reason(&self) -> Option<String> {
        self.pending.lock().expect("pending lock").closed.clone()
    }
}

/// Owned by the callers' handles: dropping the last one closes the connection (the threads
/// hold `Shared` only, so they end when the socket is shut down and the frame queue closes).
struct Handle {
    shared: Arc<Shared>,
    frames: flume::Sender<Vec<u8>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close("closed by the client".into());
    }
}

/// A pipelined connection; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct Connection {
    handle: Arc<Handle>,
}

thread_local! {
    /// Reused between calls on the same thread (glommio reactors and client threads alike).
    static ENCODER: RefCell<ClientEncoder> = RefCell::new(ClientEncoder::new());
}

impl Connection {
    /// Opens a connection with at most `window` requests in flight (1..=1,024, the node's own
    /// bound). The TCP connect runs on a short-lived thread, so awaiting it blocks no reactor.
    pub async fn connect(
        addr: &str,
        window: usize,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        let (sender, receiver) = flume::bounded(1);
        let target = addr.to_string();
        std::thread::Builder::new()
            .name("kahuna-client-connect".into())
            .spawn(move || {
                let _ = sender.send(open_socket(&target, timeout));
            })
            .map_err(|e| ConnectError::Unreachable {
                addr: addr.to_string(),
                detail: format!("cannot start a thread: {e}"),
            })?;
        let deadline = Instant::now() + timeout + Duration::from_millis(100);
        match timer::until(deadline, receiver.recv_async()).await {
            Some(Ok(Ok(stream))) => Connection::start(addr, stream, window),
            Some(Ok(Err(error))) => Err(error),
            Some(Err(_)) | None => Err(ConnectError::Timeout {
                addr: addr.to_string(),
                timeout,
            }),
        }
    }

    /// [`Connection::connect`] for ordinary threads.
    pub fn connect_blocking(
        addr: &str,
        window: usize,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        futures_lite::future::block_on(Connection::connect(addr, window, timeout))
    }

    fn start(addr: &str, stream: TcpStream, window: usize) -> Result<Connection, ConnectError> {
        assert!(
            (1..=REQUESTS_IN_FLIGHT_MAX).contains(&window),
            "window {window} must be 1..={REQUESTS_IN_FLIGHT_MAX}"
        );
        let unreachable = |e: std::io::Error| ConnectError::Unreachable {
            addr: addr.to_string(),
            detail: e.to_string(),
        };
        let reader_socket = stream.try_clone().map_err(unreachable)?;
        let writer_socket = stream.try_clone().map_err(unreachable)?;
        let slots = flume::bounded(window);
        for _ in 0..window {
            slots.0.try_send(()).expect("capacity is the window");
        }
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            pending: Mutex::new(Pending {
                waiting: HashMap::new(),
                closed: None,
            }),
            next_request_id: AtomicU64::new(1),
            slots,
            socket: stream,
        });
        let (frames, queued) = flume::bounded::<Vec<u8>>(window);
        let reader_shared = shared.clone();
        let writer_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("kahuna-client-read".into())
            .spawn(move || read_answers(&reader_shared, reader_socket))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("kahuna-client-write".into())
                    .spawn(move || write_frames(&writer_shared, writer_socket, &queued))
            });
        if let Err(error) = spawned {
            shared.close(format!("cannot start a thread: {error}"));
            return Err(unreachable(error));
        }
        Ok(Connection {
            handle: Arc::new(Handle { shared, frames }),
        })
    }

    pub fn addr(&self) -> &str {
        &self.handle.shared.addr
    }

    /// The connection is closed for good (the node hung up, a frame was bad, or an IO error).
    pub fn is_closed(&self) -> bool {
        self.handle.shared.close_reason().is_some()
    }

    /// Sends `op` and waits for its answer until `deadline` (waiting for a window slot counts).
    /// The request id is chosen here; `client_id`/`sequence` identify a write's session
    /// (0 = none), `cluster_id` 0 = unchecked.
    pub async fn call(
        &self,
        op: Op,
        client_id: u64,
        sequence: u64,
        cluster_id: u64,
        deadline: Instant,
    ) -> Result<Response, CallError> {
        let shared = &self.handle.shared;
        let addr = || shared.addr.clone();
        let closed = |reason: String, sent: bool| CallError::Closed {
            addr: addr(),
            reason,
            sent,
        };
        match timer::until(deadline, shared.slots.1.recv_async()).await {
            Some(Ok(())) => {}
            Some(Err(_)) => return Err(closed("slots gone".into(), false)),
            None => {
                return Err(CallError::Timeout {
                    addr: addr(),
                    sent: false,
                })
            }
        }
        let request = Request {
            request_id: shared.next_request_id.fetch_add(1, Ordering::Relaxed),
            client_id,
            sequence,
            cluster_id,
            op,
        };
        let frame = ENCODER.with(|encoder| {
            encoder
                .borrow_mut()
                .encode_request(&request)
                .map(<[u8]>::to_vec)
        });
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                let _ = shared.slots.0.try_send(());
                return Err(CallError::Encode(error.to_string()));
            }
        };
        let (answer, answered) = flume::bounded(1);
        {
            let mut pending = shared.pending.lock().expect("pending lock");
            if let Some(reason) = &pending.closed {
                let reason = reason.clone();
                drop(pending);
                let _ = shared.slots.0.try_send(());
                return Err(closed(reason, false));
            }
            pending.waiting.insert(request.request_id, answer);
        }
        // Never waits: the queue holds a window's worth and every queued frame holds a slot.
        if self.handle.frames.send_async(frame).await.is_err() {
            shared.close("the writer stopped".into());
        }
        match timer::until(deadline, answered.recv_async()).await {
            Some(Ok(response)) => Ok(response),
            Some(Err(_)) => Err(closed(
                shared.close_reason().unwrap_or_else(|| "closed".into()),
                true,
            )),
            // The slot stays taken until the late answer arrives (or the connection closes):
            // the node is still working on the request.
            None => Err(CallError::Timeout {
                addr: addr(),
                sent: true,
            }),
        }
    }

    /// [`Connection::call`] for ordinary threads.
    pub fn call_blocking(
        &self,
        op: Op,
        client_id: u64,
        sequence: u64,
        cluster_id: u64,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let deadline = Instant::now() + timeout;
        futures_lite::future::block_on(self.call(op, client_id, sequence, cluster_id, deadline))
    }
}

fn open_socket(addr: &str, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let unreachable = |detail: String| ConnectError::Unreachable {
        addr: addr.to_string(),
        detail,
    };
    let socket_addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| unreachable(e.to_string()))?
        .collect();
    let mut last_error = String::from("the address resolves to nothing");
    for socket_addr in socket_addrs {
        match TcpStream::connect_timeout(&socket_addr, timeout) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(error) => last_error = error.to_string(),
        }
    }
    Err(unreachable(last_error))
}

fn read_answers(shared: &Shared, mut socket: TcpStream) {
    let mut decoder = FrameDecoder::new(CLIENT_FRAME_BYTES_MAX);
    let reason = loop {
        match drain_frames(shared, &mut decoder) {
            Ok(()) => {}
            Err(reason) => break reason,
        }
        let buffer = decoder.read_buffer(READ_CHUNK_BYTES);
        match socket.read(buffer) {
            Ok(0) => {
                decoder.filled(0);
                break shared
                    .close_reason()
                    .unwrap_or_else(|| "the node closed the connection".into());
            }
            Ok(read) => decoder.filled(read),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => decoder.filled(0),
            Err(error) => {
                decoder.filled(0);
                break format!("read: {error}");
            }
        }
    };
    shared.close(reason);
}

/// Completes the calls answered by every complete frame buffered so far.
fn drain_frames(shared: &Shared, decoder: &mut FrameDecoder) -> Result<(), String> {
    while let Some(frame) = decoder.next_frame().map_err(|e| e.to_string())? {
        let response = decode_response(&frame).map_err(|e| format!("bad answer: {e}"))?;
        let waiter = shared
            .pending
            .lock()
            .expect("pending lock")
            .waiting
            .remove(&response.request_id);
        match waiter {
            Some(waiter) => {
                // The caller may have given up (timeout): the answer is dropped, the slot freed.
                let _ = waiter.try_send(response);
                let _ = shared.slots.0.try_send(());
            }
            // Request id 0 is never used by a call: the node reports a connection-level
            // refusal (such as an oversized frame) that way before closing.
            None if response.request_id == 0 => {
                return Err(format!("{:?}: {}", response.error, response.message))
            }
            None => return Err(format!("answer to unknown request {}", response.request_id)),
        }
    }
    Ok(())
}

fn write_frames(shared: &Shared, mut socket: TcpStream, queued: &flume::Receiver<Vec<u8>>) {
    let mut batch = Vec::new();
    while let Ok(frame) = queued.recv() {
        batch.clear();
        batch.extend_from_slice(&frame);
        while batch.len() < WRITE_BATCH_BYTES_MAX {
            match queued.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if let Err(error) = socket.write_all(&batch) {
            shared.close(format!("write: {error}"));
            return;
        }
    }
}

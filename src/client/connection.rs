//! One pipelined connection to a node's client port. Many requests are in flight at once (up
//! to the connection's window); each call returns a runtime-agnostic future completed by the
//! connection's reader thread, so it works under glommio, any other executor, or `block_on`.
//!
//! Sending: a caller writes its frame to the socket itself, without waiting (`MSG_DONTWAIT`),
//! when nothing is queued before it; only when the socket's buffer is full does the rest go to
//! the connection's outbox, which a writer thread drains with blocking writes (coalescing what
//! queued meanwhile). The common path thus costs one syscall and no thread hand-off, and a
//! caller on a reactor never blocks. A reader thread decodes answers and completes the
//! matching calls. A thread that sends bursts (the benchmark's executor) may cork its sends
//! ([`cork_sends`]): its requests then leave in one write per connection when the cork drops.
//! Callers await a window slot (backpressure: the outbox holds at most a
//! window's frames, as every queued frame holds a slot), then their answer or deadline.
//! This module routes nothing: that is the router's job (`router.rs`).

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::calls::{Calls, Completion, Ticket};
use super::timer;
use crate::proto::client::{decode_response, ClientEncoder, Op, Request, Response};
use crate::proto::frame::FrameDecoder;
use crate::proto::limits::{CLIENT_FRAME_BYTES_MAX, REQUESTS_IN_FLIGHT_MAX};

/// Outbox buffer capacity kept once drained.
const OUTBOX_RETAINED_BYTES_MAX: usize = 1 << 20;
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

/// Bytes waiting for the writer thread. Invariant: `buffer` is non-empty only while
/// `writer_busy` is set (the writer owns the socket's send side until it finds the buffer empty
/// and clears the flag), so a caller writes directly only when nothing can be ahead of it.
struct Outbox {
    buffer: Vec<u8>,
    writer_busy: bool,
    closed: bool,
}

/// State shared by the callers and the two threads.
struct Shared {
    addr: String,
    /// The calls in flight and the window (see `calls`).
    calls: Mutex<Calls>,
    /// Set once, by `close`: read without the lock on every call's way through the router.
    closed: AtomicBool,
    outbox: Mutex<Outbox>,
    /// Signalled when the writer has work (or the connection closes).
    outbox_ready: Condvar,
    /// Starts at 1: id 0 is the node's connection-level refusal.
    next_request_id: AtomicU64,
    /// A clone of the socket, to shut it down from either side.
    socket: TcpStream,
}

impl Shared {
    fn close(&self, reason: String) {
        self.closed.store(true, Ordering::Release);
        // Every waiting call fails with Closed.
        let wake = self.calls.lock().expect("calls lock").close(reason);
        wake.wake();
        let _ = self.socket.shutdown(Shutdown::Both);
        self.outbox.lock().expect("outbox lock").closed = true;
        self.outbox_ready.notify_all();
    }

    /// Sends one frame: straight to the socket when nothing is queued and the socket takes it
    /// without waiting, otherwise (what is left of it) through the writer thread. Never blocks
    /// beyond the outbox lock and one non-blocking syscall.
    fn send_frame(&self, frame: &[u8]) -> Result<(), String> {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        if outbox.closed {
            return Err("closed".into());
        }
        let mut sent = 0;
        if !outbox.writer_busy {
            debug_assert!(outbox.buffer.is_empty());
            while sent < frame.len() {
                let rest = &frame[sent..];
                // SAFETY: `rest` is a live slice for the call's duration; the descriptor is
                // owned by `self.socket`, open until `Shared` drops.
                let written = unsafe {
                    libc::send(
                        self.socket.as_raw_fd(),
                        rest.as_ptr().cast(),
                        rest.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if written >= 0 {
                    sent += written as usize;
                    continue;
                }
                let error = std::io::Error::last_os_error();
                match error.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    std::io::ErrorKind::WouldBlock => break,
                    _ => {
                        drop(outbox);
                        self.close(format!("write: {error}"));
                        return Err(format!("write: {error}"));
                    }
                }
            }
            if sent == frame.len() {
                return Ok(());
            }
            outbox.writer_busy = true;
            self.outbox_ready.notify_one();
        }
        outbox.buffer.extend_from_slice(&frame[sent..]);
        Ok(())
    }

    fn close_reason(&self) -> Option<String> {
        self.calls
            .lock()
            .expect("calls lock")
            .closed()
            .map(str::to_owned)
    }
}

/// Owned by the callers' handles: dropping the last one closes the connection (the threads
/// hold `Shared` only, so they end when the socket is shut down and the outbox closes).
struct Handle {
    shared: Arc<Shared>,
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
    /// Frames sent on this thread while a [`SendCork`] is held, per connection, in send order;
    /// `None` when no cork is held. Bounded: a connection's frames each hold a window slot,
    /// and a connection's bytes go out once they pass `CORKED_BYTES_MAX`.
    static CORKED: RefCell<Option<Corked>> = const { RefCell::new(None) };
}

/// Corked frames, per connection: the bytes of each connection's frames in send order.
type Corked = Vec<(Arc<Shared>, Vec<u8>)>;

/// A connection's corked frames are written at once past this many bytes.
const CORKED_BYTES_MAX: usize = 256 << 10;

/// Holds the requests this thread sends on any connection until it is dropped, then writes
/// each connection's requests with one write (see [`cork_sends`]). Not `Send`: the cork is the
/// thread's.
#[must_use = "the requests are held until the cork is dropped"]
pub struct SendCork {
    /// The first cork of the thread; an inner one holds nothing of its own.
    outermost: bool,
    _thread_bound: std::marker::PhantomData<*const ()>,
}

/// Corks this thread's sends: until the returned guard drops, requests are queued per
/// connection instead of written one by one, and the drop writes each connection's queue in
/// one write. For a caller that sends many requests in a burst (an executor polling many
/// ready tasks): one syscall and one TCP segment per connection instead of one per request,
/// and the node reads them together. A request is not on the wire until the drop, so a caller
/// must not wait for an answer while holding the cork on its own thread.
pub fn cork_sends() -> SendCork {
    let outermost = CORKED.with(|corked| {
        let mut corked = corked.borrow_mut();
        let first = corked.is_none();
        if first {
            *corked = Some(Vec::new());
        }
        first
    });
    SendCork {
        outermost,
        _thread_bound: std::marker::PhantomData,
    }
}

impl Drop for SendCork {
    fn drop(&mut self) {
        if !self.outermost {
            return;
        }
        let queued = CORKED.with(|corked| corked.borrow_mut().take());
        write_corked(queued.unwrap_or_default());
    }
}

fn write_corked(queued: Corked) {
    for (shared, frames) in queued {
        if !frames.is_empty() {
            // An error closed the connection, which fails every call waiting on it.
            let _ = shared.send_frame(&frames);
        }
    }
}

/// Runs `future` to completion on this thread with the thread's cork (if any) lifted: what it
/// holds is written first, and the future's own requests go out at once. A blocking call
/// under a cork would otherwise wait for its own request until its deadline.
pub(crate) fn block_on_uncorked<T>(future: impl std::future::Future<Output = T>) -> T {
    let lifted = CORKED.with(|corked| corked.borrow_mut().take());
    let corked = lifted.is_some();
    write_corked(lifted.unwrap_or_default());
    let result = futures_lite::future::block_on(future);
    if corked {
        CORKED.with(|cell| *cell.borrow_mut() = Some(Vec::new()));
    }
    result
}

/// Sends `frame` on `shared`, or queues it when this thread holds a cork.
fn send_or_cork(shared: &Arc<Shared>, frame: &[u8]) -> Result<(), String> {
    let full = CORKED.with(|corked| {
        let mut corked = corked.borrow_mut();
        let queued = corked.as_mut()?;
        let at = match queued.iter().position(|(s, _)| Arc::ptr_eq(s, shared)) {
            Some(at) => at,
            None => {
                queued.push((shared.clone(), Vec::new()));
                queued.len() - 1
            }
        };
        let frames = &mut queued[at].1;
        frames.extend_from_slice(frame);
        Some((frames.len() >= CORKED_BYTES_MAX).then(|| std::mem::take(frames)))
    });
    match full {
        None => shared.send_frame(frame),
        Some(None) => Ok(()),
        Some(Some(frames)) => shared.send_frame(&frames),
    }
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
        block_on_uncorked(Connection::connect(addr, window, timeout))
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
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            calls: Mutex::new(Calls::new(window)),
            closed: AtomicBool::new(false),
            outbox: Mutex::new(Outbox {
                buffer: Vec::new(),
                writer_busy: false,
                closed: false,
            }),
            outbox_ready: Condvar::new(),
            next_request_id: AtomicU64::new(1),
            socket: stream,
        });
        let reader_shared = shared.clone();
        let writer_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("kahuna-client-read".into())
            .spawn(move || read_answers(&reader_shared, reader_socket))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("kahuna-client-write".into())
                    .spawn(move || write_queued(&writer_shared, writer_socket))
            });
        if let Err(error) = spawned {
            shared.close(format!("cannot start a thread: {error}"));
            return Err(unreachable(error));
        }
        Ok(Connection {
            handle: Arc::new(Handle { shared }),
        })
    }

    pub fn addr(&self) -> &str {
        &self.handle.shared.addr
    }

    /// The connection is closed for good (the node hung up, a frame was bad, or an IO error).
    pub fn is_closed(&self) -> bool {
        self.handle.shared.closed.load(Ordering::Acquire)
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
        let mut call = CallGuard {
            shared,
            id: shared.next_request_id.fetch_add(1, Ordering::Relaxed),
            stage: Stage::Queued(None),
        };
        match timer::until(deadline, poll_fn(|cx| call.poll_register(cx))).await {
            Some(Ok(())) => {}
            Some(Err(reason)) => return Err(closed(reason, false)),
            None => {
                return Err(CallError::Timeout {
                    addr: addr(),
                    sent: false,
                })
            }
        }
        // Registered before it is sent: the answer may come back before `send_frame` returns.
        let request = Request {
            request_id: call.id,
            client_id,
            sequence,
            cluster_id,
            op,
        };
        let encoded = ENCODER.with(
            |encoder| match encoder.borrow_mut().encode_request(&request) {
                Ok(frame) => Ok(send_or_cork(shared, frame)),
                Err(error) => Err(error.to_string()),
            },
        );
        match encoded {
            Ok(Ok(())) => {}
            // The connection closed (its reason is in `calls`): answered as Closed below.
            Ok(Err(_)) => {}
            Err(error) => {
                call.unsent();
                return Err(CallError::Encode(error));
            }
        }
        match timer::until(deadline, poll_fn(|cx| call.poll_answer(cx))).await {
            Some(Ok(response)) => Ok(response),
            Some(Err(reason)) => Err(closed(reason, true)),
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
        block_on_uncorked(self.call(op, client_id, sequence, cluster_id, deadline))
    }
}

/// Where a call stands in its connection's table (see `calls`).
enum Stage {
    /// Waiting for a window slot (the ticket once queued).
    Queued(Option<Ticket>),
    /// Holds a slot; sent or about to be.
    Registered,
    /// Answered, failed or unregistered: nothing left in the table.
    Done,
}

/// One call's hold on its connection's table: its polls go through here, and dropping it (a
/// deadline passed, or the caller's future was dropped) leaves the table consistent.
struct CallGuard<'a> {
    shared: &'a Shared,
    id: u64,
    stage: Stage,
}

impl CallGuard<'_> {
    fn poll_register(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        let Stage::Queued(ticket) = &mut self.stage else {
            unreachable!("registered once");
        };
        let polled = self
            .shared
            .calls
            .lock()
            .expect("calls lock")
            .poll_register(self.id, ticket, cx);
        match polled {
            Poll::Ready(Ok(())) => self.stage = Stage::Registered,
            Poll::Ready(Err(_)) => self.stage = Stage::Done,
            Poll::Pending => {}
        }
        polled
    }

    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response, String>> {
        debug_assert!(matches!(self.stage, Stage::Registered));
        let polled = self
            .shared
            .calls
            .lock()
            .expect("calls lock")
            .poll_answer(self.id, cx);
        if polled.is_ready() {
            self.stage = Stage::Done;
        }
        polled
    }

    /// The request was never sent: its slot is free again.
    fn unsent(&mut self) {
        let wake = self
            .shared
            .calls
            .lock()
            .expect("calls lock")
            .unregister_unsent(self.id);
        self.stage = Stage::Done;
        wake.wake();
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Queued(ticket) => {
                let wake = self
                    .shared
                    .calls
                    .lock()
                    .expect("calls lock")
                    .abandon_wait(ticket);
                wake.wake();
            }
            Stage::Registered => self
                .shared
                .calls
                .lock()
                .expect("calls lock")
                .abandon_call(self.id),
            Stage::Done => {}
        }
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
        // Request id 0 is never used by a call: the node reports a connection-level refusal
        // (such as an oversized frame) that way before closing.
        if response.request_id == 0 {
            return Err(format!("{:?}: {}", response.error, response.message));
        }
        let id = response.request_id;
        // A caller that gave up has its answer dropped and its slot freed.
        let (completion, wake) = shared
            .calls
            .lock()
            .expect("calls lock")
            .complete(id, response);
        wake.wake();
        if completion == Completion::Unknown {
            return Err(format!("answer to unknown request {id}"));
        }
    }
    Ok(())
}

/// The writer thread: drains the outbox with blocking writes whenever a caller found the socket
/// full, until the outbox is empty again (then callers write directly once more).
fn write_queued(shared: &Shared, mut socket: TcpStream) {
    let mut batch = Vec::new();
    loop {
        {
            let mut outbox = shared.outbox.lock().expect("outbox lock");
            loop {
                if outbox.closed {
                    return;
                }
                if outbox.writer_busy {
                    if outbox.buffer.is_empty() {
                        outbox.writer_busy = false;
                    } else {
                        std::mem::swap(&mut batch, &mut outbox.buffer);
                        break;
                    }
                }
                outbox = shared.outbox_ready.wait(outbox).expect("outbox lock");
            }
        }
        if let Err(error) = socket.write_all(&batch) {
            shared.close(format!("write: {error}"));
            return;
        }
        batch.clear();
        // A stalled peer can grow the outbox to a window of large frames: do not keep that
        // (the two buffers trade places, so both stay bounded).
        if batch.capacity() > OUTBOX_RETAINED_BYTES_MAX {
            batch = Vec::new();
        }
    }
}

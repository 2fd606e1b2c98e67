//! A fault-injecting TCP proxy for ONE directed link between two nodes (node A's connections
//! to node B's peer port, one listening port per core): it passes bytes, cuts the link, or
//! delays them.
//!
//! Why a proxy and not network namespaces or iptables: the tests must run unprivileged in CI
//! (namespaces and netfilter need CAP_NET_ADMIN, and a crashed test would leave rules behind),
//! and Kahuna's transport makes a per-link proxy exact: each core of node A dials ONE
//! connection to node B and only A->B traffic flows on it after the handshake (B's traffic to A
//! uses B's own connection). So pointing A's `--peers` entry for B at this proxy gives one
//! proxy per directed link, and cutting it is a one-way cut A->B with nothing else touched.
//!
//! Cut: every open connection is shut down, and connections accepted while cut are held open
//! and read into the void (a black hole, like a partition: no reset, no answer) until the link
//! heals, when they are closed so the dialer reconnects. Delay: every chunk of A->B bytes is
//! delivered `delay` after it was read, in order, without limiting throughput.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    Pass,
    Cut,
    Delay(Duration),
}

/// Chunks queued between the reader and the delayed writer of one connection (bounded:
/// a full queue stops the reader, which is TCP backpressure towards the dialer).
const DELAY_QUEUE_CHUNKS_MAX: usize = 256;

struct Shared {
    mode: Mutex<LinkMode>,
    /// Every open socket of this link (both sides of each proxied connection), to shut down.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    next_socket: AtomicU64,
    stop: AtomicBool,
    connections_accepted: AtomicU64,
}

impl Shared {
    fn mode(&self) -> LinkMode {
        *self.mode.lock().unwrap()
    }

    fn track(&self, stream: &TcpStream) -> Option<u64> {
        let clone = stream.try_clone().ok()?;
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        self.sockets.lock().unwrap().insert(id, clone);
        Some(id)
    }

    fn forget(&self, id: Option<u64>) {
        if let Some(id) = id {
            self.sockets.lock().unwrap().remove(&id);
        }
    }

    fn shut_all(&self) {
        for (_, socket) in self.sockets.lock().unwrap().drain() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// One directed link: listens on `listen[c]` and forwards to `target[c]` for each core c.
pub struct LinkProxy {
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
}

impl LinkProxy {
    pub fn start(listen: Vec<String>, target: Vec<String>) -> std::io::Result<LinkProxy> {
        assert_eq!(listen.len(), target.len(), "one target per listening port");
        let shared = Arc::new(Shared {
            mode: Mutex::new(LinkMode::Pass),
            sockets: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            connections_accepted: AtomicU64::new(0),
        });
        let mut acceptors = Vec::new();
        for (listen, target) in listen.into_iter().zip(target) {
            let listener = TcpListener::bind(&listen)?;
            listener.set_nonblocking(true)?;
            let shared = shared.clone();
            acceptors.push(std::thread::spawn(move || {
                accept_loop(listener, target, shared)
            }));
        }
        Ok(LinkProxy { shared, acceptors })
    }

    pub fn mode(&self) -> LinkMode {
        self.shared.mode()
    }

    pub fn set_mode(&self, mode: LinkMode) {
        let previous = std::mem::replace(&mut *self.shared.mode.lock().unwrap(), mode);
        // Entering a cut drops what is open; leaving one closes the black-holed connections
        // so the dialers reconnect through a live link.
        if (mode == LinkMode::Cut) != (previous == LinkMode::Cut) {
            self.shared.shut_all();
        }
    }

    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections_accepted.load(Ordering::Relaxed)
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.shut_all();
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: String, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                shared.connections_accepted.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                let target = target.clone();
                std::thread::spawn(move || serve_connection(stream, &target, shared));
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn serve_connection(inbound: TcpStream, target: &str, shared: Arc<Shared>) {
    let inbound_id = shared.track(&inbound);
    if shared.mode() == LinkMode::Cut || shared.stop.load(Ordering::SeqCst) {
        black_hole(inbound);
        shared.forget(inbound_id);
        return;
    }
    let Some(outbound) = target
        .parse()
        .ok()
        .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
    else {
        let _ = inbound.shutdown(Shutdown::Both);
        shared.forget(inbound_id);
        return;
    };
    let _ = outbound.set_nodelay(true);
    let outbound_id = shared.track(&outbound);
    // The acceptor's handshake answer (B -> A on this connection): copied as is.
    let back = match (outbound.try_clone(), inbound.try_clone()) {
        (Ok(from), Ok(to)) => Some(std::thread::spawn(move || copy_plain(from, to))),
        _ => None,
    };
    forward_delayed(inbound, outbound, &shared);
    if let Some(back) = back {
        let _ = back.join();
    }
    shared.forget(inbound_id);
    shared.forget(outbound_id);
}

/// Reads and discards until the socket is shut down (by a heal) or the dialer gives up.
fn black_hole(mut stream: TcpStream) {
    let mut buffer = [0u8; 16 << 10];
    while let Ok(read) = stream.read(&mut buffer) {
        if read == 0 {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn copy_plain(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 << 10];
    while let Ok(read) = from.read(&mut buffer) {
        if read == 0 || to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// A -> B: each chunk is written `delay` (the link's mode when it was read) after its read.
fn forward_delayed(mut from: TcpStream, to: TcpStream, shared: &Shared) {
    let (sender, receiver) = mpsc::sync_channel::<(Instant, Vec<u8>)>(DELAY_QUEUE_CHUNKS_MAX);
    let writer = std::thread::spawn(move || {
        let mut to = to;
        while let Ok((due, chunk)) = receiver.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
    let mut buffer = vec![0u8; 64 << 10];
    while let Ok(read) = from.read(&mut buffer) {
        if read == 0 {
            break;
        }
        let delay = match shared.mode() {
            LinkMode::Delay(delay) => delay,
            LinkMode::Pass => Duration::ZERO,
            // Cut while this chunk was in flight: it is lost with the link.
            LinkMode::Cut => break,
        };
        if sender
            .send((Instant::now() + delay, buffer[..read].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(sender);
    let _ = from.shutdown(Shutdown::Both);
    let _ = writer.join();
}

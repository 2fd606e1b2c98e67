//! The inbound side: accept peer connections, check each one's handshake, then decode its
//! frames and hand every batch (empty ones included: they are node heartbeats) to the core loop.
//!
//! A connection that misbehaves is logged and closed; it never affects another connection or
//! the core. At most `inbound_connections_max` connections are open at once, and a newer
//! connection from a node replaces an older one (the older is a leftover: the peer's core keeps
//! one outbound connection to us, and a half-open socket would otherwise hold its slot forever).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;

use super::error::ConnectionError;
use super::handle::{InboundBatch, Shared};
use super::log::transport_log;
use super::stats::add;
use super::wire::{read_frame, read_handshake, write_frame, READ_CHUNK_BYTES};
use crate::proto::frame::FrameDecoder;
use crate::proto::peer::{decode_batch, Handshake, Lane, PeerEncoder};
use crate::raft::NodeId;

/// The open inbound connections, so they can be counted, replaced, and stopped with the
/// transport.
#[derive(Default)]
pub(crate) struct InboundRegistry {
    next_id: u64,
    connections: HashMap<u64, InboundEntry>,
}

struct InboundEntry {
    /// `None` for the moment between registering and spawning.
    task: Option<JoinHandle<()>>,
    /// The peer and the connection's lane, once its handshake is accepted.
    node: Option<(NodeId, Lane)>,
}

impl InboundRegistry {
    pub(crate) fn len(&self) -> usize {
        self.connections.len()
    }

    fn register(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let entry = InboundEntry {
            task: None,
            node: None,
        };
        self.connections.insert(id, entry);
        id
    }

    fn set_task(&mut self, id: u64, task: JoinHandle<()>) {
        if let Some(entry) = self.connections.get_mut(&id) {
            entry.task = Some(task);
        }
    }

    /// Records that connection `id` is `node`'s `lane`, and hands back the tasks of that node's
    /// older connections of the same lane for the caller to cancel (outside this borrow): a
    /// peer keeps one main connection and one durable-answer lane.
    fn claim(&mut self, id: u64, node: NodeId, lane: Lane) -> Vec<JoinHandle<()>> {
        let older: Vec<u64> = self
            .connections
            .iter()
            .filter(|(&other, entry)| other != id && entry.node == Some((node, lane)))
            .map(|(&other, _)| other)
            .collect();
        if let Some(entry) = self.connections.get_mut(&id) {
            entry.node = Some((node, lane));
        }
        older
            .into_iter()
            .filter_map(|other| self.connections.remove(&other)?.task)
            .collect()
    }

    fn remove(&mut self, id: u64) {
        self.connections.remove(&id);
    }

    /// Every task, for the transport to cancel when it stops.
    pub(crate) fn take_all(&mut self) -> Vec<JoinHandle<()>> {
        self.connections
            .drain()
            .filter_map(|(_, entry)| entry.task)
            .collect()
    }
}

/// Accepts connections until the transport is dropped (which cancels this task).
pub(crate) async fn accept_loop(listener: TcpListener, shared: Rc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                // Typically out of file descriptors: retrying at once would spin the core.
                transport_log!(shared.local_node, "accept failed: {error}");
                glommio::timer::sleep(shared.limits.reconnect_backoff_min).await;
                continue;
            }
        };
        let open = shared.inbound.borrow().len();
        if open >= shared.limits.inbound_connections_max {
            add(&shared.counters.inbound_refused, 1);
            let from = describe(stream.peer_addr().ok());
            transport_log!(
                shared.local_node,
                "refused a connection from {from}: {open} inbound connections already open"
            );
            continue;
        }
        let id = shared.inbound.borrow_mut().register();
        let task = glommio::spawn_local(serve_connection(stream, id, shared.clone())).detach();
        shared.inbound.borrow_mut().set_task(id, task);
    }
}

/// Removes a connection from the registry however its task ends (finished or cancelled).
struct Registration {
    id: u64,
    shared: Rc<Shared>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A cancelled task is dropped by the executor, never inside a registry borrow; still,
        // never panic in drop.
        if let Ok(mut registry) = self.shared.inbound.try_borrow_mut() {
            registry.remove(self.id);
        }
    }
}

async fn serve_connection(stream: TcpStream, id: u64, shared: Rc<Shared>) {
    let _registration = Registration {
        id,
        shared: shared.clone(),
    };
    let from = describe(stream.peer_addr().ok());
    let mut node = None;
    let result = serve(stream, id, &shared, &mut node).await;
    let local = shared.local_node;
    match (result, node) {
        (Ok(()), node) => {
            let node = node.map_or_else(String::new, |node| format!("node {node} at "));
            transport_log!(
                local,
                "the connection from {node}{from} was closed by the peer"
            );
        }
        (Err(error), None) => {
            add(&shared.counters.inbound_refused, 1);
            transport_log!(local, "refused a connection from {from}: {error}");
        }
        (Err(error), Some(node)) => {
            add(&shared.counters.inbound_errors, 1);
            transport_log!(
                local,
                "closed the connection from node {node} ({from}): {error}"
            );
        }
    }
}

/// Handshake, then batches until the peer closes or errs. `node` is set once the handshake is
/// accepted, so the caller can tell a refusal from a later error.
async fn serve(
    mut stream: TcpStream,
    id: u64,
    shared: &Rc<Shared>,
    node: &mut Option<NodeId>,
) -> Result<(), ConnectionError> {
    let (peer, lane) = accept_handshake(&mut stream, shared).await?;
    *node = Some(peer);
    add(&shared.counters.inbound_accepted, 1);
    let older = shared.inbound.borrow_mut().claim(id, peer, lane);
    for task in older {
        transport_log!(
            shared.local_node,
            "closed an older connection from node {peer}: {}",
            ConnectionError::Replaced
        );
        task.cancel();
    }
    receive_batches(&mut stream, peer, shared).await
}

/// Reads and checks the dialer's handshake, then answers with ours (saying we take
/// durable-answer lanes). Returns the peer's id and the connection's lane; both lanes carry
/// batches the same way.
async fn accept_handshake(
    stream: &mut TcpStream,
    shared: &Shared,
) -> Result<(NodeId, Lane), ConnectionError> {
    // Small frames both ways: waiting for the batch of a Nagle timer would be pure latency.
    stream.set_nodelay(true)?;
    let hello = read_handshake(stream, shared.limits.handshake_timeout).await?;
    hello.check(shared.cluster_id, shared.local_node)?;
    if !shared.peers.contains_key(&hello.node_id) {
        return Err(ConnectionError::UnknownPeer(hello.node_id));
    }
    let mut answer = Handshake::new(shared.cluster_id, shared.local_node, hello.node_id);
    answer.accepts_durable_lane = true;
    let mut encoder = PeerEncoder::new();
    write_frame(stream, encoder.encode_handshake(&answer)).await?;
    Ok((hello.node_id, hello.lane))
}

async fn receive_batches(
    stream: &mut TcpStream,
    peer: NodeId,
    shared: &Shared,
) -> Result<(), ConnectionError> {
    let local = shared.local_node;
    let mut decoder = FrameDecoder::new(shared.limits.frame_bytes_max);
    let mut chunk = vec![0_u8; READ_CHUNK_BYTES];
    while let Some(frame) = read_frame(stream, &mut decoder, &mut chunk).await? {
        let batch = decode_batch(&frame)?;
        if batch.from_node != peer || batch.to_node != local {
            return Err(ConnectionError::BatchAddress {
                from_node: batch.from_node,
                to_node: batch.to_node,
                peer,
                local,
            });
        }
        let messages = batch.messages.len();
        let inbound = InboundBatch {
            from_node: peer,
            messages: batch.messages,
            quiet_nodes: batch.quiet_nodes,
        };
        // Waits while the core loop is behind: the socket stops being read and TCP pushes
        // back on the sender, instead of anything here growing.
        if shared.inbound_sender.send(inbound).await.is_err() {
            return Err(ConnectionError::CoreGone);
        }
        let counters = &shared.counters;
        add(&counters.frames_received, 1);
        add(&counters.bytes_received, frame.len());
        add(&counters.messages_received, messages);
        if messages == 0 {
            add(&counters.heartbeats_received, 1);
        }
    }
    Ok(())
}

/// For logs: where a connection came from.
fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "an unknown address".to_owned(), |addr| addr.to_string())
}

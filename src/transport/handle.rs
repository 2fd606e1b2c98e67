//! [`PeerTransport`]: the handle the core loop holds. Owns the listener task, one writer task
//! per peer and the inbound connection tasks; dropping it stops them all.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpListener;
use glommio::Task;

use super::config::{TransportConfig, TransportLimits};
use super::durable_lane::{DurableLane, LaneFrame, LANE_FRAME_BYTES_MAX};
use super::error::{SendError, TransportError};
use super::inbound::{accept_loop, InboundRegistry};
use super::outbound::{run_lane, run_writer};
use super::queue::PeerQueue;
use super::stats::{add, Counters, TransportStats};
use crate::proto::limits::QUIET_NODES_MAX;
use crate::proto::peer::{is_canonical_quiet_report, PeerEncoder};
use crate::raft::{Message, NodeId};

/// Messages from one peer node, decoded from one frame, in the frame's order. Empty
/// `messages`: a node heartbeat (the peer's core is alive and reaches us).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundBatch {
    pub from_node: NodeId,
    pub messages: Vec<Message>,
    /// The peer's quiet report, if the frame carried one (see `PeerBatch::quiet_nodes`).
    pub quiet_nodes: Option<Vec<NodeId>>,
}

/// State every task of one transport shares. Single-threaded: `Rc`, `Cell`, `RefCell`, and no
/// borrow is ever held across an `.await`.
pub(crate) struct Shared {
    pub(crate) local_node: NodeId,
    pub(crate) cluster_id: u64,
    pub(crate) limits: TransportLimits,
    pub(crate) peers: BTreeMap<NodeId, SocketAddr>,
    pub(crate) counters: Counters,
    pub(crate) inbound_sender: LocalSender<InboundBatch>,
    pub(crate) inbound: RefCell<InboundRegistry>,
    /// This node's quiet report, which every frame of the main connections carries
    /// ([`PeerTransport::report_quiet`]). Invariant: canonical for `local_node`
    /// (`is_canonical_quiet_report`).
    pub(crate) quiet_report: RefCell<Vec<NodeId>>,
}

/// One peer's outbound side: its queue and whether its writer holds a live connection.
pub(crate) struct PeerLink {
    pub(crate) node: NodeId,
    pub(crate) addr: SocketAddr,
    pub(crate) queue: RefCell<PeerQueue>,
    pub(crate) connected: Cell<bool>,
    /// The peer's answer on the current (or last) main connection said it takes
    /// durable-answer lanes.
    pub(crate) takes_lane: Cell<bool>,
    /// The durable-answer lane to this peer (open or not).
    pub(crate) lane: Arc<DurableLane>,
}

/// The peer transport of one core. Not `Send`: it lives and dies on its executor's thread.
pub struct PeerTransport {
    shared: Rc<Shared>,
    links: BTreeMap<NodeId, Rc<PeerLink>>,
    local_addr: SocketAddr,
    // Dropping a glommio `Task` cancels it: these stop with the transport.
    _accept_task: Task<()>,
    _writer_tasks: Vec<Task<()>>,
    /// Encodes frames for the durable-answer lanes (kept apart from the writers' encoders,
    /// which live in their tasks).
    lane_encoder: RefCell<PeerEncoder>,
}

impl PeerTransport {
    /// Binds the listener and starts the accept task and one writer task per peer (which
    /// connect at once and keep reconnecting). Must be called inside a glommio executor.
    ///
    /// Returns the transport and the receiver the core loop takes inbound batches from; it is
    /// bounded by `limits.inbound_batches_max`, and while it is full the transport stops
    /// reading sockets (TCP backpressure), so drain it every loop iteration.
    pub fn start(
        config: TransportConfig,
    ) -> Result<(PeerTransport, LocalReceiver<InboundBatch>), TransportError> {
        config.validate()?;
        let listener =
            TcpListener::bind(config.listen_addr).map_err(|error| TransportError::Bind {
                addr: config.listen_addr,
                source: error.into(),
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|error| TransportError::Bind {
                addr: config.listen_addr,
                source: error.into(),
            })?;
        let limits = config.limits;
        let (inbound_sender, inbound_receiver) =
            local_channel::new_bounded(limits.inbound_batches_max);
        let shared = Rc::new(Shared {
            local_node: config.local_node,
            cluster_id: config.cluster_id,
            limits,
            peers: config.peers.clone(),
            counters: Counters::default(),
            inbound_sender,
            inbound: RefCell::new(InboundRegistry::default()),
            quiet_report: RefCell::new(Vec::new()),
        });
        let lane_encoder =
            RefCell::new(PeerEncoder::new().with_frame_bytes_max(limits.frame_bytes_max));
        let links: BTreeMap<NodeId, Rc<PeerLink>> = config
            .peers
            .iter()
            .map(|(&node, &addr)| {
                let queue =
                    PeerQueue::new(limits.peer_queue_messages_max, limits.peer_queue_bytes_max);
                let link = PeerLink {
                    node,
                    addr,
                    queue: RefCell::new(queue),
                    connected: Cell::new(false),
                    takes_lane: Cell::new(false),
                    lane: Arc::new(DurableLane::new(node)),
                };
                (node, Rc::new(link))
            })
            .collect();
        let writer_tasks = links
            .values()
            .flat_map(|link| {
                [
                    glommio::spawn_local(run_writer(link.clone(), shared.clone())),
                    glommio::spawn_local(run_lane(link.clone(), shared.clone())),
                ]
            })
            .collect();
        let accept_task = glommio::spawn_local(accept_loop(listener, shared.clone()));
        let transport = PeerTransport {
            shared,
            links,
            local_addr,
            _accept_task: accept_task,
            _writer_tasks: writer_tasks,
            lane_encoder,
        };
        Ok((transport, inbound_receiver))
    }

    /// Sets the quiet report the main connections' frames carry from now on: the peers this
    /// node has not heard from lately (a receiving follower stops treating itself as spare
    /// where this node leads and reports a follower the commit waits for as quiet). Only this
    /// transport's peers are kept, sorted (at most [`QUIET_NODES_MAX`]: the configuration has
    /// no more peers than that).
    pub fn report_quiet(&self, nodes: impl IntoIterator<Item = NodeId>) {
        let mut report = self.shared.quiet_report.borrow_mut();
        report.clear();
        report.extend(
            nodes
                .into_iter()
                .filter(|node| self.shared.peers.contains_key(node)),
        );
        report.sort_unstable();
        report.dedup();
        assert!(
            report.len() <= QUIET_NODES_MAX,
            "validated: at most that many peers"
        );
        debug_assert!(is_canonical_quiet_report(&report, self.shared.local_node));
    }

    /// Queues `messages` for `to` without waiting; its writer sends them in as few frames as
    /// possible, in this order (within a frame, Heartbeat and HeartbeatResponse messages travel
    /// in compact arrays after the others: see [`crate::proto::peer::PeerEncoder::encode_batch`]).
    /// An empty `messages` asks for a node heartbeat (an empty frame; any frame to the peer
    /// serves as one, so it is skipped when messages go out anyway).
    ///
    /// Returns how many older queued messages were dropped to make room (also counted in
    /// [`TransportStats::messages_dropped_queue_full`]). Refuses, queueing nothing, a batch
    /// for an unknown peer or holding a message not addressed from this node to `to`.
    pub fn send(&self, to: NodeId, messages: Vec<Message>) -> Result<usize, SendError> {
        let link = self.links.get(&to).ok_or(SendError::UnknownPeer(to))?;
        let local = self.shared.local_node;
        if let Some(message) = messages
            .iter()
            .find(|message| message.from != local || message.to != to)
        {
            return Err(SendError::AddressMismatch {
                group: message.group,
                from: message.from,
                to: message.to,
                local,
                peer: to,
            });
        }
        let dropped = link.queue.borrow_mut().push(messages);
        add(&self.shared.counters.messages_dropped_queue_full, dropped);
        Ok(dropped)
    }

    /// Frames for the peers in `answers` whose durable-answer lane is open: each peer's
    /// messages as one frame, for the storage thread to write once the batch that released
    /// them is durable ([`LaneFrame`]). A peer without an open lane, or whose messages do not
    /// fit in one lane frame ([`LANE_FRAME_BYTES_MAX`]), is left out: its messages go through
    /// [`PeerTransport::send`] as usual. Call [`PeerTransport::lane_frames_sent`] with what
    /// the storage thread wrote.
    pub fn lane_frames(&self, answers: &BTreeMap<NodeId, Vec<Message>>) -> Vec<LaneFrame> {
        let local = self.shared.local_node;
        let mut encoder = self.lane_encoder.borrow_mut();
        let mut frames = Vec::new();
        for (peer, messages) in answers {
            let Some(link) = self.links.get(peer) else {
                continue;
            };
            if messages.is_empty() || !link.lane.is_open() {
                continue;
            }
            if let Ok(encoded) = encoder.encode_batch(local, *peer, messages) {
                if encoded.messages_encoded == messages.len()
                    && encoded.frame.len() <= LANE_FRAME_BYTES_MAX
                {
                    frames.push(LaneFrame {
                        lane: link.lane.clone(),
                        frame: encoded.frame.to_vec(),
                        messages: messages.len(),
                    });
                }
            }
        }
        frames
    }

    /// Counts the lane frames the storage thread wrote (`sent`, as returned by
    /// [`LaneFrame`]'s sends) with the other sent frames.
    pub fn lane_frames_sent(&self, sent: &[(NodeId, usize, usize)]) {
        let counters = &self.shared.counters;
        for &(_peer, messages, bytes) in sent {
            add(&counters.frames_sent, 1);
            add(&counters.messages_sent, messages);
            add(&counters.bytes_sent, bytes);
            add(&counters.lane_frames_sent, 1);
            add(&counters.lane_messages_sent, messages);
        }
    }

    /// The counters since start.
    pub fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    /// The address the listener is bound to (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn local_node(&self) -> NodeId {
        self.shared.local_node
    }

    /// The configured peers, ascending.
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.links.keys().copied()
    }

    /// True while the writer to `peer` holds a connection whose handshake the peer answered.
    /// False for an unknown peer.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.links
            .get(&peer)
            .is_some_and(|link| link.connected.get())
    }

    /// Messages waiting for `peer`'s writer (0 for an unknown peer).
    pub fn queued_messages(&self, peer: NodeId) -> usize {
        self.links
            .get(&peer)
            .map_or(0, |link| link.queue.borrow().len())
    }
}

impl Drop for PeerTransport {
    fn drop(&mut self) {
        // The accept and writer tasks are cancelled as their `Task`s drop after this; the
        // inbound connection tasks are detached (they remove themselves when they end), so
        // cancel them here. Taken out first: cancelling must not happen inside the borrow.
        let tasks = self.shared.inbound.borrow_mut().take_all();
        for task in tasks {
            task.cancel();
        }
        // A storage thread may still hold a lane: close the sockets now, not when it lets go.
        for link in self.links.values() {
            link.lane.close();
        }
    }
}

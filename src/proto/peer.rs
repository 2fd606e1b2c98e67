//! The node-to-node codec (schemas/peer.fbs): Raft messages for one destination node in one
//! frame, and the connection handshake.
//!
//! Encoding reuses one flatbuffers builder per connection and writes the frame in place, length
//! prefix included. Decoding verifies the frame with bounded [`flatbuffers::VerifierOptions`]
//! and then checks everything the Raft core relies on (known enum values, required fields,
//! canonical configurations, contiguous entries, addresses) so that no peer, buggy or hostile,
//! can make the core panic. This module never touches a socket or Raft state.

use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer, VerifierOptions, WIPOffset};
use thiserror::Error;

use super::frame::{frame_body, FrameError};
use super::limits::{
    ENCODER_RETAINED_BYTES_MAX, FRAME_HEADER_BYTES, PEER_FRAME_BYTES_MAX, PEER_VERIFIER_TABLES_MAX,
    QUIET_NODES_MAX,
};
use super::{has_identifier, peer_fb as fb, verifier_options};
use crate::raft::{
    ConfState, Entry, EntryKind, GroupId, Index, Message, MessageBody, NodeId, SnapshotMeta, Term,
    NO_NODE,
};

/// The peer protocol version this build speaks. Bump it for any change a node of the previous
/// version cannot read; [`Handshake::check`] refuses other versions.
pub const PEER_PROTOCOL_VERSION: u32 = 1;

/// File identifier of handshake frames (batches carry "KPB1", the schema's own).
const HANDSHAKE_IDENTIFIER: &str = "KHS1";

const PEER_VERIFIER_OPTIONS: VerifierOptions =
    verifier_options(PEER_FRAME_BYTES_MAX, PEER_VERIFIER_TABLES_MAX);

/// Upper bounds of encoded sizes, used to split batches before building: a message's fixed
/// part (RaftMessage and body tables, their vtables, alignment, its vector slot), per entry
/// (table, vtable, data vector header, alignment, vector slot), per snapshot (meta and
/// configuration tables and vectors), per batch (root table, vectors, prefix, identifier).
/// `tests/proto_peer.rs` checks the bounds hold for generated messages.
const MESSAGE_BYTES_BOUND: usize = 160;
const ENTRY_BYTES_BOUND: usize = 72;
const SNAPSHOT_BYTES_BOUND: usize = 192;
const BATCH_BYTES_BOUND: usize = 128;
const HEARTBEAT_BYTES: usize = 32;
const HEARTBEAT_RESPONSE_BYTES: usize = 24;
/// A quiet report's vector besides its ids: the field's offset (4) and vtable slot (2), the
/// vector's length (4), and up to 7 bytes of alignment padding before 8-byte ids (17; 24 for
/// margin).
const QUIET_REPORT_BYTES_BOUND: usize = 24;

/// Errors of encoding; all are caller bugs or over-limit input, none depends on the network.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PeerEncodeError {
    /// One message alone would exceed the frame limit (an append larger than the transport can
    /// carry: lower `append_bytes_max` or `snapshot_chunk_bytes`).
    #[error(
        "message for group {group} needs up to {bytes} bytes, over the {max}-byte frame limit"
    )]
    MessageTooLarge {
        group: GroupId,
        bytes: usize,
        max: usize,
    },
    #[error("batch addresses must be non-zero and distinct: from {from_node} to {to_node}")]
    InvalidNodeId { from_node: NodeId, to_node: NodeId },
    #[error("message of group {group} is from {from} to {to}, but the batch is from {from_node} to {to_node}")]
    AddressMismatch {
        group: GroupId,
        from: NodeId,
        to: NodeId,
        from_node: NodeId,
        to_node: NodeId,
    },
    #[error("snapshot configuration of group {group} is not canonical (sorted, unique, disjoint, non-zero)")]
    NonCanonicalConfState { group: GroupId },
    /// The receiver would refuse it (see [`PeerDecodeError::NonContiguousEntries`]).
    #[error("append of group {group} after {prev_index}/{prev_term} holds a non-contiguous entry {index}/{term}")]
    NonContiguousEntries {
        group: GroupId,
        prev_index: Index,
        prev_term: Term,
        index: Index,
        term: Term,
    },
}

/// Why a received frame was refused. Any of these should close the connection (logging the
/// reason); the frame must not be partly applied.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PeerDecodeError {
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("not a {expected} frame (file identifier mismatch)")]
    WrongIdentifier { expected: &'static str },
    #[error("flatbuffers verification failed: {0}")]
    Invalid(#[from] InvalidFlatbuffer),
    #[error("batch addresses must be non-zero and distinct: from {from_node} to {to_node}")]
    InvalidNodeId { from_node: NodeId, to_node: NodeId },
    #[error("message of group {group} is from {from} to {to}, but the batch is from {from_node} to {to_node}")]
    AddressMismatch {
        group: GroupId,
        from: NodeId,
        to: NodeId,
        from_node: NodeId,
        to_node: NodeId,
    },
    #[error("message of group {group} has no body")]
    MissingBody { group: GroupId },
    #[error("message of group {group} has unknown body type {tag}")]
    UnknownBody { group: GroupId, tag: u8 },
    #[error("entry {index} of group {group} has unknown kind {kind}")]
    UnknownEntryKind {
        group: GroupId,
        index: Index,
        kind: u8,
    },
    #[error("append of group {group} after {prev_index}/{prev_term} holds a non-contiguous entry {index}/{term}")]
    NonContiguousEntries {
        group: GroupId,
        prev_index: Index,
        prev_term: Term,
        index: Index,
        term: Term,
    },
    #[error("snapshot configuration of group {group} is not canonical (sorted, unique, disjoint, non-zero)")]
    NonCanonicalConfState { group: GroupId },
    #[error("handshake names unknown connection lane {lane}")]
    UnknownLane { lane: u8 },
    #[error("quiet report of {count} node(s) is not canonical (sorted, unique, non-zero, not the sender, at most {max})")]
    NonCanonicalQuietReport { count: usize, max: usize },
}

/// Why a handshake is refused; the connection is closed with this as the logged reason.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("peer belongs to cluster {received:#x}, this node to cluster {expected:#x}")]
    WrongCluster { expected: u64, received: u64 },
    #[error("peer speaks protocol version {received}, this node speaks {supported}")]
    UnsupportedVersion { received: u32, supported: u32 },
    #[error("peer announced node id 0")]
    InvalidNodeId,
    #[error("peer expected to reach node {expected}, but this is node {local}")]
    WrongNode { expected: NodeId, local: NodeId },
    #[error("peer claims this node's own id {local}")]
    SelfConnection { local: NodeId },
}

/// The first frame each side sends on a peer connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub protocol_version: u32,
    pub cluster_id: u64,
    /// The sender.
    pub node_id: NodeId,
    /// The node the sender means to reach, or [`NO_NODE`] when it does not know.
    pub to_node_id: NodeId,
    /// The dialer's: what the connection carries.
    pub lane: Lane,
    /// The acceptor's answer on a main connection: it takes [`Lane::DurableAnswers`].
    pub accepts_durable_lane: bool,
}

/// What a peer connection carries (chosen by its dialer, in its handshake).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Everything the core sends the peer.
    Main,
    /// Only messages that may leave once a write is durable (acknowledgements, votes), written
    /// by the core's storage thread right after its sync: the core's reactor does not have to
    /// wake for them first. Any of them may also travel on the main connection.
    DurableAnswers,
}

impl Lane {
    fn to_wire(self) -> u8 {
        match self {
            Lane::Main => 0,
            Lane::DurableAnswers => 1,
        }
    }

    fn from_wire(value: u8) -> Option<Lane> {
        match value {
            0 => Some(Lane::Main),
            1 => Some(Lane::DurableAnswers),
            _ => None,
        }
    }
}

impl Handshake {
    /// A handshake of this build's protocol version.
    pub fn new(cluster_id: u64, node_id: NodeId, to_node_id: NodeId) -> Handshake {
        Handshake {
            protocol_version: PEER_PROTOCOL_VERSION,
            cluster_id,
            node_id,
            to_node_id,
            lane: Lane::Main,
            accepts_durable_lane: false,
        }
    }

    /// Checks a received handshake against this node's cluster and id.
    pub fn check(&self, cluster_id: u64, local_node_id: NodeId) -> Result<(), HandshakeError> {
        if self.cluster_id != cluster_id {
            return Err(HandshakeError::WrongCluster {
                expected: cluster_id,
                received: self.cluster_id,
            });
        }
        if self.protocol_version != PEER_PROTOCOL_VERSION {
            return Err(HandshakeError::UnsupportedVersion {
                received: self.protocol_version,
                supported: PEER_PROTOCOL_VERSION,
            });
        }
        if self.node_id == NO_NODE {
            return Err(HandshakeError::InvalidNodeId);
        }
        if self.node_id == local_node_id {
            return Err(HandshakeError::SelfConnection {
                local: local_node_id,
            });
        }
        if self.to_node_id != NO_NODE && self.to_node_id != local_node_id {
            return Err(HandshakeError::WrongNode {
                expected: self.to_node_id,
                local: local_node_id,
            });
        }
        Ok(())
    }
}

/// A decoded batch: every message is from `from_node` to `to_node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerBatch {
    pub from_node: NodeId,
    pub to_node: NodeId,
    /// In delivery order: see [`PeerEncoder::encode_batch`].
    pub messages: Vec<Message>,
    /// The sender's quiet report: the peers it has not heard from lately (sorted, unique).
    /// `None`: the frame carries no report (a durable-answer lane frame, or an older sender),
    /// which says nothing about any node.
    pub quiet_nodes: Option<Vec<NodeId>>,
}

/// An upper bound of the bytes of a batch with no messages and a quiet report of
/// `quiet_nodes` nodes: the least a frame limit must allow.
pub const fn empty_batch_bytes_bound(quiet_nodes: usize) -> usize {
    BATCH_BYTES_BOUND + QUIET_REPORT_BYTES_BOUND + quiet_nodes * std::mem::size_of::<NodeId>()
}

/// Whether `nodes` may be a quiet report of `sender`: sorted, unique, without 0 or `sender`,
/// at most [`QUIET_NODES_MAX`].
pub fn is_canonical_quiet_report(nodes: &[NodeId], sender: NodeId) -> bool {
    nodes.len() <= QUIET_NODES_MAX
        && nodes.windows(2).all(|pair| pair[0] < pair[1])
        && nodes.first() != Some(&NO_NODE)
        && nodes.binary_search(&sender).is_err()
}

/// What [`PeerEncoder::encode_batch`] produced: one complete frame, and how many of the given
/// messages it holds (a prefix; encode the rest into further frames).
#[derive(Debug)]
pub struct EncodedBatch<'a> {
    /// The frame, length prefix included, ready to write to the socket.
    pub frame: &'a [u8],
    pub messages_encoded: usize,
}

/// An upper bound of the bytes `message` takes in a batch frame.
pub fn message_bytes_bound(message: &Message) -> usize {
    match &message.body {
        MessageBody::Append { entries, .. } => {
            let data: usize = entries.iter().map(|entry| entry.data.len()).sum();
            MESSAGE_BYTES_BOUND + entries.len() * ENTRY_BYTES_BOUND + data
        }
        MessageBody::InstallSnapshot { meta, data, .. } => {
            let members = meta.conf_state.voters.len() + meta.conf_state.learners.len();
            MESSAGE_BYTES_BOUND + SNAPSHOT_BYTES_BOUND + members * 8 + data.len()
        }
        _ => MESSAGE_BYTES_BOUND,
    }
}

/// Builds peer frames. Keep one per connection: it reuses its buffer between frames (up to
/// [`ENCODER_RETAINED_BYTES_MAX`]).
pub struct PeerEncoder {
    builder: FlatBufferBuilder<'static>,
    coalesce_heartbeats: bool,
    frame_bytes_max: usize,
    /// Size of the last frame built: the buffer has at least this capacity.
    last_frame_bytes: usize,
    /// Scratch space, reused between frames.
    entry_offsets: Vec<WIPOffset<fb::Entry<'static>>>,
    message_offsets: Vec<WIPOffset<fb::RaftMessage<'static>>>,
    heartbeats: Vec<fb::GroupHeartbeat>,
    heartbeat_responses: Vec<fb::GroupHeartbeatResponse>,
    /// The quiet report every frame carries (see [`PeerEncoder::set_quiet_report`]).
    quiet_report: Option<Vec<NodeId>>,
}

impl Default for PeerEncoder {
    fn default() -> PeerEncoder {
        PeerEncoder::new()
    }
}

impl PeerEncoder {
    /// An encoder that coalesces heartbeats, with the frame limit [`PEER_FRAME_BYTES_MAX`].
    pub fn new() -> PeerEncoder {
        PeerEncoder {
            builder: FlatBufferBuilder::with_capacity(4096),
            coalesce_heartbeats: true,
            frame_bytes_max: PEER_FRAME_BYTES_MAX,
            last_frame_bytes: 0,
            entry_offsets: Vec::new(),
            message_offsets: Vec::new(),
            heartbeats: Vec::new(),
            heartbeat_responses: Vec::new(),
            quiet_report: None,
        }
    }

    /// Sets the quiet report the following frames carry (`None`: none, the default). The
    /// caller keeps it canonical for its node ([`is_canonical_quiet_report`]); the encoder
    /// checks only the bound, which keeps its frame size bounds true: an empty batch with the
    /// largest report fits in the smallest frame limit.
    pub fn set_quiet_report(&mut self, report: Option<&[NodeId]>) {
        let nodes = report.map_or(0, <[NodeId]>::len);
        assert!(
            nodes <= QUIET_NODES_MAX && empty_batch_bytes_bound(nodes) <= self.frame_bytes_max,
            "a quiet report of {nodes} nodes in frames of at most {} bytes",
            self.frame_bytes_max
        );
        match (report, &mut self.quiet_report) {
            (Some(nodes), Some(kept)) => {
                kept.clear();
                kept.extend_from_slice(nodes);
            }
            (Some(nodes), kept) => *kept = Some(nodes.to_vec()),
            (None, kept) => *kept = None,
        }
    }

    /// With `false`, heartbeats travel as ordinary messages and the receiver gets every message
    /// in exactly the order given (costs about 100 bytes more per heartbeat).
    pub fn with_coalesced_heartbeats(mut self, coalesce: bool) -> PeerEncoder {
        self.coalesce_heartbeats = coalesce;
        self
    }

    /// A smaller frame limit than [`PEER_FRAME_BYTES_MAX`] (tests use it to exercise splitting).
    pub fn with_frame_bytes_max(mut self, frame_bytes_max: usize) -> PeerEncoder {
        assert!(
            frame_bytes_max <= PEER_FRAME_BYTES_MAX,
            "frame_bytes_max {frame_bytes_max} over the protocol limit"
        );
        let quiet = self.quiet_report.as_ref().map_or(0, Vec::len);
        assert!(
            empty_batch_bytes_bound(quiet) <= frame_bytes_max,
            "frame_bytes_max {frame_bytes_max} below a batch with the quiet report"
        );
        self.frame_bytes_max = frame_bytes_max;
        self
    }

    /// Encodes the longest prefix of `messages` that surely fits in one frame (at least one
    /// message when there is any) into one frame for `to_node`.
    ///
    /// Delivery order: with coalescing (the default) Heartbeat and HeartbeatResponse messages
    /// travel in compact per-group arrays, and the receiver gets the other messages in their
    /// order, then the heartbeats, then the heartbeat responses. Raft does not depend on the
    /// order of messages within a frame; without coalescing the order is exactly kept.
    pub fn encode_batch(
        &mut self,
        from_node: NodeId,
        to_node: NodeId,
        messages: &[Message],
    ) -> Result<EncodedBatch<'_>, PeerEncodeError> {
        if from_node == NO_NODE || to_node == NO_NODE || from_node == to_node {
            return Err(PeerEncodeError::InvalidNodeId { from_node, to_node });
        }
        let count = self.fitting_prefix(from_node, to_node, messages)?;
        self.start_frame();
        for message in &messages[..count] {
            self.push_message(message);
        }
        let builder = &mut self.builder;
        let messages_vector = builder.create_vector(&self.message_offsets);
        let heartbeats_vector = builder.create_vector(&self.heartbeats);
        let responses_vector = builder.create_vector(&self.heartbeat_responses);
        let quiet_vector = self
            .quiet_report
            .as_deref()
            .map(|nodes| builder.create_vector(nodes));
        let root = fb::PeerBatch::create(
            builder,
            &fb::PeerBatchArgs {
                from_node,
                to_node,
                messages: Some(messages_vector),
                heartbeats: Some(heartbeats_vector),
                heartbeat_responses: Some(responses_vector),
                quiet_nodes: quiet_vector,
            },
        );
        fb::finish_size_prefixed_peer_batch_buffer(builder, root);
        let frame = builder.finished_data();
        self.last_frame_bytes = frame.len();
        assert!(
            frame.len() <= FRAME_HEADER_BYTES + self.frame_bytes_max,
            "encoded {} bytes for {count} messages, over the {}-byte limit: a size bound is wrong",
            frame.len(),
            self.frame_bytes_max
        );
        Ok(EncodedBatch {
            frame,
            messages_encoded: count,
        })
    }

    /// A handshake frame (length prefix included).
    pub fn encode_handshake(&mut self, handshake: &Handshake) -> &[u8] {
        self.start_frame();
        let builder = &mut self.builder;
        let root = fb::Handshake::create(
            builder,
            &fb::HandshakeArgs {
                protocol_version: handshake.protocol_version,
                cluster_id: handshake.cluster_id,
                node_id: handshake.node_id,
                to_node_id: handshake.to_node_id,
                lane: handshake.lane.to_wire(),
                accepts_durable_lane: handshake.accepts_durable_lane,
            },
        );
        builder.finish_size_prefixed(root, Some(HANDSHAKE_IDENTIFIER));
        self.last_frame_bytes = builder.finished_data().len();
        builder.finished_data()
    }

    /// Checks every message's addresses and configuration, and counts how many fit.
    fn fitting_prefix(
        &self,
        from_node: NodeId,
        to_node: NodeId,
        messages: &[Message],
    ) -> Result<usize, PeerEncodeError> {
        let base = empty_batch_bytes_bound(self.quiet_report.as_ref().map_or(0, Vec::len));
        let mut bytes = base;
        for (position, message) in messages.iter().enumerate() {
            check_message_for_encoding(message, from_node, to_node)?;
            let message_bytes = match message.body {
                MessageBody::Heartbeat { .. } if self.coalesce_heartbeats => HEARTBEAT_BYTES,
                MessageBody::HeartbeatResponse { .. } if self.coalesce_heartbeats => {
                    HEARTBEAT_RESPONSE_BYTES
                }
                _ => message_bytes_bound(message),
            };
            bytes = bytes.saturating_add(message_bytes);
            if bytes > self.frame_bytes_max {
                if position == 0 {
                    return Err(PeerEncodeError::MessageTooLarge {
                        group: message.group,
                        bytes: base + message_bytes,
                        max: self.frame_bytes_max,
                    });
                }
                return Ok(position);
            }
        }
        Ok(messages.len())
    }

    fn start_frame(&mut self) {
        if self.last_frame_bytes > ENCODER_RETAINED_BYTES_MAX {
            self.builder = FlatBufferBuilder::with_capacity(4096);
        } else {
            self.builder.reset();
        }
        clear_bounded(&mut self.entry_offsets);
        clear_bounded(&mut self.message_offsets);
        clear_bounded(&mut self.heartbeats);
        clear_bounded(&mut self.heartbeat_responses);
    }

    fn push_message(&mut self, message: &Message) {
        let (body_type, body) = match &message.body {
            MessageBody::Heartbeat { commit, read_seq } if self.coalesce_heartbeats => {
                self.heartbeats.push(fb::GroupHeartbeat::new(
                    message.group,
                    message.term,
                    *commit,
                    *read_seq,
                ));
                return;
            }
            MessageBody::HeartbeatResponse { read_seq } if self.coalesce_heartbeats => {
                self.heartbeat_responses
                    .push(fb::GroupHeartbeatResponse::new(
                        message.group,
                        message.term,
                        *read_seq,
                    ));
                return;
            }
            body => self.push_body(body),
        };
        let offset = fb::RaftMessage::create(
            &mut self.builder,
            &fb::RaftMessageArgs {
                group: message.group,
                from: message.from,
                to: message.to,
                term: message.term,
                body_type,
                body: Some(body),
            },
        );
        self.message_offsets.push(offset);
    }

    fn push_body(
        &mut self,
        body: &MessageBody,
    ) -> (fb::Body, WIPOffset<flatbuffers::UnionWIPOffset>) {
        let builder = &mut self.builder;
        match body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => {
                let args = fb::PreVoteArgs {
                    last_index: *last_index,
                    last_term: *last_term,
                };
                (
                    fb::Body::PreVote,
                    fb::PreVote::create(builder, &args).as_union_value(),
                )
            }
            MessageBody::PreVoteResponse { reject } => {
                let args = fb::PreVoteResponseArgs { reject: *reject };
                (
                    fb::Body::PreVoteResponse,
                    fb::PreVoteResponse::create(builder, &args).as_union_value(),
                )
            }
            MessageBody::Vote {
                last_index,
                last_term,
                force,
            } => {
                let args = fb::VoteArgs {
                    last_index: *last_index,
                    last_term: *last_term,
                    force: *force,
                };
                (
                    fb::Body::Vote,
                    fb::Vote::create(builder, &args).as_union_value(),
                )
            }
            MessageBody::VoteResponse { reject } => {
                let args = fb::VoteResponseArgs { reject: *reject };
                (
                    fb::Body::VoteResponse,
                    fb::VoteResponse::create(builder, &args).as_union_value(),
                )
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.entry_offsets.clear();
                for entry in entries {
                    let data = builder.create_vector(&entry.data[..]);
                    let args = fb::EntryArgs {
                        index: entry.index,
                        term: entry.term,
                        kind: fb::EntryKind(entry.kind as u8),
                        data: Some(data),
                    };
                    self.entry_offsets.push(fb::Entry::create(builder, &args));
                }
                let entries = builder.create_vector(&self.entry_offsets);
                let args = fb::AppendArgs {
                    prev_index: *prev_index,
                    prev_term: *prev_term,
                    commit: *commit,
                    entries: Some(entries),
                };
                (
                    fb::Body::Append,
                    fb::Append::create(builder, &args).as_union_value(),
                )
            }
            MessageBody::AppendResponse {
                reject,
                index,
                hint_index,
                hint_term,
            } => {
                let args = fb::AppendResponseArgs {
                    reject: *reject,
                    index: *index,
                    hint_index: *hint_index,
                    hint_term: *hint_term,
                };
                (
                    fb::Body::AppendResponse,
                    fb::AppendResponse::create(builder, &args).as_union_value(),
                )
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                let args = fb::HeartbeatArgs {
                    commit: *commit,
                    read_seq: *read_seq,
                };
                (
                    fb::Body::Heartbeat,
                    fb::Heartbeat::create(builder, &args).as_union_value(),
                )
            }
            MessageBody::HeartbeatResponse { read_seq } => {
                let args = fb::HeartbeatResponseArgs {
                    read_seq: *read_seq,
                };
                (
                    fb::Body::HeartbeatResponse,
                    fb::HeartbeatResponse::create(builder, &args).as_union_value(),
                )
            }
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } => {
                let voters = builder.create_vector(&meta.conf_state.voters[..]);
                let learners = builder.create_vector(&meta.conf_state.learners[..]);
                let conf_args = fb::ConfStateArgs {
                    voters: Some(voters),
                    learners: Some(learners),
                };
                let conf_state = fb::ConfState::create(builder, &conf_args);
                let meta_args = fb::SnapshotMetaArgs {
                    index: meta.index,
                    term: meta.term,
                    conf_state: Some(conf_state),
                };
                let meta = fb::SnapshotMeta::create(builder, &meta_args);
                let data = builder.create_vector(&data[..]);
                let args = fb::InstallSnapshotArgs {
                    meta: Some(meta),
                    offset: *offset,
                    data: Some(data),
                    done: *done,
                };
                (
                    fb::Body::InstallSnapshot,
                    fb::InstallSnapshot::create(builder, &args).as_union_value(),
                )
            }
            MessageBody::SnapshotResponse {
                snapshot_index,
                next_offset,
            } => {
                let args = fb::SnapshotResponseArgs {
                    snapshot_index: *snapshot_index,
                    next_offset: *next_offset,
                };
                (
                    fb::Body::SnapshotResponse,
                    fb::SnapshotResponse::create(builder, &args).as_union_value(),
                )
            }
            MessageBody::TimeoutNow => {
                let args = fb::TimeoutNowArgs {};
                (
                    fb::Body::TimeoutNow,
                    fb::TimeoutNow::create(builder, &args).as_union_value(),
                )
            }
        }
    }
}

fn check_message_for_encoding(
    message: &Message,
    from_node: NodeId,
    to_node: NodeId,
) -> Result<(), PeerEncodeError> {
    if message.from != from_node || message.to != to_node {
        return Err(PeerEncodeError::AddressMismatch {
            group: message.group,
            from: message.from,
            to: message.to,
            from_node,
            to_node,
        });
    }
    match &message.body {
        MessageBody::InstallSnapshot { meta, .. }
            if !is_canonical(&meta.conf_state.voters, &meta.conf_state.learners) =>
        {
            return Err(PeerEncodeError::NonCanonicalConfState {
                group: message.group,
            });
        }
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            ..
        } => {
            let positions = entries.iter().map(|entry| (entry.index, entry.term));
            if let Some((index, term)) = first_non_contiguous(*prev_index, *prev_term, positions) {
                return Err(PeerEncodeError::NonContiguousEntries {
                    group: message.group,
                    prev_index: *prev_index,
                    prev_term: *prev_term,
                    index,
                    term,
                });
            }
        }
        _ => {}
    }
    Ok(())
}

/// The first entry position that does not follow the one before it in an anchored append:
/// indexes go up by one from `prev_index`, terms never fall below `prev_term` or each other.
fn first_non_contiguous(
    prev_index: Index,
    prev_term: Term,
    positions: impl Iterator<Item = (Index, Term)>,
) -> Option<(Index, Term)> {
    let (mut last_index, mut last_term) = (prev_index, prev_term);
    for (index, term) in positions {
        if Some(index) != last_index.checked_add(1) || term < last_term {
            return Some((index, term));
        }
        (last_index, last_term) = (index, term);
    }
    None
}

/// Sorted, unique, disjoint, without [`NO_NODE`]: the invariant of [`ConfState`].
fn is_canonical(voters: &[NodeId], learners: &[NodeId]) -> bool {
    let strictly_ascending = |ids: &[NodeId]| ids.windows(2).all(|pair| pair[0] < pair[1]);
    strictly_ascending(voters)
        && strictly_ascending(learners)
        && !voters.contains(&NO_NODE)
        && !learners.contains(&NO_NODE)
        && learners.iter().all(|id| voters.binary_search(id).is_err())
}

/// Verifies and decodes a batch frame (length prefix included, as [`super::frame::FrameDecoder`]
/// hands it out). Entry and snapshot data are copied out, so the frame's buffer is not pinned by
/// entries that live on in a Raft log.
pub fn decode_batch(frame: &[u8]) -> Result<PeerBatch, PeerDecodeError> {
    frame_body(frame, PEER_FRAME_BYTES_MAX)?;
    if !has_identifier(frame, fb::PEER_BATCH_IDENTIFIER) {
        return Err(PeerDecodeError::WrongIdentifier {
            expected: "peer batch",
        });
    }
    let batch = fb::size_prefixed_root_as_peer_batch_with_opts(&PEER_VERIFIER_OPTIONS, frame)?;
    let (from_node, to_node) = (batch.from_node(), batch.to_node());
    if from_node == NO_NODE || to_node == NO_NODE || from_node == to_node {
        return Err(PeerDecodeError::InvalidNodeId { from_node, to_node });
    }
    let raft_messages = batch.messages().unwrap_or_default();
    let heartbeats = batch.heartbeats().unwrap_or_default();
    let responses = batch.heartbeat_responses().unwrap_or_default();
    let quiet_nodes = match batch.quiet_nodes() {
        None => None,
        Some(report) => {
            // The length first: a hostile report's ids are not copied.
            let nodes: Vec<NodeId> = if report.len() <= QUIET_NODES_MAX {
                report.iter().collect()
            } else {
                Vec::new()
            };
            if report.len() > QUIET_NODES_MAX || !is_canonical_quiet_report(&nodes, from_node) {
                return Err(PeerDecodeError::NonCanonicalQuietReport {
                    count: report.len(),
                    max: QUIET_NODES_MAX,
                });
            }
            Some(nodes)
        }
    };
    let mut messages = Vec::with_capacity(raft_messages.len() + heartbeats.len() + responses.len());
    for raft_message in raft_messages {
        messages.push(decode_message(raft_message, from_node, to_node)?);
    }
    for heartbeat in heartbeats {
        messages.push(Message {
            group: heartbeat.group(),
            from: from_node,
            to: to_node,
            term: heartbeat.term(),
            body: MessageBody::Heartbeat {
                commit: heartbeat.commit(),
                read_seq: heartbeat.read_seq(),
            },
        });
    }
    for response in responses {
        messages.push(Message {
            group: response.group(),
            from: from_node,
            to: to_node,
            term: response.term(),
            body: MessageBody::HeartbeatResponse {
                read_seq: response.read_seq(),
            },
        });
    }
    Ok(PeerBatch {
        from_node,
        to_node,
        messages,
        quiet_nodes,
    })
}

/// Verifies and decodes a handshake frame (length prefix included). Check it with
/// [`Handshake::check`] before accepting any batch on the connection.
pub fn decode_handshake(frame: &[u8]) -> Result<Handshake, PeerDecodeError> {
    frame_body(frame, PEER_FRAME_BYTES_MAX)?;
    if !has_identifier(frame, HANDSHAKE_IDENTIFIER) {
        return Err(PeerDecodeError::WrongIdentifier {
            expected: "handshake",
        });
    }
    let handshake =
        flatbuffers::size_prefixed_root_with_opts::<fb::Handshake>(&PEER_VERIFIER_OPTIONS, frame)?;
    let lane = Lane::from_wire(handshake.lane()).ok_or(PeerDecodeError::UnknownLane {
        lane: handshake.lane(),
    })?;
    Ok(Handshake {
        protocol_version: handshake.protocol_version(),
        cluster_id: handshake.cluster_id(),
        node_id: handshake.node_id(),
        to_node_id: handshake.to_node_id(),
        lane,
        accepts_durable_lane: handshake.accepts_durable_lane(),
    })
}

fn decode_message(
    message: fb::RaftMessage<'_>,
    from_node: NodeId,
    to_node: NodeId,
) -> Result<Message, PeerDecodeError> {
    let group = message.group();
    if message.from() != from_node || message.to() != to_node {
        return Err(PeerDecodeError::AddressMismatch {
            group,
            from: message.from(),
            to: message.to(),
            from_node,
            to_node,
        });
    }
    let body = decode_body(&message)?;
    Ok(Message {
        group,
        from: from_node,
        to: to_node,
        term: message.term(),
        body,
    })
}

fn decode_body(message: &fb::RaftMessage<'_>) -> Result<MessageBody, PeerDecodeError> {
    let group = message.group();
    let missing = || PeerDecodeError::MissingBody { group };
    let body = match message.body_type() {
        fb::Body::PreVote => {
            let body = message.body_as_pre_vote().ok_or_else(missing)?;
            MessageBody::PreVote {
                last_index: body.last_index(),
                last_term: body.last_term(),
            }
        }
        fb::Body::PreVoteResponse => {
            let body = message.body_as_pre_vote_response().ok_or_else(missing)?;
            MessageBody::PreVoteResponse {
                reject: body.reject(),
            }
        }
        fb::Body::Vote => {
            let body = message.body_as_vote().ok_or_else(missing)?;
            MessageBody::Vote {
                last_index: body.last_index(),
                last_term: body.last_term(),
                force: body.force(),
            }
        }
        fb::Body::VoteResponse => {
            let body = message.body_as_vote_response().ok_or_else(missing)?;
            MessageBody::VoteResponse {
                reject: body.reject(),
            }
        }
        fb::Body::Append => decode_append(group, message.body_as_append().ok_or_else(missing)?)?,
        fb::Body::AppendResponse => {
            let body = message.body_as_append_response().ok_or_else(missing)?;
            MessageBody::AppendResponse {
                reject: body.reject(),
                index: body.index(),
                hint_index: body.hint_index(),
                hint_term: body.hint_term(),
            }
        }
        fb::Body::Heartbeat => {
            let body = message.body_as_heartbeat().ok_or_else(missing)?;
            MessageBody::Heartbeat {
                commit: body.commit(),
                read_seq: body.read_seq(),
            }
        }
        fb::Body::HeartbeatResponse => {
            let body = message.body_as_heartbeat_response().ok_or_else(missing)?;
            MessageBody::HeartbeatResponse {
                read_seq: body.read_seq(),
            }
        }
        fb::Body::InstallSnapshot => decode_install_snapshot(
            group,
            message.body_as_install_snapshot().ok_or_else(missing)?,
        )?,
        fb::Body::SnapshotResponse => {
            let body = message.body_as_snapshot_response().ok_or_else(missing)?;
            MessageBody::SnapshotResponse {
                snapshot_index: body.snapshot_index(),
                next_offset: body.next_offset(),
            }
        }
        fb::Body::TimeoutNow => {
            message.body_as_timeout_now().ok_or_else(missing)?;
            MessageBody::TimeoutNow
        }
        fb::Body::NONE => return Err(missing()),
        fb::Body(tag) => return Err(PeerDecodeError::UnknownBody { group, tag }),
    };
    Ok(body)
}

fn decode_append(group: GroupId, append: fb::Append<'_>) -> Result<MessageBody, PeerDecodeError> {
    let (prev_index, prev_term) = (append.prev_index(), append.prev_term());
    let encoded = append.entries().unwrap_or_default();
    let positions = encoded.iter().map(|entry| (entry.index(), entry.term()));
    if let Some((index, term)) = first_non_contiguous(prev_index, prev_term, positions) {
        return Err(PeerDecodeError::NonContiguousEntries {
            group,
            prev_index,
            prev_term,
            index,
            term,
        });
    }
    // The entries' data share one allocation per message rather than one each (and a second
    // when an entry is first cloned): a message's entries are consecutive in one group's log,
    // so they are cut, written and applied together and the buffer lives about as long as
    // each of them would.
    let data_bytes: usize = encoded
        .iter()
        .map(|entry| entry.data().map_or(0, |data| data.len()))
        .sum();
    let mut buffer = BytesMut::with_capacity(data_bytes);
    let mut entries = Vec::with_capacity(encoded.len());
    for entry in encoded {
        let (index, term) = (entry.index(), entry.term());
        let kind = EntryKind::from_u8(entry.kind().0).ok_or(PeerDecodeError::UnknownEntryKind {
            group,
            index,
            kind: entry.kind().0,
        })?;
        let data = match entry.data() {
            Some(data) if !data.is_empty() => {
                buffer.extend_from_slice(data.bytes());
                buffer.split().freeze()
            }
            _ => Bytes::new(),
        };
        entries.push(Entry {
            index,
            term,
            kind,
            data,
        });
    }
    Ok(MessageBody::Append {
        prev_index,
        prev_term,
        entries,
        commit: append.commit(),
    })
}

fn decode_install_snapshot(
    group: GroupId,
    snapshot: fb::InstallSnapshot<'_>,
) -> Result<MessageBody, PeerDecodeError> {
    // `meta` and `conf_state` are required: the verifier has refused frames without them.
    let meta = snapshot.meta();
    let conf = meta.conf_state();
    let voters: Vec<NodeId> = conf
        .voters()
        .map(|ids| ids.iter().collect())
        .unwrap_or_default();
    let learners: Vec<NodeId> = conf
        .learners()
        .map(|ids| ids.iter().collect())
        .unwrap_or_default();
    if !is_canonical(&voters, &learners) {
        return Err(PeerDecodeError::NonCanonicalConfState { group });
    }
    let data = snapshot
        .data()
        .map(|data| Bytes::copy_from_slice(data.bytes()))
        .unwrap_or_default();
    Ok(MessageBody::InstallSnapshot {
        meta: SnapshotMeta {
            index: meta.index(),
            term: meta.term(),
            conf_state: ConfState { voters, learners },
        },
        offset: snapshot.offset(),
        data,
        done: snapshot.done(),
    })
}

/// Empties a scratch list, dropping its allocation if a burst grew it past
/// [`crate::proto::limits::SCRATCH_RETAINED_SLOTS_MAX`].
fn clear_bounded<T>(list: &mut Vec<T>) {
    if list.capacity() > crate::proto::limits::SCRATCH_RETAINED_SLOTS_MAX {
        *list = Vec::new();
    } else {
        list.clear();
    }
}

/// Frames no [`PeerEncoder`] would build, crafted with the generated builders, to prove the
/// decoder refuses each with its typed error.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_naming_an_unknown_lane_is_refused() {
        let mut builder = FlatBufferBuilder::new();
        let root = fb::Handshake::create(
            &mut builder,
            &fb::HandshakeArgs {
                protocol_version: PEER_PROTOCOL_VERSION,
                cluster_id: 7,
                node_id: 3,
                to_node_id: 1,
                lane: 9,
                accepts_durable_lane: false,
            },
        );
        builder.finish_size_prefixed(root, Some(HANDSHAKE_IDENTIFIER));
        assert_eq!(
            decode_handshake(builder.finished_data()),
            Err(PeerDecodeError::UnknownLane { lane: 9 })
        );
    }

    /// A batch from 1 to 2 with no messages and `quiet` as its quiet report.
    fn reporting(quiet: &[NodeId]) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let quiet_nodes = Some(builder.create_vector(quiet));
        let args = fb::PeerBatchArgs {
            from_node: 1,
            to_node: 2,
            quiet_nodes,
            ..Default::default()
        };
        let root = fb::PeerBatch::create(&mut builder, &args);
        fb::finish_size_prefixed_peer_batch_buffer(&mut builder, root);
        builder.finished_data().to_vec()
    }

    #[test]
    fn quiet_reports_that_are_not_canonical_are_refused() {
        let too_many: Vec<NodeId> = (3..3 + QUIET_NODES_MAX as u64 + 1).collect();
        for quiet in [&[4, 3][..], &[3, 3], &[0, 3], &[1], &too_many] {
            assert_eq!(
                decode_batch(&reporting(quiet)),
                Err(PeerDecodeError::NonCanonicalQuietReport {
                    count: quiet.len(),
                    max: QUIET_NODES_MAX
                }),
                "{quiet:?}"
            );
        }
        let most: Vec<NodeId> = (3..3 + QUIET_NODES_MAX as u64).collect();
        for quiet in [&[][..], &[2], &[2, 3], &most] {
            let batch = decode_batch(&reporting(quiet)).unwrap();
            assert_eq!(batch.quiet_nodes.as_deref(), Some(quiet));
        }
    }

    /// A batch from 1 to 2 holding one message built by `body`.
    fn crafted(
        message_from: NodeId,
        body: impl FnOnce(
            &mut FlatBufferBuilder<'static>,
        ) -> (fb::Body, Option<WIPOffset<flatbuffers::UnionWIPOffset>>),
    ) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let (body_type, body) = body(&mut builder);
        let message = fb::RaftMessage::create(
            &mut builder,
            &fb::RaftMessageArgs {
                group: 7,
                from: message_from,
                to: 2,
                term: 3,
                body_type,
                body,
            },
        );
        let messages = builder.create_vector(&[message]);
        let args = fb::PeerBatchArgs {
            from_node: 1,
            to_node: 2,
            messages: Some(messages),
            ..Default::default()
        };
        let root = fb::PeerBatch::create(&mut builder, &args);
        fb::finish_size_prefixed_peer_batch_buffer(&mut builder, root);
        builder.finished_data().to_vec()
    }

    fn timeout_now(
        builder: &mut FlatBufferBuilder<'static>,
    ) -> (fb::Body, Option<WIPOffset<flatbuffers::UnionWIPOffset>>) {
        (
            fb::Body::TimeoutNow,
            Some(fb::TimeoutNow::create(builder, &fb::TimeoutNowArgs {}).as_union_value()),
        )
    }

    fn append(
        entries: &[(Index, Term, u8)],
    ) -> impl FnOnce(
        &mut FlatBufferBuilder<'static>,
    ) -> (fb::Body, Option<WIPOffset<flatbuffers::UnionWIPOffset>>)
           + '_ {
        move |builder| {
            let offsets: Vec<_> = entries
                .iter()
                .map(|&(index, term, kind)| {
                    let args = fb::EntryArgs {
                        index,
                        term,
                        kind: fb::EntryKind(kind),
                        data: None,
                    };
                    fb::Entry::create(builder, &args)
                })
                .collect();
            let entries = builder.create_vector(&offsets);
            let args = fb::AppendArgs {
                prev_index: 10,
                prev_term: 2,
                commit: 9,
                entries: Some(entries),
            };
            (
                fb::Body::Append,
                Some(fb::Append::create(builder, &args).as_union_value()),
            )
        }
    }

    fn snapshot(
        voters: &[NodeId],
        learners: &[NodeId],
    ) -> impl FnOnce(
        &mut FlatBufferBuilder<'static>,
    ) -> (fb::Body, Option<WIPOffset<flatbuffers::UnionWIPOffset>>) {
        let (voters, learners) = (voters.to_vec(), learners.to_vec());
        move |builder| {
            let voters = builder.create_vector(&voters);
            let learners = builder.create_vector(&learners);
            let conf = fb::ConfState::create(
                builder,
                &fb::ConfStateArgs {
                    voters: Some(voters),
                    learners: Some(learners),
                },
            );
            let meta = fb::SnapshotMeta::create(
                builder,
                &fb::SnapshotMetaArgs {
                    index: 5,
                    term: 1,
                    conf_state: Some(conf),
                },
            );
            let args = fb::InstallSnapshotArgs {
                meta: Some(meta),
                offset: 0,
                data: None,
                done: true,
            };
            (
                fb::Body::InstallSnapshot,
                Some(fb::InstallSnapshot::create(builder, &args).as_union_value()),
            )
        }
    }

    #[test]
    fn a_crafted_valid_frame_decodes() {
        let batch = decode_batch(&crafted(1, timeout_now)).unwrap();
        assert_eq!(
            batch.messages,
            vec![Message {
                group: 7,
                from: 1,
                to: 2,
                term: 3,
                body: MessageBody::TimeoutNow
            }]
        );
        let batch = decode_batch(&crafted(1, append(&[(11, 2, 0), (12, 3, 2)]))).unwrap();
        assert!(
            matches!(&batch.messages[0].body, MessageBody::Append { entries, .. } if entries.len() == 2)
        );
    }

    #[test]
    fn unknown_and_missing_bodies_are_refused() {
        let unknown = crafted(1, |builder| (fb::Body(99), timeout_now(builder).1));
        assert_eq!(
            decode_batch(&unknown),
            Err(PeerDecodeError::UnknownBody { group: 7, tag: 99 })
        );
        let none = crafted(1, |_| (fb::Body::NONE, None));
        assert_eq!(
            decode_batch(&none),
            Err(PeerDecodeError::MissingBody { group: 7 })
        );
        // A type without its table is caught by the verifier already.
        let type_without_table = crafted(1, |_| (fb::Body::Vote, None));
        assert!(matches!(
            decode_batch(&type_without_table),
            Err(PeerDecodeError::Invalid(_))
        ));
    }

    #[test]
    fn a_message_not_from_the_batch_sender_is_refused() {
        let error = decode_batch(&crafted(3, timeout_now)).unwrap_err();
        assert_eq!(
            error,
            PeerDecodeError::AddressMismatch {
                group: 7,
                from: 3,
                to: 2,
                from_node: 1,
                to_node: 2
            }
        );
    }

    #[test]
    fn unknown_entry_kinds_are_refused() {
        let error = decode_batch(&crafted(1, append(&[(11, 2, 0), (12, 2, 3)]))).unwrap_err();
        assert_eq!(
            error,
            PeerDecodeError::UnknownEntryKind {
                group: 7,
                index: 12,
                kind: 3
            }
        );
    }

    #[test]
    fn non_contiguous_entries_are_refused() {
        let gap = decode_batch(&crafted(1, append(&[(11, 2, 0), (13, 2, 0)]))).unwrap_err();
        assert!(
            matches!(gap, PeerDecodeError::NonContiguousEntries { index: 13, .. }),
            "{gap:?}"
        );
        let not_anchored = decode_batch(&crafted(1, append(&[(10, 2, 0)]))).unwrap_err();
        assert!(matches!(
            not_anchored,
            PeerDecodeError::NonContiguousEntries { index: 10, .. }
        ));
        let falling_term = decode_batch(&crafted(1, append(&[(11, 1, 0)]))).unwrap_err();
        assert!(matches!(
            falling_term,
            PeerDecodeError::NonContiguousEntries { term: 1, .. }
        ));
    }

    #[test]
    fn non_canonical_configurations_are_refused() {
        let refused = PeerDecodeError::NonCanonicalConfState { group: 7 };
        for (voters, learners) in [
            (&[2u64, 1][..], &[][..]),
            (&[1, 1], &[]),
            (&[0, 1], &[]),
            (&[1, 2], &[2]),
            (&[1], &[3, 3]),
        ] {
            let frame = crafted(1, snapshot(voters, learners));
            assert_eq!(
                decode_batch(&frame),
                Err(refused.clone()),
                "{voters:?} {learners:?}"
            );
        }
        assert!(decode_batch(&crafted(1, snapshot(&[1, 2, 3], &[4]))).is_ok());
    }

    #[test]
    fn a_snapshot_without_its_required_meta_fails_verification() {
        // The generated builder refuses to omit a required field, so build the table by hand.
        let frame = crafted(1, |builder| {
            let start = builder.start_table();
            builder.push_slot::<u64>(fb::InstallSnapshot::VT_OFFSET, 1, 0);
            let table = builder.end_table(start);
            (
                fb::Body::InstallSnapshot,
                Some(WIPOffset::new(table.value())),
            )
        });
        assert!(matches!(
            decode_batch(&frame),
            Err(PeerDecodeError::Invalid(_))
        ));
    }

    #[test]
    fn batch_addresses_must_be_valid() {
        let mut builder = FlatBufferBuilder::new();
        let root = fb::PeerBatch::create(
            &mut builder,
            &fb::PeerBatchArgs {
                from_node: 4,
                to_node: 4,
                ..Default::default()
            },
        );
        fb::finish_size_prefixed_peer_batch_buffer(&mut builder, root);
        let error = decode_batch(builder.finished_data()).unwrap_err();
        assert_eq!(
            error,
            PeerDecodeError::InvalidNodeId {
                from_node: 4,
                to_node: 4
            }
        );
    }

    #[test]
    fn frames_nested_deeper_than_the_limit_fail_verification() {
        let options = VerifierOptions {
            max_depth: 2,
            ..PEER_VERIFIER_OPTIONS
        };
        let frame = crafted(1, snapshot(&[1], &[]));
        let result = fb::size_prefixed_root_as_peer_batch_with_opts(&options, &frame);
        assert!(
            matches!(result, Err(InvalidFlatbuffer::DepthLimitReached)),
            "{result:?}"
        );
        assert!(
            fb::size_prefixed_root_as_peer_batch_with_opts(&PEER_VERIFIER_OPTIONS, &frame).is_ok()
        );
    }
}

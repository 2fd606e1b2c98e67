//! Every size limit of the wire protocols, in one place (TigerBeetle style: a limit on
//! everything, named `*_max`, checked at compile time where possible).
//!
//! This module owns the numbers only; the framing, the codecs and the server enforce them.
//! Raising a limit is a protocol change for every node and client: both ends must agree.

/// Bytes of the length prefix in front of every frame (u32, little-endian, body bytes only).
pub const FRAME_HEADER_BYTES: usize = 4;

/// Largest body of a node-to-node frame. It must hold one append of `append_bytes_max`
/// (raft::Config, 1 MiB by default) or one snapshot chunk (256 KiB by default) with room to
/// spare; the encoder splits a larger batch over several frames.
pub const PEER_FRAME_BYTES_MAX: usize = 16 << 20;

/// Most nodes a peer frame's quiet report may name (`PeerBatch::quiet_nodes`), and so the most
/// peers a node may have (a report may name every one): 2 KiB of ids, which with the batch's
/// own bound fits the smallest frame limit a transport takes (4 KiB).
pub const QUIET_NODES_MAX: usize = 256;

/// Largest body of a client frame, request or response.
pub const CLIENT_FRAME_BYTES_MAX: usize = 4 << 20;

/// Largest key a client may write or read.
pub const KEY_BYTES_MAX: usize = 4 << 10;

/// Largest value a client may write.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// Largest continuation token of a scan (it holds a key and a little bookkeeping).
pub const CONTINUATION_BYTES_MAX: usize = KEY_BYTES_MAX + 64;

/// Items in one scan page when the request says 0, and the most a request may ask for
/// (larger asks are clamped).
pub const SCAN_PAGE_ITEMS_DEFAULT: u32 = 100;
pub const SCAN_PAGE_ITEMS_MAX: u32 = 1_000;

/// Bytes of keys and values in one scan page; the server ends a page early to stay below.
pub const SCAN_PAGE_BYTES_MAX: usize = 2 << 20;

/// Requests one client connection may have in flight; beyond it the node answers
/// TooManyInFlight instead of queueing.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1_024;

/// Flatbuffers verifier bounds. Depth counts nested tables: the deepest legal peer frame is
/// PeerBatch > RaftMessage > InstallSnapshot > SnapshotMeta > ConfState (5), the deepest client
/// frame Response > StatusResult > NodeAddress (3).
pub const VERIFIER_DEPTH_MAX: usize = 8;

/// Tables in one peer frame. A legal frame has at most one table per 4 bytes, so this bounds
/// verification work well below what the byte limit alone would allow for adversarial input.
pub const PEER_VERIFIER_TABLES_MAX: usize = 1 << 20;

/// Tables in one client frame (a status answer lists every partition of the node: 10,000 and up).
pub const CLIENT_VERIFIER_TABLES_MAX: usize = 1 << 17;

/// The verifier counts every byte range it checks, shared vtables once per table using them,
/// so a legal frame's "apparent size" is a small multiple of its length; this factor bounds it.
pub const VERIFIER_APPARENT_SIZE_FACTOR_MAX: usize = 4;

/// An encoder keeps its buffer between frames; after a frame larger than this it drops the
/// buffer instead, so one large snapshot chunk does not pin its memory for the connection's life.
pub const ENCODER_RETAINED_BYTES_MAX: usize = 1 << 20;

/// A frame decoder keeps its buffer between frames; after a frame larger than this it lets the
/// buffer go with the frame, so a burst (thousands of groups electing at once send frames of
/// megabytes) does not pin its memory for the connection's life.
pub const DECODER_RETAINED_BYTES_MAX: usize = 256 << 10;

/// Scratch lists (an encoder's offsets, a peer queue) keep up to this many slots between uses;
/// beyond it they are dropped once empty, for the same reason.
pub const SCRATCH_RETAINED_SLOTS_MAX: usize = 1024;

const _: () =
    assert!(PEER_FRAME_BYTES_MAX <= u32::MAX as usize / VERIFIER_APPARENT_SIZE_FACTOR_MAX);
const _: () = assert!(CLIENT_FRAME_BYTES_MAX <= PEER_FRAME_BYTES_MAX);
// A request carrying the largest key and value fits in a frame with room for the envelope.
const _: () = assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX + 4096 <= CLIENT_FRAME_BYTES_MAX);
// A full scan page fits in a response frame.
const _: () = assert!(
    SCAN_PAGE_BYTES_MAX + SCAN_PAGE_ITEMS_MAX as usize * 64 + CONTINUATION_BYTES_MAX + 4096
        <= CLIENT_FRAME_BYTES_MAX
);
const _: () = assert!(SCAN_PAGE_ITEMS_DEFAULT <= SCAN_PAGE_ITEMS_MAX);
// A scan page may always hold at least one item of the largest size.
const _: () = assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX <= SCAN_PAGE_BYTES_MAX);
const _: () = assert!(ENCODER_RETAINED_BYTES_MAX <= PEER_FRAME_BYTES_MAX);

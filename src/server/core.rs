//! One core of a node: its shard of Raft groups, its storage writer, its peer transport and its
//! client requests, all on one glommio executor. The loop: feed what arrived into the shard,
//! tick on the timer, collect ONE batch for every group with work, send the leader's messages,
//! answer the clients whose entries that collect applied (committed entries are durable on a
//! majority; the apply is deterministic), and hand the batch to the core's writer task, which
//! writes it off the reactor (one sync), then releases what waited for durability: messages
//! sent only once durable, and reads whose read point is now written.
//! Up to two batches are in flight (`PIPELINE_DEPTH`): while they are written, the core keeps
//! serving (client requests are proposed, peer messages stepped into the groups) and the next
//! collect takes everything that arrived meanwhile, messages to send included (group commit).
//! The second batch's write waits on a pool thread for the first's and follows it into the
//! engine at once; both are finished here in collect order.
//!
//! Per-core state is `Rc<RefCell<..>>`; no borrow is ever held across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use super::clients::DirectReply;
use super::storage_writer::{StorageWriter, Written};
use crate::kv::{Completion, Fetch, Fetched, KvMachine, Outcome};
use crate::raft::{GroupId, Index, NodeId, RaftError, Role, Snapshot, Term};
use crate::shard::{CompactionPolicy, Shard, ShardBatch, ShardError};
use crate::transport::PeerTransport;

/// How long a client waits for its write to apply before the node answers Timeout.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The result a waiting client gets for its proposal.
#[derive(Debug, Clone)]
pub enum WriteResult {
    Applied(Outcome),
    /// The entry at that index was replaced (leadership changed): the write did not apply
    /// there; a retry with the same session sequence is safe.
    Lost,
}

/// A ReadIndex request waiting for its read point: answered with `Some(index)` once applied,
/// `None` when leadership was lost.
type ReadWaiter = (GroupId, LocalSender<Option<Index>>);

struct Waiter {
    term: Term,
    reply: Reply,
}

/// Where a proposal's result goes.
enum Reply {
    /// A task in `propose_and_wait`, which keeps its own deadline.
    Task(LocalSender<WriteResult>),
    /// Straight into a client connection's answers, with no task behind it (see
    /// `clients::write_here`); its deadline is in `CoreState::deadlines`.
    Direct(DirectReply),
}

impl Reply {
    fn deliver(self, result: WriteResult) {
        match self {
            // A task that gave up (timed out) dropped its receiver: nothing to tell it.
            Reply::Task(sender) => {
                let _ = sender.try_send(result);
            }
            Reply::Direct(reply) => reply.deliver(result),
        }
    }
}

/// When a direct waiter at `index` (proposed in `term`) times out.
type Deadline = (Instant, Index, Term);

/// What a core shares with its client handlers.
pub struct CoreState {
    pub core: usize,
    pub node: NodeId,
    pub shard: RefCell<Shard<KvMachine>>,
    pub storage: StorageWriter,
    pub transport: PeerTransport,
    waiters: RefCell<AHashMap<(GroupId, Index), Waiter>>,
    /// The direct waiters' deadlines, per group in proposal order (so in deadline order:
    /// `WRITE_TIMEOUT` is one constant). A record outlives its waiter (answered when its entry
    /// applied) until the sweep reaches it; a group applies in index order, so the records
    /// ahead of a live waiter are its own group's live ones, and a group's queue stays about
    /// as long as its waiters (groups whose queue empties are removed).
    deadlines: RefCell<AHashMap<GroupId, VecDeque<Deadline>>>,
    /// When the oldest peer frame with messages not yet taken by a collect arrived (for the
    /// follower-acknowledgement metric).
    received_at: Cell<Option<Instant>>,
    /// When the writer last wrote a batch, if storage may hold write buffers since the last
    /// release (see `release_idle_buffers`).
    written_since_release: Cell<Option<Instant>>,
    /// When the writer last wrote a batch, if the kv machine may hold groups loaded since the
    /// last unload (see `unload_idle_groups`).
    written_since_unload: Cell<Option<Instant>>,
    /// Groups whose leader wants an image read, in request order (see `start_snapshot_reads`).
    images_wanted: RefCell<VecDeque<GroupId>>,
    /// The core's image reader task is running; it drains `images_wanted`.
    image_reader_running: Cell<bool>,
    reads: RefCell<AHashMap<u64, ReadWaiter>>,
    next_read: RefCell<u64>,
    doorbell: LocalSender<()>,
}

impl CoreState {
    pub fn new(
        core: usize,
        node: NodeId,
        shard: Shard<KvMachine>,
        storage: StorageWriter,
        transport: PeerTransport,
    ) -> (Rc<CoreState>, LocalReceiver<()>) {
        let (doorbell, ring) = local_channel::new_bounded(1);
        let state = CoreState {
            core,
            node,
            shard: RefCell::new(shard),
            storage,
            transport,
            waiters: RefCell::new(AHashMap::new()),
            deadlines: RefCell::new(AHashMap::new()),
            received_at: Cell::new(None),
            written_since_release: Cell::new(None),
            written_since_unload: Cell::new(None),
            images_wanted: RefCell::new(VecDeque::new()),
            image_reader_running: Cell::new(false),
            reads: RefCell::new(AHashMap::new()),
            next_read: RefCell::new(1),
            doorbell,
        };
        (Rc::new(state), ring)
    }

    /// A peer frame with messages arrived (the loop will collect its answers).
    pub fn received_messages(&self) {
        if self.received_at.get().is_none() {
            self.received_at.set(Some(Instant::now()));
        }
    }

    /// Wakes the loop: there is work for the shard.
    pub fn ring(&self) {
        let _ = self.doorbell.try_send(());
    }

    /// Proposes `data` to `group` and waits until it applies (or is lost, or times out).
    /// `key` is the user key the command decides on: its stored revision is read while the
    /// entry replicates, so the apply does not wait for storage after the commit.
    pub async fn propose_and_wait(
        &self,
        group: GroupId,
        data: Bytes,
        key: &Bytes,
    ) -> Result<WriteResult, ProposeFailure> {
        let (index, term) = self.propose(group, data, key)?;
        let (sender, receiver) = local_channel::new_bounded(1);
        self.wait_for(group, index, term, Reply::Task(sender));
        let result =
            glommio::timer::timeout(WRITE_TIMEOUT, async { Ok(receiver.recv().await) }).await;
        // Still there only if it timed out (an answer removes it); a waiter of a later term at
        // the same index is another proposal's.
        let mut waiters = self.waiters.borrow_mut();
        if waiters.get(&(group, index)).is_some_and(|w| w.term == term) {
            waiters.remove(&(group, index));
        }
        drop(waiters);
        match result {
            Ok(Some(result)) => Ok(result),
            Ok(None) => Err(ProposeFailure::Refused("core stopped".into())),
            Err(_) => Err(ProposeFailure::Timeout),
        }
    }

    /// [`CoreState::propose_and_wait`] without a task: `reply` is handed the result when the
    /// entry applies, or a timeout after `WRITE_TIMEOUT` (the loop's tick sweeps the deadlines).
    /// Nothing is allocated per write here beyond the waiter's slot and its deadline record.
    /// A proposal refused gives `reply` back with the reason.
    pub fn propose_direct(
        &self,
        group: GroupId,
        data: Bytes,
        key: &Bytes,
        reply: DirectReply,
    ) -> Result<(), (ProposeFailure, DirectReply)> {
        let (index, term) = match self.propose(group, data, key) {
            Ok(proposed) => proposed,
            Err(failure) => return Err((failure, reply)),
        };
        self.wait_for(group, index, term, Reply::Direct(reply));
        self.deadlines
            .borrow_mut()
            .entry(group)
            .or_default()
            .push_back((Instant::now() + WRITE_TIMEOUT, index, term));
        Ok(())
    }

    /// Proposes `data` to `group` if this replica leads it; `key`'s stored revision is read
    /// while the entry replicates.
    fn propose(
        &self,
        group: GroupId,
        data: Bytes,
        key: &Bytes,
    ) -> Result<(Index, Term), ProposeFailure> {
        let (index, term) = {
            let mut shard = self.shard.borrow_mut();
            let raft = shard.raft(group).ok_or(ProposeFailure::UnknownGroup)?;
            if raft.role() != Role::Leader {
                return Err(ProposeFailure::NotLeader(raft.leader()));
            }
            let proposed = shard
                .propose(group, data)
                .map_err(|e| ProposeFailure::Refused(e.to_string()))?;
            shard.state_machine_mut().prefetch_hint(group, key);
            proposed
        };
        crate::metrics::stages::proposed(self.core, group, index);
        Ok((index, term))
    }

    /// Registers the waiter for the entry proposed at `index` in `term` and wakes the loop.
    /// A waiter already at that index belongs to an entry of an earlier term, which a new
    /// leader's log replaced: its write was lost.
    fn wait_for(&self, group: GroupId, index: Index, term: Term, reply: Reply) {
        let replaced = self
            .waiters
            .borrow_mut()
            .insert((group, index), Waiter { term, reply });
        if let Some(replaced) = replaced {
            assert!(
                replaced.term < term,
                "two proposals at one index in one term"
            );
            replaced.reply.deliver(WriteResult::Lost);
        }
        self.ring();
    }

    /// Answers Timeout to the direct waiters whose deadline passed, and drops the deadline
    /// records of waiters already answered.
    fn expire_direct_waiters(&self, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut deadlines = self.deadlines.borrow_mut();
            let mut waiters = self.waiters.borrow_mut();
            deadlines.retain(|&group, queue| {
                while let Some(&(deadline, index, term)) = queue.front() {
                    let live = waiters
                        .get(&(group, index))
                        .is_some_and(|w| w.term == term && matches!(w.reply, Reply::Direct(_)));
                    if live && deadline > now {
                        break;
                    }
                    queue.pop_front();
                    if live {
                        expired.extend(waiters.remove(&(group, index)));
                    }
                }
                !queue.is_empty()
            });
        }
        for waiter in expired {
            if let Reply::Direct(reply) = waiter.reply {
                reply.time_out();
            }
        }
    }

    /// Linearizable read point (ReadIndex): returns once this replica, confirmed leader by a
    /// quorum, has applied everything committed when the read arrived.
    pub async fn read_barrier(&self, group: GroupId) -> Result<(), ProposeFailure> {
        let context = {
            let mut next = self.next_read.borrow_mut();
            *next += 1;
            *next
        };
        {
            let mut shard = self.shard.borrow_mut();
            let raft = shard.raft(group).ok_or(ProposeFailure::UnknownGroup)?;
            if raft.role() != Role::Leader {
                return Err(ProposeFailure::NotLeader(raft.leader()));
            }
            shard
                .read_index(group, context)
                .map_err(|e| ProposeFailure::Refused(e.to_string()))?;
        }
        let (sender, receiver) = local_channel::new_bounded(1);
        self.reads.borrow_mut().insert(context, (group, sender));
        self.ring();
        let result =
            glommio::timer::timeout(WRITE_TIMEOUT, async { Ok(receiver.recv().await) }).await;
        self.reads.borrow_mut().remove(&context);
        match result {
            Ok(Some(Some(_index))) => Ok(()),
            Ok(Some(None)) => Err(ProposeFailure::NotLeader(0)),
            Ok(None) => Err(ProposeFailure::Refused("core stopped".into())),
            Err(_) => Err(ProposeFailure::Timeout),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeFailure {
    UnknownGroup,
    NotLeader(NodeId),
    Refused(String),
    Timeout,
}

/// How long a batch that nothing waits for (`ShardBatch::may_wait`) may wait for the next
/// batch, to be written with it. Such a batch follows every commit on the leader (its clients
/// are already answered from the in-memory apply), and under a steady trickle of writes the
/// next proposal's batch comes within a client round trip: one storage write (and one
/// blocking-pool round trip) then carries both. Reads waiting for a written apply end the wait
/// at once. A spare follower's entries wait the same way (`ShardBatch::prompt`): it syncs
/// with its next batch, or after this long; the leader's commits wait for the other two
/// replicas, whose syncs then share the disk with one fewer. This is also the most a commit
/// waits for a spare follower when the follower it normally waits for is down.
const APPLY_HOLD: Duration = Duration::from_millis(2);

/// Batches collected and not yet written and released, at most.
///
/// Two, because of what lies between two writes with one: batch k+1 was collected only once
/// batch k's completion had come back to the reactor, so the engine sat idle for the hand-off's
/// way back, the collect and the way to a pool thread. On the 2-core VM at 256 clients those
/// were a third of the write cycle (`perf/stage-latency.sh 256 10s`, means: write 2,227 us =
/// engine 1,312 + hand-off 915, of it 313 there and 515 back, the threads waiting for a CPU),
/// and a follower's appends waited 2,445 us on average for the write before theirs. Now batch
/// k+1's write is started while k's is in progress: it waits on a pool thread for its turn
/// (`StorageWriter::write_and_fetch`) and enters the engine as soon as k's is done; the
/// completions are still taken, and everything they release still released, in collect order.
/// Measured (fresh 3-node cluster per run, 256 clients, `kahuna bench`), eleven alternated pairs
/// one/two: 22,383/28,347, 26,888/37,353, 36,122/37,330, 35,264/31,670, 39,678/35,817,
/// 38,419/41,232, 36,309/37,369, 35,623/40,224, 31,821/32,458, 22,688/23,956, 18,412/22,277
/// puts/s (nine faster); a follower's wait before its write 2,445 -> 1,320 us mean. The
/// batches are smaller (80 -> 61 entries mean), which costs CPU per put at a fixed rate
/// (`perf/cpu-per-op.sh 12000 10`: 111.9/114.6 and 112.0/117.1 us); one client and 64 clients
/// unchanged (p50 289-353 against 298-396 us; 64 clients 18,349-22,070 against
/// 19,929-22,985 puts/s). (Two in flight measured worse once, when the second batch's write
/// was started only after the first's completion: its appends left earlier but the engine
/// still idled between writes, and the smaller batches cost more than that gained.)
const PIPELINE_DEPTH: usize = 2;
// A write waiting for its turn holds a pool thread: with more writes in flight than threads,
// the write whose turn it is could find none free (see `StorageWriter::write_and_fetch`).
const _: () = assert!(PIPELINE_DEPTH <= super::node::BLOCKING_THREADS_PER_CORE);

/// The main loop's settings, from the node's configuration.
#[derive(Clone, Copy, Debug)]
pub struct LoopSettings {
    /// The Raft tick.
    pub tick: Duration,
    /// When the groups' logs are compacted.
    pub compaction: CompactionPolicy,
    /// Unload the groups' kv state after writing nothing for this long.
    pub unload_after_idle: Duration,
}

/// The core's main loop. Never returns while the node runs.
pub async fn run_loop(state: Rc<CoreState>, ring: LocalReceiver<()>, settings: LoopSettings) {
    let LoopSettings {
        tick,
        compaction,
        unload_after_idle,
    } = settings;
    let mut next_tick = Instant::now() + tick;
    let mut next_compaction = Instant::now() + COMPACTION_INTERVAL;
    // A write-buffer release is running (at most one).
    let releasing = Rc::new(Cell::new(false));
    // Invariant: `in_flight` counts the batches sent into `pipe` and not yet fully released
    // by the writer; it never exceeds PIPELINE_DEPTH, the channel's capacity.
    let in_flight = Rc::new(Cell::new(0usize));
    let (pipe, collected) = local_channel::new_bounded(PIPELINE_DEPTH);
    glommio::spawn_local(write_batches(state.clone(), collected, in_flight.clone())).detach();
    // A batch of applies alone waiting (until the instant) for the next batch to carry it.
    let mut held: Option<(ShardBatch, Option<Instant>, Instant)> = None;
    loop {
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + tick;
            crate::metrics::core(state.core).publish_peer(&state.transport.stats());
            state.expire_direct_waiters(now);
            let heartbeat_to = state.shard.borrow_mut().tick();
            state
                .transport
                .report_quiet(state.shard.borrow().quiet_peers());
            for peer in heartbeat_to {
                let _ = state.transport.send(peer, Vec::new());
            }
        }
        let mut worked = false;
        // A full pipeline: leave the work for the next batch (it grows, which is the point),
        // keep ticking, and wait for the writer's ring.
        if in_flight.get() < PIPELINE_DEPTH {
            // The outcomes are taken with the batch that applied them, so a later batch's
            // outcomes never mix in.
            let collected = {
                let mut shard = state.shard.borrow_mut();
                shard
                    .collect(true)
                    .map(|batch| (batch, shard.state_machine_mut().take_completions()))
            };
            // Fetches taken here ride with this collect's batch when it is written now and no
            // other write is ahead of it (one trip to the blocking pool for both, and the values
            // come back after one sync); otherwise they go on their own: under load a write
            // waits behind another, and an apply waiting for its values would wait for both.
            let mut fetches = state.shard.borrow_mut().state_machine_mut().take_fetches();
            if collected.is_none() {
                start_fetches(&state, std::mem::take(&mut fetches));
            }
            if let Some((mut batch, completions)) = collected {
                worked = true;
                let received = state.received_at.take();
                start_snapshot_reads(&state, std::mem::take(&mut batch.snapshots_wanted));
                crate::metrics::stages::collected(state.core, &batch);
                // Peers whose acknowledgements decide a commit first (a stable sort keeps
                // the rest in order).
                let mut sends: Vec<_> = std::mem::take(&mut batch.send_now).into_iter().collect();
                sends.sort_by_key(|(peer, _)| !batch.urgent_peers.contains(peer));
                for (peer, messages) in sends {
                    let _ = state.transport.send(peer, messages);
                }
                // A committed entry is durable on a majority and its outcome is decided by the
                // apply that just ran in memory: the client needs nothing from this batch's
                // write. (Reads still wait for the apply to be written.)
                answer_writes(&state, &batch.applied, completions);
                // Entries in a batch that is not prompt are a spare follower's.
                let spare_entries =
                    !batch.prompt && batch.write.groups.iter().any(|g| !g.entries.is_empty());
                let (batch, received, hold_until) = match held.take() {
                    Some((mut earlier, earlier_received, until)) => {
                        earlier.absorb(batch);
                        (earlier, earlier_received.or(received), until)
                    }
                    None => (batch, received, Instant::now() + APPLY_HOLD),
                };
                if batch.may_wait() && state.reads.borrow().is_empty() {
                    if spare_entries {
                        crate::metrics::core(state.core)
                            .spare_batches_held
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    held = Some((batch, received, hold_until));
                    start_fetches(&state, fetches);
                } else {
                    let riding = if batch.write.is_empty() || in_flight.get() > 0 {
                        start_fetches(&state, fetches);
                        Vec::new()
                    } else {
                        fetches
                    };
                    if !to_writer(&pipe, &in_flight, batch, received, riding).await {
                        return;
                    }
                }
            }
        }
        // A held batch goes out once its wait is over, or at once when a read waits for
        // written applies (the pipeline has room: held batches are not in flight).
        if held.as_ref().is_some_and(|(_, _, until)| {
            Instant::now() >= *until || !state.reads.borrow().is_empty()
        }) && in_flight.get() < PIPELINE_DEPTH
        {
            let (batch, received, _) = held.take().expect("checked above");
            if !to_writer(&pipe, &in_flight, batch, received, Vec::new()).await {
                return;
            }
            continue;
        }
        // Compaction reads nothing (images are read only when a follower needs one), so it
        // runs inline: a bounded pass over the groups' log lengths.
        if Instant::now() >= next_compaction {
            next_compaction = Instant::now() + COMPACTION_INTERVAL;
            compact_logs(&state, &compaction);
            release_idle_buffers(&state, &releasing);
            unload_idle_groups(&state, unload_after_idle);
        }
        if worked {
            continue;
        }
        // A held batch whose wait is over waits for the writer's ring (waking for a past
        // instant would spin while the write in flight syncs).
        let now = Instant::now();
        let wake_at = match &held {
            Some((_, _, until)) if now < *until => next_tick.min(*until),
            _ => next_tick,
        };
        let wait = wake_at.saturating_duration_since(now);
        let _ = glommio::timer::timeout(wait, async {
            ring.recv().await;
            Ok(())
        })
        .await;
    }
}

/// What the loop hands the writer: a collected batch, when its oldest peer frame arrived (for
/// the follower-acknowledgement metric), and the state machine's fetches taken with it, read
/// in the write's own trip to the blocking pool (see `StorageWriter::write_and_fetch`).
type Collected = (ShardBatch, Option<Instant>, Vec<Fetch>);

/// Hands a collected batch (and fetches to read with it) to the writer task, counting it in
/// flight. False once the writer is gone (the core is stopping).
async fn to_writer(
    pipe: &LocalSender<Collected>,
    in_flight: &Cell<usize>,
    batch: ShardBatch,
    received: Option<Instant>,
    fetches: Vec<Fetch>,
) -> bool {
    in_flight.set(in_flight.get() + 1);
    assert!(in_flight.get() <= PIPELINE_DEPTH);
    assert!(
        fetches.is_empty() || !batch.write.is_empty(),
        "fetches ride only with a batch that is written"
    );
    pipe.send((batch, received, fetches)).await.is_ok()
}

/// A batch handed to the writer: its write started (or nothing to write), the rest of it
/// waiting for that write.
struct Started {
    /// The batch, its `write` taken out when it was started.
    batch: ShardBatch,
    received: Option<Instant>,
    /// When the write was started, and its trip to the blocking pool (`None`: nothing to write).
    write: Option<(Instant, glommio::Task<crate::storage::Result<Written>>)>,
}

/// Starts `batch`'s write (on its own task, so that it reaches the blocking pool while an
/// earlier write is still in progress there: the pool thread that takes it writes as soon as
/// the earlier write is done, without a round trip through the reactor in between).
fn start_write(state: &Rc<CoreState>, collected: Collected) -> Started {
    let (mut batch, received, fetches) = collected;
    if batch.write.is_empty() {
        return Started {
            batch,
            received,
            write: None,
        };
    }
    let writing = Instant::now();
    if let Some(received) = received {
        crate::metrics::core(state.core)
            .follower_queued(writing.saturating_duration_since(received));
    }
    let lane_frames = state.transport.lane_frames(batch.token.after_persist());
    let write = std::mem::take(&mut batch.write);
    // Its turn at the engine is taken here, in collect order (see `write_and_fetch`).
    let task = glommio::spawn_local(state.storage.write_and_fetch(write, fetches, lane_frames));
    Started {
        batch,
        received,
        write: Some((writing, task)),
    }
}

/// The writer: writes each collected batch in order (one atomic write, one sync), then releases
/// what waited for it: messages sent only once durable, and reads whose read point is now in
/// storage. Up to `PIPELINE_DEPTH` writes are started at once; they reach the engine, and are
/// finished here, in the order they were collected.
async fn write_batches(
    state: Rc<CoreState>,
    collected: LocalReceiver<Collected>,
    in_flight: Rc<Cell<usize>>,
) {
    // Reads confirmed by a quorum but not yet applied and written locally: (context, group,
    // index).
    let mut parked_reads: Vec<(u64, GroupId, Index)> = Vec::new();
    // Started, not yet finished, oldest first. Invariant: at most `PIPELINE_DEPTH` (the loop
    // hands over no more than that many unfinished batches).
    let mut started: VecDeque<Started> = VecDeque::new();
    let mut open = true;
    loop {
        if started.is_empty() {
            if !open {
                return;
            }
            match collected.recv().await {
                Some(next) => started.push_back(start_write(&state, next)),
                None => return,
            }
            continue;
        }
        // The oldest first; a batch handed over meanwhile is started at once.
        let front = started.front_mut().expect("not empty");
        let written = match &mut front.write {
            None => None,
            Some((_, task)) => {
                let handed = async {
                    if open {
                        Next::Handed(collected.recv().await)
                    } else {
                        std::future::pending().await
                    }
                };
                match futures_lite::future::or(async { Next::Written(task.await) }, handed).await {
                    Next::Written(written) => Some(written),
                    Next::Handed(Some(next)) => {
                        assert!(
                            started.len() < PIPELINE_DEPTH,
                            "more batches than the pipeline holds"
                        );
                        started.push_back(start_write(&state, next));
                        continue;
                    }
                    Next::Handed(None) => {
                        open = false;
                        continue;
                    }
                }
            }
        };
        let Started {
            batch,
            received,
            write,
        } = started.pop_front().expect("not empty");
        finish_write(
            &state,
            batch,
            received,
            write.map(|(writing, _)| writing).zip(written),
            &mut parked_reads,
        );
        in_flight.set(in_flight.get() - 1);
        state.ring();
    }
}

/// What the writer waits for next: the oldest write's completion, or a batch handed over
/// (`None`: the loop is gone).
enum Next {
    Written(crate::storage::Result<Written>),
    Handed(Option<Collected>),
}

/// Releases what waited for `batch`'s write (`written`: when it started, and how it went;
/// `None` when there was nothing to write: every earlier batch is finished first, so this one
/// is as durable as they are, without a sync).
fn finish_write(
    state: &Rc<CoreState>,
    batch: ShardBatch,
    received: Option<Instant>,
    written: Option<(Instant, crate::storage::Result<Written>)>,
    parked_reads: &mut Vec<(u64, GroupId, Index)>,
) {
    let mut lanes_sent = Vec::new();
    let mut lanes_sent_at = None;
    // The written batch, dropped once its answers have left (see `Written::batch`).
    let mut spent = None;
    if let Some((writing, written)) = written {
        let now = Instant::now();
        state.written_since_release.set(Some(now));
        state.written_since_unload.set(Some(now));
        match written {
            Ok(written) => {
                crate::metrics::core(state.core).storage_written(
                    now.saturating_duration_since(writing),
                    written.engine,
                    written.forward,
                    now.saturating_duration_since(written.done_at),
                );
                lanes_sent_at = written.lanes_sent_at;
                state.transport.lane_frames_sent(&written.lanes_sent);
                lanes_sent = written.lanes_sent;
                fill_fetched(state, written.fetched);
                spent = Some(written.batch);
            }
            Err(error) => {
                // A failed write leaves the log in an unknown state: stop serving rather than
                // acknowledge anything that may not be durable. (A failed read riding with
                // it stops the node too, as in `start_fetches`.)
                eprintln!(
                    "kahuna: core {}: storage write or read failed, stopping the node: {error}",
                    state.core
                );
                std::process::exit(70);
            }
        }
    }
    let written_applies = batch.token.written().to_vec();
    let after = state.shard.borrow_mut().persisted(batch.token);
    // Peers whose answers the pool thread wrote on their durable-answer lane are done.
    let after: Vec<_> = after
        .into_iter()
        .filter(|(peer, _)| !lanes_sent.iter().any(|(sent, _, _)| sent == peer))
        .collect();
    // One sample per batch: when its first answers left (the storage thread's lane
    // writes come before the reactor's sends).
    let acked_at = lanes_sent_at.or_else(|| (!after.is_empty()).then(Instant::now));
    if let (Some(received), Some(acked_at)) = (received, acked_at) {
        crate::metrics::core(state.core)
            .follower_acked(acked_at.saturating_duration_since(received));
    }
    for (peer, messages) in after {
        let _ = state.transport.send(peer, messages);
    }
    mark_written(&state, &written_applies);
    crate::metrics::stages::completed(state.core, &batch.applied);
    for (_group, context) in batch.dropped_reads {
        if let Some((_, sender)) = state.reads.borrow_mut().remove(&context) {
            let _ = sender.try_send(None);
        }
    }
    for (group, read) in batch.read_states {
        parked_reads.push((read.context, group, read.index));
    }
    // Release reads whose index is applied in a written batch: the local read that follows
    // then sees every write the read point covers.
    parked_reads.retain(|&(context, group, index)| {
        let written = state.shard.borrow().written_applied(group).unwrap_or(0);
        if written < index {
            return true;
        }
        if let Some((_, sender)) = state.reads.borrow_mut().remove(&context) {
            let _ = sender.try_send(Some(index));
        }
        false
    });
    drop(spent);
}

/// Reads the state machine asked for while collecting (keys not in its cache, session tables)
/// on the blocking pool, when no written batch carries them (see `to_writer`); the groups
/// waiting for them resume at a later collect. At most one fetch per group is out at a time
/// (the machine's rule), so the tasks here are bounded by the groups of the core.
fn start_fetches(state: &Rc<CoreState>, fetches: Vec<Fetch>) {
    if fetches.is_empty() {
        return;
    }
    let state = state.clone();
    glommio::spawn_local(async move {
        match state.storage.fetch(fetches).await {
            Ok(fetched) => fill_fetched(&state, fetched),
            Err(error) => {
                // The committed entries cannot be applied without these reads; a replica that
                // skipped them would diverge. Stop, as for a failed write.
                eprintln!(
                    "kahuna: core {}: storage read for apply failed, stopping the node: {error}",
                    state.core
                );
                std::process::exit(70);
            }
        }
    })
    .detach();
}

/// Hands fetched values to the state machine and wakes the loop: the groups that waited for
/// them may apply at the next collect.
fn fill_fetched(state: &CoreState, fetched: Vec<Fetched>) {
    if fetched.is_empty() {
        return;
    }
    let mut shard = state.shard.borrow_mut();
    for answer in fetched {
        let group = shard.state_machine_mut().fill(answer);
        shard.resume_apply(group);
    }
    drop(shard);
    state.ring();
}

/// A core whose storage saw no write for this long releases its write buffers.
const RELEASE_BUFFERS_AFTER_IDLE: Duration = Duration::from_secs(5);

/// Releases the storage engine's write buffers (RocksDB memtables) once the core has written
/// nothing for `RELEASE_BUFFERS_AFTER_IDLE`: an idle node then holds no memtable memory (after
/// thousands of groups bootstrap, that is a large part of their per-group memory), and a
/// restart has less log to replay. The kv machine's per-group state stays longer (see
/// `unload_idle_groups`). Runs on the blocking pool; a failure is logged and retried after the
/// next write.
fn release_idle_buffers(state: &Rc<CoreState>, releasing: &Rc<Cell<bool>>) {
    let Some(written) = state.written_since_release.get() else {
        return;
    };
    if releasing.get() || written.elapsed() < RELEASE_BUFFERS_AFTER_IDLE {
        return;
    }
    releasing.set(true);
    state.written_since_release.set(None);
    let (state, releasing) = (state.clone(), releasing.clone());
    glommio::spawn_local(async move {
        if let Err(error) = state.storage.release_write_buffers().await {
            eprintln!(
                "kahuna: core {}: releasing storage write buffers failed: {error}",
                state.core
            );
        }
        // The allocator keeps freed memory (the memtables just released, the buffers of the
        // burst that made this core busy) resident unless asked to give it back.
        glommio::executor()
            .spawn_blocking(super::allocator::return_free_memory)
            .await;
        releasing.set(false);
    })
    .detach();
}

/// Drops the kv machine's per-group state (revision caches, session tables, values read
/// ahead) once the core has written nothing for `after` (`--unload-after-idle`, default 60 s),
/// and publishes how many groups stay loaded. The next apply of a group reloads what it needs
/// from storage: every key's revision one read at a time, on the blocking pool.
///
/// Why not with the write buffers after 5 s: a pause of seconds between bursts then cost the
/// next burst its caches. 3 nodes, 256 clients, puts over 100,000 keys, 15 s pauses between
/// 13 s runs (2-core VM): the first second after a pause ran at 11,400-17,200 puts/s with the
/// caches dropped against 22,500-31,800 with them kept, and `perf/compare-etcd.sh` (which
/// measures each system after the other's run) at 256 clients 17,753 and 19,479 puts/s against
/// 20,398 and 22,007. The caches are bounded per group (`cache_keys_max` keys, `sessions_max`
/// sessions) whether a core is busy or idle, so keeping them a minute longer raises no peak;
/// a node idle for a minute still gives the memory back.
fn unload_idle_groups(state: &CoreState, after: Duration) {
    let metrics = crate::metrics::core(state.core);
    let mut shard = state.shard.borrow_mut();
    let machine = shard.state_machine_mut();
    if let Some(written) = state.written_since_unload.get() {
        if written.elapsed() >= after {
            state.written_since_unload.set(None);
            // In memory only, so here, on the reactor: one pass over the core's groups.
            machine.unload_idle_groups();
            // What they held sits in this thread's allocator heap, which only this thread
            // collects.
            super::allocator::return_this_threads_free_memory();
        }
    }
    metrics.publish_kv_groups_loaded(machine.loaded_groups());
}

/// How often a core looks for logs to compact.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(1);
/// Groups compacted per pass: bounds one pass's work (each cut is a range delete and a
/// record in the next batch). Above the cuts a busy core needs in a pass interval (64 groups
/// at ~20,000 puts/s: ~40 leader and ~25 follower cuts a second), so cuts keep pace.
const COMPACTIONS_PER_PASS_MAX: usize = 256;

/// Compacts the logs `policy` says to cut (see `shard/compaction.rs`), at most
/// `COMPACTIONS_PER_PASS_MAX` of them.
fn compact_logs(state: &CoreState, policy: &CompactionPolicy) {
    let mut shard = state.shard.borrow_mut();
    let cuts: Vec<(GroupId, Index)> = shard
        .group_ids()
        .into_iter()
        .filter_map(|group| Some((group, shard.compaction_point(group, policy)?)))
        .take(COMPACTIONS_PER_PASS_MAX)
        .collect();
    for (group, index) in cuts {
        if let Err(error) = shard.compact(group, index) {
            eprintln!(
                "kahuna: core {}: compaction of group {group} refused: {error}",
                state.core
            );
        }
    }
}

/// Queues the images the groups' leaders asked for (`ShardBatch::snapshots_wanted`) for the
/// core's one image reader, which reads them on the blocking pool one after the other and
/// hands each to its group. One reader per core: an image read can take seconds, and the pool
/// also runs the batch writes, which must not wait behind several of them. Each group has at
/// most one request outstanding, so the queue (and the images held until a leader pins them)
/// is bounded by the groups of the core. A failed read is not fatal: the leader asks again
/// after a heartbeat round.
fn start_snapshot_reads(state: &Rc<CoreState>, groups: Vec<GroupId>) {
    if groups.is_empty() {
        return;
    }
    state.images_wanted.borrow_mut().extend(groups);
    if state.image_reader_running.replace(true) {
        return;
    }
    let state = state.clone();
    glommio::spawn_local(async move {
        loop {
            let Some(group) = state.images_wanted.borrow_mut().pop_front() else {
                break;
            };
            let image = state.storage.snapshot(group).await;
            let mut shard = state.shard.borrow_mut();
            let (mut meta, data) = match image {
                Ok(image) => image,
                Err(error) => {
                    eprintln!(
                        "kahuna: core {}: cannot read an image of group {group}: {error}",
                        state.core
                    );
                    shard.snapshot_unavailable(group);
                    continue;
                }
            };
            if meta.conf_state.voters.is_empty() {
                // Data written before memberships were stored with applies (no membership
                // changes existed then): the group's configuration at that index is the record.
                if let Some(raft) = shard.raft(group) {
                    if meta.index >= raft.first_index() - 1 && meta.index <= raft.last_index() {
                        meta.conf_state = raft.conf_state_at(meta.index);
                    }
                }
            }
            match shard.provide_snapshot(group, Snapshot { meta, data }) {
                Ok(()) => {}
                // A stale image (a compaction or install raced the read) or leadership gone:
                // expected now and then; the leader asks again if it still needs one.
                Err(ShardError::Raft(RaftError::SnapshotRefused { .. })) => {}
                Err(error) => eprintln!(
                    "kahuna: core {}: image of group {group} refused: {error}",
                    state.core
                ),
            }
            drop(shard);
            state.ring();
        }
        state.image_reader_running.set(false);
    })
    .detach();
}

/// The batch holding these applies and restored snapshots (`PersistToken::written`) is
/// written: the machine may now read them back from storage instead of keeping them in memory.
/// (Applies deferred by the shard are not among them until a batch writes them.)
fn mark_written(state: &CoreState, written: &[(GroupId, Index)]) {
    let mut shard = state.shard.borrow_mut();
    let machine = shard.state_machine_mut();
    for &(group, index) in written {
        machine.persisted(group, index);
    }
}

/// Answers the clients waiting on entries applied (in memory) by the batch just collected.
/// An entry of another term than the proposal's replaced it: that write did not apply there.
fn answer_writes(
    state: &CoreState,
    applied: &[(GroupId, Vec<crate::raft::Entry>)],
    completions: Vec<Completion>,
) {
    let mut outcome_at: AHashMap<(GroupId, Index), Outcome> =
        AHashMap::with_capacity(completions.len());
    for completion in completions {
        outcome_at.insert((completion.group, completion.index), completion.outcome);
    }
    let mut waiters = state.waiters.borrow_mut();
    for (group, entries) in applied {
        for entry in entries {
            let Some(waiter) = waiters.remove(&(*group, entry.index)) else {
                continue;
            };
            let result = if waiter.term == entry.term {
                match outcome_at.remove(&(*group, entry.index)) {
                    Some(outcome) => WriteResult::Applied(outcome),
                    None => WriteResult::Lost,
                }
            } else {
                WriteResult::Lost
            };
            waiter.reply.deliver(result);
        }
    }
}

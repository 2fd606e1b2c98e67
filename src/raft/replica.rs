//! One replica of one Raft group: roles, elections, replication, commit, reads, transfers,
//! membership and snapshots. Driven only by `step`, `tick` and the proposal calls; every
//! effect comes back through `ready`. No IO, no clock, no unseeded randomness.

use std::collections::VecDeque;

use bytes::Bytes;

use super::config::{Config, SafetyFault};
use super::errors::RaftError;
use super::log::RaftLog;
use super::progress::{Progress, ProgressMap, ProgressState};
use super::ready::{Ready, SoftState};
use super::rng::SeededRng;
use super::types::*;

/// What storage hands a replica when it starts (or restarts).
#[derive(Clone, Debug, Default)]
pub struct RestoreState {
    pub hard_state: HardState,
    /// Where the log was last compacted (or a snapshot installed), if ever. Only the meta: the
    /// image itself stays in storage until a follower needs it (`Ready::snapshot_wanted`).
    pub snapshot: Option<SnapshotMeta>,
    /// The durable log after the snapshot point, contiguous.
    pub entries: Vec<Entry>,
    /// The index the state machine has durably applied.
    pub applied: Index,
    /// The membership of a brand-new group (used when there is no snapshot and no
    /// configuration entry in the log). A replica joining an existing group starts empty.
    pub initial_conf: ConfState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CampaignKind {
    PreElection,
    Election,
    Transfer,
}

/// Where a leader stands with asking its caller for a snapshot image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ImageRequest {
    /// Nothing asked.
    Idle,
    /// A follower waits for an image: ask in the next Ready.
    Wanted,
    /// Asked (`Ready::snapshot_wanted`), not yet answered by `provide_snapshot` or
    /// `snapshot_unavailable`. Kept across role changes, so that there is never more than one
    /// request outstanding; the answer is judged against the state it arrives in.
    Outstanding,
}

#[derive(Clone, Copy, Debug)]
struct PendingRead {
    context: u64,
    index: Index,
    seq: u64,
}

/// Summary of a replica, for status reports and checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub group: GroupId,
    pub role: Role,
    pub term: Term,
    pub vote: NodeId,
    pub leader: NodeId,
    pub first_index: Index,
    pub last_index: Index,
    pub committed: Index,
    pub persisted: Index,
    pub applied: Index,
}

pub struct Raft {
    config: Config,
    id: NodeId,
    group: GroupId,

    term: Term,
    vote: NodeId,
    role: Role,
    leader: NodeId,

    log: RaftLog,
    /// The configuration in effect: the last configuration entry in the log, or `base_conf`.
    conf: ConfState,
    /// Index of the entry that set `conf` (or the snapshot index / 0 for `base_conf`).
    conf_index: Index,
    /// The configuration at the snapshot point (or the initial one).
    base_conf: ConfState,
    /// No image is held here: the snapshot is the log's compaction point (`log.snapshot_index`,
    /// its term) and `base_conf`. A leader asks its caller for an image when a follower needs
    /// one, and pins it only in the progress of the followers it streams to.
    image_request: ImageRequest,

    // Leader state. Invariant: `progress` holds exactly the members other than `id`.
    progress: ProgressMap,
    transfer_target: NodeId,
    /// New entries await sending (sent at `ready` so many proposals share one append).
    broadcast_pending: bool,
    /// Commit index last carried to followers by a broadcast. Below the commit index, the
    /// advance is owed to some follower in the Replicate state (see `commit_notice_due`).
    commit_broadcast: Index,
    /// Ticks the owed commit advance has waited for an append to carry it; 0 when none is
    /// owed.
    commit_notice_waited: u32,
    read_seq: u64,
    read_heartbeat_pending: bool,
    /// ReadIndex requests awaiting a quorum of heartbeat acknowledgements, oldest first.
    pending_reads: VecDeque<PendingRead>,
    /// ReadIndex requests awaiting the first commit of this leader's term.
    reads_waiting_commit: Vec<u64>,
    scratch: Vec<u64>,

    // Candidate state: who answered and how.
    votes: Vec<(NodeId, bool)>,

    // Follower state: a snapshot being reassembled from chunks.
    // Boxed: rarely set, and every byte of an idle replica counts when a node hosts thousands.
    incoming_snapshot: Option<Box<(SnapshotMeta, Vec<u8>)>>,
    /// Set while stepping a message found invalid deep in its handling; `step` returns it.
    refusal: Option<RaftError>,
    snapshot_to_install: Option<Box<Snapshot>>,

    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_ticks: u32,
    rng: SeededRng,

    messages: Vec<Message>,
    persisted_messages: Vec<Message>,
    read_states: Vec<ReadState>,
    dropped_reads: Vec<u64>,
    last_hard_state: HardState,
    last_soft_state: SoftState,
    ready_number: u64,
    /// Readies with writes not yet reported durable: (number, last entry written).
    unpersisted: VecDeque<(u64, Option<(Index, Term)>)>,
}

impl Raft {
    pub fn new(config: Config, restore: RestoreState) -> Result<Raft, RaftError> {
        config.validate()?;
        let invalid = |why: String| Err(RaftError::InvalidRestore(why));
        let (snapshot_index, snapshot_term, base_conf) = match &restore.snapshot {
            Some(meta) => (meta.index, meta.term, meta.conf_state.clone()),
            None => (0, 0, restore.initial_conf.clone()),
        };
        for (position, entry) in restore.entries.iter().enumerate() {
            if entry.index != snapshot_index + 1 + position as u64 {
                return invalid(format!(
                    "entry {} at position {position} after snapshot {snapshot_index}",
                    entry.index
                ));
            }
        }
        let last_index = snapshot_index + restore.entries.len() as u64;
        if restore.hard_state.commit > last_index {
            return invalid(format!(
                "commit {} beyond last index {last_index}",
                restore.hard_state.commit
            ));
        }
        if restore.applied > last_index {
            return invalid(format!(
                "applied {} beyond last index {last_index}",
                restore.applied
            ));
        }
        let log = RaftLog::restore(
            snapshot_index,
            snapshot_term,
            restore.entries,
            restore.hard_state.commit,
            restore.applied,
        );
        let mut seed_mixer =
            SeededRng::new(config.seed ^ config.id.rotate_left(17) ^ config.group.rotate_left(41));
        let rng = SeededRng::new(seed_mixer.next_u64());
        let soft = SoftState {
            role: Role::Follower,
            leader: NO_NODE,
            term: restore.hard_state.term,
        };
        let mut raft = Raft {
            id: config.id,
            group: config.group,
            term: restore.hard_state.term,
            vote: restore.hard_state.vote,
            role: Role::Follower,
            leader: NO_NODE,
            log,
            conf: base_conf.clone(),
            conf_index: snapshot_index,
            base_conf,
            image_request: ImageRequest::Idle,
            progress: ProgressMap::new(),
            transfer_target: NO_NODE,
            broadcast_pending: false,
            commit_broadcast: 0,
            commit_notice_waited: 0,
            read_seq: 0,
            read_heartbeat_pending: false,
            pending_reads: VecDeque::new(),
            reads_waiting_commit: Vec::new(),
            scratch: Vec::new(),
            votes: Vec::new(),
            incoming_snapshot: None,
            refusal: None,
            snapshot_to_install: None,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: config.election_ticks,
            rng,
            messages: Vec::new(),
            persisted_messages: Vec::new(),
            read_states: Vec::new(),
            dropped_reads: Vec::new(),
            last_hard_state: restore.hard_state,
            last_soft_state: soft,
            ready_number: 0,
            unpersisted: VecDeque::new(),
            config,
        };
        raft.refresh_conf_from_log();
        raft.reset_election_timer();
        Ok(raft)
    }

    // ----- accessors -----

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn group(&self) -> GroupId {
        self.group
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> NodeId {
        self.leader
    }
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }
    pub fn committed(&self) -> Index {
        self.log.committed()
    }
    pub fn applied(&self) -> Index {
        self.log.applied()
    }
    pub fn first_index(&self) -> Index {
        self.log.first_index()
    }
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    /// The term of the entry at `index`, if the log still holds it.
    pub fn log_term(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }
    pub fn log_entry(&self, index: Index) -> Option<&Entry> {
        self.log.entry(index)
    }
    /// Entries held in memory (bounded by compaction).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }
    /// A follower's progress as the leader sees it: (match, next, state).
    pub fn progress_of(&self, id: NodeId) -> Option<(Index, Index, ProgressState)> {
        self.progress
            .get(&id)
            .map(|p| (p.match_index, p.next_index, p.state))
    }
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            group: self.group,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            committed: self.log.committed(),
            persisted: self.log.persisted(),
            applied: self.log.applied(),
        }
    }

    /// Whether this replica has nothing in flight: a leader whose every follower holds its
    /// whole log and knows it is committed, with no reads or transfer pending; or a follower
    /// with a known leader that applied everything it knows committed. A multi-group scheduler may stop ticking such a replica
    /// (hibernation) until a message or proposal arrives.
    pub fn is_quiescent(&self) -> bool {
        let last = self.log.last_index();
        let applied_all = self.log.applied() == self.log.committed() && !self.log.has_unstable();
        match self.role {
            Role::Leader => {
                applied_all
                    && self.log.committed() == last
                    && self.transfer_target == NO_NODE
                    && self.pending_reads.is_empty()
                    && self.reads_waiting_commit.is_empty()
                    && self.commit_broadcast == last
                    && self
                        .progress
                        .values()
                        .all(|p| p.match_index == last && p.inflight_count() == 0)
            }
            // A stale uncommitted suffix (from an older term) does not keep a follower awake:
            // the leader, which no longer has it, cannot know to replace it until it appends.
            Role::Follower => applied_all && self.leader != NO_NODE,
            Role::PreCandidate | Role::Candidate => false,
        }
    }

    fn quorum(&self) -> usize {
        self.conf.voters.len() / 2 + 1
    }

    fn promotable(&self) -> bool {
        self.conf.is_voter(self.id)
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
            term: self.term,
        }
    }

    // ----- messages out -----

    fn send(&mut self, to: NodeId, term: Term, body: MessageBody) {
        debug_assert_ne!(to, self.id, "sending to self");
        let message = Message {
            group: self.group,
            from: self.id,
            to,
            term,
            body,
        };
        if message.body.is_from_leader() {
            self.messages.push(message);
        } else {
            self.persisted_messages.push(message);
        }
    }

    // ----- role transitions -----

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let low = self.config.election_ticks as u64;
        self.randomized_election_ticks = self.rng.range(low, 2 * low) as u32;
    }

    fn reset(&mut self, term: Term) {
        if term != self.term {
            assert!(
                term > self.term,
                "term moving backwards: {} -> {term}",
                self.term
            );
            self.term = term;
            self.vote = NO_NODE;
            // A stream being reassembled came from an earlier term's leader, which streams no
            // more of it (a new leader starts its own from the first byte): free it now rather
            // than at the next chunk, which may never come.
            self.incoming_snapshot = None;
        }
        self.leader = NO_NODE;
        self.heartbeat_elapsed = 0;
        self.reset_election_timer();
        // Freed, not cleared: elections are rare, idle replicas are many.
        self.votes = Vec::new();
        // Dropping the progress frees every pinned image.
        self.progress.clear();
        if self.image_request == ImageRequest::Wanted {
            self.image_request = ImageRequest::Idle;
        }
        self.transfer_target = NO_NODE;
        self.broadcast_pending = false;
        self.commit_notice_waited = 0;
        self.read_heartbeat_pending = false;
        self.dropped_reads
            .extend(self.pending_reads.drain(..).map(|r| r.context));
        self.dropped_reads.append(&mut self.reads_waiting_commit);
    }

    fn become_follower(&mut self, term: Term, leader: NodeId) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "a leader cannot become a pre-candidate"
        );
        // Pre-vote changes neither term nor vote (thesis 9.6): a partitioned node cannot
        // inflate its term and disrupt the cluster when it returns.
        let term = self.term;
        self.reset(term);
        self.role = Role::PreCandidate;
    }

    fn become_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "a leader cannot become a candidate"
        );
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = self.id;
        let next = self.log.last_index() + 1;
        for id in self.conf.members().collect::<Vec<_>>() {
            if id != self.id {
                let mut progress = Progress::new(next, self.config.inflight_max);
                progress.recent_active = true;
                self.progress.insert(id, progress);
            }
        }
        // The no-op commits every earlier entry through the current-term rule (thesis 3.6.2).
        self.log.append(Entry {
            index: next,
            term,
            kind: EntryKind::Noop,
            data: Bytes::new(),
        });
        self.broadcast_pending = true;
        self.commit_broadcast = self.log.committed();
    }

    /// The caller learned that the leader is gone (its node went silent for an election
    /// timeout: a multi-group scheduler watches node liveness). A follower forgets it, so it no
    /// longer ignores other candidates, and its election timer becomes due within a random part
    /// of one timeout instead of a whole one: the silence was already waited out once.
    pub fn leader_unreachable(&mut self) {
        if self.role != Role::Follower || self.leader == NO_NODE {
            return;
        }
        self.leader = NO_NODE;
        self.election_elapsed = self.election_elapsed.max(self.config.election_ticks);
    }

    /// Starts an election now (pre-vote first when enabled). Used at bootstrap and by tests.
    pub fn campaign(&mut self) {
        if self.role == Role::Leader {
            return;
        }
        let kind = if self.config.pre_vote {
            CampaignKind::PreElection
        } else {
            CampaignKind::Election
        };
        self.start_campaign(kind);
    }

    fn start_campaign(&mut self, kind: CampaignKind) {
        if !self.promotable() {
            return;
        }
        let vote_term = match kind {
            CampaignKind::PreElection => {
                self.become_pre_candidate();
                self.term + 1
            }
            CampaignKind::Election | CampaignKind::Transfer => {
                self.become_candidate();
                self.term
            }
        };
        if self.record_vote(self.id, true) {
            return;
        }
        let last_index = self.log.last_index();
        let last_term = self.log.last_term();
        let me = self.id;
        let voters = self.conf.voters.clone();
        for to in voters.into_iter().filter(|&id| id != me) {
            let body = match kind {
                CampaignKind::PreElection => MessageBody::PreVote {
                    last_index,
                    last_term,
                },
                _ => MessageBody::Vote {
                    last_index,
                    last_term,
                    force: kind == CampaignKind::Transfer,
                },
            };
            self.send(to, vote_term, body);
        }
    }

    /// Records a vote and acts on the tally. Returns true when the election was decided.
    fn record_vote(&mut self, from: NodeId, granted: bool) -> bool {
        if !self.conf.is_voter(from) {
            return false;
        }
        if !self.votes.iter().any(|&(id, _)| id == from) {
            self.votes.push((from, granted));
        }
        let granted_count = self.votes.iter().filter(|v| v.1).count();
        let rejected_count = self.votes.len() - granted_count;
        let quorum = self.quorum();
        if granted_count >= quorum {
            match self.role {
                Role::PreCandidate => self.start_campaign(CampaignKind::Election),
                Role::Candidate => self.become_leader(),
                _ => unreachable!("tallying votes as {:?}", self.role),
            }
            true
        } else if rejected_count >= quorum {
            let term = self.term;
            self.become_follower(term, NO_NODE);
            true
        } else {
            false
        }
    }

    // ----- inputs -----

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            if self.promotable() && self.election_elapsed >= self.randomized_election_ticks {
                self.campaign();
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.log.committed() > self.commit_broadcast {
            self.commit_notice_waited = self.commit_notice_waited.saturating_add(1);
        }
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                // A leader cut off from a quorum steps down instead of serving stale reads or
                // holding proposals that cannot commit.
                if !self.quorum_active() {
                    let term = self.term;
                    self.become_follower(term, NO_NODE);
                    return;
                }
            }
            // An image streaming to a follower that answered nothing for a whole election
            // timeout is unpinned (the leader keeps no other copy, so its memory is freed): the
            // follower is probed again once it answers a heartbeat, and streamed a fresh image
            // if it still needs one. A follower that died mid-stream held the image until the
            // leadership changed.
            for progress in self.progress.values_mut() {
                if progress.streaming.is_some() && !progress.recent_active {
                    progress.abandon_stream();
                }
                progress.recent_active = false;
            }
            self.transfer_target = NO_NODE;
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    fn quorum_active(&self) -> bool {
        let active = self
            .conf
            .voters
            .iter()
            .filter(|&&id| id == self.id || self.progress.get(&id).is_some_and(|p| p.recent_active))
            .count();
        active >= self.quorum()
    }

    /// Whether we heard from a leader recently enough to ignore disruptive elections. A vote
    /// request from that leader itself is never ignored: it proves the leader gave up (it
    /// restarted or stepped down), and followers that sleep while its node is alive would
    /// otherwise never let anyone win.
    fn in_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader != NO_NODE
            && self.election_elapsed < self.config.election_ticks
    }

    /// Feeds one message from a peer of this group.
    pub fn step(&mut self, message: Message) -> Result<(), RaftError> {
        if message.group != self.group {
            return Err(RaftError::WrongGroup {
                expected: self.group,
                got: message.group,
            });
        }
        if message.to != self.id {
            return Err(RaftError::WrongNode {
                expected: self.id,
                got: message.to,
            });
        }
        if let MessageBody::Append { entries, .. } = &message.body {
            // Refused here rather than trusted: a configuration entry this node cannot decode
            // would stop it later, when the configuration is recomputed from the log.
            let bad_conf = entries
                .iter()
                .any(|e| e.kind == EntryKind::ConfChange && ConfState::decode(&e.data).is_none());
            if bad_conf {
                return Err(RaftError::InvalidMessage {
                    from: message.from,
                    why: "undecodable configuration entry",
                });
            }
        }
        if message.term > self.term {
            let is_vote_request = matches!(message.body, MessageBody::PreVote { .. })
                || matches!(message.body, MessageBody::Vote { force: false, .. });
            if is_vote_request && self.in_lease() && message.from != self.leader {
                return Ok(());
            }
            if is_vote_request && message.from == self.leader && self.role == Role::Follower {
                // Our leader is campaigning: it no longer leads. Forget it, so that this
                // follower's own election timer counts (and a scheduler keeps it awake), even if
                // the old leader's log turns out too short to win.
                self.leader = NO_NODE;
            }
            match message.body {
                MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { reject: false } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(message.term, message.from)
                }
                _ => self.become_follower(message.term, NO_NODE),
            }
        } else if message.term < self.term {
            match message.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.config.check_quorum || self.config.pre_vote =>
                {
                    // Tell a stale leader about the newer term so it steps down.
                    let body = MessageBody::AppendResponse {
                        reject: false,
                        index: 0,
                        hint_index: 0,
                        hint_term: 0,
                    };
                    self.send(message.from, self.term, body);
                }
                MessageBody::PreVote { .. } => {
                    self.send(
                        message.from,
                        self.term,
                        MessageBody::PreVoteResponse { reject: true },
                    );
                }
                _ => {}
            }
            return Ok(());
        }
        match message.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => self.handle_vote_request(message.from, message.term, last_index, last_term, true),
            MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => self.handle_vote_request(message.from, message.term, last_index, last_term, false),
            _ => match self.role {
                Role::Leader => self.step_leader(message),
                Role::Candidate | Role::PreCandidate => self.step_candidate(message),
                Role::Follower => self.step_follower(message),
            },
        }
        // A refusal found while handling the message (the message's effects, if any, were
        // undone there) is reported to the caller like any other invalid message.
        match self.refusal.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        last_index: Index,
        last_term: Term,
        pre: bool,
    ) {
        let can_vote = self.vote == from
            || (self.vote == NO_NODE && self.leader == NO_NODE)
            || (pre && term > self.term);
        let log_ok = self.log.is_up_to_date(last_index, last_term)
            || self.config.safety_fault == Some(SafetyFault::VoteWithoutLogCheck);
        let grant = can_vote && log_ok;
        let body = |reject| {
            if pre {
                MessageBody::PreVoteResponse { reject }
            } else {
                MessageBody::VoteResponse { reject }
            }
        };
        if grant {
            // A granted pre-vote answers at the proposed term so the pre-candidate counts it.
            self.send(from, term, body(false));
            if !pre {
                self.vote = from;
                self.election_elapsed = 0;
            }
        } else {
            self.send(from, self.term, body(true));
        }
    }

    fn step_candidate(&mut self, message: Message) {
        match message.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                let term = self.term;
                self.become_follower(term, message.from);
                self.step_follower(message);
            }
            // A granted pre-vote counts only for the term we would campaign at.
            MessageBody::PreVoteResponse { reject }
                if self.role == Role::PreCandidate && (reject || message.term == self.term + 1) =>
            {
                self.record_vote(message.from, !reject);
            }
            MessageBody::VoteResponse { reject } if self.role == Role::Candidate => {
                self.record_vote(message.from, !reject);
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, message: Message) {
        let from = message.from;
        match message.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.heard_from_leader(from);
                self.handle_append(from, prev_index, prev_term, &entries, commit);
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                self.heard_from_leader(from);
                let commit = commit.min(self.log.last_index());
                self.log.commit_to(commit);
                self.send(from, self.term, MessageBody::HeartbeatResponse { read_seq });
            }
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } => {
                self.heard_from_leader(from);
                self.handle_snapshot_chunk(from, meta, offset, data, done);
            }
            MessageBody::TimeoutNow => {
                // Leadership transfer: campaign at once, bypassing pre-vote and the lease.
                self.start_campaign(CampaignKind::Transfer);
            }
            _ => {}
        }
    }

    fn heard_from_leader(&mut self, leader: NodeId) {
        self.election_elapsed = 0;
        self.leader = leader;
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: &[Entry],
        commit: Index,
    ) {
        let committed = self.log.committed();
        if prev_index < committed {
            // Everything up to our commit index matches any leader's log.
            let body = MessageBody::AppendResponse {
                reject: false,
                index: committed,
                hint_index: 0,
                hint_term: 0,
            };
            self.send(from, self.term, body);
            return;
        }
        if !self.log.match_term(prev_index, prev_term) {
            let hint = prev_index.min(self.log.last_index());
            let (hint_index, hint_term) = self.log.find_conflict_by_term(hint, prev_term);
            let body = MessageBody::AppendResponse {
                reject: true,
                index: prev_index,
                hint_index,
                hint_term,
            };
            self.send(from, self.term, body);
            return;
        }
        let last_new = prev_index + entries.len() as u64;
        let replaced = self.log.append_after_match(entries);
        if replaced || entries.iter().any(|e| e.kind == EntryKind::ConfChange) {
            self.refresh_conf_from_log();
        }
        self.log.commit_to(commit.min(last_new));
        let body = MessageBody::AppendResponse {
            reject: false,
            index: last_new,
            hint_index: 0,
            hint_term: 0,
        };
        self.send(from, self.term, body);
    }

    fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        done: bool,
    ) {
        let committed = self.log.committed();
        if meta.index <= committed {
            self.incoming_snapshot = None;
            let body = MessageBody::AppendResponse {
                reject: false,
                index: committed,
                hint_index: 0,
                hint_term: 0,
            };
            self.send(from, self.term, body);
            return;
        }
        if offset == 0 {
            self.incoming_snapshot = Some(Box::new((meta.clone(), Vec::new())));
        }
        let expected = match self.incoming_snapshot.as_deref() {
            Some((held, buffer)) if *held == meta => buffer.len() as u64,
            _ => {
                self.incoming_snapshot = None;
                0
            }
        };
        let within_limit = expected + data.len() as u64 <= self.config.snapshot_bytes_max;
        if offset != expected || !within_limit {
            if !within_limit {
                self.incoming_snapshot = None;
            }
            let body = MessageBody::SnapshotResponse {
                snapshot_index: meta.index,
                next_offset: if within_limit { expected } else { 0 },
            };
            self.send(from, self.term, body);
            return;
        }
        let (_, buffer) = self
            .incoming_snapshot
            .as_deref_mut()
            .expect("offset matched a held buffer");
        buffer.extend_from_slice(&data);
        if !done {
            let next_offset = buffer.len() as u64;
            self.send(
                from,
                self.term,
                MessageBody::SnapshotResponse {
                    snapshot_index: meta.index,
                    next_offset,
                },
            );
            return;
        }
        let (meta, buffer) = *self.incoming_snapshot.take().expect("held buffer");
        // Checked before anything changes: an image storage would refuse to install must not
        // replace the log (the replica would stop when writing it). The leader is told, drops
        // the image it pinned and, after its next heartbeat round, streams its current one: a
        // damaged source costs one transfer per heartbeat interval, not a tight loop.
        if let Some(check) = self.config.snapshot_check {
            if check(&buffer).is_err() {
                self.refusal = Some(RaftError::InvalidMessage {
                    from,
                    why: "snapshot data fails its integrity check",
                });
                let body = MessageBody::SnapshotResponse {
                    snapshot_index: meta.index,
                    next_offset: SNAPSHOT_REFUSED,
                };
                self.send(from, self.term, body);
                return;
            }
        }
        let index = meta.index;
        if self.log.match_term(meta.index, meta.term) {
            // We already hold the snapshot's last entry: our log covers it, fast-forward commit.
            self.log.commit_to(index);
        } else {
            self.log.restore_snapshot(meta.index, meta.term);
            self.base_conf = meta.conf_state.clone();
            self.conf = meta.conf_state.clone();
            self.conf_index = meta.index;
            // The image goes to storage with the next Ready and is not kept here: only its meta
            // remains, as the log's compaction point and `base_conf`.
            let snapshot = Snapshot {
                meta,
                data: Bytes::from(buffer),
            };
            self.snapshot_to_install = Some(Box::new(snapshot));
        }
        let body = MessageBody::AppendResponse {
            reject: false,
            index,
            hint_index: 0,
            hint_term: 0,
        };
        self.send(from, self.term, body);
    }

    // ----- leader -----

    fn step_leader(&mut self, message: Message) {
        let from = message.from;
        if !self.progress.contains_key(&from) {
            return;
        }
        match message.body {
            MessageBody::AppendResponse {
                reject,
                index,
                hint_index,
                hint_term,
            } => {
                self.progress_mut(from).recent_active = true;
                if reject {
                    self.handle_append_rejection(from, index, hint_index, hint_term);
                } else {
                    self.handle_append_success(from, index);
                }
            }
            MessageBody::HeartbeatResponse { read_seq } => {
                self.handle_heartbeat_response(from, read_seq)
            }
            MessageBody::SnapshotResponse {
                snapshot_index,
                next_offset,
            } => {
                let progress = self.progress_mut(from);
                progress.recent_active = true;
                // An answer about an image no longer pinned (this follower now waits for a new
                // one, perhaps at the same index) is stale.
                if progress.state == ProgressState::Snapshot
                    && !progress.waits_for_image()
                    && progress.pending_snapshot == snapshot_index
                {
                    if next_offset == SNAPSHOT_REFUSED {
                        progress.snapshot_refused();
                    } else {
                        progress.snapshot_offset = next_offset;
                        self.send_snapshot_chunk(from);
                    }
                }
            }
            _ => {}
        }
    }

    fn progress_mut(&mut self, id: NodeId) -> &mut Progress {
        self.progress.get_mut(&id).expect("progress of a member")
    }

    fn handle_append_rejection(
        &mut self,
        from: NodeId,
        rejected: Index,
        hint_index: Index,
        hint_term: Term,
    ) {
        let match_hint = if hint_term > 0 {
            self.log.find_conflict_by_term(hint_index, hint_term).0
        } else {
            hint_index
        };
        let progress = self.progress_mut(from);
        if progress.maybe_decrease_to(rejected, match_hint) {
            if progress.state == ProgressState::Replicate {
                progress.become_probe();
            }
            self.send_append(from, true);
        }
    }

    fn handle_append_success(&mut self, from: NodeId, index: Index) {
        let last_index = self.log.last_index();
        let progress = self.progress_mut(from);
        let was_paused = progress.is_paused();
        if !progress.maybe_update(index) {
            if was_paused && !progress.is_paused() {
                self.send_append(from, false);
            }
            return;
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot if progress.match_index >= progress.pending_snapshot => {
                progress.become_replicate()
            }
            _ => {}
        }
        let caught_up = progress.match_index == last_index;
        self.maybe_commit();
        if self.role != Role::Leader {
            return;
        }
        if from == self.transfer_target && caught_up {
            self.send(from, self.term, MessageBody::TimeoutNow);
        }
        while self.send_append(from, false) {}
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64) {
        let last_index = self.log.last_index();
        let progress = self.progress_mut(from);
        progress.recent_active = true;
        progress.probe_sent = false;
        let state = progress.state;
        let behind = progress.match_index < last_index;
        if progress.read_seq_acked < read_seq {
            progress.read_seq_acked = read_seq;
        }
        match state {
            // Still waiting for an image: ask again (an earlier answer may have been stale or
            // failed); at most once per heartbeat round, and never two requests at once.
            ProgressState::Snapshot if self.progress[&from].waits_for_image() => self.want_image(),
            ProgressState::Snapshot => self.send_snapshot_chunk(from),
            // An append may have been lost: resend from where the follower is known to be.
            ProgressState::Replicate if behind => {
                self.progress_mut(from).free_oldest_if_full();
                self.send_append(from, true);
            }
            ProgressState::Probe if behind => {
                self.send_append(from, true);
            }
            _ => {}
        }
        self.release_reads();
    }

    /// Sends the next append to `to` if its progress allows. Returns whether one was sent.
    fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let committed = self.log.committed();
        let progress = &self.progress[&to];
        if progress.is_paused() {
            return false;
        }
        let next = progress.next_index;
        let prev_index = next - 1;
        let prev_term = self.log.term(prev_index);
        let entries = self.log.entries_from(next, self.config.append_bytes_max);
        let (Some(prev_term), Some(entries)) = (prev_term, entries) else {
            // The follower is behind our compaction point: it needs an image, which the caller
            // reads for us (we keep none). Appends to it pause until one is provided.
            let snapshot_index = self.log.snapshot_index();
            self.progress_mut(to)
                .become_snapshot_waiting(snapshot_index);
            self.want_image();
            return false;
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        self.progress_mut(to)
            .sent_entries(entries.last().map(|e| e.index));
        self.send(
            to,
            self.term,
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit: committed,
            },
        );
        true
    }

    /// Asks the caller for an image (in the next Ready) unless a request is already pending.
    fn want_image(&mut self) {
        debug_assert_eq!(self.role, Role::Leader);
        if self.image_request == ImageRequest::Idle {
            self.image_request = ImageRequest::Wanted;
        }
    }

    /// Answers a `Ready::snapshot_wanted` request with an image of the state machine. It is
    /// taken only while this replica leads and some follower waits for one, and only if it
    /// covers a prefix this replica holds and agrees with: its index at or after the compaction
    /// point and at most the applied index, its term and configuration those of the log at
    /// that index. It is then pinned into every waiting follower's progress and streamed;
    /// otherwise it is dropped (`SnapshotRefused`) and a waiting follower asks again after its
    /// next heartbeat answer.
    /// Contract: two images with the same meta are byte-identical, i.e. an image is a
    /// deterministic encoding of the state machine at its index (the node's kv images and the
    /// simulators' are). A follower tells streams apart by meta and offset only, so a chunk of
    /// an abandoned or refused stream that arrives late lands in its successor at that offset.
    pub fn provide_snapshot(&mut self, snapshot: Snapshot) -> Result<(), RaftError> {
        if self.image_request == ImageRequest::Outstanding {
            self.image_request = ImageRequest::Idle;
        }
        let index = snapshot.meta.index;
        self.check_image(&snapshot.meta)?;
        let waiting: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(_, p)| p.waits_for_image())
            .map(|(&id, _)| id)
            .collect();
        for to in waiting {
            assert!(
                self.progress[&to].pending_snapshot <= index,
                "image at {index} older than the compaction point {} a follower waits for",
                self.progress[&to].pending_snapshot
            );
            self.progress_mut(to).become_snapshot(snapshot.clone());
            self.send_snapshot_chunk(to);
        }
        // Everyone waiting is served: an unsurfaced request is moot.
        if self.image_request == ImageRequest::Wanted {
            self.image_request = ImageRequest::Idle;
        }
        Ok(())
    }

    fn check_image(&self, meta: &SnapshotMeta) -> Result<(), RaftError> {
        let refuse = |why| {
            Err(RaftError::SnapshotRefused {
                index: meta.index,
                why,
            })
        };
        if self.role != Role::Leader {
            return refuse("not the leader");
        }
        if !self.progress.values().any(Progress::waits_for_image) {
            return refuse("no follower waits for an image");
        }
        if meta.index < self.log.snapshot_index() {
            return refuse("older than the compaction point");
        }
        if meta.index > self.log.applied() {
            return refuse("beyond the applied index");
        }
        let term_checked = self.config.safety_fault != Some(SafetyFault::SnapshotTermUnchecked);
        if term_checked && self.log.term(meta.index) != Some(meta.term) {
            return refuse("its term differs from the log's at its index");
        }
        if self.conf_at(meta.index) != meta.conf_state {
            return refuse("its configuration differs from the log's at its index");
        }
        Ok(())
    }

    /// Answers a `Ready::snapshot_wanted` request whose image could not be read: a waiting
    /// follower asks again after its next heartbeat answer.
    pub fn snapshot_unavailable(&mut self) {
        if self.image_request == ImageRequest::Outstanding {
            self.image_request = ImageRequest::Idle;
        }
    }

    /// Bytes of a snapshot image this follower has received and holds until the stream ends.
    pub fn incoming_snapshot_bytes(&self) -> usize {
        self.incoming_snapshot
            .as_deref()
            .map_or(0, |(_, buffer)| buffer.len())
    }

    /// Bytes of snapshot images pinned by streams to followers (each stream counted, though
    /// streams of one image share its buffer). Zero once every stream has ended.
    pub fn snapshot_pinned_bytes(&self) -> usize {
        self.progress
            .values()
            .filter_map(|p| p.streaming.as_ref())
            .map(|snapshot| snapshot.data.len())
            .sum()
    }

    /// Whether a `Ready::snapshot_wanted` request is pending (to be made or unanswered).
    pub fn snapshot_requested(&self) -> bool {
        self.image_request != ImageRequest::Idle
    }

    fn send_snapshot_chunk(&mut self, to: NodeId) {
        let chunk_bytes = self.config.snapshot_chunk_bytes as u64;
        let progress = self.progress.get_mut(&to).expect("progress of a member");
        let snapshot = progress
            .streaming
            .as_ref()
            .expect("a snapshot is pinned while streaming");
        let meta = snapshot.meta.clone();
        let length = snapshot.data.len() as u64;
        let offset = progress.snapshot_offset.min(length);
        let end = (offset + chunk_bytes).min(length);
        let data = snapshot.data.slice(offset as usize..end as usize);
        let body = MessageBody::InstallSnapshot {
            meta,
            offset,
            data,
            done: end == length,
        };
        self.send(to, self.term, body);
    }

    fn broadcast_heartbeat(&mut self) {
        let committed = self.log.committed();
        let read_seq = self.read_seq;
        let targets: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .map(|(&id, p)| (id, p.match_index))
            .collect();
        for (to, match_index) in targets {
            // Never tell a follower to commit beyond what it is known to hold.
            let commit = committed.min(match_index);
            self.send(to, self.term, MessageBody::Heartbeat { commit, read_seq });
        }
        self.read_heartbeat_pending = false;
    }

    /// Sends new entries (and any commit advance) to every follower: one append per follower
    /// per Ready, however many proposals arrived since the last one. A follower with nothing
    /// new to receive gets a commit advance alone (an empty append) only once the advance has
    /// waited `commit_notice_ticks` for an append to carry it.
    fn broadcast_append(&mut self) {
        let committed = self.log.committed();
        let notice_due = self.commit_notice_due();
        let mut owed = false;
        let targets: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in targets {
            let mut sent = false;
            while self.send_append(to, false) {
                sent = true;
            }
            if !sent
                && committed > self.commit_broadcast
                && self.progress[&to].state == ProgressState::Replicate
            {
                if notice_due {
                    self.send_append(to, true);
                } else {
                    owed = true;
                }
            }
        }
        self.broadcast_pending = false;
        if !owed {
            self.commit_broadcast = committed;
            self.commit_notice_waited = 0;
        }
    }

    /// Whether a commit advance not yet carried to every follower is to be sent now, alone if
    /// no append carries it.
    fn commit_notice_due(&self) -> bool {
        self.log.committed() > self.commit_broadcast
            && self.commit_notice_waited >= self.config.commit_notice_ticks
    }

    fn maybe_commit(&mut self) -> bool {
        if self.conf.voters.is_empty() {
            return false;
        }
        self.scratch.clear();
        for &id in &self.conf.voters {
            let matched = if id == self.id {
                // The leader counts itself only for what its own storage made durable.
                self.log.persisted()
            } else {
                self.progress.get(&id).map_or(0, |p| p.match_index)
            };
            self.scratch.push(matched);
        }
        self.scratch.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = self.scratch[self.conf.voters.len() / 2];
        if quorum_index <= self.log.committed() {
            return false;
        }
        // Only entries of the current term commit by counting replicas (thesis 3.6.2, Fig. 8).
        let term_ok = self.log.term(quorum_index) == Some(self.term)
            || self.config.safety_fault == Some(SafetyFault::CommitEarlierTermByCount);
        if !term_ok {
            return false;
        }
        self.log.commit_to(quorum_index);
        self.on_commit_advanced();
        true
    }

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed()) == Some(self.term)
    }

    fn on_commit_advanced(&mut self) {
        if self.committed_in_current_term() && !self.reads_waiting_commit.is_empty() {
            for context in std::mem::take(&mut self.reads_waiting_commit) {
                self.start_read(context);
            }
        }
        // A leader removed from the voters steps down once that change is committed.
        if !self.conf.is_voter(self.id) && self.log.committed() >= self.conf_index {
            let term = self.term;
            self.become_follower(term, NO_NODE);
        }
    }

    // ----- proposals -----

    fn check_can_propose(&self) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer_target != NO_NODE {
            return Err(RaftError::TransferInProgress {
                to: self.transfer_target,
            });
        }
        let uncommitted = self.log.last_index() - self.log.committed();
        if uncommitted >= self.config.uncommitted_entries_max {
            return Err(RaftError::TooManyUncommitted {
                uncommitted,
                max: self.config.uncommitted_entries_max,
            });
        }
        Ok(())
    }

    /// Appends `data` as a new entry. Returns its index and term: the proposal succeeded iff the
    /// entry applied at that index has that term.
    pub fn propose(&mut self, data: Bytes) -> Result<(Index, Term), RaftError> {
        self.check_can_propose()?;
        let index = self.log.last_index() + 1;
        self.log.append(Entry {
            index,
            term: self.term,
            kind: EntryKind::Normal,
            data,
        });
        self.broadcast_pending = true;
        Ok((index, self.term))
    }

    /// Proposes a new membership. One voter added or removed at a time (thesis 4.1), any number
    /// of learner changes; refused while another change is uncommitted or before this leader
    /// committed an entry of its term (the single-server change safety conditions).
    pub fn propose_conf_change(&mut self, conf: ConfState) -> Result<Index, RaftError> {
        self.check_can_propose()?;
        if self.conf_index > self.log.committed() {
            return Err(RaftError::ConfChangePending {
                index: self.conf_index,
            });
        }
        if !self.committed_in_current_term() {
            return Err(RaftError::LeaderNotReady);
        }
        let conf = ConfState::new(conf.voters, conf.learners);
        if conf.voters.is_empty() {
            return Err(RaftError::InvalidConfChange("no voters".into()));
        }
        if conf.members().any(|id| id == NO_NODE) {
            return Err(RaftError::InvalidConfChange("node id 0".into()));
        }
        let added = conf
            .voters
            .iter()
            .filter(|id| !self.conf.is_voter(**id))
            .count();
        let removed = self
            .conf
            .voters
            .iter()
            .filter(|id| !conf.is_voter(**id))
            .count();
        if added + removed > 1 {
            return Err(RaftError::InvalidConfChange(format!(
                "{added} voters added and {removed} removed: change one voter at a time"
            )));
        }
        let index = self.log.last_index() + 1;
        let data = conf.encode();
        self.log.append(Entry {
            index,
            term: self.term,
            kind: EntryKind::ConfChange,
            data,
        });
        self.set_conf(conf, index);
        self.broadcast_pending = true;
        Ok(index)
    }

    fn set_conf(&mut self, conf: ConfState, index: Index) {
        self.conf = conf;
        self.conf_index = index;
        if self.role != Role::Leader {
            return;
        }
        let next = self.log.last_index() + 1;
        let inflight_max = self.config.inflight_max;
        for id in self.conf.members().collect::<Vec<_>>() {
            if id != self.id {
                self.progress.get_or_insert_with(id, || {
                    let mut progress = Progress::new(next, inflight_max);
                    progress.recent_active = true;
                    progress
                });
            }
        }
        let conf = &self.conf;
        self.progress.retain(|id, _| conf.contains(*id));
        if !self.conf.is_voter(self.transfer_target) {
            self.transfer_target = NO_NODE;
        }
        self.maybe_commit();
        self.release_reads();
    }

    /// Recomputes the configuration from the log after entries were appended or replaced:
    /// the latest configuration entry wins, committed or not (thesis 4.1).
    fn refresh_conf_from_log(&mut self) {
        let (conf, index) = match self.log.last_conf_entry() {
            Some(entry) => (
                ConfState::decode(&entry.data)
                    .expect("configuration entries are written by a leader's encode"),
                entry.index,
            ),
            None => (self.base_conf.clone(), self.log.snapshot_index()),
        };
        if conf != self.conf || index != self.conf_index {
            self.set_conf(conf, index);
        }
    }

    /// Asks for a linearizable read point. The answer arrives as a `ReadState` in a later Ready
    /// once a quorum confirmed this leadership (ReadIndex, thesis 6.4), or in `dropped_reads`.
    pub fn read_index(&mut self, context: u64) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if self.pending_reads.len() + self.reads_waiting_commit.len()
            >= self.config.pending_reads_max
        {
            return Err(RaftError::TooManyPendingReads {
                max: self.config.pending_reads_max,
            });
        }
        if self.committed_in_current_term() {
            self.start_read(context);
        } else {
            self.reads_waiting_commit.push(context);
        }
        Ok(())
    }

    fn start_read(&mut self, context: u64) {
        let index = self.log.committed();
        if self.conf.voters.len() == 1 && self.conf.is_voter(self.id) {
            self.read_states.push(ReadState { context, index });
            return;
        }
        self.read_seq += 1;
        self.pending_reads.push_back(PendingRead {
            context,
            index,
            seq: self.read_seq,
        });
        self.read_heartbeat_pending = true;
    }

    fn release_reads(&mut self) {
        if self.pending_reads.is_empty() || self.conf.voters.is_empty() {
            return;
        }
        self.scratch.clear();
        for &id in &self.conf.voters {
            let acked = if id == self.id {
                self.read_seq
            } else {
                self.progress.get(&id).map_or(0, |p| p.read_seq_acked)
            };
            self.scratch.push(acked);
        }
        self.scratch.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = self.scratch[self.conf.voters.len() / 2];
        while let Some(read) = self.pending_reads.front() {
            if read.seq > confirmed {
                break;
            }
            self.read_states.push(ReadState {
                context: read.context,
                index: read.index,
            });
            self.pending_reads.pop_front();
        }
    }

    /// Hands leadership to `to` (thesis 3.10): proposals pause, the target is caught up, then
    /// told to campaign at once. Aborted after an election timeout.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id || !self.conf.is_voter(to) {
            return Err(RaftError::InvalidTransferTarget(to));
        }
        self.transfer_target = to;
        self.election_elapsed = 0;
        if self.progress[&to].match_index == self.log.last_index() {
            self.send(to, self.term, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    /// Discards log entries up to `index` (applied, and written to storage by the caller), and
    /// returns the new snapshot meta. No image is kept: the caller's storage holds the state
    /// machine, and provides an image when a follower behind `index` needs one.
    pub fn compact(&mut self, index: Index) -> Result<SnapshotMeta, RaftError> {
        if index <= self.log.snapshot_index() {
            return Err(RaftError::InvalidCompaction {
                index,
                why: "at or below the current snapshot",
            });
        }
        if index > self.log.applied() {
            return Err(RaftError::InvalidCompaction {
                index,
                why: "beyond the applied index",
            });
        }
        let term = self
            .log
            .term(index)
            .expect("applied entries are in the log");
        let conf_state = self.conf_at(index);
        self.log.compact(index);
        self.base_conf = conf_state.clone();
        Ok(SnapshotMeta {
            index,
            term,
            conf_state,
        })
    }

    /// The configuration in effect at `index` (at or after the snapshot point, at most the last
    /// index). Scans back through the log: O(entries after the last configuration change).
    pub fn conf_state_at(&self, index: Index) -> ConfState {
        assert!(
            index >= self.log.snapshot_index() && index <= self.log.last_index(),
            "conf_state_at({index}) outside the log"
        );
        self.conf_at(index)
    }

    /// The configuration in effect at `index` (at or after the snapshot point).
    fn conf_at(&self, index: Index) -> ConfState {
        let mut probe = index;
        while probe > self.log.snapshot_index() {
            let entry = self.log.entry(probe).expect("index within the log");
            if entry.kind == EntryKind::ConfChange {
                return ConfState::decode(&entry.data)
                    .expect("configuration entries are well formed");
            }
            probe -= 1;
        }
        self.base_conf.clone()
    }

    /// Where the log was last compacted or a snapshot installed, if ever (the meta only: no
    /// image is held).
    pub fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        let index = self.log.snapshot_index();
        (index > 0).then(|| SnapshotMeta {
            index,
            term: self.log.term(index).expect("the snapshot point has a term"),
            conf_state: self.base_conf.clone(),
        })
    }

    // ----- Ready -----

    pub fn has_ready(&self) -> bool {
        let leader_work = self.role == Role::Leader
            && (self.broadcast_pending || self.read_heartbeat_pending || self.commit_notice_due());
        leader_work
            || !self.messages.is_empty()
            || !self.persisted_messages.is_empty()
            || self.log.has_unstable()
            || self.snapshot_to_install.is_some()
            || self.image_request == ImageRequest::Wanted
            || self.log.has_next_committed()
            || !self.read_states.is_empty()
            || !self.dropped_reads.is_empty()
            || self.hard_state() != self.last_hard_state
            || self.soft_state() != self.last_soft_state
    }

    /// Collects everything to persist, send and apply. See [`Ready`] for the contract.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            if self.broadcast_pending || self.commit_notice_due() {
                self.broadcast_append();
            }
            if self.read_heartbeat_pending {
                self.broadcast_heartbeat();
            }
        }
        self.ready_number += 1;
        let number = self.ready_number;
        let snapshot = self.snapshot_to_install.take().map(|boxed| *boxed);
        let entries = self.log.take_unstable();
        let hard_state = self.hard_state();
        let previous = self.last_hard_state;
        let hard_state = (hard_state != previous).then(|| {
            self.last_hard_state = hard_state;
            hard_state
        });
        let vote_changed =
            hard_state.is_some_and(|h| h.term != previous.term || h.vote != previous.vote);
        let must_sync = !entries.is_empty() || snapshot.is_some() || vote_changed;
        let snapshot_wanted = self.image_request == ImageRequest::Wanted;
        if snapshot_wanted {
            self.image_request = ImageRequest::Outstanding;
        }
        let soft = self.soft_state();
        let soft_state = (soft != self.last_soft_state).then(|| {
            self.last_soft_state = soft;
            soft
        });
        let ready = Ready {
            number,
            soft_state,
            hard_state,
            snapshot,
            entries,
            messages: std::mem::take(&mut self.messages),
            persisted_messages: std::mem::take(&mut self.persisted_messages),
            committed_entries: self.log.take_committed(self.config.apply_bytes_max),
            read_states: std::mem::take(&mut self.read_states),
            dropped_reads: std::mem::take(&mut self.dropped_reads),
            must_sync,
            vote_changed,
            snapshot_wanted,
        };
        if ready.must_persist() {
            self.unpersisted
                .push_back((number, ready.entries.last().map(|e| (e.index, e.term))));
        }
        ready
    }

    /// Every Ready up to and including `number` is durable.
    pub fn on_persisted(&mut self, number: u64) {
        assert!(
            number <= self.ready_number,
            "persisted Ready {number} never handed out"
        );
        while let Some(&(ready, last)) = self.unpersisted.front() {
            if ready > number {
                break;
            }
            self.unpersisted.pop_front();
            if let Some((index, term)) = last {
                self.log.persisted_to(index, term);
            }
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }
}

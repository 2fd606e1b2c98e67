//! Node-level liveness: which peer nodes were heard from recently. One tracker per shard; any
//! traffic from a node (a raft message or a bare node heartbeat) counts. Hibernating follower
//! groups rely on it instead of per-group heartbeats: they sleep while their leader's node is
//! live and wake when it goes silent. It also keeps each peer's own report of the nodes *it*
//! has not heard from lately (its quiet report, carried by its frames), so a follower can tell
//! when its leader and another follower no longer hear each other although it hears both.

use std::collections::BTreeMap;

use crate::raft::NodeId;

#[derive(Debug)]
pub struct NodeLiveness {
    /// Ticks since each peer was last heard from. Invariant: only peers, never this node.
    silent_ticks: BTreeMap<NodeId, u32>,
    timeout_ticks: u32,
    /// Per peer, the nodes its latest quiet report named. Invariant: keys are peers (as
    /// `silent_ticks`'); a peer that sent no report, or an empty one, has no entry.
    reported_quiet: BTreeMap<NodeId, Vec<NodeId>>,
}

impl NodeLiveness {
    pub fn new(peers: impl IntoIterator<Item = NodeId>, timeout_ticks: u32) -> NodeLiveness {
        assert!(timeout_ticks > 0);
        NodeLiveness {
            silent_ticks: peers.into_iter().map(|id| (id, 0)).collect(),
            timeout_ticks,
            reported_quiet: BTreeMap::new(),
        }
    }

    /// Keeps `reporter`'s latest quiet report (it replaces the previous one). Reports of
    /// nodes that are not peers are ignored.
    pub fn report(&mut self, reporter: NodeId, quiet: &[NodeId]) {
        if !self.silent_ticks.contains_key(&reporter) {
            return;
        }
        if quiet.is_empty() {
            self.reported_quiet.remove(&reporter);
        } else {
            let kept = self.reported_quiet.entry(reporter).or_default();
            kept.clear();
            kept.extend_from_slice(quiet);
        }
    }

    /// Whether `reporter`'s latest quiet report named `node`.
    pub fn reports_quiet(&self, reporter: NodeId, node: NodeId) -> bool {
        self.reported_quiet
            .get(&reporter)
            .is_some_and(|quiet| quiet.contains(&node))
    }

    /// The peers not heard from within the last `ticks` ticks (this node's quiet report).
    pub fn quiet_within(&self, ticks: u32) -> impl Iterator<Item = NodeId> + '_ {
        self.silent_ticks
            .iter()
            .filter(move |&(_, &silent)| silent >= ticks)
            .map(|(&node, _)| node)
    }

    pub fn heard_from(&mut self, node: NodeId) {
        if let Some(silent) = self.silent_ticks.get_mut(&node) {
            *silent = 0;
        }
    }

    /// Advances time; returns the peers that just crossed the timeout (went down).
    pub fn tick(&mut self) -> Vec<NodeId> {
        let mut newly_down = Vec::new();
        for (&node, silent) in &mut self.silent_ticks {
            *silent = silent.saturating_add(1);
            if *silent == self.timeout_ticks {
                newly_down.push(node);
            }
        }
        newly_down
    }

    /// Unknown nodes count as down: a group led by a node we do not know must not sleep.
    pub fn is_live(&self, node: NodeId) -> bool {
        self.silent_ticks
            .get(&node)
            .is_some_and(|&silent| silent < self.timeout_ticks)
    }

    /// Whether `node` was heard from within the last `ticks` ticks (a stricter test than
    /// [`NodeLiveness::is_live`]: for choices that want the peer answering now).
    pub fn heard_within(&self, node: NodeId, ticks: u32) -> bool {
        self.silent_ticks
            .get(&node)
            .is_some_and(|&silent| silent < ticks)
    }

    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.silent_ticks.keys().copied()
    }
}

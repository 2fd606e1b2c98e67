//! Node-level liveness: which peer nodes were heard from recently. One tracker per shard; any
//! traffic from a node (a raft message or a bare node heartbeat) counts. Hibernating follower
//! groups rely on it instead of per-group heartbeats: they sleep while their leader's node is
//! live and wake when it goes silent.

use std::collections::BTreeMap;

use crate::raft::NodeId;

#[derive(Debug)]
pub struct NodeLiveness {
    /// Ticks since each peer was last heard from. Invariant: only peers, never this node.
    silent_ticks: BTreeMap<NodeId, u32>,
    timeout_ticks: u32,
}

impl NodeLiveness {
    pub fn new(peers: impl IntoIterator<Item = NodeId>, timeout_ticks: u32) -> NodeLiveness {
        assert!(timeout_ticks > 0);
        NodeLiveness {
            silent_ticks: peers.into_iter().map(|id| (id, 0)).collect(),
            timeout_ticks,
        }
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

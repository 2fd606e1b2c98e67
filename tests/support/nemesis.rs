//! The nemesis: on a schedule drawn from one seed, injects one fault at a time into a
//! `ProxiedCluster` (SIGKILL + restart, SIGSTOP/SIGCONT, a symmetric cut between two nodes, a
//! majority/minority split, an isolated leader, one-way cuts, slow links), holds it, heals
//! everything, and lets the cluster recover before the next. Every fault and heal is logged
//! with its time since the start of the run.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kahuna::raft::SeededRng;

use super::proxied_cluster::{ProxiedCluster, NODES};
use super::proxy::LinkMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Every kind of fault, chosen at random.
    Mixed,
    /// Only isolated leaders, one after another (the stale-read control needs these).
    IsolateLeaders,
}

#[derive(Default, Clone, Debug)]
pub struct FaultLog {
    /// (time since start, what happened)
    pub entries: Vec<(Duration, String)>,
    /// Faults injected, by kind.
    pub counts: BTreeMap<&'static str, u64>,
}

impl FaultLog {
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self
            .counts
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        format!(
            "{} faults ({})",
            self.counts.values().sum::<u64>(),
            kinds.join(", ")
        )
    }

    pub fn text(&self) -> String {
        self.entries
            .iter()
            .map(|(at, what)| format!("[+{:7.3}s] {what}\n", at.as_secs_f64()))
            .collect()
    }
}

pub struct Nemesis {
    rng: SeededRng,
    schedule: Schedule,
    start: Instant,
    log: FaultLog,
    verbose: bool,
}

impl Nemesis {
    pub fn new(seed: u64, schedule: Schedule, start: Instant) -> Nemesis {
        Nemesis {
            rng: SeededRng::new(seed ^ 0x006e_656d_6573_6973),
            schedule,
            start,
            log: FaultLog::default(),
            verbose: std::env::var("KAHUNA_LIN_VERBOSE").is_ok(),
        }
    }

    fn note(&mut self, what: String) {
        let at = self.start.elapsed();
        if self.verbose {
            println!("[+{:7.3}s] {what}", at.as_secs_f64());
        }
        self.log.entries.push((at, what));
    }

    fn count(&mut self, kind: &'static str) {
        *self.log.counts.entry(kind).or_default() += 1;
    }

    fn pick_node(&mut self) -> u64 {
        self.rng.range(1, NODES + 1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.rng.range(low, high))
    }

    /// The node that leads the most partitions (ties: lowest id), else a random one.
    fn leader(&mut self, cluster: &ProxiedCluster) -> (u64, String) {
        let counts = cluster.leader_counts();
        match counts
            .iter()
            .max_by_key(|(node, led)| (**led, std::cmp::Reverse(**node)))
        {
            Some((&node, &led)) if led > 0 => (node, format!("leads {led}")),
            _ => (self.pick_node(), "no leader known".into()),
        }
    }

    /// Half the time the busiest leader, else any node.
    fn leader_or_any(&mut self, cluster: &ProxiedCluster) -> (u64, String) {
        if self.rng.range(0, 2) == 0 {
            self.leader(cluster)
        } else {
            (self.pick_node(), "random node".into())
        }
    }

    /// Injects one fault, returning how long to hold it.
    fn inject(&mut self, cluster: &mut ProxiedCluster) -> Duration {
        let kinds: &[&'static str] = match self.schedule {
            Schedule::Mixed => &[
                "kill",
                "pause",
                "partition-pair",
                "majority-minority",
                "isolate-leader",
                "one-way",
                "delay",
            ],
            Schedule::IsolateLeaders => &["isolate-leader"],
        };
        let kind = kinds[self.rng.range(0, kinds.len() as u64) as usize];
        // An isolated leader must stay cut long enough for a new leader to take writes.
        let hold = match self.schedule {
            Schedule::Mixed => self.millis(800, 2_500),
            Schedule::IsolateLeaders => self.millis(2_000, 3_000),
        };
        self.count(kind);
        match kind {
            "kill" => {
                let (node, why) = self.leader_or_any(cluster);
                cluster.kill9(node);
                self.note(format!("fault kill node {node} (SIGKILL; {why})"));
            }
            "pause" => {
                let (node, why) = self.leader_or_any(cluster);
                cluster.pause(node);
                self.note(format!("fault pause node {node} (SIGSTOP; {why})"));
            }
            "partition-pair" => {
                let a = self.pick_node();
                let b = a % NODES + 1;
                cluster.set_link(a, b, LinkMode::Cut);
                cluster.set_link(b, a, LinkMode::Cut);
                self.note(format!("fault partition-pair {a} <-/-> {b}"));
            }
            "majority-minority" => {
                let node = self.pick_node();
                cluster.isolate(node);
                self.note(format!("fault majority-minority: {{{node}}} | rest"));
            }
            "isolate-leader" => {
                let (node, why) = self.leader(cluster);
                cluster.isolate(node);
                self.note(format!("fault isolate-leader node {node} ({why})"));
            }
            "one-way" => {
                let from = self.pick_node();
                let to = (from + self.rng.range(0, NODES - 1)) % NODES + 1;
                match self.rng.range(0, 3) {
                    0 => {
                        cluster.set_link(from, to, LinkMode::Cut);
                        self.note(format!("fault one-way {from} -/-> {to}"));
                    }
                    1 => {
                        for other in (1..=NODES).filter(|&n| n != from) {
                            cluster.set_link(from, other, LinkMode::Cut);
                        }
                        self.note(format!("fault one-way: node {from} cannot send"));
                    }
                    _ => {
                        for other in (1..=NODES).filter(|&n| n != from) {
                            cluster.set_link(other, from, LinkMode::Cut);
                        }
                        self.note(format!("fault one-way: node {from} cannot receive"));
                    }
                }
            }
            "delay" => {
                let node = self.pick_node();
                let delay = self.millis(20, 250);
                for other in (1..=NODES).filter(|&n| n != node) {
                    cluster.set_link(node, other, LinkMode::Delay(delay));
                }
                self.note(format!("fault delay: node {node}'s messages +{delay:?}"));
            }
            other => unreachable!("unknown fault kind {other}"),
        }
        hold
    }

    /// Runs faults until `stop` is set or `until` passes, then heals everything.
    pub fn run(&mut self, cluster: &mut ProxiedCluster, until: Instant, stop: &AtomicBool) {
        let sleep_until = |deadline: Instant| {
            while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        // Let the workload start on a healthy cluster.
        sleep_until(Instant::now() + self.millis(500, 1_000));
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            let hold = self.inject(cluster);
            sleep_until((Instant::now() + hold).min(until));
            cluster.heal_all();
            self.note("heal".into());
            sleep_until((Instant::now() + self.millis(400, 1_200)).min(until));
        }
        cluster.heal_all();
    }

    pub fn log(&self) -> &FaultLog {
        &self.log
    }
}

/// Runs the nemesis on its own thread; the join handle gives back the cluster and its log.
pub fn spawn(
    mut cluster: ProxiedCluster,
    seed: u64,
    schedule: Schedule,
    start: Instant,
    until: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(ProxiedCluster, FaultLog)> {
    std::thread::spawn(move || {
        let mut nemesis = Nemesis::new(seed, schedule, start);
        nemesis.run(&mut cluster, until, &stop);
        (cluster, nemesis.log().clone())
    })
}

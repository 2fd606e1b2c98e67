//! Client workloads run during faults, written against `KvClient`:
//! - registers: read / put / delete / compare-and-set on many keys (spread over the
//!   partitions), and scans of all of them, every invocation and completion recorded with
//!   monotonic times; writes without a definite answer are recorded as indeterminate (no return
//!   time). Values are unique u64 ids written as decimal text, so a read names the write it
//!   saw. A scan is recorded as one read of every key over the scan's whole interval (a key it
//!   did not return as a read of an absent key): each partition's page is linearizable, so
//!   each key's part of the answer took effect at some point inside that interval. That checks
//!   every key a scan returns or misses, not that the scan is one snapshot (it is not, across
//!   partitions).
//! - an append-only set per key: add = read, then compare-and-set of the list with the new
//!   element appended; an acknowledged add must be in the final read, an add that certainly
//!   failed must not, and nothing else may appear.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kahuna::lincheck::{Operation, RegisterInput, RegisterOutput};
use kahuna::raft::SeededRng;

use super::kv_client::{Answer, CasAnswer, KvClient};

pub type RegisterOperation = Operation<RegisterInput, RegisterOutput>;

/// A value no workload writes: what an unparseable read decodes to (the checker rejects it).
pub const VALUE_GARBLED: u64 = u64::MAX;

pub fn encode_value(value: u64) -> Vec<u8> {
    value.to_string().into_bytes()
}

pub fn decode_value(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(VALUE_GARBLED)
}

/// Percentages of reads, puts, deletes and scans (the rest are compare-and-sets).
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    pub read_percent: u64,
    pub put_percent: u64,
    pub delete_percent: u64,
    pub scan_percent: u64,
}

pub const MIXED: Mix = Mix {
    read_percent: 42,
    put_percent: 20,
    delete_percent: 8,
    scan_percent: 5,
};
pub const READS_ONLY: Mix = Mix {
    read_percent: 100,
    put_percent: 0,
    delete_percent: 0,
    scan_percent: 0,
};
pub const WRITES_ONLY: Mix = Mix {
    read_percent: 0,
    put_percent: 50,
    delete_percent: 10,
    scan_percent: 0,
};

#[derive(Default, Debug, Clone)]
pub struct ClientStats {
    pub ok: u64,
    pub indeterminate: u64,
    pub failed_reads: u64,
    /// Scans answered (each recorded as a read of every key).
    pub scans: u64,
    /// Deletes recorded (answered or indeterminate).
    pub deletes: u64,
    /// Messages of unknown outcomes that were not plain timeouts (worth a look).
    pub odd_answers: BTreeMap<String, u64>,
}

pub struct RegisterClient<'a> {
    pub client: Box<dyn KvClient + 'a>,
    pub thread: usize,
    pub keys: &'a [Vec<u8>],
    pub mix: Mix,
    pub epoch: Instant,
}

fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

fn note_odd(stats: &mut ClientStats, why: &str) {
    if !why.contains("timed out") {
        let short: String = why.chars().take(60).collect();
        *stats.odd_answers.entry(short).or_default() += 1;
    }
}

impl RegisterClient<'_> {
    /// Runs until `until` or `stop`; returns (key index, operation) for every recorded op.
    pub fn run(
        mut self,
        seed: u64,
        until: Instant,
        stop: &AtomicBool,
    ) -> (Vec<(usize, RegisterOperation)>, ClientStats) {
        let mut rng = SeededRng::new(seed ^ (self.thread as u64).wrapping_mul(0x9E37_79B9));
        let mut history = Vec::new();
        let mut stats = ClientStats::default();
        // The last revision this client saw per key: what its compare-and-sets expect.
        let mut seen: BTreeMap<usize, u64> = BTreeMap::new();
        let mut counter = 0u64;
        let scan_prefix = common_prefix(self.keys);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            let key_index = rng.range(0, self.keys.len() as u64) as usize;
            let key = &self.keys[key_index];
            counter += 1;
            let value = ((self.thread as u64 + 1) << 40) | counter;
            let dice = rng.range(0, 100);
            let mix = self.mix;
            let puts_below = mix.read_percent + mix.put_percent;
            let deletes_below = puts_below + mix.delete_percent;
            let scans_below = deletes_below + mix.scan_percent;
            if (deletes_below..scans_below).contains(&dice) {
                self.scan(&scan_prefix, &mut seen, &mut history, &mut stats);
                continue;
            }
            let input = if dice < mix.read_percent {
                RegisterInput::Read
            } else if dice < puts_below {
                RegisterInput::Put { value }
            } else if dice < deletes_below {
                RegisterInput::Delete
            } else {
                let expected_revision = seen.get(&key_index).copied().unwrap_or(0);
                RegisterInput::Cas {
                    expected_revision,
                    value,
                }
            };
            let call = nanos_since(self.epoch);
            let output = match input {
                RegisterInput::Read => match self.client.read(key) {
                    Answer::Done(found) => {
                        let found = found.map(|(v, r)| (decode_value(&v), r));
                        if let Some((_, revision)) = found {
                            seen.insert(key_index, revision);
                        }
                        RegisterOutput::Read(found)
                    }
                    Answer::Failed(_) | Answer::Unknown(_) => {
                        // A read that got no answer changed nothing: not recorded.
                        stats.failed_reads += 1;
                        continue;
                    }
                },
                RegisterInput::Put { value } => match self.client.put(key, &encode_value(value)) {
                    Answer::Done(revision) => {
                        seen.insert(key_index, revision);
                        RegisterOutput::Written { revision }
                    }
                    Answer::Failed(_) => continue,
                    Answer::Unknown(why) => {
                        note_odd(&mut stats, &why);
                        RegisterOutput::Unknown
                    }
                },
                RegisterInput::Cas {
                    expected_revision,
                    value,
                } => match self
                    .client
                    .cas(key, expected_revision, &encode_value(value))
                {
                    Answer::Done(CasAnswer::Written(revision)) => {
                        seen.insert(key_index, revision);
                        RegisterOutput::Written { revision }
                    }
                    Answer::Done(CasAnswer::Mismatch(current)) => {
                        seen.insert(key_index, current);
                        RegisterOutput::CasMismatch { current }
                    }
                    Answer::Failed(_) => continue,
                    Answer::Unknown(why) => {
                        note_odd(&mut stats, &why);
                        RegisterOutput::Unknown
                    }
                },
                RegisterInput::Delete => match self.client.delete(key) {
                    Answer::Done(previous) => {
                        seen.insert(key_index, 0);
                        RegisterOutput::Deleted { previous }
                    }
                    Answer::Failed(_) => continue,
                    Answer::Unknown(why) => {
                        note_odd(&mut stats, &why);
                        RegisterOutput::Unknown
                    }
                },
            };
            if input == RegisterInput::Delete {
                stats.deletes += 1;
            }
            let ret = if output == RegisterOutput::Unknown {
                stats.indeterminate += 1;
                None
            } else {
                stats.ok += 1;
                Some(nanos_since(self.epoch))
            };
            history.push((
                key_index,
                Operation {
                    client: self.thread,
                    input,
                    output,
                    call,
                    ret,
                },
            ));
        }
        (history, stats)
    }

    /// Scans every key and records the answer as one read per key over the scan's interval.
    /// A scan without an answer changed nothing: not recorded.
    fn scan(
        &mut self,
        prefix: &[u8],
        seen: &mut BTreeMap<usize, u64>,
        history: &mut Vec<(usize, RegisterOperation)>,
        stats: &mut ClientStats,
    ) {
        let call = nanos_since(self.epoch);
        // More than there are keys: a scan that returned exactly `keys` items would not show
        // a key that should not exist.
        let items = match self.client.scan(prefix, self.keys.len() + 1) {
            Answer::Done(items) => items,
            Answer::Failed(_) | Answer::Unknown(_) => {
                stats.failed_reads += 1;
                return;
            }
        };
        let ret = nanos_since(self.epoch);
        let mut found: BTreeMap<&[u8], (u64, u64)> = BTreeMap::new();
        for (key, value, revision) in &items {
            found.insert(key.as_ref(), (decode_value(value), *revision));
        }
        stats.scans += 1;
        for (key_index, key) in self.keys.iter().enumerate() {
            let read = found.remove(key.as_slice());
            if let Some((_, revision)) = read {
                seen.insert(key_index, revision);
            }
            stats.ok += 1;
            history.push((
                key_index,
                Operation {
                    client: self.thread,
                    input: RegisterInput::Read,
                    output: RegisterOutput::Read(read),
                    call,
                    ret: Some(ret),
                },
            ));
        }
        // A key under the prefix that no client writes: record it against key 0 as a value
        // nobody wrote, so the checker rejects the history.
        for _ in found {
            history.push((
                0,
                Operation {
                    client: self.thread,
                    input: RegisterInput::Read,
                    output: RegisterOutput::Read(Some((VALUE_GARBLED, 0))),
                    call,
                    ret: Some(ret),
                },
            ));
        }
    }
}

/// The longest prefix every key shares (what a scan of all of them asks for).
fn common_prefix(keys: &[Vec<u8>]) -> Vec<u8> {
    let Some(first) = keys.first() else {
        return Vec::new();
    };
    let mut length = first.len();
    for key in &keys[1..] {
        length = length.min(first.iter().zip(key).take_while(|(a, b)| a == b).count());
    }
    first[..length].to_vec()
}

/// What became of one add to a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddFate {
    Acknowledged,
    /// Its compare-and-set got no definite answer.
    Maybe,
    /// Every attempt was refused: it must not be in the set.
    NotAdded,
}

pub fn encode_set(elements: &[u64]) -> Vec<u8> {
    elements
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// The elements of a set value in order; `None` if it is not a list of numbers.
pub fn decode_set(bytes: &[u8]) -> Option<Vec<u64>> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',').map(|e| e.parse().ok()).collect()
}

/// Attempts per add (a read and a compare-and-set each) before it counts as not added.
const SET_ADD_ATTEMPTS_MAX: usize = 20;

/// Adds unique elements to random sets until `until`; returns (set index, element, fate).
pub fn run_set_client(
    client: &mut dyn KvClient,
    thread: usize,
    set_keys: &[Vec<u8>],
    seed: u64,
    until: Instant,
    stop: &AtomicBool,
) -> Vec<(usize, u64, AddFate)> {
    let mut rng = SeededRng::new(seed ^ 0x5e7 ^ ((thread as u64) << 20));
    let mut adds = Vec::new();
    let mut counter = 0u64;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        let set = rng.range(0, set_keys.len() as u64) as usize;
        let key = &set_keys[set];
        counter += 1;
        let element = ((thread as u64 + 1) << 32) | counter;
        let mut fate = AddFate::NotAdded;
        for _ in 0..SET_ADD_ATTEMPTS_MAX {
            let (mut elements, revision) = match client.read(key) {
                Answer::Done(Some((value, revision))) => {
                    (decode_set(&value).unwrap_or_default(), revision)
                }
                Answer::Done(None) => (Vec::new(), 0),
                _ => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            elements.push(element);
            match client.cas(key, revision, &encode_set(&elements)) {
                Answer::Done(CasAnswer::Written(_)) => {
                    fate = AddFate::Acknowledged;
                    break;
                }
                Answer::Done(CasAnswer::Mismatch(_)) | Answer::Failed(_) => continue,
                Answer::Unknown(_) => {
                    fate = AddFate::Maybe;
                    break;
                }
            }
        }
        adds.push((set, element, fate));
    }
    adds
}

/// Problems of a set's final value given the adds made to it (empty: all good).
pub fn check_set(final_elements: &[u64], adds: &[(u64, AddFate)]) -> Vec<String> {
    let mut problems = Vec::new();
    let present: BTreeSet<u64> = final_elements.iter().copied().collect();
    if present.len() != final_elements.len() {
        problems.push(format!("duplicate elements in {final_elements:?}"));
    }
    let fates: BTreeMap<u64, AddFate> = adds.iter().copied().collect();
    for (element, fate) in &fates {
        match fate {
            AddFate::Acknowledged if !present.contains(element) => {
                problems.push(format!("acknowledged add {element} is lost"))
            }
            AddFate::NotAdded if present.contains(element) => {
                problems.push(format!("refused add {element} is present"))
            }
            _ => {}
        }
    }
    for element in &present {
        if !fates.contains_key(element) {
            problems.push(format!("element {element} was never added"));
        }
    }
    problems
}

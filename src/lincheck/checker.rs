//! The search: Wing & Gong's backtracking over a doubly linked list of call and return events
//! sorted by time, linearizing an operation "just in time" (only calls that precede the first
//! pending return are candidates), with Lowe's cache of (set of linearized operations, model
//! state) pairs already explored, as in Porcupine. Indeterminate operations return at infinity,
//! so they can always be linearized last, where they have no visible effect.
//!
//! Bounded: at most `CheckOptions::steps_max` search steps per key; beyond it the verdict is
//! `Unknown`, never "linearizable".

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;

use super::history::{validate, HistoryError, Operation};
use super::model::Model;

/// One object's history under model `M`.
pub type History<M> = Vec<Operation<<M as Model>::Input, <M as Model>::Output>>;

#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Search steps (a candidate tried or a backtrack) per key before giving up.
    pub steps_max: u64,
    /// Operations per key the checker accepts (bounds the bitsets).
    pub operations_max: usize,
    /// Bytes of explored (linearized set, state) pairs kept per key before giving up.
    pub cache_bytes_max: usize,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            steps_max: 10_000_000,
            operations_max: 200_000,
            cache_bytes_max: 1 << 30,
        }
    }
}

/// Why no linearization exists: the deepest partial linearization the search reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure<S> {
    /// Indices (into the history) of the operations of the longest linearizable prefix found,
    /// in linearization order.
    pub longest_prefix: Vec<usize>,
    /// The model state after that prefix.
    pub state: S,
    /// The operations that could have come next (invoked before the first pending return),
    /// none of which the model accepts from `state`.
    pub stuck: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<S> {
    Linearizable,
    NotLinearizable(Failure<S>),
    /// The step or memory budget ran out: nothing is claimed.
    Unknown {
        steps: u64,
        cache_entries: usize,
    },
    Invalid(HistoryError),
}

impl<S> Verdict<S> {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

const NIL: usize = usize::MAX;

/// The event list: node `2i` is operation i's call, `2i + 1` its return; `head` is a sentinel.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl Events {
    fn new<I, O>(history: &[Operation<I, O>]) -> Events {
        let mut order: Vec<usize> = (0..history.len() * 2).collect();
        // By time; at equal times calls first (they overlap: the permissive reading), then by
        // index for determinism.
        order.sort_by_key(|&node| {
            let operation = &history[node / 2];
            let time = if node % 2 == 0 {
                operation.call
            } else {
                operation.return_time()
            };
            (time, node % 2, node / 2)
        });
        let head = history.len() * 2;
        let mut next = vec![NIL; head + 1];
        let mut prev = vec![NIL; head + 1];
        let mut last = head;
        for node in order {
            next[last] = node;
            prev[node] = last;
            last = node;
        }
        Events { next, prev, head }
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }

    fn unlink(&mut self, node: usize) {
        let (before, after) = (self.prev[node], self.next[node]);
        self.next[before] = after;
        if after != NIL {
            self.prev[after] = before;
        }
    }

    fn relink(&mut self, node: usize) {
        let (before, after) = (self.prev[node], self.next[node]);
        self.next[before] = node;
        if after != NIL {
            self.prev[after] = node;
        }
    }

    /// Removes operation `op`'s call and return.
    fn lift(&mut self, op: usize) {
        self.unlink(2 * op);
        self.unlink(2 * op + 1);
    }

    /// Undoes `lift(op)` (in reverse order, so the links are restored exactly).
    fn unlift(&mut self, op: usize) {
        self.relink(2 * op + 1);
        self.relink(2 * op);
    }

    /// Operations whose call precedes the first return still in the list.
    fn candidates(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut node = self.first();
        while node != NIL && node % 2 == 0 {
            out.push(node / 2);
            node = self.next[node];
        }
        out
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// A linearized operation on the search stack, with the states it could still lead to.
struct Frame<S> {
    op: usize,
    before: S,
    untried: Vec<S>,
}

/// Checks one (single-object) history against `model`.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    options: CheckOptions,
) -> Verdict<M::State> {
    if let Err(error) = validate(history, options.operations_max) {
        return Verdict::Invalid(error);
    }
    let mut events = Events::new(history);
    let mut determinate_left = history.iter().filter(|o| !o.is_indeterminate()).count();
    let mut linearized = Bits::new(history.len());
    let mut cache: HashSet<(Bits, M::State)> = HashSet::new();
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut state = model.init();
    let mut next_states = Vec::new();
    let mut deepest: Option<Failure<M::State>> = None;
    let mut steps = 0u64;
    let entry_bytes = linearized.0.len() * 8 + std::mem::size_of::<M::State>() + 32;
    let cache_entries_max = (options.cache_bytes_max / entry_bytes).max(1);
    let mut node = events.first();
    'search: loop {
        if determinate_left == 0 {
            // Only indeterminate operations are left: they linearize last, with no effect.
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > options.steps_max || cache.len() > cache_entries_max {
            return Verdict::Unknown {
                steps,
                cache_entries: cache.len(),
            };
        }
        assert!(node != NIL, "the list always ends with a return");
        let mut advanced = false;
        if node % 2 == 0 {
            let op = node / 2;
            let operation = &history[op];
            next_states.clear();
            model.step(
                &state,
                &operation.input,
                &operation.output,
                &mut next_states,
            );
            let mut untried = std::mem::take(&mut next_states);
            linearized.set(op);
            while let Some(candidate) = untried.pop() {
                if cache.insert((linearized.clone(), candidate.clone())) {
                    let before = std::mem::replace(&mut state, candidate);
                    stack.push(Frame {
                        op,
                        before,
                        untried,
                    });
                    events.lift(op);
                    if !operation.is_indeterminate() {
                        determinate_left -= 1;
                    }
                    node = events.first();
                    advanced = true;
                    break;
                }
            }
            if !advanced {
                linearized.clear(op);
                node = events.next[node];
            }
            continue;
        }
        // A return whose call is not linearized: nothing before it fits. Record how far we
        // got, then backtrack.
        let deeper = match &deepest {
            None => true,
            Some(d) => d.longest_prefix.len() < stack.len(),
        };
        if deeper {
            deepest = Some(Failure {
                longest_prefix: stack.iter().map(|f| f.op).collect(),
                state: state.clone(),
                stuck: events.candidates(),
            });
        }
        let Some(mut frame) = stack.pop() else {
            let failure = deepest.unwrap_or(Failure {
                longest_prefix: Vec::new(),
                state,
                stuck: events.candidates(),
            });
            return Verdict::NotLinearizable(failure);
        };
        let op = frame.op;
        events.unlift(op);
        if !history[op].is_indeterminate() {
            determinate_left += 1;
        }
        state = frame.before.clone();
        // Another state this operation could lead to (its linearized bit is still set).
        while let Some(candidate) = frame.untried.pop() {
            if cache.insert((linearized.clone(), candidate.clone())) {
                state = candidate;
                events.lift(op);
                if !history[op].is_indeterminate() {
                    determinate_left -= 1;
                }
                stack.push(frame);
                node = events.first();
                continue 'search;
            }
        }
        linearized.clear(op);
        node = events.next[2 * op];
    }
}

/// The verdict for one key of a partitioned history.
#[derive(Clone, Debug)]
pub struct KeyVerdict<K, S> {
    pub key: K,
    pub operations: usize,
    pub verdict: Verdict<S>,
}

/// The verdicts of a history partitioned by key.
#[derive(Clone, Debug)]
pub struct Report<K, S> {
    pub keys: Vec<KeyVerdict<K, S>>,
}

impl<K, S> Report<K, S> {
    pub fn operations(&self) -> usize {
        self.keys.iter().map(|k| k.operations).sum()
    }
    pub fn linearizable(&self) -> bool {
        self.keys.iter().all(|k| k.verdict.is_linearizable())
    }
    pub fn violations(&self) -> impl Iterator<Item = &KeyVerdict<K, S>> {
        self.keys
            .iter()
            .filter(|k| matches!(k.verdict, Verdict::NotLinearizable(_) | Verdict::Invalid(_)))
    }
    pub fn unknown(&self) -> impl Iterator<Item = &KeyVerdict<K, S>> {
        self.keys
            .iter()
            .filter(|k| matches!(k.verdict, Verdict::Unknown { .. }))
    }
}

/// Checks each key's history on its own (linearizability is local).
pub fn check_partitioned<K: Ord + Clone + Debug, M: Model>(
    model: &M,
    histories: &BTreeMap<K, History<M>>,
    options: CheckOptions,
) -> Report<K, M::State> {
    let keys = histories
        .iter()
        .map(|(key, history)| KeyVerdict {
            key: key.clone(),
            operations: history.len(),
            verdict: check(model, history, options),
        })
        .collect();
    Report { keys }
}

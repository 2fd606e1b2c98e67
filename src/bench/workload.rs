//! The workload generator shared by every driver: which operation comes next and on which key
//! (uniform or scrambled zipfian over `--keys` keys), from a seeded generator so a run is
//! repeatable. Pure: no IO, no clock.

use std::collections::HashMap;

use bytes::Bytes;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Put,
    Get,
    /// `--read-pct` gets, the rest puts.
    Mixed,
    /// Compare-and-set against the revision this client last saw for the key.
    Cas,
}

impl WorkloadKind {
    pub fn parse(text: &str) -> Option<WorkloadKind> {
        Some(match text {
            "put" => WorkloadKind::Put,
            "get" => WorkloadKind::Get,
            "mixed" => WorkloadKind::Mixed,
            "cas" => WorkloadKind::Cas,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Put => "put",
            WorkloadKind::Get => "get",
            WorkloadKind::Mixed => "mixed",
            WorkloadKind::Cas => "cas",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    Uniform,
    /// YCSB's zipfian (theta 0.99), ranks scrambled over the key space so the hot keys do not
    /// all fall into one partition.
    Zipfian,
}

impl Distribution {
    pub fn parse(text: &str) -> Option<Distribution> {
        match text {
            "uniform" => Some(Distribution::Uniform),
            "zipfian" => Some(Distribution::Zipfian),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
        }
    }
}

/// One operation as every driver receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BenchOp {
    Put {
        key: Bytes,
        value: Bytes,
    },
    Get {
        key: Bytes,
    },
    /// Write `value` only if the key's revision is `expected_revision` (0 = absent).
    Cas {
        key: Bytes,
        expected_revision: u64,
        value: Bytes,
    },
}

impl BenchOp {
    pub fn key(&self) -> &Bytes {
        match self {
            BenchOp::Put { key, .. } | BenchOp::Get { key } | BenchOp::Cas { key, .. } => key,
        }
    }
}

/// SplitMix64: small, fast, and good enough for drawing keys.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Zipfian ranks over `0..n` (Gray et al., "Quickly generating billion-record synthetic
/// databases", as YCSB draws them): rank 0 is the most popular.
#[derive(Clone, Debug)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

pub const ZIPFIAN_THETA: f64 = 0.99;
/// Beyond this many keys zeta(n) is extended by its integral instead of summed term by term.
const ZETA_TERMS_MAX: u64 = 10_000_000;

fn zeta(n: u64, theta: f64) -> f64 {
    let exact = n.min(ZETA_TERMS_MAX);
    let mut sum: f64 = (1..=exact).map(|i| 1.0 / (i as f64).powf(theta)).sum();
    if n > exact {
        // Euler-Maclaurin's leading term: the tail of sum 1/i^theta is its integral.
        let power = 1.0 - theta;
        sum += ((n as f64).powf(power) - (exact as f64).powf(power)) / power;
    }
    sum
}

impl Zipfian {
    pub fn new(n: u64, theta: f64) -> Zipfian {
        assert!(n > 0, "zipfian over no items");
        assert!(theta > 0.0 && theta < 1.0, "theta {theta} outside (0, 1)");
        let zeta_n = zeta(n, theta);
        let zeta_2 = zeta(2.min(n), theta);
        let eta = if n > 2 {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n)
        } else {
            1.0
        };
        Zipfian {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta,
        }
    }

    /// The probability of rank 0 (for sanity checks).
    pub fn first_rank_probability(&self) -> f64 {
        1.0 / self.zeta_n
    }

    pub fn next_rank(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zeta_n;
        if uz < 1.0 || self.n == 1 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let rank = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.n - 1)
    }
}

/// Maps a rank to a key index: a bijection on `0..n` (multiplication by a prime coprime to n),
/// so popular ranks land on keys spread over the key space.
pub fn scramble(rank: u64, n: u64) -> u64 {
    const PRIME: u64 = 2_654_435_761;
    if n % PRIME == 0 {
        return rank;
    }
    ((u128::from(rank) * u128::from(PRIME)) % u128::from(n)) as u64
}

/// The key of index `i`: fixed width so every key has the same size.
pub fn key_of(index: u64) -> Bytes {
    Bytes::from(format!("bench-{index:010}").into_bytes())
}

/// Revisions a CAS client remembers at most; beyond it the memory starts over (a forgotten key
/// costs one conflict, which answers with its current revision).
const REVISIONS_REMEMBERED_MAX: usize = 1 << 20;

/// One client's stream of operations.
pub struct Workload {
    kind: WorkloadKind,
    read_pct: u8,
    keys: u64,
    zipfian: Option<Zipfian>,
    rng: Rng,
    value: Bytes,
    /// CAS: the last revision seen per key index.
    revisions: HashMap<u64, u64>,
}

impl Workload {
    /// `zipfian` is shared setup (zeta over the key space is computed once per run).
    pub fn new(
        kind: WorkloadKind,
        read_pct: u8,
        keys: u64,
        zipfian: Option<Zipfian>,
        value_size: usize,
        seed: u64,
    ) -> Workload {
        let mut rng = Rng::new(seed);
        let value: Vec<u8> = (0..value_size)
            .map(|_| b'a' + (rng.next_u64() % 26) as u8)
            .collect();
        Workload {
            kind,
            read_pct,
            keys,
            zipfian,
            rng,
            // Leaked, once per client and run: a static `Bytes` clones and drops without a
            // reference count. A shared count is touched by the client's thread at each request
            // and by the connection's reader thread when the answer drops it, a cache line
            // bouncing between the two (1.3% of the 2-core machine at 256 clients).
            value: Bytes::from_static(Box::leak(value.into_boxed_slice())),
            revisions: HashMap::new(),
        }
    }

    pub fn next_key_index(&mut self) -> u64 {
        match &self.zipfian {
            Some(zipfian) => scramble(zipfian.next_rank(&mut self.rng), self.keys),
            None => self.rng.below(self.keys),
        }
    }

    pub fn next_op(&mut self) -> BenchOp {
        let index = self.next_key_index();
        let key = key_of(index);
        let read = match self.kind {
            WorkloadKind::Get => true,
            WorkloadKind::Put | WorkloadKind::Cas => false,
            WorkloadKind::Mixed => self.rng.below(100) < u64::from(self.read_pct),
        };
        if read {
            return BenchOp::Get { key };
        }
        if self.kind == WorkloadKind::Cas {
            return BenchOp::Cas {
                key,
                expected_revision: self.revisions.get(&index).copied().unwrap_or(0),
                value: self.value.clone(),
            };
        }
        BenchOp::Put {
            key,
            value: self.value.clone(),
        }
    }

    /// Remembers the revision the store reported for `key` (after a write or a conflict).
    pub fn observe_revision(&mut self, key: &[u8], revision: u64) {
        if self.kind != WorkloadKind::Cas {
            return;
        }
        let Some(index) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix("bench-"))
            .and_then(|k| k.parse().ok())
        else {
            return;
        };
        if self.revisions.len() >= REVISIONS_REMEMBERED_MAX {
            self.revisions.clear();
        }
        self.revisions.insert(index, revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_ranks_are_skewed_as_the_formula_says() {
        let n = 1000;
        let zipfian = Zipfian::new(n, ZIPFIAN_THETA);
        let mut rng = Rng::new(42);
        let mut counts = vec![0u64; n as usize];
        let samples = 200_000;
        for _ in 0..samples {
            let rank = zipfian.next_rank(&mut rng);
            assert!(rank < n);
            counts[rank as usize] += 1;
        }
        let first = counts[0] as f64 / samples as f64;
        let expected = zipfian.first_rank_probability();
        assert!(
            (first - expected).abs() < expected * 0.05,
            "rank 0 drawn {first}, expected {expected}"
        );
        // Monotone at coarse grain: rank 0 > rank 1 > rank 10 > rank 500.
        assert!(counts[0] > counts[1], "{counts:?}");
        assert!(counts[1] > counts[10]);
        assert!(counts[10] > counts[500]);
        // About 1/2^theta as often as rank 0 for rank 1.
        let ratio = counts[1] as f64 / counts[0] as f64;
        assert!((ratio - 0.5f64.powf(ZIPFIAN_THETA)).abs() < 0.05, "{ratio}");
    }

    #[test]
    fn uniform_keys_cover_the_space_evenly() {
        let mut workload = Workload::new(WorkloadKind::Put, 0, 10, None, 8, 3);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[workload.next_key_index() as usize] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn scramble_is_a_permutation() {
        for n in [1u64, 2, 7, 1000, 4096] {
            let mut seen: Vec<u64> = (0..n).map(|r| scramble(r, n)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n={n}");
        }
    }

    #[test]
    fn zeta_tail_approximation_is_close() {
        let exact = zeta(ZETA_TERMS_MAX, 0.99);
        let extended = zeta(ZETA_TERMS_MAX * 2, 0.99);
        assert!(extended > exact);
        assert!(extended - exact < 1.0);
    }

    #[test]
    fn mixed_reads_follow_the_percentage_and_cas_uses_observed_revisions() {
        let mut mixed = Workload::new(WorkloadKind::Mixed, 90, 100, None, 16, 9);
        let reads = (0..10_000)
            .filter(|_| matches!(mixed.next_op(), BenchOp::Get { .. }))
            .count();
        assert!((8_700..9_300).contains(&reads), "{reads}");
        let mut cas = Workload::new(WorkloadKind::Cas, 0, 1, None, 16, 9);
        let op = cas.next_op();
        assert!(matches!(
            op,
            BenchOp::Cas {
                expected_revision: 0,
                ..
            }
        ));
        cas.observe_revision(op.key(), 17);
        match cas.next_op() {
            BenchOp::Cas {
                expected_revision,
                value,
                ..
            } => {
                assert_eq!(expected_revision, 17);
                assert_eq!(value.len(), 16);
            }
            other => panic!("{other:?}"),
        }
    }
}

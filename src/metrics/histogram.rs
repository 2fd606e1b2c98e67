//! A fixed-size, lock-free histogram for the hot path: log-linear buckets (four per power of
//! two, so a bucket spans at most 25% of its value) over `0..2^27`, larger values in the last
//! bucket. Recording is one relaxed atomic add per counter; memory is fixed (110 buckets).

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two.
const SUB_BUCKETS: u64 = 4;
/// Powers of two covered: values up to 2^27 - 1 (134 s in microseconds) get their own bucket.
const OCTAVES: u64 = 27;
/// Bucket 0 holds 0, the last one everything from 2^OCTAVES up.
pub const BUCKETS: usize = (2 + SUB_BUCKETS * OCTAVES) as usize;

/// The bucket of `value`: 0 holds 0; then for 2^k <= value < 2^(k+1), the quarter of that
/// octave it falls in.
pub fn bucket_index(value: u64) -> usize {
    if value == 0 {
        return 0;
    }
    let octave = u64::from(63 - value.leading_zeros());
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    let sub = if octave >= 2 {
        (value >> (octave - 2)) & (SUB_BUCKETS - 1)
    } else {
        (value << (2 - octave)) & (SUB_BUCKETS - 1)
    };
    (1 + octave * SUB_BUCKETS + sub) as usize
}

/// The largest integer that falls into bucket `index` (its inclusive upper bound, Prometheus'
/// `le`), or `None` when no integer does (the fractional quarters of the first octaves).
pub fn bucket_upper_bound(index: usize) -> Option<u64> {
    assert!(index < BUCKETS, "bucket {index} of {BUCKETS}");
    if index == 0 {
        return Some(0);
    }
    if index == BUCKETS - 1 {
        return None;
    }
    let octave = (index as u64 - 1) / SUB_BUCKETS;
    let sub = (index as u64 - 1) % SUB_BUCKETS;
    // The bucket is [2^k (4 + sub) / 4, 2^k (4 + sub + 1) / 4).
    let lower_times_4 = (4 + sub) << octave;
    let upper_times_4 = (4 + sub + 1) << octave;
    let lowest_integer = lower_times_4.div_ceil(4);
    let highest_integer = (upper_times_4 - 1) / 4;
    (lowest_integer <= highest_integer).then_some(highest_integer)
}

pub struct AtomicHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> AtomicHistogram {
        AtomicHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

/// A histogram's counts at one moment (each bucket read once; the count is their sum).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<u64>,
    pub sum: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl AtomicHistogram {
    pub fn record(&self, value: u64) {
        self.buckets[bucket_index(value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_the_bucket_whose_bounds_hold_it() {
        let mut previous_bound = None;
        for index in 0..BUCKETS - 1 {
            if let Some(bound) = bucket_upper_bound(index) {
                assert_eq!(bucket_index(bound), index, "upper bound of {index}");
                assert_eq!(bucket_index(bound + 1), next_real(index + 1), "{bound}+1");
                if let Some(previous) = previous_bound {
                    assert!(bound > previous);
                }
                previous_bound = Some(bound);
            }
        }
        for value in [
            0u64,
            1,
            2,
            3,
            4,
            5,
            7,
            8,
            100,
            1000,
            12345,
            1 << 26,
            (1 << 27) - 1,
        ] {
            let index = bucket_index(value);
            let bound = bucket_upper_bound(index).unwrap();
            assert!(
                value <= bound,
                "{value} in bucket {index} bounded by {bound}"
            );
            // Within 25% of the bucket's top (log-linear precision).
            assert!(
                bound as f64 <= (value as f64) * 1.25 + 1.0,
                "{value} -> {bound}"
            );
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_index(1 << 27), BUCKETS - 1);
    }

    fn next_real(mut index: usize) -> usize {
        while index < BUCKETS - 1 && bucket_upper_bound(index).is_none() {
            index += 1;
        }
        index
    }

    #[test]
    fn records_counts_and_sums() {
        let histogram = AtomicHistogram::default();
        for value in [0, 5, 5, 1000] {
            histogram.record(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 4);
        assert_eq!(snapshot.sum, 1010);
        assert_eq!(snapshot.buckets[bucket_index(5)], 2);
    }
}

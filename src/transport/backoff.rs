//! Exponential reconnect backoff between a minimum and a maximum delay. Pure arithmetic: the
//! writer task owns the sleeping.

use std::time::Duration;

/// The delay before the next connection attempt: starts at `min`, doubles after every failure
/// up to `max`, back to `min` once a connection is established.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        assert!(min <= max, "backoff min {min:?} above max {max:?}");
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; the one after it is twice as long (capped at `max`).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// A connection got through: the next failure waits `min` again.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 50, 50]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(10));
    }

    #[test]
    fn equal_bounds_never_change() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
    }
}

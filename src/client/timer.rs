//! A runtime-agnostic timer: one process-wide thread wakes the futures whose deadline passed,
//! so client futures can time out (and back off) the same way under glommio, under any other
//! executor, or inside `block_on` on an ordinary thread. It owns the deadlines only; it never
//! runs user code (waking a waker is all it does) and never blocks a caller beyond a short lock.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A live timer's place in [`Timers::wakers`]: its deadline, then a unique id.
type TimerKey = (Instant, u64);

struct Timers {
    /// The wakers of live timers, earliest deadline first. Invariant: only live timers are
    /// here; a timer leaves when it fires or when its future is dropped (a request answered
    /// before its deadline). So the first key is the earliest deadline anything still waits
    /// for, and the thread never wakes for a timer nobody holds: with lazily skipped entries
    /// it woke once per finished request (each one's deadline passing later), a context
    /// switch per request taken from whatever the machine was running.
    wakers: BTreeMap<TimerKey, Waker>,
    /// When the thread will wake on its own (`None`: it waits for a notification). A new
    /// deadline notifies it only when it is earlier than this.
    sleeping_until: Option<Instant>,
    next_id: u64,
}

impl Timers {
    /// Registers a waker for `deadline`; returns its key.
    fn register(&mut self, deadline: Instant, waker: Waker) -> TimerKey {
        let key = (deadline, self.next_id);
        self.next_id += 1;
        self.wakers.insert(key, waker);
        key
    }

    /// Takes the wakers whose deadline is at or before `now`.
    fn take_due(&mut self, now: Instant) -> Vec<Waker> {
        let mut due = Vec::new();
        while let Some(entry) = self.wakers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        due
    }

    /// The earliest deadline a live timer waits for.
    fn next_deadline(&self) -> Option<Instant> {
        self.wakers
            .first_key_value()
            .map(|(&(deadline, _), _)| deadline)
    }
}

struct TimerThread {
    state: Mutex<Timers>,
    changed: Condvar,
}

fn timer_thread() -> &'static Arc<TimerThread> {
    static THREAD: OnceLock<Arc<TimerThread>> = OnceLock::new();
    THREAD.get_or_init(|| {
        let shared = Arc::new(TimerThread {
            state: Mutex::new(Timers {
                wakers: BTreeMap::new(),
                sleeping_until: None,
                next_id: 1,
            }),
            changed: Condvar::new(),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("kahuna-client-timer".into())
            .spawn(move || run(&worker))
            .expect("spawn the client timer thread");
        shared
    })
}

fn run(shared: &TimerThread) {
    let mut state = shared.state.lock().expect("timer lock");
    loop {
        let now = Instant::now();
        let wake = state.take_due(now);
        if !wake.is_empty() {
            drop(state);
            wake.into_iter().for_each(Waker::wake);
            state = shared.state.lock().expect("timer lock");
            continue;
        }
        let next = state.next_deadline();
        state.sleeping_until = next;
        state = match next {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(now);
                shared
                    .changed
                    .wait_timeout(state, wait)
                    .expect("timer lock")
                    .0
            }
            None => shared.changed.wait(state).expect("timer lock"),
        };
    }
}

/// A future that completes at `deadline`.
pub struct Sleep {
    deadline: Instant,
    /// Its key in the timer thread's table while registered (from the first pending poll
    /// until it fires or is dropped).
    key: Option<TimerKey>,
}

/// Completes after `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// Completes at `deadline` (at once if it has passed).
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        key: None,
    }
}

impl Sleep {
    /// Leaves the timer thread's table (a no-op if it fired already).
    fn unregister(&mut self) {
        if let Some(key) = self.key.take() {
            timer_thread()
                .state
                .lock()
                .expect("timer lock")
                .wakers
                .remove(&key);
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.unregister();
            return Poll::Ready(());
        }
        let shared = timer_thread();
        let mut state = shared.state.lock().expect("timer lock");
        match self.key {
            Some(key) => {
                // Still registered: the thread fires a timer only once its deadline passed,
                // and this one's has not. Keep the latest waker.
                state.wakers.insert(key, cx.waker().clone());
            }
            None => {
                let key = state.register(self.deadline, cx.waker().clone());
                self.key = Some(key);
                // Wake the thread only if it would sleep past this deadline: request deadlines
                // mostly come later than the one it sleeps until, and a wake-up per request
                // would cost a context switch each.
                if state
                    .sleeping_until
                    .map_or(true, |until| self.deadline < until)
                {
                    state.sleeping_until = Some(self.deadline);
                    shared.changed.notify_one();
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// `future`'s output, or `None` if `deadline` passes first.
pub async fn until<T>(deadline: Instant, future: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        sleep_until(deadline).await;
        None
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Timers {
        Timers {
            wakers: BTreeMap::new(),
            sleeping_until: None,
            next_id: 1,
        }
    }

    #[test]
    fn dropped_timers_leave_the_table_at_once() {
        // The thread sleeps until `next_deadline`: a timer dropped before its deadline (a
        // request answered in time) must not keep it, or the thread wakes for nothing once
        // per request.
        let mut timers = table();
        let start = Instant::now();
        let keys: Vec<TimerKey> = (0..1000)
            .map(|i| timers.register(start + Duration::from_millis(i), Waker::noop().clone()))
            .collect();
        let live = timers.register(start + Duration::from_secs(5), Waker::noop().clone());
        for key in &keys {
            timers.wakers.remove(key);
        }
        assert_eq!(timers.next_deadline(), Some(live.0));
        assert!(timers.take_due(start + Duration::from_secs(4)).is_empty());
        assert_eq!(timers.take_due(start + Duration::from_secs(5)).len(), 1);
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn same_deadline_timers_are_distinct_and_fire_in_order() {
        let mut timers = table();
        let at = Instant::now();
        let first = timers.register(at, Waker::noop().clone());
        let second = timers.register(at, Waker::noop().clone());
        assert_ne!(first, second);
        assert_eq!(timers.take_due(at).len(), 2);
        assert!(timers.wakers.is_empty());
    }

    #[test]
    fn a_dropped_sleep_unregisters() {
        let mut sleep = Box::pin(sleep(Duration::from_secs(60)));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        let key = sleep.key.expect("registered on its first pending poll");
        let registered = |key: &TimerKey| {
            timer_thread()
                .state
                .lock()
                .expect("timer lock")
                .wakers
                .contains_key(key)
        };
        assert!(registered(&key));
        drop(sleep);
        assert!(!registered(&key));
    }

    #[test]
    fn sleeps_and_deadlines() {
        let start = Instant::now();
        futures_lite::future::block_on(sleep(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
        let never = futures_lite::future::pending::<()>();
        let deadline = Instant::now() + Duration::from_millis(10);
        assert_eq!(futures_lite::future::block_on(until(deadline, never)), None);
        let ready = async { 7 };
        assert_eq!(
            futures_lite::future::block_on(until(Instant::now() + Duration::from_secs(5), ready)),
            Some(7)
        );
    }
}

//! A runtime-agnostic timer: one process-wide thread wakes the futures whose deadline passed,
//! so client futures can time out (and back off) the same way under glommio, under any other
//! executor, or inside `block_on` on an ordinary thread. It owns the deadlines only; it never
//! runs user code (waking a waker is all it does) and never blocks a caller beyond a short lock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

struct Timers {
    /// (deadline, timer id), earliest first. Entries of dropped timers are skipped lazily.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The wakers of live timers; a timer removes itself when it fires or is dropped.
    wakers: HashMap<u64, Waker>,
    next_id: u64,
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
                deadlines: BinaryHeap::new(),
                wakers: HashMap::new(),
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
        let mut wake = Vec::new();
        while let Some(Reverse((deadline, id))) = state.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            state.deadlines.pop();
            if let Some(waker) = state.wakers.remove(&id) {
                wake.push(waker);
            }
        }
        if !wake.is_empty() {
            drop(state);
            wake.into_iter().for_each(Waker::wake);
            state = shared.state.lock().expect("timer lock");
            continue;
        }
        state = match state.deadlines.peek() {
            Some(Reverse((deadline, _))) => {
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
    /// Registered with the timer thread on the first pending poll.
    id: Option<u64>,
}

/// Completes after `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// Completes at `deadline` (at once if it has passed).
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep { deadline, id: None }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            if let Some(id) = self.id.take() {
                timer_thread()
                    .state
                    .lock()
                    .expect("timer lock")
                    .wakers
                    .remove(&id);
            }
            return Poll::Ready(());
        }
        let shared = timer_thread();
        let mut state = shared.state.lock().expect("timer lock");
        match self.id {
            Some(id) => {
                // Re-arm (the timer thread removes a waker when it fires it) with the latest waker.
                state.wakers.insert(id, cx.waker().clone());
            }
            None => {
                let id = state.next_id;
                state.next_id += 1;
                state.wakers.insert(id, cx.waker().clone());
                state.deadlines.push(Reverse((self.deadline, id)));
                self.id = Some(id);
                shared.changed.notify_one();
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            timer_thread()
                .state
                .lock()
                .expect("timer lock")
                .wakers
                .remove(&id);
        }
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

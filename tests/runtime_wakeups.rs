//! The reactor's sleep path, as patched in vendor/glommio (see vendor/README.md).
//!
//! The patch keeps a preemption timer armed across passes of the executor loop instead of
//! cancelling and re-arming it on every pass, and replaces the `membarrier` before each sleep
//! with a fence pair. Each of these can lose a wake-up if done wrong, and a lost wake-up in a
//! reactor that has nothing else to do is a hang. So every test here runs one executor with a
//! workload where nothing else would wake it, and fails (instead of hanging) when the
//! executor stops making progress for `STALL`. These are liveness checks, not timings: a
//! healthy run finishes in well under a second; the bound is only there to turn a hang into
//! a failure.

use std::sync::mpsc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

/// How long a test may go without finishing before it is called a hang.
const STALL: Duration = Duration::from_secs(60);

/// Runs `work` on a fresh executor thread and returns its result, or panics with `what` if the
/// executor has not finished within `STALL`.
fn within_stall_bound<T, F, Fut>(what: &str, builder: LocalExecutorBuilder, work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    kahuna::server::memlock::raise_memlock_limit();
    let (done, finished) = mpsc::channel();
    let executor = builder
        .spawn(move || async move {
            let result = work().await;
            let _ = done.send(result);
        })
        .expect("an executor starts (io_uring needs locked memory)");
    match finished.recv_timeout(STALL) {
        Ok(result) => {
            executor.join().expect("the executor thread exits cleanly");
            result
        }
        Err(_) => panic!("{what}: the executor made no progress for {STALL:?} (lost wake-up)"),
    }
}

/// A small deterministic generator (xorshift), so that a failing run can be replayed.
struct Sequence(u64);

impl Sequence {
    fn next_below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// Several tasks sleep for short, overlapping, pseudo-random times on an otherwise idle
/// executor. Only timers can wake it, so a kept timer that fires and is consumed just before
/// the reactor sleeps (without the timer wheel being looked at again) leaves it asleep with
/// no timer armed. The patched reactor must go round once more instead.
#[test]
fn overlapping_short_timers_always_wake_an_idle_executor() {
    const TASKS: u64 = 8;
    const SLEEPS_PER_TASK: u64 = 2_500;
    let slept = within_stall_bound(
        "overlapping short timers",
        LocalExecutorBuilder::new(Placement::Unbound),
        || async {
            let mut tasks = Vec::new();
            for task in 0..TASKS {
                tasks.push(glommio::spawn_local(async move {
                    let mut sequence = Sequence(0x9E37_79B9_7F4A_7C15 ^ (task + 1));
                    for _ in 0..SLEEPS_PER_TASK {
                        let micros = sequence.next_below(200);
                        glommio::timer::sleep(Duration::from_micros(micros)).await;
                    }
                    SLEEPS_PER_TASK
                }));
            }
            let mut slept = 0;
            for task in tasks {
                slept += task.await;
            }
            slept
        },
    );
    assert_eq!(slept, TASKS * SLEEPS_PER_TASK);
}

/// One task sleeps for a microsecond at a time, so the executor loop passes through the
/// reactor's poll over and over without sleeping, while a preemption timer (kept armed
/// across passes by the patch) fires every 20 us at an arbitrary point of a pass. When it
/// lands between the poll that woke the task and the first look at the task queues, the
/// executor is preempted before running anything; it must still count the woken task as
/// runnable, else it parks with nothing armed to wake it (the task's timer has fired).
#[test]
fn a_preemption_before_any_task_runs_never_parks_a_runnable_executor() {
    const SLEEPS: u64 = 50_000;
    let slept = within_stall_bound(
        "preempted before running",
        LocalExecutorBuilder::new(Placement::Unbound).preempt_timer(Duration::from_micros(20)),
        || async {
            let mut slept = 0;
            for _ in 0..SLEEPS {
                glommio::timer::sleep(Duration::from_micros(1)).await;
                slept += 1;
            }
            slept
        },
    );
    assert_eq!(slept, SLEEPS);
}

/// Two executors on two threads play ping-pong over shared channels, one message at a time.
/// Each sleeps while the other works, so every message goes through the sleep path's
/// handshake (`prepare_to_sleep`, fence, last sweep of the channels) against the sender's
/// fence and `should_notify`. A lost notification leaves both asleep: a hang.
#[test]
fn every_message_from_another_executor_wakes_a_sleeping_one() {
    const ROUND_TRIPS: u64 = 20_000;
    let (to_echo, echo_in) = glommio::channels::shared_channel::new_bounded::<u64>(1);
    let (echo_out, from_echo) = glommio::channels::shared_channel::new_bounded::<u64>(1);
    kahuna::server::memlock::raise_memlock_limit();
    let echo = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let echo_in = echo_in.connect().await;
            let echo_out = echo_out.connect().await;
            while let Some(message) = echo_in.recv().await {
                if echo_out.send(message).await.is_err() {
                    break;
                }
            }
        })
        .expect("an executor starts (io_uring needs locked memory)");
    let answered = within_stall_bound(
        "ping-pong between executors",
        LocalExecutorBuilder::new(Placement::Unbound),
        move || async move {
            let to_echo = to_echo.connect().await;
            let from_echo = from_echo.connect().await;
            let mut answered = 0;
            for round in 0..ROUND_TRIPS {
                to_echo.send(round).await.expect("the echo executor runs");
                let answer = from_echo.recv().await.expect("the echo executor answers");
                assert_eq!(answer, round);
                answered += 1;
            }
            answered
        },
    );
    assert_eq!(answered, ROUND_TRIPS);
    echo.join()
        .expect("the echo executor exits once its input closes");
}

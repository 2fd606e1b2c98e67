//! Runs the benchmark's client tasks on the calling thread: a small single-threaded executor
//! with timers. Every benchmark client is a task rather than an OS thread, so a run with 256
//! clients costs the client machine one thread that wakes once per burst of answers, instead
//! of 256 threads each woken (and scheduled) once per answer. On the 2-core machine the
//! benchmark shares with the cluster it measures, the thread-per-client harness took about a
//! fifth of all CPU at 256 clients; that CPU was taken from the nodes being measured.
//!
//! Wake-ups may come from any thread (a client library's reader thread completes a request);
//! they queue the task's index and unpark the executor thread. A task is queued at most once
//! until it is polled again (`TaskWaker::queued`), so the ready queue is bounded by the number
//! of tasks. Timers (`sleep_until`) belong to the executor thread.
//!
//! When many answers arrive together, the tasks are polled one after the other, and each poll
//! may send the task's next request (a syscall): the last task of a burst would be polled
//! hundreds of microseconds after its answer arrived. So a task learns when it was last woken
//! ([`woken_at`]), and the runner charges an operation up to that moment, when its answer
//! arrived, not up to its poll.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Instant;

/// A client task: runs to completion on the executor thread.
pub type Task = Pin<Box<dyn Future<Output = ()>>>;

/// Indexes of the tasks to poll, and the thread that polls them.
struct ReadyQueue {
    indexes: Mutex<Vec<usize>>,
    thread: Thread,
}

struct TaskWaker {
    index: usize,
    ready: Arc<ReadyQueue>,
    /// Set while the index sits in the ready queue (cleared just before the task is polled):
    /// a task woken many times between two polls is queued once.
    queued: AtomicBool,
    /// When the task was last woken (taken when it is polled). The latest wake, not the
    /// first: an answer is never charged as arriving before the wake that delivered it.
    woken_at: Mutex<Option<Instant>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        *self.woken_at.lock().expect("wake time lock") = Some(Instant::now());
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready
                .indexes
                .lock()
                .expect("ready queue lock")
                .push(self.index);
            self.ready.thread.unpark();
        }
    }
}

/// A timer of the executor thread: wakes `waker` at `deadline`. `sequence` orders timers
/// with equal deadlines (and makes the heap's order total without comparing wakers).
struct Timer {
    deadline: Instant,
    sequence: u64,
    waker: Waker,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Timer) -> bool {
        (self.deadline, self.sequence) == (other.deadline, other.sequence)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Timer) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    fn cmp(&self, other: &Timer) -> std::cmp::Ordering {
        (self.deadline, self.sequence).cmp(&(other.deadline, other.sequence))
    }
}

#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
    sequence: u64,
}

thread_local! {
    /// The timers of the executor running on this thread (at most one per task: a task
    /// sleeps in one place at a time).
    static TIMERS: RefCell<Timers> = RefCell::new(Timers::default());
    /// When the task being polled was last woken (`None` for its first poll).
    static WOKEN_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// When the task now being polled was last woken: for a task that awaited an answer and is
/// now past it, when the answer arrived. `None` outside [`run_to_completion`] or on a task's
/// first poll.
pub fn woken_at() -> Option<Instant> {
    WOKEN_AT.with(Cell::get)
}

/// Completes at `deadline` (at once if it passed). Only inside [`run_to_completion`].
pub fn sleep_until(deadline: Instant) -> SleepUntil {
    SleepUntil {
        deadline,
        registered: false,
    }
}

pub struct SleepUntil {
    deadline: Instant,
    registered: bool,
}

impl Future for SleepUntil {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        // Only the timer wakes this task before the deadline (a task awaits one thing at a
        // time), so one registration is enough.
        if !self.registered {
            self.registered = true;
            let deadline = self.deadline;
            TIMERS.with(|timers| {
                let mut timers = timers.borrow_mut();
                timers.sequence += 1;
                let sequence = timers.sequence;
                timers.heap.push(Reverse(Timer {
                    deadline,
                    sequence,
                    waker: context.waker().clone(),
                }));
            });
        }
        Poll::Pending
    }
}

/// Wakes the tasks whose timers are due; returns the next deadline, if any timer is left.
fn fire_due_timers(now: Instant) -> Option<Instant> {
    TIMERS.with(|timers| {
        let mut timers = timers.borrow_mut();
        while let Some(Reverse(timer)) = timers.heap.peek() {
            if timer.deadline > now {
                return Some(timer.deadline);
            }
            let Reverse(timer) = timers.heap.pop().expect("peeked");
            timer.waker.wake();
        }
        None
    })
}

/// Opens a scope held while one round of ready tasks is polled and dropped before the thread
/// parks: a driver's send cork (see [`super::driver::Driver::round_scope`]), so what the
/// round's tasks send goes out together.
pub type RoundScope = fn() -> Box<dyn std::any::Any>;

/// Polls `tasks` on this thread until every one has completed.
pub fn run_to_completion(tasks: Vec<Task>) {
    run_rounds(tasks, None);
}

/// [`run_to_completion`], with `round` (if any) opened around each round of polls.
pub fn run_rounds(tasks: Vec<Task>, round: Option<RoundScope>) {
    let ready = Arc::new(ReadyQueue {
        indexes: Mutex::new((0..tasks.len()).collect()),
        thread: std::thread::current(),
    });
    let wakers: Vec<Arc<TaskWaker>> = (0..tasks.len())
        .map(|index| {
            Arc::new(TaskWaker {
                index,
                ready: ready.clone(),
                queued: AtomicBool::new(true),
                woken_at: Mutex::new(None),
            })
        })
        .collect();
    let mut tasks: Vec<Option<Task>> = tasks.into_iter().map(Some).collect();
    let mut remaining = tasks.len();
    let mut batch = Vec::new();
    while remaining > 0 {
        std::mem::swap(
            &mut batch,
            &mut *ready.indexes.lock().expect("ready queue lock"),
        );
        let scope = round.map(|open| open());
        for index in batch.drain(..) {
            let waker_state = &wakers[index];
            // Cleared before the poll: a wake during the poll queues the task again.
            waker_state.queued.store(false, Ordering::Release);
            let Some(task) = tasks[index].as_mut() else {
                continue;
            };
            let woken = waker_state.woken_at.lock().expect("wake time lock").take();
            WOKEN_AT.with(|cell| cell.set(woken));
            let waker = Waker::from(waker_state.clone());
            if task
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                tasks[index] = None;
                remaining -= 1;
            }
        }
        // Closed before anything can wait: what the round sent is on its way.
        drop(scope);
        let next_timer = fire_due_timers(Instant::now());
        if remaining == 0 || !ready.indexes.lock().expect("ready queue lock").is_empty() {
            continue;
        }
        // A wake between the check above and the park leaves the unpark token set, so the
        // park returns at once: no wake-up is lost.
        match next_timer {
            Some(deadline) => {
                std::thread::park_timeout(deadline.saturating_duration_since(Instant::now()))
            }
            None => std::thread::park(),
        }
    }
    // Timers of finished tasks (none are left by tasks that ran to the end) are dropped.
    TIMERS.with(|timers| timers.borrow_mut().heap.clear());
    WOKEN_AT.with(|cell| cell.set(None));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    /// A one-shot value set by another thread, waking whoever awaits it.
    #[derive(Default)]
    struct Slot {
        value: Mutex<(Option<u64>, Option<Waker>)>,
    }

    impl Slot {
        fn set(&self, value: u64) {
            let mut guard = self.value.lock().unwrap();
            guard.0 = Some(value);
            if let Some(waker) = guard.1.take() {
                waker.wake();
            }
        }
    }

    struct Awaiting(Arc<Slot>);

    impl Future for Awaiting {
        type Output = u64;
        fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<u64> {
            let mut guard = self.0.value.lock().unwrap();
            match guard.0 {
                Some(value) => Poll::Ready(value),
                None => {
                    guard.1 = Some(context.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    #[test]
    fn tasks_woken_from_other_threads_all_complete() {
        let slots: Vec<Arc<Slot>> = (0..64).map(|_| Arc::new(Slot::default())).collect();
        let results = Rc::new(RefCell::new(Vec::new()));
        let tasks: Vec<Task> = slots
            .iter()
            .map(|slot| {
                let (slot, results) = (slot.clone(), results.clone());
                Box::pin(async move {
                    // Several rounds each, like a closed-loop client.
                    let mut sum = 0;
                    for _ in 0..3 {
                        sum += Awaiting(slot.clone()).await;
                        slot.value.lock().unwrap().0 = None;
                    }
                    results.borrow_mut().push(sum);
                }) as Task
            })
            .collect();
        let setter = {
            let slots = slots.clone();
            std::thread::spawn(move || {
                for round in 1..=3u64 {
                    for slot in &slots {
                        // Wait until the task consumed the previous value (and awaits again).
                        loop {
                            let guard = slot.value.lock().unwrap();
                            if guard.0.is_none() && guard.1.is_some() {
                                break;
                            }
                            drop(guard);
                            std::thread::yield_now();
                        }
                        slot.set(round);
                    }
                }
            })
        };
        run_to_completion(tasks);
        setter.join().unwrap();
        let results = results.borrow();
        assert_eq!(results.len(), 64);
        assert!(results.iter().all(|&sum| sum == 6), "{results:?}");
    }

    #[test]
    fn sleepers_wake_in_deadline_order_and_not_before() {
        let start = Instant::now();
        let order = Rc::new(RefCell::new(Vec::new()));
        let tasks: Vec<Task> = [30u64, 10, 20, 0]
            .into_iter()
            .map(|millis| {
                let order = order.clone();
                Box::pin(async move {
                    let deadline = start + Duration::from_millis(millis);
                    sleep_until(deadline).await;
                    assert!(Instant::now() >= deadline);
                    order.borrow_mut().push(millis);
                }) as Task
            })
            .collect();
        run_to_completion(tasks);
        assert_eq!(*order.borrow(), vec![0, 10, 20, 30]);
    }

    /// Set while a round scope of `a_round_scope_is_open_while_tasks_are_polled...` is open.
    static SCOPE_OPEN: AtomicBool = AtomicBool::new(false);

    struct ScopeGuard;
    impl Drop for ScopeGuard {
        fn drop(&mut self) {
            SCOPE_OPEN.store(false, Ordering::SeqCst);
        }
    }

    /// Every poll runs inside the round's scope, and the scope is closed before the executor
    /// waits (a driver's cork must release what the round sent before anyone waits for it).
    #[test]
    fn a_round_scope_is_open_while_tasks_are_polled_and_closed_before_the_thread_waits() {
        let slots: Vec<Arc<Slot>> = (0..8).map(|_| Arc::new(Slot::default())).collect();
        let polled_outside = Rc::new(Cell::new(0));
        let tasks: Vec<Task> = slots
            .iter()
            .map(|slot| {
                let (slot, polled_outside) = (slot.clone(), polled_outside.clone());
                Box::pin(async move {
                    for _ in 0..3 {
                        if !SCOPE_OPEN.load(Ordering::SeqCst) {
                            polled_outside.set(polled_outside.get() + 1);
                        }
                        Awaiting(slot.clone()).await;
                        slot.value.lock().unwrap().0 = None;
                    }
                }) as Task
            })
            .collect();
        // Answers a waiting task only once no scope is open. With a scope held across the
        // wait, a task would wait forever: after 10 s the setter answers anyway, says so, and
        // stops waiting for the scope (so a failing run ends soon after).
        let setter = {
            let slots = slots.clone();
            std::thread::spawn(move || {
                let mut scope_held_across_wait = false;
                for _ in 0..3 {
                    for slot in &slots {
                        let give_up = Instant::now() + Duration::from_secs(10);
                        loop {
                            let waiting = slot.value.lock().unwrap().1.is_some();
                            if waiting
                                && (scope_held_across_wait || !SCOPE_OPEN.load(Ordering::SeqCst))
                            {
                                break;
                            }
                            if waiting && Instant::now() > give_up {
                                scope_held_across_wait = true;
                                break;
                            }
                            std::thread::yield_now();
                        }
                        slot.set(1);
                    }
                }
                scope_held_across_wait
            })
        };
        run_rounds(
            tasks,
            Some(|| {
                SCOPE_OPEN.store(true, Ordering::SeqCst);
                Box::new(ScopeGuard)
            }),
        );
        assert!(
            !setter.join().unwrap(),
            "the round scope was held while the thread waited"
        );
        assert_eq!(
            polled_outside.get(),
            0,
            "a task was polled outside a round scope"
        );
        assert!(!SCOPE_OPEN.load(Ordering::SeqCst));
    }

    /// A task polled late (behind another that works for a while) still learns when its wake
    /// came, which is what the runner charges an answer to.
    #[test]
    fn a_task_learns_when_it_was_woken_not_when_it_was_polled() {
        let slot = Arc::new(Slot::default());
        let seen = Rc::new(Cell::new(None));
        let set_at = Arc::new(Mutex::new(None));
        let tasks: Vec<Task> = vec![
            {
                let (slot, seen) = (slot.clone(), seen.clone());
                Box::pin(async move {
                    assert_eq!(woken_at(), None, "first poll");
                    Awaiting(slot).await;
                    seen.set(woken_at());
                }) as Task
            },
            {
                let slot = slot.clone();
                let set_at = set_at.clone();
                Box::pin(async move {
                    // Wakes the first task, then keeps the thread busy before it is polled.
                    *set_at.lock().unwrap() = Some(Instant::now());
                    slot.set(1);
                    std::thread::sleep(Duration::from_millis(20));
                }) as Task
            },
        ];
        run_to_completion(tasks);
        let woken = seen.get().expect("the task saw its wake time");
        let set = set_at.lock().unwrap().unwrap();
        assert!(woken >= set, "woken at or after the answer was set");
        assert!(
            woken - set < Duration::from_millis(10),
            "woken {:?} after the answer, not after the busy task",
            woken - set
        );
    }

    #[test]
    fn no_tasks_returns_at_once() {
        run_to_completion(Vec::new());
    }
}

//! Owns one connection's calls in flight: the window of request slots and, per request id, the
//! state of its call until the caller has taken the answer. The reader thread completes calls
//! here and the callers' futures poll here, under one short lock, with no allocation per call.
//!
//! Why not a channel per call: a one-shot channel (flume) cost each request an allocation for
//! the channel, another for the receiver's wait hook, two locks on each side and a token
//! through a second channel for the window slot; together about a fifth of the benchmark
//! client's CPU at 256 clients (perf/HISTORY.md, session 35).
//!
//! Window slots: a call takes a slot when it registers and gives it back when its answer
//! arrives (whether or not the caller still waits for it) or when the connection closes. A
//! caller that gave up before its answer (timed out or dropped) leaves its entry `Abandoned`:
//! the node is still working on the request, so its slot stays taken until the late answer
//! comes. Callers that find no free slot queue in arrival order; each freed slot is owed to
//! the first queued caller not yet owed one, and wakes it.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use ahash::AHashMap;

use crate::proto::client::Response;

/// A registered call's state.
enum CallState {
    /// Sent (or about to be); the waker of the caller's latest poll, if it polled.
    Waiting(Option<Waker>),
    /// The answer came; the caller has not taken it yet. Holds no slot.
    Answered(Response),
    /// The caller gave up before the answer; it is discarded when it comes. Holds a slot.
    Abandoned,
}

/// What the reader should do with an answer's request id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// Delivered (or discarded for a caller that gave up).
    Done,
    /// No call has this id: the node answered something never asked (or id 0, a
    /// connection-level refusal).
    Unknown,
}

/// The table. Invariant (checked by `check` in the tests):
/// `free_slots + (entries Waiting or Abandoned) == window`; the first `free_slots` callers in
/// `slot_waiters` have been woken for a slot since they last polled (they are owed those
/// slots: newcomers queue behind them); after `close`, no entry is Waiting or Abandoned and
/// no caller is queued.
pub(crate) struct Calls {
    window: usize,
    free_slots: usize,
    calls: AHashMap<u64, CallState>,
    /// Callers waiting for a slot, oldest first: (their ticket, their waker).
    slot_waiters: VecDeque<(u64, Waker)>,
    next_ticket: u64,
    /// Why the connection closed; `Some` from the close on.
    closed: Option<String>,
}

/// Wakers to wake once the lock is released (waking runs executor code).
#[must_use = "wake them after unlocking"]
#[derive(Default)]
pub(crate) struct ToWake(Vec<Waker>);

impl ToWake {
    pub(crate) fn wake(self) {
        self.0.into_iter().for_each(Waker::wake);
    }

    fn push(&mut self, waker: Option<Waker>) {
        self.0.extend(waker);
    }
}

/// A caller's place in the slot queue.
pub(crate) type Ticket = u64;

impl Calls {
    pub(crate) fn new(window: usize) -> Calls {
        assert!(window > 0, "a window of at least one request");
        Calls {
            window,
            free_slots: window,
            calls: AHashMap::with_capacity(window),
            slot_waiters: VecDeque::new(),
            next_ticket: 1,
            closed: None,
        }
    }

    pub(crate) fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Registers call `id` if a slot is free (`Ready(Ok)`), or queues the caller (`ticket`
    /// keeps its place across polls; `None` on its first poll). `Ready(Err)` once closed.
    pub(crate) fn poll_register(
        &mut self,
        id: u64,
        ticket: &mut Option<Ticket>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), String>> {
        if let Some(reason) = self.closed.clone() {
            self.leave_queue(ticket.take());
            return Poll::Ready(Err(reason));
        }
        // First come, first served: the first `free_slots` queued callers are owed the free
        // slots (and were woken for them); a newcomer gets only a slot beyond those.
        let queued_at =
            ticket.and_then(|mine| self.slot_waiters.iter().position(|(t, _)| *t == mine));
        let allowed = match queued_at {
            Some(at) => at < self.free_slots,
            None => self.free_slots > self.slot_waiters.len(),
        };
        if allowed {
            if let Some(at) = queued_at {
                self.slot_waiters.remove(at);
            }
            *ticket = None;
            self.free_slots -= 1;
            let previous = self.calls.insert(id, CallState::Waiting(None));
            assert!(previous.is_none(), "request id {id} registered twice");
            return Poll::Ready(Ok(()));
        }
        match queued_at {
            Some(at) => self.slot_waiters[at].1.clone_from(cx.waker()),
            None => {
                let mine = self.next_ticket;
                self.next_ticket += 1;
                *ticket = Some(mine);
                self.slot_waiters.push_back((mine, cx.waker().clone()));
            }
        }
        Poll::Pending
    }

    /// A caller that waited for a slot gives up (timeout or drop). If it had been woken for a
    /// slot it did not take, the wake passes to the next waiter.
    pub(crate) fn abandon_wait(&mut self, ticket: Option<Ticket>) -> ToWake {
        self.leave_queue(ticket);
        let mut wake = ToWake::default();
        // The caller now at the last owed place may not have been woken for it yet (a
        // redundant wake is a spurious poll, nothing more).
        if self.free_slots > 0 {
            if let Some((_, waker)) = self.slot_waiters.get(self.free_slots - 1) {
                wake.push(Some(waker.clone()));
            }
        }
        wake
    }

    fn leave_queue(&mut self, ticket: Option<Ticket>) {
        if let Some(mine) = ticket {
            self.slot_waiters.retain(|(t, _)| *t != mine);
        }
    }

    /// Unregisters call `id` that was never sent (its request could not be encoded): its slot
    /// is free again.
    pub(crate) fn unregister_unsent(&mut self, id: u64) -> ToWake {
        let mut wake = ToWake::default();
        if let Some(CallState::Waiting(_) | CallState::Abandoned) = self.calls.remove(&id) {
            self.release_slot(&mut wake);
        }
        wake
    }

    /// Call `id`'s answer if it came (`Ready(Ok)`, the entry leaves), `Ready(Err)` if the
    /// connection closed before it, else `Pending` with the caller's waker kept.
    pub(crate) fn poll_answer(
        &mut self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response, String>> {
        match self.calls.get_mut(&id) {
            Some(CallState::Waiting(waker)) => {
                match waker {
                    Some(waker) => waker.clone_from(cx.waker()),
                    None => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Some(CallState::Answered(_)) => match self.calls.remove(&id) {
                Some(CallState::Answered(response)) => Poll::Ready(Ok(response)),
                _ => unreachable!("the entry was Answered"),
            },
            Some(CallState::Abandoned) => panic!("call {id} polled after it was abandoned"),
            None => Poll::Ready(Err(self.closed.clone().unwrap_or_else(|| "closed".into()))),
        }
    }

    /// The caller of `id` no longer waits (timed out or dropped): an answer already here is
    /// dropped; one still to come will be (its slot stays taken until then).
    pub(crate) fn abandon_call(&mut self, id: u64) {
        match self.calls.get_mut(&id) {
            Some(state @ CallState::Waiting(_)) => *state = CallState::Abandoned,
            Some(CallState::Answered(_)) => {
                self.calls.remove(&id);
            }
            Some(CallState::Abandoned) | None => {}
        }
    }

    /// The reader thread's delivery of the answer to `id`.
    pub(crate) fn complete(&mut self, id: u64, response: Response) -> (Completion, ToWake) {
        let mut wake = ToWake::default();
        let completion = match self.calls.get_mut(&id) {
            Some(state @ CallState::Waiting(_)) => {
                let CallState::Waiting(waker) =
                    std::mem::replace(state, CallState::Answered(response))
                else {
                    unreachable!("matched Waiting")
                };
                wake.push(waker);
                self.release_slot(&mut wake);
                Completion::Done
            }
            Some(CallState::Abandoned) => {
                self.calls.remove(&id);
                self.release_slot(&mut wake);
                Completion::Done
            }
            // Answered twice: the node broke the protocol.
            Some(CallState::Answered(_)) | None => Completion::Unknown,
        };
        (completion, wake)
    }

    /// Closes for good: every call still waiting fails (answers already here are kept for
    /// their callers), every slot is free and every queued caller is woken to see it.
    pub(crate) fn close(&mut self, reason: String) -> ToWake {
        let mut wake = ToWake::default();
        if self.closed.is_none() {
            self.closed = Some(reason);
        }
        let mut freed = 0;
        self.calls.retain(|_, state| match state {
            CallState::Waiting(waker) => {
                wake.push(waker.take());
                freed += 1;
                false
            }
            CallState::Abandoned => {
                freed += 1;
                false
            }
            CallState::Answered(_) => true,
        });
        self.free_slots += freed;
        for (_, waker) in self.slot_waiters.drain(..) {
            wake.push(Some(waker));
        }
        wake
    }

    fn release_slot(&mut self, wake: &mut ToWake) {
        self.free_slots += 1;
        assert!(
            self.free_slots <= self.window,
            "more slots freed than taken"
        );
        // The queued callers before this one were woken for the slots freed before; a woken
        // caller stays queued (keeping its place) until it takes its slot or gives up.
        if let Some((_, waker)) = self.slot_waiters.get(self.free_slots - 1) {
            wake.push(Some(waker.clone()));
        }
    }

    /// Checks the table's invariant (see the type's comment).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let holding = self
            .calls
            .values()
            .filter(|s| !matches!(s, CallState::Answered(_)))
            .count();
        assert_eq!(
            self.free_slots + holding,
            self.window,
            "slots lost or doubled"
        );
        if self.closed.is_some() {
            assert_eq!(holding, 0, "a call waits on a closed connection");
            assert!(
                self.slot_waiters.is_empty(),
                "a caller queues on a closed connection"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::client::ErrorCode;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    fn woken(counter: &Counter) -> usize {
        counter.0.load(Ordering::SeqCst)
    }

    fn response(id: u64) -> Response {
        Response {
            request_id: id,
            error: ErrorCode::Ok,
            message: String::new(),
            leader_hint: 0,
            leader_address: String::new(),
            reply: None,
        }
    }

    fn register(calls: &mut Calls, id: u64, ticket: &mut Option<Ticket>, w: &Waker) -> bool {
        let mut cx = Context::from_waker(w);
        match calls.poll_register(id, ticket, &mut cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(reason)) => panic!("closed: {reason}"),
            Poll::Pending => false,
        }
    }

    #[test]
    fn an_answer_frees_the_slot_and_wakes_the_caller_then_the_first_waiter() {
        let mut calls = Calls::new(1);
        let (caller, caller_waker) = waker();
        let (queued, queued_waker) = waker();
        let mut t1 = None;
        assert!(register(&mut calls, 1, &mut t1, &caller_waker));
        let mut t2 = None;
        assert!(
            !register(&mut calls, 2, &mut t2, &queued_waker),
            "the window is full"
        );
        let mut cx = Context::from_waker(&caller_waker);
        assert!(calls.poll_answer(1, &mut cx).is_pending());
        calls.check();
        let (completion, wake) = calls.complete(1, response(1));
        assert_eq!(completion, Completion::Done);
        wake.wake();
        assert_eq!((woken(&caller), woken(&queued)), (1, 1));
        assert!(register(&mut calls, 2, &mut t2, &queued_waker));
        match calls.poll_answer(1, &mut cx) {
            Poll::Ready(Ok(r)) => assert_eq!(r.request_id, 1),
            _ => panic!("the answer is there"),
        }
        calls.check();
    }

    #[test]
    fn an_abandoned_call_keeps_its_slot_until_its_late_answer() {
        let mut calls = Calls::new(1);
        let (_, w) = waker();
        assert!(register(&mut calls, 1, &mut None, &w));
        calls.abandon_call(1);
        let mut t = None;
        assert!(
            !register(&mut calls, 2, &mut t, &w),
            "the node still works on call 1"
        );
        calls.check();
        let (completion, wake) = calls.complete(1, response(1));
        assert_eq!(
            completion,
            Completion::Done,
            "a late answer is no protocol error"
        );
        wake.wake();
        assert!(register(&mut calls, 2, &mut t, &w));
        calls.check();
        // A second answer to the same id is.
        assert_eq!(calls.complete(1, response(1)).0, Completion::Unknown);
    }

    #[test]
    fn an_answer_the_caller_never_took_is_dropped_when_it_gives_up() {
        let mut calls = Calls::new(2);
        let (_, w) = waker();
        assert!(register(&mut calls, 1, &mut None, &w));
        calls.complete(1, response(1)).1.wake();
        calls.abandon_call(1);
        assert!(calls.calls.is_empty());
        calls.check();
    }

    #[test]
    fn a_waiter_that_gives_up_after_its_wake_passes_it_on() {
        let mut calls = Calls::new(1);
        let (_, w) = waker();
        let (first, first_waker) = waker();
        let (second, second_waker) = waker();
        assert!(register(&mut calls, 1, &mut None, &w));
        let (mut t1, mut t2) = (None, None);
        assert!(!register(&mut calls, 2, &mut t1, &first_waker));
        assert!(!register(&mut calls, 3, &mut t2, &second_waker));
        calls.complete(1, response(1)).1.wake();
        assert_eq!((woken(&first), woken(&second)), (1, 0));
        // The first waiter times out without polling again: the slot must not be stranded.
        calls.abandon_wait(t1).wake();
        assert_eq!(woken(&second), 1);
        assert!(register(&mut calls, 3, &mut t2, &second_waker));
        calls.check();
    }

    #[test]
    fn a_slot_owed_to_a_woken_waiter_is_not_taken_by_a_newcomer() {
        let mut calls = Calls::new(1);
        let (_, w) = waker();
        let (waiting, waiter_waker) = waker();
        let (arriving, newcomer_waker) = waker();
        assert!(register(&mut calls, 1, &mut None, &w));
        let mut waiter = None;
        assert!(!register(&mut calls, 2, &mut waiter, &waiter_waker));
        calls.complete(1, response(1)).1.wake();
        assert_eq!(woken(&waiting), 1);
        // Woken but not yet polled: the newcomer queues behind it.
        let mut newcomer = None;
        assert!(!register(&mut calls, 3, &mut newcomer, &newcomer_waker));
        assert!(register(&mut calls, 2, &mut waiter, &waiter_waker));
        assert_eq!(woken(&arriving), 0);
        calls.complete(2, response(2)).1.wake();
        assert_eq!(woken(&arriving), 1);
        assert!(register(&mut calls, 3, &mut newcomer, &newcomer_waker));
        calls.check();
    }

    #[test]
    fn each_freed_slot_wakes_one_more_waiter() {
        let mut calls = Calls::new(2);
        let (_, w) = waker();
        assert!(register(&mut calls, 1, &mut None, &w));
        assert!(register(&mut calls, 2, &mut None, &w));
        let counters: Vec<_> = (0..3).map(|_| waker()).collect();
        let mut tickets = [None; 3];
        for (i, (_, waker)) in counters.iter().enumerate() {
            assert!(!register(&mut calls, 10 + i as u64, &mut tickets[i], waker));
        }
        calls.complete(1, response(1)).1.wake();
        calls.complete(2, response(2)).1.wake();
        let woken_now: Vec<usize> = counters.iter().map(|(c, _)| woken(c)).collect();
        assert_eq!(woken_now, vec![1, 1, 0], "two slots, the first two waiters");
        // The second takes its slot before the first polls: allowed, both are owed one.
        assert!(register(&mut calls, 11, &mut tickets[1], &counters[1].1));
        assert!(register(&mut calls, 10, &mut tickets[0], &counters[0].1));
        assert!(!register(&mut calls, 12, &mut tickets[2], &counters[2].1));
        calls.check();
    }

    #[test]
    fn close_fails_waiting_calls_keeps_answers_and_wakes_everyone() {
        let mut calls = Calls::new(2);
        let (a, wa) = waker();
        let (q, wq) = waker();
        assert!(register(&mut calls, 1, &mut None, &wa));
        assert!(register(&mut calls, 2, &mut None, &wa));
        let mut cx = Context::from_waker(&wa);
        assert!(calls.poll_answer(1, &mut cx).is_pending());
        let mut t = None;
        assert!(!register(&mut calls, 3, &mut t, &wq));
        calls.complete(2, response(2)).1.wake();
        calls.close("gone".into()).wake();
        calls.check();
        assert_eq!(
            (woken(&a), woken(&q)),
            (1, 2),
            "woken by the answer, then the close"
        );
        assert!(matches!(calls.poll_answer(1, &mut cx), Poll::Ready(Err(r)) if r == "gone"));
        assert!(matches!(calls.poll_answer(2, &mut cx), Poll::Ready(Ok(_))));
        assert!(matches!(
            calls.poll_register(3, &mut t, &mut cx),
            Poll::Ready(Err(r)) if r == "gone"
        ));
        assert!(calls.slot_waiters.is_empty());
    }

    #[test]
    fn an_unsent_call_gives_its_slot_back() {
        let mut calls = Calls::new(1);
        let (_, w) = waker();
        assert!(register(&mut calls, 1, &mut None, &w));
        calls.unregister_unsent(1).wake();
        assert!(register(&mut calls, 2, &mut None, &w));
        calls.check();
    }
}

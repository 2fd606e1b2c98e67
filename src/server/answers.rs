//! One client connection's answers on their way to its writer task, and the count of requests
//! it still owes an answer. Answers come from the connection's request tasks and, for writes
//! proposed without a task (see `clients::write_here`), straight from the core loop when their
//! entry applies (`core::answer_writes`) or their deadline passes.
//!
//! Bounded by construction: a request is admitted only while fewer than
//! `REQUESTS_IN_FLIGHT_MAX` are owed (counted from admission until the writer takes the
//! answer), so answers never outnumber admitted requests; refusals, the only answers to
//! requests not admitted, are held to `REFUSALS_QUEUED_MAX` at a time (the reader waits for
//! the writer: backpressure on a client that sends past its window). Pushing an owed answer
//! therefore never finds the queue full and never waits, which is what lets the core loop
//! deliver answers synchronously.

use std::cell::{RefCell, RefMut};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use crate::proto::client::Response;
use crate::proto::limits::REQUESTS_IN_FLIGHT_MAX;

/// Refusals (and a connection's last error) queued at once, at most.
const REFUSALS_QUEUED_MAX: usize = 64;

/// What an answer in the queue stands for: which count its departure gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owed {
    /// An admitted request's answer.
    Request,
    /// A refusal or a connection-level error: no admitted request behind it.
    Refusal,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<(Response, Owed)>,
    /// Admitted requests whose answer the writer has not taken yet (queued or still coming).
    /// Invariant: `owed <= REQUESTS_IN_FLIGHT_MAX`.
    owed: usize,
    /// Refusals queued. Invariant: `refusals <= REFUSALS_QUEUED_MAX + 1` (one connection-level
    /// error may go past the bound: the reader stops after it).
    refusals: usize,
    /// The writer task, waiting for an answer.
    writer: Option<Waker>,
    /// The reader task, waiting for room for a refusal.
    reader: Option<Waker>,
    /// The reader stopped: no request will be admitted any more.
    reader_done: bool,
    /// The writer stopped (the connection cannot be written): answers are dropped.
    writer_done: bool,
}

#[derive(Default)]
pub struct Answers {
    inner: RefCell<Inner>,
}

impl Answers {
    pub fn new() -> Answers {
        Answers::default()
    }

    /// Counts one more request owed an answer, if the connection may have another in flight.
    pub fn admit(&self) -> bool {
        let mut inner = self.inner.borrow_mut();
        if inner.owed >= REQUESTS_IN_FLIGHT_MAX {
            return false;
        }
        inner.owed += 1;
        true
    }

    /// Queues the answer to an admitted request. Never waits: its place was counted at
    /// admission.
    pub fn answer(&self, response: Response) {
        let mut inner = self.inner.borrow_mut();
        assert!(
            inner.owed > 0,
            "an answer to a request that was not admitted"
        );
        if inner.writer_done {
            // Nobody will take it: the count goes back now.
            inner.owed -= 1;
            return;
        }
        inner.queue.push_back((response, Owed::Request));
        wake_released(inner, |inner| &mut inner.writer);
    }

    /// Queues a refusal (an answer to a request that was not admitted), waiting while
    /// `REFUSALS_QUEUED_MAX` are queued. False once the writer has stopped.
    pub async fn refuse(&self, response: Response) -> bool {
        let mut response = Some(response);
        poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            if inner.writer_done {
                return Poll::Ready(false);
            }
            if inner.refusals >= REFUSALS_QUEUED_MAX {
                inner.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            inner.refusals += 1;
            let response = response.take().expect("polled after completion");
            inner.queue.push_back((response, Owed::Refusal));
            wake_released(inner, |inner| &mut inner.writer);
            Poll::Ready(true)
        })
        .await
    }

    /// Queues the connection's last answer (an error about the connection itself, after
    /// which the reader stops), without waiting.
    pub fn last_word(&self, response: Response) {
        let mut inner = self.inner.borrow_mut();
        if inner.writer_done {
            return;
        }
        inner.refusals += 1;
        inner.queue.push_back((response, Owed::Refusal));
        wake_released(inner, |inner| &mut inner.writer);
    }

    /// The reader stopped: once every owed answer has been taken, `next` returns `None`.
    pub fn reader_done(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.reader_done = true;
        wake_released(inner, |inner| &mut inner.writer);
    }

    /// The writer stopped: later answers are dropped, a waiting refusal gives up.
    pub fn writer_done(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.writer_done = true;
        while let Some((_, owed)) = inner.queue.pop_front() {
            inner.give_back(owed);
        }
        wake_released(inner, |inner| &mut inner.reader);
    }

    /// The next answer, waiting for one; `None` once the reader stopped and nothing is owed.
    pub async fn next(&self) -> Option<Response> {
        poll_fn(|cx| match self.try_next() {
            Some(response) => Poll::Ready(Some(response)),
            None => {
                let mut inner = self.inner.borrow_mut();
                if inner.reader_done && inner.owed == 0 && inner.queue.is_empty() {
                    return Poll::Ready(None);
                }
                inner.writer = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// The next answer if one is queued.
    pub fn try_next(&self) -> Option<Response> {
        let mut inner = self.inner.borrow_mut();
        let (response, owed) = inner.queue.pop_front()?;
        inner.give_back(owed);
        let reader = match owed {
            Owed::Refusal => inner.reader.take(),
            Owed::Request => None,
        };
        drop(inner);
        if let Some(reader) = reader {
            reader.wake();
        }
        Some(response)
    }

    /// Requests owed an answer (admitted, answer not yet taken by the writer).
    #[cfg(test)]
    pub fn owed(&self) -> usize {
        self.inner.borrow().owed
    }
}

/// Takes the task waiting in `slot` and wakes it after releasing the borrow: waking must not
/// happen with `inner` borrowed, in case the woken side runs before this returns.
fn wake_released(mut inner: RefMut<'_, Inner>, slot: fn(&mut Inner) -> &mut Option<Waker>) {
    let waker = slot(&mut inner).take();
    drop(inner);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Inner {
    fn give_back(&mut self, owed: Owed) {
        match owed {
            Owed::Request => {
                assert!(self.owed > 0, "an answer taken for a request nobody owed");
                self.owed -= 1;
            }
            Owed::Refusal => {
                assert!(self.refusals > 0, "a refusal taken that was never queued");
                self.refusals -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::client::ErrorCode;

    fn response(id: u64) -> Response {
        Response::error(id, ErrorCode::Timeout, "test")
    }

    fn ids(answers: &Answers) -> Vec<u64> {
        std::iter::from_fn(|| answers.try_next())
            .map(|r| r.request_id)
            .collect()
    }

    #[test]
    fn admission_stops_at_the_window_and_a_taken_answer_frees_a_place() {
        let answers = Answers::new();
        for _ in 0..REQUESTS_IN_FLIGHT_MAX {
            assert!(answers.admit());
        }
        assert!(!answers.admit(), "the window is full");
        answers.answer(response(1));
        assert!(
            !answers.admit(),
            "a queued answer still counts until the writer takes it"
        );
        assert_eq!(ids(&answers), vec![1]);
        assert!(answers.admit());
        assert_eq!(answers.owed(), REQUESTS_IN_FLIGHT_MAX);
    }

    #[test]
    fn answers_leave_in_the_order_they_came_and_refusals_do_not_count_as_owed() {
        let answers = Answers::new();
        assert!(answers.admit());
        assert!(answers.admit());
        answers.answer(response(2));
        assert!(futures_lite::future::block_on(answers.refuse(response(9))));
        answers.answer(response(1));
        assert_eq!(ids(&answers), vec![2, 9, 1]);
        assert_eq!(answers.owed(), 0);
    }

    #[test]
    fn the_writer_ends_only_when_the_reader_stopped_and_nothing_is_owed() {
        let answers = Answers::new();
        assert!(answers.admit());
        answers.reader_done();
        let next = futures_lite::future::block_on(futures_lite::future::poll_once(answers.next()));
        assert!(next.is_none(), "one answer is still owed: the writer waits");
        answers.answer(response(5));
        let next = futures_lite::future::block_on(answers.next());
        assert_eq!(next.map(|r| r.request_id), Some(5));
        assert!(futures_lite::future::block_on(answers.next()).is_none());
    }

    #[test]
    fn refusals_wait_for_room_and_give_up_once_the_writer_stopped() {
        let answers = Answers::new();
        for id in 0..REFUSALS_QUEUED_MAX as u64 {
            assert!(futures_lite::future::block_on(answers.refuse(response(id))));
        }
        let blocked = futures_lite::future::block_on(futures_lite::future::poll_once(
            answers.refuse(response(100)),
        ));
        assert!(
            blocked.is_none(),
            "a full refusal queue makes the reader wait"
        );
        assert_eq!(answers.try_next().map(|r| r.request_id), Some(0));
        assert!(futures_lite::future::block_on(
            answers.refuse(response(101))
        ));
        answers.writer_done();
        assert!(!futures_lite::future::block_on(
            answers.refuse(response(102))
        ));
        assert!(
            answers.try_next().is_none(),
            "a stopped writer's queue is dropped"
        );
    }

    #[test]
    fn answers_after_the_writer_stopped_give_their_place_back() {
        let answers = Answers::new();
        assert!(answers.admit());
        assert!(answers.admit());
        answers.answer(response(1));
        answers.writer_done();
        assert_eq!(
            answers.owed(),
            1,
            "the queued answer was dropped and counted back"
        );
        answers.answer(response(2));
        assert_eq!(answers.owed(), 0);
    }
}

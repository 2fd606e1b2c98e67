//! The outbound queue of one peer: messages waiting for its writer task, a pending-heartbeat
//! flag, and the writer's waker. Pure bookkeeping, no IO: bounded by messages and by encoded
//! bytes, dropping the oldest when full (Raft tolerates loss and retransmits; newer messages
//! carry newer state, so they are the ones worth keeping).

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use crate::proto::peer::message_bytes_bound;
use crate::raft::Message;

/// What the writer takes in one go: everything queued, sent as few frames as possible.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    pub(crate) messages: Vec<Message>,
    /// An empty frame was asked for (and no message frame would carry the liveness instead).
    pub(crate) heartbeat: bool,
}

#[derive(Debug)]
pub(crate) struct PeerQueue {
    messages: VecDeque<Message>,
    /// Sum of [`message_bytes_bound`] over `messages`.
    bytes: usize,
    heartbeat_pending: bool,
    messages_max: usize,
    bytes_max: usize,
    /// The writer task waiting for work, if it is.
    waker: Option<Waker>,
}

impl PeerQueue {
    pub(crate) fn new(messages_max: usize, bytes_max: usize) -> PeerQueue {
        assert!(messages_max > 0, "a peer queue must hold a message");
        PeerQueue {
            messages: VecDeque::new(),
            bytes: 0,
            heartbeat_pending: false,
            messages_max,
            bytes_max,
            waker: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    /// Queues `messages` in order (an empty batch asks for a heartbeat frame) and wakes the
    /// writer. Returns how many older messages were dropped to stay within the bounds; a
    /// message that alone exceeds the byte bound is itself dropped (it could never be sent).
    pub(crate) fn push(&mut self, messages: Vec<Message>) -> usize {
        let mut dropped = 0;
        if messages.is_empty() {
            self.heartbeat_pending = true;
        }
        for message in messages {
            let bytes = message_bytes_bound(&message);
            if bytes > self.bytes_max {
                dropped += 1;
                continue;
            }
            while self.messages.len() >= self.messages_max || self.bytes + bytes > self.bytes_max {
                let oldest = self
                    .messages
                    .pop_front()
                    .expect("over a bound means non-empty");
                self.bytes -= message_bytes_bound(&oldest);
                dropped += 1;
            }
            self.bytes += bytes;
            self.messages.push_back(message);
        }
        debug_assert!(self.messages.len() <= self.messages_max);
        debug_assert!(self.bytes <= self.bytes_max);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
        dropped
    }

    fn has_work(&self) -> bool {
        self.heartbeat_pending || !self.messages.is_empty()
    }

    /// Ready when there is something to send; otherwise remembers the waker for [`push`].
    ///
    /// [`push`]: PeerQueue::push
    pub(crate) fn poll_work(&mut self, context: &mut Context<'_>) -> Poll<()> {
        if self.has_work() {
            Poll::Ready(())
        } else {
            self.waker = Some(context.waker().clone());
            Poll::Pending
        }
    }

    /// Takes everything queued. A heartbeat is only reported when no message goes out:
    /// any frame proves the node alive, so a separate empty frame would be waste.
    pub(crate) fn drain(&mut self) -> Drained {
        let messages: Vec<Message> =
            if self.messages.capacity() > crate::proto::limits::SCRATCH_RETAINED_SLOTS_MAX {
                // A burst grew the queue: hand its allocation over with the messages rather
                // than keep it for the connection's life.
                std::mem::take(&mut self.messages).into()
            } else {
                self.messages.drain(..).collect()
            };
        self.bytes = 0;
        let heartbeat = std::mem::take(&mut self.heartbeat_pending) && messages.is_empty();
        Drained {
            messages,
            heartbeat,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::MessageBody;

    fn message(group: u64) -> Message {
        Message {
            group,
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::VoteResponse { reject: false },
        }
    }

    #[test]
    fn a_burst_does_not_pin_the_queue_allocation() {
        let mut queue = PeerQueue::new(100_000, usize::MAX);
        queue.push((0..10_000).map(message).collect());
        assert_eq!(queue.drain().messages.len(), 10_000);
        assert!(queue.messages.capacity() <= crate::proto::limits::SCRATCH_RETAINED_SLOTS_MAX);
        queue.push((0..10).map(message).collect());
        assert_eq!(groups(&queue.drain()), (0..10).collect::<Vec<_>>());
    }

    fn groups(drained: &Drained) -> Vec<u64> {
        drained
            .messages
            .iter()
            .map(|message| message.group)
            .collect()
    }

    #[test]
    fn drops_the_oldest_beyond_the_message_bound() {
        let mut queue = PeerQueue::new(3, usize::MAX);
        assert_eq!(queue.push(vec![message(1), message(2)]), 0);
        assert_eq!(queue.push(vec![message(3), message(4), message(5)]), 2);
        assert_eq!(queue.len(), 3);
        let drained = queue.drain();
        assert_eq!(groups(&drained), [3, 4, 5]);
        assert!(!drained.heartbeat);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn drops_the_oldest_beyond_the_byte_bound() {
        let one = message_bytes_bound(&message(1));
        let mut queue = PeerQueue::new(100, 2 * one);
        assert_eq!(queue.push(vec![message(1), message(2), message(3)]), 1);
        assert_eq!(groups(&queue.drain()), [2, 3]);
    }

    #[test]
    fn a_message_larger_than_the_byte_bound_is_dropped_alone() {
        let one = message_bytes_bound(&message(1));
        let mut queue = PeerQueue::new(100, one - 1);
        assert_eq!(queue.push(vec![message(1)]), 1);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn an_empty_batch_asks_for_a_heartbeat_once() {
        let mut queue = PeerQueue::new(10, usize::MAX);
        queue.push(Vec::new());
        queue.push(Vec::new());
        let drained = queue.drain();
        assert!(drained.heartbeat);
        assert!(drained.messages.is_empty());
        assert!(!queue.drain().heartbeat);
    }

    #[test]
    fn messages_carry_the_heartbeat() {
        let mut queue = PeerQueue::new(10, usize::MAX);
        queue.push(Vec::new());
        queue.push(vec![message(1)]);
        let drained = queue.drain();
        assert!(!drained.heartbeat);
        assert_eq!(groups(&drained), [1]);
        assert!(!queue.drain().heartbeat);
    }
}

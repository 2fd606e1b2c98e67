//! Cross-core hand-over of client requests on one node (design, write path step 2): a request
//! that arrives on a core that does not own its partition travels to the owning core through
//! glommio's lock-free channel mesh, and the owner's answer travels back the same way.
//!
//! Owns: the mesh endpoints of one core, the tickets of its requests waiting on other cores
//! (ticket -> local reply channel, removed on completion or timeout), and the loops that drain
//! the mesh. Must never: buffer without bound (a full channel or too many hand-overs in flight
//! is answered at once with TooManyInFlight), block the reactor, or hold a RefCell borrow across
//! an `.await`. It knows nothing about what a request means: the owner's handler decides.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::GlommioError;

use crate::proto::client::{ErrorCode, Request, Response};

/// Hand-overs one core may have waiting on another core at once; also the capacity of every
/// mesh channel. Reaching it is backpressure returned to the client, never a queue.
pub const HANDOVERS_IN_FLIGHT_MAX: usize = 1_024;

/// How long a core waits for the owning core's answer. The owner bounds its own work by
/// `core::WRITE_TIMEOUT`; the margin lets its Timeout answer arrive first.
pub const HANDOVER_TIMEOUT: Duration =
    Duration::from_secs(super::core::WRITE_TIMEOUT.as_secs() + 2);

/// What cores send each other. Plain data: it crosses threads.
#[derive(Debug)]
pub enum Handover {
    /// A client request for the receiving core, to be answered to `origin` under `ticket`.
    Request {
        ticket: u64,
        origin: usize,
        request: Request,
    },
    /// The answer to the request the receiving core handed over under `ticket`.
    Response { ticket: u64, response: Response },
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Handover>();
};

/// A mesh of `cores` participants: build once in the node, clone into every executor.
pub fn build(cores: usize) -> MeshBuilder<Handover, glommio::channels::channel_mesh::Full> {
    assert!(cores > 1, "a single core needs no mesh");
    MeshBuilder::full(cores, HANDOVERS_IN_FLIGHT_MAX)
}

/// One core's side of the mesh. Not Send: it lives on its core.
pub struct Router {
    core: usize,
    cores: usize,
    senders: Option<Senders<Handover>>,
    /// Requests of this core waiting on another core: ticket -> where the answer goes.
    waiting: RefCell<HashMap<u64, LocalSender<Response>>>,
    /// Hand-overs in flight per destination core; each at most `HANDOVERS_IN_FLIGHT_MAX`.
    in_flight: RefCell<Vec<usize>>,
    next_ticket: Cell<u64>,
}

impl Router {
    /// The router of a node with one core: every partition is local.
    pub fn single() -> Rc<Router> {
        Rc::new(Router::new(0, 1, None))
    }

    fn new(core: usize, cores: usize, senders: Option<Senders<Handover>>) -> Router {
        Router {
            core,
            cores,
            senders,
            waiting: RefCell::new(HashMap::new()),
            in_flight: RefCell::new(vec![0; cores]),
            next_ticket: Cell::new(1),
        }
    }

    /// Joins the mesh as core `core`; waits until every core has joined. Mesh positions follow
    /// executor creation order, so the node must create its executors in core order.
    pub async fn join(
        mesh: MeshBuilder<Handover, glommio::channels::channel_mesh::Full>,
        core: usize,
    ) -> Result<(Rc<Router>, Receivers<Handover>), String> {
        let cores = mesh.nr_peers();
        let (senders, receivers) = mesh
            .join()
            .await
            .map_err(|e| format!("joining the core mesh: {e}"))?;
        if senders.peer_id() != core || senders.nr_consumers() != cores {
            return Err(format!(
                "core {core} got mesh position {} of {} (expected {core} of {cores}): \
                 executors were not created in core order",
                senders.peer_id(),
                senders.nr_consumers()
            ));
        }
        Ok((Rc::new(Router::new(core, cores, Some(senders))), receivers))
    }

    pub fn core(&self) -> usize {
        self.core
    }

    pub fn cores(&self) -> usize {
        self.cores
    }

    /// Hands `request` to core `to` and waits for its answer. Never queues: a full channel or
    /// too many hand-overs in flight is answered TooManyInFlight at once.
    pub async fn forward(&self, to: usize, request: Request) -> Response {
        assert_ne!(to, self.core, "a core never hands a request to itself");
        assert!(to < self.cores, "core {to} of {}", self.cores);
        let request_id = request.request_id;
        let Some(senders) = &self.senders else {
            return Response::error(request_id, ErrorCode::Internal, "no core mesh");
        };
        if self.in_flight.borrow()[to] >= HANDOVERS_IN_FLIGHT_MAX {
            return too_many(request_id, to);
        }
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        let handover = Handover::Request {
            ticket,
            origin: self.core,
            request,
        };
        match senders.try_send_to(to, handover) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(_)) => return too_many(request_id, to),
            Err(error) => {
                return Response::error(
                    request_id,
                    ErrorCode::Unavailable,
                    format!("core {to} cannot take requests: {error}"),
                )
            }
        }
        let (sender, receiver) = local_channel::new_bounded(1);
        let _pending = Pending::new(self, ticket, to, sender);
        let answer =
            glommio::timer::timeout(HANDOVER_TIMEOUT, async { Ok(receiver.recv().await) }).await;
        match answer {
            Ok(Some(response)) => response,
            Ok(None) => Response::error(request_id, ErrorCode::Internal, "reply channel closed"),
            Err(_) => Response::error(
                request_id,
                ErrorCode::Timeout,
                format!("core {to} did not answer in time; the outcome is unknown"),
            ),
        }
    }

    /// Delivers an answer from another core to the request waiting under `ticket`. An answer
    /// whose request already timed out is dropped.
    fn complete(&self, ticket: u64, response: Response) {
        let sender = self.waiting.borrow_mut().remove(&ticket);
        if let Some(sender) = sender {
            // Capacity 1 and one answer per ticket: this never finds the channel full.
            let _ = sender.try_send(response);
        }
    }
}

fn too_many(request_id: u64, to: usize) -> Response {
    Response::error(
        request_id,
        ErrorCode::TooManyInFlight,
        format!("more than {HANDOVERS_IN_FLIGHT_MAX} requests in flight to core {to}; retry"),
    )
}

/// A request waiting on another core; dropping it (answer, timeout or cancellation) frees the
/// ticket and the in-flight slot.
struct Pending<'a> {
    router: &'a Router,
    ticket: u64,
    to: usize,
}

impl<'a> Pending<'a> {
    fn new(router: &'a Router, ticket: u64, to: usize, reply: LocalSender<Response>) -> Self {
        let previous = router.waiting.borrow_mut().insert(ticket, reply);
        assert!(previous.is_none(), "ticket {ticket} reused");
        router.in_flight.borrow_mut()[to] += 1;
        Pending { router, ticket, to }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.router.waiting.borrow_mut().remove(&self.ticket);
        let mut in_flight = self.router.in_flight.borrow_mut();
        assert!(in_flight[self.to] > 0);
        in_flight[self.to] -= 1;
    }
}

/// Drains every mesh channel of this core: requests from other cores run `handle` (as a task
/// each, so a slow write never holds up the channel) and their answers go back to the origin;
/// answers to this core's requests complete them. Runs until the mesh closes.
pub fn serve_handovers<H, F>(router: Rc<Router>, mut receivers: Receivers<Handover>, handle: H)
where
    H: Fn(Request) -> F + Clone + 'static,
    F: Future<Output = Response> + 'static,
{
    for (peer, stream) in receivers.streams() {
        let router = router.clone();
        let handle = handle.clone();
        glommio::spawn_local(async move {
            while let Some(handover) = stream.recv().await {
                match handover {
                    Handover::Request {
                        ticket,
                        origin,
                        request,
                    } => {
                        debug_assert_eq!(origin, peer);
                        let router = router.clone();
                        let answer = handle(request);
                        glommio::spawn_local(async move {
                            let response = answer.await;
                            let Some(senders) = &router.senders else {
                                return;
                            };
                            // The origin drains its channels without ever waiting, so this
                            // waits at most for room, never on a cycle.
                            let _ = senders
                                .send_to(origin, Handover::Response { ticket, response })
                                .await;
                        })
                        .detach();
                    }
                    Handover::Response { ticket, response } => router.complete(ticket, response),
                }
            }
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;
    use crate::proto::client::{Op, Reply};

    fn get(request_id: u64, key: &'static [u8]) -> Request {
        Request {
            request_id,
            client_id: 0,
            sequence: 0,
            cluster_id: 0,
            op: Op::Get {
                key: Bytes::from_static(key),
                stale_ok: true,
            },
        }
    }

    /// Core 1 answers "echo" requests with their key and never answers "hang" ones.
    async fn owner_handler(request: Request) -> Response {
        let Op::Get { key, .. } = request.op else {
            panic!("only gets in this test");
        };
        if key.as_ref() == b"hang" {
            futures_lite::future::pending::<()>().await;
        }
        let reply = Reply::Value {
            value: key,
            revision: request.request_id,
        };
        Response::ok(request.request_id, Some(reply))
    }

    async fn idle_until(done: &AtomicBool) {
        while !done.load(Ordering::SeqCst) {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Core 0 gets core 1's answer back under the right request id, then fills the in-flight
    /// bound with requests core 1 never answers and is refused the next one at once.
    #[test]
    fn hands_over_answers_and_refuses_beyond_the_bound() {
        let mesh = build(2);
        let done = Arc::new(AtomicBool::new(false));
        // Created in core order: mesh positions follow executor creation order.
        let origin = {
            let (mesh, done) = (mesh.clone(), done.clone());
            LocalExecutorBuilder::new(Placement::Unbound)
                .spawn(move || async move {
                    let (router, receivers) = Router::join(mesh, 0).await.unwrap();
                    serve_handovers(router.clone(), receivers, |request: Request| async move {
                        Response::error(request.request_id, ErrorCode::Internal, "not here")
                    });
                    let response = router.forward(1, get(42, b"echo")).await;
                    assert_eq!(response.request_id, 42);
                    assert_eq!(
                        response.reply,
                        Some(Reply::Value {
                            value: Bytes::from_static(b"echo"),
                            revision: 42,
                        })
                    );
                    assert!(router.waiting.borrow().is_empty());
                    assert_eq!(router.in_flight.borrow()[1], 0);
                    // Fill the bound; a hand-over refused by a momentarily full channel just
                    // ends, and the loop sends another.
                    let mut spawned = 0u64;
                    while router.in_flight.borrow()[1] < HANDOVERS_IN_FLIGHT_MAX {
                        assert!(spawned < 100 * HANDOVERS_IN_FLIGHT_MAX as u64);
                        spawned += 1;
                        let router = router.clone();
                        glommio::spawn_local(async move {
                            router.forward(1, get(1_000 + spawned, b"hang")).await
                        })
                        .detach();
                        futures_lite::future::yield_now().await;
                    }
                    let response = router.forward(1, get(7, b"echo")).await;
                    assert_eq!(response.error, ErrorCode::TooManyInFlight, "{response:?}");
                    assert_eq!(response.request_id, 7);
                    assert_eq!(router.waiting.borrow().len(), HANDOVERS_IN_FLIGHT_MAX);
                    done.store(true, Ordering::SeqCst);
                })
                .unwrap()
        };
        let owner = {
            let (mesh, done) = (mesh.clone(), done.clone());
            LocalExecutorBuilder::new(Placement::Unbound)
                .spawn(move || async move {
                    let (router, receivers) = Router::join(mesh, 1).await.unwrap();
                    serve_handovers(router, receivers, owner_handler);
                    idle_until(&done).await;
                })
                .unwrap()
        };
        origin.join().unwrap();
        owner.join().unwrap();
        drop(mesh);
    }
}

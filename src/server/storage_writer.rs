//! Runs a core's blocking storage calls off the reactor. One backend per core, used by one
//! call at a time (batches are written in order), on glommio's blocking thread pool: the
//! reactor keeps serving and collecting the next batch while RocksDB or SQLite syncs. Nothing
//! here blocks the calling thread except the `_blocking` calls made at startup.
//! Single-key reads (the state machine's fetches, client gets) go through the backend's
//! concurrent reader where it has one (RocksDB), so they run beside a write instead of after
//! it: under load a synced write takes milliseconds, and every apply held for a fetch waited
//! that long. Scan pages go through it too, each read in one view (one RocksDB iterator).
//! Images stay behind the lock.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::kv::{
    fetch_blocking, BackendReader, ConcurrentReader, Fetch, Fetched, KvReader, ReadError,
};
use crate::raft::{GroupId, NodeId};
use crate::storage::{
    Backend, ConcurrentKvReader, RecoveryState, Result, StorageError, WriteBatch,
};
use crate::transport::LaneFrame;

/// Bytes per frame of a snapshot image (the Raft core re-chunks the image for the wire).
const SNAPSHOT_CHUNK_BYTES: usize = 256 << 10;

fn concat(
    (meta, chunks): (crate::raft::SnapshotMeta, Vec<Bytes>),
) -> Result<(crate::raft::SnapshotMeta, Bytes)> {
    if chunks.len() == 1 {
        return Ok((meta, chunks.into_iter().next().expect("one chunk")));
    }
    let mut data = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        data.extend_from_slice(&chunk);
    }
    Ok((meta, Bytes::from(data)))
}

/// What one batch's trip to the blocking pool did.
pub struct Written {
    /// The engine's own write call (and sync).
    pub engine: Duration,
    /// From the call to a pool thread starting on it: the forward half of the hand-off (the
    /// reactor waking a pool thread, that thread getting a CPU), before any wait for the write
    /// ahead of it.
    pub forward: Duration,
    /// The fetches that rode along.
    pub fetched: Vec<Fetched>,
    /// The lane frames written: (peer, messages, bytes). Those peers' answers are sent.
    pub lanes_sent: Vec<(NodeId, usize, usize)>,
    /// When the pool thread was done with them (`None` when it wrote none).
    pub lanes_sent_at: Option<Instant>,
    /// When the pool thread was done with the whole trip (write, answers, fetches): the way
    /// back to the reactor starts here.
    pub done_at: Instant,
    /// The batch written, handed back for the reactor to drop. Its entries and values were
    /// allocated on the reactor: dropped on the pool thread they were hundreds of cross-thread
    /// frees per batch at 256 clients, made before the completion could reach the reactor.
    /// The reactor drops them after the answers the write releases have left.
    pub batch: WriteBatch,
}

#[derive(Clone)]
pub struct StorageWriter {
    /// Only ever locked by one blocking call at a time: the mutex is what makes the backend
    /// movable into the blocking pool, not a point of contention.
    backend: Arc<Mutex<Box<dyn Backend>>>,
    /// The order writes take the backend in: the order they were started on the reactor.
    turns: Arc<Turns>,
    /// Reads kv data without the backend's lock, so a read does not wait behind a synced write
    /// (RocksDB); `None` where the backend has no such reader: reads then take the lock.
    reader: Option<Arc<dyn ConcurrentKvReader>>,
}

/// Writes take the backend in the order the reactor started them, whichever pool thread runs
/// each (two may be on their way at once: see `core::write_batches`). A write's turn is its
/// ticket, taken when it is started; a pool thread whose write is not next waits here before
/// it takes the backend's lock (never while holding it, so the write before it can proceed).
/// Once a write fails, every later one is refused without touching the backend: the core
/// stops on the failure (`core::finish_write`), and a later batch written after an earlier one
/// that was not (its vote, say) could send acknowledgements Raft must not send.
struct Turns {
    /// Tickets handed out.
    issued: AtomicU64,
    state: Mutex<TurnState>,
    changed: Condvar,
}

struct TurnState {
    /// The ticket whose write may take the backend now. Invariant: `next <= issued`, and every
    /// ticket below it has finished its write, or failed it.
    next: u64,
    /// A write failed (or its thread panicked): the backend's state is unknown.
    failed: bool,
}

impl Turns {
    fn new() -> Turns {
        Turns {
            issued: AtomicU64::new(0),
            state: Mutex::new(TurnState {
                next: 0,
                failed: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn ticket(&self) -> u64 {
        self.issued.fetch_add(1, Ordering::Relaxed)
    }

    /// Blocks the calling pool thread until `ticket` is next; the returned turn ends when it
    /// is dropped (a failure unless marked a success).
    fn wait_for(&self, ticket: u64) -> Result<Turn<'_>> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while state.next != ticket {
            assert!(
                state.next < ticket,
                "write ticket {ticket} came after its turn ({})",
                state.next
            );
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let failed = state.failed;
        drop(state);
        let turn = Turn {
            turns: self,
            ticket,
            succeeded: false,
        };
        if failed {
            return Err(StorageError::Io {
                context: "writing a batch after an earlier write failed".into(),
                kind: std::io::ErrorKind::Other,
                message: "the core's storage is stopped".into(),
            });
        }
        Ok(turn)
    }
}

/// One write's turn at the backend; the next ticket's comes when this is dropped.
struct Turn<'a> {
    turns: &'a Turns,
    ticket: u64,
    succeeded: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut state = self
            .turns
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        assert_eq!(state.next, self.ticket, "a write finished out of turn");
        state.next += 1;
        state.failed |= !self.succeeded;
        drop(state);
        self.turns.changed.notify_all();
    }
}

/// A kv read's error as the storage error it carries (or wraps).
fn storage_error(error: ReadError) -> StorageError {
    match error {
        ReadError::Storage { source, .. } => source,
        ReadError::Other { group, detail } => StorageError::Io {
            context: format!("reading group {group}"),
            kind: std::io::ErrorKind::Other,
            message: detail,
        },
    }
}

fn poisoned() -> StorageError {
    StorageError::Io {
        context: "locking the core's storage backend".into(),
        kind: std::io::ErrorKind::Other,
        message: "poisoned by an earlier panic".into(),
    }
}

impl StorageWriter {
    pub fn new(backend: Box<dyn Backend>) -> StorageWriter {
        StorageWriter {
            reader: backend.concurrent_kv_reader(),
            backend: Arc::new(Mutex::new(backend)),
            turns: Arc::new(Turns::new()),
        }
    }

    /// Runs `read` on the blocking pool against a kv reader: the concurrent one when the backend
    /// has it, else the backend itself (behind its lock, so after any write in progress).
    /// Only for reads that are correct whichever side of a write in progress they see, key by
    /// key (see [`crate::storage::ConcurrentKvReader`]).
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn KvReader) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match self.reader.clone() {
            Some(reader) => {
                glommio::executor()
                    .spawn_blocking(move || read(&ConcurrentReader(&*reader)))
                    .await
            }
            None => {
                let backend = self.backend.clone();
                glommio::executor()
                    .spawn_blocking(move || {
                        let backend = backend.lock().map_err(|_| poisoned())?;
                        read(&BackendReader(&**backend))
                    })
                    .await
            }
        }
    }

    /// Writes (and, if the batch asks, syncs) one batch without blocking the reactor. Returns
    /// how long the backend's write took on the blocking pool: the caller's wait less that is
    /// the cost of the hand-off (to a pool thread and back to the reactor), which the
    /// write-path metrics report apart from the engine's write and sync.
    pub async fn write(&self, batch: WriteBatch) -> Result<Duration> {
        let written = self.write_and_fetch(batch, Vec::new(), Vec::new()).await?;
        Ok(written.engine)
    }

    /// [`StorageWriter::write`], with the state machine's `fetches` read in the same trip to
    /// the blocking pool, right after the write and after the answers it releases left: one
    /// hand-off (a pool thread woken, the reactor woken again) instead of two, and nothing
    /// that waits for the write's durability waits for the reads. At one client a hand-off
    /// costs about as much as the read itself on a shared machine. The fetched values arrive
    /// with the write's completion, so only fetches nothing waits on sooner should ride here
    /// (reads ahead of an apply that itself waits for a commit). Reading after the batch is
    /// written is what a fetch behind the backend's lock sees anyway (see
    /// [`StorageWriter::fetch`]): a key this batch applies is in the machine's cache, and the
    /// fill skips it.
    ///
    /// `lane_frames` are the answers the batch releases, for peers with an open durable-answer
    /// lane: written by the pool thread itself once the write returned, so the reactor need not
    /// wake before they leave. They leave exactly when the reactor would have released them
    /// (after the write, synced when the batch asks for a sync), never before: a failed write
    /// sends nothing.
    ///
    /// The write's turn is taken when this is called, not when the future is first polled:
    /// writes reach the engine in the order of these calls. A write waiting for its turn holds
    /// its pool thread, so a caller keeps fewer writes outstanding than the pool has threads
    /// (the core: `PIPELINE_DEPTH` against `BLOCKING_THREADS_PER_CORE`): reads never wait for a
    /// turn, so the write whose turn it is always gets a thread. The returned future must be
    /// run to completion (the core spawns it and keeps its task until it ends): dropped
    /// unpolled, its turn never comes and passes, and every later write waits.
    pub fn write_and_fetch(
        &self,
        batch: WriteBatch,
        fetches: Vec<Fetch>,
        lane_frames: Vec<LaneFrame>,
    ) -> impl Future<Output = Result<Written>> + 'static {
        let backend = self.backend.clone();
        let reader = self.reader.clone();
        let turns = self.turns.clone();
        let ticket = turns.ticket();
        let called = Instant::now();
        async move {
            glommio::executor()
                .spawn_blocking(move || {
                    let forward = called.elapsed();
                    let mut turn = turns.wait_for(ticket)?;
                    let written = write_on_pool(
                        &backend,
                        reader.as_deref(),
                        batch,
                        fetches,
                        lane_frames,
                        forward,
                    );
                    turn.succeeded = written.is_ok();
                    written
                })
                .await
        }
    }
}

/// The blocking half of [`StorageWriter::write_and_fetch`], on a pool thread whose turn it is.
fn write_on_pool(
    backend: &Mutex<Box<dyn Backend>>,
    reader: Option<&dyn ConcurrentKvReader>,
    batch: WriteBatch,
    fetches: Vec<Fetch>,
    lane_frames: Vec<LaneFrame>,
    forward: Duration,
) -> Result<Written> {
    let mut backend = backend.lock().map_err(|_| poisoned())?;
    let started = Instant::now();
    backend.write(&batch)?;
    let engine = started.elapsed();
    // The answers first: they wait for nothing but the write, and on a follower they are what
    // the leader's commit waits for.
    let lanes_sent: Vec<_> = lane_frames
        .iter()
        .filter(|sending| sending.lane.try_send(&sending.frame))
        .map(|sent| (sent.lane.peer(), sent.messages, sent.frame.len()))
        .collect();
    let lanes_sent_at = (!lanes_sent.is_empty()).then(Instant::now);
    let fetched = match reader {
        Some(reader) => fetch_all(&ConcurrentReader(reader), fetches)?,
        None => fetch_all(&BackendReader(&**backend), fetches)?,
    };
    drop(backend);
    Ok(Written {
        engine,
        forward,
        fetched,
        lanes_sent,
        lanes_sent_at,
        done_at: Instant::now(),
        batch,
    })
}

impl StorageWriter {
    /// [`crate::storage::Backend::release_write_buffers`], off the reactor.
    pub async fn release_write_buffers(&self) -> Result<()> {
        let backend = self.backend.clone();
        glommio::executor()
            .spawn_blocking(move || {
                backend
                    .lock()
                    .map_err(|_| poisoned())?
                    .release_write_buffers()
            })
            .await
    }

    pub async fn get(&self, group: GroupId, key: Bytes) -> Result<Option<Bytes>> {
        self.read(move |reader| reader.get(group, &key).map_err(storage_error))
            .await
    }

    /// One page of `group`'s kv data in `[start, end)` (empty `end`: to the group's end), read
    /// on the blocking pool: at most `items_max` pairs and, past the first pair, at most
    /// `bytes_max` bytes of keys and values. The flag says whether more pairs may follow.
    /// A page is read in one view, so it shows one state: through the concurrent reader
    /// (RocksDB: one iterator, beside a write in progress), else behind the backend's lock.
    /// Seeing the state before a write in progress is what a linearizable scan may see: its
    /// read point is applied in a batch already written before the page is read.
    pub async fn scan_page(
        &self,
        group: GroupId,
        start: Bytes,
        end: Bytes,
        items_max: usize,
        bytes_max: usize,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool)> {
        assert!(items_max > 0, "a page holds at least one item");
        match self.reader.clone() {
            Some(reader) => {
                glommio::executor()
                    .spawn_blocking(move || {
                        reader.kv_scan_page(group, &start, &end, items_max, bytes_max)
                    })
                    .await
            }
            None => {
                let backend = self.backend.clone();
                glommio::executor()
                    .spawn_blocking(move || {
                        let backend = backend.lock().map_err(|_| poisoned())?;
                        backend.kv_scan_page(group, &start, &end, items_max, bytes_max)
                    })
                    .await
            }
        }
    }

    /// A consistent image of `group`'s kv data as of the last written batch, with the applied
    /// position it covers, read on the blocking pool. Read only when a group's leader asks for
    /// one to stream to a follower behind its log start; nothing else holds images.
    pub async fn snapshot(&self, group: GroupId) -> Result<(crate::raft::SnapshotMeta, Bytes)> {
        let backend = self.backend.clone();
        glommio::executor()
            .spawn_blocking(move || {
                let reader = backend
                    .lock()
                    .map_err(|_| poisoned())?
                    .kv_snapshot(group, SNAPSHOT_CHUNK_BYTES)?;
                concat(reader.read_all()?)
            })
            .await
    }

    /// Blocking: only for startup, before the core serves anything.
    pub fn load_group_blocking(&self, group: GroupId) -> Result<RecoveryState> {
        self.backend
            .lock()
            .map_err(|_| poisoned())?
            .load_group(group)
    }

    /// Performs the state machine's fetches (see [`crate::kv::Fetch`]) on the blocking pool,
    /// in one call. With a concurrent reader (RocksDB) it runs beside a batch being written;
    /// otherwise behind the backend's lock, after it.
    pub async fn fetch(&self, fetches: Vec<Fetch>) -> Result<Vec<Fetched>> {
        self.read(move |reader| fetch_all(reader, fetches)).await
    }
}

/// Performs every fetch against `reader`, in order. Blocking.
fn fetch_all(reader: &dyn KvReader, fetches: Vec<Fetch>) -> Result<Vec<Fetched>> {
    fetches
        .into_iter()
        .map(|fetch| fetch_blocking(reader, fetch).map_err(storage_error))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    use super::Turns;

    #[test]
    fn writes_take_the_backend_in_ticket_order_whatever_thread_comes_first() {
        let turns = Arc::new(Turns::new());
        let (first, second) = (turns.ticket(), turns.ticket());
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        // The later ticket's thread arrives first and must wait.
        let late = {
            let (turns, order) = (turns.clone(), order.clone());
            thread::spawn(move || {
                let mut turn = turns.wait_for(second).expect("no failure");
                order.lock().unwrap().push(second);
                turn.succeeded = true;
            })
        };
        thread::sleep(Duration::from_millis(50));
        assert!(
            order.lock().unwrap().is_empty(),
            "ticket {second} went before {first}"
        );
        {
            let mut turn = turns.wait_for(first).expect("no failure");
            order.lock().unwrap().push(first);
            turn.succeeded = true;
        }
        late.join().unwrap();
        assert_eq!(*order.lock().unwrap(), vec![first, second]);
    }

    #[test]
    fn a_failed_write_refuses_every_later_one() {
        let turns = Turns::new();
        let (failing, later, last) = (turns.ticket(), turns.ticket(), turns.ticket());
        drop(turns.wait_for(failing).expect("first turn"));
        assert!(turns.wait_for(later).is_err());
        // A refused turn still passes the turn on.
        assert!(turns.wait_for(last).is_err());
    }

    #[test]
    fn a_panic_during_a_write_passes_the_turn_on_as_a_failure() {
        let turns = Arc::new(Turns::new());
        let (panicking, later) = (turns.ticket(), turns.ticket());
        let holder = {
            let turns = turns.clone();
            thread::spawn(move || {
                let _turn = turns.wait_for(panicking).expect("first turn");
                panic!("the engine panicked");
            })
        };
        assert!(holder.join().is_err());
        assert!(
            turns.wait_for(later).is_err(),
            "the write after a panic must not go"
        );
    }
}

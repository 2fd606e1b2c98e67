//! A core's reads (the state machine's fetches, client gets and scan pages) do not wait behind a
//! write in progress when the backend has a concurrent reader (RocksDB): a synced write under
//! load takes milliseconds, and every apply held for a fetch used to wait that long. Backends
//! without one (SQLite) still read behind the backend's lock, after the write. A scan page
//! shows one state either way: through the concurrent reader it is one RocksDB iterator.
//!
//! The backend here is RocksDB (or SQLite) behind a gate that holds every write until the test
//! opens it, so "a write in progress" lasts as long as the test needs.

use std::io::Read;
use std::net::{TcpListener as StdListener, TcpStream as StdStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kahuna::kv::Fetch;
use kahuna::raft::{Entry, GroupId, Index};
use kahuna::server::storage_writer::{StorageWriter, Written};
use kahuna::storage::{
    Apply, Backend, ConcurrentKvReader, GroupWrite, KvOp, KvSnapshotReader, RecoveryState, Result,
    RocksDbBackend, Space, SqliteBackend, StorageError, WriteBatch,
};
use kahuna::transport::{DurableLane, LaneFrame};

const GROUP: GroupId = 1;

/// Opened by the test; writes wait for it.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    fn wait(&self) {
        let mut open = self.0 .0.lock().unwrap();
        while !*open {
            open = self.0 .1.wait(open).unwrap();
        }
    }
}

/// Runs in a backend's write before the inner write; an error fails the write.
type BeforeWrite = Box<dyn FnMut() -> Result<()> + Send>;

/// A backend whose writes wait for the gate (and then run `before`, if any); everything else
/// is the inner backend's.
struct GatedWrites<B> {
    inner: B,
    gate: Gate,
    before: Option<BeforeWrite>,
    /// Runs at every kv read; when set, the backend offers no concurrent reader, so every read
    /// comes through here.
    on_read: Option<OnRead>,
}

/// Runs at every kv read of a [`GatedWrites`].
type OnRead = Arc<dyn Fn() + Send + Sync>;

impl<B: Backend> Backend for GatedWrites<B> {
    fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        self.gate.wait();
        if let Some(before) = &mut self.before {
            before()?;
        }
        self.inner.write(batch)
    }
    fn load_group(&mut self, group: GroupId) -> Result<RecoveryState> {
        self.inner.load_group(group)
    }
    fn groups(&self) -> Result<Vec<GroupId>> {
        self.inner.groups()
    }
    fn entries(&self, group: GroupId, low: Index, high: Index) -> Result<Vec<Entry>> {
        self.inner.entries(group, low, high)
    }
    fn kv_get(&self, group: GroupId, key: &[u8]) -> Result<Option<Bytes>> {
        if let Some(on_read) = &self.on_read {
            on_read();
        }
        self.inner.kv_get(group, key)
    }
    fn kv_scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        self.inner.kv_scan(group, start, end, limit)
    }
    fn kv_scan_page(
        &self,
        group: GroupId,
        start: &[u8],
        end: &[u8],
        items_max: usize,
        bytes_max: usize,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool)> {
        self.inner
            .kv_scan_page(group, start, end, items_max, bytes_max)
    }
    fn kv_snapshot(&self, group: GroupId, chunk_bytes_max: usize) -> Result<KvSnapshotReader> {
        self.inner.kv_snapshot(group, chunk_bytes_max)
    }
    fn raw_get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.raw_get(space, key)
    }
    fn raw_put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.raw_put(space, key, value)
    }
    fn concurrent_kv_reader(&self) -> Option<Arc<dyn ConcurrentKvReader>> {
        if self.on_read.is_some() {
            return None;
        }
        self.inner.concurrent_kv_reader()
    }
}

/// A batch applying `key = value` at `index`.
fn put(index: Index, key: &'static [u8], value: &'static [u8]) -> WriteBatch {
    let mut write = GroupWrite::new(GROUP);
    write.apply = Some(Apply {
        index,
        term: 1,
        conf_state: None,
        ops: vec![KvOp::Put {
            key: Bytes::from_static(key),
            value: Bytes::from_static(value),
        }],
    });
    let mut batch = WriteBatch::new(true);
    batch.push(write);
    batch
}

fn fetch(key: &'static [u8]) -> Fetch {
    Fetch {
        group: GROUP,
        epoch: 1,
        keys: vec![Bytes::from_static(key)],
        sessions: false,
    }
}

/// What the reads started while a write waits at the gate saw.
struct DuringAWrite {
    /// The fetch and the get of `a` before the gate opened (`None`: still waiting after a
    /// second).
    reads: Option<Vec<Option<Bytes>>>,
    /// The keys of a scan page started while the write waited, and whether the page was read
    /// before the gate opened.
    scan: (Vec<Bytes>, bool),
    /// `b` after the write.
    after: Option<Bytes>,
}

/// Writes `a = 1`, then starts a write of `b = 2` that waits at the gate, and reads `a` and
/// scans the group while it waits.
fn reads_during_a_write<B: Backend + 'static>(mut inner: B) -> DuringAWrite {
    inner.write(&put(1, b"a", b"1")).unwrap();
    let gate = Gate::default();
    let backend = GatedWrites {
        inner,
        gate: gate.clone(),
        before: None,
        on_read: None,
    };
    // The node's pool: the held write takes one thread, the reads get the other.
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(
            kahuna::server::node::BLOCKING_THREADS_PER_CORE,
        ))
        .spawn(move || async move {
            let writer = StorageWriter::new(Box::new(backend));
            let write = {
                let writer = writer.clone();
                glommio::spawn_local(async move { writer.write(put(2, b"b", b"2")).await })
            };
            // Let the write reach the blocking pool and the gate.
            glommio::timer::sleep(Duration::from_millis(50)).await;
            let reads = async {
                let fetched = writer.fetch(vec![fetch(b"a")]).await.unwrap();
                let got = writer.get(GROUP, Bytes::from_static(b"a")).await.unwrap();
                vec![fetched[0].values[0].1.clone(), got]
            };
            let reads = glommio::timer::timeout(Duration::from_secs(1), async { Ok(reads.await) })
                .await
                .ok();
            let gate_opened = std::rc::Rc::new(std::cell::Cell::new(false));
            let scan = {
                let (writer, gate_opened) = (writer.clone(), gate_opened.clone());
                glommio::spawn_local(async move {
                    let (page, more) = writer
                        .scan_page(GROUP, Bytes::new(), Bytes::new(), 10, 1 << 20)
                        .await
                        .unwrap();
                    assert!(!more);
                    let keys = page.into_iter().map(|(key, _)| key).collect::<Vec<_>>();
                    (keys, !gate_opened.get())
                })
            };
            glommio::timer::sleep(Duration::from_millis(200)).await;
            gate_opened.set(true);
            gate.open();
            write.await.unwrap();
            let scan = scan.await;
            let after = writer.get(GROUP, Bytes::from_static(b"b")).await.unwrap();
            DuringAWrite { reads, scan, after }
        })
        .unwrap();
    executor.join().unwrap()
}

#[test]
fn rocksdb_reads_run_beside_a_write_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RocksDbBackend::open_rocksdb(&dir.path().join("rocks")).unwrap();
    let during = reads_during_a_write(backend);
    let values = during
        .reads
        .expect("reads waited for the write in progress");
    assert_eq!(values, vec![Some(Bytes::from("1")), Some(Bytes::from("1"))]);
    assert_eq!(
        during.scan,
        (vec![Bytes::from("a")], true),
        "the scan page is read beside the write, from the state before it"
    );
    assert_eq!(during.after, Some(Bytes::from("2")));
}

#[test]
fn sqlite_reads_wait_for_the_write_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::open_sqlite(&dir.path().join("db.sqlite")).unwrap();
    let during = reads_during_a_write(backend);
    assert!(
        during.reads.is_none(),
        "SQLite has no concurrent reader: reads go behind the backend's lock"
    );
    assert_eq!(
        during.scan,
        (vec![Bytes::from("a"), Bytes::from("b")], false),
        "the scan page waits for the write and sees both keys"
    );
    assert_eq!(during.after, Some(Bytes::from("2")));
}

/// A batch setting every key of `keys` to `generation` (one atomic write).
fn generation(index: Index, keys: &[Bytes], generation: u64) -> WriteBatch {
    let mut write = GroupWrite::new(GROUP);
    write.apply = Some(Apply {
        index,
        term: 1,
        conf_state: None,
        ops: keys
            .iter()
            .map(|key| KvOp::Put {
                key: key.clone(),
                value: Bytes::from(generation.to_string()),
            })
            .collect(),
    });
    let mut batch = WriteBatch::new(false);
    batch.push(write);
    batch
}

/// Scan pages read through RocksDB's concurrent reader while another thread rewrites every
/// key in one batch each time: every page must show one batch's state, whatever its bounds.
/// (A page assembled from several reads would mix generations.)
#[test]
fn rocksdb_scan_pages_show_one_state_beside_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = RocksDbBackend::open_rocksdb(&dir.path().join("rocks")).unwrap();
    let keys: Vec<Bytes> = (0..300).map(|i| Bytes::from(format!("k{i:04}"))).collect();
    backend.write(&generation(1, &keys, 1)).unwrap();
    let reader = backend.concurrent_kv_reader().expect("RocksDB has one");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (keys, stop) = (keys.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut index = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                index += 1;
                backend.write(&generation(index, &keys, index)).unwrap();
            }
            index
        })
    };
    let mut pages = 0;
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        // Whole group, a bounded page from the middle, and a page cut by its byte bound.
        for (start, items_max, bytes_max) in [
            ("", 1000, 1 << 20),
            ("k0100", 150, 1 << 20),
            ("", 1000, 900),
        ] {
            let (page, _) = reader
                .kv_scan_page(GROUP, start.as_bytes(), b"", items_max, bytes_max)
                .unwrap();
            assert!(!page.is_empty());
            let first = &page[0].1;
            assert!(
                page.iter().all(|(_, value)| value == first),
                "one page, two states: {:?} .. {:?}",
                page.first(),
                page.last()
            );
            pages += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 10, "the writer made progress ({written} batches)");
    assert!(pages > 10);
}

#[test]
fn scan_page_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = RocksDbBackend::open_rocksdb(&dir.path().join("rocks")).unwrap();
    let keys: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("k{i}"))).collect();
    backend.write(&generation(1, &keys, 7)).unwrap();
    // Each pair is 2 + 1 bytes.
    let page = |start: &str, items_max, bytes_max| {
        let (page, more) =
            Backend::kv_scan_page(&backend, GROUP, start.as_bytes(), b"", items_max, bytes_max)
                .unwrap();
        (page.len(), more)
    };
    assert_eq!(page("", 100, 1 << 20), (10, false));
    assert_eq!(
        page("", 10, 1 << 20),
        (10, false),
        "exactly full is the end"
    );
    assert_eq!(page("", 4, 1 << 20), (4, true));
    assert_eq!(page("", 100, 9), (3, true), "three pairs fit in nine bytes");
    assert_eq!(page("", 100, 1), (1, true), "the first pair always comes");
    assert_eq!(page("k5", 100, 1 << 20), (5, false));
}

#[test]
fn only_rocksdb_offers_a_concurrent_reader() {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksDbBackend::open_rocksdb(&dir.path().join("rocks")).unwrap();
    let sqlite = SqliteBackend::open_sqlite(&dir.path().join("db.sqlite")).unwrap();
    assert!(rocks.concurrent_kv_reader().is_some());
    assert!(sqlite.concurrent_kv_reader().is_none());
    assert!(kahuna::storage::MemoryBackend::in_memory()
        .concurrent_kv_reader()
        .is_none());
}

/// Writes `a = 1`, then `a = 2` with fetches of `a` and of the absent `b` riding along in the
/// same trip to the blocking pool. Returns what the fetches saw and `a` after.
fn fetches_riding_with_a_write<B: Backend + 'static>(
    mut backend: B,
) -> (Vec<(Bytes, Option<Bytes>)>, Option<Bytes>) {
    backend.write(&put(1, b"a", b"1")).unwrap();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let writer = StorageWriter::new(Box::new(backend));
            let fetched = writer
                .write_and_fetch(put(2, b"a", b"2"), vec![fetch(b"a"), fetch(b"b")], vec![])
                .await
                .unwrap()
                .fetched;
            assert_eq!(fetched.len(), 2, "one answer per fetch, in order");
            let values = fetched.into_iter().flat_map(|f| f.values).collect();
            let after = writer.get(GROUP, Bytes::from_static(b"a")).await.unwrap();
            (values, after)
        })
        .unwrap();
    executor.join().unwrap()
}

/// Fetches that ride with a write are read right after it: they see the state the write made
/// (what a fetch behind the backend's lock sees too; the state machine skips keys its cache
/// holds, and a key a batch applies is in its cache), and the write lands.
#[test]
fn fetches_riding_with_a_write_read_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksDbBackend::open_rocksdb(&dir.path().join("rocks")).unwrap();
    let sqlite = SqliteBackend::open_sqlite(&dir.path().join("db.sqlite")).unwrap();
    let expected = vec![
        (Bytes::from_static(b"a"), Some(Bytes::from("2"))),
        (Bytes::from_static(b"b"), None),
    ];
    for (values, after) in [
        fetches_riding_with_a_write(rocks),
        fetches_riding_with_a_write(sqlite),
    ] {
        assert_eq!(values, expected);
        assert_eq!(after, Some(Bytes::from("2")));
    }
}

/// Bytes waiting on `peer` now, without waiting (0 when nothing arrived).
fn readable_now(peer: &StdStream) -> usize {
    peer.set_nonblocking(true).unwrap();
    let mut buffer = [0_u8; 256];
    let read = match (&*peer).read(&mut buffer) {
        Ok(read) => read,
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(error) => panic!("reading the lane's peer: {error}"),
    };
    peer.set_nonblocking(false).unwrap();
    read
}

/// A durable-answer lane over loopback and its peer's end.
fn lane_and_peer() -> (Arc<DurableLane>, StdStream) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let dialled = StdStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    (Arc::new(DurableLane::over(2, dialled).unwrap()), peer)
}

/// Writes `put(2, b"a", b"2")` through a StorageWriter whose backend runs `before` first
/// (and `on_read` at each kv read), with `fetches` and one lane frame for peer 2 riding along;
/// the written result.
fn write_with_a_lane_frame_and(
    lane: Arc<DurableLane>,
    before: Option<BeforeWrite>,
    on_read: Option<OnRead>,
    fetches: Vec<Fetch>,
) -> Result<Written> {
    let dir = tempfile::tempdir().unwrap();
    let inner = RocksDbBackend::open_rocksdb(&dir.path().join("rocks")).unwrap();
    let gate = Gate::default();
    gate.open();
    let backend = GatedWrites {
        inner,
        gate,
        before,
        on_read,
    };
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let writer = StorageWriter::new(Box::new(backend));
            let frame = LaneFrame {
                lane,
                frame: b"the batch's answers".to_vec(),
                messages: 1,
            };
            writer
                .write_and_fetch(put(2, b"a", b"2"), fetches, vec![frame])
                .await
        })
        .unwrap();
    executor.join().unwrap()
}

/// As [`write_with_a_lane_frame_and`] with `before` and nothing else; the lane frames sent.
fn write_with_a_lane_frame(
    lane: Arc<DurableLane>,
    before: BeforeWrite,
) -> Result<Vec<(u64, usize, usize)>> {
    write_with_a_lane_frame_and(lane, Some(before), None, vec![]).map(|written| written.lanes_sent)
}

/// The answers a batch released leave on the lane only once its write returned: the peer has
/// nothing while the write runs, and the frame right after.
#[test]
fn lane_answers_leave_after_the_write_returns() {
    let (lane, peer) = lane_and_peer();
    let watched = peer.try_clone().unwrap();
    let seen_during_write = Arc::new(Mutex::new(None));
    let seen = seen_during_write.clone();
    let sent = write_with_a_lane_frame(
        lane,
        Box::new(move || {
            // Give a frame written too early every chance to arrive.
            std::thread::sleep(Duration::from_millis(50));
            *seen.lock().unwrap() = Some(readable_now(&watched));
            Ok(())
        }),
    )
    .expect("the write succeeds");
    assert_eq!(
        *seen_during_write.lock().unwrap(),
        Some(0),
        "nothing before the write"
    );
    assert_eq!(sent, vec![(2, 1, b"the batch's answers".len())]);
    let mut got = vec![0_u8; b"the batch's answers".len()];
    (&peer).read_exact(&mut got).unwrap();
    assert_eq!(got, b"the batch's answers");
}

/// A failed write sends nothing on the lane (the node stops on it; the answers must never
/// claim durability the write did not give).
#[test]
fn a_failed_write_sends_no_lane_answers() {
    let (lane, peer) = lane_and_peer();
    let result = write_with_a_lane_frame(
        lane.clone(),
        Box::new(|| {
            Err(StorageError::Io {
                context: "test".into(),
                kind: std::io::ErrorKind::Other,
                message: "the disk refused the write".into(),
            })
        }),
    );
    assert!(result.is_err(), "the write's error comes back");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(readable_now(&peer), 0, "no answer went out");
    assert!(lane.is_open(), "the lane is untouched");
}

/// The answers a batch released do not wait for the fetches riding with its write: on a
/// follower they are what the leader's commit waits for, and the reads are for an apply that
/// comes a round trip later. The lane frame is on the peer's socket before the first fetch
/// is read.
#[test]
fn lane_answers_leave_before_riding_fetches_are_read() {
    let (lane, peer) = lane_and_peer();
    let watched = peer.try_clone().unwrap();
    let seen_at_reads = Arc::new(Mutex::new(Vec::new()));
    let seen = seen_at_reads.clone();
    let on_read: OnRead = Arc::new(move || {
        seen.lock().unwrap().push(readable_now(&watched));
    });
    let written = write_with_a_lane_frame_and(lane, None, Some(on_read), vec![fetch(b"a")])
        .expect("the write succeeds");
    let (sent, fetched) = (written.lanes_sent.len(), written.fetched.len());
    assert_eq!((sent, fetched), (1, 1));
    assert_eq!(
        *seen_at_reads.lock().unwrap(),
        vec![b"the batch's answers".len()],
        "the answers were on the wire when the fetch was read"
    );
}

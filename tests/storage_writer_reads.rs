//! A core's single-key reads (the state machine's fetches, client gets) do not wait behind a
//! write in progress when the backend has a concurrent reader (RocksDB): a synced write under
//! load takes milliseconds, and every apply held for a fetch used to wait that long. Backends
//! without one (SQLite) still read behind the backend's lock, after the write, and so do scans
//! on every backend (a page read in chunks must show one state).
//!
//! The backend here is RocksDB (or SQLite) behind a gate that holds every write until the test
//! opens it, so "a write in progress" lasts as long as the test needs.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kahuna::kv::Fetch;
use kahuna::raft::{Entry, GroupId, Index};
use kahuna::server::storage_writer::StorageWriter;
use kahuna::storage::{
    Apply, Backend, ConcurrentKvReader, GroupWrite, KvOp, KvSnapshotReader, RecoveryState, Result,
    RocksDbBackend, Space, SqliteBackend, WriteBatch,
};

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

/// A backend whose writes wait for the gate; everything else is the inner backend's.
struct GatedWrites<B> {
    inner: B,
    gate: Gate,
}

impl<B: Backend> Backend for GatedWrites<B> {
    fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        self.gate.wait();
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

/// Writes `a = 1`, then starts a write of `b = 2` that waits at the gate, and reads `a` while
/// it waits. Returns what the reads saw before the gate opened (`None`: they were still waiting
/// after a second), and `b` after. A scan started while the write waits must see both keys.
fn reads_during_a_write<B: Backend + 'static>(
    mut inner: B,
) -> (Option<Vec<Option<Bytes>>>, Option<Bytes>) {
    inner.write(&put(1, b"a", b"1")).unwrap();
    let gate = Gate::default();
    let backend = GatedWrites {
        inner,
        gate: gate.clone(),
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
            let during = glommio::timer::timeout(Duration::from_secs(1), async { Ok(reads.await) })
                .await
                .ok();
            // A scan waits for the write in progress, on every backend.
            let scan = {
                let writer = writer.clone();
                glommio::spawn_local(async move {
                    let page = writer
                        .scan_page(GROUP, Bytes::new(), Bytes::new(), 10, 1 << 20)
                        .await
                        .unwrap();
                    page.0.len()
                })
            };
            glommio::timer::sleep(Duration::from_millis(50)).await;
            gate.open();
            write.await.unwrap();
            assert_eq!(
                scan.await,
                2,
                "the scan ran after the write: it sees both keys"
            );
            let after = writer.get(GROUP, Bytes::from_static(b"b")).await.unwrap();
            (during, after)
        })
        .unwrap();
    executor.join().unwrap()
}

#[test]
fn rocksdb_reads_run_beside_a_write_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RocksDbBackend::open_rocksdb(&dir.path().join("rocks")).unwrap();
    let (during, after) = reads_during_a_write(backend);
    let values = during.expect("reads waited for the write in progress");
    assert_eq!(values, vec![Some(Bytes::from("1")), Some(Bytes::from("1"))]);
    assert_eq!(after, Some(Bytes::from("2")));
}

#[test]
fn sqlite_reads_wait_for_the_write_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::open_sqlite(&dir.path().join("db.sqlite")).unwrap();
    let (during, after) = reads_during_a_write(backend);
    assert!(
        during.is_none(),
        "SQLite has no concurrent reader: reads go behind the backend's lock"
    );
    assert_eq!(after, Some(Bytes::from("2")));
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
            let (_engine, fetched) = writer
                .write_and_fetch(put(2, b"a", b"2"), vec![fetch(b"a"), fetch(b"b")])
                .await
                .unwrap();
            assert_eq!(fetched.len(), 2, "one answer per fetch, in order");
            let values = fetched.into_iter().flat_map(|f| f.values).collect();
            let after = writer.get(GROUP, Bytes::from_static(b"a")).await.unwrap();
            (values, after)
        })
        .unwrap();
    executor.join().unwrap()
}

/// Fetches that ride with a write are read just before it: they see the state the write
/// starts from (what a fetch beside the write may see too), and the write lands.
#[test]
fn fetches_riding_with_a_write_read_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksDbBackend::open_rocksdb(&dir.path().join("rocks")).unwrap();
    let sqlite = SqliteBackend::open_sqlite(&dir.path().join("db.sqlite")).unwrap();
    let expected = vec![
        (Bytes::from_static(b"a"), Some(Bytes::from("1"))),
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

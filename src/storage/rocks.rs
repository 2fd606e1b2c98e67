//! Owns the RocksDB engine: one database per core directory with one column family per key
//! space, and the options that make synced writes cheap. Knows nothing of Raft; `store` does.
//!
//! Option choices (why):
//! - `recycle_log_file_num = 4`: WAL files are reused instead of created and grown, so the
//!   fdatasync of a synced batch does not also pay for file-size metadata (on this machine kind
//!   0.14 ms for a preallocated file versus 3.4 ms for a growing one). RocksDB truncates a
//!   WAL it retires to what was written in it, so recycling alone leaves small files after an
//!   early switch; `wal_size` writes WAL files out (with filler) ahead of the appends.
//! - `manual_wal_flush = false`: every write reaches the WAL file at once; a synced write is one
//!   write plus one fdatasync (`use_fsync = false`). The WAL sizer relies on it: when a write
//!   returns, nothing of it waits in a buffer.
//! - `wal_recovery_mode = PointInTime`: after a crash the WAL is replayed up to the last intact
//!   record; a torn, never-synced tail is dropped, and synced writes are never lost.
//! - `paranoid_checks` (default on) and block checksums catch damage under RocksDB's own formats;
//!   our records carry their own crc32c on top.
//! - `max_background_jobs = 2` and a bounded total WAL size, for the small machines we run on.
//! - The log column family keeps its memtable as a vector (`MemtableFactory::Vector`), sorted
//!   once when it is flushed, instead of a skiplist. Every put is inserted as a log entry on
//!   every replica, and a skiplist insert into a 64 MiB memtable walks ~20 levels of cache and
//!   TLB misses (memtable inserts were ~26% of a node's CPU at 256 clients); a vector insert is
//!   an append. A node reads the log from storage only when it loads its groups at open, after
//!   RocksDB's recovery has flushed the replayed memtables, so the copy-and-sort a read of a
//!   mutable vector memtable costs is paid almost never. (A write to a group the store has not
//!   loaded reads the log's last key, and would pay it: keep loading every group before
//!   writing it, as the node does.) Measured on the 2-core VM, 3 nodes,
//!   256 clients: 14,400-15,200 puts/s with a skiplist, 15,300-15,500 with the vector.
//!   A vector memtable takes no concurrent inserts, so `allow_concurrent_memtable_write` is off;
//!   each database has one writer at a time anyway (the core's storage writer).
//! - The state column family updates in place (`inplace_update_support`): every batch that
//!   applies entries rewrites each such group's applied record, and a rewrite of a record still
//!   in the live memtable overwrites it there (same size: the records are fixed-size) instead of
//!   inserting one more version. The family's memtable then holds one node per record (a few
//!   per group) instead of a version per apply: no skiplist walk through hundreds of thousands
//!   of versions. The price is point-in-time reads of this family (an iterator or snapshot
//!   would see a rewrite made after it). Nothing reads it so: the store reads state records
//!   only on the writer's own thread, between writes (`Store::kv_snapshot` reads the applied
//!   record right after taking its kv view, with no write in between). The kv family must
//!   never update in place: snapshot images read it through a point-in-time view while writes
//!   go on (`tests/storage_rocks_state.rs` fails if it did). Measured on the 2-core VM,
//!   3 nodes, fresh cluster, 8 s pairs without/with: 256 clients, 8 pairs, 5 faster, 1 equal,
//!   2 slower (median +3.7%); 64 clients, 3 pairs, 11,844/12,387, 11,358/11,978 and
//!   11,239/12,252 puts/s, p99 8.4-9.1 -> 8.2-8.6 ms; one client: no change.
//! - The kv family keeps whole-key bloom filters, in its tables (10 bits per key) and in its
//!   memtable (`memtable_whole_key_filtering`). Every put whose key's revision is not in the
//!   state machine's cache reads the key first (`kv::fetch`); for a key the family lacks (every
//!   new key), that read otherwise searches the memtable's skiplist and every L0 table's index
//!   and a data block, for nothing. Measured on the 2-core VM, 3 nodes, fresh cluster, 256
//!   clients, 30 s, 10,000,000 keys (so most puts create a key and miss the cache): no filters
//!   14,815 and 15,045 puts/s; table filters 16,993, 20,686, 18,457, 18,245, 18,460; both
//!   filters 21,045, 20,380, 21,173. With 100,000 keys (all cached after warm-up, reads rare)
//!   no change: 18,450, 25,228 / 24,099, 24,641 / 22,885, 21,823, 22,367 (none / tables / both;
//!   this VM's run-to-run noise is ~15%). Filters never change an answer, only skip reads.
//! - Every family flushes when one does (`atomic_flush`). RocksDB starts a new WAL file at
//!   each flush, and the sessions family (a 4 MiB buffer then) flushed every ~1.5 s at 256
//!   clients: WAL files were retired at 2-47 MiB, recycled at those sizes, and most synced
//!   writes grew their file (an extent and inode write in the fdatasync; the block trace of a
//!   5 s run: 9,524 metadata writes for 6,268 fdatasyncs). Flushed together, and with the
//!   sessions buffer at 32 MiB so that the log and kv families fill first, a WAL file lives one
//!   memtable cycle (~134 MiB at 256 clients) and is recycled at that size: 3,565 metadata
//!   writes for 7,383 fdatasyncs (what is left is the mtime update ext4 without a journal
//!   writes with the data). Also: the families' tables always cover the same WAL prefix.
//!   Measured on the 2-core VM, 3 nodes, 256 clients, 3 alternated pairs: 37,769/34,822,
//!   39,252/35,658, 38,413/37,023 puts/s.
//! - Flushes and compactions write around the page cache (`use_direct_io_for_flush_and_
//!   compaction`) where the filesystem takes `O_DIRECT` (probed at open; otherwise buffered).
//!   Table files are written once, read by the compaction that retires them, and deleted: in the
//!   page cache each page is allocated, filled and freed once per table, and on a VM whose
//!   freed pages go back to the host (free page reporting) a page touched again costs a
//!   fault in the host too (writing 3 GiB into new page-cache pages took 8.3 s of system time
//!   on the 2-core VM, rewriting it 0.6 s). Reads of the kv family go through the block cache
//!   (and the page cache) as before. Measured on the 2-core VM, 3 nodes, 256 clients, 3
//!   alternated pairs: 40,543/37,974, 37,637/36,656, 38,746/38,826 puts/s, p99 14.6-16.0
//!   against 17.0-18.9 ms, p999 19-26 against 25-33 ms.
//! - Flushes and compactions at the lowest CPU priority (`lower_background_priority`).
//! - LZ4 compression (the only codec compiled in) below L0 only, and none for the log family.
//!   A flush's table is read once, by the compaction that merges it down and compresses what
//!   it keeps; compressing it at the flush too costs CPU on the loaded machine for a file
//!   that lives seconds (as TiKV does: no compression in its top levels). The log family's
//!   tables hold entries about to be cut, which the next compaction drops: never worth it.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode,
    MemtableFactory, Options, ReadOptions, WriteOptions, DB,
};

use super::backend::Backend;
use super::engine::{RawBatch, RawEngine, RawOp, RawRangeView};
use super::error::{Result, StorageError};
use super::keys::Space;
use super::store::Store;
use super::wal_size;

/// The key of the filler that databases created before the WAL sizer (see `wal_size`) wrote
/// to preallocate their first WAL: in the state space, under the reserved group's prefix, so no
/// group's range ever holds it. A crash during that preallocation left it in the WAL; an open
/// removes it.
const WAL_FILLER_KEY: &[u8] = b"\xff\xff\xff\xff\xff\xff\xff\xffwal-filler";
/// The largest WAL size target (`open_preallocated`). RocksDB switches to a new WAL when its
/// families flush (together, when the log or kv family's 64 MiB buffer fills), so a WAL under
/// load grows past it to ~2 write buffers; recycled at that size, it is not grown again.
pub const WAL_PREALLOCATE_BYTES_MAX: usize = 48 << 20;

/// A memtable smaller than this is not flushed by `release_write_buffers`.
const RELEASE_MEMTABLE_BYTES_MIN: u64 = 256 << 10;

/// How many bytes of pairs a snapshot view's producer thread hands over at a time.
const VIEW_BATCH_BYTES_MAX: usize = 256 * 1024;

/// Key/value pairs as the snapshot producer thread hands them over.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A RocksDB database holding the three key spaces as column families.
pub struct RocksEngine {
    db: Arc<DB>,
    sync_write: WriteOptions,
    async_write: WriteOptions,
    /// Bytes each WAL file is written out to (see `wal_size`); 0 for none, and for a handle
    /// that only reads.
    wal_target: u64,
}

/// The default backend: [`Store`] over RocksDB.
pub type RocksDbBackend = Store<RocksEngine>;

fn options() -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    // Also what makes the WAL filler read as the end of a file (see `wal_size`), which also
    // needs WAL tracking (`track_and_verify_wals`) off, as it is by default.
    options.set_recycle_log_file_num(4);
    options.set_manual_wal_flush(false);
    options.set_use_fsync(false);
    options.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    options.set_max_background_jobs(2);
    options.set_max_total_wal_size(256 << 20);
    options.set_bytes_per_sync(1 << 20);
    options.set_keep_log_file_num(4);
    options.set_compression_type(DBCompressionType::Lz4);
    // With dynamic level sizes the first entry is L0 and the second the level L0 merges into.
    options.set_compression_per_level(&[
        DBCompressionType::None,
        DBCompressionType::Lz4,
        DBCompressionType::Lz4,
        DBCompressionType::Lz4,
        DBCompressionType::Lz4,
        DBCompressionType::Lz4,
        DBCompressionType::Lz4,
    ]);
    options.set_level_compaction_dynamic_level_bytes(true);
    // Required by the log's vector memtable (see the module comment); one writer per database.
    options.set_allow_concurrent_memtable_write(false);
    // One WAL file per memtable cycle of every family (see the module comment).
    options.set_atomic_flush(true);
    lower_background_priority(&mut options);
    options
}

/// Runs RocksDB's flushes and compactions at the lowest CPU priority (nice 19, applied by each
/// pool thread when it next takes a job; the pools are the process's, shared by every core's
/// database). They are the only work here that can wait: on a busy machine a memtable flush
/// (~1 s of CPU for 64 MiB of log entries) took the CPU from the reactors and pool threads,
/// and the requests queued behind it: with three nodes on one machine their memtables fill,
/// and flush, at the same moment. Measured on the 2-core VM, open loop for 30 s (each node
/// flushing three times; perf/HISTORY.md "On 2026-12-06"): the per-second p99 spikes exactly at the
/// flushes, and the run's p99 fell in five pairs of six (at 12,000/s 517, 490, 503, 1,068 ms
/// against 187, 177, 124, 207 (776 in a second try); at 10,000/s 422 and 525 against 200 and
/// 819). At 256 clients throughput did not change. A flush still gets the idle CPU and, should
/// writes outrun it, RocksDB's own write slowdown makes room (60 s at 256 clients: no stall).
/// Best effort: without it only the latency spikes come back.
fn lower_background_priority(options: &mut Options) {
    match rocksdb::Env::new() {
        Ok(mut env) => {
            env.lower_high_priority_thread_pool_cpu_priority();
            env.lower_thread_pool_cpu_priority();
            options.set_env(&env);
        }
        Err(error) => {
            eprintln!("kahuna: RocksDB's default environment: {error}; flushes keep their priority")
        }
    }
}

/// The options of `space`'s column family: the database's, with the log's memtable a vector
/// (appends), the state family's records updated in place and the kv family's keys in whole-key
/// filters (see the module comment).
fn family_options(space: Space, database: &Options) -> Options {
    let mut options = database.clone();
    if space == Space::Log {
        options.set_memtable_factory(MemtableFactory::Vector);
        options.set_compression_type(DBCompressionType::None);
        options.set_compression_per_level(&[DBCompressionType::None; 7]);
    }
    if space == Space::Sessions {
        // Appends (one record per write command and replica), sorted once at flush. A read
        // of the mutable memtable (a copy and a sort) is kept cheap by `before_reading`, which
        // flushes it first; its size is set by the atomic flushes (`SESSIONS_WRITE_BUFFER_BYTES`).
        options.set_memtable_factory(MemtableFactory::Vector);
        options.set_write_buffer_size(SESSIONS_WRITE_BUFFER_BYTES);
    }
    if space == Space::State {
        options.set_inplace_update_support(true);
    }
    if space == Space::Kv {
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(KV_FILTER_BITS_PER_KEY, false);
        table.set_whole_key_filtering(true);
        options.set_block_based_table_factory(&table);
        options.set_memtable_prefix_bloom_ratio(KV_MEMTABLE_FILTER_RATIO);
        options.set_memtable_whole_key_filtering(true);
    }
    options
}

/// The sessions family's memtable: ~500,000 records of ~60 bytes in the arena. Large enough
/// that the log and kv families (64 MiB) fill first at every load, so that this family does
/// not set the pace of the atomic flushes (see the module comment): at 256 clients it gathers
/// ~2 MiB a second against their ~10 each.
const SESSIONS_WRITE_BUFFER_BYTES: usize = 32 << 20;
/// Above this, a read of the sessions family flushes its memtable first (see
/// `RocksEngine::before_reading`).
const SESSIONS_READ_FLUSH_BYTES: u64 = 256 << 10;

/// Bits per key of the kv family's table filters (~1% false positives).
const KV_FILTER_BITS_PER_KEY: f64 = 10.0;
/// The kv family's memtable filter, as a fraction of the memtable's size (1.3 MiB for 64 MiB).
const KV_MEMTABLE_FILTER_RATIO: f64 = 0.02;

impl RocksEngine {
    /// A read of the sessions family also reads its live memtable, a vector that RocksDB copies
    /// and sorts for every read while it is mutable: past [`SESSIONS_READ_FLUSH_BYTES`] the
    /// memtable is flushed first (and waited for), so that a read sorts little. Reads of it are
    /// rare (a group's session table loaded once, an image), and the flush changes nothing
    /// visible.
    fn before_reading(&self, space: Space) -> Result<()> {
        if space != Space::Sessions {
            return Ok(());
        }
        let family = self.family(space)?;
        let active = self
            .db
            .property_int_value_cf(family, "rocksdb.cur-size-active-mem-table")?
            .unwrap_or(u64::MAX);
        if active > SESSIONS_READ_FLUSH_BYTES {
            self.db.flush_cf(family)?;
        }
        Ok(())
    }

    /// Opens (creating if needed) the database in directory `path`.
    pub fn open(path: &Path) -> Result<RocksEngine> {
        Self::open_preallocated(path, 0)
    }

    /// As [`RocksEngine::open`], writing every WAL file out to `wal_bytes` (0: not at all; at
    /// most [`WAL_PREALLOCATE_BYTES_MAX`]) now and after each `release_write_buffers`, so
    /// synced writes do not grow the file (see `wal_size`).
    pub fn open_preallocated(path: &Path, wal_bytes: usize) -> Result<RocksEngine> {
        assert!(
            wal_bytes <= WAL_PREALLOCATE_BYTES_MAX,
            "WAL size target of {wal_bytes} bytes above {WAL_PREALLOCATE_BYTES_MAX}"
        );
        let mut options = options();
        if direct_io_supported(path)? {
            options.set_use_direct_io_for_flush_and_compaction(true);
        } else {
            eprintln!(
                "kahuna: {}: the filesystem does not take O_DIRECT; flushes and compactions go \
                 through the page cache",
                path.display()
            );
        }
        let families = Space::ALL.map(|space| {
            ColumnFamilyDescriptor::new(space.name(), family_options(space, &options))
        });
        let db = DB::open_cf_descriptors(&options, path, families)?;
        // Databases made before the sizer preallocated with filler; a crash while doing so
        // left some in the WAL, replayed at this open.
        let state = family(&db, Space::State)?;
        if db.get_pinned_cf(state, WAL_FILLER_KEY)?.is_some() {
            db.delete_cf(state, WAL_FILLER_KEY)?;
        }
        let mut sync_write = WriteOptions::default();
        sync_write.set_sync(true);
        let mut async_write = WriteOptions::default();
        async_write.set_sync(false);
        let engine = RocksEngine {
            db: Arc::new(db),
            sync_write,
            async_write,
            wal_target: wal_bytes as u64,
        };
        engine.write_out_wals();
        Ok(engine)
    }

    /// RocksDB's batch for `batch`.
    fn engine_batch(&self, batch: &RawBatch) -> Result<rocksdb::WriteBatch> {
        let families = [
            self.family(Space::Log)?,
            self.family(Space::State)?,
            self.family(Space::Kv)?,
            self.family(Space::Sessions)?,
        ];
        // Sized up front: the batch's buffer would otherwise grow by doubling, copying every
        // record written so far each time (a batch carries tens of kilobytes at load).
        let mut write = rocksdb::WriteBatch::with_capacity_bytes(batch.encoded_bytes_hint());
        for op in batch.ops() {
            match op {
                RawOp::Put { space, key, value } => {
                    write.put_cf(families[space.slot()], key, value)
                }
                RawOp::Delete { space, key } => write.delete_cf(families[space.slot()], key),
                RawOp::DeleteRange { space, start, end } => {
                    if start < end {
                        write.delete_range_cf(families[space.slot()], start, end)
                    }
                }
            }
        }
        Ok(write)
    }

    fn family(&self, space: Space) -> Result<&ColumnFamily> {
        family(&self.db, space)
    }

    /// Writes out every WAL file to the target (see `wal_size`). Called only where RocksDB
    /// writes nothing meanwhile: at open, and from calls that hold the engine exclusively.
    /// Best effort: a WAL that is not written out only makes synced writes slower.
    fn write_out_wals(&self) {
        if self.wal_target == 0 {
            return;
        }
        // RocksDB's recovery from a background error may write the WAL on its own thread.
        match self.db.property_int_value("rocksdb.background-errors") {
            Ok(Some(0)) => {}
            _ => return,
        }
        if let Err(error) = wal_size::write_out_wals(self.db.path(), self.wal_target) {
            eprintln!(
                "kahuna: {}: writing out the WAL files failed ({error}); synced writes grow \
                 them",
                self.db.path().display()
            );
        }
    }

    fn iterator_options(start: &[u8], end: &[u8]) -> ReadOptions {
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(start.to_vec());
        options.set_iterate_upper_bound(end.to_vec());
        options
    }
}

/// Whether files in directory `path` (created if missing) open with `O_DIRECT`: RocksDB
/// checks it only when it opens an existing database, and a flush that cannot open its table
/// file stops the database's writes. Probes with a file it removes again.
fn direct_io_supported(path: &Path) -> Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(path)
        .map_err(|error| StorageError::io("creating the database directory", error))?;
    let probe = path.join(DIRECT_IO_PROBE);
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let supported = match opened {
        Ok(_) => true,
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => false,
        Err(error) => {
            return Err(StorageError::io(
                "probing the directory for O_DIRECT",
                error,
            ))
        }
    };
    // Without O_DIRECT the open may still have created the file.
    match std::fs::remove_file(&probe) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(StorageError::io("removing the O_DIRECT probe", error)),
    }
    Ok(supported)
}

/// The file `direct_io_supported` creates and removes.
const DIRECT_IO_PROBE: &str = "direct-io-probe";

fn family(db: &DB, space: Space) -> Result<&ColumnFamily> {
    db.cf_handle(space.name())
        .ok_or_else(|| StorageError::RocksDb(format!("column family {} missing", space.name())))
}

impl RocksEngine {
    /// A second handle on the same database, for reads only (see
    /// [`RocksEngine::concurrent_kv_reader`]).
    fn shared_handle(&self) -> RocksEngine {
        let mut sync_write = WriteOptions::default();
        sync_write.set_sync(true);
        let mut async_write = WriteOptions::default();
        async_write.set_sync(false);
        RocksEngine {
            db: self.db.clone(),
            sync_write,
            async_write,
            wal_target: 0,
        }
    }
}

/// RocksDB reads from any thread while another writes: a read sees a write batch whole or not
/// at all (it reads at one sequence number), so the core's fetches, gets and scan pages need not
/// wait behind a synced write.
impl super::ConcurrentKvReader for Store<RocksEngine> {
    fn kv_get(&self, group: crate::raft::GroupId, key: &[u8]) -> Result<Option<bytes::Bytes>> {
        Backend::kv_get(self, group, key)
    }

    fn kv_scan(
        &self,
        group: crate::raft::GroupId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(bytes::Bytes, bytes::Bytes)>> {
        Backend::kv_scan(self, group, start, end, limit)
    }

    fn kv_scan_page(
        &self,
        group: crate::raft::GroupId,
        start: &[u8],
        end: &[u8],
        items_max: usize,
        bytes_max: usize,
    ) -> Result<(Vec<(bytes::Bytes, bytes::Bytes)>, bool)> {
        // One RocksDB iterator: it reads at one sequence number, so the page shows one state.
        Backend::kv_scan_page(self, group, start, end, items_max, bytes_max)
    }
}

impl Store<RocksEngine> {
    /// Opens the RocksDB backend in directory `path`.
    pub fn open_rocksdb(path: &Path) -> Result<RocksDbBackend> {
        Ok(Store::new(RocksEngine::open(path)?))
    }

    /// As `open_rocksdb`, with a WAL of `wal_bytes` preallocated if the database is created
    /// (see [`RocksEngine::open_preallocated`]).
    pub fn open_rocksdb_preallocated(path: &Path, wal_bytes: usize) -> Result<RocksDbBackend> {
        Ok(Store::new(RocksEngine::open_preallocated(path, wal_bytes)?))
    }
}

impl RawEngine for RocksEngine {
    fn write(&mut self, batch: &RawBatch, sync: bool) -> Result<()> {
        let write = self.engine_batch(batch)?;
        let options = if sync {
            &self.sync_write
        } else {
            &self.async_write
        };
        self.db.write_opt(write, options)?;
        Ok(())
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.before_reading(space)?;
        Ok(self.db.get_cf(self.family(space)?, key)?)
    }

    fn concurrent_kv_reader(&self) -> Option<Arc<dyn super::ConcurrentKvReader>> {
        Some(Arc::new(Store::new(self.shared_handle())))
    }

    /// Flushes each column family's memtable that holds at least `RELEASE_MEMTABLE_BYTES_MIN`
    /// to an L0 file and waits for it: the memtable's arena (tens of bytes per record, and a
    /// large part of an idle node's per-group memory after thousands of groups bootstrapped) is
    /// freed. Smaller memtables stay: flushing them would only make tiny files.
    fn release_write_buffers(&mut self) -> Result<()> {
        for space in Space::ALL {
            let family = self.family(space)?;
            let active = self
                .db
                .property_int_value_cf(family, "rocksdb.cur-size-active-mem-table")?
                .unwrap_or(u64::MAX);
            if active >= RELEASE_MEMTABLE_BYTES_MIN {
                self.db.flush_cf(family)?;
            }
        }
        // A flush switches to another WAL file, often a small one, and retires the last one
        // small (see `wal_size`).
        self.write_out_wals();
        Ok(())
    }

    fn first_key(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>> {
        if start >= end {
            return Ok(None);
        }
        self.before_reading(space)?;
        let mut iterator = self
            .db
            .raw_iterator_cf_opt(self.family(space)?, Self::iterator_options(start, end));
        iterator.seek_to_first();
        let key = iterator.key().map(<[u8]>::to_vec);
        iterator.status()?;
        Ok(key)
    }

    fn last_key(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>> {
        if start >= end {
            return Ok(None);
        }
        self.before_reading(space)?;
        let mut iterator = self
            .db
            .raw_iterator_cf_opt(self.family(space)?, Self::iterator_options(start, end));
        iterator.seek_to_last();
        let key = iterator.key().map(<[u8]>::to_vec);
        iterator.status()?;
        Ok(key)
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        self.before_reading(space)?;
        let mut iterator = self
            .db
            .raw_iterator_cf_opt(self.family(space)?, Self::iterator_options(start, end));
        iterator.seek_to_first();
        while let Some((key, value)) = iterator.item() {
            if !visit(key, value) {
                break;
            }
            iterator.next();
        }
        iterator.status()?;
        Ok(())
    }

    /// The iterator (which pins its own consistent view when created) lives on a small producer
    /// thread that owns a handle to the database, so the view is owned and `Send` without unsafe
    /// lifetime tricks. This returns only once the iterator exists; the producer hands over
    /// batches through a channel of depth one, so memory stays bounded, and it stops when the
    /// view is dropped.
    fn view(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Box<dyn RawRangeView>> {
        self.before_reading(space)?;
        let db = Arc::clone(&self.db);
        let (start, end) = (start.to_vec(), end.to_vec());
        let (ready_sender, ready) = sync_channel::<Result<()>>(1);
        let (sender, receiver) = sync_channel::<Result<Pairs>>(1);
        let producer = move || {
            let family = match family(&db, space) {
                Ok(family) => family,
                Err(error) => {
                    let _ = ready_sender.send(Err(error));
                    return;
                }
            };
            let mut options = RocksEngine::iterator_options(&start, &end);
            options.fill_cache(false);
            let mut iterator = db.raw_iterator_cf_opt(family, options);
            if ready_sender.send(Ok(())).is_err() {
                return;
            }
            iterator.seek_to_first();
            loop {
                let mut pairs = Vec::new();
                let mut bytes = 0;
                while let Some((key, value)) = iterator.item() {
                    bytes += key.len() + value.len();
                    pairs.push((key.to_vec(), value.to_vec()));
                    iterator.next();
                    if bytes >= VIEW_BATCH_BYTES_MAX {
                        break;
                    }
                }
                let message = iterator
                    .status()
                    .map(|()| pairs)
                    .map_err(StorageError::from);
                let last = !matches!(&message, Ok(pairs) if !pairs.is_empty());
                if sender.send(message).is_err() || last {
                    return;
                }
            }
        };
        std::thread::Builder::new()
            .name("kahuna-snapshot".to_string())
            .spawn(producer)
            .map_err(|error| StorageError::io("starting the snapshot reader thread", error))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Box::new(RocksView {
                receiver,
                buffer: VecDeque::new(),
                finished: false,
            })),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StorageError::RocksDb(
                "snapshot reader thread exited".to_string(),
            )),
        }
    }
}

/// The receiving end of a snapshot view's producer thread.
struct RocksView {
    receiver: Receiver<Result<Pairs>>,
    buffer: VecDeque<(Vec<u8>, Vec<u8>)>,
    finished: bool,
}

impl RawRangeView for RocksView {
    fn next_pair(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.buffer.is_empty() && !self.finished {
            match self.receiver.recv() {
                Ok(Ok(pairs)) if pairs.is_empty() => self.finished = true,
                Ok(Ok(pairs)) => self.buffer = pairs.into(),
                Ok(Err(error)) => {
                    self.finished = true;
                    return Err(error);
                }
                Err(_) => {
                    self.finished = true;
                    return Err(StorageError::RocksDb(
                        "snapshot reader thread exited".to_string(),
                    ));
                }
            }
        }
        Ok(self.buffer.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size hint covers what RocksDB's batch format takes, so the batch never regrows.
    #[test]
    fn batch_size_hint_covers_the_engine_batch() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RocksEngine::open(dir.path()).unwrap();
        let mut batch = RawBatch::default();
        for i in 0..300u32 {
            let key = format!("key-{i}").into_bytes();
            batch.put(Space::Kv, key.clone(), vec![7; (i as usize * 37) % 700]);
            batch.delete(Space::Log, key.clone());
            batch.delete_range(Space::Sessions, key, format!("key-{}", i + 1).into_bytes());
        }
        let write = engine.engine_batch(&batch).unwrap();
        assert!(write.size_in_bytes() <= batch.encoded_bytes_hint());
        assert!(batch.encoded_bytes_hint() < 2 * write.size_in_bytes());
    }

    fn active_entries(engine: &RocksEngine, space: Space) -> u64 {
        let family = engine.family(space).unwrap();
        engine
            .db
            .property_int_value_cf(family, "rocksdb.num-entries-active-mem-table")
            .unwrap()
            .unwrap()
    }

    /// The log family's buffer filling flushes the kv and sessions families with it (one WAL
    /// file per cycle; see the module comment). Fails if the flushes are per family again.
    #[test]
    fn a_family_that_fills_flushes_every_family() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = RocksEngine::open(dir.path()).unwrap();
        let mut batch = RawBatch::default();
        batch.put(Space::Kv, b"key", b"value");
        batch.put(Space::Sessions, b"session", b"record");
        engine.write(&batch, false).unwrap();
        assert_eq!(active_entries(&engine, Space::Kv), 1);
        // Past the log family's 64 MiB write buffer, in 1 MiB batches.
        for round in 0..80u64 {
            let mut batch = RawBatch::default();
            for i in 0..256u64 {
                let key = (round * 256 + i).to_be_bytes().to_vec();
                batch.put(Space::Log, key, vec![0x5a; 4096]);
            }
            engine.write(&batch, false).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while active_entries(&engine, Space::Log) > 10_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the log family never flushed"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(active_entries(&engine, Space::Kv), 0);
        assert_eq!(active_entries(&engine, Space::Sessions), 0);
        assert_eq!(engine.get(Space::Kv, b"key").unwrap().unwrap(), b"value");
    }

    /// Bytes of `space`'s live table files at L0 and below it.
    fn table_bytes(engine: &RocksEngine, space: Space) -> (usize, usize) {
        let files = engine.db.live_files().unwrap();
        let of_space = files
            .iter()
            .filter(|file| file.column_family_name == space.name());
        of_space.fold((0, 0), |(top, below), file| {
            if file.level == 0 {
                (top + file.size, below)
            } else {
                (top, below + file.size)
            }
        })
    }

    /// A flush writes its table uncompressed and the compaction below L0 compresses the kv
    /// family's; the log family's stays uncompressed (see the module comment).
    #[test]
    fn only_tables_below_l0_of_the_kv_families_are_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = RocksEngine::open(dir.path()).unwrap();
        let raw = 2000 * 1024;
        for space in [Space::Kv, Space::Log] {
            let mut batch = RawBatch::default();
            for i in 0..2000u64 {
                batch.put(space, i.to_be_bytes(), vec![0x61; 1024]);
            }
            engine.write(&batch, false).unwrap();
            engine.db.flush_cf(engine.family(space).unwrap()).unwrap();
            let (top, below) = table_bytes(&engine, space);
            assert!(
                top > raw && below == 0,
                "{space:?} flushed to {top} bytes at L0"
            );
            let family = engine.family(space).unwrap();
            engine
                .db
                .compact_range_cf(family, None::<&[u8]>, None::<&[u8]>);
            let (top, below) = table_bytes(&engine, space);
            assert_eq!(top, 0);
            match space {
                Space::Log => assert!(below > raw, "log compacted to {below} bytes"),
                _ => assert!(below < raw / 4, "kv compacted to {below} bytes"),
            }
        }
    }

    /// The O_DIRECT probe leaves nothing behind, and what flushes and compactions wrote the
    /// way it chose reads back, also after a reopen.
    #[test]
    fn tables_written_the_probed_way_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        assert!(direct_io_supported(&path).is_ok());
        assert!(!path.join(DIRECT_IO_PROBE).exists());
        {
            let mut engine = RocksEngine::open(&path).unwrap();
            assert!(!path.join(DIRECT_IO_PROBE).exists());
            for round in 0..3u8 {
                let mut batch = RawBatch::default();
                for i in 0..1000u32 {
                    batch.put(
                        Space::Kv,
                        i.to_be_bytes(),
                        vec![round; 100 + i as usize % 300],
                    );
                }
                engine.write(&batch, true).unwrap();
                engine
                    .db
                    .flush_cf(engine.family(Space::Kv).unwrap())
                    .unwrap();
            }
            let family = engine.family(Space::Kv).unwrap();
            engine
                .db
                .compact_range_cf(family, None::<&[u8]>, None::<&[u8]>);
        }
        let engine = RocksEngine::open(&path).unwrap();
        for i in (0..1000u32).step_by(37) {
            let value = engine.get(Space::Kv, &i.to_be_bytes()).unwrap().unwrap();
            assert_eq!(value, vec![2; 100 + i as usize % 300]);
        }
    }
}

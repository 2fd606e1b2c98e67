//! Owns the size of a RocksDB database's WAL files: writes them out (with filler) to a target
//! size ahead of RocksDB's appends, so a synced write overwrites blocks that already hold data
//! and the file's size does not change. A write that grows the file makes its
//! fdatasync write the inode too. Measured on the 2-core VM, 600-byte writes each followed by
//! fdatasync, p50 (back to back / 0.5 ms apart): into a written-out file 134 / 162 us, growing
//! the file 207 / 247 us, growing into space fallocated with KEEP_SIZE (what RocksDB does)
//! 190 / 237 us. One client's put p50 on a 3-node cluster was ~600 us with a written-out
//! WAL and ~665 us with a growing one.
//!
//! Why RocksDB alone does not keep it so: it recycles WAL files (`recycle_log_file_num`) to
//! reuse their blocks, but when it retires a WAL it truncates it to the bytes written in it.
//! A WAL retired early (an idle core's memtable flush, a restart's recovery flush) comes back
//! small, and every synced write into it grows it again, until memtable-full switches have
//! cycled large files through the recycle list: at low write rates, never. (At open RocksDB
//! always starts a new, empty WAL.)
//!
//! So at open, and after the flush with which an idle core releases its memtables (the early
//! switch that matters), every WAL file of the database is written out to the target: the
//! live one and the retired ones, which RocksDB recycles next (a retired file RocksDB deletes
//! instead, when its recycle list is full, costs a wasted write). Under load, WALs are retired
//! when a memtable fills, by then larger than the target, and the recycled files stay large
//! without help, because every family flushes then (`atomic_flush`, see `rocks`): with
//! per-family flushes a small family's frequent flush retired WALs at any size. Nothing is written from the write path: filler written there costs a synced
//! write milliseconds (a first version that wrote 4 MiB steps there put 130-180 ms stalls into
//! p99.9 at 256 clients).
//!
//! Safety, the invariant every write of filler keeps: filler is written only at offsets at
//! or past a file's size as `fstat` shows it while RocksDB writes nothing to its WAL (the
//! engine calls this at open and after a flush it requested, holding the engine exclusively,
//! and not after RocksDB reported a background error, whose recovery may write on its own
//! thread). RocksDB appends at its own offset, never past the file's end, and flushes every
//! record to the file before the call returns (`manual_wal_flush` is off), so it overwrites
//! filler and filler never overwrites a record. Retired files are not written by RocksDB; it
//! may close (truncate), delete or rename one meanwhile, which costs only the filler. The
//! filler is synced before RocksDB writes over it, so its fdatasyncs carry its data only.
//!
//! What the filler reads as, the invariant recovery needs: every byte is [`WAL_FILL_BYTE`], so
//! a record header read anywhere in it is a full recyclable record of another log (type 5,
//! log number 0x05050505), which RocksDB's reader takes as the end of the file and reports
//! (point-in-time recovery then replays later WALs only while their sequence numbers continue
//! without a gap; with that log number it is a checksum mismatch, reported the same way).
//! That is how it treats the older records a recycled file holds. Zeros would read as the
//! padding of a preallocated file, skipped silently to the next block: after a power loss
//! that kept a later unsynced page and lost an earlier one, recovery would replay the later
//! batch without the earlier one. The byte relies on recycled (recyclable-format) WALs: with
//! `recycle_log_file_num` 0 a recyclable header after plain records is skipped silently.
//! And RocksDB's WAL tracking (`track_and_verify_wals`, off) compares file sizes with
//! recorded ones, which filler breaks.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The byte WAL files are written out with (see the module comment: it must read as a record
/// of another log, never as padding).
pub const WAL_FILL_BYTE: u8 = 0x05;

/// Filler written per call.
const FILL_CHUNK: usize = 1 << 20;

/// Writes out every WAL file of the database in `dir` to at least `target` bytes (filler past
/// each file's end), and syncs what it wrote. RocksDB must write nothing meanwhile.
pub fn write_out_wals(dir: &Path, target: u64) -> io::Result<()> {
    let mut fill = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if name.as_encoded_bytes().ends_with(b".log") {
            write_out(&dir.join(name), target, &mut fill)?;
        }
    }
    Ok(())
}

/// Appends filler to `path` up to `target` bytes and syncs it. A file that is gone (RocksDB
/// deleted it since the directory was read) needs nothing. `fill` is the filler buffer, made
/// on first use.
fn write_out(path: &Path, target: u64, fill: &mut Vec<u8>) -> io::Result<()> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    // The invariant: start at the file's end as it is now, with RocksDB idle.
    let mut offset = file.metadata()?.len();
    if offset >= target {
        return Ok(());
    }
    if fill.is_empty() {
        fill.resize(FILL_CHUNK, WAL_FILL_BYTE);
    }
    while offset < target {
        let bytes = (target - offset).min(FILL_CHUNK as u64) as usize;
        file.write_all_at(&fill[..bytes], offset)?;
        offset += bytes as u64;
    }
    file.sync_data()
}

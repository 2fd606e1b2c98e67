//! Owns the SQLite engine: one database file per core, one `WITHOUT ROWID` table per key space
//! keyed by the same big-endian byte keys as RocksDB (SQLite compares BLOBs with memcmp, so the
//! order is identical). WAL journal mode; a synced batch is one `BEGIN IMMEDIATE .. COMMIT` under
//! `synchronous=FULL` (the commit fsyncs the WAL once); an unsynced batch commits under
//! `synchronous=NORMAL`. The WAL is not truncated after checkpoints (`journal_size_limit` left at
//! -1), so synced commits overwrite an already allocated file. Knows nothing of Raft.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::engine::{RawBatch, RawEngine, RawOp, RawRangeView};
use super::error::{Result, StorageError};
use super::keys::Space;
use super::store::Store;

/// Rows a snapshot view reads per query.
const VIEW_PAGE_ROWS: u32 = 512;

/// A SQLite database holding the three key spaces as tables.
pub struct SqliteEngine {
    connection: Connection,
    path: PathBuf,
    synchronous_full: bool,
}

/// [`Store`] over SQLite.
pub type SqliteBackend = Store<SqliteEngine>;

struct Statements {
    put: &'static str,
    delete: &'static str,
    delete_range: &'static str,
    get: &'static str,
    first_key: &'static str,
    last_key: &'static str,
    scan: &'static str,
    page_from: &'static str,
    page_after: &'static str,
}

macro_rules! statements {
    ($table:literal) => {
        Statements {
            put: concat!("INSERT OR REPLACE INTO ", $table, " (k, v) VALUES (?1, ?2)"),
            delete: concat!("DELETE FROM ", $table, " WHERE k = ?1"),
            delete_range: concat!("DELETE FROM ", $table, " WHERE k >= ?1 AND k < ?2"),
            get: concat!("SELECT v FROM ", $table, " WHERE k = ?1"),
            first_key: concat!(
                "SELECT k FROM ",
                $table,
                " WHERE k >= ?1 AND k < ?2 ORDER BY k LIMIT 1"
            ),
            last_key: concat!(
                "SELECT k FROM ",
                $table,
                " WHERE k >= ?1 AND k < ?2 ORDER BY k DESC LIMIT 1"
            ),
            scan: concat!(
                "SELECT k, v FROM ",
                $table,
                " WHERE k >= ?1 AND k < ?2 ORDER BY k"
            ),
            page_from: concat!(
                "SELECT k, v FROM ",
                $table,
                " WHERE k >= ?1 AND k < ?2 ORDER BY k LIMIT ?3"
            ),
            page_after: concat!(
                "SELECT k, v FROM ",
                $table,
                " WHERE k > ?1 AND k < ?2 ORDER BY k LIMIT ?3"
            ),
        }
    };
}

const LOG: Statements = statements!("raft_log");
const STATE: Statements = statements!("raft_state");
const KV: Statements = statements!("kv");
const SESSIONS: Statements = statements!("kv_sessions");

fn sql(space: Space) -> &'static Statements {
    match space {
        Space::Log => &LOG,
        Space::State => &STATE,
        Space::Kv => &KV,
        Space::Sessions => &SESSIONS,
    }
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS raft_log (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS raft_state (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS kv_sessions (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL) WITHOUT ROWID;
";

impl SqliteEngine {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> Result<SqliteEngine> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        let mode: String = connection.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::Sqlite(format!(
                "could not enable WAL mode (got {mode})"
            )));
        }
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(SCHEMA)?;
        connection.set_prepared_statement_cache_capacity(64);
        Ok(SqliteEngine {
            connection,
            path: path.to_path_buf(),
            synchronous_full: true,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store<SqliteEngine> {
    /// Opens the SQLite backend in database file `path`.
    pub fn open_sqlite(path: &Path) -> Result<SqliteBackend> {
        Ok(Store::new(SqliteEngine::open(path)?))
    }
}

impl RawEngine for SqliteEngine {
    fn write(&mut self, batch: &RawBatch, sync: bool) -> Result<()> {
        if sync != self.synchronous_full {
            let level = if sync { "FULL" } else { "NORMAL" };
            self.connection.pragma_update(None, "synchronous", level)?;
            self.synchronous_full = sync;
        }
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for op in batch.ops() {
            match op {
                RawOp::Put { space, key, value } => {
                    transaction
                        .prepare_cached(sql(space).put)?
                        .execute(params![key, value])?;
                }
                RawOp::Delete { space, key } => {
                    transaction
                        .prepare_cached(sql(space).delete)?
                        .execute(params![key])?;
                }
                RawOp::DeleteRange { space, start, end } => {
                    transaction
                        .prepare_cached(sql(space).delete_range)?
                        .execute(params![start, end])?;
                }
            }
        }
        transaction.commit()?;
        Ok(())
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut statement = self.connection.prepare_cached(sql(space).get)?;
        Ok(statement
            .query_row(params![key], |row| row.get(0))
            .optional()?)
    }

    fn first_key(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut statement = self.connection.prepare_cached(sql(space).first_key)?;
        Ok(statement
            .query_row(params![start, end], |row| row.get(0))
            .optional()?)
    }

    fn last_key(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut statement = self.connection.prepare_cached(sql(space).last_key)?;
        Ok(statement
            .query_row(params![start, end], |row| row.get(0))
            .optional()?)
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let mut statement = self.connection.prepare_cached(sql(space).scan)?;
        let mut rows = statement.query(params![start, end])?;
        while let Some(row) = rows.next()? {
            let key = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
            let value = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            if !visit(key, value) {
                break;
            }
        }
        Ok(())
    }

    /// A second, read-only connection with an open read transaction: in WAL mode it keeps
    /// reading the database as of its first read, whatever the writer commits afterwards.
    fn view(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Box<dyn RawRangeView>> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(&self.path, flags)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.execute_batch("BEGIN DEFERRED")?;
        // The read transaction (and its snapshot) starts at the first read.
        connection.query_row("SELECT count(*) FROM raft_state", [], |row| {
            row.get::<_, i64>(0)
        })?;
        Ok(Box::new(SqliteView {
            connection,
            space,
            cursor: start.to_vec(),
            cursor_inclusive: true,
            end: end.to_vec(),
            buffer: VecDeque::new(),
            finished: false,
        }))
    }
}

/// Pages through a range inside one read transaction.
struct SqliteView {
    connection: Connection,
    space: Space,
    cursor: Vec<u8>,
    cursor_inclusive: bool,
    end: Vec<u8>,
    buffer: VecDeque<(Vec<u8>, Vec<u8>)>,
    finished: bool,
}

impl SqliteView {
    fn fill(&mut self) -> Result<()> {
        let statements = sql(self.space);
        let query = if self.cursor_inclusive {
            statements.page_from
        } else {
            statements.page_after
        };
        let mut statement = self.connection.prepare_cached(query)?;
        let rows = statement.query_map(params![self.cursor, self.end, VIEW_PAGE_ROWS], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
        })?;
        for row in rows {
            self.buffer.push_back(row?);
        }
        if self.buffer.len() < VIEW_PAGE_ROWS as usize {
            self.finished = true;
        }
        if let Some((key, _)) = self.buffer.back() {
            self.cursor = key.clone();
            self.cursor_inclusive = false;
        }
        Ok(())
    }
}

impl RawRangeView for SqliteView {
    fn next_pair(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.buffer.is_empty() && !self.finished {
            self.fill()?;
        }
        Ok(self.buffer.pop_front())
    }
}

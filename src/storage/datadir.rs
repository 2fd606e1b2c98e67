//! Owns the data directory: its metadata file (format version, core count, engine) and the
//! per-core subdirectories. Opening refuses, before changing anything, a directory made for
//! another core count, another engine or a newer format.
//!
//! Layout: `<path>/KAHUNA_DATA_DIR` (metadata), `<path>/core-<n>/rocksdb/` or
//! `<path>/core-<n>/kahuna.sqlite`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::backend::Backend;
use super::error::{Result, StorageError};
use super::rocks::RocksDbBackend;
use super::sqlite::SqliteBackend;

/// The on-disk format this build writes and the only one it reads. 2: the session records
/// in a space of their own (`keys::Space::Sessions`); 1 kept them in the kv space.
pub const FORMAT_VERSION: u32 = 2;
/// The metadata file name.
pub const METADATA_FILE: &str = "KAHUNA_DATA_DIR";
const METADATA_TEMPORARY: &str = "KAHUNA_DATA_DIR.tmp";
const MAGIC: &str = "kahuna-data-dir";
/// The most cores a data directory may be made for.
pub const CORES_MAX: usize = 1024;

/// The storage engine behind every core of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Engine {
    #[default]
    RocksDb,
    Sqlite,
}

impl Engine {
    /// The name recorded in the metadata file and used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Engine::RocksDb => "rocksdb",
            Engine::Sqlite => "sqlite",
        }
    }

    /// The engine with that name, `None` for an unknown one.
    pub fn parse(name: &str) -> Option<Engine> {
        match name {
            "rocksdb" => Some(Engine::RocksDb),
            "sqlite" => Some(Engine::Sqlite),
            _ => None,
        }
    }
}

/// What the metadata file records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Metadata {
    format: u32,
    cores: usize,
    engine: Engine,
}

impl Metadata {
    fn body(&self) -> String {
        format!(
            "{MAGIC}\nformat {}\ncores {}\nengine {}\n",
            self.format,
            self.cores,
            self.engine.name()
        )
    }

    fn encode(&self) -> String {
        let body = self.body();
        format!("{body}crc32c {:08x}\n", crc32c::crc32c(body.as_bytes()))
    }

    /// Parses the file; the format version is read first so that a newer format is reported
    /// as such even if the rest has changed shape.
    fn decode(path: &Path, text: &str) -> Result<Metadata> {
        let bad = |detail: &str| StorageError::BadDataDir {
            path: path.display().to_string(),
            detail: format!("{METADATA_FILE}: {detail}"),
        };
        let lines: Vec<&str> = text.lines().collect();
        if lines.first() != Some(&MAGIC) {
            return Err(bad("not a kahuna metadata file"));
        }
        let field = |name: &str| -> Result<&str> {
            lines
                .iter()
                .find_map(|line| {
                    line.strip_prefix(name)
                        .and_then(|rest| rest.strip_prefix(' '))
                })
                .ok_or_else(|| bad(&format!("missing {name}")))
        };
        let format: u32 = field("format")?
            .parse()
            .map_err(|_| bad("bad format version"))?;
        if format < FORMAT_VERSION {
            return Err(StorageError::FormatTooOld {
                path: path.display().to_string(),
                found: format,
                supported: FORMAT_VERSION,
            });
        }
        if format > FORMAT_VERSION {
            return Err(StorageError::FormatTooNew {
                path: path.display().to_string(),
                found: format,
                supported: FORMAT_VERSION,
            });
        }
        let cores: usize = field("cores")?.parse().map_err(|_| bad("bad core count"))?;
        let engine = Engine::parse(field("engine")?).ok_or_else(|| bad("unknown engine"))?;
        let metadata = Metadata {
            format,
            cores,
            engine,
        };
        let crc = u32::from_str_radix(field("crc32c")?, 16).map_err(|_| bad("bad checksum"))?;
        if metadata.encode() != text || crc != crc32c::crc32c(metadata.body().as_bytes()) {
            return Err(bad("checksum mismatch or unexpected content"));
        }
        Ok(metadata)
    }
}

/// An opened data directory; see the module comment.
#[derive(Clone, Debug)]
pub struct DataDir {
    path: PathBuf,
    cores: usize,
    engine: Engine,
    /// RocksDB: the size each WAL file of a core's database is written out to (see
    /// [`crate::storage::rocks::RocksEngine::open_preallocated`]); 0 for none.
    wal_preallocate_bytes: usize,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |error| StorageError::io(context, error)
}

fn sync_directory(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(io(format!("syncing directory {}", path.display())))
}

impl DataDir {
    /// Opens the data directory at `path` for `cores` cores using `engine`, creating it (and the
    /// per-core subdirectories) if it does not exist or is empty. Fails without changing anything
    /// if it records another core count or engine, or a newer format.
    pub fn open(path: impl AsRef<Path>, cores: usize, engine: Engine) -> Result<DataDir> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        if cores == 0 || cores > CORES_MAX {
            return Err(StorageError::BadDataDir {
                path: shown,
                detail: format!("core count {cores} outside 1..={CORES_MAX}"),
            });
        }
        let metadata_path = path.join(METADATA_FILE);
        let existing = match fs::read(&metadata_path) {
            Ok(bytes) => Some(bytes),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                return Err(StorageError::io(
                    format!("reading {}", metadata_path.display()),
                    error,
                ))
            }
        };
        let data_dir = DataDir {
            path: path.clone(),
            cores,
            engine,
            wal_preallocate_bytes: 0,
        };
        let Some(bytes) = existing else {
            data_dir.create()?;
            return Ok(data_dir);
        };
        let text = String::from_utf8(bytes).map_err(|_| StorageError::BadDataDir {
            path: shown.clone(),
            detail: format!("{METADATA_FILE} is not text"),
        })?;
        let recorded = Metadata::decode(&path, &text)?;
        if recorded.cores != cores {
            return Err(StorageError::CoreCountMismatch {
                path: shown,
                recorded: recorded.cores,
                requested: cores,
            });
        }
        if recorded.engine != engine {
            return Err(StorageError::EngineMismatch {
                path: shown,
                recorded: recorded.engine.name().to_string(),
                requested: engine.name().to_string(),
            });
        }
        for core in 0..cores {
            let core_dir = data_dir.core_dir(core);
            if !core_dir.is_dir() {
                return Err(StorageError::BadDataDir {
                    path: shown,
                    detail: format!("{} is missing", core_dir.display()),
                });
            }
        }
        Ok(data_dir)
    }

    /// Creates a fresh directory. The core directories come first and the metadata file last
    /// (written to a temporary name, synced, renamed, directory synced), so a crash part way
    /// leaves a directory that is still treated as fresh.
    fn create(&self) -> Result<()> {
        let shown = self.path.display().to_string();
        fs::create_dir_all(&self.path).map_err(io(format!("creating {shown}")))?;
        let entries = fs::read_dir(&self.path).map_err(io(format!("listing {shown}")))?;
        for entry in entries {
            let entry = entry.map_err(io(format!("listing {shown}")))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let leftover = name == METADATA_TEMPORARY
                || (name.starts_with("core-")
                    && fs::read_dir(entry.path())
                        .map(|mut inner| inner.next().is_none())
                        .unwrap_or(false));
            if !leftover {
                return Err(StorageError::BadDataDir {
                    path: shown,
                    detail: format!("not empty ({name}) and has no {METADATA_FILE}"),
                });
            }
        }
        for core in 0..self.cores {
            let core_dir = self.core_dir(core);
            fs::create_dir_all(&core_dir)
                .map_err(io(format!("creating {}", core_dir.display())))?;
        }
        sync_directory(&self.path)?;
        let metadata = Metadata {
            format: FORMAT_VERSION,
            cores: self.cores,
            engine: self.engine,
        };
        let temporary = self.path.join(METADATA_TEMPORARY);
        let mut file = fs::File::create(&temporary)
            .map_err(io(format!("creating {}", temporary.display())))?;
        file.write_all(metadata.encode().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(format!("writing {}", temporary.display())))?;
        fs::rename(&temporary, self.path.join(METADATA_FILE))
            .map_err(io(format!("renaming {}", temporary.display())))?;
        sync_directory(&self.path)
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of cores (and per-core backends) it was opened for.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// Cores whose RocksDB database is opened from now on keep their WAL files written out to
    /// `bytes`.
    pub fn with_wal_preallocation(mut self, bytes: usize) -> DataDir {
        self.wal_preallocate_bytes = bytes;
        self
    }

    /// The engine every core uses.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The directory owned by one core.
    pub fn core_dir(&self, core: usize) -> PathBuf {
        self.path.join(format!("core-{core}"))
    }

    /// Opens the backend of one core (`core < cores`).
    pub fn open_core(&self, core: usize) -> Result<Box<dyn Backend>> {
        if core >= self.cores {
            return Err(StorageError::BadDataDir {
                path: self.path.display().to_string(),
                detail: format!("core {core} out of range 0..{}", self.cores),
            });
        }
        let core_dir = self.core_dir(core);
        Ok(match self.engine {
            Engine::RocksDb => Box::new(RocksDbBackend::open_rocksdb_preallocated(
                &core_dir.join("rocksdb"),
                self.wal_preallocate_bytes,
            )?),
            Engine::Sqlite => {
                Box::new(SqliteBackend::open_sqlite(&core_dir.join("kahuna.sqlite"))?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        let metadata = Metadata {
            format: FORMAT_VERSION,
            cores: 2,
            engine: Engine::Sqlite,
        };
        assert_eq!(
            Metadata::decode(Path::new("x"), &metadata.encode()),
            Ok(metadata)
        );
        let damaged = metadata.encode().replace("cores 2", "cores 3");
        assert!(matches!(
            Metadata::decode(Path::new("x"), &damaged),
            Err(StorageError::BadDataDir { .. })
        ));
    }
}

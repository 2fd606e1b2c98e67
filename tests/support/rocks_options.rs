//! Reads the options RocksDB recorded for a database: its newest `OPTIONS-*` file, whole or
//! one column family's section. For tests that pin an engine option. Included by path from the
//! storage tests (`#[path = "support/rocks_options.rs"]`), so they do not build the cluster
//! harnesses of `support/`.

use std::path::Path;

/// The text of the newest OPTIONS file in the database directory `path`.
pub fn options_text(path: &Path) -> String {
    let options = std::fs::read_dir(path)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("OPTIONS-"))
        })
        .max()
        .expect("RocksDB writes an OPTIONS file");
    std::fs::read_to_string(options).unwrap()
}

/// The `[CFOptions]` section of `family` in the newest OPTIONS file.
pub fn family_options(path: &Path, family: &str) -> String {
    options_text(path)
        .split(&format!("[CFOptions \"{family}\"]"))
        .nth(1)
        .unwrap_or_else(|| panic!("the {family} column family's options"))
        .split("[CFOptions")
        .next()
        .unwrap()
        .to_string()
}

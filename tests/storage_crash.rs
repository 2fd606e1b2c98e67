//! Crash recovery with real process death. The parent test re-executes this test binary as a
//! child (`--exact crash_child`) that streams synced batches for several groups (log append,
//! hard state, apply with kv data and the applied index, periodic compaction) and prints each
//! acknowledged index. The parent SIGKILLs the child mid-stream, reopens the data directory, and
//! checks that every acknowledged write is there, that nothing was applied twice (the applied
//! index matches the data exactly), and that the groups, written in the same batches, agree.
//! Several rounds: each child resumes from what the previous one left.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use kahuna::raft::{Entry, EntryKind, HardState, SnapshotMeta};
use kahuna::storage::{
    Apply, Backend, DataDir, Engine, GroupWrite, KvOp, RecoveryState, WriteBatch,
};

const GROUPS: [u64; 4] = [3, 17, 1_000, 65_537];
const CHILD_ENGINE: &str = "KAHUNA_CRASH_CHILD_ENGINE";
const CHILD_DIR: &str = "KAHUNA_CRASH_CHILD_DIR";
const COMPACT_EVERY: u64 = 64;
/// The child releases its write buffers every this many batches, as an idle core does: on
/// RocksDB a flush (the log's memtable then holds over 256 KiB), a WAL switch and filler
/// written past the end of every WAL file, so the later rounds kill the child after releases
/// and recover WALs that hold filler past their last record.
const RELEASE_EVERY: u64 = 40;

fn engine(name: &str) -> Engine {
    Engine::parse(name).expect("engine name")
}

/// As a node opens it: RocksDB's WAL files are written out with zeros ahead of its appends (see
/// `RELEASE_EVERY`), so the crashes below hit synced writes into files that hold zeros, or
/// older records, past the last write.
fn open(dir: &Path, engine: Engine) -> Box<dyn Backend> {
    DataDir::open(dir, 1, engine)
        .unwrap()
        .with_wal_preallocation(4 << 20)
        .open_core(0)
        .unwrap()
}

fn number(backend: &dyn Backend, group: u64, key: &str) -> u64 {
    backend
        .kv_get(group, key.as_bytes())
        .unwrap()
        .map_or(0, |value| {
            std::str::from_utf8(&value).unwrap().parse().unwrap()
        })
}

fn entry_data(group: u64, index: u64) -> Bytes {
    Bytes::from(format!("g{group}-e{index}-{}", "x".repeat(2_000)))
}

/// Everything the parent checks about one group after a crash; returns the last index.
fn verify_group(backend: &dyn Backend, state: &RecoveryState, acknowledged: u64) -> u64 {
    let group = state.group;
    assert_eq!(
        state.torn_tail, None,
        "group {group}: synced engines never tear"
    );
    let last = state.last_index();
    assert!(
        last >= acknowledged,
        "group {group}: acknowledged {acknowledged} but log ends at {last}"
    );
    for entry in &state.entries {
        assert_eq!(
            entry.data,
            entry_data(group, entry.index),
            "group {group} entry {}",
            entry.index
        );
    }
    // Batch i appends entry i and applies up to i - 1, atomically.
    let applied = state.applied_index;
    assert_eq!(
        applied,
        last.saturating_sub(1),
        "group {group}: applied index out of step with the log"
    );
    assert_eq!(
        number(backend, group, "count"),
        applied,
        "group {group}: applied index vs data"
    );
    assert_eq!(
        number(backend, group, "sum"),
        applied * (applied + 1) / 2,
        "group {group}: something applied twice"
    );
    assert!(
        backend
            .kv_get(group, format!("k{applied}").as_bytes())
            .unwrap()
            .is_some()
            || applied == 0
    );
    assert!(backend
        .kv_get(group, format!("k{}", applied + 1).as_bytes())
        .unwrap()
        .is_none());
    assert!(state.hard_state.commit <= last);
    last
}

/// The child: resume from the recovered state and write synced batches until killed.
#[test]
fn crash_child() {
    let (Ok(engine_name), Ok(dir)) = (std::env::var(CHILD_ENGINE), std::env::var(CHILD_DIR)) else {
        return; // Only meaningful when started by a parent test below.
    };
    let mut backend = open(Path::new(&dir), engine(&engine_name));
    let states: Vec<RecoveryState> = GROUPS
        .iter()
        .map(|&group| backend.load_group(group).unwrap())
        .collect();
    let mut next = states[0].last_index() + 1;
    for state in &states {
        assert_eq!(state.last_index() + 1, next, "groups disagree");
    }
    let mut sum = number(backend.as_ref(), GROUPS[0], "sum");
    loop {
        let applied = next - 1;
        sum += applied;
        let mut batch = WriteBatch::new(true);
        for &group in &GROUPS {
            let entry = Entry {
                index: next,
                term: 1,
                kind: EntryKind::Normal,
                data: entry_data(group, next),
            };
            let mut write = GroupWrite::new(group);
            write.entries = vec![entry];
            write.hard_state = Some(HardState {
                term: 1,
                vote: 1,
                commit: applied,
            });
            if applied > 0 {
                let ops = vec![
                    KvOp::Put {
                        key: Bytes::from(format!("k{applied}")),
                        value: Bytes::from("v"),
                    },
                    KvOp::Put {
                        key: Bytes::from("count"),
                        value: Bytes::from(applied.to_string()),
                    },
                    KvOp::Put {
                        key: Bytes::from("sum"),
                        value: Bytes::from(sum.to_string()),
                    },
                ];
                write.apply = Some(Apply {
                    index: applied,
                    term: 1,
                    conf_state: None,
                    ops,
                });
            }
            if applied > 0 && applied % COMPACT_EVERY == 0 {
                let meta = SnapshotMeta {
                    index: applied - 8,
                    term: 1,
                    ..SnapshotMeta::default()
                };
                write.compact = Some(meta);
            }
            batch.push(write);
        }
        backend.write(&batch).unwrap();
        println!("ack {next}");
        if next % RELEASE_EVERY == 0 {
            backend.release_write_buffers().unwrap();
        }
        next += 1;
    }
}

fn crash_rounds(engine_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged = 0;
    // Kill after a varying number of acknowledgements so deaths land at different points.
    for (round, kill_after) in [37u64, 150, 91].into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENGINE, engine_name)
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut seen_this_round = 0;
        let mut killed = false;
        for line in stdout.lines() {
            let line = line.unwrap();
            // libtest may print "test crash_child ... " on the same line as the first ack.
            let Some((_, index)) = line.split_once("ack ") else {
                continue;
            };
            let index: u64 = index.parse().unwrap();
            assert_eq!(
                index,
                acknowledged + 1,
                "acknowledgements must be consecutive"
            );
            acknowledged = index;
            seen_this_round += 1;
            if seen_this_round == kill_after && !killed {
                child.kill().unwrap(); // SIGKILL
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        assert!(
            killed && !status.success(),
            "round {round}: child ended on its own: {status}"
        );
        let mut backend = open(dir.path(), engine(engine_name));
        let mut lasts = Vec::new();
        for &group in &GROUPS {
            let state = backend.load_group(group).unwrap();
            lasts.push(verify_group(backend.as_ref(), &state, acknowledged));
        }
        assert!(
            lasts.windows(2).all(|pair| pair[0] == pair[1]),
            "groups disagree: {lasts:?}"
        );
        // An acknowledged index may be followed by at most the one batch in flight at the kill.
        assert!(
            lasts[0] <= acknowledged + 1,
            "log {} beyond acknowledged {acknowledged} + 1",
            lasts[0]
        );
        acknowledged = lasts[0];
    }
}

#[test]
fn rocksdb_survives_sigkill() {
    crash_rounds("rocksdb");
}

#[test]
fn sqlite_survives_sigkill() {
    crash_rounds("sqlite");
}

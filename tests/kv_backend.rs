//! The kv state machine over the real in-memory storage backend: its mutations are valid write
//! batches, values read back decode, and sessions reload from the stored records after a
//! restart. (Needs the full crate; the model-store tests are in kv_machine.rs.)

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use kahuna::kv::{
    Command, KvMachine, KvMachineConfig, Op, Outcome, Session, StoredValue, ValueMeta,
};
use kahuna::raft::{Entry, EntryKind, GroupId, HardState, Index};
use kahuna::shard::StateMachine;
use kahuna::storage::{Apply, Backend, GroupWrite, MemoryBackend, SnapshotInstall, WriteBatch};

const G: GroupId = 12;

fn machine(backend: &Rc<RefCell<MemoryBackend>>) -> KvMachine {
    KvMachine::new(KvMachineConfig::default(), Box::new(backend.clone()))
}

/// Applies one command at `index` and writes the entry, the commit point and the mutations with
/// the applied index in one synced batch.
fn apply(
    machine: &mut KvMachine,
    backend: &Rc<RefCell<MemoryBackend>>,
    index: Index,
    command: &Command,
) -> Outcome {
    let entry = Entry {
        index,
        term: 1,
        kind: EntryKind::Normal,
        data: command.encode().unwrap(),
    };
    let mut ops = Vec::new();
    machine.apply(G, &entry, &mut ops);
    // The entry itself and the commit point go in the same batch, as the shard writes them.
    let mut write = GroupWrite::new(G);
    write.entries = vec![entry];
    write.hard_state = Some(HardState {
        term: 1,
        vote: 0,
        commit: index,
    });
    write.apply = Some(Apply {
        index,
        term: 1,
        conf_state: None,
        ops,
    });
    let mut batch = WriteBatch::new(true);
    batch.push(write);
    backend.borrow_mut().write(&batch).unwrap();
    machine.persisted(G, index);
    let completions = machine.take_completions();
    assert_eq!(completions.len(), 1);
    completions[0].outcome
}

fn cas(key: &'static [u8], expected_revision: Index, sequence: u64) -> Command {
    Command {
        session: Some(Session {
            client_id: 77,
            sequence,
        }),
        op: Op::Cas {
            key: Bytes::from_static(key),
            expected_revision,
            value: Bytes::from_static(b"value"),
        },
    }
}

#[test]
fn mutations_are_stored_and_sessions_reload_after_a_restart() {
    let backend = Rc::new(RefCell::new(MemoryBackend::in_memory()));
    let mut first = machine(&backend);
    assert_eq!(
        apply(&mut first, &backend, 1, &cas(b"k", 0, 1)),
        Outcome::Applied { revision: 1 }
    );
    assert_eq!(
        apply(&mut first, &backend, 2, &cas(b"k", 1, 2)),
        Outcome::Applied { revision: 2 }
    );
    let stored = backend.borrow().kv_get(G, b"k").unwrap().unwrap();
    assert_eq!(
        StoredValue::decode(&stored).unwrap().meta,
        ValueMeta {
            revision: 2,
            create_revision: 1
        }
    );
    // The session record is stored in the group's reserved range, not visible to user scans.
    let user = backend
        .borrow()
        .kv_scan(G, kahuna::kv::USER_KEYS_START, &[], 10)
        .unwrap();
    assert_eq!(user.len(), 1);

    drop(first);
    let mut restarted = machine(&backend);
    let recovered = backend.borrow_mut().load_group(G).unwrap();
    assert_eq!(recovered.applied_index, 2);
    // The retry of sequence 2 gets its original answer; a new sequence sees revision 2.
    assert_eq!(
        apply(&mut restarted, &backend, 3, &cas(b"k", 1, 2)),
        Outcome::Applied { revision: 2 }
    );
    assert_eq!(
        apply(&mut restarted, &backend, 4, &cas(b"k", 1, 3)),
        Outcome::RevisionMismatch { current: 2 }
    );
}

/// At-most-once across an image: a replica restored from another's image answers a retry of
/// the last applied command with its original outcome, as the replica that applied it would.
#[test]
fn a_replica_restored_from_an_image_answers_a_retry_with_the_original_outcome() {
    let source = Rc::new(RefCell::new(MemoryBackend::in_memory()));
    let mut leader = machine(&source);
    assert_eq!(
        apply(&mut leader, &source, 1, &cas(b"k", 0, 1)),
        Outcome::Applied { revision: 1 }
    );
    assert_eq!(
        apply(&mut leader, &source, 2, &cas(b"k", 1, 2)),
        Outcome::Applied { revision: 2 }
    );
    let (meta, chunks) = source
        .borrow()
        .kv_snapshot(G, 1024)
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(meta.index, 2);

    let target = Rc::new(RefCell::new(MemoryBackend::in_memory()));
    let mut follower = machine(&target);
    let mut install = GroupWrite::new(G);
    install.snapshot = Some(SnapshotInstall { meta, chunks });
    let mut batch = WriteBatch::new(true);
    batch.push(install);
    target.borrow_mut().write(&batch).unwrap();
    follower.restored(G, 2);
    follower.persisted(G, 2);
    // The retry of sequence 2 is not applied again (it would mismatch: revision 2 now).
    assert_eq!(
        apply(&mut follower, &target, 3, &cas(b"k", 1, 2)),
        Outcome::Applied { revision: 2 }
    );
    assert_eq!(
        apply(&mut follower, &target, 4, &cas(b"k", 2, 3)),
        Outcome::Applied { revision: 4 }
    );
}

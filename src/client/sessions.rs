//! Client sessions for at-most-once writes (Raft thesis 6.3). A node's session table keeps,
//! per client id, only the last sequence applied, so a client id must never have two writes in
//! flight: a newer sequence applied first would make the older one stale. The pool therefore
//! lends each write its own session (client id, next sequence) for the write's whole life,
//! retries included, and takes it back afterwards. It holds as many sessions as writes were
//! ever in flight at once from this client (each session costs the nodes one table entry per
//! partition it wrote to, within their bounded table: see `kv::session`).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

/// Free sessions: (client id, last sequence used).
pub(crate) struct SessionPool {
    free: Mutex<Vec<(u64, u64)>>,
}

impl SessionPool {
    pub(crate) fn new() -> SessionPool {
        SessionPool {
            free: Mutex::new(Vec::new()),
        }
    }

    /// A session for one write: (client id, the sequence to send, with every retry).
    pub(crate) fn take(&self) -> (u64, u64) {
        let reused = self.free.lock().expect("sessions lock").pop();
        let (client_id, last) = reused.unwrap_or_else(|| (random_client_id(), 0));
        (client_id, last + 1)
    }

    /// Returns a session once its write has a final answer (or was given up).
    pub(crate) fn give_back(&self, session: (u64, u64)) {
        assert!(
            session.0 != 0 && session.1 != 0,
            "not a session: {session:?}"
        );
        self.free.lock().expect("sessions lock").push(session);
    }
}

/// A random non-zero 64-bit id (the standard library's per-process random hash keys, mixed
/// with the time and a counter), so independent clients practically never share one.
fn random_client_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_lent_to_one_write_at_a_time_with_rising_sequences() {
        let pool = SessionPool::new();
        let a = pool.take();
        let b = pool.take();
        assert_ne!(a.0, b.0, "two writes in flight never share a client id");
        assert_eq!((a.1, b.1), (1, 1));
        pool.give_back(a);
        let c = pool.take();
        assert_eq!(c, (a.0, 2));
    }
}

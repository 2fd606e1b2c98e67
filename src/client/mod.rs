//! The native Rust client of Kahuna: `kahuna::client`.
//!
//! * [`Client`]: the routing client. Cheap to clone and share between any number of
//!   concurrent callers (threads or async tasks). Its futures are runtime-agnostic: they work
//!   under glommio, any other executor, or [`futures_lite::future::block_on`] on an ordinary
//!   thread (connections are served by their own threads, timeouts by one timer thread, so
//!   awaiting a client call never blocks an executor).
//! * [`BlockingClient`]: the same methods, blocking, for ordinary threads (`client.blocking()`).
//! * [`Connection`]: one pipelined connection to one node, for tests and tools that want to
//!   talk to a given node with no routing.
//!
//! Guarantees:
//! * `get` is linearizable (the partition's leader answers after a ReadIndex); `get_stale`
//!   may be answered by any replica from its applied state and may miss recent writes.
//! * Every value carries the revision at which it was last written; `cas(key, r, value)`
//!   writes only if the key's revision is `r` (0 = the key is absent).
//! * Writes are applied at most once: each write carries a session (client id, sequence)
//!   that every retry reuses, and the partition's session table answers a retry with the
//!   original answer. A write that times out may or may not have been applied:
//!   [`ClientError::outcome_unknown`] says so.
//! * Routing: key -> partition by the server's stable hash ([`crate::server::placement`]);
//!   the partition count is learnt from a status call; a route cache partition -> leader
//!   follows NotLeader hints; timeouts, lost connections and Unavailable answers are retried on
//!   another replica until [`ClientConfig::deadline`].
//! * Backpressure: at most [`ClientConfig::window`] requests in flight per connection; a
//!   caller beyond it waits for a slot (the wait counts against its deadline).
//!
//! ```no_run
//! use kahuna::client::{CasOutcome, Client, ClientConfig};
//!
//! # fn main() -> Result<(), kahuna::client::ClientError> {
//! let client = Client::new(ClientConfig::from_list("127.0.0.1:7400,127.0.0.1:7401"));
//! // From an ordinary thread: the blocking view.
//! let blocking = client.blocking();
//! let revision = blocking.put("greeting", "hello")?;
//! let current = blocking.get("greeting")?.expect("just written");
//! assert_eq!(current.revision, revision);
//! match blocking.cas("greeting", revision, "hello again")? {
//!     CasOutcome::Applied { revision } => println!("written at {revision}"),
//!     CasOutcome::Mismatch { current } => println!("someone else wrote it: {current}"),
//! }
//! // From async code (glommio task, or any executor): await the same methods. Clones share
//! // connections, so give each concurrent task its own clone.
//! let task_client = client.clone();
//! futures_lite::future::block_on(async move {
//!     let value = task_client.get("greeting").await?;
//!     println!("{value:?}");
//!     Ok::<_, kahuna::client::ClientError>(())
//! })?;
//! # Ok(())
//! # }
//! ```

mod blocking;
mod calls;
mod config;
mod connection;
mod error;
mod router;
mod scan;
mod sessions;
pub mod timer;

pub use crate::proto::client::KeyValue;
pub use blocking::BlockingClient;
pub use config::{ClientConfig, PLAYGROUND_ENDPOINTS};
pub use connection::{cork_sends, CallError, ConnectError, Connection, SendCork};
pub use error::ClientError;
pub use router::{CasOutcome, Client, Versioned};
pub use scan::{ScanPage, Scanner};

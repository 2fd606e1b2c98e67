//! The native client. Today: a blocking connection and a small router that follows leader
//! hints (used by the CLI, the playground and the process tests).

mod connection;
mod router;

pub use connection::{Connection, ConnectionError};
pub use router::{Client, ClientError};

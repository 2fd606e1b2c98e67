//! Logging for the transport: one line on stderr per event that changes a connection's state
//! (connected, lost, refused), never one per message, so a flapping peer cannot flood the log.

/// `transport_log!(local_node, "format", args...)`: one line tagged with this node's id.
macro_rules! transport_log {
    ($local:expr, $($arg:tt)*) => {
        eprintln!("kahuna: transport node {}: {}", $local, format_args!($($arg)*))
    };
}

pub(crate) use transport_log;

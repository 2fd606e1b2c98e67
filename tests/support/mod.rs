//! Shared harnesses of the integration tests.

pub mod cluster;
pub mod kv_client;
pub mod metrics;
pub mod nemesis;
pub mod proxied_cluster;
pub mod proxy;
pub mod workload;

//! How a [`super::Client`] behaves: endpoints, deadlines, windows. Plain data with defaults.

use std::time::Duration;

use crate::proto::limits::REQUESTS_IN_FLIGHT_MAX;

/// The playground's endpoints (`kahuna playground`).
pub const PLAYGROUND_ENDPOINTS: &str = "127.0.0.1:7400,127.0.0.1:7401,127.0.0.1:7402";

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Client addresses (`host:port`) to start from; more are learnt from status answers.
    pub endpoints: Vec<String>,
    /// The cluster the client means to talk to; 0 = do not check. A node of another cluster
    /// refuses every request with WrongCluster.
    pub cluster_id: u64,
    /// The whole operation, every retry included. Past it a write's outcome may be unknown.
    pub deadline: Duration,
    /// One attempt on one node; then the client tries another replica.
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    /// Requests in flight per connection (1..=1,024). More callers wait for a slot.
    pub window: usize,
    /// Connections opened to each node; requests are spread over them round robin.
    pub connections_per_endpoint: usize,
}

impl ClientConfig {
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            cluster_id: 0,
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            window: REQUESTS_IN_FLIGHT_MAX,
            connections_per_endpoint: 1,
        }
    }

    /// Endpoints from a comma-separated list (`host:port,host:port`).
    pub fn from_list(endpoints: &str) -> ClientConfig {
        ClientConfig::new(
            endpoints
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(String::from),
        )
    }

    pub fn deadline(mut self, deadline: Duration) -> ClientConfig {
        self.deadline = deadline;
        self
    }

    pub fn attempt_timeout(mut self, timeout: Duration) -> ClientConfig {
        self.attempt_timeout = timeout;
        self
    }

    pub fn cluster_id(mut self, cluster_id: u64) -> ClientConfig {
        self.cluster_id = cluster_id;
        self
    }

    pub fn window(mut self, window: usize) -> ClientConfig {
        self.window = window;
        self
    }

    pub fn connections_per_endpoint(mut self, connections: usize) -> ClientConfig {
        self.connections_per_endpoint = connections;
        self
    }

    /// Panics on a configuration no client can run with (a programming error, not input).
    pub(crate) fn validate(&self) {
        assert!(
            (1..=REQUESTS_IN_FLIGHT_MAX).contains(&self.window),
            "window {} must be 1..={REQUESTS_IN_FLIGHT_MAX}",
            self.window
        );
        assert!(self.connections_per_endpoint >= 1);
        assert!(!self.attempt_timeout.is_zero());
        assert!(!self.connect_timeout.is_zero());
    }
}

//! The etcd driver (cargo feature `etcd`): etcd's v3 gRPC API through the etcd-client crate,
//! on a small tokio runtime owned by the driver. `--connections C` opens C gRPC channels
//! (each one HTTP/2 connection, multiplexing its clients' requests); client `i` uses channel
//! `i % C`. Each request runs as a task of that runtime, which the benchmark client (a task of
//! the runner's executor, as for kahuna) awaits: both systems are driven by the same client
//! tasks and workload.

use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::driver::{Driver, DriverError, OpError, OpFuture, OpOutcome, Session};
use super::workload::BenchOp;

/// Runtime worker threads: the client machine has 2 cores; the workers move the bytes, the
/// runner's executor thread does the waiting.
const RUNTIME_WORKERS: usize = 2;

pub struct EtcdDriver {
    runtime: Arc<tokio::runtime::Runtime>,
    channels: Vec<Client>,
}

impl EtcdDriver {
    pub fn connect(endpoints: &[String], connections: usize) -> Result<EtcdDriver, DriverError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_WORKERS)
            .enable_all()
            .build()
            .map_err(|e| DriverError(format!("tokio runtime: {e}")))?;
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let client = runtime
                .block_on(Client::connect(endpoints, None))
                .map_err(|e| DriverError(format!("cannot connect to etcd {endpoints:?}: {e}")))?;
            channels.push(client);
        }
        Ok(EtcdDriver {
            runtime: Arc::new(runtime),
            channels,
        })
    }
}

impl Driver for EtcdDriver {
    fn describe(&self) -> String {
        format!(
            "etcd (gRPC via etcd-client), {} connection(s) shared by the clients",
            self.channels.len()
        )
    }

    fn session(&self, client: usize) -> Result<Box<dyn Session>, DriverError> {
        Ok(Box::new(EtcdSession {
            runtime: self.runtime.clone(),
            client: self.channels[client % self.channels.len()].clone(),
        }))
    }
}

struct EtcdSession {
    runtime: Arc<tokio::runtime::Runtime>,
    client: Client,
}

fn error_of(error: etcd_client::Error) -> OpError {
    let kind = match &error {
        etcd_client::Error::GRpcStatus(status) => format!("grpc_{:?}", status.code()),
        etcd_client::Error::TransportError(_) => "transport".to_string(),
        _ => "etcd".to_string(),
    };
    OpError::new(kind, error.to_string())
}

impl Session for EtcdSession {
    fn execute(&mut self, op: BenchOp) -> OpFuture<'_> {
        let client = self.client.clone();
        let request = self.runtime.spawn(execute(client, op));
        Box::pin(async move {
            request
                .await
                .unwrap_or_else(|error| Err(OpError::new("etcd", error.to_string())))
        })
    }
}

async fn execute(mut client: Client, op: BenchOp) -> Result<OpOutcome, OpError> {
    match op {
        BenchOp::Put { key, value } => {
            let response = client
                .put(key.to_vec(), value.to_vec(), None)
                .await
                .map_err(error_of)?;
            let revision = response.header().map_or(0, |h| h.revision() as u64);
            Ok(OpOutcome::Done { revision })
        }
        BenchOp::Get { key } => {
            let response = client.get(key.to_vec(), None).await.map_err(error_of)?;
            match response.kvs().first() {
                Some(kv) => Ok(OpOutcome::Done {
                    revision: kv.mod_revision() as u64,
                }),
                None => Ok(OpOutcome::NotFound),
            }
        }
        BenchOp::Cas {
            key,
            expected_revision,
            value,
        } => {
            // mod_revision 0 compares equal for an absent key, as kahuna's 0 does.
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.to_vec(),
                    CompareOp::Equal,
                    expected_revision as i64,
                )])
                .and_then([TxnOp::put(key.to_vec(), value.to_vec(), None)])
                .or_else([TxnOp::get(key.to_vec(), None)]);
            let response = client.txn(txn).await.map_err(error_of)?;
            if response.succeeded() {
                let revision = response.header().map_or(0, |h| h.revision() as u64);
                return Ok(OpOutcome::Done { revision });
            }
            let current_revision = response
                .op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision() as u64),
                    _ => None,
                })
                .unwrap_or(0);
            Ok(OpOutcome::Conflict { current_revision })
        }
    }
}

//! Prefix scans across partitions. Keys are hash-partitioned, so every partition may hold
//! keys of any prefix: a scan reads each partition's pages (each served by the partition's
//! leader after a ReadIndex, so linearizable per partition and per page) and merges them in key
//! order. A scan is NOT an atomic snapshot across partitions or across pages: a write that
//! lands during the scan may or may not be seen, partition by partition.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;

use super::error::ClientError;
use super::router::Client;
use crate::proto::client::{ErrorCode, KeyValue, Op, Reply};
use crate::proto::limits::{SCAN_PAGE_ITEMS_DEFAULT, SCAN_PAGE_ITEMS_MAX};

/// One page of one partition: its items and the token for the next page (empty = done).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanPage {
    pub items: Vec<KeyValue>,
    pub continuation: Bytes,
}

/// Where the scan of one partition stands.
struct Cursor {
    partition: u64,
    /// Fetched and not yet handed out, in key order.
    buffer: VecDeque<KeyValue>,
    /// The token for the next page; `None` once the partition is exhausted.
    next: Option<Bytes>,
}

/// Yields the keys starting with a prefix, in key order, from every partition. Created by
/// [`Client::scanner`]; fetches pages lazily (every partition's next page at once).
pub struct Scanner {
    client: Client,
    prefix: Bytes,
    page_items: u32,
    /// Empty until the first call learns the partition count.
    cursors: Vec<Cursor>,
    started: bool,
}

impl Client {
    /// One page of `partition`'s keys starting with `prefix` after `continuation` (empty for
    /// the first page), at most `limit` items (0 = the node's default), read on the
    /// partition's leader after a ReadIndex.
    pub async fn scan_page(
        &self,
        partition: u64,
        prefix: impl AsRef<[u8]>,
        limit: u32,
        continuation: Bytes,
    ) -> Result<ScanPage, ClientError> {
        let op = Op::Scan {
            prefix: Bytes::copy_from_slice(prefix.as_ref()),
            limit,
            continuation,
            partition: Some(partition),
        };
        let response = self.execute(op).await?;
        match (response.error, response.reply) {
            (
                ErrorCode::Ok,
                Some(Reply::Scan {
                    items,
                    continuation,
                }),
            ) => {
                if items.is_empty() && !continuation.is_empty() {
                    return Err(ClientError::Protocol(format!(
                        "partition {partition}: an empty scan page that is not the last"
                    )));
                }
                Ok(ScanPage {
                    items,
                    continuation,
                })
            }
            (code, reply) => Err(ClientError::Protocol(format!(
                "unexpected answer to a scan: {code:?} ({}) with {reply:?}",
                response.message
            ))),
        }
    }

    /// A scanner over the keys starting with `prefix` (empty = every key).
    pub fn scanner(&self, prefix: impl AsRef<[u8]>) -> Scanner {
        Scanner {
            client: self.clone(),
            prefix: Bytes::copy_from_slice(prefix.as_ref()),
            page_items: SCAN_PAGE_ITEMS_DEFAULT,
            cursors: Vec::new(),
            started: false,
        }
    }

    /// At most `limit` keys starting with `prefix`, in key order.
    pub async fn scan(
        &self,
        prefix: impl AsRef<[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, ClientError> {
        let mut scanner = self.scanner(prefix);
        scanner.page_items = limit.clamp(1, SCAN_PAGE_ITEMS_MAX as usize) as u32;
        let mut items = Vec::new();
        while items.len() < limit {
            match scanner.next().await? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(items)
    }
}

impl Scanner {
    /// Items per page asked of each partition (1..=1,000; default 100).
    pub fn page_items(mut self, items: u32) -> Scanner {
        self.page_items = items.clamp(1, SCAN_PAGE_ITEMS_MAX);
        self
    }

    /// The next key in order, `None` when the scan is complete.
    pub async fn next(&mut self) -> Result<Option<KeyValue>, ClientError> {
        if !self.started {
            let deadline = Instant::now() + self.client.config().deadline;
            let partitions = self.client.partition_count(deadline).await?;
            self.cursors = (0..partitions)
                .map(|partition| Cursor {
                    partition,
                    buffer: VecDeque::new(),
                    next: Some(Bytes::new()),
                })
                .collect();
            self.started = true;
        }
        // The smallest head is next only once every partition that may hold more has a head.
        self.refill().await?;
        let smallest = self
            .cursors
            .iter()
            .enumerate()
            .filter_map(|(at, cursor)| cursor.buffer.front().map(|item| (at, &item.key)))
            .min_by(|a, b| a.1.cmp(b.1))
            .map(|(at, _)| at);
        Ok(smallest.and_then(|at| self.cursors[at].buffer.pop_front()))
    }

    /// Up to `max` next keys; empty when the scan is complete.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<KeyValue>, ClientError> {
        let mut batch = Vec::new();
        while batch.len() < max {
            match self.next().await? {
                Some(item) => batch.push(item),
                None => break,
            }
        }
        Ok(batch)
    }

    /// Fetches the next page of every partition whose buffer ran empty, all at once.
    async fn refill(&mut self) -> Result<(), ClientError> {
        let mut fetches: Vec<Pin<Box<dyn Future<Output = _> + Send>>> = Vec::new();
        for (at, cursor) in self.cursors.iter().enumerate() {
            if !cursor.buffer.is_empty() {
                continue;
            }
            let Some(token) = cursor.next.clone() else {
                continue;
            };
            let client = self.client.clone();
            let prefix = self.prefix.clone();
            let (partition, limit) = (cursor.partition, self.page_items);
            fetches.push(Box::pin(async move {
                (at, client.scan_page(partition, prefix, limit, token).await)
            }));
        }
        for (at, page) in join_all(fetches).await {
            let page = page?;
            let cursor = &mut self.cursors[at];
            if let (Some(token), Some(first)) = (&cursor.next, page.items.first()) {
                if !token.is_empty() && first.key <= *token {
                    return Err(ClientError::Protocol(format!(
                        "partition {}: a scan page went backwards",
                        cursor.partition
                    )));
                }
            }
            cursor.next = (!page.continuation.is_empty()).then_some(page.continuation);
            cursor.buffer.extend(page.items);
        }
        Ok(())
    }
}

/// Runs every future to completion concurrently; the outputs in completion order.
async fn join_all<T>(futures: Vec<Pin<Box<dyn Future<Output = T> + Send>>>) -> Vec<T> {
    let mut pending: Vec<Option<Pin<Box<dyn Future<Output = T> + Send>>>> =
        futures.into_iter().map(Some).collect();
    let mut done = Vec::with_capacity(pending.len());
    futures_lite::future::poll_fn(|cx| {
        for slot in pending.iter_mut() {
            if let Some(future) = slot {
                if let Poll::Ready(output) = future.as_mut().poll(cx) {
                    done.push(output);
                    *slot = None;
                }
            }
        }
        if pending.iter().all(Option::is_none) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    done
}

//! What differs between kinds of ledger when forwarding: how one transaction is sent to a
//! node and what the answer means, and how a node's health is checked. Ethereum JSON-RPC
//! and generic HTTP are the two implementations; the node pool, breaker, lanes, retries
//! and outbox bookkeeping in `forward` are the same for both.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyper::Method;

use super::client::{self, HttpClient, Sent};
use super::node::Node;
use crate::txn::TxId;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A node's answer to a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Down,
    Up,
    /// Up, and on this chain (the ledger checks it is its own).
    OnChain(u64),
}

pub trait Adapter: Send + Sync {
    /// Sends one transaction. `ask_first`: it may already be on the node (a retry, or a
    /// transaction queued again after a restart).
    fn send<'a>(
        &'a self,
        client: &'a HttpClient,
        node: &'a Node,
        id: &'a TxId,
        body: &'a [u8],
        ask_first: bool,
        timeout: Duration,
    ) -> BoxFuture<'a, Sent>;

    fn check<'a>(
        &'a self,
        client: &'a HttpClient,
        node: &'a Node,
        timeout: Duration,
    ) -> BoxFuture<'a, Health>;
}

/// Ethereum JSON-RPC: `eth_sendRawTransaction`, idempotent by hash; health is
/// `eth_chainId`.
pub struct Ethereum;

impl Adapter for Ethereum {
    fn send<'a>(
        &'a self,
        client: &'a HttpClient,
        node: &'a Node,
        id: &'a TxId,
        body: &'a [u8],
        ask_first: bool,
        timeout: Duration,
    ) -> BoxFuture<'a, Sent> {
        Box::pin(client::send_ethereum(
            client,
            &node.submit,
            body,
            id,
            ask_first,
            timeout,
        ))
    }

    fn check<'a>(
        &'a self,
        client: &'a HttpClient,
        node: &'a Node,
        timeout: Duration,
    ) -> BoxFuture<'a, Health> {
        Box::pin(async move {
            let answer = client::rpc(
                client,
                &node.health,
                "eth_chainId",
                serde_json::json!([]),
                timeout,
            )
            .await;
            match answer {
                Ok(Ok(v)) => v
                    .as_str()
                    .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                    .map_or(Health::Down, Health::OnChain),
                _ => Health::Down,
            }
        })
    }
}

/// A generic HTTP ledger: the envelope JSON is POSTed to `submit_path`; health is a 2xx
/// on `GET health_path`.
pub struct Http;

impl Adapter for Http {
    fn send<'a>(
        &'a self,
        client: &'a HttpClient,
        node: &'a Node,
        _id: &'a TxId,
        body: &'a [u8],
        _ask_first: bool,
        timeout: Duration,
    ) -> BoxFuture<'a, Sent> {
        // The ledger answers 409 for an envelope it has: re-sending is safe.
        Box::pin(client::send_http(client, &node.submit, body, timeout))
    }

    fn check<'a>(
        &'a self,
        client: &'a HttpClient,
        node: &'a Node,
        timeout: Duration,
    ) -> BoxFuture<'a, Health> {
        Box::pin(async move {
            match client::exchange(client, Method::GET, node.health.clone(), None, timeout).await {
                Ok((s, _)) if s.is_success() => Health::Up,
                _ => Health::Down,
            }
        })
    }
}

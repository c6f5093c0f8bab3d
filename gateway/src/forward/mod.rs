//! Forwarding: per ledger, a pool of nodes with health checks, the healthy node with the
//! fewest requests in flight, a concurrency limit per node, retries with exponential
//! backoff and jitter, and a circuit breaker per node. Delivery is at least once and
//! idempotent by transaction id; the outbox records each outcome. Transactions of one
//! Ethereum sender go one at a time, in the order they were accepted (a "lane"), so a node
//! never sees nonce n + 1 before nonce n; different senders go in parallel.
//!
//! - `node`: one node's health, in-flight count and breaker;
//! - `client`: the HTTP and JSON-RPC exchanges and what each answer means.

pub mod client;
pub mod node;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Uri;
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};

use crate::metrics as m;
use crate::outbox::{Outbox, Pending, State};
use crate::txn::envelope::TrustAnchors;
use crate::txn::TxId;
use client::{HttpClient, Sent};
use node::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// Ethereum JSON-RPC: signed raw transactions, `eth_sendRawTransaction`.
    Ethereum,
    /// Generic HTTP: signed envelopes POSTed as JSON.
    Http,
}

/// One `[[ledgers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    pub name: String,
    pub kind: LedgerKind,
    /// Node base URLs (`http://host:port` or `https://host:port`; for Ethereum the
    /// JSON-RPC endpoint).
    pub nodes: Vec<String>,
    /// PEM CA certificates that `https://` nodes' certificates may chain to, besides the
    /// system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Ethereum: the chain id transactions must carry; read from the nodes when absent.
    pub chain_id: Option<u64>,
    /// Ethereum: when not empty, only these sender addresses are let through.
    #[serde(default)]
    pub senders: Vec<String>,
    /// http: where envelopes are POSTed, and the health check path.
    #[serde(default = "default_submit_path")]
    pub submit_path: String,
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// http: PEM roots that envelope certificates must chain to, and intermediates.
    pub trust_roots_file: Option<PathBuf>,
    pub trust_intermediates_file: Option<PathBuf>,
    #[serde(default = "default_in_flight")]
    pub max_in_flight_per_node: usize,
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
    /// Largest single transaction (raw bytes or envelope payload) admitted.
    #[serde(default = "default_tx_bytes")]
    pub max_transaction_bytes: usize,
}

fn default_submit_path() -> String {
    "/transactions".into()
}
fn default_health_path() -> String {
    "/health".into()
}
fn default_in_flight() -> usize {
    32
}
fn default_timeout() -> u64 {
    10_000
}
fn default_tx_bytes() -> usize {
    128 * 1024
}

impl LedgerConfig {
    /// What `--ledger NAME=ethereum+http://HOST:PORT` (or `http+URL`) means.
    pub fn from_flag(flag: &str) -> Result<LedgerConfig, String> {
        let (name, rest) = flag.split_once('=').ok_or_else(|| {
            format!("--ledger {flag:?}: expected NAME=ethereum+URL or NAME=http+URL")
        })?;
        let (kind, url) = if let Some(u) = rest.strip_prefix("ethereum+") {
            ("ethereum", u)
        } else if let Some(u) = rest.strip_prefix("http+") {
            ("http", u)
        } else {
            return Err(format!(
                "--ledger {flag:?}: the URL must start with ethereum+ or http+"
            ));
        };
        // Through serde, so every other field takes the same default as in a config file.
        serde_json::from_value(serde_json::json!({"name": name, "kind": kind, "nodes": [url]}))
            .map_err(|e| format!("--ledger {flag:?}: {e}"))
    }

    pub fn validate(&self) -> Result<(), String> {
        let ctx = |m: String| format!("ledger {:?}: {m}", self.name);
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ctx("name must be 1 to 64 of [A-Za-z0-9._-]".into()));
        }
        if self.nodes.is_empty() {
            return Err(ctx("no nodes".into()));
        }
        for n in &self.nodes {
            self.node_uris(n).map_err(ctx)?;
        }
        parse_senders(&self.senders).map_err(ctx)?;
        if self.kind == LedgerKind::Http && (self.chain_id.is_some() || !self.senders.is_empty()) {
            return Err(ctx("chain_id and senders are for ethereum ledgers".into()));
        }
        if self.kind == LedgerKind::Ethereum && self.trust_roots_file.is_some() {
            return Err(ctx(
                "trust_roots_file is for http ledgers (envelopes)".into()
            ));
        }
        if self.trust_intermediates_file.is_some() && self.trust_roots_file.is_none() {
            return Err(ctx("trust_intermediates_file needs trust_roots_file".into()));
        }
        for p in [&self.submit_path, &self.health_path] {
            if !p.starts_with('/') {
                return Err(ctx(format!("path {p:?} must start with /")));
            }
        }
        if self.max_in_flight_per_node == 0 || self.request_timeout_ms == 0 {
            return Err(ctx(
                "max_in_flight_per_node and request_timeout_ms must be >= 1".into(),
            ));
        }
        if self.max_transaction_bytes < 64 {
            return Err(ctx("max_transaction_bytes must be >= 64".into()));
        }
        Ok(())
    }
}

impl LedgerConfig {
    /// A node's submit and health-check URIs: the JSON-RPC endpoint twice for Ethereum;
    /// the base URL joined with `submit_path` and `health_path` for http.
    fn node_uris(&self, url: &str) -> Result<(Uri, Uri), String> {
        let base = parse_node(url)?;
        if self.kind == LedgerKind::Ethereum {
            return Ok((base.clone(), base));
        }
        let join = |path: &str| {
            format!("{}{path}", url.trim_end_matches('/'))
                .parse::<Uri>()
                .map_err(|e| format!("node {url:?} with path {path:?}: {e}"))
        };
        Ok((join(&self.submit_path)?, join(&self.health_path)?))
    }

    /// Reads every file the ledger names (trust anchors, the nodes' CA), as start-up will.
    pub fn check_files(&self) -> Result<(), String> {
        self.trust_anchors()?;
        client::http_client(self.tls_ca_file.as_deref())
            .map_err(|e| format!("ledger {:?}: {e}", self.name))?;
        Ok(())
    }

    /// The envelope signers' trust anchors, read from their files, for http ledgers that
    /// name them. Start-up and `config check` both go through here.
    pub fn trust_anchors(&self) -> Result<Option<TrustAnchors>, String> {
        self.trust_roots_file
            .as_deref()
            .map(|r| TrustAnchors::load(r, self.trust_intermediates_file.as_deref()))
            .transpose()
            .map_err(|e| format!("ledger {:?}: {e}", self.name))
    }
}

fn parse_node(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("node {url:?}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "node {url:?}: must be http://host:port or https://host:port"
        ));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("node {url:?}: no credentials in node URLs"));
    }
    Ok(uri)
}

fn parse_senders(list: &[String]) -> Result<HashSet<[u8; 20]>, String> {
    list.iter()
        .map(|s| {
            crate::util::unhex0x(s)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("sender {s:?} is not a 0x address"))
        })
        .collect()
}

/// `[forward]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    #[serde(default = "default_retry_initial")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
    #[serde(default = "default_health_interval")]
    pub health_interval_ms: u64,
    /// Consecutive failures that open a node's breaker, and how long it stays open.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    #[serde(default = "default_breaker_open")]
    pub breaker_open_ms: u64,
}

fn default_retry_initial() -> u64 {
    200
}
fn default_retry_max() -> u64 {
    30_000
}
fn default_health_interval() -> u64 {
    2_000
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open() -> u64 {
    5_000
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            retry_initial_ms: default_retry_initial(),
            retry_max_ms: default_retry_max(),
            health_interval_ms: default_health_interval(),
            breaker_failures: default_breaker_failures(),
            breaker_open_ms: default_breaker_open(),
        }
    }
}

impl ForwardConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return Err("[forward]: need 1 <= retry_initial_ms <= retry_max_ms".into());
        }
        if self.health_interval_ms < 100 || self.breaker_failures == 0 {
            return Err("[forward]: health_interval_ms >= 100 and breaker_failures >= 1".into());
        }
        Ok(())
    }

    /// Exponential backoff with jitter: a random point in the upper half of the step.
    fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .retry_initial_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(self.retry_max_ms);
        let r = u64::from_le_bytes(crate::util::random_bytes(8).try_into().expect("8 bytes"));
        Duration::from_millis(step / 2 + r % (step / 2 + 1))
    }
}

/// A transaction on its way to a ledger.
struct Job {
    id: TxId,
    body: Arc<[u8]>,
    /// It may have reached a node already (queued again after a restart).
    maybe_sent: bool,
    /// The Ethereum sender: its transactions are delivered one after another.
    lane: Option<[u8; 20]>,
}

/// One configured ledger at run time.
pub struct Ledger {
    pub name: Arc<str>,
    pub kind: LedgerKind,
    /// 0 until known (configured or read from a node).
    chain_id: AtomicU64,
    configured_chain: Option<u64>,
    pub senders: HashSet<[u8; 20]>,
    pub trust: Option<TrustAnchors>,
    pub max_transaction_bytes: usize,
    nodes: Vec<Arc<Node>>,
    timeout: Duration,
    queue: mpsc::UnboundedSender<Job>,
}

impl Ledger {
    pub fn chain_id(&self) -> Option<u64> {
        Some(self.chain_id.load(Ordering::Relaxed)).filter(|c| *c != 0)
    }

    pub fn any_healthy(&self) -> bool {
        self.nodes.iter().any(|n| n.is_healthy())
    }

    /// Hands an accepted (durable) transaction to the forwarder; `sender` (Ethereum)
    /// puts it behind that sender's earlier ones.
    pub fn submit(&self, id: TxId, body: Arc<[u8]>, sender: Option<[u8; 20]>) {
        // The queue holds what the outbox bounds (max_pending), so it cannot grow past it.
        let _ = self.queue.send(Job {
            id,
            body,
            maybe_sent: false,
            lane: sender,
        });
    }

    /// The healthy node, breaker permitting, with the fewest requests in flight.
    fn pick(&self) -> Option<node::Claim<'_>> {
        let mut order: Vec<&Arc<Node>> = self.nodes.iter().collect();
        order.sort_by_key(|n| n.in_flight());
        order.into_iter().find_map(|n| n.try_claim())
    }
}

pub struct Forwarder {
    ledgers: HashMap<String, Arc<Ledger>>,
}

impl Forwarder {
    /// Starts node health checks and a dispatcher per ledger, and queues the outbox's
    /// pending transactions again. Must run inside the tokio runtime.
    pub fn start(
        configs: &[LedgerConfig],
        config: &ForwardConfig,
        outbox: Outbox,
        pending: Vec<Pending>,
    ) -> Result<Forwarder, String> {
        let config = Arc::new(config.clone());
        let mut ledgers = HashMap::new();
        for c in configs {
            let trust = c.trust_anchors()?;
            let client = client::http_client(c.tls_ca_file.as_deref())
                .map_err(|e| format!("ledger {:?}: {e}", c.name))?;
            let nodes = c
                .nodes
                .iter()
                .map(|u| {
                    let (submit, health) = c.node_uris(u)?;
                    Ok(Arc::new(Node::new(
                        &c.name,
                        submit,
                        health,
                        c.max_in_flight_per_node,
                    )))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let (queue, rx) = mpsc::unbounded_channel();
            let ledger = Arc::new(Ledger {
                name: c.name.as_str().into(),
                kind: c.kind,
                chain_id: AtomicU64::new(c.chain_id.unwrap_or(0)),
                configured_chain: c.chain_id,
                senders: parse_senders(&c.senders)?,
                trust,
                max_transaction_bytes: c.max_transaction_bytes,
                nodes,
                timeout: Duration::from_millis(c.request_timeout_ms),
                queue,
            });
            for n in &ledger.nodes {
                tokio::spawn(health_loop(
                    ledger.clone(),
                    n.clone(),
                    client.clone(),
                    config.clone(),
                ));
            }
            let permits = c.max_in_flight_per_node * c.nodes.len();
            tokio::spawn(dispatch(
                ledger.clone(),
                rx,
                permits,
                client.clone(),
                config.clone(),
                outbox.clone(),
            ));
            ledgers.insert(c.name.clone(), ledger);
        }
        // Oldest first, so each sender's lane keeps its accepted order across the restart.
        for p in pending {
            match ledgers.get(&*p.ledger) {
                Some(l) => {
                    let lane = match l.kind {
                        // Older records carry no sender: recover it from the body.
                        LedgerKind::Ethereum => p.sender.or_else(|| ethereum_sender(&p.body)),
                        LedgerKind::Http => None,
                    };
                    let _ = l.queue.send(Job {
                        id: p.id,
                        body: p.body,
                        maybe_sent: true,
                        lane,
                    });
                }
                None => tracing::error!(
                    ledger = %p.ledger,
                    id = %crate::util::hex0x(&p.id),
                    "an accepted transaction names a ledger no longer configured; it stays in the outbox"
                ),
            }
        }
        Ok(Forwarder { ledgers })
    }

    pub fn ledger(&self, name: &str) -> Option<&Arc<Ledger>> {
        self.ledgers.get(name)
    }

    /// Ready when there are no ledgers or each has a healthy node.
    pub fn ready(&self) -> bool {
        self.ledgers.values().all(|l| l.any_healthy())
    }
}

/// The sender of a raw transaction the gateway accepted earlier (so it decodes and its
/// signature recovers); None otherwise, which only costs the lane.
fn ethereum_sender(raw: &[u8]) -> Option<[u8; 20]> {
    let tx = crate::txn::ethereum::decode(raw).ok()?;
    let key = crate::verify::ecdsa::Verifier::default()
        .recover(&tx.signing_hash, &tx.signature, false)
        .ok()?;
    crate::crypto::ecdsa::eth_address(&key)
}

/// Starts deliveries within the ledger's concurrency limit. A job whose sender already has
/// a delivery under way waits in that sender's lane and starts when the one before it has
/// an outcome (delivered or refused for good).
async fn dispatch(
    ledger: Arc<Ledger>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    permits: usize,
    client: HttpClient,
    config: Arc<ForwardConfig>,
    outbox: Outbox,
) {
    let limit = Arc::new(Semaphore::new(permits));
    // Senders with a delivery under way, and what waits behind it.
    let mut lanes: HashMap<[u8; 20], VecDeque<Job>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<[u8; 20]>();
    loop {
        let job = tokio::select! {
            biased;
            Some(sender) = done_rx.recv() => {
                match lanes.get_mut(&sender).and_then(VecDeque::pop_front) {
                    Some(next) => next,
                    None => {
                        lanes.remove(&sender);
                        continue;
                    }
                }
            }
            job = rx.recv() => {
                let Some(job) = job else { return };
                if let Some(sender) = job.lane {
                    if let Some(waiting) = lanes.get_mut(&sender) {
                        waiting.push_back(job);
                        continue;
                    }
                    lanes.insert(sender, VecDeque::new());
                }
                job
            }
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (ledger, client, config, outbox, done) = (
            ledger.clone(),
            client.clone(),
            config.clone(),
            outbox.clone(),
            done_tx.clone(),
        );
        tokio::spawn(async move {
            let lane = job.lane;
            deliver(&ledger, job, &client, &config, &outbox).await;
            drop(permit);
            if let Some(sender) = lane {
                let _ = done.send(sender);
            }
        });
    }
}

/// Tries until the transaction is delivered or refused for good.
async fn deliver(
    ledger: &Ledger,
    job: Job,
    client: &HttpClient,
    config: &ForwardConfig,
    outbox: &Outbox,
) {
    let labels = |node: &str, result: &'static str| {
        [
            ("ledger", ledger.name.to_string()),
            ("node", node.to_string()),
            ("result", result.to_string()),
        ]
    };
    let mut retry = 0u32;
    loop {
        let Some(claim) = ledger.pick() else {
            tokio::time::sleep(config.backoff(retry)).await;
            retry = retry.saturating_add(1);
            continue;
        };
        outbox.attempted(&job.id);
        let started = Instant::now();
        let uri = &claim.node.submit;
        let sent = match ledger.kind {
            LedgerKind::Ethereum => {
                // A retry, or a transaction queued again after a restart, may already
                // be on the node.
                let ask_first = job.maybe_sent || retry > 0;
                client::send_ethereum(client, uri, &job.body, &job.id, ask_first, ledger.timeout)
                    .await
            }
            LedgerKind::Http => client::send_http(client, uri, &job.body, ledger.timeout).await,
        };
        metrics::histogram!(m::FORWARD_SECONDS, "ledger" => ledger.name.to_string())
            .record(started.elapsed().as_secs_f64());
        let node = claim.node.name.clone();
        match sent {
            Sent::Delivered(answer) => {
                claim.succeeded();
                metrics::counter!(m::FORWARD_TOTAL, &labels(&node, "delivered")).increment(1);
                outbox.resolve(&job.id, State::Forwarded, Some(node), Some(answer));
                return;
            }
            Sent::Refused(message) => {
                // The node works; it refused this transaction.
                claim.succeeded();
                metrics::counter!(m::FORWARD_TOTAL, &labels(&node, "refused")).increment(1);
                tracing::warn!(ledger = %ledger.name, node = %node, id = %crate::util::hex0x(&job.id), %message, "the node refused a transaction for good");
                outbox.resolve(&job.id, State::Failed, Some(node), Some(message));
                return;
            }
            Sent::Retry(message) => {
                claim.failed(
                    config.breaker_failures,
                    Duration::from_millis(config.breaker_open_ms),
                );
                metrics::counter!(m::FORWARD_TOTAL, &labels(&node, "retry")).increment(1);
                metrics::counter!(m::FORWARD_RETRIES_TOTAL, "ledger" => ledger.name.to_string())
                    .increment(1);
                tracing::debug!(ledger = %ledger.name, node = %node, %message, "delivery failed; will retry");
                tokio::time::sleep(config.backoff(retry)).await;
                retry = retry.saturating_add(1);
            }
        }
    }
}

/// Checks a node now and then: Ethereum `eth_chainId` (which also learns the chain id),
/// http a GET of the health path.
async fn health_loop(
    ledger: Arc<Ledger>,
    node: Arc<Node>,
    client: HttpClient,
    config: Arc<ForwardConfig>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(config.health_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = ledger.timeout.min(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let up = match ledger.kind {
            LedgerKind::Ethereum => {
                let answer = client::rpc(
                    &client,
                    &node.health,
                    "eth_chainId",
                    serde_json::json!([]),
                    timeout,
                )
                .await;
                let chain = match answer {
                    Ok(Ok(v)) => v
                        .as_str()
                        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()),
                    _ => None,
                };
                chain.is_some_and(|id| chain_matches(&ledger, &node, id))
            }
            LedgerKind::Http => matches!(
                client::exchange(&client, hyper::Method::GET, node.health.clone(), None, timeout).await,
                Ok((s, _)) if s.is_success()
            ),
        };
        node.set_healthy(up);
    }
}

/// Learns the chain id from the first node that answers; a node on another chain is
/// unhealthy (it would refuse or, worse, mine for the wrong chain).
fn chain_matches(ledger: &Ledger, node: &Node, id: u64) -> bool {
    let known = match ledger.configured_chain {
        Some(c) => c,
        None => match ledger
            .chain_id
            .compare_exchange(0, id, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => {
                tracing::info!(ledger = %ledger.name, chain_id = id, node = %node.name, "chain id read from the node");
                id
            }
            Err(current) => current,
        },
    };
    if known != id {
        tracing::error!(ledger = %ledger.name, node = %node.name, node_chain = id, ledger_chain = known, "node is on another chain");
    }
    known == id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_flag_means_what_the_same_config_table_means() {
        let flag = LedgerConfig::from_flag("eth=ethereum+http://127.0.0.1:8545").unwrap();
        let table: LedgerConfig = toml::from_str(
            "name = \"eth\"\nkind = \"ethereum\"\nnodes = [\"http://127.0.0.1:8545\"]",
        )
        .unwrap();
        assert_eq!(format!("{flag:?}"), format!("{table:?}"));
        flag.validate().unwrap();
        let http = LedgerConfig::from_flag("fab=http+http://10.0.0.1:7080/").unwrap();
        assert_eq!(http.kind, LedgerKind::Http);
        let (submit, health) = http.node_uris(&http.nodes[0]).unwrap();
        assert_eq!(submit.to_string(), "http://10.0.0.1:7080/transactions");
        assert_eq!(health.to_string(), "http://10.0.0.1:7080/health");
        LedgerConfig::from_flag("e=ethereum+https://h:1")
            .and_then(|l| l.validate())
            .unwrap();
        for bad in [
            "eth",
            "eth=ftp+http://h:1",
            "=ethereum+http://h:1",
            "e=ethereum+ftp://h:1",
            "e=ethereum+https://user:pw@h:1",
        ] {
            assert!(
                LedgerConfig::from_flag(bad)
                    .and_then(|l| l.validate())
                    .is_err(),
                "{bad}"
            );
        }
    }
}

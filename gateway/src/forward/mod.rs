//! Forwarding: per ledger, a pool of nodes with health checks, the healthy node with the
//! fewest requests in flight, a concurrency limit per node, retries with exponential
//! backoff and jitter, and a circuit breaker per node. Delivery is at least once and
//! idempotent by transaction id; the outbox records each outcome. Transactions of one
//! Ethereum sender go one at a time, in the order they were accepted (a "lane"), so a node
//! never sees nonce n + 1 before nonce n; different senders go in parallel.
//!
//! - `config`: `[[ledgers]]` (a tagged enum on `kind`) and `[forward]`;
//! - `adapter`: what differs per kind of ledger (send, health), behind one trait;
//! - `node`: one node's health, in-flight count and breaker;
//! - `client`: the HTTP and JSON-RPC exchanges and what each answer means.

pub mod adapter;
pub mod client;
pub mod config;
pub mod node;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};

use crate::metrics as m;
use crate::outbox::{Outbox, Pending, State};
use crate::txn::trust::TrustAnchors;
use crate::txn::TxId;
use adapter::{Adapter, Health};
use client::{HttpClient, Sent};
pub use config::{ForwardConfig, LedgerConfig};
use node::Node;

/// What admission checks before a transaction is accepted for a ledger, by kind.
pub enum Policy {
    /// Signed raw transactions: the chain id must be the ledger's; with `senders`, only
    /// those addresses.
    Ethereum { senders: HashSet<[u8; 20]> },
    /// Envelopes: signed by a custody key, or by a certificate chaining to `trust`.
    Http { trust: Option<TrustAnchors> },
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
    pub policy: Policy,
    adapter: Box<dyn Adapter>,
    /// Ethereum: 0 until known (configured or read from a node).
    chain_id: AtomicU64,
    configured_chain: Option<u64>,
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
            let common = c.common();
            let client = client::http_client(common.tls_ca_file)
                .map_err(|e| format!("ledger {:?}: {e}", common.name))?;
            let nodes = common
                .nodes
                .iter()
                .map(|u| {
                    let (submit, health) = c.node_uris(u)?;
                    Ok(Arc::new(Node::new(
                        common.name,
                        submit,
                        health,
                        common.max_in_flight_per_node,
                    )))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let (policy, adapter, chain): (Policy, Box<dyn Adapter>, Option<u64>) = match c {
                LedgerConfig::Ethereum(e) => (
                    Policy::Ethereum {
                        senders: config::parse_senders(&e.senders)?,
                    },
                    Box::new(adapter::Ethereum),
                    e.chain_id,
                ),
                LedgerConfig::Http(_) => (
                    Policy::Http {
                        trust: c.trust_anchors()?,
                    },
                    Box::new(adapter::Http),
                    None,
                ),
            };
            let (queue, rx) = mpsc::unbounded_channel();
            let ledger = Arc::new(Ledger {
                name: common.name.into(),
                policy,
                adapter,
                chain_id: AtomicU64::new(chain.unwrap_or(0)),
                configured_chain: chain,
                max_transaction_bytes: common.max_transaction_bytes,
                nodes,
                timeout: common.request_timeout,
                queue,
            });
            for n in &ledger.nodes {
                for result in ["delivered", "refused", "retry"] {
                    metrics::counter!(m::FORWARD_TOTAL, "ledger" => common.name.to_string(), "node" => n.name.clone(), "result" => result)
                        .absolute(0);
                }
            }
            metrics::counter!(m::FORWARD_RETRIES_TOTAL, "ledger" => common.name.to_string())
                .absolute(0);
            let _ = metrics::histogram!(m::FORWARD_SECONDS, "ledger" => common.name.to_string());
            for n in &ledger.nodes {
                tokio::spawn(health_loop(
                    ledger.clone(),
                    n.clone(),
                    client.clone(),
                    config.clone(),
                ));
            }
            let permits = common.max_in_flight_per_node * common.nodes.len();
            tokio::spawn(dispatch(
                ledger.clone(),
                rx,
                permits,
                client.clone(),
                config.clone(),
                outbox.clone(),
            ));
            ledgers.insert(common.name.to_string(), ledger);
        }
        // Oldest first, so each sender's lane keeps its accepted order across the restart.
        for p in pending {
            match ledgers.get(&*p.ledger) {
                Some(l) => {
                    let lane = match l.policy {
                        // Older records carry no sender: recover it from the body.
                        Policy::Ethereum { .. } => p.sender.or_else(|| ethereum_sender(&p.body)),
                        Policy::Http { .. } => None,
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

    /// Every configured ledger.
    pub fn ledgers(&self) -> impl Iterator<Item = &Arc<Ledger>> {
        self.ledgers.values()
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
        // A retry, or a transaction queued again after a restart, may already be there.
        let ask_first = job.maybe_sent || retry > 0;
        let sent = ledger
            .adapter
            .send(
                client,
                claim.node,
                &job.id,
                &job.body,
                ask_first,
                ledger.timeout,
            )
            .await;
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

/// Checks a node now and then, as its adapter says; a node that names its chain must be
/// on the ledger's (the first answer teaches it, when not configured).
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
        let up = match ledger.adapter.check(&client, &node, timeout).await {
            Health::Down => false,
            Health::Up => true,
            Health::OnChain(id) => chain_matches(&ledger, &node, id),
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
        assert!(matches!(http, LedgerConfig::Http(_)));
        let (submit, health) = http.node_uris(&http.common().nodes[0]).unwrap();
        assert_eq!(submit.to_string(), "http://10.0.0.1:7080/transactions");
        assert_eq!(health.to_string(), "http://10.0.0.1:7080/health");
        LedgerConfig::from_flag("e=ethereum+https://h:1")
            .and_then(|l| l.validate())
            .unwrap();
        // A field of one kind on the other, or an unknown one, is refused.
        for table in [
            "name = \"e\"\nkind = \"ethereum\"\nnodes = [\"http://h:1\"]\ntrust_roots_file = \"/r.pem\"",
            "name = \"f\"\nkind = \"http\"\nnodes = [\"http://h:1\"]\nchain_id = 1",
            "name = \"f\"\nkind = \"http\"\nnodes = [\"http://h:1\"]\nbogus = 1",
            "name = \"f\"\nkind = \"fabric\"\nnodes = [\"http://h:1\"]",
        ] {
            assert!(toml::from_str::<LedgerConfig>(table).is_err(), "{table}");
        }
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

//! `[[ledgers]]` and `[forward]` in the config. A ledger is a tagged enum on `kind`
//! (parsec's shape for backends): a field that belongs to one kind cannot be set on the
//! other, and each kind's table rejects unknown fields.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use hyper::Uri;
use serde::Deserialize;

use crate::txn::trust::TrustAnchors;

/// One `[[ledgers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerConfig {
    /// Ethereum JSON-RPC: signed raw transactions, `eth_sendRawTransaction`.
    Ethereum(EthereumLedger),
    /// Generic HTTP: signed envelopes POSTed as JSON.
    Http(HttpLedger),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EthereumLedger {
    pub name: String,
    /// JSON-RPC endpoints, `http://host:port` or `https://host:port`.
    pub nodes: Vec<String>,
    pub tls_ca_file: Option<PathBuf>,
    /// The chain id transactions must carry; read from the nodes when absent.
    pub chain_id: Option<u64>,
    /// When not empty, only these sender addresses are let through.
    #[serde(default)]
    pub senders: Vec<String>,
    #[serde(default = "default_in_flight")]
    pub max_in_flight_per_node: usize,
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
    #[serde(default = "default_tx_bytes")]
    pub max_transaction_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLedger {
    pub name: String,
    /// Node base URLs, `http://host:port` or `https://host:port`.
    pub nodes: Vec<String>,
    /// PEM CA certificates that `https://` nodes' certificates may chain to, besides the
    /// system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Where envelopes are POSTed, and the health check path.
    #[serde(default = "default_submit_path")]
    pub submit_path: String,
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// PEM roots that envelope certificates must chain to, and intermediates.
    pub trust_roots_file: Option<PathBuf>,
    pub trust_intermediates_file: Option<PathBuf>,
    /// PEM CRLs of those CAs: a signer they list is refused (`revoked_certificate`). The
    /// gateway's own CAs' revocations apply without one.
    pub trust_crls_file: Option<PathBuf>,
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

/// What every kind of ledger has, borrowed from whichever it is.
pub struct Common<'a> {
    pub name: &'a str,
    pub nodes: &'a [String],
    pub tls_ca_file: Option<&'a std::path::Path>,
    pub max_in_flight_per_node: usize,
    pub request_timeout: Duration,
    pub max_transaction_bytes: usize,
}

fn common<'a>(
    name: &'a str,
    nodes: &'a [String],
    tls_ca_file: &'a Option<PathBuf>,
    (in_flight, timeout_ms, tx_bytes): (usize, u64, usize),
) -> Common<'a> {
    Common {
        name,
        nodes,
        tls_ca_file: tls_ca_file.as_deref(),
        max_in_flight_per_node: in_flight,
        request_timeout: Duration::from_millis(timeout_ms),
        max_transaction_bytes: tx_bytes,
    }
}

impl LedgerConfig {
    pub fn common(&self) -> Common<'_> {
        match self {
            LedgerConfig::Ethereum(l) => common(
                &l.name,
                &l.nodes,
                &l.tls_ca_file,
                (
                    l.max_in_flight_per_node,
                    l.request_timeout_ms,
                    l.max_transaction_bytes,
                ),
            ),
            LedgerConfig::Http(l) => common(
                &l.name,
                &l.nodes,
                &l.tls_ca_file,
                (
                    l.max_in_flight_per_node,
                    l.request_timeout_ms,
                    l.max_transaction_bytes,
                ),
            ),
        }
    }

    pub fn name(&self) -> &str {
        self.common().name
    }

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

    /// Another node for the same ledger (`--ledger` given twice with one name).
    pub fn add_node(&mut self, other: LedgerConfig) -> Result<(), String> {
        match (self, other) {
            (LedgerConfig::Ethereum(a), LedgerConfig::Ethereum(b)) => a.nodes.extend(b.nodes),
            (LedgerConfig::Http(a), LedgerConfig::Http(b)) => a.nodes.extend(b.nodes),
            (me, _) => return Err(format!("--ledger {:?}: one ledger, two kinds", me.name())),
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        let c = self.common();
        let ctx = |m: String| format!("ledger {:?}: {m}", c.name);
        if c.name.is_empty()
            || c.name.len() > 64
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            return Err(ctx("name must be 1 to 64 of [A-Za-z0-9._-]".into()));
        }
        if c.nodes.is_empty() {
            return Err(ctx("no nodes".into()));
        }
        for n in c.nodes {
            self.node_uris(n).map_err(ctx)?;
        }
        if c.max_in_flight_per_node == 0 || c.request_timeout.is_zero() {
            return Err(ctx(
                "max_in_flight_per_node and request_timeout_ms must be >= 1".into(),
            ));
        }
        if c.max_transaction_bytes < 64 {
            return Err(ctx("max_transaction_bytes must be >= 64".into()));
        }
        match self {
            LedgerConfig::Ethereum(l) => {
                parse_senders(&l.senders).map_err(ctx)?;
            }
            LedgerConfig::Http(l) => {
                if l.trust_intermediates_file.is_some() && l.trust_roots_file.is_none() {
                    return Err(ctx("trust_intermediates_file needs trust_roots_file".into()));
                }
                if l.trust_crls_file.is_some() && l.trust_roots_file.is_none() {
                    return Err(ctx("trust_crls_file needs trust_roots_file".into()));
                }
                for p in [&l.submit_path, &l.health_path] {
                    if !p.starts_with('/') {
                        return Err(ctx(format!("path {p:?} must start with /")));
                    }
                }
            }
        }
        Ok(())
    }

    /// A node's submit and health-check URIs: the JSON-RPC endpoint twice for Ethereum;
    /// the base URL joined with `submit_path` and `health_path` for http.
    pub(super) fn node_uris(&self, url: &str) -> Result<(Uri, Uri), String> {
        let base = parse_node(url)?;
        let LedgerConfig::Http(l) = self else {
            return Ok((base.clone(), base));
        };
        let join = |path: &str| {
            format!("{}{path}", url.trim_end_matches('/'))
                .parse::<Uri>()
                .map_err(|e| format!("node {url:?} with path {path:?}: {e}"))
        };
        Ok((join(&l.submit_path)?, join(&l.health_path)?))
    }

    /// Reads every file the ledger names (trust anchors, the nodes' CA), as start-up will.
    pub fn check_files(&self) -> Result<(), String> {
        self.trust_anchors()?;
        super::client::http_client(self.common().tls_ca_file)
            .map_err(|e| format!("ledger {:?}: {e}", self.name()))?;
        Ok(())
    }

    /// The envelope signers' trust anchors, read from their files, for http ledgers that
    /// name them. Start-up and `config check` both go through here.
    pub fn trust_anchors(&self) -> Result<Option<TrustAnchors>, String> {
        let LedgerConfig::Http(l) = self else {
            return Ok(None);
        };
        l.trust_roots_file
            .as_deref()
            .map(|r| {
                TrustAnchors::load(
                    r,
                    l.trust_intermediates_file.as_deref(),
                    l.trust_crls_file.as_deref(),
                )
            })
            .transpose()
            .map_err(|e| format!("ledger {:?}: {e}", l.name))
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

pub(super) fn parse_senders(list: &[String]) -> Result<HashSet<[u8; 20]>, String> {
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
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .retry_initial_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(self.retry_max_ms);
        let r = u64::from_le_bytes(crate::util::random_bytes(8).try_into().expect("8 bytes"));
        Duration::from_millis(step / 2 + r % (step / 2 + 1))
    }
}

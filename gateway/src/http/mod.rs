//! The HTTP front: config types, the listener (plain or TLS through OpenSSL), routing,
//! and the handlers of each API group.

pub mod cas;
pub mod error;
pub mod idle;
pub mod keys;
pub mod ops;
pub mod router;
pub mod server;
pub mod transactions;
pub mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::custody::Custody;
use crate::verify::Engine;

/// What the handlers call. Custody and admission own their work; the HTTP front holds
/// no business logic. Built by `app`, the one wiring place, which sits above this module.
pub struct AppState {
    pub readiness: Arc<ops::Readiness>,
    pub custody: Arc<Custody>,
    pub cas: Arc<crate::ca::Cas>,
    pub admission: Arc<Admission>,
    pub verify: Arc<Engine>,
    pub auth: Arc<Authenticator>,
    pub metrics: PrometheusHandle,
    pub limits: Limits,
}

/// The client's policy must grant `op`, or the request is 403 `forbidden`.
pub fn require(
    client: &crate::auth::Client,
    op: crate::auth::Operation,
) -> Result<(), error::ApiError> {
    if client.may(op) {
        Ok(())
    } else {
        Err(error::ApiError::forbidden(format!(
            "client {:?} lacks the {:?} operation",
            client.name,
            op.as_str()
        )))
    }
}

/// Takes `n` items from the client's quota for `what`, or answers 429 `quota_exceeded`
/// with Retry-After.
pub fn take_quota(
    client: &crate::auth::Client,
    what: crate::auth::Metered,
    n: usize,
) -> Result<(), error::ApiError> {
    client.take(what, n as u64).map_err(|secs| {
        let message = format!(
            "client {:?} is over its {} quota",
            client.name,
            what.as_str()
        );
        error::ApiError::over_quota(message, secs)
    })
}

/// `[server]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free one (written to `<data_dir>/gateway.addr`).
    pub listen: SocketAddr,
    /// The operations listener: `/metrics`, `/readyz`, `/healthz`, no token, nothing else
    /// (written to `<data_dir>/ops.addr`). Loopback by default: what it tells (node URLs,
    /// key counts) is for the scraper, not for the API's clients.
    #[serde(default = "default_ops_listen")]
    pub ops_listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// Plain HTTP (no `[server.tls]`) on an address other than loopback must be asked for:
    /// bearer tokens would cross the network in the clear.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
    #[serde(default)]
    pub limits: ListenerLimits,
}

/// `[server.limits]`: what one client or one connection may hold of the listener, each
/// with a safe default (in the spirit of Vault's listener and Envoy's overload settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// A request's headers must arrive within this; an idle keep-alive connection is
    /// closed after it too.
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight that sends nothing for this long is closed
    /// (HTTP/1 and HTTP/2).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// HTTP/1: the request line and headers together, bytes (beyond: 431).
    #[serde(default = "default_header_bytes")]
    pub max_header_bytes: usize,
    /// Open connections at most; beyond it a new one is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections from one source address at most.
    #[serde(default = "default_per_ip")]
    pub max_connections_per_ip: usize,
    /// HTTP/2: streams one connection may have open at once.
    #[serde(default = "default_h2_streams")]
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: header list size, bytes.
    #[serde(default = "default_h2_headers")]
    pub http2_max_header_list_size: u32,
    /// HTTP/2: streams a client may reset before the server has accepted them; beyond it
    /// the connection is closed (the rapid-reset flood, CVE-2023-44487).
    #[serde(default = "default_h2_resets")]
    pub http2_max_pending_accept_reset_streams: usize,
}

fn default_header_timeout() -> u64 {
    10_000
}
fn default_idle_timeout() -> u64 {
    60_000
}
fn default_header_bytes() -> usize {
    64 * 1024
}
fn default_max_connections() -> usize {
    4096
}
fn default_per_ip() -> usize {
    256
}
fn default_h2_streams() -> u32 {
    128
}
fn default_h2_headers() -> u32 {
    16 * 1024
}
fn default_h2_resets() -> usize {
    20
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_read_timeout_ms: default_header_timeout(),
            idle_timeout_ms: default_idle_timeout(),
            max_header_bytes: default_header_bytes(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_per_ip(),
            http2_max_concurrent_streams: default_h2_streams(),
            http2_max_header_list_size: default_h2_headers(),
            http2_max_pending_accept_reset_streams: default_h2_resets(),
        }
    }
}

fn default_ops_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

fn default_grace() -> u64 {
    10
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.allow_plaintext {
            return Err(format!(
                "[server]: plain HTTP on {}, which is not loopback: set [server.tls], or allow_plaintext = true",
                self.listen
            ));
        }
        if self.ops_listen == self.listen && self.listen.port() != 0 {
            return Err(format!(
                "[server]: ops_listen and listen are both {}",
                self.listen
            ));
        }
        let l = &self.limits;
        if l.max_header_bytes < 8192 {
            return Err("[server.limits]: max_header_bytes must be >= 8192".into());
        }
        if l.header_read_timeout_ms == 0
            || l.max_connections == 0
            || l.max_connections_per_ip == 0
            || l.http2_max_concurrent_streams == 0
        {
            return Err("[server.limits]: timeouts and caps must be >= 1".into());
        }
        if let Some(tls) = &self.tls {
            for (what, p) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if p.as_os_str().is_empty() {
                    return Err(format!("[server.tls]: {what} is empty"));
                }
            }
        }
        Ok(())
    }
}

/// `[server.tls]`: certificate chain and key in PEM; `client_ca_file` turns on mTLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

/// `[limits]`: request size bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_items")]
    pub max_items: usize,
    /// A request's body must arrive within this once its headers have, plus its declared
    /// length at `body_min_bytes_per_second`; beyond it, 408.
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout_ms: u64,
    #[serde(default = "default_body_rate")]
    pub body_min_bytes_per_second: u64,
    /// A request is answered within this, or with 503 `request_timeout`.
    #[serde(default = "default_max_request")]
    pub max_request_ms: u64,
}

fn default_body_rate() -> u64 {
    64 * 1024
}

fn default_max_request() -> u64 {
    60_000
}

fn default_body_timeout() -> u64 {
    30_000
}

fn default_body() -> usize {
    1 << 20
}

fn default_items() -> usize {
    1024
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_body(),
            max_items: default_items(),
            body_read_timeout_ms: default_body_timeout(),
            body_min_bytes_per_second: default_body_rate(),
            max_request_ms: default_max_request(),
        }
    }
}

impl Limits {
    /// A batch must hold 1 to `max_items` items.
    pub fn check_items(&self, n: usize) -> Result<(), error::ApiError> {
        if n > self.max_items {
            return Err(error::ApiError::too_large(
                "too_many_items",
                format!("at most {} items per request", self.max_items),
            ));
        }
        if n == 0 {
            return Err(error::ApiError::bad_request(
                "invalid_request",
                "items is empty",
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes < 1024
            || self.max_items == 0
            || self.body_read_timeout_ms == 0
            || self.body_min_bytes_per_second == 0
            || self.max_request_ms == 0
        {
            return Err("[limits]: max_body_bytes must be >= 1024 and max_items >= 1".into());
        }
        Ok(())
    }
}

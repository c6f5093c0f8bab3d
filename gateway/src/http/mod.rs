//! The HTTP front: config types, the listener (plain or TLS through OpenSSL), routing,
//! and the handlers of each API group.

pub mod error;
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
    pub custody: Arc<Custody>,
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

/// `[server]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free one (written to `<data_dir>/gateway.addr`).
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
}

fn default_grace() -> u64 {
    10
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), String> {
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
        if self.max_body_bytes < 1024 || self.max_items == 0 {
            return Err("[limits]: max_body_bytes must be >= 1024 and max_items >= 1".into());
        }
        Ok(())
    }
}

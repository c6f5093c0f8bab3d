//! The gateway's configuration file (TOML). Every struct rejects unknown fields; each part's
//! type lives beside the module it configures and is validated once, here, at start.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::audit::anchor::AuditConfig;
use crate::auth::ClientConfig;
use crate::custody::{HsmConfig, KeysConfig};
use crate::forward::{ForwardConfig, LedgerConfig};
use crate::http::{Limits, ServerConfig};
use crate::outbox::OutboxConfig;
use crate::verify::VerifyConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Key metadata and the audit log live here.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub hsm: HsmConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub verify: VerifyConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub forward: ForwardConfig,
    #[serde(default)]
    pub ledgers: Vec<LedgerConfig>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "bsn_gateway=debug".
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot say.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.hsm.validate().map_err(ConfigError::Invalid)?;
        self.keys.validate().map_err(ConfigError::Invalid)?;
        self.audit.validate().map_err(ConfigError::Invalid)?;
        self.server.validate().map_err(ConfigError::Invalid)?;
        self.limits.validate().map_err(ConfigError::Invalid)?;
        self.verify.validate().map_err(ConfigError::Invalid)?;
        self.outbox.validate().map_err(ConfigError::Invalid)?;
        self.forward.validate().map_err(ConfigError::Invalid)?;
        let mut ledgers = HashSet::new();
        for l in &self.ledgers {
            l.validate().map_err(ConfigError::Invalid)?;
            if !ledgers.insert(l.name()) {
                return invalid(format!("ledger {:?} appears twice", l.name()));
            }
        }
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for c in &self.clients {
            c.validate().map_err(ConfigError::Invalid)?;
            if !names.insert(c.name.as_str()) {
                return invalid(format!("client name {:?} appears twice", c.name));
            }
            if !hashes.insert(c.token_sha256.to_ascii_lowercase()) {
                return invalid(format!("client {:?} shares a token with another", c.name));
            }
            if c.certificate_sha256.is_some()
                && self
                    .server
                    .tls
                    .as_ref()
                    .is_none_or(|t| t.client_ca_file.is_none())
            {
                return invalid(format!(
                    "client {:?} is bound to a certificate, but [server.tls] asks for none (client_ca_file)",
                    c.name
                ));
            }
            if let Some(l) = c
                .ledgers
                .iter()
                .find(|l| *l != "*" && !ledgers.contains(l.as_str()))
            {
                return invalid(format!("client {:?}: no ledger {l:?}", c.name));
            }
        }
        if self.clients.is_empty() {
            return invalid("no [[clients]]: nobody could call the gateway".into());
        }
        Ok(())
    }

    /// What is valid but probably not meant: printed by `config check` and at start.
    pub fn warnings(&self) -> Vec<String> {
        crate::auth::overlapping_patterns(&self.clients)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
data_dir = "/var/lib/bsn-gateway"
[server]
listen = "127.0.0.1:8443"
[hsm]
profile = "softhsm2"
token_label = "bsn"
pin = { file = "/etc/bsn-gateway/user.pin" }
[[clients]]
name = "dapp"
token_sha256 = "0x9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
operations = ["keys:sign", "transactions"]
keys = ["dapp-*"]
ledgers = ["eth"]
[[ledgers]]
name = "eth"
kind = "ethereum"
nodes = ["http://127.0.0.1:8545"]
"#;

    fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn a_good_config_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.limits.max_items, 1024);
        assert_eq!(c.clients[0].name, "dapp");
    }

    #[test]
    fn bad_configs_are_rejected_with_a_reason() {
        let cases = [
            (GOOD.replace("[server]", "[server]\nbogus = 1"), "bogus"),
            (GOOD.replace("token_label = \"bsn\"", ""), "token_label"),
            (
                GOOD.replace("token_label = \"bsn\"", "token_label = \"a\"\ntoken_serial = \"1\""),
                "token_label",
            ),
            (GOOD.replace("keys:sign", "keys:fly"), "keys:fly"),
            (GOOD.replace("0x9f86", "0x9f"), "token_sha256"),
            (GOOD.replace("dapp-*", "dapp*"), "separator"),
            (GOOD.replace("ledgers = [\"eth\"]", "ledgers = [\"btc\"]"), "btc"),
            (format!("{GOOD}\n[keys]\ndeletion_window_seconds = 0"), "deletion_window"),
            (format!("{GOOD}\n[audit]\ncheckpoint_lines = 0"), "checkpoint_lines"),
            (GOOD.replace("{ file =", "{ path ="), "path"),
            (format!("{GOOD}\n[[clients]]\nname = \"dapp\"\ntoken_sha256 = \"0x{}\"\noperations = []\nkeys = []", "11".repeat(32)), "twice"),
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }
}

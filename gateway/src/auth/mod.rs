//! Bearer-token authentication and per-client policy. Tokens are stored as SHA-256 hashes
//! (they are 256-bit random values, so a fast hash suffices) and compared in constant time.

pub mod quota;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

/// One `[[clients]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub name: String,
    /// `0x` hex SHA-256 of the bearer token (`bsn-gateway token new` prints both).
    pub token_sha256: String,
    /// What the client may do: `keys:create`, `keys:import`, `keys:read`, `keys:sign`,
    /// `keys:disable`, `keys:destroy`, `verify`, `transactions`, or `*` for all.
    pub operations: Vec<String>,
    /// Label patterns of the keys it may create and use: exact labels, `prefix*`, or `*`.
    pub keys: Vec<String>,
    /// Transaction quota: a rate (token bucket of `transactions_burst`) and a daily cap.
    pub transactions_per_second: Option<f64>,
    pub transactions_burst: Option<u64>,
    pub transactions_per_day: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    KeysCreate,
    KeysImport,
    KeysRead,
    KeysSign,
    KeysDisable,
    KeysDestroy,
    Verify,
    Transactions,
}

impl Operation {
    const ALL: [(Operation, &'static str); 8] = [
        (Operation::KeysCreate, "keys:create"),
        (Operation::KeysImport, "keys:import"),
        (Operation::KeysRead, "keys:read"),
        (Operation::KeysSign, "keys:sign"),
        (Operation::KeysDisable, "keys:disable"),
        (Operation::KeysDestroy, "keys:destroy"),
        (Operation::Verify, "verify"),
        (Operation::Transactions, "transactions"),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(o, _)| *o == self)
            .map(|(_, s)| *s)
            .unwrap_or("?")
    }

    fn parse_set(names: &[String]) -> Result<HashSet<Operation>, String> {
        let mut set = HashSet::new();
        for n in names {
            if n == "*" {
                set.extend(Self::ALL.iter().map(|(o, _)| *o));
                continue;
            }
            let op = Self::ALL
                .iter()
                .find(|(_, s)| s == n)
                .map(|(o, _)| *o)
                .ok_or_else(|| format!("unknown operation {n:?}"))?;
            set.insert(op);
        }
        Ok(set)
    }
}

impl ClientConfig {
    pub fn validate(&self) -> Result<(), String> {
        let ctx = |m: String| format!("client {:?}: {m}", self.name);
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(ctx("name must be 1 to 64 characters".into()));
        }
        parse_hash(&self.token_sha256).map_err(ctx)?;
        Operation::parse_set(&self.operations).map_err(ctx)?;
        if self
            .transactions_per_second
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            return Err(ctx("transactions_per_second must be > 0".into()));
        }
        if self.transactions_burst == Some(0) || self.transactions_per_day == Some(0) {
            return Err(ctx(
                "transactions_burst and transactions_per_day must be >= 1".into(),
            ));
        }
        for p in &self.keys {
            if p.is_empty() || p[..p.len() - 1].contains('*') {
                return Err(ctx(format!(
                    "key pattern {p:?}: use an exact label, prefix* or *"
                )));
            }
        }
        Ok(())
    }
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    crate::util::unhex0x(s)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| "token_sha256 must be 0x followed by 64 hex digits".to_string())
}

/// An authenticated caller and what it may do.
#[derive(Debug)]
pub struct Client {
    pub name: String,
    token_hash: [u8; 32],
    operations: HashSet<Operation>,
    key_patterns: Vec<String>,
    quota: Option<Mutex<quota::Quota>>,
}

impl Client {
    pub fn may(&self, op: Operation) -> bool {
        self.operations.contains(&op)
    }

    /// Whether the policy names this key label.
    pub fn may_use_label(&self, label: &str) -> bool {
        self.key_patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => label.starts_with(prefix),
            None => p == label,
        })
    }

    /// Takes `n` transactions from the client's quota, or says when to retry (seconds).
    pub fn take_transactions(&self, n: u64) -> Result<(), u64> {
        match &self.quota {
            None => Ok(()),
            Some(q) => q
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(n, crate::util::unix_now()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
}

pub struct Authenticator {
    clients: Vec<Arc<Client>>,
}

impl Authenticator {
    /// Builds from validated config.
    pub fn new(configs: &[ClientConfig]) -> Result<Self, String> {
        let clients = configs
            .iter()
            .map(|c| {
                Ok(Arc::new(Client {
                    name: c.name.clone(),
                    token_hash: parse_hash(&c.token_sha256)?,
                    operations: Operation::parse_set(&c.operations)?,
                    key_patterns: c.keys.clone(),
                    quota: (c.transactions_per_second.is_some()
                        || c.transactions_per_day.is_some())
                    .then(|| {
                        Mutex::new(quota::Quota::new(
                            c.transactions_per_second,
                            c.transactions_burst,
                            c.transactions_per_day,
                        ))
                    }),
                }))
            })
            .collect::<Result<_, String>>()?;
        Ok(Authenticator { clients })
    }

    /// Checks an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Arc<Client>, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let hash = crate::util::sha256(token.as_bytes());
        // Compare against every client, without an early exit, so timing tells nothing.
        let mut found = None;
        for c in &self.clients {
            if openssl::memcmp::eq(&hash, &c.token_hash) {
                found = Some(c.clone());
            }
        }
        found.ok_or(AuthError::Invalid)
    }
}

/// A fresh bearer token and the hash to put in the config.
pub fn new_token() -> (crate::secret::Secret, String) {
    let token = format!("bsn_{}", hex::encode(crate::util::random_bytes(32)));
    let hash = crate::util::hex0x(&crate::util::sha256(token.as_bytes()));
    (crate::secret::Secret::new(token), hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(token_hash: String, ops: &[&str], keys: &[&str]) -> ClientConfig {
        ClientConfig {
            name: "c".into(),
            token_sha256: token_hash,
            operations: ops.iter().map(|s| s.to_string()).collect(),
            keys: keys.iter().map(|s| s.to_string()).collect(),
            transactions_per_second: None,
            transactions_burst: None,
            transactions_per_day: None,
        }
    }

    #[test]
    fn tokens_authenticate_only_their_client() {
        let (token, hash) = new_token();
        let auth = Authenticator::new(&[client(hash, &["keys:sign"], &["a-*"])]).unwrap();
        let ok = auth
            .authenticate(Some(&format!("Bearer {}", token.expose())))
            .unwrap();
        assert!(ok.may(Operation::KeysSign));
        assert!(!ok.may(Operation::KeysDestroy));
        assert!(ok.may_use_label("a-1"));
        assert!(!ok.may_use_label("b-1"));
        assert_eq!(auth.authenticate(None).unwrap_err(), AuthError::Missing);
        assert_eq!(
            auth.authenticate(Some("Bearer nope")).unwrap_err(),
            AuthError::Invalid
        );
        assert_eq!(
            auth.authenticate(Some(token.expose())).unwrap_err(),
            AuthError::Missing
        );
    }

    #[test]
    fn star_grants_every_operation_and_label() {
        let (_, hash) = new_token();
        let auth = Authenticator::new(&[client(hash, &["*"], &["*"])]).unwrap();
        let c = &auth.clients[0];
        assert!(c.may(Operation::KeysDestroy) && c.may(Operation::Transactions));
        assert!(c.may_use_label("anything"));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        let (_, hash) = new_token();
        assert!(client(hash, &[], &["a*b"]).validate().is_err());
    }
}

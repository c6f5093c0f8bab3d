//! Bearer-token authentication and per-client policy. Tokens are stored as SHA-256 hashes
//! (they are 256-bit random values, so a fast hash suffices) and compared in constant time.
//! The client set is swapped whole on a config reload (SIGHUP); a request keeps the
//! `Arc<Client>` it authenticated with. Failed authentications are counted, never written
//! one by one: `failures` is summarised into the audit log at a bounded rate.

pub mod quota;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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
    /// Label patterns of the keys it may create or import: an exact label, `*`, or a
    /// prefix that ends in a separator (`-`, `_` or `.`) followed by `*` (`dapp-a-*`), so
    /// one tenant's pattern never reaches into another's names (`dapp-a*` would match
    /// `dapp-ab-x`). Using a key is decided by ownership, not by its label.
    pub keys: Vec<String>,
    /// An admin may use, read and destroy every client's keys and transactions, and
    /// create keys owned by another client.
    #[serde(default)]
    pub admin: bool,
    /// Ledgers it may submit transactions to, by name, or `*` for all.
    #[serde(default)]
    pub ledgers: Vec<String>,
    /// `0x` hex SHA-256 of the DER client certificate it must present (mTLS): the right
    /// token over another certificate, or over plain HTTP, is 401.
    pub certificate_sha256: Option<String>,
    /// Transaction quota: a rate (token bucket of `transactions_burst`) and a daily cap.
    pub transactions_per_second: Option<f64>,
    pub transactions_burst: Option<u64>,
    pub transactions_per_day: Option<u64>,
    /// Signature quotas, in items (a sign-batch of 64 takes 64): a rate and a bucket.
    pub sign_per_second: Option<f64>,
    pub sign_burst: Option<u64>,
    /// Verification quotas, in items.
    pub verify_per_second: Option<f64>,
    pub verify_burst: Option<u64>,
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
    CaAdmin,
    CaIssue,
    CaRevoke,
}

impl Operation {
    const ALL: [(Operation, &'static str); 11] = [
        (Operation::KeysCreate, "keys:create"),
        (Operation::KeysImport, "keys:import"),
        (Operation::KeysRead, "keys:read"),
        (Operation::KeysSign, "keys:sign"),
        (Operation::KeysDisable, "keys:disable"),
        (Operation::KeysDestroy, "keys:destroy"),
        (Operation::Verify, "verify"),
        (Operation::Transactions, "transactions"),
        (Operation::CaAdmin, "ca:admin"),
        (Operation::CaIssue, "ca:issue"),
        (Operation::CaRevoke, "ca:revoke"),
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
        // Names appear in audit lines and own keys: no "-" (the gateway's own entries).
        let valid = (1..=64).contains(&self.name.len())
            && self.name != "-"
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(ctx(
                "name must be 1 to 64 of A-Z a-z 0-9 - _ . and not \"-\"".into(),
            ));
        }
        parse_hash(&self.token_sha256).map_err(ctx)?;
        if let Some(c) = &self.certificate_sha256 {
            parse_hash(c).map_err(|_| {
                ctx("certificate_sha256 must be 0x followed by 64 hex digits".into())
            })?;
        }
        Operation::parse_set(&self.operations).map_err(ctx)?;
        for (name, rate) in [
            ("transactions_per_second", self.transactions_per_second),
            ("sign_per_second", self.sign_per_second),
            ("verify_per_second", self.verify_per_second),
        ] {
            if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                return Err(ctx(format!("{name} must be > 0")));
            }
        }
        if [
            self.transactions_burst,
            self.transactions_per_day,
            self.sign_burst,
            self.verify_burst,
        ]
        .contains(&Some(0))
        {
            return Err(ctx(
                "transactions_burst, transactions_per_day, sign_burst and verify_burst must be >= 1"
                    .into(),
            ));
        }
        for p in &self.keys {
            Pattern::parse(p).map_err(ctx)?;
        }
        for l in &self.ledgers {
            if l.is_empty() {
                return Err(ctx("an empty ledger name".into()));
            }
        }
        Ok(())
    }
}

/// A key label pattern: `*`, an exact label, or `prefix*` whose prefix ends in `-`, `_`
/// or `.`. Labels are `[A-Za-z0-9_.-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    All,
    Exact(String),
    Prefix(String),
}

impl Pattern {
    pub fn parse(p: &str) -> Result<Pattern, String> {
        let bad = |why: &str| {
            Err(format!(
                "key pattern {p:?}: {why}; use an exact label, *, or a prefix ending in - _ or . followed by * (dapp-a-*)"
            ))
        };
        if p == "*" {
            return Ok(Pattern::All);
        }
        let (body, prefix) = match p.strip_suffix('*') {
            Some(b) => (b, true),
            None => (p, false),
        };
        if body.is_empty() || body.len() > 64 {
            return bad("empty or too long");
        }
        if !body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad("only A-Z a-z 0-9 - _ . and a final *");
        }
        if !prefix {
            return Ok(Pattern::Exact(body.into()));
        }
        if !body.ends_with(['-', '_', '.']) {
            return bad("a prefix must end in a separator");
        }
        Ok(Pattern::Prefix(body.into()))
    }

    pub fn matches(&self, label: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Exact(l) => l == label,
            Pattern::Prefix(p) => label.starts_with(p.as_str()),
        }
    }

    /// Whether some label matches both.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Pattern::All, _) | (_, Pattern::All) => true,
            (Pattern::Exact(a), Pattern::Exact(b)) => a == b,
            (Pattern::Exact(a), p @ Pattern::Prefix(_))
            | (p @ Pattern::Prefix(_), Pattern::Exact(a)) => p.matches(a),
            (Pattern::Prefix(a), Pattern::Prefix(b)) => {
                a.starts_with(b.as_str()) || b.starts_with(a.as_str())
            }
        }
    }
}

/// Pairs of tenants (admins aside, who may take any name) whose label patterns overlap:
/// each can take a name the other expects. Ownership still keeps their keys apart;
/// `config check` warns so operators can tidy up.
pub fn overlapping_patterns(clients: &[ClientConfig]) -> Vec<String> {
    let mut out = Vec::new();
    let clients: Vec<&ClientConfig> = clients.iter().filter(|c| !c.admin).collect();
    for (i, a) in clients.iter().enumerate() {
        for b in &clients[i + 1..] {
            for pa in &a.keys {
                for pb in &b.keys {
                    let (Ok(x), Ok(y)) = (Pattern::parse(pa), Pattern::parse(pb)) else {
                        continue;
                    };
                    if x.overlaps(&y) {
                        out.push(format!(
                            "clients {:?} ({pa}) and {:?} ({pb}) have overlapping key label patterns",
                            a.name, b.name
                        ));
                    }
                }
            }
        }
    }
    out
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    crate::util::unhex0x(s)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| "token_sha256 must be 0x followed by 64 hex digits".to_string())
}

/// Who is asking, as custody and admission see it: a name that owns keys and
/// transactions, and whether it may act on everyone's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub admin: bool,
}

impl Principal {
    /// The gateway itself (scheduled destruction, reconcile): acts on every key.
    pub fn system() -> Principal {
        Principal {
            name: "-".into(),
            admin: true,
        }
    }

    /// Whether this caller may act on something `owner` owns.
    pub fn owns(&self, owner: &str) -> bool {
        self.admin || self.name == owner
    }
}

/// An authenticated caller and what it may do.
#[derive(Debug)]
pub struct Client {
    pub name: String,
    pub principal: Principal,
    token_hash: [u8; 32],
    certificate: Option<[u8; 32]>,
    operations: HashSet<Operation>,
    key_patterns: Vec<Pattern>,
    ledgers: Vec<String>,
    quotas: Quotas,
}

/// What a client's quotas count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metered {
    Transactions,
    Signatures,
    Verifications,
}

impl Metered {
    pub fn as_str(self) -> &'static str {
        match self {
            Metered::Transactions => "transaction",
            Metered::Signatures => "signature",
            Metered::Verifications => "verification",
        }
    }
}

#[derive(Debug, Default)]
struct Quotas {
    transactions: Option<Mutex<quota::Quota>>,
    signatures: Option<Mutex<quota::Quota>>,
    verifications: Option<Mutex<quota::Quota>>,
}

impl Quotas {
    fn from_config(c: &ClientConfig) -> Quotas {
        let q = |rate: Option<f64>, burst, day: Option<u64>| {
            (rate.is_some() || day.is_some())
                .then(|| Mutex::new(quota::Quota::new(rate, burst, day)))
        };
        Quotas {
            transactions: q(
                c.transactions_per_second,
                c.transactions_burst,
                c.transactions_per_day,
            ),
            signatures: q(c.sign_per_second, c.sign_burst, None),
            verifications: q(c.verify_per_second, c.verify_burst, None),
        }
    }
}

impl Client {
    pub fn may(&self, op: Operation) -> bool {
        self.operations.contains(&op)
    }

    /// Whether the policy lets it create or import a key with this label.
    pub fn may_use_label(&self, label: &str) -> bool {
        self.key_patterns.iter().any(|p| p.matches(label))
    }

    /// Whether it may submit transactions to this ledger.
    pub fn may_submit_to(&self, ledger: &str) -> bool {
        self.ledgers.iter().any(|l| l == "*" || l == ledger)
    }

    /// Takes `n` items from the client's quota for `what`, or says when to retry
    /// (seconds).
    pub fn take(&self, what: Metered, n: u64) -> Result<(), u64> {
        let quota = match what {
            Metered::Transactions => &self.quotas.transactions,
            Metered::Signatures => &self.quotas.signatures,
            Metered::Verifications => &self.quotas.verifications,
        };
        match quota {
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
    /// The token's client is bound to a client certificate this connection did not present.
    #[error("this token must come with its client certificate")]
    Certificate,
}

impl AuthError {
    fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid => "invalid",
            AuthError::Certificate => "certificate",
        }
    }
}

/// Failed authentications since the last summary, by reason. Counting costs no I/O.
#[derive(Debug, Default)]
pub struct Failures {
    missing: AtomicU64,
    invalid: AtomicU64,
}

impl Failures {
    /// Takes the counts since the last call: (missing, invalid).
    pub fn take(&self) -> (u64, u64) {
        (
            self.missing.swap(0, Ordering::Relaxed),
            self.invalid.swap(0, Ordering::Relaxed),
        )
    }
}

pub struct Authenticator {
    clients: RwLock<Arc<Vec<Arc<Client>>>>,
    failures: Arc<Failures>,
}

fn build(configs: &[ClientConfig]) -> Result<Vec<Arc<Client>>, String> {
    configs
        .iter()
        .map(|c| {
            Ok(Arc::new(Client {
                name: c.name.clone(),
                principal: Principal {
                    name: c.name.clone(),
                    admin: c.admin,
                },
                token_hash: parse_hash(&c.token_sha256)?,
                certificate: c
                    .certificate_sha256
                    .as_deref()
                    .map(parse_hash)
                    .transpose()?,
                operations: Operation::parse_set(&c.operations)?,
                key_patterns: c
                    .keys
                    .iter()
                    .map(|p| Pattern::parse(p))
                    .collect::<Result<_, _>>()?,
                ledgers: c.ledgers.clone(),
                quotas: Quotas::from_config(c),
            }))
        })
        .collect::<Result<_, String>>()
}

impl Authenticator {
    /// Builds from validated config.
    pub fn new(configs: &[ClientConfig]) -> Result<Self, String> {
        for reason in ["missing", "invalid", "certificate"] {
            metrics::counter!(crate::metrics::AUTH_FAILURES_TOTAL, "reason" => reason).absolute(0);
        }
        Ok(Authenticator {
            clients: RwLock::new(Arc::new(build(configs)?)),
            failures: Arc::default(),
        })
    }

    /// Replaces every client at once (SIGHUP). Requests in flight keep the client they
    /// authenticated as; the next request sees the new set.
    pub fn replace(&self, configs: &[ClientConfig]) -> Result<usize, String> {
        let fresh = build(configs)?;
        let n = fresh.len();
        *self.clients.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(n)
    }

    /// Whether a client of this name is configured (an admin may name it as a key's owner).
    pub fn knows(&self, name: &str) -> bool {
        self.clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|c| c.name == name)
    }

    pub fn failures(&self) -> Arc<Failures> {
        self.failures.clone()
    }

    /// Checks an `Authorization` header value, and the client certificate's SHA-256 where
    /// the client is bound to one; a failure is counted, never logged per call.
    pub fn authenticate(
        &self,
        header: Option<&str>,
        peer_certificate: Option<&[u8; 32]>,
    ) -> Result<Arc<Client>, AuthError> {
        let result = self.check(header).and_then(|c| match &c.certificate {
            Some(bound) if peer_certificate.is_none_or(|p| !openssl::memcmp::eq(p, bound)) => {
                Err(AuthError::Certificate)
            }
            _ => Ok(c),
        });
        if let Err(e) = &result {
            metrics::counter!(crate::metrics::AUTH_FAILURES_TOTAL, "reason" => e.reason())
                .increment(1);
            let slot = match e {
                AuthError::Missing => &self.failures.missing,
                AuthError::Invalid | AuthError::Certificate => &self.failures.invalid,
            };
            slot.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn check(&self, header: Option<&str>) -> Result<Arc<Client>, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let hash = crate::util::sha256(token.as_bytes());
        // Compare against every client, without an early exit, so timing tells nothing.
        let clients = self
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut found = None;
        for c in clients.iter() {
            if openssl::memcmp::eq(&hash, &c.token_hash) {
                found = Some(c.clone());
            }
        }
        found.ok_or(AuthError::Invalid)
    }
}

/// Writes failed authentications into the audit log as one summary line per `period`
/// (when there were any), and logs the same at warn level: a flood of bad tokens costs
/// a counter increment each, never a write or an fsync.
pub async fn summarise_failures(
    failures: Arc<Failures>,
    audit: crate::audit::AuditLog,
    period: std::time::Duration,
) {
    loop {
        tokio::time::sleep(period).await;
        let (missing, invalid) = failures.take();
        if missing + invalid == 0 {
            continue;
        }
        tracing::warn!(
            missing,
            invalid,
            seconds = period.as_secs(),
            "failed authentications"
        );
        let entry = crate::audit::AuditEntry {
            client: "-".into(),
            operation: "authenticate",
            result: "unauthenticated".into(),
            count: Some(missing + invalid),
            detail: Some(format!(
                "missing={missing} invalid={invalid} in {}s",
                period.as_secs()
            )),
            ..Default::default()
        };
        if let Err(e) = audit.append(entry).await {
            tracing::error!(error = %e, "cannot write the authentication summary");
        }
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
            admin: false,
            ledgers: vec![],
            certificate_sha256: None,
            transactions_per_second: None,
            transactions_burst: None,
            transactions_per_day: None,
            sign_per_second: None,
            sign_burst: None,
            verify_per_second: None,
            verify_burst: None,
        }
    }

    #[test]
    fn tokens_authenticate_only_their_client() {
        let (token, hash) = new_token();
        let auth = Authenticator::new(&[client(hash, &["keys:sign"], &["a-*"])]).unwrap();
        let ok = auth
            .authenticate(Some(&format!("Bearer {}", token.expose())), None)
            .unwrap();
        assert!(ok.may(Operation::KeysSign));
        assert!(!ok.may(Operation::KeysDestroy));
        assert!(ok.may_use_label("a-1"));
        assert!(!ok.may_use_label("b-1"));
        assert_eq!(
            auth.authenticate(None, None).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            auth.authenticate(Some("Bearer nope"), None).unwrap_err(),
            AuthError::Invalid
        );
        assert_eq!(
            auth.authenticate(Some(token.expose()), None).unwrap_err(),
            AuthError::Missing
        );
    }

    #[test]
    fn star_grants_every_operation_and_label() {
        let (_, hash) = new_token();
        let auth = Authenticator::new(&[client(hash, &["*"], &["*"])]).unwrap();
        let clients = auth.clients.read().unwrap().clone();
        let c = &clients[0];
        assert!(c.may(Operation::KeysDestroy) && c.may(Operation::Transactions));
        assert!(c.may_use_label("anything"));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for p in ["a*b", "dapp-a*", "", "**", "x/y-*", "*-"] {
            let (_, hash) = new_token();
            assert!(
                client(hash, &[], &[p]).validate().is_err(),
                "{p:?} accepted"
            );
        }
    }

    #[test]
    fn a_prefix_pattern_stops_at_its_separator() {
        let p = Pattern::parse("dapp-a-*").unwrap();
        assert!(p.matches("dapp-a-treasury"));
        assert!(!p.matches("dapp-ab-treasury"));
        assert!(!p.matches("dapp-a"));
        assert!(Pattern::parse("dapp-a").unwrap().matches("dapp-a"));
    }

    #[test]
    fn overlapping_patterns_between_clients_are_named() {
        let mut a = client(new_token().1, &[], &["dapp-a-*"]);
        a.name = "a".into();
        let mut b = client(new_token().1, &[], &["dapp-ab-*"]);
        b.name = "b".into();
        assert!(overlapping_patterns(&[a.clone(), b.clone()]).is_empty());
        b.keys = vec!["dapp-a-x-*".into()];
        let w = overlapping_patterns(&[a, b]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("\"a\"") && w[0].contains("\"b\""));
    }

    #[test]
    fn failures_are_counted_by_reason() {
        let auth = Authenticator::new(&[client(new_token().1, &["*"], &["*"])]).unwrap();
        let _ = auth.authenticate(None, None);
        let _ = auth.authenticate(Some("Bearer nope"), None);
        let _ = auth.authenticate(Some("Bearer nope"), None);
        assert_eq!(auth.failures().take(), (1, 2));
        assert_eq!(auth.failures().take(), (0, 0));
    }
}

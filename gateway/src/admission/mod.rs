//! Admission: what happens to submitted transactions, free of HTTP. For one request:
//! decode -> replay pre-check (a known id costs no signature work) -> verify (batched in
//! the engine with the rest of the request) -> ledger policy (chain id, sender allow-list,
//! envelope signer) -> outbox (durable, group-committed) -> hand-off to the forwarder.
//! The whole of it runs in a task the process owns, so a client that disconnects loses
//! only the answer: nothing is left written but not accepted, or accepted but not handed
//! on.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use crate::auth::{Client, Principal};
use crate::bounds;
use crate::ca::Cas;
use crate::custody::{Custody, KeyState};
use crate::forward::{Forwarder, Ledger, Policy};
use crate::metrics as m;
use crate::outbox::{NewTx, Outbox, OutboxError, TxStatus};
use crate::txn::envelope::{Envelope, EnvelopeError};
use crate::txn::trust::TrustAnchors;
use crate::txn::{ethereum, TxId};
use crate::util::hex0x;
use crate::verify::{Engine, EngineError, KeyInput, Outcome, Reason, Task};

/// One transaction as submitted: a raw Ethereum transaction or an envelope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxInput {
    /// A signed Ethereum transaction, 0x hex.
    #[serde(
        default,
        deserialize_with = "bounds::opt::<{ bounds::RAW_TRANSACTION }, _>"
    )]
    pub raw: Option<String>,
    #[serde(default)]
    pub envelope: Option<Envelope>,
}

/// The verdict on one transaction, in submission order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted {
        id: TxId,
        sender: Option<[u8; 20]>,
    },
    Rejected {
        id: Option<TxId>,
        code: &'static str,
        message: String,
    },
}

#[derive(Debug)]
pub struct Submission {
    pub verdicts: Vec<Verdict>,
    pub accepted: usize,
    pub replayed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// No such ledger, or one the client may not submit to.
    #[error("no ledger {0:?}")]
    UnknownLedger(String),
    #[error("at most {0} items per request")]
    TooMany(usize),
    #[error("items is empty")]
    Empty,
    #[error("client {client:?} is over its transaction quota")]
    Quota { client: String, retry_after: u64 },
    #[error("the ledger's chain id is not known yet: no node has answered")]
    LedgerUnavailable,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("admission is shutting down")]
    Stopped,
}

pub struct Admission {
    custody: Arc<Custody>,
    /// The gateway's own CAs: a signer certificate they revoked is refused at once.
    cas: Arc<Cas>,
    verify: Arc<Engine>,
    outbox: Outbox,
    forward: Forwarder,
    /// Transactions per request at most (`[limits] max_items`).
    max_items: usize,
}

/// Where one transaction stands during admission.
enum Slot {
    Done(Verdict),
    /// Waiting for the engine's verdict on task `task`.
    Checking {
        id: TxId,
        body: Arc<[u8]>,
        task: usize,
    },
    Vetted {
        id: TxId,
        body: Arc<[u8]>,
        sender: Option<[u8; 20]>,
    },
}

fn reject(id: Option<TxId>, code: &'static str, message: impl Into<String>) -> Slot {
    Slot::Done(Verdict::Rejected {
        id,
        code,
        message: message.into(),
    })
}

impl Admission {
    pub fn new(
        custody: Arc<Custody>,
        cas: Arc<Cas>,
        verify: Arc<Engine>,
        outbox: Outbox,
        forward: Forwarder,
        max_items: usize,
    ) -> Arc<Admission> {
        for l in forward.ledgers() {
            metrics::counter!(m::TX_ACCEPTED_TOTAL, "ledger" => l.name.to_string()).absolute(0);
            let reasons = Reason::ALL
                .iter()
                .map(|r| r.as_str())
                .chain(REJECT_CODES.iter().copied());
            for reason in reasons {
                metrics::counter!(m::TX_REJECTED_TOTAL, "ledger" => l.name.to_string(), "reason" => reason)
                    .absolute(0);
            }
        }
        Arc::new(Admission {
            custody,
            cas,
            verify,
            outbox,
            forward,
            max_items,
        })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn forward(&self) -> &Forwarder {
        &self.forward
    }

    /// Admits a request's transactions. Runs to completion whether or not the caller
    /// still waits for the answer.
    pub async fn submit(
        self: &Arc<Self>,
        client: Arc<Client>,
        ledger: String,
        txs: Vec<TxInput>,
    ) -> Result<Submission, AdmissionError> {
        let this = self.clone();
        crate::owned::spawn(async move { this.submit_owned(&client, &ledger, txs).await })
            .await
            .map_err(|_| AdmissionError::Stopped)?
    }

    async fn submit_owned(
        &self,
        client: &Client,
        ledger_name: &str,
        txs: Vec<TxInput>,
    ) -> Result<Submission, AdmissionError> {
        // A ledger the client may not use is as unknown as one that does not exist.
        let ledger = self
            .forward
            .ledger(ledger_name)
            .filter(|_| client.may_submit_to(ledger_name))
            .ok_or_else(|| AdmissionError::UnknownLedger(ledger_name.chars().take(64).collect()))?;
        let n = txs.len();
        let count_rejected = |reason: &'static str, k: usize| {
            metrics::counter!(m::TX_REJECTED_TOTAL, "ledger" => ledger.name.to_string(), "reason" => reason)
                .increment(k as u64);
        };
        // Counted against the ledger, so the ledger is known first.
        if n == 0 || n > self.max_items {
            let e = if n == 0 {
                AdmissionError::Empty
            } else {
                AdmissionError::TooMany(self.max_items)
            };
            count_rejected(
                if n == 0 {
                    "invalid_request"
                } else {
                    "too_many_items"
                },
                n,
            );
            return Err(e);
        }
        if let Err(secs) = client.take(crate::auth::Metered::Transactions, n as u64) {
            count_rejected("quota_exceeded", n);
            return Err(AdmissionError::Quota {
                client: client.name.clone(),
                retry_after: secs,
            });
        }
        let chain = match ledger.policy {
            Policy::Ethereum { .. } => {
                Some(ledger.chain_id().ok_or(AdmissionError::LedgerUnavailable)?)
            }
            Policy::Http { .. } => None,
        };

        let mut tasks = Vec::new();
        let mut seen = HashSet::new();
        let mut slots: Vec<Slot> = txs
            .into_iter()
            .map(|t| self.decode(&client.principal, ledger, chain, t, &mut tasks, &mut seen))
            .collect();

        let outcomes = self.verify.run(tasks).await?;
        for slot in &mut slots {
            if let Slot::Checking { id, body, task } = slot {
                *slot = vetted(ledger, *id, body.clone(), &outcomes[*task]);
            }
        }

        let owner: Arc<str> = client.name.as_str().into();
        let fresh: Vec<NewTx> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Vetted { id, body, sender } => Some(NewTx {
                    id: *id,
                    ledger: ledger.name.clone(),
                    owner: owner.clone(),
                    body: body.clone(),
                    sender: *sender,
                }),
                _ => None,
            })
            .collect();
        let durable = self.outbox.accept(fresh).await.inspect_err(|e| {
            count_rejected(
                match e {
                    OutboxError::Full(_) => "outbox_full",
                    _ => "outbox_unavailable",
                },
                n,
            );
        })?;

        let mut durable = durable.into_iter();
        let (mut accepted, mut replayed) = (0, 0);
        let verdicts: Vec<Verdict> = slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Vetted { id, body, sender } => {
                    if durable.next().unwrap_or(false) {
                        accepted += 1;
                        ledger.submit(id, body, sender);
                        Verdict::Accepted { id, sender }
                    } else {
                        Verdict::Rejected {
                            id: Some(id),
                            code: "replayed",
                            message: REPLAYED.into(),
                        }
                    }
                }
                Slot::Done(v) => v,
                Slot::Checking { .. } => unreachable!("every check was answered"),
            })
            .collect();
        for v in &verdicts {
            if let Verdict::Rejected { code, .. } = v {
                replayed += usize::from(*code == "replayed");
                count_rejected(code, 1);
            }
        }
        metrics::counter!(m::TX_ACCEPTED_TOTAL, "ledger" => ledger.name.to_string())
            .increment(accepted as u64);
        Ok(Submission {
            verdicts,
            accepted,
            replayed,
        })
    }

    /// Decodes one transaction, refuses a replay before any signature work, and queues
    /// its signature check.
    fn decode(
        &self,
        who: &Principal,
        ledger: &Ledger,
        chain: Option<u64>,
        tx: TxInput,
        tasks: &mut Vec<Task>,
        seen: &mut HashSet<TxId>,
    ) -> Slot {
        let checked = match (tx.raw, tx.envelope, &ledger.policy) {
            (Some(raw), None, Policy::Ethereum { .. }) => ethereum_check(ledger, chain, &raw),
            (None, Some(env), Policy::Http { trust }) => self
                .envelope_check(who, ledger, trust.as_ref(), env)
                .map_err(|(id, e)| reject(id, e.code(), e.to_string())),
            (Some(_), None, Policy::Http { .. }) | (None, Some(_), Policy::Ethereum { .. }) => {
                Err(reject(
                    None,
                    "wrong_ledger_kind",
                    "ethereum ledgers take raw, http ledgers take envelope",
                ))
            }
            _ => Err(reject(
                None,
                "invalid_item",
                "give exactly one of raw and envelope",
            )),
        };
        let (id, body, task) = match checked {
            Ok(c) => c,
            Err(slot) => return slot,
        };
        if !seen.insert(id) || self.outbox.is_known(&id) {
            return reject(Some(id), "replayed", REPLAYED);
        }
        tasks.push(task);
        Slot::Checking {
            id,
            body,
            task: tasks.len() - 1,
        }
    }

    fn envelope_check(
        &self,
        who: &Principal,
        ledger: &Ledger,
        trust: Option<&TrustAnchors>,
        env: Envelope,
    ) -> Result<Check, (Option<TxId>, EnvelopeError)> {
        let payload = env.payload().map_err(|e| (None, e))?;
        let id = crate::util::sha256(&payload);
        let fail = |e| (Some(id), e);
        if payload.len() > ledger.max_transaction_bytes {
            return Err(fail(EnvelopeError::Invalid(format!(
                "payload larger than {} bytes",
                ledger.max_transaction_bytes
            ))));
        }
        let algorithm = env.algorithm().map_err(fail)?;
        let key = match (&env.key_id, &env.certificate_pem) {
            (Some(key_id), None) => {
                // Only an active key the submitter owns authorises an envelope.
                let record = self
                    .custody
                    .get(who, key_id)
                    .map_err(|_| fail(EnvelopeError::Key(Reason::UnknownKey)))?;
                if record.state != KeyState::Active {
                    return Err(fail(EnvelopeError::KeyNotActive(record.id.to_string())));
                }
                if record.algorithm != algorithm {
                    return Err(fail(EnvelopeError::Key(Reason::AlgorithmMismatch)));
                }
                KeyInput::Bytes(
                    crate::util::unhex0x(&record.public_key)
                        .map_err(|_| fail(EnvelopeError::Key(Reason::Internal)))?,
                )
            }
            (None, Some(pem)) => {
                let trust = trust.ok_or(EnvelopeError::NoTrustAnchors).map_err(fail)?;
                let signer = trust.verify(pem).map_err(fail)?;
                if self.cas.revoked(&signer.issuer_der, &signer.serial) {
                    return Err(fail(EnvelopeError::Revoked(
                        "the certificate is revoked by this gateway's CA".into(),
                    )));
                }
                KeyInput::Pem(signer.key_pem)
            }
            _ => {
                return Err(fail(EnvelopeError::Invalid(
                    "give exactly one of key_id and certificate_pem".into(),
                )))
            }
        };
        let item = env.item(algorithm, key, payload).map_err(fail)?;
        let body = serde_json::to_vec(&json!({"id": hex0x(&id), "envelope": env}))
            .expect("JSON values serialise");
        Ok((id, body.into(), Task::Verify(item)))
    }

    /// The status of a transaction `who` submitted (admins: any); None otherwise.
    pub fn status(&self, who: &Principal, id: &TxId) -> Option<TxStatus> {
        self.outbox.status(id).filter(|s| who.owns(&s.owner))
    }

    /// Ready when there are no ledgers or each has a healthy node, and the outbox writes.
    pub fn ready(&self) -> bool {
        self.outbox.is_healthy() && self.forward.ready()
    }
}

/// Rejection reasons of admission's own, beside the verification engine's `Reason`s.
const REJECT_CODES: &[&str] = &[
    "unsupported_type",
    "no_chain_id",
    "wrong_chain_id",
    "too_large",
    "sender_not_allowed",
    "replayed",
    "wrong_ledger_kind",
    "key_disabled",
    "bad_certificate",
    "untrusted_certificate",
    "certificate_not_for_signing",
    "revoked_certificate",
    "quota_exceeded",
    "too_many_items",
    "invalid_request",
    "outbox_full",
    "outbox_unavailable",
];

const REPLAYED: &str = "this transaction was already submitted within the replay window";

type Check = (TxId, Arc<[u8]>, Task);

fn ethereum_check(ledger: &Ledger, chain: Option<u64>, raw: &str) -> Result<Check, Slot> {
    let Ok(bytes) = crate::util::unhex0x(raw) else {
        return Err(reject(None, "bad_encoding", "raw is not 0x hex"));
    };
    if bytes.len() > ledger.max_transaction_bytes {
        return Err(reject(
            None,
            "too_large",
            format!("larger than {} bytes", ledger.max_transaction_bytes),
        ));
    }
    let tx = match ethereum::decode(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let id = Some(crate::util::keccak256(&bytes));
            return Err(reject(id, e.code(), e.to_string()));
        }
    };
    if Some(tx.chain_id) != chain {
        return Err(reject(
            Some(tx.hash),
            "wrong_chain_id",
            format!(
                "chain id {} is not this ledger's ({})",
                tx.chain_id,
                chain.unwrap_or(0)
            ),
        ));
    }
    let task = Task::Recover {
        digest: tx.signing_hash,
        signature: tx.signature,
        require_low_s: true,
    };
    Ok((tx.hash, bytes.into(), task))
}

/// Whether the ledger's sender allow-list (when it has one) names this sender.
fn allowed(ledger: &Ledger, sender: &[u8; 20]) -> bool {
    match &ledger.policy {
        Policy::Ethereum { senders } => senders.is_empty() || senders.contains(sender),
        Policy::Http { .. } => false,
    }
}

/// The ledger's policy applied to the engine's verdict.
fn vetted(ledger: &Ledger, id: TxId, body: Arc<[u8]>, outcome: &Outcome) -> Slot {
    match outcome {
        Outcome::Valid => Slot::Vetted {
            id,
            body,
            sender: None,
        },
        Outcome::Recovered(pk) => match crate::crypto::ecdsa::eth_address(pk) {
            None => reject(Some(id), Reason::Internal.as_str(), "recovery gave no key"),
            Some(sender) if allowed(ledger, &sender) => Slot::Vetted {
                id,
                body,
                sender: Some(sender),
            },
            Some(sender) => reject(
                Some(id),
                "sender_not_allowed",
                format!(
                    "sender {} is not on this ledger's allow-list",
                    hex0x(&sender)
                ),
            ),
        },
        Outcome::Invalid(r) => reject(
            Some(id),
            r.as_str(),
            format!("the signature does not check: {}", r.as_str()),
        ),
    }
}

//! `POST /v1/transactions` and `GET /v1/transactions/{id}`: admission. Each transaction is
//! decoded, its signature checked by the verification engine (batched with the rest of
//! the request), its chain and sender checked, then it is made durable in the outbox
//! before the answer says "accepted", and handed to the forwarder.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::router::{json_response, read_json, Resp};
use crate::app::AppState;
use crate::auth::{Client, Operation};
use crate::forward::{Ledger, LedgerKind};
use crate::metrics as m;
use crate::outbox::{NewTx, OutboxError};
use crate::txn::envelope::{Envelope, EnvelopeError};
use crate::txn::{ethereum, TxId};
use crate::util::hex0x;
use crate::verify::{KeyInput, Outcome, Reason, Task};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitRequest {
    ledger: String,
    transactions: Vec<TxInput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxInput {
    /// A signed Ethereum transaction, 0x hex.
    raw: Option<String>,
    envelope: Option<Envelope>,
}

/// Where one transaction stands during admission.
enum Slot {
    Rejected {
        id: Option<TxId>,
        code: &'static str,
        message: String,
    },
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
    Slot::Rejected {
        id,
        code,
        message: message.into(),
    }
}

pub async fn submit(
    state: &Arc<AppState>,
    client: &Client,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    super::require(client, Operation::Transactions)?;
    let body: SubmitRequest = read_json(state, req).await?;
    let ledger = state.forward.ledger(&body.ledger).ok_or_else(|| {
        ApiError::not_found("unknown_ledger", format!("no ledger {:?}", body.ledger))
    })?;
    let n = body.transactions.len();
    let count_rejected = |reason: &'static str, k: usize| {
        metrics::counter!(m::TX_REJECTED_TOTAL, "ledger" => ledger.name.to_string(), "reason" => reason)
            .increment(k as u64);
    };
    if let Err(e) = state.limits.check_items(n) {
        count_rejected(e.code, n);
        return Err(e);
    }
    if let Err(secs) = client.take_transactions(n as u64) {
        count_rejected("quota_exceeded", n);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!("client {:?} is over its transaction quota", client.name),
        );
        e.retry_after = Some(secs);
        return Err(e);
    }
    let chain = match ledger.kind {
        LedgerKind::Ethereum => Some(ledger.chain_id().ok_or_else(|| {
            ApiError::unavailable(
                "ledger_unavailable",
                "the ledger's chain id is not known yet: no node has answered",
            )
        })?),
        LedgerKind::Http => None,
    };

    let mut tasks = Vec::new();
    let mut slots: Vec<Slot> = body
        .transactions
        .into_iter()
        .map(|t| admit_one(state, client, ledger, chain, t, &mut tasks))
        .collect();

    let outcomes = state.verify.run(tasks).await?;
    for slot in &mut slots {
        if let Slot::Checking { id, body, task } = slot {
            *slot = match &outcomes[*task] {
                Outcome::Valid => Slot::Vetted {
                    id: *id,
                    body: body.clone(),
                    sender: None,
                },
                Outcome::Recovered(pk) => match crate::crypto::ecdsa::eth_address(pk) {
                    None => reject(Some(*id), Reason::Internal.as_str(), "recovery gave no key"),
                    Some(sender)
                        if ledger.senders.is_empty() || ledger.senders.contains(&sender) =>
                    {
                        Slot::Vetted {
                            id: *id,
                            body: body.clone(),
                            sender: Some(sender),
                        }
                    }
                    Some(sender) => reject(
                        Some(*id),
                        "sender_not_allowed",
                        format!(
                            "sender {} is not on this ledger's allow-list",
                            hex0x(&sender)
                        ),
                    ),
                },
                Outcome::Invalid(r) => reject(
                    Some(*id),
                    r.as_str(),
                    format!("the signature does not check: {}", r.as_str()),
                ),
            };
        }
    }

    let fresh: Vec<NewTx> = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Vetted { id, body, .. } => Some(NewTx {
                id: *id,
                ledger: ledger.name.clone(),
                body: body.clone(),
            }),
            _ => None,
        })
        .collect();
    let verdicts = state.outbox.accept(fresh).await.map_err(|e| {
        count_rejected(
            match e {
                OutboxError::Full(_) => "outbox_full",
                _ => "outbox_unavailable",
            },
            n,
        );
        ApiError::from(e)
    })?;

    let mut verdicts = verdicts.into_iter();
    let mut accepted = 0usize;
    let mut replayed = 0usize;
    let results: Vec<Value> = slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Vetted { id, body, sender } => {
                if verdicts.next().unwrap_or(false) {
                    accepted += 1;
                    ledger.submit(id, body, sender);
                    let mut r = json!({"id": hex0x(&id), "status": "accepted"});
                    if let Some(s) = sender {
                        r["sender"] = hex0x(&s).into();
                    }
                    r
                } else {
                    replayed += 1;
                    count_rejected("replayed", 1);
                    rejected_json(
                        Some(id),
                        "replayed",
                        "this transaction was already submitted within the replay window",
                    )
                }
            }
            Slot::Rejected { id, code, message } => {
                count_rejected(code, 1);
                rejected_json(id, code, &message)
            }
            Slot::Checking { .. } => unreachable!("every check was answered"),
        })
        .collect();
    metrics::counter!(m::TX_ACCEPTED_TOTAL, "ledger" => ledger.name.to_string())
        .increment(accepted as u64);

    // 202 when anything was accepted; otherwise the status says why nothing was.
    let (status, error) = if accepted > 0 {
        (StatusCode::ACCEPTED, None)
    } else if replayed == n {
        (
            StatusCode::CONFLICT,
            Some(("replayed", "every transaction was already submitted")),
        )
    } else {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(("rejected", "no transaction was accepted")),
        )
    };
    let mut out = json!({ "results": results });
    if let Some((code, message)) = error {
        out["error"] = json!({"code": code, "message": message});
    }
    Ok(json_response(status, &out))
}

fn rejected_json(id: Option<TxId>, code: &str, message: &str) -> Value {
    let mut r = json!({"status": "rejected", "reason": {"code": code, "message": message}});
    if let Some(id) = id {
        r["id"] = hex0x(&id).into();
    }
    r
}

/// Decodes one transaction and queues its signature check, or rejects it.
fn admit_one(
    state: &AppState,
    client: &Client,
    ledger: &Ledger,
    chain: Option<u64>,
    tx: TxInput,
    tasks: &mut Vec<Task>,
) -> Slot {
    match (tx.raw, tx.envelope, ledger.kind) {
        (Some(raw), None, LedgerKind::Ethereum) => {
            let Ok(bytes) = crate::util::unhex0x(&raw) else {
                return reject(None, "bad_encoding", "raw is not 0x hex");
            };
            if bytes.len() > ledger.max_transaction_bytes {
                return reject(
                    None,
                    "too_large",
                    format!("larger than {} bytes", ledger.max_transaction_bytes),
                );
            }
            let tx = match ethereum::decode(&bytes) {
                Ok(t) => t,
                Err(e) => {
                    let id = Some(crate::util::keccak256(&bytes));
                    return reject(id, e.code(), e.to_string());
                }
            };
            if Some(tx.chain_id) != chain {
                return reject(
                    Some(tx.hash),
                    "wrong_chain_id",
                    format!(
                        "chain id {} is not this ledger's ({})",
                        tx.chain_id,
                        chain.unwrap_or(0)
                    ),
                );
            }
            tasks.push(Task::Recover {
                digest: tx.signing_hash,
                signature: tx.signature,
                require_low_s: true,
            });
            Slot::Checking {
                id: tx.hash,
                body: bytes.into(),
                task: tasks.len() - 1,
            }
        }
        (None, Some(env), LedgerKind::Http) => match envelope(state, client, ledger, env) {
            Ok((id, body, task)) => {
                tasks.push(task);
                Slot::Checking {
                    id,
                    body,
                    task: tasks.len() - 1,
                }
            }
            Err((id, e)) => reject(id, e.code(), e.to_string()),
        },
        (Some(_), None, LedgerKind::Http) | (None, Some(_), LedgerKind::Ethereum) => reject(
            None,
            "wrong_ledger_kind",
            "ethereum ledgers take raw, http ledgers take envelope",
        ),
        _ => reject(None, "invalid_item", "give exactly one of raw and envelope"),
    }
}

type EnvelopeCheck = (TxId, Arc<[u8]>, Task);

fn envelope(
    state: &AppState,
    client: &Client,
    ledger: &Ledger,
    env: Envelope,
) -> Result<EnvelopeCheck, (Option<TxId>, EnvelopeError)> {
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
        (Some(key_id), None) => super::verify::custody_key(state, client, key_id, algorithm)
            .map_err(|r| fail(EnvelopeError::Key(r)))?,
        (None, Some(pem)) => {
            let trust = ledger
                .trust
                .as_ref()
                .ok_or(EnvelopeError::NoTrustAnchors)
                .map_err(fail)?;
            KeyInput::Pem(trust.verify_chain(pem).map_err(fail)?)
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

pub fn status(state: &AppState, client: &Client, id: &str) -> Result<Resp, ApiError> {
    super::require(client, Operation::Transactions)?;
    let not_found = || ApiError::not_found("not_found", format!("no accepted transaction {id}"));
    let key: TxId = crate::util::unhex0x(id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(not_found)?;
    let s = state.outbox.status(&key).ok_or_else(not_found)?;
    let mut body = json!({
        "id": hex0x(&key),
        "ledger": &*s.ledger,
        "status": s.state.as_str(),
        "attempts": s.attempts,
        "accepted_at": s.accepted_at,
    });
    if let Some(n) = s.node {
        body["node"] = n.into();
    }
    if let Some(r) = s.response {
        body["node_response"] = r.into();
    }
    Ok(json_response(StatusCode::OK, &body))
}

//! `POST /v1/transactions` and `GET /v1/transactions/{id}`: parse, call admission, render.
//! Admission (decode, replay check, verify, policy, outbox, hand-off) lives in
//! `crate::admission` and runs to completion even if the client goes away.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::router::{json_response, read_json, Resp};
use super::AppState;
use crate::admission::{TxInput, Verdict};
use crate::auth::{Client, Operation};
use crate::txn::TxId;
use crate::util::hex0x;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitRequest {
    #[serde(deserialize_with = "crate::bounds::text::<{ crate::bounds::LEDGER }, _>")]
    ledger: String,
    transactions: Vec<TxInput>,
}

pub async fn submit(
    state: &Arc<AppState>,
    client: &Arc<Client>,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    super::require(client, Operation::Transactions)?;
    let body: SubmitRequest = read_json(state, req).await?;
    let n = body.transactions.len();
    let done = state
        .admission
        .submit(client.clone(), body.ledger, body.transactions)
        .await?;
    let results: Vec<Value> = done
        .verdicts
        .iter()
        .map(|v| match v {
            Verdict::Accepted { id, sender } => {
                let mut r = json!({"id": hex0x(id), "status": "accepted"});
                if let Some(s) = sender {
                    r["sender"] = hex0x(s).into();
                }
                r
            }
            Verdict::Rejected { id, code, message } => {
                let mut r =
                    json!({"status": "rejected", "reason": {"code": code, "message": message}});
                if let Some(id) = id {
                    r["id"] = hex0x(id).into();
                }
                r
            }
        })
        .collect();
    // 202 when anything was accepted; otherwise the status says why nothing was.
    let (status, error) = if done.accepted > 0 {
        (StatusCode::ACCEPTED, None)
    } else if done.replayed == n {
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

/// Another client's transaction is as unknown as one never submitted.
pub fn status(state: &AppState, client: &Client, id: &str) -> Result<Resp, ApiError> {
    super::require(client, Operation::Transactions)?;
    let not_found = || {
        ApiError::not_found(
            "not_found",
            format!(
                "no accepted transaction {}",
                id.chars().take(80).collect::<String>()
            ),
        )
    };
    let key: TxId = crate::util::unhex0x(id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(not_found)?;
    let s = state
        .admission
        .status(&client.principal, &key)
        .ok_or_else(not_found)?;
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

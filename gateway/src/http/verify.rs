//! `POST /v1/verify`: each item is decoded here into an engine task, or answered with its
//! reason at once; one bad item never fails the others. Verification is stateless and
//! touches no secret, so it is not written to the audit log (its metrics count it).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::router::{json_response, read_json, Resp};
use super::AppState;
use crate::algorithm::Algorithm;
use crate::auth::{Client, Operation};
use crate::bounds;
use crate::util::{unbase64, unhex0x};
use crate::verify::{Hash, Item, KeyInput, Message, Outcome, Reason, SigFormat, Task};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    items: Vec<VerifyItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyItem {
    #[serde(deserialize_with = "bounds::text::<{ bounds::ALGORITHM }, _>")]
    algorithm: String,
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::HEX_VALUE }, _>")]
    public_key: Option<String>,
    #[serde(
        default,
        deserialize_with = "bounds::opt::<{ bounds::PUBLIC_KEY_PEM }, _>"
    )]
    public_key_pem: Option<String>,
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::KEY_ID }, _>")]
    key_id: Option<String>,
    /// An Ethereum address, with `ecdsa-secp256k1` and `format: "eth"`.
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::ADDRESS }, _>")]
    address: Option<String>,
    #[serde(
        default,
        deserialize_with = "bounds::opt::<{ bounds::BASE64_DATA }, _>"
    )]
    message_b64: Option<String>,
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::DIGEST }, _>")]
    digest: Option<String>,
    /// For `message_b64` on ECDSA curves: `sha256` (default) or `keccak256`.
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::WORD }, _>")]
    hash: Option<String>,
    #[serde(deserialize_with = "bounds::text::<{ bounds::SIGNATURE }, _>")]
    signature: String,
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::WORD }, _>")]
    format: Option<String>,
    require_low_s: Option<bool>,
}

pub async fn verify(
    state: &Arc<AppState>,
    client: &Client,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    super::require(client, Operation::Verify)?;
    let body: VerifyRequest = read_json(state, req).await?;
    state.limits.check_items(body.items.len())?;
    super::take_quota(
        client,
        crate::auth::Metered::Verifications,
        body.items.len(),
    )?;
    let mut results: Vec<Option<Outcome>> = Vec::with_capacity(body.items.len());
    let mut tasks = Vec::with_capacity(body.items.len());
    for item in &body.items {
        match prepare(state, client, item) {
            Ok(t) => {
                tasks.push(Task::Verify(t));
                results.push(None);
            }
            Err(r) => results.push(Some(Outcome::Invalid(r))),
        }
    }
    let mut verified = state.verify.run(tasks).await?.into_iter();
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| match r.or_else(|| verified.next()) {
            Some(Outcome::Valid) => json!({"valid": true}),
            Some(Outcome::Invalid(reason)) => json!({"valid": false, "reason": reason.as_str()}),
            _ => json!({"valid": false, "reason": Reason::Internal.as_str()}),
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "results": results }),
    ))
}

/// The public key of custody key `id` (imported verify-only keys too), for `algorithm`.
/// A key the caller does not own is as unknown as one that does not exist. Disabled keys
/// still verify: signatures made before the disable stay checkable.
fn custody_key(
    state: &AppState,
    client: &Client,
    id: &str,
    algorithm: Algorithm,
) -> Result<KeyInput, Reason> {
    let record = state
        .custody
        .get(&client.principal, id)
        .map_err(|_| Reason::UnknownKey)?;
    if record.algorithm != algorithm {
        return Err(Reason::AlgorithmMismatch);
    }
    Ok(KeyInput::Bytes(
        unhex0x(&record.public_key).map_err(|_| Reason::Internal)?,
    ))
}

fn prepare(state: &AppState, client: &Client, item: &VerifyItem) -> Result<Item, Reason> {
    let algorithm: Algorithm = item
        .algorithm
        .parse()
        .map_err(|_| Reason::UnsupportedAlgorithm)?;
    let key = match (
        &item.public_key,
        &item.public_key_pem,
        &item.key_id,
        &item.address,
    ) {
        (Some(hex), None, None, None) => {
            KeyInput::Bytes(unhex0x(hex).map_err(|_| Reason::BadEncoding)?)
        }
        (None, Some(pem), None, None) => KeyInput::Pem(pem.clone()),
        (None, None, Some(id), None) => custody_key(state, client, id, algorithm)?,
        (None, None, None, Some(addr)) => {
            let bytes = unhex0x(addr).map_err(|_| Reason::BadEncoding)?;
            KeyInput::Address(bytes.try_into().map_err(|_| Reason::BadEncoding)?)
        }
        _ => return Err(Reason::InvalidItem),
    };
    let message = match (&item.message_b64, &item.digest) {
        (Some(b64), None) => Message::Bytes(unbase64(b64).map_err(|_| Reason::BadEncoding)?),
        (None, Some(hex)) => {
            let d = unhex0x(hex).map_err(|_| Reason::BadEncoding)?;
            Message::Digest(d.try_into().map_err(|_| Reason::BadEncoding)?)
        }
        _ => return Err(Reason::InvalidItem),
    };
    let hash = match item.hash.as_deref() {
        None | Some("sha256") => Hash::Sha256,
        Some("keccak256") if algorithm.is_ecdsa() => Hash::Keccak256,
        _ => return Err(Reason::InvalidItem),
    };
    let format = match item.format.as_deref() {
        None => SigFormat::default_for(algorithm),
        Some(f) => SigFormat::parse(f).ok_or(Reason::UnsupportedFormat)?,
    };
    Ok(Item {
        algorithm,
        key,
        message,
        hash,
        signature: unhex0x(&item.signature).map_err(|_| Reason::BadEncoding)?,
        format,
        require_low_s: item
            .require_low_s
            .unwrap_or(algorithm == Algorithm::EcdsaSecp256k1),
    })
}

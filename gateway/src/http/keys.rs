//! `/v1/keys`: create, import, list, get, disable, delete (scheduled), cancel deletion,
//! sign and sign-batch. Each handler parses, calls custody, renders: custody writes the
//! audit line and owns the operation, so a client that goes away loses only the answer.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::router::{json_response, read_json, Resp};
use super::AppState;
use crate::algorithm::Algorithm;
use crate::auth::{Client, Metered, Operation};
use crate::bounds;
use crate::custody::{CustodyError, KeyRecord, SigFormat, StateChange};
use crate::util::{hex0x, keccak256, sha256, unbase64, unhex0x};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    #[serde(deserialize_with = "bounds::text::<{ bounds::LABEL }, _>")]
    label: String,
    #[serde(deserialize_with = "bounds::text::<{ bounds::ALGORITHM }, _>")]
    algorithm: String,
    /// Admins only: the client that will own the key.
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::PRINCIPAL }, _>")]
    owner: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    #[serde(deserialize_with = "bounds::text::<{ bounds::LABEL }, _>")]
    label: String,
    #[serde(deserialize_with = "bounds::text::<{ bounds::ALGORITHM }, _>")]
    algorithm: String,
    #[serde(deserialize_with = "bounds::text::<{ bounds::PUBLIC_KEY_PEM }, _>")]
    public_key_pem: String,
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::PRINCIPAL }, _>")]
    owner: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignItem {
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::DIGEST }, _>")]
    digest: Option<String>,
    #[serde(
        default,
        deserialize_with = "bounds::opt::<{ bounds::BASE64_DATA }, _>"
    )]
    message_b64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    // The item's fields again, not `#[serde(flatten)]`: flattening hides which field a
    // client got wrong, and buffers the body a second time.
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::DIGEST }, _>")]
    digest: Option<String>,
    #[serde(
        default,
        deserialize_with = "bounds::opt::<{ bounds::BASE64_DATA }, _>"
    )]
    message_b64: Option<String>,
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::WORD }, _>")]
    format: Option<String>,
    /// For `message_b64` on secp256k1: `sha256` (default) or `keccak256`.
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::WORD }, _>")]
    hash: Option<String>,
    /// SM2: the signer's distinguishing ID in Z (default `1234567812345678`).
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::SM2_ID }, _>")]
    sm2_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBatchRequest {
    items: Vec<SignItem>,
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::WORD }, _>")]
    format: Option<String>,
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::WORD }, _>")]
    hash: Option<String>,
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::SM2_ID }, _>")]
    sm2_id: Option<String>,
}

/// The policy must grant `op`; a refusal is audited like any key operation.
async fn require(
    state: &AppState,
    client: &Client,
    op: Operation,
    audit_as: &'static str,
    key_id: &str,
) -> Result<(), ApiError> {
    if let Err(e) = super::require(client, op) {
        state
            .custody
            .audit_refusal(&client.principal, audit_as, key_id, e.code)
            .await?;
        return Err(e);
    }
    Ok(())
}

async fn check_label(
    state: &AppState,
    client: &Client,
    label: &str,
    audit_as: &'static str,
) -> Result<(), ApiError> {
    let valid = (1..=64).contains(&label.len())
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(ApiError::bad_request(
            "invalid_label",
            "labels are 1 to 64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    if !client.may_use_label(label) {
        let e = ApiError::forbidden(format!(
            "client {:?} may not create keys labelled {label:?}",
            client.name
        ));
        state
            .custody
            .audit_refusal(&client.principal, audit_as, "", e.code)
            .await?;
        return Err(e);
    }
    Ok(())
}

/// A named owner must be a configured client (custody decides who may name one).
fn check_owner(state: &AppState, owner: Option<&str>) -> Result<(), ApiError> {
    match owner {
        Some(o) if !state.auth.knows(o) => Err(ApiError::unprocessable(
            "unknown_owner",
            format!("no client named {:?}", truncate(o)),
        )),
        _ => Ok(()),
    }
}

fn parse_algorithm(s: &str) -> Result<Algorithm, ApiError> {
    s.parse().map_err(|e: crate::algorithm::UnknownAlgorithm| {
        ApiError::unprocessable("unknown_algorithm", e.to_string())
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A record as the API shows it: the journal's fields, and whether its token object is
/// missing.
fn record_json(state: &AppState, r: &KeyRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(r).expect("records serialise");
    // Sealed or not, private key material never leaves through the API.
    if let Some(o) = v.as_object_mut() {
        o.remove("wrapped");
    }
    if state.custody.is_missing(&r.id) {
        v["token_object"] = "missing".into();
    }
    v
}

pub fn list(state: &AppState, client: &Client) -> Result<Resp, ApiError> {
    super::require(client, Operation::KeysRead)?;
    let keys: Vec<_> = state
        .custody
        .list(&client.principal)
        .iter()
        .map(|r| record_json(state, r))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"keys": keys})))
}

pub fn get(state: &AppState, client: &Client, id: &str) -> Result<Resp, ApiError> {
    super::require(client, Operation::KeysRead)?;
    let record = state.custody.get(&client.principal, id)?;
    Ok(json_response(StatusCode::OK, &record_json(state, &record)))
}

pub async fn create(
    state: &Arc<AppState>,
    client: &Client,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    require(state, client, Operation::KeysCreate, "create", "").await?;
    let body: CreateRequest = read_json(state, req).await?;
    let algorithm = parse_algorithm(&body.algorithm)?;
    check_label(state, client, &body.label, "create").await?;
    check_owner(state, body.owner.as_deref())?;
    let record = state
        .custody
        .create(&client.principal, body.owner, &body.label, algorithm)
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &record_json(state, &record),
    ))
}

pub async fn import(
    state: &Arc<AppState>,
    client: &Client,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    require(state, client, Operation::KeysImport, "import", "").await?;
    let body: ImportRequest = read_json(state, req).await?;
    let algorithm = parse_algorithm(&body.algorithm)?;
    check_label(state, client, &body.label, "import").await?;
    check_owner(state, body.owner.as_deref())?;
    let record = state
        .custody
        .import(
            &client.principal,
            body.owner,
            &body.label,
            algorithm,
            &body.public_key_pem,
        )
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &record_json(state, &record),
    ))
}

/// `POST /v1/keys/{id}/disable`, `POST /v1/keys/{id}/cancel-deletion`, and `DELETE
/// /v1/keys/{id}` without `now`: a state change, under the operation that grants it.
pub async fn change(
    state: &Arc<AppState>,
    client: &Client,
    id: &str,
    change: StateChange,
) -> Result<Resp, ApiError> {
    let (op, audit_as) = match change {
        StateChange::Disable => (Operation::KeysDisable, "disable"),
        StateChange::ScheduleDeletion => (Operation::KeysDestroy, "destroy"),
        StateChange::CancelDeletion => (Operation::KeysDestroy, "cancel_destroy"),
    };
    require(state, client, op, audit_as, id).await?;
    let record = state.custody.change(&client.principal, id, change).await?;
    Ok(json_response(StatusCode::OK, &record_json(state, &record)))
}

/// `DELETE /v1/keys/{id}?now=true`: an admin destroys at once.
pub async fn destroy_now(
    state: &Arc<AppState>,
    client: &Client,
    id: &str,
) -> Result<Resp, ApiError> {
    require(state, client, Operation::KeysDestroy, "destroy", id).await?;
    let record = state.custody.destroy_now(&client.principal, id).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": record.id, "label": record.label, "state": "destroyed"}),
    ))
}

pub async fn sign(
    state: &Arc<AppState>,
    client: &Client,
    id: &str,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    require(state, client, Operation::KeysSign, "sign", id).await?;
    let body: SignRequest = read_json(state, req).await?;
    // The algorithm decides how the input is read; the state is checked by custody at
    // the moment of signing, not here.
    let record = state.custody.get(&client.principal, id)?;
    let alg = record.algorithm;
    let format = parse_format(alg, body.format.as_deref())?;
    let item = SignItem {
        digest: body.digest,
        message_b64: body.message_b64,
    };
    let how = How::new(&record, body.hash.as_deref(), body.sm2_id.as_deref())?;
    let input = prepare(&how, &item)?;
    super::take_quota(client, Metered::Signatures, 1)?;
    let mut sigs = state
        .custody
        .sign(&client.principal, id, vec![input], format, false)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "key_id": id,
            "algorithm": alg,
            "format": format.as_str(),
            "signature": hex0x(&sigs.pop().ok_or(CustodyError::Stopped)?),
        }),
    ))
}

pub async fn sign_batch(
    state: &Arc<AppState>,
    client: &Client,
    id: &str,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    require(state, client, Operation::KeysSign, "sign_batch", id).await?;
    let body: SignBatchRequest = read_json(state, req).await?;
    state.limits.check_items(body.items.len())?;
    let record = state.custody.get(&client.principal, id)?;
    let alg = record.algorithm;
    let format = parse_format(alg, body.format.as_deref())?;
    let how = How::new(&record, body.hash.as_deref(), body.sm2_id.as_deref())?;
    let inputs = body
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            prepare(&how, item).map_err(|mut e| {
                e.message = format!("items[{i}]: {}", e.message);
                e
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    super::take_quota(client, Metered::Signatures, inputs.len())?;
    let sigs = state
        .custody
        .sign(&client.principal, id, inputs, format, true)
        .await?;
    let sigs: Vec<_> = sigs.iter().map(|s| hex0x(s)).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "key_id": id,
            "algorithm": alg,
            "format": format.as_str(),
            "signatures": sigs,
        }),
    ))
}

fn parse_format(alg: Algorithm, format: Option<&str>) -> Result<SigFormat, ApiError> {
    let format = match format {
        None => SigFormat::default_for(alg),
        Some(f) => SigFormat::parse(f).ok_or_else(|| {
            ApiError::unprocessable(
                "unsupported_format",
                format!("unknown format {:?}; use der, raw or eth", truncate(f)),
            )
        })?,
    };
    crate::custody::check_format(alg, format)?;
    Ok(format)
}

/// How a key's items become what is signed.
struct How {
    alg: Algorithm,
    keccak: bool,
    /// SM2: Z for the key and the distinguishing ID.
    z: Option<[u8; 32]>,
}

impl How {
    fn new(record: &KeyRecord, hash: Option<&str>, sm2_id: Option<&str>) -> Result<How, ApiError> {
        let alg = record.algorithm;
        let keccak = match hash {
            None => false,
            Some("sha256") if alg.is_ecdsa() => false,
            Some("sm3") if alg == Algorithm::Sm2 => false,
            Some("keccak256") if alg == Algorithm::EcdsaSecp256k1 => true,
            Some(h) => {
                return Err(ApiError::unprocessable(
                    "unsupported_hash",
                    format!("hash {:?} is not available for {alg}", truncate(h)),
                ))
            }
        };
        let z = match (alg, sm2_id) {
            (Algorithm::Sm2, id) => {
                let point = unhex0x(&record.public_key)
                    .map_err(|_| ApiError::from(CustodyError::ObjectMissing(record.id)))?;
                let id = id.map_or(crate::verify::keys::SM2_DEFAULT_ID, str::as_bytes);
                Some(crate::verify::keys::sm2_z_with_id(id, &point))
            }
            (_, Some(_)) => {
                return Err(ApiError::unprocessable(
                    "invalid_request",
                    format!("sm2_id is for sm2 keys, not {alg}"),
                ))
            }
            (_, None) => None,
        };
        Ok(How { alg, keccak, z })
    }
}

/// What is signed: a 32-byte digest for ECDSA, the message itself for Ed25519, and for
/// SM2 e: SM3(Z || M) of a message, or a 32-byte digest taken as e.
fn prepare(how: &How, item: &SignItem) -> Result<Vec<u8>, ApiError> {
    let (alg, keccak) = (how.alg, how.keccak);
    match (&item.digest, &item.message_b64) {
        (Some(d), None) => {
            if !(alg.is_ecdsa() || alg == Algorithm::Sm2) {
                return Err(ApiError::unprocessable(
                    "digest_not_supported",
                    format!("{alg} signs messages (pure), not digests: send message_b64"),
                ));
            }
            let bytes =
                unhex0x(d).map_err(|e| ApiError::bad_request("bad_hex", format!("digest: {e}")))?;
            if bytes.len() != 32 {
                return Err(ApiError::bad_request(
                    "bad_digest_length",
                    format!("digest must be 32 bytes, got {}", bytes.len()),
                ));
            }
            Ok(bytes)
        }
        (None, Some(m)) => {
            let msg = unbase64(m)
                .map_err(|e| ApiError::bad_request("bad_base64", format!("message_b64: {e}")))?;
            Ok(match (alg, how.z) {
                (Algorithm::Sm2, Some(z)) => crate::verify::keys::sm2_e(&z, &msg).to_vec(),
                (Algorithm::Ed25519 | Algorithm::Sm2, _) => msg,
                _ if keccak => keccak256(&msg).to_vec(),
                _ => sha256(&msg).to_vec(),
            })
        }
        _ => Err(ApiError::bad_request(
            "invalid_request",
            "give exactly one of digest or message_b64",
        )),
    }
}

//! `/v1/keys`: create, import, list, get, disable, destroy, sign and sign-batch. Every
//! state change and signature is written to the audit log before the client hears of it.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::require;
use super::router::{json_response, read_json, Resp};
use crate::algorithm::Algorithm;
use crate::app::AppState;
use crate::audit::AuditEntry;
use crate::auth::{Client, Operation};
use crate::custody::{KeyRecord, SignFormat};
use crate::util::{hex0x, keccak256, sha256, unbase64, unhex0x};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    label: String,
    algorithm: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    label: String,
    algorithm: String,
    public_key_pem: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignItem {
    digest: Option<String>,
    message_b64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    #[serde(flatten)]
    item: SignItem,
    format: Option<String>,
    /// For `message_b64` on secp256k1: `sha256` (default) or `keccak256`.
    hash: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBatchRequest {
    items: Vec<SignItem>,
    format: Option<String>,
    hash: Option<String>,
}

/// What one audited operation touched, filled in as the handler learns it.
struct Audit {
    operation: &'static str,
    key_id: Option<String>,
    subject: Option<[u8; 32]>,
}

impl Audit {
    fn new(operation: &'static str, key_id: Option<&str>) -> Self {
        Audit {
            operation,
            key_id: key_id.map(str::to_string),
            subject: None,
        }
    }

    /// Writes the outcome, success or error, and passes it on. If the audit line cannot
    /// be written, the client gets 503 instead of the result.
    async fn finish(
        self,
        state: &AppState,
        client: &Client,
        result: Result<Resp, ApiError>,
    ) -> Result<Resp, ApiError> {
        let entry = AuditEntry {
            client: client.name.clone(),
            operation: self.operation,
            key_id: self.key_id,
            subject_sha256: self.subject.map(hex::encode),
            result: match &result {
                Ok(_) => "ok".into(),
                Err(e) => e.code.to_string(),
            },
        };
        state.audit.append(entry).await?;
        result
    }
}

fn check_label(client: &Client, label: &str) -> Result<(), ApiError> {
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
        return Err(ApiError::forbidden(format!(
            "client {:?} may not use keys labelled {label:?}",
            client.name
        )));
    }
    Ok(())
}

fn parse_algorithm(s: &str) -> Result<Algorithm, ApiError> {
    s.parse().map_err(|e: crate::algorithm::UnknownAlgorithm| {
        ApiError::unprocessable("unknown_algorithm", e.to_string())
    })
}

/// The key, if it exists and the client's policy names its label.
fn key_for(state: &AppState, client: &Client, id: &str) -> Result<KeyRecord, ApiError> {
    let record = state.custody.get(id).ok_or_else(|| {
        ApiError::not_found(
            "key_not_found",
            format!("no key with id {:?}", truncate(id)),
        )
    })?;
    if !client.may_use_label(&record.label) {
        return Err(ApiError::forbidden(format!(
            "client {:?} may not use key {}",
            client.name, record.id
        )));
    }
    Ok(record)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn record_json(r: &KeyRecord) -> serde_json::Value {
    serde_json::to_value(r).expect("records serialise")
}

pub fn list(state: &AppState, client: &Client) -> Result<Resp, ApiError> {
    require(client, Operation::KeysRead)?;
    let keys: Vec<_> = state
        .custody
        .list()
        .iter()
        .filter(|k| client.may_use_label(&k.label))
        .map(record_json)
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"keys": keys})))
}

pub fn get(state: &AppState, client: &Client, id: &str) -> Result<Resp, ApiError> {
    require(client, Operation::KeysRead)?;
    let record = key_for(state, client, id)?;
    Ok(json_response(StatusCode::OK, &record_json(&record)))
}

pub async fn create(
    state: &Arc<AppState>,
    client: &Client,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    let mut audit = Audit::new("create", None);
    let result = async {
        require(client, Operation::KeysCreate)?;
        let body: CreateRequest = read_json(state, req).await?;
        let algorithm = parse_algorithm(&body.algorithm)?;
        check_label(client, &body.label)?;
        let record = state
            .custody
            .create(&client.name, &body.label, algorithm)
            .await?;
        audit.key_id = Some(record.id.clone());
        Ok(json_response(StatusCode::CREATED, &record_json(&record)))
    }
    .await;
    audit.finish(state, client, result).await
}

pub async fn import(
    state: &Arc<AppState>,
    client: &Client,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    let mut audit = Audit::new("import", None);
    let result = async {
        require(client, Operation::KeysImport)?;
        let body: ImportRequest = read_json(state, req).await?;
        let algorithm = parse_algorithm(&body.algorithm)?;
        check_label(client, &body.label)?;
        audit.subject = Some(sha256(body.public_key_pem.as_bytes()));
        let record = state
            .custody
            .import(&client.name, &body.label, algorithm, &body.public_key_pem)
            .await?;
        audit.key_id = Some(record.id.clone());
        Ok(json_response(StatusCode::CREATED, &record_json(&record)))
    }
    .await;
    audit.finish(state, client, result).await
}

pub async fn disable(state: &Arc<AppState>, client: &Client, id: &str) -> Result<Resp, ApiError> {
    let audit = Audit::new("disable", Some(id));
    let result = async {
        require(client, Operation::KeysDisable)?;
        let record = key_for(state, client, id)?;
        let record = state.custody.disable(record).await?;
        Ok(json_response(StatusCode::OK, &record_json(&record)))
    }
    .await;
    audit.finish(state, client, result).await
}

pub async fn destroy(state: &Arc<AppState>, client: &Client, id: &str) -> Result<Resp, ApiError> {
    let audit = Audit::new("destroy", Some(id));
    let result = async {
        require(client, Operation::KeysDestroy)?;
        let record = key_for(state, client, id)?;
        state.custody.destroy(&record).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({"id": record.id, "label": record.label, "state": "destroyed"}),
        ))
    }
    .await;
    audit.finish(state, client, result).await
}

pub async fn sign(
    state: &Arc<AppState>,
    client: &Client,
    id: &str,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    let mut audit = Audit::new("sign", Some(id));
    let result = async {
        require(client, Operation::KeysSign)?;
        let record = key_for(state, client, id)?;
        let body: SignRequest = read_json(state, req).await?;
        let format = parse_format(record.algorithm, body.format.as_deref())?;
        let input = prepare(record.algorithm, &body.item, body.hash.as_deref())?;
        audit.subject = Some(sha256(&input));
        let mut sigs = state.custody.sign(&record, vec![input], format).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "key_id": record.id,
                "algorithm": record.algorithm,
                "format": format.as_str(),
                "signature": hex0x(&sigs.pop().expect("one signature per input")),
            }),
        ))
    }
    .await;
    audit.finish(state, client, result).await
}

pub async fn sign_batch(
    state: &Arc<AppState>,
    client: &Client,
    id: &str,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    let mut audit = Audit::new("sign_batch", Some(id));
    let result = async {
        require(client, Operation::KeysSign)?;
        let record = key_for(state, client, id)?;
        let body: SignBatchRequest = read_json(state, req).await?;
        state.limits.check_items(body.items.len())?;
        let format = parse_format(record.algorithm, body.format.as_deref())?;
        let inputs = body
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                prepare(record.algorithm, item, body.hash.as_deref()).map_err(|mut e| {
                    e.message = format!("items[{i}]: {}", e.message);
                    e
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // One hash over the hashes of every item, in order.
        let mut all = Vec::with_capacity(inputs.len() * 32);
        inputs.iter().for_each(|i| all.extend(sha256(i)));
        audit.subject = Some(sha256(&all));
        let sigs = state.custody.sign(&record, inputs, format).await?;
        let sigs: Vec<_> = sigs.iter().map(|s| hex0x(s)).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "key_id": record.id,
                "algorithm": record.algorithm,
                "format": format.as_str(),
                "signatures": sigs,
            }),
        ))
    }
    .await;
    audit.finish(state, client, result).await
}

fn parse_format(alg: Algorithm, format: Option<&str>) -> Result<SignFormat, ApiError> {
    let format = match format {
        None => SignFormat::default_for(alg),
        Some(f) => SignFormat::parse(f).ok_or_else(|| {
            ApiError::unprocessable(
                "unsupported_format",
                format!("unknown format {:?}; use der, raw or eth", truncate(f)),
            )
        })?,
    };
    crate::custody::check_format(alg, format)?;
    Ok(format)
}

/// The bytes the token signs: a 32-byte digest for ECDSA, the message itself for Ed25519.
fn prepare(alg: Algorithm, item: &SignItem, hash: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let keccak = match hash {
        None | Some("sha256") => false,
        Some("keccak256") if alg == Algorithm::EcdsaSecp256k1 => true,
        Some(h) => {
            return Err(ApiError::unprocessable(
                "unsupported_hash",
                format!("hash {:?} is not available for {alg}", truncate(h)),
            ))
        }
    };
    match (&item.digest, &item.message_b64) {
        (Some(d), None) => {
            if !alg.is_ecdsa() {
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
            Ok(match alg {
                Algorithm::Ed25519 | Algorithm::Sm2 => msg,
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

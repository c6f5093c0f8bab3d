//! `/v1/cas`: parse, call the CA service, render. The service signs through custody and
//! writes the register and the audit line in a task of its own.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::router::{json_response, read_json, Resp};
use super::AppState;
use crate::auth::{Client, Operation};
use crate::bounds;
use crate::ca::{CaRecord, IssuedRecord, NewCa, NewCertificate};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCa {
    #[serde(deserialize_with = "bounds::text::<{ bounds::LABEL }, _>")]
    name: String,
    #[serde(deserialize_with = "bounds::text::<{ bounds::ALGORITHM }, _>")]
    algorithm: String,
    #[serde(deserialize_with = "bounds::text::<{ bounds::SUBJECT }, _>")]
    subject: String,
    #[serde(default, deserialize_with = "bounds::opt::<{ bounds::LABEL }, _>")]
    parent: Option<String>,
    validity_days: u32,
    #[serde(default)]
    path_len: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Issue {
    #[serde(deserialize_with = "bounds::text::<{ bounds::CSR_PEM }, _>")]
    csr_pem: String,
    #[serde(deserialize_with = "bounds::text::<{ bounds::WORD }, _>")]
    profile: String,
    validity_days: u32,
    #[serde(default)]
    san: Vec<San>,
}

#[derive(Deserialize)]
#[serde(transparent)]
struct San(#[serde(deserialize_with = "bounds::text::<{ bounds::SAN }, _>")] String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    #[serde(deserialize_with = "bounds::text::<{ bounds::LABEL }, _>")]
    reason: String,
}

/// Reading the hierarchy takes any of the CA operations.
fn require_any(client: &Client) -> Result<(), ApiError> {
    if [Operation::CaAdmin, Operation::CaIssue, Operation::CaRevoke]
        .iter()
        .any(|o| client.may(*o))
    {
        Ok(())
    } else {
        super::require(client, Operation::CaAdmin)
    }
}

fn ca_json(state: &AppState, ca: &CaRecord) -> serde_json::Value {
    json!({
        "name": ca.name,
        "algorithm": ca.algorithm,
        "key_id": ca.key_id,
        "subject": ca.subject,
        "parent": ca.parent,
        "path_len": ca.path_len,
        "not_after": ca.not_after,
        "created_at": ca.created_at,
        "certificate_pem": ca.certificate_pem,
        "chain_pem": state.cas.chain(&ca.name).unwrap_or_default(),
    })
}

fn issued_json(state: &AppState, r: &IssuedRecord) -> serde_json::Value {
    json!({
        "ca": r.ca,
        "serial": r.serial,
        "subject": r.subject,
        "profile": r.profile,
        "not_after": r.not_after,
        "issued_at": r.issued_at,
        "certificate_pem": r.certificate_pem,
        "chain_pem": state.cas.chain(&r.ca).unwrap_or_default(),
        "revoked": r.revoked.as_ref().map(|v| json!({"reason": v.reason, "at": v.at})),
    })
}

pub fn list(state: &AppState, client: &Client) -> Result<Resp, ApiError> {
    require_any(client)?;
    let cas: Vec<_> = state.cas.list().iter().map(|c| ca_json(state, c)).collect();
    Ok(json_response(StatusCode::OK, &json!({"cas": cas})))
}

pub fn get(state: &AppState, client: &Client, name: &str) -> Result<Resp, ApiError> {
    require_any(client)?;
    let ca = state.cas.get(name)?;
    Ok(json_response(StatusCode::OK, &ca_json(state, &ca)))
}

pub async fn create(
    state: &Arc<AppState>,
    client: &Client,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    super::require(client, Operation::CaAdmin)?;
    let body: CreateCa = read_json(state, req).await?;
    let algorithm: crate::algorithm::Algorithm =
        body.algorithm
            .parse()
            .map_err(|e: crate::algorithm::UnknownAlgorithm| {
                ApiError::unprocessable("unknown_algorithm", e.to_string())
            })?;
    let ca = state
        .cas
        .create(
            &client.principal,
            NewCa {
                name: body.name,
                algorithm,
                subject: body.subject,
                parent: body.parent,
                validity_days: body.validity_days,
                path_len: body.path_len,
            },
        )
        .await?;
    Ok(json_response(StatusCode::CREATED, &ca_json(state, &ca)))
}

pub async fn issue(
    state: &Arc<AppState>,
    client: &Client,
    name: &str,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    super::require(client, Operation::CaIssue)?;
    let body: Issue = read_json(state, req).await?;
    if body.san.len() > 64 {
        return Err(ApiError::bad_request(
            "invalid_request",
            "san: at most 64 names",
        ));
    }
    let issued = state
        .cas
        .issue(
            &client.principal,
            name,
            NewCertificate {
                csr_pem: body.csr_pem,
                profile: body.profile,
                validity_days: body.validity_days,
                san: body.san.into_iter().map(|s| s.0).collect(),
            },
        )
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &issued_json(state, &issued),
    ))
}

pub async fn revoke(
    state: &Arc<AppState>,
    client: &Client,
    name: &str,
    serial: &str,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    super::require(client, Operation::CaRevoke)?;
    let body: Revoke = read_json(state, req).await?;
    let r = state
        .cas
        .revoke(&client.principal, name, serial, body.reason)
        .await?;
    Ok(json_response(StatusCode::OK, &issued_json(state, &r)))
}

pub async fn crl(state: &Arc<AppState>, client: &Client, name: &str) -> Result<Resp, ApiError> {
    require_any(client)?;
    let pem = state.cas.crl(name).await?;
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(pem)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-pem-file"),
    );
    Ok(resp)
}

//! Request dispatch: authentication, routing by method and path, request ids, per-route
//! metrics, and JSON bodies read within the size limit.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::error::ApiError;
use super::AppState;
use super::{cas, keys, ops, transactions, verify};
use crate::auth::Client;
use crate::custody::StateChange;
use crate::metrics as m;

pub type Resp = Response<Full<Bytes>>;

/// `peer_certificate`: the SHA-256 of the client certificate the connection presented (TLS).
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer_certificate: Option<[u8; 32]>,
) -> Resp {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(crate::util::request_id);
    let method = req.method().clone();
    let span = tracing::info_span!("request", id = %request_id, method = %method, path = %req.uri().path());
    // Past the bound the answer is 503; work custody or admission took on goes on, owned
    // by them, and only this answer is lost.
    let bound = std::time::Duration::from_millis(state.limits.max_request_ms);
    let (route, result) = tokio::time::timeout(
        bound,
        dispatch(&state, req, peer_certificate.as_ref()).instrument(span.clone()),
    )
    .await
    .unwrap_or_else(|_| {
        (
            "timed_out",
            Err(ApiError::unavailable(
                "request_timeout",
                format!("the request took longer than {} ms", bound.as_millis()),
            )),
        )
    });
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    metrics::counter!(m::HTTP_REQUESTS_TOTAL, "route" => route, "method" => method_label(&method), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_SECONDS, "route" => route).record(elapsed);
    span.in_scope(|| tracing::debug!(status, elapsed, route, "answered"));
    resp
}

/// Every route label, the unmatched one included (for the metrics exported at zero).
pub const ROUTES: [&str; 18] = [
    "/healthz",
    "/openapi.json",
    "/v1/keys",
    "/v1/keys/import",
    "/v1/keys/{id}",
    "/v1/keys/{id}/disable",
    "/v1/keys/{id}/cancel-deletion",
    "/v1/keys/{id}/sign",
    "/v1/keys/{id}/sign-batch",
    "/v1/verify",
    "/v1/transactions",
    "/v1/transactions/{id}",
    "/v1/cas",
    "/v1/cas/{name}",
    "/v1/cas/{name}/certificates",
    "/v1/cas/{name}/certificates/{serial}/revoke",
    "/v1/cas/{name}/crl",
    "unmatched",
];

/// The methods a route takes.
pub fn allowed(route: &str) -> &'static [Method] {
    match route {
        "/v1/keys" | "/v1/cas" => &[Method::GET, Method::POST],
        "/v1/cas/{name}" | "/v1/cas/{name}/crl" => &[Method::GET],
        "/v1/keys/{id}" => &[Method::GET, Method::DELETE],
        "/healthz" | "/openapi.json" | "/v1/transactions/{id}" => &[Method::GET],
        "unmatched" => &[],
        _ => &[Method::POST],
    }
}

/// The method as a metric label: the standard ones, and `other` for anything a client
/// makes up, so label values (and series) stay a closed set whatever arrives.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

async fn dispatch(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    peer_certificate: Option<&[u8; 32]>,
) -> (&'static str, Result<Resp, ApiError>) {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method().clone();
    let route: &'static str = match segments.as_slice() {
        ["healthz"] => "/healthz",
        ["openapi.json"] => "/openapi.json",
        ["v1", "keys"] => "/v1/keys",
        ["v1", "keys", "import"] => "/v1/keys/import",
        ["v1", "keys", _] => "/v1/keys/{id}",
        ["v1", "keys", _, "disable"] => "/v1/keys/{id}/disable",
        ["v1", "keys", _, "cancel-deletion"] => "/v1/keys/{id}/cancel-deletion",
        ["v1", "keys", _, "sign"] => "/v1/keys/{id}/sign",
        ["v1", "keys", _, "sign-batch"] => "/v1/keys/{id}/sign-batch",
        ["v1", "verify"] => "/v1/verify",
        ["v1", "transactions"] => "/v1/transactions",
        ["v1", "transactions", _] => "/v1/transactions/{id}",
        ["v1", "cas"] => "/v1/cas",
        ["v1", "cas", _] => "/v1/cas/{name}",
        ["v1", "cas", _, "certificates"] => "/v1/cas/{name}/certificates",
        ["v1", "cas", _, "certificates", _, "revoke"] => {
            "/v1/cas/{name}/certificates/{serial}/revoke"
        }
        ["v1", "cas", _, "crl"] => "/v1/cas/{name}/crl",
        _ => {
            discard_body(req, state.limits.max_body_bytes).await;
            return (
                "unmatched",
                Err(ApiError::not_found(
                    "no_route",
                    format!("no route for {path}"),
                )),
            );
        }
    };
    let allowed = allowed(route);
    if !allowed.contains(&method) {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {route}"),
        );
        e.allow = Some(
            allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        );
        discard_body(req, state.limits.max_body_bytes).await;
        return (route, Err(e));
    }
    match route {
        "/healthz" => return (route, Ok(ops::healthz())),
        "/openapi.json" => return (route, Ok(ops::openapi())),
        _ => {}
    }
    let client = match authenticate(state, &req, peer_certificate) {
        Ok(c) => c,
        Err(e) => {
            discard_body(req, state.limits.max_body_bytes).await;
            return (route, Err(e));
        }
    };
    let id = segments.get(2).copied().unwrap_or("").to_string();
    let now = match (route, &method) {
        ("/v1/keys/{id}", &Method::DELETE) => match delete_now(req.uri().query()) {
            Ok(now) => now,
            Err(e) => return (route, Err(e)),
        },
        _ => false,
    };
    let result = match (route, method) {
        ("/v1/keys", Method::GET) => keys::list(state, &client),
        ("/v1/keys", _) => keys::create(state, &client, req).await,
        ("/v1/keys/import", _) => keys::import(state, &client, req).await,
        ("/v1/keys/{id}", Method::GET) => keys::get(state, &client, &id),
        ("/v1/keys/{id}", _) if now => keys::destroy_now(state, &client, &id).await,
        ("/v1/keys/{id}", _) => {
            keys::change(state, &client, &id, StateChange::ScheduleDeletion).await
        }
        ("/v1/keys/{id}/disable", _) => {
            keys::change(state, &client, &id, StateChange::Disable).await
        }
        ("/v1/keys/{id}/cancel-deletion", _) => {
            keys::change(state, &client, &id, StateChange::CancelDeletion).await
        }
        ("/v1/keys/{id}/sign", _) => keys::sign(state, &client, &id, req).await,
        ("/v1/verify", _) => verify::verify(state, &client, req).await,
        ("/v1/transactions", _) => transactions::submit(state, &client, req).await,
        ("/v1/transactions/{id}", _) => transactions::status(state, &client, &id),
        ("/v1/cas", Method::GET) => cas::list(state, &client),
        ("/v1/cas", _) => cas::create(state, &client, req).await,
        ("/v1/cas/{name}", _) => cas::get(state, &client, &id),
        ("/v1/cas/{name}/certificates", _) => cas::issue(state, &client, &id, req).await,
        ("/v1/cas/{name}/certificates/{serial}/revoke", _) => {
            let serial = segments.get(4).copied().unwrap_or("").to_string();
            cas::revoke(state, &client, &id, &serial, req).await
        }
        ("/v1/cas/{name}/crl", _) => cas::crl(state, &client, &id).await,
        _ => keys::sign_batch(state, &client, &id, req).await,
    };
    (route, result)
}

/// Reads and drops what the client still sends, at most `limit` bytes for at most 2 s,
/// before an answer given without the body: closing a socket with unread data makes the
/// kernel send a reset, which can reach the client before the answer does.
async fn discard_body(req: Request<Incoming>, limit: usize) {
    let mut body = req.into_body();
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}

/// `?now=true|false`, the one query parameter the API takes (on `DELETE /v1/keys/{id}`).
fn delete_now(query: Option<&str>) -> Result<bool, ApiError> {
    let mut now = false;
    for p in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        now = match p {
            "now=true" => true,
            "now=false" => false,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "the only query parameter is now=true or now=false",
                ))
            }
        };
    }
    Ok(now)
}

/// A failure is counted (and summarised into the audit log at a bounded rate by the
/// authenticator's owner), never written or fsynced per request.
fn authenticate(
    state: &AppState,
    req: &Request<Incoming>,
    peer_certificate: Option<&[u8; 32]>,
) -> Result<Arc<Client>, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    Ok(state.auth.authenticate(header, peer_certificate)?)
}

/// Reads a JSON body of at most the configured size.
pub async fn read_json<T: DeserializeOwned>(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let limit = state.limits.max_body_bytes;
    let too_large =
        || ApiError::too_large("body_too_large", format!("the body exceeds {limit} bytes"));
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        // Read and drop what the client is still sending (bounded in size and time), so it
        // reads our 413 instead of a connection reset on a half-written body.
        if n <= 4 * limit as u64 {
            discard_body(req, 4 * limit).await;
        }
        return Err(too_large());
    }
    // The base time, plus what the declared length needs at the minimum rate: a large body
    // may take its time, a trickle may not.
    let timeout = std::time::Duration::from_millis(state.limits.body_read_timeout_ms)
        + std::time::Duration::from_secs(
            declared.unwrap_or(0) / state.limits.body_min_bytes_per_second.max(1),
        );
    let collected = tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                hyper::StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the body did not arrive within {} ms", timeout.as_millis()),
            )
        })?;
    let body = collected
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::bad_request("bad_body", "the request body could not be read")
            }
        })?
        .to_bytes();
    // Most bodies are good: read them straight. Only a bad one is read again, tracking
    // the path that names the field at fault (`items[3].signature`), which serde_json
    // alone does not; the tracking cost a signature request about a microsecond.
    if let Ok(value) = serde_json::from_slice(&body) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(&body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        use serde_json::error::Category;
        let field = e.path().to_string();
        let e = e.into_inner();
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
            }
            Category::Data if e.to_string().starts_with(crate::bounds::TOO_LONG) => {
                ApiError::bad_request("field_too_long", format!("{field}: {e}"))
            }
            Category::Data if field == "." => {
                ApiError::bad_request("invalid_request", e.to_string())
            }
            Category::Data => ApiError::bad_request("invalid_request", format!("{field}: {e}")),
        }
    })?;
    de.end().map_err(|e| {
        ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
    })?;
    Ok(value)
}

pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(body).expect("JSON values serialise"),
    )));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

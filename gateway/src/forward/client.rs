//! One HTTP exchange with a ledger node, and what its answer means for delivery: taken,
//! refused for good, or worth another try.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_openssl::client::legacy::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use serde_json::{json, Value};

/// Node answers larger than this are not read.
const MAX_ANSWER: usize = 1 << 20;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for one ledger's nodes, `http://` or `https://`. TLS is 1.2 or later with
/// the certificate and host name verified against the system roots, plus `ca_file` (PEM)
/// when the ledger names one (a private CA for its nodes).
pub fn http_client(ca_file: Option<&std::path::Path>) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    http.enforce_http(false);
    let tls = |e: openssl::error::ErrorStack| format!("TLS client: {e}");
    let mut ssl = SslConnector::builder(SslMethod::tls_client()).map_err(tls)?;
    ssl.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(tls)?;
    if let Some(ca) = ca_file {
        ssl.set_ca_file(ca)
            .map_err(|e| format!("tls_ca_file {}: {e}", ca.display()))?;
    }
    let connector = HttpsConnector::with_connector(http, ssl).map_err(tls)?;
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector))
}

/// The outcome of one delivery attempt.
#[derive(Debug)]
pub enum Sent {
    /// The node took it (or already had it): the node's answer.
    Delivered(String),
    /// The node refused it for good: its message.
    Refused(String),
    /// Not delivered this time: connection, timeout, overload, server error.
    Retry(String),
}

/// A JSON-RPC error object.
#[derive(Debug)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

/// Sends a request and reads the answer within `timeout`. Err: no usable answer.
pub async fn exchange(
    client: &HttpClient,
    method: Method,
    uri: Uri,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| e.to_string())?;
    let work = async {
        let resp = client.request(req).await.map_err(|e| format!("{e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}

/// A JSON-RPC 2.0 call. Outer Err: transport trouble; inner Err: the node's error object.
pub async fn rpc(
    client: &HttpClient,
    uri: &Uri,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<Result<Value, RpcError>, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (status, bytes) = exchange(
        client,
        Method::POST,
        uri.clone(),
        Some(Bytes::from(body.to_string())),
        timeout,
    )
    .await?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {}", lossy(&bytes, 200)));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("not JSON-RPC ({e}): {}", lossy(&bytes, 200)))?;
    if let Some(err) = v.get("error") {
        return Ok(Err(RpcError {
            code: err["code"].as_i64().unwrap_or(0),
            message: err["message"].as_str().unwrap_or("").to_string(),
        }));
    }
    Ok(Ok(v.get("result").cloned().unwrap_or(Value::Null)))
}

/// `eth_sendRawTransaction`, then, when the node refuses, whether it has the transaction
/// anyway: a retry after a lost answer, or a restart, finds it already there ("nonce too
/// low", "already known"); that counts as delivered, so delivery is idempotent by hash.
/// With `ask_first`, the node is asked before anything is sent: a node that has the
/// transaction should not get it twice (ganache, for one, mines a re-sent one again).
pub async fn send_ethereum(
    client: &HttpClient,
    uri: &Uri,
    raw: &[u8],
    id: &[u8; 32],
    ask_first: bool,
    timeout: Duration,
) -> Sent {
    if ask_first {
        match known_ethereum(client, uri, id, timeout).await {
            Ok(true) => return Sent::Delivered("already known to the node".into()),
            Ok(false) => {}
            Err(e) => return Sent::Retry(e),
        }
    }
    let sent = rpc(
        client,
        uri,
        "eth_sendRawTransaction",
        json!([crate::util::hex0x(raw)]),
        timeout,
    )
    .await;
    let err = match sent {
        Err(e) => return Sent::Retry(e),
        Ok(Ok(v)) => return Sent::Delivered(v.as_str().map_or(v.to_string(), str::to_string)),
        Ok(Err(e)) => e,
    };
    let lower = err.message.to_ascii_lowercase();
    if [
        "already known",
        "known transaction",
        "already imported",
        "already exists",
    ]
    .iter()
    .any(|k| lower.contains(k))
    {
        return Sent::Delivered(format!("already known: {}", err.message));
    }
    // Overload and rate limits pass; geth uses -32005 for "limit exceeded".
    if err.code == -32005
        || ["busy", "rate limit", "timeout", "try again"]
            .iter()
            .any(|k| lower.contains(k))
    {
        return Sent::Retry(err.message);
    }
    match known_ethereum(client, uri, id, timeout).await {
        Ok(true) => Sent::Delivered(format!("already known: {}", err.message)),
        Ok(false) => Sent::Refused(format!("{} (code {})", err.message, err.code)),
        Err(e) => Sent::Retry(e),
    }
}

/// Whether the node has the transaction, pending or mined (`eth_getTransactionByHash`).
pub async fn known_ethereum(
    client: &HttpClient,
    uri: &Uri,
    id: &[u8; 32],
    timeout: Duration,
) -> Result<bool, String> {
    match rpc(
        client,
        uri,
        "eth_getTransactionByHash",
        json!([crate::util::hex0x(id)]),
        timeout,
    )
    .await?
    {
        Ok(v) => Ok(!v.is_null()),
        Err(e) => Err(e.message),
    }
}

/// A generic HTTP ledger: the envelope JSON is POSTed. 2xx: taken; 409: already there;
/// other 4xx (but 408 and 429): refused for good; anything else: retry.
pub async fn send_http(client: &HttpClient, uri: &Uri, body: &[u8], timeout: Duration) -> Sent {
    match exchange(
        client,
        Method::POST,
        uri.clone(),
        Some(Bytes::copy_from_slice(body)),
        timeout,
    )
    .await
    {
        Err(e) => Sent::Retry(e),
        Ok((s, b)) if s.is_success() => Sent::Delivered(lossy(&b, 512)),
        Ok((StatusCode::CONFLICT, b)) => {
            Sent::Delivered(format!("already known: {}", lossy(&b, 400)))
        }
        Ok((s, b))
            if s.is_client_error()
                && s != StatusCode::REQUEST_TIMEOUT
                && s != StatusCode::TOO_MANY_REQUESTS =>
        {
            Sent::Refused(format!("HTTP {s}: {}", lossy(&b, 400)))
        }
        Ok((s, b)) => Sent::Retry(format!("HTTP {s}: {}", lossy(&b, 200))),
    }
}

fn lossy(b: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned()
}

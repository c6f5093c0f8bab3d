//! Unauthenticated operations endpoints: liveness, readiness, Prometheus metrics, and the
//! OpenAPI document of the API this binary serves.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::router::{json_response, Resp};
use super::AppState;

pub fn healthz() -> Resp {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// Ready when the HSM anchor session answers, the audit log and the outbox are writable,
/// and every ledger has a healthy node.
pub async fn readyz(state: &AppState) -> Resp {
    let hsm = state.custody.hsm().clone();
    let hsm_ok = tokio::task::spawn_blocking(move || hsm.is_ready())
        .await
        .unwrap_or(false);
    let audit_ok = state.custody.audit().is_healthy();
    let outbox_ok = state.admission.outbox().is_healthy();
    let ledgers_ok = state.admission.forward().ready();
    let ready = hsm_ok && audit_ok && outbox_ok && ledgers_ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": {"hsm": hsm_ok, "audit": audit_ok, "outbox": outbox_ok, "ledgers": ledgers_ok},
        }),
    )
}

pub fn metrics(state: &AppState) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(state.metrics.render())));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The OpenAPI 3.1 document, built into the binary so it always matches the routes.
pub fn openapi() -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(
        include_str!("../../openapi.json").as_bytes(),
    )));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

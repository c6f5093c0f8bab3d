//! The operations listener (liveness, readiness, Prometheus metrics; loopback by default,
//! no token), readiness computed in the background, and the OpenAPI document, which the
//! API listener serves beside `/healthz`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;

use std::sync::atomic::{AtomicBool, Ordering};

use hyper::body::Incoming;
use hyper::{Method, Request};

use super::error::ApiError;
use super::router::{json_response, Resp};
use super::AppState;

pub fn healthz() -> Resp {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// Readiness, computed in the background once a second and read here for free: a probe
/// never waits on the HSM (its check takes the anchor session's lock).
#[derive(Default)]
pub struct Readiness {
    hsm: AtomicBool,
    audit: AtomicBool,
    outbox: AtomicBool,
    ledgers: AtomicBool,
}

impl Readiness {
    /// Checks once now, then every second for the life of the process.
    pub async fn start(state: &std::sync::Arc<AppState>) {
        Self::check(state).await;
        let state = std::sync::Arc::downgrade(state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(state) = state.upgrade() else { return };
                Self::check(&state).await;
            }
        });
    }

    async fn check(state: &AppState) {
        let hsm = state.custody.hsm().clone();
        let hsm_ok = tokio::task::spawn_blocking(move || hsm.is_ready())
            .await
            .unwrap_or(false);
        let r = &state.readiness;
        r.hsm.store(hsm_ok, Ordering::Relaxed);
        r.audit
            .store(state.custody.audit().is_healthy(), Ordering::Relaxed);
        r.outbox
            .store(state.admission.outbox().is_healthy(), Ordering::Relaxed);
        r.ledgers
            .store(state.admission.forward().ready(), Ordering::Relaxed);
    }
}

/// Ready when the HSM anchor session answers, the audit log and the outbox are writable,
/// and every ledger has a healthy node (as last checked, at most a second ago).
pub fn readyz(state: &AppState) -> Resp {
    let r = &state.readiness;
    let [hsm_ok, audit_ok, outbox_ok, ledgers_ok] =
        [&r.hsm, &r.audit, &r.outbox, &r.ledgers].map(|b| b.load(Ordering::Relaxed));
    // A lost device is known at once, not at the next check.
    let hsm_down = state.custody.hsm().unavailable();
    let hsm_ok = hsm_ok && hsm_down.is_none();
    let ready = hsm_ok && audit_ok && outbox_ok && ledgers_ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &{
        let mut body = json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": {"hsm": hsm_ok, "audit": audit_ok, "outbox": outbox_ok, "ledgers": ledgers_ok},
        });
        if let Some(why) = hsm_down {
            body["hsm_detail"] = why.into();
        }
        body
    })
}

/// The operations listener: `/metrics`, `/readyz`, `/healthz`, GET only, no token.
pub async fn handle(state: std::sync::Arc<AppState>, req: Request<Incoming>) -> Resp {
    let route = match req.uri().path() {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => {
            return ApiError::not_found(
                "no_route",
                "the operations listener serves /metrics, /readyz and /healthz",
            )
            .into_response()
        }
    };
    if req.method() != Method::GET {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("only GET on {route}"),
        );
        e.allow = Some("GET".into());
        return e.into_response();
    }
    match route {
        "/healthz" => healthz(),
        "/readyz" => readyz(&state),
        _ => metrics(&state),
    }
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

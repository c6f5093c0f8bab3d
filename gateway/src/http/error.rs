//! The one mapping from every module's errors to an HTTP status and a stable error code.
//! Bodies are always `{"error": {"code", "message"}}`; messages never carry secrets.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use crate::admission::AdmissionError;
use crate::audit::AuditError;
use crate::auth::AuthError;
use crate::custody::hsm::HsmError;
use crate::custody::CustodyError;
use crate::outbox::OutboxError;
use crate::verify::EngineError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    /// For 405: the methods the route takes (RFC 9110 requires the header).
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    /// 429 `quota_exceeded`, retry after `secs`.
    pub fn over_quota(message: impl Into<String>, secs: u64) -> Self {
        ApiError {
            retry_after: Some(secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message)
        }
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::busy(code, message)
    }

    fn busy(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = super::router::json_response(self.status, &body);
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(hyper::header::RETRY_AFTER, secs.into());
        }
        if let Some(allow) = self.allow.and_then(|a| a.parse().ok()) {
            resp.headers_mut().insert(hyper::header::ALLOW, allow);
        }
        resp
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        ApiError::busy("audit_unavailable", e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Overloaded { .. } => ApiError::busy("verify_overloaded", e.to_string()),
            EngineError::Stopped => ApiError::busy("verify_unavailable", e.to_string()),
        }
    }
}

impl From<OutboxError> for ApiError {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Full(_) => ApiError::busy("outbox_full", e.to_string()),
            _ => {
                tracing::error!(error = %e, "outbox unavailable");
                ApiError::busy("outbox_unavailable", e.to_string())
            }
        }
    }
}

impl From<HsmError> for ApiError {
    fn from(e: HsmError) -> Self {
        match e {
            HsmError::Busy(_) => ApiError::busy("hsm_busy", e.to_string()),
            HsmError::KeyMissing(_) | HsmError::KeyAmbiguous(_) | HsmError::Sealed => {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "key_object_error",
                    e.to_string(),
                )
            }
            HsmError::Stopped | HsmError::Unavailable(_) => {
                ApiError::busy("hsm_unavailable", e.to_string())
            }
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "hsm_error", e.to_string()),
        }
    }
}

impl From<CustodyError> for ApiError {
    fn from(e: CustodyError) -> Self {
        let code = e.code();
        let msg = e.to_string();
        match e {
            CustodyError::Hsm(h) => h.into(),
            CustodyError::Audit(a) => a.into(),
            CustodyError::Stopped => ApiError::busy(code, msg),
            CustodyError::NotFound(_) => ApiError::not_found(code, msg),
            CustodyError::Forbidden(_) => ApiError::forbidden(msg),
            CustodyError::DuplicateLabel(_) | CustodyError::NotPendingDeletion(_) => {
                ApiError::new(StatusCode::CONFLICT, code, msg)
            }
            CustodyError::Signature(_) | CustodyError::Store(_) => {
                tracing::error!(error = %msg, "internal error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code, msg)
            }
            CustodyError::UnsupportedAlgorithm { .. }
            | CustodyError::WrapUnavailable(_)
            | CustodyError::UnsupportedFormat { .. }
            | CustodyError::Disabled(_)
            | CustodyError::PendingDeletion(_)
            | CustodyError::VerifyOnly(_)
            | CustodyError::ObjectMissing(_)
            | CustodyError::PublicKey(_) => ApiError::unprocessable(code, msg),
        }
    }
}

impl From<AdmissionError> for ApiError {
    fn from(e: AdmissionError) -> Self {
        let msg = e.to_string();
        match e {
            AdmissionError::UnknownLedger(_) => ApiError::not_found("unknown_ledger", msg),
            AdmissionError::TooMany(_) => ApiError::too_large("too_many_items", msg),
            AdmissionError::Empty => ApiError::bad_request("invalid_request", msg),
            AdmissionError::Quota { retry_after, .. } => ApiError::over_quota(msg, retry_after),
            AdmissionError::LedgerUnavailable => ApiError::busy("ledger_unavailable", msg),
            AdmissionError::Engine(e) => e.into(),
            AdmissionError::Outbox(e) => e.into(),
            AdmissionError::Stopped => ApiError::busy("outbox_unavailable", msg),
        }
    }
}

impl From<crate::ca::CaError> for ApiError {
    fn from(e: crate::ca::CaError) -> Self {
        use crate::ca::CaError;
        let code = e.code();
        let msg = e.to_string();
        match e {
            CaError::Custody(c) => c.into(),
            CaError::UnknownCa(_) | CaError::UnknownCertificate(..) => {
                ApiError::not_found(code, msg)
            }
            CaError::Exists(_) | CaError::AlreadyRevoked(_) => {
                ApiError::new(StatusCode::CONFLICT, code, msg)
            }
            CaError::Invalid(_) | CaError::X509(_) => ApiError::bad_request(code, msg),
            CaError::Csr(_) => ApiError::unprocessable(code, msg),
            CaError::Store { .. } | CaError::Stopped => {
                tracing::error!(error = %msg, "CA register");
                ApiError::busy("ca_unavailable", msg)
            }
        }
    }
}

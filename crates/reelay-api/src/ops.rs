//! Health and metrics endpoints for load balancers, orchestrators and Prometheus.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reelay_core::AccountId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::openapi::{NoErrors, error_set};
use crate::{ApiError, AppState, ErrorCode};

error_set!(MetricsErrors = [Unauthorized, Forbidden]);

/// What `/healthz` and `/readyz` answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Health)]
pub struct HealthView {
    /// `ok` (`/healthz`), `ready` or `unavailable` (`/readyz`).
    status: &'static str,
}

/// Who may read the operator routes (`/metrics`).
#[derive(Clone)]
pub enum AdminAccess {
    /// Callers presenting `Authorization: Bearer <token>`; only the token's digest is kept.
    Token([u8; 32]),
    /// Anyone who can reach the port: `reelay dev` on loopback only.
    Open,
    /// Nobody: no admin token is configured.
    Closed,
}

impl AdminAccess {
    pub fn token(token: &str) -> Self {
        Self::Token(Sha256::digest(token.as_bytes()).into())
    }

    fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let expected = match self {
            Self::Open => return Ok(()),
            Self::Closed => {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "operator routes are off: set REELAY_ADMIN_TOKEN and send it as \
                     `Authorization: Bearer <token>`",
                ));
            }
            Self::Token(digest) => digest,
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| Sha256::digest(token.trim().as_bytes()));
        // Digests have a fixed length, so the comparison leaks nothing about the token.
        match presented {
            Some(p) if bool::from(p.as_slice().ct_eq(expected)) => Ok(()),
            _ => Err(ApiError::unauthorized(
                "operator routes need `Authorization: Bearer <REELAY_ADMIN_TOKEN>`",
            )),
        }
    }
}

/// Alive and accepting requests.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    summary = "Alive and accepting requests",
    responses((status = 200, description = "Alive.",
        body = HealthView, example = json!({"status": "ok"})), NoErrors),
)]
pub async fn healthz() -> Json<HealthView> {
    Json(HealthView { status: "ok" })
}

/// Ready to serve: the storage answers. Why not is for the operator's log, not the caller.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    summary = "Ready: the database answers",
    responses(
        (status = 200, description = "Ready.",
        body = HealthView, example = json!({"status": "ready"})),
        (status = 503, description = "The database does not answer (the log says why).",
            body = HealthView, example = json!({"status": "unavailable"})),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<HealthView>) {
    match state.store.account(AccountId(uuid::Uuid::nil())).await {
        Ok(_) => (StatusCode::OK, Json(HealthView { status: "ready" })),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: storage does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(HealthView {
                    status: "unavailable",
                }),
            )
        }
    }
}

/// Prometheus exposition; the delivery counts are read from storage at each scrape.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    summary = "Prometheus metrics",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The Prometheus text exposition.",
            content_type = "text/plain; version=0.0.4", body = String),
        (status = 404, description = "Metrics are turned off (plain text).",
            content_type = "text/plain", body = String),
        MetricsErrors,
    ),
)]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = state.admin.check(&headers) {
        return e.into_response();
    }
    let Some(render) = &state.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are disabled").into_response();
    };
    match state.store.delivery_counts(state.store.now()).await {
        Ok(counts) => reelay_delivery::metrics::waiting(counts),
        Err(e) => tracing::warn!(error = %e, "reading delivery counts for metrics failed"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(),
    )
        .into_response()
}

//! Health and metrics endpoints for load balancers, orchestrators and Prometheus.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use reelay_core::AccountId;
use serde_json::{Value, json};

use crate::AppState;

/// Alive and accepting requests.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready to serve: the storage answers.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.store.account(AccountId(uuid::Uuid::nil())).await {
        Ok(_) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": e.to_string()})),
        ),
    }
}

/// Prometheus exposition; the delivery counts are read from storage at each scrape.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(render) = &state.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are disabled").into_response();
    };
    match state
        .store
        .delivery_counts(time::OffsetDateTime::now_utc())
        .await
    {
        Ok(counts) => reelay_delivery::metrics::waiting(counts),
        Err(e) => tracing::warn!(error = %e, "reading delivery counts for metrics failed"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(),
    )
        .into_response()
}

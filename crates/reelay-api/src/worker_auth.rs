//! Worker tokens: the extractor that turns `Authorization: Bearer rlw_…` into a worker.
//!
//! Looked up only among worker tokens (their own table), so an API key is never a worker token
//! and a worker token never an API key: each kind opens only its own routes.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use reelay_core::apikey::KeyHash;
use reelay_store::WorkerInfo;

use crate::{ApiError, AppState};

/// The worker a request comes from, proven by a live worker token.
pub struct WorkerCaller(pub WorkerInfo);

impl FromRequestParts<AppState> for WorkerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "send `Authorization: Bearer <worker token>` (made by `reelay workers create`)",
                )
            })?;
        match state.store.authenticate_worker(KeyHash::of(token)).await? {
            Some(worker) => Ok(WorkerCaller(worker)),
            None => Err(ApiError::unauthorized(
                "the worker token is not valid: it is unknown or was revoked (API keys are not \
                 worker tokens)",
            )),
        }
    }
}

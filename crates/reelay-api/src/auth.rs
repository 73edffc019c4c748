//! Bearer API keys: the extractor that turns `Authorization: Bearer <key>` into an account.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use reelay_core::AccountId;
use reelay_core::apikey::KeyHash;

use crate::{ApiError, AppState};

/// The account a request acts for, proven by a live API key.
pub struct Caller(pub AccountId);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized(
                "missing Authorization header; send `Authorization: Bearer <your API key>`",
            )
        })?;
        let key = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .filter(|key| !key.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "malformed Authorization header; it must read `Bearer <your API key>`",
                )
            })?;
        match state.store.authenticate(KeyHash::of(key)).await? {
            Some(key) => Ok(Caller(key.account_id)),
            None => Err(ApiError::unauthorized(
                "the API key is not valid: it is unknown or was revoked",
            )),
        }
    }
}

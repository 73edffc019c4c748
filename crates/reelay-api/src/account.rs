//! The caller's account and balance.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::{ApiError, AppState};

pub async fn balance(
    State(state): State<AppState>,
    Caller(account): Caller,
) -> Result<Json<Value>, ApiError> {
    let account = state
        .store
        .account(account)
        .await?
        .ok_or_else(ApiError::internal)?;
    Ok(Json(json!({"balance": account.balance.to_string()})))
}

pub async fn account(
    State(state): State<AppState>,
    Caller(account): Caller,
) -> Result<Json<Value>, ApiError> {
    let account = state
        .store
        .account(account)
        .await?
        .ok_or_else(ApiError::internal)?;
    Ok(Json(json!({
        "account_id": account.id.to_string(),
        "name": account.name,
        "balance": account.balance.to_string(),
        "created_at": reelay_webhooks::timestamp::format(account.created_at),
    })))
}

//! The caller's account and balance.

use axum::Json;
use axum::extract::State;
use reelay_store::Account;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::{ApiError, AppState};

async fn load(state: &AppState, Caller(account): Caller) -> Result<Account, ApiError> {
    // A live key whose account is gone would be a storage fault, not the caller's.
    state
        .store
        .account(account)
        .await?
        .ok_or_else(ApiError::internal)
}

pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let account = load(&state, caller).await?;
    Ok(Json(json!({"balance": account.balance.to_string()})))
}

pub async fn account(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let account = load(&state, caller).await?;
    Ok(Json(json!({
        "account_id": account.id.to_string(),
        "name": account.name,
        "balance": account.balance.to_string(),
        "created_at": reelay_webhooks::timestamp::format(account.created_at),
    })))
}

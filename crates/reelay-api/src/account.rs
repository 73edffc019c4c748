//! The caller's account and balance.

use axum::Json;
use axum::extract::State;
use reelay_store::Account;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::openapi::error_set;
use crate::{ApiError, AppState};

error_set!(AccountErrors = [Unauthorized, Maintenance]);

#[derive(Serialize, ToSchema)]
#[schema(as = Balance)]
pub struct BalanceView {
    /// Credits, four decimals.
    #[schema(example = "12.5000")]
    balance: String,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Account)]
pub struct AccountView {
    #[schema(format = Uuid)]
    account_id: String,
    name: String,
    #[schema(example = "12.5000")]
    balance: String,
    #[schema(example = "2025-12-06T21:43:03.374000")]
    created_at: String,
}

async fn load(state: &AppState, Caller(account): Caller) -> Result<Account, ApiError> {
    // A live key whose account is gone would be a storage fault, not the caller's.
    state
        .store
        .account(account)
        .await?
        .ok_or_else(ApiError::internal)
}

#[utoipa::path(
    get,
    path = "/v1/data/balance",
    tag = "account",
    summary = "The account's credit balance",
    security(("api_key" = [])),
    responses((status = 200, description = "The balance.",
        body = BalanceView), AccountErrors),
)]
pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<BalanceView>, ApiError> {
    let account = load(&state, caller).await?;
    Ok(Json(BalanceView {
        balance: account.balance.to_string(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/account",
    tag = "account",
    summary = "The account the key belongs to",
    security(("api_key" = [])),
    responses((status = 200, description = "The account.",
        body = AccountView), AccountErrors),
)]
pub async fn account(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<AccountView>, ApiError> {
    let account = load(&state, caller).await?;
    Ok(Json(AccountView {
        account_id: account.id.to_string(),
        name: account.name,
        balance: account.balance.to_string(),
        created_at: reelay_webhooks::timestamp::format(account.created_at),
    }))
}

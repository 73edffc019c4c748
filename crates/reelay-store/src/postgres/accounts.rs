//! Accounts, their keys, credits and ledger, and worker tokens.

use async_trait::async_trait;
use reelay_core::apikey::KeyHash;
use reelay_core::money::BalanceError;
use reelay_core::{AccountId, Credits, GenerationId, GenerationStatus, KeyId};
use time::OffsetDateTime;

use super::PgStore;
use crate::*;

#[async_trait]
impl AccountStore for PgStore {
    async fn create_account(
        &self,
        name: &str,
        credits: Credits,
        now: OffsetDateTime,
    ) -> StoreResult<Account> {
        todo!("postgres: create_account")
    }

    async fn account(&self, id: AccountId) -> StoreResult<Option<Account>> {
        todo!("postgres: account")
    }

    async fn account_by_name(&self, name: &str) -> StoreResult<Option<Account>> {
        todo!("postgres: account_by_name")
    }

    async fn add_credits(
        &self,
        id: AccountId,
        amount: Credits,
        now: OffsetDateTime,
    ) -> StoreResult<Result<Credits, BalanceError>> {
        todo!("postgres: add_credits")
    }

    async fn create_key(&self, key: NewKey, now: OffsetDateTime) -> StoreResult<ApiKeyInfo> {
        todo!("postgres: create_key")
    }

    async fn list_keys(&self, account: Option<AccountId>) -> StoreResult<Vec<ApiKeyInfo>> {
        todo!("postgres: list_keys")
    }

    async fn revoke_key(&self, id: KeyId, now: OffsetDateTime) -> StoreResult<bool> {
        todo!("postgres: revoke_key")
    }

    async fn authenticate(&self, hash: KeyHash) -> StoreResult<Option<AccountId>> {
        todo!("postgres: authenticate")
    }

    async fn create_worker(&self, new: NewWorker, now: OffsetDateTime) -> StoreResult<WorkerInfo> {
        todo!("postgres: create_worker")
    }

    async fn list_workers(&self) -> StoreResult<Vec<WorkerInfo>> {
        todo!("postgres: list_workers")
    }

    async fn revoke_worker(&self, id: &str, now: OffsetDateTime) -> StoreResult<bool> {
        todo!("postgres: revoke_worker")
    }

    async fn authenticate_worker(&self, hash: KeyHash) -> StoreResult<Option<WorkerInfo>> {
        todo!("postgres: authenticate_worker")
    }
}

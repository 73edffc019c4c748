//! Webhook signing secrets.

use async_trait::async_trait;
use reelay_core::apikey::KeyHash;
use reelay_core::money::BalanceError;
use reelay_core::{AccountId, Credits, GenerationId, GenerationStatus, KeyId};
use time::OffsetDateTime;

use super::PgStore;
use crate::*;

#[async_trait]
impl SecretStore for PgStore {
    async fn signing_secrets(
        &self,
        account: AccountId,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<SealedSecret>> {
        todo!("postgres: signing_secrets")
    }

    async fn add_signing_secret(
        &self,
        account: AccountId,
        sealed: Vec<u8>,
        now: OffsetDateTime,
    ) -> StoreResult<bool> {
        todo!("postgres: add_signing_secret")
    }

    async fn rotate_signing_secret(
        &self,
        account: AccountId,
        sealed: Vec<u8>,
        now: OffsetDateTime,
        rotation: Rotation,
    ) -> StoreResult<Rotated> {
        todo!("postgres: rotate_signing_secret")
    }
}

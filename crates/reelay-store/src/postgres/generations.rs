//! Generations: creation with its charge, the queue under SKIP LOCKED claims, the terminal
//! transition with its refund and outbox event.

use async_trait::async_trait;
use reelay_core::apikey::KeyHash;
use reelay_core::money::BalanceError;
use reelay_core::{AccountId, Credits, GenerationId, GenerationStatus, KeyId};
use time::OffsetDateTime;

use deadpool_postgres::GenericClient;

use super::rows::{GENERATION_COLUMNS, generation};
use super::{PgStore, backend};
use crate::*;

/// One generation, read on any client (a pooled connection or a transaction).
pub(super) async fn get(
    c: &impl GenericClient,
    id: GenerationId,
) -> StoreResult<Option<Generation>> {
    let statement = c
        .prepare_cached(&format!(
            "SELECT {GENERATION_COLUMNS} FROM generations WHERE id = $1"
        ))
        .await
        .map_err(backend)?;
    c.query_opt(&statement, &[&id.0])
        .await
        .map_err(backend)?
        .as_ref()
        .map(generation)
        .transpose()
}

#[async_trait]
impl GenerationStore for PgStore {
    async fn create_generation(&self, new: NewGeneration) -> StoreResult<Created> {
        todo!("postgres: create_generation")
    }

    async fn generation(&self, id: GenerationId) -> StoreResult<Option<Generation>> {
        get(&self.conn().await?, id).await
    }

    async fn list_generations(
        &self,
        account: AccountId,
        status: Option<GenerationStatus>,
        limit: u32,
        offset: u64,
    ) -> StoreResult<Page<Generation>> {
        todo!("postgres: list_generations")
    }

    async fn pending_before(&self, created_at: OffsetDateTime) -> StoreResult<u64> {
        todo!("postgres: pending_before")
    }

    async fn claim(
        &self,
        owner: &str,
        limit: usize,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<Generation>> {
        todo!("postgres: claim")
    }

    async fn heartbeat(
        &self,
        id: GenerationId,
        owner: &str,
        lease_until: OffsetDateTime,
        progress_pct: u8,
    ) -> StoreResult<bool> {
        todo!("postgres: heartbeat")
    }

    async fn finish(
        &self,
        id: GenerationId,
        by: Finisher<'_>,
        outcome: Outcome,
        now: OffsetDateTime,
    ) -> StoreResult<Finished> {
        todo!("postgres: finish")
    }

    async fn overdue(&self, now: OffsetDateTime, limit: usize) -> StoreResult<Vec<GenerationId>> {
        todo!("postgres: overdue")
    }

    async fn next_deadline(&self) -> StoreResult<Option<OffsetDateTime>> {
        todo!("postgres: next_deadline")
    }

    async fn release_leases(&self, owner: &str) -> StoreResult<u64> {
        todo!("postgres: release_leases")
    }

    async fn claim_models(
        &self,
        owner: &str,
        limit: usize,
        models: Vec<reelay_core::Model>,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<Generation>> {
        todo!("postgres: claim_models")
    }

    async fn ended_lease(&self, id: GenerationId) -> StoreResult<Option<String>> {
        todo!("postgres: ended_lease")
    }

    async fn lease_holder(&self, id: GenerationId) -> StoreResult<Option<String>> {
        todo!("postgres: lease_holder")
    }

    async fn media_to_prune(
        &self,
        before: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredMedia>> {
        todo!("postgres: media_to_prune")
    }

    async fn mark_media_pruned(
        &self,
        ids: Vec<GenerationId>,
        now: OffsetDateTime,
    ) -> StoreResult<()> {
        todo!("postgres: mark_media_pruned")
    }

    async fn prune_records(&self, before: OffsetDateTime, limit: usize) -> StoreResult<u64> {
        todo!("postgres: prune_records")
    }

    async fn prunable(
        &self,
        media_before: OffsetDateTime,
        records_before: OffsetDateTime,
    ) -> StoreResult<Prunable> {
        todo!("postgres: prunable")
    }
}

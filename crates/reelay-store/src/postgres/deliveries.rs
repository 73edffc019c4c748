//! Webhook deliveries on the outbox rows.

use async_trait::async_trait;
use reelay_core::apikey::KeyHash;
use reelay_core::money::BalanceError;
use reelay_core::{AccountId, Credits, GenerationId, GenerationStatus, KeyId};
use time::OffsetDateTime;

use super::PgStore;
use crate::*;

#[async_trait]
impl DeliveryStore for PgStore {
    async fn event_for(&self, generation: GenerationId) -> StoreResult<Option<Event>> {
        todo!("postgres: event_for")
    }

    async fn due_for_destination(
        &self,
        destination: &str,
        limit: usize,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<String>> {
        todo!("postgres: due_for_destination")
    }

    async fn scan_due(
        &self,
        now: OffsetDateTime,
        after: Option<String>,
        skip: Vec<String>,
        per_destination: usize,
        limit: usize,
    ) -> StoreResult<Vec<DueRef>> {
        todo!("postgres: scan_due")
    }

    async fn lease_deliveries(
        &self,
        owner: &str,
        event_ids: Vec<String>,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<DueDelivery>> {
        todo!("postgres: lease_deliveries")
    }

    async fn record_attempt(&self, attempt: AttemptRecord) -> StoreResult<bool> {
        todo!("postgres: record_attempt")
    }

    async fn release_delivery(
        &self,
        event_id: &str,
        owner: &str,
        at: OffsetDateTime,
    ) -> StoreResult<()> {
        todo!("postgres: release_delivery")
    }

    async fn release_delivery_leases(&self, owner: &str, now: OffsetDateTime) -> StoreResult<u64> {
        todo!("postgres: release_delivery_leases")
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<OffsetDateTime>> {
        todo!("postgres: next_delivery_due")
    }

    async fn attempts(&self, event_id: &str) -> StoreResult<Vec<Attempt>> {
        todo!("postgres: attempts")
    }

    async fn redeliver(
        &self,
        generation: GenerationId,
        now: OffsetDateTime,
    ) -> StoreResult<Redelivery> {
        todo!("postgres: redeliver")
    }

    async fn redeliver_failed(
        &self,
        account: AccountId,
        since: OffsetDateTime,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<u64> {
        todo!("postgres: redeliver_failed")
    }

    async fn delivery_counts(&self, now: OffsetDateTime) -> StoreResult<DeliveryCounts> {
        todo!("postgres: delivery_counts")
    }
}

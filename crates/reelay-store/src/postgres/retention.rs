//! Retention: each call reads the oldest finished generations in a partial index's order, at
//! most `limit` of them; records are deleted in one transaction that locks what it deletes,
//! so two nodes pruning at once take different rows.

use reelay_core::GenerationId;
use time::OffsetDateTime;
use uuid::Uuid;

use super::rows::get;
use super::sql::{execute, query, query_one};
use super::{PgStore, backend};
use crate::*;

pub async fn media_to_prune(
    store: &PgStore,
    before: OffsetDateTime,
    limit: usize,
) -> StoreResult<Vec<ExpiredMedia>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    query(
        &store.conn().await?,
        "SELECT id, video_file, inputs <> '' AS has_inputs FROM generations \
         WHERE completed_at IS NOT NULL AND media_pruned_at IS NULL AND completed_at < $1 \
         ORDER BY completed_at LIMIT $2",
        &[&before, &limit],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(ExpiredMedia {
            id: GenerationId(get(r, "id")?),
            video_file: get(r, "video_file")?,
            has_inputs: get(r, "has_inputs")?,
        })
    })
    .collect()
}

pub async fn mark_media_pruned(
    store: &PgStore,
    ids: Vec<GenerationId>,
    now: OffsetDateTime,
) -> StoreResult<()> {
    let ids: Vec<Uuid> = ids.into_iter().map(|id| id.0).collect();
    execute(
        &store.conn().await?,
        "UPDATE generations SET media_pruned_at = $2 \
         WHERE id = ANY($1) AND media_pruned_at IS NULL",
        &[&ids, &now],
    )
    .await
    .map(drop)
}

/// Deletes up to `limit` generations whose media are gone and which ended before `before`,
/// with their events, attempt logs and idempotency keys; never one whose webhook is still
/// being delivered. The ledger keeps their ids.
pub async fn prune_records(
    store: &PgStore,
    before: OffsetDateTime,
    limit: usize,
) -> StoreResult<u64> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut conn = store.conn().await?;
    let tx = conn.transaction().await.map_err(backend)?;
    let doomed: Vec<Uuid> = query(
        &tx,
        "SELECT id FROM generations \
         WHERE media_pruned_at IS NOT NULL AND completed_at < $1 \
         ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        &[&before, &limit],
    )
    .await?
    .iter()
    .map(|r| get(r, "id"))
    .collect::<StoreResult<_>>()?;
    if doomed.is_empty() {
        return Ok(0);
    }
    // Their events are locked before they are judged: a redelivery racing this prune
    // either made its event pending first (and keeps the generation) or waits and finds it gone.
    execute(
        &tx,
        "SELECT 1 FROM events WHERE generation_id = ANY($1) ORDER BY generation_id FOR UPDATE",
        &[&doomed],
    )
    .await?;
    let doomed: Vec<Uuid> = query(
        &tx,
        "SELECT g FROM unnest($1::uuid[]) AS g \
         WHERE NOT EXISTS (SELECT 1 FROM events e \
             WHERE e.generation_id = g AND e.state = 'pending')",
        &[&doomed],
    )
    .await?
    .iter()
    .map(|r| get(r, "g"))
    .collect::<StoreResult<_>>()?;
    for sql in [
        "DELETE FROM delivery_attempts WHERE event_id IN \
             (SELECT id FROM events WHERE generation_id = ANY($1))",
        "DELETE FROM events WHERE generation_id = ANY($1)",
        "DELETE FROM idempotency_keys WHERE generation_id = ANY($1)",
        "DELETE FROM generations WHERE id = ANY($1)",
    ] {
        execute(&tx, sql, &[&doomed]).await?;
    }
    tx.commit().await.map_err(backend)?;
    Ok(doomed.len() as u64)
}

pub async fn prunable(
    store: &PgStore,
    media_before: OffsetDateTime,
    records_before: OffsetDateTime,
) -> StoreResult<Prunable> {
    let conn = store.conn().await?;
    let count = |sql: &'static str, before: OffsetDateTime| {
        let conn = &conn;
        async move {
            let row = query_one(conn, sql, &[&before]).await?;
            get::<i64>(&row, "n").map(|n| n as u64)
        }
    };
    Ok(Prunable {
        media: count(
            "SELECT COUNT(*) AS n FROM generations \
             WHERE completed_at IS NOT NULL AND media_pruned_at IS NULL AND completed_at < $1",
            media_before,
        )
        .await?,
        // What a prune run now would reach: media pruned already or due now, then past the
        // records' limit.
        records: count(
            "SELECT COUNT(*) AS n FROM generations \
             WHERE completed_at IS NOT NULL AND completed_at < $1",
            records_before.min(media_before),
        )
        .await?,
    })
}

//! Retention in SQLite: each call reads the oldest finished generations from its partial index,
//! in order, at most `limit` of them, and writes in one transaction, so a prune of any size
//! goes by small batches that never hold the writer for long.

use reelay_core::GenerationId;
use rusqlite::{Connection, params};
use time::OffsetDateTime;

use super::backend;
use super::rows::{micros, parsed};
use crate::*;

pub fn media_to_prune(
    c: &Connection,
    before: OffsetDateTime,
    limit: usize,
) -> StoreResult<Vec<ExpiredMedia>> {
    c.prepare_cached(
        "SELECT id, video_file, inputs != '' FROM generations \
         INDEXED BY generations_media_to_prune \
         WHERE completed_at IS NOT NULL AND media_pruned_at IS NULL AND completed_at < ?1 \
         ORDER BY completed_at LIMIT ?2",
    )
    .and_then(|mut s| {
        s.query_map(params![micros(before), limit as i64], |r| {
            Ok(ExpiredMedia {
                id: parsed::<GenerationId>(r, 0)?,
                video_file: r.get(1)?,
                has_inputs: r.get(2)?,
            })
        })?
        .collect()
    })
    .map_err(backend)
}

pub fn mark_media_pruned(
    c: &Connection,
    ids: &[GenerationId],
    now: OffsetDateTime,
) -> StoreResult<()> {
    let mut mark = c
        .prepare_cached(
            "UPDATE generations SET media_pruned_at = ?2 \
             WHERE id = ?1 AND media_pruned_at IS NULL",
        )
        .map_err(backend)?;
    for id in ids {
        mark.execute(params![id.to_string(), micros(now)])
            .map_err(backend)?;
    }
    Ok(())
}

/// Deletes up to `limit` generations whose media are gone and which ended before `before`,
/// with their events, attempt logs and idempotency keys; never one whose webhook is still
/// being delivered. The ledger keeps their ids.
pub fn prune_records(c: &Connection, before: OffsetDateTime, limit: usize) -> StoreResult<u64> {
    c.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS pruning (id TEXT PRIMARY KEY); DELETE FROM pruning;",
    )
    .map_err(backend)?;
    let n = c
        .prepare_cached(
            "INSERT INTO pruning (id) SELECT g.id FROM generations g \
             INDEXED BY generations_records_to_prune \
             WHERE g.media_pruned_at IS NOT NULL AND g.completed_at < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM events e \
                     WHERE e.generation_id = g.id AND e.state = 'pending') \
             ORDER BY g.completed_at LIMIT ?2",
        )
        .and_then(|mut s| s.execute(params![micros(before), limit as i64]))
        .map_err(backend)?;
    if n == 0 {
        return Ok(0);
    }
    c.execute_batch(
        "DELETE FROM delivery_attempts WHERE event_id IN \
             (SELECT id FROM events WHERE generation_id IN (SELECT id FROM pruning)); \
         DELETE FROM events WHERE generation_id IN (SELECT id FROM pruning); \
         DELETE FROM idempotency_keys WHERE generation_id IN (SELECT id FROM pruning); \
         DELETE FROM generations WHERE id IN (SELECT id FROM pruning); \
         DELETE FROM pruning;",
    )
    .map_err(backend)?;
    Ok(n as u64)
}

pub fn prunable(
    c: &Connection,
    media_before: OffsetDateTime,
    records_before: OffsetDateTime,
) -> StoreResult<Prunable> {
    let count = |sql: &str, before: OffsetDateTime| -> StoreResult<u64> {
        c.prepare_cached(sql)
            .and_then(|mut s| s.query_row([micros(before)], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(backend)
    };
    Ok(Prunable {
        media: count(
            "SELECT COUNT(*) FROM generations INDEXED BY generations_media_to_prune \
             WHERE completed_at IS NOT NULL AND media_pruned_at IS NULL AND completed_at < ?1",
            media_before,
        )?,
        // What a prune run now would reach: media pruned already or due now, then past the
        // records' limit.
        records: count(
            "SELECT COUNT(*) FROM generations \
             WHERE completed_at IS NOT NULL AND completed_at < ?1",
            records_before.min(media_before),
        )?,
    })
}

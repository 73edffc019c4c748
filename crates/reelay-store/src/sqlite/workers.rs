//! Worker tokens, kept apart from API keys (their own table, their own lookup), and the lease
//! a generation ended under, which lets a worker's repeated call be answered again.

use reelay_core::GenerationId;
use reelay_core::apikey::KeyHash;
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::backend;
use super::rows::{GENERATION_COLUMNS, from_micros, generation, micros, stored};
use crate::{Lease, NewWorker, StoreResult, WorkerInfo};

const WORKER_COLUMNS: &str = "id, name, models, shown_prefix, created_at, revoked_at";

fn worker(row: &rusqlite::Row<'_>) -> rusqlite::Result<WorkerInfo> {
    let models: String = row.get(2)?;
    Ok(WorkerInfo {
        id: row.get(0)?,
        name: row.get(1)?,
        models: crate::model::split_models(&models),
        shown_prefix: row.get(3)?,
        created_at: from_micros(row.get(4)?)?,
        revoked_at: row.get::<_, Option<i64>>(5)?.map(from_micros).transpose()?,
    })
}

pub fn create(c: &Connection, new: NewWorker, now: OffsetDateTime) -> StoreResult<WorkerInfo> {
    c.prepare_cached(
        "INSERT INTO worker_tokens (id, name, models, shown_prefix, secret_hash, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            new.id,
            new.name,
            crate::model::join_models(&new.models),
            new.shown_prefix,
            &new.hash.0[..],
            micros(now)
        ])
    })
    .map_err(backend)?;
    Ok(WorkerInfo {
        id: new.id,
        name: new.name,
        models: new.models,
        shown_prefix: new.shown_prefix,
        created_at: stored(now),
        revoked_at: None,
    })
}

pub fn list(c: &Connection) -> StoreResult<Vec<WorkerInfo>> {
    c.prepare_cached(&format!(
        "SELECT {WORKER_COLUMNS} FROM worker_tokens ORDER BY created_at, id"
    ))
    .and_then(|mut s| s.query_map([], worker)?.collect())
    .map_err(backend)
}

pub fn revoke(c: &Connection, id: &str, now: OffsetDateTime) -> StoreResult<bool> {
    c.prepare_cached(
        "UPDATE worker_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
    )
    .and_then(|mut s| s.execute(params![id, micros(now)]))
    .map(|n| n == 1)
    .map_err(backend)
}

pub fn authenticate(c: &Connection, hash: KeyHash) -> StoreResult<Option<WorkerInfo>> {
    c.prepare_cached(&format!(
        "SELECT {WORKER_COLUMNS} FROM worker_tokens WHERE secret_hash = ?1 AND revoked_at IS NULL"
    ))
    .and_then(|mut s| s.query_row([&hash.0[..]], worker).optional())
    .map_err(backend)
}

pub fn ended_lease(c: &Connection, id: GenerationId) -> StoreResult<Option<String>> {
    c.prepare_cached("SELECT ended_lease FROM generations WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([id.to_string()], |r| r.get::<_, Option<String>>(0))
                .optional()
        })
        .map(Option::flatten)
        .map_err(backend)
}

pub fn leases(c: &Connection, limit: u32) -> StoreResult<Vec<Lease>> {
    c.prepare_cached(&format!(
        "SELECT {GENERATION_COLUMNS}, lease_owner, lease_until FROM generations \
         WHERE status = 'processing' AND lease_until IS NOT NULL \
         ORDER BY lease_until, id LIMIT ?1"
    ))
    .and_then(|mut s| {
        let columns = GENERATION_COLUMNS.split(", ").count();
        s.query_map([limit], |row| {
            Ok(Lease {
                generation: generation(row)?,
                owner: row.get(columns)?,
                until: from_micros(row.get(columns + 1)?)?,
            })
        })?
        .collect()
    })
    .map_err(backend)
}

pub fn lease_holder(c: &Connection, id: GenerationId) -> StoreResult<Option<String>> {
    c.prepare_cached("SELECT lease_owner FROM generations WHERE id = ?1 AND status = 'processing'")
        .and_then(|mut s| {
            s.query_row([id.to_string()], |r| r.get::<_, Option<String>>(0))
                .optional()
        })
        .map(Option::flatten)
        .map_err(backend)
}

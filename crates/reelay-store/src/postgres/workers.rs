//! Worker tokens, apart from API keys: their own table, their own lookup.

use deadpool_postgres::GenericClient;
use reelay_core::Model;
use reelay_core::apikey::KeyHash;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::backend;
use super::rows::{get, stored};
use crate::{NewWorker, StoreResult, WorkerInfo};

const WORKER_COLUMNS: &str = "id, name, models, shown_prefix, created_at, revoked_at";

fn worker(row: &Row) -> StoreResult<WorkerInfo> {
    let models: &str = get(row, "models")?;
    Ok(WorkerInfo {
        id: get(row, "id")?,
        name: get(row, "name")?,
        models: parse_models(models),
        shown_prefix: get(row, "shown_prefix")?,
        created_at: get(row, "created_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

/// Unknown names (a model since removed) are dropped: such a worker claims only the rest.
/// Empty means every model.
fn parse_models(s: &str) -> Vec<Model> {
    s.split(',').filter_map(|m| m.parse().ok()).collect()
}

fn join_models(models: &[Model]) -> String {
    models
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) async fn create(
    c: &impl GenericClient,
    new: NewWorker,
    now: OffsetDateTime,
) -> StoreResult<WorkerInfo> {
    let now = stored(now);
    let statement = c
        .prepare_cached(
            "INSERT INTO worker_tokens (id, name, models, shown_prefix, secret_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await
        .map_err(backend)?;
    c.execute(
        &statement,
        &[
            &new.id,
            &new.name,
            &join_models(&new.models),
            &new.shown_prefix,
            &&new.hash.0[..],
            &now,
        ],
    )
    .await
    .map_err(backend)?;
    Ok(WorkerInfo {
        id: new.id,
        name: new.name,
        models: new.models,
        shown_prefix: new.shown_prefix,
        created_at: now,
        revoked_at: None,
    })
}

/// Every token, revoked ones too, oldest first.
pub(super) async fn list(c: &impl GenericClient) -> StoreResult<Vec<WorkerInfo>> {
    let statement = c
        .prepare_cached(&format!(
            "SELECT {WORKER_COLUMNS} FROM worker_tokens ORDER BY created_at, id"
        ))
        .await
        .map_err(backend)?;
    c.query(&statement, &[])
        .await
        .map_err(backend)?
        .iter()
        .map(worker)
        .collect()
}

pub(super) async fn revoke(
    c: &impl GenericClient,
    id: &str,
    now: OffsetDateTime,
) -> StoreResult<bool> {
    let statement = c
        .prepare_cached(
            "UPDATE worker_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .await
        .map_err(backend)?;
    c.execute(&statement, &[&id, &stored(now)])
        .await
        .map(|n| n == 1)
        .map_err(backend)
}

/// A live token by the hash of its secret. Never looks at API keys.
pub(super) async fn authenticate(
    c: &impl GenericClient,
    hash: KeyHash,
) -> StoreResult<Option<WorkerInfo>> {
    let statement = c
        .prepare_cached(&format!(
            "SELECT {WORKER_COLUMNS} FROM worker_tokens \
             WHERE secret_hash = $1 AND revoked_at IS NULL"
        ))
        .await
        .map_err(backend)?;
    c.query_opt(&statement, &[&&hash.0[..]])
        .await
        .map_err(backend)?
        .as_ref()
        .map(worker)
        .transpose()
}

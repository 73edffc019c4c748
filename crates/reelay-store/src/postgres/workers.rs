//! Worker tokens, apart from API keys: their own table, their own lookup.

use deadpool_postgres::GenericClient;
use reelay_core::apikey::KeyHash;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::rows::{get, stored};
use super::sql::{execute, query, query_opt};
use crate::{NewWorker, StoreResult, WorkerInfo};

const WORKER_COLUMNS: &str = "id, name, models, shown_prefix, created_at, revoked_at";

fn worker(row: &Row) -> StoreResult<WorkerInfo> {
    let models: &str = get(row, "models")?;
    Ok(WorkerInfo {
        id: get(row, "id")?,
        name: get(row, "name")?,
        models: crate::model::split_models(models),
        shown_prefix: get(row, "shown_prefix")?,
        created_at: get(row, "created_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

pub(super) async fn create(
    c: &impl GenericClient,
    new: NewWorker,
    now: OffsetDateTime,
) -> StoreResult<WorkerInfo> {
    let now = stored(now);
    execute(
        c,
        "INSERT INTO worker_tokens (id, name, models, shown_prefix, secret_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &new.id,
            &new.name,
            &crate::model::join_models(&new.models),
            &new.shown_prefix,
            &&new.hash.0[..],
            &now,
        ],
    )
    .await?;
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
    let sql = format!("SELECT {WORKER_COLUMNS} FROM worker_tokens ORDER BY created_at, id");
    query(c, &sql, &[]).await?.iter().map(worker).collect()
}

pub(super) async fn revoke(
    c: &impl GenericClient,
    id: &str,
    now: OffsetDateTime,
) -> StoreResult<bool> {
    execute(
        c,
        "UPDATE worker_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        &[&id, &stored(now)],
    )
    .await
    .map(|n| n == 1)
}

/// A live token by the hash of its secret. Never looks at API keys.
pub(super) async fn authenticate(
    c: &impl GenericClient,
    hash: KeyHash,
) -> StoreResult<Option<WorkerInfo>> {
    let sql = format!(
        "SELECT {WORKER_COLUMNS} FROM worker_tokens \
         WHERE secret_hash = $1 AND revoked_at IS NULL"
    );
    query_opt(c, &sql, &[&&hash.0[..]])
        .await?
        .as_ref()
        .map(worker)
        .transpose()
}

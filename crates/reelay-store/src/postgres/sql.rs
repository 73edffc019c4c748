//! One prepared (and per-connection cached) statement, run on any client: a pooled connection
//! or a transaction.

use deadpool_postgres::GenericClient;

use super::backend;
use crate::StoreResult;

/// A statement parameter.
pub type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

pub async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
) -> StoreResult<Vec<tokio_postgres::Row>> {
    let statement = c.prepare_cached(sql).await.map_err(backend)?;
    c.query(&statement, params).await.map_err(backend)
}

pub async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
) -> StoreResult<Option<tokio_postgres::Row>> {
    let statement = c.prepare_cached(sql).await.map_err(backend)?;
    c.query_opt(&statement, params).await.map_err(backend)
}

pub async fn execute(c: &impl GenericClient, sql: &str, params: &[Param<'_>]) -> StoreResult<u64> {
    let statement = c.prepare_cached(sql).await.map_err(backend)?;
    c.execute(&statement, params).await.map_err(backend)
}

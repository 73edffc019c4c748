//! One prepared (and per-connection cached) statement, run on any client: a pooled connection
//! or a transaction.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::backend;
use crate::{StoreError, StoreResult};

/// A statement parameter.
pub type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

pub async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
) -> StoreResult<Vec<Row>> {
    let statement = c.prepare_cached(sql).await.map_err(backend)?;
    c.query(&statement, params).await.map_err(backend)
}

pub async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
) -> StoreResult<Option<Row>> {
    let statement = c.prepare_cached(sql).await.map_err(backend)?;
    c.query_opt(&statement, params).await.map_err(backend)
}

/// A statement that always yields exactly one row (an aggregate): any other count is an error.
pub async fn query_one(
    c: &impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
) -> StoreResult<Row> {
    let statement = c.prepare_cached(sql).await.map_err(backend)?;
    c.query_one(&statement, params).await.map_err(backend)
}

/// A statement planned for its parameters every time it runs, never from a plan cached for any
/// parameters (sent unnamed, with its parameters' types, in one round trip). For a statement
/// whose best plan depends on how many rows a fast-growing table holds: a cached plan is made
/// with the statistics of the moment, which lag behind a queue filling by thousands a second.
/// (Seen in the `queue` benchmark: a claim cached while the statistics counted 20 pending
/// generations read and sorted all 20,000 of them for each claim; and a batch of attempt
/// records whose generic plan, made while `events` held 20 rows, joined its ids to the whole
/// table, 200,000 rows read for 3.)
pub async fn query_planned(
    c: &(impl tokio_postgres::GenericClient + Sync),
    sql: &str,
    params: &[(Param<'_>, Type)],
) -> StoreResult<Vec<Row>> {
    c.query_typed(sql, params).await.map_err(backend)
}

pub async fn execute(c: &impl GenericClient, sql: &str, params: &[Param<'_>]) -> StoreResult<u64> {
    execute_or(c, sql, params, backend).await
}

/// [`execute`], with the statement's errors mapped by `on_error`: for a failure the caller
/// expects and names itself (a constraint violation), falling back to [`backend`].
pub async fn execute_or(
    c: &impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
    on_error: impl FnOnce(tokio_postgres::Error) -> StoreError,
) -> StoreResult<u64> {
    let statement = c.prepare_cached(sql).await.map_err(backend)?;
    c.execute(&statement, params).await.map_err(on_error)
}

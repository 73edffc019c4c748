//! The database's clock, without a round trip per reading: the node's clock plus an offset to
//! PostgreSQL's, measured at connect and again every [`RESYNC`] (half the round trip is taken
//! as the time the database's reading was made).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;

use deadpool_postgres::Pool;

use super::PgStore;
use crate::{Clock, StoreResult};

const RESYNC: Duration = Duration::from_secs(60);

/// The database's clock minus this node's, in microseconds.
#[derive(Default)]
pub(super) struct Offset(AtomicI64);

impl Clock for PgStore {
    fn now(&self) -> OffsetDateTime {
        let micros = self.offset.0.load(Ordering::Relaxed);
        OffsetDateTime::now_utc() + time::Duration::microseconds(micros)
    }
}

impl PgStore {
    /// Measures the offset now, then keeps it fresh while any clone of this store lives.
    pub(super) async fn sync_clock(&self) -> StoreResult<()> {
        measure(&self.pool, &self.offset).await?;
        let (pool, offset) = (self.pool.clone(), Arc::downgrade(&self.offset));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RESYNC).await;
                let Some(offset) = offset.upgrade() else {
                    return;
                };
                if let Err(error) = measure(&pool, &offset).await {
                    tracing::debug!(%error, "measuring the database's clock failed; keeping the last offset");
                }
            }
        });
        Ok(())
    }
}

async fn measure(pool: &Pool, offset: &Offset) -> StoreResult<()> {
    let conn = pool.get().await.map_err(super::pool_error)?;
    let before = OffsetDateTime::now_utc();
    let row = conn
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .map_err(super::backend)?;
    let after = OffsetDateTime::now_utc();
    let database: OffsetDateTime = row.get(0);
    let midway: OffsetDateTime = before + (after - before) / 2;
    let micros = (database - midway).whole_microseconds();
    offset
        .0
        .store(i64::try_from(micros).unwrap_or(0), Ordering::Relaxed);
    Ok(())
}

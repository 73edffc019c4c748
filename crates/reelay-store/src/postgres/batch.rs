//! Group commit for creates. A create charges its account, and the charge locks the account's
//! row until the commit is on disk: one transaction per create would let one busy account
//! create only as fast as the disk flushes, however many nodes serve it. So the creates that
//! arrive together (without an idempotency key) share one transaction: their statements go
//! down one connection back to back (pipelined), in account order (so two batches lock
//! accounts in one order and never deadlock), and one flush acknowledges them all. A create
//! the balance does not cover is refused on its own; the others go on.

use std::sync::{Arc, OnceLock};

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::generations::charge_and_insert;
use super::{PgStore, backend, pool_error};
use crate::{Created, NewGeneration, StoreError, StoreResult};

/// Most creates in one transaction.
const MAX_BATCH: usize = 256;
/// Batches committing at once on one node: while they flush, the next batch gathers.
const BATCHES_AT_ONCE: usize = 4;

type Job = (NewGeneration, oneshot::Sender<StoreResult<Created>>);

/// The queue into this node's batches, started on first use.
#[derive(Default)]
pub(super) struct Batches {
    queue: OnceLock<mpsc::Sender<Job>>,
}

impl PgStore {
    pub(super) async fn create_in_batch(&self, new: NewGeneration) -> StoreResult<Created> {
        let queue = self.batches.queue.get_or_init(|| {
            let (queue, jobs) = mpsc::channel(MAX_BATCH * BATCHES_AT_ONCE);
            tokio::spawn(gather(self.pool.clone(), jobs));
            queue
        });
        let (done, answer) = oneshot::channel();
        queue
            .send((new, done))
            .await
            .map_err(|_| StoreError::Backend("the create batches stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("a create batch was lost".into()))?
    }
}

/// Takes whatever has queued up to [`MAX_BATCH`] whenever a batch may start; ends when every
/// store handle is gone.
async fn gather(pool: Pool, mut jobs: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(BATCHES_AT_ONCE));
    while let Some(first) = jobs.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            commit(&pool, batch).await;
            drop(slot);
        });
    }
}

async fn commit(pool: &Pool, mut batch: Vec<Job>) {
    batch.sort_by_key(|(new, _)| new.account_id);
    let outcomes = async {
        let mut conn = pool.get().await.map_err(pool_error)?;
        let tx = conn.transaction().await.map_err(backend)?;
        // Polled together, the statements are sent in this order without waiting for each
        // other's answers.
        let outcomes =
            futures::future::join_all(batch.iter().map(|(new, _)| charge_and_insert(&tx, new)))
                .await;
        // A failure that is not a refusal aborted the transaction: nothing of it stays.
        if let Some(Err(e)) = outcomes.iter().find(|o| {
            matches!(
                o,
                Err(StoreError::Backend(_)) | Err(StoreError::Unavailable(_))
            )
        }) {
            return Err(e.clone());
        }
        tx.commit().await.map_err(backend)?;
        Ok(outcomes)
    }
    .await;
    match outcomes {
        Ok(outcomes) => {
            for ((new, done), outcome) in batch.into_iter().zip(outcomes) {
                let _ = done.send(outcome.map(|()| Created::made(new)));
            }
        }
        Err(e) => {
            for (_, done) in batch {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

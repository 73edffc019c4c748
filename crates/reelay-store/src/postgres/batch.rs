//! Group commit. With `synchronous_commit` on, every commit waits for its WAL flush, and the
//! writes on the hot path (a create's charge, a generation's finish, a webhook attempt's
//! record) are one small statement each: one transaction apiece would spend the database's
//! time on flushes and round trips, and one busy account's balance would let it create
//! only as fast as the disk flushes. So the writes of one kind that arrive together share one
//! commit: usually one statement over arrays of them, with no transaction around it, taking
//! their rows in a fixed lock order (so two batches never deadlock), one flush acknowledging
//! them all. What that statement could not take (a create its stripe does not cover, a
//! second write to one row, a refusal that must say why) goes on in a transaction after it
//! (each write's statement sent back to back; creates in three statements for them all). A
//! write the rules refuse (a balance that does not cover a price, a finish that lost its
//! lease) is refused on its own; the others go on.
//!
//! A node commits one batch of a kind at a time, and what arrives meanwhile gathers into the
//! next. Several at once made more, smaller transactions for the same writes, and batches of
//! one busy account only waited for each other's lock on its balance: with one at a time a
//! node delivered 8–10% more webhooks for 7–12% less database CPU each (BENCHMARKS.md, "One
//! batch of a kind at a time").

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::OnceLock;

use deadpool_postgres::{Client, Pool, Transaction};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::{backend, pool_error};
use crate::{StoreError, StoreResult};

/// Most writes in one batch.
const MAX_BATCH: usize = 256;
/// Writes waiting for a batch, beyond which a writer waits for room.
const QUEUED: usize = 4 * MAX_BATCH;

/// One write that may share a transaction with others of its kind.
pub(super) trait Write: Send + Sync + Sized + 'static {
    type Done: Send + 'static;
    /// Writes run in this order within a batch: the order every batch locks rows in.
    type LockOrder: Ord;

    fn lock_order(&self) -> Self::LockOrder;

    /// Commits what it can of a batch, in lock order, in one statement outside any
    /// transaction: one round trip, and the rows it locks are held only while it runs and its
    /// commit flushes, never across a round trip (for a busy account's balance stripe, which
    /// another node's batch may be waiting for, that is most of the time it is held). Answers
    /// each write it committed, and `None` for each it leaves to [`Write::run_all`]; an error
    /// means the statement failed and committed nothing, or (a row the statement returned
    /// that does not decode) that it committed and cannot say what. By default it leaves
    /// them all.
    fn run_alone<'a>(
        writes: &'a [&'a Self],
        _c: &'a Client,
    ) -> BoxFuture<'a, StoreResult<Vec<Option<Self::Done>>>> {
        Box::pin(async move { Ok(writes.iter().map(|_| None).collect()) })
    }

    /// Runs a batch's writes, in lock order, in `tx`: one answer per write, in their order. A
    /// refusal the caller expects is an answer of its own (a value, or an error other than
    /// [`StoreError::Backend`] and [`StoreError::Unavailable`]); those two mean a statement
    /// failed and aborted the transaction.
    fn run_all<'a>(
        writes: Vec<&'a Self>,
        tx: &'a Transaction<'a>,
    ) -> BoxFuture<'a, Vec<StoreResult<Self::Done>>>;
}

/// [`Write::run_all`] for writes of one row each: their statements polled together, so they
/// are sent in order without waiting for each other's answers.
pub(super) fn pipelined<'a, W: Write>(
    writes: Vec<&'a W>,
    run: impl Fn(&'a W) -> BoxFuture<'a, StoreResult<W::Done>> + Send + 'a,
) -> BoxFuture<'a, Vec<StoreResult<W::Done>>> {
    Box::pin(futures::future::join_all(writes.into_iter().map(run)))
}

/// [`Write::run_alone`] for a statement that changes each row at most once: `statement` runs
/// on the first write of each lock order in `writes` (which are in lock order) and answers
/// those it committed, by lock order; every other write is left to [`Write::run_all`].
pub(super) async fn first_of_each<'a, W, F>(
    writes: &'a [&'a W],
    statement: impl FnOnce(Vec<&'a W>) -> F,
) -> StoreResult<Vec<Option<W::Done>>>
where
    W: Write,
    W::LockOrder: Eq + Hash,
    F: Future<Output = StoreResult<HashMap<W::LockOrder, W::Done>>>,
{
    let orders: Vec<W::LockOrder> = writes.iter().map(|w| w.lock_order()).collect();
    let first = |i: usize| i == 0 || orders[i] != orders[i - 1];
    let taken = (0..writes.len()).filter(|&i| first(i)).map(|i| writes[i]);
    let mut done = statement(taken.collect()).await?;
    Ok((0..writes.len())
        .map(|i| first(i).then(|| done.remove(&orders[i])).flatten())
        .collect())
}

type Job<W> = (W, oneshot::Sender<StoreResult<<W as Write>::Done>>);

/// The queue into one kind's batches on this node, started on first use.
pub(super) struct Batches<W: Write> {
    queue: OnceLock<mpsc::Sender<Job<W>>>,
}

impl<W: Write> Default for Batches<W> {
    fn default() -> Self {
        Self {
            queue: OnceLock::new(),
        }
    }
}

impl<W: Write> Batches<W> {
    /// Runs `write` in the next batch and answers once that batch is committed.
    pub(super) async fn run(&self, pool: &Pool, write: W) -> StoreResult<W::Done> {
        let queue = self.queue.get_or_init(|| {
            let (queue, jobs) = mpsc::channel(QUEUED);
            tokio::spawn(gather(pool.clone(), jobs));
            queue
        });
        let (done, answer) = oneshot::channel();
        queue
            .send((write, done))
            .await
            .map_err(|_| StoreError::Backend("the write batches stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("a write batch was lost".into()))?
    }
}

/// Commits whatever has queued, up to [`MAX_BATCH`], once the previous batch is committed;
/// ends when every store handle is gone.
async fn gather<W: Write>(pool: Pool, mut jobs: mpsc::Receiver<Job<W>>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit(&pool, batch).await;
    }
}

async fn commit<W: Write>(pool: &Pool, mut batch: Vec<Job<W>>) {
    batch.sort_by_cached_key(|(write, _)| write.lock_order());
    let writes: Vec<&W> = batch.iter().map(|(write, _)| write).collect();
    let outcomes: Vec<StoreResult<W::Done>> = async {
        let mut conn = pool.get().await.map_err(pool_error)?;
        let alone = W::run_alone(&writes, &conn).await?;
        let rest: Vec<&W> = writes
            .iter()
            .zip(&alone)
            .filter(|(_, done)| done.is_none())
            .map(|(write, _)| *write)
            .collect();
        // What the statement alone committed stays committed, whatever happens to the rest.
        let left = rest.len();
        let mut rest = if left == 0 {
            Vec::new()
        } else {
            in_transaction(&mut conn, rest)
                .await
                .unwrap_or_else(|e| failed(&e, left))
        }
        .into_iter();
        Ok(alone
            .into_iter()
            .map(|done| match done {
                Some(done) => Ok(done),
                None => rest.next().unwrap_or_else(|| {
                    Err(StoreError::Backend("a write batch lost an answer".into()))
                }),
            })
            .collect())
    }
    .await
    .unwrap_or_else(|e: StoreError| failed(&e, writes.len()));
    drop(writes);
    for ((_, done), outcome) in batch.into_iter().zip(outcomes) {
        let _ = done.send(outcome);
    }
}

fn failed<T>(e: &StoreError, n: usize) -> Vec<StoreResult<T>> {
    (0..n).map(|_| Err(e.clone())).collect()
}

/// Runs `writes` in one transaction: one answer each, or the error that aborted it.
async fn in_transaction<W: Write>(
    conn: &mut Client,
    writes: Vec<&W>,
) -> StoreResult<Vec<StoreResult<W::Done>>> {
    let tx = conn.transaction().await.map_err(backend)?;
    let outcomes = W::run_all(writes, &tx).await;
    // A statement that failed aborted the transaction: nothing of it stays.
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

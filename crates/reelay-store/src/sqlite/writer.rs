//! The one SQLite write connection, on its own thread, committing requests in groups.
//!
//! With `synchronous=FULL` every commit costs an fsync. Requests queue on a channel; the
//! writer takes all that are waiting (up to a cap), runs each inside its own savepoint in one
//! transaction, commits once, and only then answers every request. Many requests share one
//! fsync, and no request is acknowledged before its data is on disk.

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::{StoreError, StoreResult};

/// Most requests in one commit: enough to amortize the fsync, small enough to keep latency.
const MAX_GROUP: usize = 512;

/// A request to the writer: runs against the open transaction and says whether to keep its
/// changes; its answer is sent only once the commit has happened (or failed).
trait Request: Send {
    fn run(self: Box<Self>, conn: &Connection) -> Done;
    /// Answers without running, when no transaction could be opened for it.
    fn refuse(self: Box<Self>, error: StoreError);
}

type Reply = Box<dyn FnOnce(Option<StoreError>) + Send>;

struct Done {
    keep: bool,
    reply: Reply,
}

struct Call<F, T> {
    work: F,
    answer: oneshot::Sender<StoreResult<T>>,
}

impl<F, T> Request for Call<F, T>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Done {
        let result = (self.work)(conn);
        let answer = self.answer;
        Done {
            keep: result.is_ok(),
            reply: Box::new(move |commit_error| {
                let _ = answer.send(match commit_error {
                    Some(e) => Err(e),
                    None => result,
                });
            }),
        }
    }

    fn refuse(self: Box<Self>, error: StoreError) {
        let _ = self.answer.send(Err(error));
    }
}

type Job = Box<dyn Request>;

/// A handle to the writer thread. The thread stops when every handle is dropped.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    pub fn spawn(conn: Connection) -> Self {
        let (jobs, rx) = mpsc::channel(16 * MAX_GROUP);
        std::thread::Builder::new()
            .name("reelay-sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .expect("spawning the SQLite writer thread");
        Self { jobs }
    }

    /// Runs `work` in a write transaction shared with other requests. An `Err` from `work`
    /// undoes only its own changes.
    pub async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (answer, rx) = oneshot::channel();
        let job: Job = Box::new(Call { work, answer });
        self.jobs.send(job).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

fn closed() -> StoreError {
    StoreError::Backend("the SQLite writer has stopped".into())
}

fn run(mut conn: Connection, mut rx: mpsc::Receiver<Job>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(&mut conn, group.drain(..));
    }
}

fn commit_group(conn: &mut Connection, jobs: impl Iterator<Item = Job>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = StoreError::Backend(format!("begin: {e}"));
            tracing::error!(error = %e, "could not open a write transaction");
            jobs.for_each(|job| job.refuse(e.clone()));
            return;
        }
    };
    let mut replies = Vec::new();
    for job in jobs {
        if let Err(e) = run_cached(&tx, "SAVEPOINT job") {
            job.refuse(StoreError::Backend(format!("savepoint: {e}")));
            continue;
        }
        let done = job.run(&tx);
        let close = if done.keep {
            run_cached(&tx, "RELEASE job")
        } else {
            run_cached(&tx, "ROLLBACK TO job").and_then(|()| run_cached(&tx, "RELEASE job"))
        };
        if let Err(e) = close {
            tracing::error!(error = %e, "closing a savepoint failed");
        }
        replies.push(done.reply);
    }
    let commit_error = tx
        .commit()
        .err()
        .map(|e| StoreError::Backend(format!("commit: {e}")));
    if let Some(e) = &commit_error {
        tracing::error!(error = %e, "group commit failed; every request in it is refused");
    }
    for reply in replies {
        reply(commit_error.clone());
    }
}

/// Runs a statement from the connection's statement cache: savepoints open and close around
/// every request, so parsing them each time would cost more than many requests' own work.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

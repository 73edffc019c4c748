//! A small pool of read-only SQLite connections, so reads never wait behind the writer.
//!
//! In WAL mode readers see the last committed state while the writer works. Each read runs
//! on tokio's blocking pool with a connection taken from here and put back after.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};

use crate::{StoreError, StoreResult};

#[derive(Clone)]
pub struct Readers {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<Connection>>>,
}

/// Idle connections kept for reuse; more may be open briefly under load.
const KEEP_IDLE: usize = 8;

impl Readers {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path: Arc::new(path),
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = this.take()?;
            let result = f(&conn);
            this.put(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }

    /// Runs a point read (one row by a unique index, a few microseconds) on the calling
    /// thread. Handing such a read to the blocking pool costs more than the read itself, and
    /// readers in WAL mode never wait for the writer. Only for reads that cannot scan.
    pub fn read_point<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T>,
    {
        let conn = self.take()?;
        let result = f(&conn);
        self.put(conn);
        result
    }

    fn take(&self) -> StoreResult<Connection> {
        if let Some(conn) = self.idle.lock().expect("reader pool lock").pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            self.path.as_ref(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(super::backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(super::backend)?;
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().expect("reader pool lock");
        if idle.len() < KEEP_IDLE {
            idle.push(conn);
        }
    }
}

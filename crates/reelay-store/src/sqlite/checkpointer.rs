//! Moves the WAL into the database file on its own thread, so the writer's commits do not
//! stall on checkpoints under sustained load.
//!
//! The writer keeps SQLite's automatic checkpoint only as a fallback with a high threshold,
//! for when this thread falls behind.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::Connection;

/// How often the WAL is checkpointed.
const EVERY: Duration = Duration::from_millis(100);

/// Runs until every handle to `alive` is dropped.
pub fn spawn(path: PathBuf, alive: &Arc<()>) {
    let alive: Weak<()> = Arc::downgrade(alive);
    let spawned = std::thread::Builder::new()
        .name("reelay-sqlite-checkpoint".into())
        .spawn(move || {
            let conn = match Connection::open(&path) {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "no checkpoint thread; the writer checkpoints");
                    return;
                }
            };
            let _ = conn.busy_timeout(Duration::from_secs(1));
            while alive.strong_count() > 0 {
                std::thread::sleep(EVERY);
                // PASSIVE never blocks the writer or readers; what it cannot move now it
                // moves next time.
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(error = %e, "checkpoint skipped");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no checkpoint thread; the writer checkpoints");
    }
}

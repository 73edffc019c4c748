//! A throwaway database for tests (feature `testing`): created on the PostgreSQL server at
//! `REELAY_TEST_DATABASE_URL` (default: the machine's, `postgres://postgres@127.0.0.1:5432/postgres`)
//! under a unique name, dropped when the value is dropped. A test that needs one fails, loudly,
//! when the server cannot be reached: it never skips.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::NoTls;

use super::PgStore;
use crate::GenerationStore;

/// Where test databases are made when `REELAY_TEST_DATABASE_URL` is unset.
pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own on the test server.
pub struct TestDatabase {
    server: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates an empty database.
    pub async fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server =
            std::env::var("REELAY_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.into());
        let name = format!(
            "reelay_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::new_v4().simple()
        );
        let (base, _) = server
            .rsplit_once('/')
            .expect("REELAY_TEST_DATABASE_URL looks like postgres://user@host:port/database");
        let url = format!("{base}/{name}");
        if std::env::var_os("REELAY_TEST_DATABASE_URL").is_none() {
            ensure_local_server().await;
        }
        run(&server, &format!("CREATE DATABASE {name}")).await;
        Self { server, name, url }
    }

    /// Its URL, for [`crate::PgStore::connect`] or a node's `REELAY_DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Starts the machine's PostgreSQL when it does not answer (`scripts/postgres.sh`), once per
/// test process.
async fn ensure_local_server() {
    static READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    READY
        .get_or_init(|| async {
            if tokio_postgres::connect(DEFAULT_SERVER, NoTls).await.is_ok() {
                return;
            }
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/postgres.sh");
            let status = tokio::process::Command::new(script)
                .status()
                .await
                .unwrap_or_else(|e| panic!("running {script}: {e}"));
            assert!(status.success(), "{script} could not start PostgreSQL");
        })
        .await;
}

async fn run(server: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(server, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the tests need PostgreSQL at {server} (set REELAY_TEST_DATABASE_URL, or start \
                 the machine's: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) \
                 main start): {e}"
            )
        });
    let connection = tokio::spawn(connection);
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = connection.await;
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any async context a test can count on: a thread of its own.
        let (server, sql) = (
            self.server.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(run(&server, &sql));
        })
        .join();
        if dropped.is_err() && !std::thread::panicking() {
            panic!("dropping test database {}", self.name);
        }
    }
}

/// What a store watching for other nodes' work ([`GenerationStore::watch_work`]) hears: one
/// message per wake-up, starting with the one it gets as it starts listening.
pub struct Wakes(mpsc::UnboundedReceiver<()>);

impl Wakes {
    /// Starts `store` watching.
    pub fn of(store: &PgStore) -> Self {
        let (woken, wakes) = mpsc::unbounded_channel();
        store.watch_work(Box::new(move || {
            let _ = woken.send(());
        }));
        Self(wakes)
    }

    /// Whether a wake-up arrives within `within`.
    pub async fn within(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, self.0.recv()).await.is_ok()
    }
}

//! The backend for several nodes: one PostgreSQL database that every `reelay serve` node
//! shares. Every rule that must hold across nodes is one statement or one transaction whose
//! rows are locked where they are written (`FOR UPDATE`, `SKIP LOCKED` for claims), so no two
//! nodes ever hold the same generation or delivery, and a dead node's leases simply lapse.

mod accounts;
mod balances;
mod batch;
mod clock;
mod deliveries;
mod generations;
mod retention;
mod rows;
mod secrets;
mod signals;
mod sql;
#[cfg(feature = "testing")]
mod test_database;
mod workers;

use std::time::Duration;

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::{StoreError, StoreResult};
pub(crate) use balances::STRIPES;
#[cfg(feature = "testing")]
pub use test_database::{TestDatabase, Wakes};

/// Schema migrations, applied in order; `reelay_migrations` records which ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_no_foreign_keys_on_the_hot_path.sql"),
    include_str!("../../migrations/postgres/0003_in_flight_by_owner.sql"),
    include_str!("../../migrations/postgres/0004_lease_owners.sql"),
    include_str!("../../migrations/postgres/0005_balance_stripes.sql"),
];

/// Held (as a session advisory lock) while migrations run, so that nodes starting together
/// apply each migration once. The number is arbitrary but fixed: "reelay" in ASCII.
const MIGRATION_LOCK: i64 = 0x7265_656c_6179;

/// Connections per node. PostgreSQL runs a process per connection, so a cluster's nodes
/// together should stay well under `max_connections` (100 by default).
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Set on every pooled connection. Every statement of reelay's walks an index it was written
/// for; a bitmap scan instead reads each entry of the index it uses and cannot mark dead ones
/// as dead for the next reader. On the queue's partial indexes, which gather dead entries
/// from every claim until vacuum comes by, the planner chose one whenever the statistics
/// counted few pending generations (a claim read all 10,225 entries of
/// `generations_pending_by_model` for its 17 rows; with an ordered index scan it reads a few
/// pages).
///
/// JIT compilation is off: it pays off for long analytic queries, and reelay runs none, but
/// the planner turns it on by cost estimate alone, so a lease whose estimate crossed
/// `jit_above_cost` stopped for 420 ms to compile 72 functions while it held its
/// destination's lock, stalling every node's deliveries to that destination (seen twice in
/// `pg_stat_statements` over one two-node `pipeline --quick`).
///
/// A page read at random costs about what a page read in sequence does (`random_page_cost`
/// 1.1, the usual figure for storage that is not a spinning disk, where PostgreSQL's default
/// of 4 assumes one): reelay's working set is the recent tasks and events, in memory. With 4,
/// a batch's lookup of its ids read a table of a few thousand rows whole, each time, instead
/// of finding each row by its key (a lease read all 7,297 rows of `events` for 64, 1.8 ms of
/// the 4.2 it held its destination's lock; `auto_explain` over one two-node
/// `pipeline --quick`, where such scans took 1.8 s of the statements over 1.5 ms).
const SESSION_SETTINGS: &str =
    "SET enable_bitmapscan = off; SET jit = off; SET random_page_cost = 1.1";

/// How long a request waits for a connection (a free one, or a new one to a database that
/// went away) before it fails as unavailable (a 503 at the API).
const CONNECTION_WAIT: Duration = Duration::from_secs(5);

/// A [`crate::Store`] on a PostgreSQL database. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// For connections of its own outside the pool (LISTEN).
    config: tokio_postgres::Config,
    announcer: std::sync::Arc<signals::Announcer>,
    offset: std::sync::Arc<clock::Offset>,
    /// Group commit (see [`batch`]) for each hot write.
    creates: std::sync::Arc<batch::Batches<generations::Create>>,
    finishes: std::sync::Arc<batch::Batches<generations::Finish>>,
    attempts: std::sync::Arc<batch::Batches<deliveries::RecordAttempt>>,
    /// The most webhook attempts in flight to one destination across every node (see
    /// [`PgStore::with_destination_limit`]).
    per_destination: usize,
    /// Until when this process last listed a lease owner in `lease_owners`.
    listed: std::sync::Arc<deliveries::Listed>,
}

/// [`PgStore::with_destination_limit`]'s default: `REELAY_WEBHOOK_PER_DESTINATION`'s.
pub const DEFAULT_PER_DESTINATION: usize = 64;

/// Errors after which the same request may succeed: serialization failure, deadlock, the
/// server shutting down or starting, and connections lost or never made.
pub(crate) fn backend(e: tokio_postgres::Error) -> StoreError {
    const RETRYABLE: &[SqlState] = &[
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::CONNECTION_EXCEPTION,
        SqlState::CONNECTION_DOES_NOT_EXIST,
        SqlState::CONNECTION_FAILURE,
    ];
    let lost =
        e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    // A server error's own text ("db error") says nothing: show PostgreSQL's message.
    let text = match e.as_db_error() {
        Some(db) => format!("{db}"),
        None => e.to_string(),
    };
    if lost || e.code().is_some_and(|c| RETRYABLE.contains(c)) {
        StoreError::Unavailable(text)
    } else {
        StoreError::Backend(text)
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => backend(e),
        other => StoreError::Unavailable(format!("no database connection: {other}")),
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://…`) and brings the schema up to date.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let store = Self::connect_without_migrating(url)?;
        store.migrate().await?;
        store.sync_clock().await?;
        Ok(store)
    }

    /// A pool on `url` that connects on first use, without touching the schema.
    pub fn connect_without_migrating(url: &str) -> StoreResult<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("the database URL: {e}")))?;
        config.application_name("reelay");
        config.connect_timeout(CONNECTION_WAIT);
        // A database that vanished without closing its connections (a cut network, a host
        // gone) is noticed within about half a minute instead of TCP's hours.
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(30));
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(SESSION_SETTINGS)
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .max_size(DEFAULT_POOL_SIZE)
            .wait_timeout(Some(CONNECTION_WAIT))
            .create_timeout(Some(CONNECTION_WAIT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("the connection pool: {e}")))?;
        Ok(Self {
            pool,
            config,
            announcer: Default::default(),
            offset: Default::default(),
            creates: Default::default(),
            finishes: Default::default(),
            attempts: Default::default(),
            per_destination: DEFAULT_PER_DESTINATION,
            listed: Default::default(),
        })
    }

    /// Holds every destination to `limit` attempts in flight across all the nodes on this
    /// database: [`crate::DeliveryStore::lease_deliveries`] counts the other nodes' live
    /// leases and the requests the leasing node has open, under a per-destination lock, so a
    /// receiver sized for `limit` concurrent requests never sees more, however many nodes
    /// send. (One node's dispatcher holds the same limit in memory; on a shared database that
    /// alone would allow `limit` per node.)
    pub fn with_destination_limit(mut self, limit: usize) -> Self {
        self.per_destination = limit.max(1);
        self
    }

    /// Applies the migrations this database lacks, under an advisory lock so that several
    /// nodes may start at once; returns how many ran.
    pub async fn migrate(&self) -> StoreResult<usize> {
        let mut conn = self.conn().await?;
        conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(backend)?;
        let applied = apply(&mut conn, MIGRATIONS).await;
        let unlocked = conn
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(backend);
        let applied = applied?;
        unlocked?;
        Ok(applied)
    }

    /// A connection from the pool.
    pub(crate) async fn conn(&self) -> StoreResult<Object> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// Brings the schema up to the last of `migrations` (a prefix of [`MIGRATIONS`]).
async fn apply(conn: &mut Object, migrations: &[&str]) -> StoreResult<usize> {
    let exists: bool = conn
        .query_one("SELECT to_regclass('reelay_migrations') IS NOT NULL", &[])
        .await
        .map_err(backend)?
        .get(0);
    if !exists {
        conn.batch_execute(
            "CREATE TABLE reelay_migrations ( \
                 version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(backend)?;
    }
    let done: i64 = conn
        .query_one("SELECT COUNT(*) FROM reelay_migrations", &[])
        .await
        .map_err(backend)?
        .get(0);
    let done = usize::try_from(done).unwrap_or(usize::MAX);
    if done > migrations.len() {
        return Err(StoreError::Backend(format!(
            "the database schema (version {done}) is newer than this reelay knows \
             ({}); upgrade reelay",
            migrations.len()
        )));
    }
    for (i, sql) in migrations.iter().enumerate().skip(done) {
        let tx = conn.transaction().await.map_err(backend)?;
        tx.batch_execute(sql).await.map_err(backend)?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO reelay_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
    }
    Ok(migrations.len() - done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pooled connection plans as [`SESSION_SETTINGS`] says, whatever the server's
    /// defaults (this machine's PostgreSQL has JIT on).
    #[tokio::test]
    async fn pooled_connections_plan_without_jit_bitmap_scans_or_disk_seeks() {
        let db = TestDatabase::create().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        let c = store.conn().await.unwrap();
        for (setting, expected) in [
            ("jit", "off"),
            ("enable_bitmapscan", "off"),
            ("random_page_cost", "1.1"),
        ] {
            let value: String = c
                .query_one(&format!("SHOW {setting}"), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(value, expected, "{setting}");
        }
    }
}

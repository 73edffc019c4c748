//! The embedded default: one SQLite file in WAL mode with `synchronous=FULL`, one writer
//! thread that commits requests in groups, and a pool of readers.

mod accounts;
mod checkpointer;
mod deliveries;
mod generations;
mod readers;
mod retention;
mod rows;
mod workers;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reelay_core::apikey::KeyHash;
use reelay_core::money::BalanceError;
use reelay_core::{AccountId, Credits, GenerationId, GenerationStatus, KeyId};
use rusqlite::{Connection, TransactionBehavior};
use time::OffsetDateTime;

use crate::*;
use readers::Readers;
use writer::Writer;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_signing_secrets_by_account.sql"),
    include_str!("../../migrations/sqlite/0003_workers.sql"),
    include_str!("../../migrations/sqlite/0004_claims_reasons_inputs.sql"),
    include_str!("../../migrations/sqlite/0005_retention.sql"),
];

pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A [`Store`] on one SQLite file. Cheap to clone; all clones share the writer thread.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Writer,
    readers: Readers,
    /// Keeps the checkpoint thread running while any clone lives.
    _alive: Arc<()>,
}

/// WAL pages after which the writer checkpoints by itself (the checkpoint thread normally
/// keeps the WAL far below this).
const FALLBACK_CHECKPOINT_PAGES: i64 = 16_384;
/// Page cache of the writer connection, in KiB (SQLite's negative `cache_size`).
const WRITER_CACHE_KIB: i64 = 16 * 1024;

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        let path = path.as_ref();
        make_private(path)?;
        let mut conn = Connection::open(path).map_err(backend)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        conn.pragma_update(None, "wal_autocheckpoint", FALLBACK_CHECKPOINT_PAGES)
            .map_err(backend)?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(backend)?;
        migrate(&mut conn)?;
        let alive = Arc::new(());
        checkpointer::spawn(path.to_owned(), &alive);
        Ok(Self {
            writer: Writer::spawn(conn),
            readers: Readers::new(path.to_owned()),
            _alive: alive,
        })
    }
}

/// Creates the database file readable by its owner only (0600) before SQLite writes a byte of
/// it, and tightens an existing one and any `-wal`/`-shm` beside it: they hold API-key hashes,
/// sealed signing secrets, every prompt and callback URL. SQLite creates `-wal` and `-shm` with
/// the database file's own mode, so they are private from their first byte too.
#[cfg(unix)]
fn make_private(path: &Path) -> StoreResult<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |what: &Path, e: std::io::Error| {
        StoreError::Backend(format!("making {} private (0600): {e}", what.display()))
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| failed(path, e))?;
    for file in [
        path.to_owned(),
        sibling(path, "-wal"),
        sibling(path, "-shm"),
    ] {
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(&file, e)),
        }
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name, as SQLite names its `-wal` and `-shm`.
#[cfg(unix)]
fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

#[cfg(not(unix))]
fn make_private(_path: &Path) -> StoreResult<()> {
    Ok(())
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let done: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    let done = usize::try_from(done).unwrap_or(usize::MAX);
    if done > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "the database schema (version {done}) is newer than this reelay knows \
             ({}); upgrade reelay",
            MIGRATIONS.len()
        )));
    }
    for sql in &MIGRATIONS[done..] {
        tx.execute_batch(sql).map_err(backend)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

/// One node: its own clock.
impl Clock for SqliteStore {}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(
        &self,
        name: &str,
        credits: Credits,
        now: OffsetDateTime,
    ) -> StoreResult<Account> {
        let name = name.to_owned();
        self.writer
            .write(move |c| accounts::create(c, &name, credits, now))
            .await
    }

    async fn account(&self, id: AccountId) -> StoreResult<Option<Account>> {
        self.readers.read(move |c| accounts::get(c, id)).await
    }

    async fn account_by_name(&self, name: &str) -> StoreResult<Option<Account>> {
        let name = name.to_owned();
        self.readers
            .read(move |c| accounts::by_name(c, &name))
            .await
    }

    async fn list_accounts(&self, limit: u32) -> StoreResult<Page<AccountOverview>> {
        self.readers.read(move |c| accounts::list(c, limit)).await
    }

    async fn add_credits(
        &self,
        id: AccountId,
        amount: Credits,
        now: OffsetDateTime,
    ) -> StoreResult<Result<Credits, BalanceError>> {
        self.writer
            .write(move |c| accounts::add_credits(c, id, amount, now))
            .await
    }

    async fn create_key(&self, key: NewKey, now: OffsetDateTime) -> StoreResult<ApiKeyInfo> {
        self.writer
            .write(move |c| accounts::create_key(c, key, now))
            .await
    }

    async fn list_keys(&self, account: Option<AccountId>) -> StoreResult<Vec<ApiKeyInfo>> {
        self.readers
            .read(move |c| accounts::list_keys(c, account))
            .await
    }

    async fn revoke_key(&self, id: KeyId, now: OffsetDateTime) -> StoreResult<bool> {
        self.writer
            .write(move |c| accounts::revoke_key(c, id, now))
            .await
    }

    async fn authenticate(&self, hash: KeyHash) -> StoreResult<Option<ApiKeyInfo>> {
        self.readers
            .read_point(move |c| accounts::authenticate(c, hash))
    }

    async fn create_worker(&self, new: NewWorker, now: OffsetDateTime) -> StoreResult<WorkerInfo> {
        self.writer
            .write(move |c| workers::create(c, new, now))
            .await
    }

    async fn list_workers(&self) -> StoreResult<Vec<WorkerInfo>> {
        self.readers.read(workers::list).await
    }

    async fn revoke_worker(&self, id: &str, now: OffsetDateTime) -> StoreResult<bool> {
        let id = id.to_owned();
        self.writer
            .write(move |c| workers::revoke(c, &id, now))
            .await
    }

    async fn authenticate_worker(&self, hash: KeyHash) -> StoreResult<Option<WorkerInfo>> {
        self.readers
            .read_point(move |c| workers::authenticate(c, hash))
    }
}

#[async_trait]
impl GenerationStore for SqliteStore {
    async fn create_generation(&self, new: NewGeneration) -> StoreResult<Created> {
        self.writer
            .write(move |c| generations::create(c, new))
            .await
    }

    async fn generation(&self, id: GenerationId) -> StoreResult<Option<Generation>> {
        self.readers.read(move |c| generations::get(c, id)).await
    }

    async fn list_generations(
        &self,
        account: AccountId,
        status: Option<GenerationStatus>,
        limit: u32,
        offset: u64,
    ) -> StoreResult<Page<Generation>> {
        self.readers
            .read(move |c| generations::list(c, account, status, limit, offset))
            .await
    }

    async fn pending_before(&self, created_at: OffsetDateTime) -> StoreResult<u64> {
        self.readers
            .read(move |c| generations::queue_position(c, created_at))
            .await
    }

    async fn claim(
        &self,
        owner: &str,
        limit: usize,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<Generation>> {
        let owner = owner.to_owned();
        self.writer
            .write(move |c| generations::claim(c, &owner, limit, lease_until, now))
            .await
    }

    async fn heartbeat(
        &self,
        id: GenerationId,
        owner: &str,
        lease_until: OffsetDateTime,
        progress_pct: u8,
    ) -> StoreResult<bool> {
        let owner = owner.to_owned();
        self.writer
            .write(move |c| generations::heartbeat(c, id, &owner, lease_until, progress_pct))
            .await
    }

    async fn finish(
        &self,
        id: GenerationId,
        by: Finisher<'_>,
        outcome: Outcome,
        now: OffsetDateTime,
    ) -> StoreResult<Finished> {
        let owner = match by {
            Finisher::LeaseHolder(owner) => Some(owner.to_owned()),
            Finisher::Anyone => None,
        };
        self.writer
            .write(move |c| generations::finish(c, id, owner.as_deref(), outcome, now))
            .await
    }

    async fn overdue(&self, now: OffsetDateTime, limit: usize) -> StoreResult<Vec<GenerationId>> {
        self.readers
            .read(move |c| generations::overdue(c, now, limit))
            .await
    }

    async fn next_deadline(&self) -> StoreResult<Option<OffsetDateTime>> {
        self.readers.read(generations::next_deadline).await
    }

    async fn release_leases(&self, owner: &str) -> StoreResult<u64> {
        let owner = owner.to_owned();
        self.writer
            .write(move |c| generations::release_leases(c, &owner))
            .await
    }

    async fn claim_models(
        &self,
        owner: &str,
        limit: usize,
        models: Vec<reelay_core::Model>,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<Generation>> {
        let owner = owner.to_owned();
        self.writer
            .write(move |c| generations::claim_models(c, &owner, limit, &models, lease_until, now))
            .await
    }

    async fn ended_lease(&self, id: GenerationId) -> StoreResult<Option<String>> {
        self.readers
            .read(move |c| workers::ended_lease(c, id))
            .await
    }

    async fn media_to_prune(
        &self,
        before: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredMedia>> {
        self.readers
            .read(move |c| retention::media_to_prune(c, before, limit))
            .await
    }

    async fn mark_media_pruned(
        &self,
        ids: Vec<GenerationId>,
        now: OffsetDateTime,
    ) -> StoreResult<()> {
        self.writer
            .write(move |c| retention::mark_media_pruned(c, &ids, now))
            .await
    }

    async fn prune_records(&self, before: OffsetDateTime, limit: usize) -> StoreResult<u64> {
        self.writer
            .write(move |c| retention::prune_records(c, before, limit))
            .await
    }

    async fn prunable(
        &self,
        media_before: OffsetDateTime,
        records_before: OffsetDateTime,
    ) -> StoreResult<Prunable> {
        self.readers
            .read(move |c| retention::prunable(c, media_before, records_before))
            .await
    }

    async fn leases(&self, limit: u32) -> StoreResult<Vec<Lease>> {
        self.readers.read(move |c| workers::leases(c, limit)).await
    }

    async fn lease_holder(&self, id: GenerationId) -> StoreResult<Option<String>> {
        self.readers
            .read(move |c| workers::lease_holder(c, id))
            .await
    }
}

#[async_trait]
impl DeliveryStore for SqliteStore {
    async fn event_for(&self, generation: GenerationId) -> StoreResult<Option<Event>> {
        self.readers
            .read(move |c| deliveries::event_for(c, generation))
            .await
    }

    async fn due_for_destination(
        &self,
        destination: &str,
        from: Option<OffsetDateTime>,
        limit: usize,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<DueAt>> {
        let destination = destination.to_owned();
        self.readers
            .read(move |c| deliveries::due_for_destination(c, &destination, from, limit, now))
            .await
    }

    async fn scan_due(
        &self,
        now: OffsetDateTime,
        after: Option<String>,
        skip: Vec<String>,
        per_destination: usize,
        limit: usize,
    ) -> StoreResult<Vec<DueRef>> {
        self.readers
            .read(move |c| {
                deliveries::scan_due(c, now, after.as_deref(), &skip, per_destination, limit)
            })
            .await
    }

    async fn lease_deliveries(
        &self,
        owner: &str,
        event_ids: Vec<String>,
        // One node per file: its dispatcher alone holds the destination limit.
        _sending: HashMap<String, usize>,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<DueDelivery>> {
        let owner = owner.to_owned();
        self.writer
            .write(move |c| deliveries::lease(c, &owner, &event_ids, lease_until, now))
            .await
    }

    async fn record_attempt(&self, attempt: AttemptRecord) -> StoreResult<bool> {
        self.writer
            .write(move |c| deliveries::record_attempt(c, attempt))
            .await
    }

    async fn release_delivery(
        &self,
        event_id: &str,
        owner: &str,
        at: OffsetDateTime,
    ) -> StoreResult<()> {
        let (event_id, owner) = (event_id.to_owned(), owner.to_owned());
        self.writer
            .write(move |c| deliveries::release(c, &event_id, &owner, at))
            .await
    }

    async fn release_delivery_leases(&self, owner: &str, now: OffsetDateTime) -> StoreResult<u64> {
        let owner = owner.to_owned();
        self.writer
            .write(move |c| deliveries::release_owned(c, &owner, now))
            .await
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<OffsetDateTime>> {
        self.readers.read(deliveries::next_due).await
    }

    async fn attempts(&self, event_id: &str) -> StoreResult<Vec<Attempt>> {
        let event_id = event_id.to_owned();
        self.readers
            .read(move |c| deliveries::attempts(c, &event_id))
            .await
    }

    async fn redeliver(
        &self,
        generation: GenerationId,
        now: OffsetDateTime,
    ) -> StoreResult<Redelivery> {
        self.writer
            .write(move |c| deliveries::redeliver(c, generation, now))
            .await
    }

    async fn redeliver_failed(
        &self,
        account: AccountId,
        since: OffsetDateTime,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<u64> {
        self.writer
            .write(move |c| deliveries::redeliver_failed(c, account, since, until, now))
            .await
    }

    async fn delivery_counts(&self, now: OffsetDateTime) -> StoreResult<DeliveryCounts> {
        self.readers.read(move |c| deliveries::counts(c, now)).await
    }
}

#[async_trait]
impl SecretStore for SqliteStore {
    async fn signing_secrets(
        &self,
        account: AccountId,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<SealedSecret>> {
        self.readers
            .read(move |c| deliveries::signing_secrets(c, account, now))
            .await
    }

    async fn add_signing_secret(
        &self,
        account: AccountId,
        sealed: Vec<u8>,
        now: OffsetDateTime,
    ) -> StoreResult<bool> {
        self.writer
            .write(move |c| deliveries::add_signing_secret(c, account, sealed, now))
            .await
    }

    async fn rotate_signing_secret(
        &self,
        account: AccountId,
        sealed: Vec<u8>,
        now: OffsetDateTime,
        rotation: Rotation,
    ) -> StoreResult<Rotated> {
        self.writer
            .write(move |c| deliveries::rotate_signing_secret(c, account, sealed, now, rotation))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2030-01-01 00:00:00 UTC);

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    /// The database and its `-wal`/`-shm` are private from creation, whatever the umask, and
    /// an existing database left readable is tightened on open.
    #[cfg(unix)]
    #[tokio::test]
    async fn data_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reelay.sqlite3");
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_account("alice", Credits::ZERO, T0)
            .await
            .unwrap();
        for file in [path.clone(), sibling(&path, "-wal"), sibling(&path, "-shm")] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        drop(store);

        for file in [path.clone(), sibling(&path, "-wal"), sibling(&path, "-shm")] {
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_account("bob", Credits::ZERO, T0)
            .await
            .unwrap();
        for file in [path.clone(), sibling(&path, "-wal"), sibling(&path, "-shm")] {
            if file.exists() {
                assert_eq!(mode(&file), 0o600, "{} after reopening", file.display());
            }
        }
        assert_eq!(mode(&path), 0o600);
    }

    /// A database written before rotations retired older secrets may hold many still signing:
    /// the read is bounded to the current and the newest rotated-out one, and the next
    /// rotation retires the rest.
    #[tokio::test]
    async fn many_live_secrets_from_before_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reelay.sqlite3");
        let store = SqliteStore::open(&path).unwrap();
        let alice = store
            .create_account("alice", Credits::ZERO, T0)
            .await
            .unwrap();
        let micros = rows::micros;
        {
            let c = Connection::open(&path).unwrap();
            let later = micros(T0 + time::Duration::days(1));
            for i in 0..100u8 {
                c.execute(
                    "INSERT INTO signing_secrets (account_id, sealed, created_at, retired_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![
                        alice.id.to_string(),
                        vec![i],
                        micros(T0) + i64::from(i),
                        (i < 99).then_some(later),
                    ],
                )
                .unwrap();
            }
        }
        let signing = store.signing_secrets(alice.id, T0).await.unwrap();
        assert_eq!(
            signing.iter().map(|s| s.sealed.clone()).collect::<Vec<_>>(),
            [vec![99], vec![98]]
        );
        let now = T0 + time::Duration::minutes(10);
        let rotation = Rotation {
            overlap_until: now + time::Duration::days(1),
            refuse_if_rotated_after: now - time::Duration::minutes(1),
        };
        assert_eq!(
            store
                .rotate_signing_secret(alice.id, vec![200], now, rotation)
                .await,
            Ok(Rotated::Done)
        );
        let c = Connection::open(&path).unwrap();
        let live: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM signing_secrets WHERE retired_at IS NULL OR retired_at > ?1",
                [micros(now)],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(live, 2);
    }
}

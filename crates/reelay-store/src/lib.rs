//! reelay's storage: one [`Store`] trait that the rest of the product talks to, and its
//! implementations. Every rule that must hold across crashes and concurrent requests (a charge
//! with its generation, a refund at most once, an event with every terminal state) is kept
//! inside one transaction here.

pub mod copy;
mod error;
mod model;
pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;

use async_trait::async_trait;
use reelay_core::apikey::KeyHash;
use reelay_core::money::BalanceError;
use reelay_core::{AccountId, Credits, GenerationId, GenerationStatus, KeyId};
use time::OffsetDateTime;

pub use error::{StoreError, StoreResult};
pub use model::*;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Everything reelay keeps, in four parts a backend implements one by one. Implementations
/// must pass `tests/conformance.rs`; the rules that are the product's, not a backend's (the
/// stage check of a queue position, a timeout ending like any other end), are provided here
/// once, above them.
pub trait Store: AccountStore + GenerationStore + DeliveryStore + SecretStore + Clock {}

impl<T: AccountStore + GenerationStore + DeliveryStore + SecretStore + Clock> Store for T {}

/// The time every lease, deadline and due time is reckoned in. Nodes sharing a database take
/// it from the database, so that a node whose own clock runs ahead never sees another's
/// lease as lapsed early (and sends a webhook twice in parallel); one node's is its own.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The most pending generations a queue position counts, so that a status read costs the
/// same in a backlog of any size; a position equal to it means "this many or more".
pub const QUEUE_POSITION_CAP: u64 = 1_000;

/// What [`GenerationStore::watch_work`] calls.
pub type WakeFn = Box<dyn Fn() + Send + Sync>;

/// Most generations timed out by one [`GenerationStore::expire`] call.
pub const EXPIRE_BATCH: usize = 1_000;
/// How many of them are ended at a time.
const EXPIRE_AT_ONCE: usize = 32;

/// Accounts with their balances and ledger, API keys and worker tokens: who may call.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    async fn create_account(
        &self,
        name: &str,
        credits: Credits,
        now: OffsetDateTime,
    ) -> StoreResult<Account>;
    async fn account(&self, id: AccountId) -> StoreResult<Option<Account>>;
    async fn account_by_name(&self, name: &str) -> StoreResult<Option<Account>>;
    /// The oldest `limit` accounts, each with its count of live keys, and how many there are:
    /// what an operator's overview shows, bounded whatever the installation's size.
    async fn list_accounts(&self, limit: u32) -> StoreResult<Page<AccountOverview>>;
    /// Adds (or with a negative amount, removes) credits; returns the new balance, or, changing
    /// nothing, why the balance cannot change so: it would become negative or exceed
    /// [`Credits::MAX`] (counting what unfinished generations hold, see
    /// [`Credits::balance_after`]), so no later refund can overflow either.
    async fn add_credits(
        &self,
        id: AccountId,
        amount: Credits,
        now: OffsetDateTime,
    ) -> StoreResult<Result<Credits, BalanceError>>;
    async fn create_key(&self, key: NewKey, now: OffsetDateTime) -> StoreResult<ApiKeyInfo>;
    async fn list_keys(&self, account: Option<AccountId>) -> StoreResult<Vec<ApiKeyInfo>>;
    /// Returns false when the key does not exist or was already revoked.
    async fn revoke_key(&self, id: KeyId, now: OffsetDateTime) -> StoreResult<bool>;
    /// A live (not revoked) key, by its secret's hash.
    async fn authenticate(&self, hash: KeyHash) -> StoreResult<Option<ApiKeyInfo>>;
    async fn create_worker(&self, new: NewWorker, now: OffsetDateTime) -> StoreResult<WorkerInfo>;
    /// Every worker token, revoked ones too, oldest first.
    async fn list_workers(&self) -> StoreResult<Vec<WorkerInfo>>;
    /// Returns false when the token does not exist or was already revoked.
    async fn revoke_worker(&self, id: &str, now: OffsetDateTime) -> StoreResult<bool>;
    /// A live (not revoked) worker token. Never looks at API keys.
    async fn authenticate_worker(&self, hash: KeyHash) -> StoreResult<Option<WorkerInfo>>;
}

/// Generations: creation with its charge, the queue and its leases, the terminal transition
/// with its refund and outbox event, and retention.
#[async_trait]
pub trait GenerationStore: Send + Sync + 'static {
    /// Tells every node on this database that work was queued, so that their engines and
    /// waiting workers look at once instead of at their next poll. Returns at once; a backend
    /// may coalesce a burst into one signal. Nothing to do where one node is the only one.
    fn announce_work(&self) {}
    /// Calls `wake` whenever some node announces work ([`GenerationStore::announce_work`]),
    /// for as long as the process runs; returns at once. A lost signal costs only latency:
    /// every consumer polls as well.
    fn watch_work(&self, wake: WakeFn) {
        drop(wake);
    }
    /// Creates a generation and charges its price in one transaction, or replays the
    /// generation an idempotency key already made. With [`NewGeneration::start`], it is
    /// created processing (its first claim) under that lease.
    async fn create_generation(&self, new: NewGeneration) -> StoreResult<Created>;
    async fn generation(&self, id: GenerationId) -> StoreResult<Option<Generation>>;
    /// Newest first.
    async fn list_generations(
        &self,
        account: AccountId,
        status: Option<GenerationStatus>,
        limit: u32,
        offset: u64,
    ) -> StoreResult<Page<Generation>>;
    /// How many pending generations were created before this one (0 when not pending),
    /// counted up to [`QUEUE_POSITION_CAP`]: past it the answer is the cap, read "at least".
    async fn queue_position(&self, generation: &Generation) -> StoreResult<u64> {
        if generation.stage != Stage::Pending {
            return Ok(0);
        }
        self.pending_before(generation.created_at).await
    }
    /// How many pending generations were created before `created_at`, up to
    /// [`QUEUE_POSITION_CAP`], at a cost that does not grow with the backlog.
    async fn pending_before(&self, created_at: OffsetDateTime) -> StoreResult<u64>;

    /// Moves up to `limit` of the oldest pending generations (or processing ones whose lease
    /// expired) to processing under `owner`'s lease.
    async fn claim(
        &self,
        owner: &str,
        limit: usize,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<Generation>>;
    /// Extends a lease and records progress; false when the lease is no longer `owner`'s.
    async fn heartbeat(
        &self,
        id: GenerationId,
        owner: &str,
        lease_until: OffsetDateTime,
        progress_pct: u8,
    ) -> StoreResult<bool>;
    /// Ends a generation: terminal status, refund when due and the outbox event, together.
    async fn finish(
        &self,
        id: GenerationId,
        by: Finisher<'_>,
        outcome: Outcome,
        now: OffsetDateTime,
    ) -> StoreResult<Finished>;
    /// Fails with TIMEOUT the unfinished generations whose deadline has passed, up to
    /// [`EXPIRE_BATCH`] a call (the rest wait for the next); each ends through [`finish`]
    /// (refund and event included), so a timeout is like any other end.
    ///
    /// [`finish`]: GenerationStore::finish
    async fn expire(&self, now: OffsetDateTime) -> StoreResult<Vec<GenerationId>> {
        use futures::{StreamExt, TryStreamExt};
        let overdue = self.overdue(now, EXPIRE_BATCH).await?;
        // Several at once, so that a group-committing backend writes them together.
        let ended: Vec<Option<GenerationId>> = futures::stream::iter(overdue)
            .map(|id| async move {
                let timeout = Outcome::Failed(reelay_core::FailureCode::Timeout.into());
                let finished = self.finish(id, Finisher::Anyone, timeout, now).await?;
                Ok::<_, StoreError>(matches!(finished, Finished::Applied(_)).then_some(id))
            })
            .buffered(EXPIRE_AT_ONCE)
            .try_collect()
            .await?;
        Ok(ended.into_iter().flatten().collect())
    }
    /// Up to `limit` unfinished generations whose deadline is at or before `now`, earliest
    /// deadline first.
    async fn overdue(&self, now: OffsetDateTime, limit: usize) -> StoreResult<Vec<GenerationId>>;
    /// The earliest deadline among unfinished generations, to know when to look again.
    async fn next_deadline(&self) -> StoreResult<Option<OffsetDateTime>>;
    /// Returns the generations `owner` was working on to pending: for a node restarting, which
    /// knows its own work was interrupted. Anyone else's leases (an external worker's, another
    /// node's) are left to run or lapse.
    async fn release_leases(&self, owner: &str) -> StoreResult<u64>;

    /// Like [`Store::claim`], but only generations of `models` (none when it is empty);
    /// as bounded as `claim`, whatever the backlog of other models.
    async fn claim_models(
        &self,
        owner: &str,
        limit: usize,
        models: Vec<reelay_core::Model>,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<Generation>>;
    /// The lease that held a generation when it ended (None while unfinished, or when it ended
    /// outside any lease).
    async fn ended_lease(&self, id: GenerationId) -> StoreResult<Option<String>>;
    /// Who holds a processing generation's lease (None when it is not processing): the same
    /// fence as a heartbeat's, without extending anything.
    async fn lease_holder(&self, id: GenerationId) -> StoreResult<Option<String>>;
    /// The processing generations with their leases, soonest to lapse first, at most `limit`:
    /// what an operator's overview shows, bounded whatever the queue's size.
    async fn leases(&self, limit: u32) -> StoreResult<Vec<Lease>>;

    /// Up to `limit` finished generations, oldest first, that ended before `before` and still
    /// have their media; the caller deletes the files, then marks them.
    async fn media_to_prune(
        &self,
        before: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredMedia>>;
    /// Records that these generations' media are gone (their video URLs answer 410).
    async fn mark_media_pruned(
        &self,
        ids: Vec<GenerationId>,
        now: OffsetDateTime,
    ) -> StoreResult<()>;
    /// Deletes up to `limit` generations (oldest first) that ended before `before` and whose
    /// media are gone, with their events, attempt logs and idempotency keys; never one whose
    /// webhook is still being delivered; the ledger and balances stay. Returns how many.
    async fn prune_records(&self, before: OffsetDateTime, limit: usize) -> StoreResult<u64>;
    /// What a prune would delete now (counts; for `reelay prune --dry-run`).
    async fn prunable(
        &self,
        media_before: OffsetDateTime,
        records_before: OffsetDateTime,
    ) -> StoreResult<Prunable>;
}

/// The outbox and webhook deliveries: due events under leases, attempts, redelivery.
#[async_trait]
pub trait DeliveryStore: Send + Sync + 'static {
    async fn event_for(&self, generation: GenerationId) -> StoreResult<Option<Event>>;
    /// Due deliveries to one destination, oldest due first; with `from`, only those due at or
    /// after it. A refill of a backlogged destination resumes from the last one before: on
    /// PostgreSQL, the head of the due index holds an entry for every delivery done since the
    /// last vacuum, and reading from the head each time made a refill cost the size of the
    /// backlog already drained.
    async fn due_for_destination(
        &self,
        destination: &str,
        from: Option<OffsetDateTime>,
        limit: usize,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<DueAt>>;
    /// Walks the destinations that have pending deliveries, in key order from just after
    /// `after` (wrapping around), skipping `skip`, and returns up to `per_destination` due
    /// deliveries of each, `limit` in all. Costs a few index seeks per destination, however
    /// many deliveries wait: a destination with a million due rows is as cheap as one.
    async fn scan_due(
        &self,
        now: OffsetDateTime,
        after: Option<String>,
        skip: Vec<String>,
        per_destination: usize,
        limit: usize,
    ) -> StoreResult<Vec<DueRef>>;
    /// Leases those of `event_ids` still due (another node may have taken some) until
    /// `lease_until`, and returns them ready to send. A backend that several nodes share also
    /// leaves out what would take a destination past its cluster-wide limit of attempts in
    /// flight ([`crate::PgStore::with_destination_limit`]): the live leases other owners hold
    /// on it, plus `sending`, the requests `owner` itself has open to each destination. Its own
    /// leases are not counted from storage, since an attempt that has ended stays leased until
    /// its outcome is recorded, and counting those would hold back requests the destination
    /// has room for.
    async fn lease_deliveries(
        &self,
        owner: &str,
        event_ids: Vec<String>,
        sending: HashMap<String, usize>,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<DueDelivery>>;
    /// Records an attempt; its outcome moves the delivery on only while `owner` holds the
    /// lease (returns false otherwise: the attempt is kept in the log all the same).
    async fn record_attempt(&self, attempt: AttemptRecord) -> StoreResult<bool>;
    /// Gives a claimed delivery back unattempted, due at `at`.
    async fn release_delivery(
        &self,
        event_id: &str,
        owner: &str,
        at: OffsetDateTime,
    ) -> StoreResult<()>;
    /// Makes the deliveries `owner` had leased due at once, ahead of younger ones (due since
    /// their event was created): for a node restarting, which knows they were interrupted.
    async fn release_delivery_leases(&self, owner: &str, now: OffsetDateTime) -> StoreResult<u64>;
    /// When the next pending delivery is due (or its lease ends).
    async fn next_delivery_due(&self) -> StoreResult<Option<OffsetDateTime>>;
    /// The attempt log of an event, oldest first.
    async fn attempts(&self, event_id: &str) -> StoreResult<Vec<Attempt>>;
    /// Starts a new round of attempts for a finished delivery (same event, same webhook-id).
    async fn redeliver(
        &self,
        generation: GenerationId,
        now: OffsetDateTime,
    ) -> StoreResult<Redelivery>;
    /// Starts a new round for every failed delivery of `account` whose event was created in
    /// `[since, until)`; returns how many.
    async fn redeliver_failed(
        &self,
        account: AccountId,
        since: OffsetDateTime,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<u64>;
    async fn delivery_counts(&self, now: OffsetDateTime) -> StoreResult<DeliveryCounts>;
}

/// Webhook signing secrets, sealed by the master key before they reach a backend.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// The secrets that sign now, at most two: the current one first, then the one it replaced
    /// while its overlap lasts. (The read is bounded even on a database written before
    /// rotations retired older secrets.)
    async fn signing_secrets(
        &self,
        account: AccountId,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<SealedSecret>>;
    /// Adds the account's first current secret, only when it has none: returns false, changing
    /// nothing, when it has one (another request may have added it first).
    async fn add_signing_secret(
        &self,
        account: AccountId,
        sealed: Vec<u8>,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;
    /// Makes `sealed` the current secret, in one transaction: the one it replaces signs until
    /// `rotation.overlap_until`, and every older one still signing stops at `now`, so at most
    /// two ever sign. Refused, changing nothing, when the current secret was itself made by a
    /// rotation after `rotation.refuse_if_rotated_after` (the rate limit, checked against the
    /// stored secret so that it holds across processes). On an account without a secret, just
    /// adds it.
    async fn rotate_signing_secret(
        &self,
        account: AccountId,
        sealed: Vec<u8>,
        now: OffsetDateTime,
        rotation: Rotation,
    ) -> StoreResult<Rotated>;
}

//! The conformance suite every [`Store`] implementation must pass.
//!
//! Each check is a plain async function taking a [`Harness`] (something that opens the
//! backend's database, the same one every time). `conformance_tests!` turns the whole list into
//! `#[tokio::test]`s for one backend; a new backend adds one invocation at the bottom of this
//! file, with its own harness:
//!
//! ```ignore
//! conformance_tests!(postgres, PostgresHarness::new);
//! ```
//!
//! All instants are fixed (no wall clock), so no check depends on timing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::join_all;
use reelay_core::apikey::{IssuedKey, KeyHash};
use reelay_core::images::ImageFormat;
use reelay_core::money::BalanceError;
use reelay_core::retry::AttemptOutcome;
use reelay_core::{
    AccountId, AspectRatio, Credits, FailureCode, GenerationId, GenerationStatus, KeyId, Model,
};
use reelay_store::postgres::TestDatabase;
use reelay_store::{
    Account, AfterAttempt, Attempt, AttemptRecord, Created, DeliveryCounts, DeliveryState,
    DueDelivery, DueRef, Event, ExpiredMedia, Failure, Finished, Finisher, Generation, Idempotency,
    InputFile, NewGeneration, NewKey, NewWorker, Outcome, PgStore, Prunable, Redelivery, Rotated,
    Rotation, SealedSecret, Spec, SqliteStore, Stage, Start, Store, StoreError, Video, event_id,
    webhook_body,
};
use reelay_webhooks::GenerationEvent;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

// ------------------------------------------------------------------------------------------
// The harness: how a backend is opened.

/// Opens one backend's database. Each harness owns a database of its own, empty when the
/// harness is made (checks count every generation in it); every call to `open` opens that
/// *same* database again (a new handle), so a check can drop its store and see what survived.
#[async_trait]
trait Harness: Send + Sync {
    async fn open(&self) -> Arc<dyn Store>;
}

/// SQLite: one file in a fresh temporary directory.
struct SqliteHarness {
    dir: tempfile::TempDir,
}

impl SqliteHarness {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }
}

#[async_trait]
impl Harness for SqliteHarness {
    async fn open(&self) -> Arc<dyn Store> {
        let store = SqliteStore::open(self.dir.path().join("reelay.sqlite3"))
            .expect("opening the SQLite store");
        Arc::new(store)
    }
}

/// PostgreSQL: a database of its own on the test server, dropped with the harness.
struct PostgresHarness {
    db: TestDatabase,
}

impl PostgresHarness {
    async fn new() -> Self {
        Self {
            db: TestDatabase::create().await,
        }
    }

    async fn connect(&self) -> PgStore {
        PgStore::connect(self.db.url())
            .await
            .expect("opening the PostgreSQL store")
    }

    /// A store for one of several nodes, holding each destination to `limit` across them.
    async fn node(&self, limit: usize) -> PgStore {
        self.connect().await.with_destination_limit(limit)
    }
}

#[async_trait]
impl Harness for PostgresHarness {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(self.connect().await)
    }
}

/// Instantiates every check of the suite as a `#[tokio::test]` in a module named `$backend`.
/// `$make` is a closure returning a future of the backend's [`Harness`].
macro_rules! conformance_tests {
    ($backend:ident, $make:expr) => {
        conformance_tests!(@suite $backend, $make;
            accounts_hold_credits,
            keys_authenticate_until_revoked,
            create_generation_charges_its_price,
            create_generation_refused_leaves_no_trace,
            retention_prunes_media_then_records_and_keeps_the_ledger,
            concurrent_creates_never_overdraw,
            creates_at_once_are_charged_each_on_their_own,
            idempotent_replay_charges_once,
            idempotent_concurrent_requests_make_one_generation,
            idempotency_conflict_and_forgotten_keys,
            claim_heartbeat_finish_lifecycle,
            generations_started_at_creation_are_claimed_already,
            claim_skips_generations_past_their_deadline,
            finish_requires_the_lease_holder,
            failures_refund_by_code,
            concurrent_finishes_refund_once,
            expire_times_out_and_refunds_once,
            expired_lease_is_claimable_by_another_owner,
            release_leases_returns_the_owners_work_to_pending,
            concurrent_claims_never_share_a_generation,
            list_generations_newest_first_per_account,
            queue_position_counts_older_pending,
            next_deadline_is_the_earliest_unfinished,
            ledger_balances_add_up,
            credits_never_overflow,
            reopening_keeps_everything,
            finishing_writes_the_outbox_event,
            scan_due_walks_destinations,
            due_for_destination_oldest_first,
            leased_deliveries_are_not_due_until_the_lease_ends,
            record_attempt_moves_the_delivery_on,
            released_deliveries_are_due_again,
            redeliver_starts_a_new_round,
            redeliver_failed_counts_one_accounts_window,
            delivery_counts_and_next_due,
            signing_secrets_rotate,
            rotations_keep_at_most_two_signing,
            rotations_are_rate_limited,
            worker_tokens_are_not_api_keys,
            claim_models_filters_and_keeps_order,
            ended_lease_names_the_holder_at_the_end,
            finishes_and_attempts_arriving_together_answer_as_one_by_one,
            attempts_of_many_events_together_move_on_only_under_their_lease,
        );
    };
    (@suite $backend:ident, $make:expr; $($check:ident),* $(,)?) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let harness = ($make)().await;
                    super::$check(&harness).await;
                }
            )*
        }
    };
}

conformance_tests!(sqlite, || async { SqliteHarness::new() });
conformance_tests!(postgres, PostgresHarness::new);

// ------------------------------------------------------------------------------------------
// Helpers.

/// The suite's epoch; every instant is an offset from it. Millisecond-aligned so that every
/// backend can store it exactly.
const T0: OffsetDateTime = datetime!(2030-01-01 00:00:00 UTC);
/// The time limit used throughout: deadline = created_at + 10 minutes.
const LIMIT_SECS: i64 = 600;
/// A typical price: 0.25 credit.
const PRICE: i64 = 2_500;

fn at(secs: i64) -> OffsetDateTime {
    T0 + Duration::seconds(secs)
}

fn cr(units: i64) -> Credits {
    Credits::from_units(units)
}

fn spec(seed: u32) -> Spec {
    Spec {
        prompt: "A cat playing with a ball in a sunny room".into(),
        model: Model::Veo3Fast,
        aspect_ratio: AspectRatio::Landscape,
        seed,
        watermark_text: Some("reelay".into()),
        callback_url: Some("https://hooks.example.com/reelay".into()),
        inputs: vec![],
    }
}

/// A generation created `secs` after T0, with the standard time limit.
fn new_gen(account: AccountId, price: i64, secs: i64) -> NewGeneration {
    NewGeneration {
        id: GenerationId::random(),
        account_id: account,
        spec: spec(1_000 + secs as u32),
        price: cr(price),
        created_at: at(secs),
        deadline_at: at(secs + LIMIT_SECS),
        idempotency: None,
        start: None,
    }
}

fn idem(key: &str, hash: u8, not_before: OffsetDateTime) -> Option<Idempotency> {
    Some(Idempotency {
        key: key.into(),
        request_hash: [hash; 32],
        not_before,
    })
}

fn video(name: &str) -> Video {
    Video {
        file: format!("{name}.mp4"),
        url: format!("https://videos.example.com/{name}.mp4"),
    }
}

async fn account(store: &dyn Store, name: &str, credits: i64) -> Account {
    store
        .create_account(name, cr(credits), T0)
        .await
        .expect("creating an account")
}

/// The account of the live key with this hash.
async fn owner(store: &dyn Store, hash: KeyHash) -> Result<Option<AccountId>, StoreError> {
    Ok(store.authenticate(hash).await?.map(|key| key.account_id))
}

async fn balance(store: &dyn Store, id: AccountId) -> i64 {
    store
        .account(id)
        .await
        .expect("reading an account")
        .expect("the account exists")
        .balance
        .units()
}

async fn create(store: &dyn Store, new: NewGeneration) -> Generation {
    let created = store
        .create_generation(new)
        .await
        .expect("creating a generation");
    assert!(!created.replayed, "a fresh request must not be a replay");
    created.generation
}

async fn get(store: &dyn Store, id: GenerationId) -> Generation {
    store
        .generation(id)
        .await
        .expect("reading a generation")
        .expect("the generation exists")
}

async fn total(store: &dyn Store, account: AccountId) -> u64 {
    store
        .list_generations(account, None, 100, 0)
        .await
        .expect("listing generations")
        .total
}

fn applied(f: Finished) -> Generation {
    match f {
        Finished::Applied(g) => g,
        Finished::Refused(g) => panic!("expected Applied, got Refused({g:?})"),
    }
}

fn refused(f: Finished) -> Generation {
    match f {
        Finished::Refused(g) => g,
        Finished::Applied(g) => panic!("expected Refused, got Applied({g:?})"),
    }
}

fn ids(gens: &[Generation]) -> Vec<GenerationId> {
    gens.iter().map(|g| g.id).collect()
}

fn code_of(g: &Generation) -> Option<FailureCode> {
    match g.stage {
        Stage::Failed { code, .. } => Some(code),
        _ => None,
    }
}

/// The top-level keys of a JSON object, in the order they are written.
struct TopLevelKeys(Vec<String>);

impl<'de> Deserialize<'de> for TopLevelKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = TopLevelKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevelKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(TopLevelKeys(keys))
            }
        }
        d.deserialize_map(Keys)
    }
}

const EVENT_KEYS: [&str; 8] = [
    "generation_id",
    "status",
    "prompt",
    "video_url",
    "created_at",
    "completed_at",
    "seed",
    "error",
];

/// The outbox event of a terminal generation, checked against the generation itself; returns
/// the payload as JSON for the caller's outcome-specific checks.
async fn event_of(store: &dyn Store, g: &Generation) -> (Event, serde_json::Value) {
    let event = store
        .event_for(g.id)
        .await
        .expect("reading the outbox")
        .unwrap_or_else(|| panic!("no event for terminal generation {}", g.id));
    assert_eq!(event.generation_id, g.id);
    assert_eq!(event.account_id, g.account_id);
    assert_eq!(event.callback_url, g.spec.callback_url);
    let keys: TopLevelKeys = serde_json::from_str(&event.payload).expect("payload is an object");
    assert_eq!(keys.0, EVENT_KEYS, "payload keys in contract order");
    let typed: GenerationEvent =
        serde_json::from_str(&event.payload).expect("payload is a GenerationEvent");
    assert_eq!(typed.generation_id, g.id.0);
    assert_eq!(typed.prompt, g.spec.prompt);
    assert_eq!(typed.seed, g.spec.seed);
    assert_eq!(typed.created_at, g.created_at);
    assert_eq!(Some(typed.completed_at), g.stage.completed_at());
    let json = serde_json::from_str(&event.payload).expect("payload is JSON");
    (event, json)
}

/// Checks a failed generation's event: status "failed", no video, error.message = the code.
async fn assert_failed_event(store: &dyn Store, g: &Generation, code: FailureCode) {
    let (_, json) = event_of(store, g).await;
    assert_eq!(json["status"], "failed");
    assert_eq!(json["video_url"], serde_json::Value::Null);
    assert_eq!(json["error"]["message"], code.as_str());
    assert!(json["error"]["details"].is_object());
}

// ------------------------------------------------------------------------------------------
// Accounts, keys, credits.

async fn accounts_hold_credits(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();

    let alice = account(store, "alice", 100_000).await;
    assert_eq!(alice.name, "alice");
    assert_eq!(alice.balance, cr(100_000));
    assert_eq!(store.account(alice.id).await.unwrap(), Some(alice.clone()));
    let bob = account(store, "bob", 0).await;
    assert_eq!(bob.balance, Credits::ZERO);
    assert_ne!(alice.id, bob.id);

    assert_eq!(
        store.account_by_name("alice").await.unwrap().map(|a| a.id),
        Some(alice.id)
    );
    assert_eq!(
        store.account_by_name("bob").await.unwrap().map(|a| a.id),
        Some(bob.id)
    );
    assert_eq!(store.account_by_name("carol").await.unwrap(), None);
    assert_eq!(store.account(AccountId::random()).await.unwrap(), None);

    // Adding and removing credits.
    assert_eq!(
        store.add_credits(alice.id, cr(50_000), at(1)).await,
        Ok(Ok(cr(150_000)))
    );
    assert_eq!(
        store.add_credits(alice.id, cr(-30_000), at(2)).await,
        Ok(Ok(cr(120_000)))
    );
    assert_eq!(balance(store, alice.id).await, 120_000);

    // Removing more than the balance is refused and changes nothing.
    assert_eq!(
        store.add_credits(alice.id, cr(-120_001), at(3)).await,
        Ok(Err(BalanceError::Negative))
    );
    assert_eq!(balance(store, alice.id).await, 120_000);
    assert_eq!(
        store.add_credits(bob.id, cr(-1), at(3)).await,
        Ok(Err(BalanceError::Negative))
    );
    assert_eq!(balance(store, bob.id).await, 0);

    // Removing exactly the balance leaves zero.
    assert_eq!(
        store.add_credits(alice.id, cr(-120_000), at(4)).await,
        Ok(Ok(Credits::ZERO))
    );
    assert_eq!(balance(store, alice.id).await, 0);

    // Unknown accounts.
    for amount in [10_000, -10_000, 0] {
        assert_eq!(
            store
                .add_credits(AccountId::random(), cr(amount), at(5))
                .await,
            Err(StoreError::NotFound),
            "add_credits({amount}) to an unknown account"
        );
    }
    assert_eq!(balance(store, bob.id).await, 0);
}

async fn keys_authenticate_until_revoked(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;
    let bob = account(store, "bob", 0).await;

    let issue = |account_id: AccountId, name: &str| {
        let key = IssuedKey::generate();
        let new = NewKey {
            id: key.id,
            account_id,
            name: name.into(),
            shown_prefix: key.shown_prefix.clone(),
            hash: key.hash,
        };
        (key, new)
    };
    let (a1, new_a1) = issue(alice.id, "ci");
    let (a2, new_a2) = issue(alice.id, "laptop");
    let (b1, new_b1) = issue(bob.id, "prod");

    let info = store.create_key(new_a1, at(1)).await.unwrap();
    assert_eq!(info.id, a1.id);
    assert_eq!(info.account_id, alice.id);
    assert_eq!(info.name, "ci");
    assert_eq!(info.shown_prefix, a1.shown_prefix);
    assert_eq!(info.revoked_at, None);
    store.create_key(new_a2, at(2)).await.unwrap();
    store.create_key(new_b1, at(3)).await.unwrap();

    // A key authenticates as its account, by the hash of its secret.
    assert_eq!(
        owner(store, KeyHash::of(&a1.secret)).await,
        Ok(Some(alice.id))
    );
    assert_eq!(owner(store, a2.hash).await, Ok(Some(alice.id)));
    assert_eq!(owner(store, b1.hash).await, Ok(Some(bob.id)));
    assert_eq!(
        owner(store, KeyHash::of("rly_not-a-key-anyone-was-given")).await,
        Ok(None)
    );

    // It answers the key itself, so a session can end when that key is revoked.
    assert_eq!(
        store
            .authenticate(a2.hash)
            .await
            .unwrap()
            .map(|k| (k.id, k.name)),
        Some((a2.id, "laptop".to_owned()))
    );

    // Listings, filtered by account, show names and prefixes, never secrets.
    let mut alice_keys = store.list_keys(Some(alice.id)).await.unwrap();
    alice_keys.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(
        alice_keys
            .iter()
            .map(|k| (k.name.as_str(), k.shown_prefix.as_str(), k.account_id))
            .collect::<Vec<_>>(),
        [
            ("ci", a1.shown_prefix.as_str(), alice.id),
            ("laptop", a2.shown_prefix.as_str(), alice.id)
        ]
    );
    for (k, issued) in alice_keys.iter().zip([&a1, &a2]) {
        assert_ne!(k.shown_prefix, issued.secret);
        assert!(k.shown_prefix.len() < issued.secret.len());
        assert!(!format!("{k:?}").contains(&issued.secret));
    }
    let bob_keys = store.list_keys(Some(bob.id)).await.unwrap();
    assert_eq!(ids_of_keys(&bob_keys), [b1.id]);
    let mut every = ids_of_keys(&store.list_keys(None).await.unwrap());
    every.sort();
    let mut expected = vec![a1.id, a2.id, b1.id];
    expected.sort();
    assert_eq!(every, expected);

    // Revoking.
    assert_eq!(store.revoke_key(a1.id, at(10)).await, Ok(true));
    assert_eq!(owner(store, a1.hash).await, Ok(None));
    assert_eq!(store.revoke_key(a1.id, at(11)).await, Ok(false));
    assert_eq!(store.revoke_key(KeyId::random(), at(11)).await, Ok(false));
    // The other keys still work.
    assert_eq!(owner(store, a2.hash).await, Ok(Some(alice.id)));
    assert_eq!(owner(store, b1.hash).await, Ok(Some(bob.id)));

    // The operator's overview: every account with its live keys (alice's revoked one not
    // counted), as many as asked for, and the total.
    let overview = store.list_accounts(10).await.unwrap();
    assert_eq!(overview.total, 2);
    let mut listed: Vec<_> = overview
        .items
        .iter()
        .map(|o| (o.account.name.as_str(), o.live_keys))
        .collect();
    listed.sort();
    assert_eq!(listed, [("alice", 1), ("bob", 1)]);
    let first = store.list_accounts(1).await.unwrap();
    assert_eq!((first.items.len(), first.total), (1, 2));
    let listed = store.list_keys(Some(alice.id)).await.unwrap();
    let revoked = listed.iter().find(|k| k.id == a1.id).unwrap();
    assert_eq!(revoked.revoked_at, Some(at(10)));
    let live = listed.iter().find(|k| k.id == a2.id).unwrap();
    assert_eq!(live.revoked_at, None);

    // A key for an account that does not exist.
    let (ghost, new_ghost) = issue(AccountId::random(), "ghost");
    assert_eq!(
        store.create_key(new_ghost, at(12)).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(owner(store, ghost.hash).await, Ok(None));
    assert_eq!(store.list_keys(None).await.unwrap().len(), 3);
}

fn ids_of_keys(keys: &[reelay_store::ApiKeyInfo]) -> Vec<KeyId> {
    keys.iter().map(|k| k.id).collect()
}

// ------------------------------------------------------------------------------------------
// Creating generations: the charge.

async fn create_generation_charges_its_price(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 4 * PRICE).await;

    let mut new = new_gen(alice.id, PRICE, 1);
    // Its input images are kept by name and format.
    new.spec.inputs = vec![
        InputFile {
            name: "start_frame".into(),
            format: ImageFormat::Png,
        },
        InputFile {
            name: "end_frame".into(),
            format: ImageFormat::Jpeg,
        },
    ];
    let expected = Generation {
        id: new.id,
        account_id: alice.id,
        spec: new.spec.clone(),
        price: cr(PRICE),
        created_at: new.created_at,
        deadline_at: new.deadline_at,
        stage: Stage::Pending,
        media_pruned_at: None,
    };
    let g = create(store, new).await;
    assert_eq!(g, expected);
    assert_eq!(get(store, g.id).await, expected);
    assert_eq!(balance(store, alice.id).await, 3 * PRICE);

    create(store, new_gen(alice.id, PRICE, 2)).await;
    create(store, new_gen(alice.id, PRICE, 3)).await;
    assert_eq!(balance(store, alice.id).await, PRICE);

    // A price exactly equal to the balance succeeds and leaves zero.
    create(store, new_gen(alice.id, PRICE, 4)).await;
    assert_eq!(balance(store, alice.id).await, 0);
    assert_eq!(total(store, alice.id).await, 4);

    // A free generation on an empty balance is fine (nothing to charge).
    create(store, new_gen(alice.id, 0, 5)).await;
    assert_eq!(balance(store, alice.id).await, 0);
    assert_eq!(total(store, alice.id).await, 5);
}

async fn create_generation_refused_leaves_no_trace(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", PRICE - 1).await;

    let new = new_gen(alice.id, PRICE, 1);
    let id = new.id;
    assert_eq!(
        store.create_generation(new).await.map(|c| c.generation.id),
        Err(StoreError::InsufficientCredits)
    );
    assert_eq!(balance(store, alice.id).await, PRICE - 1);
    assert_eq!(total(store, alice.id).await, 0);
    assert_eq!(store.generation(id).await, Ok(None));
    assert_eq!(store.next_deadline().await, Ok(None));
    assert_eq!(store.claim("w1", 10, at(60), at(2)).await, Ok(vec![]));

    // One unit short after some spending, too.
    store
        .add_credits(alice.id, cr(1), at(2))
        .await
        .unwrap()
        .unwrap();
    create(store, new_gen(alice.id, PRICE / 2, 3)).await;
    let new = new_gen(alice.id, PRICE / 2 + 1, 4);
    let id = new.id;
    assert_eq!(
        store.create_generation(new).await.map(|c| c.generation.id),
        Err(StoreError::InsufficientCredits)
    );
    assert_eq!(balance(store, alice.id).await, PRICE / 2);
    assert_eq!(total(store, alice.id).await, 1);
    assert_eq!(store.generation(id).await, Ok(None));

    // An unknown account.
    let new = new_gen(AccountId::random(), PRICE, 5);
    let id = new.id;
    assert_eq!(
        store.create_generation(new).await.map(|c| c.generation.id),
        Err(StoreError::NotFound)
    );
    assert_eq!(store.generation(id).await, Ok(None));
}

async fn concurrent_creates_never_overdraw(h: &dyn Harness) {
    let store = h.open().await;
    let alice = account(store.as_ref(), "alice", 10 * PRICE).await;

    let results = join_all((0..50).map(|i| {
        let store = Arc::clone(&store);
        let new = new_gen(alice.id, PRICE, i);
        async move { store.create_generation(new).await }
    }))
    .await;

    let ok = results.iter().filter(|r| r.is_ok()).count();
    let short = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::InsufficientCredits)))
        .count();
    assert_eq!((ok, short), (10, 40), "results: {results:?}");
    assert_eq!(balance(store.as_ref(), alice.id).await, 0);
    assert_eq!(total(store.as_ref(), alice.id).await, 10);
}

/// Creates of several accounts at once (a backend may commit them together): each account's
/// are charged as if they came one by one. One that the balance cannot cover is refused on
/// its own, never the cheaper ones beside it; an unknown account's create refuses nothing
/// else; and whatever fits is charged exactly once.
async fn creates_at_once_are_charged_each_on_their_own(h: &dyn Harness) {
    let store = h.open().await;
    let rich = account(store.as_ref(), "rich", 100 * PRICE).await;
    let short = account(store.as_ref(), "short", 3 * PRICE).await;
    let tight = account(store.as_ref(), "tight", 2 * PRICE).await;
    let mut creates = Vec::new();
    for i in 0..10 {
        creates.push(("rich", new_gen(rich.id, PRICE, i)));
        creates.push(("short", new_gen(short.id, PRICE, 100 + i)));
    }
    creates.push(("tight, too dear", new_gen(tight.id, 3 * PRICE, 200)));
    creates.push(("tight", new_gen(tight.id, PRICE, 201)));
    creates.push(("tight", new_gen(tight.id, PRICE, 202)));
    creates.push(("nobody", new_gen(AccountId::random(), PRICE, 300)));

    let results = join_all(creates.into_iter().map(|(who, new)| {
        let store = Arc::clone(&store);
        async move { (who, store.create_generation(new).await) }
    }))
    .await;

    let count = |who: &str, ok: bool| {
        results
            .iter()
            .filter(|(w, r)| *w == who && r.is_ok() == ok)
            .count()
    };
    assert_eq!((count("rich", true), count("rich", false)), (10, 0));
    assert_eq!((count("short", true), count("short", false)), (3, 7));
    assert_eq!(count("tight", true), 2, "results: {results:?}");
    for (who, result) in &results {
        match (*who, result) {
            ("short", Err(e)) | ("tight, too dear", Err(e)) => {
                assert_eq!(*e, StoreError::InsufficientCredits)
            }
            ("nobody", r) => assert_eq!(r.as_ref().err(), Some(&StoreError::NotFound)),
            ("tight, too dear", Ok(_)) => panic!("charged past the balance: {results:?}"),
            _ => {}
        }
    }
    for (a, left, made) in [(&rich, 90 * PRICE, 10), (&short, 0, 3), (&tight, 0, 2)] {
        assert_eq!(balance(store.as_ref(), a.id).await, left, "{}", a.name);
        assert_eq!(total(store.as_ref(), a.id).await, made, "{}", a.name);
    }
}

// ------------------------------------------------------------------------------------------
// Idempotency.

async fn idempotent_replay_charges_once(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", PRICE).await;

    let mut first = new_gen(alice.id, PRICE, 10);
    first.idempotency = idem("order-1", 1, at(-3_600));
    let g = create(store, first.clone()).await;
    assert_eq!(balance(store, alice.id).await, 0);

    // The same request again (a retry makes a fresh id): the first generation, not charged
    // again, even though the balance could not cover a second charge.
    let mut retry = first.clone();
    retry.id = GenerationId::random();
    retry.created_at = at(20);
    retry.deadline_at = at(20 + LIMIT_SECS);
    let Created {
        generation,
        replayed,
    } = store.create_generation(retry.clone()).await.unwrap();
    assert!(replayed);
    assert_eq!(generation, g);
    assert_eq!(balance(store, alice.id).await, 0);
    assert_eq!(total(store, alice.id).await, 1);
    assert_eq!(store.generation(retry.id).await, Ok(None));

    // Still replayed once the generation has moved on: the current record comes back.
    let claimed = store.claim("w1", 1, at(90), at(30)).await.unwrap();
    assert_eq!(ids(&claimed), [g.id]);
    let done = applied(
        store
            .finish(
                g.id,
                Finisher::LeaseHolder("w1"),
                Outcome::Completed(video("a")),
                at(40),
            )
            .await
            .unwrap(),
    );
    let again = store.create_generation(retry).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.generation, done);
    assert_eq!(balance(store, alice.id).await, 0);
    assert_eq!(total(store, alice.id).await, 1);
}

async fn idempotent_concurrent_requests_make_one_generation(h: &dyn Harness) {
    let store = h.open().await;
    let alice = account(store.as_ref(), "alice", 5 * PRICE).await;

    let results = join_all((0..20).map(|_| {
        let store = Arc::clone(&store);
        let mut new = new_gen(alice.id, PRICE, 1);
        new.idempotency = idem("same-key", 7, at(-3_600));
        async move { store.create_generation(new).await }
    }))
    .await;

    let created: Vec<Created> = results
        .into_iter()
        .map(|r| r.expect("every concurrent retry succeeds"))
        .collect();
    let distinct: HashSet<GenerationId> = created.iter().map(|c| c.generation.id).collect();
    assert_eq!(distinct.len(), 1, "one generation for one idempotency key");
    assert_eq!(created.iter().filter(|c| !c.replayed).count(), 1);
    assert_eq!(balance(store.as_ref(), alice.id).await, 4 * PRICE);
    assert_eq!(total(store.as_ref(), alice.id).await, 1);
}

async fn idempotency_conflict_and_forgotten_keys(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 10 * PRICE).await;
    let bob = account(store, "bob", 10 * PRICE).await;

    let mut first = new_gen(alice.id, PRICE, 0);
    first.idempotency = idem("k", 1, at(-3_600));
    let g1 = create(store, first).await;

    // Same key, different request: a conflict, nothing created or charged.
    let mut other = new_gen(alice.id, PRICE, 10);
    other.idempotency = idem("k", 2, at(-3_600));
    let other_id = other.id;
    assert_eq!(
        store
            .create_generation(other)
            .await
            .map(|c| c.generation.id),
        Err(StoreError::IdempotencyConflict)
    );
    assert_eq!(store.generation(other_id).await, Ok(None));
    assert_eq!(balance(store, alice.id).await, 9 * PRICE);
    assert_eq!(total(store, alice.id).await, 1);

    // Another key is another request.
    let mut second_key = new_gen(alice.id, PRICE, 11);
    second_key.idempotency = idem("k2", 1, at(-3_600));
    let g2 = create(store, second_key).await;
    assert_ne!(g2.id, g1.id);
    assert_eq!(balance(store, alice.id).await, 8 * PRICE);

    // Keys belong to their account: bob's "k" is not alice's.
    let mut bobs = new_gen(bob.id, PRICE, 12);
    bobs.idempotency = idem("k", 2, at(-3_600));
    let gb = create(store, bobs).await;
    assert_eq!(gb.account_id, bob.id);
    assert_ne!(gb.id, g1.id);
    assert_eq!(balance(store, bob.id).await, 9 * PRICE);

    // A key whose first use is older than `not_before` is forgotten: a new generation, charged,
    // whatever request it comes with.
    let mut later = new_gen(alice.id, PRICE, 100);
    later.idempotency = idem("k", 3, at(1));
    let g3 = create(store, later.clone()).await;
    assert_ne!(g3.id, g1.id);
    assert_eq!(balance(store, alice.id).await, 7 * PRICE);
    assert_eq!(total(store, alice.id).await, 3);

    // From then on the key means the new request.
    let mut retry = later;
    retry.id = GenerationId::random();
    retry.created_at = at(110);
    retry.idempotency = idem("k", 3, at(50));
    let replay = store.create_generation(retry).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.generation.id, g3.id);
    let mut stale = new_gen(alice.id, PRICE, 120);
    stale.idempotency = idem("k", 1, at(50));
    assert_eq!(
        store
            .create_generation(stale)
            .await
            .map(|c| c.generation.id),
        Err(StoreError::IdempotencyConflict)
    );
    assert_eq!(balance(store, alice.id).await, 7 * PRICE);
    assert_eq!(total(store, alice.id).await, 3);
}

// ------------------------------------------------------------------------------------------
// The lifecycle.

async fn claim_heartbeat_finish_lifecycle(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 10 * PRICE).await;
    // Created out of order, to check that claim goes by creation time, not insertion order.
    let g2 = create(store, new_gen(alice.id, PRICE, 2)).await;
    let g1 = create(store, new_gen(alice.id, PRICE, 1)).await;
    let g3 = create(store, new_gen(alice.id, PRICE, 3)).await;

    // The oldest first, no more than `limit`, moved to processing.
    let claimed = store.claim("w1", 2, at(40), at(10)).await.unwrap();
    assert_eq!(ids(&claimed), [g1.id, g2.id]);
    for g in &claimed {
        assert_eq!(
            g.stage,
            Stage::Processing {
                started_at: at(10),
                progress_pct: 0,
                claims: 1
            }
        );
        assert_eq!(&get(store, g.id).await, g);
    }
    assert_eq!(get(store, g3.id).await.stage, Stage::Pending);
    let rest = store.claim("w2", 10, at(300), at(11)).await.unwrap();
    assert_eq!(ids(&rest), [g3.id]);
    assert_eq!(store.claim("w3", 10, at(42), at(12)).await, Ok(vec![]));

    // The lease holder is known while it works; nobody holds a pending one.
    assert_eq!(store.lease_holder(g1.id).await, Ok(Some("w1".into())));
    assert_eq!(store.lease_holder(g3.id).await, Ok(Some("w2".into())));
    assert_eq!(store.lease_holder(GenerationId::random()).await, Ok(None));
    // The overview of leases: soonest to lapse first, bounded.
    let leases = store.leases(10).await.unwrap();
    assert_eq!(
        leases
            .iter()
            .map(|l| (l.generation.id, l.owner.as_str(), l.until))
            .collect::<Vec<_>>(),
        // Ties in id order.
        [
            (g2.id, "w1", at(40)),
            (g1.id, "w1", at(40)),
            (g3.id, "w2", at(300))
        ]
    );
    assert_eq!(leases[2].generation, get(store, g3.id).await);
    assert_eq!(store.leases(1).await.unwrap().len(), 1);

    // Heartbeats: the owner extends its lease and reports progress; nobody else can.
    assert_eq!(store.heartbeat(g1.id, "w1", at(70), 40).await, Ok(true));
    assert_eq!(
        get(store, g1.id).await.stage,
        Stage::Processing {
            started_at: at(10),
            progress_pct: 40,
            claims: 1
        }
    );
    assert_eq!(store.heartbeat(g1.id, "w2", at(70), 50).await, Ok(false));
    assert_eq!(
        store
            .heartbeat(GenerationId::random(), "w1", at(70), 50)
            .await,
        Ok(false)
    );
    assert_eq!(store.heartbeat(g2.id, "w1", at(300), 10).await, Ok(true));
    // g1's lease was extended to at(70): at(50), past its first lease, nobody else can take it.
    assert_eq!(store.claim("w3", 10, at(80), at(50)).await, Ok(vec![]));

    // Finishing by someone who does not hold the lease is refused and changes nothing.
    let before = get(store, g1.id).await;
    let r = refused(
        store
            .finish(
                g1.id,
                Finisher::LeaseHolder("w2"),
                Outcome::Completed(video("wrong")),
                at(55),
            )
            .await
            .unwrap(),
    );
    assert_eq!(r, before);
    assert_eq!(get(store, g1.id).await, before);
    assert_eq!(store.event_for(g1.id).await, Ok(None));

    // The holder completes it.
    let v = video("g1");
    let done = applied(
        store
            .finish(
                g1.id,
                Finisher::LeaseHolder("w1"),
                Outcome::Completed(v.clone()),
                at(60),
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        done.stage,
        Stage::Completed {
            started_at: Some(at(10)),
            completed_at: at(60),
            video: v.clone()
        }
    );
    assert_eq!(done.id, g1.id);
    assert_eq!(done.spec, g1.spec);
    assert_eq!(done.price, g1.price);
    assert_eq!(get(store, g1.id).await, done);
    assert_eq!(
        store.lease_holder(g1.id).await,
        Ok(None),
        "ended: nobody holds it"
    );
    assert_eq!(balance(store, alice.id).await, 7 * PRICE, "no refund");

    let (event, json) = event_of(store, &done).await;
    assert_eq!(json["generation_id"], g1.id.to_string());
    assert_eq!(json["status"], "completed");
    assert_eq!(json["video_url"], v.url.as_str());
    assert_eq!(json["error"], serde_json::Value::Null);

    // Finishing again (any way) is refused: no second event, no refund, no change.
    let again = refused(
        store
            .finish(
                g1.id,
                Finisher::LeaseHolder("w1"),
                Outcome::Completed(video("twice")),
                at(65),
            )
            .await
            .unwrap(),
    );
    assert_eq!(again, done);
    let cancel = refused(
        store
            .finish(
                g1.id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                at(66),
            )
            .await
            .unwrap(),
    );
    assert_eq!(cancel, done);
    assert_eq!(get(store, g1.id).await, done);
    assert_eq!(store.event_for(g1.id).await, Ok(Some(event)));
    assert_eq!(balance(store, alice.id).await, 7 * PRICE);

    // A finished generation has no lease and is never claimed again.
    assert_eq!(store.heartbeat(g1.id, "w1", at(200), 99).await, Ok(false));
    let later = store.claim("w3", 10, at(500), at(400)).await.unwrap();
    assert!(!ids(&later).contains(&g1.id));
    // (g2 and g3 had lost their leases by at(400), so they are the ones taken.)
    assert_eq!(ids(&later), [g2.id, g3.id]);
}

async fn generations_started_at_creation_are_claimed_already(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 10 * PRICE).await;
    // Started by node n1, its lease until `secs`.
    let started = |mut new: NewGeneration, secs| {
        new.start = Some(Start {
            owner: "n1".into(),
            until: at(secs),
        });
        new
    };
    let queued = new_gen(alice.id, PRICE, 1);
    // Started ones made together with a queued one (one batch on PostgreSQL), and one under
    // an idempotency key (its own transaction).
    let (first, second) = (new_gen(alice.id, PRICE, 2), new_gen(alice.id, PRICE, 3));
    let (queued, first, second) = futures::join!(
        create(store, queued),
        create(store, started(first, 30)),
        create(store, started(second, 30))
    );
    let mut keyed = new_gen(alice.id, PRICE, 4);
    keyed.idempotency = idem("k", 1, at(0));
    let keyed = create(store, started(keyed, 40)).await;

    for (g, secs) in [(&first, 2), (&second, 3), (&keyed, 4)] {
        assert_eq!(
            g.stage,
            Stage::Processing {
                started_at: at(secs),
                progress_pct: 0,
                claims: 1
            }
        );
        assert_eq!(&get(store, g.id).await, g);
        assert_eq!(store.lease_holder(g.id).await, Ok(Some("n1".into())));
        assert_eq!(store.queue_position(g).await, Ok(0));
    }
    assert_eq!(queued.stage, Stage::Pending);
    // Behind the queued one only: the started ones are not in the queue.
    let later = create(store, new_gen(alice.id, PRICE, 5)).await;
    assert_eq!(store.queue_position(&later).await, Ok(1));
    assert_eq!(balance(store, alice.id).await, 5 * PRICE);

    // A claim takes only the queued ones while the leases hold.
    let claimed = store.claim("n2", 10, at(100), at(10)).await.unwrap();
    assert_eq!(ids(&claimed), [queued.id, later.id]);
    // Their holder works on them like on anything it claimed.
    assert_eq!(store.heartbeat(first.id, "n1", at(60), 50).await, Ok(true));
    assert_eq!(store.heartbeat(first.id, "n2", at(60), 50).await, Ok(false));
    applied(
        store
            .finish(
                second.id,
                Finisher::LeaseHolder("n1"),
                Outcome::Completed(video("second")),
                at(20),
            )
            .await
            .unwrap(),
    );
    // A lease that lapses returns its generation to the queue, a second claim.
    let taken = store.claim("n2", 10, at(200), at(50)).await.unwrap();
    assert_eq!(ids(&taken), [keyed.id]);
    assert_eq!(
        taken[0].stage,
        Stage::Processing {
            started_at: at(50),
            progress_pct: 0,
            claims: 2
        }
    );
}

async fn claim_skips_generations_past_their_deadline(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 10 * PRICE).await;
    let old = create(store, new_gen(alice.id, PRICE, 0)).await; // deadline at(600)
    let young = create(store, new_gen(alice.id, PRICE, 300)).await; // deadline at(900)

    // Past old's deadline: only the young one is handed out.
    let claimed = store.claim("w1", 10, at(700), at(650)).await.unwrap();
    assert_eq!(ids(&claimed), [young.id]);
    assert_eq!(get(store, old.id).await.stage, Stage::Pending);

    // A processing generation whose lease expired after its deadline is not handed out either.
    assert_eq!(store.claim("w2", 10, at(1_000), at(950)).await, Ok(vec![]));
}

async fn finish_requires_the_lease_holder(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 10 * PRICE).await;
    let g = create(store, new_gen(alice.id, PRICE, 0)).await;

    // A worker cannot end a generation it never claimed.
    let r = refused(
        store
            .finish(
                g.id,
                Finisher::LeaseHolder("w1"),
                Outcome::Failed(FailureCode::TaskFailed.into()),
                at(5),
            )
            .await
            .unwrap(),
    );
    assert_eq!(r.stage, Stage::Pending);
    assert_eq!(get(store, g.id).await.stage, Stage::Pending);
    assert_eq!(store.event_for(g.id).await, Ok(None));
    assert_eq!(balance(store, alice.id).await, 9 * PRICE);

    // An unknown generation.
    assert_eq!(
        store
            .finish(
                GenerationId::random(),
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                at(6),
            )
            .await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.generation(GenerationId::random()).await, Ok(None));
    assert_eq!(store.event_for(GenerationId::random()).await, Ok(None));

    // The holder fails it with a reason: kept on the generation and in its event's details.
    let claimed = store.claim("w1", 1, at(100), at(7)).await.unwrap();
    assert_eq!(ids(&claimed), [g.id]);
    let reason = "the model ran out of GPU memory";
    let failure = Failure {
        code: FailureCode::TaskFailed,
        reason: Some(reason.into()),
    };
    let failed = applied(
        store
            .finish(
                g.id,
                Finisher::LeaseHolder("w1"),
                Outcome::Failed(failure),
                at(8),
            )
            .await
            .unwrap(),
    );
    assert!(
        matches!(&failed.stage, Stage::Failed { reason: Some(r), .. } if r == reason),
        "{failed:?}"
    );
    assert_eq!(get(store, g.id).await, failed);
    let (_, json) = event_of(store, &failed).await;
    assert_eq!(
        json["error"]["details"],
        serde_json::json!({ "reason": reason })
    );
    assert_eq!(balance(store, alice.id).await, 10 * PRICE, "refunded");
}

async fn failures_refund_by_code(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 100 * PRICE).await;

    // Cancel (by anyone) a pending generation: refunded, CANCELLED in the event.
    let g = create(store, new_gen(alice.id, PRICE, 0)).await;
    assert_eq!(balance(store, alice.id).await, 99 * PRICE);
    let cancelled = applied(
        store
            .finish(
                g.id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                at(5),
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        cancelled.stage,
        Stage::Failed {
            started_at: None,
            completed_at: at(5),
            code: FailureCode::Cancelled,
            reason: None
        }
    );
    assert_eq!(get(store, g.id).await, cancelled);
    assert_eq!(balance(store, alice.id).await, 100 * PRICE);
    assert_failed_event(store, &cancelled, FailureCode::Cancelled).await;
    // Cancelling again refunds nothing more.
    refused(
        store
            .finish(
                g.id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                at(6),
            )
            .await
            .unwrap(),
    );
    assert_eq!(balance(store, alice.id).await, 100 * PRICE);

    // UNSAFE_CONTENT: not refunded.
    let g = create(store, new_gen(alice.id, PRICE, 1)).await;
    let unsafe_ = applied(
        store
            .finish(
                g.id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::UnsafeContent.into()),
                at(7),
            )
            .await
            .unwrap(),
    );
    assert_eq!(code_of(&unsafe_), Some(FailureCode::UnsafeContent));
    assert_eq!(balance(store, alice.id).await, 99 * PRICE);
    assert_failed_event(store, &unsafe_, FailureCode::UnsafeContent).await;

    // Every code, pending and processing: refunded exactly when the code says so.
    let mut expected = 99 * PRICE;
    for (i, code) in FailureCode::ALL.into_iter().enumerate() {
        for processing in [false, true] {
            let secs = 10 + 2 * i as i64 + processing as i64;
            let g = create(store, new_gen(alice.id, PRICE, secs)).await;
            expected -= PRICE;
            let by = if processing {
                let claimed = store.claim("w", 1, at(secs + 60), at(secs)).await.unwrap();
                assert_eq!(ids(&claimed), [g.id]);
                Finisher::LeaseHolder("w")
            } else {
                Finisher::Anyone
            };
            let failed = applied(
                store
                    .finish(g.id, by, Outcome::Failed(code.into()), at(secs))
                    .await
                    .unwrap(),
            );
            assert_eq!(code_of(&failed), Some(code));
            if code.refunded() {
                expected += PRICE;
            }
            assert_eq!(
                balance(store, alice.id).await,
                expected,
                "{code} (processing: {processing}) refunded: {}",
                code.refunded()
            );
            assert_failed_event(store, &failed, code).await;
        }
    }
}

async fn concurrent_finishes_refund_once(h: &dyn Harness) {
    let store = h.open().await;
    let alice = account(store.as_ref(), "alice", 10 * PRICE).await;
    let g = create(store.as_ref(), new_gen(alice.id, PRICE, 0)).await;
    let claimed = store.claim("w1", 1, at(60), at(1)).await.unwrap();
    assert_eq!(ids(&claimed), [g.id]);

    // Cancellations race with the worker's own failure report and a timeout sweep.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let canceller = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            canceller
                .finish(
                    g.id,
                    Finisher::Anyone,
                    Outcome::Failed(FailureCode::Cancelled.into()),
                    at(2 + i),
                )
                .await
        }));
        let worker = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            worker
                .finish(
                    g.id,
                    Finisher::LeaseHolder("w1"),
                    Outcome::Failed(FailureCode::TaskFailed.into()),
                    at(2 + i),
                )
                .await
        }));
    }
    let results: Vec<Finished> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let applied_count = results
        .iter()
        .filter(|f| matches!(f, Finished::Applied(_)))
        .count();
    assert_eq!(applied_count, 1, "exactly one finish wins");
    let winner = results
        .into_iter()
        .find_map(|f| match f {
            Finished::Applied(g) => Some(g),
            Finished::Refused(_) => None,
        })
        .unwrap();
    assert_eq!(get(store.as_ref(), g.id).await, winner);
    assert_eq!(balance(store.as_ref(), alice.id).await, 10 * PRICE);
    let code = code_of(&winner).unwrap();
    assert_failed_event(store.as_ref(), &winner, code).await;
}

async fn expire_times_out_and_refunds_once(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 4 * PRICE).await;
    let g1 = create(store, new_gen(alice.id, PRICE, 0)).await; // deadline at(600)
    let g2 = create(store, new_gen(alice.id, PRICE, 1)).await; // deadline at(601)
    let done = create(store, new_gen(alice.id, PRICE, 2)).await; // finished before
    let g3 = create(store, new_gen(alice.id, PRICE, 300)).await; // deadline at(900)
    assert_eq!(balance(store, alice.id).await, 0);

    // g1 processing under a lease that outlives its deadline; g2 still pending.
    let claimed = store.claim("w1", 1, at(2_000), at(10)).await.unwrap();
    assert_eq!(ids(&claimed), [g1.id]);
    let (processing, pending) = (g1, g2);
    applied(
        store
            .finish(
                done.id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                at(20),
            )
            .await
            .unwrap(),
    );
    assert_eq!(balance(store, alice.id).await, PRICE);
    let done = get(store, done.id).await;

    // Past both deadlines but not g3's.
    let mut expired = store.expire(at(700)).await.unwrap();
    expired.sort();
    let mut expected = vec![processing.id, pending.id];
    expected.sort();
    assert_eq!(expired, expected);
    assert_eq!(balance(store, alice.id).await, 3 * PRICE, "two refunds");
    let timed_out_processing = get(store, processing.id).await;
    assert_eq!(
        timed_out_processing.stage,
        Stage::Failed {
            started_at: Some(at(10)),
            completed_at: at(700),
            code: FailureCode::Timeout,
            reason: None
        }
    );
    let timed_out_pending = get(store, pending.id).await;
    assert_eq!(
        timed_out_pending.stage,
        Stage::Failed {
            started_at: None,
            completed_at: at(700),
            code: FailureCode::Timeout,
            reason: None
        }
    );
    assert_failed_event(store, &timed_out_processing, FailureCode::Timeout).await;
    assert_failed_event(store, &timed_out_pending, FailureCode::Timeout).await;
    assert_eq!(get(store, g3.id).await.stage, Stage::Pending);
    assert_eq!(
        get(store, done.id).await,
        done,
        "finished ones are untouched"
    );
    assert_failed_event(store, &done, FailureCode::Cancelled).await;

    // Again: nothing more to expire, nothing more refunded.
    assert_eq!(store.expire(at(700)).await, Ok(vec![]));
    assert_eq!(store.expire(at(800)).await, Ok(vec![]));
    assert_eq!(balance(store, alice.id).await, 3 * PRICE);

    // The old lease holder reports late: refused, the record stays TIMEOUT, no refund/charge.
    let late = refused(
        store
            .finish(
                processing.id,
                Finisher::LeaseHolder("w1"),
                Outcome::Completed(video("late")),
                at(710),
            )
            .await
            .unwrap(),
    );
    assert_eq!(late, timed_out_processing);
    assert_eq!(get(store, processing.id).await, timed_out_processing);
    assert_eq!(
        store.heartbeat(processing.id, "w1", at(2_000), 90).await,
        Ok(false)
    );
    assert_failed_event(store, &timed_out_processing, FailureCode::Timeout).await;
    assert_eq!(balance(store, alice.id).await, 3 * PRICE);

    // g3's turn.
    assert_eq!(store.next_deadline().await, Ok(Some(at(900))));
    assert_eq!(store.expire(at(901)).await, Ok(vec![g3.id]));
    assert_eq!(balance(store, alice.id).await, 4 * PRICE);
    assert_eq!(store.expire(at(5_000)).await, Ok(vec![]));
    assert_eq!(balance(store, alice.id).await, 4 * PRICE);
    assert_eq!(store.next_deadline().await, Ok(None));
}

async fn expired_lease_is_claimable_by_another_owner(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 10 * PRICE).await;
    let g = create(store, new_gen(alice.id, PRICE, 0)).await;

    assert_eq!(
        ids(&store.claim("w1", 1, at(30), at(1)).await.unwrap()),
        [g.id]
    );
    // While the lease holds, nobody else gets it.
    assert_eq!(store.claim("w2", 1, at(40), at(10)).await, Ok(vec![]));
    // Once it lapsed, another owner does.
    let taken = store.claim("w2", 1, at(120), at(60)).await.unwrap();
    assert_eq!(ids(&taken), [g.id]);
    assert_eq!(
        taken[0].stage,
        Stage::Processing {
            started_at: at(60),
            progress_pct: 0,
            claims: 2
        }
    );
    // The old owner has lost it.
    assert_eq!(store.heartbeat(g.id, "w1", at(200), 50).await, Ok(false));
    refused(
        store
            .finish(
                g.id,
                Finisher::LeaseHolder("w1"),
                Outcome::Completed(video("w1")),
                at(70),
            )
            .await
            .unwrap(),
    );
    assert_eq!(store.event_for(g.id).await, Ok(None));
    // The new owner finishes it.
    assert_eq!(store.heartbeat(g.id, "w2", at(150), 50).await, Ok(true));
    let done = applied(
        store
            .finish(
                g.id,
                Finisher::LeaseHolder("w2"),
                Outcome::Completed(video("w2")),
                at(80),
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        done.stage,
        Stage::Completed {
            started_at: Some(at(60)),
            completed_at: at(80),
            video: video("w2")
        }
    );
    event_of(store, &done).await;
}

async fn release_leases_returns_the_owners_work_to_pending(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 10 * PRICE).await;
    let g1 = create(store, new_gen(alice.id, PRICE, 0)).await;
    let g2 = create(store, new_gen(alice.id, PRICE, 1)).await;
    let g3 = create(store, new_gen(alice.id, PRICE, 2)).await;
    let g4 = create(store, new_gen(alice.id, PRICE, 3)).await;

    let claimed = store.claim("w1", 3, at(1_000), at(5)).await.unwrap();
    assert_eq!(ids(&claimed), [g1.id, g2.id, g3.id]);
    assert_eq!(store.heartbeat(g2.id, "w1", at(1_000), 30).await, Ok(true));
    let done = applied(
        store
            .finish(
                g1.id,
                Finisher::LeaseHolder("w1"),
                Outcome::Completed(video("g1")),
                at(6),
            )
            .await
            .unwrap(),
    );

    // Another owner's lease (an external worker's) is not this node's to release.
    let g5 = create(store, new_gen(alice.id, PRICE, 4)).await;
    let theirs = store.claim("wl_other", 1, at(1_000), at(5)).await.unwrap();
    assert_eq!(ids(&theirs), [g4.id]);
    assert_eq!(store.release_leases("w1").await, Ok(2));
    assert!(matches!(
        get(store, g4.id).await.stage,
        Stage::Processing { .. }
    ));
    assert_eq!(store.release_leases("wl_other").await, Ok(1));
    assert_eq!(get(store, g2.id).await.stage, Stage::Pending);
    assert_eq!(get(store, g3.id).await.stage, Stage::Pending);
    assert_eq!(get(store, g4.id).await.stage, Stage::Pending);
    assert_eq!(get(store, g1.id).await, done, "terminal ones are untouched");
    assert_eq!(store.heartbeat(g2.id, "w1", at(1_000), 40).await, Ok(false));
    assert_eq!(store.queue_position(&get(store, g2.id).await).await, Ok(0));
    assert_eq!(balance(store, alice.id).await, 5 * PRICE);

    // Back in the queue in creation order, lease still far in the future or not.
    let again = store.claim("w2", 10, at(100), at(7)).await.unwrap();
    assert_eq!(ids(&again), [g2.id, g3.id, g4.id, g5.id]);
    // A released lease counts as lost: g2, g3 and g4 are on their second claim, g5 its first.
    let claims: Vec<_> = again
        .iter()
        .map(|g| match g.stage {
            Stage::Processing { claims, .. } => claims,
            _ => panic!("claimed but not processing: {g:?}"),
        })
        .collect();
    assert_eq!(claims, [2, 2, 2, 1]);
    assert_eq!(store.release_leases("w2").await, Ok(4));
    assert_eq!(store.release_leases("w2").await, Ok(0));
}

async fn concurrent_claims_never_share_a_generation(h: &dyn Harness) {
    let store = h.open().await;
    let alice = account(store.as_ref(), "alice", 100 * PRICE).await;
    let mut created = Vec::new();
    for i in 0..30 {
        created.push(create(store.as_ref(), new_gen(alice.id, PRICE, i)).await.id);
    }

    let results = join_all((0..10).map(|w| {
        let store = Arc::clone(&store);
        async move {
            let owner = format!("w{w}");
            let claimed = store.claim(&owner, 4, at(500), at(40)).await.unwrap();
            (owner, claimed)
        }
    }))
    .await;

    let mut seen = HashSet::new();
    for (owner, claimed) in &results {
        for g in claimed {
            assert!(seen.insert(g.id), "{} handed out twice", g.id);
            // Each claimed generation is leased to the one who got it.
            assert_eq!(store.heartbeat(g.id, owner, at(500), 1).await, Ok(true));
        }
    }
    // A backend may hand out fewer than `limit` under contention (e.g. skipping locked rows),
    // but nothing may be lost: whatever is left is claimable afterwards.
    let rest = store.claim("late", 100, at(500), at(41)).await.unwrap();
    for g in &rest {
        assert!(seen.insert(g.id), "{} handed out twice", g.id);
    }
    assert_eq!(seen, created.into_iter().collect::<HashSet<_>>());
    assert_eq!(store.claim("later", 100, at(500), at(42)).await, Ok(vec![]));
}

// ------------------------------------------------------------------------------------------
// Reading.

async fn list_generations_newest_first_per_account(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 100 * PRICE).await;
    let bob = account(store, "bob", 100 * PRICE).await;
    let carol = account(store, "carol", 0).await;

    let mut a = Vec::new();
    for i in 0..5 {
        a.push(create(store, new_gen(alice.id, PRICE, 10 * i)).await);
        create(store, new_gen(bob.id, PRICE, 10 * i + 5)).await;
    }
    // a[0] completed, a[1] failed, a[2] processing, a[3], a[4] pending.
    assert_eq!(
        ids(&store.claim("w", 1, at(1_000), at(60)).await.unwrap()),
        [a[0].id]
    );
    applied(
        store
            .finish(
                a[0].id,
                Finisher::LeaseHolder("w"),
                Outcome::Completed(video("a0")),
                at(61),
            )
            .await
            .unwrap(),
    );
    applied(
        store
            .finish(
                a[1].id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                at(62),
            )
            .await
            .unwrap(),
    );
    // Pending now: bob's at 5 and 15, then a[2] at 20: claiming 3 takes a[2] too.
    let claimed = store.claim("w", 3, at(1_000), at(63)).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(ids(&claimed).contains(&a[2].id));

    let newest_first: Vec<GenerationId> = a.iter().rev().map(|g| g.id).collect();
    let page = store
        .list_generations(alice.id, None, 100, 0)
        .await
        .unwrap();
    assert_eq!(page.total, 5);
    assert_eq!(ids(&page.items), newest_first);
    assert!(page.items.iter().all(|g| g.account_id == alice.id));
    // Listed records are the current ones.
    for g in &page.items {
        assert_eq!(&get(store, g.id).await, g);
    }

    // Pages.
    let page = store.list_generations(alice.id, None, 2, 0).await.unwrap();
    assert_eq!(
        (ids(&page.items), page.total),
        (newest_first[0..2].to_vec(), 5)
    );
    let page = store.list_generations(alice.id, None, 2, 2).await.unwrap();
    assert_eq!(
        (ids(&page.items), page.total),
        (newest_first[2..4].to_vec(), 5)
    );
    let page = store.list_generations(alice.id, None, 2, 4).await.unwrap();
    assert_eq!(
        (ids(&page.items), page.total),
        (newest_first[4..5].to_vec(), 5)
    );
    let page = store.list_generations(alice.id, None, 2, 10).await.unwrap();
    assert_eq!((ids(&page.items), page.total), (vec![], 5));

    // Status filters: the total counts the filtered set.
    let by_status = |status| async move {
        let page = store
            .list_generations(alice.id, Some(status), 100, 0)
            .await
            .unwrap();
        assert!(page.items.iter().all(|g| g.stage.status() == status));
        (ids(&page.items), page.total)
    };
    assert_eq!(
        by_status(GenerationStatus::Pending).await,
        (vec![a[4].id, a[3].id], 2)
    );
    assert_eq!(
        by_status(GenerationStatus::Processing).await,
        (vec![a[2].id], 1)
    );
    assert_eq!(
        by_status(GenerationStatus::Completed).await,
        (vec![a[0].id], 1)
    );
    assert_eq!(
        by_status(GenerationStatus::Failed).await,
        (vec![a[1].id], 1)
    );
    let page = store
        .list_generations(alice.id, Some(GenerationStatus::Pending), 1, 1)
        .await
        .unwrap();
    assert_eq!((ids(&page.items), page.total), (vec![a[3].id], 2));

    // Other accounts see only their own.
    let page = store.list_generations(bob.id, None, 100, 0).await.unwrap();
    assert_eq!(page.total, 5);
    assert!(page.items.iter().all(|g| g.account_id == bob.id));
    assert!(page.items.iter().all(|g| !ids(&a).contains(&g.id)));
    let page = store
        .list_generations(carol.id, None, 100, 0)
        .await
        .unwrap();
    assert_eq!((page.items.len(), page.total), (0, 0));
    let page = store
        .list_generations(AccountId::random(), None, 100, 0)
        .await
        .unwrap();
    assert_eq!((page.items.len(), page.total), (0, 0));
}

async fn queue_position_counts_older_pending(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 100 * PRICE).await;
    let bob = account(store, "bob", 100 * PRICE).await;
    let g0 = create(store, new_gen(alice.id, PRICE, 0)).await;
    let b1 = create(store, new_gen(bob.id, PRICE, 1)).await;
    let g2 = create(store, new_gen(alice.id, PRICE, 2)).await;
    let g3 = create(store, new_gen(alice.id, PRICE, 3)).await;

    let position = |id| async move {
        let g = get(store, id).await;
        store.queue_position(&g).await.unwrap()
    };
    // One queue for everybody.
    assert_eq!(position(g0.id).await, 0);
    assert_eq!(position(b1.id).await, 1);
    assert_eq!(position(g2.id).await, 2);
    assert_eq!(position(g3.id).await, 3);

    // Claimed: no longer pending, 0, and the rest move up.
    assert_eq!(
        ids(&store.claim("w", 1, at(100), at(10)).await.unwrap()),
        [g0.id]
    );
    assert_eq!(position(g0.id).await, 0);
    assert_eq!(position(b1.id).await, 0);
    assert_eq!(position(g2.id).await, 1);
    assert_eq!(position(g3.id).await, 2);

    // Finished ones are not in the queue either.
    applied(
        store
            .finish(
                b1.id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                at(11),
            )
            .await
            .unwrap(),
    );
    applied(
        store
            .finish(
                g0.id,
                Finisher::LeaseHolder("w"),
                Outcome::Completed(video("g0")),
                at(12),
            )
            .await
            .unwrap(),
    );
    assert_eq!(position(b1.id).await, 0);
    assert_eq!(position(g0.id).await, 0);
    assert_eq!(position(g2.id).await, 0);
    assert_eq!(position(g3.id).await, 1);
}

async fn next_deadline_is_the_earliest_unfinished(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    assert_eq!(store.next_deadline().await, Ok(None));
    let alice = account(store, "alice", 100 * PRICE).await;

    let g1 = create(store, new_gen(alice.id, PRICE, 0)).await; // at(600)
    let mut short = new_gen(alice.id, PRICE, 60);
    short.deadline_at = at(300);
    let g2 = create(store, short).await;
    let g3 = create(store, new_gen(alice.id, PRICE, 120)).await; // at(720)
    assert_eq!(store.next_deadline().await, Ok(Some(at(300))));

    applied(
        store
            .finish(
                g2.id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                at(130),
            )
            .await
            .unwrap(),
    );
    assert_eq!(store.next_deadline().await, Ok(Some(at(600))));

    // Processing generations count too.
    let claimed = store.claim("w", 1, at(400), at(140)).await.unwrap();
    assert_eq!(ids(&claimed), [g1.id]);
    assert_eq!(store.next_deadline().await, Ok(Some(at(600))));

    applied(
        store
            .finish(
                g1.id,
                Finisher::LeaseHolder("w"),
                Outcome::Completed(video("g1")),
                at(150),
            )
            .await
            .unwrap(),
    );
    assert_eq!(store.next_deadline().await, Ok(Some(at(720))));
    applied(
        store
            .finish(
                g3.id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Maintenance.into()),
                at(160),
            )
            .await
            .unwrap(),
    );
    assert_eq!(store.next_deadline().await, Ok(None));
}

// ------------------------------------------------------------------------------------------
// Money and durability.

async fn ledger_balances_add_up(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let initial = 50_000;
    let alice = account(store, "alice", initial).await;
    let bob = account(store, "bob", 50_000).await;
    let (mut credited, mut charged, mut refunded) = (0i64, 0i64, 0i64);
    let expected =
        |credited: i64, charged: i64, refunded: i64| initial + credited - charged + refunded;

    assert_eq!(
        store.add_credits(alice.id, cr(20_000), at(0)).await,
        Ok(Ok(cr(expected(20_000, 0, 0))))
    );
    credited += 20_000;

    let prices = [2_500, 5_000, 7_500, 1_000, 3_000, 4_000, 1_234];
    let mut g = Vec::new();
    for (i, price) in prices.into_iter().enumerate() {
        g.push(create(store, new_gen(alice.id, price, i as i64)).await);
        charged += price;
        // Bob's activity never touches alice's balance.
        create(store, new_gen(bob.id, 100, i as i64)).await;
    }
    assert_eq!(
        balance(store, alice.id).await,
        expected(credited, charged, refunded)
    );

    // Refused: too expensive.
    assert_eq!(
        store
            .create_generation(new_gen(alice.id, 10_000_000, 10))
            .await
            .map(|c| c.generation.id),
        Err(StoreError::InsufficientCredits)
    );

    let fail = |id, by, code: FailureCode, secs| async move {
        store
            .finish(id, by, Outcome::Failed(code.into()), at(secs))
            .await
            .unwrap()
    };
    // g0 cancelled: refund. g1 unsafe: none.
    applied(fail(g[0].id, Finisher::Anyone, FailureCode::Cancelled, 20).await);
    refunded += prices[0];
    applied(fail(g[1].id, Finisher::Anyone, FailureCode::UnsafeContent, 21).await);

    // Alice's g2..g6 and bob's 7 are pending; claim them all.
    let claimed = store.claim("w", 100, at(1_000), at(30)).await.unwrap();
    assert_eq!(claimed.len(), 5 + 7);
    let done = store
        .finish(
            g[2].id,
            Finisher::LeaseHolder("w"),
            Outcome::Completed(video("g2")),
            at(31),
        )
        .await
        .unwrap();
    applied(done);
    applied(
        fail(
            g[3].id,
            Finisher::LeaseHolder("w"),
            FailureCode::TaskFailed,
            32,
        )
        .await,
    );
    refunded += prices[3];
    applied(
        fail(
            g[4].id,
            Finisher::LeaseHolder("w"),
            FailureCode::ModerationFailed,
            33,
        )
        .await,
    );
    applied(
        fail(
            g[5].id,
            Finisher::LeaseHolder("w"),
            FailureCode::Maintenance,
            34,
        )
        .await,
    );
    refunded += prices[5];

    // Second attempts change nothing.
    refused(fail(g[0].id, Finisher::Anyone, FailureCode::Cancelled, 40).await);
    refused(fail(g[3].id, Finisher::Anyone, FailureCode::Cancelled, 41).await);
    refused(fail(g[1].id, Finisher::Anyone, FailureCode::Cancelled, 42).await);

    // g6 and bob's times out.
    let expired = store.expire(at(2_000)).await.unwrap();
    assert_eq!(expired.len(), 1 + 7);
    assert!(expired.contains(&g[6].id));
    refunded += prices[6];
    assert_eq!(store.expire(at(3_000)).await, Ok(vec![]));

    assert_eq!(
        store.add_credits(alice.id, cr(-5_000), at(3_001)).await,
        Ok(Ok(cr(expected(credited - 5_000, charged, refunded))))
    );
    credited -= 5_000;

    assert_eq!(
        balance(store, alice.id).await,
        expected(credited, charged, refunded)
    );
    assert_eq!(
        balance(store, bob.id).await,
        50_000,
        "bob's were all refunded"
    );
}

/// Balances never pass [`Credits::MAX`] (SQLite would turn the sum into a float that nothing
/// reads back), and what unfinished generations hold counts, so their refunds always fit.
async fn credits_never_overflow(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let max = Credits::MAX.units();
    let above = Ok(Err(BalanceError::AboveMaximum));
    let alice = account(store, "alice", max - PRICE).await;

    // Up to the maximum exactly; past it is refused and changes nothing.
    assert_eq!(
        store.add_credits(alice.id, cr(PRICE), at(1)).await,
        Ok(Ok(Credits::MAX))
    );
    for amount in [1, PRICE, max] {
        assert_eq!(
            store.add_credits(alice.id, cr(amount), at(2)).await,
            above,
            "adding {amount}"
        );
        assert_eq!(balance(store, alice.id).await, max);
    }

    // A pending generation holds its price: credits added meanwhile leave room for its refund.
    let g = create(store, new_gen(alice.id, PRICE, 3)).await;
    assert_eq!(balance(store, alice.id).await, max - PRICE);
    for amount in [1, PRICE] {
        assert_eq!(
            store.add_credits(alice.id, cr(amount), at(4)).await,
            above,
            "adding {amount} while {PRICE} is held"
        );
    }
    assert_eq!(
        store.add_credits(alice.id, cr(0), at(4)).await,
        Ok(Ok(cr(max - PRICE)))
    );
    applied(
        store
            .finish(
                g.id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                at(5),
            )
            .await
            .unwrap(),
    );
    assert_eq!(balance(store, alice.id).await, max, "refunded in full");

    // A completed generation holds nothing any more.
    let g = create(store, new_gen(alice.id, PRICE, 6)).await;
    assert_eq!(
        ids(&store.claim("w", 1, at(100), at(7)).await.unwrap()),
        [g.id]
    );
    applied(
        store
            .finish(
                g.id,
                Finisher::LeaseHolder("w"),
                Outcome::Completed(video("full")),
                at(8),
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        store.add_credits(alice.id, cr(PRICE), at(9)).await,
        Ok(Ok(Credits::MAX))
    );

    // The other way: never below zero, even by the most negative amount there is.
    assert_eq!(
        store
            .add_credits(alice.id, Credits::from_units(i64::MIN), at(10))
            .await,
        Ok(Err(BalanceError::Negative))
    );
    assert_eq!(
        store.add_credits(alice.id, cr(-max), at(11)).await,
        Ok(Ok(Credits::ZERO))
    );

    // An account opened at the maximum.
    let bob = account(store, "bob", max).await;
    assert_eq!(bob.balance, Credits::MAX);
    assert_eq!(store.add_credits(bob.id, cr(1), at(12)).await, above);
    assert_eq!(balance(store, bob.id).await, max);
}

async fn reopening_keeps_everything(h: &dyn Harness) {
    let store = h.open().await;
    let alice = account(store.as_ref(), "alice", 10 * PRICE).await;
    let key = IssuedKey::generate();
    store
        .create_key(
            NewKey {
                id: key.id,
                account_id: alice.id,
                name: "ci".into(),
                shown_prefix: key.shown_prefix.clone(),
                hash: key.hash,
            },
            at(0),
        )
        .await
        .unwrap();
    let revoked = IssuedKey::generate();
    store
        .create_key(
            NewKey {
                id: revoked.id,
                account_id: alice.id,
                name: "old".into(),
                shown_prefix: revoked.shown_prefix.clone(),
                hash: revoked.hash,
            },
            at(0),
        )
        .await
        .unwrap();
    assert_eq!(store.revoke_key(revoked.id, at(1)).await, Ok(true));

    let mut idem_req = new_gen(alice.id, PRICE, 1);
    idem_req.idempotency = idem("order-7", 7, at(-3_600));
    let done = create(store.as_ref(), idem_req.clone()).await;
    let failed = create(store.as_ref(), new_gen(alice.id, PRICE, 2)).await;
    let running = create(store.as_ref(), new_gen(alice.id, PRICE, 3)).await;
    let waiting = create(store.as_ref(), new_gen(alice.id, PRICE, 4)).await;
    let claimed = store.claim("w1", 1, at(300), at(5)).await.unwrap();
    assert_eq!(ids(&claimed), [done.id]);
    applied(
        store
            .finish(
                done.id,
                Finisher::LeaseHolder("w1"),
                Outcome::Completed(video("done")),
                at(6),
            )
            .await
            .unwrap(),
    );
    applied(
        store
            .finish(
                failed.id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                at(7),
            )
            .await
            .unwrap(),
    );
    let claimed = store.claim("w1", 1, at(300), at(8)).await.unwrap();
    assert_eq!(ids(&claimed), [running.id]);
    assert_eq!(
        store.heartbeat(running.id, "w1", at(300), 25).await,
        Ok(true)
    );

    let before_account = store.account(alice.id).await.unwrap();
    let before_keys = store.list_keys(Some(alice.id)).await.unwrap();
    let before_list = store
        .list_generations(alice.id, None, 100, 0)
        .await
        .unwrap();
    let before_events = (
        store.event_for(done.id).await.unwrap(),
        store.event_for(failed.id).await.unwrap(),
    );
    assert!(before_events.0.is_some() && before_events.1.is_some());
    assert_eq!(balance(store.as_ref(), alice.id).await, 7 * PRICE);
    drop(store);

    let store = h.open().await;
    let store = store.as_ref();
    assert_eq!(store.account(alice.id).await.unwrap(), before_account);
    assert_eq!(
        store.account_by_name("alice").await.unwrap().map(|a| a.id),
        Some(alice.id)
    );
    assert_eq!(store.list_keys(Some(alice.id)).await.unwrap(), before_keys);
    assert_eq!(owner(store, key.hash).await, Ok(Some(alice.id)));
    assert_eq!(owner(store, revoked.hash).await, Ok(None));
    let after_list = store
        .list_generations(alice.id, None, 100, 0)
        .await
        .unwrap();
    assert_eq!(after_list.total, before_list.total);
    assert_eq!(after_list.items, before_list.items);
    assert_eq!(
        (
            store.event_for(done.id).await.unwrap(),
            store.event_for(failed.id).await.unwrap(),
        ),
        before_events
    );
    assert_eq!(store.event_for(running.id).await, Ok(None));

    // The lease, the queue, the deadlines and the idempotency key survived too.
    assert_eq!(
        store.heartbeat(running.id, "w2", at(300), 30).await,
        Ok(false)
    );
    assert_eq!(
        store.heartbeat(running.id, "w1", at(300), 30).await,
        Ok(true)
    );
    assert_eq!(
        store.queue_position(&get(store, waiting.id).await).await,
        Ok(0)
    );
    assert_eq!(store.next_deadline().await, Ok(Some(at(3 + LIMIT_SECS))));
    let mut retry = idem_req;
    retry.id = GenerationId::random();
    let replay = store.create_generation(retry).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.generation.id, done.id);
    assert_eq!(balance(store, alice.id).await, 7 * PRICE);
    // And it keeps working.
    assert_eq!(
        ids(&store.claim("w2", 10, at(400), at(10)).await.unwrap()),
        [waiting.id]
    );
}

// ------------------------------------------------------------------------------------------
// Retention.

async fn retention_prunes_media_then_records_and_keeps_the_ledger(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 10 * PRICE).await;
    let quiet = |secs| {
        let mut new = new_gen(alice.id, PRICE, secs);
        new.spec.callback_url = None;
        new
    };
    let completed = create(store, quiet(1)).await;
    let cancelled = create(store, quiet(2)).await;
    let pending = create(store, quiet(3)).await;
    let end = |id, outcome, secs| async move {
        applied(
            store
                .finish(id, Finisher::Anyone, outcome, at(secs))
                .await
                .unwrap(),
        )
    };
    end(completed.id, Outcome::Completed(video("c")), 100).await;
    end(
        cancelled.id,
        Outcome::Failed(FailureCode::Cancelled.into()),
        200,
    )
    .await;
    // Its webhook is still being delivered.
    let hooked = finished_with(store, alice.id, Some(HOOK_A), 4, 150).await;
    let kept = balance(store, alice.id).await;

    assert_eq!(
        store.prunable(at(1_000), at(1_000)).await,
        Ok(Prunable {
            media: 3,
            records: 3
        })
    );
    // Media: the oldest ended first, bounded, with what to delete.
    let due = store.media_to_prune(at(160), 10).await.unwrap();
    assert_eq!(
        due,
        [
            ExpiredMedia {
                id: completed.id,
                video_file: Some("c.mp4".into()),
                has_inputs: false
            },
            ExpiredMedia {
                id: hooked.id,
                video_file: Some("v4.mp4".into()),
                has_inputs: false
            }
        ]
    );
    assert_eq!(store.media_to_prune(at(160), 1).await.unwrap().len(), 1);
    store
        .mark_media_pruned(vec![completed.id, hooked.id], at(300))
        .await
        .unwrap();
    assert_eq!(
        get(store, completed.id).await.media_pruned_at,
        Some(at(300))
    );
    assert_eq!(store.media_to_prune(at(160), 10).await, Ok(vec![]));

    // Records: only those whose media are gone and whose webhook is settled.
    assert_eq!(store.prune_records(at(1_000), 10).await, Ok(1));
    assert_eq!(store.generation(completed.id).await, Ok(None));
    assert_eq!(store.event_for(completed.id).await, Ok(None));
    assert!(store.generation(hooked.id).await.unwrap().is_some());
    assert!(store.generation(cancelled.id).await.unwrap().is_some());
    assert_eq!(store.prune_records(at(1_000), 10).await, Ok(0));
    store
        .mark_media_pruned(vec![cancelled.id], at(300))
        .await
        .unwrap();
    assert_eq!(store.prune_records(at(1_000), 10).await, Ok(1));
    assert_eq!(store.generation(cancelled.id).await, Ok(None));

    // The pending one is untouched; balances (and the ledger behind them) are kept.
    assert_eq!(get(store, pending.id).await.stage, Stage::Pending);
    assert_eq!(balance(store, alice.id).await, kept);
    assert_eq!(
        total(store, alice.id).await,
        2,
        "the pending one and the hooked one"
    );
}

// ------------------------------------------------------------------------------------------
// The outbox and webhook deliveries.

const HOOK_A: &str = "https://a.example.com/hook";
const HOOK_B: &str = "https://b.example.com/hook";
const DEST_A: &str = "https://a.example.com:443";
const DEST_B: &str = "https://b.example.com:443";

/// A free generation created at `created` with `callback`, completed (by anyone) at `done`:
/// its event, if it has a callback, is due from `done`.
async fn finished_with(
    store: &dyn Store,
    account: AccountId,
    callback: Option<&str>,
    created: i64,
    done: i64,
) -> Generation {
    let mut new = new_gen(account, 0, created);
    new.spec.callback_url = callback.map(Into::into);
    let g = create(store, new).await;
    applied(
        store
            .finish(
                g.id,
                Finisher::Anyone,
                Outcome::Completed(video(&format!("v{created}"))),
                at(done),
            )
            .await
            .expect("finishing a generation"),
    )
}

/// The event id of a generation finished with `callback` at `done`.
async fn due_event(store: &dyn Store, account: AccountId, callback: &str, done: i64) -> String {
    event_id(
        finished_with(store, account, Some(callback), done, done)
            .await
            .id,
    )
}

async fn ev(store: &dyn Store, event: &str) -> Event {
    let g = store
        .generation(generation_of(event))
        .await
        .unwrap()
        .expect("the event's generation exists");
    store
        .event_for(g.id)
        .await
        .expect("reading the outbox")
        .expect("the event exists")
}

/// The generation id back from an event id (`msg_` + simple UUID).
fn generation_of(event: &str) -> GenerationId {
    event
        .strip_prefix("msg_")
        .expect("an event id")
        .parse()
        .expect("a generation id in the event id")
}

fn due_ref(event_id: &str, destination: &str) -> DueRef {
    DueRef {
        event_id: event_id.into(),
        destination: destination.into(),
    }
}

fn ids_of(leased: &[DueDelivery]) -> Vec<String> {
    leased.iter().map(|d| d.event_id.clone()).collect()
}

fn record(
    event_id: &str,
    owner: &str,
    secs: i64,
    outcome: AttemptOutcome,
    status_code: Option<u16>,
    next: AfterAttempt,
) -> AttemptRecord {
    AttemptRecord {
        event_id: event_id.into(),
        owner: owner.into(),
        started_at: at(secs),
        duration_ms: 120,
        outcome,
        status_code,
        response_body: status_code.map(|s| format!("body {s}")),
        error: None,
        next,
    }
}

/// Leases `event_id` for `owner` at `secs` (it must be due) and records one attempt with
/// `next`; the lease is the owner's, so the attempt moves the delivery on.
async fn attempt_once(
    store: &dyn Store,
    event_id: &str,
    owner: &str,
    secs: i64,
    next: AfterAttempt,
) {
    let leased = store
        .lease_deliveries(
            owner,
            vec![event_id.into()],
            HashMap::new(),
            at(secs + 60),
            at(secs),
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&leased), [event_id], "{event_id} is due at {secs}");
    let (outcome, code) = match next {
        AfterAttempt::Delivered => (AttemptOutcome::Delivered, Some(200)),
        _ => (AttemptOutcome::HttpError, Some(503)),
    };
    assert_eq!(
        store
            .record_attempt(record(event_id, owner, secs, outcome, code, next))
            .await,
        Ok(true)
    );
}

async fn due_at(store: &dyn Store, destination: &str, secs: i64) -> Vec<String> {
    due_from(store, destination, None, 100, secs).await
}

/// The ids [`Store::due_for_destination`] finds, checking the due time it gives each.
async fn due_from(
    store: &dyn Store,
    destination: &str,
    from_secs: Option<i64>,
    limit: usize,
    secs: i64,
) -> Vec<String> {
    let found = store
        .due_for_destination(destination, from_secs.map(at), limit, at(secs))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for due in found {
        assert_eq!(
            ev(store, &due.event_id).await.next_attempt_at,
            Some(due.due_at)
        );
        ids.push(due.event_id);
    }
    ids
}

async fn scan(
    store: &dyn Store,
    secs: i64,
    after: Option<&str>,
    skip: &[&str],
    per_destination: usize,
    limit: usize,
) -> Vec<DueRef> {
    store
        .scan_due(
            at(secs),
            after.map(Into::into),
            skip.iter().map(|s| s.to_string()).collect(),
            per_destination,
            limit,
        )
        .await
        .unwrap()
}

fn attempt_numbers(attempts: &[Attempt]) -> Vec<u32> {
    attempts.iter().map(|a| a.number).collect()
}

async fn finishing_writes_the_outbox_event(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;

    assert_eq!(store.next_delivery_due().await, Ok(None));
    assert_eq!(
        store.delivery_counts(at(0)).await,
        Ok(DeliveryCounts::default())
    );

    // With a callback: a pending event, due at the finish time, named after the generation.
    let with = finished_with(store, alice.id, Some("https://hooks.example.com/a"), 1, 5).await;
    let (event, _) = event_of(store, &with).await;
    let eid = event_id(with.id);
    assert_eq!(event.id, eid);
    assert_eq!(event.state, DeliveryState::Pending);
    assert_eq!(event.created_at, at(5));
    assert_eq!(event.next_attempt_at, Some(at(5)));
    assert_eq!(event.total_attempts, 0);
    assert_eq!(event.last_attempt_at, None);
    assert_eq!(event.last_status_code, None);
    assert_eq!(event.failure_reason, None);
    assert_eq!(event.delivered_at, None);
    assert!(!event.in_flight);
    let dest = "https://hooks.example.com:443";
    assert_eq!(DueRef::of(&with), Some(due_ref(&eid, dest)));
    assert_eq!(due_at(store, dest, 4).await, Vec::<String>::new());
    assert_eq!(due_at(store, dest, 5).await, [eid.as_str()]);
    assert_eq!(scan(store, 4, None, &[], 10, 10).await, []);
    assert_eq!(
        scan(store, 5, None, &[], 10, 10).await,
        [due_ref(&eid, dest)]
    );
    assert_eq!(store.next_delivery_due().await, Ok(Some(at(5))));

    // Without: an event all the same (the terminal state has one), with nothing to deliver.
    let without = finished_with(store, alice.id, None, 2, 6).await;
    assert_eq!(DueRef::of(&without), None);
    let (event, _) = event_of(store, &without).await;
    assert_eq!(event.id, event_id(without.id));
    assert_eq!(event.state, DeliveryState::None);
    assert_eq!(event.created_at, at(6));
    assert_eq!(event.next_attempt_at, None);
    assert_eq!(event.callback_url, None);
    assert_eq!(
        scan(store, 1_000_000, None, &[], 10, 10).await,
        [due_ref(&eid, dest)]
    );
    assert_eq!(store.next_delivery_due().await, Ok(Some(at(5))));
    let leased = store
        .lease_deliveries(
            "w1",
            vec![event_id(without.id)],
            HashMap::new(),
            at(2_000),
            at(1_000),
        )
        .await
        .unwrap();
    assert_eq!(leased, []);
    assert_eq!(
        store.delivery_counts(at(1_000)).await,
        Ok(DeliveryCounts {
            due: 1,
            scheduled: 0,
            failed: 0
        })
    );

    // An unfinished generation has no event.
    let running = create(store, new_gen(alice.id, 0, 3)).await;
    assert_eq!(store.event_for(running.id).await, Ok(None));
    assert_eq!(store.event_for(GenerationId::random()).await, Ok(None));
}

async fn scan_due_walks_destinations(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;

    let a10 = due_event(store, alice.id, HOOK_A, 10).await;
    let b13 = due_event(store, alice.id, HOOK_B, 13).await;
    let a11 = due_event(store, alice.id, HOOK_A, 11).await;
    let a12 = due_event(store, alice.id, "https://a.example.com/other?x=1", 12).await;
    let b14 = due_event(store, alice.id, HOOK_B, 14).await;
    let a100 = due_event(store, alice.id, HOOK_A, 100).await;
    finished_with(store, alice.id, None, 15, 15).await;
    let a = |id: &String| due_ref(id, DEST_A);
    let b = |id: &String| due_ref(id, DEST_B);

    // Everything due, destination by destination, oldest first within each.
    assert_eq!(
        scan(store, 50, None, &[], 10, 100).await,
        [a(&a10), a(&a11), a(&a12), b(&b13), b(&b14)]
    );
    // Nothing not yet due; `now` is inclusive.
    assert_eq!(scan(store, 9, None, &[], 10, 100).await, []);
    assert_eq!(
        scan(store, 11, None, &[], 10, 100).await,
        [a(&a10), a(&a11)]
    );
    assert_eq!(
        scan(store, 100, None, &[], 10, 100).await,
        [a(&a10), a(&a11), a(&a12), a(&a100), b(&b13), b(&b14)]
    );

    // per_destination and limit.
    assert_eq!(
        scan(store, 50, None, &[], 2, 100).await,
        [a(&a10), a(&a11), b(&b13), b(&b14)]
    );
    assert_eq!(scan(store, 50, None, &[], 1, 100).await, [a(&a10), b(&b13)]);
    assert_eq!(
        scan(store, 50, None, &[], 10, 3).await,
        [a(&a10), a(&a11), a(&a12)]
    );
    assert_eq!(
        scan(store, 50, None, &[], 2, 3).await,
        [a(&a10), a(&a11), b(&b13)]
    );
    assert_eq!(scan(store, 50, None, &[], 10, 0).await, []);

    // skip.
    assert_eq!(
        scan(store, 50, None, &[DEST_A], 10, 100).await,
        [b(&b13), b(&b14)]
    );
    assert_eq!(
        scan(store, 50, None, &[DEST_B], 10, 100).await,
        [a(&a10), a(&a11), a(&a12)]
    );
    assert_eq!(scan(store, 50, None, &[DEST_A, DEST_B], 10, 100).await, []);
    // A skipped destination does not use up the limit.
    assert_eq!(
        scan(store, 50, None, &[DEST_A], 10, 2).await,
        [b(&b13), b(&b14)]
    );

    // after: starts just after it and wraps around, every destination reachable in one call.
    assert_eq!(
        scan(store, 50, Some(DEST_A), &[], 2, 100).await,
        [b(&b13), b(&b14), a(&a10), a(&a11)]
    );
    assert_eq!(
        scan(store, 50, Some(DEST_B), &[], 2, 100).await,
        [a(&a10), a(&a11), b(&b13), b(&b14)]
    );
    assert_eq!(
        scan(store, 50, Some(DEST_A), &[], 2, 3).await,
        [b(&b13), b(&b14), a(&a10)]
    );
    assert_eq!(
        scan(store, 50, Some(DEST_A), &[DEST_B], 10, 100).await,
        [a(&a10), a(&a11), a(&a12)]
    );
    // A key that is no destination's: starts at the next one.
    assert_eq!(
        scan(store, 50, Some("https://aa.example.com:443"), &[], 1, 100).await,
        [b(&b13), a(&a10)]
    );
    assert_eq!(
        scan(store, 50, Some("https://z.example.com:443"), &[], 1, 100).await,
        [a(&a10), b(&b13)]
    );
    // Each destination once, however the walk wraps.
    assert_eq!(scan(store, 50, Some(DEST_A), &[], 10, 100).await.len(), 5);
}

async fn due_for_destination_oldest_first(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;

    // Created in another order than they fall due.
    let a30 = due_event(store, alice.id, HOOK_A, 30).await;
    let a10 = due_event(store, alice.id, HOOK_A, 10).await;
    let b5 = due_event(store, alice.id, HOOK_B, 5).await;
    let a20 = due_event(store, alice.id, HOOK_A, 20).await;
    let a90 = due_event(store, alice.id, HOOK_A, 90).await;

    assert_eq!(
        due_at(store, DEST_A, 50).await,
        [a10.clone(), a20.clone(), a30.clone()]
    );
    assert_eq!(
        due_from(store, DEST_A, None, 2, 50).await,
        [a10.clone(), a20.clone()]
    );
    assert_eq!(
        due_from(store, DEST_A, None, 0, 50).await,
        Vec::<String>::new()
    );
    // A refill resumes from the due time of the last one found, that one included.
    assert_eq!(
        due_from(store, DEST_A, Some(20), 100, 50).await,
        [a20.clone(), a30.clone()]
    );
    assert_eq!(
        due_from(store, DEST_A, Some(21), 100, 50).await,
        [a30.as_str()]
    );
    assert_eq!(
        due_from(store, DEST_A, Some(31), 100, 50).await,
        Vec::<String>::new()
    );
    assert_eq!(due_at(store, DEST_A, 20).await, [a10.clone(), a20.clone()]);
    assert_eq!(due_at(store, DEST_A, 9).await, Vec::<String>::new());
    assert_eq!(
        due_at(store, DEST_A, 90).await,
        [a10.clone(), a20.clone(), a30.clone(), a90.clone()]
    );
    assert_eq!(due_at(store, DEST_B, 50).await, [b5.as_str()]);
    assert_eq!(
        due_at(store, "https://c.example.com:443", 50).await,
        Vec::<String>::new()
    );

    // A retry moves a delivery behind younger ones due before it.
    attempt_once(store, &a10, "w1", 50, AfterAttempt::RetryAt(at(60))).await;
    assert_eq!(due_at(store, DEST_A, 59).await, [a20.clone(), a30.clone()]);
    assert_eq!(
        due_at(store, DEST_A, 100).await,
        [a20.clone(), a30.clone(), a10.clone(), a90.clone()]
    );
}

async fn leased_deliveries_are_not_due_until_the_lease_ends(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;

    let e1 = due_event(store, alice.id, HOOK_A, 10).await;
    let e2 = due_event(store, alice.id, HOOK_A, 11).await;
    let e3 = due_event(store, alice.id, HOOK_B, 100).await;
    let none = event_id(finished_with(store, alice.id, None, 12, 12).await.id);

    // Only what is still due is leased: not e3 (due later), nor an unknown id, nor an event
    // with nothing to deliver.
    let leased = store
        .lease_deliveries(
            "w1",
            vec![e1.clone(), e3.clone(), "msg_nope".into(), none],
            HashMap::new(),
            at(80),
            at(50),
        )
        .await
        .unwrap();
    let event = ev(store, &e1).await;
    assert_eq!(
        leased,
        [DueDelivery {
            event_id: e1.clone(),
            generation_id: event.generation_id,
            account_id: alice.id,
            url: HOOK_A.into(),
            destination: DEST_A.into(),
            payload: event.payload.clone(),
            created_at: at(10),
            round_attempts: 0,
        }]
    );
    // The body is the generation's, built the same each time it is read.
    assert_eq!(
        Some(event.payload.clone()),
        webhook_body(&get(store, event.generation_id).await)
    );
    assert_eq!(event.state, DeliveryState::Pending);
    assert!(event.in_flight, "a leased delivery is in flight");
    assert!(!ev(store, &e2).await.in_flight);

    // Leased: not due until the lease ends.
    assert_eq!(due_at(store, DEST_A, 50).await, [e2.as_str()]);
    assert_eq!(due_at(store, DEST_A, 79).await, [e2.as_str()]);
    assert_eq!(
        scan(store, 79, None, &[], 10, 10).await,
        [due_ref(&e2, DEST_A)]
    );
    assert_eq!(
        store
            .lease_deliveries("w2", vec![e1.clone()], HashMap::new(), at(200), at(60))
            .await
            .unwrap(),
        []
    );
    // Once it has ended, due again (behind e2, due since before).
    assert_eq!(due_at(store, DEST_A, 81).await, [e2.clone(), e1.clone()]);
    assert_eq!(
        scan(store, 81, None, &[], 10, 10).await,
        [due_ref(&e2, DEST_A), due_ref(&e1, DEST_A)]
    );
    assert_eq!(store.next_delivery_due().await, Ok(Some(at(11))));
    // And another owner may take it over.
    let taken = store
        .lease_deliveries("w2", vec![e1.clone()], HashMap::new(), at(200), at(81))
        .await
        .unwrap();
    assert_eq!(ids_of(&taken), [e1.as_str()]);
    assert_eq!(taken[0].round_attempts, 0);
    assert_eq!(due_at(store, DEST_A, 199).await, [e2.as_str()]);

    // Concurrent leases of the same deliveries: each goes to exactly one owner.
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.push(due_event(store, alice.id, HOOK_B, 300 + i).await);
    }
    let store_arc = h.open().await;
    let results = join_all((0..8).map(|w| {
        let store = Arc::clone(&store_arc);
        let batch = batch.clone();
        async move {
            store
                .lease_deliveries(&format!("c{w}"), batch, HashMap::new(), at(1_000), at(400))
                .await
                .unwrap()
        }
    }))
    .await;
    let mut got: Vec<String> = results.iter().flat_map(|r| ids_of(r)).collect();
    got.sort();
    let mut expected = batch.clone();
    expected.sort();
    assert_eq!(got, expected, "every delivery leased exactly once");
    assert_eq!(due_at(store, DEST_B, 999).await, [e3.as_str()]);
}

async fn record_attempt_moves_the_delivery_on(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;

    // Delivered.
    let ok = due_event(store, alice.id, HOOK_A, 10).await;
    store
        .lease_deliveries("w1", vec![ok.clone()], HashMap::new(), at(80), at(20))
        .await
        .unwrap();
    let mut rec = record(
        &ok,
        "w1",
        21,
        AttemptOutcome::Delivered,
        Some(204),
        AfterAttempt::Delivered,
    );
    rec.duration_ms = 345;
    rec.response_body = Some("thanks".into());
    assert_eq!(store.record_attempt(rec).await, Ok(true));
    let event = ev(store, &ok).await;
    assert_eq!(event.state, DeliveryState::Delivered);
    assert_eq!(event.total_attempts, 1);
    assert_eq!(event.last_attempt_at, Some(at(21)));
    assert_eq!(event.last_status_code, Some(204));
    assert_eq!(event.delivered_at, Some(at(21)));
    assert_eq!(event.next_attempt_at, None);
    assert_eq!(event.failure_reason, None);
    assert_eq!(
        store.attempts(&ok).await,
        Ok(vec![Attempt {
            number: 1,
            started_at: at(21),
            duration_ms: 345,
            outcome: AttemptOutcome::Delivered,
            status_code: Some(204),
            response_body: Some("thanks".into()),
            error: None,
        }])
    );
    assert_eq!(due_at(store, DEST_A, 100_000).await, Vec::<String>::new());

    // Retried, then failed.
    let retried = due_event(store, alice.id, HOOK_A, 11).await;
    store
        .lease_deliveries("w1", vec![retried.clone()], HashMap::new(), at(80), at(20))
        .await
        .unwrap();
    let mut rec = record(
        &retried,
        "w1",
        22,
        AttemptOutcome::Timeout,
        None,
        AfterAttempt::RetryAt(at(300)),
    );
    rec.error = Some("timed out after 10s".into());
    assert_eq!(store.record_attempt(rec).await, Ok(true));
    let event = ev(store, &retried).await;
    assert_eq!(event.state, DeliveryState::Pending);
    assert_eq!(event.next_attempt_at, Some(at(300)));
    assert_eq!(event.total_attempts, 1);
    assert_eq!(event.last_attempt_at, Some(at(22)));
    assert_eq!(event.last_status_code, None);
    assert_eq!(due_at(store, DEST_A, 299).await, Vec::<String>::new());
    assert_eq!(due_at(store, DEST_A, 300).await, [retried.as_str()]);
    assert_eq!(store.next_delivery_due().await, Ok(Some(at(300))));
    let again = store
        .lease_deliveries(
            "w2",
            vec![retried.clone()],
            HashMap::new(),
            at(400),
            at(300),
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&again), [retried.as_str()]);
    assert_eq!(again[0].round_attempts, 1);
    assert_eq!(
        store
            .record_attempt(record(
                &retried,
                "w2",
                301,
                AttemptOutcome::HttpError,
                Some(500),
                AfterAttempt::Failed("gave up after 2 attempts".into()),
            ))
            .await,
        Ok(true)
    );
    let event = ev(store, &retried).await;
    assert_eq!(event.state, DeliveryState::Failed);
    assert_eq!(
        event.failure_reason.as_deref(),
        Some("gave up after 2 attempts")
    );
    assert_eq!(event.total_attempts, 2);
    assert_eq!(event.next_attempt_at, None);
    assert_eq!(event.delivered_at, None);
    assert_eq!(event.last_status_code, Some(500));
    let log = store.attempts(&retried).await.unwrap();
    assert_eq!(attempt_numbers(&log), [1, 2]);
    assert_eq!(
        log.iter().map(|a| a.outcome).collect::<Vec<_>>(),
        [AttemptOutcome::Timeout, AttemptOutcome::HttpError]
    );
    assert_eq!(log[0].error.as_deref(), Some("timed out after 10s"));
    assert_eq!(log[1].status_code, Some(500));
    assert_eq!(log[1].response_body.as_deref(), Some("body 500"));
    assert_eq!(due_at(store, DEST_A, 100_000).await, Vec::<String>::new());
    assert_eq!(store.next_delivery_due().await, Ok(None));

    // By an owner whose lease was taken over: logged, but it moves nothing.
    let taken = due_event(store, alice.id, HOOK_B, 12).await;
    store
        .lease_deliveries("w1", vec![taken.clone()], HashMap::new(), at(80), at(50))
        .await
        .unwrap();
    store
        .lease_deliveries("w2", vec![taken.clone()], HashMap::new(), at(200), at(81))
        .await
        .unwrap();
    let before = ev(store, &taken).await;
    assert_eq!(
        store
            .record_attempt(record(
                &taken,
                "w1",
                85,
                AttemptOutcome::Delivered,
                Some(200),
                AfterAttempt::Delivered,
            ))
            .await,
        Ok(false)
    );
    let after = ev(store, &taken).await;
    assert_eq!(after.state, DeliveryState::Pending);
    assert_eq!(after.next_attempt_at, before.next_attempt_at);
    assert_eq!(after.delivered_at, None);
    assert_eq!(attempt_numbers(&store.attempts(&taken).await.unwrap()), [1]);
    assert_eq!(due_at(store, DEST_B, 199).await, Vec::<String>::new());
    // Someone who never held it: the same.
    assert_eq!(
        store
            .record_attempt(record(
                &taken,
                "w9",
                86,
                AttemptOutcome::HttpError,
                Some(500),
                AfterAttempt::Failed("no".into()),
            ))
            .await,
        Ok(false)
    );
    assert_eq!(ev(store, &taken).await.state, DeliveryState::Pending);
    // The holder's attempt still counts, numbered after the others.
    assert_eq!(
        store
            .record_attempt(record(
                &taken,
                "w2",
                90,
                AttemptOutcome::Delivered,
                Some(200),
                AfterAttempt::Delivered,
            ))
            .await,
        Ok(true)
    );
    assert_eq!(ev(store, &taken).await.state, DeliveryState::Delivered);
    assert_eq!(
        attempt_numbers(&store.attempts(&taken).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(store.attempts("msg_nope").await, Ok(vec![]));
}

async fn released_deliveries_are_due_again(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;

    // release_delivery: due at the given time; only by the lease's owner.
    let e1 = due_event(store, alice.id, HOOK_A, 10).await;
    store
        .lease_deliveries("w1", vec![e1.clone()], HashMap::new(), at(500), at(50))
        .await
        .unwrap();
    store.release_delivery(&e1, "w2", at(60)).await.unwrap();
    assert_eq!(due_at(store, DEST_A, 100).await, Vec::<String>::new());
    store.release_delivery(&e1, "w1", at(120)).await.unwrap();
    assert_eq!(due_at(store, DEST_A, 119).await, Vec::<String>::new());
    assert_eq!(due_at(store, DEST_A, 120).await, [e1.as_str()]);
    assert_eq!(store.next_delivery_due().await, Ok(Some(at(120))));
    let event = ev(store, &e1).await;
    assert_eq!(event.state, DeliveryState::Pending);
    assert_eq!(event.total_attempts, 0);
    // Unattempted: the round starts where it was.
    let again = store
        .lease_deliveries("w2", vec![e1.clone()], HashMap::new(), at(700), at(120))
        .await
        .unwrap();
    assert_eq!(ids_of(&again), [e1.as_str()]);
    assert_eq!(again[0].round_attempts, 0);
    assert_eq!(store.attempts(&e1).await, Ok(vec![]));
    // The old owner's lease is gone: its release does nothing.
    store.release_delivery(&e1, "w1", at(130)).await.unwrap();
    assert_eq!(due_at(store, DEST_A, 699).await, Vec::<String>::new());
    store.release_delivery(&e1, "w2", at(125)).await.unwrap();

    // release_delivery_leases: every one the owner leased due, ahead of younger due ones.
    let b1 = due_event(store, alice.id, HOOK_B, 30).await;
    let b2 = due_event(store, alice.id, HOOK_B, 40).await;
    let b3 = due_event(store, alice.id, HOOK_B, 45).await;
    let leased = store
        .lease_deliveries(
            "w1",
            vec![b1.clone(), b2.clone()],
            HashMap::new(),
            at(900),
            at(50),
        )
        .await
        .unwrap();
    assert_eq!(leased.len(), 2);
    let b4 = due_event(store, alice.id, HOOK_B, 52).await;
    // A retried delivery, leased again: due since long ago too.
    attempt_once(store, &b3, "w1", 55, AfterAttempt::RetryAt(at(56))).await;
    store
        .lease_deliveries("w1", vec![b3.clone()], HashMap::new(), at(900), at(57))
        .await
        .unwrap();
    assert_eq!(due_at(store, DEST_B, 60).await, [b4.as_str()]);

    assert_eq!(store.release_delivery_leases("w2", at(60)).await, Ok(0));
    assert_eq!(store.release_delivery_leases("w1", at(60)).await, Ok(3));
    let due = due_at(store, DEST_B, 60).await;
    assert_eq!(due.len(), 4);
    assert_eq!(due[3], b4, "released deliveries come before younger ones");
    let mut first: Vec<_> = due[..3].to_vec();
    first.sort();
    let mut expected = vec![b1.clone(), b2.clone(), b3.clone()];
    expected.sort();
    assert_eq!(first, expected);
    assert_eq!(
        due_from(store, DEST_B, None, 1, 60).await,
        [due[0].as_str()]
    );
    // Free for anyone, and nothing left to release.
    assert_eq!(store.release_delivery_leases("w1", at(61)).await, Ok(0));
    let taken = store
        .lease_deliveries("w2", due.clone(), HashMap::new(), at(900), at(61))
        .await
        .unwrap();
    assert_eq!(taken.len(), 4);
    assert_eq!(store.release_delivery_leases("w2", at(62)).await, Ok(4));
    assert_eq!(due_at(store, DEST_B, 62).await.len(), 4);
}

async fn redeliver_starts_a_new_round(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;

    let g = finished_with(store, alice.id, Some(HOOK_A), 5, 10).await;
    let eid = event_id(g.id);
    // While pending: already under way.
    assert_eq!(
        store.redeliver(g.id, at(11)).await,
        Ok(Redelivery::AlreadyPending)
    );
    attempt_once(store, &eid, "w1", 20, AfterAttempt::Delivered).await;

    // Delivered → a new round, due now, same webhook id.
    assert_eq!(
        store.redeliver(g.id, at(100)).await,
        Ok(Redelivery::Started {
            webhook_id: eid.clone()
        })
    );
    let event = ev(store, &eid).await;
    assert_eq!(event.id, eid);
    assert_eq!(event.state, DeliveryState::Pending);
    assert_eq!(event.next_attempt_at, Some(at(100)));
    assert_eq!(event.delivered_at, None);
    assert_eq!(event.total_attempts, 1);
    assert_eq!(event.created_at, at(10));
    assert_eq!(due_at(store, DEST_A, 99).await, Vec::<String>::new());
    assert_eq!(due_at(store, DEST_A, 100).await, [eid.as_str()]);
    assert_eq!(
        store.redeliver(g.id, at(101)).await,
        Ok(Redelivery::AlreadyPending)
    );
    let leased = store
        .lease_deliveries("w1", vec![eid.clone()], HashMap::new(), at(160), at(101))
        .await
        .unwrap();
    assert_eq!(leased[0].round_attempts, 0);
    // Leased (in flight): still pending.
    assert_eq!(
        store.redeliver(g.id, at(102)).await,
        Ok(Redelivery::AlreadyPending)
    );
    assert_eq!(
        store
            .record_attempt(record(
                &eid,
                "w1",
                103,
                AttemptOutcome::HttpError,
                Some(503),
                AfterAttempt::RetryAt(at(200)),
            ))
            .await,
        Ok(true)
    );
    let leased = store
        .lease_deliveries("w1", vec![eid.clone()], HashMap::new(), at(260), at(200))
        .await
        .unwrap();
    assert_eq!(leased[0].round_attempts, 1);
    assert_eq!(
        store
            .record_attempt(record(
                &eid,
                "w1",
                201,
                AttemptOutcome::HttpError,
                Some(503),
                AfterAttempt::Failed("gave up".into()),
            ))
            .await,
        Ok(true)
    );
    assert_eq!(ev(store, &eid).await.state, DeliveryState::Failed);

    // Failed → a new round too, reason cleared; numbering carries on across rounds.
    assert_eq!(
        store.redeliver(g.id, at(300)).await,
        Ok(Redelivery::Started {
            webhook_id: eid.clone()
        })
    );
    let event = ev(store, &eid).await;
    assert_eq!(event.state, DeliveryState::Pending);
    assert_eq!(event.failure_reason, None);
    assert_eq!(event.next_attempt_at, Some(at(300)));
    assert_eq!(event.total_attempts, 3);
    let leased = store
        .lease_deliveries("w2", vec![eid.clone()], HashMap::new(), at(360), at(300))
        .await
        .unwrap();
    assert_eq!(leased[0].round_attempts, 0);
    assert_eq!(
        store
            .record_attempt(record(
                &eid,
                "w2",
                301,
                AttemptOutcome::Delivered,
                Some(200),
                AfterAttempt::Delivered,
            ))
            .await,
        Ok(true)
    );
    let log = store.attempts(&eid).await.unwrap();
    assert_eq!(attempt_numbers(&log), [1, 2, 3, 4]);
    assert_eq!(
        log.iter().map(|a| a.started_at).collect::<Vec<_>>(),
        [at(20), at(103), at(201), at(301)]
    );
    let event = ev(store, &eid).await;
    assert_eq!(event.state, DeliveryState::Delivered);
    assert_eq!(event.total_attempts, 4);
    assert_eq!(event.delivered_at, Some(at(301)));

    // No callback; not finished; unknown.
    let quiet = finished_with(store, alice.id, None, 6, 12).await;
    assert_eq!(
        store.redeliver(quiet.id, at(400)).await,
        Ok(Redelivery::NoCallback)
    );
    assert_eq!(
        ev(store, &event_id(quiet.id)).await.state,
        DeliveryState::None
    );
    let running = create(store, new_gen(alice.id, 0, 7)).await;
    assert_eq!(
        store.redeliver(running.id, at(400)).await,
        Ok(Redelivery::NotFinished)
    );
    assert_eq!(store.event_for(running.id).await, Ok(None));
    assert_eq!(
        store.redeliver(GenerationId::random(), at(400)).await,
        Ok(Redelivery::NotFinished)
    );
}

async fn redeliver_failed_counts_one_accounts_window(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;
    let bob = account(store, "bob", 0).await;
    let fail = AfterAttempt::Failed("gave up".into());

    // alice: failed at 10, 20, 30; delivered at 15; pending at 25. bob: failed at 20.
    let f10 = due_event(store, alice.id, HOOK_A, 10).await;
    let f20 = due_event(store, alice.id, HOOK_A, 20).await;
    let f30 = due_event(store, alice.id, HOOK_B, 30).await;
    let d15 = due_event(store, alice.id, HOOK_A, 15).await;
    let p25 = due_event(store, alice.id, HOOK_A, 25).await;
    let fb = due_event(store, bob.id, HOOK_A, 20).await;
    for e in [f10.clone(), f20.clone(), f30.clone(), fb.clone()] {
        attempt_once(store, &e, "w1", 40, fail.clone()).await;
    }
    attempt_once(store, &d15, "w1", 40, AfterAttempt::Delivered).await;
    assert_eq!(
        store.delivery_counts(at(40)).await,
        Ok(DeliveryCounts {
            due: 1,
            scheduled: 0,
            failed: 4
        })
    );

    // [10, 30): f10 and f20, not f30 (until excluded), not bob's, not the others.
    assert_eq!(
        store
            .redeliver_failed(alice.id, at(10), at(30), at(100))
            .await,
        Ok(2)
    );
    for (e, state) in [
        (&f10, DeliveryState::Pending),
        (&f20, DeliveryState::Pending),
        (&f30, DeliveryState::Failed),
        (&fb, DeliveryState::Failed),
        (&d15, DeliveryState::Delivered),
        (&p25, DeliveryState::Pending),
    ] {
        assert_eq!(ev(store, e).await.state, state, "{e}");
    }
    let event = ev(store, &f10).await;
    assert_eq!(event.next_attempt_at, Some(at(100)));
    assert_eq!(event.failure_reason, None);
    assert_eq!(due_at(store, DEST_A, 99).await, [p25.as_str()]);
    assert_eq!(
        due_at(store, DEST_A, 100).await,
        [p25.clone(), f10.clone(), f20.clone()]
    );
    let leased = store
        .lease_deliveries(
            "w1",
            vec![f10.clone(), f20.clone()],
            HashMap::new(),
            at(200),
            at(100),
        )
        .await
        .unwrap();
    assert!(leased.iter().all(|d| d.round_attempts == 0));
    // Nothing failed left in the window.
    assert_eq!(
        store
            .redeliver_failed(alice.id, at(10), at(30), at(101))
            .await,
        Ok(0)
    );
    assert_eq!(
        store
            .redeliver_failed(alice.id, at(0), at(30), at(101))
            .await,
        Ok(0)
    );
    assert_eq!(
        store
            .redeliver_failed(alice.id, at(30), at(31), at(102))
            .await,
        Ok(1)
    );
    assert_eq!(ev(store, &f30).await.state, DeliveryState::Pending);
    assert_eq!(
        store
            .redeliver_failed(bob.id, at(0), at(1_000), at(103))
            .await,
        Ok(1)
    );
    assert_eq!(ev(store, &fb).await.next_attempt_at, Some(at(103)));
}

async fn delivery_counts_and_next_due(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;
    assert_eq!(
        store.delivery_counts(at(100)).await,
        Ok(DeliveryCounts::default())
    );
    assert_eq!(store.next_delivery_due().await, Ok(None));

    let e10 = due_event(store, alice.id, HOOK_A, 10).await;
    let e20 = due_event(store, alice.id, HOOK_B, 20).await;
    let retry = due_event(store, alice.id, HOOK_A, 30).await;
    let failed = due_event(store, alice.id, HOOK_A, 31).await;
    let delivered = due_event(store, alice.id, HOOK_B, 32).await;
    finished_with(store, alice.id, None, 33, 33).await;
    assert_eq!(store.next_delivery_due().await, Ok(Some(at(10))));
    attempt_once(store, &retry, "w1", 40, AfterAttempt::RetryAt(at(400))).await;
    attempt_once(store, &failed, "w1", 40, AfterAttempt::Failed("no".into())).await;
    attempt_once(store, &delivered, "w1", 40, AfterAttempt::Delivered).await;

    assert_eq!(
        store.delivery_counts(at(100)).await,
        Ok(DeliveryCounts {
            due: 2,
            scheduled: 1,
            failed: 1
        })
    );
    assert_eq!(
        store.delivery_counts(at(15)).await,
        Ok(DeliveryCounts {
            due: 1,
            scheduled: 2,
            failed: 1
        })
    );
    assert_eq!(
        store.delivery_counts(at(400)).await,
        Ok(DeliveryCounts {
            due: 3,
            scheduled: 0,
            failed: 1
        })
    );
    assert_eq!(store.next_delivery_due().await, Ok(Some(at(10))));

    attempt_once(store, &e10, "w1", 100, AfterAttempt::Delivered).await;
    assert_eq!(store.next_delivery_due().await, Ok(Some(at(20))));
    attempt_once(store, &e20, "w1", 100, AfterAttempt::Delivered).await;
    assert_eq!(store.next_delivery_due().await, Ok(Some(at(400))));
    // A leased delivery is next due when its lease ends.
    store
        .lease_deliveries("w1", vec![retry.clone()], HashMap::new(), at(460), at(400))
        .await
        .unwrap();
    assert_eq!(store.next_delivery_due().await, Ok(Some(at(460))));
    // In flight counts as due, not as a scheduled retry, whatever its lease's end.
    assert_eq!(
        store.delivery_counts(at(401)).await,
        Ok(DeliveryCounts {
            due: 1,
            scheduled: 0,
            failed: 1
        })
    );
    attempt_once_leased(store, &retry, "w1", 401).await;
    assert_eq!(store.next_delivery_due().await, Ok(None));
    assert_eq!(
        store.delivery_counts(at(1_000)).await,
        Ok(DeliveryCounts {
            due: 0,
            scheduled: 0,
            failed: 1
        })
    );
}

/// `n` generations of `account` with a callback to `HOOK_A`, created one by one.
async fn hooked(store: &dyn Store, account: AccountId, n: i64) -> Vec<GenerationId> {
    let mut gens = Vec::new();
    for i in 0..n {
        let mut new = new_gen(account, PRICE, i);
        new.spec.callback_url = Some(HOOK_A.into());
        gens.push(create(store, new).await.id);
    }
    gens
}

/// Many finishes and attempt records at once (a backend may commit them together): each gets
/// the answer it would get alone, whatever else shares its transaction. Repeats, a stranger's
/// lease and unknown ids are mixed in with the writes that apply.
async fn finishes_and_attempts_arriving_together_answer_as_one_by_one(h: &dyn Harness) {
    let store = h.open().await;
    let alice = account(store.as_ref(), "alice", 100 * PRICE).await;
    let gens = hooked(store.as_ref(), alice.id, 20).await;
    assert_eq!(
        ids(&store.claim("w1", 20, at(600), at(30)).await.unwrap()).len(),
        20
    );

    let finish = |id: GenerationId, holder: &'static str, secs: i64| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let video = video(&format!("{id}-{holder}"));
            store
                .finish(
                    id,
                    Finisher::LeaseHolder(holder),
                    Outcome::Completed(video),
                    at(secs),
                )
                .await
        })
    };
    let mut tasks = Vec::new();
    for &id in &gens {
        tasks.push((id, "w2", finish(id, "w2", 40))); // not the holder
        tasks.push((id, "w1", finish(id, "w1", 41)));
        tasks.push((id, "w1", finish(id, "w1", 42))); // a repeat: it has ended by then
    }
    let unknown = finish(GenerationId::random(), "w1", 41);
    let mut won = std::collections::HashMap::new();
    for (id, holder, task) in tasks {
        match task.await.unwrap().unwrap() {
            Finished::Applied(g) => {
                assert_eq!(holder, "w1");
                assert!(won.insert(id, g).is_none(), "{id} ended twice");
            }
            Finished::Refused(g) => assert_eq!(g.id, id),
        }
    }
    assert_eq!(unknown.await.unwrap(), Err(StoreError::NotFound));
    assert_eq!(won.len(), 20, "every generation ends once, by its holder");
    for (id, g) in &won {
        assert_eq!(&get(store.as_ref(), *id).await, g);
        assert!(
            matches!(&g.stage, Stage::Completed { video, .. } if video.file == format!("{id}-w1.mp4"))
        );
    }

    let events: Vec<String> = gens.iter().map(|&id| event_id(id)).collect();
    let leased = store
        .lease_deliveries("d1", events.clone(), HashMap::new(), at(200), at(50))
        .await
        .unwrap();
    assert_eq!(leased.len(), 20);
    let attempt = |event: String, owner: &'static str, secs: i64| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let next = AfterAttempt::Delivered;
            let rec = record(
                &event,
                owner,
                secs,
                AttemptOutcome::Delivered,
                Some(200),
                next,
            );
            store.record_attempt(rec).await
        })
    };
    let mut tasks = Vec::new();
    for e in &events {
        tasks.push(attempt(e.clone(), "d1", 60));
        tasks.push(attempt(e.clone(), "d2", 61)); // outside the lease: logged only
        tasks.push(attempt(e.clone(), "d1", 62)); // a repeat: the first let the lease go
    }
    let unknown = attempt(event_id(GenerationId::random()), "d1", 60);
    let mut moved_on = 0;
    for task in tasks {
        moved_on += usize::from(task.await.unwrap().unwrap());
    }
    assert_eq!(unknown.await.unwrap(), Err(StoreError::NotFound));
    assert_eq!(moved_on, 20, "each event moves on once, under its lease");
    for e in &events {
        let event = ev(store.as_ref(), e).await;
        assert_eq!(event.state, DeliveryState::Delivered);
        assert_eq!(event.total_attempts, 3);
        assert_eq!(
            attempt_numbers(&store.attempts(e).await.unwrap()),
            [1, 2, 3]
        );
    }
}

/// Attempts of many events at once, each event once (a backend may record them in one
/// statement): those under their event's lease move it on, those of a node whose lease has
/// gone are logged and leave the event and its lease as they were.
async fn attempts_of_many_events_together_move_on_only_under_their_lease(h: &dyn Harness) {
    let store = h.open().await;
    let alice = account(store.as_ref(), "alice", 100 * PRICE).await;
    let gens = hooked(store.as_ref(), alice.id, 20).await;
    let events: Vec<String> = gens.iter().map(|&id| event_id(id)).collect();
    for g in store.claim("w1", 20, at(600), at(30)).await.unwrap() {
        let done = Outcome::Completed(video(&g.id.to_string()));
        let finisher = Finisher::LeaseHolder("w1");
        applied(store.finish(g.id, finisher, done, at(40)).await.unwrap());
    }
    let leased = store
        .lease_deliveries("d1", events.clone(), HashMap::new(), at(200), at(50))
        .await
        .unwrap();
    assert_eq!(leased.len(), 20);

    let tasks: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let store = Arc::clone(&store);
            let owner = if i % 2 == 0 { "d1" } else { "d2" };
            let rec = record(
                e,
                owner,
                60,
                AttemptOutcome::Delivered,
                Some(200),
                AfterAttempt::Delivered,
            );
            tokio::spawn(async move { (owner, store.record_attempt(rec).await) })
        })
        .collect();
    for task in tasks {
        let (owner, moved_on) = task.await.unwrap();
        assert_eq!(moved_on, Ok(owner == "d1"), "{owner}");
    }
    for (i, e) in events.iter().enumerate() {
        let event = ev(store.as_ref(), e).await;
        assert_eq!(event.total_attempts, 1, "{e}");
        assert_eq!(attempt_numbers(&store.attempts(e).await.unwrap()), [1]);
        if i % 2 == 0 {
            assert_eq!(event.state, DeliveryState::Delivered, "{e}");
            assert!(!event.in_flight, "{e}");
        } else {
            assert_eq!(
                event.state,
                DeliveryState::Pending,
                "{e}: moved by a stranger"
            );
            assert!(event.in_flight, "{e}: its lease was let go by a stranger");
        }
    }
}

/// Records a successful attempt by the owner of an already leased delivery.
async fn attempt_once_leased(store: &dyn Store, event_id: &str, owner: &str, secs: i64) {
    assert_eq!(
        store
            .record_attempt(record(
                event_id,
                owner,
                secs,
                AttemptOutcome::Delivered,
                Some(200),
                AfterAttempt::Delivered,
            ))
            .await,
        Ok(true)
    );
}

// ------------------------------------------------------------------------------------------
// Webhook signing secrets.

/// A rotation whose rotated-out secret signs until `overlap_until`, never refused.
fn unlimited(overlap_until: i64) -> Rotation {
    Rotation {
        overlap_until: at(overlap_until),
        refuse_if_rotated_after: at(1_000_000_000),
    }
}

fn sealed_secret(sealed: &[u8], created: i64, retired: Option<i64>) -> SealedSecret {
    SealedSecret {
        sealed: sealed.to_vec(),
        created_at: at(created),
        retired_at: retired.map(at),
    }
}

async fn signing_secrets_rotate(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;
    let bob = account(store, "bob", 0).await;
    // Sealed bytes are opaque: zeros, high bytes, not UTF-8.
    let s1: Vec<u8> = (0..=255u8).rev().chain([0, 0, 0xff]).collect();
    let s2 = vec![0u8; 48];
    let s3 = b"\xc3\x28sealed\x00three".to_vec();

    assert_eq!(store.signing_secrets(alice.id, at(0)).await, Ok(vec![]));
    // The first current one.
    assert_eq!(
        store.add_signing_secret(alice.id, s1.clone(), at(1)).await,
        Ok(true)
    );
    // Only one current: a second first one is refused, nothing changes.
    assert_eq!(
        store.add_signing_secret(alice.id, s2.clone(), at(2)).await,
        Ok(false)
    );
    let first = sealed_secret(&s1, 1, None);
    assert_eq!(
        store.signing_secrets(alice.id, at(3)).await,
        Ok(vec![first.clone()])
    );
    assert_eq!(store.signing_secrets(bob.id, at(3)).await, Ok(vec![]));

    // Rotating: the new one current, the old one signing until its overlap ends.
    assert_eq!(
        store
            .rotate_signing_secret(alice.id, s3.clone(), at(10), unlimited(100))
            .await,
        Ok(Rotated::Done)
    );
    let current = sealed_secret(&s3, 10, None);
    let retiring = sealed_secret(&s1, 1, Some(100));
    for secs in [10, 50, 99] {
        assert_eq!(
            store.signing_secrets(alice.id, at(secs)).await,
            Ok(vec![current.clone(), retiring.clone()]),
            "at {secs}"
        );
    }
    for secs in [100, 101, 10_000] {
        assert_eq!(
            store.signing_secrets(alice.id, at(secs)).await,
            Ok(vec![current.clone()]),
            "at {secs}"
        );
    }
    // Still one current.
    assert_eq!(
        store.add_signing_secret(alice.id, s2.clone(), at(11)).await,
        Ok(false)
    );

    // Other accounts are their own; a rotation on none just adds the current one.
    assert_eq!(store.signing_secrets(bob.id, at(50)).await, Ok(vec![]));
    assert_eq!(
        store
            .rotate_signing_secret(bob.id, s2.clone(), at(30), unlimited(300))
            .await,
        Ok(Rotated::Done)
    );
    assert_eq!(
        store.signing_secrets(bob.id, at(50)).await,
        Ok(vec![sealed_secret(&s2, 30, None)])
    );
    assert_eq!(
        store.signing_secrets(alice.id, at(50)).await,
        Ok(vec![current.clone(), retiring.clone()])
    );

    // Concurrent first secrets: exactly one wins.
    let carol = account(store, "carol", 0).await;
    let shared = h.open().await;
    let results = join_all((0..8u8).map(|i| {
        let store = Arc::clone(&shared);
        async move {
            store
                .add_signing_secret(carol.id, vec![i; 32], at(40))
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(results.iter().filter(|won| **won).count(), 1);
    let winner = results.iter().position(|won| *won).unwrap() as u8;
    assert_eq!(
        store.signing_secrets(carol.id, at(41)).await,
        Ok(vec![sealed_secret(&[winner; 32], 40, None)])
    );
}

/// However many rotations, exactly the current secret and the one it replaced sign: a
/// rotation stops every older one at once, even one still inside its own overlap.
async fn rotations_keep_at_most_two_signing(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;
    let bob = account(store, "bob", 0).await;
    let day = 86_400;
    assert_eq!(
        store.add_signing_secret(alice.id, vec![0], at(0)).await,
        Ok(true)
    );
    assert_eq!(
        store.add_signing_secret(bob.id, vec![0xb0], at(0)).await,
        Ok(true)
    );
    for i in 1..=50u8 {
        let secs = 10 * i64::from(i);
        assert_eq!(
            store
                .rotate_signing_secret(alice.id, vec![i], at(secs), unlimited(secs + day))
                .await,
            Ok(Rotated::Done),
            "rotation {i}"
        );
        let previous_created = if i == 1 { 0 } else { secs - 10 };
        let expected = vec![
            sealed_secret(&[i], secs, None),
            sealed_secret(&[i - 1], previous_created, Some(secs + day)),
        ];
        // Right after it, and until the overlap ends, the very same two.
        for probe in [secs, secs + 5, secs + day - 1] {
            assert_eq!(
                store.signing_secrets(alice.id, at(probe)).await,
                Ok(expected.clone()),
                "rotation {i}, at {probe}"
            );
        }
    }
    // The last overlap ends: only the current one.
    assert_eq!(
        store.signing_secrets(alice.id, at(500 + day)).await,
        Ok(vec![sealed_secret(&[50], 500, None)])
    );
    // Another account's secret is untouched.
    assert_eq!(
        store.signing_secrets(bob.id, at(500)).await,
        Ok(vec![sealed_secret(&[0xb0], 0, None)])
    );

    // Concurrent rotations (another handle, as another process would have) serialize: every
    // one is made, and still just two sign.
    let shared = h.open().await;
    let results = join_all((0..8u8).map(|i| {
        let store = Arc::clone(&shared);
        async move {
            store
                .rotate_signing_secret(bob.id, vec![0xc0 + i], at(1_000), unlimited(1_000 + day))
                .await
        }
    }))
    .await;
    assert!(
        results.iter().all(|r| *r == Ok(Rotated::Done)),
        "{results:?}"
    );
    let signing = store.signing_secrets(bob.id, at(1_001)).await.unwrap();
    assert_eq!(signing.len(), 2, "{signing:?}");
    assert_eq!(signing[0].retired_at, None);
    assert_eq!(signing[1].retired_at, Some(at(1_000 + day)));
    // Reopened, the same.
    drop(shared);
    let reopened = h.open().await;
    assert_eq!(
        reopened.signing_secrets(bob.id, at(1_001)).await,
        Ok(signing)
    );
}

/// The rate limit: a rotation is refused while the current secret was made by a rotation
/// after the instant given, checked on the stored secret so that it holds across handles.
async fn rotations_are_rate_limited(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;
    let limited = |secs: i64| Rotation {
        overlap_until: at(secs + 86_400),
        refuse_if_rotated_after: at(secs - 60),
    };
    // The first secret is made on first use, not by a rotation: rotating it is never refused.
    assert_eq!(
        store.add_signing_secret(alice.id, vec![0], at(0)).await,
        Ok(true)
    );
    assert_eq!(
        store
            .rotate_signing_secret(alice.id, vec![1], at(1), limited(1))
            .await,
        Ok(Rotated::Done)
    );
    let after_first = store.signing_secrets(alice.id, at(1)).await.unwrap();
    assert_eq!(
        after_first,
        vec![
            sealed_secret(&[1], 1, None),
            sealed_secret(&[0], 0, Some(1 + 86_400))
        ]
    );
    // Within 60 s of that rotation: refused, saying when it was, and nothing changes.
    for secs in [1, 2, 60] {
        assert_eq!(
            store
                .rotate_signing_secret(alice.id, vec![2], at(secs), limited(secs))
                .await,
            Ok(Rotated::TooSoon {
                last_rotation: at(1)
            }),
            "at {secs}"
        );
        assert_eq!(
            store.signing_secrets(alice.id, at(secs)).await,
            Ok(after_first.clone())
        );
    }
    // 60 s after it, allowed.
    assert_eq!(
        store
            .rotate_signing_secret(alice.id, vec![3], at(61), limited(61))
            .await,
        Ok(Rotated::Done)
    );

    // Concurrent rotations through several handles: exactly one is made.
    let bob = account(store, "bob", 0).await;
    assert_eq!(
        store.add_signing_secret(bob.id, vec![0], at(0)).await,
        Ok(true)
    );
    assert_eq!(
        store
            .rotate_signing_secret(bob.id, vec![1], at(10), limited(10))
            .await,
        Ok(Rotated::Done)
    );
    let handles = join_all((0..4).map(|_| h.open())).await;
    let results = join_all((0..8u8).map(|i| {
        let store = Arc::clone(&handles[usize::from(i) % handles.len()]);
        async move {
            store
                .rotate_signing_secret(bob.id, vec![0x10 + i], at(100), limited(100))
                .await
                .unwrap()
        }
    }))
    .await;
    let too_soon = Rotated::TooSoon {
        last_rotation: at(100),
    };
    assert_eq!(
        results.iter().filter(|r| **r == Rotated::Done).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| *r == Rotated::Done || *r == too_soon),
        "{results:?}"
    );
    let signing = store.signing_secrets(bob.id, at(100)).await.unwrap();
    assert_eq!(signing.len(), 2);
    assert_eq!(signing[1], sealed_secret(&[1], 10, Some(100 + 86_400)));
}

// ------------------------------------------------------------------------------------------
// External workers.

async fn worker_tokens_are_not_api_keys(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 0).await;
    let api = IssuedKey::generate();
    store
        .create_key(
            NewKey {
                id: api.id,
                account_id: alice.id,
                name: "ci".into(),
                shown_prefix: api.shown_prefix.clone(),
                hash: api.hash,
            },
            at(1),
        )
        .await
        .unwrap();
    let worker_hash = KeyHash::of("rlw_a-worker-secret");
    let info = store
        .create_worker(
            NewWorker {
                id: "w-1".into(),
                name: "gpu-box".into(),
                models: vec![Model::Veo3Quality],
                shown_prefix: "rlw_a-worke".into(),
                hash: worker_hash,
            },
            at(2),
        )
        .await
        .unwrap();
    assert_eq!(info.models, [Model::Veo3Quality]);
    assert_eq!(info.created_at, at(2));
    store
        .create_worker(
            NewWorker {
                id: "w-2".into(),
                name: "any".into(),
                models: vec![],
                shown_prefix: "rlw_other".into(),
                hash: KeyHash::of("rlw_other"),
            },
            at(3),
        )
        .await
        .unwrap();

    // Each kind authenticates only as itself.
    assert_eq!(
        store.authenticate_worker(worker_hash).await.unwrap(),
        Some(info.clone())
    );
    assert_eq!(store.authenticate_worker(api.hash).await, Ok(None));
    assert_eq!(owner(store, worker_hash).await, Ok(None));
    assert_eq!(owner(store, api.hash).await, Ok(Some(alice.id)));

    let listed = store.list_workers().await.unwrap();
    assert_eq!(
        listed.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["w-1", "w-2"]
    );
    assert_eq!(listed[1].models, []);

    assert_eq!(store.revoke_worker("w-1", at(4)).await, Ok(true));
    assert_eq!(store.revoke_worker("w-1", at(5)).await, Ok(false));
    assert_eq!(store.revoke_worker("nope", at(5)).await, Ok(false));
    assert_eq!(store.authenticate_worker(worker_hash).await, Ok(None));
    let listed = store.list_workers().await.unwrap();
    assert_eq!(listed[0].revoked_at, Some(at(4)));
    drop(listed);
    // Survives a reopen.
    let again = h.open().await;
    assert_eq!(again.list_workers().await.unwrap().len(), 2);
}

async fn claim_models_filters_and_keeps_order(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 100 * PRICE).await;
    let with_model = |secs: i64, model: Model| {
        let mut new = new_gen(alice.id, PRICE, secs);
        new.spec.model = model;
        new
    };
    let q1 = create(store, with_model(0, Model::Veo3Quality)).await;
    let f1 = create(store, with_model(1, Model::Veo3Fast)).await;
    let q2 = create(store, with_model(2, Model::Veo3Quality)).await;
    let f2 = create(store, with_model(3, Model::Veo3Fast)).await;

    // No models: nothing.
    assert_eq!(
        store.claim_models("w0", 4, vec![], at(30), at(5)).await,
        Ok(vec![])
    );
    // One model: only its generations, oldest first.
    let fast = store
        .claim_models("w1", 4, vec![Model::Veo3Fast], at(30), at(5))
        .await
        .unwrap();
    assert_eq!(ids(&fast), [f1.id, f2.id]);
    assert!(fast.iter().all(|g| g.spec.model == Model::Veo3Fast));
    // Both models, bounded by the limit, oldest first across models.
    let both = store
        .claim_models(
            "w2",
            1,
            vec![Model::Veo3Fast, Model::Veo3Quality],
            at(30),
            at(5),
        )
        .await
        .unwrap();
    assert_eq!(ids(&both), [q1.id]);
    // A lapsed lease of the model comes back, to another owner, ahead of younger work.
    let again = store
        .claim_models(
            "w3",
            4,
            vec![Model::Veo3Fast, Model::Veo3Quality],
            at(100),
            at(60),
        )
        .await
        .unwrap();
    assert_eq!(ids(&again), [q1.id, f1.id, q2.id, f2.id]);
    assert_eq!(store.heartbeat(f1.id, "w1", at(200), 10).await, Ok(false));
    assert_eq!(store.heartbeat(f1.id, "w3", at(200), 10).await, Ok(true));
}

async fn ended_lease_names_the_holder_at_the_end(h: &dyn Harness) {
    let store = h.open().await;
    let store = store.as_ref();
    let alice = account(store, "alice", 10 * PRICE).await;
    let done = create(store, new_gen(alice.id, PRICE, 0)).await;
    let cancelled = create(store, new_gen(alice.id, PRICE, 1)).await;
    let never = create(store, new_gen(alice.id, PRICE, 2)).await;

    store.claim("lease-a", 2, at(30), at(5)).await.unwrap();
    assert_eq!(store.ended_lease(done.id).await, Ok(None), "still running");
    applied(
        store
            .finish(
                done.id,
                Finisher::LeaseHolder("lease-a"),
                Outcome::Completed(video("a")),
                at(6),
            )
            .await
            .unwrap(),
    );
    assert_eq!(store.ended_lease(done.id).await, Ok(Some("lease-a".into())));
    // Ended by someone else while the lease held it: the lease is still the one named.
    applied(
        store
            .finish(
                cancelled.id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                at(7),
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        store.ended_lease(cancelled.id).await,
        Ok(Some("lease-a".into()))
    );
    // Ended while pending: no lease.
    applied(
        store
            .finish(
                never.id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                at(8),
            )
            .await
            .unwrap(),
    );
    assert_eq!(store.ended_lease(never.id).await, Ok(None));
    assert_eq!(store.ended_lease(GenerationId::random()).await, Ok(None));
}

// ------------------------------------------------------------------------------------------
// Shared-database behaviour: PostgreSQL only (one SQLite file has one node, whose dispatcher
// holds the destination limit alone).

/// What `owner` leases of `ids` to `DEST_A` at `now` with `open` requests of its own open
/// there, for a minute.
async fn lease_with_open(
    store: &dyn Store,
    owner: &str,
    ids: &[String],
    open: usize,
    now: i64,
) -> Vec<String> {
    let sending = HashMap::from([(DEST_A.to_owned(), open)]);
    let leased = store
        .lease_deliveries(owner, ids.to_vec(), sending, at(now + 60), at(now))
        .await
        .unwrap();
    ids_of(&leased)
}

/// A lease counts toward a destination's cluster-wide limit what other owners hold live and
/// what the leasing node says it has open, but not its own leases whose attempt has ended
/// and is being recorded: those would hold back requests the destination has room for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_destination_limit_counts_other_owners_and_open_requests() {
    let harness = PostgresHarness::new().await;
    let store = harness.node(3).await;
    let store: &dyn Store = &store;
    let alice = account(store, "alice", 0).await;
    let mut due = Vec::new();
    for i in 0..6 {
        due.push(due_event(store, alice.id, HOOK_A, 10 + i).await);
    }
    let lease = |owner, ids, open, now| lease_with_open(store, owner, ids, open, now);

    assert_eq!(lease("w1", &due[0..1], 0, 50).await, [due[0].clone()]);
    // w1's lease counts for w2: room for two.
    assert_eq!(lease("w2", &due[1..4], 0, 50).await, due[1..3].to_vec());
    // w1's own lease is not counted (its attempt ended, per `sending`), w2's two are.
    assert_eq!(lease("w1", &due[3..4], 0, 50).await, [due[3].clone()]);
    // With a request open to the destination, w1 has no room left.
    assert_eq!(lease("w1", &due[4..5], 1, 50).await, Vec::<String>::new());
    // Nor has a third owner: four leases are live.
    assert_eq!(lease("w3", &due[4..5], 0, 50).await, Vec::<String>::new());
    // Once they have lapsed, nothing is counted.
    assert_eq!(lease("w3", &due[4..6], 0, 111).await, due[4..6].to_vec());
}

/// Three nodes leasing from one destination in a random order, each ending some of its
/// attempts now and then and saying how many it has open, never have more than the limit
/// open between them, and deliver everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_leases_never_take_a_destination_past_its_limit() {
    use rand::{Rng, SeedableRng};
    const LIMIT: usize = 5;
    let harness = PostgresHarness::new().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(harness.node(LIMIT).await);
    }
    let alice = account(&nodes[0], "alice", 0).await;
    for seed in 0..8 {
        let mut waiting = Vec::new();
        for i in 0..30 {
            waiting.push(due_event(&nodes[0], alice.id, HOOK_A, 10 + i).await);
        }
        let mut open: Vec<Vec<String>> = vec![Vec::new(); 3];
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut steps = 0;
        while !waiting.is_empty() || open.iter().any(|o| !o.is_empty()) {
            steps += 1;
            assert!(
                steps < 5_000,
                "seed {seed}: stuck with {waiting:?} waiting and {open:?} open"
            );
            let n = rng.random_range(0..3);
            let (store, owner): (&dyn Store, _) = (&nodes[n], format!("w{n}"));
            if rng.random_bool(0.5) && !open[n].is_empty() {
                let ended = rng.random_range(1..=open[n].len());
                for id in open[n].drain(..ended) {
                    let done = record(
                        &id,
                        &owner,
                        51,
                        AttemptOutcome::Delivered,
                        Some(200),
                        AfterAttempt::Delivered,
                    );
                    assert_eq!(store.record_attempt(done).await, Ok(true));
                }
                continue;
            }
            let asked = rng.random_range(1..=LIMIT).min(waiting.len());
            let leased = lease_with_open(store, &owner, &waiting[..asked], open[n].len(), 50).await;
            waiting.retain(|id| !leased.contains(id));
            open[n].extend(leased);
            let in_flight: usize = open.iter().map(Vec::len).sum();
            assert!(
                in_flight <= LIMIT,
                "seed {seed}, step {steps}: {in_flight} open: {open:?}"
            );
        }
    }
}

/// The leases a node holds are counted by the others only while it is on their list of
/// owners: a node lists itself again before any lease that outlasts its entry, even after
/// another node dropped the entry (it had lapsed), and a node that gave everything back is
/// off the list until it leases again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_an_owner_listed_again_after_lapsing_is_counted() {
    let harness = PostgresHarness::new().await;
    let (one, two) = (harness.node(1).await, harness.node(1).await);
    let (one, two): (&dyn Store, &dyn Store) = (&one, &two);
    let alice = account(one, "alice", 0).await;
    let mut due = Vec::new();
    for i in 0..5 {
        due.push(due_event(one, alice.id, HOOK_A, 10 + i).await);
    }

    // w1 leases until 110, listed until a minute past that.
    assert_eq!(lease(one, "w1", &due[0..1], 50).await, [due[0].clone()]);
    // Long after, w2 lists itself and drops w1's lapsed entry; w1's lease lapsed too.
    assert_eq!(lease(two, "w2", &due[1..2], 300).await, [due[1].clone()]);
    // w1 leases again: its node remembers a listing that has lapsed, and lists it again.
    assert_eq!(lease(one, "w1", &due[2..3], 361).await, [due[2].clone()]);
    // So a third owner finds the destination full with w1's live lease.
    assert_eq!(
        lease(two, "w3", &due[3..4], 361).await,
        Vec::<String>::new()
    );
    // w1 stops: it gives back its leases (the live one, and the one that lapsed at 110) and
    // leaves the list; the next lease has room.
    assert_eq!(one.release_delivery_leases("w1", at(362)).await, Ok(2));
    assert_eq!(lease(two, "w3", &due[3..4], 362).await, [due[3].clone()]);
    // w3, listed by the node that had listed w2, counts against w1.
    assert_eq!(
        lease(one, "w1", &due[4..5], 363).await,
        Vec::<String>::new()
    );
}

/// What `owner` leases of `ids` at `now`, for a minute, with no request of its own open.
async fn lease(store: &dyn Store, owner: &str, ids: &[String], now: i64) -> Vec<String> {
    let leased = store
        .lease_deliveries(owner, ids.to_vec(), HashMap::new(), at(now + 60), at(now))
        .await
        .unwrap();
    ids_of(&leased)
}

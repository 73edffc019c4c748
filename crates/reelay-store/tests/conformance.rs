//! The conformance suite every [`Store`] implementation must pass.
//!
//! Each check is a plain async function taking a [`Harness`] (something that opens the
//! backend's database, the same one every time). `conformance_tests!` turns the whole list into
//! `#[tokio::test]`s for one backend; a new backend adds one invocation at the bottom of this
//! file, with its own harness:
//!
//! ```ignore
//! conformance_tests!(postgres, || async { PostgresHarness::new().await });
//! ```
//!
//! All instants are fixed (no wall clock), so no check depends on timing.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::join_all;
use reelay_core::apikey::{IssuedKey, KeyHash};
use reelay_core::{
    AccountId, AspectRatio, Credits, FailureCode, GenerationId, GenerationStatus, KeyId, Model,
};
use reelay_store::{
    Account, Created, Event, Finished, Finisher, Generation, Idempotency, NewGeneration, NewKey,
    Outcome, Spec, SqliteStore, Stage, Store, StoreError, Video,
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

/// Instantiates every check of the suite as a `#[tokio::test]` in a module named `$backend`.
/// `$make` is a closure returning a future of the backend's [`Harness`].
macro_rules! conformance_tests {
    ($backend:ident, $make:expr) => {
        conformance_tests!(@suite $backend, $make;
            accounts_hold_credits,
            keys_authenticate_until_revoked,
            create_generation_charges_its_price,
            create_generation_refused_leaves_no_trace,
            concurrent_creates_never_overdraw,
            idempotent_replay_charges_once,
            idempotent_concurrent_requests_make_one_generation,
            idempotency_conflict_and_forgotten_keys,
            claim_heartbeat_finish_lifecycle,
            claim_skips_generations_past_their_deadline,
            finish_requires_the_lease_holder,
            failures_refund_by_code,
            concurrent_finishes_refund_once,
            expire_times_out_and_refunds_once,
            expired_lease_is_claimable_by_another_owner,
            release_all_leases_returns_processing_to_pending,
            concurrent_claims_never_share_a_generation,
            list_generations_newest_first_per_account,
            queue_position_counts_older_pending,
            next_deadline_is_the_earliest_unfinished,
            ledger_balances_add_up,
            reopening_keeps_everything,
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
        Ok(cr(150_000))
    );
    assert_eq!(
        store.add_credits(alice.id, cr(-30_000), at(2)).await,
        Ok(cr(120_000))
    );
    assert_eq!(balance(store, alice.id).await, 120_000);

    // Removing more than the balance is refused and changes nothing.
    assert_eq!(
        store.add_credits(alice.id, cr(-120_001), at(3)).await,
        Err(StoreError::InsufficientCredits)
    );
    assert_eq!(balance(store, alice.id).await, 120_000);
    assert_eq!(
        store.add_credits(bob.id, cr(-1), at(3)).await,
        Err(StoreError::InsufficientCredits)
    );
    assert_eq!(balance(store, bob.id).await, 0);

    // Removing exactly the balance leaves zero.
    assert_eq!(
        store.add_credits(alice.id, cr(-120_000), at(4)).await,
        Ok(Credits::ZERO)
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
        store.authenticate(KeyHash::of(&a1.secret)).await,
        Ok(Some(alice.id))
    );
    assert_eq!(store.authenticate(a2.hash).await, Ok(Some(alice.id)));
    assert_eq!(store.authenticate(b1.hash).await, Ok(Some(bob.id)));
    assert_eq!(
        store
            .authenticate(KeyHash::of("rly_not-a-key-anyone-was-given"))
            .await,
        Ok(None)
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
    assert_eq!(store.authenticate(a1.hash).await, Ok(None));
    assert_eq!(store.revoke_key(a1.id, at(11)).await, Ok(false));
    assert_eq!(store.revoke_key(KeyId::random(), at(11)).await, Ok(false));
    // The other keys still work.
    assert_eq!(store.authenticate(a2.hash).await, Ok(Some(alice.id)));
    assert_eq!(store.authenticate(b1.hash).await, Ok(Some(bob.id)));
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
    assert_eq!(store.authenticate(ghost.hash).await, Ok(None));
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

    let new = new_gen(alice.id, PRICE, 1);
    let expected = Generation {
        id: new.id,
        account_id: alice.id,
        spec: new.spec.clone(),
        price: cr(PRICE),
        created_at: new.created_at,
        deadline_at: new.deadline_at,
        stage: Stage::Pending,
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
    store.add_credits(alice.id, cr(1), at(2)).await.unwrap();
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
                progress_pct: 0
            }
        );
        assert_eq!(&get(store, g.id).await, g);
    }
    assert_eq!(get(store, g3.id).await.stage, Stage::Pending);
    let rest = store.claim("w2", 10, at(300), at(11)).await.unwrap();
    assert_eq!(ids(&rest), [g3.id]);
    assert_eq!(store.claim("w3", 10, at(42), at(12)).await, Ok(vec![]));

    // Heartbeats: the owner extends its lease and reports progress; nobody else can.
    assert_eq!(store.heartbeat(g1.id, "w1", at(70), 40).await, Ok(true));
    assert_eq!(
        get(store, g1.id).await.stage,
        Stage::Processing {
            started_at: at(10),
            progress_pct: 40
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
                Outcome::Failed(FailureCode::Cancelled),
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
                Outcome::Failed(FailureCode::TaskFailed),
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
                Outcome::Failed(FailureCode::Cancelled),
                at(6),
            )
            .await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.generation(GenerationId::random()).await, Ok(None));
    assert_eq!(store.event_for(GenerationId::random()).await, Ok(None));
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
                Outcome::Failed(FailureCode::Cancelled),
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
            code: FailureCode::Cancelled
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
                Outcome::Failed(FailureCode::Cancelled),
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
                Outcome::Failed(FailureCode::UnsafeContent),
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
                    .finish(g.id, by, Outcome::Failed(code), at(secs))
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
                    Outcome::Failed(FailureCode::Cancelled),
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
                    Outcome::Failed(FailureCode::TaskFailed),
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
                Outcome::Failed(FailureCode::Cancelled),
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
            code: FailureCode::Timeout
        }
    );
    let timed_out_pending = get(store, pending.id).await;
    assert_eq!(
        timed_out_pending.stage,
        Stage::Failed {
            started_at: None,
            completed_at: at(700),
            code: FailureCode::Timeout
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
            progress_pct: 0
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

async fn release_all_leases_returns_processing_to_pending(h: &dyn Harness) {
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

    assert_eq!(store.release_all_leases().await, Ok(2));
    assert_eq!(get(store, g2.id).await.stage, Stage::Pending);
    assert_eq!(get(store, g3.id).await.stage, Stage::Pending);
    assert_eq!(get(store, g4.id).await.stage, Stage::Pending);
    assert_eq!(get(store, g1.id).await, done, "terminal ones are untouched");
    assert_eq!(store.heartbeat(g2.id, "w1", at(1_000), 40).await, Ok(false));
    assert_eq!(store.queue_position(&get(store, g2.id).await).await, Ok(0));
    assert_eq!(balance(store, alice.id).await, 6 * PRICE);

    // Back in the queue in creation order, lease still far in the future or not.
    let again = store.claim("w2", 10, at(100), at(7)).await.unwrap();
    assert_eq!(ids(&again), [g2.id, g3.id, g4.id]);
    assert_eq!(store.release_all_leases().await, Ok(3));
    assert_eq!(store.release_all_leases().await, Ok(0));
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
                Outcome::Failed(FailureCode::Cancelled),
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
                Outcome::Failed(FailureCode::Cancelled),
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
                Outcome::Failed(FailureCode::Cancelled),
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
                Outcome::Failed(FailureCode::Maintenance),
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
        Ok(cr(expected(20_000, 0, 0)))
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

    let fail = |id, by, code, secs| async move {
        store
            .finish(id, by, Outcome::Failed(code), at(secs))
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
        Ok(cr(expected(credited - 5_000, charged, refunded)))
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
                Outcome::Failed(FailureCode::Cancelled),
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
    assert_eq!(store.authenticate(key.hash).await, Ok(Some(alice.id)));
    assert_eq!(store.authenticate(revoked.hash).await, Ok(None));
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

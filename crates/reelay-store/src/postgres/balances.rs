//! Balances in stripes: an account's balance is the sum of its [`STRIPES`] rows in
//! `balance_stripes` (migration 0005), so that the create batches of several nodes for one
//! busy account charge different rows instead of queueing for one. A batch charges one stripe
//! picked at random ([`stripe`]); whatever needs the whole balance (a charge one stripe cannot
//! cover, a credit) locks every stripe of its accounts in `(account, stripe)` order, the order
//! a one-stripe charge also follows, and leaves the total spread evenly ([`spread`]).

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::rows::get;
use super::sql::{execute, query};
use crate::StoreResult;

/// Stripes per account: fixed by migration 0005 (its CHECK and `reelay_stripe_share`).
pub(crate) const STRIPES: i16 = 8;

/// A stripe for one batch to charge or refund into. At random, so two nodes' batches for one
/// account meet on a row once in [`STRIPES`] times, whatever the nodes' number or names.
pub(super) fn stripe() -> i16 {
    rand::random_range(0..STRIPES)
}

/// Gives a new account its stripes, all empty. Runs in the account's own transaction.
pub(super) async fn open(c: &impl GenericClient, account: Uuid) -> StoreResult<()> {
    execute(
        c,
        "INSERT INTO balance_stripes (account_id, stripe, balance) \
         SELECT $1, stripe, 0 FROM generate_series(0, $2 - 1) AS s (stripe)",
        &[&account, &i32::from(STRIPES)],
    )
    .await?;
    Ok(())
}

/// Locks every stripe of `accounts` until the transaction `c` ends, and reads each one's
/// balance. An account missing from the answer does not exist. (SUM of bigint is numeric;
/// the balance rules keep it within bigint, and the cast fails rather than round if not.)
pub(super) async fn lock(
    c: &impl GenericClient,
    accounts: &[Uuid],
) -> StoreResult<HashMap<Uuid, i64>> {
    query(
        c,
        "WITH locked AS MATERIALIZED ( \
             SELECT account_id, balance FROM balance_stripes WHERE account_id = ANY($1) \
             ORDER BY account_id, stripe FOR NO KEY UPDATE) \
         SELECT account_id, SUM(balance)::bigint AS balance FROM locked GROUP BY account_id",
        &[&accounts],
    )
    .await?
    .iter()
    .map(|row| Ok((get(row, "account_id")?, get(row, "balance")?)))
    .collect()
}

/// Sets each account's balance to its total, spread evenly over its stripes. Its stripes must
/// be [`lock`]ed in this transaction.
pub(super) async fn spread(c: &impl GenericClient, totals: &HashMap<Uuid, i64>) -> StoreResult<()> {
    let (accounts, totals): (Vec<Uuid>, Vec<i64>) = totals.iter().map(|(a, t)| (*a, *t)).unzip();
    execute(
        c,
        "UPDATE balance_stripes s SET balance = reelay_stripe_share(t.total, s.stripe) \
         FROM unnest($1::uuid[], $2::bigint[]) AS t (account_id, total) \
         WHERE s.account_id = t.account_id",
        &[&accounts, &totals],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use reelay_core::{AspectRatio, Credits, GenerationId, Model};
    use time::OffsetDateTime;

    use super::*;
    use crate::postgres::{PgStore, TestDatabase};
    use crate::{Account, AccountStore, GenerationStore, NewGeneration, Spec};

    const PRICE: i64 = 2_500;

    fn a_create(account: reelay_core::AccountId, now: OffsetDateTime) -> NewGeneration {
        NewGeneration {
            id: GenerationId::random(),
            account_id: account,
            spec: Spec {
                prompt: "a lighthouse at dusk".into(),
                model: Model::Veo3Fast,
                aspect_ratio: AspectRatio::Landscape,
                seed: 7,
                watermark_text: None,
                callback_url: None,
                inputs: vec![],
            },
            price: Credits::from_units(PRICE),
            created_at: now,
            deadline_at: now + time::Duration::minutes(10),
            idempotency: None,
            start: None,
        }
    }

    /// A store on a database of its own (dropped with the first value), and an account
    /// holding `units`.
    async fn an_account(units: i64) -> (TestDatabase, PgStore, Account, OffsetDateTime) {
        let db = TestDatabase::create().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        let now = OffsetDateTime::now_utc();
        let account = store
            .create_account("a", Credits::from_units(units), now)
            .await
            .unwrap();
        (db, store, account, now)
    }

    async fn stripes(store: &PgStore, account: Uuid) -> Vec<i64> {
        let c = store.conn().await.unwrap();
        c.query(
            "SELECT balance FROM balance_stripes WHERE account_id = $1 ORDER BY stripe",
            &[&account],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
    }

    /// A balance of four prices leaves each stripe half a price: a create is charged to the
    /// whole balance, four are made and a fifth refused, and each credit or charge that took
    /// the whole balance leaves it spread evenly (the remainder on the first stripes).
    #[tokio::test]
    async fn what_no_stripe_covers_the_whole_balance_pays_and_stays_spread() {
        let (_db, store, a, now) = an_account(4 * PRICE + 3).await;
        assert_eq!(
            stripes(&store, a.id.0).await,
            [1_251, 1_251, 1_251, 1_250, 1_250, 1_250, 1_250, 1_250]
        );
        store.create_generation(a_create(a.id, now)).await.unwrap();
        assert_eq!(
            stripes(&store, a.id.0).await,
            [938, 938, 938, 938, 938, 938, 938, 937],
            "7,503 spread"
        );
        for _ in 0..3 {
            store.create_generation(a_create(a.id, now)).await.unwrap();
        }
        let refused = store.create_generation(a_create(a.id, now)).await;
        assert!(
            matches!(refused, Err(crate::StoreError::InsufficientCredits)),
            "{refused:?}"
        );
        assert_eq!(stripes(&store, a.id.0).await, [1, 1, 1, 0, 0, 0, 0, 0]);
        let account = store.account(a.id).await.unwrap().unwrap();
        assert_eq!(account.balance, Credits::from_units(3));
        store
            .add_credits(a.id, Credits::from_units(13), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stripes(&store, a.id.0).await, [2, 2, 2, 2, 2, 2, 2, 2]);
    }

    /// The point of stripes: a charge to one stripe does not wait for a transaction that holds
    /// another (another node's batch for the same account), while one to the held stripe does.
    #[tokio::test]
    async fn a_charge_waits_only_for_its_own_stripe() {
        let (_db, store, a, now) = an_account(80 * PRICE).await;
        let mut holder = store.conn().await.unwrap();
        let held = holder.transaction().await.unwrap();
        held.execute(
            "SELECT 1 FROM balance_stripes WHERE account_id = $1 AND stripe = 3 \
             FOR NO KEY UPDATE",
            &[&a.id.0],
        )
        .await
        .unwrap();
        let c = store.conn().await.unwrap();
        c.batch_execute("SET lock_timeout = '5s'").await.unwrap();
        let first = a_create(a.id, now);
        let charged = super::super::generations::insert(&c, &[&first], Some(5))
            .await
            .expect("a charge to stripe 5 while stripe 3 is held");
        assert_eq!(charged, [a.id]);
        c.batch_execute("SET lock_timeout = '200ms'").await.unwrap();
        let second = a_create(a.id, now);
        let waited = super::super::generations::insert(&c, &[&second], Some(3)).await;
        assert!(
            waited.is_err_and(|e| e.to_string().contains("lock timeout")),
            "a charge to the held stripe waits for it"
        );
        held.rollback().await.unwrap();
        assert_eq!(
            stripes(&store, a.id.0).await.iter().sum::<i64>(),
            79 * PRICE
        );
    }

    /// Migration 0005 moves each account's balance off its row into its stripes, spread.
    #[tokio::test]
    async fn the_migration_spreads_each_balance_over_its_stripes() {
        let db = TestDatabase::create().await;
        let store = PgStore::connect_without_migrating(db.url()).unwrap();
        let mut c = store.conn().await.unwrap();
        super::super::apply(&mut c, &super::super::MIGRATIONS[..4])
            .await
            .unwrap();
        let id = Uuid::now_v7();
        c.execute(
            "INSERT INTO accounts (id, name, balance, created_at) VALUES ($1, 'a', 10003, now())",
            &[&id],
        )
        .await
        .unwrap();
        drop(c);
        assert_eq!(store.migrate().await.unwrap(), 1);
        let account = store.account(reelay_core::AccountId(id)).await.unwrap();
        assert_eq!(account.unwrap().balance, Credits::from_units(10_003));
        assert_eq!(
            stripes(&store, id).await,
            [1_251, 1_251, 1_251, 1_250, 1_250, 1_250, 1_250, 1_250]
        );
    }

    /// A create with an idempotency key runs in a transaction: when its stripe falls short it
    /// must let that stripe go before it locks all of them in order, or it deadlocks against a
    /// create that holds the first stripes and waits for its one. Here stripe 0 is held; the
    /// create (its stripe short) waits for it, holding no other stripe meanwhile.
    #[tokio::test]
    async fn a_create_waiting_for_the_whole_balance_holds_no_stripe() {
        let (_db, store, a, now) = an_account(4 * PRICE).await;
        let lock = |stripes: &'static str| {
            format!(
                "SELECT 1 FROM balance_stripes WHERE account_id = '{}' AND stripe IN ({stripes}) \
                 ORDER BY stripe FOR NO KEY UPDATE",
                a.id.0
            )
        };
        let mut first = store.conn().await.unwrap();
        let first = first.transaction().await.unwrap();
        first.batch_execute(&lock("0")).await.unwrap();
        let mut new = a_create(a.id, now);
        new.idempotency = Some(crate::Idempotency {
            key: "k".into(),
            request_hash: [1; 32],
            not_before: now - time::Duration::days(1),
        });
        let creating = tokio::spawn({
            let store = store.clone();
            async move { store.create_generation(new).await }
        });
        let watcher = store.conn().await.unwrap();
        while watcher
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
        {
            // A create that ended without waiting would leave this loop waiting forever.
            assert!(!creating.is_finished(), "the create waits for stripe 0");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let mut second = store.conn().await.unwrap();
        let second = second.transaction().await.unwrap();
        second
            .batch_execute("SET LOCAL lock_timeout = '5s'")
            .await
            .unwrap();
        second
            .batch_execute(&lock("1, 2, 3, 4, 5, 6, 7"))
            .await
            .expect("the waiting create holds none of the other stripes");
        second.rollback().await.unwrap();
        first.rollback().await.unwrap();
        let created = creating.await.unwrap().expect("the create goes on");
        assert!(!created.replayed);
        assert_eq!(stripes(&store, a.id.0).await.iter().sum::<i64>(), 3 * PRICE);
    }
}

//! Accounts, their keys, credits and ledger, and worker tokens.
//!
//! A balance is kept in stripes ([`balances`]); a credit locks them all, so it serializes
//! with every other writer of the balance, on any node.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use reelay_core::apikey::KeyHash;
use reelay_core::money::BalanceError;
use reelay_core::{AccountId, Credits, KeyId};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::rows::{get, stored, unsigned};
use super::sql::{execute, execute_or, query, query_one, query_opt};
use super::{PgStore, backend, balances, workers};
use crate::*;

/// An account's balance is its stripes' sum.
const ACCOUNT_COLUMNS: &str = "id, name, \
    (SELECT COALESCE(SUM(s.balance), 0)::bigint FROM balance_stripes s \
     WHERE s.account_id = accounts.id) AS balance, created_at";

fn account(row: &Row) -> StoreResult<Account> {
    Ok(Account {
        id: AccountId(get(row, "id")?),
        name: get(row, "name")?,
        balance: Credits::from_units(get(row, "balance")?),
        created_at: get(row, "created_at")?,
    })
}

async fn get_account(c: &impl GenericClient, id: AccountId) -> StoreResult<Option<Account>> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1");
    query_opt(c, &sql, &[&id.0])
        .await?
        .as_ref()
        .map(account)
        .transpose()
}

/// Must run inside a transaction (`c` a [`deadpool_postgres::Transaction`]): the locks taken
/// on the account's stripes last until it ends, and the caller commits.
async fn add_credits(
    c: &impl GenericClient,
    id: AccountId,
    amount: Credits,
    now: OffsetDateTime,
) -> StoreResult<Result<Credits, BalanceError>> {
    let Some(&current) = balances::lock(c, &[id.0]).await?.get(&id.0) else {
        return Err(StoreError::NotFound);
    };
    // A statement of its own, after the lock: under READ COMMITTED it sees every change
    // committed by whoever held the lock before (a charge, a refund) with its generation.
    let held = held(c, id).await?;
    let balance = match Credits::from_units(current).balance_after(amount, held) {
        Ok(balance) => balance,
        Err(refused) => return Ok(Err(refused)),
    };
    balances::spread(c, &[(id.0, balance.units())].into()).await?;
    if amount != Credits::ZERO {
        execute(
            c,
            "INSERT INTO ledger (account_id, kind, amount, created_at) \
             VALUES ($1, 'credit', $2, $3)",
            &[&id.0, &amount.units(), &stored(now)],
        )
        .await?;
    }
    Ok(Ok(balance))
}

/// What the account's unfinished generations were charged: each may still be refunded.
/// (SUM of bigint is numeric; the balance rule keeps it within bigint, and the cast would
/// fail rather than round if it were not.)
async fn held(c: &impl GenericClient, id: AccountId) -> StoreResult<Credits> {
    let row = query_one(
        c,
        "SELECT COALESCE(SUM(price), 0)::bigint AS held FROM generations \
         WHERE account_id = $1 AND status IN ('pending', 'processing')",
        &[&id.0],
    )
    .await?;
    Ok(Credits::from_units(get(&row, "held")?))
}

const KEY_COLUMNS: &str = "id, account_id, name, shown_prefix, created_at, revoked_at";

fn key(row: &Row) -> StoreResult<ApiKeyInfo> {
    Ok(ApiKeyInfo {
        id: KeyId(get(row, "id")?),
        account_id: AccountId(get(row, "account_id")?),
        name: get(row, "name")?,
        shown_prefix: get(row, "shown_prefix")?,
        created_at: get(row, "created_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

#[async_trait]
impl AccountStore for PgStore {
    async fn create_account(
        &self,
        name: &str,
        credits: Credits,
        now: OffsetDateTime,
    ) -> StoreResult<Account> {
        if credits < Credits::ZERO {
            return Err(StoreError::InsufficientCredits);
        }
        let now = stored(now);
        let id = AccountId::random();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        execute(
            &tx,
            "INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)",
            &[&id.0, &name, &now],
        )
        .await?;
        balances::open(&tx, id.0).await?;
        // From zero, only a negative amount could be refused, and that was refused above.
        let balance = add_credits(&tx, id, credits, now)
            .await?
            .map_err(|refused| StoreError::Backend(format!("opening balance: {refused}")))?;
        tx.commit().await.map_err(backend)?;
        Ok(Account {
            id,
            name: name.to_owned(),
            balance,
            created_at: now,
        })
    }

    async fn account(&self, id: AccountId) -> StoreResult<Option<Account>> {
        get_account(&self.conn().await?, id).await
    }

    async fn account_by_name(&self, name: &str) -> StoreResult<Option<Account>> {
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = $1 \
             ORDER BY created_at, id LIMIT 1"
        );
        query_opt(&self.conn().await?, &sql, &[&name])
            .await?
            .as_ref()
            .map(account)
            .transpose()
    }

    async fn list_accounts(&self, limit: u32) -> StoreResult<Page<AccountOverview>> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS}, (SELECT COUNT(*) FROM api_keys k \
                 WHERE k.account_id = accounts.id AND k.revoked_at IS NULL) AS live_keys \
             FROM accounts ORDER BY created_at, id LIMIT $1"
        );
        let items = query(&conn, &sql, &[&i64::from(limit)])
            .await?
            .iter()
            .map(|row| {
                Ok(AccountOverview {
                    account: account(row)?,
                    live_keys: unsigned::<i64, _>(row, "live_keys")?,
                })
            })
            .collect::<StoreResult<_>>()?;
        let total = query_one(&conn, "SELECT COUNT(*) AS n FROM accounts", &[]).await?;
        Ok(Page {
            items,
            total: unsigned::<i64, _>(&total, "n")?,
        })
    }

    async fn add_credits(
        &self,
        id: AccountId,
        amount: Credits,
        now: OffsetDateTime,
    ) -> StoreResult<Result<Credits, BalanceError>> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        let added = add_credits(&tx, id, amount, now).await?;
        if added.is_ok() {
            tx.commit().await.map_err(backend)?;
        } else {
            // Refused: nothing was written; release the lock.
            tx.rollback().await.map_err(backend)?;
        }
        Ok(added)
    }

    async fn create_key(&self, key: NewKey, now: OffsetDateTime) -> StoreResult<ApiKeyInfo> {
        let now = stored(now);
        // One statement: the foreign key is the account's existence check, so an account
        // cannot vanish between a check and the insert.
        execute_or(
            &self.conn().await?,
            "INSERT INTO api_keys \
             (id, account_id, name, shown_prefix, secret_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &key.id.0,
                &key.account_id.0,
                &key.name,
                &key.shown_prefix,
                &&key.hash.0[..],
                &now,
            ],
            |e| {
                if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
                    StoreError::NotFound
                } else {
                    backend(e)
                }
            },
        )
        .await?;
        Ok(ApiKeyInfo {
            id: key.id,
            account_id: key.account_id,
            name: key.name,
            shown_prefix: key.shown_prefix,
            created_at: now,
            revoked_at: None,
        })
    }

    async fn list_keys(&self, account: Option<AccountId>) -> StoreResult<Vec<ApiKeyInfo>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys \
             WHERE $1::uuid IS NULL OR account_id = $1 ORDER BY created_at, id"
        );
        query(&self.conn().await?, &sql, &[&account.map(|a| a.0)])
            .await?
            .iter()
            .map(key)
            .collect()
    }

    async fn revoke_key(&self, id: KeyId, now: OffsetDateTime) -> StoreResult<bool> {
        execute(
            &self.conn().await?,
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&id.0, &stored(now)],
        )
        .await
        .map(|n| n == 1)
    }

    async fn authenticate(&self, hash: KeyHash) -> StoreResult<Option<ApiKeyInfo>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL"
        );
        query_opt(&self.conn().await?, &sql, &[&&hash.0[..]])
            .await?
            .as_ref()
            .map(key)
            .transpose()
    }

    async fn create_worker(&self, new: NewWorker, now: OffsetDateTime) -> StoreResult<WorkerInfo> {
        workers::create(&self.conn().await?, new, now).await
    }

    async fn list_workers(&self) -> StoreResult<Vec<WorkerInfo>> {
        workers::list(&self.conn().await?).await
    }

    async fn revoke_worker(&self, id: &str, now: OffsetDateTime) -> StoreResult<bool> {
        workers::revoke(&self.conn().await?, id, now).await
    }

    async fn authenticate_worker(&self, hash: KeyHash) -> StoreResult<Option<WorkerInfo>> {
        workers::authenticate(&self.conn().await?, hash).await
    }
}

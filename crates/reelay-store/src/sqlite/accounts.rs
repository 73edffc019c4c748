//! Accounts, their keys and their credits.

use reelay_core::apikey::KeyHash;
use reelay_core::money::BalanceError;
use reelay_core::{AccountId, Credits, KeyId};
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::backend;
use super::rows::{from_micros, micros, parsed, stored};
use crate::{Account, AccountOverview, ApiKeyInfo, NewKey, Page, StoreError, StoreResult};

const ACCOUNT_COLUMNS: &str = "id, name, balance, created_at";

fn account(row: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: parsed(row, 0)?,
        name: row.get(1)?,
        balance: Credits::from_units(row.get(2)?),
        created_at: from_micros(row.get(3)?)?,
    })
}

pub fn create(
    c: &Connection,
    name: &str,
    credits: Credits,
    now: OffsetDateTime,
) -> StoreResult<Account> {
    if credits < Credits::ZERO {
        return Err(StoreError::InsufficientCredits);
    }
    let id = AccountId::random();
    c.prepare_cached("INSERT INTO accounts (id, name, balance, created_at) VALUES (?1, ?2, 0, ?3)")
        .and_then(|mut s| s.execute(params![id.to_string(), name, micros(now)]))
        .map_err(backend)?;
    // From zero, only a negative amount could be refused, and that was refused above.
    let balance = add_credits(c, id, credits, now)?
        .map_err(|refused| StoreError::Backend(format!("opening balance: {refused}")))?;
    Ok(Account {
        id,
        name: name.to_owned(),
        balance,
        created_at: stored(now),
    })
}

pub fn get(c: &Connection, id: AccountId) -> StoreResult<Option<Account>> {
    c.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"
    ))
    .and_then(|mut s| s.query_row([id.to_string()], account).optional())
    .map_err(backend)
}

pub fn by_name(c: &Connection, name: &str) -> StoreResult<Option<Account>> {
    c.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = ?1 ORDER BY created_at LIMIT 1"
    ))
    .and_then(|mut s| s.query_row([name], account).optional())
    .map_err(backend)
}

pub fn list(c: &Connection, limit: u32) -> StoreResult<Page<AccountOverview>> {
    let items = c
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS}, (SELECT COUNT(*) FROM api_keys k \
                 WHERE k.account_id = accounts.id AND k.revoked_at IS NULL) \
             FROM accounts ORDER BY created_at, id LIMIT ?1"
        ))
        .and_then(|mut s| {
            s.query_map([limit], |row| {
                Ok(AccountOverview {
                    account: account(row)?,
                    live_keys: row.get::<_, i64>(4)?.unsigned_abs(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    let total = c
        .query_row("SELECT COUNT(*) FROM accounts", [], |row| {
            row.get::<_, i64>(0)
        })
        .map_err(backend)?
        .unsigned_abs();
    Ok(Page { items, total })
}

/// Checked in Rust, not in SQL: SQLite turns an integer sum past i64 into a float, which
/// the `balance >= 0` check lets through and nothing can read back. The read and the write
/// share the writer's transaction, so no other change comes between them.
pub fn add_credits(
    c: &Connection,
    id: AccountId,
    amount: Credits,
    now: OffsetDateTime,
) -> StoreResult<Result<Credits, BalanceError>> {
    let Some(account) = get(c, id)? else {
        return Err(StoreError::NotFound);
    };
    let balance = match account.balance.balance_after(amount, held(c, id)?) {
        Ok(balance) => balance,
        Err(refused) => return Ok(Err(refused)),
    };
    c.prepare_cached("UPDATE accounts SET balance = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id.to_string(), balance.units()]))
        .map_err(backend)?;
    if amount != Credits::ZERO {
        c.prepare_cached(
            "INSERT INTO ledger (account_id, kind, amount, created_at) VALUES (?1, 'credit', ?2, ?3)",
        )
        .and_then(|mut s| s.execute(params![id.to_string(), amount.units(), micros(now)]))
        .map_err(backend)?;
    }
    Ok(Ok(balance))
}

/// What the account's unfinished generations were charged: each may still be refunded.
/// (SQLite's SUM fails on overflow rather than rounding; the balance rule keeps it in range.)
fn held(c: &Connection, id: AccountId) -> StoreResult<Credits> {
    c.prepare_cached(
        "SELECT COALESCE(SUM(price), 0) FROM generations \
         WHERE account_id = ?1 AND status IN ('pending', 'processing')",
    )
    .and_then(|mut s| s.query_row([id.to_string()], |r| r.get(0)))
    .map(Credits::from_units)
    .map_err(backend)
}

const KEY_COLUMNS: &str = "id, account_id, name, shown_prefix, created_at, revoked_at";

fn key(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyInfo> {
    Ok(ApiKeyInfo {
        id: parsed(row, 0)?,
        account_id: parsed(row, 1)?,
        name: row.get(2)?,
        shown_prefix: row.get(3)?,
        created_at: from_micros(row.get(4)?)?,
        revoked_at: row.get::<_, Option<i64>>(5)?.map(from_micros).transpose()?,
    })
}

pub fn create_key(c: &Connection, new: NewKey, now: OffsetDateTime) -> StoreResult<ApiKeyInfo> {
    if get(c, new.account_id)?.is_none() {
        return Err(StoreError::NotFound);
    }
    c.prepare_cached(
        "INSERT INTO api_keys (id, account_id, name, shown_prefix, secret_hash, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            new.id.to_string(),
            new.account_id.to_string(),
            new.name,
            new.shown_prefix,
            &new.hash.0[..],
            micros(now)
        ])
    })
    .map_err(backend)?;
    Ok(ApiKeyInfo {
        id: new.id,
        account_id: new.account_id,
        name: new.name,
        shown_prefix: new.shown_prefix,
        created_at: stored(now),
        revoked_at: None,
    })
}

pub fn list_keys(c: &Connection, account: Option<AccountId>) -> StoreResult<Vec<ApiKeyInfo>> {
    let account = account.map(|a| a.to_string());
    c.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE ?1 IS NULL OR account_id = ?1 ORDER BY created_at"
    ))
    .and_then(|mut s| s.query_map([account], key)?.collect())
    .map_err(backend)
}

pub fn revoke_key(c: &Connection, id: KeyId, now: OffsetDateTime) -> StoreResult<bool> {
    c.prepare_cached("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
        .and_then(|mut s| s.execute(params![id.to_string(), micros(now)]))
        .map(|n| n == 1)
        .map_err(backend)
}

pub fn authenticate(c: &Connection, hash: KeyHash) -> StoreResult<Option<ApiKeyInfo>> {
    c.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?1 AND revoked_at IS NULL"
    ))
    .and_then(|mut s| s.query_row([&hash.0[..]], key).optional())
    .map_err(backend)
}

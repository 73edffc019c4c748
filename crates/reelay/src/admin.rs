//! `reelay keys` and `reelay credits`: account administration straight on the database, so it
//! works with or without a running server.

use anyhow::{Context, bail};
use reelay_api::KEY_FRESHNESS;
use reelay_core::apikey::IssuedKey;
use reelay_core::money::BalanceError;
use reelay_core::{AccountId, Credits, KeyId};
use reelay_store::{Account, ApiKeyInfo, NewKey, Store, StoreError};
use reelay_webhooks::timestamp;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// A key just made, with its secret: the only time the secret exists outside its owner.
pub struct NewAccountKey {
    pub account: Account,
    pub key: ApiKeyInfo,
    pub secret: String,
}

impl NewAccountKey {
    pub fn to_json(&self) -> Value {
        json!({
            "account_id": self.account.id.to_string(),
            "key_id": self.key.id.to_string(),
            "api_key": self.secret,
            "name": self.key.name,
            "balance": self.account.balance.to_string(),
        })
    }
}

/// Makes a key for an existing account, or for a new one created with `credits`.
pub async fn create_key(
    store: &dyn Store,
    account: Option<AccountId>,
    name: &str,
    credits: Option<Credits>,
) -> anyhow::Result<NewAccountKey> {
    let now = OffsetDateTime::now_utc();
    let account = match account {
        Some(id) => {
            let mut account = store
                .account(id)
                .await?
                .with_context(|| format!("no account {id}"))?;
            if let Some(credits) = credits {
                account.balance = add_credits(store, id, credits).await?;
            }
            account
        }
        None => {
            let credits = credits.unwrap_or(Credits::ZERO);
            if credits < Credits::ZERO {
                bail!("--credits cannot be negative");
            }
            store.create_account(name, credits, now).await?
        }
    };
    let issued = IssuedKey::generate();
    let key = store
        .create_key(
            NewKey {
                id: issued.id,
                account_id: account.id,
                name: name.to_owned(),
                shown_prefix: issued.shown_prefix.clone(),
                hash: issued.hash,
            },
            now,
        )
        .await?;
    Ok(NewAccountKey {
        account,
        key,
        secret: issued.secret,
    })
}

pub fn key_json(key: &ApiKeyInfo) -> Value {
    json!({
        "key_id": key.id.to_string(),
        "account_id": key.account_id.to_string(),
        "name": key.name,
        "prefix": key.shown_prefix,
        "created_at": timestamp::format(key.created_at),
        "revoked_at": key.revoked_at.map(timestamp::format),
    })
}

/// Returns once every node refuses the key: a node takes a key it found live as live for
/// [`KEY_FRESHNESS`] without asking again.
pub async fn revoke_key(store: &dyn Store, id: KeyId) -> anyhow::Result<()> {
    if !store.revoke_key(id, OffsetDateTime::now_utc()).await? {
        bail!("no live key {id}: it does not exist or was already revoked");
    }
    tokio::time::sleep(KEY_FRESHNESS).await;
    Ok(())
}

/// Adds (or, negative, removes) credits. A change that would take the balance below zero or
/// past the maximum is refused with why, and changes nothing.
pub async fn add_credits(
    store: &dyn Store,
    account: AccountId,
    amount: Credits,
) -> anyhow::Result<Credits> {
    match store
        .add_credits(account, amount, OffsetDateTime::now_utc())
        .await
    {
        Ok(Ok(balance)) => Ok(balance),
        Ok(Err(BalanceError::Negative)) => {
            bail!("removing {amount} would make the balance negative")
        }
        Ok(Err(e @ BalanceError::AboveMaximum)) => {
            bail!("cannot add {amount} credits to account {account}: {e}; nothing was changed")
        }
        Err(StoreError::NotFound) => bail!("no account {account}"),
        Err(e) => Err(e.into()),
    }
}

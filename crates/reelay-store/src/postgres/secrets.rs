//! Webhook signing secrets.
//!
//! Every write of an account's secrets first locks its account row (`FOR NO KEY UPDATE`), so
//! rotations and first secrets of one account serialize across nodes: a rotation's rate-limit
//! check, retirements and new secret see no other write come between them.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use reelay_core::AccountId;
use time::OffsetDateTime;

use super::rows::{get, stored};
use super::sql::{execute, query, query_opt};
use super::{PgStore, backend};
use crate::*;

/// Locks the account's row until the transaction `c` ends; NotFound when there is none.
async fn lock_account(c: &impl GenericClient, account: AccountId) -> StoreResult<()> {
    let sql = "SELECT id FROM accounts WHERE id = $1 FOR NO KEY UPDATE";
    match query_opt(c, sql, &[&account.0]).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound),
    }
}

#[async_trait]
impl SecretStore for PgStore {
    /// `LIMIT 2`: rotations leave at most two signing, and on a database written before they
    /// retired older secrets, the current one and the newest rotated-out one still are the two.
    async fn signing_secrets(
        &self,
        account: AccountId,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<SealedSecret>> {
        query(
            &self.conn().await?,
            "SELECT sealed, created_at, retired_at FROM signing_secrets \
             WHERE account_id = $1 AND (retired_at IS NULL OR retired_at > $2) \
             ORDER BY retired_at IS NOT NULL, id DESC LIMIT 2",
            &[&account.0, &stored(now)],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(SealedSecret {
                sealed: get(row, "sealed")?,
                created_at: get(row, "created_at")?,
                retired_at: get(row, "retired_at")?,
            })
        })
        .collect()
    }

    /// Under the account's lock, so that it never races a rotation of an account without a
    /// secret; `signing_secrets_current` (one unretired secret per account) decides the rest.
    async fn add_signing_secret(
        &self,
        account: AccountId,
        sealed: Vec<u8>,
        now: OffsetDateTime,
    ) -> StoreResult<bool> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        lock_account(&tx, account).await?;
        let inserted = execute(
            &tx,
            "INSERT INTO signing_secrets (account_id, sealed, created_at) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&account.0, &sealed, &stored(now)],
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(inserted == 1)
    }

    async fn rotate_signing_secret(
        &self,
        account: AccountId,
        sealed: Vec<u8>,
        now: OffsetDateTime,
        rotation: Rotation,
    ) -> StoreResult<Rotated> {
        let now = stored(now);
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        lock_account(&tx, account).await?;
        // The current secret, and whether a rotation made it (an older secret exists) rather
        // than first use: the first secret is made on demand, and rotating it at once is fine.
        let current = query_opt(
            &tx,
            "SELECT id, created_at, EXISTS (SELECT 1 FROM signing_secrets o \
                 WHERE o.account_id = s.account_id AND o.id < s.id) AS rotated \
             FROM signing_secrets s WHERE account_id = $1 AND retired_at IS NULL",
            &[&account.0],
        )
        .await?;
        if let Some(row) = current {
            let id: i64 = get(&row, "id")?;
            let created_at: OffsetDateTime = get(&row, "created_at")?;
            let rotated: bool = get(&row, "rotated")?;
            if rotated && created_at > stored(rotation.refuse_if_rotated_after) {
                tx.rollback().await.map_err(backend)?;
                return Ok(Rotated::TooSoon {
                    last_rotation: created_at,
                });
            }
            // Older secrets still in their overlap stop now; the one rotated out gets its own.
            execute(
                &tx,
                "UPDATE signing_secrets SET retired_at = $2 \
                 WHERE account_id = $1 AND retired_at > $2",
                &[&account.0, &now],
            )
            .await?;
            execute(
                &tx,
                "UPDATE signing_secrets SET retired_at = $2 WHERE id = $1",
                &[&id, &stored(rotation.overlap_until)],
            )
            .await?;
        }
        execute(
            &tx,
            "INSERT INTO signing_secrets (account_id, sealed, created_at) VALUES ($1, $2, $3)",
            &[&account.0, &sealed, &now],
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(Rotated::Done)
    }
}

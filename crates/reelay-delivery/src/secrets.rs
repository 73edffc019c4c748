//! Per-account webhook signing secrets: made on first use, sealed at rest, rotated with a
//! 24-hour overlap during which both the old and the new secret sign.
//!
//! Secrets are sealed under the server's [`MasterKey`] before they reach storage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use reelay_core::AccountId;
use reelay_store::{Store, StoreError, StoreResult};
use reelay_webhooks::Secret;
use time::OffsetDateTime;

use crate::master_key::MasterKey;

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a node trusts its cached secrets; another node's rotation shows within this.
const CACHE_FOR: Duration = Duration::from_secs(5);
const SECRET_BYTES: usize = 32;

/// An account's secrets as the API shows them.
#[derive(Debug, Clone)]
pub struct AccountSecrets {
    pub current: Secret,
    pub current_since: OffsetDateTime,
    /// When a rotated-out secret, still signing beside the current one, stops.
    pub previous_expires_at: Option<OffsetDateTime>,
}

/// Gives each account's signing secrets, creating, caching and rotating them.
pub struct Keyring {
    store: Arc<dyn Store>,
    master: MasterKey,
    cache: Mutex<HashMap<AccountId, Cached>>,
}

/// An account's signing secrets and when they were read.
type Cached = (Instant, Arc<Vec<Secret>>);

impl Keyring {
    pub fn new(store: Arc<dyn Store>, master: MasterKey) -> Self {
        Self {
            store,
            master,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The secrets that sign now, the current one first.
    pub async fn signing(&self, account: AccountId) -> StoreResult<Arc<Vec<Secret>>> {
        if let Some((at, secrets)) = self.cache.lock().expect("keyring cache").get(&account)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(secrets.clone());
        }
        let secrets = Arc::new(
            self.load(account)
                .await?
                .into_iter()
                .map(|(secret, _, _)| secret)
                .collect::<Vec<_>>(),
        );
        let mut cache = self.cache.lock().expect("keyring cache");
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(account, (Instant::now(), secrets.clone()));
        Ok(secrets)
    }

    pub async fn show(&self, account: AccountId) -> StoreResult<AccountSecrets> {
        let mut all = self.load(account).await?.into_iter();
        let (current, current_since, _) = all.next().ok_or(StoreError::NotFound)?;
        let previous_expires_at = all.find_map(|(_, _, retired)| retired);
        Ok(AccountSecrets {
            current,
            current_since,
            previous_expires_at,
        })
    }

    /// Makes a new current secret; the old one keeps signing for [`ROTATION_OVERLAP`].
    pub async fn rotate(&self, account: AccountId) -> StoreResult<AccountSecrets> {
        self.load(account).await?; // make sure there is one to rotate out
        let now = OffsetDateTime::now_utc();
        let fresh = new_secret();
        self.store
            .add_signing_secret(
                account,
                self.master.seal(account, &fresh),
                now,
                Some(now + ROTATION_OVERLAP),
            )
            .await?;
        self.cache.lock().expect("keyring cache").remove(&account);
        self.show(account).await
    }

    /// Every live secret, current first; creates the first one when the account has none.
    async fn load(
        &self,
        account: AccountId,
    ) -> StoreResult<Vec<(Secret, OffsetDateTime, Option<OffsetDateTime>)>> {
        let now = OffsetDateTime::now_utc();
        let mut sealed = self.store.signing_secrets(account, now).await?;
        if sealed.first().is_none_or(|s| s.retired_at.is_some()) {
            let fresh = new_secret();
            // Another request may win the race to create it; then its secret is used.
            self.store
                .add_signing_secret(account, self.master.seal(account, &fresh), now, None)
                .await?;
            sealed = self.store.signing_secrets(account, now).await?;
        }
        sealed
            .into_iter()
            .map(|s| {
                Ok((
                    self.master.open(account, &s.sealed)?,
                    s.created_at,
                    s.retired_at,
                ))
            })
            .collect()
    }
}

fn new_secret() -> Secret {
    let mut bytes = vec![0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    Secret::from_bytes(bytes)
}

//! Per-account webhook signing secrets: made on first use, sealed at rest, rotated with a
//! 24-hour overlap during which both the old and the new secret sign. At most those two sign:
//! a rotation stops every older secret at once, so a webhook never carries more than two
//! signatures however often an account rotates.
//!
//! Secrets are sealed under the server's [`MasterKey`] before they reach storage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use reelay_core::AccountId;
use reelay_core::recent::Recent;
use reelay_store::{Rotated, Rotation, Store, StoreError, StoreResult};
use reelay_webhooks::Secret;
use time::OffsetDateTime;

use crate::master_key::MasterKey;

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 60 * 60);
/// The least time between two rotations of an account's secret.
///
/// A rotation is an operator's act (a secret leaked, a receiver is being moved), not something
/// to script in a loop: every one is a write and a sealing, and since only the newest two
/// secrets sign, a second rotation right after the first stops at once the secret receivers
/// still verify with, without the overlap the first one promised. A minute is long enough to
/// stop a double click or a runaway script doing that, short enough that nobody waits on it
/// for real. The account's first secret, made on first use, is not a rotation: rotating it is
/// never refused.
pub const ROTATION_INTERVAL: Duration = Duration::from_secs(60);
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

/// Why a rotation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotateError {
    /// The current secret was made by a rotation less than [`ROTATION_INTERVAL`] ago.
    #[error(
        "the signing secret was rotated less than {} seconds ago; rotate again in {} seconds",
        ROTATION_INTERVAL.as_secs(),
        retry_after.as_secs_f64().ceil().max(1.0)
    )]
    TooSoon {
        /// When a rotation is allowed again, from now.
        retry_after: Duration,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Gives each account's signing secrets, creating, caching and rotating them.
pub struct Keyring {
    store: Arc<dyn Store>,
    master: MasterKey,
    cache: Recent<AccountId, Arc<Vec<Secret>>>,
}

/// The most accounts whose secrets are cached at once.
const CACHED_ACCOUNTS: usize = 100_000;

impl Keyring {
    pub fn new(store: Arc<dyn Store>, master: MasterKey) -> Self {
        Self {
            store,
            master,
            cache: Recent::new(CACHE_FOR, CACHED_ACCOUNTS),
        }
    }

    /// The secrets that sign now, the current one first.
    pub async fn signing(&self, account: AccountId) -> StoreResult<Arc<Vec<Secret>>> {
        if let Some(secrets) = self.cache.get(&account) {
            return Ok(secrets);
        }
        let asked = Instant::now();
        let secrets = Arc::new(
            self.load(account)
                .await?
                .into_iter()
                .map(|(secret, _, _)| secret)
                .collect::<Vec<_>>(),
        );
        self.cache.insert(account, secrets.clone(), asked);
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

    /// Makes a new current secret; the one it replaces keeps signing for [`ROTATION_OVERLAP`]
    /// and any older one stops now. Refused within [`ROTATION_INTERVAL`] of the previous
    /// rotation, judged by the stored secret's creation time, so every node enforces it alike.
    pub async fn rotate(&self, account: AccountId) -> Result<AccountSecrets, RotateError> {
        self.load(account).await?; // make sure there is one to rotate out
        let now = self.store.now();
        let fresh = new_secret();
        let rotated = self
            .store
            .rotate_signing_secret(
                account,
                self.master.seal(account, &fresh),
                now,
                Rotation {
                    overlap_until: now + ROTATION_OVERLAP,
                    refuse_if_rotated_after: now - ROTATION_INTERVAL,
                },
            )
            .await?;
        if let Rotated::TooSoon { last_rotation } = rotated {
            return Err(RotateError::TooSoon {
                retry_after: retry_after(last_rotation, now),
            });
        }
        self.cache.remove(&account);
        Ok(self.show(account).await?)
    }

    /// Every live secret, current first; creates the first one when the account has none.
    async fn load(
        &self,
        account: AccountId,
    ) -> StoreResult<Vec<(Secret, OffsetDateTime, Option<OffsetDateTime>)>> {
        let now = self.store.now();
        let mut sealed = self.store.signing_secrets(account, now).await?;
        if sealed.first().is_none_or(|s| s.retired_at.is_some()) {
            let fresh = new_secret();
            // Another request may win the race to create it; then its secret is used.
            self.store
                .add_signing_secret(account, self.master.seal(account, &fresh), now)
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

/// How long until [`ROTATION_INTERVAL`] has passed since `last_rotation`. Never more than
/// the interval itself, even when the node that rotated has a clock running ahead of ours.
fn retry_after(last_rotation: OffsetDateTime, now: OffsetDateTime) -> Duration {
    let since = Duration::try_from(now - last_rotation).unwrap_or(Duration::ZERO);
    ROTATION_INTERVAL.saturating_sub(since)
}

fn new_secret() -> Secret {
    let mut bytes = vec![0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    Secret::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_counts_down_the_interval() {
        let t = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(retry_after(t, t), ROTATION_INTERVAL);
        assert_eq!(
            retry_after(t, t + Duration::from_secs(45)),
            Duration::from_secs(15)
        );
        assert_eq!(retry_after(t, t + ROTATION_INTERVAL), Duration::ZERO);
        // A rotation stamped in our future (its node's clock runs ahead): at most the interval.
        assert_eq!(
            retry_after(t + Duration::from_secs(3_600), t),
            ROTATION_INTERVAL
        );
    }

    #[test]
    fn too_soon_says_when_to_come_back() {
        let e = RotateError::TooSoon {
            retry_after: Duration::from_millis(14_200),
        };
        assert_eq!(
            e.to_string(),
            "the signing secret was rotated less than 60 seconds ago; rotate again in 15 seconds"
        );
    }
}

//! Bearer API keys: the extractor that turns `Authorization: Bearer <key>` into an account,
//! and the live keys a node remembers for a moment so that a busy client's every request is
//! not also a round trip to the database.

use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use reelay_core::AccountId;
use reelay_core::apikey::KeyHash;
use reelay_core::recent::Recent;
use reelay_store::{Store, StoreResult};

use crate::{ApiError, AppState};

/// How long a key the store found live is taken as live without asking it again. `reelay keys
/// revoke` waits this long after its commit, so once it returns the key is refused by every
/// node. (Asking the store on every request made every create a round trip to PostgreSQL
/// before it could join its batch: one node delivered a tenth fewer webhooks in
/// `reelay-bench pipeline`, BENCHMARKS.md, "Live keys remembered for a second".)
pub const KEY_FRESHNESS: Duration = Duration::from_secs(1);

/// The most keys remembered at once.
const REMEMBERED: usize = 10_000;

/// Live keys this node found in the store. Unknown and revoked keys are never remembered: a
/// client guessing keys costs a lookup each, and no memory.
pub struct LiveKeys(Recent<KeyHash, AccountId>);

impl Default for LiveKeys {
    fn default() -> Self {
        Self(Recent::new(KEY_FRESHNESS, REMEMBERED))
    }
}

impl LiveKeys {
    /// The account `hash`'s key acts for, or `None` when the key is unknown or revoked.
    pub async fn account(
        &self,
        store: &dyn Store,
        hash: KeyHash,
    ) -> StoreResult<Option<AccountId>> {
        if let Some(account) = self.0.get(&hash) {
            return Ok(Some(account));
        }
        let asked = Instant::now();
        let key = store.authenticate(hash).await?;
        match &key {
            Some(key) => self.0.insert(hash, key.account_id, asked),
            None => self.0.remove(&hash),
        }
        Ok(key.map(|key| key.account_id))
    }
}

/// The account a request acts for, proven by a live API key.
pub struct Caller(pub AccountId);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized(
                "missing Authorization header; send `Authorization: Bearer <your API key>`",
            )
        })?;
        let key = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .filter(|key| !key.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "malformed Authorization header; it must read `Bearer <your API key>`",
                )
            })?;
        match state
            .live_keys
            .account(state.store.as_ref(), KeyHash::of(key))
            .await?
        {
            Some(account) => Ok(Caller(account)),
            None => Err(ApiError::unauthorized(
                "the API key is not valid: it is unknown or was revoked",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use reelay_core::Credits;
    use reelay_core::apikey::IssuedKey;
    use reelay_store::{AccountStore, NewKey, SqliteStore};
    use time::OffsetDateTime;

    use super::*;

    /// `keys` finds a live key of a new account, which is then revoked behind its back.
    async fn found_then_revoked(
        keys: &LiveKeys,
    ) -> (tempfile::TempDir, SqliteStore, AccountId, KeyHash) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("reelay.db")).unwrap();
        let now = OffsetDateTime::now_utc();
        let account = store
            .create_account("studio", Credits::ZERO, now)
            .await
            .unwrap();
        let issued = IssuedKey::generate();
        let key = NewKey {
            id: issued.id,
            account_id: account.id,
            name: "ci".into(),
            shown_prefix: issued.shown_prefix.clone(),
            hash: issued.hash,
        };
        store.create_key(key, now).await.unwrap();
        assert_eq!(
            keys.account(&store, issued.hash).await.unwrap(),
            Some(account.id)
        );
        assert!(store.revoke_key(issued.id, now).await.unwrap());
        (dir, store, account.id, issued.hash)
    }

    #[tokio::test]
    async fn a_revoked_key_is_refused_once_the_freshness_window_has_passed() {
        let keys = LiveKeys::default();
        let (_dir, store, _, hash) = found_then_revoked(&keys).await;
        tokio::time::sleep(KEY_FRESHNESS).await;
        assert_eq!(keys.account(&store, hash).await.unwrap(), None);
        assert!(keys.0.is_empty(), "a revoked key is forgotten");
    }

    #[tokio::test]
    async fn a_live_key_is_not_looked_up_again_while_fresh_and_unknown_ones_are_not_kept() {
        let keys = LiveKeys(Recent::new(Duration::from_secs(3600), REMEMBERED));
        let (_dir, store, account, hash) = found_then_revoked(&keys).await;
        // The store refuses it now; the node still answers from what it found.
        assert_eq!(keys.account(&store, hash).await.unwrap(), Some(account));

        let unknown = KeyHash::of("rly_not-a-key");
        assert_eq!(keys.account(&store, unknown).await.unwrap(), None);
        assert_eq!(keys.0.len(), 1, "only the live key is kept");
    }
}

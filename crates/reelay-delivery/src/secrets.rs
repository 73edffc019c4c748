//! Per-account webhook signing secrets: made on first use, sealed at rest, rotated with a
//! 24-hour overlap during which both the old and the new secret sign.
//!
//! Secrets are sealed with XChaCha20-Poly1305 under the server's master key, with the account
//! id as associated data, so a database dump alone reveals no secret and a sealed secret cannot
//! be moved to another account.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::Aead;
use chacha20poly1305::aead::Payload;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use reelay_core::AccountId;
use reelay_store::{Store, StoreError, StoreResult};
use reelay_webhooks::Secret;
use time::OffsetDateTime;

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a node trusts its cached secrets; another node's rotation shows within this.
const CACHE_FOR: Duration = Duration::from_secs(5);
const SECRET_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

/// The key that seals signing secrets at rest.
#[derive(Clone)]
pub struct MasterKey(Arc<XChaCha20Poly1305>);

impl MasterKey {
    /// Reads a base64 key of 32 bytes (as `REELAY_MASTER_KEY` gives it).
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| format!("the master key is not base64: {e}"))?;
        XChaCha20Poly1305::new_from_slice(&bytes)
            .map(|c| Self(Arc::new(c)))
            .map_err(|_| "the master key must be 32 bytes (44 base64 characters)".to_owned())
    }

    /// Reads the key file, or creates it (readable by its owner only) on first start.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                let text = STANDARD.encode(bytes);
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path)?;
                file.write_all(text.as_bytes())?;
                file.sync_all()?;
                Self::from_base64(&text).map_err(std::io::Error::other)
            }
            Err(e) => Err(e),
        }
    }

    fn seal(&self, account: AccountId, secret: &Secret) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: account.0.as_bytes(),
                },
            )
            .expect("sealing a short secret cannot fail");
        [nonce.as_slice(), &sealed].concat()
    }

    fn open(&self, account: AccountId, sealed: &[u8]) -> StoreResult<Secret> {
        let broken = || {
            StoreError::Backend(
                "a signing secret cannot be opened: was the master key changed?".into(),
            )
        };
        if sealed.len() < NONCE_BYTES {
            return Err(broken());
        }
        let (nonce, body) = sealed.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| broken())?;
        self.0
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: body,
                    aad: account.0.as_bytes(),
                },
            )
            .map(Secret::from_bytes)
            .map_err(|_| broken())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_account() {
        let key = MasterKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        let other = MasterKey::from_base64(&STANDARD.encode([8u8; 32])).unwrap();
        let (a, b) = (AccountId::random(), AccountId::random());
        let secret = new_secret();
        let sealed = key.seal(a, &secret);
        assert!(!sealed.windows(SECRET_BYTES).any(|w| w == secret.as_bytes()));
        assert_eq!(key.open(a, &sealed).unwrap(), secret);
        assert!(key.open(b, &sealed).is_err());
        assert!(other.open(a, &sealed).is_err());
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
    }

    #[test]
    fn the_master_key_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let first = MasterKey::load_or_create(&path).unwrap();
        let again = MasterKey::load_or_create(&path).unwrap();
        let account = AccountId::random();
        let secret = new_secret();
        assert_eq!(
            again.open(account, &first.seal(account, &secret)).unwrap(),
            secret
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

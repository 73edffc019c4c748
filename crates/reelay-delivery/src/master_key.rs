//! The server's master key: the one secret that seals every account's signing secrets at rest
//! (XChaCha20-Poly1305, the account id as associated data), so a database dump alone reveals no
//! signing secret and a sealed secret cannot be moved to another account.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use reelay_core::AccountId;
use reelay_store::{StoreError, StoreResult};
use reelay_webhooks::Secret;
use sha2::Sha256;

const NONCE_BYTES: usize = 24;

/// The key that seals signing secrets at rest, and from which the server's other keys are
/// derived (so an installation has one secret to keep, not several).
#[derive(Clone)]
pub struct MasterKey {
    cipher: Arc<XChaCha20Poly1305>,
    derive: Arc<Hmac<Sha256>>,
}

impl MasterKey {
    /// Reads a base64 key of 32 bytes (as `REELAY_MASTER_KEY` gives it).
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| format!("the master key is not base64: {e}"))?;
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|_| "the master key must be 32 bytes (44 base64 characters)".to_owned())?;
        let derive =
            <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&bytes).expect("HMAC takes any key");
        Ok(Self {
            cipher: Arc::new(cipher),
            derive: Arc::new(derive),
        })
    }

    /// A 32-byte key for one purpose (like `"video-url"`), independent of the sealing key and
    /// of every other purpose's key.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = (*self.derive).clone();
        mac.update(b"reelay derived key v1\0");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Reads the key file, or creates it (readable by its owner only) on first start.
    /// An existing file that others can read is refused: whoever can read it can forge every
    /// account's webhooks.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                refuse_if_shared(path)?;
                Self::from_base64(&text).map_err(std::io::Error::other)
            }
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

    pub(crate) fn seal(&self, account: AccountId, secret: &Secret) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
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

    pub(crate) fn open(&self, account: AccountId, sealed: &[u8]) -> StoreResult<Secret> {
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
        self.cipher
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

#[cfg(unix)]
fn refuse_if_shared(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is readable by other users (mode {mode:o}); anyone who can read it can forge \
             webhooks. Run `chmod 600 {}` and start again",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_if_shared(_: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        let mut bytes = vec![0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Secret::from_bytes(bytes)
    }

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_account() {
        let key = MasterKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        let other = MasterKey::from_base64(&STANDARD.encode([8u8; 32])).unwrap();
        let (a, b) = (AccountId::random(), AccountId::random());
        let secret = secret();
        let sealed = key.seal(a, &secret);
        assert!(!sealed.windows(32).any(|w| w == secret.as_bytes()));
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
        let secret = secret();
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

    #[cfg(unix)]
    #[test]
    fn a_master_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = MasterKey::load_or_create(&path).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_master() {
        let a = MasterKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        let b = MasterKey::from_base64(&STANDARD.encode([8u8; 32])).unwrap();
        assert_eq!(a.derive("video-url"), a.derive("video-url"));
        assert_ne!(a.derive("video-url"), a.derive("other"));
        assert_ne!(a.derive("video-url"), b.derive("video-url"));
        assert_ne!(a.derive("video-url"), [7u8; 32]);
    }
}

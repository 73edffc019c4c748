//! API keys: random secrets shown once, stored only as a hash.
//!
//! A key carries 256 random bits, so a plain SHA-256 is the right hash: there is nothing to
//! brute-force, and a lookup by hash compares no secret byte by byte (no timing side channel).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::KeyId;

/// Every reelay key starts with this, so leaked keys are easy to scan for.
pub const PREFIX: &str = "rly_";

/// How many leading characters of a key are kept in clear to tell keys apart in listings.
const SHOWN: usize = 12;

/// The SHA-256 of a key's secret: the only form in which storage ever sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }
}

/// A freshly made key. `secret` is shown to its owner once and then dropped.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub id: KeyId,
    pub secret: String,
    pub hash: KeyHash,
    /// The first characters of the secret, safe to show in listings.
    pub shown_prefix: String,
}

impl IssuedKey {
    pub fn generate() -> Self {
        Self::generate_with_prefix(PREFIX)
    }

    /// The same 256 random bits behind another prefix (worker tokens use `rlw_`).
    pub fn generate_with_prefix(prefix: &str) -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes));
        Self {
            id: KeyId::random(),
            hash: KeyHash::of(&secret),
            shown_prefix: secret[..SHOWN].to_owned(),
            secret,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_hash_to_themselves() {
        let a = IssuedKey::generate();
        let b = IssuedKey::generate();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(PREFIX));
        assert_eq!(a.secret.len(), PREFIX.len() + 43);
        assert_eq!(KeyHash::of(&a.secret), a.hash);
        assert_ne!(a.hash, b.hash);
        assert!(a.secret.starts_with(&a.shown_prefix));
    }
}

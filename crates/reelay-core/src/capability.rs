//! Video URLs that cannot be guessed: `/videos/{generation id}/{capability}.mp4`.
//!
//! A video is served without an API key (it must play in a `<video>` tag and open from a
//! webhook), so its URL is the capability. The generation id alone is not enough: UUIDv7 ids
//! are time-ordered and ids made together share their leading bits, and an id is shown in
//! places a video link is not (logs, webhook ids, support tickets). The capability is an
//! HMAC-SHA256 of the id under a server key, cut to 128 bits: nothing to store, the same on
//! every node that shares the key, and checked in constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::GenerationId;

/// Bytes of MAC kept in a URL: 128 bits.
const TAG_BYTES: usize = 16;

/// The key video capabilities are made and checked with.
#[derive(Clone)]
pub struct VideoKey(hmac::Hmac<Sha256>);

impl VideoKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(hmac::Hmac::new_from_slice(&key).expect("HMAC takes any key"))
    }

    fn tag(&self, id: GenerationId) -> hmac::Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(id.0.as_bytes());
        mac
    }

    /// The capability for a generation's video: 22 URL-safe characters.
    pub fn capability(&self, id: GenerationId) -> String {
        URL_SAFE_NO_PAD.encode(&self.tag(id).finalize().into_bytes()[..TAG_BYTES])
    }

    /// Whether `capability` is this generation's, compared in constant time.
    pub fn verify(&self, id: GenerationId, capability: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(capability) {
            Ok(bytes) if bytes.len() == TAG_BYTES => {
                self.tag(id).verify_truncated_left(&bytes).is_ok()
            }
            _ => false,
        }
    }

    /// The path a video is served at, below the public URL.
    pub fn path(&self, id: GenerationId) -> String {
        format!("/videos/{id}/{}.mp4", self.capability(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capability_opens_only_its_own_video_under_its_own_key() {
        let key = VideoKey::new([1; 32]);
        let (a, b) = (GenerationId::random(), GenerationId::random());
        let cap = key.capability(a);
        assert_eq!(cap.len(), 22);
        assert!(key.verify(a, &cap));
        assert!(!key.verify(b, &cap));
        assert!(!VideoKey::new([2; 32]).verify(a, &cap));
        assert!(!key.verify(a, &cap[..21]));
        assert!(!key.verify(a, ""));
        assert!(!key.verify(a, "not base64!"));
        assert_eq!(key.path(a), format!("/videos/{a}/{cap}.mp4"));
    }
}

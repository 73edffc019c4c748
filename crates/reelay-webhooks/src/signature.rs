//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//!
//! One implementation for both sides: the server signs with [`sign_header`], receivers check
//! with [`Verifier`]. Comparison is constant-time (`Mac::verify_slice`).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

const SECRET_PREFIX: &str = "whsec_";

/// How far a `webhook-timestamp` may be from the receiver's clock, either way.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// A signing secret, written `whsec_<base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads `whsec_<base64>` (the prefix is optional, as in the reference libraries).
    pub fn parse(text: &str) -> Result<Self, VerifyError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| VerifyError::BadSecret)?;
        if bytes.is_empty() {
            return Err(VerifyError::BadSecret);
        }
        Ok(Self(bytes))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// One `v1,<base64>` signature.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The `webhook-signature` value: one signature per active secret, space-separated, so a
/// receiver holding either the old or the new secret accepts the request during a rotation.
pub fn sign_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a webhook was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    BadSecret,
    MissingHeader(&'static str),
    BadTimestamp,
    TimestampTooOld,
    TimestampInFuture,
    NoMatchingSignature,
    BadPayload(String),
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadSecret => f.write_str("the secret is not whsec_<base64>"),
            Self::MissingHeader(h) => write!(f, "the {h} header is missing"),
            Self::BadTimestamp => f.write_str("webhook-timestamp is not a number of seconds"),
            Self::TimestampTooOld => f.write_str("webhook-timestamp is too old (replay?)"),
            Self::TimestampInFuture => f.write_str("webhook-timestamp is too far in the future"),
            Self::NoMatchingSignature => f.write_str("no signature matches the secret"),
            Self::BadPayload(e) => write!(f, "the body is not a reelay event: {e}"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// Checks incoming webhooks against one or more secrets.
#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: Vec<Secret>,
    tolerance_secs: i64,
}

impl Verifier {
    pub fn new(secret: Secret) -> Self {
        Self {
            secrets: vec![secret],
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
        }
    }

    /// Also accepts signatures made with `secret` (e.g. the previous one, during a rotation).
    pub fn also(mut self, secret: Secret) -> Self {
        self.secrets.push(secret);
        self
    }

    pub fn with_tolerance_secs(mut self, secs: i64) -> Self {
        self.tolerance_secs = secs;
        self
    }

    /// Verifies the three Standard Webhooks headers against the raw body, at `now` (unix
    /// seconds). `header` looks a header up by its lowercase name.
    pub fn verify<'h>(
        &self,
        header: impl Fn(&str) -> Option<&'h str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let id = header("webhook-id").ok_or(VerifyError::MissingHeader("webhook-id"))?;
        let ts =
            header("webhook-timestamp").ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
        let signatures =
            header("webhook-signature").ok_or(VerifyError::MissingHeader("webhook-signature"))?;
        let ts: i64 = ts.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
        // Saturating: a clock or tolerance near the ends of i64 must not overflow (a panic in
        // debug builds, a wrapped window that accepts anything in release builds).
        if ts < now.saturating_sub(self.tolerance_secs) {
            return Err(VerifyError::TimestampTooOld);
        }
        if ts > now.saturating_add(self.tolerance_secs) {
            return Err(VerifyError::TimestampInFuture);
        }
        let candidates: Vec<Vec<u8>> = signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .collect();
        for secret in &self.secrets {
            for candidate in &candidates {
                if secret.mac(id, ts, body).verify_slice(candidate).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(VerifyError::NoMatchingSignature)
    }

    /// Verifies, then parses the body into the typed event.
    pub fn verify_event<'h>(
        &self,
        header: impl Fn(&str) -> Option<&'h str>,
        body: &[u8],
        now: i64,
    ) -> Result<crate::GenerationEvent, VerifyError> {
        self.verify(header, body, now)?;
        serde_json::from_slice(body).map_err(|e| VerifyError::BadPayload(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> impl Fn(&str) -> Option<&'a str> {
        move |name| match name {
            "webhook-id" => Some(id),
            "webhook-timestamp" => Some(ts),
            "webhook-signature" => Some(sig),
            _ => None,
        }
    }

    #[test]
    fn signs_the_spec_test_vector() {
        let secret = Secret::parse(SPEC_SECRET).unwrap();
        assert_eq!(secret.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIGNATURE);
        assert_eq!(secret.to_string(), SPEC_SECRET);
    }

    #[test]
    fn verifies_the_spec_test_vector_within_tolerance_only() {
        let v = Verifier::new(Secret::parse(SPEC_SECRET).unwrap());
        let ts = SPEC_TS.to_string();
        let h = headers(SPEC_ID, &ts, SPEC_SIGNATURE);
        assert_eq!(v.verify(&h, SPEC_BODY, SPEC_TS + 10), Ok(()));
        assert_eq!(
            v.verify(&h, SPEC_BODY, SPEC_TS + 301),
            Err(VerifyError::TimestampTooOld)
        );
        assert_eq!(
            v.verify(&h, SPEC_BODY, SPEC_TS - 301),
            Err(VerifyError::TimestampInFuture)
        );
        assert_eq!(
            v.verify(&h, br#"{"test": 2432232315}"#, SPEC_TS),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn any_of_several_signatures_and_secrets_may_match() {
        let old = Secret::from_bytes(vec![1; 32]);
        let new = Secret::from_bytes(vec![2; 32]);
        let header = sign_header(&[new.clone(), old.clone()], "msg_1", 100, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        for secret in [old, new] {
            let v = Verifier::new(secret);
            assert_eq!(
                v.verify(headers("msg_1", "100", &header), b"{}", 100),
                Ok(())
            );
        }
        let stranger = Verifier::new(Secret::from_bytes(vec![3; 32]));
        assert_eq!(
            stranger.verify(headers("msg_1", "100", &header), b"{}", 100),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn the_reference_library_accepts_our_signatures() {
        let old = Secret::from_bytes((0u8..32).collect());
        let new = Secret::from_bytes((100u8..124).collect());
        let body = br#"{"generation_id":"x","status":"completed"}"#;
        // The oracle checks the timestamp against its own clock, so sign at the real now.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut map = http::HeaderMap::new();
        map.insert("webhook-id", "msg_abc".parse().unwrap());
        map.insert("webhook-timestamp", now.to_string().parse().unwrap());
        let sig = sign_header(&[new.clone(), old.clone()], "msg_abc", now, body);
        map.insert("webhook-signature", sig.parse().unwrap());
        for secret in [old, new] {
            let oracle = standardwebhooks::Webhook::new(&secret.to_string()).unwrap();
            assert!(oracle.verify(body, &map).is_ok());
        }
    }

    #[test]
    fn extreme_clocks_and_tolerances_do_not_overflow() {
        let secret = Secret::from_bytes(vec![7; 32]);
        let sig = secret.sign("msg_1", 0, b"{}");
        let v = Verifier::new(secret.clone()).with_tolerance_secs(i64::MAX);
        assert_eq!(v.verify(headers("msg_1", "0", &sig), b"{}", 1), Ok(()));
        let v = Verifier::new(secret);
        assert_eq!(
            v.verify(headers("msg_1", "0", &sig), b"{}", i64::MIN),
            Err(VerifyError::TimestampInFuture)
        );
        assert_eq!(
            v.verify(headers("msg_1", "0", &sig), b"{}", i64::MAX),
            Err(VerifyError::TimestampTooOld)
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Header values as a receiver might get them: anything, or close to well-formed.
        fn signature_header() -> impl Strategy<Value = String> {
            prop_oneof![
                ".{0,120}",
                "(v1,[A-Za-z0-9+/=]{0,60} ?){0,4}",
                "(v[0-9],|,|v1)[ -~]{0,50}",
            ]
        }

        fn timestamp_header() -> impl Strategy<Value = String> {
            prop_oneof![
                ".{0,24}",
                any::<i64>().prop_map(|n| n.to_string()),
                "[ +-]?[0-9]{0,21} ?",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_headers_never_panic_and_never_verify(
                id in ".{0,40}",
                ts in timestamp_header(),
                sig in signature_header(),
                body in proptest::collection::vec(any::<u8>(), 0..64),
                now in any::<i64>(),
                tolerance in any::<i64>(),
                secret in proptest::collection::vec(any::<u8>(), 1..40),
            ) {
                let v = Verifier::new(Secret::from_bytes(secret)).with_tolerance_secs(tolerance);
                // Random bytes are not a signature of this secret (a 2^-256 chance aside).
                prop_assert_ne!(v.verify(headers(&id, &ts, &sig), &body, now), Ok(()));
                let _ = v.verify(|_| None, &body, now);
                let _ = v.verify_event(headers(&id, &ts, &sig), &body, now);
                let _ = Secret::parse(&sig);
            }

            #[test]
            fn only_the_right_signature_verifies(
                id in "msg_[a-zA-Z0-9]{1,24}",
                ts in 0i64..4_000_000_000,
                body in proptest::collection::vec(any::<u8>(), 0..128),
                other_body in proptest::collection::vec(any::<u8>(), 0..128),
                secret in proptest::collection::vec(any::<u8>(), 1..40),
                other_secret in proptest::collection::vec(any::<u8>(), 1..40),
                flip in any::<(usize, u8)>(),
            ) {
                let secret = Secret::from_bytes(secret);
                let v = Verifier::new(secret.clone());
                let stamp = ts.to_string();
                let right = secret.sign(&id, ts, &body);
                prop_assert_eq!(v.verify(headers(&id, &stamp, &right), &body, ts), Ok(()));

                // Another body, id, timestamp or secret: the signature no longer fits.
                if other_body != body {
                    prop_assert_eq!(
                        v.verify(headers(&id, &stamp, &right), &other_body, ts),
                        Err(VerifyError::NoMatchingSignature)
                    );
                }
                let other_id = format!("{id}x");
                prop_assert_eq!(
                    v.verify(headers(&other_id, &stamp, &right), &body, ts),
                    Err(VerifyError::NoMatchingSignature)
                );
                let later = (ts + 1).to_string();
                prop_assert_eq!(
                    v.verify(headers(&id, &later, &right), &body, ts),
                    Err(VerifyError::NoMatchingSignature)
                );
                let other_secret = Secret::from_bytes(other_secret);
                if other_secret != secret {
                    let wrong = other_secret.sign(&id, ts, &body);
                    prop_assert_eq!(
                        v.verify(headers(&id, &stamp, &wrong), &body, ts),
                        Err(VerifyError::NoMatchingSignature)
                    );
                }

                // One flipped bit anywhere in the tag.
                let mut tag = STANDARD.decode(&right[3..]).unwrap();
                let (at, bits) = flip;
                let at = at % tag.len();
                tag[at] ^= bits.max(1);
                let tampered = format!("v1,{}", STANDARD.encode(&tag));
                prop_assert_eq!(
                    v.verify(headers(&id, &stamp, &tampered), &body, ts),
                    Err(VerifyError::NoMatchingSignature)
                );
                // The right tag under another version label is not a v1 signature.
                let relabelled = format!("v2,{}", &right[3..]);
                prop_assert_eq!(
                    v.verify(headers(&id, &stamp, &relabelled), &body, ts),
                    Err(VerifyError::NoMatchingSignature)
                );
            }
        }
    }

    #[test]
    fn missing_headers_and_bad_secrets_are_named() {
        let v = Verifier::new(Secret::from_bytes(vec![1; 32]));
        assert_eq!(
            v.verify(|_| None, b"{}", 0),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(Secret::parse("whsec_!!!"), Err(VerifyError::BadSecret));
    }
}

//! The dashboard's session cookie: who is signed in, proven without server-side storage.
//!
//! The cookie carries the account, the id of the API key it was opened with, an expiry and a
//! random nonce, and an HMAC-SHA256 over them under a key derived from the master key
//! (`AppState::dashboard_key`), so it cannot be forged or edited, and every node sharing the
//! master key accepts it. The API key itself is never in the cookie or the page. Each request
//! checks that the key is still live, so revoking the key ends its sessions at once.
//!
//! An operator session is the same cookie of another kind whose MAC also covers the admin
//! token's digest: changing `REELAY_ADMIN_TOKEN` ends every operator session.
//!
//! The CSRF token of a session is an HMAC of its nonce under the same key: one per session,
//! nothing to store, compared in constant time.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use rand::RngCore;
use reelay_core::{AccountId, KeyId};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::{AdminAccess, AppState};

/// The account session's cookie. Not `__Host-`: that prefix needs `Secure`, which a plain-HTTP
/// `dev` server cannot set.
pub const COOKIE: &str = "reelay_session";
/// The operator session's cookie, apart so that one browser can hold both.
pub const OPERATOR_COOKIE: &str = "reelay_operator";
/// How long a sign-in lasts.
pub const LIFETIME: time::Duration = time::Duration::hours(12);
/// A cookie longer than this is not ours; it is dropped unread.
const MAX_COOKIE: usize = 256;

const VERSION: &str = "v1";
const KIND_ACCOUNT: u8 = 1;
const KIND_OPERATOR: u8 = 2;
/// kind, account, key, expiry, nonce.
const PAYLOAD_BYTES: usize = 1 + 16 + 16 + 8 + 16;

/// What a valid cookie says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claims {
    kind: u8,
    account: uuid::Uuid,
    key: uuid::Uuid,
    expires: i64,
    nonce: [u8; 16],
}

impl Claims {
    fn encode(&self) -> [u8; PAYLOAD_BYTES] {
        let mut out = [0u8; PAYLOAD_BYTES];
        out[0] = self.kind;
        out[1..17].copy_from_slice(self.account.as_bytes());
        out[17..33].copy_from_slice(self.key.as_bytes());
        out[33..41].copy_from_slice(&self.expires.to_be_bytes());
        out[41..57].copy_from_slice(&self.nonce);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != PAYLOAD_BYTES {
            return None;
        }
        Some(Self {
            kind: bytes[0],
            account: uuid::Uuid::from_slice(&bytes[1..17]).ok()?,
            key: uuid::Uuid::from_slice(&bytes[17..33]).ok()?,
            expires: i64::from_be_bytes(bytes[33..41].try_into().ok()?),
            nonce: bytes[41..57].try_into().ok()?,
        })
    }

    fn fresh(kind: u8, account: uuid::Uuid, key: uuid::Uuid, now: OffsetDateTime) -> Self {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        Self {
            kind,
            account,
            key,
            expires: (now + LIFETIME).unix_timestamp(),
            nonce,
        }
    }
}

/// What binds an operator session to the admin token in force: its digest, or nothing when
/// the operator routes are open (`dev` on loopback).
fn operator_binding(admin: &AdminAccess) -> Option<[u8; 32]> {
    match admin {
        AdminAccess::Token(digest) => Some(*digest),
        AdminAccess::Open => Some([0; 32]),
        AdminAccess::Closed => None,
    }
}

fn mac(key: &[u8; 32], purpose: &[u8], payload: &[u8], binding: &[u8]) -> hmac::Hmac<Sha256> {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(b"reelay dashboard ");
    mac.update(purpose);
    mac.update(b"\0");
    mac.update(payload);
    mac.update(binding);
    mac
}

fn seal(key: &[u8; 32], claims: &Claims, binding: &[u8]) -> String {
    let payload = claims.encode();
    let tag = mac(key, b"session", &payload, binding)
        .finalize()
        .into_bytes();
    format!(
        "{VERSION}.{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// The claims of a cookie value whose MAC verifies (constant time) and which has not expired.
fn open(key: &[u8; 32], value: &str, binding: &[u8], now: OffsetDateTime) -> Option<Claims> {
    if value.len() > MAX_COOKIE {
        return None;
    }
    let mut parts = value.split('.');
    let (Some(VERSION), Some(payload), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    mac(key, b"session", &payload, binding)
        .verify_slice(&tag)
        .ok()?;
    let claims = Claims::decode(&payload)?;
    (claims.expires > now.unix_timestamp()).then_some(claims)
}

fn csrf_token(key: &[u8; 32], claims: &Claims) -> String {
    let tag = mac(key, b"csrf", &claims.encode(), &[])
        .finalize()
        .into_bytes();
    URL_SAFE_NO_PAD.encode(tag)
}

fn csrf_matches(key: &[u8; 32], claims: &Claims, presented: Option<&str>) -> bool {
    let expected = csrf_token(key, claims);
    // Both sides have a fixed, public length; the comparison leaks nothing else.
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes())))
}

/// The value of the cookie `name` among the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim())
}

/// Whether the browser reached us over HTTPS (directly or through a proxy that says so), to
/// mark the cookie `Secure`.
fn is_https(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    forwarded_proto || forwarded
}

fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if is_https(headers) { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path=/dashboard; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    );
    HeaderValue::from_str(&text).expect("cookie values are base64 and ASCII")
}

/// The `Set-Cookie` that opens an account session for `key` of `account`.
pub fn open_account(
    state: &AppState,
    request_headers: &HeaderMap,
    account: AccountId,
    key: KeyId,
) -> HeaderValue {
    let claims = Claims::fresh(KIND_ACCOUNT, account.0, key.0, state.store.now());
    let value = seal(&state.dashboard_key, &claims, &[]);
    set_cookie(request_headers, COOKIE, &value, LIFETIME.whole_seconds())
}

/// Whether `token` is the admin token, compared as fixed-length digests in constant time.
pub fn admin_token_ok(admin: &AdminAccess, token: &str) -> bool {
    use sha2::Digest;
    match admin {
        AdminAccess::Token(expected) => {
            let presented = Sha256::digest(token.trim().as_bytes());
            bool::from(presented.as_slice().ct_eq(expected))
        }
        AdminAccess::Open => true,
        AdminAccess::Closed => false,
    }
}

/// The `Set-Cookie` that opens an operator session, or `None` when operator routes are off.
pub fn open_operator(state: &AppState, request_headers: &HeaderMap) -> Option<HeaderValue> {
    let binding = operator_binding(&state.admin)?;
    let claims = Claims::fresh(
        KIND_OPERATOR,
        uuid::Uuid::nil(),
        uuid::Uuid::nil(),
        state.store.now(),
    );
    let value = seal(&state.dashboard_key, &claims, &binding);
    Some(set_cookie(
        request_headers,
        OPERATOR_COOKIE,
        &value,
        LIFETIME.whole_seconds(),
    ))
}

/// The `Set-Cookie` that ends the account session in this browser.
pub fn clear(request_headers: &HeaderMap) -> HeaderValue {
    set_cookie(request_headers, COOKIE, "", 0)
}

/// The `Set-Cookie` that ends the operator session in this browser.
pub fn clear_operator(request_headers: &HeaderMap) -> HeaderValue {
    set_cookie(request_headers, OPERATOR_COOKIE, "", 0)
}

/// A signed-in account, its key checked live on this request.
pub struct Session {
    pub account: AccountId,
    claims: Claims,
    key: [u8; 32],
}

impl Session {
    /// The token every form of this session carries.
    pub fn csrf(&self) -> String {
        csrf_token(&self.key, &self.claims)
    }

    /// Whether a form's token is this session's.
    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        csrf_matches(&self.key, &self.claims, presented)
    }
}

/// Sends the browser to a sign-in page, dropping a cookie that no longer works.
pub struct SignInFirst {
    to: &'static str,
    clear: Option<HeaderValue>,
}

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        let mut response = Redirect::to(self.to).into_response();
        if let Some(clear) = self.clear {
            response.headers_mut().insert(header::SET_COOKIE, clear);
        }
        response
    }
}

/// Any failure to load the key list is treated as "not signed in" for this request; it is
/// logged, and the next request tries again.
async fn key_is_live(state: &AppState, account: AccountId, key: KeyId) -> bool {
    match state.store.list_keys(Some(account)).await {
        Ok(keys) => keys
            .iter()
            .any(|k| k.id == key && k.account_id == account && k.revoked_at.is_none()),
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: checking a session's key failed");
            false
        }
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = SignInFirst;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, SignInFirst> {
        let to = "/dashboard/sign-in";
        let Some(value) = cookie_value(&parts.headers, COOKIE) else {
            return Err(SignInFirst { to, clear: None });
        };
        let rejected = || SignInFirst {
            to,
            clear: Some(clear(&parts.headers)),
        };
        let claims = open(&state.dashboard_key, value, &[], state.store.now())
            .filter(|c| c.kind == KIND_ACCOUNT)
            .ok_or_else(rejected)?;
        let account = AccountId(claims.account);
        if !key_is_live(state, account, KeyId(claims.key)).await {
            return Err(rejected());
        }
        Ok(Self {
            account,
            claims,
            key: state.dashboard_key,
        })
    }
}

/// A signed-in operator (or anyone, on a `dev` server whose operator routes are open).
pub struct Operator {
    /// `None` on an open `dev` server, where there is no session to protect forms with and
    /// no sign-out.
    claims: Option<Claims>,
    key: [u8; 32],
}

impl Operator {
    pub fn csrf(&self) -> Option<String> {
        self.claims.as_ref().map(|c| csrf_token(&self.key, c))
    }

    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        match &self.claims {
            Some(c) => csrf_matches(&self.key, c, presented),
            None => true,
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = SignInFirst;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, SignInFirst> {
        let to = "/dashboard/operator/sign-in";
        let key = state.dashboard_key;
        let Some(binding) = operator_binding(&state.admin) else {
            return Err(SignInFirst { to, clear: None });
        };
        let from_cookie = cookie_value(&parts.headers, OPERATOR_COOKIE)
            .and_then(|v| open(&key, v, &binding, state.store.now()))
            .filter(|c| c.kind == KIND_OPERATOR);
        match (from_cookie, &state.admin) {
            (Some(claims), _) => Ok(Self {
                claims: Some(claims),
                key,
            }),
            (None, AdminAccess::Open) => Ok(Self { claims: None, key }),
            (None, _) => Err(SignInFirst { to, clear: None }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn claims(now: OffsetDateTime) -> Claims {
        Claims::fresh(
            KIND_ACCOUNT,
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            now,
        )
    }

    #[test]
    fn a_sealed_cookie_opens_and_an_edited_one_does_not() {
        let now = OffsetDateTime::now_utc();
        let c = claims(now);
        let value = seal(&KEY, &c, &[]);
        assert_eq!(open(&KEY, &value, &[], now), Some(c.clone()));
        assert_eq!(open(&[8; 32], &value, &[], now), None, "another key");
        assert_eq!(open(&KEY, &value, b"bound", now), None, "another binding");
        let mut other = c.clone();
        other.account = uuid::Uuid::new_v4();
        let forged = format!(
            "{VERSION}.{}.{}",
            URL_SAFE_NO_PAD.encode(other.encode()),
            value.rsplit('.').next().unwrap()
        );
        assert_eq!(open(&KEY, &forged, &[], now), None, "edited payload");
        for junk in ["", "v1", "v1..", "v1.a.b.c", "v2.x.y", &"a".repeat(10_000)] {
            assert_eq!(open(&KEY, junk, &[], now), None, "{junk:?}");
        }
    }

    #[test]
    fn a_cookie_expires() {
        let now = OffsetDateTime::now_utc();
        let value = seal(&KEY, &claims(now), &[]);
        assert!(open(&KEY, &value, &[], now + LIFETIME - time::Duration::SECOND).is_some());
        assert!(open(&KEY, &value, &[], now + LIFETIME).is_none());
    }

    #[test]
    fn the_csrf_token_is_the_sessions_own() {
        let now = OffsetDateTime::now_utc();
        let (a, b) = (claims(now), claims(now));
        let token = csrf_token(&KEY, &a);
        assert!(csrf_matches(&KEY, &a, Some(&token)));
        assert!(!csrf_matches(&KEY, &b, Some(&token)));
        assert!(!csrf_matches(&KEY, &a, None));
        assert!(!csrf_matches(&KEY, &a, Some("")));
        assert!(!csrf_matches(&KEY, &a, Some(&token[1..])));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; reelay_session=v1.x.y"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("v1.x.y"));
        assert_eq!(cookie_value(&h, OPERATOR_COOKIE), None);
        h.clear();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("xreelay_session=1"),
        );
        assert_eq!(cookie_value(&h, COOKIE), None);
    }
}

//! The dashboard's POST bodies: small URL-encoded forms, bounded in size, fields and time, and
//! refused when the browser says the request came from another site.
//!
//! The origin check is a second fence beside the per-session CSRF token (and the SameSite
//! cookie): it also covers the sign-in forms, which have no session yet.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::layout;
use crate::AppState;

/// Far above any dashboard form (an API key, a token and a few ids).
const LIMIT: usize = 8 * 1024;
/// Fields kept from one form; the rest are ignored.
const MAX_FIELDS: usize = 16;

/// A posted form's fields; the last of a repeated name wins.
pub struct Form(HashMap<String, String>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Whether the browser says this request came from this site. A request with neither
/// `Sec-Fetch-Site` nor `Origin` (not a browser, or an old one) is left to the CSRF token.
pub fn same_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

fn refuse(status: StatusCode, message: &str) -> Response {
    layout::error_page(status, message)
}

impl FromRequest<AppState> for Form {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        if !same_site(request.headers()) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "This form was sent from another site, so it was refused.",
            ));
        }
        let timeout = state.body_read_timeout.max(Duration::from_secs(1));
        let read = axum::body::to_bytes(request.into_body(), LIMIT);
        let bytes = match tokio::time::timeout(timeout, read).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(_)) => {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form was too large or could not be read.",
                ));
            }
            Err(_) => {
                return Err(refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    "The form did not arrive in time; send it again.",
                ));
            }
        };
        let fields = form_urlencoded::parse(&bytes)
            .take(MAX_FIELDS)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok(Self(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn another_site_is_refused() {
        assert!(same_site(&headers(&[])));
        assert!(same_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_site(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(same_site(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(!same_site(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(!same_site(&headers(&[("origin", "null"), ("host", "a")])));
    }
}

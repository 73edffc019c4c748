//! Request bodies, bounded before they are read: the route's limit is checked against
//! `Content-Length` first (a 413 at once, nothing read) and again while the body streams in, the
//! body must arrive within the read timeout, and it must be JSON by its media type.
//!
//! Each route names its limit in its signature (`JsonBody<SMALL_BODY>`), so no route can take
//! more than it declares and the limit sits next to the handler that relies on it.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::{ApiError, AppState};

/// The limit of the small JSON routes: far above any valid body, far below harm.
pub const SMALL_BODY: usize = 64 * 1024;

/// A request body of at most `LIMIT` bytes that says it is JSON (or says nothing); empty when
/// the client sent none.
pub struct JsonBody<const LIMIT: usize>(pub Bytes);

impl<const LIMIT: usize> FromRequest<AppState> for JsonBody<LIMIT> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let headers = request.headers();
        if let Some(content_type) = headers.get(header::CONTENT_TYPE)
            && !is_json(content_type.to_str().unwrap_or_default())
        {
            return Err(ApiError::invalid(
                "body",
                "send JSON with `Content-Type: application/json` \
                 (with curl: -H \"Content-Type: application/json\")",
            ));
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > LIMIT as u64) {
            return Err(too_large(LIMIT));
        }
        let body = Limited::new(request.into_body(), LIMIT);
        match tokio::time::timeout(state.body_read_timeout, body.collect()).await {
            Ok(Ok(collected)) => Ok(Self(collected.to_bytes())),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(LIMIT)),
            Ok(Err(e)) => Err(ApiError::invalid(
                "body",
                format!("could not read the body: {e}"),
            )),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                format!(
                    "the body did not arrive within {} s; send it at once",
                    state.body_read_timeout.as_secs()
                ),
            )),
        }
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("the request body exceeds this route's limit of {limit} bytes"),
    )
}

/// `application/json`, in any case, with or without parameters such as `charset`.
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn only_the_json_media_type_is_json() {
        for yes in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
        ] {
            assert!(is_json(yes), "{yes}");
        }
        for no in [
            "application/jsonx",
            "application/json-patch+json",
            "text/json",
            "application/x-www-form-urlencoded",
            "",
        ] {
            assert!(!is_json(no), "{no}");
        }
    }
}

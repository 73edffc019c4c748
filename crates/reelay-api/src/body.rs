//! Request bodies, bounded before they are read: the route's limit is checked against
//! `Content-Length` first (a 413 at once, nothing read) and again while the body streams in, the
//! body must arrive within the read timeout, and it must be JSON by its media type.
//!
//! Each route names its limit in its signature (`JsonBody<SMALL_BODY>`), so no route can take
//! more than it declares and the limit sits next to the handler that relies on it.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use reelay_core::images::MAX_IMAGE_BYTES;
use tokio::sync::OwnedSemaphorePermit;

use crate::{ApiError, AppState, ErrorCode};

/// The limit of the small JSON routes: far above any valid body, far below harm.
pub const SMALL_BODY: usize = 64 * 1024;

/// A request body of at most `LIMIT` bytes that says it is JSON (or says nothing); empty when
/// the client sent none.
pub struct JsonBody<const LIMIT: usize>(pub Bytes);

impl<const LIMIT: usize> FromRequest<AppState> for JsonBody<LIMIT> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        check_json(&request)?;
        if declared_length(&request).is_some_and(|n| n > LIMIT as u64) {
            return Err(too_large(LIMIT));
        }
        read(request, state, LIMIT).await.map(Self)
    }
}

/// The create route's limit: three reference images of [`MAX_IMAGE_BYTES`] in base64, and
/// room for the other fields.
pub const CREATE_BODY: usize = 3 * MAX_IMAGE_BYTES.div_ceil(3) * 4 + SMALL_BODY;

/// The create route's body. One over [`SMALL_BODY`] (images) is read only with one of the
/// server's few large-body permits (`REELAY_HTTP_MAX_LARGE_BODIES`), held until the request is
/// done, so the memory all image requests take together is bounded, not just each one's.
pub struct CreateBody {
    pub bytes: Bytes,
    permit: Option<OwnedSemaphorePermit>,
}

impl CreateBody {
    /// Whether this body took a large-body permit.
    pub fn is_large(&self) -> bool {
        self.permit.is_some()
    }
}

impl FromRequest<AppState> for CreateBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        check_json(&request)?;
        let declared = declared_length(&request);
        if declared.is_some_and(|n| n > CREATE_BODY as u64) {
            return Err(too_large(CREATE_BODY));
        }
        // A large body must say how large: sent chunked, it is held to the small limit, so a
        // body of unknown size cannot take a large-body permit and fill it.
        let Some(declared) = declared else {
            return match read(request, state, SMALL_BODY).await {
                Err(e) if e.detail() == "PAYLOAD_TOO_LARGE" => Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "a body over {SMALL_BODY} bytes must be sent with a Content-Length \
                         (not chunked); at most {CREATE_BODY} bytes"
                    ),
                )),
                other => other.map(|bytes| Self {
                    bytes,
                    permit: None,
                }),
            };
        };
        let permit = if declared <= SMALL_BODY as u64 {
            None
        } else {
            let waiting = state.large_bodies.clone().acquire_owned();
            match tokio::time::timeout(state.body_read_timeout, waiting).await {
                Ok(Ok(permit)) => Some(permit),
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::Overloaded,
                        "too many requests with images are being handled at once; retry in a \
                         few seconds",
                    )
                    .with_retry_after(5));
                }
            }
        };
        let bytes = read(request, state, CREATE_BODY).await?;
        Ok(Self { bytes, permit })
    }
}

/// Refuses a body that says it is something other than JSON.
fn check_json(request: &Request) -> Result<(), ApiError> {
    if let Some(content_type) = request.headers().get(header::CONTENT_TYPE)
        && !is_json(content_type.to_str().unwrap_or_default())
    {
        return Err(ApiError::invalid(
            "body",
            "send JSON with `Content-Type: application/json` \
             (with curl: -H \"Content-Type: application/json\")",
        ));
    }
    Ok(())
}

fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads the body, at most `limit` bytes, within the read timeout, into one buffer sized
/// from `Content-Length` (collecting chunks and joining them would hold the body twice).
async fn read(request: Request, state: &AppState, limit: usize) -> Result<Bytes, ApiError> {
    let capacity = declared_length(&request).map_or(0, |n| n.min(limit as u64) as usize);
    let mut body = Limited::new(request.into_body(), limit);
    let collect = async {
        let mut buffer = Vec::with_capacity(capacity);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                buffer.extend_from_slice(&data);
            }
        }
        Ok::<_, axum::BoxError>(Bytes::from(buffer))
    };
    match tokio::time::timeout(state.body_read_timeout, collect).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(limit)),
        Ok(Err(e)) => Err(ApiError::invalid(
            "body",
            format!("could not read the body: {e}"),
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the body did not arrive within {} s; send it at once",
                state.body_read_timeout.as_secs()
            ),
        )),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
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

//! Every error the API answers, as `{"detail": CODE, "message": ..., "errors"?: [...]}`.
//!
//! The codes are one enum, [`ErrorCode`], so that the OpenAPI document, `docs/errors.md` and
//! the handlers cannot disagree about which codes exist or which status each one travels with.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reelay_core::request::FieldError;
use reelay_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// The most field errors one answer lists; the rest are counted in its message.
pub const MAX_FIELD_ERRORS: usize = 10;

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = ($status:ident, $name:literal),)*) => {
        /// The machine-readable `detail` of an error answer; each code has one HTTP status.
        // `rename_all` rather than each `$name`: utoipa does not read a rename passed through
        // a macro; the test `codes_serialize_as_their_names` keeps the two spellings equal.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ErrorCode {
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }

            /// When the code is answered, for the OpenAPI document.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => concat!($($doc),*).trim_ascii(),)*
                }
            }

            pub const fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)*
                }
            }
        }
    };
}

error_codes! {
    /// The id in the path is not a UUID.
    InvalidTaskId = (BAD_REQUEST, "INVALID_TASK_ID"),
    /// A missing, malformed, unknown or revoked API key (or worker or admin token).
    Unauthorized = (UNAUTHORIZED, "UNAUTHORIZED"),
    /// The balance does not cover the price; nothing was created.
    InsufficientCredits = (PAYMENT_REQUIRED, "INSUFFICIENT_CREDITS"),
    /// Operator routes while no admin token is configured.
    Forbidden = (FORBIDDEN, "FORBIDDEN"),
    /// No such generation for this account.
    TaskNotFound = (NOT_FOUND, "TASK_NOT_FOUND"),
    /// No such route, video or job input.
    NotFound = (NOT_FOUND, "NOT_FOUND"),
    /// The route does not accept this method.
    MethodNotAllowed = (METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
    /// The body did not arrive in time.
    RequestTimeout = (REQUEST_TIMEOUT, "REQUEST_TIMEOUT"),
    /// The `Idempotency-Key` was used with a different request.
    IdempotencyConflict = (CONFLICT, "IDEMPOTENCY_CONFLICT"),
    /// The generation's state does not allow this (cancel a finished one, redeliver too soon).
    Conflict = (CONFLICT, "CONFLICT"),
    /// A worker's lease no longer holds its job.
    LeaseLost = (CONFLICT, "LEASE_LOST"),
    /// The video was deleted at the end of its retention.
    Gone = (GONE, "GONE"),
    /// The body is over the route's limit.
    PayloadTooLarge = (PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
    /// A bad or unknown field, malformed JSON, a bad query parameter or header; `errors` names
    /// each field.
    InvalidParameters = (UNPROCESSABLE_ENTITY, "INVALID_PARAMETERS"),
    /// An image that is not base64, not an image, or damaged.
    InvalidImage = (UNPROCESSABLE_ENTITY, "INVALID_IMAGE"),
    /// An image over 20 MiB or 4096 × 4096 pixels (8192 on a side).
    ImageTooLarge = (UNPROCESSABLE_ENTITY, "IMAGE_TOO_LARGE"),
    /// An image that is not JPEG, PNG or WEBP.
    UnsupportedImageFormat = (UNPROCESSABLE_ENTITY, "UNSUPPORTED_IMAGE_FORMAT"),
    /// A worker's upload is not an MP4.
    InvalidVideo = (UNPROCESSABLE_ENTITY, "INVALID_VIDEO"),
    /// Too many creates, or a second signing-secret rotation too soon; see `Retry-After`.
    RateLimited = (TOO_MANY_REQUESTS, "RATE_LIMITED"),
    /// The account (or server process) has the most event streams open.
    TooManyStreams = (TOO_MANY_REQUESTS, "TOO_MANY_STREAMS"),
    /// The server failed; it was logged.
    InternalError = (INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
    /// The database cannot be reached.
    Maintenance = (SERVICE_UNAVAILABLE, "MAINTENANCE"),
    /// The server is at its connection, request or large-body limit.
    Overloaded = (SERVICE_UNAVAILABLE, "OVERLOADED"),
    /// Too many workers are long-polling for jobs.
    Busy = (SERVICE_UNAVAILABLE, "BUSY"),
}

impl ErrorCode {
    /// The code of a field error from validation: an image's own code, else
    /// `INVALID_PARAMETERS`.
    fn of_field(error: &FieldError) -> Option<Self> {
        match error.code? {
            "INVALID_IMAGE" => Some(Self::InvalidImage),
            "IMAGE_TOO_LARGE" => Some(Self::ImageTooLarge),
            "UNSUPPORTED_IMAGE_FORMAT" => Some(Self::UnsupportedImageFormat),
            other => {
                tracing::error!(
                    code = other,
                    "a field error carries a code the API does not know"
                );
                None
            }
        }
    }
}

/// An error answer. Its schema is the one every error response shares in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ApiError {
    #[serde(skip)]
    #[schema(ignore)]
    status: StatusCode,
    detail: ErrorCode,
    /// What went wrong and how to fix it, for people; match on `detail`, not on this.
    message: String,
    /// One entry per bad field (422 only), at most ten.
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<FieldErrorBody>>,
    /// Seconds, sent as `Retry-After`.
    #[serde(skip)]
    #[schema(ignore)]
    retry_after: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = FieldError)]
struct FieldErrorBody {
    /// The field to fix, like `prompt` or `reference_images[1]`.
    field: String,
    message: String,
}

impl ApiError {
    pub fn new(detail: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: detail.status(),
            detail,
            message: message.into(),
            errors: None,
            retry_after: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn task_not_found() -> Self {
        Self::new(
            ErrorCode::TaskNotFound,
            "no generation with this id exists for your account",
        )
    }

    /// The same error under another machine-readable code (a 422 keeps its `errors`).
    pub fn with_detail(mut self, detail: ErrorCode) -> Self {
        self.detail = detail;
        self
    }

    /// The machine-readable code.
    pub fn detail(&self) -> &'static str {
        self.detail.as_str()
    }

    /// The same error, telling the client to retry after `secs` seconds.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// A 422 naming one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::invalid_fields(vec![FieldError::new(field, message)])
    }

    /// A 422 listing the bad fields, at most [`MAX_FIELD_ERRORS`] of them. One field's
    /// message is the summary; several are named in it, each explained once in `errors`.
    /// The `detail` is the first precise code among the errors (an image's), else
    /// `INVALID_PARAMETERS`.
    pub fn invalid_fields(mut errors: Vec<FieldError>) -> Self {
        let total = errors.len();
        let detail = errors
            .iter()
            .find_map(ErrorCode::of_field)
            .unwrap_or(ErrorCode::InvalidParameters);
        errors.truncate(MAX_FIELD_ERRORS);
        let message = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            listed => {
                let names: Vec<&str> = listed.iter().map(|e| e.field.as_str()).collect();
                let more = match total - listed.len() {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                format!(
                    "{total} fields are invalid ({}{more}); `errors` says what to fix in each",
                    names.join(", ")
                )
            }
        };
        Self {
            status: detail.status(),
            detail,
            message,
            errors: Some(
                errors
                    .into_iter()
                    .map(|e| FieldErrorBody {
                        field: e.field,
                        message: e.message,
                    })
                    .collect(),
            ),
            retry_after: None,
        }
    }

    /// A 429 telling the client when to come back (its `Retry-After`, whole seconds).
    pub fn rate_limited(retry_after: std::time::Duration, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorCode::RateLimited, message);
        e.retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
        e
    }

    pub fn internal() -> Self {
        Self::new(
            ErrorCode::InternalError,
            "the server failed to handle the request; it was logged, try again",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InsufficientCredits => Self::new(
                ErrorCode::InsufficientCredits,
                "your balance does not cover the price of this generation; add credits and retry",
            ),
            StoreError::IdempotencyConflict => Self::new(
                ErrorCode::IdempotencyConflict,
                "this Idempotency-Key was already used with a different request in the last 24 \
                 hours; use a new key for a new request",
            ),
            StoreError::NotFound => Self::task_not_found(),
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "storage unavailable");
                Self::new(
                    ErrorCode::Maintenance,
                    "the database cannot be reached for a moment; retry shortly (send an Idempotency-Key so that a retried create is made once)",
                )
                .with_retry_after(2)
            }
            StoreError::Backend(cause) => {
                tracing::error!(%cause, "storage failure");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let retry_after = self.retry_after;
        let mut response = (status, Json(self)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route; see /openapi.json for the API",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not accept this method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}

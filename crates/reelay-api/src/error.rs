//! Every error the API answers, as `{"detail": CODE, "message": ..., "errors"?: [...]}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reelay_core::request::FieldError;
use reelay_store::StoreError;
use serde::Serialize;

/// The most field errors one answer lists; the rest are counted in its message.
pub const MAX_FIELD_ERRORS: usize = 10;

#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    detail: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<FieldErrorBody>>,
    /// Seconds, sent as `Retry-After`.
    #[serde(skip)]
    retry_after: Option<u64>,
}

#[derive(Debug, Serialize)]
struct FieldErrorBody {
    field: String,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail,
            message: message.into(),
            errors: None,
            retry_after: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    pub fn task_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "TASK_NOT_FOUND",
            "no generation with this id exists for your account",
        )
    }

    /// The same error under another machine-readable code (a 422 keeps its `errors`).
    pub fn with_detail(mut self, detail: &'static str) -> Self {
        self.detail = detail;
        self
    }

    /// The machine-readable code.
    pub fn detail(&self) -> &'static str {
        self.detail
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
            .find_map(|e| e.code)
            .unwrap_or("INVALID_PARAMETERS");
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
            status: StatusCode::UNPROCESSABLE_ENTITY,
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
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message);
        e.retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
        e
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "the server failed to handle the request; it was logged, try again",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InsufficientCredits => Self::new(
                StatusCode::PAYMENT_REQUIRED,
                "INSUFFICIENT_CREDITS",
                "your balance does not cover the price of this generation; add credits and retry",
            ),
            StoreError::IdempotencyConflict => Self::new(
                StatusCode::CONFLICT,
                "IDEMPOTENCY_CONFLICT",
                "this Idempotency-Key was already used with a different request in the last 24 \
                 hours; use a new key for a new request",
            ),
            StoreError::NotFound => Self::task_not_found(),
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "storage unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "MAINTENANCE",
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
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such route; see /openapi.json for the API",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this route does not accept this method",
    )
}

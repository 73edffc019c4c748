//! `/v1/webhooks/*`: the account's signing secret, egress addresses, bulk redelivery.

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use reelay_delivery::RotateError;
use reelay_store::OutboxListener;
use reelay_webhooks::timestamp;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::body::{JsonBody, SMALL_BODY};
use crate::openapi::error_set;
use crate::{ApiError, AppState};

error_set!(SecretErrors = [Unauthorized, Maintenance]);
error_set!(RotateErrors = [Unauthorized, RateLimited, Maintenance]);
error_set!(
    RedeliverFailedErrors = [
        Unauthorized,
        InvalidParameters,
        PayloadTooLarge,
        RequestTimeout,
        Maintenance,
    ]
);

#[derive(Serialize, ToSchema)]
#[schema(as = SigningSecret)]
pub struct SecretView {
    /// Verify webhooks with this (`whsec_…`), e.g. with any Standard Webhooks library.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    secret: String,
    created_at: String,
    /// After a rotation, the old secret also signs until then.
    previous_secret_expires_at: Option<String>,
}

impl From<reelay_delivery::AccountSecrets> for SecretView {
    fn from(s: reelay_delivery::AccountSecrets) -> Self {
        Self {
            secret: s.current.to_string(),
            created_at: timestamp::format(s.current_since),
            previous_secret_expires_at: s.previous_expires_at.map(timestamp::format),
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/secret",
    tag = "webhooks",
    summary = "The account's webhook signing secret",
    security(("api_key" = [])),
    responses((status = 200, description = "The current secret.",
        body = SecretView), SecretErrors),
)]
pub async fn secret(
    State(state): State<AppState>,
    Caller(account): Caller,
) -> Result<Json<SecretView>, ApiError> {
    Ok(Json(state.dispatcher.keyring().show(account).await?.into()))
}

/// Rotates the signing secret; within a minute of the previous rotation, a 429 whose
/// `Retry-After` says when it is allowed again.
#[utoipa::path(
    post,
    path = "/v1/webhooks/secret/rotate",
    tag = "webhooks",
    summary = "Make a new signing secret",
    description = "The previous secret keeps signing beside the new one for 24 h; within 60 s \
                   of the previous rotation, 429 `RATE_LIMITED`.",
    security(("api_key" = [])),
    responses((status = 200, description = "The new secret.",
        body = SecretView), RotateErrors),
)]
pub async fn rotate(
    State(state): State<AppState>,
    Caller(account): Caller,
) -> Result<Json<SecretView>, ApiError> {
    match state.dispatcher.keyring().rotate(account).await {
        Ok(secrets) => Ok(Json(secrets.into())),
        Err(e @ RotateError::TooSoon { retry_after }) => {
            Err(ApiError::rate_limited(retry_after, e.to_string()))
        }
        Err(RotateError::Store(e)) => Err(e.into()),
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = IpRanges)]
pub struct IpRangesView {
    /// CIDR blocks, like `203.0.113.7/32`; empty when none is pinned.
    ip_ranges: Vec<String>,
    message: &'static str,
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/ip-ranges",
    tag = "webhooks",
    summary = "The addresses webhooks are sent from",
    security(("api_key" = [])),
    responses((status = 200, description = "The egress addresses.",
        body = IpRangesView), SecretErrors),
)]
pub async fn ip_ranges(State(state): State<AppState>, _: Caller) -> Json<IpRangesView> {
    let ranges = state
        .egress_ips
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => format!("{v4}/32"),
            IpAddr::V6(v6) => format!("{v6}/128"),
        })
        .collect::<Vec<_>>();
    Json(IpRangesView {
        message: if ranges.is_empty() {
            "this server sends webhooks from its host's default address; none is pinned"
        } else {
            "webhooks are sent only from these addresses"
        },
        ip_ranges: ranges,
    })
}

#[derive(Serialize, ToSchema)]
#[schema(as = Redelivered)]
pub struct RedeliveredView {
    /// How many deliveries started a new round.
    redelivered: u64,
}

/// The bulk redelivery filter: generations that ended in `[since, until)`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RedeliverFilter {
    /// Required: a time like `2025-12-06T21:43:03.374000` (UTC) or RFC 3339.
    #[schema(required = true)]
    since: Option<String>,
    /// Now when absent.
    until: Option<String>,
}

/// Starts a new round for every failed delivery whose generation ended in `[since, until)`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/redeliver",
    tag = "webhooks",
    summary = "Redeliver every failed webhook of a time range",
    description = "A new round for every failed delivery whose generation ended in \
                   `[since, until)`.",
    security(("api_key" = [])),
    request_body(content = RedeliverFilter, content_type = "application/json",
        example = json!({"since": "2025-12-06T00:00:00.000000"})),
    responses((status = 200, description = "How many deliveries started again.",
        body = RedeliveredView), RedeliverFailedErrors),
)]
pub async fn redeliver_failed(
    State(state): State<AppState>,
    Caller(account): Caller,
    JsonBody(body): JsonBody<SMALL_BODY>,
) -> Result<Json<RedeliveredView>, ApiError> {
    let filter: RedeliverFilter = if body.is_empty() {
        RedeliverFilter {
            since: None,
            until: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid(
                "body",
                format!("must be a JSON object with since and until: {e}"),
            )
        })?
    };
    let now = state.store.now();
    let mut errors = Vec::new();
    let mut when = |field: &str, value: Option<&str>| match value {
        None => None,
        Some(text) => parse_time(text).or_else(|| {
            errors.push(field_error(
                field,
                "must be a time like 2025-12-06T21:43:03.374000 (UTC) or RFC 3339",
            ));
            None
        }),
    };
    let since = when("since", filter.since.as_deref());
    let until = when("until", filter.until.as_deref());
    if filter.since.is_none() {
        errors.push(field_error("since", "is required"));
    }
    let (Some(since), true) = (since, errors.is_empty()) else {
        return Err(ApiError::invalid_fields(errors));
    };
    let redelivered = state
        .store
        .redeliver_failed(account, since, until.unwrap_or(now), now)
        .await?;
    if redelivered > 0 {
        state.dispatcher.look();
    }
    Ok(Json(RedeliveredView { redelivered }))
}

fn field_error(field: &str, message: &str) -> reelay_core::request::FieldError {
    reelay_core::request::FieldError::new(field, message)
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    timestamp::parse(text).ok().or_else(|| {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
    })
}

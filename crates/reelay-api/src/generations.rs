//! `/v1/veo/generate` and `/v1/veo/generations`: create, read, list, cancel.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use reelay_core::request::parse_generate;
use reelay_core::{AspectRatio, Model};
use reelay_core::{GenerationId, GenerationStatus};
use reelay_store::{
    DeliveryState, DueRef, Event, Finished, Generation, OutboxListener, Redelivery, Stage,
    failure_details,
};
use reelay_webhooks::EventError;
use reelay_webhooks::timestamp;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::body::CreateBody;
use crate::openapi::error_set;
use crate::{ApiError, AppState, ErrorCode};

error_set!(
    CreateErrors = [
        Unauthorized,
        InsufficientCredits,
        IdempotencyConflict,
        RequestTimeout,
        PayloadTooLarge,
        InvalidParameters,
        InvalidImage,
        ImageTooLarge,
        UnsupportedImageFormat,
        RateLimited,
        Maintenance,
    ]
);
error_set!(ReadErrors = [InvalidTaskId, Unauthorized, TaskNotFound, Maintenance]);
error_set!(
    CancelErrors = [
        InvalidTaskId,
        Unauthorized,
        TaskNotFound,
        Conflict,
        Maintenance
    ]
);
error_set!(ListErrors = [Unauthorized, InvalidParameters, Maintenance]);

// Only describes the body for the document: the body itself is read in one pass by
// `reelay_core::request::parse_generate` (unknown fields refused, every bad field reported at
// once), so nothing deserializes into this type.
/// The body of a create. Unknown fields, a field sent twice and more than 32 keys are refused
/// (422); `null` counts as absent. One image mode per request: `bytes_image`, or `start_frame`
/// with `end_frame`, or `reference_images`.
#[derive(ToSchema)]
#[schema(
    as = GenerateRequest,
    example = json!({
        "prompt": "A cat playing with a ball in a sunny room",
        "callback_url": "https://example.com/webhooks/reelay",
        "model": "veo-3-fast",
        "aspect_ratio": "16:9",
        "seed": 319790131
    })
)]
#[allow(dead_code)]
struct GenerateRequestDoc {
    /// What to generate, 10–4000 characters.
    #[schema(min_length = 10, max_length = 4000)]
    prompt: String,
    /// Where the webhook goes when the generation ends: an absolute `https` URL to a public
    /// host, at most 2048 characters, no credentials (`http` and loopback only in `dev`).
    #[schema(max_length = 2048)]
    callback_url: Option<String>,
    /// `veo-3-fast` when absent.
    model: Option<Model>,
    /// RunBlob's older name for `model`; when both are given they must agree.
    model_type: Option<Model>,
    /// `16:9` when absent.
    aspect_ratio: Option<AspectRatio>,
    /// Random when absent; the same seed and inputs give the same video.
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    seed: Option<u64>,
    #[schema(min_length = 3, max_length = 14)]
    watermark_text: Option<String>,
    /// Image to video: one base64 JPEG, PNG or WEBP (or a `data:` URL), ≤ 20 MiB decoded.
    bytes_image: Option<String>,
    /// Frame to frame: with `end_frame`, base64 images.
    start_frame: Option<String>,
    end_frame: Option<String>,
    /// 1–3 base64 images; `veo-3-fast` only. One image mode per request.
    #[schema(min_items = 1, max_items = 3)]
    reference_images: Option<Vec<String>>,
    /// RunBlob's content filter: only `moderate` is accepted (every prompt is moderated).
    filter_text: Option<String>,
}

/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

#[utoipa::path(
    post,
    path = "/v1/veo/generate",
    tag = "generations",
    summary = "Create a generation",
    description = "Charges the price in the same transaction that creates the generation. With                    an `Idempotency-Key`, the same request within 24 h answers the first response                    and charges nothing more.",
    security(("api_key" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "1–255 printable characters; the same key with another body is a 409."),
    ),
    request_body(content = GenerateRequestDoc, content_type = "application/json"),
    responses(
        (status = 201, description = "Created and charged (or the first answer, for a repeated                                       Idempotency-Key).", body = CreatedView,
            example = json!({
                "generation_id": "ffd473d5-5bef-4e14-bf22-8d559be3c19f",
                "status": "pending",
                "seed": 319790131,
                "price": "0.2500"
            })),
        CreateErrors,
    ),
)]

pub async fn create(
    State(state): State<AppState>,
    Caller(account): Caller,
    headers: HeaderMap,
    body: CreateBody,
) -> Result<(StatusCode, Json<CreatedView>), ApiError> {
    if let Some(limiter) = &state.create_limiter {
        limiter.check(account)?;
    }
    let policy = state.destinations;
    let request = if body.is_large() {
        // Images are decoded to be checked: CPU work that must not hold up the runtime.
        let bytes = body.bytes.clone();
        tokio::task::spawn_blocking(move || parse_generate(&bytes, policy))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "checking a create request panicked");
                ApiError::internal()
            })?
    } else {
        parse_generate(&body.bytes, policy)
    }
    .map_err(ApiError::invalid_fields)?;
    let idempotency_key = idempotency_key(&headers)?;

    let created = state
        .engine
        .submit(account, request, idempotency_key)
        .await?;
    let g = created.generation;
    Ok((
        StatusCode::CREATED,
        Json(CreatedView {
            generation_id: g.id.to_string(),
            status: "pending",
            seed: g.spec.seed,
            price: g.price.to_string(),
        }),
    ))
}

/// The 201 body, in RunBlob's key order. A replay answers the same body as the first time.
#[derive(Serialize, ToSchema)]
#[schema(as = Created)]
pub struct CreatedView {
    #[schema(format = Uuid)]
    generation_id: String,
    /// Always `pending`.
    #[schema(value_type = GenerationStatus)]
    status: &'static str,
    seed: u32,
    /// Credits charged, four decimals.
    #[schema(example = "0.2500")]
    price: String,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |msg: &str| ApiError::invalid("Idempotency-Key", msg);
    let key = raw
        .to_str()
        .map_err(|_| bad("must be printable ASCII"))?
        .trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(bad("must be 1 to 255 characters long"));
    }
    Ok(Some(key.to_owned()))
}

/// Parses a path id; a non-UUID is a client error distinct from an unknown id.
pub(crate) fn generation_id(raw: &str) -> Result<GenerationId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidTaskId,
            format!(
                "{raw:?} is not a generation id; ids are UUIDs like \
                 ffd473d5-5bef-4e14-bf22-8d559be3c19f"
            ),
        )
    })
}

/// Loads a generation of the caller's; another account's answers exactly like an unknown one.
pub(crate) async fn owned(
    state: &AppState,
    caller: Caller,
    raw: &str,
) -> Result<Generation, ApiError> {
    let id = generation_id(raw)?;
    match state.store.generation(id).await? {
        Some(g) if g.account_id == caller.0 => Ok(g),
        _ => Err(ApiError::task_not_found()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/veo/generations/{id}",
    tag = "generations",
    summary = "Read a generation",
    security(("api_key" = [])),
    params(("id" = String, Path, format = Uuid, description = "The generation id")),
    responses(
        (status = 200, description = "The generation; another account's id answers 404 like an                                       unknown one.", body = GenerationView),
        ReadErrors,
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<GenerationView>, ApiError> {
    let g = owned(&state, caller, &id).await?;
    let position = state.store.queue_position(&g).await?;
    let event = state.store.event_for(g.id).await?;
    Ok(Json(GenerationView::new(&g, position, event.as_ref())))
}

#[utoipa::path(
    post,
    path = "/v1/veo/generations/{id}/cancel",
    tag = "generations",
    summary = "Cancel a pending or processing generation",
    description = "It fails with `CANCELLED`, is refunded, and its webhook is sent.",
    security(("api_key" = [])),
    params(("id" = String, Path, format = Uuid, description = "The generation id")),
    responses(
        (status = 200, description = "Cancelled: the generation as it now is.",
            body = GenerationView),
        CancelErrors,
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<GenerationView>, ApiError> {
    let g = owned(&state, caller, &id).await?;
    match state.engine.cancel(g.id).await? {
        Finished::Applied(g) => {
            let event = state.store.event_for(g.id).await?;
            Ok(Json(GenerationView::new(&g, 0, event.as_ref())))
        }
        Finished::Refused(g) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "the generation has already {}; only pending or processing ones can be cancelled",
                g.stage.status()
            ),
        )),
    }
}

#[utoipa::path(
    get,
    path = "/v1/veo/generations",
    tag = "generations",
    summary = "List the account's generations, newest first",
    security(("api_key" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "50 when absent"),
        ("offset" = Option<u64>, Query, description = "0 when absent"),
        ("status" = Option<GenerationStatus>, Query, description = "Only generations in this status"),
    ),
    responses(
        (status = 200, description = "One page; queue positions are left out (0).",
            body = ListView),
        ListErrors,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Caller(account): Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<ListView>, ApiError> {
    let mut errors = Vec::new();
    let mut field_error = |field: &str, message: String| {
        errors.push(reelay_core::request::FieldError::new(field, message))
    };
    let limit = match query.get("limit").map(|l| l.parse::<u32>()) {
        None => 50,
        Some(Ok(l @ 1..=100)) => l,
        Some(_) => {
            field_error("limit", "must be an integer from 1 to 100".into());
            0
        }
    };
    let offset = match query.get("offset").map(|o| o.parse::<u64>()) {
        None => 0,
        Some(Ok(o)) if o <= i64::MAX as u64 => o,
        Some(_) => {
            field_error("offset", "must be a non-negative integer".into());
            0
        }
    };
    let status = match query.get("status").map(|s| s.parse::<GenerationStatus>()) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => {
            field_error(
                "status",
                "must be one of pending, processing, completed, failed".into(),
            );
            None
        }
    };
    for key in query.keys() {
        if !["limit", "offset", "status"].contains(&key.as_str()) {
            field_error(
                key,
                "unknown query parameter; use limit, offset or status".into(),
            );
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    let page = state
        .store
        .list_generations(account, status, limit, offset)
        .await?;
    // Queue positions are left out of listings: they cost a count per row and change by the
    // second; the single-generation read has them.
    let mut items = Vec::with_capacity(page.items.len());
    for g in &page.items {
        let event = match g.stage.status().is_terminal() {
            true => state.store.event_for(g.id).await?,
            false => None,
        };
        items.push(GenerationView::new(g, 0, event.as_ref()));
    }
    Ok(Json(ListView {
        generations: items,
        limit,
        offset,
        total: page.total,
    }))
}

#[derive(Serialize, ToSchema)]
#[schema(as = GenerationList)]
pub struct ListView {
    generations: Vec<GenerationView>,
    limit: u32,
    offset: u64,
    total: u64,
}

/// Where the generation's webhook stands.
#[derive(Serialize, ToSchema)]
#[schema(as = WebhookStatus)]
struct WebhookView {
    /// `none` without a callback URL; `pending` until delivered or given up.
    #[schema(value_type = DeliveryState)]
    state: &'static str,
    attempts: u32,
    #[schema(example = "2025-12-06T21:44:06.512000")]
    last_attempt_at: Option<String>,
    last_status_code: Option<u16>,
    next_attempt_at: Option<String>,
    /// The `webhook-id` header's value, once the generation has ended.
    webhook_id: Option<String>,
    /// Why the last round gave up, when `state` is `failed`.
    failure_reason: Option<String>,
}

impl WebhookView {
    fn new(g: &Generation, event: Option<&Event>) -> Self {
        match event {
            Some(e) => Self {
                state: e.state.as_str(),
                attempts: e.total_attempts,
                last_attempt_at: e.last_attempt_at.map(timestamp::format),
                last_status_code: e.last_status_code,
                // While an attempt is in flight the stored time is its lease's end, not a
                // planned attempt.
                next_attempt_at: e
                    .next_attempt_at
                    .filter(|_| !e.in_flight)
                    .map(timestamp::format),
                webhook_id: Some(e.id.clone()),
                failure_reason: e.failure_reason.clone(),
            },
            // Not finished yet: a callback is owed once it is.
            None => Self {
                state: if g.spec.callback_url.is_some() {
                    DeliveryState::Pending.as_str()
                } else {
                    DeliveryState::None.as_str()
                },
                attempts: 0,
                last_attempt_at: None,
                last_status_code: None,
                next_attempt_at: None,
                webhook_id: None,
                failure_reason: None,
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = Deliveries)]
pub struct DeliveriesView {
    generation_id: String,
    webhook_id: Option<String>,
    callback_url: Option<String>,
    webhook: WebhookView,
    attempts: Vec<AttemptView>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Attempt)]
struct AttemptView {
    /// 1 for the first attempt; numbers go on across redeliveries.
    number: u32,
    started_at: String,
    duration_ms: u64,
    #[schema(value_type = reelay_core::retry::AttemptOutcome)]
    outcome: &'static str,
    status_code: Option<u16>,
    /// The first KiB of the receiver's answer.
    response_body: Option<String>,
    error: Option<String>,
}

/// Every webhook attempt for a generation, oldest first.
#[utoipa::path(
    get,
    path = "/v1/veo/generations/{id}/deliveries",
    tag = "webhooks",
    summary = "Every webhook attempt for a generation, oldest first",
    security(("api_key" = [])),
    params(("id" = String, Path, format = Uuid, description = "The generation id")),
    responses((status = 200, description = "The webhook's state and every attempt.",
        body = DeliveriesView), ReadErrors),
)]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeliveriesView>, ApiError> {
    let g = owned(&state, caller, &id).await?;
    let event = state.store.event_for(g.id).await?;
    let attempts = match &event {
        Some(e) => state.store.attempts(&e.id).await?,
        None => Vec::new(),
    };
    Ok(Json(DeliveriesView {
        generation_id: g.id.to_string(),
        webhook_id: event.as_ref().map(|e| e.id.clone()),
        callback_url: g.spec.callback_url.clone(),
        webhook: WebhookView::new(&g, event.as_ref()),
        attempts: attempts
            .into_iter()
            .map(|a| AttemptView {
                number: a.number,
                started_at: timestamp::format(a.started_at),
                duration_ms: a.duration_ms,
                outcome: a.outcome.as_str(),
                status_code: a.status_code,
                response_body: a.response_body,
                error: a.error,
            })
            .collect(),
    }))
}

/// Sends the generation's event again: a new round of attempts, same `webhook-id`.
#[utoipa::path(
    post,
    path = "/v1/veo/generations/{id}/webhook/redeliver",
    tag = "webhooks",
    summary = "Send a finished generation's webhook again",
    description = "A new round of attempts for the same event (same `webhook-id`). 409 while a \
                   round is under way, before the generation ended, or without a callback URL.",
    security(("api_key" = [])),
    params(("id" = String, Path, format = Uuid, description = "The generation id")),
    responses((status = 202, description = "A new round of attempts has started.",
        body = RedeliveryView), CancelErrors),
)]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RedeliveryView>), ApiError> {
    let g = owned(&state, caller, &id).await?;
    let conflict = |message: &str| ApiError::new(ErrorCode::Conflict, message);
    match state.store.redeliver(g.id, state.store.now()).await? {
        Redelivery::Started { webhook_id } => {
            state.dispatcher.due(DueRef::of(&g).into_iter().collect());
            Ok((
                StatusCode::ACCEPTED,
                Json(RedeliveryView {
                    generation_id: g.id.to_string(),
                    webhook_id,
                    state: DeliveryState::Pending.as_str(),
                }),
            ))
        }
        Redelivery::AlreadyPending => Err(conflict(
            "a delivery round is already under way; wait for it to end, then redeliver",
        )),
        Redelivery::NoCallback => Err(conflict(
            "the generation has no callback_url, so there is nothing to deliver",
        )),
        Redelivery::NotFinished => Err(conflict(
            "the generation has not finished; its webhook is sent when it does",
        )),
    }
}

/// A new round of attempts has started.
#[derive(Serialize, ToSchema)]
#[schema(as = Redelivery)]
pub struct RedeliveryView {
    #[schema(format = Uuid)]
    generation_id: String,
    webhook_id: String,
    /// `pending`.
    #[schema(value_type = DeliveryState)]
    state: &'static str,
}

/// A generation as the API shows it: the webhook payload's fields first, in the seed's order,
/// then reelay's additions.
#[derive(Serialize, ToSchema)]
#[schema(
    as = Generation,
    example = json!({
        "generation_id": "ffd473d5-5bef-4e14-bf22-8d559be3c19f",
        "status": "completed",
        "prompt": "A cat playing with a ball in a sunny room",
        "video_url": "https://reelay.example.com/videos/ffd473d5-5bef-4e14-bf22-8d559be3c19f/3f1c2a9d8e7b6a5f4e3d2c1b0a998877.mp4",
        "created_at": "2025-12-06T21:43:03.374000",
        "completed_at": "2025-12-06T21:44:06.143000",
        "seed": 319790131,
        "error": null,
        "model": "veo-3-fast",
        "aspect_ratio": "16:9",
        "callback_url": "https://example.com/webhooks/reelay",
        "watermark_text": null,
        "price": "0.2500",
        "progress_pct": 100,
        "queue_position": null,
        "webhook": {
            "state": "delivered",
            "attempts": 1,
            "last_attempt_at": "2025-12-06T21:44:06.512000",
            "last_status_code": 200,
            "next_attempt_at": null,
            "webhook_id": "msg_ffd473d55bef4e14bf228d559be3c19f",
            "failure_reason": null
        }
    })
)]
pub struct GenerationView {
    #[schema(format = Uuid)]
    generation_id: String,
    #[schema(value_type = GenerationStatus)]
    status: &'static str,
    prompt: String,
    /// Where the video is, once completed (no key needed: the URL carries a capability).
    video_url: Option<String>,
    /// UTC, six fractional digits, no offset.
    #[schema(example = "2025-12-06T21:43:03.374000")]
    created_at: String,
    completed_at: Option<String>,
    seed: u32,
    /// `{"message": <failure code>, "details": {}}` when failed.
    #[schema(value_type = Option<EventError>)]
    error: Option<Value>,
    #[schema(value_type = Model)]
    model: &'static str,
    #[schema(value_type = AspectRatio)]
    aspect_ratio: &'static str,
    callback_url: Option<String>,
    watermark_text: Option<String>,
    #[schema(example = "0.2500")]
    price: String,
    #[schema(maximum = 100)]
    progress_pct: u8,
    /// Pending generations created before this one, counted up to 1000; null once finished.
    queue_position: Option<u64>,
    webhook: WebhookView,
}

impl GenerationView {
    pub(crate) fn new(g: &Generation, queue_position: u64, event: Option<&Event>) -> Self {
        let (video_url, error, progress_pct) = match &g.stage {
            Stage::Pending => (None, None, 0),
            Stage::Processing { progress_pct, .. } => (None, None, *progress_pct),
            Stage::Completed { video, .. } => (Some(video.url.clone()), None, 100),
            Stage::Failed { code, reason, .. } => (
                None,
                Some(json!({
                    "message": code.as_str(),
                    "details": failure_details(reason.as_deref()),
                })),
                0,
            ),
        };
        let status = g.stage.status();
        let webhook = WebhookView::new(g, event);
        Self {
            generation_id: g.id.to_string(),
            status: status.as_str(),
            prompt: g.spec.prompt.clone(),
            video_url,
            created_at: timestamp::format(g.created_at),
            completed_at: g.stage.completed_at().map(timestamp::format),
            seed: g.spec.seed,
            error,
            model: g.spec.model.as_str(),
            aspect_ratio: g.spec.aspect_ratio.as_str(),
            callback_url: g.spec.callback_url.clone(),
            watermark_text: g.spec.watermark_text.clone(),
            price: g.price.to_string(),
            progress_pct,
            queue_position: (!status.is_terminal()).then_some(queue_position),
            webhook,
        }
    }
}

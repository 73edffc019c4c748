//! `/v1/veo/generate` and `/v1/veo/generations`: create, read, list, cancel.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use reelay_core::request::parse_generate;
use reelay_core::{GenerationId, GenerationStatus};
use reelay_store::{
    DeliveryState, DueRef, Event, Finished, Generation, OutboxListener, Redelivery, Stage,
    failure_details,
};
use reelay_webhooks::timestamp;
use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::body::CreateBody;
use crate::{ApiError, AppState};

/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

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
#[derive(Serialize)]
pub struct CreatedView {
    generation_id: String,
    status: &'static str,
    seed: u32,
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
            StatusCode::BAD_REQUEST,
            "INVALID_TASK_ID",
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
            StatusCode::CONFLICT,
            "CONFLICT",
            format!(
                "the generation has already {}; only pending or processing ones can be cancelled",
                g.stage.status()
            ),
        )),
    }
}

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

#[derive(Serialize)]
pub struct ListView {
    generations: Vec<GenerationView>,
    limit: u32,
    offset: u64,
    total: u64,
}

/// Where the generation's webhook stands.
#[derive(Serialize)]
struct WebhookView {
    state: &'static str,
    attempts: u32,
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

#[derive(Serialize)]
pub struct DeliveriesView {
    generation_id: String,
    webhook_id: Option<String>,
    callback_url: Option<String>,
    webhook: WebhookView,
    attempts: Vec<AttemptView>,
}

#[derive(Serialize)]
struct AttemptView {
    number: u32,
    started_at: String,
    duration_ms: u64,
    outcome: &'static str,
    status_code: Option<u16>,
    response_body: Option<String>,
    error: Option<String>,
}

/// Every webhook attempt for a generation, oldest first.
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
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let g = owned(&state, caller, &id).await?;
    let conflict = |message: &str| ApiError::new(StatusCode::CONFLICT, "CONFLICT", message);
    match state.store.redeliver(g.id, state.store.now()).await? {
        Redelivery::Started { webhook_id } => {
            state.dispatcher.due(DueRef::of(&g).into_iter().collect());
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({
                    "generation_id": g.id.to_string(),
                    "webhook_id": webhook_id,
                    "state": DeliveryState::Pending.as_str(),
                })),
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

/// A generation as the API shows it: the webhook payload's fields first, in the seed's order,
/// then reelay's additions.
#[derive(Serialize)]
pub struct GenerationView {
    generation_id: String,
    status: &'static str,
    prompt: String,
    video_url: Option<String>,
    created_at: String,
    completed_at: Option<String>,
    seed: u32,
    error: Option<Value>,
    model: &'static str,
    aspect_ratio: &'static str,
    callback_url: Option<String>,
    watermark_text: Option<String>,
    price: String,
    progress_pct: u8,
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

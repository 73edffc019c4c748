//! `/v1/worker/…`: the protocol external workers follow (`docs/workers.md`). Thin handlers:
//! the engine decides leases, moderation and fencing; these parse, check and answer.

use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use reelay_core::{FailureCode, Model};
use reelay_engine::workers::{Lease, WorkerError, WorkerJob};
use reelay_store::{Generation, Stage, Video};
use reelay_webhooks::timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::body::{JsonBody, SMALL_BODY};
use crate::upload;
use crate::worker_auth::WorkerCaller;
use crate::{ApiError, AppState};

/// The most jobs one claim may ask for.
pub const MAX_JOBS: u32 = 16;
/// The longest a claim may wait for work.
pub const MAX_WAIT_SECONDS: u64 = 30;

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::LeaseLost => ApiError::new(
                StatusCode::CONFLICT,
                "LEASE_LOST",
                "this lease no longer holds the job (it lapsed and was claimed again, or the \
                 generation ended): stop working on it and claim again",
            ),
            WorkerError::Busy => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "BUSY",
                "too many workers are waiting for jobs; retry in a few seconds",
            ),
            WorkerError::NoSuchInput => ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "the job has no input of that name; its claim lists its inputs",
            ),
            WorkerError::Store(e) => e.into(),
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", e.to_string()))
}

fn lease(id: &str) -> Result<Lease, ApiError> {
    Lease::parse(id).ok_or_else(|| WorkerError::LeaseLost.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    max_jobs: Option<u32>,
    wait_seconds: Option<u64>,
    models: Option<Vec<String>>,
}

#[derive(Serialize)]
struct JobView {
    generation_id: String,
    lease_id: String,
    lease_expires_at: String,
    model: &'static str,
    prompt: String,
    seed: u32,
    aspect_ratio: &'static str,
    watermark_text: Option<String>,
    inputs: Vec<InputView>,
}

/// An input image of a job, fetched with the worker token while the lease holds.
#[derive(Serialize)]
struct InputView {
    name: String,
    content_type: &'static str,
    url: String,
}

impl JobView {
    fn new(job: WorkerJob, engine: &reelay_engine::Engine) -> Self {
        let spec = job.generation.spec;
        let inputs = spec
            .inputs
            .iter()
            .map(|input| InputView {
                url: engine.worker_input_url(&job.lease_id, input),
                name: input.name.clone(),
                content_type: input.format.mime(),
            })
            .collect();
        Self {
            generation_id: job.generation.id.to_string(),
            lease_id: job.lease_id,
            lease_expires_at: timestamp::format(job.lease_expires_at),
            model: spec.model.as_str(),
            prompt: spec.prompt,
            seed: spec.seed,
            aspect_ratio: spec.aspect_ratio.as_str(),
            watermark_text: spec.watermark_text,
            inputs,
        }
    }
}

pub async fn claim(
    State(state): State<AppState>,
    WorkerCaller(worker): WorkerCaller,
    JsonBody(body): JsonBody<SMALL_BODY>,
) -> Result<Json<Value>, ApiError> {
    let body: ClaimBody = parse(&body)?;
    let max = body.max_jobs.unwrap_or(1);
    if !(1..=MAX_JOBS).contains(&max) {
        return Err(ApiError::invalid(
            "max_jobs",
            format!("must be 1 to {MAX_JOBS}"),
        ));
    }
    let wait = body.wait_seconds.unwrap_or(0);
    if wait > MAX_WAIT_SECONDS {
        return Err(ApiError::invalid(
            "wait_seconds",
            format!("must be 0 to {MAX_WAIT_SECONDS}"),
        ));
    }
    let allowed: Vec<Model> = if worker.models.is_empty() {
        Model::ALL.to_vec()
    } else {
        worker.models.clone()
    };
    let models = match body.models {
        None => allowed,
        Some(names) => {
            let mut asked = Vec::with_capacity(names.len());
            for name in names {
                let model: Model = name
                    .parse()
                    .map_err(|_| ApiError::invalid("models", format!("unknown model `{name}`")))?;
                if allowed.contains(&model) && !asked.contains(&model) {
                    asked.push(model);
                }
            }
            asked
        }
    };
    let jobs = state
        .engine
        .worker_claim(models, max as usize, Duration::from_secs(wait))
        .await?;
    let jobs: Vec<JobView> = jobs
        .into_iter()
        .map(|job| JobView::new(job, &state.engine))
        .collect();
    Ok(Json(json!({ "jobs": jobs })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatBody {
    progress_pct: Option<u8>,
    log: Option<String>,
}

pub async fn heartbeat(
    State(state): State<AppState>,
    WorkerCaller(_): WorkerCaller,
    Path(lease_id): Path<String>,
    JsonBody(body): JsonBody<SMALL_BODY>,
) -> Result<Json<Value>, ApiError> {
    let body: HeartbeatBody = parse(&body)?;
    let pct = body.progress_pct.unwrap_or(0);
    if pct > 99 {
        return Err(ApiError::invalid("progress_pct", "must be 0 to 99"));
    }
    let beat = state
        .engine
        .worker_heartbeat(&lease(&lease_id)?, pct, body.log.as_deref())
        .await?;
    Ok(Json(json!({
        "lease_expires_at": timestamp::format(beat.lease_expires_at),
        "cancel_requested": beat.cancel_requested,
    })))
}

fn result_view(g: &Generation) -> Json<Value> {
    match &g.stage {
        Stage::Completed { video, .. } => Json(json!({
            "generation_id": g.id.to_string(),
            "status": "completed",
            "video_url": video.url,
        })),
        Stage::Failed { code, .. } => Json(json!({
            "generation_id": g.id.to_string(),
            "status": "failed",
            "error": code.as_str(),
        })),
        _ => Json(json!({ "generation_id": g.id.to_string() })),
    }
}

pub async fn upload_video(
    State(state): State<AppState>,
    WorkerCaller(_): WorkerCaller,
    Path(lease_id): Path<String>,
    request: Request<Body>,
) -> Result<Json<Value>, ApiError> {
    let lease = lease(&lease_id)?;
    let headers = request.headers();
    let is_mp4 = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("video/mp4"));
    if !is_mp4 {
        return Err(ApiError::invalid(
            "body",
            "send the MP4 itself as the body, with `Content-Type: video/mp4`",
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let upload_id = uuid::Uuid::new_v4().simple();
    let temp_path = state.videos_dir.join(format!(".upload-{upload_id}.part"));
    let temp = upload::receive(
        request.into_body(),
        temp_path,
        declared,
        state.worker_max_video_bytes,
        state.body_read_timeout,
    )
    .await?;
    // A name of its own per upload: neither a stale nor a repeated upload can overwrite the
    // video a generation kept.
    let file = format!("{}-{upload_id}.mp4", lease.generation);
    let path: PathBuf = state.videos_dir.join(&file);
    temp.keep_as(&path).await.map_err(|e| {
        tracing::error!(error = %e, "moving an upload into place failed");
        ApiError::internal()
    })?;
    let video = Video {
        file,
        url: state.engine.video_url(lease.generation),
    };
    match state.engine.worker_complete(&lease, video).await {
        Ok((g, true)) => Ok(result_view(&g)),
        Ok((g, false)) => {
            // A repeat: the first video stands.
            let _ = tokio::fs::remove_file(&path).await;
            Ok(result_view(&g))
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            Err(e.into())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    video_url: String,
}

pub async fn complete(
    State(state): State<AppState>,
    WorkerCaller(_): WorkerCaller,
    Path(lease_id): Path<String>,
    JsonBody(body): JsonBody<SMALL_BODY>,
) -> Result<Json<Value>, ApiError> {
    let lease = lease(&lease_id)?;
    let body: CompleteBody = parse(&body)?;
    let url = body.video_url.trim();
    let valid = url.len() <= 2048
        && url
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
    if !valid {
        return Err(ApiError::invalid(
            "video_url",
            "must be an https:// URL (at most 2048 characters)",
        ));
    }
    // No local file: the generation's video lives at the worker's URL.
    let video = Video {
        file: String::new(),
        url: url.to_owned(),
    };
    let (g, _) = state.engine.worker_complete(&lease, video).await?;
    Ok(result_view(&g))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailBody {
    code: String,
    message: Option<String>,
}

pub async fn fail(
    State(state): State<AppState>,
    WorkerCaller(_): WorkerCaller,
    Path(lease_id): Path<String>,
    JsonBody(body): JsonBody<SMALL_BODY>,
) -> Result<Json<Value>, ApiError> {
    let lease = lease(&lease_id)?;
    let body: FailBody = parse(&body)?;
    let code = match body.code.parse::<FailureCode>() {
        Ok(
            code @ (FailureCode::TaskFailed
            | FailureCode::UnsafeContent
            | FailureCode::ModerationFailed),
        ) => code,
        _ => {
            return Err(ApiError::invalid(
                "code",
                "must be TASK_FAILED, UNSAFE_CONTENT or MODERATION_FAILED",
            ));
        }
    };
    let g = state
        .engine
        .worker_fail(&lease, code, body.message.as_deref().unwrap_or(""))
        .await?;
    Ok(result_view(&g))
}

/// `GET /v1/worker/jobs/{lease_id}/inputs/{name}`: an input image, only to the lease holding
/// the job.
pub async fn input(
    State(state): State<AppState>,
    WorkerCaller(_): WorkerCaller,
    Path((lease_id, name)): Path<(String, String)>,
    request: Request,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    use tower::ServiceExt;
    let lease = lease(&lease_id)?;
    let (path, input) = state.engine.worker_input(&lease, &name).await?;
    let mime = input.format.mime().parse().expect("a valid media type");
    let response = tower_http::services::ServeFile::new_with_mime(&path, &mime)
        .oneshot(request)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, path = %path.display(), "serving an input image failed");
            ApiError::internal()
        })?;
    if response.status() == StatusCode::NOT_FOUND {
        tracing::error!(path = %path.display(), "a job's input image is missing");
        return Err(ApiError::internal());
    }
    Ok(response.into_response())
}

//! `/v1/worker/…`: the protocol external workers follow (`docs/workers.md`). Thin handlers:
//! the engine decides leases, moderation and fencing; these parse, check and answer.

use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use reelay_core::{FailureCode, GenerationStatus, Model};
use reelay_engine::workers::{Lease, WorkerError, WorkerJob};
use reelay_store::{Generation, Stage, Video};
use reelay_webhooks::timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::body::{JsonBody, SMALL_BODY};
use crate::openapi::error_set;
use crate::upload;
use crate::worker_auth::WorkerCaller;
use crate::{ApiError, AppState, ErrorCode};

error_set!(
    ClaimErrors = [
        Unauthorized,
        InvalidParameters,
        PayloadTooLarge,
        RequestTimeout,
        Busy,
        Maintenance,
    ]
);
error_set!(
    LeaseErrors = [
        Unauthorized,
        InvalidParameters,
        PayloadTooLarge,
        RequestTimeout,
        LeaseLost,
        Maintenance,
    ]
);
error_set!(
    UploadErrors = [
        Unauthorized,
        InvalidParameters,
        InvalidVideo,
        PayloadTooLarge,
        RequestTimeout,
        LeaseLost,
        Maintenance,
    ]
);
error_set!(InputErrors = [Unauthorized, LeaseLost, NotFound, Maintenance]);

/// The most jobs one claim may ask for.
pub const MAX_JOBS: u32 = 16;
/// The longest a claim may wait for work.
pub const MAX_WAIT_SECONDS: u64 = 30;

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::LeaseLost => ApiError::new(
                ErrorCode::LeaseLost,
                "this lease no longer holds the job (it lapsed and was claimed again, or the \
                 generation ended): stop working on it and claim again",
            ),
            WorkerError::Busy => ApiError::new(
                ErrorCode::Busy,
                "too many workers are waiting for jobs; retry in a few seconds",
            ),
            WorkerError::NoSuchInput => ApiError::new(
                ErrorCode::NotFound,
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ClaimRequest)]
struct ClaimBody {
    /// 1–16; 1 when absent.
    #[schema(minimum = 1, maximum = 16)]
    max_jobs: Option<u32>,
    /// How long to wait for work, 0–30 s; 0 when absent.
    #[schema(maximum = 30)]
    wait_seconds: Option<u64>,
    /// Only jobs for these models (within the token's own); all of them when absent.
    #[schema(value_type = Option<Vec<Model>>)]
    models: Option<Vec<String>>,
}

/// What a claim answers: the jobs now leased to the caller (possibly none).
#[derive(Serialize, ToSchema)]
#[schema(as = Claimed)]
pub struct ClaimedView {
    jobs: Vec<JobView>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Job)]
struct JobView {
    #[schema(format = Uuid)]
    generation_id: String,
    lease_id: String,
    /// Heartbeat before then, or the job returns to the queue.
    lease_expires_at: String,
    #[schema(value_type = Model)]
    model: &'static str,
    prompt: String,
    seed: u32,
    #[schema(value_type = reelay_core::AspectRatio)]
    aspect_ratio: &'static str,
    watermark_text: Option<String>,
    inputs: Vec<InputView>,
}

/// An input image of a job, fetched with the worker token while the lease holds.
#[derive(Serialize, ToSchema)]
#[schema(as = JobInput)]
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

#[utoipa::path(
    post,
    path = "/v1/worker/claim",
    tag = "workers",
    summary = "Lease up to `max_jobs` jobs, waiting up to `wait_seconds` for one",
    security(("worker_token" = [])),
    request_body(content = ClaimBody, content_type = "application/json",
        example = json!({"max_jobs": 1, "wait_seconds": 25, "models": ["veo-3-fast"]})),
    responses((status = 200, description = "The jobs leased to this worker (none when the wait ran out).",
        body = ClaimedView), ClaimErrors),
)]
pub async fn claim(
    State(state): State<AppState>,
    WorkerCaller(worker): WorkerCaller,
    JsonBody(body): JsonBody<SMALL_BODY>,
) -> Result<Json<ClaimedView>, ApiError> {
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
    Ok(Json(ClaimedView { jobs }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = HeartbeatRequest)]
struct HeartbeatBody {
    /// 0–99; 0 when absent.
    #[schema(maximum = 99)]
    progress_pct: Option<u8>,
    /// A line for the server's log.
    log: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Heartbeat)]
pub struct HeartbeatView {
    lease_expires_at: String,
    /// The client cancelled: stop and call `fail` (or just stop).
    cancel_requested: bool,
}

#[utoipa::path(
    post,
    path = "/v1/worker/jobs/{lease_id}/heartbeat",
    tag = "workers",
    summary = "Extend the lease and report progress",
    security(("worker_token" = [])),
    params(("lease_id" = String, Path, description = "The lease the claim gave")),
    request_body(content = HeartbeatBody, content_type = "application/json",
        example = json!({"progress_pct": 40, "log": "frame 19 of 48"})),
    responses((status = 200, description = "The lease is extended.",
        body = HeartbeatView), LeaseErrors),
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    WorkerCaller(_): WorkerCaller,
    Path(lease_id): Path<String>,
    JsonBody(body): JsonBody<SMALL_BODY>,
) -> Result<Json<HeartbeatView>, ApiError> {
    let body: HeartbeatBody = parse(&body)?;
    let pct = body.progress_pct.unwrap_or(0);
    if pct > 99 {
        return Err(ApiError::invalid("progress_pct", "must be 0 to 99"));
    }
    let beat = state
        .engine
        .worker_heartbeat(&lease(&lease_id)?, pct, body.log.as_deref())
        .await?;
    Ok(Json(HeartbeatView {
        lease_expires_at: timestamp::format(beat.lease_expires_at),
        cancel_requested: beat.cancel_requested,
    }))
}

/// The job's generation after a worker's result: the fields that say how it ended.
#[derive(Serialize, ToSchema)]
#[schema(as = JobResult)]
pub struct ResultView {
    #[schema(format = Uuid)]
    generation_id: String,
    /// Absent while the generation has not ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<GenerationStatus>)]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    video_url: Option<String>,
    /// The failure code, when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<FailureCode>)]
    error: Option<&'static str>,
}

fn result_view(g: &Generation) -> Json<ResultView> {
    let (status, video_url, error) = match &g.stage {
        Stage::Completed { video, .. } => (Some("completed"), Some(video.url.clone()), None),
        Stage::Failed { code, .. } => (Some("failed"), None, Some(code.as_str())),
        _ => (None, None, None),
    };
    Json(ResultView {
        generation_id: g.id.to_string(),
        status,
        video_url,
        error,
    })
}

#[utoipa::path(
    put,
    path = "/v1/worker/jobs/{lease_id}/video",
    tag = "workers",
    summary = "Complete the job by uploading its MP4",
    description = "The body is the MP4 itself (at most `REELAY_WORKER_MAX_VIDEO_BYTES`), \
                   checked to be an MP4. Repeating a call that succeeded is harmless: the first \
                   video stands.",
    security(("worker_token" = [])),
    params(("lease_id" = String, Path, description = "The lease the claim gave")),
    request_body(content = Vec<u8>, content_type = "video/mp4"),
    responses((status = 200, description = "The generation completed with this video (or had already ended).",
        body = ResultView), UploadErrors),
)]
pub async fn upload_video(
    State(state): State<AppState>,
    WorkerCaller(_): WorkerCaller,
    Path(lease_id): Path<String>,
    request: Request<Body>,
) -> Result<Json<ResultView>, ApiError> {
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CompleteRequest)]
struct CompleteBody {
    /// Where the video is: an `https` URL, at most 2048 characters.
    #[schema(max_length = 2048)]
    video_url: String,
}

#[utoipa::path(
    post,
    path = "/v1/worker/jobs/{lease_id}/complete",
    tag = "workers",
    summary = "Complete the job with a video hosted elsewhere",
    security(("worker_token" = [])),
    params(("lease_id" = String, Path, description = "The lease the claim gave")),
    request_body(content = CompleteBody, content_type = "application/json",
        example = json!({"video_url": "https://cdn.example.com/videos/out.mp4"})),
    responses((status = 200, description = "The generation as the result left it.",
        body = ResultView), LeaseErrors),
)]
pub async fn complete(
    State(state): State<AppState>,
    WorkerCaller(_): WorkerCaller,
    Path(lease_id): Path<String>,
    JsonBody(body): JsonBody<SMALL_BODY>,
) -> Result<Json<ResultView>, ApiError> {
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = FailRequest)]
struct FailBody {
    /// `TASK_FAILED` (refunded), `UNSAFE_CONTENT` or `MODERATION_FAILED` (not refunded).
    #[schema(value_type = FailureCode)]
    code: String,
    /// Kept with the generation for the operator.
    message: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/worker/jobs/{lease_id}/fail",
    tag = "workers",
    summary = "Fail the job with a catalogue code",
    security(("worker_token" = [])),
    params(("lease_id" = String, Path, description = "The lease the claim gave")),
    request_body(content = FailBody, content_type = "application/json",
        example = json!({"code": "TASK_FAILED", "message": "out of GPU memory"})),
    responses((status = 200, description = "The generation as the result left it.",
        body = ResultView), LeaseErrors),
)]
pub async fn fail(
    State(state): State<AppState>,
    WorkerCaller(_): WorkerCaller,
    Path(lease_id): Path<String>,
    JsonBody(body): JsonBody<SMALL_BODY>,
) -> Result<Json<ResultView>, ApiError> {
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
#[utoipa::path(
    get,
    path = "/v1/worker/jobs/{lease_id}/inputs/{name}",
    tag = "workers",
    summary = "An input image of the job (its `url` in the claim)",
    security(("worker_token" = [])),
    params(("lease_id" = String, Path, description = "The lease the claim gave"), ("name" = String, Path, description = "The input's `name` in the claim")),
    responses(
        (status = 200, description = "The image, as the client sent it.",
            content((Vec<u8> = "image/jpeg"), (Vec<u8> = "image/png"), (Vec<u8> = "image/webp"))),
        InputErrors,
    ),
)]
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

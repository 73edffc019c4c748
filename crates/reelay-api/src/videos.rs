//! Finished videos, served with Range support at the `video_url` given to clients.
//!
//! No API key is needed, so a URL works in a browser's `<video>` tag: like a CDN link, the URL
//! carries a capability ([`reelay_core::capability`]) that the generation id alone does not
//! give. A wrong capability answers exactly like an unknown video.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reelay_core::GenerationId;
use reelay_store::Stage;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::openapi::error_set;
use crate::{ApiError, AppState, ErrorCode};

error_set!(VideoErrors = [NotFound, Gone, Maintenance]);

fn no_video() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no finished video at this address")
}

#[utoipa::path(
    get,
    path = "/videos/{id}/{file}",
    tag = "videos",
    summary = "A finished video",
    description = "The `video_url` of a completed generation. No key: the file name carries a \
                   capability that cannot be guessed from the id (a wrong one answers 404 like \
                   an unknown video). Range requests are honoured.",
    params(
        ("id" = String, Path, format = Uuid, description = "The generation id"),
        ("file" = String, Path, description = "`<capability>.mp4`, as in `video_url`"),
        ("Range" = Option<String>, Header, description = "e.g. `bytes=0-1023`"),
    ),
    responses(
        (status = 200, description = "The whole video.", content_type = "video/mp4",
            body = Vec<u8>, headers(("Accept-Ranges" = String, description = "`bytes`"))),
        (status = 206, description = "The requested range.", content_type = "video/mp4",
            body = Vec<u8>, headers(("Content-Range" = String))),
        (status = 416, description = "The range is outside the file.",
            headers(("Content-Range" = String, description = "`bytes */<size>`"))),
        VideoErrors,
    ),
)]
pub async fn serve(
    State(state): State<AppState>,
    Path((id, file)): Path<(String, String)>,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let id: GenerationId = id.parse().map_err(|_| no_video())?;
    let capability = file.strip_suffix(".mp4").ok_or_else(no_video)?;
    if !state.video_key.verify(id, capability) {
        return Err(no_video());
    }
    let Some(generation) = state.store.generation(id).await? else {
        return Err(no_video());
    };
    let Stage::Completed { video, .. } = generation.stage else {
        return Err(no_video());
    };
    if generation.media_pruned_at.is_some() {
        return Err(ApiError::new(
            ErrorCode::Gone,
            "this video was deleted at the end of its retention period (REELAY_RETENTION); \
             download videos when their generation completes",
        ));
    }
    let path = state.videos_dir.join(&video.file);
    let response = ServeFile::new_with_mime(&path, &"video/mp4".parse().expect("valid mime"))
        .oneshot(request)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, path = %path.display(), "serving a video failed");
            ApiError::internal()
        })?;
    if response.status() == StatusCode::NOT_FOUND {
        tracing::error!(path = %path.display(), "a completed generation's video file is missing");
        return Err(no_video());
    }
    Ok(response.into_response())
}

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

use crate::{ApiError, AppState};

fn no_video() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no finished video at this address",
    )
}

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
            StatusCode::GONE,
            "GONE",
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

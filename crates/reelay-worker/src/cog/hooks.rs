//! Receives what a Cog model server sends the worker while a prediction runs: its `logs`
//! webhooks, which are how it tells how far the prediction is (coglet has no status route:
//! `GET /predictions/{id}` answers 405), and, when the model server runs with
//! `--upload-url <this receiver>/upload/`, the output file it uploads instead of returning it
//! inline. The final state does not come this way but in the prediction's own answer, so
//! webhooks arriving late or out of order can only move progress, never the outcome.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{post, put};
use serde::Deserialize;

use crate::Progress;

/// The largest webhook read: it carries every log line so far.
const MAX_HOOK_BYTES: usize = 4 * 1024 * 1024;
/// The largest output file taken (reelay's own default cap on a worker's upload).
const MAX_UPLOAD_BYTES: usize = 512 * 1024 * 1024;

/// A running prediction's progress, and its output file once uploaded.
#[derive(Default)]
struct Prediction {
    progress: Progress,
    upload: Option<Vec<u8>>,
}

type Watched = Arc<Mutex<HashMap<String, Prediction>>>;

/// The webhook receiver, serving until dropped.
pub struct Hooks {
    base: String,
    watched: Watched,
    server: tokio::task::JoinHandle<()>,
}

/// Progress of one prediction is recorded while this lives.
pub struct Watch<'a> {
    hooks: &'a Hooks,
    id: String,
}

#[derive(Deserialize)]
struct Update {
    #[serde(default)]
    logs: Option<String>,
}

impl Hooks {
    pub async fn start(listen: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let base = format!("http://{}", listener.local_addr()?);
        let watched = Watched::default();
        let app = Router::new()
            .route(
                "/cog/{id}",
                post(update).layer(DefaultBodyLimit::max(MAX_HOOK_BYTES)),
            )
            .route(
                "/upload/{file}",
                put(upload).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
            )
            .with_state(watched.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the Cog webhook receiver stopped");
            }
        });
        Ok(Self {
            base,
            watched,
            server,
        })
    }

    /// Where the model server should send the webhooks of prediction `id`.
    pub fn url(&self, id: &str) -> String {
        format!("{}/cog/{id}", self.base)
    }

    /// Whether `url` is where this receiver keeps an uploaded output.
    pub fn is_upload(&self, url: &str) -> bool {
        url.starts_with(&format!("{}/upload/", self.base))
    }

    pub fn watch(&self, id: &str, progress: Progress) -> Watch<'_> {
        let prediction = Prediction {
            progress,
            upload: None,
        };
        self.lock().insert(id.to_owned(), prediction);
        Watch {
            hooks: self,
            id: id.to_owned(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Prediction>> {
        self.watched.lock().expect("watched predictions")
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Watch<'_> {
    /// The output file the model server uploaded for this prediction, if it did.
    pub fn take_upload(&self) -> Option<Vec<u8>> {
        self.hooks.lock().get_mut(&self.id)?.upload.take()
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.hooks.lock().remove(&self.id);
    }
}

async fn update(
    State(watched): State<Watched>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> StatusCode {
    let Ok(update) = serde_json::from_slice::<Update>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let watched = watched.lock().expect("watched predictions");
    if let (Some(prediction), Some(pct)) = (
        watched.get(&id),
        update.logs.as_deref().and_then(super::last_percent),
    ) {
        prediction.progress.set(pct);
    }
    StatusCode::OK
}

/// `PUT /upload/{file}` with `x-prediction-id`: the output of a prediction this worker runs.
async fn upload(
    State(watched): State<Watched>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let Some(id) = headers.get("x-prediction-id").and_then(|v| v.to_str().ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut watched = watched.lock().expect("watched predictions");
    let Some(prediction) = watched.get_mut(id) else {
        return StatusCode::NOT_FOUND;
    };
    tracing::info!(
        prediction = id,
        file,
        bytes = body.len(),
        "the model uploaded its output"
    );
    prediction.upload = Some(body.to_vec());
    // No Location: the model server then gives the upload's own URL as the output.
    StatusCode::CREATED
}

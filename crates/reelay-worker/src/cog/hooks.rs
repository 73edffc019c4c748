//! Receives a Cog model server's `logs` webhooks: they are how it tells how far a running
//! prediction is, since coglet has no status route (`GET /predictions/{id}` answers 405).
//! The final state does not come this way but in the prediction's own answer, so webhooks
//! arriving late or out of order can only move progress, never the outcome.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::routing::post;
use serde::Deserialize;

use crate::Progress;

/// The largest webhook read: it carries every log line so far.
const MAX_HOOK_BYTES: usize = 4 * 1024 * 1024;

type Watched = Arc<Mutex<HashMap<String, Progress>>>;

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
        let base = format!("http://{}/cog", listener.local_addr()?);
        let watched = Watched::default();
        let app = Router::new()
            .route("/cog/{id}", post(update))
            .layer(DefaultBodyLimit::max(MAX_HOOK_BYTES))
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
        format!("{}/{id}", self.base)
    }

    pub fn watch(&self, id: &str, progress: Progress) -> Watch<'_> {
        self.lock().insert(id.to_owned(), progress);
        Watch {
            hooks: self,
            id: id.to_owned(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Progress>> {
        self.watched.lock().expect("watched predictions")
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        self.server.abort();
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
) -> axum::http::StatusCode {
    let Ok(update) = serde_json::from_slice::<Update>(&body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let progress = watched
        .lock()
        .expect("watched predictions")
        .get(&id)
        .cloned();
    if let (Some(progress), Some(pct)) = (
        progress,
        update.logs.as_deref().and_then(super::last_percent),
    ) {
        progress.set(pct);
    }
    axum::http::StatusCode::OK
}

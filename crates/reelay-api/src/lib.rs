//! reelay's HTTP surface. Handlers are thin: they parse, authorize, call the engine or the
//! store, and serialize. One module per resource.

mod account;
mod auth;
mod body;
mod dashboard;
mod error;
mod events;
mod generations;
mod ops;
mod rate_limit;
mod upload;
mod videos;
mod webhooks;
mod worker_auth;
mod workers;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post, put};
use reelay_core::capability::VideoKey;
use reelay_core::destination::DestinationPolicy;
use reelay_delivery::Dispatcher;
use reelay_engine::Engine;
use reelay_store::Store;

pub use error::ApiError;
pub use ops::AdminAccess;
pub use rate_limit::CreateLimiter;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub engine: Engine,
    pub destinations: DestinationPolicy,
    pub videos_dir: PathBuf,
    pub dispatcher: Dispatcher,
    /// The addresses webhooks leave from, published for receivers' allowlists.
    pub egress_ips: Vec<IpAddr>,
    /// Renders the Prometheus exposition; `None` when metrics are off.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Who may read `/metrics`.
    pub admin: AdminAccess,
    /// Limits creates per account; `None` when off.
    pub create_limiter: Option<Arc<CreateLimiter>>,
    /// The longest a request body may take to arrive.
    pub body_read_timeout: Duration,
    /// Checks the capability in video URLs.
    pub video_key: VideoKey,
    /// The largest video a worker may upload.
    pub worker_max_video_bytes: u64,
    /// One permit per create body over the small-body limit being handled (images).
    pub large_bodies: Arc<tokio::sync::Semaphore>,
    /// Signs the dashboard's session cookies and CSRF tokens; derived from the master key, so
    /// every node that shares the master key accepts the same sessions.
    pub dashboard_key: [u8; 32],
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/veo/generate", post(generations::create))
        .route("/v1/veo/generations", get(generations::list))
        .route("/v1/veo/generations/{id}", get(generations::get))
        .route("/v1/veo/generations/{id}/cancel", post(generations::cancel))
        .route("/v1/veo/generations/{id}/events", get(events::events))
        .route(
            "/v1/veo/generations/{id}/deliveries",
            get(generations::deliveries),
        )
        .route(
            "/v1/veo/generations/{id}/webhook/redeliver",
            post(generations::redeliver),
        )
        .route("/v1/webhooks/secret", get(webhooks::secret))
        .route("/v1/webhooks/secret/rotate", post(webhooks::rotate))
        .route("/v1/webhooks/ip-ranges", get(webhooks::ip_ranges))
        .route("/v1/webhooks/redeliver", post(webhooks::redeliver_failed))
        .route("/v1/data/balance", get(account::balance))
        .route("/v1/account", get(account::account))
        .route("/v1/worker/claim", post(workers::claim))
        .route(
            "/v1/worker/jobs/{lease_id}/heartbeat",
            post(workers::heartbeat),
        )
        .route(
            "/v1/worker/jobs/{lease_id}/video",
            put(workers::upload_video),
        )
        .route(
            "/v1/worker/jobs/{lease_id}/complete",
            post(workers::complete),
        )
        .route("/v1/worker/jobs/{lease_id}/fail", post(workers::fail))
        .route(
            "/v1/worker/jobs/{lease_id}/inputs/{name}",
            get(workers::input),
        )
        .route("/videos/{id}/{file}", get(videos::serve))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(dashboard::router(&state))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}
